"""Picture and difficulty of the built-in synthetic sets.

Writes one PNG grid per task (rows of input | target, label maps in their palette colours) to --out,
prints the time to generate each split, and for the label-producing tasks the pixel accuracy of
copying labels from the globally nearest training photo versus from patches (see
compnn_py.data.synthetic.difficulty). For data whose images carry an attribute (street scenes: city;
facades: style) it also prints each class's share of the pixels per attribute value: how different the
databases the analyses' bias modification compares are.

    python3 benchmarks/show_synthetic.py --out /tmp/synthetic --n_train 200 --n_val 50
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from compnn_py.data import TASKS, colorize, load_split, snap_to_palette
from compnn_py.data.files import write_image
from compnn_py.data.synthetic.difficulty import difficulty_report
from compnn_py.data.synthetic.maps import MAP_PALETTE


def as_rgb(split, which):
    arr = getattr(split, which)
    if arr.ndim == 3:
        return colorize(arr, split.spec.palette)
    return arr


def grid(split, rows=4, cols=3):
    tiles = []
    for r in range(rows):
        row = [np.concatenate([as_rgb(split, "inputs")[i], as_rgb(split, "targets")[i],
                               np.full((split.inputs.shape[1], 4, 3), 255, np.uint8)], 1)
               for i in range(r * cols, (r + 1) * cols)]
        tiles.append(np.concatenate(row, 1))
    return np.concatenate(tiles, 0)


def class_shares(split, key):
    """{attribute value: {class name: fraction of its labelled pixels}} for a segmentation split."""
    values = sorted({m[key] for m in split.meta if key in m})
    if split.targets.ndim != 3 or len(values) < 2:
        return None
    out = {}
    for v in values:
        t = split.targets[np.array([m.get(key) == v for m in split.meta])]
        t = t[t != 255]
        counts = np.bincount(t.ravel(), minlength=split.spec.num_classes)
        out[v] = {n: round(float(c / max(t.size, 1)), 3) for n, c in zip(split.spec.class_names, counts)}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--n_train", type=int, default=200)
    ap.add_argument("--n_val", type=int, default=50)
    ap.add_argument("--size", type=int, default=None, help="square size; default per task")
    ap.add_argument("--queries", type=int, default=2000)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = {}
    for name in TASKS:
        t0 = time.perf_counter()
        train = load_split(name, "train", n=args.n_train, size=args.size, progress=False)
        t1 = time.perf_counter()
        val = load_split(name, "val", n=args.n_val, size=args.size, progress=False)
        write_image(args.out / f"{name}.png", grid(val))
        res = {"train_images": len(train), "size": list(train.inputs.shape[1:3]),
               "seconds_to_generate_train": round(t1 - t0, 2)}
        if name == "maps":  # measure on the map's own colour classes
            for s in (train, val):
                s.targets = snap_to_palette(s.targets, MAP_PALETTE)
        for key in ("city", "style"):
            shares = class_shares(train, key)
            if shares:
                res[f"class_shares_by_{key}"] = shares
        if name != "facades":  # facades_labels measures the same images
            res.update({k: round(v, 4) for k, v in
                        difficulty_report(train, val, queries=args.queries).items()})
        results[name] = res
        print(name, json.dumps(res), flush=True)
    (args.out / "difficulty.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
