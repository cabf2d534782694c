"""Reader for the official Cityscapes layout: `leftImg8bit/<split>/<city>/*_leftImg8bit.png` with
`gtFine/<split>/<city>/*_gtFine_labelIds.png`, label ids turned into the 19 train ids (others 255)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..progress import Progress
from .files import natural_key, read_image, relative_name, require_dir, resize_image, resize_labels
from .palettes import CITYSCAPES_ID_TO_TRAIN
from .tasks import Split, TaskSpec

PHOTO_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"


def is_official_layout(root) -> bool:
    return (Path(root) / "leftImg8bit").is_dir()


def read_cityscapes(spec: TaskSpec, root, split: str, *, size: tuple[int, int], n: int | None = None,
                    progress: bool = True) -> Split:
    root = Path(root)
    photo_dir = require_dir(root / "leftImg8bit" / split, f"cityscapes split {split!r}")
    photos = sorted(photo_dir.glob(f"*/*{PHOTO_SUFFIX}"), key=natural_key)
    if not photos:
        raise FileNotFoundError(f"cityscapes split {split!r}: {photo_dir} holds no <city>/*{PHOTO_SUFFIX}")
    photos = photos[:n]
    inputs = np.empty((len(photos), *size, 3), np.uint8)
    targets = np.empty((len(photos), *size), np.uint8)
    ids, meta = [], []
    for i, photo_path in enumerate(Progress(photos, desc=f"cityscapes/{split}", unit="img", disable=not progress)):
        city = photo_path.parent.name
        base = photo_path.name[: -len(PHOTO_SUFFIX)]
        label_path = root / "gtFine" / split / city / f"{base}{LABEL_SUFFIX}"
        photo = read_image(photo_path)
        label_ids = read_image(label_path, mode="L")
        if label_ids.shape != photo.shape[:2]:
            raise ValueError(f"{label_path}: labels are {label_ids.shape[1]}x{label_ids.shape[0]} but the photo "
                             f"is {photo.shape[1]}x{photo.shape[0]}; expected the same size")
        inputs[i] = resize_image(photo, size)
        targets[i] = resize_labels(CITYSCAPES_ID_TO_TRAIN[label_ids], size)
        ids.append(base)
        meta.append({"city": city, "file": relative_name(photo_path, root)})
    return Split(inputs, targets, ids, meta, spec)
