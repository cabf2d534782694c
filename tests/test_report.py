"""The report a researcher reads: one self-contained page that names every class, explains Table 1 beside
the paper's numbers, keys per-class IoU by class name, and shows bias modification by city; plus the
page's building blocks and the analyses' measures on hand-made cases."""

import json
import re
from html import unescape
from html.parser import HTMLParser

import numpy as np
import pytest

from compnn_py import metrics
from experiments import paper_numbers, report_page
from experiments.steps import analyses

from report_run import Page, tiny_run
from tiny_export import make_export

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
    chart = report_page.line_chart("t<1>", {"one": [(1, 2.0), (2, 3.0), (3, 1.0)], "two": [(1, 1.0), (3, 2.0)]},
                                   x_label="step")
    assert chart.count("<svg") == 1 and chart.count("<polyline") == 2 and chart.count("<circle") == 5
    # Title and series names are HTML around the SVG; axis words are SVG text at 13 px, never scaled.
    assert chart.startswith("<figure class='chart'><figcaption>t&lt;1&gt;</figcaption><svg")
    assert "<li><span class='sw' style='background:#1f77b4'></span>one</li>" in chart and "font-size='13'" in chart
    assert "viewBox" not in chart and ">step</text>" in chart
    assert report_page.line_chart("empty", {"a": []}) == ""
    # "</script>" inside embedded data must not end the data block early.
    e = report_page.QueryEntry("q", [], 0, np.zeros((1, 1), np.int32), np.zeros((1, 1), np.int32),
                               np.zeros((1, 1), np.int32), 1, (1, 1))
    blob = report_page._data_json([e], {0: report_page.TrainImage("</script>")}, ["x"])
    assert "</script" not in blob and json.loads(blob.replace("<\\/", "</"))["train"]["0"]["id"] == "</script>"


class Folds(HTMLParser):
    """Every <details> of a page: (id, class, open), and the text each figure caption holds."""

    def __init__(self, text: str):
        super().__init__()
        self.details, self.captions, self._cap = [], [], 0
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "details":
            self.details.append((a.get("id"), a.get("class"), "open" in a))
        if tag == "figcaption":
            self._cap += 1
            self.captions.append("")

    def handle_endtag(self, tag):
        if tag == "figcaption":
            self._cap -= 1

    def handle_data(self, data):
        if self._cap:
            self.captions[-1] += data


def test_sections_fold_with_legend_table1_and_the_first_query_open(run):
    _, text, _ = run
    folds = Folds(text)
    sections = {i: is_open for i, cls, is_open in folds.details if cls == "sec"}
    assert {"legend", "table1", "queries", "matching", "reconstruction", "run"} <= set(sections)
    assert {i for i, is_open in sections.items() if is_open} == {"legend", "table1", "queries"}
    queries = [(i, is_open) for i, cls, is_open in folds.details if cls == "q"]
    assert queries == [("query-0", True), ("query-1", False), ("query-2", False)]
    assert ("per-class", "sub", False) in folds.details  # the long per-class table is folded inside Table 1


def test_figure_words_are_html_and_pngs_carry_only_pictures(run):
    """Titles, colour-scale ends and captions of every analysis figure are text in the page; the figure
    PNGs are grids of pictures with white gutters and no band of title text."""
    from PIL import Image

    out, text, _ = run
    folds = Folds(text)
    analyses_dir = next((out / "cache").glob("analyses-*"))
    figs = [f for q in json.loads((analyses_dir / "analyses.json").read_text())["queries"] for f in q["figures"]]
    assert {f["kind"] for f in figs} >= {"reconstruction", "correspondence", "bias", "activation", "layer_sweep"}
    for f in figs:
        lay = f["layout"]
        for title in filter(None, lay["titles"]):
            assert title in folds.captions, (f["file"], title)
        assert f["caption"] in folds.captions
        if f["kind"] == "activation":
            assert lay["colour_scale"] and all(end in text for end in lay["colour_scale"])
        img = np.asarray(Image.open(out / "figures" / f["file"]).convert("RGB"))
        (h, w), pad, ncols = lay["cell"], lay["pad"], lay["ncols"]
        nrows = -(-len(lay["titles"]) // ncols)
        assert img.shape[:2] == (nrows * (h + pad) + pad, ncols * (w + pad) + pad), f["file"]
        for r in range(nrows + 1):  # every horizontal gutter is blank: no text between picture rows
            y = r * (h + pad)
            assert (img[y:y + pad] == 255).all(), (f["file"], r)
    panel = np.asarray(Image.open(out / "panels" / "000.png").convert("RGB"))
    assert panel.shape[0] == 4 + 128 + 4  # one row of 32 px pictures upscaled to 128, no title band
    for words in ("training images used", "layer (see list)", "from city=A"):
        assert words in text


def test_export_size_sentence_says_which_layers_are_written(run):
    out, text, _ = run
    exp = json.loads(next((out / "cache").glob("export-*/export.json")).read_text())
    n = len(exp["layers"])
    assert (f"Each store holds {n} layers, only the layers this run's matching and analyses read "
            f"(--export_layers=used), plus the images, labels and CNN outputs") in unescape(text)
    assert "every layer written" not in text  # the old sentence contradicted --export_layers=used


def test_identical_rows_are_found_and_explained(tmp_path):
    from experiments.steps import report
    from naive import naive_cosine

    t = {"Baseline CNN": {"a": 1.0}, "CompNN (SS)": {"a": 0.5}, "Global Bottleneck NN (SS)": {"a": 0.25},
         "Global Decode2 NN (SS)": {"a": 0.25}, "Global Bottleneck NN (O)": {"a": 0.5}}
    assert report.identical_rows(t) == [["CompNN (SS)", "Global Bottleneck NN (O)"],
                                        ["Global Bottleneck NN (SS)", "Global Decode2 NN (SS)"]]
    db, query = make_export(tmp_path)
    same = np.zeros((4, 16, 16), np.uint8)
    outputs = {"CompNN_(SS)": same, "Global_Bottleneck_NN_(O)": same + 1,
               "Global_Bottleneck_NN_(SS)": same, "Global_Decode2_NN_(SS)": same}
    html = unescape(report._identical_rows_html(t, outputs, db, query))
    assert "Identical rows: CompNN (SS) and Global Bottleneck NN (O): their predictions differ, but score the " \
           "same." in html
    assert "Identical rows: CompNN (SS) and Global Bottleneck NN (O): they score the same." in unescape(
        report._identical_rows_html(t, {k: v for k, v in outputs.items() if k != "CompNN_(SS)"}, db, query))
    # The global rows' reason, against a naive reference: the nearest training image by each whole map.
    ms = db.metadata["match_spec"]
    flat = {lay: (np.asarray(query.layer(lay)).reshape(4, -1), np.asarray(db.layer(lay)).reshape(len(db), -1))
            for lay in (ms["global"], ms["decode2"])}
    picks = {lay: naive_cosine(q, d).argmax(axis=1) for lay, (q, d) in flat.items()}
    differ = int((picks[ms["global"]] != picks[ms["decode2"]]).sum())
    if differ:
        assert f"differ for {differ} of 4 query images, but those images' outputs are identical" in html
    else:
        assert "for each of the 4 query images, the training image nearest by the whole" in html
    # Forcing the same pick: every query's two layers are copies of training image 5's.
    from compnn_py.store import ActivationStore

    db2, _ = make_export(tmp_path / "copy")
    for lay in (ms["global"], ms["decode2"]):
        q = np.load(tmp_path / "copy" / "query" / f"{lay}.npy", mmap_mode="r+")
        q[:] = np.asarray(db2.layer(lay))[5]
        q.flush()
        del q
    html = unescape(report._identical_rows_html(t, outputs, db2, ActivationStore.open(tmp_path / "copy" / "query")))
    assert ("for each of the 4 query images, the training image nearest by the whole glob map is also the one "
            "nearest by the whole fine map (t5, t5, t5, t5), and a global NN copies that image's whole output") in html
