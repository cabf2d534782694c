"""The train stage: trains the configured network in the stage directory (resumable), or checks an
existing checkpoint given with --checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

from experiments.steps.data import load_data


def train_model(d: Path, cfg, spec, data_stage: Path) -> None:
    from tf_models import registry, train as tft

    tr = load_data(data_stage, "train", spec)
    arch = registry.get(cfg.model)
    if arch.output == "tanh_image":
        targets = arch.training_targets(spec.kind, spec.palette, tr.targets)
        _, history = tft.train_pix2pix(tr.inputs, targets, d, steps=cfg.steps,
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


def checkpoint_stamp(checkpoint: Path) -> float:
    files = list(checkpoint.rglob("*"))
    return max((f.stat().st_mtime for f in files if f.is_file()), default=0.0)
