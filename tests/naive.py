"""Independent float64 references for the matcher tests: brute-force cosine similarities and top-k,
and flattened K×K patch descriptors, written without anything from compnn_py."""

import numpy as np


def naive_cosine(q, d):
    """(Q, M) cosine similarities in float64 (zero vectors: similarity 0)."""
    q = q.astype(np.float64)
    d = d.astype(np.float64)
    # Rows are scaled to max-abs 1 first, so float64 itself cannot overflow for any float32 input.
    q = q / np.where(np.abs(q).max(axis=1, keepdims=True) > 0, np.abs(q).max(axis=1, keepdims=True), 1)
    d = d / np.where(np.abs(d).max(axis=1, keepdims=True) > 0, np.abs(d).max(axis=1, keepdims=True), 1)
    qn = np.linalg.norm(q, axis=1, keepdims=True)
    dn = np.linalg.norm(d, axis=1, keepdims=True)
    return (q @ d.T) / np.where(qn > 0, qn, 1) / np.where(dn > 0, dn, 1).T


def naive_topk(q, d, k):
    """Cosine top-k in float64 with the lowest index winning ties (zero vectors: similarity 0)."""
    s = naive_cosine(q, d)
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(s, order, axis=1)


def naive_patches(m, K):
    """(..., H, W, C) maps -> (..., H, W, K*K*C) zero-padded descriptors, offsets -(K-1)//2 .. K//2."""
    a = (K - 1) // 2
    pad = [(0, 0)] * (m.ndim - 3) + [(a, K - 1 - a), (a, K - 1 - a), (0, 0)]
    p = np.pad(m.astype(np.float64), pad)
    H, W = m.shape[-3], m.shape[-2]
    parts = [p[..., dy:dy + H, dx:dx + W, :] for dy in range(K) for dx in range(K)]
    return np.concatenate(parts, axis=-1)


def assert_top1_agrees(idx, ref_idx, cosine, atol=1e-5):
    """Top-1 indices equal the reference's, except where both picks are within atol of each other in the
    float64 `cosine` matrix (a near-tie that float32 rounding may order either way)."""
    idx, ref_idx = np.asarray(idx).reshape(-1), np.asarray(ref_idx).reshape(-1)
    rows = np.arange(len(idx))
    gap = np.abs(cosine[rows, idx] - cosine[rows, ref_idx])
    bad = (idx != ref_idx) & (gap > atol)
    assert not bad.any(), f"top-1 differs beyond near-ties at {np.flatnonzero(bad)[:10]}: gap {gap[bad][:10]}"
