"""The one-command pipeline: `python -m experiments.run --task=cityscapes` (or `compnn run --task=...`).

Stages, each cached under `<out_dir>/cache/` by a hash of exactly the inputs that change its output
(`stage_configs`; experiments.stages does the caching):
data -> train (or --checkpoint) -> export (train + query activations) -> compnn (Table 1, exact and
hierarchical matching, timings) -> analyses (reconstruction, correspondence, bias modification,
activation prediction, layer sweep) -> report (table1.csv/md, metrics.json, PNGs, report.html).

Every flag is validated before any stage runs, the run directory is locked against a second run, and
a stage is built in a temporary directory and swapped in only when it succeeded, so a bad invocation
or an interrupted run never loses a finished result.
"""

from __future__ import annotations

import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from absl import flags, logging

from compnn_py import fsio
from compnn_py.data import TASKS as TASK_SPECS, TaskSpec
from experiments import checks, cli_help, tf_logs
from experiments.errors import UserError
from experiments.stages import Stage, clean as clean_cache, config_hash, remove_stale_temporaries
from experiments.steps import data as data_step
from experiments.tasks import PRESETS, RunConfig, run_config

# TensorFlow is imported only when a stage needs it (a cached run answers in seconds): the steps other
# than data are imported inside the functions that run them, and settings() must not import it
# (tests/test_cli.py checks a cached run in a subprocess).

TASKS = ("cityscapes", "camvid", "facades", "facades_labels", "maps")
STAGES = ("data", "train", "export", "compnn", "analyses", "report")
MAX_THREADS = 1024
PUBLISHED = ("report.html", "table1.md", "table1.csv", "metrics.json")
# The two architecture facts validation needs before any stage runs, kept here so that it needs no
# TensorFlow: each --model's trainer family and whether its input must be a square power of two.
# tf_models.registry is their source (Architecture.trainer, .square_power_of_two); tests/test_cli.py
# checks this copy against it.
MODELS: dict[str, tuple[str, bool]] = {"pix2pix": ("pix2pix", True), "segnet_basic": ("segnet", False),
                                       "segnet_vgg16": ("segnet", False)}

FLAGS = flags.FLAGS
flags.DEFINE_enum("task", None, TASKS, "Which paper task to run: cityscapes (photo -> labels, Pix2Pix), "
                  "camvid (photo -> labels, SegNet), facades (labels -> photo), facades_labels "
                  "(photo -> labels), maps (aerial -> map).")
flags.DEFINE_string("data_dir", None, "Root of a real dataset in its standard layout (Pix2Pix A|B folders "
                    "train/ val/ [test/]; CamVid: train/ trainannot/ val/ valannot/ ...). Leave unset to "
                    "use the task's built-in synthetic set.")
flags.DEFINE_string("out_dir", None, "Run directory for caches and results (default: runs/<task>).")
flags.DEFINE_enum("preset", "quick", PRESETS, "Sizes of data, network and training. quick: a model and data "
                  "sized for a 2-core CPU (minutes); "
                  "paper: the paper's sizes (256x256 ngf=64 Pix2Pix, 200 epochs; SegNet at 360x480) for a GPU.")
flags.DEFINE_string("checkpoint", None, "A trained network to explain instead of training one: a training "
                    "run directory of this driver, a Keras .keras file, or a pix2pix-tensorflow checkpoint "
                    "directory.")
flags.DEFINE_string("match_layers", None, "For a network compnn did not build: its layers as "
                    "global:NAME,coarse:NAME,fine:NAME (bottleneck, coarse and pixel-level matching).")
flags.DEFINE_string("decode2", None, "With --match_layers: the layer of Table 1's Global-Decode2 row "
                    "(default: the fine layer).")
flags.DEFINE_integer("kernel", None, "With --match_layers: the fine patch size K (default: the kernel of "
                     "the conv that consumes the fine layer, where it can be read, else 1).")
flags.DEFINE_enum("export_layers", "used", ["used", "all"], "Export only the layers this run's matching and "
                  "analyses read (used), or every named map (all).")
flags.DEFINE_string("query_split", None, "Split whose images are explained (default: test when the dataset "
                    "has a non-empty one and a --data_dir is given, else val).")
flags.DEFINE_list("stages", list(STAGES), f"Stages to run, any subset of {','.join(STAGES)}: the stages up "
                  "to the last one named run; the unnamed ones before it must be cached already.")
flags.DEFINE_bool("clean", False, "Remove the cache folders of other configurations (stage folders no key "
                  "of this invocation points to; only folders compnn wrote), say which, then run as usual.")
flags.DEFINE_bool("force", False, "Redo the selected stages even when cached (each is rebuilt aside and "
                  "replaces the cached one only when it succeeded; training restarts from step 0).")
flags.DEFINE_enum("match_method", "both", ["exact", "shortlist", "hierarchical", "both"], "Matcher for CompNN: "
                  "exact search over every training position, exact search within the bottleneck shortlist, "
                  "the hierarchical prune (shortlist -> coarse -> fine), or both: Table 1 uses the fast matcher "
                  "chosen by cost (shortlist where exact search within it is cheap, else hierarchical) and "
                  "the report measures it against exact search on some queries (see --exact_queries).")
flags.DEFINE_integer("exact_queries", None, "With --match_method=both: run the exact comparisons (within the "
                     "shortlist and over all training images) on the first N query images. Default: every "
                     "query where that is cheap, else the first 3, else none (the rule is written to "
                     "metrics.json).")
flags.DEFINE_integer("shortlist", None, "Hierarchical matcher: images kept by the bottleneck shortlist (S). "
                     "Paper: 100 for Cityscapes, 10 for CamVid.")
flags.DEFINE_integer("coarse_k", None, "Hierarchical matcher: candidates kept per coarse position.")
flags.DEFINE_integer("margin", None, "Hierarchical matcher: extra fine positions searched around each "
                     "coarse candidate.")
flags.DEFINE_integer("threads", None, f"Matcher threads (default: all available CPUs; at most {MAX_THREADS}). "
                     "Results do not depend on it.")
flags.DEFINE_integer("workers", None, "Run the per-image work on a local Dask cluster of N worker processes "
                     "(needs `pip install compnn[dask]`). Results do not depend on it.")
flags.DEFINE_string("scheduler", None, "Run the per-image work on an existing Dask cluster at this address "
                    "(e.g. tcp://host:8786); every worker must see --out_dir at the same path.")
flags.DEFINE_enum("model", None, list(MODELS), "Override the task's network, "
                  "e.g. --task=camvid --model=pix2pix --size=128,128 for Pix2Pix photo -> labels on CamVid.")
flags.DEFINE_integer("steps", None, "Override the preset's training length in steps.")
flags.DEFINE_integer("epochs", None, "Override the preset's training length in epochs.")
flags.DEFINE_list("size", None, "Override the preset's image size: H,W (Pix2Pix needs H = W, a power of 2).")
flags.DEFINE_integer("n_train", None, "Use only the first N training images (synthetic sets: generate N).")
flags.DEFINE_integer("n_query", None, "Explain only N query images (which: --query_sample).")
flags.DEFINE_enum("query_sample", "spread", ["spread", "first", "random"], "Which --n_query images of the query "
                  "split: spread evenly over it (default; video frames are not N copies of one scene), the "
                  "first N, or N drawn with --seed.")
flags.DEFINE_integer("seed", None, "Seed for data generation, training and sampling.")
flags.DEFINE_bool("verbose", False, "Show TensorFlow's own log lines (its C++ notices and Python warnings; "
                  "hidden by default).")

# --help shows the flags by what they change; short by default (the groups' most used flags), every
# flag with --helpfull. A name not defined (yet) is skipped; a flag in no group is listed under "other".
FLAG_GROUPS: dict[str, tuple[str, ...]] = {
    "data": ("task", "preset", "data_dir", "query_split", "query_sample", "size", "n_train", "n_query", "seed"),
    "network": ("model", "steps", "epochs", "checkpoint", "match_layers", "decode2", "kernel", "export_layers"),
    "matcher": ("match_method", "shortlist", "coarse_k", "margin", "exact_queries", "threads", "workers",
                "scheduler"),
    "run control": ("out_dir", "stages", "force", "clean", "verbose"),
}
COMMON_FLAGS = ("task", "preset", "data_dir", "size", "n_train", "n_query", "model", "steps", "checkpoint",
                "match_method", "shortlist", "threads", "out_dir", "stages", "force", "verbose")


# ---- settings: every flag checked before anything runs -------------------------------------------

def _positive(name: str, value, low: int = 1, high: int = 2**31 - 1) -> None:
    if value is not None and not low <= value <= high:
        raise UserError(f"--{name} must be an integer in [{low}, {high}], got {value}")


def _match_layers(text: str | None) -> dict[str, str] | None:
    if text is None:
        return None
    parts = dict(p.split(":", 1) for p in text.split(",") if ":" in p)
    if len(parts) != len(text.split(",")) or set(parts) != {"global", "coarse", "fine"} or not all(parts.values()):
        raise UserError(f"--match_layers must be global:NAME,coarse:NAME,fine:NAME, got {text!r}")
    return parts


@dataclass(frozen=True)
class RunSettings:
    """A validated invocation (`settings()`): everything a stage may read, and nothing else."""

    cfg: RunConfig                 # the preset after overrides: network, sizes, counts, length, matcher knobs
    spec: TaskSpec                 # the task's dataset facts: classes, palette, splits
    data_dir: Path | None          # a real dataset in its standard layout; None: the built-in synthetic set
    query_split: str               # the split whose images are explained
    checkpoint: Path | None        # a trained network to explain instead of training one
    out_dir: Path                  # the run directory (caches under cache/, results at its top)
    stages: tuple[str, ...]        # the selected stages, in pipeline order
    force: bool                    # redo the selected stages even when cached
    clean: bool                    # remove the stage folders of other configurations first (--clean)
    match_method: str              # exact, shortlist, hierarchical or both
    exact_queries: int | None      # with both: queries compared against exact search (None: the rule)
    threads: int | None            # matcher threads (None: every CPU); in no stage key
    workers: int | None            # a local Dask cluster of this many processes; in no stage key
    scheduler: str | None          # an existing Dask cluster's address; in no stage key
    verbose: bool = False          # TensorFlow's own log lines shown
    network: checks.Network | None = None  # the --checkpoint network, loaded and checked (experiments.checks)


def settings() -> RunSettings:
    """The validated invocation (from the parsed FLAGS): RunConfig and everything else the stages need.
    Imports no TensorFlow."""
    if FLAGS.task is None:
        raise UserError(f"--task is required (one of {', '.join(TASKS)})")
    for name, low in (("n_train", 1), ("n_query", 1), ("steps", 1), ("epochs", 1), ("shortlist", 1),
                      ("coarse_k", 1), ("margin", 0), ("exact_queries", 0), ("seed", 0), ("kernel", 1),
                      ("workers", 1)):
        _positive(name, getattr(FLAGS, name), low)
    _positive("threads", FLAGS.threads, 1, MAX_THREADS)
    if FLAGS.steps is not None and FLAGS.epochs is not None:
        raise UserError("give --steps or --epochs, not both")
    if FLAGS.workers is not None and FLAGS.scheduler:
        raise UserError("give --workers (a local cluster) or --scheduler (an existing one), not both")
    size = None
    if FLAGS.size:
        try:
            size = tuple(int(v) for v in FLAGS.size)
        except ValueError:
            raise UserError(f"--size must be H,W integers, got {','.join(FLAGS.size)}") from None
        if len(size) == 1:
            size = size * 2
        if len(size) != 2 or not all(8 <= s <= 8192 for s in size):
            raise UserError(f"--size must be H,W with both in [8, 8192], got {','.join(FLAGS.size)}")
    unknown = [s for s in FLAGS.stages if s not in STAGES]
    if unknown or not FLAGS.stages:
        raise UserError(f"--stages has unknown stage(s) {unknown}; choose from {','.join(STAGES)}")
    data_dir = None
    if FLAGS.data_dir:
        data_dir = Path(FLAGS.data_dir).expanduser().resolve()
        if not data_dir.is_dir():
            raise UserError(f"--data_dir {FLAGS.data_dir} does not exist or is not a directory")
    checkpoint = None
    if FLAGS.checkpoint:
        checkpoint = Path(FLAGS.checkpoint).expanduser().resolve()
        if not checkpoint.exists():
            raise UserError(f"--checkpoint {FLAGS.checkpoint} does not exist")
    match_layers = _match_layers(FLAGS.match_layers)
    if (FLAGS.decode2 or FLAGS.kernel) and match_layers is None:
        raise UserError("--decode2 and --kernel describe a network named with --match_layers; give it too")
    if match_layers is not None and checkpoint is None:
        raise UserError("--match_layers names the layers of your own network: give it with --checkpoint")
    spec = TASK_SPECS[FLAGS.task]
    if FLAGS.query_split is not None and FLAGS.query_split not in spec.splits:
        raise UserError(f"--query_split must be one of {', '.join(spec.splits)} for {FLAGS.task}, "
                        f"got {FLAGS.query_split!r}")
    family = MODELS[FLAGS.model][0] if FLAGS.model else None
    try:
        cfg = run_config(FLAGS.task, FLAGS.preset, real_data=data_dir is not None, family=family, model=FLAGS.model,
                         steps=FLAGS.steps, epochs=FLAGS.epochs, size=size, n_train=FLAGS.n_train,
                         n_query=FLAGS.n_query, query_sample=FLAGS.query_sample, seed=FLAGS.seed,
                         shortlist=FLAGS.shortlist,
                         coarse_k=FLAGS.coarse_k, margin=FLAGS.margin, export_layers=FLAGS.export_layers,
                         match_layers=FLAGS.match_layers, decode2=FLAGS.decode2, kernel=FLAGS.kernel)
    except ValueError as e:
        raise UserError(str(e)) from None
    if checkpoint is None and MODELS[cfg.model][1] and (
            cfg.size[0] != cfg.size[1] or cfg.size[0] & (cfg.size[0] - 1)):
        raise UserError(f"{cfg.model} needs a square power-of-two size, got {cfg.size[0]},{cfg.size[1]}")
    cfg, network = checks.before_stages(cfg, spec, data_dir=data_dir, checkpoint=checkpoint,
                                        match_method=FLAGS.match_method, size_given=size is not None,
                                        model_given=FLAGS.model is not None)
    out_dir = Path(FLAGS.out_dir or Path("runs") / FLAGS.task).expanduser().resolve()
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out_dir {out_dir} exists and is not a directory")
    query_split = FLAGS.query_split or data_step.default_query_split(spec, data_dir)
    return RunSettings(cfg=cfg, spec=spec, data_dir=data_dir, checkpoint=checkpoint, out_dir=out_dir,
                       query_split=query_split, stages=tuple(s for s in STAGES if s in FLAGS.stages),
                       force=FLAGS.force, clean=FLAGS.clean, match_method=FLAGS.match_method, exact_queries=FLAGS.exact_queries,
                       threads=FLAGS.threads, workers=FLAGS.workers, scheduler=FLAGS.scheduler,
                       verbose=FLAGS.verbose, network=network)


# ---- stage keys: exactly what changes each stage's output ----------------------------------------

def stage_configs(cfg, *, data_dir, query_split, checkpoint, match_method, exact_queries, out_dir,
                  checkpoint_stamp=None) -> dict[str, dict[str, Any]]:
    """The cache key inputs of every stage. Matcher knobs a method does not read are left out, and so
    are threads and workers (results do not depend on them) and the training length (a longer
    training continues the same train stage; it is part of the export's key instead)."""
    keys: dict[str, dict[str, Any]] = {}
    keys["data"] = {"task": cfg.task, "data_dir": str(data_dir) if data_dir else None, "query_split": query_split,
                    "size": list(cfg.size), "n_train": cfg.n_train, "n_query": cfg.n_query, "seed": cfg.seed,
                    "query_sample": cfg.query_sample}
    data = config_hash(keys["data"])
    if checkpoint is not None:
        keys["train"] = {"checkpoint": str(checkpoint), "stamp": checkpoint_stamp, "model": cfg.model}
        length = None
    else:
        keys["train"] = {"data": data, "model": cfg.model, "ngf": cfg.ngf, "batch_size": cfg.batch_size,
                         "seed": cfg.seed, "recipe": cfg.train_recipe()}
        length = {"steps": cfg.steps, "epochs": cfg.epochs}
    keys["export"] = {"data": data, "train": config_hash(keys["train"]), "length": length,
                      "layers": cfg.export_layers, "match_layers": cfg.match_layers, "decode2": cfg.decode2,
                      "kernel": cfg.kernel}
    export = config_hash(keys["export"])
    shortlisted = match_method != "exact"              # the shortlist's size S matters
    pruned = match_method in ("hierarchical", "both")  # the coarse-to-fine prune's knobs matter
    knobs = {"method": match_method, "shortlist": cfg.shortlist if shortlisted else None,
             "coarse_k": cfg.coarse_k if pruned else None, "margin": cfg.margin if pruned else None}
    keys["compnn"] = {"export": export, **knobs,
                      "exact_queries": exact_queries if match_method == "both" else None}
    keys["analyses"] = {"export": export, **knobs}
    keys["report"] = {"compnn": config_hash(keys["compnn"]), "analyses": config_hash(keys["analyses"]),
                      "train": config_hash(keys["train"]), "panels": cfg.n_panels, "out_dir": str(out_dir)}
    return keys


def _print_configuration(s: RunSettings) -> dict[str, Any]:
    resolved = {"task": s.cfg.task, **s.cfg.as_dict(), "data_dir": str(s.data_dir or "(synthetic)"),
                "checkpoint": str(s.checkpoint) if s.checkpoint else None, "query_split": s.query_split,
                "out_dir": str(s.out_dir), "stages": ",".join(s.stages), "force": s.force,
                "match_method": s.match_method, "exact_queries": s.exact_queries, "threads": s.threads,
                "workers": s.workers, "scheduler": s.scheduler}
    resolved = checks.configuration(resolved, s.network)  # a given network: described, not the preset's
    print("compnn configuration (preset values after overrides):")
    for k, v in resolved.items():
        print(f"  {k:14s} = {v}")
    return resolved


# ---- the run --------------------------------------------------------------------------------------

UPSTREAM = {"data": (), "train": ("data",), "export": ("data", "train"), "compnn": ("export",),
            "analyses": ("export",), "report": ("compnn", "analyses")}


def _train_target(s: RunSettings, data: Stage) -> dict[str, int] | None:
    """The training length in steps (epochs need the training set's size, known once data is cached)."""
    if s.checkpoint is not None or not data.done():
        return None
    cfg = s.cfg
    n = data_step.count(data.dir, "train")
    return {"steps": cfg.steps if cfg.steps is not None else cfg.epochs * max(1, n // cfg.batch_size)}


def plan(s: RunSettings, stages: dict[str, Stage]) -> list[str]:
    """The stages that must compute: the last selected stage unless it is cached, every forced stage,
    and every uncached stage their inputs come from. So a second run is a no-op, `--stages=data,train`
    trains and stops, and a deleted report is rebuilt from cached results. An input that is neither
    cached nor selected is an error, raised before anything runs; nothing after the last selected
    stage runs."""
    selected, force = s.stages, s.force
    target = _train_target(s, stages["data"])

    def cached(name):
        if name == "train" and s.checkpoint is None:
            return target is not None and stages[name].done(target)
        return stages[name].done()

    todo: set[str] = set()
    wanted = list(selected) if force else [selected[-1]]
    while wanted:
        name = wanted.pop()
        if name in todo or (not force and cached(name)):
            continue
        if name not in selected:
            raise UserError(f"stage {name} is needed but neither selected in --stages nor cached in "
                            f"{stages[name].dir}")
        todo.add(name)
        wanted += [up for up in UPSTREAM[name] if not cached(up)]
    return [n for n in STAGES if n in todo]


def run(s: RunSettings) -> list[tuple[str, Stage]]:
    """Runs the selected stages of a validated invocation (`settings()`); returns the stages in order."""
    out_dir = s.out_dir
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create --out_dir {out_dir}: {e.strerror}") from None
    cache = out_dir / "cache"
    with fsio.exclusive_lock(cache / ".lock", f"run directory {out_dir}"):
        remove_stale_temporaries(cache)
        from experiments.steps import report as report_step  # no TensorFlow

        report_step.recover(out_dir)
        # config.json is written with the report (one set); every invocation's own record is here.
        configuration = _print_configuration(s)
        fsio.write_json(cache / "last-run.json", configuration)
        stamp = None
        if s.checkpoint:
            from experiments.steps import train as train_step

            stamp = train_step.checkpoint_stamp(s.checkpoint)
        keys = stage_configs(s.cfg, data_dir=s.data_dir, query_split=s.query_split,
                             checkpoint=s.checkpoint, match_method=s.match_method,
                             exact_queries=s.exact_queries, out_dir=out_dir, checkpoint_stamp=stamp)
        stages = {name: Stage(cache, name, keys[name], resumable=name == "train" and not s.checkpoint)
                  for name in STAGES}
        for name in STAGES:  # a rebuilt input makes the stages that read it stale
            stages[name].inputs = [stages[up] for up in UPSTREAM[name]]
        if s.clean:
            _clean(cache, stages)
        if stages["data"].done():  # known before anything runs; else checked right after the data stage
            _check_shortlist(s, stages["data"])
        todo = plan(s, stages)
        for name in STAGES[:STAGES.index(s.stages[-1]) + 1]:
            if name not in todo:
                stages[name].state = "cached" if stages[name].record() else "not needed"
        _run_stages(s, stages, todo, configuration)
        return [(name, stages[name]) for name in STAGES]


def _clean(cache: Path, stages: dict[str, Stage]) -> None:
    removed, unknown = clean_cache(cache, [st.dir for st in stages.values()])
    print(f"--clean: removed {len(removed)} cache folder(s) of other configurations"
          + "".join(f"\n  removed {d}" for d in removed)
          + "".join(f"\n  kept {d} (no complete stage record: not known to be compnn's)" for d in unknown))


def _check_shortlist(s: RunSettings, data: Stage) -> None:
    n_train = data_step.count(data.dir, "train")
    if s.match_method != "exact" and s.cfg.shortlist > n_train:
        raise UserError(f"--shortlist {s.cfg.shortlist} exceeds the {n_train} training images")


def _engine(s: RunSettings) -> dict[str, Any]:
    if s.workers is None and not s.scheduler:
        return {}
    from experiments import distributed  # imports Dask only when asked for

    return {"engine": distributed.engine(workers=s.workers, scheduler=s.scheduler, threads=s.threads)}


def _run_stages(s: RunSettings, stages: dict[str, Stage], todo: list[str], configuration: dict[str, Any]) -> None:
    if not todo:
        return
    # Imported here, not at the top: a cached run needs none of them. They import TensorFlow only
    # inside the functions that need it (train, export); its chatter is silenced before those run.
    from experiments.steps import analyses as analyses_step, compnn as compnn_step
    from experiments.steps import export as export_step, report as report_step, train as train_step

    if "train" in todo or "export" in todo:
        tf_logs.quiet(verbose=s.verbose)
    cfg, spec, threads, out_dir = s.cfg, s.spec, s.threads, s.out_dir
    data, train, export, compnn, analyses, report = (stages[n] for n in STAGES)

    def go(name, fn, **kw):
        if name in todo:
            stages[name].run(fn, force=True, **kw)  # plan() decided it must compute

    go("data", lambda d: data_step.prepare_data(d, cfg, spec, s.data_dir, s.query_split))
    if any(n in todo for n in ("compnn", "analyses")):
        _check_shortlist(s, data)
    if s.checkpoint is not None:
        go("train", lambda d: train_step.check_checkpoint(d, s.checkpoint, cfg))
        model_dir = s.checkpoint
    else:
        model_dir = train.dir
        if "train" in todo:
            target = _train_target(s, data)
            reached = ((train.record() or {}).get("target") or {}).get("steps", 0)
            if not s.force and reached > target["steps"]:
                raise UserError(f"the cached training in {train.dir} reached {reached} steps; a shorter one "
                                f"({target['steps']}) is not kept: ask for at least {reached} steps, or --force "
                                "to train again from step 0")
            if not s.force and reached:
                logging.info("train: resuming at step %d of %d", reached, target["steps"])
            train.run(lambda d: train_step.train_model(d, cfg, spec, data.dir), force=s.force, target=target,
                      resumes_from=train_step.has_checkpoint)
    engine = _engine(s) if any(n in todo for n in ("export", "compnn", "analyses")) else {}
    try:
        go("export", lambda d: export_step.export_stores(d, cfg, spec, data.dir, model_dir, **engine))
        go("compnn", lambda d: compnn_step.run_compnn(d, cfg, spec, export.dir, s.match_method, threads,
                                                      s.exact_queries, **engine))
        go("analyses", lambda d: analyses_step.run_analyses(d, cfg, spec, export.dir, threads,
                                                            match_method=s.match_method, **engine))
    finally:
        if engine:  # a LocalCluster's worker processes end with the stages that used them
            engine["engine"].close()
    timings = [(name, st.seconds if st.state in ("ran", "resumed") else st.recorded_seconds)
               for name, st in stages.items() if name != "report"]

    def write_report(d):
        # The user-facing files are outputs of this stage too: changing one makes the report run again.
        return report_step.write_outputs(d, out_dir, cfg, spec, s.data_dir, export.dir, compnn.dir, analyses.dir,
                                         timings, train_dir=train.dir, configuration=configuration)

    go("report", write_report)


# ---- command line ---------------------------------------------------------------------------------

def _expected_errors():
    from compnn_py.store import StoreError

    return (UserError, fsio.Busy, fsio.CorruptFile, StoreError, ValueError, OSError)


USAGE = "usage: {prog} --task=TASK [flags]"
SUMMARY = ("Explains a pixel-level CNN by compositional nearest neighbours: data -> train (or --checkpoint) -> "
           "export -> compnn -> analyses -> report, each stage cached under --out_dir, so a second identical "
           "run does nothing. Results: <out_dir>/report.html, table1.md, metrics.json.")


def cli(argv: Sequence[str] | None = None, *, prog: str = "python -m experiments.run") -> int:
    """The command line (`python -m experiments.run`, `compnn run`): answers --help, parses the flags of
    `argv` (argv[0] is the program), then runs. Returns the exit status: 0 done (or help shown), 2 a bad
    invocation or an expected failure (one `error:` line on stderr), 1 a bug, 130 interrupted."""
    argv = list(sys.argv if argv is None else argv)
    wanted = cli_help.requested(argv[1:])
    if wanted:
        print(cli_help.render(FLAGS, __name__, FLAG_GROUPS, COMMON_FLAGS, usage=USAGE.format(prog=prog),
                              summary=SUMMARY, full=wanted == "full"))
        return 0
    FLAGS.unparse_flags()  # a second call in one process starts from the defaults
    try:
        rest = FLAGS(argv)
    except flags.Error as e:
        print(f"error: {cli_help.error_line(e)} (see {prog} --help)", file=sys.stderr)
        return 2
    tf_logs.configure(verbose=FLAGS.verbose)  # before anything imports TensorFlow
    logging.use_absl_handler()
    if FLAGS["verbosity"].using_default_value:
        FLAGS.verbosity = 0  # the driver's own INFO lines (e.g. "train: resuming at step N of M")
    return main(rest)


def main(argv: Sequence[str]) -> int:
    """Runs the driver on the already parsed FLAGS (`argv`: the program name and any positional
    arguments left, which are an error). Returns the exit status (see `cli`)."""
    if len(argv) > 1:
        print(f"error: unexpected argument(s) {' '.join(argv[1:])}: every option is a --name=value flag",
              file=sys.stderr)
        return 2
    start = time.perf_counter()
    s = None
    try:
        s = settings()
        ordered = run(s)
    except KeyboardInterrupt:
        print("error: interrupted; finished stages are kept, the interrupted one is left as it was",
              file=sys.stderr)
        return 130
    except _expected_errors() as e:
        message = str(e) if isinstance(e, (UserError, fsio.Busy, fsio.CorruptFile)) else f"{type(e).__name__}: {e}"
        print(f"error: {' '.join(message.split())}", file=sys.stderr)
        return 2
    except Exception as e:  # a bug: still one line for the user, the traceback kept for a report
        where = (s.out_dir / "cache" if s and s.out_dir.is_dir() else Path.cwd()) / "error.log"
        try:
            where.parent.mkdir(parents=True, exist_ok=True)
            fsio.write_atomic(where, traceback.format_exc())
        except OSError:
            where = None
        print(f"error: internal error {type(e).__name__}: {' '.join(str(e).split())[:300]}"
              + (f" (traceback in {where})" if where else ""), file=sys.stderr)
        return 1
    cfg = s.cfg
    print(f"\ncompnn {cfg.task} ({cfg.preset} preset{', synthetic data' if s.data_dir is None else ''}) "
          f"finished in {time.perf_counter() - start:.1f} s")
    for name, stage in ordered:
        if stage.state == "cached":
            what = f"cached   (took {stage.recorded_seconds:.1f} s when it ran)"
        elif stage.state in ("ran", "resumed"):
            what = f"{stage.state:8s} {stage.seconds:.1f} s"
        elif stage.state == "not needed":
            what = "not needed (later stages are cached)"
        else:
            what = "not run"
        print(f"  {name:9s} {what:40s} {stage.dir}")
    for f in (*PUBLISHED, "config.json"):
        if (s.out_dir / f).exists():
            print(f"  -> {s.out_dir / f}")
    return 0


if __name__ == "__main__":
    sys.exit(cli())
