"""Built-in synthetic datasets: deterministic stand-ins for every task, in memory or on disk.

Image i of a split depends only on (seed, dataset, split, i), so any count and any prefix agree, and
facades / facades_labels see the same facades (as the real dataset's two directions do). Street scenes
(cityscapes, camvid) alternate between two cities and facades between two styles, recorded in each
sample's meta ({"city": "A"|"B"}, {"style": "european"|"american"}), the attribute the analyses' bias
modification splits the matching database by. `write_dataset`
writes the real on-disk layout (Pix2Pix A|B files, SegNet's CamVid folders and lists, or official
Cityscapes folders) so that the readers load what `generate` returns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np

from ...progress import Progress
from ..files import parse_size, write_image
from ..labels import colorize
from ..palettes import (CAMVID_VOID, CITYSCAPES_PALETTE, CITYSCAPES_TRAIN_TO_ID, CITYSCAPES_VOID_COLOUR,
                        FACADES_PALETTE, IGNORE)
from ..tasks import Split, TaskSpec, get_task
from .facades import facade_scene
from .maps import map_scene
from .street import CITIES, TO_CAMVID, street_scene

DEFAULT_SIZE = {"cityscapes": (128, 128), "facades": (128, 128), "facades_labels": (128, 128),
                "maps": (128, 128), "camvid": (96, 128)}
DEFAULT_COUNTS = {"train": 200, "val": 50, "test": 50}
_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
# facades and facades_labels are two directions over one dataset, so they share a stream.
_DATASET_CODES = {"cityscapes": 1, "camvid": 2, "facades": 3, "facades_labels": 3, "maps": 4}


class Sample(NamedTuple):
    input: np.ndarray   # uint8 (H, W, 3)
    target: np.ndarray  # uint8 ids (H, W) or RGB (H, W, 3)
    id: str
    meta: dict


def _check_split(split: str) -> int:
    if split not in _SPLIT_CODES:
        raise ValueError(f"split must be one of {list(_SPLIT_CODES)}, got {split!r}")
    return _SPLIT_CODES[split]


def sample_id(spec: TaskSpec, i: int) -> str:
    """Pix2Pix datasets name files 1.jpg, 2.jpg...; CamVid names them <sequence>_<frame>."""
    return f"synth_{i:05d}" if spec.name == "camvid" else str(i + 1)


def make_sample(task, split: str, i: int, *, size=None, seed: int = 0) -> Sample:
    """The i-th synthetic sample of a split (independent of how many others are made)."""
    spec = get_task(task)
    h, w = parse_size(size) or DEFAULT_SIZE[spec.name]
    rng = np.random.default_rng([seed, _DATASET_CODES[spec.name], _check_split(split), i])
    if spec.name in ("cityscapes", "camvid"):
        # Cities alternate, so any prefix of a split holds both about equally (bias modification needs both).
        city = CITIES[i % len(CITIES)]
        photo, ids = street_scene(rng, h, w, city)
        if spec.name == "camvid":
            return Sample(photo, TO_CAMVID[ids], sample_id(spec, i), {"sequence": "synth", "city": city})
        return Sample(photo, ids, sample_id(spec, i), {"city": city})
    if spec.name in ("facades", "facades_labels"):
        photo, ids, style = facade_scene(rng, h, w)
        meta = {"style": style}
        if spec.name == "facades":
            return Sample(colorize(ids, FACADES_PALETTE), photo, sample_id(spec, i), meta)
        return Sample(photo, ids, sample_id(spec, i), meta)
    aerial, rendered, _ = map_scene(rng, h, w)
    return Sample(aerial, rendered, sample_id(spec, i), {})


def iter_samples(task, split: str, *, n: int | None = None, size=None, seed: int = 0,
                 progress: bool = False) -> Iterator[Sample]:
    """Stream n samples (default: DEFAULT_COUNTS[split]) without holding them all."""
    spec = get_task(task)
    _check_split(split)
    n = DEFAULT_COUNTS[split] if n is None else _check_count(n)
    for i in Progress(range(n), desc=f"synthetic {spec.name}/{split}", unit="img", disable=not progress):
        yield make_sample(spec, split, i, size=size, seed=seed)


def _check_count(n) -> int:
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    return int(n)


def generate(task, split: str, *, n: int | None = None, size=None, seed: int = 0,
             progress: bool = True) -> Split:
    """A whole synthetic split in memory, shaped exactly like a reader's Split."""
    spec = get_task(task)
    samples = list(iter_samples(spec, split, n=n, size=size, seed=seed, progress=progress))
    return Split(np.stack([s.input for s in samples]), np.stack([s.target for s in samples]),
                 [s.id for s in samples], [s.meta for s in samples], spec)


def _label_colours(spec: TaskSpec, ids: np.ndarray) -> np.ndarray:
    if spec.name == "cityscapes":
        return colorize(ids, CITYSCAPES_PALETTE, ignore_color=CITYSCAPES_VOID_COLOUR)
    return colorize(ids, spec.palette)


def write_dataset(task, root, *, counts: dict[str, int] | None = None, size=None, seed: int = 0,
                  image_format: str = "jpg", layout: str | None = None, progress: bool = True) -> Path:
    """Write a synthetic set in the task's real layout under `root`; returns `root`.

    image_format: "jpg" (what Pix2Pix ships; label halves come back slightly blurred, and the reader's
    palette snapping undoes it) or "png" (lossless: the reader returns exactly `generate`'s arrays).
    CamVid is always PNG. layout: for cityscapes, "pix2pix" (default) or "cityscapes" (official
    leftImg8bit/ + gtFine/ folders, always PNG).
    """
    spec = get_task(task)
    if image_format not in ("jpg", "png"):
        raise ValueError(f"image_format must be 'jpg' or 'png', got {image_format!r}")
    layout = layout or spec.layout
    allowed = ("pix2pix", "cityscapes") if spec.name == "cityscapes" else (spec.layout,)
    if layout not in allowed:
        raise ValueError(f"layout for task {spec.name!r} must be one of {allowed}, got {layout!r}")
    counts = dict(DEFAULT_COUNTS) if counts is None else dict(counts)
    root = Path(root)
    for split, n in counts.items():
        _check_split(split)
        lines = []
        for s in iter_samples(spec, split, n=n, size=size, seed=seed, progress=progress):
            if layout == "camvid":
                write_image(root / split / f"{s.id}.png", s.input)
                write_image(root / f"{split}annot" / f"{s.id}.png",
                            np.where(s.target == IGNORE, CAMVID_VOID, s.target).astype(np.uint8))
                lines.append(f"/SegNet/CamVid/{split}/{s.id}.png /SegNet/CamVid/{split}annot/{s.id}.png")
            elif layout == "cityscapes":
                base = f"synth_000000_{int(s.id):06d}"
                write_image(root / "leftImg8bit" / split / "synth" / f"{base}_leftImg8bit.png", s.input)
                write_image(root / "gtFine" / split / "synth" / f"{base}_gtFine_labelIds.png",
                            CITYSCAPES_TRAIN_TO_ID[s.target])
            else:
                if spec.name == "facades_labels" or spec.name == "cityscapes":
                    a, b = s.input, _label_colours(spec, s.target)
                elif spec.name == "facades":  # A = photo, B = labels, as in Pix2Pix's facades
                    a, b = s.target, s.input
                else:
                    a, b = s.input, s.target
                write_image(root / split / f"{s.id}.{image_format}", np.concatenate([a, b], 1))
        if layout == "camvid":
            (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root
