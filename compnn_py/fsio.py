"""Safe file operations, the project's one place for them (numpy-free; numpy values are converted if present).

- `exclusive_lock(path, what)`: a non-blocking advisory lock (fcntl.flock) on a lock file; a second
  holder gets `Busy` with the first holder's pid and start time. The lock file is removed on release
  only by its holder and only if the path still names the file that was locked, so the protocol
  stays correct when lock files are deleted (a process that locked a since-deleted file retries).
- `write_atomic(path, data)`: write a temporary sibling, fsync, `os.replace` into place: readers see
  the old file or the new one, never half of one.
- `json_safe`, `write_json`, `read_json`: strict JSON (no NaN/Infinity tokens: NaN/Inf become null),
  and a `CorruptFile` error that names the file and what it is instead of a bare JSONDecodeError.
- `temp_sibling(path)` + `publish_dir(tmp, final)`: build a directory next to its destination (same
  filesystem) and move it into place by rename; an existing destination is renamed aside first and
  removed only after the new one is in place. The caller guarantees that `final`, if it exists, is a
  directory the project created (this module cannot know that).
- `publish_files(staging, dest, manifest)` + `finish_publishing(dest, manifest)`: swap a complete set of
  files built in `staging` into `dest` (one rename per file), remove the files of the previous set
  that the new one lacks (only those the manifest lists: files this module published), and record
  the new set. A journal in the manifest lets the next caller complete a swap a crash interrupted.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import secrets
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

__all__ = ["Busy", "CorruptFile", "exclusive_lock", "finish_publishing", "json_safe", "publish_dir",
           "publish_files", "read_json", "temp_sibling", "write_atomic", "write_json"]


class Busy(Exception):
    """Another process holds the lock on a resource this process needs."""


class CorruptFile(ValueError):
    """A file exists but cannot be parsed; the message names the file and what it should have been."""


# ---- locking ------------------------------------------------------------------------------------------


def _holder(path: Path) -> str:
    """'pid N, started T' as written by the holder; '?' parts when it has not written it (yet)."""
    try:
        text = path.read_text().split()
    except (OSError, UnicodeDecodeError):
        text = []
    pid = text[0] if text else "?"
    started = text[1] if len(text) > 1 else "?"
    return f"pid {pid}, started {started}"


@contextlib.contextmanager
def exclusive_lock(path, what: str) -> Iterator[Path]:
    """Hold an exclusive lock on lock file `path` (created if needed) for the `with` block.

    Non-blocking: if another process (or another open of the same file in this process) holds it,
    raise Busy("<what> is in use by another process (pid N, started T); wait for it or use another
    directory"). The lock dies with its process, so a crash never leaves a stale lock behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise Busy(f"{what} is in use by another process ({_holder(path)}); "
                           "wait for it or use another directory") from None
            raise
        # The holder before us may have removed the file after we opened it: then we locked an orphan.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n".encode(), 0)
        yield path
    finally:
        try:  # remove only the file we hold, while still holding it
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                os.unlink(path)
        except OSError:
            pass
        os.close(fd)


# ---- atomic files ----------------------------------------------------------------------------------------


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories; the rename itself is still atomic
    finally:
        os.close(fd)


def write_atomic(path, data: str | bytes) -> Path:
    """Replace `path` with `data` (str is written as UTF-8) so that no reader sees a partial file."""
    path = Path(path)
    if isinstance(data, str):
        data = data.encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)
    return path


# ---- JSON --------------------------------------------------------------------------------------------------


def json_safe(obj: Any) -> Any:
    """A copy of `obj` that strict JSON accepts: numpy scalars/arrays -> Python, NaN/±Inf -> None,
    tuples -> lists, Paths -> str. Anything else unknown is left for json to reject."""
    if isinstance(obj, dict):
        return {(k if isinstance(k, str) else str(json_safe(k))): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    # numpy without importing it: arrays have tolist(), scalars item().
    if hasattr(obj, "tolist") and hasattr(obj, "dtype"):
        return json_safe(obj.tolist())
    if hasattr(obj, "item") and hasattr(obj, "dtype"):
        return json_safe(obj.item())
    return obj


def write_json(path, obj: Any, indent: int | None = 1) -> Path:
    """Write strict JSON of json_safe(obj) atomically. Raises TypeError for values JSON cannot hold."""
    text = json.dumps(json_safe(obj), indent=indent, allow_nan=False)
    return write_atomic(path, text + "\n")


def _reject_constant(name: str):
    raise ValueError(f"non-standard JSON constant {name}")


def read_json(path, what: str, hint: str = "delete it or run with --force") -> Any:
    """Parse the JSON file `path`. A missing file raises FileNotFoundError; an unreadable or unparsable
    one raises CorruptFile("<path>: corrupt <what> (<reason>); <hint>")."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
        return json.loads(text, parse_constant=_reject_constant)
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError, ValueError) as err:  # JSONDecodeError is a ValueError
        raise CorruptFile(f"{path}: corrupt {what} ({err}); {hint}") from None


# ---- directories --------------------------------------------------------------------------------------------


def temp_sibling(path) -> Path:
    """Create and return a new empty directory `.<name>.tmp-<pid>-<random>` next to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            tmp.mkdir()
            return tmp
        except FileExistsError:
            continue


def publish_dir(tmp, final) -> Path:
    """Move directory `tmp` to `final` by rename. An existing `final` (a directory the caller vouches
    was created by this project) is renamed to `.<name>.old-...` first, put back if the move fails,
    and removed only after the new directory is in place."""
    tmp, final = Path(tmp), Path(final)
    if not tmp.is_dir():
        raise FileNotFoundError(f"cannot publish {tmp}: not a directory")
    if final.is_symlink():
        raise ValueError(f"cannot publish to {final}: it is a symbolic link; pass the directory it points to")
    if final.exists() and not final.is_dir():
        raise NotADirectoryError(f"cannot publish to {final}: it exists and is not a directory")
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
        os.rename(final, old)
    try:
        os.rename(tmp, final)
    except BaseException:
        if old is not None:
            os.rename(old, final)
        raise
    _fsync_dir(final.parent)
    if old is not None:
        try:
            shutil.rmtree(old)
        except OSError as err:
            warnings.warn(f"published {final}, but could not remove the replaced copy {old}: {err}")
    return final


# ---- sets of files ------------------------------------------------------------------------------------------


def _published(manifest: Path) -> dict[str, Any]:
    """The manifest of published files: {"files": [relative paths], "swapping": null | {...}}."""
    try:
        m = read_json(manifest, "list of published files", hint="delete it (compnn then removes no old files)")
    except FileNotFoundError:
        return {"files": [], "swapping": None}
    files = m.get("files") if isinstance(m, dict) else None
    if not isinstance(files, list) or not all(isinstance(f, str) and _relative(f) for f in files):
        raise CorruptFile(f"{manifest}: corrupt list of published files (no list of relative paths); "
                          "delete it (compnn then removes no old files)")
    swap = m.get("swapping")
    if swap is not None and not (isinstance(swap, dict) and isinstance(swap.get("from"), str)
                                 and "/" not in swap["from"] and isinstance(swap.get("files"), list)
                                 and all(isinstance(f, str) and _relative(f) for f in swap["files"])):
        raise CorruptFile(f"{manifest}: corrupt journal of an interrupted publication; delete it")
    return {"files": files, "swapping": swap}


def _relative(name: str) -> bool:
    p = Path(name)
    return bool(name) and not p.is_absolute() and ".." not in p.parts and "\0" not in name


def _swap(staging: Path, dest: Path, manifest: Path, old: list[str], new: list[str]) -> list[Path]:
    for rel in new:
        src = staging / rel
        if src.is_file():  # absent: moved before an interruption
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dest / rel)
    for rel in sorted(set(old) - set(new)):
        path = dest / rel
        if path.is_file() and not path.is_symlink():
            path.unlink()
            for parent in path.relative_to(dest).parents:  # folders it leaves empty (never dest itself)
                if str(parent) == ".":
                    break
                with contextlib.suppress(OSError):
                    (dest / parent).rmdir()
    _fsync_dir(dest)
    write_json(manifest, {"files": new, "swapping": None})
    shutil.rmtree(staging, ignore_errors=True)  # only empty folders are left in it
    return [dest / rel for rel in new]


def publish_files(staging, dest, manifest) -> list[Path]:
    """Move every file under the complete directory `staging` to the same relative path under `dest`
    (replacing files there), remove the files the previous publication listed in `manifest` that this
    one lacks, record this one, and remove `staging`; returns the published paths. Before anything
    moves, every destination is checked (a folder or a link where a file goes is refused with
    ValueError) and a journal is written to `manifest`, so an interrupted swap is completed by
    `finish_publishing`. The caller holds a lock on `dest` and built `staging` on its file system."""
    staging, dest, manifest = Path(staging), Path(dest), Path(manifest)
    new = sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file())
    if manifest.name in new:
        raise ValueError(f"cannot publish {staging}: it holds a file named like the manifest {manifest.name}")
    for rel in new:
        target = dest / rel
        for parent in reversed(target.relative_to(dest).parents[:-1]):
            if (dest / parent).is_symlink() or ((dest / parent).exists() and not (dest / parent).is_dir()):
                raise ValueError(f"cannot publish {rel} into {dest}: {dest / parent} is not a folder")
        if target.is_symlink() or (target.exists() and not target.is_file()):
            raise ValueError(f"cannot publish {rel} into {dest}: {target} exists and is not a plain file")
    old = _published(manifest)
    if old["swapping"]:
        finish_publishing(dest, manifest)
        old = _published(manifest)
    write_json(manifest, {"files": old["files"], "swapping": {"from": staging.name, "files": new}})
    return _swap(staging, dest, manifest, old["files"], new)


def finish_publishing(dest, manifest) -> list[str]:
    """Complete a publication into `dest` that was interrupted mid-swap (its journal is in `manifest`);
    returns the files it moved in, [] when none was pending. Call it holding the lock on `dest`."""
    dest, manifest = Path(dest), Path(manifest)
    m = _published(manifest)
    swap = m["swapping"]
    if not swap:
        return []
    staging = dest / swap["from"]
    if staging.is_dir():
        moved = [rel for rel in swap["files"] if (staging / rel).is_file()]
        _swap(staging, dest, manifest, m["files"], swap["files"])
        return moved
    # The staging folder is gone: every file of either set may be ours now.
    write_json(manifest, {"files": sorted(set(m["files"]) | set(swap["files"])), "swapping": None})
    return []
