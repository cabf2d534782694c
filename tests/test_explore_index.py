"""compnn_py.match.PatchIndex (the explorer's prepared database) against brute-force float64 numpy
(tests/naive.py): top-k and similarities, ties, K = 1, 3, 4, float16, row restrictions, per-image best."""

import numpy as np
import pytest

from compnn_py import match
from naive import naive_cosine, naive_patches


def _maps(rng, shape, dtype=np.float32):
    return np.maximum(rng.standard_normal(shape), 0).astype(dtype)


def _reference(db, query, positions, K, rows=None):
    """(P, R*H*W) float64 similarities of each query position's patch to every searched database patch,
    and the store index (row*H*W + y*W + x) of each column."""
    n, h, w, c = db.shape
    rows = np.arange(n) if rows is None else np.asarray(rows)
    dd = naive_patches(db[rows], K).reshape(len(rows) * h * w, -1)
    qd = naive_patches(query, K)[positions[:, 0], positions[:, 1]]
    index = (rows[:, None] * h * w + np.arange(h * w)[None, :]).ravel()
    return naive_cosine(qd, dd), index


def _check_topk(m, sims, index, k, db_shape, atol=1e-5):
    """Similarities equal the reference's k best; each returned position has the similarity claimed; a
    slot holds exactly the reference's candidate unless another candidate lies within atol of it (a
    near-tie that float32 rounding may order either way; exact ties are test_exact_ties_...'s)."""
    _, h, w, _ = db_shape
    got = m.image.astype(np.int64) * h * w + m.y * w + m.x
    col = {int(i): j for j, i in enumerate(index)}
    for p in range(len(sims)):
        order = np.lexsort((index, -sims[p]))[:k]
        np.testing.assert_allclose(m.similarity[p], sims[p][order], atol=atol)
        claimed = sims[p][[col[int(g)] for g in got[p]]]
        np.testing.assert_allclose(m.similarity[p], claimed, atol=atol)
        assert len(set(got[p].tolist())) == k
        # A slot whose reference similarity has no other candidate within atol must hold that candidate.
        tied = (np.abs(sims[p][None, :] - sims[p][order][:, None]) <= atol).sum(axis=1) > 1
        same = got[p] == index[order]
        near_tie_only = ~same & tied
        assert (same | near_tie_only).all(), (got[p], index[order])


@pytest.mark.parametrize("K", [1, 3, 4])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_topk_equals_brute_force(K, dtype):
    rng = np.random.default_rng(K)
    db = _maps(rng, (5, 7, 9, 3), dtype)
    query = _maps(rng, (6, 8, 3), dtype)
    positions = np.array([(y, x) for y in range(6) for x in range(8)])
    index = match.PatchIndex(db, kernel=K)
    assert index.shape == (5, 7, 9, 3) and index.kernel == K
    m = index.search(query, positions, k=6)
    assert m.image.shape == (len(positions), 6)
    sims, cols = _reference(db, query, positions, K)
    _check_topk(m, sims, cols, 6, db.shape)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("K", [1, 3, 4])
def test_same_as_patches_on_every_position(K, dtype):
    rng = np.random.default_rng(10 + K)
    db = _maps(rng, (4, 6, 5, 8), dtype)
    db[3] = db[1]  # exact ties between images
    query = _maps(rng, (6, 5, 8), dtype)
    positions = np.array([(y, x) for y in range(6) for x in range(5)])
    ref = match.patches(query, db, kernel=K, k=3)
    m = match.PatchIndex(db, kernel=K).search(query, positions, k=3)
    for f in ("image", "y", "x", "similarity"):  # canonical similarities: the same to the bit
        np.testing.assert_array_equal(getattr(m, f), getattr(ref, f).reshape(-1, 3))
    sims, cols = _reference(db, query, positions, K)
    _check_topk(m, sims, cols, 3, db.shape)


def test_exact_ties_go_to_lowest_row_y_x():
    rng = np.random.default_rng(3)
    one = (rng.random((1, 4, 4, 2)) + 0.1).astype(np.float32)  # no two pixels parallel by accident
    db = np.concatenate([one, one, np.zeros_like(one), one])  # rows 0, 1, 3 identical; row 2 all zero
    db[0, 3, 3] = db[0, 0, 0]  # within row 0, position (3, 3) ties with (0, 0) at K = 1
    db[1, 3, 3] = db[1, 0, 0]
    db[3, 3, 3] = db[3, 0, 0]
    query = db[0].copy()
    m = match.PatchIndex(db, kernel=1).search(query, [(0, 0)], k=7)
    assert m.similarity[0, 0] == pytest.approx(1.0, abs=1e-6)
    assert list(zip(m.image[0][:6], m.y[0][:6], m.x[0][:6])) == [(0, 0, 0), (0, 3, 3), (1, 0, 0), (1, 3, 3),
                                                                (3, 0, 0), (3, 3, 3)]
    # A zero query has similarity 0 to everything: the lowest (row, y, x) wins.
    z = match.PatchIndex(db, kernel=3).search(np.zeros((4, 4, 2), np.float32), [(1, 1)], k=2)
    assert z.similarity[0].tolist() == [0.0, 0.0]
    assert list(zip(z.image[0], z.y[0], z.x[0])) == [(0, 0, 0), (0, 0, 1)]


def test_rows_and_per_image_best():
    rng = np.random.default_rng(4)
    db = _maps(rng, (6, 5, 6, 4))
    query = _maps(rng, (5, 6, 4))
    positions = np.array([(0, 0), (2, 3), (4, 5)])
    rows = np.array([4, 1, 5])
    index = match.PatchIndex(db, kernel=3)
    res = index.search_images(query, positions, k=4, rows=rows)
    sims, cols = _reference(db, query, positions, 3, rows)
    _check_topk(res.top, sims, cols, 4, db.shape)
    assert set(res.top.image.ravel()) <= set(rows.tolist())
    per = sims.reshape(len(positions), len(rows), -1)
    assert res.per_image.image.shape == (3, 3)
    assert (res.per_image.image == rows[None, :]).all()
    np.testing.assert_allclose(res.per_image.similarity, per.max(axis=2), atol=1e-5)
    h, w = db.shape[1:3]
    claimed = per[np.arange(3)[:, None], np.arange(3)[None, :], res.per_image.y * w + res.per_image.x]
    np.testing.assert_allclose(res.per_image.similarity, claimed, atol=1e-5)
    # Each image's best is patches' top-1 within that image, to the bit.
    for j, r in enumerate(rows):
        one = match.patches(query, db, kernel=3, k=1, rows=[r])
        for f in ("image", "y", "x", "similarity"):
            np.testing.assert_array_equal(getattr(res.per_image, f)[:, j],
                                          getattr(one, f)[positions[:, 0], positions[:, 1], 0])
    # The plain search gives the same top-k.
    plain = index.search(query, positions, k=4, rows=rows)
    for f in ("image", "y", "x", "similarity"):
        np.testing.assert_array_equal(getattr(plain, f), getattr(res.top, f))


def test_identical_for_any_thread_count_and_many_bands():
    rng = np.random.default_rng(5)
    db = _maps(rng, (3, 130, 40, 3)).astype(np.float16)  # several bands per map
    query = _maps(rng, (9, 9, 3)).astype(np.float16)
    positions = np.array([(0, 0), (8, 8), (4, 2)])
    index = match.PatchIndex(db, kernel=4, threads=1)
    a = index.search_images(query, positions, k=20, threads=1)
    for t in (2, 3, 7):
        b = match.PatchIndex(db, kernel=4, threads=t).search_images(query, positions, k=20, threads=t)
        for part in ("top", "per_image"):
            for f in ("image", "y", "x", "similarity"):
                np.testing.assert_array_equal(getattr(getattr(a, part), f), getattr(getattr(b, part), f))
    sims, cols = _reference(db, query, positions, 4)
    _check_topk(a.top, sims, cols, 20, db.shape)


def test_scale_invariant():
    rng = np.random.default_rng(6)
    db = _maps(rng, (3, 4, 5, 2))
    query = _maps(rng, (4, 5, 2))
    pos = [(1, 2), (3, 4)]
    a = match.PatchIndex(db, kernel=3).search(query, pos, k=5)
    big = db.copy()
    big[1] *= np.float32(2.0 ** 100)
    b = match.PatchIndex(big, kernel=3).search(query * np.float32(2.0 ** -110), pos, k=5)
    np.testing.assert_allclose(a.similarity, b.similarity, atol=1e-6)
    np.testing.assert_array_equal(a.image, b.image)


def test_argument_checks_name_the_argument():
    db = np.ones((2, 3, 3, 4), np.float32)
    index = match.PatchIndex(db, kernel=1)
    q = np.ones((3, 3, 4), np.float32)
    with pytest.raises(ValueError, match=r"^positions: \(3, 0\) outside"):
        index.search(q, [(3, 0)])
    with pytest.raises(TypeError, match="^positions:"):
        index.search(q, [1, 2, 3])
    with pytest.raises(ValueError, match="^query_map: 2 channels"):
        index.search(np.ones((3, 3, 2), np.float32), [(0, 0)])
    with pytest.raises(ValueError, match=r"^k: 19 outside \[1, 18\]"):
        index.search(q, [(0, 0)], k=19)
    with pytest.raises(ValueError, match="^rows:"):
        index.search(q, [(0, 0)], rows=[2])
    with pytest.raises(ValueError, match="^kernel:"):
        match.PatchIndex(db, kernel=0)
    with pytest.raises(TypeError, match="^database:"):
        match.PatchIndex(db.astype(np.int32), kernel=1)
    with pytest.raises(ValueError, match="^query_map: masked"):
        index.search(np.ma.masked_array(q), [(0, 0)])
    bad = db.copy()
    bad[1, 2, 2, 3] = np.nan
    with pytest.raises(ValueError, match="^database: contains NaN"):
        match.PatchIndex(bad, kernel=1)
    with pytest.raises(ValueError, match="^query_map: contains NaN"):  # in the patch of a searched position
        index.search(bad[1], [(0, 0), (2, 2)])


def test_keeps_the_database_alive():
    rng = np.random.default_rng(7)
    index = match.PatchIndex(_maps(rng, (2, 3, 3, 2)), kernel=1)  # the only reference to the array
    import gc

    gc.collect()
    m = index.search(np.ones((3, 3, 2), np.float32), [(0, 0)], k=2)
    assert np.isfinite(m.similarity).all()


def test_other_float_arrays_are_copied_once_with_the_same_results():
    rng = np.random.default_rng(8)
    db = _maps(rng, (3, 4, 5, 2))
    query = _maps(rng, (4, 5, 2))
    a = match.PatchIndex(db, kernel=3).search(query, [(1, 1), (3, 4)], k=4)
    index = match.PatchIndex(db.astype(np.float64), kernel=3)   # copied to float32, kept by the index
    assert index.database.dtype == np.float32
    b = index.search(query.astype(np.float64)[:, ::-1][:, ::-1].tolist(), np.array([[1, 1], [3, 4]]), k=4)
    for f in ("image", "y", "x", "similarity"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
