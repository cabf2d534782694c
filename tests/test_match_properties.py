"""Hypothesis property tests at the compnn_py.match boundary: any small shapes, dtypes, kernels and k
give the naive reference's best similarity, sorted results, valid indices and thread invariance; and
results do not change when queries and/or database are multiplied by 10**e, e in [-30, 30]."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from compnn_py import match
from naive import assert_top1_agrees, naive_cosine, naive_patches, naive_topk


@st.composite
def map_problems(draw, dtypes=(np.float32, np.float16)):
    c = draw(st.integers(1, 5))
    h, w = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    n, dh, dw = draw(st.integers(1, 3)), draw(st.integers(1, 7)), draw(st.integers(1, 7))
    kernel = draw(st.integers(1, 5))
    k = draw(st.integers(1, min(4, n * dh * dw)))
    dtype = draw(st.sampled_from(dtypes))
    seed = draw(st.integers(0, 2**31 - 1))
    sparsity = draw(st.sampled_from([0.0, 0.5, 0.9]))  # post-ReLU maps have many zeros
    rng = np.random.default_rng(seed)
    q = rng.random((h, w, c)) * (rng.random((h, w, c)) >= sparsity)
    d = rng.random((n, dh, dw, c)) * (rng.random((n, dh, dw, c)) >= sparsity)
    return q.astype(dtype), d.astype(dtype), kernel, k


@settings(max_examples=60, deadline=None)
@given(map_problems())
def test_patches_agree_with_reference(problem):
    q, d, kernel, k = problem
    res = match.patches(q, d, kernel=kernel, k=k, threads=2)
    qd = naive_patches(q.astype(np.float32), kernel).reshape(-1, kernel * kernel * q.shape[-1])
    dd = naive_patches(d.astype(np.float32), kernel).reshape(-1, qd.shape[1])
    ref_idx, ref_sim = naive_topk(qd, dd, k)
    np.testing.assert_allclose(res.similarity.reshape(-1, k), ref_sim, atol=2e-5)
    assert (np.diff(res.similarity, axis=-1) <= 0).all()
    assert (res.image >= 0).all() and (res.image < d.shape[0]).all()
    assert (res.y < d.shape[1]).all() and (res.x < d.shape[2]).all()
    flat = (res.image.astype(np.int64) * d.shape[1] + res.y) * d.shape[2] + res.x
    assert all(len(set(row)) == k for row in flat.reshape(-1, k))  # k distinct positions
    single = match.patches(q, d, kernel=kernel, k=k, threads=1)
    np.testing.assert_array_equal(single.similarity, res.similarity)
    np.testing.assert_array_equal(single.image, res.image)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 40), st.integers(1, 300), st.integers(1, 12),
       st.sampled_from([np.float32, np.float16]))
def test_exact_agrees_with_reference(seed, nq, nd, dim, dtype):
    rng = np.random.default_rng(seed)
    q = np.maximum(rng.standard_normal((nq, dim)), 0).astype(dtype)
    d = np.maximum(rng.standard_normal((nd, dim)), 0).astype(dtype)
    k = int(rng.integers(1, min(nd, 5) + 1))
    idx, sim = match.exact(q, d, k=k)
    _, ref_sim = naive_topk(q, d, k)
    np.testing.assert_allclose(sim, ref_sim, atol=2e-5)
    got = naive_topk(q, d, nd)  # the similarity each returned index really has
    full = np.empty((nq, nd))
    np.put_along_axis(full, got[0], got[1], axis=1)
    np.testing.assert_allclose(np.take_along_axis(full, idx, axis=1), ref_sim, atol=2e-5)


def times_ten_to(a, e):
    """a * 10**e rounded once to float32 (the scaled input a caller would hold)."""
    return (a.astype(np.float64) * 10.0 ** e).astype(np.float32)


# float32 only: float16 cannot hold 10**±30. Without rescaling, float32 dot products overflow to inf for
# |x| >~ 1e19 (every similarity inf, top-1 collapses to index 0) and underflow to 0 for |x| <~ 1e-22.
scales = st.tuples(st.integers(-30, 30), st.integers(-30, 30), st.sampled_from(["query", "database", "both"]))


@settings(max_examples=50, deadline=None)
@given(map_problems(dtypes=(np.float32,)), scales)
def test_patches_are_scale_invariant(problem, scale):
    q, d, kernel, k = problem
    eq, ed, which = scale
    q2 = times_ten_to(q, eq) if which != "database" else q
    d2 = times_ten_to(d, ed) if which != "query" else d
    base = match.patches(q, d, kernel=kernel, k=k, threads=2)
    res = match.patches(q2, d2, kernel=kernel, k=k, threads=2)
    np.testing.assert_allclose(res.similarity[..., 0], base.similarity[..., 0], atol=1e-5)
    qd = naive_patches(q, kernel).reshape(-1, kernel * kernel * q.shape[-1])
    dd = naive_patches(d, kernel).reshape(-1, qd.shape[1])
    flat = lambda m: ((m.image.astype(np.int64) * d.shape[1] + m.y) * d.shape[2] + m.x)[..., 0]  # noqa: E731
    assert_top1_agrees(flat(res), flat(base), naive_cosine(qd, dd))


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 30), st.integers(1, 200), st.integers(1, 12), scales)
def test_exact_is_scale_invariant(seed, nq, nd, dim, scale):
    eq, ed, which = scale
    rng = np.random.default_rng(seed)
    q = (rng.standard_normal((nq, dim)) * (rng.random((nq, dim)) > 0.3)).astype(np.float32)
    d = (rng.standard_normal((nd, dim)) * (rng.random((nd, dim)) > 0.3)).astype(np.float32)
    q2 = times_ten_to(q, eq) if which != "database" else q
    d2 = times_ten_to(d, ed) if which != "query" else d
    base_idx, base_sim = match.exact(q, d)
    idx, sim = match.exact(q2, d2)
    np.testing.assert_allclose(sim, base_sim, atol=1e-5)
    assert_top1_agrees(idx[:, 0], base_idx[:, 0], naive_cosine(q, d))
