"""The train stage: trains the configured network in the stage directory (resumable), or checks an
existing network given with --checkpoint.

A training stage directory is a tf_models.train run directory: config.json, checkpoints/,
history.json, tensorboard/ (`tensorboard --logdir <it>`), and model.keras, the finished network
(after its architecture's post-training recipe, e.g. SegNet's BN statistics) in Keras' native format.
Which trainer runs, with which options, is read from the architecture (tf_models.registry).
"""

from __future__ import annotations

from pathlib import Path

from absl import logging

from compnn_py import fsio
from experiments.errors import UserError
from experiments.steps.data import load_data

FINISHED_BN = "bn_statistics.npz"  # tf_models.train.FINISHED_BN (that module imports TensorFlow)


def validation_split(data_stage: Path, spec):
    """The split the train stage validates on (and picks the best network by): the val split, never
    another one (a test query split must not choose the network). The data stage saves all of val
    beside a query split that is not all of it (real data); else the query split is val (synthetic
    sets). None when there is no val split."""
    import json

    if (data_stage / "val.json").is_file():
        return load_data(data_stage, "val", spec)
    if json.loads((data_stage / "query.json").read_text())["split"] == "val":
        return load_data(data_stage, "query", spec)
    return None


def segnet_options(cfg, steps_per_epoch: int) -> dict:
    """train_segnet's options for the configured recipe (experiments.tasks.SEGNET_RECIPES)."""
    options = {k: v for k, v in cfg.train_recipe().items() if k not in ("recipe", "length")}
    warmup = options.pop("warmup_epochs", 0)
    if warmup:
        options["warmup_steps"] = int(round(warmup * steps_per_epoch))
    return options


def train_model(d: Path, cfg, spec, data_stage: Path, *, progress: bool = True) -> None:
    from tf_models import registry, train as tft

    tr = load_data(data_stage, "train", spec)
    arch = registry.get(cfg.model)
    common = dict(steps=cfg.steps, epochs=cfg.epochs, seed=cfg.seed, batch_size=cfg.batch_size, progress=progress)
    if arch.trainer == "pix2pix":
        targets = arch.training_targets(spec.kind, spec.palette, tr.targets)
        model, history = tft.train_pix2pix(tr.inputs, targets, d, ngf=cfg.ngf, ndf=cfg.ngf,
                                           **dict(arch.trainer_options), **common)
    elif arch.trainer == "segnet":
        per_epoch = max(1, len(tr.ids) // cfg.batch_size)
        options = segnet_options(cfg, per_epoch)
        val = validation_split(data_stage, spec)
        if val is None and options.get("keep") == "best_val":
            logging.warning("no val split to pick the best network by: keeping the last checkpoint")
            options["keep"] = "last"
        model, history = tft.train_segnet(tr.inputs, tr.targets, d,
                                          val=None if val is None else (val.inputs, val.targets),
                                          num_classes=spec.num_classes, checkpoint_every=per_epoch,
                                          **dict(arch.trainer_options), **options, **common)
    else:
        raise UserError(f"{cfg.model} cannot be trained by compnn; give a trained network with --checkpoint")
    # Stored in the run directory, so the export stage reuses these BN statistics instead of recomputing.
    tft.finish_training(model, arch, tr.inputs, batch_size=cfg.batch_size, progress=progress, run_dir=d)
    tft.save_network(model, d / tft.MODEL_FILE)
    fsio.write_json(d / tft.HISTORY, history)
    # The task it learned, so that explaining it under another task is refused (experiments.checks).
    fsio.write_json(d / tft.CONFIG, dict(tft.load_config(d), task=cfg.task))


def has_checkpoint(d: Path) -> bool:
    """Whether a training directory holds a checkpoint to continue from (else training starts at step 0)."""
    from tf_models import train as tft

    return (Path(d) / tft.CKPT_DIR / "checkpoint").is_file()


def network_options(cfg) -> dict:
    """The RunConfig fields that describe a network compnn did not build (None when not set)."""
    return {"match_layers": cfg.match_layers, "decode2": cfg.decode2, "kernel": cfg.kernel}


def check_checkpoint(d: Path, checkpoint: Path, cfg) -> None:
    """Loads the network at --checkpoint once (a compnn run directory, a .keras file or a
    pix2pix-tensorflow checkpoint), so that a wrong one fails here with one clear line, and records
    what it is in network.json."""
    from compnn_py.data import get_task
    from tf_models import loaders

    kind = get_task(cfg.task).kind
    try:
        what = loaders.detect(checkpoint)
        model, arch = loaders.load_network(checkpoint, image_size=cfg.size, kind=kind, expect=cfg.model,
                                           **network_options(cfg))
    except (ValueError, FileNotFoundError) as e:
        raise UserError(f"--checkpoint: {e}") from None
    fsio.write_json(d / "network.json", {"checkpoint": str(checkpoint), "kind": what,
                                         **loaders.describe(model, arch)})


def checkpoint_stamp(checkpoint: Path) -> float:
    """The newest modification time under --checkpoint (a file or a directory): a network changed in
    place gets a new train-stage key."""
    checkpoint = Path(checkpoint)
    if checkpoint.is_file():
        return checkpoint.stat().st_mtime
    files = list(checkpoint.rglob("*")) if checkpoint.is_dir() else list(checkpoint.parent.glob(checkpoint.name + ".*"))
    # The BN statistics an export stores in a run directory are derived from its network, not a change of it.
    return max((f.stat().st_mtime for f in files if f.is_file() and f.name != FINISHED_BN), default=0.0)
