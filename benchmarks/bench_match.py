"""Benchmark of compnn_py.match on the cityscapes shape (128×128 query positions, C = 128, K = 4,
D = 2048) with realistic feature maps (benchmarks/smooth_maps.py), beside numpy/BLAS brute force
measured in the same run:

1. flat exact kernel (match.exact on flattened patch descriptors) vs numpy float32 matmul, GFLOP/s;
2. shift-sum exact (match.patches) vs flat exact, seconds per query image and top-1 agreement;
3. hierarchical (match.hierarchical) vs exact over the whole database: seconds per query image,
   fraction of positions with the same top-1 match and with the same label, peak memory;
4. with --large_k K: match.exact with k = 1 and k = K on --large_k_shape Q M D random ReLU rows
   (top-k bookkeeping cost; K above 16 uses the core's heap).

    python3 benchmarks/bench_match.py [--n 100 --shortlist 100 --queries 1 --threads 2 --save_npy DIR]
    python3 benchmarks/bench_match.py --only_large_k --large_k 8192 --large_k_shape 1024 20000 64 --threads 1
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from smooth_maps import ConvStack, make_set  # noqa: E402

from compnn_py import match  # noqa: E402


def descriptors(m, K, rows=None):
    """Flattened zero-padded K×K descriptors of an (H, W, C) map (rows: the query rows to keep)."""
    a = (K - 1) // 2
    p = np.pad(m.astype(np.float32), ((a, K - 1 - a), (a, K - 1 - a), (0, 0)))
    H, W, C = m.shape
    ys = range(H) if rows is None else rows
    out = np.empty((len(ys), W, K * K * C), np.float32)
    for i, y in enumerate(ys):
        for dy in range(K):
            for dx in range(K):
                out[i, :, (dy * K + dx) * C:(dy * K + dx + 1) * C] = p[y + dy, dx:dx + W]
    return out.reshape(-1, K * K * C)


def best_of(fn, reps):
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def large_k(k, Q, M, D, threads, seed):
    """Seconds of match.exact with k = 1 and with k on random ReLU rows."""
    rng = np.random.default_rng(seed)
    q = np.maximum(rng.standard_normal((Q, D)), 0).astype(np.float32)
    d = np.maximum(rng.standard_normal((M, D)), 0).astype(np.float32)
    for kk in (1, k):
        t, _ = best_of(lambda: match.exact(q, d, k=kk, threads=threads), 1)
        print(f"[large k] exact Q={Q} M={M} D={D} k={kk}: {t:.3f} s", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100, help="database images")
    ap.add_argument("--queries", type=int, default=1, help="query images for the hierarchical comparison")
    ap.add_argument("--shortlist", type=int, default=100)
    ap.add_argument("--coarse_k", type=int, default=8)
    ap.add_argument("--kernel_coarse", type=int, default=1)
    ap.add_argument("--margin", type=int, default=1)
    ap.add_argument("--flat_rows", type=int, default=8, help="query rows timed for flat search (extrapolated)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save_npy", type=Path, default=None, help="write the maps as .npy for compnn_bench")
    ap.add_argument("--large_k", type=int, default=0, help="also time match.exact with this k (0: skip)")
    ap.add_argument("--large_k_shape", type=int, nargs=3, default=[1024, 20000, 64], metavar=("Q", "M", "D"))
    ap.add_argument("--only_large_k", action="store_true", help="run only the large-k timing")
    args = ap.parse_args()
    threads = args.threads or len(os.sched_getaffinity(0))
    K = 4
    print(match.backend(), f"| threads={threads}", flush=True)
    if args.large_k:
        large_k(args.large_k, *args.large_k_shape, threads=threads, seed=args.seed)
    if args.only_large_k:
        return

    stack = ConvStack(args.seed)
    db = make_set(args.n, args.seed + 1, stack, "database")
    qs = make_set(args.queries, args.seed + 2, stack, "queries")
    if args.save_npy:
        args.save_npy.mkdir(parents=True, exist_ok=True)
        np.save(args.save_npy / "query.npy", qs["fine"][0])
        np.save(args.save_npy / "database.npy", db["fine"])
        np.save(args.save_npy / "labels.npy", db["labels"])
        np.save(args.save_npy / "query_coarse.npy", qs["coarse"][0])
        np.save(args.save_npy / "db_coarse.npy", db["coarse"])
        np.save(args.save_npy / "query_global.npy", qs["global"][0])
        np.save(args.save_npy / "db_global.npy", db["global"])
    qf = qs["fine"][0]
    H, W, C = qf.shape

    # 1. flat exact kernel vs numpy matmul, same problem, interleaved.
    rows = range(args.flat_rows)
    qd = descriptors(qf, K, rows)
    dd = descriptors(db["fine"][0], K)
    Q, D = qd.shape
    M = dd.shape[0]
    flops = 2.0 * Q * M * D
    t_np, t_ours = [], []
    for _ in range(args.reps):
        t_np.append(best_of(lambda: qd @ dd.T, 1)[0])
        t, (idx, sim) = best_of(lambda: match.exact(qd, dd, k=1, threads=threads), 1)
        t_ours.append(t)
    t_np, t_ours = min(t_np), min(t_ours)
    print(f"[flat] Q={Q} M={M} D={D}: numpy matmul {flops / t_np * 1e-9:.1f} GFLOP/s, match.exact "
          f"{flops / t_ours * 1e-9:.1f} GFLOP/s (incl. norms + top-1) -> {t_np / t_ours * 100:.0f}% of numpy")

    # 2. shift-sum vs flat, one database image, full query.
    t_shift, res = best_of(lambda: match.patches(qf, db["fine"][:1], kernel=K, threads=threads), args.reps)
    t_flat_img = t_ours * H / args.flat_rows
    t_np_img = t_np * H / args.flat_rows
    same = (res.y[:args.flat_rows, :, 0].ravel() * W + res.x[:args.flat_rows, :, 0].ravel() == idx[:, 0]).mean()
    close = (np.abs(res.similarity[:args.flat_rows, :, 0].ravel() - sim[:, 0]) <= 1e-5).mean()
    print(f"[shift-sum] per query image per database image: shift-sum {t_shift:.3f} s, flat exact "
          f"{t_flat_img:.3f} s (numpy matmul alone {t_np_img:.3f} s) -> {t_flat_img / t_shift:.1f}x faster than "
          f"flat; top-1 vs flat on {Q} positions: same match {same:.4f}, similarity within 1e-5 {close:.4f}")

    # 3. hierarchical vs exact over the whole database.
    for i in range(args.queries):
        t0 = time.perf_counter()
        exact = match.patches(qs["fine"][i], db["fine"], kernel=K, threads=threads)
        t_exact = time.perf_counter() - t0
        t0 = time.perf_counter()
        hier = match.hierarchical(qs["fine"][i], db["fine"], kernel_fine=K, query_coarse=qs["coarse"][i],
                                  db_coarse=db["coarse"], kernel_coarse=args.kernel_coarse,
                                  query_global=qs["global"][i], db_global=db["global"], shortlist=args.shortlist,
                                  coarse_k=args.coarse_k, margin=args.margin, threads=threads)
        t_hier = time.perf_counter() - t0
        same = ((hier.image == exact.image) & (hier.y == exact.y) & (hier.x == exact.x))[..., 0].mean()
        lab_e = db["labels"][exact.image[..., 0], exact.y[..., 0], exact.x[..., 0]]
        lab_h = db["labels"][hier.image[..., 0], hier.y[..., 0], hier.x[..., 0]]
        gap = (exact.similarity - hier.similarity)[..., 0]
        print(f"[hierarchical] query {i}: N={args.n} S={args.shortlist} coarse_k={args.coarse_k} "
              f"kernel_coarse={args.kernel_coarse} margin={args.margin}: {t_hier:.2f} s per query image vs exact "
              f"{t_exact:.1f} s ({t_exact / t_hier:.0f}x); same top-1 {same:.4f}, same label "
              f"{(lab_e == lab_h).mean():.4f}, mean similarity loss {gap.mean():.5f}", flush=True)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"peak RSS {rss:.2f} GiB (database fine maps float16: {db['fine'].nbytes / 2**30:.2f} GiB)")


if __name__ == "__main__":
    main()
