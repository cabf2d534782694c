"""Conversions between class-id maps and colour label images: `colorize` and `snap_to_palette`."""

from __future__ import annotations

import numpy as np

from .palettes import IGNORE

_CHUNK = 1 << 20  # pixels per distance block: bounds the temporary (chunk, colours) array


def _check_palette(palette, name="palette") -> np.ndarray:
    palette = np.asarray(palette)
    if palette.ndim != 2 or palette.shape[1] != 3:
        raise ValueError(f"{name} must have shape (num_colours, 3), got {palette.shape}")
    if palette.size and (palette.min() < 0 or palette.max() > 255):
        raise ValueError(f"{name} values must lie in 0..255")
    return palette.astype(np.uint8)


def colorize(ids, palette, *, ignore_color=(0, 0, 0)) -> np.ndarray:
    """Class ids (..., H, W) -> uint8 RGB (..., H, W, 3); 255 (ignore) is drawn as `ignore_color` (black)."""
    ids = np.asarray(ids)
    if not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"ids must be an integer class-id array, got dtype {ids.dtype}")
    palette = _check_palette(palette)
    lut = np.zeros((256, 3), np.uint8)
    lut[: len(palette)] = palette
    lut[IGNORE] = np.asarray(ignore_color, np.uint8)
    bad = (ids < 0) | ((ids >= len(palette)) & (ids != IGNORE))
    if bad.any():
        raise ValueError(f"ids contain values outside 0..{len(palette) - 1} and {IGNORE}: "
                         f"{np.unique(ids[bad])[:10].tolist()}")
    return lut[ids.astype(np.intp)]


def snap_to_palette(rgb, palette, *, ignore_colors=None, max_distance=None,
                    return_distance=False):
    """Colour label image(s) (..., H, W, 3) -> uint8 class ids (..., H, W).

    Every pixel takes the id of the nearest colour (Euclidean RGB) among `palette` (ids 0..K-1) and
    `ignore_colors` (id 255); ties go to the palette and then to the lower index. Pixels farther than
    `max_distance` from every colour also become 255. With `return_distance`, also returns the float32
    distance to the chosen colour, which measures how blurred a label image is.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim < 3 or rgb.shape[-1] != 3:
        raise ValueError(f"rgb must have shape (..., H, W, 3), got {rgb.shape}")
    if rgb.dtype != np.uint8:
        raise TypeError(f"rgb must be uint8, got {rgb.dtype}")
    palette = _check_palette(palette)
    if len(palette) == 0 or len(palette) >= IGNORE:
        raise ValueError(f"palette must hold 1..254 colours, got {len(palette)}")
    colours = palette.astype(np.float32)
    ids = np.arange(len(palette), dtype=np.uint8)
    if ignore_colors is not None and len(ignore_colors):
        ignore = _check_palette(ignore_colors, "ignore_colors").astype(np.float32)
        colours = np.concatenate([colours, ignore])
        ids = np.concatenate([ids, np.full(len(ignore), IGNORE, np.uint8)])
    flat = rgb.reshape(-1, 3).astype(np.float32)
    out = np.empty(len(flat), np.uint8)
    dist = np.empty(len(flat), np.float32) if (return_distance or max_distance is not None) else None
    c_norm = (colours * colours).sum(1)
    for s in range(0, len(flat), _CHUNK):
        x = flat[s: s + _CHUNK]
        # |x - c|^2 - |x|^2 = |c|^2 - 2 x.c; every term is an integer below 2^24, so float32 (BLAS) is
        # exact and argmin ties resolve by index.
        d = c_norm[None, :] - 2 * (x @ colours.T)
        best = d.argmin(1)
        out[s: s + _CHUNK] = ids[best]
        if dist is not None:
            sq = d[np.arange(len(x)), best] + (x * x).sum(1)
            dist[s: s + _CHUNK] = np.sqrt(np.maximum(sq, 0))
    if max_distance is not None:
        out[dist > max_distance] = IGNORE
    out = out.reshape(rgb.shape[:-1])
    return (out, dist.reshape(rgb.shape[:-1])) if return_distance else out


def snap_blurred_labels(rgb, palette, *, ignore_colors=None, confident: float = 30.0) -> np.ndarray:
    """Snap a resized/JPEG'd colour label image (H, W, 3): pixels within `confident` of a colour keep
    its id; the rest (blends along borders, where the nearest colour is often a third class) take the
    id of the spatially nearest confident pixel. Falls back to plain snapping if none is confident."""
    from scipy.ndimage import distance_transform_edt

    rgb = np.asarray(rgb)
    if rgb.ndim != 3:
        raise ValueError(f"rgb must be one image (H, W, 3), got shape {rgb.shape}")
    ids, dist = snap_to_palette(rgb, palette, ignore_colors=ignore_colors, return_distance=True)
    unsure = dist > confident
    if unsure.any() and not unsure.all():
        _, (iy, ix) = distance_transform_edt(unsure, return_indices=True)
        ids = ids[iy, ix]
    return ids
