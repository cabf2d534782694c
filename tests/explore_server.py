"""Helpers for the explorer tests: a run directory around tests/tiny_export.py's stores (no TensorFlow),
and the explorer started as a subprocess on a free port, ready once it prints its URL."""

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from tiny_export import make_export

ROOT = Path(__file__).resolve().parents[1]


def _done(d: Path, config: dict) -> None:
    (d / "DONE.json").write_text(json.dumps({"config": config, "target": None, "seconds": 0.0, "files": {},
                                             "published": {}}))


def fake_run(root: Path, *, sources=None) -> Path:
    """<root>/run with cache/export-e1 (tiny stores) and cache/compnn-c1 (metrics.json, sources.npy:
    `sources` (Q, 3, 8, 8) or a fixed pattern); no train stage, so uploads cannot run."""
    run = root / "run"
    export = run / "cache" / "export-e1"
    export.mkdir(parents=True)
    db, query = make_export(export, n_train=7, n_query=3)
    _done(export, {"data": "d1", "train": "t1"})
    compnn = run / "cache" / "compnn-c1"
    compnn.mkdir()
    if sources is None:
        h, w = db.layer("fine").shape[1:3]
        yy, xx = np.mgrid[:h, :w]
        sources = np.stack([np.stack([(yy + xx + q) % len(db), (yy * 3) % h, (xx * 5) % w]) for q in range(len(query))])
    np.save(compnn / "sources.npy", np.asarray(sources, dtype=np.int32))
    (compnn / "metrics.json").write_text(json.dumps({"table1_matching": "shortlist"}))
    _done(compnn, {"export": "e1"})
    return run


class Server:
    """`python -m experiments.explore --out_dir=RUN --port=0` in a subprocess; `url` once it listens."""

    def __init__(self, run: Path, *extra: str, sigint_ignored: bool = False):
        # stderr (one log line per request) goes to a file: a pipe nobody reads would fill and block it.
        self.log = tempfile.TemporaryFile(mode="w+")
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen([sys.executable, "-m", "experiments.explore", f"--out_dir={run}", "--port=0",
                                      *extra], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=self.log,
                                     text=True,
                                     # as a shell starts `cmd &` without job control: SIGINT ignored
                                     preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
                                     if sigint_ignored else None)
        self.lines = []
        for line in self.proc.stdout:  # the ready signal: the line with the URL
            self.lines.append(line)
            m = re.search(r"(http://[\d.]+:\d+)/", line)
            if m:
                self.url = m.group(1)
                return
        self.proc.wait(timeout=60)
        self.log.seek(0)
        raise RuntimeError(f"the explorer did not start: {self.log.read()[-3000:]}")

    def get(self, path: str):
        """(status, parsed JSON or raw bytes)."""
        try:
            with urllib.request.urlopen(self.url + path, timeout=120) as r:
                body, status, kind = r.read(), r.status, r.headers.get_content_type()
        except urllib.error.HTTPError as e:
            body, status, kind = e.read(), e.code, e.headers.get_content_type()
        return status, json.loads(body) if kind == "application/json" else body

    def upload(self, data: bytes, filename: str = "x.png"):
        boundary = "----compnn-test-boundary"
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{filename}\"\r\n"
                f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
        req = urllib.request.Request(self.url + "/api/upload", data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        try:
            with urllib.request.urlopen(req, timeout=600) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def stop(self) -> tuple[int, str]:
        """Ctrl-C (SIGINT) and wait: (exit status, rest of stdout)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        out, _ = self.proc.communicate(timeout=300)  # a bound, not a wait: under load TensorFlow exits slowly
        return self.proc.returncode, out
