"""Stage caching for the driver: each stage's outputs live in a directory keyed by its configuration.

A stage directory is `<cache>/<name>-<hash of config>`, where the config holds exactly the inputs that
change the stage's output (experiments.run builds them). Its record `DONE.json` holds the config, the
target, the wall time, a completion `id` (new each time the stage is built; kept when a resumable stage is continued), the `inputs` (the
completion ids of the stages it read, `Stage.inputs`), and every file it produced with its size,
mtime and SHA-256. The stage counts as done only when the record parses and has that shape, every
recorded file is intact, and every input stage is itself done with the completion id recorded here:
so a deleted, truncated or rewritten output, or a rebuilt (e.g. --force'd) upstream stage, makes the
stage run again instead of being reported as cached.

Checking a file: when its size and mtime (ns) equal the recorded ones it is taken as intact without
reading it (a stat per file keeps a plan cheap on large exports); when either differs, the file is
hashed and compared with the recorded digest (so a same-size rewrite is caught, and a file merely
touched still counts). SHA-256 because it runs at about 850 MB/s here (hardware SHA), twice blake2b;
digests are memoised per process. Not caught: a change that also restores the size and the mtime
(e.g. bit rot under the file system); the store's own open() checks still catch shape damage.

A stage is built in a temporary sibling directory and renamed into place when it succeeded, so an
interrupted or failed run (or a failed --force) leaves the previous result untouched. The exception is
a resumable stage (training) that is continued: it works in place, because its checkpoints are what
it resumes from; its `target` (the training length) is recorded but is not part of the key, so asking
for a longer training continues the same run. A recorded resumable stage whose files were damaged or
whose inputs were rebuilt is not continued: it is rebuilt aside from scratch.

`clean(cache, keep)` removes the stage directories no current key points to: only directories named
like a stage whose DONE.json is a record of that very key (so, directories this module wrote).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from absl import logging

from compnn_py import fsio

DONE = "DONE.json"
STAGE_DIR = re.compile(r"^(data|train|export|compnn|analyses|report)-([0-9a-f]{10})$")
_digests: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256, per process


def config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:10]


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes (memoised by path, size and mtime)."""
    st = os.stat(path)
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _digests:
        with open(path, "rb") as f:
            _digests[key] = hashlib.file_digest(f, "sha256").hexdigest()
    return _digests[key]


def file_record(path: Path) -> dict[str, Any]:
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": file_digest(path)}


def _file_records(root: Path) -> dict[str, dict[str, Any]]:
    return {str(p.relative_to(root)): file_record(p) for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != DONE}


def _intact(files: dict[str, Any], root: Path | None) -> bool:
    for name, rec in files.items():
        path = Path(name) if root is None else root / name
        try:
            st = os.stat(path)
            if isinstance(rec, int):  # a record of an older compnn: sizes only
                if st.st_size != rec:
                    return False
                continue
            if st.st_size != rec["size"] or not os.path.isfile(path):
                return False
            if st.st_mtime_ns != rec.get("mtime_ns") and file_digest(path) != rec["sha256"]:
                return False
        except OSError:
            return False
    return True


def _valid_files(files: Any) -> bool:
    def entry(v):
        return (isinstance(v, int) and not isinstance(v, bool)) or (
            isinstance(v, dict) and isinstance(v.get("size"), int) and isinstance(v.get("sha256"), str))

    return isinstance(files, dict) and all(isinstance(k, str) and entry(v) for k, v in files.items())


def _shape_problem(record: Any) -> str | None:
    """What is wrong with a parsed DONE record's shape, or None."""
    if not isinstance(record, dict):
        return f"expected a JSON object, got {type(record).__name__}"
    for key in ("files", "published"):
        if key in record and not _valid_files(record[key]):
            return f"'{key}' must map file names to sizes/digests, got {type(record[key]).__name__}"
    if "files" not in record:
        return "it lacks 'files'"
    if not isinstance(record.get("seconds", 0.0), (int, float)):
        return "'seconds' is not a number"
    if "inputs" in record and not (isinstance(record["inputs"], dict) and
                                   all(isinstance(v, (str, type(None))) for v in record["inputs"].values())):
        return "'inputs' must map stage names to completion ids"
    return None


@dataclass
class Stage:
    run_dir: Path
    name: str
    config: dict[str, Any]
    resumable: bool = False
    inputs: list["Stage"] = field(default_factory=list)     # the stages whose outputs this one reads
    state: str = field(default="not run", init=False)      # "cached", "ran", "resumed" or "not run"
    seconds: float = field(default=0.0, init=False)        # wall time in this invocation

    @property
    def key(self) -> str:
        return config_hash(self.config)

    @property
    def dir(self) -> Path:
        return Path(self.run_dir) / f"{self.name}-{self.key}"

    def record(self) -> dict[str, Any] | None:
        """The stage's DONE record, or None when it has none, or a corrupt one (then it is redone,
        after one warning line naming the file)."""
        path = self.dir / DONE
        if not path.exists():
            return None
        try:
            record = fsio.read_json(path, f"record of stage {self.name}")
        except fsio.CorruptFile as e:
            logging.warning("%s: the stage will run again", e)
            return None
        problem = _shape_problem(record)
        if problem:
            logging.warning("%s: malformed record of stage %s (%s); the stage will run again", path, self.name,
                            problem)
            return None
        return record

    def completion_id(self) -> str | None:
        record = self.record()
        return record.get("id") if record else None

    def _inputs_current(self, record: dict[str, Any]) -> bool:
        """Every input stage is done, with the completion id this stage read (records of an older
        compnn hold no `inputs`: only the inputs' own state is checked then)."""
        if not all(up.done() for up in self.inputs):
            return False
        recorded = record.get("inputs")
        return recorded is None or recorded == {up.name: up.completion_id() for up in self.inputs}

    def done(self, target: dict[str, Any] | None = None) -> bool:
        """Finished, its outputs intact, its inputs unchanged, and (for a resumable stage) for the same target."""
        record = self.record()
        if record is None or (target is not None and record.get("target") != target):
            return False
        return (_intact(record["files"], self.dir) and _intact(record.get("published", {}), None)
                and self._inputs_current(record))

    def _damaged_or_stale(self) -> bool:
        """A recorded stage whose own files were damaged or whose inputs were rebuilt (not merely
        one for another target): not to be continued in place."""
        record = self.record()
        return record is not None and not (_intact(record["files"], self.dir) and self._inputs_current(record))

    @property
    def recorded_seconds(self) -> float:
        record = self.record()
        return float(record.get("seconds", 0.0)) if record else 0.0

    def run(self, fn: Callable[[Path], Iterable[Path] | None], *, force: bool = False,
            target: dict[str, Any] | None = None, resumes_from: Callable[[Path], bool] | None = None) -> bool:
        """Runs `fn(stage_dir)` unless the stage is done; returns whether it ran. `fn` may return paths of
        files it wrote outside its directory (the report's), which are then checked like its own.
        `resumes_from(dir)` says whether a resumable stage's directory holds work to continue (for
        the "resumed" state; default: the directory exists)."""
        if not force and self.done(target):
            self.state = "cached"
            logging.info("stage %s: cached in %s (took %.1f s when it ran)", self.name, self.dir,
                         self.recorded_seconds)
            return False
        # A resumable stage works in place from its first run too: its checkpoints must survive an
        # interrupt (a temporary directory would be removed with them). --force, damaged files or
        # rebuilt inputs start aside, fresh.
        fresh = force or self._damaged_or_stale()
        in_place = self.resumable and not fresh
        continued = in_place and self.dir.is_dir() and (resumes_from is None or resumes_from(self.dir))
        inputs = {up.name: up.completion_id() for up in self.inputs}
        # A continued stage keeps its completion id: the outputs that later stages keyed by the
        # shorter target read are still what they were (those stages' keys hold the target).
        completion = (self.completion_id() if continued else None) or \
            f"{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(6)}"
        work = self.dir if in_place else fsio.temp_sibling(self.dir)
        logging.info("stage %s: %s in %s", self.name, "continuing" if continued else "running", self.dir)
        start = time.perf_counter()
        try:
            if in_place:
                self.dir.mkdir(parents=True, exist_ok=True)
                (self.dir / DONE).unlink(missing_ok=True)
            published = fn(work) or ()
            self.seconds = time.perf_counter() - start
            record = {"config": self.config, "target": target, "seconds": self.seconds,
                      "id": completion, "inputs": inputs,
                      "files": _file_records(work),
                      "published": {str(Path(p).resolve()): file_record(Path(p)) for p in published}}
            fsio.write_json(work / DONE, record)
        except BaseException:
            if not in_place:
                shutil.rmtree(work, ignore_errors=True)  # our own temporary directory, never published
            raise
        if not in_place:
            fsio.publish_dir(work, self.dir)
        self.state = "resumed" if continued else "ran"
        logging.info("stage %s: done in %.1f s", self.name, self.seconds)
        return True


def remove_stale_temporaries(cache: Path) -> None:
    """Temporary stage directories left by a killed run (the caller holds the run's lock, so no live
    run owns them); they match only the names fsio.temp_sibling gives."""
    if cache.is_dir():
        for tmp in [*cache.glob(".*.tmp-*"), *cache.glob(".*.old-*")]:
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)


def clean(cache: Path, keep: Iterable[Path]) -> tuple[list[Path], list[Path]]:
    """Removes the stage directories under `cache` that no current key points to (`keep`); returns
    (removed, kept_unknown). Only a directory named `<stage>-<10 hex>` whose DONE.json is a record of
    exactly that key is removed; a stage-named directory without such a record (an interrupted
    training, something of the user's) is left and listed in kept_unknown. The caller holds the
    run's lock."""
    keep = {Path(k).resolve() for k in keep}
    removed, unknown = [], []
    if not cache.is_dir():
        return removed, unknown
    for d in sorted(cache.iterdir()):
        m = STAGE_DIR.match(d.name)
        if not m or d.is_symlink() or not d.is_dir() or d.resolve() in keep:
            continue
        try:
            record = fsio.read_json(d / DONE, "stage record")
            ours = isinstance(record, dict) and isinstance(record.get("config"), dict) and \
                config_hash(record["config"]) == m.group(2)
        except (FileNotFoundError, fsio.CorruptFile):
            ours = False
        if not ours:
            unknown.append(d)
            continue
        shutil.rmtree(d)
        removed.append(d)
    return removed, unknown
