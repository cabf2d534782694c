"""The certified bfloat16 AMX filter of 1x1 bound-pruned searches (cnn_core/src/amx.cpp): its results are
exact search's, bit for bit, on data built to defeat an uncertified low-precision filter (near-ties
closer than bfloat16's resolution), on padding-sized shapes, zero vectors, float16 stores, extreme
scales and any thread count; COMPNN_NO_AMX turns it off without changing an answer."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from compnn_py import match

pytestmark = pytest.mark.skipif(not match.bf16_filter_ready(), reason="this CPU/OS has no AMX-BF16")

FIELDS = ("image", "y", "x", "similarity")


def _search(q, db, k, threads=None, dtype=np.float32):
    """hierarchical(prune="bounds") over every image (shortlist = all) and its stats."""
    n = len(db)
    st: dict = {}
    glob = db.reshape(n, -1).mean(axis=1, keepdims=True) + 1
    m = match.hierarchical(q.astype(dtype), db.astype(dtype), kernel_fine=1, query_coarse=q, db_coarse=db,
                           kernel_coarse=1, query_global=np.ones(1, np.float32), db_global=glob, shortlist=n,
                           k=k, threads=threads, stats=st)
    return m, st


def _same(a, b) -> bool:
    return all(np.array_equal(getattr(a, f), getattr(b, f)) for f in FIELDS)


def relu_maps(rng, n, h, w, c):
    """ReLU-like maps with a per-image offset: positions of one image resemble each other (near-ties)."""
    x = rng.standard_normal((n, h, w, c)).astype(np.float32) + 2 * rng.standard_normal((n, 1, 1, c)).astype(np.float32)
    return np.maximum(x, 0)


@pytest.mark.parametrize("k", [1, 4, 20])   # 20: the top-k heap
@pytest.mark.parametrize("c", [3, 40, 64, 100])  # channels padded to 32 and 64, and not
def test_equals_exact_search(k, c):
    rng = np.random.default_rng(c * 100 + k)
    maps = relu_maps(rng, 5, 23, 25, c)   # positions not a multiple of the 32x32 blocks (>= 512 queries)
    q, db = maps[0], maps[1:]
    got, st = _search(q, db, k)
    assert st["filter"] == "amx_bf16" and 0 < st["pairs_rescored"] < st["pairs"]
    assert _same(got, match.patches(q, db, kernel=1, k=k))


def test_near_ties_below_bfloat16_resolution():
    """Database pixels at cosine 1 - 1e-6 .. 1 - 1e-8 of each query: bfloat16 (8 significant bits) cannot
    order them, so every one of them must reach the canonical rescoring; a filter without the certified
    slack returns a different source."""
    rng = np.random.default_rng(7)
    c, n_q = 64, 32
    q = rng.random((16, n_q, c), dtype=np.float32) + 0.5
    db = np.repeat(q[None], 6, axis=0).copy()               # (6, 16, n_q, c): every image a copy
    db += rng.standard_normal(db.shape).astype(np.float32) * np.float32(1e-3) * q  # relative jitter
    db[:, :, :, :] = np.where(rng.random(db.shape) < 0.5, db, db * np.float32(1 + 2 ** -9))
    got, st = _search(q, db, 3)
    want = match.patches(q, db, kernel=1, k=3)
    assert _same(got, want)
    # the jitter is far below bfloat16's resolution of these values: the bound let many pairs through
    assert st["pairs_rescored"] >= n_q * 3


def test_zero_vectors_scales_float16_and_threads():
    rng = np.random.default_rng(3)
    maps = relu_maps(rng, 4, 24, 25, 24)
    maps[0, 0, :4] = 0          # zero query pixels: similarity 0 to all, lowest indices win
    maps[1, 2, :5] = 0          # zero database pixels
    maps[2] *= np.float32(1e30)  # scales far from 1 (power-of-two rescaling keeps them finite)
    maps[3] *= np.float32(1e-30)
    q, db = maps[0], maps[1:]
    want = match.patches(q, db, kernel=1, k=5)
    for threads in (1, 2, 3):
        got, _ = _search(q, db, 5, threads=threads)
        assert _same(got, want), threads
    small = relu_maps(rng, 4, 24, 24, 24)
    got16, _ = _search(small[0], small[1:], 2, dtype=np.float16)
    assert _same(got16, match.patches(small[0].astype(np.float16), small[1:].astype(np.float16), kernel=1, k=2))


def test_large_queries_in_large_bands_and_deferred_rescoring():
    """A query of 33,000+ positions is split into bands of 2048 (smaller ones into 512): same answers for
    any thread count. Its near-duplicate database (each image a jittered copy of the query's rows) keeps
    many pairs above a query's running threshold; rescoring them only once the whole database is seen,
    against the k-th best certified lower bound, still rescores every pair that could be among the k best."""
    rng = np.random.default_rng(13)
    q = relu_maps(rng, 1, 192, 176, 16)[0]      # 33,792 positions
    db = np.repeat(q[None, ::8, ::8], 3, axis=0) * (1 + rng.random((3, 1, 1, 16), dtype=np.float32) * 2 ** -8)
    db = np.ascontiguousarray(db, dtype=np.float32)
    want = match.patches(q, db, kernel=1, k=2)
    for threads in (1, 2):
        got, st = _search(q, db, 2, threads=threads)
        assert st["filter"] == "amx_bf16" and _same(got, want), threads


def two_family_maps(rng, shape, c=24, sigma=5.0):
    """Smooth positive maps: images 0-3 (the query and three database images) live on the first half of the
    channels, images 4-6 on the second half, so a query's 4x8 groups are near some database groups and
    orthogonal to others, which the group bounds rule out whole."""
    from scipy.ndimage import gaussian_filter
    n, h, w = shape
    m = np.maximum(gaussian_filter(rng.standard_normal((n, h, w, c)), (0, sigma, sigma, 0)) * 5 + 0.5, 0)
    m[:4, ..., c // 2:] = 0
    m[4:, ..., :c // 2] = 0
    return m.astype(np.float32)


@pytest.mark.parametrize("k", [1, 3])
def test_group_bounds_skip_blocks_and_keep_exact_answers(k):
    """Groups of 32 pixels (4 rows x 8 columns) with a centroid and a certified radius: whole 32x32 blocks
    whose cone bound lies below every query's limit are skipped. Map sides that are not multiples of 4 and
    8 (padding slots), zero pixels in both maps, float16 and thread counts: exact search's answers."""
    rng = np.random.default_rng(21 + k)
    maps = two_family_maps(rng, (7, 23, 37))
    maps[0, 5, 3:9] = 0     # zero query pixels
    maps[2, 7:9, 2:6] = 0   # zero database pixels (groups with a zero member)
    q, db = maps[0], maps[1:]
    want = match.patches(q, db, kernel=1, k=k)
    for threads in (1, 2, 3):
        got, st = _search(q, db, k, threads=threads)
        assert _same(got, want), threads
    assert st["used_bounds"] and st["pairs_scored"] < 0.7 * st["pairs"], st
    got16, st16 = _search(q, db, k, dtype=np.float16)
    assert st16["used_bounds"] and _same(got16, match.patches(q.astype(np.float16), db.astype(np.float16),
                                                               kernel=1, k=k))


def test_group_bounds_stay_off_for_wide_groups():
    """Unstructured maps (every group about 90 degrees wide): no group bound is computed, every block scored."""
    maps = np.random.default_rng(4).standard_normal((4, 24, 32, 16)).astype(np.float32)
    got, st = _search(maps[0], maps[1:], 2)
    assert not st["used_bounds"] and st["pairs_scored"] == st["pairs"]
    assert _same(got, match.patches(maps[0], maps[1:], kernel=1, k=2))


def test_small_queries_use_plain_exact_search():
    """Under 512 query positions the database is not prepared: plain exact search, same answers."""
    maps = relu_maps(np.random.default_rng(2), 4, 20, 25, 16)   # 500 positions
    got, st = _search(maps[0], maps[1:], 2)
    assert st["filter"] == "float32" and not st["used_bounds"] and st["pilot_fraction"] == 0
    assert _same(got, match.patches(maps[0], maps[1:], kernel=1, k=2))


def test_switch_off_gives_same_answers(monkeypatch):
    """COMPNN_NO_AMX=1 runs the float32 path: same matches (in this process and in a child started with it)."""
    maps = relu_maps(np.random.default_rng(5), 4, 24, 24, 32)
    on, st_on = _search(maps[0], maps[1:], 3)
    monkeypatch.setenv("COMPNN_NO_AMX", "1")
    off, st_off = _search(maps[0], maps[1:], 3)
    assert (st_on["filter"], st_off["filter"]) == ("amx_bf16", "float32") and _same(on, off)
    monkeypatch.delenv("COMPNN_NO_AMX")
    code = (
        "import json, numpy as np, sys; sys.path.insert(0, 'tests');"
        "from test_amx_filter import relu_maps, _search; from compnn_py import match;"
        "maps = relu_maps(np.random.default_rng(11), 4, 24, 24, 32);"
        "m, st = _search(maps[0], maps[1:], 3);"
        "print(json.dumps([match.bf16_filter_ready(), st['filter'], m.image.tolist(), m.similarity.tolist()]))")
    runs = {}
    for off in ("1", "0"):
        env = dict(os.environ, COMPNN_NO_AMX=off)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        runs[off] = json.loads(out.stdout.splitlines()[-1])
    assert runs["1"][:2] == [False, "float32"] and runs["0"][:2] == [True, "amx_bf16"]
    assert runs["1"][2:] == runs["0"][2:]

