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

__all__ = ["Busy", "CorruptFile", "exclusive_lock", "json_safe", "publish_dir", "read_json", "temp_sibling",
           "write_atomic", "write_json"]


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
