"""Benchmark of the provenance explorer's speed goals (issue 18) on SegNet-basic's fine layer
(conv_decode1: C = 64, K = 1), with random ReLU maps in float16 .npy files that are memmapped (as an
ActivationStore layer is) and read once before timing, so they are in the page cache:

1. one click at 90×120 over --n_train training images (default 367, 507 MB): PatchIndex.search_images
   (exact top-5 and every image's best position, the explorer's /api/provenance search);
2. one click at 360×480 over --n_large images (default 46: 1.0 GB; the paper's 367 would be 8.1 GB, more
   than this shared machine can keep in its page cache beside the other jobs). A click reads every
   database position once, so its time is linear in the images: the script prints the measured seconds
   and the seconds scaled to 367 images;
3. unless --skip_upload: an uploaded 90×120 PNG through Explorer.upload over a run directory made here
   (SegNet-basic with random weights saved as model.keras, the 367-image database, Table 1's
   "shortlist" matcher): the first upload (imports TensorFlow, loads the network) and the next ones.

    python3 benchmarks/bench_explore.py [--n_train 367 --n_large 46 --threads 2 --dir /tmp/bench_explore]

Each figure is printed as wall seconds (best, median) and as the median CPU seconds of this process (all
its threads): on a machine shared with other jobs, wall time is an upper bound and CPU time is what the
work itself needs. Writes its files under --dir (removed at the end unless --keep).
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from compnn_py import match  # noqa: E402

C = 64


def relu_maps(path: Path, n: int, h: int, w: int, seed: int) -> np.ndarray:
    """A float16 (n, h, w, C) .npy of random ReLU values, written in chunks, returned memmapped and read
    once (page cache)."""
    rng = np.random.default_rng(seed)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, h, w, C))
    for i in range(n):
        out[i] = np.maximum(rng.standard_normal((h, w, C), dtype=np.float32), 0)
    out.flush()
    del out
    maps = np.load(path, mmap_mode="r")
    for i in range(n):
        np.asarray(maps[i]).sum(dtype=np.float32)  # touch every page
    return maps


def time_clicks(maps: np.ndarray, threads: int | None, reps: int, seed: int) -> tuple[float, float, float, float]:
    """(seconds to prepare the index, best and median wall seconds of one click at random positions, and
    the median CPU seconds of one click: all threads of this process, what the click needs of the
    machine whatever else runs on it)."""
    t = time.perf_counter()
    index = match.PatchIndex(maps, kernel=1, threads=threads)
    prep = time.perf_counter() - t
    rng = np.random.default_rng(seed)
    _, h, w, _ = maps.shape
    query = np.asarray(maps[0])
    times, cpu = [], []
    for _ in range(reps):
        pos = [(int(rng.integers(h)), int(rng.integers(w)))]
        t, c = time.perf_counter(), time.process_time()
        index.search_images(query, pos, k=5, threads=threads)
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return prep, min(times), float(np.median(times)), float(np.median(cpu))


def fake_run(root: Path, n_train: int, threads: int | None) -> Path:
    """A run directory with SegNet-basic (random weights) at 90×120 as the train stage's model.keras and
    an export of random activations of every layer the run reads, as the driver lays them out."""
    from tf_models import registry
    from tf_models.train import MODEL_FILE, save_network

    from compnn_py.data import TASKS
    from compnn_py.store import ActivationStore

    spec = TASKS["camvid"]
    arch = registry.get("segnet_basic")
    model = arch.build(input_shape=(90, 120, 3), num_classes=spec.num_classes)
    cache = root / "cache"
    train = cache / "train-b1"
    train.mkdir(parents=True)
    save_network(model, train / MODEL_FILE)
    (train / "DONE.json").write_text(json.dumps({"config": {"model": "segnet_basic"}}))
    aspec = arch.analysis_spec(model)
    geometry = arch.layer_geometry(model)
    layers = {name: tuple(int(v) for v in model.get_layer(name).output.shape[1:]) for name in aspec["used_layers"]}
    config = {"task": "camvid", "model": "segnet_basic", "size": [90, 120], "shortlist": 10, "coarse_k": 8,
              "margin": 1}
    meta = {"num_classes": spec.num_classes, "palette": np.asarray(spec.palette).tolist(), "config": config, **aspec}
    export = cache / "export-b1"
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("query", 1)):
        w = ActivationStore.create(export / split, n_images=n, layers=layers, image_shape=(90, 120, 3),
                                   label_shape=(90, 120), output_shape=(90, 120),
                                   image_ids=[f"{split}{i}" for i in range(n)], model="segnet_basic", task="camvid",
                                   layer_meta={name: geometry[name] for name in layers}, metadata=meta)
        with w:
            for i in range(n):
                acts = {name: np.maximum(rng.standard_normal(s, dtype=np.float32), 0) for name, s in layers.items()}
                ids = rng.integers(0, spec.num_classes, (90, 120), dtype=np.uint8)
                w.write(i, activations=acts, image=rng.integers(0, 256, (90, 120, 3), dtype=np.uint8), label=ids,
                        cnn_output=ids)
    (export / "DONE.json").write_text(json.dumps({"config": {"data": "d1", "train": "b1"}}))
    compnn = cache / "compnn-b1"
    compnn.mkdir()
    np.save(compnn / "sources.npy", np.zeros((1, 3, 90, 120), np.int32))
    (compnn / "metrics.json").write_text(json.dumps({"table1_matching": "shortlist"}))
    (compnn / "DONE.json").write_text(json.dumps({"config": {"export": "b1"}}))
    return root


def time_uploads(root: Path, threads: int | None, reps: int) -> tuple[float, list[float], list[float]]:
    """Wall seconds of the first upload, and wall and CPU seconds of the next `reps`."""
    from PIL import Image

    from experiments.explore import Explorer, find_run

    explorer = Explorer(find_run(root), threads=threads, log=lambda *a: None)
    rng = np.random.default_rng(1)
    times, cpu = [], []
    for _ in range(reps + 1):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(buf, format="PNG")
        t, c = time.perf_counter(), time.process_time()
        explorer.upload(buf.getvalue(), "bench.png")
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return times[0], times[1:], cpu[1:]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n_train", type=int, default=367)
    p.add_argument("--n_large", type=int, default=46)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--dir", type=Path, default=Path("/tmp/bench_explore"))
    p.add_argument("--skip_upload", action="store_true")
    p.add_argument("--keep", action="store_true")
    a = p.parse_args()
    a.dir.mkdir(parents=True, exist_ok=False)
    try:
        print(f"backend: {match.backend()}; threads: {a.threads or 'all CPUs'}")
        small = relu_maps(a.dir / "small.npy", a.n_train, 90, 120, 0)
        prep, best, med, cpu = time_clicks(small, a.threads, a.reps, 0)
        print(f"click at 90x120 over {a.n_train} images ({small.nbytes / 1e6:.0f} MB float16): best {best:.3f} s, "
              f"median {med:.3f} s, CPU {cpu:.3f} s (index prepared once in {prep:.1f} s)")
        del small
        large = relu_maps(a.dir / "large.npy", a.n_large, 360, 480, 1)
        prep, best, med, cpu = time_clicks(large, a.threads, max(3, a.reps // 2), 1)
        scale = 367 / a.n_large
        print(f"click at 360x480 over {a.n_large} images ({large.nbytes / 1e9:.2f} GB float16): best {best:.3f} s, "
              f"median {med:.3f} s, CPU {cpu:.3f} s; scaled to 367 images: best {best * scale:.2f} s, median "
              f"{med * scale:.2f} s, CPU {cpu * scale:.2f} s (index prepared in {prep:.1f} s, {prep * scale:.0f} s "
              "scaled)")
        del large
        (a.dir / "large.npy").unlink()
        if not a.skip_upload:
            root = fake_run(a.dir / "run", a.n_train, a.threads)
            first, rest, cpu = time_uploads(root, a.threads, 3)
            print(f"upload of a 90x120 PNG (SegNet-basic, shortlist matcher over {a.n_train} images): first "
                  f"{first:.1f} s (imports TensorFlow, loads the network), then best {min(rest):.2f} s, "
                  f"median {float(np.median(rest)):.2f} s, CPU {float(np.median(cpu)):.2f} s")
    finally:
        if not a.keep:
            shutil.rmtree(a.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
