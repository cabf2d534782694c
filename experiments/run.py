"""The one-command pipeline: `python -m experiments.run --task=cityscapes`.

Stages, each cached in the run directory by a hash of its configuration (experiments.stages):
data -> train (or --checkpoint) -> export (train + query activations) -> compnn (Table 1, exact and
hierarchical matching, timings) -> analyses (reconstruction, correspondence, bias modification,
activation prediction, layer sweep) -> report (table1.csv/md, metrics.json, PNGs, report.html).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from absl import app, flags, logging

from experiments.errors import UserError
from experiments.steps import analyses as analyses_step, compnn as compnn_step, data as data_step, export as export_step
from experiments.steps import report as report_step, train as train_step
from compnn_py.data import TASKS as TASK_SPECS
from experiments.tasks import PRESETS, run_config
from experiments.stages import Stage

TASKS = ("cityscapes", "camvid", "facades", "facades_labels", "maps")
STAGES = ("data", "train", "export", "compnn", "analyses", "report")

FLAGS = flags.FLAGS
flags.DEFINE_enum("task", None, TASKS, "Which paper task to run: cityscapes (photo -> labels, Pix2Pix), "
                  "camvid (photo -> labels, SegNet), facades (labels -> photo), facades_labels "
                  "(photo -> labels), maps (aerial -> map).")
flags.DEFINE_string("data_dir", None, "Root of a real dataset in its standard layout (Pix2Pix A|B folders "
                    "train/ val/ [test/]; CamVid: train/ trainannot/ val/ valannot/ ...). Leave unset to "
                    "use the task's built-in synthetic set.")
flags.DEFINE_string("out_dir", None, "Run directory for caches and results (default: runs/<task>).")
flags.DEFINE_enum("preset", "quick", PRESETS, "quick: a model and data sized for a 2-core CPU (minutes); "
                  "paper: the paper's sizes (256x256 ngf=64 Pix2Pix, 200 epochs; SegNet at 360x480) for a GPU.")
flags.DEFINE_string("checkpoint", None, "A training run directory (written by this driver's train stage or "
                    "tf_models.train) to load instead of training.")
flags.DEFINE_string("query_split", None, "Split whose images are explained (default: test when the dataset "
                    "has one and a --data_dir is given, else val).")
flags.DEFINE_list("stages", list(STAGES), f"Stages to run, a subset of {','.join(STAGES)}; the others must "
                  "be cached already.")
flags.DEFINE_bool("force", False, "Redo the selected stages even when cached.")
flags.DEFINE_enum("match_method", "both", ["exact", "hierarchical", "both"], "Matcher for CompNN: exact "
                  "search over every training position, the hierarchical prune, or both (Table 1 uses "
                  "hierarchical when both, and reports their agreement).")
flags.DEFINE_integer("exact_queries", None, "With --match_method=both, run the (slow) exact search only on "
                     "the first N query images to measure the hierarchical prune against it (default: all).")
flags.DEFINE_integer("shortlist", None, "Hierarchical matcher: images kept by the bottleneck shortlist (S). "
                     "Paper: 100 for Cityscapes, 10 for CamVid.")
flags.DEFINE_integer("coarse_k", None, "Hierarchical matcher: candidates kept per coarse position.")
flags.DEFINE_integer("margin", None, "Hierarchical matcher: extra fine positions searched around each "
                     "coarse candidate.")
flags.DEFINE_integer("threads", None, "Matcher threads (default: all available CPUs).")
flags.DEFINE_enum("model", None, ["pix2pix", "segnet_basic", "segnet_vgg16"], "Override the task's network, "
                  "e.g. --task=camvid --model=pix2pix --size=128,128 for Pix2Pix photo -> labels on CamVid.")
flags.DEFINE_integer("steps", None, "Override the preset's training length in steps.")
flags.DEFINE_integer("epochs", None, "Override the preset's training length in epochs.")
flags.DEFINE_list("size", None, "Override the preset's image size: H,W (Pix2Pix needs H = W, a power of 2).")
flags.DEFINE_integer("n_train", None, "Use only the first N training images (synthetic sets: generate N).")
flags.DEFINE_integer("n_query", None, "Explain only the first N query images.")
flags.DEFINE_integer("seed", None, "Seed for data generation, training and sampling.")


def _settings():
    size = None
    if FLAGS.size:
        try:
            size = tuple(int(v) for v in FLAGS.size)
        except ValueError:
            raise UserError(f"--size must be H,W integers, got {','.join(FLAGS.size)}")
        if len(size) == 1:
            size = size * 2
        if len(size) != 2 or min(size) < 8:
            raise UserError(f"--size must be H,W with both >= 8, got {FLAGS.size}")
    data_dir = None
    if FLAGS.data_dir:
        data_dir = Path(FLAGS.data_dir).expanduser().resolve()
        if not data_dir.is_dir():
            raise UserError(f"--data_dir {FLAGS.data_dir} does not exist or is not a directory")
    unknown = [s for s in FLAGS.stages if s not in STAGES]
    if unknown:
        raise UserError(f"--stages has unknown stage(s) {unknown}; choose from {','.join(STAGES)}")
    checkpoint = None
    if FLAGS.checkpoint:
        checkpoint = Path(FLAGS.checkpoint).expanduser().resolve()
        if not checkpoint.is_dir():
            raise UserError(f"--checkpoint {FLAGS.checkpoint} is not a directory")
    cfg = run_config(FLAGS.task, FLAGS.preset, real_data=data_dir is not None, model=FLAGS.model, steps=FLAGS.steps,
                     epochs=FLAGS.epochs, size=size, n_train=FLAGS.n_train, n_query=FLAGS.n_query,
                     seed=FLAGS.seed, shortlist=FLAGS.shortlist, coarse_k=FLAGS.coarse_k, margin=FLAGS.margin)
    if cfg.model == "pix2pix" and (cfg.size[0] != cfg.size[1] or cfg.size[0] & (cfg.size[0] - 1)):
        raise UserError(f"Pix2Pix needs a square power-of-two size, got {cfg.size[0]},{cfg.size[1]}")
    out_dir = Path(FLAGS.out_dir or Path("runs") / FLAGS.task).resolve()
    return cfg, data_dir, checkpoint, out_dir


def run(cfg, data_dir, checkpoint, out_dir, *, stages, force, match_method, threads, query_split,
        exact_queries=None):
    out_dir.mkdir(parents=True, exist_ok=True)
    cache = out_dir / "cache"
    spec = TASK_SPECS[cfg.task]
    query_split = query_split or data_step.default_query_split(spec, data_dir)
    if data_dir is None:
        logging.warning("No --data_dir: using the built-in SYNTHETIC %s set (results are not the paper's).",
                        cfg.task)

    data = Stage(cache, "data", {"cfg": cfg.as_dict(), "data_dir": str(data_dir), "query": query_split})
    if checkpoint is not None:
        train = Stage(cache, "train", {"checkpoint": str(checkpoint),
                                       "mtime": train_step.checkpoint_stamp(checkpoint)})
    else:
        length = {"steps": cfg.steps, "epochs": cfg.epochs}
        fixed = {k: v for k, v in cfg.as_dict().items() if k not in length}
        train = Stage(cache, "train", {"data": data.key, "cfg": fixed}, resumable=True, target=length)
    export = Stage(cache, "export", {"data": data.key, "train": train.key, "length": train.target})
    knobs = {"method": match_method, "shortlist": cfg.shortlist, "coarse_k": cfg.coarse_k,
             "margin": cfg.margin, "exact_queries": exact_queries}
    compnn = Stage(cache, "compnn", {"export": export.key, "match": knobs})
    analyses = Stage(cache, "analyses", {"export": export.key, "match": knobs, "panels": cfg.n_panels})
    report = Stage(cache, "report", {"compnn": compnn.key, "analyses": analyses.key, "out": str(out_dir)})
    ordered = [("data", data), ("train", train), ("export", export), ("compnn", compnn),
               ("analyses", analyses), ("report", report)]

    def need(name, stage):
        if name not in stages and not stage.done():
            raise UserError(f"stage {name} is needed but neither selected in --stages nor cached in {stage.dir}")

    def go(name, stage, fn):
        need(name, stage)
        if name in stages:
            stage.run(fn, force=force)

    go("data", data, lambda d: data_step.prepare_data(d, cfg, spec, data_dir, query_split))
    if checkpoint is not None:
        go("train", train, lambda d: train_step.check_checkpoint(d, checkpoint, cfg))
        model_dir = checkpoint
    else:
        go("train", train, lambda d: train_step.train_model(d, cfg, spec, data.dir))
        model_dir = train.dir
    go("export", export, lambda d: export_step.export_stores(d, cfg, spec, data.dir, model_dir))
    go("compnn", compnn, lambda d: compnn_step.run_compnn(d, cfg, spec, export.dir, match_method, threads,
                                                       exact_queries))
    go("analyses", analyses, lambda d: analyses_step.run_analyses(d, cfg, spec, export.dir, threads))
    timings = [(name, stage.seconds) for name, stage in ordered]
    go("report", report, lambda d: report_step.write_outputs(d, out_dir, cfg, spec, data_dir, export.dir,
                                                           compnn.dir, analyses.dir, timings))
    return ordered


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.task is None:
        print(f"error: --task is required (one of {', '.join(TASKS)})", file=sys.stderr)
        return 2
    start = time.perf_counter()
    try:
        cfg, data_dir, checkpoint, out_dir = _settings()
        ordered = run(cfg, data_dir, checkpoint, out_dir, stages=set(FLAGS.stages), force=FLAGS.force,
                      match_method=FLAGS.match_method, threads=FLAGS.threads, query_split=FLAGS.query_split,
                      exact_queries=FLAGS.exact_queries)
    except (UserError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"\ncompnn {cfg.task} ({cfg.preset} preset{', synthetic data' if data_dir is None else ''}) "
          f"finished in {time.perf_counter() - start:.1f} s")
    for name, stage in ordered:
        state = "cached" if stage.skipped else ("ran" if stage.done() else "not run")
        print(f"  {name:9s} {state:7s} {stage.seconds:8.1f} s  {stage.dir}")
    for f in ("report.html", "table1.md", "table1.csv", "metrics.json"):
        if (out_dir / f).exists():
            print(f"  -> {out_dir / f}")
    return 0


if __name__ == "__main__":
    app.run(main)
