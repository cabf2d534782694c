"""CompNN composition and the paper's analyses over ActivationStores (sections 3-4, Table 1).

Owns: turning native-resolution matches (`compnn_py.match.Matches`) into pixel-resolution outputs by
copying the matched training target block (Eq. 7), with the targets the paper uses — original labels
(O), the CNN's own outputs (SS, Eq. 8) or the training inputs (reconstruction, Eq. 9) — and the
analyses built on it: global-NN baselines (Eq. 3), correspondence maps (Fig. 11), bias modification
(Fig. 9), internal activation prediction (Fig. 3), the layer sweep (Fig. 4) and the Table 1 run.

`db` is always the training store (the matching database), `query` the store holding the image being
explained. Matching happens at the layer's native resolution; a layer's `stride` (store layer_meta:
input pixels per native position) maps each native position to an s×s pixel block, and the block under a
query position is copied from the block under its matched training position. Everything returns plain
arrays; pictures are drawn by `compnn_py.figures`. Framework-free: numpy and the matcher only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from compnn_py.progress import Progress

TARGETS = ("labels", "cnn_outputs", "images")


@dataclass(frozen=True)
class Composition:
    """One composed output and where each of its pixels came from.

    output: the composed target, (H, W) uint8 ids or (H, W, 3) uint8 RGB (or (H, W, C) activations).
    source_image: int32 (H, W) store row of the training image each pixel was copied from.
    source_y, source_x: int32 (H, W) the pixel of that training image it was copied from.
    matches: the native-resolution `Matches` behind it (a 1×1 grid for a global match), or None.
    """

    output: np.ndarray
    source_image: np.ndarray
    source_y: np.ndarray
    source_x: np.ndarray
    matches: Any
    layer: str
    target: str
    stride: tuple[int, int]

    def source_at(self, y: int, x: int) -> tuple[int, int, int]:
        """(store row, y, x) of the training pixel that output pixel (y, x) was copied from."""
        return int(self.source_image[y, x]), int(self.source_y[y, x]), int(self.source_x[y, x])


# ---- native matches -> pixel sources -> copied values --------------------------------------------

def _stride(value, what: str) -> tuple[int, int]:
    s = np.atleast_1d(np.asarray(value))
    if s.size == 1:
        s = np.repeat(s, 2)
    if s.shape != (2,) or not np.issubdtype(s.dtype, np.integer) or (s < 1).any():
        raise ValueError(f"{what} must be a positive int or a (sy, sx) pair of them, got {value!r}")
    return int(s[0]), int(s[1])


def _grid_axis(n_out: int, n_native: int, s: int, axis: str) -> tuple[np.ndarray, np.ndarray]:
    # A native grid covers n_out either exactly, or by floor/ceil of n_out / s when the network padded or
    # cropped; pixels past the last block belong to the last native position.
    if not (n_native * s >= n_out > (n_native - 1) * s or n_native == n_out // s):
        raise ValueError(f"stride {s} does not map a native {axis} of {n_native} positions onto {n_out} pixels")
    p = np.arange(n_out)
    q = np.minimum(p // s, n_native - 1)
    return q, p - q * s


def pixel_sources(matches, out_shape: tuple[int, int], stride, src_shape: tuple[int, int] | None = None):
    """Map top-1 native matches to per-pixel sources: (source_image, source_y, source_x), int32 (H, W).

    Output pixel p under native position q = p // stride (offset o = p - q·stride) is copied from pixel
    m·stride + o of the matched training image, m its matched position; clipped to `src_shape`
    (defaults to `out_shape`) when the grid does not divide the image evenly.
    """
    for name in ("image", "y", "x"):
        a = getattr(matches, name, None)
        if not isinstance(a, np.ndarray) or a.ndim != 3:
            raise TypeError(f"matches.{name} must be an (H, W, k) array, got {type(a).__name__}")
    sy, sx = _stride(stride, "stride")
    H, W = (int(v) for v in out_shape)
    hs, ws = (int(v) for v in (src_shape if src_shape is not None else out_shape))
    hn, wn = matches.image.shape[:2]
    qy, oy = _grid_axis(H, hn, sy, "height")
    qx, ox = _grid_axis(W, wn, sx, "width")
    img = matches.image[qy[:, None], qx[None, :], 0].astype(np.int32)
    src_y = np.clip(matches.y[qy[:, None], qx[None, :], 0] * sy + oy[:, None], 0, hs - 1).astype(np.int32)
    src_x = np.clip(matches.x[qy[:, None], qx[None, :], 0] * sx + ox[None, :], 0, ws - 1).astype(np.int32)
    return img, src_y, src_x


def transfer(targets: np.ndarray, source_image: np.ndarray, source_y: np.ndarray, source_x: np.ndarray) -> np.ndarray:
    """Copy targets[source_image, source_y, source_x] per pixel; `targets` (N, H, W[, C]) may be a memmap.

    Reads each used training image once, so a memmapped database is never loaded whole.
    """
    if targets.ndim not in (3, 4):
        raise ValueError(f"targets must be (N, H, W) or (N, H, W, C), got shape {targets.shape}")
    if not (source_image.shape == source_y.shape == source_x.shape) or source_image.ndim != 2:
        raise ValueError("source_image, source_y, source_x must be equal (H, W) arrays, got "
                         f"{source_image.shape}, {source_y.shape}, {source_x.shape}")
    n, hs, ws = targets.shape[:3]
    for a, hi, name in ((source_image, n, "source_image"), (source_y, hs, "source_y"), (source_x, ws, "source_x")):
        if a.size and (a.min() < 0 or a.max() >= hi):
            raise ValueError(f"{name} has values outside [0, {hi}) for targets of shape {targets.shape}")
    flat_img, flat_y, flat_x = source_image.ravel(), source_y.ravel(), source_x.ravel()
    out = np.empty((flat_img.size,) + targets.shape[3:], dtype=targets.dtype)
    order = np.argsort(flat_img, kind="stable")
    rows, starts = np.unique(flat_img[order], return_index=True)
    for row, idx in zip(rows, np.split(order, starts[1:])):
        out[idx] = np.asarray(targets[row])[flat_y[idx], flat_x[idx]]
    return out.reshape(source_image.shape + targets.shape[3:])


def compose_matches(matches, targets: np.ndarray, stride, *, out_shape=None, layer: str = "",
                    target: str = "") -> Composition:
    """Composition from native `matches` and a training target array (N, H, W[, C]); `out_shape` defaults
    to the targets' (H, W)."""
    src_shape = tuple(targets.shape[1:3])
    out_shape = src_shape if out_shape is None else tuple(out_shape)
    img, sy, sx = pixel_sources(matches, out_shape, stride, src_shape)
    return Composition(transfer(targets, img, sy, sx), img, sy, sx, matches, layer, target, _stride(stride, "stride"))


def recompose(comp: Composition, db, target: str) -> Composition:
    """The same correspondences applied to another target of `db` (e.g. O after SS, or the inputs)."""
    return Composition(transfer(_targets(db, target), comp.source_image, comp.source_y, comp.source_x),
                       comp.source_image, comp.source_y, comp.source_x, comp.matches, comp.layer, target, comp.stride)


# ---- store helpers ---------------------------------------------------------------------------------

def _targets(store, target: str) -> np.ndarray:
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    return getattr(store, target)


def _layer_info(store, layer: str) -> tuple[int, tuple[int, int]]:
    meta = store.layer_meta(layer)
    if "kernel" not in meta or "stride" not in meta:
        raise ValueError(f"layer {layer!r} of store {store.path} has no kernel/stride in its layer_meta: {meta}")
    return int(meta["kernel"]), _stride(meta["stride"], f"layer_meta({layer!r})['stride']")


def _query_index(query, i: int) -> int:
    if not 0 <= int(i) < len(query):
        raise IndexError(f"query index {i} out of range for a store of {len(query)} images")
    return int(i)


def _check_layer_pair(db, query, layer: str) -> None:
    a, b = db.layer(layer).shape[1:], query.layer(layer).shape[1:]
    if a != b:
        raise ValueError(f"layer {layer!r} is {b} in the query store but {a} in the database")


def resolve_rows(db, selection) -> np.ndarray | None:
    """Database rows for a restriction: None (all), a predicate `pred(meta, image_id)`, a sequence of
    image ids (str) or of store rows (int). Returns sorted unique int32 rows, or None for all."""
    if selection is None:
        return None
    if callable(selection):
        rows = db.rows_where(selection)
    else:
        sel = list(np.asarray(selection).ravel()) if isinstance(selection, np.ndarray) else list(selection)
        if sel and all(isinstance(s, str) for s in sel):
            index = {iid: r for r, iid in enumerate(db.image_ids)}
            unknown = [s for s in sel if s not in index]
            if unknown:
                raise ValueError(f"image ids not in database {db.path}: {unknown[:5]}")
            rows = np.array([index[s] for s in sel], dtype=np.int32)
        elif all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in sel):
            rows = np.asarray(sel, dtype=np.int64)
            if rows.size and (rows.min() < 0 or rows.max() >= len(db)):
                raise ValueError(f"rows must lie in [0, {len(db)}), got min {rows.min()} max {rows.max()}")
        else:
            raise TypeError("a database restriction must be a predicate, image ids (str) or store rows (int)")
    rows = np.unique(np.asarray(rows, dtype=np.int32))
    if rows.size == 0:
        raise ValueError("the database restriction selects no images")
    return rows


def _matcher():
    from compnn_py import match  # the C++ core is needed only once something is matched

    return match


# ---- analyses --------------------------------------------------------------------------------------

class SearchProgress:
    """A `progress(done, total)` callback for one long search (compnn_py.match): shows the work units of
    the search's current stage with compnn_py.progress, but only once the search has run `after`
    seconds, so short searches print nothing. Call `close()` when the search returns."""

    def __init__(self, desc: str, *, after: float = 10.0, clock=None):
        import time

        self.desc, self.after, self._clock = desc, after, clock or time.monotonic
        self._start = self._clock()
        self._bar, self._total, self._stage = None, None, 0

    def __call__(self, done: int, total: int) -> None:
        from compnn_py.progress import progress

        if total != self._total or (self._bar is not None and done < self._bar.n):
            self.close()
            self._total, self._stage = total, self._stage + 1
        if self._bar is None:
            if self._clock() - self._start < self.after:
                return
            self._bar = progress(total=total, desc=f"{self.desc} (stage {self._stage})", unit="block", leave=False)
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def match_layer(db, query, i: int, *, layer: str, method: str = "exact", rows=None, k: int = 1,
                threads: int | None = None, coarse_layer: str | None = None, global_layer: str | None = None,
                shortlist: int = 10, coarse_k: int = 8, margin: int = 1, prune: str = "bounds",
                progress: str | None = None, stats: dict | None = None, certified: bool = False):
    """Native-resolution patch matches of query image i at `layer` against `db` (kernel from layer_meta).

    method "exact" searches every position of every (allowed) database image; "shortlist" takes the
    `shortlist` images closest by `global_layer` and searches every position of those exactly;
    "hierarchical" takes the same shortlist and, with prune="bounds" (default), gives exactly the
    "shortlist" result while skipping cells of positions that certified bounds rule out
    (compnn_py.match.hierarchical; `coarse_layer` is still checked but not searched); prune="coarse" is
    the paper's prune: `coarse_k` positions per position of `coarse_layer`, then only under those at
    `layer` (DESIGN.md "Hierarchical prune"), which may miss the best match. `progress`: a description;
    a search still running after 10 s then shows its work units (SearchProgress). `stats`: a dict that
    receives the bound prune's counts (match.hierarchical, or match.patches with `certified`).
    `certified`: "exact" and "shortlist" search through match.patches(certified=True), the certified
    fast search with the same answers bit for bit (the AMX bfloat16 filter for 1×1 patches where the CPU
    has it); off by default, so that "exact" stays the float32 reference the fast matchers are timed against.
    """
    if method not in ("exact", "shortlist", "hierarchical"):
        raise ValueError(f"method must be 'exact', 'shortlist' or 'hierarchical', got {method!r}")
    if method == "hierarchical" and (coarse_layer is None or global_layer is None):
        raise ValueError("method='hierarchical' needs coarse_layer and global_layer")
    if method == "shortlist" and global_layer is None:
        raise ValueError("method='shortlist' needs global_layer")
    i = _query_index(query, i)
    _check_layer_pair(db, query, layer)
    kernel, _ = _layer_info(db, layer)
    rows = resolve_rows(db, rows)
    q = np.asarray(query.layer(layer)[i])
    bar = SearchProgress(progress) if progress else None
    extra = {"progress": bar} if bar is not None else {}
    if certified and method != "hierarchical":
        extra.update(certified=True, stats=stats)
    try:
        if method == "exact":
            return _matcher().patches(q, db.layer(layer), kernel=kernel, k=k, rows=rows, threads=threads, **extra)
        if method == "shortlist":
            _check_layer_pair(db, query, global_layer)
            best, _ = _matcher().global_shortlist(np.asarray(query.layer(global_layer)[i]), db.layer(global_layer),
                                                  shortlist, rows=rows, threads=threads)
            return _matcher().patches(q, db.layer(layer), kernel=kernel, k=k, rows=np.sort(best), threads=threads,
                                      **extra)
        for name in (coarse_layer, global_layer):
            _check_layer_pair(db, query, name)
        kc, _ = _layer_info(db, coarse_layer)
        return _matcher().hierarchical(
            q, db.layer(layer), kernel_fine=kernel, query_coarse=np.asarray(query.layer(coarse_layer)[i]),
            db_coarse=db.layer(coarse_layer), kernel_coarse=kc,
            query_global=np.asarray(query.layer(global_layer)[i]), db_global=db.layer(global_layer),
            shortlist=shortlist, coarse_k=coarse_k, margin=margin, k=k, rows=rows, threads=threads, prune=prune,
            stats=stats, **extra)
    finally:
        if bar is not None:
            bar.close()


def compnn(db, query, i: int, *, layer: str, target: str = "cnn_outputs", method: str = "exact", rows=None,
           **match_kwargs) -> Composition:
    """CompNN output for query image i (Eq. 7): per native position of `layer`, the best-matching training
    (image, position); the pixel block under it is copied from `db`'s `target` ("cnn_outputs" = SS labels,
    the paper's default; "labels" = O; "images" = reconstruction). `rows` restricts the database (see
    `resolve_rows`). Extra keywords go to `match_layer` (k, threads, hierarchical options)."""
    targets = _targets(db, target)
    matches = match_layer(db, query, i, layer=layer, method=method, rows=rows, **match_kwargs)
    _, stride = _layer_info(db, layer)
    return compose_matches(matches, targets, stride, layer=layer, target=target)


def global_nn(db, query, i: int, *, layer: str, target: str = "cnn_outputs", rows=None,
              threads: int | None = None) -> Composition:
    """Global NN (Eq. 3): the training image whose whole `layer` map is closest (cosine) to the query's;
    its target is copied entirely. Returned as a Composition over a 1×1 native grid."""
    i = _query_index(query, i)
    _check_layer_pair(db, query, layer)
    targets = _targets(db, target)
    rows = resolve_rows(db, rows)
    best, sim = _matcher().global_shortlist(np.asarray(query.layer(layer)[i]), db.layer(layer), 1, rows=rows,
                                            threads=threads)
    matches = _global_matches(int(best[0]), float(sim[0]))
    return compose_matches(matches, targets, targets.shape[1:3], layer=layer, target=target)


def _global_matches(row: int, similarity: float):
    # A whole-image match is a 1×1 native grid whose single block (stride = image size) is the image.
    z = np.zeros((1, 1, 1), dtype=np.int32)
    return _matcher().Matches(image=np.full((1, 1, 1), row, dtype=np.int32), y=z, x=z.copy(),
                              similarity=np.full((1, 1, 1), similarity, dtype=np.float32))


@dataclass(frozen=True)
class Correspondence:
    """Which training pixel every output pixel came from (Fig. 11).

    source_image/source_y/source_x: int32 (H, W) per output pixel; source_id: (H, W) str, the image id of
    source_image. rows: store rows used, most-used first, with counts (pixels) and image_ids. masks[j]: bool
    (Hs, Ws), the pixels of training image rows[j] that were copied (for the `top` most used only).
    """

    source_image: np.ndarray
    source_y: np.ndarray
    source_x: np.ndarray
    source_id: np.ndarray
    rows: np.ndarray
    counts: np.ndarray
    image_ids: list[str]
    masks: list[np.ndarray]

    def save(self, path) -> None:
        """Write the per-pixel sources (and usage ranking) to an .npz, queryable without the store."""
        np.savez_compressed(path, source_image=self.source_image, source_y=self.source_y, source_x=self.source_x,
                            source_id=self.source_id, rows=self.rows, counts=self.counts)

    def explain(self, y: int, x: int) -> dict[str, Any]:
        """The training image id, store row and pixel that output pixel (y, x) was copied from."""
        row = int(self.source_image[y, x])
        rank = int(np.flatnonzero(self.rows == row)[0])
        return {"row": row, "image_id": self.image_ids[rank], "y": int(self.source_y[y, x]),
                "x": int(self.source_x[y, x])}


def correspondence(comp: Composition, db, *, top: int = 3) -> Correspondence:
    """Correspondence map of a composition: sources ranked by pixels contributed, and for the `top` most
    used, a mask of the region copied from each (source image resolution = db images)."""
    if top < 0:
        raise ValueError(f"top must be >= 0, got {top}")
    rows, counts = np.unique(comp.source_image, return_counts=True)
    order = np.lexsort((rows, -counts))  # most pixels first; ties by lowest row
    rows, counts = rows[order].astype(np.int32), counts[order].astype(np.int64)
    ids = db.image_ids
    hs, ws = (db.images if db.has("images") else _targets(db, comp.target)).shape[1:3]
    masks = []
    for row in rows[:top]:
        m = np.zeros((hs, ws), dtype=bool)
        sel = comp.source_image == row
        m[comp.source_y[sel], comp.source_x[sel]] = True
        masks.append(m)
    return Correspondence(comp.source_image, comp.source_y, comp.source_x, np.asarray(ids)[comp.source_image],
                          rows, counts, [ids[r] for r in rows], masks)


def composition_stats(comp: Composition) -> dict[str, float]:
    """How compositional an output is: distinct source images, and the number and mean area of pieces,
    a piece being a 4-connected set of output pixels copied rigidly (same source image, same shift)."""
    from skimage.measure import label as cc_label

    h, w = comp.source_image.shape
    yy, xx = np.mgrid[:h, :w]
    key = np.stack([comp.source_image, comp.source_y - yy, comp.source_x - xx], -1).reshape(-1, 3)
    _, inverse = np.unique(key, axis=0, return_inverse=True)
    # +1 so no rigid piece gets skimage's background id 0
    pieces = cc_label(inverse.reshape(h, w) + 1, background=0, connectivity=1).max()
    return {"n_sources": int(np.unique(comp.source_image).size), "n_pieces": int(pieces),
            "mean_piece_area": float(h * w / pieces)}


def bias_modification(db, query, i: int, databases: Mapping[str, Any], *, layer: str,
                      target: str = "cnn_outputs", **match_kwargs) -> dict[str, Composition]:
    """The same query composed from restricted databases (Fig. 9): {name: restriction} -> {name: output}.
    A restriction is anything `resolve_rows` takes (None = the whole database)."""
    if not databases:
        raise ValueError("databases must name at least one restriction")
    return {name: compnn(db, query, i, layer=layer, target=target, rows=sel, **match_kwargs)
            for name, sel in databases.items()}


@dataclass(frozen=True)
class Reconstruction:
    """Fig. 6/10: the query input rebuilt from training inputs, and its output from training targets,
    compositionally (one set of matches) and by global NN (one best image)."""

    compnn_input: Composition
    global_input: Composition
    compnn_output: Composition
    global_output: Composition


def reconstruction(db, query, i: int, *, layer: str, global_nn_layer: str | None = None,
                   target: str = "cnn_outputs", **match_kwargs) -> Reconstruction:
    """Reconstruct query i's input (Eq. 9) and output with CompNN at `layer` and global NN at
    `global_nn_layer` (default: `layer`'s whole map). Matching keywords (incl. the hierarchical
    prune's own `global_layer`) go to `compnn`."""
    comp = compnn(db, query, i, layer=layer, target="images", **match_kwargs)
    glob = global_nn(db, query, i, layer=global_nn_layer or layer, target="images", rows=match_kwargs.get("rows"),
                     threads=match_kwargs.get("threads"))
    return Reconstruction(comp, glob, recompose(comp, db, target), recompose(glob, db, target))


@dataclass(frozen=True)
class ActivationPrediction:
    """Fig. 3: `target_layer` of the query predicted by copying training activation vectors.

    compositional/global: predicted maps (h, w, C); actual: the network's own map; errors: relative L2
    (‖pred − actual‖ / ‖actual‖ over the whole map) and cosine (whole map flattened, and the mean over
    positions of per-position cosine, where a position with both vectors zero counts as 1 and one zero as 0).
    """

    compositional: Composition
    global_: Composition
    actual: np.ndarray
    errors: dict[str, dict[str, float]]


def activation_errors(pred: np.ndarray, actual: np.ndarray) -> dict[str, float]:
    """Relative L2 error, flattened cosine and mean per-position cosine of two (h, w, C) maps."""
    if pred.shape != actual.shape:
        raise ValueError(f"pred {pred.shape} and actual {actual.shape} differ in shape")
    p, a = pred.astype(np.float64), actual.astype(np.float64)
    na = np.linalg.norm(a)
    rel = float(np.linalg.norm(p - a) / na) if na > 0 else float("nan")
    npf = np.linalg.norm(p)
    cos = float((p * a).sum() / (npf * na)) if npf > 0 and na > 0 else float("nan")
    pp, aa = np.linalg.norm(p, axis=-1), np.linalg.norm(a, axis=-1)
    both = (pp > 0) & (aa > 0)
    per = np.where(both, (p * a).sum(-1) / np.where(both, pp * aa, 1.0), np.where((pp == 0) & (aa == 0), 1.0, 0.0))
    return {"relative_l2": rel, "cosine": cos, "mean_position_cosine": float(per.mean())}


def predict_activations(db, query, i: int, *, source_layer: str, target_layer: str,
                        **match_kwargs) -> ActivationPrediction:
    """Predict query i's `target_layer` activations by matching `source_layer` neighbourhoods (kernel from
    layer_meta) and copying the matched training positions' `target_layer` vectors (Fig. 3; e.g. source the
    input decoder_3 consumes, target decoder_3). Also the global version: the training image whose whole
    `source_layer` map is closest gives its whole `target_layer` map. The target grid must be the source
    grid refined by an integer factor (the ratio of the layers' strides)."""
    _check_layer_pair(db, query, target_layer)
    _, s_src = _layer_info(db, source_layer)
    _, s_tgt = _layer_info(db, target_layer)
    if any(a % b for a, b in zip(s_src, s_tgt)):
        raise ValueError(f"target_layer stride {s_tgt} must divide source_layer stride {s_src}")
    ratio = tuple(a // b for a, b in zip(s_src, s_tgt))
    acts = db.layer(target_layer)
    matches = match_layer(db, query, _query_index(query, i), layer=source_layer, **match_kwargs)
    comp = compose_matches(matches, acts, ratio, layer=source_layer, target=target_layer)
    best, sim = _matcher().global_shortlist(np.asarray(query.layer(source_layer)[i]), db.layer(source_layer), 1,
                                            rows=resolve_rows(db, match_kwargs.get("rows")),
                                            threads=match_kwargs.get("threads"))
    glob = compose_matches(_global_matches(int(best[0]), float(sim[0])), acts, acts.shape[1:3],
                           layer=source_layer, target=target_layer)
    actual = np.asarray(query.layer(target_layer)[i])
    return ActivationPrediction(comp, glob, actual, {"compositional": activation_errors(comp.output, actual),
                                                     "global": activation_errors(glob.output, actual)})


@dataclass(frozen=True)
class SweepStep:
    layer: str
    composition: Composition
    stats: dict[str, float]


def layer_sweep(db, query, i: int, *, layers: Sequence[str], target: str = "cnn_outputs",
                **match_kwargs) -> list[SweepStep]:
    """CompNN at each of `layers` (bottleneck -> decoder_2 input in the paper, Fig. 4), with
    `composition_stats` showing how composition grows as the layers get finer."""
    if not layers:
        raise ValueError("layers must name at least one layer")
    steps = []
    for name in Progress(layers, desc="layer sweep", unit="layer", leave=False):
        comp = compnn(db, query, i, layer=name, target=target, **match_kwargs)
        steps.append(SweepStep(name, comp, composition_stats(comp)))
    return steps


# ---- Table 1 ---------------------------------------------------------------------------------------

def table1_query(db, query, q: int, comp: Composition, *, bottleneck_layer: str, decode2_layer: str,
                 rows=None, threads: int | None = None) -> dict[str, np.ndarray]:
    """Query q's prediction for every Table 1 row, given its CompNN composition `comp` (SS target):
    the CNN output, CompNN SS/O (one match, two targets) and global NN on the whole `bottleneck_layer`
    and `decode2_layer` maps, each SS and O."""
    out = {"Baseline CNN": np.asarray(query.cnn_outputs[q]), "CompNN (SS)": comp.output,
           "CompNN (O)": recompose(comp, db, "labels").output}
    for name, lay in (("Global Bottleneck NN", bottleneck_layer), ("Global Decode2 NN", decode2_layer)):
        g = global_nn(db, query, q, layer=lay, target="cnn_outputs", rows=rows, threads=threads)
        out[f"{name} (SS)"] = g.output
        out[f"{name} (O)"] = recompose(g, db, "labels").output
    return out


def table1_score(db, outputs: Mapping[str, Sequence[np.ndarray]], gt, num_classes: int | None = None):
    """Score stacked Table 1 predictions against ground truth `gt` and the CNN's own output: segmentation
    stores (label_kind "labels") by pixel accuracy / mean class accuracy / mIoU, synthesis by PSNR/SSIM."""
    from compnn_py import metrics

    stacked = {k: np.stack(v) for k, v in outputs.items()}
    cnn = stacked["Baseline CNN"]
    if db.label_kind != "labels":
        return metrics.table1_synthesis(stacked, gt, cnn), stacked
    if num_classes is None:
        num_classes = db.metadata.get("num_classes")
        if num_classes is None:
            raise ValueError("num_classes is needed for a segmentation task (not in db.metadata either)")
    return metrics.table1_segmentation(stacked, gt, cnn, num_classes), stacked


def table1(db, query, *, layer: str, bottleneck_layer: str, decode2_layer: str, num_classes: int | None = None,
           queries: Sequence[int] | None = None, method: str = "exact", progress: bool = True,
           **match_kwargs):
    """Run the paper's Table 1 for one task over `queries` (default: every query image).

    Per query: CompNN at `layer` then `table1_query`; scored by `table1_score`. Returns
    (metrics.Table, outputs) with outputs[row] a (Q, H, W[, 3]) array of every row's predictions.
    """
    from compnn_py import metrics

    idx = list(range(len(query))) if queries is None else [_query_index(query, q) for q in queries]
    if not idx:
        raise ValueError("queries selects no images")
    if db.label_kind == "labels" and num_classes is None and db.metadata.get("num_classes") is None:
        raise ValueError("num_classes is needed for a segmentation task (not in db.metadata either)")
    outputs: dict[str, list[np.ndarray]] = {name: [] for name in metrics.TABLE1_ROWS}
    for q in Progress(idx, desc="table 1", unit="img", disable=not progress):
        comp = compnn(db, query, q, layer=layer, target="cnn_outputs", method=method, **match_kwargs)
        for name, pred in table1_query(db, query, q, comp, bottleneck_layer=bottleneck_layer,
                                       decode2_layer=decode2_layer, rows=match_kwargs.get("rows"),
                                       threads=match_kwargs.get("threads")).items():
            outputs[name].append(pred)
    return table1_score(db, outputs, np.asarray(query.labels[idx]), num_classes)
