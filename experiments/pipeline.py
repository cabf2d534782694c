"""The work of each driver stage; `experiments.run` decides which stages run and caches them.

Every function takes its stage directory first and writes only there (the report stage also writes
the user-facing files into the run directory).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
from absl import logging
from tqdm import tqdm

from compnn_py import compose, figures, metrics
from compnn_py.data import TASKS, Split, colorize, load_split, snap_to_palette
from compnn_py.store import ActivationStore
from experiments import report


class PipelineError(Exception):
    """A stage cannot run with what it was given (reported as one line by the driver)."""


def task_spec(task: str):
    return TASKS[task]


def default_query_split(spec, data_dir: Path | None) -> str:
    if data_dir is not None and "test" in spec.splits and (data_dir / "test").is_dir():
        return "test"
    return "val"


def checkpoint_stamp(checkpoint: Path) -> float:
    files = list(checkpoint.rglob("*"))
    return max((f.stat().st_mtime for f in files if f.is_file()), default=0.0)


# ---- data -------------------------------------------------------------------------------------------

def prepare_data(d: Path, cfg, spec, data_dir: Path | None, query_split: str) -> None:
    for name, split, n in (("train", "train", cfg.n_train), ("query", query_split, cfg.n_query)):
        s = load_split(cfg.task, split, data_dir, size=cfg.size, n=n, seed=cfg.seed)
        np.save(d / f"{name}_inputs.npy", s.inputs)
        np.save(d / f"{name}_targets.npy", s.targets)
        (d / f"{name}.json").write_text(json.dumps({"split": split, "ids": s.ids, "meta": s.meta}))
        logging.info("data: %s split %r: %d images of %s", name, split, len(s.ids), s.inputs.shape[1:])


def load_data(d: Path, name: str, spec) -> Split:
    info = json.loads((d / f"{name}.json").read_text())
    return Split(np.load(d / f"{name}_inputs.npy"), np.load(d / f"{name}_targets.npy"), info["ids"],
                 info["meta"], spec)


# ---- train ------------------------------------------------------------------------------------------

def _pix2pix_targets(spec, targets: np.ndarray) -> np.ndarray:
    # Pix2Pix learns segmentation as image translation: the target is the colour label map.
    return colorize(targets, spec.palette) if spec.kind == "segmentation" else targets


def train_model(d: Path, cfg, spec, data_stage: Path) -> None:
    from tf_models import train as tft

    tr = load_data(data_stage, "train", spec)
    if cfg.model == "pix2pix":
        _, history = tft.train_pix2pix(tr.inputs, _pix2pix_targets(spec, tr.targets), d, steps=cfg.steps,
                                       epochs=cfg.epochs, seed=cfg.seed, ngf=cfg.ngf, ndf=cfg.ngf,
                                       batch_size=cfg.batch_size)
    else:
        q = load_data(data_stage, "query", spec)
        _, history = tft.train_segnet(tr.inputs, tr.targets, d, val=(q.inputs, q.targets),
                                      arch=cfg.model.removeprefix("segnet_"), num_classes=spec.num_classes,
                                      steps=cfg.steps, epochs=cfg.epochs, batch_size=cfg.batch_size,
                                      seed=cfg.seed, checkpoint_every=max(1, len(tr.ids) // cfg.batch_size))
    (d / "history.json").write_text(json.dumps(history, default=float))


def check_checkpoint(d: Path, checkpoint: Path, cfg) -> None:
    from tf_models import train as tft

    tft.load_model(checkpoint, expect=cfg.model)  # fails clearly for another architecture
    (d / "checkpoint.txt").write_text(str(checkpoint))


# ---- export -----------------------------------------------------------------------------------------

def _arch_module(name: str):
    from tf_models import pix2pix, segnet
    return pix2pix if name == "pix2pix" else segnet


def export_stores(d: Path, cfg, spec, data_stage: Path, model_dir: Path) -> None:
    from tf_models import export, train as tft

    model = tft.load_model(model_dir, expect=cfg.model)
    arch = _arch_module(cfg.model)
    splits = {name: load_data(data_stage, name, spec) for name in ("train", "query")}
    if cfg.model.startswith("segnet"):
        # SegNet's own recipe: BN statistics recomputed over the training set once training is over.
        tft.recompute_bn_statistics(model, splits["train"].inputs, batch_size=cfg.batch_size)
    if cfg.model == "pix2pix":
        if spec.kind == "segmentation":
            def post(out):
                return snap_to_palette(arch.output_to_rgb(out), spec.palette)
        else:
            post = arch.output_to_rgb
    else:
        post = arch.logits_to_labels
    label_kind = "labels" if spec.kind == "segmentation" else "images"
    metadata = {"num_classes": spec.num_classes, "palette": np.asarray(spec.palette).tolist(),
                "match_spec": arch.match_spec(model), "config": cfg.as_dict()}
    for name, s in splits.items():
        export.export_split(model, s.inputs, s.targets, s.ids, d / name, model_name=cfg.model, task=cfg.task,
                            label_kind=label_kind, postprocess=post, image_meta=s.meta, metadata=metadata)


def open_stores(export_dir: Path) -> tuple[ActivationStore, ActivationStore]:
    return ActivationStore.open(export_dir / "train"), ActivationStore.open(export_dir / "query")


# ---- compnn (Table 1) -------------------------------------------------------------------------------

def _match_kwargs(cfg, ms: dict[str, Any], method: str, threads) -> dict[str, Any]:
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
                                      **_match_kwargs(cfg, ms, m, threads))
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


# ---- analyses ---------------------------------------------------------------------------------------

def _bias_databases(db: ActivationStore) -> dict[str, np.ndarray]:
    """Two restricted databases that differ in style: by a per-image metadata key when the data has one
    (CamVid sequence, synthetic facade style), else the two halves of the training set."""
    meta = db.image_meta
    for key in ("sequence", "style", "city"):
        values = sorted({m[key] for m in meta if key in m})
        if len(values) >= 2:
            counts = {v: sum(1 for m in meta if m.get(key) == v) for v in values}
            a, b = sorted(values, key=lambda v: -counts[v])[:2]
            return {f"{key}={a}": db.rows_where(lambda m, _i, a=a: m.get(key) == a),
                    f"{key}={b}": db.rows_where(lambda m, _i, b=b: m.get(key) == b)}
    half = len(db) // 2
    return {"first half": np.arange(half, dtype=np.int32), "second half": np.arange(half, len(db), dtype=np.int32)}


def _sweep_layers(cfg, db) -> list[str]:
    if cfg.model == "pix2pix":
        names = sorted((n for n in db.layer_names if n.startswith("decoder_") and n.endswith("_input")),
                       key=lambda n: -int(n.split("_")[1]))
    else:
        names = sorted((n for n in db.layer_names if n.startswith("conv_decode")), key=lambda n: -int(n[-1]))
    return names


def _activation_pair(cfg, db) -> tuple[str, str] | None:
    pairs = [("decoder_3_input", "decoder_3")] if cfg.model == "pix2pix" else [("conv_decode2", "conv_decode1")]
    for src, tgt in pairs:
        if src in db.layer_names and tgt in db.layer_names:
            return src, tgt
    return None


def run_analyses(d: Path, cfg, spec, export_dir: Path, threads) -> None:
    db, query = open_stores(export_dir)
    ms = db.metadata["match_spec"]
    palette = np.asarray(db.metadata["palette"], dtype=np.uint8) if spec.num_classes else None
    method = "hierarchical" if len(db) > 4 * cfg.shortlist else "exact"
    kw = _match_kwargs(cfg, ms, method, threads)
    n = min(len(query), 3)
    results: dict[str, Any] = {"matching": method, "figures": []}

    def save(name, img, caption):
        figures.save_png(d / f"{name}.png", img)
        results["figures"].append([caption, f"{name}.png"])

    bias = _bias_databases(db)
    for i in tqdm(range(n), desc="analyses", unit="img"):
        qid = query.image_ids[i]
        rec = compose.reconstruction(db, query, i, layer=ms["fine"], global_nn_layer=ms["global"], **kw)
        save(f"reconstruction_{i}", figures.reconstruction_figure(rec, query, i, palette=palette),
             f"Reconstruction (Fig. 10) of {qid}: global vs compositional, of the input and of the output.")
        comp = compose.compnn(db, query, i, layer=ms["fine"], target="cnn_outputs", **kw)
        corr = compose.correspondence(comp, db, top=3)
        save(f"correspondence_{i}", figures.correspondence_figure(corr, db, comp.output, palette=palette),
             f"Correspondence map (Fig. 11) of {qid}: each output pixel coloured by its source training image, "
             f"and the regions copied from the three most-used ones ({len(corr.rows)} sources in all).")
        bias_kw = dict(kw)
        if method == "hierarchical":
            bias_kw["shortlist"] = min(cfg.shortlist, min(len(r) for r in bias.values()))
        outs = compose.bias_modification(db, query, i, bias, layer=ms["fine"], **bias_kw)
        save(f"bias_{i}", figures.bias_figure(query, i, outs, palette=palette),
             f"Bias modification (Fig. 9) of {qid}: the same query composed from restricted databases "
             f"({', '.join(f'{k}: {len(v)} images' for k, v in bias.items())}).")
    pair = _activation_pair(cfg, db)
    if pair is not None:
        pred = compose.predict_activations(db, query, 0, source_layer=pair[0], target_layer=pair[1],
                                           method="exact", threads=threads)
        results["activation_prediction"] = {"source": pair[0], "target": pair[1], **pred.errors}
        save("activation_prediction", figures.activation_figure(pred),
             f"Activation prediction (Fig. 3): {pair[1]} of {query.image_ids[0]} predicted by matching {pair[0]} "
             f"neighbourhoods (3 channels as RGB). Relative L2 error: compositional "
             f"{pred.errors['compositional']['relative_l2']:.3f}, global {pred.errors['global']['relative_l2']:.3f}.")
    layers = _sweep_layers(cfg, db)
    if layers:
        steps = compose.layer_sweep(db, query, 0, layers=layers, target="cnn_outputs", method="exact",
                                    threads=threads)
        results["layer_sweep"] = {s.layer: s.stats for s in steps}
        save("layer_sweep", figures.sweep_figure(steps, palette=palette),
             "Layer sweep (Fig. 4): CompNN at each decoder layer from the bottleneck to the last; the second "
             "row colours pixels by source image, showing composition grow with later layers.")
    (d / "analyses.json").write_text(json.dumps(results, indent=1, default=float))


# ---- report -----------------------------------------------------------------------------------------

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
        entries.append(report.QueryEntry(query.image_ids[i], f"panels/{i:03d}.png", f"panels/{i:03d}_compnn.png",
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
    report.write_report(out_dir, title=f"compnn — {cfg.task}", notes=notes, warnings=warnings,
                        table_header=header, table_rows=rows, queries=entries, train_ids=db.image_ids,
                        figures=figs, timings=timings)
