"""The data stage: the training and query splits, resized and counted as configured, saved as arrays."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from absl import logging

from compnn_py import fsio
from compnn_py.data import Split, has_split, load_split


def default_query_split(spec, data_dir: Path | None) -> str:
    """test when a real dataset has a non-empty test split (an empty test/ folder does not count), else val."""
    if data_dir is not None and "test" in spec.splits and has_split(spec.name, "test", data_dir):
        return "test"
    return "val"


QUERY_SAMPLES = ("spread", "first", "random")


def query_indices(total: int, n: int | None, how: str, seed: int) -> np.ndarray:
    """Which n of a split's `total` images (in file order) are explained: "first" the first n; "spread"
    (default) n evenly spaced over the split, first and last included, so the frames of a video are
    not n near-copies of one scene; "random" n distinct ones drawn with `seed`, in file order.

    >>> query_indices(10, 3, "spread", 0).tolist(), query_indices(10, 3, "first", 0).tolist()
    ([0, 4, 9], [0, 1, 2])
    """
    if how not in QUERY_SAMPLES:
        raise ValueError(f"query sample must be one of {', '.join(QUERY_SAMPLES)}, got {how!r}")
    if n is None or n >= total:
        return np.arange(total)
    if how == "first":
        return np.arange(n)
    if how == "spread":
        return np.round(np.linspace(0, total - 1, n)).astype(np.int64) if n > 1 else np.array([0])
    return np.sort(np.random.default_rng(seed).choice(total, n, replace=False))


def _subset(s: Split, idx: np.ndarray) -> Split:
    return Split(s.inputs[idx], s.targets[idx], [s.ids[i] for i in idx], [s.meta[i] for i in idx], s.spec)


def prepare_data(d: Path, cfg, spec, data_dir: Path | None, query_split: str) -> None:
    how = cfg.query_sample
    splits = [("train", "train", cfg.n_train), ("query", query_split, cfg.n_query)]
    # The train stage validates on all of val, never on a test query split nor on a sample of val.
    if (data_dir is not None and (query_split != "val" or cfg.n_query is not None) and "val" in spec.splits
            and has_split(cfg.task, "val", data_dir)):
        splits.append(("val", "val", None))
    for name, split, n in splits:
        info = {"split": split}
        # Synthetic sets are drawn independently image by image: their first n are already a sample.
        if name == "query" and how != "first" and n is not None and data_dir is not None:
            s = load_split(cfg.task, split, data_dir, size=cfg.size, n=None, seed=cfg.seed)
            idx = query_indices(len(s.ids), n, how, cfg.seed)
            info.update(sample=how, of=len(s.ids), indices=idx.tolist())
            s = _subset(s, idx)
        else:
            s = load_split(cfg.task, split, data_dir, size=cfg.size, n=n, seed=cfg.seed)
            if name == "query":
                info.update(sample="first" if n is not None else "all", of=None)
        np.save(d / f"{name}_inputs.npy", s.inputs)
        np.save(d / f"{name}_targets.npy", s.targets)
        (d / f"{name}.json").write_text(json.dumps({**info, "ids": s.ids, "meta": s.meta}))
        logging.info("data: %s split %r: %d images of %s%s", name, split, len(s.ids), s.inputs.shape[1:],
                     f" ({info['sample']} of {info['of']})" if info.get("of") else "")


def _info(d: Path, name: str) -> dict:
    """The split's ids and meta, as the data stage wrote them; a damaged file is named (CorruptFile)."""
    info = fsio.read_json(d / f"{name}.json", f"{name} split list of the data stage", hint="rerun with --force")
    if not isinstance(info, dict) or not isinstance(info.get("ids"), list):
        raise fsio.CorruptFile(f"{d / f'{name}.json'}: corrupt {name} split list of the data stage (no ids); "
                               "rerun with --force")
    return info


def load_data(d: Path, name: str, spec) -> Split:
    info = _info(d, name)
    return Split(np.load(d / f"{name}_inputs.npy"), np.load(d / f"{name}_targets.npy"), info["ids"],
                 info["meta"], spec)


def count(d: Path, name: str) -> int:
    """Images in a saved split, without loading it."""
    return len(_info(d, name)["ids"])
