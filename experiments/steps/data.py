"""The data stage: the training and query splits, resized and counted as configured, saved as arrays."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from absl import logging

from compnn_py.data import Split, has_split, load_split


def default_query_split(spec, data_dir: Path | None) -> str:
    """test when a real dataset has a non-empty test split (an empty test/ folder does not count), else val."""
    if data_dir is not None and "test" in spec.splits and has_split(spec.name, "test", data_dir):
        return "test"
    return "val"


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


def count(d: Path, name: str) -> int:
    """Images in a saved split, without loading it."""
    return len(json.loads((d / f"{name}.json").read_text())["ids"])
