"""ActivationStore: one split's per-layer activations, inputs, labels and CNN outputs on disk.

Layout (DESIGN.md, "On-disk formats"): a directory with one `.npy` per layer, shape (N, H, W, C),
float16 by default, plus `images.npy` (N, H, W, 3) uint8, `labels.npy` and `cnn_outputs.npy`
((N, H, W) uint8 class ids, 255 = ignore, or (N, H, W, 3) uint8 images for synthesis targets), and
`manifest.json`. Arrays are read through numpy memmaps, so a database larger than RAM still works.

The manifest is written last, atomically, and only once every row of every array was written: a
directory without it is an interrupted export and never opens as a store.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_LABEL_KINDS = ("labels", "images")
_FIXED_ARRAYS = ("images", "labels", "cnn_outputs")


class StoreError(Exception):
    """A store is missing, incomplete, corrupt, or of another format version."""


def _shape(name: str, shape: Sequence[int] | None, ndim: Iterable[int]) -> tuple[int, ...] | None:
    if shape is None:
        return None
    shape = tuple(int(s) for s in shape)
    if len(shape) not in tuple(ndim) or any(s <= 0 for s in shape):
        raise ValueError(f"{name} must be a shape of {' or '.join(map(str, ndim))} positive ints, got {shape}")
    return shape


class StoreWriter:
    """Fills a new store row by row; `close()` validates and publishes the manifest."""

    def __init__(self, path: Path, manifest: dict[str, Any]):
        self.path = path
        self._manifest = manifest
        self._arrays: dict[str, np.memmap] = {}
        self._written: dict[str, np.ndarray] = {}
        n = manifest["n_images"]
        for key, entry in self._entries():
            self._arrays[key] = np.lib.format.open_memmap(
                path / entry["file"], mode="w+", dtype=np.dtype(entry["dtype"]), shape=tuple(entry["shape"])
            )
            self._written[key] = np.zeros(n, dtype=bool)
        self._closed = False

    def _entries(self):
        for name, entry in self._manifest["layers"].items():
            yield "layer:" + name, entry
        for name, entry in self._manifest["arrays"].items():
            yield name, entry

    def _put(self, key: str, what: str, i: int, value) -> None:
        if key not in self._arrays:
            raise ValueError(f"{what} is not part of this store (declared: {sorted(self._arrays)})")
        target = self._arrays[key]
        value = np.asarray(value)
        if value.shape != target.shape[1:]:
            raise ValueError(f"{what} for row {i} has shape {value.shape}, expected {target.shape[1:]}")
        if np.issubdtype(value.dtype, np.floating):
            if not np.isfinite(value).all():
                raise ValueError(f"{what} for row {i} contains NaN or Inf")
            if target.dtype == np.float16 and np.abs(value).max(initial=0) > np.finfo(np.float16).max:
                raise ValueError(f"{what} for row {i} overflows float16; create the store with dtype='float32'")
        elif target.dtype == np.uint8 and value.dtype != np.uint8:
            if value.size and (value.min() < 0 or value.max() > 255):
                raise ValueError(f"{what} for row {i} has values outside uint8 range")
        target[i] = value
        self._written[key][i] = True

    def write(self, i: int, *, activations: Mapping[str, np.ndarray] | None = None, image=None, label=None,
              cnn_output=None) -> None:
        """Write any subset of row `i`'s arrays."""
        if self._closed:
            raise StoreError(f"store {self.path} is already closed")
        n = self._manifest["n_images"]
        if not 0 <= int(i) < n:
            raise IndexError(f"row {i} out of range for a store of {n} images")
        for name, value in (activations or {}).items():
            self._put("layer:" + name, f"layer {name!r}", i, value)
        for key, value in (("images", image), ("labels", label), ("cnn_outputs", cnn_output)):
            if value is not None:
                self._put(key, key, i, value)

    def close(self) -> "ActivationStore":
        """Flush, check that every row was written, then publish the manifest atomically."""
        if self._closed:
            return ActivationStore.open(self.path)
        missing = {k: np.flatnonzero(~w)[:5].tolist() for k, w in self._written.items() if not w.all()}
        if missing:
            raise StoreError(f"store {self.path} is incomplete; rows never written (first few): {missing}")
        for arr in self._arrays.values():
            arr.flush()
        self._arrays.clear()
        tmp = self.path / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(self._manifest, indent=1))
        os.replace(tmp, self.path / MANIFEST)
        self._closed = True
        return ActivationStore.open(self.path)

    def abort(self) -> None:
        self._arrays.clear()
        self._closed = True

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class ActivationStore:
    """Read-only view of a finished store. Open with `ActivationStore.open(path)`."""

    def __init__(self, path: Path, manifest: dict[str, Any]):
        self.path = path
        self._manifest = manifest
        self._cache: dict[str, np.memmap] = {}

    # ---- creation -------------------------------------------------------------------------
    @classmethod
    def create(cls, path, *, n_images: int, layers: Mapping[str, Sequence[int]], image_shape=None,
               label_shape=None, output_shape=None, image_ids: Sequence[str] | None = None,
               model: str = "", task: str = "", label_kind: str = "labels", dtype: str = "float16",
               layer_meta: Mapping[str, Mapping[str, Any]] | None = None,
               metadata: Mapping[str, Any] | None = None,
               image_meta: Sequence[Mapping[str, Any]] | None = None, overwrite: bool = False) -> StoreWriter:
        """Start a new store at `path`. An existing store there is refused unless `overwrite`."""
        path = Path(path)
        n = int(n_images)
        if n <= 0:
            raise ValueError(f"n_images must be positive, got {n_images}")
        if label_kind not in _LABEL_KINDS:
            raise ValueError(f"label_kind must be one of {_LABEL_KINDS}, got {label_kind!r}")
        if np.dtype(dtype) not in (np.dtype(np.float16), np.dtype(np.float32)):
            raise ValueError(f"dtype must be float16 or float32, got {dtype!r}")
        ids = [str(i) for i in (image_ids if image_ids is not None else range(n))]
        if len(ids) != n or len(set(ids)) != n:
            raise ValueError(f"image_ids must be {n} distinct ids, got {len(ids)} ({len(set(ids))} distinct)")
        if image_meta is not None and len(image_meta) != n:
            raise ValueError(f"image_meta must have one entry per image ({n}), got {len(image_meta)}")
        layer_meta = dict(layer_meta or {})
        unknown = set(layer_meta) - set(layers)
        if unknown:
            raise ValueError(f"layer_meta names layers that are not stored: {sorted(unknown)}")

        manifest_layers = {}
        for name, shape in layers.items():
            if not name or "/" in name or name in _FIXED_ARRAYS or name.startswith("."):
                raise ValueError(f"invalid layer name {name!r}")
            shape = _shape(f"layers[{name!r}]", shape, (3,))
            manifest_layers[name] = {"file": f"{name}.npy", "shape": [n, *shape], "dtype": np.dtype(dtype).name,
                                     **{k: v for k, v in layer_meta.get(name, {}).items()}}
        arrays = {}
        for key, shape, ndims in (("images", image_shape, (3,)), ("labels", label_shape, (2, 3)),
                                  ("cnn_outputs", output_shape, (2, 3))):
            shape = _shape(f"{key} shape", shape, ndims)
            if shape is not None:
                arrays[key] = {"file": f"{key}.npy", "shape": [n, *shape], "dtype": "uint8"}

        if (path / MANIFEST).exists():
            if not overwrite:
                raise StoreError(f"a store already exists at {path}; pass overwrite=True to replace it")
            shutil.rmtree(path)
        path.mkdir(parents=True, exist_ok=True)
        manifest = {
            "format_version": FORMAT_VERSION, "model": model, "task": task, "label_kind": label_kind,
            "n_images": n, "image_ids": ids, "image_meta": [dict(m) for m in image_meta] if image_meta else None,
            "metadata": dict(metadata or {}), "layers": manifest_layers, "arrays": arrays,
        }
        json.dumps(manifest)  # fail now, not at close(), if metadata is not JSON
        return StoreWriter(path, manifest)

    # ---- opening --------------------------------------------------------------------------
    @classmethod
    def open(cls, path) -> "ActivationStore":
        path = Path(path)
        mpath = path / MANIFEST
        if not path.is_dir():
            raise StoreError(f"no activation store at {path}: directory does not exist")
        if not mpath.exists():
            raise StoreError(f"{path} has no {MANIFEST}: not a store, or an export that was interrupted")
        try:
            manifest = json.loads(mpath.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise StoreError(f"{mpath} is corrupt: {e}") from e
        version = manifest.get("format_version") if isinstance(manifest, dict) else None
        if version != FORMAT_VERSION:
            raise StoreError(f"{mpath} has format version {version!r}; this compnn reads version {FORMAT_VERSION}")
        store = cls(path, manifest)
        for key, entry in store._all_entries():
            store._check(key, entry)
        return store

    def _all_entries(self):
        for name, entry in self._manifest["layers"].items():
            yield "layer:" + name, entry
        for name, entry in self._manifest["arrays"].items():
            yield name, entry

    def _check(self, key: str, entry: Mapping[str, Any]) -> None:
        f = self.path / entry["file"]
        try:
            arr = np.load(f, mmap_mode="r")
        except FileNotFoundError as e:
            raise StoreError(f"store {self.path}: file {f.name} listed in the manifest is missing") from e
        except (OSError, ValueError) as e:
            raise StoreError(f"store {self.path}: file {f.name} is corrupt or truncated: {e}") from e
        if list(arr.shape) != list(entry["shape"]) or arr.dtype != np.dtype(entry["dtype"]):
            raise StoreError(f"store {self.path}: {f.name} is {arr.dtype}{list(arr.shape)}, manifest says "
                             f"{entry['dtype']}{entry['shape']}")
        self._cache[key] = arr

    # ---- access ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self._manifest["n_images"])

    def __repr__(self) -> str:
        return (f"ActivationStore({str(self.path)!r}, model={self.model!r}, task={self.task!r}, "
                f"n={len(self)}, layers={self.layer_names})")

    @property
    def layer_names(self) -> list[str]:
        return list(self._manifest["layers"])

    def layer(self, name: str) -> np.memmap:
        if name not in self._manifest["layers"]:
            raise KeyError(f"layer {name!r} is not in store {self.path}; it has {self.layer_names}")
        return self._cache["layer:" + name]

    def layer_meta(self, name: str) -> dict[str, Any]:
        if name not in self._manifest["layers"]:
            raise KeyError(f"layer {name!r} is not in store {self.path}; it has {self.layer_names}")
        entry = dict(self._manifest["layers"][name])
        entry.pop("file")
        return entry

    def _array(self, key: str) -> np.memmap:
        if key not in self._cache:
            raise KeyError(f"store {self.path} holds no {key}")
        return self._cache[key]

    @property
    def images(self) -> np.memmap:
        return self._array("images")

    @property
    def labels(self) -> np.memmap:
        return self._array("labels")

    @property
    def cnn_outputs(self) -> np.memmap:
        return self._array("cnn_outputs")

    def has(self, key: str) -> bool:
        return key in self._cache

    @property
    def image_ids(self) -> list[str]:
        return list(self._manifest["image_ids"])

    @property
    def image_meta(self) -> list[dict[str, Any]]:
        meta = self._manifest.get("image_meta")
        return [dict(m) for m in meta] if meta else [{} for _ in range(len(self))]

    @property
    def metadata(self) -> dict[str, Any]:
        return dict(self._manifest["metadata"])

    @property
    def model(self) -> str:
        return self._manifest["model"]

    @property
    def task(self) -> str:
        return self._manifest["task"]

    @property
    def label_kind(self) -> str:
        return self._manifest["label_kind"]

    def rows_where(self, pred: Callable[[dict[str, Any], str], bool]) -> np.ndarray:
        """Store rows whose per-image metadata satisfies `pred(meta, image_id)`, ascending, int32."""
        rows = [i for i, (m, iid) in enumerate(zip(self.image_meta, self.image_ids)) if pred(m, iid)]
        return np.asarray(rows, dtype=np.int32)
