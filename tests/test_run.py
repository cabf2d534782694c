"""The driver end to end on a tiny configuration: every promised file, caching, and bad invocations."""

import csv
import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("tensorflow")

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--task=cityscapes", "--size=32,32", "--n_train=12", "--n_query=3", "--steps=30", "--shortlist=4",
        "--coarse_k=4"]
ROWS = ["Baseline CNN", "CompNN (SS)", "CompNN (O)", "Global Bottleneck NN (SS)", "Global Bottleneck NN (O)",
        "Global Decode2 NN (SS)", "Global Decode2 NN (O)"]


def _run(*args):
    return subprocess.run([sys.executable, "-m", "experiments.run", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)


class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs = []

    def handle_starttag(self, tag, attrs):
        self.refs += [v for k, v in attrs if k in ("src", "href") and v]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    first = _run(*TINY, f"--out_dir={out}")
    assert first.returncode == 0, first.stderr[-3000:]
    second = _run(*TINY, f"--out_dir={out}")
    assert second.returncode == 0, second.stderr[-3000:]
    return out, first, second


def test_every_promised_file_is_well_formed(tiny_run):
    out, _, _ = tiny_run
    with open(out / "table1.csv") as f:
        rows = list(csv.reader(f))
    assert [r[0] for r in rows[1:]] == ROWS
    values = np.array([[float(v) for v in r[1:]] for r in rows[1:]])
    assert np.isfinite(values).all() and (values >= 0).all() and (values <= 1).all()
    # The CNN agrees perfectly with itself: the agreement columns of the baseline row are 1.
    agree = [i for i, name in enumerate(rows[0][1:]) if name.startswith("agree_")]
    assert agree and np.allclose(values[0, agree], 1.0)
    md = (out / "table1.md").read_text()
    assert all(r in md for r in ROWS)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["synthetic_data"] is True
    # Activation prediction at two depths of the decoder (the registry's layer pairs), per analysed query.
    acts = metrics["analyses"]["queries"][0]["activation_prediction"]
    assert [(a["source"], a["target"]) for a in acts] == [("decoder_3_input", "decoder_3"),
                                                          ("decoder_2_input", "decoder_2")]
    assert all(np.isfinite(a["compositional"]["relative_l2"]) and a["compositional"]["relative_l2"] >= 0
               for a in acts)
    assert set(metrics["seconds_per_image"]) == {"exact", "shortlist", "hierarchical"}
    assert 0 <= metrics["hierarchical_vs_exact"]["within_shortlist"]["same_label"] <= 1
    pngs = list((out / "panels").glob("*.png")) + list((out / "figures").glob("*.png"))
    assert len(pngs) >= 6 + 5
    for p in pngs:
        with Image.open(p) as im:
            im.verify()
    parser = _Refs()
    parser.feed((out / "report.html").read_text())
    assert parser.refs, "the report references no files"
    for ref in parser.refs:  # self-contained: pictures embedded, links within the page
        assert ref.startswith(("data:", "#")), f"report.html references another file: {ref[:80]}"
    # The hover data, embedded: each query's sources name training images the page embeds.
    html = (out / "report.html").read_text()
    data = json.loads(re.search(r"id='compnn-data'>(.*?)</script>", html, re.S).group(1).replace("<\\/", "</"))
    q = data["queries"][0]
    assert len(q["image"]) == q["h"] * q["w"]
    for row in set(q["image"]):
        assert str(row) in data["train"]


def test_second_run_uses_the_caches(tiny_run):
    _, first, second = tiny_run
    assert " cached " not in first.stdout
    lines = [l for l in second.stdout.splitlines() if l.startswith("  ") and l.split()[0] in
             ("data", "train", "export", "compnn", "analyses", "report")]
    assert len(lines) == 6 and all(" cached " in l for l in lines), second.stdout


def test_a_piped_log_holds_progress_lines_and_no_tensorflow_chatter(tiny_run):
    _, first, _ = tiny_run
    assert "\r" not in first.stderr  # no redrawn bar frames in a pipe
    assert re.search(r"^pix2pix: 30/30 step \(100%\), .*done in", first.stderr, re.M), first.stderr[-3000:]
    for chatter in ("oneDNN custom operations", "remapper failed", "Sharding callback duration",
                    "cpu_feature_guard", "absl::InitializeLog"):
        assert chatter not in first.stderr, chatter


def test_a_cached_run_imports_no_tensorflow(tiny_run):
    out, _, _ = tiny_run
    code = ("import sys\nfrom experiments import run\n"
            f"rc = run.cli(['run', *{TINY!r}, '--out_dir={out}'])\n"
            "print('IMPORTED', 'tensorflow' in sys.modules, 'keras' in sys.modules)\nsys.exit(rc)")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count(" cached ") == 6 and res.stdout.splitlines()[-1] == "IMPORTED False False"


@pytest.mark.parametrize("args, message", [
    (["--task=nonsense"], "task"),
    (["--task=cityscapes", "--data_dir=/definitely/not/here"], "does not exist"),
    (["--task=cityscapes", "--size=30,30"], "power-of-two"),
    (["--task=cityscapes", "--stages=report"], "needed"),
])
def test_bad_invocations_fail_with_one_clear_line(tmp_path, args, message):
    res = _run(*args, f"--out_dir={tmp_path / 'out'}")
    assert res.returncode != 0
    assert message in res.stderr
    assert "Traceback" not in res.stderr


def test_wrong_layout_and_wrong_checkpoint_fail_cleanly(tmp_path, tiny_run):
    out, _, _ = tiny_run
    empty = tmp_path / "empty_dataset"
    empty.mkdir()
    res = _run(*TINY, f"--data_dir={empty}", f"--out_dir={tmp_path / 'a'}")
    assert res.returncode == 2 and "Traceback" not in res.stderr and str(empty) in res.stderr
    # A Pix2Pix checkpoint handed to the SegNet task.
    ckpt = next((out / "cache").glob("train-*"))
    res = _run("--task=camvid", f"--checkpoint={ckpt}", "--n_train=4", "--n_query=1", "--shortlist=2",
               f"--out_dir={tmp_path / 'b'}")
    assert res.returncode == 2 and "pix2pix" in res.stderr and "Traceback" not in res.stderr
    # Results of the earlier run are untouched.
    assert (out / "report.html").is_file() and (out / "table1.csv").is_file()
