"""The compnn stage: Table 1 (CompNN and the global-NN baselines scored against ground truth and the
CNN), exact and hierarchical matching side by side, per-query sources and timings."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from compnn_py import compose, metrics
from experiments.errors import PipelineError
from experiments.steps.export import open_stores


def match_kwargs(cfg, ms: dict[str, Any], method: str, threads) -> dict[str, Any]:
    kw: dict[str, Any] = {"method": method, "threads": threads}
    if method == "hierarchical":
        kw.update(coarse_layer=ms["coarse"], global_layer=ms["global"], shortlist=cfg.shortlist,
                  coarse_k=cfg.coarse_k, margin=cfg.margin)
    return kw


def run_compnn(d: Path, cfg, spec, export_dir: Path, match_method: str, threads,
               exact_queries: int | None = None) -> None:
    db, query = open_stores(export_dir)
    ms = db.metadata["match_spec"]
    fine = ms["fine"]
    methods = ["exact", "hierarchical"] if match_method == "both" else [match_method]
    main = methods[-1]
    if main == "hierarchical" and cfg.shortlist > len(db):
        raise PipelineError(f"--shortlist {cfg.shortlist} exceeds the {len(db)} training images")
    rows = {name: [] for name in metrics.TABLE1_ROWS}
    sources, seconds = [], {m: [] for m in methods}
    agree_match, agree_label = [], []
    for q in tqdm(range(len(query)), desc="CompNN queries", unit="img"):
        comps = {}
        for m in methods:
            if m != main and exact_queries is not None and q >= exact_queries:
                continue
            t = time.perf_counter()
            comps[m] = compose.compnn(db, query, q, layer=fine, target="cnn_outputs",
                                      **match_kwargs(cfg, ms, m, threads))
            seconds[m].append(time.perf_counter() - t)
        comp = comps[main]
        if len(comps) == 2:
            a, b = comps["exact"].matches, comps["hierarchical"].matches
            same = (a.image[..., 0] == b.image[..., 0]) & (a.y[..., 0] == b.y[..., 0]) & (a.x[..., 0] == b.x[..., 0])
            agree_match.append(float(same.mean()))
            agree_label.append(float(np.all(comps["exact"].output == comp.output, axis=-1).mean()
                                     if comp.output.ndim == 3 else (comps["exact"].output == comp.output).mean()))
        for name, pred in compose.table1_query(db, query, q, comp, bottleneck_layer=ms["global"],
                                               decode2_layer=ms["decode2"], threads=threads).items():
            rows[name].append(pred)
        sources.append(np.stack([comp.matches.image[..., 0], comp.matches.y[..., 0], comp.matches.x[..., 0]]))
    table, stacked = compose.table1_score(db, rows, np.asarray(query.labels), spec.num_classes)
    table.title = f"Table 1 — {cfg.task} ({cfg.model}, {len(query)} query images, CompNN: {main} matching)"
    table.write(d / "table1")
    np.savez_compressed(d / "outputs.npz", **{k.replace(" ", "_"): v for k, v in stacked.items()})
    np.save(d / "sources.npy", np.stack(sources).astype(np.int32))
    summary = {
        "task": cfg.task, "model": cfg.model, "n_train": len(db), "n_query": len(query),
        "fine_layer": fine, "fine_shape": db.layer_meta(fine)["shape"][1:], "kernel": db.layer_meta(fine)["kernel"],
        "stride": db.layer_meta(fine)["stride"], "table1_matching": main,
        "table1": {r: dict(zip(table.columns, map(float, v))) for r, v in zip(table.rows, table.values)},
        "seconds_per_image": {m: float(np.mean(s)) for m, s in seconds.items()},
        "matcher": {"shortlist": cfg.shortlist, "coarse_k": cfg.coarse_k, "margin": cfg.margin,
                    "threads": threads},
    }
    if agree_match:
        summary["hierarchical_vs_exact"] = {"same_match": float(np.mean(agree_match)),
                                            "same_output_pixel": float(np.mean(agree_label))}
    if table.per_class:
        summary["per_class_iou"] = {r: [float(v) for v in a] for r, a in table.per_class.items()}
    (d / "metrics.json").write_text(json.dumps(summary, indent=1))
