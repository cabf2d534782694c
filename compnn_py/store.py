"""ActivationStore: one split's per-layer activations, inputs, labels and CNN outputs on disk.

Layout (DESIGN.md, "On-disk formats"): a directory with one `.npy` per layer, shape (N, H, W, C),
float16 by default, plus `images.npy` (N, H, W, 3) uint8, `labels.npy` and `cnn_outputs.npy`
((N, H, W) uint8 class ids, 255 = ignore, or (N, H, W, 3) uint8 images for synthesis targets), and
`manifest.json`. Arrays are read through numpy memmaps, so a database larger than RAM still works.
`open()` validates the manifest (keys, types, counts, shapes, plain file names inside the directory)
and every array file; a damaged store raises one-line StoreError naming the path and the problem.

Writing (`ActivationStore.create(...)` -> StoreWriter):
- The new store is built in a hidden sibling directory `.<name>.tmp-<pid>-<random>` (the writer's
  `pending` path) and moved into place by rename on `close()`, only once every row of every array was
  written; an interrupted or failed export never touches the destination.
- While the writer is open it holds an exclusive lock on `<parent>/.<name>.lock`; a second writer to
  the same destination fails at once with fsio.Busy.
- The destination may be absent or an empty directory. An existing store is replaced only with
  `overwrite=True`, and only if its directory holds nothing but the files its manifest lists; any
  other non-empty directory is refused (nothing of the user's is ever deleted).
- uint8 arrays (images, labels, cnn_outputs) take only integer values in 0..255; float arrays take
  finite values (and, for float16, values float16 can hold: larger ones are refused).
- float16 underflow: a nonzero value too small for float16 (|v| < 2**-25) is stored as 0. The writer
  counts them per layer, records the count in the layer's manifest entry (`float16_underflow`) and
  warns once per layer (StoreWarning, one line; an attached writer only warns, in its own process).
  It neither scales nor widens the layer: CompNN compares patches by cosine similarity, which values
  1e-8 below the layer's typical ones do not move; a layer whose values are all that small is then
  visible in the record (and is degenerate for matching).
- Space: before the arrays are created the free space is checked (os.statvfs), and each array file is
  then reserved on disk (os.posix_fallocate), so a disk filling up mid-export fails at once with a
  one-line StoreError naming the path and the bytes needed, instead of a SIGBUS at a memmap write.

Reading: only regular files are opened (checked on a non-blocking descriptor: a FIFO named like a
layer file is refused, never waited on), and each file's size must be exactly its header plus the
manifest's shape. Whole arrays are numpy memmaps (the matcher reads them without a copy). Row reads
through Python indexing (`store.images[i]`, `store.layer(name)[a:b]`) are served by pread and return
plain arrays, so a file truncated by another process while the store is open gives a one-line
StoreError instead of a SIGBUS; `layer()` and the array properties also check the size on each call.
What is not covered: a truncation while the C++ matcher is already reading a whole memmap (compnn
itself never truncates a published file: a store is replaced by renaming a new directory into place).
- Absolute file-system paths are refused in `metadata`/`image_meta`: a store must not depend on, or
  disclose, where its sources lived. Readers record source files relative to the data root.

Several processes filling one store (e.g. Dask workers): the creating process calls `create()` and
hands `writer.pending` to the workers; each calls `ActivationStore.attach(pending)`, writes its own
disjoint rows and `close()`s, which records the rows it wrote in a small `written-*.json` file in the
pending directory (an attached writer never publishes; an aborted one records nothing). The creator's
`close()` publishes only when its own rows plus all recorded rows cover every row of every array,
and otherwise raises StoreError listing the missing rows (the writer stays open, so the missing rows
can still be written and `close()` retried, or `abort()` called).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import secrets
import stat
import warnings
import weakref
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from .fsio import CorruptFile, exclusive_lock, json_safe, publish_dir, read_json, temp_sibling, write_json

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PENDING = "pending.json"          # the manifest-to-be, inside a pending directory (for attach)
_RECORD_PREFIX = "written-"       # per attached writer: rows it wrote
_LABEL_KINDS = ("labels", "images")
_FIXED_ARRAYS = ("images", "labels", "cnn_outputs")
_ARRAY_NDIMS = {"images": (4,), "labels": (3, 4), "cnn_outputs": (3, 4)}
_LAYER_DTYPES = ("float16", "float32")


class StoreError(Exception):
    """A store is missing, incomplete, corrupt, of another format version, or cannot be written where asked."""


class StoreWarning(UserWarning):
    """Values were stored less exactly than given (float16 underflow)."""


FLOAT16_TINY = 2.0 ** -25   # nonzero values below this in magnitude round to 0 in float16


def _npy_bytes(entry: Mapping[str, Any]) -> int:
    """Upper bound of an .npy file's size for a manifest entry (header at most 4 KiB)."""
    return int(np.prod(entry["shape"])) * np.dtype(entry["dtype"]).itemsize + 4096


def _reserve(path: Path, size: int) -> None:
    """Allocate `size` bytes of file `path` on disk now, so later memmap writes cannot hit a full disk."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            raise StoreError(f"cannot write {path}: no space for its {size} bytes ({err.strerror})") from None
        if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
    finally:
        os.close(fd)


class StoreArray(np.memmap):
    """A store file's memmap whose Python row indexing (`a[i]`, `a[i, ...]`, `a[a:b]`) reads with pread and
    returns a plain array: a file truncated meanwhile gives StoreError, not SIGBUS. Everything else
    (the buffer the matcher reads, numpy functions on the whole array) is the memmap itself."""

    _store_fd: int | None = None

    def __array_finalize__(self, obj):
        super().__array_finalize__(obj)
        self._store_fd = None  # views and results of operations read through the memmap

    def __getitem__(self, index):
        fd = self._store_fd
        if fd is None or self.ndim == 0:
            return super().__getitem__(index)
        first, rest = (index[0], index[1:]) if isinstance(index, tuple) and index else (index, ())
        n = self.shape[0]
        if isinstance(first, (int, np.integer)) and not isinstance(first, bool):
            i = int(first) + (n if int(first) < 0 else 0)
            if not 0 <= i < n:
                raise IndexError(f"index {int(first)} is out of bounds for axis 0 with size {n}")
            return self._rows(fd, i, i + 1)[0][rest] if rest else self._rows(fd, i, i + 1)[0]
        if isinstance(first, slice) and first.step in (None, 1):
            a, b, _ = first.indices(n)
            rows = self._rows(fd, a, max(a, b))
            return rows[(slice(None), *rest)] if rest else rows
        return super().__getitem__(index)

    def _rows(self, fd: int, a: int, b: int) -> np.ndarray:
        row = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        want = (b - a) * row
        buf = os.pread(fd, want, self.offset + a * row) if want else b""
        if len(buf) < want:
            raise StoreError(f"{self.filename}: the file was truncated while the store was open (rows {a}..{b - 1} "
                             f"need {self.offset + b * row} bytes, it has {os.fstat(fd).st_size}); re-export it")
        return np.frombuffer(buf, self.dtype).reshape((b - a, *self.shape[1:]))


def _open_regular(path: Path) -> int:
    """A read-only descriptor of `path`, which must be a regular file (a FIFO or device is refused
    without blocking: O_NONBLOCK, then fstat)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise StoreError(f"store file {path} is not a regular file (mode {stat.filemode(mode)}); re-export the store")
        os.set_blocking(fd, True)
        return fd
    except BaseException:
        os.close(fd)
        raise


def _open_array(path: Path) -> StoreArray:
    """The .npy file at `path` as a read-only StoreArray, its size checked against its header."""
    fd = _open_regular(path)
    try:
        with os.fdopen(os.dup(fd), "rb") as fp:
            version = np.lib.format.read_magic(fp)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
            else:
                raise ValueError(f"unsupported .npy version {version}")
            offset = fp.tell()
        if fortran or dtype.hasobject:
            raise ValueError("not a C-ordered numeric array")
        expected = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        size = os.fstat(fd).st_size
        if size != expected:
            raise ValueError(f"has {size} bytes, its header says {expected}")
        arr = np.memmap(path, dtype=dtype, mode="r", shape=tuple(shape), offset=offset).view(StoreArray)
    except BaseException:
        os.close(fd)
        raise
    arr._store_fd = fd
    weakref.finalize(arr, os.close, fd)
    return arr


def _shape(name: str, shape: Sequence[int] | None, ndim: Iterable[int]) -> tuple[int, ...] | None:
    if shape is None:
        return None
    shape = tuple(int(s) for s in shape)
    if len(shape) not in tuple(ndim) or any(s <= 0 for s in shape):
        raise ValueError(f"{name} must be a shape of {' or '.join(map(str, ndim))} positive ints, got {shape}")
    return shape


def _runs(mask: np.ndarray) -> list[list[int]]:
    """[T, T, T, F, F, T] -> [[0, 3], [5, 6]]: the half-open row ranges where `mask` is set."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return [[int(a), int(b)] for a, b in zip(edges[::2], edges[1::2])]


def _ranges(mask: np.ndarray, limit: int = 8) -> str:
    """Rows where `mask` is set, as '0-2, 5' (first `limit` runs, then '...')."""
    runs = _runs(mask)
    text = ", ".join(f"{a}" if b == a + 1 else f"{a}-{b - 1}" for a, b in runs[:limit])
    return text + (", ..." if len(runs) > limit else "")


def _is_plain_name(name: Any) -> bool:
    return (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name
            and "\0" not in name and not name.startswith("."))


def _absolute_paths(obj: Any, where: str) -> list[str]:
    """Locations in a JSON-like object whose string values are absolute file-system paths."""
    if isinstance(obj, str):
        return [where] if os.path.isabs(obj) else []
    if isinstance(obj, Mapping):
        return [w for k, v in obj.items() for w in _absolute_paths(v, f"{where}[{k!r}]")]
    if isinstance(obj, (list, tuple)):
        return [w for i, v in enumerate(obj) for w in _absolute_paths(v, f"{where}[{i}]")]
    return []


def _entries(manifest: Mapping[str, Any]):
    for name, entry in manifest["layers"].items():
        yield "layer:" + name, entry
    for name, entry in manifest["arrays"].items():
        yield name, entry


def _validate_manifest(m: Any, where: Path) -> None:
    """Raise StoreError (one line, naming `where`) unless `m` is a well-formed manifest of this version."""
    def bad(msg):
        raise StoreError(f"{where}: {msg}")

    if not isinstance(m, dict):
        bad(f"expected a JSON object, got {type(m).__name__}")
    version = m.get("format_version")
    if version != FORMAT_VERSION:
        bad(f"has format version {version!r}; this compnn reads version {FORMAT_VERSION}")
    missing = [k for k in ("n_images", "image_ids", "layers", "arrays", "model", "task", "label_kind", "metadata")
               if k not in m]
    if missing:
        bad(f"manifest lacks {missing}")
    n = m["n_images"]
    if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
        bad(f"n_images must be a positive int, got {n!r}")
    ids = m["image_ids"]
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        bad("image_ids must be a list of strings")
    if len(ids) != n or len(set(ids)) != n:
        bad(f"image_ids has {len(ids)} entries ({len(set(ids))} distinct) for n_images={n}")
    meta = m.get("image_meta")
    if meta is not None and (not isinstance(meta, list) or len(meta) != n or
                             not all(isinstance(x, dict) for x in meta)):
        bad(f"image_meta must be null or a list of {n} objects")
    if not isinstance(m["metadata"], dict):
        bad("metadata must be an object")
    for key in ("model", "task"):
        if not isinstance(m[key], str):
            bad(f"{key} must be a string")
    if m["label_kind"] not in _LABEL_KINDS:
        bad(f"label_kind must be one of {_LABEL_KINDS}, got {m['label_kind']!r}")
    if not isinstance(m["layers"], dict) or not isinstance(m["arrays"], dict):
        bad("layers and arrays must be objects")
    unknown = sorted(set(m["arrays"]) - set(_FIXED_ARRAYS))
    if unknown:
        bad(f"unknown arrays {unknown}; expected some of {list(_FIXED_ARRAYS)}")
    files = set()
    for key, entry in _entries(m):
        if not isinstance(entry, dict) or not {"file", "shape", "dtype"} <= set(entry):
            bad(f"entry {key!r} must be an object with file, shape and dtype")
        f = entry["file"]
        if not _is_plain_name(f) or not f.endswith(".npy"):
            bad(f"entry {key!r} names file {f!r}; expected a plain .npy name inside the store directory")
        if f in files:
            bad(f"file {f!r} is listed twice")
        files.add(f)
        shape = entry["shape"]
        ndims = (4,) if key.startswith("layer:") else _ARRAY_NDIMS[key]
        if (not isinstance(shape, list) or len(shape) not in ndims or
                not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)):
            bad(f"entry {key!r} has shape {shape!r}; expected {' or '.join(map(str, ndims))} positive ints")
        if shape[0] != n:
            bad(f"entry {key!r} has {shape[0]} rows but n_images is {n}")
        dtypes = _LAYER_DTYPES if key.startswith("layer:") else ("uint8",)
        if entry["dtype"] not in dtypes:
            bad(f"entry {key!r} has dtype {entry['dtype']!r}; expected one of {dtypes}")


def _listed_files(manifest: Any) -> set[str] | None:
    """File names a manifest lists (plus the manifest itself), or None if it does not read as one."""
    try:
        names = {e["file"] for section in ("layers", "arrays") for e in manifest[section].values()}
    except (TypeError, KeyError, AttributeError):
        return None
    if not all(_is_plain_name(f) for f in names):
        return None
    return names | {MANIFEST}


def _check_destination(path: Path, overwrite: bool) -> None:
    """Refuse a destination whose replacement could lose anything that is not a store of ours."""
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise StoreError(f"cannot write a store at {path}: it exists and is not a directory")
    if not path.exists():
        return
    present = sorted(p.name for p in path.iterdir())
    if not present:
        return
    if MANIFEST not in present:
        shown = ", ".join(present[:5]) + (", ..." if len(present) > 5 else "")
        raise StoreError(f"cannot write a store at {path}: the directory is not empty and holds no store "
                         f"({shown}); choose another path or empty it yourself")
    if not overwrite:
        raise StoreError(f"a store already exists at {path}; pass overwrite=True to replace it")
    try:
        listed = _listed_files(read_json(path / MANIFEST, "store manifest", hint="not replacing it"))
    except CorruptFile as err:
        raise StoreError(f"cannot replace {path}: {err}") from None
    if listed is None:
        raise StoreError(f"cannot replace {path}: its {MANIFEST} does not list a store's files; delete it yourself")
    stray = [p for p in present if p not in listed]
    if stray:
        shown = ", ".join(stray[:5]) + (", ..." if len(stray) > 5 else "")
        raise StoreError(f"cannot replace the store at {path}: it also holds files its manifest does not list "
                         f"({shown}); move them away first")


def _remove_stale_pending(path: Path) -> None:
    """Pending directories of earlier writers to `path` that died. Only call while holding path's lock:
    every live creator holds it for as long as its pending directory exists."""
    prefix = f".{path.name}.tmp-"
    for sib in path.parent.iterdir():
        if sib.name.startswith(prefix) and sib.is_dir() and not sib.is_symlink() and (sib / PENDING).is_file():
            shutil.rmtree(sib, ignore_errors=True)


class StoreWriter:
    """Fills a new store row by row. Made by `ActivationStore.create` (publishes on `close()`) or
    `ActivationStore.attach` (records its rows on `close()`; the creator publishes)."""

    def __init__(self, pending: Path, manifest: dict[str, Any], *, dest: Path | None = None,
                 overwrite: bool = False, lock: contextlib.ExitStack | None = None):
        self.pending = pending
        self.path = dest  # the destination; None for an attached writer
        self._manifest = manifest
        self._overwrite = overwrite
        self._lock = lock
        self._arrays: dict[str, np.memmap] = {}
        self._written: dict[str, np.ndarray] = {}
        self._underflow: dict[str, int] = {}
        n = manifest["n_images"]
        if dest is not None:
            needed = sum(_npy_bytes(e) for _, e in _entries(manifest))
            fs = os.statvfs(pending)
            if fs.f_bavail * fs.f_frsize < needed:
                raise StoreError(f"cannot write the store {dest}: it needs {needed} bytes, "
                                 f"{fs.f_bavail * fs.f_frsize} are free on the file system of {pending}")
        for key, entry in _entries(manifest):
            f = pending / entry["file"]
            if dest is not None:
                self._arrays[key] = np.lib.format.open_memmap(
                    f, mode="w+", dtype=np.dtype(entry["dtype"]), shape=tuple(entry["shape"]))
                _reserve(f, os.stat(f).st_size)
            else:
                try:
                    arr = np.load(f, mmap_mode="r+")
                except (OSError, ValueError, EOFError) as err:
                    raise StoreError(f"pending store {pending}: cannot open {entry['file']}: {err}") from None
                if list(arr.shape) != entry["shape"] or arr.dtype != np.dtype(entry["dtype"]):
                    raise StoreError(f"pending store {pending}: {entry['file']} is {arr.dtype}{list(arr.shape)}, "
                                     f"expected {entry['dtype']}{entry['shape']}")
                self._arrays[key] = arr
            self._written[key] = np.zeros(n, dtype=bool)
        self._closed = False

    @property
    def attached(self) -> bool:
        return self.path is None

    def _put(self, key: str, what: str, i: int, value) -> None:
        if key not in self._arrays:
            raise ValueError(f"{what} is not part of this store (declared: {sorted(self._arrays)})")
        target = self._arrays[key]
        value = np.asarray(value)
        if value.shape != target.shape[1:]:
            raise ValueError(f"{what} for row {i} has shape {value.shape}, expected {target.shape[1:]}")
        if target.dtype == np.uint8:
            # A silent cast would turn [0, 1] images into zeros, -1 labels into 255 (void), 300 into 44.
            if not np.issubdtype(value.dtype, np.integer):
                raise ValueError(f"{what} for row {i} must be integers in 0..255 (stored as uint8), got "
                                 f"{value.dtype}; convert explicitly, e.g. images in [0, 1] -> "
                                 f"np.round(x * 255).astype(np.uint8)")
            if value.dtype != np.uint8 and value.size and (value.min() < 0 or value.max() > 255):
                raise ValueError(f"{what} for row {i} has values {value.min()}..{value.max()} outside 0..255 "
                                 f"(stored as uint8)")
        else:
            if not (np.issubdtype(value.dtype, np.floating) or np.issubdtype(value.dtype, np.integer)):
                raise ValueError(f"{what} for row {i} must be real numbers, got {value.dtype}")
            if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
                raise ValueError(f"{what} for row {i} contains NaN or Inf")
            if target.dtype == np.float16 and value.size and \
                    max(abs(float(value.max())), abs(float(value.min()))) > float(np.finfo(np.float16).max):
                raise ValueError(f"{what} for row {i} overflows float16; create the store with dtype='float32'")
            if target.dtype == np.float16 and value.dtype != np.float16 and value.size:
                lost = int(np.count_nonzero((value != 0) & (np.abs(value) < FLOAT16_TINY)))
                if lost:
                    self._underflow[key] = self._underflow.get(key, 0) + lost
        target[i] = value
        self._written[key][i] = True

    def write(self, i: int, *, activations: Mapping[str, np.ndarray] | None = None, image=None, label=None,
              cnn_output=None) -> None:
        """Write any subset of row `i`'s arrays."""
        if self._closed:
            raise StoreError(f"store writer for {self.path or self.pending} is already closed")
        n = self._manifest["n_images"]
        if not 0 <= int(i) < n:
            raise IndexError(f"row {i} out of range for a store of {n} images")
        for name, value in (activations or {}).items():
            self._put("layer:" + name, f"layer {name!r}", i, value)
        for key, value in (("images", image), ("labels", label), ("cnn_outputs", cnn_output)):
            if value is not None:
                self._put(key, key, i, value)

    def _records(self) -> list[Path]:
        return sorted(p for p in self.pending.glob(f"{_RECORD_PREFIX}*.json"))

    def _covered(self) -> dict[str, np.ndarray]:
        """Rows written by this writer or recorded by attached writers, per array."""
        covered = {k: w.copy() for k, w in self._written.items()}
        n = self._manifest["n_images"]
        for rec_path in self._records():
            try:
                rec = read_json(rec_path, "record of an attached store writer", hint="rewrite those rows")
                for key, runs in rec.items():
                    for a, b in runs:
                        if key not in covered or not 0 <= a < b <= n:
                            raise ValueError(f"rows {a}..{b} of {key!r}")
                        covered[key][a:b] = True
            except (CorruptFile, ValueError, TypeError, AttributeError) as err:
                raise StoreError(f"pending store {self.pending}: bad record {rec_path.name}: {err}") from None
        return covered

    def close(self) -> "ActivationStore | None":
        """Creator: check that every row of every array was written (here or by attached writers),
        write the manifest and move the store into place; returns the opened store. Attached writer:
        flush and record the rows written; returns None."""
        if self._closed:
            return None if self.attached else ActivationStore.open(self.path)
        for arr in self._arrays.values():
            arr.flush()
        if self._underflow:
            self._report_underflow()
        if self.attached:
            runs = {k: _runs(w) for k, w in self._written.items() if w.any()}
            if not self.pending.is_dir():
                raise StoreError(f"pending store {self.pending} no longer exists (published or aborted by its creator)")
            write_json(self.pending / f"{_RECORD_PREFIX}{os.getpid()}-{secrets.token_hex(4)}.json", runs, indent=None)
            self._arrays.clear()
            self._closed = True
            return None
        missing = {k: _ranges(~w) for k, w in self._covered().items() if not w.all()}
        if missing:
            raise StoreError(f"store {self.path} is incomplete; rows never written: "
                             + "; ".join(f"{k}: {v}" for k, v in missing.items()))
        _check_destination(self.path, self._overwrite)  # again: the directory may have changed meanwhile
        self._arrays.clear()
        for rec in self._records():
            rec.unlink()
        write_json(self.pending / MANIFEST, self._manifest)
        (self.pending / PENDING).unlink()
        publish_dir(self.pending, self.path)
        self._closed = True
        self._release()
        return ActivationStore.open(self.path)

    def _report_underflow(self) -> None:
        """Warn (one line per layer) and, for the creator, record the counts in the manifest."""
        for key, lost in self._underflow.items():
            name = key.removeprefix("layer:")
            total = int(np.prod(self._manifest["layers"][name]["shape"])) if key.startswith("layer:") else 0
            warnings.warn(f"store {self.path or self.pending}: layer {name!r}: {lost} of {total} values underflow "
                          f"float16 (|v| < {FLOAT16_TINY:.1e}) and are stored as 0; create the store with "
                          "dtype='float32' to keep them", StoreWarning, stacklevel=3)
            if not self.attached and key.startswith("layer:"):
                self._manifest["layers"][name]["float16_underflow"] = lost
        self._underflow.clear()

    def abort(self) -> None:
        """Give up: an attached writer records nothing; the creator deletes its pending directory."""
        self._arrays.clear()
        if not self._closed and not self.attached:
            shutil.rmtree(self.pending, ignore_errors=True)
        self._closed = True
        self._release()

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

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
        """Start a new store at `path` (see the module docstring for where it is built, the lock, and
        which existing directories may be replaced). Raises fsio.Busy if another writer holds `path`."""
        path = Path(path)
        if path.is_symlink() or path.name in ("", ".", ".."):
            # Build next to the real directory (the final rename must stay on one filesystem), under a real name.
            path = Path(os.path.realpath(path))
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
            if not _is_plain_name(name) or name in _FIXED_ARRAYS:
                raise ValueError(f"invalid layer name {name!r}")
            shape = _shape(f"layers[{name!r}]", shape, (3,))
            manifest_layers[name] = {**dict(layer_meta.get(name, {})),
                                     "file": f"{name}.npy", "shape": [n, *shape], "dtype": np.dtype(dtype).name}
        arrays = {}
        for key, shape, ndims in (("images", image_shape, (3,)), ("labels", label_shape, (2, 3)),
                                  ("cnn_outputs", output_shape, (2, 3))):
            shape = _shape(f"{key} shape", shape, ndims)
            if shape is not None:
                arrays[key] = {"file": f"{key}.npy", "shape": [n, *shape], "dtype": "uint8"}
        manifest = {
            "format_version": FORMAT_VERSION, "model": str(model), "task": str(task), "label_kind": label_kind,
            "n_images": n, "image_ids": ids, "image_meta": [dict(m) for m in image_meta] if image_meta else None,
            "metadata": dict(metadata or {}), "layers": manifest_layers, "arrays": arrays,
        }
        manifest = json_safe(manifest)
        try:  # fail now, not at close(), if metadata is not JSON
            json.dumps(manifest, allow_nan=False)
        except (TypeError, ValueError) as err:
            raise ValueError(f"store metadata must be JSON data: {err}") from None
        absolute = _absolute_paths(manifest["metadata"], "metadata") + \
            _absolute_paths(manifest["image_meta"] or [], "image_meta")
        if absolute:
            raise ValueError(f"{', '.join(absolute[:3])}{' ...' if len(absolute) > 3 else ''} hold absolute paths; "
                             "a store records source files relative to their data root")
        _validate_manifest(manifest, path)  # the same rules open() applies

        lock = contextlib.ExitStack()
        pending = None
        try:
            lock.enter_context(exclusive_lock(path.parent / f".{path.name}.lock", f"activation store {path}"))
            _check_destination(path, overwrite)
            _remove_stale_pending(path)
            pending = temp_sibling(path)
            write_json(pending / PENDING, manifest)
            return StoreWriter(pending, manifest, dest=path, overwrite=overwrite, lock=lock)
        except BaseException:
            if pending is not None:
                shutil.rmtree(pending, ignore_errors=True)
            lock.close()
            raise

    @classmethod
    def attach(cls, pending) -> StoreWriter:
        """A writer for rows of the pending store another writer created (`writer.pending`), e.g. in a
        worker process. Its `close()` records the rows it wrote; only the creator publishes."""
        pending = Path(pending)
        try:
            manifest = read_json(pending / PENDING, "pending store layout", hint="recreate the store")
        except FileNotFoundError:
            raise StoreError(f"{pending} is not a pending store (no {PENDING}; published or aborted?)") from None
        except CorruptFile as err:
            raise StoreError(str(err)) from None
        _validate_manifest(manifest, pending / PENDING)
        return StoreWriter(pending, manifest)

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
            manifest = read_json(mpath, "store manifest", hint="re-export the store")
        except CorruptFile as err:
            raise StoreError(str(err)) from None
        _validate_manifest(manifest, mpath)
        store = cls(path, manifest)
        for key, entry in _entries(manifest):
            store._check(key, entry)
        return store

    def _check(self, key: str, entry: Mapping[str, Any]) -> None:
        f = self.path / entry["file"]
        try:
            arr = _open_array(f)
        except FileNotFoundError:
            raise StoreError(f"store {self.path}: file {f.name} listed in the manifest is missing") from None
        except (OSError, ValueError, EOFError) as e:
            raise StoreError(f"store {self.path}: file {f.name} is corrupt or truncated: {e}") from None
        if not isinstance(arr, np.ndarray) or list(arr.shape) != list(entry["shape"]) or \
                arr.dtype != np.dtype(entry["dtype"]):
            got = f"{arr.dtype}{list(arr.shape)}" if isinstance(arr, np.ndarray) else type(arr).__name__
            raise StoreError(f"store {self.path}: {f.name} is {got}, manifest says {entry['dtype']}{entry['shape']}")
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
        return self._valid("layer:" + name)

    def _valid(self, key: str) -> StoreArray:
        """The cached array, after checking that its file still has the size it had at open()."""
        arr = self._cache[key]
        fd = getattr(arr, "_store_fd", None)
        if fd is not None:
            expected = arr.offset + arr.nbytes
            size = os.fstat(fd).st_size
            if size != expected:
                raise StoreError(f"store {self.path}: {Path(arr.filename).name} changed size while the store was open "
                                 f"({size} bytes, expected {expected}); re-export it")
        return arr

    def layer_meta(self, name: str) -> dict[str, Any]:
        if name not in self._manifest["layers"]:
            raise KeyError(f"layer {name!r} is not in store {self.path}; it has {self.layer_names}")
        entry = dict(self._manifest["layers"][name])
        entry.pop("file")
        return entry

    def _array(self, key: str) -> np.memmap:
        if key not in self._cache:
            raise KeyError(f"store {self.path} holds no {key}")
        return self._valid(key)

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
