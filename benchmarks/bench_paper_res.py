"""The matchers at the paper's two problem sizes on this machine, beside numpy's GEMM peak and the paper's
CPU times (Liu et al., 40 threads: 13 min per CamVid image, 22 min per Cityscapes image).

    python3 benchmarks/bench_paper_res.py [--fraction 0.05] [--threads 2] [--repeat 3] [--camvid_checkpoint RUN_DIR]
        [--cache DIR] [--json out.json]

Shapes (features of real photos: the CamVid train split in /work/shared/data/camvid, spread over it):
* CamVid: SegNet-basic at 360x480, fine layer conv_decode1 (360x480x64, K = 1), shortlist S = 10;
* CamVid at 90x120 (`camvid90`, the real-data preset's size): conv_decode1 90x120x64, K = 1, S = 10,
  always timed on the whole image (--fraction does not apply);
* Cityscapes: Pix2Pix (ngf 64) at 256x256, fine layer decoder_1_input (128x128x128, K = 4), S = 100.
  No Cityscapes photos are stored here, so CamVid photos resized to 256x256 stand in.
Weights are random (seed 0; speed does not depend on training) unless --camvid_checkpoint names a
trained SegNet-basic run directory (its checkpoints/), whose features the agreement figures then use.

Per shape, on the same band of query rows (--fraction of the rows, in the middle of the query map;
seconds are scaled up to a whole image, and the output says so):
* exact search within the shortlist (match.patches over the S images);
* the fast matcher (match.hierarchical, prune="bounds": certified, exact within the shortlist), with how
  it filtered (stats: the bfloat16 AMX filter and the pairs it sent to rescoring, or the float32 cells'
  pilot). With K = 1 on a CPU with AMX it is timed on the WHOLE query map, not scaled from the band: it
  prepares the shortlist's pixels once per search, a fixed cost that a band would count 1/fraction
  times; its agreement is read on the band's rows;
* the paper's coarse-to-fine prune (prune="coarse", coarse_k 8, margin 1) for comparison;
* agreement with exact search: composed labels (ground-truth labels copied from the matched pixel),
  source image, and match (same image, y, x);
* numpy's float32 GEMM rate measured in the same run, and each kernel's rate as a share of it: exact's
  multiply-adds (query positions x database positions x C, the shift-sum's pixel products) over its time.
Each matcher's time is the best of up to --repeat calls, fewer once its calls have taken 30 s (a first
call also pays for fresh pages and thread start-up: at 90x120 that was a fifth of the AMX matcher's time).
CPU timings depend on whatever else runs on the machine; ratios measured side by side hold better.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "camvid"
PAPER_MINUTES = {"camvid": 13, "camvid90": None, "cityscapes": 22}
SHAPES = {
    "camvid": dict(size=(360, 480), n_db=10, fine="conv_decode1", coarse="conv_decode2", glob="pool4", K=1,
                   stride=1, kc=1),
    "camvid90": dict(size=(90, 120), n_db=10, fine="conv_decode1", coarse="conv_decode2", glob="pool4", K=1,
                     stride=1, kc=1, whole=True),  # exact search is cheap here: always the whole image
    "cityscapes": dict(size=(256, 256), n_db=100, fine="decoder_1_input", coarse="decoder_2_input",
                       glob="encoder_8", K=4, stride=2, kc=4),
}


def gemm_peak(n: int = 2048, reps: int = 5) -> float:
    """numpy's float32 matmul rate (GFLOP/s, 2 flops per multiply-add), best of `reps`."""
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    b = a.T.copy()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


def features(name: str, checkpoint: str | None, cache: Path | None) -> dict[str, np.ndarray]:
    """Fine, coarse and global maps (float16) of 1 + n_db CamVid photos spread over the train split, and
    their labels at the fine grid."""
    spec = SHAPES[name]
    path = cache / f"{name}{'_trained' if checkpoint else ''}.npz" if cache else None
    if path is not None and path.exists():
        return dict(np.load(path))
    import tensorflow as tf

    from compnn_py.data import load_split
    from tf_models import pix2pix, segnet

    s = load_split("camvid", "train", DATA, size=spec["size"], progress=False)
    idx = np.round(np.linspace(0, len(s.ids) - 1, spec["n_db"] + 1)).astype(int)
    if name.startswith("camvid"):
        model = segnet.build_segnet_basic((*spec["size"], 3), 11)
        if checkpoint:
            tf.train.Checkpoint(model=model).restore(tf.train.latest_checkpoint(str(checkpoint))).expect_partial()
    else:
        model = pix2pix.build_generator(spec["size"][0], seed=0)
    names = [spec["fine"], spec["coarse"], spec["glob"]]
    sub = tf.keras.Model(model.input, [model.get_layer(n).output for n in names])
    out: dict[str, list] = {n: [] for n in ("fine", "coarse", "global")}
    for i in idx:
        maps = sub(np.asarray(s.inputs[i])[None].astype(np.float32), training=False)
        for key, m in zip(out, maps):
            out[key].append(np.asarray(m[0]).astype(np.float16))
    st = spec["stride"]
    res = {k: np.stack(v) for k, v in out.items()}
    res["labels"] = np.asarray(s.targets[idx])[:, ::st, ::st]
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **res)
    return res


def best_of(fn, repeat: int, budget: float = 30.0):
    """(best seconds, result of the first call, calls made): `fn` called up to `repeat` times, no new call
    once the calls so far have taken `budget` seconds."""
    times, first = [], None
    while len(times) < repeat and sum(times) < budget:
        t = time.perf_counter()
        res = fn()
        times.append(time.perf_counter() - t)
        first = res if first is None else first
    return min(times), first, len(times)


def agreement(a, b, labels) -> dict[str, float]:
    """Fractions of query positions where two matchers give the same copied label, image, and match."""
    la = labels[a.image[..., 0] + 1, a.y[..., 0], a.x[..., 0]]
    lb = labels[b.image[..., 0] + 1, b.y[..., 0], b.x[..., 0]]
    img = a.image[..., 0] == b.image[..., 0]
    return {"same_label": float((la == lb).mean()), "same_source_image": float(img.mean()),
            "same_match": float((img & (a.y[..., 0] == b.y[..., 0]) & (a.x[..., 0] == b.x[..., 0])).mean())}


def run_shape(name: str, f: dict[str, np.ndarray], fraction: float, threads: int, peak: float,
              repeat: int = 3) -> dict:
    from compnn_py import match

    spec = SHAPES[name]
    if spec.get("whole"):
        fraction = 1.0
    fine, coarse, glob = f["fine"], f["coarse"], f["global"]
    H, W, C = fine.shape[1:]
    rows = max(1, int(round(H * fraction)))
    y0 = (H - rows) // 2
    # The band's coarse rows: the coarse cells under the fine band (every fine row maps into one).
    Hc = coarse.shape[1]
    cy0, cy1 = y0 * Hc // H, ((y0 + rows - 1) * Hc // H) + 1
    q = np.ascontiguousarray(fine[0, y0:y0 + rows])
    db = fine[1:]
    n = len(db)
    scale = H / rows
    out: dict = {"shape": [int(H), int(W), int(C)], "K": spec["K"], "S": n, "band_rows": rows,
                 "scaled_by": scale}
    macs = float(rows * W) * n * H * W * C  # shift-sum pixel products of exact search on the band

    te, ex, n_ex = best_of(lambda: match.patches(q, db, kernel=spec["K"], threads=threads), repeat)
    common = dict(kernel_fine=spec["K"], query_global=glob[0], db_global=glob[1:], shortlist=n,
                  kernel_coarse=spec["kc"], threads=threads)
    # The band's own coarse rows, so that fine rows map onto coarse cells as in the whole map (the
    # coarse prune reads them; the certified search only checks their shape).
    qc = np.ascontiguousarray(coarse[0, cy0:cy1])
    st: dict = {}
    whole = spec["K"] == 1 and match.bf16_filter_ready()
    if whole:  # timed on the whole map (see the module docstring), compared on the band's rows
        tw, full, n_fast = best_of(lambda: match.hierarchical(fine[0], db, query_coarse=coarse[0],
                                                              db_coarse=coarse[1:], prune="bounds", stats=st,
                                                              **common), repeat)
        tf_ = tw / scale
        fast = match.Matches(*(np.ascontiguousarray(getattr(full, f)[y0:y0 + rows])
                               for f in ("image", "y", "x", "similarity")))
    else:
        tf_, fast, n_fast = best_of(lambda: match.hierarchical(q, db, query_coarse=qc, db_coarse=coarse[1:],
                                                               prune="bounds", stats=st, **common), repeat)
    out["fast_timed_on"] = "whole image" if whole else "band"
    tc, crs, n_crs = best_of(lambda: match.hierarchical(q, db, query_coarse=qc, db_coarse=coarse[1:], prune="coarse",
                                                        coarse_k=8, margin=1, **common), repeat)
    calls = {"exact_within_shortlist": n_ex, "certified_bounds": n_fast, "paper_coarse_prune": n_crs}
    for key, secs, res in (("exact_within_shortlist", te, ex), ("certified_bounds", tf_, fast),
                           ("paper_coarse_prune", tc, crs)):
        if res is None:
            continue
        out[key] = {"seconds_per_image": secs * scale, "gflops_equivalent": 2 * macs / secs / 1e9,
                    "share_of_numpy_peak": 2 * macs / secs / 1e9 / peak,
                    "speedup_vs_exact": te / secs, "best_of_calls": calls[key], **agreement(res, ex, f["labels"])}
    out["certified_bounds"]["stats"] = st
    out["paper_minutes_per_image"] = PAPER_MINUTES[name]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fraction", type=float, default=0.05, help="fraction of query rows timed (scaled up)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3, help="time each matcher as the best of this many calls")
    ap.add_argument("--shapes", default="camvid,camvid90,cityscapes")
    ap.add_argument("--camvid_checkpoint", default=None, help="a trained SegNet-basic run's checkpoints/ dir")
    ap.add_argument("--cache", default=None, help="keep the extracted features here (npz)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if not 0 < args.fraction <= 1:
        sys.exit("bench_paper_res: --fraction must lie in (0, 1]")
    if args.repeat < 1:
        sys.exit("bench_paper_res: --repeat must be at least 1")
    cache = Path(args.cache) if args.cache else None
    peak = gemm_peak()
    from compnn_py import match

    results = {"numpy_gemm_gflops": peak, "threads": args.threads, "backend": match.backend(),
               "weights": "trained (camvid)" if args.camvid_checkpoint else "random", "shapes": {}}
    print(f"numpy float32 GEMM: {peak:.0f} GFLOP/s; {match.backend()}", flush=True)
    for name in args.shapes.split(","):
        f = features(name, args.camvid_checkpoint if name.startswith("camvid") else None, cache)
        r = run_shape(name, f, args.fraction, args.threads, peak, args.repeat)
        results["shapes"][name] = r
        print(f"\n{name}: fine {tuple(r['shape'])}, K = {r['K']}, S = {r['S']}; timed {r['band_rows']} query rows, "
              f"seconds scaled x{r['scaled_by']:.1f} to one image"
              + (f"; paper: {r['paper_minutes_per_image']} min/image" if r['paper_minutes_per_image'] else ""))
        print("| matcher | s per image | x exact | share of numpy GEMM peak | same label | same source image "
              "| same match | best of |")
        print("|---|---|---|---|---|---|---|---|")
        for key in ("exact_within_shortlist", "certified_bounds", "paper_coarse_prune"):
            if key in r:
                v = r[key]
                print(f"| {key} | {v['seconds_per_image']:.3g} | {v['speedup_vs_exact']:.2f} | "
                      f"{v['share_of_numpy_peak']:.0%} | {v['same_label']:.3f} | {v['same_source_image']:.3f} | "
                      f"{v['same_match']:.3f} | {v['best_of_calls']} |")
        st = r["certified_bounds"]["stats"]
        if st.get("filter") == "amx_bf16":
            rescored = (f", {st['pairs_rescored'] / st['pairs']:.2e} of the pairs rescored canonically"
                        if "pairs_rescored" in st else "")
            print(f"certified: bfloat16 AMX filter (timed on the {r['fast_timed_on']}){rescored}", flush=True)
        else:
            print(f"certified bounds: sampled cells' median least cosine to their centroid "
                  f"{st.get('cell_rho_median', float('nan')):.3f} (below 0.866: plain exact search at once); "
                  f"pilot scored {st['pilot_fraction']:.2f} of its pairs; "
                  f"{'bounds used' if st['used_bounds'] else 'fell back to plain exact search'}, "
                  f"{st['pairs_scored'] / st['pairs']:.2f} of all pairs compared", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
