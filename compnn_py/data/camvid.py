"""Reader for CamVid in SegNet's layout: `<split>/*.png` photos, `<split>annot/*.png` class ids 0..11.

The `<split>.txt` lists hold absolute `/SegNet/CamVid/<dir>/<file>` paths from SegNet's machine; each is
resolved by its last two components under the given root (never outside it). Without a list, the folder is listed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..progress import Progress
from .files import has_images, list_images, read_image, relative_name, require_dir, resize_image, resize_labels
from .palettes import CAMVID_VOID, IGNORE
from .tasks import Split, TaskSpec


def camvid_pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    """(photo, annotation) paths of one split, in list order (or sorted folder order)."""
    listing = root / f"{split}.txt"
    if listing.is_file():
        pairs = []
        for lineno, line in enumerate(listing.read_text().splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2:
                raise ValueError(f"{listing}:{lineno}: expected '<image path> <annotation path>', got {line!r}")
            pairs.append(tuple(_under_root(root, p, f"{listing}:{lineno}") for p in parts))
        if not pairs:
            raise FileNotFoundError(f"camvid split {split!r}: list {listing} is empty")
        return pairs
    photos = list_images(root / split, f"camvid split {split!r}")
    annot = require_dir(root / f"{split}annot", f"camvid annotations of split {split!r}")
    return [(p, annot / p.name) for p in photos]


def _under_root(root: Path, listed: str, where: str) -> Path:
    """A listed path resolved by its last two components under `root`; a component that would leave
    `root` ('..', '.', a drive) is refused, so a list can never make the reader open files elsewhere."""
    tail = Path(listed).parts[-2:]
    if not tail or any(t in ("..", ".") or Path(t).anchor for t in tail):
        raise ValueError(f"{where}: {listed!r} does not name a file inside the data_dir {root} "
                         "(its last two components are resolved under it; '..' is refused)")
    return root.joinpath(*tail)


def camvid_has_split(root: Path, split: str) -> bool:
    """Whether `root` holds split `split`: a `<split>.txt` list with an entry, or a `<split>/` folder
    with images. An empty `test/` folder is not a split."""
    listing = Path(root) / f"{split}.txt"
    if listing.is_file():
        try:
            return any(line.strip() for line in listing.read_text().splitlines())
        except (OSError, UnicodeDecodeError):
            return True  # there is a list; reading it in camvid_pairs will report what is wrong with it
    return has_images(Path(root) / split)


def read_camvid(spec: TaskSpec, root, split: str, *, size: tuple[int, int], n: int | None = None,
                progress: bool = True) -> Split:
    root = require_dir(Path(root), "camvid data_dir")
    pairs = camvid_pairs(root, split)[:n]
    inputs = np.empty((len(pairs), *size, 3), np.uint8)
    targets = np.empty((len(pairs), *size), np.uint8)
    bar = Progress(pairs, desc=f"camvid/{split}", unit="img", disable=not progress)
    for i, (photo_path, annot_path) in enumerate(bar):
        photo = read_image(photo_path)
        annot = read_image(annot_path, mode="L")
        if annot.shape != photo.shape[:2]:
            raise ValueError(f"{annot_path}: annotation is {annot.shape[1]}x{annot.shape[0]} but its photo "
                             f"{photo_path} is {photo.shape[1]}x{photo.shape[0]}; expected the same size")
        if annot.max() > CAMVID_VOID:
            raise ValueError(f"{annot_path}: expected class ids 0..{CAMVID_VOID}, found {int(annot.max())}")
        annot = np.where(annot == CAMVID_VOID, IGNORE, annot).astype(np.uint8)
        inputs[i] = resize_image(photo, size)
        targets[i] = resize_labels(annot, size)
    ids = [p.stem for p, _ in pairs]
    meta = [{"sequence": s.split("_")[0], "file": relative_name(p, root)} for s, (p, _) in zip(ids, pairs)]
    return Split(inputs, targets, ids, meta, spec)
