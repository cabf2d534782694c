"""One tiny end-to-end run of the driver shared by the report tests of a pytest session (built once,
under pytest's session temporary directory), and the report's parts as parsed data."""

import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--task=cityscapes", "--size=32,32", "--n_train=12", "--n_query=3", "--steps=30", "--shortlist=4",
        "--coarse_k=4"]


def tiny_run(tmp_path_factory) -> Path:
    """The run directory of a tiny cityscapes run (report.html, metrics.json, ...), made on first use."""
    out = tmp_path_factory.getbasetemp() / "report_tiny_run"
    if not (out / "report.html").is_file():
        res = subprocess.run([sys.executable, "-m", "experiments.run", *TINY, f"--out_dir={out}"], cwd=ROOT,
                             capture_output=True, text=True, timeout=900)
        assert res.returncode == 0, res.stderr[-3000:]
    return out


class Page(HTMLParser):
    """Every src/href value, the legend's items' text, and the embedded JSON data of a report page."""

    def __init__(self, text: str):
        super().__init__()
        self.refs, self.legend = [], []
        self._in_legend = self._in_item = False
        self.feed(text)
        m = re.search(r"<script type='application/json' id='compnn-data'>(.*?)</script>", text, re.S)
        self.data = json.loads(m.group(1).replace("<\\/", "</")) if m else None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.refs += [v for k, v in attrs if k in ("src", "href") and v is not None]
        if tag == "ul" and a.get("id") == "legend":
            self._in_legend = True
        if self._in_legend and tag == "li":
            self._in_item = True
            self.legend.append("")

    def handle_endtag(self, tag):
        if tag == "ul":
            self._in_legend = False
        if tag == "li":
            self._in_item = False

    def handle_data(self, data):
        if self._in_item:
            self.legend[-1] += data
