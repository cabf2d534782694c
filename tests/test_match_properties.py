"""Hypothesis property tests at the compnn_py.match boundary: any small shapes, dtypes, kernels and k
give the naive reference's best similarity, sorted results, valid indices and thread invariance."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from compnn_py import match
from naive import naive_patches, naive_topk


@st.composite
def map_problems(draw):
    c = draw(st.integers(1, 5))
    h, w = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    n, dh, dw = draw(st.integers(1, 3)), draw(st.integers(1, 7)), draw(st.integers(1, 7))
    kernel = draw(st.integers(1, 5))
    k = draw(st.integers(1, min(4, n * dh * dw)))
    dtype = draw(st.sampled_from([np.float32, np.float16]))
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
