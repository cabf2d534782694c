"""The analyses stage: the paper's figures beyond Table 1 (reconstruction, correspondence, bias
modification, activation prediction, layer sweep) for the first query images."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from compnn_py import compose, figures
from compnn_py.store import ActivationStore
from experiments.steps.compnn import match_kwargs
from experiments.steps.export import open_stores


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


def _sweep_layers(db) -> list[str]:
    """The architecture's sweep layers (export wrote them into the metadata) that this export holds."""
    return [n for n in db.metadata.get("sweep_layers", []) if n in db.layer_names]


def _activation_pair(db) -> tuple[str, str] | None:
    pair = db.metadata.get("activation_pair")
    return tuple(pair) if pair and all(n in db.layer_names for n in pair) else None


def run_analyses(d: Path, cfg, spec, export_dir: Path, threads) -> None:
    db, query = open_stores(export_dir)
    ms = db.metadata["match_spec"]
    palette = np.asarray(db.metadata["palette"], dtype=np.uint8) if spec.num_classes else None
    method = "hierarchical" if len(db) > 4 * cfg.shortlist else "exact"
    kw = match_kwargs(cfg, ms, method, threads)
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
    pair = _activation_pair(db)
    if pair is not None:
        pred = compose.predict_activations(db, query, 0, source_layer=pair[0], target_layer=pair[1],
                                           method="exact", threads=threads)
        results["activation_prediction"] = {"source": pair[0], "target": pair[1], **pred.errors}
        save("activation_prediction", figures.activation_figure(pred),
             f"Activation prediction (Fig. 3): {pair[1]} of {query.image_ids[0]} predicted by matching {pair[0]} "
             f"neighbourhoods (3 channels as RGB). Relative L2 error: compositional "
             f"{pred.errors['compositional']['relative_l2']:.3f}, global {pred.errors['global']['relative_l2']:.3f}.")
    layers = _sweep_layers(db)
    if layers:
        steps = compose.layer_sweep(db, query, 0, layers=layers, target="cnn_outputs", method="exact",
                                    threads=threads)
        results["layer_sweep"] = {s.layer: s.stats for s in steps}
        save("layer_sweep", figures.sweep_figure(steps, palette=palette),
             "Layer sweep (Fig. 4): CompNN at each decoder layer from the bottleneck to the last; the second "
             "row colours pixels by source image, showing composition grow with later layers.")
    (d / "analyses.json").write_text(json.dumps(results, indent=1, default=float))
