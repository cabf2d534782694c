"""Measures training speed of the tf_models networks and the cost of exporting their activations.

    python3 benchmarks/bench_models.py [--steps 5] [--export_images 4] [--only pix2pix|segnet]
                                       [--json results.json]

Train steps/s (first steps, which trace the tf.function, are excluded) for Pix2Pix at 64/ngf16,
128/ngf32, 256/ngf64 (batch 1, jitter on) and SegNet-basic at 90x120, 180x240, 360x480 (batch 1 and
the tutorial's batch 4 for the smallest), then export seconds and bytes per image (float16, every
named layer) for the same models. Inputs are random images: speed does not depend on content.
CPU timings vary with whatever else runs on the machine; run it on an idle machine to compare.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from tf_models import export, pix2pix, segnet, train  # noqa: E402

WARMUP = 2


def timed_rate(history):
    """Steps/s over the logged single steps after the warm-up (tracing) steps."""
    rates = [e["steps_per_sec"] for e in history["train"][WARMUP:]]
    return len(rates) / sum(1.0 / r for r in rates)


def export_cost(model, inputs, labels, postprocess, label_kind, where):
    t0 = time.perf_counter()
    store = export.export_split(model, inputs, labels, [str(i) for i in range(len(inputs))], where,
                                model_name=model.name, task="bench", label_kind=label_kind,
                                postprocess=postprocess, batch_size=1, progress=False)
    seconds = time.perf_counter() - t0
    nbytes = sum(f.stat().st_size for f in Path(where).iterdir())
    return {"export_s_per_image": seconds / len(inputs), "export_bytes_per_image": nbytes / len(inputs),
            "layers": len(store.layer_names)}


def bench_pix2pix(size, ngf, steps, n_export, tmp):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (max(2, n_export), size, size, 3), dtype=np.uint8)
    b = rng.integers(0, 256, a.shape, dtype=np.uint8)
    gen, hist = train.train_pix2pix(a, b, tmp / f"p{size}", steps=WARMUP + steps, ngf=ngf, ndf=ngf,
                                    log_every=1, checkpoint_every=10 ** 9, progress=False)
    row = {"model": "pix2pix", "size": f"{size}x{size}", "ngf": ngf, "batch": 1,
           "train_steps_per_s": timed_rate(hist)}
    if n_export:
        row.update(export_cost(gen, a[:n_export], b[:n_export], pix2pix.output_to_rgb, "images",
                               tmp / f"p{size}_store"))
    return row


def bench_segnet(h, w, batch, steps, n_export, tmp):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (max(batch, n_export, 1), h, w, 3), dtype=np.uint8)
    y = rng.integers(0, 11, x.shape[:3], dtype=np.uint8)
    model, hist = train.train_segnet(x, y, tmp / f"s{h}_{batch}", steps=WARMUP + steps, batch_size=batch,
                                     log_every=1, checkpoint_every=10 ** 9, progress=False)
    row = {"model": "segnet_basic", "size": f"{h}x{w}", "batch": batch,
           "train_steps_per_s": timed_rate(hist)}
    row["train_images_per_s"] = row["train_steps_per_s"] * batch
    if n_export:
        row.update(export_cost(model, x[:n_export], y[:n_export], segnet.logits_to_labels, "labels",
                               tmp / f"s{h}_store"))
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=5, help="timed training steps per configuration")
    ap.add_argument("--export_images", type=int, default=4, help="images exported per configuration")
    ap.add_argument("--only", choices=("pix2pix", "segnet"), default=None)
    ap.add_argument("--json", default=None, help="also write the rows to this file")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        jobs = []
        if args.only in (None, "pix2pix"):
            jobs += [lambda s=s, g=g: bench_pix2pix(s, g, args.steps, args.export_images, tmp)
                     for s, g in ((64, 16), (128, 32), (256, 64))]
        if args.only in (None, "segnet"):
            jobs += [lambda h=h, w=w, b=b: bench_segnet(h, w, b, args.steps, args.export_images if b == 1 else 0,
                                                        tmp)
                     for h, w, b in ((90, 120, 1), (90, 120, 4), (180, 240, 1), (360, 480, 1))]
        for job in jobs:
            row = job()
            rows.append(row)
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}),
                  flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
