"""Stage caching for the driver: each stage's outputs live in a directory keyed by its configuration.

A stage directory is `<cache>/<name>-<hash of config>`, where the config holds exactly the inputs that
change the stage's output (experiments.run builds them). It counts as done only when its record
`DONE.json` (config, target, wall time, and the size of every file it produced) exists, parses, and
every recorded file is still there with its recorded size: a deleted or truncated output makes the
stage run again instead of being reported as cached.

A stage is built in a temporary sibling directory and renamed into place when it succeeded, so an
interrupted or failed run (or a failed --force) leaves the previous result untouched. The exception is
a resumable stage (training) that is continued: it works in place, because its checkpoints are what
it resumes from; its `target` (the training length) is recorded but is not part of the key, so asking
for a longer training continues the same run.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from absl import logging

from compnn_py import fsio

DONE = "DONE.json"


def config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _file_sizes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != DONE}


def _intact(files: dict[str, int], root: Path | None) -> bool:
    for name, size in files.items():
        path = Path(name) if root is None else root / name
        try:
            if path.stat().st_size != size:
                return False
        except OSError:
            return False
    return True


@dataclass
class Stage:
    run_dir: Path
    name: str
    config: dict[str, Any]
    resumable: bool = False
    state: str = field(default="not run", init=False)      # "cached", "ran", "resumed" or "not run"
    seconds: float = field(default=0.0, init=False)        # wall time in this invocation

    @property
    def key(self) -> str:
        return config_hash(self.config)

    @property
    def dir(self) -> Path:
        return Path(self.run_dir) / f"{self.name}-{self.key}"

    def record(self) -> dict[str, Any] | None:
        """The stage's DONE record, or None when it has none, or a corrupt one (then it is redone)."""
        path = self.dir / DONE
        if not path.exists():
            return None
        try:
            record = fsio.read_json(path, f"record of stage {self.name}")
        except fsio.CorruptFile as e:
            logging.warning("%s: the stage will run again", e)
            return None
        return record if isinstance(record, dict) else None

    def done(self, target: dict[str, Any] | None = None) -> bool:
        """Finished, its outputs intact, and (for a resumable stage) for the same target."""
        record = self.record()
        if record is None or (target is not None and record.get("target") != target):
            return False
        return _intact(record.get("files", {}), self.dir) and _intact(record.get("published", {}), None)

    @property
    def recorded_seconds(self) -> float:
        record = self.record()
        return float(record.get("seconds", 0.0)) if record else 0.0

    def run(self, fn: Callable[[Path], Iterable[Path] | None], *, force: bool = False,
            target: dict[str, Any] | None = None) -> bool:
        """Runs `fn(stage_dir)` unless the stage is done; returns whether it ran. `fn` may return paths of
        files it wrote outside its directory (the report's), which are then checked like its own."""
        if not force and self.done(target):
            self.state = "cached"
            logging.info("stage %s: cached in %s (took %.1f s when it ran)", self.name, self.dir,
                         self.recorded_seconds)
            return False
        # A resumable stage works in place from its first run too: its checkpoints must survive an
        # interrupt (a temporary directory would be removed with them). --force starts aside, fresh.
        in_place = self.resumable and not force
        continued = in_place and self.dir.is_dir()  # an earlier (interrupted or shorter) run is continued
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
                      "files": _file_sizes(work),
                      "published": {str(Path(p).resolve()): Path(p).stat().st_size for p in published}}
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
