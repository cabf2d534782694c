"""Image file I/O and resizing for the readers: every failure names the path and what was expected."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def parse_size(size) -> tuple[int, int] | None:
    """None, an int (square) or (H, W) -> (H, W) of positive ints, or None."""
    if size is None:
        return None
    if isinstance(size, (int, np.integer)):
        size = (int(size), int(size))
    try:
        h, w = (int(s) for s in size)
    except (TypeError, ValueError):
        raise ValueError(f"size must be an int or (height, width), got {size!r}") from None
    if h <= 0 or w <= 0:
        raise ValueError(f"size must be positive, got {size!r}")
    return h, w


def require_dir(path: Path, what: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{what}: directory {path} does not exist")
    return path


def list_images(folder: Path, what: str) -> list[Path]:
    """Image files of `folder`, numerically sorted when their stems are numbers (1, 2, 10)."""
    require_dir(folder, what)
    files = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    if not files:
        raise FileNotFoundError(f"{what}: {folder} holds no .jpg/.png images")
    return sorted(files, key=natural_key)


def relative_name(path: Path, root: Path) -> str:
    """`path` relative to the data root, POSIX style: what per-image metadata records, so that stores
    and reports neither depend on nor disclose where the data lived."""
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return Path(path).name


def has_images(folder: Path) -> bool:
    """Whether `folder` is a directory holding at least one .jpg/.png file (nothing is decoded)."""
    folder = Path(folder)
    return folder.is_dir() and any(p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() for p in folder.iterdir())


def natural_key(path: Path):
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", Path(path).stem)]


def read_image(path: Path, *, mode: str = "RGB") -> np.ndarray:
    """Decode an image as uint8 RGB (H, W, 3) or, with mode="L"/"P", its raw 8-bit values (H, W).
    Grayscale becomes RGB by repeating it; a 16-bit grayscale photo is scaled to 8 bits (see
    ``_wide_gray``), a 16-bit label image keeps its ids.

    Any failure to decode (unreadable, corrupt, truncated, over Pillow's decompression-bomb pixel
    limit, or of an unexpected mode) is one ValueError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file {path} does not exist")
    try:
        with Image.open(path) as im:
            im.load()
            image_mode = im.mode
            if im.mode in WIDE_GRAY:
                array = _wide_gray(np.asarray(im), path, labels=mode != "RGB")
                if mode == "RGB":
                    array = np.repeat(array[..., None], 3, axis=-1)
            elif mode == "RGB":
                array = np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
            else:
                array = np.asarray(im, dtype=np.uint8).copy() if im.mode in ("L", "P") else None
    except Image.DecompressionBombError as err:
        # Not an OSError: a header claiming billions of pixels would otherwise escape as a raw PIL error.
        raise ValueError(f"{path}: refused, the image is too large to decode safely ({err})") from None
    except PermissionError as err:
        raise ValueError(f"{path}: cannot read the image ({err.strerror})") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error) as err:
        # Pillow's decoders raise all of these on damaged files (UnidentifiedImageError is an OSError).
        raise ValueError(f"{path}: corrupt or truncated image ({err})") from None
    if array is None:
        raise ValueError(f"{path}: expected an 8-bit single-channel label image, got mode {image_mode}")
    return array


# Pillow's modes of 16-bit (and 32-bit integer) single-channel images: its convert("RGB") clips them
# to 255 instead of scaling, so they are read as numbers here.
WIDE_GRAY = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _wide_gray(values: np.ndarray, path: Path, *, labels: bool) -> np.ndarray:
    """A 16-bit grayscale image -> uint8: a photo is scaled, value v to round(v * 255 / 65535) (0 -> 0,
    65535 -> 255); a label image keeps its ids, which must fit in 8 bits."""
    v = values.astype(np.int64)
    if labels:
        if v.min() < 0 or v.max() > 255:
            raise ValueError(f"{path}: a 16-bit label image must hold ids 0..255, found {int(v.min())}..{int(v.max())}")
        return v.astype(np.uint8)
    v = np.clip(v, 0, 65535)
    return ((v * 255 + 32767) // 65535).astype(np.uint8)


def write_image(path: Path, array: np.ndarray, *, quality: int = 95) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(np.ascontiguousarray(array))
    if path.suffix.lower() in (".jpg", ".jpeg"):
        im.save(path, quality=quality, subsampling=0)  # 4:4:4: label colours differ mostly in chroma
    else:
        im.save(path)


def resize_image(image: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """Resize uint8 RGB with area-style antialiasing (Pillow's bilinear filter when shrinking)."""
    if size is None or image.shape[:2] == tuple(size):
        return image
    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR))


def resize_labels(ids: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """Resize a class-id map nearest-neighbour, so no new ids appear."""
    if size is None or ids.shape[:2] == tuple(size):
        return ids
    return np.asarray(Image.fromarray(ids).resize((size[1], size[0]), Image.NEAREST))
