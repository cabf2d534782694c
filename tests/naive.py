"""Independent float64 references for the matcher tests: brute-force cosine top-k and flattened
K×K patch descriptors, written without anything from compnn_py."""

import numpy as np


def naive_topk(q, d, k):
    """Cosine top-k in float64 with the lowest index winning ties (zero vectors: similarity 0)."""
    q = q.astype(np.float64)
    d = d.astype(np.float64)
    qn = np.linalg.norm(q, axis=1, keepdims=True)
    dn = np.linalg.norm(d, axis=1, keepdims=True)
    s = (q @ d.T) / np.where(qn > 0, qn, 1) / np.where(dn > 0, dn, 1).T
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
