"""The compnn stage: Table 1 (CompNN and the global-NN baselines scored against ground truth and the
CNN), the fast matcher measured against exact search, per-query sources and timings.

Matchers (compnn_py.compose.match_layer): "exact" searches every position of every training image;
"shortlist" takes the S = cfg.shortlist training images closest by the global (bottleneck) descriptor
and searches every position of those exactly; "hierarchical" takes the same shortlist and searches only
under the coarse-to-fine candidates (the paper's prune). With `match_method="both"` Table 1 uses the
fast matcher chosen by `choose_method`, and exact search is run on a few queries to measure it:

* The hierarchical matcher is exact search within the shortlist pruned by certified bounds
  (compnn_py.match.hierarchical, prune="bounds"): its answers are "shortlist"'s, so
  `hierarchical_vs_exact.within_shortlist` is 1 by construction; pilot blocks per image choose plain
  exact search where the bounds would not prune (metrics.json `bound_prune`: the rule, images that used
  the bounds, the fraction of query x database pairs compared exactly).
* Which fast matcher: "hierarchical" whenever its fine search is 1x1 and the CPU scores pairs in
  bfloat16 on AMX tiles (compnn_py.match.bf16_filter_ready: same answers as "shortlist", 8-25 times
  faster at CamVid's sizes on a quiet machine, README); else "shortlist" when exact search within the shortlist costs at most
  SHORTLIST_BUDGET multiply-adds per query (e.g. SegNet-basic at 90x120, S = 10: 7.5e10, about 1.5 s on
  a CPU), else "hierarchical" (Pix2Pix at 256x256, S = 100: 5.5e13).
* How many queries get the reference searches (`exact_query_count`), counted separately for exact over
  the whole database and exact within the shortlist, each costed by `search_cost`: every query when
  all of them together cost at most EXACT_ALL_BUDGET multiply-adds; else the first
  DEFAULT_EXACT_QUERIES when one query costs at most EXACT_QUERY_CAP; else none (at Cityscapes scale one
  exact query is hours of CPU). `--exact_queries=N` sets both counts to N. When the fast matcher is
  "shortlist" its exact-within-shortlist result exists for every query, so the prune is compared on all.
* Written to metrics.json: `hierarchical_vs_exact = {"within_shortlist": ..., "over_all": ...}` (the
  prune's loss alone, and the prune plus the shortlist), `shortlist_vs_exact = {"over_all": ...}` (the
  shortlist's loss alone), each {same_label, same_source_image, same_match, n_queries}: the fraction of
  output pixels with the same composed label (SS target), of native positions matched to the same
  training image, and to the same (image, y, x); pooled over the compared queries.

Per-query work is `query_task` / `_query`: in this process, or as Dask tasks (engine from
experiments.distributed) that open the stores from `export_dir`, a path every worker must see. Results
are combined in query order, so both give the same files (timings aside).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from compnn_py import compose, match, metrics
from compnn_py.fsio import write_json
from compnn_py.progress import Progress
from experiments.errors import UserError
from experiments.steps.export import open_stores

METHODS = ("exact", "shortlist", "hierarchical")
PRUNE = "bounds"             # the hierarchical matcher: exact within the shortlist, pruned by certified bounds
SHORTLIST_BUDGET = 1e11      # multiply-adds per query for exact search within the shortlist to be the default
EXACT_ALL_BUDGET = 2e12      # reference searches run on every query when all together cost at most this
EXACT_QUERY_CAP = 2e13       # ... else on the first DEFAULT_EXACT_QUERIES when one query costs at most this
DEFAULT_EXACT_QUERIES = 3


def match_kwargs(cfg, ms: dict[str, Any], method: str, threads) -> dict[str, Any]:
    kw: dict[str, Any] = {"method": method, "threads": threads}
    if method in ("shortlist", "hierarchical"):
        kw.update(global_layer=ms["global"], shortlist=cfg.shortlist)
    if method == "hierarchical":
        kw.update(coarse_layer=ms["coarse"], coarse_k=cfg.coarse_k, margin=cfg.margin, prune=PRUNE)
    return kw


def search_cost(db, layer: str, n_images: int) -> float:
    """Multiply-adds of exact patch search for one query at `layer` over `n_images` database images:
    query positions x database positions x patch dimension (K*K*C)."""
    meta = db.layer_meta(layer)
    _, h, w, c = meta["shape"]
    return float(h * w) * n_images * h * w * c * int(meta["kernel"]) ** 2


def exact_query_count(exact_queries: int | None, n_query: int, cost_per_query: float) -> tuple[int, str]:
    """How many queries (the first ones) get a reference search costing `cost_per_query` multiply-adds
    each, and the rule that decided it (see the module docstring)."""
    if exact_queries is not None:
        if exact_queries < 0:
            raise UserError(f"--exact_queries must be >= 0, got {exact_queries}")
        return min(exact_queries, n_query), "--exact_queries"
    if n_query * cost_per_query <= EXACT_ALL_BUDGET:
        return n_query, f"every query: {n_query} x {cost_per_query:.2g} multiply-adds <= {EXACT_ALL_BUDGET:.0e}"
    if cost_per_query <= EXACT_QUERY_CAP:
        n = min(DEFAULT_EXACT_QUERIES, n_query)
        return n, (f"first {n}: all {n_query} would cost {n_query * cost_per_query:.2g} multiply-adds "
                   f"> {EXACT_ALL_BUDGET:.0e}")
    return 0, (f"none: one query costs {cost_per_query:.2g} multiply-adds > {EXACT_QUERY_CAP:.0e}; "
               "pass --exact_queries=N to measure anyway")


def choose_method(db, cfg) -> tuple[str, str]:
    """The fast matcher for this database and knobs, and why (see the module docstring)."""
    fine = db.metadata["match_spec"]["fine"]
    if int(db.layer_meta(fine)["kernel"]) == 1 and match.bf16_filter_ready():
        return "hierarchical", ("1x1 patches and a CPU with AMX-BF16: exact search within the shortlist with "
                                "the certified bfloat16 filter (the same answers, found faster)")
    cost = search_cost(db, fine, min(cfg.shortlist, len(db)))
    if cost <= SHORTLIST_BUDGET:
        return "shortlist", (f"exact search within the shortlist costs {cost:.2g} multiply-adds per query "
                             f"<= {SHORTLIST_BUDGET:.0e}")
    return "hierarchical", (f"exact search within the shortlist would cost {cost:.2g} multiply-adds per query "
                            f"> {SHORTLIST_BUDGET:.0e}")


def plan_queries(db, n_query: int, cfg, match_method: str, exact_queries: int | None) -> dict[str, Any]:
    """Which matcher gives Table 1 and which methods run on each query (a list per query)."""
    if match_method not in METHODS + ("both",):
        raise UserError(f"match method must be one of {', '.join(METHODS + ('both',))}, got {match_method!r}")
    if match_method in ("shortlist", "hierarchical", "both") and cfg.shortlist > len(db):
        raise UserError(f"--shortlist {cfg.shortlist} exceeds the {len(db)} training images")
    plan: dict[str, Any] = {"main": match_method, "reason": "--match_method", "reference": {}}
    if match_method != "both":
        plan["per_query"] = [[match_method]] * n_query
        return plan
    main, plan["reason"] = choose_method(db, cfg)
    fine = db.metadata["match_spec"]["fine"]
    n_all, rule_all = exact_query_count(exact_queries, n_query, search_cost(db, fine, len(db)))
    if main == "shortlist":
        n_short, rule_short = n_query, "every query (the Table 1 matcher)"
    else:
        n_short, rule_short = exact_query_count(exact_queries, n_query, search_cost(db, fine, cfg.shortlist))
    plan.update(main=main, reference={"over_all": {"n_queries": n_all, "rule": rule_all},
                                      "within_shortlist": {"n_queries": n_short, "rule": rule_short}})
    per_query = []
    for q in range(n_query):
        # The prune is compared wherever its exact-within-shortlist reference runs; exact over all also
        # gets the shortlist's exact result beside it, so the shortlist's own loss is measured there too.
        methods = {main}
        if q < n_short or q < n_all:
            methods |= {"shortlist", "hierarchical"}
        if q < n_all:
            methods.add("exact")
        per_query.append([m for m in METHODS if m in methods])
    plan["per_query"] = per_query
    return plan


def _agreement(a: compose.Composition, b: compose.Composition) -> np.ndarray:
    """Counts: [same label pixels, pixels, same source image positions, same match positions, positions]."""
    same_label = a.output == b.output
    if same_label.ndim == 3:
        same_label = same_label.all(axis=-1)
    ma, mb = a.matches, b.matches
    same_image = ma.image[..., 0] == mb.image[..., 0]
    same_match = same_image & (ma.y[..., 0] == mb.y[..., 0]) & (ma.x[..., 0] == mb.x[..., 0])
    return np.array([same_label.sum(), same_label.size, same_image.sum(), same_match.sum(), same_image.size],
                    dtype=np.int64)


PAIRS = {("hierarchical_vs_exact", "within_shortlist"): ("hierarchical", "shortlist"),
         ("hierarchical_vs_exact", "over_all"): ("hierarchical", "exact"),
         ("shortlist_vs_exact", "over_all"): ("shortlist", "exact")}


def _query(db, query, q: int, job: dict[str, Any]) -> dict[str, Any]:
    """One query's work: its matchers, Table 1 row predictions, sources, timings and agreement counts."""
    ms, cfg = job["match_spec"], job["cfg"]
    comps, seconds = {}, {}
    bounds: dict[str, Any] = {}
    for m in job["methods"]:
        t = time.perf_counter()
        kw = match_kwargs(cfg, ms, m, job["threads"])
        if m == "hierarchical":
            kw["stats"] = bounds
        comps[m] = compose.compnn(db, query, q, layer=ms["fine"], target="cnn_outputs",
                                  progress=f"query {q} {m} search", **kw)
        seconds[m] = time.perf_counter() - t
    comp = comps[job["main"]]
    rows = compose.table1_query(db, query, q, comp, bottleneck_layer=ms["global"], decode2_layer=ms["decode2"],
                                threads=job["threads"])
    agree = {key: _agreement(comps[a], comps[b]) for key, (a, b) in PAIRS.items() if a in comps and b in comps}
    sources = np.stack([comp.matches.image[..., 0], comp.matches.y[..., 0], comp.matches.x[..., 0]])
    return {"rows": rows, "sources": sources.astype(np.int32), "seconds": seconds, "agree": agree,
            "bounds": bounds}


_OPEN: dict[tuple[str, int], tuple[Any, Any]] = {}


def query_task(export_dir: str, q: int, job: dict[str, Any]) -> dict[str, Any]:
    """A Dask task: query q of the export at `export_dir` (stores opened once per worker process)."""
    stamp = os.stat(Path(export_dir) / "train" / "manifest.json").st_mtime_ns
    key = (export_dir, stamp)
    if key not in _OPEN:
        _OPEN.clear()
        _OPEN[key] = open_stores(Path(export_dir))
    db, query = _OPEN[key]
    return _query(db, query, q, job)


def run_compnn(d: Path, cfg, spec, export_dir: Path, match_method: str, threads,
               exact_queries: int | None = None, engine=None) -> None:
    """Write table1.{csv,md}, outputs.npz (every row's predictions), sources.npy ((Q, 3, h, w) int32: the
    Table 1 matcher's (image, y, x) per native position) and metrics.json into `d`. `match_method`: one of
    METHODS, or "both" (see the module docstring); `engine`: run the queries as its tasks."""
    db, query = open_stores(export_dir)
    ms = db.metadata["match_spec"]
    plan = plan_queries(db, len(query), cfg, match_method, exact_queries)
    main = plan["main"]
    task_threads = threads if engine is None else engine.threads
    jobs = [{"match_spec": ms, "cfg": cfg, "threads": task_threads, "main": main, "methods": methods}
            for methods in plan["per_query"]]
    if engine is None:
        results = [_query(db, query, q, job) for q, job in
                   enumerate(Progress(jobs, desc="CompNN queries", unit="img"))]
    else:
        results = engine.map(query_task, [(str(Path(export_dir).resolve()), q, job) for q, job in enumerate(jobs)],
                             desc="CompNN queries")

    rows = {name: [r["rows"][name] for r in results] for name in metrics.TABLE1_ROWS}
    table, stacked = compose.table1_score(db, rows, np.asarray(query.labels), spec.num_classes)
    sample = {"spread": "spread evenly over", "first": "the first of", "random": "drawn at random from"}
    how = sample.get(getattr(cfg, "query_sample", "first"), "of")
    table.title = (f"Table 1 — {cfg.task} ({db.model}, {len(query)} query images {how} the query split, "
                   f"CompNN: {main} matching)")
    table.write(d / "table1")
    np.savez_compressed(d / "outputs.npz", **{k.replace(" ", "_"): v for k, v in stacked.items()})
    np.save(d / "sources.npy", np.stack([r["sources"] for r in results]))
    seconds: dict[str, list[float]] = {m: [] for m in METHODS}
    for r in results:
        for m, s in r["seconds"].items():
            seconds[m].append(s)
    fine_meta = db.layer_meta(ms["fine"])
    summary: dict[str, Any] = {
        "task": cfg.task, "model": db.model, "n_train": len(db), "n_query": len(query),
        "fine_layer": ms["fine"], "fine_shape": fine_meta["shape"][1:], "kernel": fine_meta["kernel"],
        "stride": fine_meta["stride"], "table1_matching": main,
        "table1": {r: dict(zip(table.columns, map(float, v))) for r, v in zip(table.rows, table.values)},
        "seconds_per_image": {m: float(np.mean(s)) for m, s in seconds.items() if s},
        "matcher": {"method": main, "why": plan["reason"], "shortlist": cfg.shortlist, "coarse_k": cfg.coarse_k,
                    "margin": cfg.margin, "threads": threads,
                    "engine": None if engine is None else engine.describe()},
    }
    if plan["reference"]:
        summary["exact_reference"] = plan["reference"]
    bounds = [r["bounds"] for r in results if r.get("bounds")]
    if bounds:  # the certified prune: how much of exact-within-shortlist's work it skipped
        summary["bound_prune"] = {
            "rule": ("under 512 query positions plain exact search; else 1x1 patches on a CPU with AMX-BF16: "
                     "every pair scored in bfloat16, rescored canonically unless the certified bound rules it "
                     "out, and 32x32 blocks of 4x8-pixel groups skipped whole where a cone bound on the groups "
                     "rules them out (only where the median group is narrower than 60 degrees); else a sample of 64 cells wider than 30 degrees (median) means plain exact search, "
                     "and otherwise pilot blocks decide per image: bounds used when they score at most a fifth "
                     "of their pairs, else plain exact search (same answers either way)"),
            "filter": sorted({str(b.get("filter", "float32")) for b in bounds}),
            "images_using_bounds": sum(bool(b["used_bounds"]) for b in bounds), "n_images": len(bounds),
            "pairs_scored_fraction": float(sum(b["pairs_scored"] for b in bounds) / sum(b["pairs"] for b in bounds)),
            "pilot_fraction": [round(float(b["pilot_fraction"]), 4) for b in bounds]}
        rescored = [b for b in bounds if "pairs_rescored" in b]
        if rescored:
            summary["bound_prune"]["pairs_rescored_fraction"] = float(
                sum(b["pairs_rescored"] for b in rescored) / sum(b["pairs"] for b in rescored))
    for (group, scope) in PAIRS:
        counts = [r["agree"][(group, scope)] for r in results if (group, scope) in r["agree"]]
        if counts:
            c = np.sum(counts, axis=0)
            summary.setdefault(group, {})[scope] = {
                "same_label": float(c[0] / c[1]), "same_source_image": float(c[2] / c[4]),
                "same_match": float(c[3] / c[4]), "n_queries": len(counts),
                # per query (None where not compared): the report's click view quotes its own query's
                "per_query_same_source_image": [
                    float(r["agree"][(group, scope)][2] / r["agree"][(group, scope)][4])
                    if (group, scope) in r["agree"] else None for r in results]}
    if table.per_class:
        summary["per_class_iou"] = {r: [float(v) for v in a] for r, a in table.per_class.items()}
    write_json(d / "metrics.json", summary)
