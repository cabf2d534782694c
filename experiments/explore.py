"""The provenance explorer: `python -m experiments.explore --out_dir=RUN_DIR [--port 8765] [--host 127.0.0.1]`.

A local web server over a finished run directory. Pick a query image of the run (or upload a PNG/JPEG,
which the run's network processes on the spot), click any output pixel, and get its exact top-k training
sources over the WHOLE training set at any exported layer, with how ambiguous they are, and whether the
source Table 1's matcher showed for that pixel is among them. Nothing is retrained or recomputed beyond
that: the explorer reads the run's cached export (`cache/export-*/{train,query}`, compnn_py.store), the
compnn stage's per-pixel sources (`cache/compnn-*/sources.npy`, metrics.json) and, for uploads only, the
network (the train stage's `model.keras`, or the `--checkpoint` the train stage recorded; TensorFlow is
imported only then). It writes nothing anywhere: uploads live in this process's memory.

Owns: finding a run's stages (`RunFiles`), the exact search per click (`Explorer.provenance`, through
compnn_py.match.PatchIndex: one prepared index per layer, built on first use), uploads (`Explorer.upload`)
and the HTTP surface (`create_app`; Flask 3, chosen as a small, well-kept WSGI library with a threaded
development server that is enough for one user on 127.0.0.1, safe static-file serving and Jinja2
templates). The page is `explore_ui/index.html` with its script and style under `explore_ui/static/`.

JSON API (every error is a 4xx JSON object {"error": message}):
  GET  /api/info                                        the run: queries, layers (shape, kernel, stride), classes
  GET  /api/provenance?query=Q&y=Y&x=X&layer=NAME&k=K   exact top-k sources of (Y, X) in NAME's grid
  POST /api/upload  (multipart field "image")           a new query; answers its id ("u1", ...)
  GET  /img/query/<Q>/<input|cnn|compnn|compnn_o|labels>.png, /img/train/<i>.png
"""

from __future__ import annotations

import io
import ipaddress
import re
import signal
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
from absl import app, flags

from compnn_py import compose, fsio
from compnn_py.store import ActivationStore, StoreError
from experiments.errors import UserError

FLAGS = flags.FLAGS


def _define(kind: str, name: str, default, help_text: str, **kw) -> None:
    # experiments.run defines some of the same names; a process that imports both keeps the first.
    if name not in FLAGS:
        getattr(flags, f"DEFINE_{kind}")(name, default, help_text, **kw)


_define("string", "out_dir", None, "Run directory to explore (a finished `python -m experiments.run` run).")
_define("integer", "port", 8765, "Port to serve on (0: any free port; the URL is printed).")
_define("string", "host", "127.0.0.1", "Address to bind. The default serves this machine only; another "
        "address exposes the run's images and activations to that network.")
_define("integer", "threads", None, "Matcher threads (default: all available CPUs). Results do not depend on it.")

DEFAULT_K = 5
MAX_K = 100
NEAR = 0.01                    # "within 0.01 of the best similarity" (ambiguity)
MAX_UPLOAD_BYTES = 32 << 20    # request body cap
MAX_UPLOAD_PIXELS = 40_000_000  # decoded image cap (width x height), checked before decoding
MAX_UPLOADS = 16               # uploads kept in memory; the oldest is forgotten first
UPLOAD_FORMATS = ("PNG", "JPEG")


class ApiError(Exception):
    """A bad request: answered as {"error": message} with this HTTP status."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


# ---- the run's files --------------------------------------------------------------------------------

@dataclass(frozen=True)
class RunFiles:
    """The stage directories of a run that the explorer reads (compnn/train/data may be None)."""

    run_dir: Path
    export: Path
    compnn: Path | None
    train: Path | None
    data: Path | None


def _record(stage_dir: Path) -> dict[str, Any] | None:
    """A stage's DONE record, or None when it has none or it does not parse (not a finished stage)."""
    try:
        record = fsio.read_json(stage_dir / "DONE.json", f"record of {stage_dir.name}")
    except (OSError, fsio.CorruptFile):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("config"), dict) else None


def _finished(cache: Path, name: str) -> list[tuple[Path, dict[str, Any]]]:
    """Finished stages called `name` in `cache`, newest record first."""
    found = []
    for d in cache.glob(f"{name}-*"):
        rec = _record(d)
        if d.is_dir() and rec is not None:
            found.append((d, rec, (d / "DONE.json").stat().st_mtime_ns))
    return [(d, rec) for d, rec, _ in sorted(found, key=lambda t: -t[2])]


def find_run(out_dir) -> RunFiles:
    """The export the run's latest report (else compnn stage, else export) was made from, and the compnn,
    train and data stages that go with it. UserError (one line) when there is no finished export."""
    run = Path(out_dir).expanduser().resolve()
    cache = run / "cache"
    if not cache.is_dir():
        raise UserError(f"--out_dir {run} is not a compnn run directory (it has no cache/ folder)")
    exports = {d.name.split("-", 1)[1]: d for d, _ in _finished(cache, "export")}
    compnn = None
    for rep, rec in _finished(cache, "report"):
        c = cache / f"compnn-{rec['config'].get('compnn')}"
        crec = _record(c)
        if crec is not None and crec["config"].get("export") in exports:
            compnn = c
            break
    if compnn is None:
        compnn = next((d for d, rec in _finished(cache, "compnn") if rec["config"].get("export") in exports), None)
    if compnn is not None:
        export = exports[_record(compnn)["config"]["export"]]
    elif exports:
        export = _finished(cache, "export")[0][0]
    else:
        raise UserError(f"{run} has no finished export stage: run `python -m experiments.run --out_dir={run}` "
                        "first (the explorer retrains and re-exports nothing)")
    erec = _record(export)["config"]
    train = cache / f"train-{erec.get('train')}"
    data = cache / f"data-{erec.get('data')}"
    return RunFiles(run, export, compnn, train if train.is_dir() else None, data if data.is_dir() else None)


# ---- one query image: the run's, or an upload ----------------------------------------------------------

@dataclass
class Query:
    """What a click needs of one query image: its input, CNN output, activations per layer and the
    Table 1 matcher's sources (fine layer's grid, (3, h, w): image, y, x) with its composed outputs."""

    id: str
    name: str
    image: np.ndarray
    cnn_output: np.ndarray
    layers: Any                        # name -> (h, w, C) map (a store row, or an upload's arrays)
    labels: np.ndarray | None = None   # ground truth, run queries only
    sources: np.ndarray | None = None  # (3, h, w) int32 at the fine layer
    compnn_ss: np.ndarray | None = None
    compnn_o: np.ndarray | None = None
    matcher: str | None = None         # the matcher that gave `sources`
    notes: list[str] = field(default_factory=list)


class _StoreRow:
    """Layer maps of one row of a store, read on demand (memmapped)."""

    def __init__(self, store: ActivationStore, row: int):
        self.store, self.row = store, row

    def __getitem__(self, name: str) -> np.ndarray:
        return np.asarray(self.store.layer(name)[self.row])


class _OneQuery:
    """The minimal query-store interface compose.compnn reads, over an upload's arrays."""

    def __init__(self, layers: dict[str, np.ndarray]):
        self._layers = layers

    def __len__(self) -> int:
        return 1

    def layer(self, name: str) -> np.ndarray:
        return self._layers[name][None]


# ---- the explorer -----------------------------------------------------------------------------------

class Explorer:
    """A run's training database, query images and uploads, and the exact search behind each click."""

    def __init__(self, files: RunFiles, *, threads: int | None = None, log=print):
        self.files, self.threads, self.log = files, threads, log
        try:
            self.db = ActivationStore.open(files.export / "train")
            self.query_store = ActivationStore.open(files.export / "query")
        except StoreError as e:
            raise UserError(str(e)) from None
        meta = self.db.metadata
        self.match_spec = meta.get("match_spec") or {}
        self.fine = self.match_spec.get("fine", self.db.layer_names[0])
        self.config = meta.get("config") or {}
        self.palette = np.asarray(meta.get("palette") or [], dtype=np.uint8).reshape(-1, 3)
        self.class_names = self._class_names()
        self.layers = {name: self._layer_info(name) for name in self.db.layer_names}
        self.table1_method, self.table1_sources, self.reference = self._compnn_stage()
        self._indexes: dict[str, Any] = {}
        self._index_lock = threading.Lock()
        self._uploads: OrderedDict[str, Query] = OrderedDict()
        self._upload_lock = threading.Lock()   # one network run at a time
        self._uploads_guard = threading.Lock()  # the dict itself (held briefly)
        self._upload_count = 0
        self._network = None

    # -- run facts
    def _class_names(self) -> list[str]:
        from compnn_py.data import TASKS

        spec = TASKS.get(self.db.task)
        names = list(spec.class_names) if spec is not None else []
        return names + [f"class {i}" for i in range(len(names), len(self.palette))]

    def _layer_info(self, name: str) -> dict[str, Any]:
        meta = self.db.layer_meta(name)
        s = np.atleast_1d(meta.get("stride", 1))
        stride = [int(s[0]), int(s[-1])]
        _, h, w, c = (int(v) for v in meta["shape"])
        return {"name": name, "grid": [h, w], "channels": c, "kernel": int(meta.get("kernel", 1)), "stride": stride,
                "fine": name == self.fine}

    def _compnn_stage(self) -> tuple[str | None, np.ndarray | None, dict[str, Any]]:
        d = self.files.compnn
        if d is None:
            return None, None, {}
        try:
            metrics = fsio.read_json(d / "metrics.json", "the compnn stage's metrics")
            sources = np.load(d / "sources.npy", mmap_mode="r")
        except (OSError, ValueError) as e:
            self.log(f"warning: the compnn stage in {d} cannot be read ({e}); Table 1 sources are not shown")
            return None, None, {}
        if sources.ndim != 4 or sources.shape[0] != len(self.query_store) or sources.shape[2:] != tuple(
                self.layers[self.fine]["grid"]):
            self.log(f"warning: {d / 'sources.npy'} does not match the export; Table 1 sources are not shown")
            return None, None, {}
        reference = {k: metrics[k] for k in ("shortlist_vs_exact", "hierarchical_vs_exact", "exact_reference")
                     if k in metrics}
        return metrics.get("table1_matching"), sources, reference

    def info(self) -> dict[str, Any]:
        queries = [{"id": str(q), "name": n} for q, n in enumerate(self.query_store.image_ids)]
        with self._uploads_guard:
            queries += [{"id": u.id, "name": u.name} for u in self._uploads.values()]
        h, w = self.db.images.shape[1:3]
        return {"run": self.files.run_dir.name, "task": self.db.task, "model": self.db.model,
                "n_train": len(self.db), "image_size": [int(h), int(w)], "label_kind": self.db.label_kind,
                "layers": list(self.layers.values()), "fine": self.fine, "queries": queries,
                "classes": [{"id": i, "name": n, "colour": self.palette[i].tolist()}
                            for i, n in enumerate(self.class_names)],
                "table1_matching": self.table1_method, "reference": self.reference, "default_k": DEFAULT_K,
                "max_k": MAX_K, "max_upload_pixels": MAX_UPLOAD_PIXELS, "max_upload_bytes": MAX_UPLOAD_BYTES}

    # -- queries
    def query(self, qid: str) -> Query:
        if re.fullmatch(r"\d{1,9}", qid or ""):
            q = int(qid)
            if q >= len(self.query_store):
                raise ApiError(404, f"unknown query id {qid!r}: the run has {len(self.query_store)} query images "
                               f"(0..{len(self.query_store) - 1})")
            src = self.table1_sources
            return Query(str(q), self.query_store.image_ids[q], np.asarray(self.query_store.images[q]),
                         np.asarray(self.query_store.cnn_outputs[q]), _StoreRow(self.query_store, q),
                         labels=np.asarray(self.query_store.labels[q]) if self.query_store.has("labels") else None,
                         sources=None if src is None else np.asarray(src[q]), matcher=self.table1_method)
        with self._uploads_guard:
            u = self._uploads.get(qid or "")
        if u is None:
            raise ApiError(404, f"unknown query id {qid!r}: give a query index of the run or an upload's id "
                           f"(uploads are kept in memory, the last {MAX_UPLOADS})")
        return u

    def index(self, layer: str):
        """The prepared PatchIndex of `layer` (built once, on first use)."""
        with self._index_lock:
            if layer not in self._indexes:
                from compnn_py import match

                t = time.perf_counter()
                info = self.layers[layer]
                self._indexes[layer] = match.PatchIndex(self.db.layer(layer), kernel=info["kernel"],
                                                        threads=self.threads)
                self.log(f"prepared the index of layer {layer} ({len(self.db)} x {info['grid'][0]} x "
                         f"{info['grid'][1]} positions) in {time.perf_counter() - t:.1f} s")
            return self._indexes[layer]

    # -- one click
    def provenance(self, qid: str, y, x, layer: str | None = None, k=None) -> dict[str, Any]:
        """Exact top-k training sources of position (y, x) of `layer`'s grid for query `qid` (see the module
        docstring for the JSON)."""
        start = time.perf_counter()
        layer = self.fine if layer in (None, "") else layer
        if layer not in self.layers:
            raise ApiError(400, f"unknown layer {layer!r}; exported layers: {', '.join(self.layers)}")
        info = self.layers[layer]
        h, w = info["grid"]
        y, x = _int_arg("y", y, 0, h - 1), _int_arg("x", x, 0, w - 1)
        k = _int_arg("k", DEFAULT_K if k in (None, "") else k, 1, MAX_K)
        k = min(k, len(self.db) * h * w)
        query = self.query(qid)
        qmap = np.ascontiguousarray(query.layers[layer])
        res = self.index(layer).search_images(qmap, [(y, x)], k=k, threads=self.threads)
        top, per_image = res.top, res.per_image
        sources = [self._source(int(top.image[0, j]), int(top.y[0, j]), int(top.x[0, j]), float(top.similarity[0, j]),
                                info) for j in range(top.image.shape[1])]
        best_sim = per_image.similarity[0]
        best_img = int(top.image[0, 0])
        others = np.delete(best_sim, best_img)
        other_img = int(np.delete(np.arange(len(best_sim)), best_img)[np.argmax(others)]) if others.size else None
        ambiguity = {"best": float(best_sim[best_img]), "n_images": int(len(best_sim)),
                     "other_image": other_img,
                     "other_image_best": float(best_sim[other_img]) if other_img is not None else None,
                     "gap": float(best_sim[best_img] - best_sim[other_img]) if other_img is not None else None,
                     "near": NEAR, "images_within_near": int((best_sim >= best_sim[best_img] - NEAR).sum())}
        out = {"query": query.id, "layer": layer, "y": y, "x": x, "k": k, "kernel": info["kernel"],
               "stride": info["stride"], "grid": info["grid"], "sources": sources, "ambiguity": ambiguity,
               "table1": self._table1(query, layer, y, x, top, best_sim, qmap, info)}
        out["seconds"] = time.perf_counter() - start
        return out

    def _source(self, image: int, y: int, x: int, sim: float, info: dict[str, Any]) -> dict[str, Any]:
        sy, sx = info["stride"]
        a = (info["kernel"] - 1) // 2
        hh, ww = self.db.images.shape[1:3]
        clip = lambda v, hi: int(min(max(v, 0), hi))  # noqa: E731
        block = [clip(y * sy, hh), clip(x * sx, ww), clip((y + 1) * sy, hh), clip((x + 1) * sx, ww)]
        patch = [clip((y - a) * sy, hh), clip((x - a) * sx, ww), clip((y - a + info["kernel"]) * sy, hh),
                 clip((x - a + info["kernel"]) * sx, ww)]
        return {"image": image, "image_id": self.db.image_ids[image], "y": y, "x": x, "similarity": sim,
                "block": block, "patch": patch, "ss": self._label(self.db.cnn_outputs, image, block),
                "o": self._label(self.db.labels, image, block) if self.db.has("labels") else None}

    def _label(self, targets, image: int, block: list[int]) -> dict[str, Any]:
        """What the block copies: the most frequent class id (segmentation) or the mean colour."""
        part = np.asarray(targets[image, block[0]:max(block[2], block[0] + 1), block[1]:max(block[3], block[1] + 1)])
        if part.ndim == 3:
            return {"colour": [int(round(v)) for v in part.reshape(-1, part.shape[-1]).mean(axis=0)[:3]]}
        ids, counts = np.unique(part, return_counts=True)
        c = int(ids[np.argmax(counts)])
        if c < len(self.class_names):
            return {"id": c, "name": self.class_names[c], "colour": self.palette[c].tolist()}
        return {"id": c, "name": "ignore" if c == 255 else f"class {c}", "colour": [0, 0, 0]}

    def _table1(self, query: Query, layer: str, y: int, x: int, top, best_sim, qmap, info) -> dict[str, Any] | None:
        """The source Table 1's matcher picked for this position (fine layer only), its rank among the exact
        top-k (None: not among them), its exact similarity, and its image's rank among all training images."""
        if layer != self.fine or query.sources is None:
            return None
        img, sy, sx = (int(v) for v in query.sources[:, y, x])
        found = [j for j in range(top.image.shape[1])
                 if (int(top.image[0, j]), int(top.y[0, j]), int(top.x[0, j])) == (img, sy, sx)]
        sim = _patch_cosine(qmap, (y, x), np.asarray(self.db.layer(layer)[img]), (sy, sx), info["kernel"])
        return {"method": query.matcher,
                "image": img, "image_id": self.db.image_ids[img], "y": sy, "x": sx, "similarity": sim,
                "rank": found[0] + 1 if found else None, "same_image_as_exact": img == int(top.image[0, 0]),
                "image_rank": int((best_sim > best_sim[img]).sum()) + 1}

    # -- uploads
    def upload(self, data: bytes, filename: str = "") -> Query:
        """Decode, check and process an uploaded PNG/JPEG: the run's network (CNN output, activations of
        every exported layer) and CompNN with the run's matcher. Kept in memory under a new id."""
        image, notes = decode_upload(data, tuple(self.db.images.shape[1:3]))
        with self._upload_lock:
            net, arch, post = self._load_network()
            import keras

            names = list(self.layers)
            features = keras.Model(net.inputs[0], [net.get_layer(n).output for n in names] + [net.outputs[0]])
            outs = features(image[None].astype(np.float32), training=False)
            dtype = self.db.layer(self.fine).dtype
            layers = {n: np.ascontiguousarray(np.asarray(a)[0], dtype=dtype) for n, a in zip(names, outs[:-1])}
            for n, a in layers.items():
                if a.shape != tuple(self.db.layer(n).shape[1:]):
                    raise ApiError(500, f"layer {n}: the network gives {a.shape}, the export holds "
                                   f"{tuple(self.db.layer(n).shape[1:])}")
            cnn = np.asarray(post(np.asarray(outs[-1])))[0]
            method = self.table1_method or "exact"
            comp = compose.compnn(self.db, _OneQuery(layers), 0, layer=self.fine, target="cnn_outputs",
                                  **self._match_kwargs(method))
            self._upload_count += 1
            uid = f"u{self._upload_count}"
            sources = np.stack([comp.matches.image[..., 0], comp.matches.y[..., 0], comp.matches.x[..., 0]])
            q = Query(uid, f"upload {self._upload_count}" + (f" ({Path(filename).name[:60]})" if filename else ""),
                      image, cnn, layers, sources=sources.astype(np.int32), compnn_ss=comp.output,
                      compnn_o=compose.recompose(comp, self.db, "labels").output if self.db.has("labels") else None,
                      matcher=method, notes=notes)
            with self._uploads_guard:
                self._uploads[uid] = q
                while len(self._uploads) > MAX_UPLOADS:
                    self._uploads.popitem(last=False)
            return q

    def _match_kwargs(self, method: str) -> dict[str, Any]:
        from experiments.steps.compnn import match_kwargs

        c = self.config
        cfg = SimpleNamespace(shortlist=min(int(c.get("shortlist", 10)), len(self.db)),
                              coarse_k=c.get("coarse_k", 8), margin=c.get("margin", 1))
        return match_kwargs(cfg, self.match_spec, method, self.threads)

    def _load_network(self):
        """(model, architecture, postprocess), loaded once: the train stage's model.keras, or the checkpoint
        it recorded. Imports TensorFlow (only uploads need it)."""
        if self._network is not None:
            return self._network
        t = time.perf_counter()
        from compnn_py.data import TASKS
        from tf_models import loaders
        from tf_models.train import MODEL_FILE

        train = self.files.train
        if train is None:
            raise ApiError(409, "this run has no train stage to load the network from; uploads are not possible")
        path, bn_inputs = train / MODEL_FILE, None
        if not path.is_file():
            rec = _record(train) or {}
            ckpt = rec.get("config", {}).get("checkpoint")
            if not ckpt:
                raise ApiError(409, f"no network found: {path} is missing and the run names no --checkpoint")
            path = Path(ckpt)
            if loaders.detect(path) == "run_dir" and self.files.data is not None:
                bn_inputs = np.load(self.files.data / "train_inputs.npy")  # as the export stage did
        c = self.config
        spec = TASKS[self.db.task]
        try:
            model, arch = loaders.load_network(path, image_size=tuple(c.get("size") or self.db.images.shape[1:3]),
                                               kind=spec.kind, expect=c.get("model"),
                                               match_layers=c.get("match_layers"), decode2=c.get("decode2"),
                                               kernel=c.get("kernel"), bn_inputs=bn_inputs, progress=False)
        except (ValueError, FileNotFoundError) as e:
            raise ApiError(409, f"cannot load the run's network: {e}") from None
        self._network = (model, arch, arch.postprocess(spec.kind, spec.palette))
        self.log(f"loaded the network from {path} in {time.perf_counter() - t:.1f} s")
        return self._network

    # -- pictures
    def picture(self, qid: str, what: str) -> np.ndarray:
        q = self.query(qid)
        arrays = {"input": q.image, "cnn": q.cnn_output, "labels": q.labels}
        if what in ("compnn", "compnn_o"):
            arrays[what] = self._composed(q, what)
        a = arrays.get(what)
        if a is None:
            raise ApiError(404, f"query {qid} has no {what!r} picture")
        return self.colour(a)

    def _composed(self, q: Query, what: str) -> np.ndarray | None:
        if q.compnn_ss is None and q.sources is not None:
            # A run query: the composition from the compnn stage's sources (Table 1's matcher).
            m = SimpleNamespace(image=q.sources[0][..., None], y=q.sources[1][..., None], x=q.sources[2][..., None])
            stride = self.layers[self.fine]["stride"]
            q.compnn_ss = compose.compose_matches(m, self.db.cnn_outputs, stride).output
            if self.db.has("labels"):
                q.compnn_o = compose.compose_matches(m, self.db.labels, stride).output
        return q.compnn_ss if what == "compnn" else q.compnn_o

    def colour(self, a: np.ndarray) -> np.ndarray:
        """uint8 ids -> palette colours (ignore and unknown ids black); RGB as it is."""
        if a.ndim == 3:
            return a
        lut = np.zeros((256, 3), np.uint8)
        lut[:len(self.palette)] = self.palette[:256]
        return lut[a]


def _int_arg(name: str, value, lo: int, hi: int) -> int:
    try:
        v = int(str(value).strip())
    except (TypeError, ValueError):
        raise ApiError(400, f"{name} must be an integer, got {value!r}") from None
    if not lo <= v <= hi:
        raise ApiError(400, f"{name} = {v} is outside [{lo}, {hi}]")
    return v


def _patch_cosine(qmap: np.ndarray, qpos, dmap: np.ndarray, dpos, kernel: int) -> float:
    """Cosine of two zero-padded K×K patches (offsets -(K-1)//2 .. K//2), in float64."""
    def patch(m, pos):
        a = (kernel - 1) // 2
        p = np.zeros((kernel, kernel, m.shape[-1]))
        for dy in range(kernel):
            for dx in range(kernel):
                yy, xx = pos[0] + dy - a, pos[1] + dx - a
                if 0 <= yy < m.shape[0] and 0 <= xx < m.shape[1]:
                    p[dy, dx] = m[yy, xx]
        return p.ravel() / max(np.abs(p).max(), 1e-300)

    q, d = patch(qmap, qpos), patch(dmap, dpos)
    nq, nd = np.linalg.norm(q), np.linalg.norm(d)
    return float(q @ d / (nq * nd)) if nq > 0 and nd > 0 else 0.0


def decode_upload(data: bytes, size: tuple[int, int]) -> tuple[np.ndarray, list[str]]:
    """An uploaded file -> uint8 RGB (H, W, 3) at the run's size, and notes on what was changed.
    ApiError 400/413/415 for empty, non-image, truncated, too large or non-PNG/JPEG files."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ApiError(400, "the upload is empty: choose a PNG or JPEG file")
    try:
        im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:  # Pillow refuses headers past twice its own pixel limit
        raise ApiError(413, f"the image has too many pixels; the explorer accepts at most "
                       f"{MAX_UPLOAD_PIXELS / 1e6:.0f} megapixels") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise ApiError(415, "the upload is not an image this explorer reads: give a PNG or JPEG file") from None
    with im:
        if im.format not in UPLOAD_FORMATS:
            raise ApiError(415, f"the upload is a {im.format} image: give a PNG or JPEG file")
        w, h = im.size
        if w * h > MAX_UPLOAD_PIXELS:
            raise ApiError(413, f"the image is {w}x{h} = {w * h / 1e6:.0f} megapixels; the explorer accepts at most "
                           f"{MAX_UPLOAD_PIXELS / 1e6:.0f} megapixels (it is resized to {size[1]}x{size[0]} anyway)")
        notes = []
        try:
            im.load()
            if im.mode != "RGB":
                notes.append(f"{im.mode} image converted to RGB" + (" (transparency dropped)" if "A" in im.mode
                                                                    or "transparency" in im.info else ""))
                im = im.convert("RGB")
            rgb = np.asarray(im, dtype=np.uint8)
        except (OSError, ValueError, SyntaxError, EOFError, IndexError) as e:
            raise ApiError(400, f"the image is truncated or damaged ({' '.join(str(e).split())[:120]})") from None
    from compnn_py.data.files import resize_image

    if rgb.shape[:2] != tuple(size):
        notes.append(f"resized from {w}x{h} to the run's {size[1]}x{size[0]}")
    return np.ascontiguousarray(resize_image(rgb, size)), notes


# ---- HTTP ------------------------------------------------------------------------------------------------

UI = Path(__file__).resolve().parent / "explore_ui"


def create_app(explorer: Explorer):
    """The Flask application over `explorer`. Only the routes below exist; none takes a file path (query
    ids, layers and image rows are checked against the run), and static files come from explore_ui/static
    through Flask's safe join, so no URL reaches a file outside the explorer's own page."""
    from flask import Flask, Response, jsonify, render_template, request
    from werkzeug.exceptions import HTTPException

    flask_app = Flask(__name__, static_folder=str(UI / "static"), template_folder=str(UI))
    flask_app.config["MAX_CONTENT_LENGTH"] = MAX_UPLOAD_BYTES
    flask_app.json.sort_keys = False

    def png(a: np.ndarray) -> Response:
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(a)).save(buf, format="PNG")
        return Response(buf.getvalue(), mimetype="image/png", headers={"Cache-Control": "no-store"})

    @flask_app.errorhandler(ApiError)
    def api_error(e: ApiError):
        return jsonify(error=str(e)), e.status

    @flask_app.errorhandler(HTTPException)
    def http_error(e: HTTPException):
        message = e.description
        if e.code == 413:
            message = f"the upload is larger than {MAX_UPLOAD_BYTES >> 20} MB"
        return jsonify(error=f"{e.code} {e.name}: {message}"), e.code

    @flask_app.get("/")
    def page():
        return render_template("index.html", run=explorer.files.run_dir.name)

    @flask_app.get("/api/info")
    def info():
        return jsonify(fsio.json_safe(explorer.info()))

    @flask_app.get("/api/provenance")
    def provenance():
        a = request.args
        if "query" not in a:
            raise ApiError(400, "query is required (a query index of the run or an upload's id)")
        return jsonify(fsio.json_safe(explorer.provenance(a.get("query"), a.get("y"), a.get("x"), a.get("layer"),
                                                          a.get("k"))))

    @flask_app.post("/api/upload")
    def upload():
        f = request.files.get("image")
        if f is None:
            raise ApiError(400, "no file: send the image as the multipart field 'image'")
        q = explorer.upload(f.read(), f.filename or "")
        return jsonify({"query": q.id, "name": q.name, "notes": q.notes, "matcher": q.matcher})

    @flask_app.get("/img/query/<qid>/<what>.png")
    def query_picture(qid: str, what: str):
        if what not in ("input", "cnn", "compnn", "compnn_o", "labels"):
            raise ApiError(404, f"no picture {what!r}")
        return png(explorer.picture(qid, what))

    @flask_app.get("/img/train/<int:row>.png")
    def train_picture(row: int):
        if not 0 <= row < len(explorer.db):
            raise ApiError(404, f"no training image {row} (the run has {len(explorer.db)})")
        return png(np.asarray(explorer.db.images[row]))

    return flask_app


# ---- command line --------------------------------------------------------------------------------------

def serve(explorer: Explorer, host: str, port: int) -> int:
    """Serve until Ctrl-C; prints the URL (the ready signal) once listening."""
    from werkzeug.serving import make_server

    try:
        server = make_server(host, port, create_app(explorer), threaded=True)
    except OSError as e:
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    shown = f"[{host}]" if ":" in host else host
    if not _loopback(host):
        print(f"warning: serving on {host}: anyone who reaches this address sees the run's images", flush=True)
    print(f"compnn explorer: {explorer.files.run_dir} at http://{shown}:{server.server_port}/ (Ctrl-C stops)",
          flush=True)
    # A shell starts background jobs without job control (`cmd &` in a script, CI runners) with SIGINT
    # ignored, and Python then leaves it ignored: Ctrl-C or `kill -INT` would not stop the server.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        server.serve_forever()  # werkzeug's returns on Ctrl-C (it catches KeyboardInterrupt itself)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    print("compnn explorer: stopped", flush=True)
    return 0


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def main(argv) -> int:
    """Entry point (flags already parsed, as by absl.app.run): returns the exit status."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        if not FLAGS.out_dir:
            raise UserError("--out_dir is required: the run directory to explore")
        if not 0 <= FLAGS.port <= 65535:
            raise UserError(f"--port must be in [0, 65535], got {FLAGS.port}")
        if FLAGS.threads is not None and not 1 <= FLAGS.threads <= 1024:
            raise UserError(f"--threads must be in [1, 1024], got {FLAGS.threads}")
        explorer = Explorer(find_run(FLAGS.out_dir), threads=FLAGS.threads)
        print(f"compnn explorer: {len(explorer.db)} training images, {len(explorer.query_store)} query images, "
              f"layers {', '.join(explorer.layers)} (fine: {explorer.fine}); export {explorer.files.export.name}"
              + (f", Table 1 sources from {explorer.files.compnn.name}" if explorer.table1_sources is not None else ""),
              flush=True)
        explorer.index(explorer.fine)  # the first click is then as fast as the others
        return serve(explorer, FLAGS.host, FLAGS.port)
    except KeyboardInterrupt:
        print("compnn explorer: stopped", file=sys.stderr)
        return 130
    except (UserError, fsio.CorruptFile, StoreError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    app.run(main)
