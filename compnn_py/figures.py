"""Pictures for CompNN results: colourised label maps, activation maps as RGB, panels of pictures, and
the figures of each analysis in `compnn_py.compose` (composition, correspondence map, layer sweep, bias
modification, reconstruction, activation prediction). numpy + Pillow only.

Pictures carry pixels only, never text: a figure is a `Panel`, a grid of equally sized pictures whose
titles (and, for heatmaps, colour-scale labels) are kept as strings beside the pixels. `save_png`
writes the grid's pixels; `Panel.layout()` is the JSON-able rest, from which a page (the report) shows
each picture with its title as text, readable at any size and searchable, and `cells_of` cuts a saved
grid back into its pictures.
"""

from __future__ import annotations

import colorsys
from pathlib import Path
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image

from compnn_py.data.labels import colorize as data_colorize

VOID_COLOUR = (0, 0, 0)
OTHER_COLOUR = (128, 128, 128)


def distinct_colours(n: int) -> np.ndarray:
    """n well-separated RGB colours (golden-ratio hue steps, two brightness levels), uint8 (n, 3)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    out = [colorsys.hsv_to_rgb((j * 0.618033988749895) % 1.0, 0.75, 1.0 if j % 2 == 0 else 0.7) for j in range(n)]
    return (np.array(out, dtype=np.float64).reshape(n, 3) * 255).round().astype(np.uint8)


def palette_of(store):
    """The (C, 3) class colours a store's metadata carries under "palette", or None."""
    pal = store.metadata.get("palette")
    return None if pal is None else np.asarray(pal, dtype=np.uint8).reshape(-1, 3)


def colorize(labels, palette=None) -> np.ndarray:
    """uint8 class-id map (H, W) -> RGB via `palette` ((C, 3) colours; default distinct_colours); void
    (255) is black. Ids without a palette entry are an error."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels must be an integer (H, W) map, got {labels.dtype} {labels.shape}")
    if palette is None:
        valid = labels != 255
        palette = distinct_colours(int(labels[valid].max()) + 1 if valid.any() else 1)
    return data_colorize(labels, palette, ignore_color=VOID_COLOUR)


def activation_rgb(act, channels: Sequence[int] = (0, 1, 2)) -> np.ndarray:
    """Three channels of an (h, w, C) activation map as RGB, each scaled by its own min..max (Fig. 3)."""
    act = np.asarray(act, dtype=np.float64)
    if act.ndim != 3 or len(channels) != 3 or max(channels) >= act.shape[-1]:
        raise ValueError(f"need an (h, w, C) map and 3 channels < C, got {act.shape} and {channels}")
    rgb = act[..., list(channels)]
    lo, hi = rgb.min((0, 1)), rgb.max((0, 1))
    return ((rgb - lo) / np.where(hi > lo, hi - lo, 1.0) * 255).round().astype(np.uint8)


def to_rgb(a, palette=None) -> np.ndarray:
    """Label map -> colourised; uint8 RGB -> itself; single-channel uint8 -> grey."""
    a = np.asarray(a)
    if a.ndim == 3 and a.shape[-1] == 3 and a.dtype == np.uint8:
        return a
    if a.ndim == 2:
        return colorize(a, palette)
    raise TypeError(f"cannot draw an array of dtype {a.dtype} and shape {a.shape} as a picture")


def _fit(img: np.ndarray, h: int, w: int) -> np.ndarray:
    # Integer nearest-neighbour upscaling keeps native-resolution blocks visible as blocks.
    f = max(1, min(h // img.shape[0], w // img.shape[1]))
    return np.repeat(np.repeat(img, f, 0), f, 1)


@dataclass(frozen=True)
class Panel:
    """A figure: pictures of one size in a grid (``ncols`` wide, ``pad`` white pixels around each), with
    their titles as text. ``image`` is the grid's pixels (no text); ``scale`` is the integer upscale the
    pictures got (so ``cell[::scale, ::scale]`` is a picture at its own resolution); ``colour_scale``
    names the two ends of the heatmap ramp (``RAMP``) when the pictures are heatmaps."""

    image: np.ndarray                    # uint8 (H, W, 3)
    titles: tuple[str, ...]
    ncols: int
    cell: tuple[int, int]                # (h, w) of each picture in `image`
    pad: int
    scale: int
    colour_scale: tuple[str, str] | None = field(default=None)

    def layout(self) -> dict[str, Any]:
        """Everything but the pixels, as JSON-able values (what `cells_of` needs, plus the words)."""
        return {"titles": list(self.titles), "ncols": self.ncols, "cell": list(self.cell), "pad": self.pad,
                "scale": self.scale, "colour_scale": list(self.colour_scale) if self.colour_scale else None}


def cells_of(image: np.ndarray, layout: Mapping[str, Any], *, native: bool = True) -> list[np.ndarray]:
    """The pictures of a saved `Panel` grid, in title order; `native` undoes the integer upscale."""
    (h, w), pad, ncols = layout["cell"], layout["pad"], layout["ncols"]
    step = layout.get("scale", 1) if native else 1
    out = []
    for j in range(len(layout["titles"])):
        r, c = divmod(j, ncols)
        y0, x0 = pad + r * (h + pad), pad + c * (w + pad)
        out.append(np.ascontiguousarray(image[y0:y0 + h:step, x0:x0 + w:step]))
    return out


def panel(images: Sequence[np.ndarray], titles: Sequence[str] | None = None, *, ncols: int | None = None,
          pad: int = 4, palette=None, min_cell: int = 128) -> Panel:
    """Grid of pictures (label maps colourised with `palette`) on white, titles kept as text. Cells are
    the largest picture's size, integer-upscaled until its longer side is at least `min_cell` pixels."""
    if not images:
        raise ValueError("panel needs at least one image")
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"{len(titles)} titles for {len(images)} images")
    rgbs = [to_rgb(im, palette) for im in images]
    ch = max(im.shape[0] for im in rgbs)
    cw = max(im.shape[1] for im in rgbs)
    up = max(1, -(-min_cell // max(ch, cw)))
    ch, cw = ch * up, cw * up
    rgbs = [_fit(im, ch, cw) for im in rgbs]
    ncols = min(len(rgbs), ncols or len(rgbs))
    nrows = -(-len(rgbs) // ncols)
    canvas = np.full((nrows * (ch + pad) + pad, ncols * (cw + pad) + pad, 3), 255, np.uint8)
    for j, im in enumerate(rgbs):
        r, c = divmod(j, ncols)
        y0, x0 = pad + r * (ch + pad), pad + c * (cw + pad)
        canvas[y0:y0 + im.shape[0], x0:x0 + im.shape[1]] = im
    names = tuple(str(t) for t in titles) if titles is not None else ("",) * len(rgbs)
    return Panel(canvas, names, ncols, (ch, cw), pad, up)


def save_png(path, image) -> Path:
    """Write a uint8 RGB array, or a `Panel`'s pixels, as PNG (parent directory must exist)."""
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"directory {path.parent} does not exist")
    Image.fromarray(to_rgb(image.image if isinstance(image, Panel) else image)).save(path)
    return path


# ---- analysis figures ------------------------------------------------------------------------------

def correspondence_map(corr, *, top: int | None = None) -> np.ndarray:
    """Each output pixel coloured by its source image: the `top` most used get distinct colours (rank order,
    matching `correspondence_figure`), the rest grey."""
    top = len(corr.masks) if top is None else top
    colours = distinct_colours(top)
    out = np.empty(corr.source_image.shape + (3,), dtype=np.uint8)
    out[:] = OTHER_COLOUR
    for j, row in enumerate(corr.rows[:top]):
        out[corr.source_image == row] = colours[j]
    return out


def mark_region(image, mask, colour, *, alpha: float = 0.5) -> np.ndarray:
    """The image with `mask` tinted by `colour` and everything else dimmed, so copied regions stand out."""
    image = to_rgb(image).astype(np.float64)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask {mask.shape} does not fit image {image.shape[:2]}")
    out = image * 0.35
    out[mask] = (1 - alpha) * image[mask] + alpha * np.asarray(colour, dtype=np.float64)
    return out.round().clip(0, 255).astype(np.uint8)


def correspondence_figure(corr, db, composed=None, *, palette=None, show: str = "images") -> np.ndarray:
    """Fig. 11: [composed output,] the correspondence map, then each of the most-used training images with
    the region copied from it marked in its map colour. `show` picks which of the training store's arrays
    is drawn for them ("images" = inputs, "labels" or "cnn_outputs")."""
    if show not in ("images", "labels", "cnn_outputs"):
        raise ValueError(f"show must be 'images', 'labels' or 'cnn_outputs', got {show!r}")
    shown = getattr(db, show)
    colours = distinct_colours(len(corr.masks))
    pics, titles = [], []
    if composed is not None:
        pics.append(to_rgb(composed, palette))
        titles.append("CompNN")
    pics.append(correspondence_map(corr))
    titles.append("sources")
    for j, (row, mask) in enumerate(zip(corr.rows, corr.masks)):
        pics.append(mark_region(to_rgb(np.asarray(shown[row]), palette), mask, colours[j]))
        titles.append(f"{corr.image_ids[j]} ({corr.counts[j]}px)")
    return panel(pics, titles, palette=palette)


def composition_figure(query, i: int, results: Mapping[str, object], *, palette=None) -> np.ndarray:
    """Input, ground truth and CNN output of query image i, then each named result (a Composition or an
    array), e.g. {"CompNN (SS)": ..., "Global NN": ...} (Fig. 5/7/8/12)."""
    pics = [query.images[i], query.labels[i], query.cnn_outputs[i]]
    titles = ["input", "ground truth", "CNN"]
    for name, r in results.items():
        pics.append(getattr(r, "output", r))
        titles.append(name)
    return panel([np.asarray(p) for p in pics], titles, palette=palette)


def sweep_figure(steps, *, palette=None) -> np.ndarray:
    """Fig. 4: the CompNN output at each layer above its correspondence pattern (source images coloured
    by first appearance), titled with the number of source images."""
    outs, maps, titles = [], [], []
    for s in steps:
        src = s.composition.source_image
        _, first = np.unique(src, return_index=True)
        order = np.argsort(first)
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        _, inv = np.unique(src, return_inverse=True)
        maps.append(distinct_colours(order.size)[rank[inv.reshape(src.shape)]])
        outs.append(to_rgb(s.composition.output, palette))
        titles.append(f"{s.layer} n={s.stats['n_sources']}")
    return panel(outs + maps, titles + [""] * len(maps), ncols=len(steps))


def activation_figure(pred, channels: Sequence[int] = (0, 1, 2)) -> np.ndarray:
    """Fig. 3: actual, compositional and global predictions of an activation map, three channels as RGB
    with a common scale per channel taken from the actual map."""
    act = np.asarray(pred.actual, dtype=np.float64)[..., list(channels)]
    lo, hi = act.min((0, 1)), act.max((0, 1))
    span = np.where(hi > lo, hi - lo, 1.0)

    def rgb(a):
        a = np.asarray(a, dtype=np.float64)[..., list(channels)]
        return ((a - lo) / span * 255).round().clip(0, 255).astype(np.uint8)

    e = pred.errors
    return panel([rgb(pred.actual), rgb(pred.compositional.output), rgb(pred.global_.output)],
                 ["CNN", f"comp relL2={e['compositional']['relative_l2']:.2f}",
                  f"global relL2={e['global']['relative_l2']:.2f}"])


def reconstruction_figure(rec, query, i: int, *, palette=None, scores=None) -> np.ndarray:
    """Fig. 10, one row per side: the input, then its compositional and global reconstructions from
    training inputs; below, the CNN output, then its compositional and global reconstructions from the
    training targets. `scores` ({"input"|"output": {"compnn"|"global": text}}) is appended to the titles."""
    scores = scores or {}

    def title(side, method, name):
        extra = scores.get(side, {}).get(method)
        return f"{name} {extra}" if extra else name

    return panel([np.asarray(query.images[i]), rec.compnn_input.output, rec.global_input.output,
                  np.asarray(query.cnn_outputs[i]), rec.compnn_output.output, rec.global_output.output],
                 ["input", title("input", "compnn", "CompNN"), title("input", "global", "global"),
                  "CNN output", title("output", "compnn", "CompNN"), title("output", "global", "global")],
                 palette=palette, ncols=3)


def bias_figure(query, i: int, results: Mapping[str, object], *, palette=None, changed=None,
                cnn: bool = False) -> np.ndarray:
    """Fig. 9: the query input, [its CNN output,] then its composition from each restricted database, and
    (given a bool (H, W) `changed` mask) the pixels where the compositions differ, white."""
    pics = [np.asarray(query.images[i])]
    titles = ["input"]
    if cnn:
        pics.append(np.asarray(query.cnn_outputs[i]))
        titles.append("CNN output")
    pics += [getattr(r, "output", r) for r in results.values()]
    titles += [f"from {name}" for name in results]
    if changed is not None:
        changed = np.asarray(changed, dtype=bool)
        mask = np.where(changed[..., None], np.uint8(255), np.uint8(40)).repeat(3, -1)
        pics.append(mask)
        titles.append(f"changed {changed.mean():.0%}")
    return panel(pics, titles, palette=palette)


# ---- activation maps with a colour scale -------------------------------------------------------------

# A perceptually ordered ramp (dark violet -> blue -> teal -> green -> yellow), anchors read off viridis;
# pages draw the same ramp as a CSS gradient beside a heatmap Panel (its colour_scale names the ends).
RAMP = np.array([(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)], np.float64)


def heatmap(values, lo: float, hi: float) -> np.ndarray:
    """A 2-D array as colours on the ramp: `lo` (and below) darkest, `hi` (and above) brightest."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 2:
        raise ValueError(f"heatmap needs a 2-D array, got shape {v.shape}")
    t = np.clip((v - lo) / (hi - lo if hi > lo else 1.0), 0, 1) * (len(RAMP) - 1)
    j = np.minimum(t.astype(int), len(RAMP) - 2)
    f = (t - j)[..., None]
    return ((1 - f) * RAMP[j] + f * RAMP[j + 1]).round().astype(np.uint8)


def strongest_channels(act, n: int) -> list[int]:
    """The n channels of an (h, w, C) map that vary most over positions (the informative ones)."""
    a = np.asarray(act, dtype=np.float64)
    return sorted(np.argsort(-a.reshape(-1, a.shape[-1]).std(0), kind="stable")[:min(n, a.shape[-1])].tolist())


def activation_heatmaps(pred, channels: Sequence[int] | None = None, *, n_channels: int = 4):
    """Fig. 3 with a colour scale: for each channel (default: the `n_channels` that vary most in the CNN's
    own map) a row of the CNN's map, the compositional and the global prediction, and the compositional
    prediction's absolute error, all on the ramp from that channel's minimum to its maximum in the CNN's
    map. Returns (the Panel, whose ``colour_scale`` names the ramp's ends, and the channels)."""
    actual = np.asarray(pred.actual, dtype=np.float64)
    channels = strongest_channels(actual, n_channels) if channels is None else list(channels)
    comp, glob = (np.asarray(a, dtype=np.float64) for a in (pred.compositional.output, pred.global_.output))
    pics, titles = [], []
    for c in channels:
        lo, hi = float(actual[..., c].min()), float(actual[..., c].max())
        pics += [heatmap(actual[..., c], lo, hi), heatmap(comp[..., c], lo, hi), heatmap(glob[..., c], lo, hi),
                 heatmap(np.abs(comp[..., c] - actual[..., c]), 0.0, hi - lo)]
        titles += [f"ch {c} CNN", "CompNN", "global", "|CompNN-CNN|"]
    grid = panel(pics, titles, ncols=4)
    return replace(grid, colour_scale=("channel min (error 0)", "channel max (error = range)")), channels
