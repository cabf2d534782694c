"""The report a researcher reads: one self-contained page that names every class, explains Table 1 beside
the paper's numbers, keys per-class IoU by class name, and shows bias modification by city; plus the
page's building blocks and the analyses' measures on hand-made cases."""

import json
import re

import numpy as np
import pytest

from compnn_py import metrics
from experiments import paper_numbers, report_page
from experiments.steps import analyses

from report_run import Page, tiny_run

NAMES = __import__("compnn_py.data", fromlist=["TASKS"]).TASKS["cityscapes"].class_names


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    pytest.importorskip("tensorflow")
    out = tiny_run(tmp_path_factory)
    text = (out / "report.html").read_text()
    return out, text, Page(text)


def test_legend_names_every_class(run):
    _, _, page = run
    assert len(NAMES) == 19
    items = [t.strip() for t in page.legend]
    for name in NAMES:
        assert name in items, f"legend lacks {name}: {items}"


def test_page_references_no_other_file(run):
    _, text, page = run
    assert page.refs
    for ref in page.refs:
        assert ref.startswith("data:") or ref.startswith("#"), f"report.html references {ref[:80]}"
    assert "url(" not in text  # no stylesheet-loaded files either
    # Every picture is embedded, and every anchor the navigation names exists.
    assert all(r.startswith("data:image/png;base64,") for r in page.refs if not r.startswith("#"))
    ids = set(re.findall(r"id='([^']+)'", text))
    assert {r[1:] for r in page.refs if r.startswith("#")} <= ids


def test_embedded_sources_point_at_embedded_training_images(run):
    out, _, page = run
    metrics_json = json.loads((out / "metrics.json").read_text())
    q = page.data["queries"][0]
    assert len(q["image"]) == q["h"] * q["w"] and q["H"] == q["h"] * q["stride"] == 32
    for row in set(q["image"]):
        t = page.data["train"][str(row)]
        assert {"photo", "copied", "label"} <= set(t["pictures"]) and t["id"]
    assert page.data["class_names"] == list(NAMES)
    assert metrics_json["n_query"] == 3


def test_metrics_name_the_classes_and_table1_shows_the_paper(run):
    out, text, _ = run
    m = json.loads((out / "metrics.json").read_text())
    pc = m["per_class_iou"]
    assert set(pc) == set(metrics.TABLE1_ROWS)
    assert all(list(v) == list(NAMES) for v in pc.values())
    # The paper's CityScape numbers sit beside ours, and the columns are named and explained.
    paper = paper_numbers.table1("cityscapes")
    assert f"{paper['CompNN (SS)'][0]:.3f}" in text and f"{paper['Global Decode2 NN (O)'][1]:.3f}" in text
    for words in ("Global pixel accuracy", "Mean class accuracy", "Mean IoU", "self-supervised",
                  "Pixels agreeing with CNN"):
        assert words in text
    assert "pixel_acc" not in text.split("<script")[0]


def test_bias_modification_splits_by_city_and_measures_the_change(run):
    out, text, _ = run
    a = json.loads(next((out / "cache").glob("analyses-*/analyses.json")).read_text())
    assert a["bias_databases"] == {"city=A": 6, "city=B": 6}
    for q in a["queries"]:
        assert 0 <= q["bias"]["changed_fraction"] <= 1
        assert q["meta"]["city"] in ("A", "B")
    assert "of output pixels change between them" in text and "old town" in text


def test_paper_numbers_cover_every_row():
    for task in ("cityscapes", "camvid", "facades_labels"):
        t = paper_numbers.table1(task)
        assert list(t) == list(metrics.TABLE1_ROWS)
        assert all(0 < acc < 1 and 0 < iou < acc for acc, iou in t.values())
    assert paper_numbers.table1("camvid")["Baseline CNN"] == (0.790, 0.444)
    assert paper_numbers.table1("maps") is None and paper_numbers.table1("facades") is None


def test_changed_pixels_and_analysis_method():
    a = np.array([[0, 1], [2, 3]], np.uint8)
    b = np.array([[0, 1], [2, 4]], np.uint8)
    np.testing.assert_array_equal(analyses.changed_pixels(a, b), [[False, False], [False, True]])
    x = np.zeros((1, 3, 3), np.uint8)
    y = x.copy()
    y[0, 1, 2] = analyses.IMAGE_CHANGE + 1   # one channel past the threshold
    y[0, 2, 0] = analyses.IMAGE_CHANGE       # at the threshold: unchanged
    np.testing.assert_array_equal(analyses.changed_pixels(x, y), [[False, True, False]])
    assert analyses.analysis_method("both") == "hierarchical"
    assert analyses.analysis_method("exact") == "exact"
    with pytest.raises(ValueError, match="match_method"):
        analyses.analysis_method("fast")


def test_table_and_chart_building_blocks():
    html = report_page.table(["a<b", "x"], [["<i>", 0.5], ["y", float("nan")], ["z", None]], digits=2)
    assert "a&lt;b" in html and "&lt;i&gt;" in html and "0.50" in html and html.count("–") == 2
    svg = report_page.line_chart("t", {"one": [(1, 2.0), (2, 3.0), (3, 1.0)], "two": [(1, 1.0), (3, 2.0)]})
    assert svg.startswith("<svg") and svg.count("<polyline") == 2 and svg.count("<circle") == 5
    assert report_page.line_chart("empty", {"a": []}) == ""
    # "</script>" inside embedded data must not end the data block early.
    e = report_page.QueryEntry("q", [], 0, np.zeros((1, 1), np.int32), np.zeros((1, 1), np.int32),
                               np.zeros((1, 1), np.int32), 1, (1, 1))
    blob = report_page._data_json([e], {0: report_page.TrainImage("</script>")}, ["x"])
    assert "</script" not in blob and json.loads(blob.replace("<\\/", "</"))["train"]["0"]["id"] == "</script>"
