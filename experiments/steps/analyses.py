"""The analyses stage: the paper's figures beyond Table 1 (reconstruction, correspondence, bias
modification, activation prediction, layer sweep) for the first query images.

The work for one query image is `analyse_query`, a top-level function of plain arguments that writes its
figures into the stage directory and returns its numbers, so that it can run anywhere (a process pool,
a Dask worker); `run_analyses` loops over the queries and writes `analyses.json`:
{"matching", "shortlist", "n_train", "bias_databases": {name: n_images}, "queries": [analyse_query()...]}.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from compnn_py import compose, figures, metrics
from compnn_py.fsio import write_json
from compnn_py.progress import Progress
from compnn_py.store import ActivationStore
from experiments.steps.compnn import choose_method, match_kwargs, search_cost
from experiments.steps.export import open_stores

N_QUERIES = 3                   # query images analysed
ALL_IMAGES_BUDGET = 2e11        # multiply-adds per search: exact over all training images up to this, else
                                # exact within the global shortlist (search_scope)
BIAS_KEYS = ("city", "style", "sequence")   # per-image metadata a database is split by, first usable wins
IMAGE_CHANGE = 25               # an RGB output pixel "changes" when a channel moves by more than this


def bias_databases(db: ActivationStore) -> dict[str, np.ndarray]:
    """Two restricted databases that differ in a meaningful attribute: the two most common values of the
    first per-image metadata key in BIAS_KEYS that has two (synthetic street scenes: city; synthetic
    facades: style; CamVid: sequence), else the two halves of the training set."""
    meta = db.image_meta
    for key in BIAS_KEYS:
        values = sorted({m[key] for m in meta if key in m})
        if len(values) >= 2:
            counts = {v: sum(1 for m in meta if m.get(key) == v) for v in values}
            a, b = sorted(values, key=lambda v: -counts[v])[:2]
            return {f"{key}={a}": db.rows_where(lambda m, _i, a=a: m.get(key) == a),
                    f"{key}={b}": db.rows_where(lambda m, _i, b=b: m.get(key) == b)}
    half = len(db) // 2
    return {"first half": np.arange(half, dtype=np.int32), "second half": np.arange(half, len(db), dtype=np.int32)}


def analysis_method(match_method: str) -> str:
    """The matcher the analyses use for --match_method: that matcher itself, and the hierarchical prune
    for "both" (run_analyses, which sees the database, takes Table 1's fast matcher instead:
    compnn.choose_method)."""
    if match_method not in ("exact", "shortlist", "hierarchical", "both"):
        raise ValueError(f"match_method must be exact, shortlist, hierarchical or both, got {match_method!r}")
    return "hierarchical" if match_method == "both" else match_method


def _sweep_layers(db) -> list[str]:
    """The architecture's sweep layers (export wrote them into the metadata) that this export holds."""
    return [n for n in db.metadata.get("sweep_layers", []) if n in db.layer_names]


def _activation_pairs(db) -> list[tuple[str, str]]:
    """The architecture's (source, target) layer pairs for activation prediction that this export holds."""
    return [tuple(p) for p in db.metadata.get("activation_pairs", []) if all(n in db.layer_names for n in p)]


def search_scope(db, cfg, layer: str, threads) -> tuple[dict[str, Any], str]:
    """Matching keywords for an analysis at `layer` (layer sweep, activation prediction) and the rule
    that chose them: exact search over every training image when that costs at most ALL_IMAGES_BUDGET
    multiply-adds per query image (compnn.search_cost), else exact search within the S = cfg.shortlist
    images closest by the global descriptor (at CamVid 360x480, one exact search over 367 images is
    hours on two cores). Either way through the certified fast search (compose.match_layer `certified`:
    the same answers as exact search, bit for bit; for 1×1 patches on a CPU with AMX-BF16 about 8-10
    times faster)."""
    cost = search_cost(db, layer, len(db))
    if cost <= ALL_IMAGES_BUDGET or cfg.shortlist >= len(db):
        return {"method": "exact", "threads": threads, "certified": True}, (
            f"exact over all {len(db)} training images: {cost:.2g} multiply-adds <= {ALL_IMAGES_BUDGET:.0e}")
    ms = db.metadata["match_spec"]
    return {"method": "shortlist", "global_layer": ms["global"], "shortlist": cfg.shortlist, "threads": threads,
            "certified": True}, (
        f"exact within the {cfg.shortlist}-image global shortlist: over all {len(db)} images it would cost "
        f"{cost:.2g} multiply-adds > {ALL_IMAGES_BUDGET:.0e}")


def changed_pixels(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """bool (H, W): where two outputs differ — another class for label maps; for RGB, a channel moved by
    more than IMAGE_CHANGE."""
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim == 2:
        return a != b
    return (np.abs(a.astype(np.int16) - b.astype(np.int16)) > IMAGE_CHANGE).any(-1)


def _agreement(pred: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """How close an output is to a reference: pixel agreement for label maps, PSNR/SSIM for images."""
    if np.asarray(ref).ndim == 2:
        return {"pixel_agreement": float((np.asarray(pred) == np.asarray(ref)).mean())}
    return {"psnr": metrics.psnr(pred, ref), "ssim": metrics.ssim(pred, ref)}


def _short(score: dict[str, float]) -> str:
    if "pixel_agreement" in score:
        return f"{score['pixel_agreement']:.0%}"
    return f"{score['psnr']:.1f}dB" if np.isfinite(score["psnr"]) else "identical"


def analyse_query(export_dir, cfg, i: int, *, out_dir, method: str = "hierarchical", threads=None) -> dict:
    """Every analysis of query image i: writes `<kind>_<i>.png` figures into `out_dir` and returns
    {"index", "query_id", "meta", "figures": [{"kind", "file", "caption", "layout"}], "reconstruction",
    "correspondence", "bias", "activation_prediction", "layer_sweep"} (plain JSON-able values)."""
    export_dir, out_dir = Path(export_dir), Path(out_dir)
    db, query = open_stores(export_dir)
    ms = db.metadata["match_spec"]
    palette = figures.palette_of(db) if db.label_kind == "labels" or db.metadata.get("num_classes") else None
    kw = match_kwargs(cfg, ms, method, threads)
    if "shortlist" in kw:
        kw["shortlist"] = min(cfg.shortlist, len(db))
    qid = query.image_ids[i]
    res: dict[str, Any] = {"index": int(i), "query_id": qid, "meta": query.image_meta[i], "figures": []}

    def save(kind, fig: figures.Panel, caption, variant=""):
        name = f"{kind}{variant}_{i}.png"
        figures.save_png(out_dir / name, fig)  # pixels only; the words go to the report as text
        res["figures"].append({"kind": kind, "file": name, "caption": caption, "layout": fig.layout()})

    # Reconstruction (Fig. 10): one set of fine-layer matches copies training inputs and training targets.
    rec = compose.reconstruction(db, query, i, layer=ms["fine"], global_nn_layer=ms["global"],
                                 progress=f"query {qid} reconstruction", **kw)
    image, cnn = np.asarray(query.images[i]), np.asarray(query.cnn_outputs[i])
    scores = {"input": {"compnn": _agreement(rec.compnn_input.output, image),
                        "global": _agreement(rec.global_input.output, image)},
              "output": {"compnn": _agreement(rec.compnn_output.output, cnn),
                         "global": _agreement(rec.global_output.output, cnn)}}
    res["reconstruction"] = scores
    fmt = {side: {m: _short(v) for m, v in d.items()} for side, d in scores.items()}
    ssim = {m: f", SSIM {v['ssim']:.2f}" if "ssim" in v else "" for m, v in scores["input"].items()}
    out_measure = "pixels agreeing with the CNN output" if cnn.ndim == 2 else "PSNR against the CNN output"
    save("reconstruction", figures.reconstruction_figure(rec, query, i, palette=palette, scores=fmt),
         f"Reconstruction (Fig. 10) of query {qid}. Top: the input, rebuilt by copying training-input pixels "
         f"compositionally (CompNN: PSNR {fmt['input']['compnn']}{ssim['compnn']}) and from the one globally "
         f"nearest training image (global: {fmt['input']['global']}{ssim['global']}). Bottom: the CNN output "
         f"and the same two copies taken from the training targets ({out_measure}: CompNN "
         f"{fmt['output']['compnn']}, global "
         f"{fmt['output']['global']}).")

    # Correspondence map (Fig. 11): the reconstruction's matches, copied from the CNN outputs (the same
    # search, not run twice).
    comp = rec.compnn_output
    corr = compose.correspondence(comp, db, top=3)
    res["correspondence"] = {"n_sources": int(len(corr.rows)), "matching": method,
                             "top": [{"image_id": iid, "pixels": int(c)} for iid, c in zip(corr.image_ids[:3],
                                                                                          corr.counts[:3])]}
    cap = (f"with {method} matching only the {kw['shortlist']} training images the bottleneck "
           f"shortlist keeps can be sources" if "shortlist" in kw
           else f"with exact search any of the {len(db)} training images can be a source")
    save("correspondence", figures.correspondence_figure(corr, db, comp.output, palette=palette),
         f"Correspondence map (Fig. 11) of query {qid}: each CompNN output pixel coloured by the training image "
         f"it was copied from, then the three most-used training images with the copied region marked in "
         f"that colour (grey: the rest). {len(corr.rows)} training images contribute; {cap}.")

    # Bias modification (Fig. 9): the same query composed from two databases that differ in an attribute.
    bias = bias_databases(db)
    bias_kw = dict(kw)
    if "shortlist" in kw:
        bias_kw["shortlist"] = min(kw["shortlist"], min(len(r) for r in bias.values()))
    outs = compose.bias_modification(db, query, i, bias, layer=ms["fine"], progress=f"query {qid} bias", **bias_kw)
    (na, oa), (nb, ob) = list(outs.items())[:2]
    changed = changed_pixels(oa.output, ob.output)
    res["bias"] = {"databases": {k: int(len(v)) for k, v in bias.items()},
                   "changed_fraction": float(changed.mean()),
                   "agreement_with_cnn": {k: _agreement(o.output, cnn) for k, o in outs.items()}}
    what = "pixels whose class differs" if changed.ndim == 2 and cnn.ndim == 2 else \
        f"pixels whose colour moves by more than {IMAGE_CHANGE}/255 in a channel"
    own = ", ".join(f"{k}={v}" for k, v in query.image_meta[i].items()) or "no attribute"
    save("bias", figures.bias_figure(query, i, outs, palette=palette, changed=changed, cnn=True),
         f"Bias modification (Fig. 9) of query {qid} ({own}): the same input composed from two restricted "
         f"databases, {na} ({len(bias[na])} training images) and {nb} ({len(bias[nb])}). "
         f"{changed.mean():.1%} of output pixels change between them ({what}; white in the last panel).")

    # Activation prediction (Fig. 3), for each layer pair of the architecture.
    res["activation_prediction"] = []
    for pair in _activation_pairs(db):
        scope, why = search_scope(db, cfg, pair[0], threads)
        res.setdefault("search_rules", {})[f"activation {pair[0]}->{pair[1]}"] = why
        pred = compose.predict_activations(db, query, i, source_layer=pair[0], target_layer=pair[1],
                                           progress=f"query {qid} activations {pair[1]}", **scope)
        fig, channels = figures.activation_heatmaps(pred)
        res["activation_prediction"].append({"source": pair[0], "target": pair[1], "channels": channels,
                                             **pred.errors})
        e = pred.errors
        save("activation", fig,
             f"Activation prediction (Fig. 3) of query {qid}: the CNN's {pair[1]} map predicted without running "
             f"that layer, by matching {pair[0]} neighbourhoods against the training set (exact search) and "
             f"copying the matched training positions' {pair[1]} vectors (CompNN), or the whole map of the "
             f"globally nearest training image (global). Rows: the {len(channels)} channels that vary most; "
             f"colours run from each channel's minimum to its maximum in the CNN's map (scale below). "
             f"Search: {why}. Over all channels, relative L2 error: CompNN {e['compositional']['relative_l2']:.3f}, global "
             f"{e['global']['relative_l2']:.3f}; cosine: {e['compositional']['cosine']:.3f} vs "
             f"{e['global']['cosine']:.3f}.", variant=f"_{pair[1]}")

    # Layer sweep (Fig. 4), exact search so the number of sources is not capped by a shortlist.
    layers = _sweep_layers(db)
    if layers:
        scopes = {name: search_scope(db, cfg, name, threads) for name in layers}
        res.setdefault("search_rules", {}).update({f"layer sweep {n}": why for n, (_, why) in scopes.items()})
        steps = [compose.layer_sweep(db, query, i, layers=[name], target="cnn_outputs",
                                     progress=f"query {qid} sweep {name}", **kw)[0]
                 for name, (kw, _) in scopes.items()]
        all_exact = all(kw["method"] == "exact" for kw, _ in scopes.values())
        res["layer_sweep"] = {s.layer: s.stats for s in steps}
        save("layer_sweep", figures.sweep_figure(steps, palette=palette),
             f"Layer sweep (Fig. 4) of query {qid}: CompNN matching at each decoder layer, bottleneck first. Top: "
             f"the output; bottom: pixels coloured by source training image; n = training images used. " +
             (f"Exact search over all {len(db)} training images, so n here can exceed the correspondence "
              f"map's count when that one uses the shortlist." if all_exact else
              "Search per layer: " + "; ".join(f"{n}: {why}" for n, (_, why) in scopes.items()) + "."))
    return res


def run_analyses(d: Path, cfg, spec, export_dir: Path, threads, *, match_method: str = "hierarchical",
                 engine=None) -> None:
    """Analyse the first N_QUERIES query images (figures + analyses.json in `d`)."""
    db, query = open_stores(export_dir)
    method = analysis_method(match_method)
    if match_method == "both":  # the fast matcher Table 1 uses (compnn.choose_method)
        method = choose_method(db, cfg)[0]
    n = min(len(query), N_QUERIES)
    if engine is None:
        queries = [analyse_query(export_dir, cfg, i, out_dir=d, method=method, threads=threads)
                   for i in Progress(range(n), desc="analyses", unit="img")]
    else:  # tasks open the stores from export_dir and write their figures into d: paths the workers see
        queries = engine.map(analyse_query, [(str(Path(export_dir).resolve()), cfg, i) for i in range(n)],
                             desc="analyses", out_dir=str(Path(d).resolve()), method=method, threads=engine.threads)
    write_json(d / "analyses.json", {
        "matching": method, "shortlist": min(cfg.shortlist, len(db)) if method != "exact" else None,
        "n_train": len(db), "bias_databases": {k: int(len(v)) for k, v in bias_databases(db).items()},
        "queries": queries})
