"""Datasets: readers for each task's real on-disk layout and built-in synthetic stand-ins.

`load_split(task, split, data_dir)` returns a `Split` of uint8 arrays: from Pix2Pix A|B folders
(cityscapes, facades, facades_labels, maps), the official Cityscapes layout, SegNet's CamVid layout,
or, with data_dir=None, the deterministic synthetic set of the task (`compnn_py.data.synthetic`).
Label maps are uint8 class ids with 255 = ignore. Nothing here imports TensorFlow.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import synthetic
from .camvid import camvid_has_split, camvid_pairs, read_camvid
from .cityscapes import PHOTO_SUFFIX, is_official_layout, read_cityscapes
from .files import has_images, list_images, parse_size
from .labels import colorize, snap_to_palette
from .palettes import IGNORE
from .pix2pix import read_pix2pix
from .tasks import TASKS, Split, TaskSpec, get_task

SPLITS = ("train", "val", "test")

__all__ = ["IGNORE", "SPLITS", "TASKS", "Split", "TaskSpec", "colorize", "count_split", "get_task", "has_split",
           "load_split",
           "snap_to_palette", "synthetic"]


def load_split(task, split: str, data_dir=None, *, size=None, n: int | None = None, seed: int = 0,
               progress: bool = True, direction: str | None = None) -> Split:
    """Load one split of a task.

    data_dir: the dataset root in its real layout; None -> the built-in synthetic set, generated in
    memory from `seed` (size default synthetic.DEFAULT_SIZE[task], n default DEFAULT_COUNTS[split]).
    size: int or (H, W) to resize to (labels nearest-neighbour); real data defaults to spec.size.
    n: keep only the first n images (in file-name order, numeric when names are numbers).
    direction: override the task's A|B direction for Pix2Pix-layout data.
    """
    spec = get_task(task)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if n is not None and (not isinstance(n, (int, np.integer)) or n < 1):
        raise ValueError(f"n must be a positive int or None, got {n!r}")
    if data_dir is None:
        return synthetic.generate(spec, split, n=n, size=size, seed=seed, progress=progress)
    size = parse_size(size) or spec.size
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"data_dir {root} for task {spec.name!r} does not exist")
    if spec.layout == "camvid":
        return read_camvid(spec, root, split, size=size, n=n, progress=progress)
    if spec.name == "cityscapes" and is_official_layout(root):
        return read_cityscapes(spec, root, split, size=size, n=n, progress=progress)
    return read_pix2pix(spec, root, split, size=size, n=n, direction=direction, progress=progress)


def has_split(task, split: str, data_dir) -> bool:
    """Whether `data_dir` holds at least one image of `split` in the task's layout (nothing is decoded):
    an empty or image-less `<split>/` folder does not count. data_dir=None (synthetic) has every split."""
    spec = get_task(task)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if data_dir is None:
        return True
    root = Path(data_dir)
    if spec.layout == "camvid":
        return camvid_has_split(root, split)
    if spec.name == "cityscapes" and is_official_layout(root):
        folder = root / "leftImg8bit" / split
        return folder.is_dir() and any(folder.glob(f"*/*{PHOTO_SUFFIX}"))
    return has_images(root / split)


def count_split(task, split: str, data_dir) -> int:
    """How many images `load_split` would read from `split` (n=None), by listing files only (nothing is
    decoded): cheap enough to check counts before any stage runs. data_dir=None: the synthetic set's
    default count. Raises as load_split does for a missing split."""
    spec = get_task(task)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if data_dir is None:
        return synthetic.DEFAULT_COUNTS[split]
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"data_dir {root} for task {spec.name!r} does not exist")
    if spec.layout == "camvid":
        return len(camvid_pairs(root, split))
    if spec.name == "cityscapes" and is_official_layout(root):
        return len(list((root / "leftImg8bit" / split).glob(f"*/*{PHOTO_SUFFIX}")))
    return len(list_images(root / split, f"{spec.name} split {split!r}"))
