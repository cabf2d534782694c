"""The certified fast matcher (match.hierarchical, prune="bounds") against exact search within the
shortlist (match.patches with rows = the shortlist) and a naive float64 reference: bit-identical results
on ties, near-ties, zero vectors, float16, K = 1 and K = 4, k = 1 and k = 3, any thread count; the
canonical similarities shared by every search; the pilot's fallback; progress callbacks; and the data
stage's query sampling. These tests pin the cells-and-bounds path: on a CPU with AMX-BF16, 1x1 searches
would otherwise take the bfloat16 filter (tests/test_amx_filter.py), so COMPNN_NO_AMX is set here."""

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from compnn_py import compose, match
from experiments.steps.data import query_indices
from naive import naive_patches, naive_topk


@pytest.fixture(autouse=True)
def _cells_path(monkeypatch):
    monkeypatch.setenv("COMPNN_NO_AMX", "1")


def smooth_maps(rng, shape, sigma=3.0):
    """Spatially smooth maps (like CNN features): neighbouring positions are alike, so the bounds prune."""
    return gaussian_filter(rng.standard_normal(shape), (0, sigma, sigma, 0)[-len(shape):]).astype(np.float32)


def bounded(q, db, K, k=1, threads=2, stats=None, progress=None):
    """The fast matcher searching every row of db (shortlist = N, so the shortlist is all of it)."""
    n = len(db)
    glob = np.arange(1, n + 2, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
    return match.hierarchical(q, db, kernel_fine=K, query_coarse=q, db_coarse=db, kernel_coarse=1,
                              query_global=glob[0], db_global=glob[1:], shortlist=n, k=k, threads=threads,
                              stats=stats, progress=progress)


def assert_same(a, b):
    for f in ("image", "y", "x", "similarity"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)


@pytest.mark.parametrize("K,k", [(1, 1), (1, 3), (4, 1), (4, 3)])
def test_bounded_equals_exact_and_prunes_smooth_maps(rng, K, k):
    maps = smooth_maps(rng, (7, 40, 48, 8), sigma=4.0)
    stats = {}
    res = bounded(maps[0], maps[1:], K, k, stats=stats)
    assert_same(res, match.patches(maps[0], maps[1:], kernel=K, k=k))
    # the naive float64 reference: the same best similarities
    qd = naive_patches(maps[0], K).reshape(-1, K * K * 8)
    _, ref = naive_topk(qd, naive_patches(maps[1:], K).reshape(-1, K * K * 8), k)
    np.testing.assert_allclose(res.similarity.reshape(-1, k), ref, atol=1e-6)
    if K == 1:  # smooth 8-channel pixels: the bounds rule out most cells
        assert stats["used_bounds"] and stats["pairs_scored"] < 0.5 * stats["pairs"], stats


def test_bounded_falls_back_to_exact_where_bounds_cannot_prune(rng):
    """Noise: the sampled cells are wide (median least cosine to the centroid far below cos 30°), so the
    search is plain exact search before any cell is prepared or any pilot block runs."""
    noise = rng.standard_normal((4, 24, 24, 32)).astype(np.float32)
    stats = {}
    assert_same(bounded(noise[0], noise[1:], 4, 2, stats=stats), match.patches(noise[0], noise[1:], kernel=4, k=2))
    assert not stats["used_bounds"] and stats["pilot_fraction"] == 0 and stats["cell_rho_median"] < 0.5, stats


def test_bounded_pilot_gives_up_where_cells_are_tight_but_all_alike(rng):
    """Smooth cells (the sample passes) in images that all resemble the query: no cell can be ruled out,
    so the pilot blocks score more than a fifth of their pairs and plain exact search runs."""
    maps = np.float32(3.0) + smooth_maps(rng, (5, 32, 32, 8), sigma=2.0)  # every patch near one direction
    stats = {}
    assert_same(bounded(maps[0], maps[1:], 1, 1, stats=stats), match.patches(maps[0], maps[1:], kernel=1, k=1))
    assert stats["cell_rho_median"] >= 0.866 and not stats["used_bounds"] and stats["pilot_fraction"] > 0.2, stats


@pytest.mark.parametrize("K", [1, 4])
def test_ties_near_ties_and_zero_vectors(rng, K):
    maps = smooth_maps(rng, (6, 32, 40, 6))
    maps[3] = maps[1]                          # exact ties between images: the lowest row wins
    maps[2, :, 20:] = maps[2, :, :20]          # ties inside an image: the lowest x wins
    maps[4] = np.nextafter(maps[1], np.inf)    # near-ties: one ulp away
    maps[5, 8:24, 8:24] = 0                    # a zero region of the database
    q = maps[1].copy()
    q[:6, :6] = 0                              # zero query patches: similarity 0, lowest index
    for k in (1, 3):
        ref = match.patches(q, maps[1:], kernel=K, k=k)
        for t in (1, 2, 3):
            assert_same(bounded(q, maps[1:], K, k, threads=t), ref)
    assert (ref.image[..., 0][ref.similarity[..., 0] > 0.9999] != 2).all()  # 3 = copy of row 0 never wins


def test_float16_and_flat_reference_agree_bit_for_bit(rng):
    maps = smooth_maps(rng, (5, 20, 24, 6)).astype(np.float16)
    for K in (1, 3):
        ref = match.patches(maps[0], maps[1:], kernel=K, k=2)
        assert_same(bounded(maps[0], maps[1:], K, 2), ref)
        flat = match.Matches(*match._core.patches(maps[0], maps[1:], None, K, 2, 2, True))
        assert_same(flat, ref)


def test_within_the_shortlist_only(rng):
    maps = smooth_maps(rng, (9, 16, 16, 4))
    glob = maps.mean(axis=(1, 2))
    kw = dict(kernel_fine=2, query_coarse=maps[0], db_coarse=maps[1:], kernel_coarse=1, query_global=glob[0],
              db_global=glob[1:], shortlist=3, k=2)
    res = match.hierarchical(maps[0], maps[1:], **kw)
    rows = match.global_shortlist(glob[0], glob[1:], 3).rows
    assert_same(res, match.patches(maps[0], maps[1:], kernel=2, k=2, rows=rows))


def test_progress_is_reported_and_can_stop_the_search(rng):
    maps = smooth_maps(rng, (4, 64, 64, 8))
    calls = []
    bounded(maps[0], maps[1:], 1, progress=lambda done, total: calls.append((done, total)))
    assert calls and all(0 <= d <= t for d, t in calls)
    assert calls[-1][0] == calls[-1][1]          # each stage reports its end
    seen = []
    match.patches(maps[0], maps[1:], kernel=1, progress=lambda d, t: seen.append((d, t)))
    assert seen[-1][0] == seen[-1][1] > 0

    def stop(done, total):
        raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        bounded(maps[0], maps[1:], 1, progress=stop)
    with pytest.raises(TypeError, match="progress"):
        bounded(maps[0], maps[1:], 1, progress=3)


def test_search_progress_shows_only_long_searches():
    now = [0.0]
    p = compose.SearchProgress("query 0", after=10.0, clock=lambda: now[0])
    p(1, 10)
    assert p._bar is None                         # a search under 10 s shows nothing
    now[0] = 11.0
    p(5, 10)
    assert p._bar is not None and p._bar.n == 5
    p(2, 4)                                       # the next stage: a new count
    assert p._bar.n == 2 and p._bar.total == 4
    p.close()


def test_bad_prune_is_refused(rng):
    maps = smooth_maps(rng, (3, 8, 8, 2))
    with pytest.raises(ValueError, match="prune"):
        match.hierarchical(maps[0], maps[1:], kernel_fine=1, query_coarse=maps[0], db_coarse=maps[1:],
                           kernel_coarse=1, query_global=maps[0], db_global=maps[1:], shortlist=1, prune="fast")


def test_query_indices():
    assert query_indices(101, 5, "spread", 0).tolist() == [0, 25, 50, 75, 100]
    assert query_indices(101, 5, "first", 0).tolist() == [0, 1, 2, 3, 4]
    r = query_indices(101, 5, "random", 3)
    assert len(set(r.tolist())) == 5 and (np.diff(r) > 0).all() and r.max() < 101
    assert (query_indices(101, 5, "random", 3) == r).all()            # the seed decides
    assert query_indices(4, 9, "spread", 0).tolist() == [0, 1, 2, 3]   # more asked than there are
    assert query_indices(7, None, "random", 0).tolist() == list(range(7))
    assert query_indices(9, 1, "spread", 0).tolist() == [0]
    for n in range(1, 30):
        assert len(set(query_indices(30, n, "spread", 0).tolist())) == n
    with pytest.raises(ValueError, match="query sample"):
        query_indices(5, 2, "middle", 0)


def test_global_shortlist_of_whole_large_maps_in_float16():
    """A whole 360x480x64 map as the global descriptor (Table 1's Global Decode2 row at CamVid's size),
    float16 rows: only the rows searched are converted, not a block of 2048 rows (90 GB, bad_alloc)."""
    rng = np.random.default_rng(0)
    db = rng.standard_normal((3, 360, 480, 64)).astype(np.float16)
    best = match.global_shortlist(db[1], db, 2)
    assert best.rows.tolist()[0] == 1 and best.similarity[0] == pytest.approx(1.0)
