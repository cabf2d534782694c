"""compnn_py.match against naive numpy references: flat, patch and hierarchical search, ties, borders,
float16 and memmapped input, thread-count invariance, large k, extreme scales, the argument checks (all
in the C++ core; array conversion is tested in test_match_api.py), thread-start failure and Ctrl-C."""

import os
import select
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from compnn_py import _core, match
from naive import assert_top1_agrees, naive_cosine, naive_patches, naive_topk

ROOT = Path(__file__).resolve().parents[1]


def relu_maps(rng, shape, dtype=np.float32):
    return np.maximum(rng.standard_normal(shape), 0).astype(dtype)


def check_top1(query, db, res, K, rows=None):
    """Top-1 similarity equals the reference best; the returned position really has that similarity."""
    rows = np.arange(db.shape[0]) if rows is None else np.asarray(rows)
    qd = naive_patches(query, K).reshape(-1, K * K * query.shape[-1])
    dd_all = naive_patches(db, K)
    dd = dd_all[rows].reshape(-1, qd.shape[1])
    _, ref = naive_topk(qd, dd, 1)
    got = res.similarity[..., 0].reshape(-1)
    np.testing.assert_allclose(got, ref[:, 0], atol=1e-5)
    assert np.isin(res.image, rows).all()
    picked = dd_all[res.image[..., 0], res.y[..., 0], res.x[..., 0]].reshape(-1, qd.shape[1])
    qn, pn = np.linalg.norm(qd, axis=1), np.linalg.norm(picked, axis=1)
    cos = np.einsum("ij,ij->i", qd, picked) / np.where(qn * pn > 0, qn * pn, 1)
    np.testing.assert_allclose(cos, ref[:, 0], atol=1e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_exact_matches_naive(rng, dtype):
    q = relu_maps(rng, (300, 37), dtype)
    d = relu_maps(rng, (2100, 37), dtype)  # crosses the core's block edges
    idx, sim = match.exact(q, d, k=4)
    assert idx.shape == (300, 4) and idx.dtype == np.int64 and sim.dtype == np.float32
    ref_idx, ref_sim = naive_topk(q, d, 4)
    np.testing.assert_allclose(sim, ref_sim, atol=1e-5)
    assert (idx[:, 0] == ref_idx[:, 0]).mean() > 0.99  # the rest are float-rounding near-ties
    assert np.all(np.diff(sim, axis=1) <= 0)


def test_exact_ties_and_zero_vectors():
    d = np.array([[1, 0], [0, 1], [2, 0], [0, 0], [1, 0]], np.float32)
    q = np.array([[3, 0], [0, 0], [1, 1]], np.float32)
    idx, sim = match.exact(q, d, k=3)
    np.testing.assert_array_equal(idx[0], [0, 2, 4])  # equal cosine 1: lowest index first
    np.testing.assert_array_equal(idx[1], [0, 1, 2])  # zero query: similarity 0 to all
    np.testing.assert_array_equal(sim[1], [0, 0, 0])
    np.testing.assert_array_equal(idx[2], [0, 1, 2])
    np.testing.assert_allclose(sim[2], [np.sqrt(0.5)] * 3, rtol=1e-6)


def test_exact_identical_for_any_thread_count(rng):
    q = relu_maps(rng, (520, 64))
    d = relu_maps(rng, (5000, 64))
    base = match.exact(q, d, k=3, threads=1)
    for t in (2, 4):
        out = match.exact(q, d, k=3, threads=t)
        np.testing.assert_array_equal(out[0], base[0])
        np.testing.assert_array_equal(out[1], base[1])


@pytest.mark.parametrize("K", [1, 2, 3, 4, 5, 6, 7])
def test_patches_match_naive_borders_and_odd_sizes(rng, K):
    query = relu_maps(rng, (7, 9, 5))
    db = relu_maps(rng, (3, 11, 67, 5))  # 67 wide: crosses the 64-wide database tiles
    res = match.patches(query, db, kernel=K, k=2)
    assert res.image.shape == (7, 9, 2) and res.image.dtype == np.int32 and res.similarity.dtype == np.float32
    check_top1(query, db, res, K)
    assert np.all(res.similarity[..., 0] >= res.similarity[..., 1])


def test_patches_k4_window_offsets():
    """K = 4 covers offsets -1..2: a single bright pixel is seen by positions 1 up/left to 2 down/right."""
    db = np.zeros((1, 8, 8, 1), np.float32)
    db[0, 4, 4, 0] = 1.0
    query = np.zeros((8, 8, 1), np.float32)
    query[3, 3, 0] = 1.0  # at window offset (0, 0) of query position (3, 3)
    res = match.patches(query, db, kernel=4)
    assert (res.y[3, 3, 0], res.x[3, 3, 0]) == (4, 4)
    assert res.similarity[3, 3, 0] == pytest.approx(1.0)
    query2 = np.zeros((8, 8, 1), np.float32)
    query2[5, 5, 0] = 1.0  # at offset (+2, +2) of query position (3, 3): db position (2, 2) sees it there
    res2 = match.patches(query2, db, kernel=4)
    assert (res2.y[3, 3, 0], res2.x[3, 3, 0]) == (2, 2)


def test_patches_rows_name_store_rows(rng):
    query = relu_maps(rng, (6, 6, 4))
    db = relu_maps(rng, (6, 6, 6, 4))
    rows = np.array([5, 1, 3])
    res = match.patches(query, db, kernel=3, rows=rows, k=2)
    check_top1(query, db, res, 3, rows=rows)
    db[1] = query  # now row 1 holds the query itself: every position matches itself exactly
    res = match.patches(query, db, kernel=3, rows=rows)
    assert (res.image == 1).all()
    yy, xx = np.mgrid[:6, :6]
    np.testing.assert_array_equal(res.y[..., 0], yy)
    np.testing.assert_array_equal(res.x[..., 0], xx)


def test_patches_float16_memmap_equals_float32_of_rounded(tmp_path, rng):
    query = relu_maps(rng, (9, 10, 8))
    db16 = relu_maps(rng, (4, 12, 13, 8), np.float16)
    path = tmp_path / "db.npy"
    np.save(path, db16)
    mm = np.load(path, mmap_mode="r")
    a = match.patches(query, mm, kernel=4, k=3)
    b = match.patches(query, db16.astype(np.float32), kernel=4, k=3)
    for f in ("image", "y", "x", "similarity"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))


def test_patches_identical_for_any_thread_count(rng):
    query = relu_maps(rng, (70, 20, 6))  # two query bands of 64 rows
    db = relu_maps(rng, (3, 40, 70, 6))
    base = match.patches(query, db, kernel=4, k=2, threads=1)
    for t in (2, 4):
        out = match.patches(query, db, kernel=4, k=2, threads=t)
        for f in ("image", "y", "x", "similarity"):
            np.testing.assert_array_equal(getattr(out, f), getattr(base, f))


def test_patches_zero_maps_match_lowest_index():
    query = np.zeros((3, 3, 2), np.float32)
    db = np.zeros((2, 4, 4, 2), np.float16)
    res = match.patches(query, db, kernel=2)
    assert (res.image == 0).all() and (res.y == 0).all() and (res.x == 0).all() and (res.similarity == 0).all()


def test_global_shortlist(rng):
    db = relu_maps(rng, (30, 2, 2, 8))
    query = relu_maps(rng, (2, 2, 8))
    rows, sim = match.global_shortlist(query, db, 5)
    ref_idx, ref_sim = naive_topk(query.reshape(1, -1), db.reshape(30, -1), 5)
    np.testing.assert_array_equal(rows, ref_idx[0])
    np.testing.assert_allclose(sim, ref_sim[0], atol=1e-6)
    assert rows.dtype == np.int32
    sub = np.array([29, 3, 7, 11])
    rows2, _ = match.global_shortlist(query, db, 2, rows=sub)
    sub_idx, _ = naive_topk(query.reshape(1, -1), db[sub].reshape(len(sub), -1), 2)
    np.testing.assert_array_equal(rows2, sub[sub_idx[0]])


def pooled(maps, f):
    """Average pooling by f over the two spatial axes of (..., H, W, C)."""
    s = maps.shape
    return maps.reshape(*s[:-3], s[-3] // f, f, s[-2] // f, f, s[-1]).mean(axis=(-4, -2)).astype(np.float32)


def pyramid(rng, n=5, h=16, w=12, c=6):
    db = relu_maps(rng, (n, h, w, c))
    q = relu_maps(rng, (h, w, c))
    return dict(query_fine=q, db_fine=db, query_coarse=pooled(q, 4), db_coarse=pooled(db, 4),
                query_global=q.mean(axis=(0, 1)), db_global=db.mean(axis=(1, 2)))


def test_hierarchical_without_pruning_reproduces_exact(rng):
    p = pyramid(rng)
    n, hc, wc = p["db_coarse"].shape[:3]
    exact = match.patches(p["query_fine"], p["db_fine"], kernel=4, k=2)
    for ck in (None, n * hc * wc):  # None skips the coarse stage; all positions runs the pruned path
        res = match.hierarchical(kernel_fine=4, kernel_coarse=2, shortlist=n, coarse_k=ck, margin=0, k=2,
                                 prune="coarse", **p)
        np.testing.assert_allclose(res.similarity, exact.similarity, atol=1e-5)
        same = (res.image == exact.image) & (res.y == exact.y) & (res.x == exact.x)
        assert same[..., 0].mean() > 0.99


def test_hierarchical_pruned_is_a_restriction_of_exact(rng):
    p = pyramid(rng, n=8)
    exact = match.patches(p["query_fine"], p["db_fine"], kernel=4)
    res = match.hierarchical(kernel_fine=4, kernel_coarse=1, shortlist=3, coarse_k=2, margin=1, prune="coarse", **p)
    assert (res.similarity[..., 0] <= exact.similarity[..., 0] + 1e-5).all()
    rows, _ = match.global_shortlist(p["query_global"], p["db_global"], 3)
    assert np.isin(res.image, rows).all()
    check_candidates_respected(p, res, rows, coarse_k=2, margin=1)


def check_candidates_respected(p, res, rows, coarse_k, margin):
    """Every fine match lies inside (margin-widened) fine region of one of its cell's coarse candidates."""
    coarse = match.patches(p["query_coarse"], p["db_coarse"], kernel=1, k=coarse_k, rows=rows)
    H, W = p["query_fine"].shape[:2]
    Hc, Wc = p["query_coarse"].shape[:2]
    Hf, Wf = p["db_fine"].shape[1:3]
    Hcd, Wcd = p["db_coarse"].shape[1:3]
    for y in range(H):
        for x in range(W):
            cy, cx = y * Hc // H, x * Wc // W
            ok = False
            for j in range(coarse_k):
                r, my, mx = coarse.image[cy, cx, j], coarse.y[cy, cx, j], coarse.x[cy, cx, j]
                fy, fx = res.y[y, x, 0], res.x[y, x, 0]
                ok |= (res.image[y, x, 0] == r and my * Hf // Hcd - margin <= fy < (my + 1) * Hf // Hcd + margin
                       and mx * Wf // Wcd - margin <= fx < (mx + 1) * Wf // Wcd + margin)
            assert ok, (y, x)


def test_hierarchical_finds_a_copy_of_the_query(rng):
    p = pyramid(rng, n=6)
    p["db_fine"][4] = p["query_fine"]
    p["db_coarse"][4] = p["query_coarse"]
    p["db_global"][4] = p["query_global"]
    res = match.hierarchical(kernel_fine=4, kernel_coarse=2, shortlist=2, coarse_k=1, margin=0, **p)
    assert (res.image == 4).all()
    np.testing.assert_allclose(res.similarity, 1.0, atol=1e-5)


def test_hierarchical_identical_for_any_thread_count(rng):
    p = pyramid(rng, n=6, h=24, w=20)
    for prune in ("coarse", "bounds"):
        kw = dict(kernel_fine=4, kernel_coarse=2, shortlist=4, coarse_k=3, k=2, prune=prune, **p)
        base = match.hierarchical(threads=1, **kw)
        for t in (2, 4):
            out = match.hierarchical(threads=t, **kw)
            for f in ("image", "y", "x", "similarity"):
                np.testing.assert_array_equal(getattr(out, f), getattr(base, f))


# ---- argument checks: each names the argument -------------------------------------------------------

def test_bad_arguments_name_the_argument(rng):
    q = relu_maps(rng, (4, 4, 3))
    db = relu_maps(rng, (2, 4, 4, 3))
    cases = [
        (lambda: match.patches(q.astype(np.complex64), db, kernel=2), TypeError, "query"),
        (lambda: match.patches(q, db.astype(np.int32), kernel=2), TypeError, "database"),
        (lambda: match.patches(q[None], db, kernel=2), ValueError, "query"),
        (lambda: match.patches(q, np.ascontiguousarray(db[..., :2]), kernel=2), ValueError, "channels"),
        (lambda: match.patches(q, db, kernel=0), ValueError, "kernel"),
        (lambda: match.patches(q, db, kernel=2, k=33), ValueError, "k"),
        (lambda: match.patches(q, db, kernel=2, rows=[0, 0]), ValueError, "rows"),
        (lambda: match.patches(q, db, kernel=2, rows=[2]), ValueError, "rows"),
        (lambda: match.patches(q, db, kernel=2, rows=[]), ValueError, "rows"),
        (lambda: match.patches(q, db, kernel=2, rows=[0.5]), TypeError, "rows"),
        (lambda: match.patches(q, db, kernel=2, threads=0), ValueError, "threads"),
        (lambda: match.patches(q, db[:0], kernel=2), ValueError, "database"),
        (lambda: match.patches([[1.0]], db, kernel=2), ValueError, "query"),
        (lambda: match.patches(None, db, kernel=2), TypeError, "query"),
        (lambda: match.exact(q[0], db[0, 0], k=5), ValueError, "k"),
        (lambda: match.exact(q[0], np.ascontiguousarray(db[0, 0, :, :2])), ValueError, "dims"),
        (lambda: match.global_shortlist(q, db, 3), ValueError, "S"),
        (lambda: match.exact(np.zeros((2, 0), np.float32), np.zeros((3, 0), np.float32)), ValueError, "queries"),
        (lambda: match.global_shortlist(q[0], db, 1), ValueError, "database"),
    ]
    for fn, exc, word in cases:
        with pytest.raises(exc, match=word):
            fn()


def test_int_arguments_beyond_32_bits_name_the_argument(rng):
    """Every integer argument is range-checked in the core: no pybind11 conversion error, no overflow."""
    q = relu_maps(rng, (4, 4, 3))
    db = relu_maps(rng, (2, 4, 4, 3))
    p = pyramid(rng)
    hier = dict(kernel_fine=4, kernel_coarse=2, shortlist=2, **p)
    for big in (2**31, 2**40, 2**63, 2**70):
        cases = [
            ("threads", lambda: match.patches(q, db, kernel=2, threads=big)),
            ("kernel", lambda: match.patches(q, db, kernel=big)),
            ("k", lambda: match.patches(q, db, kernel=2, k=big)),
            ("k", lambda: match.exact(q[0], db[0, 0], k=big)),
            ("S", lambda: match.global_shortlist(q, db, big)),
            ("shortlist", lambda: match.hierarchical(**dict(hier, shortlist=big))),
            ("coarse_k", lambda: match.hierarchical(coarse_k=-big, **hier)),
            ("margin", lambda: match.hierarchical(margin=big, **hier)),
            ("kernel_coarse", lambda: match.hierarchical(**dict(hier, kernel_coarse=big))),
        ]
        for name, fn in cases:
            with pytest.raises(ValueError, match=f"^{name}: "):
                fn()


def test_checks_live_in_the_core(rng):
    """The binding itself rejects what match.py used to check (duplicate rows were caught only in Python
    before), with the same messages, so there is one place for each check."""
    q = relu_maps(rng, (4, 4, 3))
    db = relu_maps(rng, (2, 4, 4, 3))
    with pytest.raises(ValueError, match="^rows: contains duplicates"):
        _core.patches(q, db, [1, 1], 2, 1, 1)
    with pytest.raises(ValueError, match="^rows: is empty"):
        _core.patches(q, db, [], 2, 1, 1)
    with pytest.raises(ValueError, match="^queries: contains NaN"):
        _core.exact(np.full((2, 3), np.nan, np.float32), db[0, 0], None, 1, 1)
    with pytest.raises(TypeError, match="^k: expected an integer, got bool"):
        match.patches(q, db, kernel=2, k=True)
    with pytest.raises(TypeError, match="^kernel: expected an integer, got float"):
        match.patches(q, db, kernel=2.0)
    # The binding takes only what it can borrow; compnn_py.match converts the rest (test_match_api.py).
    with pytest.raises(TypeError, match="^query: expected float32 or float16"):
        _core.patches(q.astype(">f4"), db, None, 2, 1, 1)  # non-native byte order is not float32
    with pytest.raises(ValueError, match="^query: expected a C-contiguous array"):
        _core.patches(q[:, ::2], db, None, 2, 1, 1)
    with pytest.raises(ValueError, match="^coarse_k: 0 must be >= 1"):
        match.hierarchical(kernel_fine=4, kernel_coarse=2, shortlist=2, coarse_k=0, **pyramid(rng))
    assert match.patches(q, db, kernel=np.int64(2), k=np.int32(1), threads=np.uint8(2)).image.shape == (4, 4, 1)


def test_large_k_matches_naive(rng):
    """k far above the sorted-list size (a heap in the core): the naive top-k, and small k's prefix."""
    q = rng.standard_normal((4, 8)).astype(np.float32)
    d = rng.standard_normal((20000, 8)).astype(np.float32)
    d[777] = d[5]  # an exact tie: 5 comes first
    q[0] = d[5]
    idx, sim = match.exact(q, d, k=4096)
    assert idx.shape == (4, 4096)
    ref_idx, ref_sim = naive_topk(q, d, 4096)
    np.testing.assert_allclose(sim, ref_sim, atol=1e-5)
    cos = naive_cosine(q, d)
    np.testing.assert_allclose(np.take_along_axis(cos, idx, axis=1), ref_sim, atol=1e-5)  # right similarities
    assert all(len(set(row)) == 4096 for row in idx)
    assert idx[0, 0] == 5 and idx[0, 1] == 777
    small_idx, small_sim = match.exact(q, d, k=16)
    np.testing.assert_array_equal(idx[:, :16], small_idx)
    np.testing.assert_array_equal(sim[:, :16], small_sim)
    other = match.exact(q, d, k=4096, threads=3)
    np.testing.assert_array_equal(other[0], idx)
    np.testing.assert_array_equal(other[1], sim)
    # patch search with k above the sorted-list size
    query = relu_maps(rng, (5, 6, 3))
    db = relu_maps(rng, (2, 20, 30, 3))
    res = match.patches(query, db, kernel=3, k=500)
    qd = naive_patches(query, 3).reshape(-1, 27)
    dd = naive_patches(db, 3).reshape(-1, 27)
    _, ref = naive_topk(qd, dd, 500)
    np.testing.assert_allclose(res.similarity.reshape(-1, 500), ref, atol=1e-5)


def test_hierarchical_is_scale_invariant(rng):
    p = pyramid(rng)
    kw = dict(kernel_fine=4, kernel_coarse=2, shortlist=3, coarse_k=4, margin=1, k=2)
    base = match.hierarchical(**kw, **p)
    for e in (-36, -30, 25, 34):
        scaled = {name: (a.astype(np.float64) * 10.0**e).astype(np.float32) for name, a in p.items()}
        res = match.hierarchical(**kw, **scaled)
        np.testing.assert_allclose(res.similarity, base.similarity, atol=1e-5)
        assert ((res.image == base.image) & (res.y == base.y) & (res.x == base.x))[..., 0].mean() > 0.99


def _child_env(**extra):
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), **extra)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc for the address-space limit")
def test_thread_start_failure_keeps_results():
    """Asking for 100000 threads while the OS can start only a few (address space capped) used to abort
    the interpreter (std::system_error past joinable threads); now the search runs on the threads that
    started and gives the single-thread result. (Eigen GEMMs: OpenBLAS would want its own per-thread
    buffers inside the capped address space.)"""
    code = """
        import resource
        import numpy as np
        from compnn_py import match
        rng = np.random.default_rng(0)
        q = rng.random((6, 6, 4), dtype=np.float32)
        db = rng.random((300, 6, 6, 4), dtype=np.float32)
        base = match.patches(q, db, kernel=3, k=2, threads=1)
        vm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize:")) * 1024
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        cap = vm + (24 << 20)  # room for ~2 thread stacks of 8 MiB
        if hard != resource.RLIM_INFINITY and hard < cap:
            raise SystemExit("skip: hard address-space limit too low")
        resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
        res = match.patches(q, db, kernel=3, k=2, threads=100_000)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        for f in ("image", "y", "x", "similarity"):
            assert np.array_equal(getattr(res, f), getattr(base, f)), f
        print("identical")
    """
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120,
                         env=_child_env(COMPNN_BLAS="eigen"))
    if out.stderr.startswith("skip:"):
        pytest.skip(out.stderr.strip())
    assert out.returncode == 0 and out.stdout.strip() == "identical", (out.returncode, out.stderr[-2000:])


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (Linux /proc), or None where there is no /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_ctrl_c_interrupts_a_long_search():
    """SIGINT during a long C++ search raises KeyboardInterrupt within a few seconds (it used to be
    ignored until the search ended). No timing of the start: the child says READY once imported and
    its data made, the test waits until the child has then burnt CPU in the search, and only the
    interrupt itself is timed (generously)."""
    code = """
        import numpy as np
        from compnn_py import match
        rng = np.random.default_rng(0)
        q = rng.random((128, 128, 64), dtype=np.float32)
        db = np.concatenate([rng.random((2, 128, 128, 64), dtype=np.float32).astype(np.float16)] * 30)
        try:
            print("READY", flush=True)
            match.patches(q, db, kernel=4, threads=2)  # minutes of work on any machine
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            raise SystemExit(3)
        print("finished", flush=True)
    """
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_child_env())
    try:
        ready = select.select([proc.stdout], [], [], 900)[0]  # a bound for a hung child only
        assert ready and proc.stdout.readline().strip() == "READY", proc.stderr.read()
        # In the search: the child has used half a CPU-second since READY (it does nothing else now).
        at_ready = _cpu_seconds(proc.pid)
        for _ in range(18000):  # polls every 50 ms, at most 15 minutes
            now = _cpu_seconds(proc.pid)
            if at_ready is None or now is None or now - at_ready >= 0.5 or proc.poll() is not None:
                break
            time.sleep(0.05)
        t = time.perf_counter()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
        latency = time.perf_counter() - t
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert out.strip() == "interrupted" and proc.returncode == 3, (out, err[-2000:])
    assert latency < 20, latency


def test_non_finite_values_are_rejected(rng):
    q = relu_maps(rng, (4, 4, 3))
    db = relu_maps(rng, (2, 4, 4, 3))
    bad_q = q.copy()
    bad_q[1, 2, 0] = np.nan
    with pytest.raises(ValueError, match="query"):
        match.patches(bad_q, db, kernel=2)
    bad_db = db.copy()
    bad_db[1, 3, 3, 2] = np.inf
    with pytest.raises(ValueError, match="database"):
        match.patches(q, bad_db, kernel=2)
    with pytest.raises(ValueError, match="database"):
        match.exact(q[0], bad_db[1, 3])


def test_empty_query_map_gives_empty_matches(rng):
    db = relu_maps(rng, (2, 4, 4, 3))
    res = match.patches(np.zeros((0, 5, 3), np.float32), db, kernel=3, k=2)
    assert res.image.shape == (0, 5, 2)
    idx, sim = match.exact(np.zeros((0, 3), np.float32), db[0, 0])
    assert idx.shape == (0, 1)


def test_hierarchical_bad_arguments(rng):
    p = pyramid(rng)
    with pytest.raises(ValueError, match="shortlist"):
        match.hierarchical(kernel_fine=4, kernel_coarse=2, shortlist=99, **p)
    with pytest.raises(ValueError, match="margin"):
        match.hierarchical(kernel_fine=4, kernel_coarse=2, margin=-1, shortlist=2, **p)
    q = dict(p, db_global=p["db_global"][:3])
    with pytest.raises(ValueError, match="db_global"):
        match.hierarchical(kernel_fine=4, kernel_coarse=2, shortlist=2, **q)
    q = dict(p, query_coarse=relu_maps(rng, (32, 32, 6)))
    with pytest.raises(ValueError, match="query_coarse"):
        match.hierarchical(kernel_fine=4, kernel_coarse=2, shortlist=2, **q)


def test_gil_is_released_during_search(rng):
    """While one thread searches, another keeps running Python: no long stall of the main thread."""
    import threading
    import time

    query = relu_maps(rng, (64, 64, 32))
    db = relu_maps(rng, (6, 64, 64, 32), np.float16)
    done = threading.Event()
    span = {}

    def work():
        t = time.perf_counter()
        match.patches(query, db, kernel=4, threads=1)
        span["t"] = time.perf_counter() - t
        done.set()

    worker = threading.Thread(target=work)
    stamps = [time.perf_counter()]
    worker.start()
    while not done.is_set():
        stamps.append(time.perf_counter())
    worker.join()
    max_gap = np.diff(stamps).max()
    assert span["t"] > 0.1, "workload too small to tell"
    assert max_gap < 0.5 * span["t"], (max_gap, span["t"])
