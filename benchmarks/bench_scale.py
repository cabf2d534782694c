"""CompNN at the paper's Cityscapes scale on one machine: export cost, hierarchical search time and memory
as the training database grows.

    python3 benchmarks/bench_scale.py [--ns 100,300,1000,3000] [--size 256] [--ngf 64] [--shortlist 100]
        [--queries 2] [--export_n 60] [--threads 2] [--work DIR] [--plot scale.png] [--json scale.json]

1. Export (own process): a Pix2Pix generator (--size, --ngf; RANDOM weights, seed 0: speed and sizes do
   not depend on training) over --export_n synthetic street images and --queries query images, writing
   only the layers a run uses (tf_models.registry.used_layers). Reports export seconds and bytes per image.
2. The database of max(--ns) images for the search: the matcher's three layers (global, coarse, fine)
   of the exported images, replicated in turn; each copy's global descriptor gets 5% Gaussian noise so
   the shortlist is decided by similarity, not by ties between identical copies.
3. Search (one process per N): the hierarchical matcher (compose.match_layer, S = --shortlist, coarse_k,
   margin) over the first N rows of that database (`rows=`, the restriction bias modification uses;
   the work is that of an N-image database), timing each query and the global shortlist alone, and
   the process's peak RSS. Stores are memory-mapped: only the shortlisted images' rows are read.

Prints a table and one paragraph, writes the numbers (--json) and a plot of cost against N (--plot).
CPU timings vary with whatever else runs on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

NOISE = 0.05


def rss_parts_mb() -> dict:
    """Resident memory now, split: anonymous (the process's own) and file-backed (mapped store pages the
    kernel can drop at will)."""
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(("RssAnon:", "RssFile:")):
                    out[line.split(":")[0]] = int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return out


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM). Not getrusage's ru_maxrss: that survives execve, so a
    child would report its parent's size at fork time when the parent was larger."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux; an upper bound


def phase_export(args) -> dict:
    from compnn_py.data import load_split
    from tf_models import export, pix2pix, registry

    model = pix2pix.build_generator(args.size, ngf=args.ngf, seed=0)
    arch = registry.of_model(model)
    used = registry.used_layers(arch.analysis_spec(model))
    s = load_split("cityscapes", "train", None, size=(args.size, args.size), n=args.export_n + args.queries, seed=0)
    work = Path(args.work)
    out = {"layers": used}
    for name, sl in (("train", slice(0, args.export_n)), ("query", slice(args.export_n, None))):
        t = time.perf_counter()
        export.export_split(model, s.inputs[sl], None, s.ids[sl], work / name, model_name="pix2pix",
                            task="cityscapes", label_kind="images", postprocess=pix2pix.output_to_rgb,
                            layers=used, batch_size=1, progress=name == "train")
        if name == "train":
            n = args.export_n
            files = list((work / name).iterdir())
            out["export_s_per_image"] = (time.perf_counter() - t) / n
            out["bytes_per_image"] = sum(f.stat().st_size for f in files) / n
            out["activation_bytes_per_image"] = sum(f.stat().st_size for f in files
                                                    if f.stem in used) / n
    out["export_peak_rss_mb"] = peak_rss_mb()
    return out


def build_database(work: Path, n_max: int, seed: int = 0) -> Path:
    """`work`/db: the matcher's layers of `work`/train replicated to n_max rows (see the docstring)."""
    from compnn_py.store import ActivationStore

    src = ActivationStore.open(work / "train")
    ms = src.metadata["match_spec"]
    names = list(dict.fromkeys([ms["global"], ms["coarse"], ms["fine"]]))
    layers = {n: np.asarray(src.layer(n)) for n in names}  # the exported rows, read once
    meta = {n: {k: v for k, v in src.layer_meta(n).items() if k in ("kernel", "stride")} for n in names}
    rng = np.random.default_rng(seed)
    g = layers[ms["global"]].astype(np.float32)
    writer = ActivationStore.create(work / "db", n_images=n_max, layers={n: a.shape[1:] for n, a in layers.items()},
                                    model="pix2pix", task="cityscapes", label_kind="images", layer_meta=meta,
                                    metadata={"match_spec": ms, "replicated_from": len(src)})
    from compnn_py.progress import Progress

    with writer:
        for i in Progress(range(n_max), desc="replicate database", unit="img"):
            j = i % len(src)
            acts = {n: a[j] for n, a in layers.items()}
            if i >= len(src):
                acts[ms["global"]] = g[j] + NOISE * g[j].std() * rng.standard_normal(g[j].shape).astype(np.float32)
            writer.write(i, activations=acts)
    return work / "db"


def phase_search(args) -> dict:
    from compnn_py import compose, match
    from compnn_py.store import ActivationStore

    work = Path(args.work)
    db, query = ActivationStore.open(work / "db"), ActivationStore.open(work / "query")
    ms = db.metadata["match_spec"]
    rows = None if args.n == len(db) else np.arange(args.n, dtype=np.int32)
    per_query, global_s = [], []
    for q in range(len(query)):
        times = []
        for _ in range(3):  # the best of 3: this step is milliseconds, easily swamped by the first call
            t = time.perf_counter()
            match.global_shortlist(np.asarray(query.layer(ms["global"])[q]), db.layer(ms["global"]),
                                   args.shortlist, rows=rows, threads=args.threads)
            times.append(time.perf_counter() - t)
        global_s.append(min(times))
        t = time.perf_counter()
        compose.match_layer(db, query, q, layer=ms["fine"], method="hierarchical", rows=rows,
                            global_layer=ms["global"], coarse_layer=ms["coarse"], shortlist=args.shortlist,
                            coarse_k=args.coarse_k, margin=args.margin, threads=args.threads)
        per_query.append(time.perf_counter() - t)
    return {"n": args.n, "seconds_per_query": per_query, "global_seconds": global_s, "peak_rss_mb": peak_rss_mb(),
            **{f"{k}_mb": v for k, v in rss_parts_mb().items()}}


def _child(args, phase: str, **extra) -> dict:
    cmd = [sys.executable, __file__, f"--phase={phase}", f"--work={args.work}", f"--size={args.size}",
           f"--ngf={args.ngf}", f"--shortlist={args.shortlist}", f"--coarse_k={args.coarse_k}",
           f"--margin={args.margin}", f"--queries={args.queries}", f"--export_n={args.export_n}",
           f"--threads={args.threads}"] + [f"--{k}={v}" for k, v in extra.items()]
    r = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if r.returncode != 0:
        sys.exit(f"bench_scale: the {phase} phase failed (exit {r.returncode})")
    return json.loads(r.stdout.strip().splitlines()[-1])


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = [r["n"] for r in results["search"]]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    a.plot(ns, [np.median(r["seconds_per_query"]) for r in results["search"]], "o-",
           label="hierarchical search (median)")
    a.plot(ns, [min(r["seconds_per_query"]) for r in results["search"]], "o:", color="C0", alpha=0.5,
           label="hierarchical search (fastest)")
    a.plot(ns, [np.median(r["global_seconds"]) for r in results["search"]], "s--", label="global shortlist step")
    a.axhline(results["export"]["export_s_per_image"], color="gray", ls=":", label="export (per image)")
    a.set(xscale="log", yscale="log", xlabel="training images N", ylabel="seconds per query image",
          title=f"Pix2Pix {results['size']}², ngf {results['ngf']}, S = {results['shortlist']}")
    a.legend(fontsize=8)
    b.plot(ns, [r["peak_rss_mb"] for r in results["search"]], "o-", label="search process (peak)")
    if all("RssAnon_mb" in r for r in results["search"]):
        b.plot(ns, [r["RssAnon_mb"] for r in results["search"]], "s--", label="of which anonymous (end)")
    b.axhline(results["export"]["export_peak_rss_mb"], color="gray", ls=":", label="export process")
    b.set(xscale="log", xlabel="training images N", ylabel="peak RSS (MB)", ylim=(0, None), title="memory")
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ns", default="100,300,1000,3000")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--ngf", type=int, default=64)
    ap.add_argument("--shortlist", type=int, default=100)
    ap.add_argument("--coarse_k", type=int, default=8)
    ap.add_argument("--margin", type=int, default=1)
    ap.add_argument("--queries", type=int, default=2)
    ap.add_argument("--export_n", type=int, default=60)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--work", default=None, help="scratch directory (default: a new one under /tmp, removed "
                    "afterwards unless --keep)")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--plot", default="scale.png")
    ap.add_argument("--json", default=None)
    ap.add_argument("--phase", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase == "export":
        print(json.dumps(phase_export(args)))
        return
    if args.phase == "search":
        print(json.dumps(phase_search(args)))
        return
    if args.phase == "database":
        build_database(Path(args.work), args.n)
        print(json.dumps({"peak_rss_mb": peak_rss_mb()}))
        return

    ns = sorted(int(v) for v in args.ns.split(","))
    if ns[0] < args.shortlist or args.export_n < 1 or args.queries < 1:
        sys.exit(f"bench_scale: need every N >= --shortlist ({args.shortlist}), --export_n >= 1, --queries >= 1")
    # A background run (SIGINT ignored) stopped with `kill` still removes its scratch database.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    own = args.work is None
    if own:
        import tempfile

        args.work = tempfile.mkdtemp(prefix="compnn-scale-")
    work = Path(args.work)
    try:
        t = time.perf_counter()
        exported = _child(args, "export")
        print(f"export: {exported['export_s_per_image']:.2f} s and {exported['bytes_per_image'] / 1e6:.1f} MB per "
              f"image ({len(exported['layers'])} used layers), peak RSS {exported['export_peak_rss_mb']:.0f} MB "
              f"[{time.perf_counter() - t:.0f} s]", flush=True)
        from compnn_py.store import ActivationStore

        src = ActivationStore.open(work / "train")
        ms = src.metadata["match_spec"]
        row_bytes = sum(src.layer(n)[0].nbytes for n in {ms["global"], ms["coarse"], ms["fine"]})
        free = shutil.disk_usage(work).free
        if ns[-1] * row_bytes > free - 2e9:
            sys.exit(f"bench_scale: the N = {ns[-1]} database needs {ns[-1] * row_bytes / 1e9:.1f} GB; "
                     f"{work} has {free / 1e9:.1f} GB free")
        t = time.perf_counter()
        built = _child(args, "database", n=ns[-1])
        print(f"database: {ns[-1]} rows of {row_bytes / 1e6:.1f} MB (matcher layers), peak RSS "
              f"{built['peak_rss_mb']:.0f} MB [{time.perf_counter() - t:.0f} s]", flush=True)
        search = []
        for n in ns:
            r = _child(args, "search", n=n)
            search.append(r)
            print(f"N = {n:5d}: hierarchical {', '.join(f'{s:.2f}' for s in r['seconds_per_query'])} s per query "
                  f"(global shortlist {np.median(r['global_seconds']) * 1e3:.1f} ms), peak RSS "
                  f"{r['peak_rss_mb']:.0f} MB (at the end: {r.get('RssAnon_mb', float('nan')):.0f} MB anonymous, "
                  f"{r.get('RssFile_mb', float('nan')):.0f} MB mapped store pages)", flush=True)
        results = {"size": args.size, "ngf": args.ngf, "shortlist": args.shortlist, "coarse_k": args.coarse_k,
                   "margin": args.margin, "threads": args.threads, "export_n": args.export_n,
                   "random_weights": True, "export": exported, "database_row_bytes": row_bytes, "search": search}
        med = [np.median(r["seconds_per_query"]) for r in search]
        print(f"\nhierarchical s/query at N = {ns[-1]} vs N = {ns[0]}: {med[-1] / med[0]:.2f}x; peak RSS "
              f"{min(r['peak_rss_mb'] for r in search):.0f}-{max(r['peak_rss_mb'] for r in search):.0f} MB")
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
        if args.plot:
            plot(results, Path(args.plot))
            print(f"plot: {args.plot}")
    finally:
        if own and not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
