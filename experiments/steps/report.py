"""The report stage: table1.csv/md, metrics.json, config.json, panels/ and figures/ PNGs, and the
self-contained report.html in the run directory.

The run directory's top-level files are one set: they are all built aside, in a staging folder
`.compnn-report.tmp-*` inside the run directory, and swapped in together when complete
(compnn_py.fsio.publish_files); files of the previous set that the new one lacks are removed, and
only those (the set is listed in `.compnn-published.json`). A failure while building leaves the
previous set as it was; a crash mid-swap is completed by `recover` at the next run.

metrics.json is the compnn stage's summary with per-class IoU keyed by class name, plus the analyses'
numbers, the stage timings and whether the data was synthetic. report.html explains every number it
shows (what the rows and columns of Table 1 mean, the paper's own numbers beside ours where the paper
has them, what the matcher comparison measures) and embeds every picture, so it can be read alone.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from compnn_py import figures, fsio
from compnn_py.fsio import write_json
from experiments import paper_numbers, report_page
from experiments.report_page import Raw, esc
from experiments.steps.export import open_stores

COLUMN_NAMES = {
    "pixel_acc": "Global pixel accuracy", "mean_class_acc": "Mean class accuracy", "mean_iou": "Mean IoU",
    "agree_pixel_acc": "Pixels agreeing with CNN", "agree_mean_class_acc": "Mean class agreement with CNN",
    "agree_mean_iou": "Mean IoU against CNN",
    "psnr_vs_gt": "PSNR vs ground truth (dB)", "ssim_vs_gt": "SSIM vs ground truth",
    "psnr_vs_cnn": "PSNR vs CNN output (dB)", "ssim_vs_cnn": "SSIM vs CNN output",
}
FIGURE_ZOOM = 1.5    # analysis figures are drawn with 128-pixel cells; shown larger (CSS caps them at the page)
SHORT_ROWS = {"Baseline CNN": "CNN", "CompNN (SS)": "CompNN SS", "CompNN (O)": "CompNN O",
              "Global Bottleneck NN (SS)": "Bottleneck SS", "Global Bottleneck NN (O)": "Bottleneck O",
              "Global Decode2 NN (SS)": "Decode2 SS", "Global Decode2 NN (O)": "Decode2 O"}

_GLOSSARY_ROWS = [
    ("Baseline CNN", "the trained network's own prediction."),
    ("CompNN", "compositional nearest neighbours: every position of the query's fine-layer feature map is "
               "matched (cosine similarity of its k×k neighbourhood of activations) to the most similar "
               "position of any training image, and the pixel block under that training position is copied. "
               "The output is a collage of training pieces."),
    ("Global Bottleneck NN / Global Decode2 NN", "the whole output of the one training image whose entire "
                                                 "feature map (the bottleneck, or the decoder's second-to-last "
                                                 "layer, Decode2) is most similar to the query's: explanation "
                                                 "by one example instead of a collage."),
    ("(SS) and (O)", "what is copied from the matched training image: SS (self-supervised) copies the CNN's "
                     "own output on that training image, O copies its original ground-truth label. The "
                     "matches are the same; only the copied target differs."),
]
_GLOSSARY_COLS = {
    "pixel_acc": "correctly labelled pixels / all labelled pixels, pooled over the query images (so large "
                 "classes such as road and sky dominate). Void pixels of the ground truth are not scored.",
    "mean_class_acc": "per class, the fraction of its ground-truth pixels labelled right, averaged over the "
                      "classes present (every class weighs the same).",
    "mean_iou": "per class, intersection over union of predicted and true pixels, averaged over classes.",
    "agree_": "the same scores with the CNN's output in place of the ground truth: how faithfully an approach "
              "reproduces (explains) the network, right or wrong. The CNN's own row is perfect by definition.",
    "psnr": "peak signal-to-noise ratio in dB (higher: closer), mean over the query images.",
    "ssim": "structural similarity, 1 = identical, mean over the query images.",
}


def _column_name(c: str) -> str:
    return COLUMN_NAMES.get(c, c.replace("_", " "))


def _per_class_named(summary: dict, class_names) -> None:
    """per_class_iou {row: [values]} -> {row: {class name: value}} (in place) when the names fit."""
    pc = summary.get("per_class_iou")
    if not pc:
        return
    for row, vals in list(pc.items()):
        if isinstance(vals, list) and len(vals) == len(class_names):
            pc[row] = {name: v for name, v in zip(class_names, vals)}


def _read_json(path: Path | None) -> Any:
    if path is None or not Path(path).is_file():
        return None
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _flat(obj, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested dicts as (dotted key, value) rows; long lists summarised by their length."""
    if isinstance(obj, dict):
        return [row for k, v in obj.items() for row in _flat(v, f"{prefix}.{k}" if prefix else str(k))]
    if isinstance(obj, list):
        return [(prefix, f"[{len(obj)} values]" if len(obj) > 8 else ", ".join(map(str, obj)))]
    return [(prefix, obj)]


def _pct(v) -> str:
    return "–" if v is None else f"{v:.1%}"


# ---- sections -------------------------------------------------------------------------------------

def _legend_section(spec, is_labels_out: bool) -> str:
    if not spec.num_classes:
        return ("<p>This task's outputs are images (maps rendered from aerial photos), not class labels, so "
                "there are no class colours.</p>")
    where = ("Label maps on this page (ground truth, CNN and CompNN outputs) use these colours"
             if is_labels_out else "The input label maps use these colours (the outputs are photos)")
    return (f"<p>{where}. Black is void: pixels without a class, not scored.</p>"
            + report_page.legend(spec.class_names, spec.palette, void_colour=figures.VOID_COLOUR))


def identical_rows(table: dict) -> list[list[str]]:
    """Groups (two or more, in table order) of Table 1 rows whose every score is the same."""
    groups: list[list[str]] = []
    for r, vals in table.items():
        g = next((g for g in groups if table[g[0]] == vals), None)
        if g is None:
            groups.append([r])
        else:
            g.append(r)
    return [g for g in groups if len(g) > 1]


_GLOBAL_ROWS = {"Global Bottleneck NN": "global", "Global Decode2 NN": "decode2"}


def _identical_rows_html(table: dict, outputs, db, query) -> str:
    """Why Table 1 rows with identical scores are identical, computed: the same predictions on every query
    (outputs.npz), and for the two global NN rows whether they search the same layer or find, for every
    query, the same nearest training image (whose whole output both then copy)."""
    notes: dict[str, list[str]] = {}
    for group in identical_rows(table):
        keys = [r.replace(" ", "_") for r in group]
        if not all(k in outputs for k in keys):  # predictions not recorded: only the scores can be compared
            notes.setdefault("they score the same", []).append(" and ".join(group))
            continue
        same_output = all(np.array_equal(outputs[keys[0]], outputs[k]) for k in keys[1:])
        bases = {r.rsplit(" (", 1)[0] for r in group}
        if same_output and bases == set(_GLOBAL_ROWS) and len(group) == 2:
            why = _same_global_image(db, query, len(outputs[keys[0]]))
        elif same_output:
            why = "they predict the same output on every query image"
        else:
            why = "their predictions differ, but score the same"
        notes.setdefault(why, []).append(" and ".join(group))
    return "".join(f"<p class='note'>Identical rows: {esc('; '.join(pairs))}: {esc(why)}.</p>"
                   for why, pairs in notes.items())


def _same_global_image(db, query, n: int) -> str:
    from compnn_py import compose

    ms = db.metadata["match_spec"]
    g, d = ms["global"], ms["decode2"]
    if g == d:
        return f"both global searches compare the same layer ({g}), so they pick the same training image"
    picks = [[int(compose.global_nn(db, query, i, layer=lay).source_image[0, 0]) for lay in (g, d)]
             for i in range(n)]
    same = sum(a == b for a, b in picks)
    if same == n:
        return (f"for each of the {n} query images, the training image nearest by the whole {g} map is also "
                f"the one nearest by the whole {d} map (" + ", ".join(db.image_ids[a] for a, _ in picks)
                + "), and a global NN copies that image's whole output")
    return (f"the nearest training images by {g} and by {d} differ for {n - same} of {n} query images, "
            f"but those images' outputs are identical")


def _table1_section(cfg, spec, summary: dict, same_rows: str = "") -> str:
    t = summary["table1"]
    rows = list(t)
    cols = list(next(iter(t.values())))
    vs_cnn = [c for c in cols if c.startswith("agree_") or c.endswith("_vs_cnn")]
    vs_gt = [c for c in cols if c not in vs_cnn]
    paper = paper_numbers.table1(cfg.task)
    header = ["Approach", *map(_column_name, vs_gt)]
    classes = ["", *[""] * len(vs_gt)]
    if paper:
        header += [Raw(f"Paper: {esc(paper_numbers.PAPER_ACCURACY)}"), Raw(f"Paper: {esc(paper_numbers.PAPER_IOU)}")]
        classes += ["paper", "paper"]
    body = []
    for r in rows:
        line = [_row_label(r, summary), *(t[r][c] for c in vs_gt)]
        if paper:
            line += list(paper.get(r, (None, None)))
        body.append(line)
    n_q, method = summary.get("n_query"), summary.get("table1_matching")
    html = [f"<p>Scores over the {n_q} query images of this run; CompNN rows use {esc(str(method))} matching "
            f"(see <a href='#matching'>matching</a>). CompNN explains the network well when its rows come "
            f"close to the Baseline CNN row, and better than global matching when they beat the Global rows.</p>",
            "<h3>Against the ground truth</h3>", report_page.table(header, body, classes=classes, table_id="table1"),
            same_rows]
    if paper:
        html.append(f"<p class='note'>Shaded columns: {esc(paper_numbers.PAPER)}, for the same task with the "
                    f"paper's networks on the full real dataset. The paper calls its accuracy “mean pixel "
                    f"accuracy” without defining it further; compare it with our global pixel accuracy and mean "
                    f"class accuracy with that in mind. Our numbers come from this run's data, model size and "
                    f"training length, so only the ordering of the rows is expected to match.</p>")
    else:
        html.append("<p class='note'>The paper reports no Table 1 numbers for this task (it reports "
                    "segmentation scores only for CityScapes, CamVid and Facades-to-labels).</p>")
    if vs_cnn:
        html += ["<h3>Against the CNN's own output</h3>",
                 report_page.table(["Approach", *map(_column_name, vs_cnn)], [[_row_label(r, summary),
                                                                               *(t[r][c] for c in vs_cnn)]
                                                                              for r in rows])]
    gl = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in _GLOSSARY_ROWS)
    for c in vs_gt:
        key = next((k for k in _GLOSSARY_COLS if c == k or c.startswith(k)), None)
        if key:
            gl += f"<dt>{esc(_column_name(c))}</dt><dd>{esc(_GLOSSARY_COLS[key])}</dd>"
    if vs_cnn:
        gl += f"<dt>Against the CNN's own output (second table)</dt><dd>{esc(_GLOSSARY_COLS['agree_'])}"
        if any(c.startswith("psnr") for c in vs_cnn):
            gl += " A dash in the PSNR column: identical images (infinite PSNR)."
        gl += "</dd>"
    html.append(f"<h3>What the rows and columns mean</h3><dl class='gl'>{gl}</dl>")
    pc = summary.get("per_class_iou")
    if pc and all(isinstance(v, dict) for v in pc.values()):
        names = list(next(iter(pc.values())))
        colour = dict(zip(spec.class_names, np.asarray(spec.palette).reshape(-1, 3)))
        head = ["Class", *(SHORT_ROWS.get(r, r) for r in pc)]
        body = [[Raw(report_page.swatch(colour[n]) + " " + esc(n)) if n in colour else n,
                 *(pc[r][n] for r in pc)] for n in names]
        html.append("<details class='sub' id='per-class'><summary><h3>Per-class IoU against the ground truth</h3>"
                    "</summary><p class='note'>A dash: the class is in neither the ground truth nor the prediction "
                    "of these query images.</p>" + report_page.table(head, body, digits=2) + "</details>")
    return "".join(html)


def _row_label(row: str, summary: dict) -> str:
    """Table 1's Global Bottleneck rows name the layer used; a degenerate one that was replaced is said
    (issue 19: tf_models.export.resolve_match_layers)."""
    g = summary.get("global_layer")
    if not row.startswith("Global Bottleneck") or not isinstance(g, dict) or not g.get("layer"):
        return row
    label = f"{row} at {g['layer']}"
    if g.get("named") and g["named"] != g["layer"]:
        label += f" ({g['named']} is constant over the training images)"
    elif g.get("degenerate"):
        label += " (constant over the training images: global matching is arbitrary)"
    return label


_MATCHERS = {
    "exact": "exact search: every query position against every position of all {n} training images",
    "shortlist": "shortlist: the S = {s} training images whose bottleneck features are most similar to the "
                 "query's, then exact search within those",
    "hierarchical": "hierarchical prune (the paper's): the same shortlist, then {k} candidates per position of a "
                    "coarser layer, then the fine layer searched only around those (±{m} positions)",
}


def _provenance_note(summary: dict, i: int) -> str:
    """The click view's note for query i: which matcher picked the sources shown, how often exact search
    over all training images picks another image for this query (the compnn stage's reference run, when
    it ran on it), and the explorer for exact top-k sources."""
    main, n = summary.get("table1_matching"), summary["n_train"]
    s = summary.get("matcher", {}).get("shortlist")
    picked = {"exact": f"exact search over all {n} training images",
              "shortlist": f"exact search within the bottleneck shortlist of {s} training images",
              "hierarchical": f"the hierarchical prune (bottleneck shortlist of {s} images, then coarse candidates)"}
    text = f"The sources shown were picked by Table 1's matcher: {picked.get(main, main)}."
    if main in ("shortlist", "hierarchical"):
        per = (summary.get(f"{main}_vs_exact", {}).get("over_all") or {}).get("per_query_same_source_image") or []
        same = per[i] if i < len(per) else None
        text += (f" Exact search over all {n} training images picks another training image at {_pct(1 - same)} of "
                 "this query's positions (many positions are near-ties)." if same is not None else
                 " Exact search over all training images was not run on this query (see --exact_queries).")
    return (text + " The exact top-k sources of any pixel, with how ambiguous they are: "
            "python -m experiments.explore --out_dir=<this run's directory>.")


def _matching_section(summary: dict) -> str:
    m = summary.get("matcher", {})
    fmt = dict(n=summary["n_train"], s=m.get("shortlist"), k=m.get("coarse_k"), m=m.get("margin"))
    html = [f"<p>CompNN matches {summary['kernel']}×{summary['kernel']} neighbourhoods of the layer "
            f"<code>{esc(summary['fine_layer'])}</code> ({'×'.join(map(str, summary['fine_shape']))}: positions "
            f"× channels); each match copies a {summary['stride']}×{summary['stride']} pixel block. Matchers:</p>"
            "<ul>" + "".join(f"<li>{esc(v.format(**fmt))}</li>" for v in _MATCHERS.values()) + "</ul>"]
    main = summary.get("table1_matching")
    why = m.get("why")
    html.append(f"<p>Table 1 and the query panels use <b>{esc(str(main))}</b> matching"
                + (f" ({esc(why)})" if why and why != "--match_method" else "") + ".</p>")
    spi = summary.get("seconds_per_image", {})
    if spi:
        html.append("<p>Seconds per query image: " + ", ".join(f"{esc(k)} {v:.3f}" for k, v in spi.items())
                    + ".</p>")
    html.append(_agreement_html(summary))
    return "".join(html)


_AGREE_COLUMNS = [("same_match", "Same best match (image and position)"),
                  ("same_source_image", "Same training image"),
                  ("same_label", "Same copied output pixel")]
_SCOPES = {
    ("hierarchical_vs_exact", "within_shortlist"): ("hierarchical prune", "exact search within the shortlist",
                                                    "what the prune loses by searching only around coarse "
                                                    "candidates"),
    ("hierarchical_vs_exact", "over_all"): ("hierarchical prune", "exact search over all images",
                                            "what shortlist and prune lose together"),
    ("shortlist_vs_exact", "over_all"): ("exact search within the shortlist", "exact search over all images",
                                         "what the shortlist alone loses"),
}


def _agreement_html(summary: dict) -> str:
    """How often the fast matchers find what exact search finds, from whatever the compnn stage recorded:
    {"hierarchical_vs_exact": {"within_shortlist"|"over_all": {same_*, n_queries}}, "shortlist_vs_exact":
    ...}, or (older runs) flat {"same_match", "same_output_pixel"} fractions."""
    rows = []
    for group in ("hierarchical_vs_exact", "shortlist_vs_exact"):
        g = summary.get(group)
        if not isinstance(g, dict):
            continue
        scopes = {k: v for k, v in g.items() if isinstance(v, dict)}
        if not scopes and g:  # flat, one comparison over all positions
            scopes = {"over_all": {"same_match": g.get("same_match"), "same_label": g.get("same_output_pixel")}}
        for scope, vals in scopes.items():
            fast, ref, what = _SCOPES.get((group, scope), (group, scope, ""))
            n = vals.get("n_queries")
            rows.append([Raw(f"{esc(fast)} vs {esc(ref)}<br><span class='note'>{esc(what)}"
                             + (f"; {n} queries" if n else "") + "</span>"),
                         *(_pct(vals.get(k)) if vals.get(k) is not None else "–" for k, _ in _AGREE_COLUMNS)])
    if not rows:
        return ("<p class='note'>No comparison with exact search was run (see --match_method and "
                "--exact_queries).</p>")
    return ("<p>How often a fast matcher finds what exact search finds, per fine-layer position (matches) or "
            "per output pixel (copied output). The match itself often differs while the copied output does "
            "not: many training positions carry the same label, and a different but nearly as similar patch "
            "usually copies the same thing. Table 1 shows the effect on accuracy.</p>"
            + report_page.table(["Comparison", *(t for _, t in _AGREE_COLUMNS)], rows, table_id="agreement"))


def _figure_html(path: Path, f: dict) -> str:
    """An analysis figure: its pictures (cut from the PNG at their own resolution, shown FIGURE_ZOOM times
    the size they have in the PNG) with their titles as text, or, for a figure recorded without a
    layout (an analyses stage from before layouts), the PNG as one picture."""
    with Image.open(path) as im:
        pixels = np.asarray(im.convert("RGB"))
    fig_id = f"fig-{f['file'][:-4]}"
    layout = f.get("layout")
    if not layout:
        return report_page.figure(report_page.data_uri(path), f["caption"], fig_id=fig_id,
                                  width=round(pixels.shape[1] * FIGURE_ZOOM))
    cells = [(t, report_page.data_uri(c)) for t, c in zip(layout["titles"], figures.cells_of(pixels, layout))]
    return report_page.panel_figure(cells, layout["ncols"], f["caption"], fig_id=fig_id,
                                    cell_width=round(layout["cell"][1] * FIGURE_ZOOM),
                                    colour_scale=layout.get("colour_scale"))


def _analyses_sections(analyses: dict, fig_html: dict, is_labels: bool) -> list[tuple[str, str, str]]:
    qs = analyses.get("queries", [])
    by_kind: dict[str, list] = {}
    for q in qs:
        for f in q["figures"]:
            by_kind.setdefault(f["kind"], []).append((q, f))

    def figs(kind):
        return "".join(fig_html[f["file"]] for _, f in by_kind.get(kind, []))

    method = analyses.get("matching")
    how = (f"{method} matching, S = {analyses.get('shortlist')}" if method != "exact" else "exact search")
    out = []
    if "reconstruction" in by_kind:
        out.append(("reconstruction", "Reconstruction (Fig. 10)",
                    f"<p>The same fine-layer matches ({esc(how)}) used to copy training <i>inputs</i> instead of "
                    f"outputs: if the features keep enough about the input, the collage looks like the query "
                    f"photo. The titles give PSNR against the input (top row) and "
                    f"{'the fraction of pixels agreeing with' if is_labels else 'PSNR against'} the CNN output "
                    f"(bottom row).</p>" + figs("reconstruction")))
    if "correspondence" in by_kind:
        out.append(("correspondence", "Correspondence map (Fig. 11)",
                    f"<p>Which training images each CompNN output is built from ({esc(how)}).</p>"
                    + figs("correspondence")))
    if "bias" in by_kind:
        dbs = analyses.get("bias_databases", {})
        key = next(iter(dbs), "")
        attr = key.split("=")[0] if "=" in key else None
        expl = ""
        if attr == "city":
            from compnn_py.data.synthetic.street import CITY_NAMES
            expl = (" The built-in street scenes come from two cities: " + "; ".join(
                f"{c} ({n})" for c, n in CITY_NAMES.items()) + " — they differ in buildings, vegetation, "
                "fences and road markings, so a database of one city lacks pieces the other city's images need.")
        elif attr:
            expl = f" The split is by the training images' <code>{esc(attr)}</code> attribute."
        else:
            expl = " These training images carry no attribute to split by, so the database is split in halves."
        rows = [[q["query_id"], ", ".join(f"{k}={v}" for k, v in q.get("meta", {}).items()) or "–",
                 _pct(q["bias"]["changed_fraction"]),
                 *(_pct(a.get("pixel_agreement")) if "pixel_agreement" in a else f"{a['psnr']:.1f} dB"
                   for a in q["bias"]["agreement_with_cnn"].values())]
                for q in qs if "bias" in q]
        agree = "pixels agreeing with the CNN" if is_labels else "PSNR vs CNN"
        own = _own_database_wins(qs, attr)
        if own:
            expl += f" {own}"
        head = ["Query", "Its attribute", "Output pixels changed", *(f"{agree}, from {k}" for k in dbs)]
        out.append(("bias", "Bias modification (Fig. 9)",
                    f"<p>CompNN's output depends on the database it copies from. Restricting the database to "
                    f"training images with one attribute value changes what the same query is composed of: "
                    f"{', '.join(f'{esc(k)} ({v} images)' for k, v in dbs.items())}.{expl}</p>"
                    + report_page.table(head, rows) + figs("bias")))
    if "activation" in by_kind:
        rows = []
        for q in qs:
            for a in q.get("activation_prediction") or []:
                rows.append([q["query_id"], f"{a['source']} → {a['target']}", a["compositional"]["relative_l2"],
                             a["global"]["relative_l2"], a["compositional"]["cosine"], a["global"]["cosine"],
                             a["compositional"]["mean_position_cosine"], a["global"]["mean_position_cosine"]])
        head = ["Query", "Layers (matched → predicted)", "Rel. L2 error CompNN", "Rel. L2 error global",
                "Cosine CompNN", "Cosine global", "Per-position cosine CompNN", "Per-position cosine global"]
        out.append(("activation", "Activation prediction (Fig. 3)",
                    "<p>Can an internal layer be predicted by copying training activations? Relative L2 error = "
                    "‖prediction − CNN‖ / ‖CNN‖ over the whole map (0 is perfect); cosine over the whole map "
                    "flattened, and averaged per position (1 is perfect).</p>"
                    + report_page.table(head, rows) + figs("activation")))
    if "layer_sweep" in by_kind:
        layers = list(next((q["layer_sweep"] for q in qs if q.get("layer_sweep")), {}))
        ticks = [(j + 1, str(j + 1)) for j in range(len(layers))]
        charts = []
        for stat, title, log in (("n_sources", "training images used", False),
                                 ("n_pieces", "pieces (rigidly copied regions)", False),
                                 ("mean_piece_area", "mean piece area (pixels)", True)):
            series = {f"query {q['query_id']}": [(j + 1, q["layer_sweep"][l][stat]) for j, l in enumerate(layers)]
                      for q in qs if q.get("layer_sweep")}
            charts.append(report_page.line_chart(title, series, x_ticks=ticks, x_label="layer (see list)",
                                                 log_y=log))
        names = ", ".join(f"{j + 1} = <code>{esc(l)}</code>" for j, l in enumerate(layers))
        out.append(("sweep", "Layer sweep (Fig. 4)",
                    f"<p>CompNN matching at each decoder layer, from the bottleneck (1) to the last ({len(layers)}), "
                    f"by exact search over all {analyses.get('n_train')} training images. Later layers have "
                    f"finer grids, so outputs are composed of more, smaller pieces. Layers: {names}.</p>"
                    f"<div class='charts'>{''.join(charts)}</div>" + figs("layer_sweep")))
    return out


def _own_database_wins(qs: list, attr: str | None) -> str:
    """A sentence: for how many queries the database sharing the query's attribute reproduces the CNN
    better than the other one does."""
    if not attr:
        return ""
    wins = n = 0
    for q in qs:
        v = q.get("meta", {}).get(attr)
        agree = q.get("bias", {}).get("agreement_with_cnn", {})
        own, other = agree.get(f"{attr}={v}"), [a for k, a in agree.items() if k != f"{attr}={v}"]
        if v is None or own is None or len(other) != 1:
            continue
        key = "pixel_agreement" if "pixel_agreement" in own else "psnr"
        n += 1
        wins += own[key] > other[0][key]
    if not n:
        return ""
    return (f"For {wins} of these {n} queries the database of the query's own {esc(attr)} reproduces the CNN's "
            f"output more closely than the other one does (table below).")


def _training_section(train_dir) -> str:
    hist = _read_json(Path(train_dir) / "history.json") if train_dir else None
    if not hist:
        return ("<p>No training history: the model was loaded from a checkpoint given with --checkpoint, or the "
                "train stage did not record one.</p>")
    charts, single = [], []
    for split in ("train", "val"):
        entries = [e for e in hist.get(split, []) if isinstance(e, dict) and "step" in e]
        keys = [k for k in (entries[0] if entries else {}) if k not in ("step", "steps_per_sec")]
        for k in keys:
            s = {k: [(e["step"], e.get(k)) for e in entries if isinstance(e.get(k), (int, float))]}
            if len(s[k]) >= 2:
                charts.append(report_page.line_chart(f"{split}: {k}", s, x_label="step"))
            elif s[k]:
                single.append([split, k, s[k][0][0], float(s[k][0][1])])
    charts = [c for c in charts if c]
    if not charts and not single:
        return "<p>The training history holds no logged values.</p>"
    last = hist.get("train", [{}])[-1] if hist.get("train") else {}
    html = (f"<p>Values logged during training (losses are means over each logging interval), up to step "
            f"{last.get('step', '?')}.</p><div class='charts'>{''.join(charts)}</div>")
    if single:
        html += ("<p class='note'>Logged only once (no curve to draw):</p>"
                 + report_page.table(["Split", "Value", "Step", ""], single, digits=4))
    return html


def _exported_layers(exp: dict, per_layer_table: bool) -> str:
    """One sentence: which layers the stores hold (export.json's export_layers and layers), and what else."""
    layers = exp.get("layers") if isinstance(exp.get("layers"), list) else []
    which = {"used": "only the layers this run's matching and analyses read (--export_layers=used)",
             "all": "every named layer of the network (--export_layers=all)"}.get(exp.get("export_layers"))
    count = f"{len(layers)} layer{'s' if len(layers) != 1 else ''}" if layers else "the exported layers"
    return (f"Each store holds {count}{', ' + which if which else ''}, plus the images, labels and CNN outputs"
            + ("; the table below gives each layer's share." if per_layer_table else "."))


def _export_html(exp: dict) -> str:
    """What the exported activation stores take on disk, per image, from the export stage's export.json
    ({"splits": {name: {"images", "bytes", "bytes_per_image", "layer_bytes_per_image"}}, "layers",
    "export_layers", ...})."""
    splits = exp.get("splits") if isinstance(exp.get("splits"), dict) else {}
    parts = []
    for name, v in splits.items():
        if isinstance(v, dict) and isinstance(v.get("bytes_per_image"), (int, float)):
            parts.append(f"{esc(name)} split: <b>{v['bytes_per_image'] / 1024:.1f} KiB per image</b> "
                         f"({v.get('images')} images, {v.get('bytes', 0) / 2**20:.1f} MiB in all)")
    layer_rows = {}
    for name, v in splits.items():
        for layer, b in (v.get("layer_bytes_per_image") or {}).items() if isinstance(v, dict) else ():
            layer_rows.setdefault(layer, {})[name] = b / 1024
    html = (f"<p>The activation stores on disk: {'; '.join(parts)}. "
            f"{esc(_exported_layers(exp, bool(layer_rows)))}</p>") if parts else ""
    if layer_rows:
        names = list(splits)
        html += report_page.table(["Layer", *(f"KiB per image, {n}" for n in names)],
                                  [[Raw(f"<code>{esc(l)}</code>"), *(r.get(n) for n in names)]
                                   for l, r in layer_rows.items()], digits=1)
    other = [(k, v) for k, v in _flat({k: v for k, v in exp.items() if k not in ("splits", "layers")})]
    if other:
        html += report_page.table(["export.json", "Value"], other)
    return html


def _run_section(cfg, out_dir: Path, export_dir: Path, timings) -> str:  # out_dir: the staging folder
    html = []
    conf = _read_json(out_dir / "config.json")
    src = "config.json in the run directory" if conf else "the run configuration"
    conf = conf if conf else cfg.as_dict()
    html.append(f"<h3>Configuration</h3><p class='note'>From {src}.</p>"
                + report_page.table(["Setting", "Value"], [[k, v if not isinstance(v, float) else repr(v)]
                                                           for k, v in _flat(conf)]))
    exp = _read_json(export_dir / "export.json")
    if isinstance(exp, dict):
        html.append("<h3>Export size</h3>" + _export_html(exp))
    html.append("<h3>Stage timings</h3>" + report_page.table(
        ["Stage", "Seconds (when it ran)"], [(s, float(t)) for s, t in timings], digits=1))
    return "".join(html)


# ---- the stage ------------------------------------------------------------------------------------

STAGING = "compnn-report"                 # staging folders: .compnn-report.tmp-<pid>-<random>
MANIFEST = ".compnn-published.json"       # the files of the run directory's current set
ROLES = ("out_dir", "data_dir", "checkpoint")


def portable_configuration(configuration: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """The configuration with the run directory, data directory and checkpoint written relative to
    the run directory (config.json and the report name no absolute path of this machine)."""
    conf = dict(configuration)
    for key in ROLES:
        v = conf.get(key)
        if isinstance(v, (str, os.PathLike)) and os.path.isabs(v):
            conf[key] = os.path.relpath(v, out_dir)
    return conf


def recover(out_dir: Path) -> None:
    """Completes a swap of the top-level files that a crash interrupted, and removes staging folders
    of killed runs. Call it holding the run directory's lock."""
    out_dir = Path(out_dir)
    if (out_dir / MANIFEST).exists():
        fsio.finish_publishing(out_dir, out_dir / MANIFEST)
    for tmp in out_dir.glob(f".{STAGING}.tmp-*"):
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)


def write_outputs(d: Path, out_dir: Path, cfg, spec, data_dir, export_dir: Path, compnn_dir: Path,
                  analyses_dir: Path, timings, *, train_dir: Path | None = None,
                  configuration: dict[str, Any] | None = None) -> list[Path]:
    """Builds the run directory's top-level files aside and swaps them in together; returns their
    paths. `configuration` (the driver's resolved settings) becomes config.json."""
    out_dir = Path(out_dir)
    site = fsio.temp_sibling(out_dir / STAGING)
    try:
        if configuration is not None:
            write_json(site / "config.json", portable_configuration(configuration, out_dir))
        _build(site, cfg, spec, data_dir, Path(export_dir), Path(compnn_dir), Path(analyses_dir), timings,
               train_dir=train_dir)
    except BaseException:
        shutil.rmtree(site, ignore_errors=True)  # our own staging folder; nothing was published
        raise
    return fsio.publish_files(site, out_dir, out_dir / MANIFEST)


def _build(out_dir: Path, cfg, spec, data_dir, export_dir: Path, compnn_dir: Path, analyses_dir: Path, timings,
           *, train_dir: Path | None) -> None:
    """Writes every top-level file into `out_dir` (the staging folder)."""
    db, query = open_stores(export_dir)
    palette = figures.palette_of(db) if spec.num_classes else None
    is_labels = np.asarray(query.cnn_outputs[:1]).ndim == 3   # (1, H, W) ids, not (1, H, W, 3) RGB
    summary = json.loads((compnn_dir / "metrics.json").read_text())
    analyses = json.loads((analyses_dir / "analyses.json").read_text())
    _per_class_named(summary, spec.class_names)
    summary["analyses"] = {k: v for k, v in analyses.items() if k != "queries"}
    summary["analyses"]["queries"] = [{k: v for k, v in q.items() if k != "figures"}
                                      for q in analyses.get("queries", [])]
    summary["stage_seconds"] = dict(timings)
    summary["synthetic_data"] = data_dir is None
    summary["global_layer"] = db.metadata.get("global_layer")  # the bottleneck layer used (issue 19)
    write_json(out_dir / "metrics.json", summary)
    for ext in ("csv", "md"):
        shutil.copy(compnn_dir / f"table1.{ext}", out_dir / f"table1.{ext}")
    outputs = np.load(compnn_dir / "outputs.npz")
    sources = np.load(compnn_dir / "sources.npy")
    for sub in ("panels", "figures"):
        (out_dir / sub).mkdir(exist_ok=True)

    entries = []
    n = min(len(query), cfg.n_panels)
    names = ["input", "CNN", "CompNN", "ground truth", "global NN (Decode2)"]
    stride = int(summary["stride"])
    for i in range(n):
        comp_out = outputs["CompNN_(SS)"][i]
        pics = [np.asarray(query.images[i]), outputs["Baseline_CNN"][i], comp_out, np.asarray(query.labels[i]),
                outputs["Global_Decode2_NN_(SS)"][i]]
        figures.save_png(out_dir / "panels" / f"{i:03d}.png", figures.panel(pics, names, palette=palette))
        rgbs = [figures.to_rgb(p, palette) for p in pics]
        img, y, x = sources[i]
        meta = query.image_meta[i]
        entries.append(report_page.QueryEntry(
            query.image_ids[i], [(t, report_page.data_uri(p)) for t, p in zip(names, rgbs)], 2, img, y, x, stride,
            tuple(rgbs[2].shape[:2]), classes=comp_out if comp_out.ndim == 2 else None,
            note=", ".join(f"{k}={v}" for k, v in meta.items()), provenance=_provenance_note(summary, i)))
    train_images = {}
    for row in np.unique(sources[:n, 0]).tolist():
        t = report_page.TrainImage(db.image_ids[row])
        t.pictures["photo"] = report_page.data_uri(np.asarray(db.images[row]))
        t.pictures["copied"] = report_page.data_uri(figures.to_rgb(np.asarray(db.cnn_outputs[row]), palette))
        if db.has("labels"):
            t.pictures["label"] = report_page.data_uri(figures.to_rgb(np.asarray(db.labels[row]), palette))
        train_images[row] = t

    fig_html = {}
    for q in analyses.get("queries", []):
        for f in q["figures"]:
            shutil.copy(analyses_dir / f["file"], out_dir / "figures" / f["file"])
            fig_html[f["file"]] = _figure_html(analyses_dir / f["file"], f)

    warn = "" if data_dir is not None else (
        f"<p class='warn'>Built-in SYNTHETIC {esc(cfg.task)} data (no --data_dir given): a stand-in that "
        f"exercises every step; its numbers are not comparable to the paper's.</p>")
    intro = (warn +
             f"<p>CompNN explains a CNN's output pixel by pixel: each pixel is copied from the training image "
             f"whose internal features, around the matching position, are most similar to the query's. If the "
             f"collage matches the CNN's output, the network behaves like a lookup of training patches. This "
             f"run: task <b>{esc(cfg.task)}</b>, network <b>{esc(db.model)}</b> ({esc(cfg.preset)} preset), "
             f"{summary['n_train']} training and {summary['n_query']} query images at "
             f"{cfg.size[0]}×{cfg.size[1]} pixels.</p>")
    sections = [("legend", "Class colours", _legend_section(spec, is_labels)),
                ("table1", "Table 1: how close CompNN comes to the CNN",
                 _table1_section(cfg, spec, summary, _identical_rows_html(summary["table1"], outputs, db, query))),
                ("matching", "Matching: exact search, shortlist and hierarchical prune", _matching_section(summary))]
    sections += _analyses_sections(analyses, fig_html, is_labels)
    sections += [("training", "Training curves", _training_section(train_dir)),
                 ("run", "Run details", _run_section(cfg, out_dir, export_dir, timings))]
    report_page.write_report(out_dir, title=f"compnn — {cfg.task}", sections=sections, queries=entries,
                             train_images=train_images, class_names=spec.class_names if is_labels else (),
                             intro=intro, queries_after="matching")
