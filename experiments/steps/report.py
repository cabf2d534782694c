"""The report stage: table1.csv/md, metrics.json, panels, figures and report.html in the run directory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from compnn_py import figures
from experiments import report_page
from experiments.steps.export import open_stores


def write_outputs(d: Path, out_dir: Path, cfg, spec, data_dir, export_dir: Path, compnn_dir: Path,
                  analyses_dir: Path, timings) -> None:
    db, query = open_stores(export_dir)
    palette = np.asarray(db.metadata["palette"], dtype=np.uint8) if spec.num_classes else None
    summary = json.loads((compnn_dir / "metrics.json").read_text())
    analyses = json.loads((analyses_dir / "analyses.json").read_text())
    summary["analyses"] = {k: v for k, v in analyses.items() if k != "figures"}
    summary["stage_seconds"] = dict(timings)
    summary["synthetic_data"] = data_dir is None
    (out_dir / "metrics.json").write_text(json.dumps(summary, indent=1))
    for ext in ("csv", "md"):
        shutil.copy(compnn_dir / f"table1.{ext}", out_dir / f"table1.{ext}")
    outputs = np.load(compnn_dir / "outputs.npz")
    sources = np.load(compnn_dir / "sources.npy")
    for sub in ("panels", "figures", "train_images"):
        (out_dir / sub).mkdir(exist_ok=True)
    entries = []
    n = min(len(query), cfg.n_panels)
    for i in range(n):
        pics = [query.images[i], outputs["Baseline_CNN"][i], outputs["CompNN_(SS)"][i], query.labels[i],
                outputs["Global_Decode2_NN_(SS)"][i]]
        figures.save_png(out_dir / "panels" / f"{i:03d}.png",
                         figures.panel([np.asarray(p) for p in pics],
                                       ["input", "CNN", "CompNN", "ground truth", "global NN"], palette=palette))
        figures.save_png(out_dir / "panels" / f"{i:03d}_compnn.png",
                         figures.to_rgb(outputs["CompNN_(SS)"][i], palette))
        img, y, x = sources[i]
        entries.append(report_page.QueryEntry(query.image_ids[i], f"panels/{i:03d}.png", f"panels/{i:03d}_compnn.png",
                                         img, y, x, int(summary["stride"])))
    for row in np.unique(sources[:n, 0]):
        figures.save_png(out_dir / "train_images" / f"{row}.png", np.asarray(db.images[row]))
    figs = []
    for caption, name in analyses["figures"]:
        shutil.copy(analyses_dir / name, out_dir / "figures" / name)
        figs.append((caption, f"figures/{name}"))
    t = summary["table1"]
    header = ["approach", *next(iter(t.values())).keys()]
    rows = [[name, *vals.values()] for name, vals in t.items()]
    notes = [f"Task {cfg.task}, model {cfg.model}, preset {cfg.preset}, {summary['n_train']} training and "
             f"{summary['n_query']} query images at {cfg.size[0]}x{cfg.size[1]}. CompNN matches "
             f"{summary['kernel']}x{summary['kernel']} neighbourhoods of {summary['fine_layer']} "
             f"({'x'.join(map(str, summary['fine_shape']))}), each match copying a {summary['stride']}x"
             f"{summary['stride']} pixel block; Table 1 uses {summary['table1_matching']} matching.",
             "Seconds per query image: " + ", ".join(f"{m} {s:.3f}" for m, s in summary["seconds_per_image"].items())
             + ("" if "hierarchical_vs_exact" not in summary else
                f"; hierarchical agrees with exact on {summary['hierarchical_vs_exact']['same_match']:.1%} of "
                f"matches and {summary['hierarchical_vs_exact']['same_output_pixel']:.1%} of output pixels.")]
    warnings = [] if data_dir is not None else [
        f"Built-in SYNTHETIC {cfg.task} data (no --data_dir given): numbers are not comparable to the paper."]
    report_page.write_report(out_dir, title=f"compnn — {cfg.task}", notes=notes, warnings=warnings,
                        table_header=header, table_rows=rows, queries=entries, train_ids=db.image_ids,
                        figures=figs, timings=timings)
