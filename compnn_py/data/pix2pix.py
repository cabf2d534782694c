"""Reader for Pix2Pix's A|B layout: `<root>/<split>/*.jpg|png`, each file two halves side by side."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..progress import Progress
from .files import list_images, read_image, relative_name, require_dir, resize_image, resize_labels
from .labels import snap_blurred_labels
from .tasks import Split, TaskSpec


def split_ab(image: np.ndarray, path) -> tuple[np.ndarray, np.ndarray]:
    """An A|B image (H, 2W, 3) -> (A, B); an odd width cannot be two halves."""
    width = image.shape[1]
    if width % 2:
        raise ValueError(f"{path}: an A|B image needs an even width (two halves side by side), "
                         f"got {image.shape[1]}x{image.shape[0]} (width x height)")
    return image[:, : width // 2], image[:, width // 2:]


def read_pix2pix(spec: TaskSpec, root, split: str, *, size: tuple[int, int], n: int | None = None,
                 direction: str | None = None, progress: bool = True) -> Split:
    """Load `<root>/<split>` as the task's (input, target) pairs, resized to `size`.

    Label halves are snapped to the task palette at file resolution (border blends take the nearest
    confident pixel's class, see snap_blurred_labels) and then resized nearest-neighbour.
    """
    direction = direction or spec.direction
    if direction not in ("AtoB", "BtoA"):
        raise ValueError(f"direction must be 'AtoB' or 'BtoA', got {direction!r}")
    root = require_dir(Path(root), f"{spec.name} data_dir")
    files = list_images(root / split, f"{spec.name} split {split!r}")[:n]
    inputs = np.empty((len(files), *size, 3), np.uint8)
    targets = np.empty((len(files), *size) + (() if spec.kind == "segmentation" else (3,)), np.uint8)
    for i, path in enumerate(Progress(files, desc=f"{spec.name}/{split}", unit="img", disable=not progress)):
        a, b = split_ab(read_image(path), path)
        source, target = (a, b) if direction == "AtoB" else (b, a)
        inputs[i] = resize_image(np.ascontiguousarray(source), size)
        if spec.kind == "segmentation":
            ids = snap_blurred_labels(target, spec.palette, ignore_colors=spec.ignore_colors)
            targets[i] = resize_labels(ids, size)
        else:
            targets[i] = resize_image(np.ascontiguousarray(target), size)
    return Split(inputs, targets, [p.stem for p in files], [{"file": relative_name(p, root)} for p in files], spec)
