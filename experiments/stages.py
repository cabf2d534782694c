"""Stage caching for the drivers: each stage's outputs live in a directory keyed by its configuration.

A stage directory is `<run_dir>/<name>-<hash of config>`; it counts as done only once `DONE.json`
(its config and wall time) was written, last. An interrupted stage is cleared and redone, except a
resumable one (training), which keeps its directory so it can continue from its checkpoints; its
`target` (the training length) is checked but left out of the key, so asking for more epochs
continues the same run instead of starting over.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from absl import logging

DONE = "DONE.json"


def config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:10]


@dataclass
class Stage:
    run_dir: Path
    name: str
    config: dict[str, Any]
    resumable: bool = False
    target: dict[str, Any] = field(default_factory=dict)   # must match too, but is not part of the key
    seconds: float = field(default=0.0, init=False)
    skipped: bool = field(default=False, init=False)

    @property
    def key(self) -> str:
        return config_hash(self.config)

    @property
    def dir(self) -> Path:
        return Path(self.run_dir) / f"{self.name}-{self.key}"

    def done(self) -> bool:
        """Finished, and for the same target (a resumable stage asked for more steps is not done)."""
        path = self.dir / DONE
        return path.exists() and json.loads(path.read_text()).get("target", {}) == self.target

    def run(self, fn: Callable[[Path], Any], *, force: bool = False) -> Any:
        """Run `fn(stage_dir)` unless the stage is done (then return None: the caller loads from `dir`)."""
        if self.done() and not force:
            self.skipped = True
            self.seconds = json.loads((self.dir / DONE).read_text()).get("seconds", 0.0)
            logging.info("stage %s: cached in %s (took %.1f s when it ran)", self.name, self.dir, self.seconds)
            return None
        if self.dir.exists() and not self.resumable:
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / DONE).unlink(missing_ok=True)
        logging.info("stage %s: running in %s", self.name, self.dir)
        start = time.perf_counter()
        result = fn(self.dir)
        self.seconds = time.perf_counter() - start
        tmp = self.dir / (DONE + ".tmp")
        tmp.write_text(json.dumps({"config": self.config, "target": self.target, "seconds": self.seconds}, indent=1, default=str))
        tmp.replace(self.dir / DONE)
        logging.info("stage %s: done in %.1f s", self.name, self.seconds)
        return result
