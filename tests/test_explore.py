"""The provenance explorer (experiments/explore.py) as a user and a script meet it: a real server process
over a run directory, its JSON API checked against a brute-force float64 numpy search over the run's
store, bad input answered with 4xx JSON while the server keeps serving, no URL reaching a file outside
the run's outputs, nothing written into the run, Ctrl-C; and an upload round trip through a real
network (a tiny trained run, TensorFlow needed)."""

import io
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from compnn_py.store import ActivationStore
from explore_server import ROOT, Server, fake_run
from naive import naive_cosine, naive_patches


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return fake_run(tmp_path_factory.mktemp("explore"))


@pytest.fixture(scope="module")
def server(run):
    s = Server(run)
    yield s
    s.stop()


def _stores(run: Path):
    export = run / "cache" / "export-e1"
    return ActivationStore.open(export / "train"), ActivationStore.open(export / "query")


def _brute_force(db, query, q, layer, y, x):
    """(N, H*W) float64 similarities of query q's patch at (y, x) to every training patch of `layer`."""
    K = int(db.layer_meta(layer)["kernel"])
    d = naive_patches(np.asarray(db.layer(layer), dtype=np.float64), K)
    qd = naive_patches(np.asarray(query.layer(layer)[q], dtype=np.float64), K)[y, x]
    return naive_cosine(qd[None], d.reshape(-1, d.shape[-1]))[0].reshape(len(db), -1)


@pytest.mark.parametrize("layer,q,y,x,k", [("fine", 0, 3, 4, 5), ("fine", 2, 0, 7, 9), ("coarse", 1, 2, 1, 4),
                                           ("glob", 0, 1, 1, 3), ("fine", 1, 7, 0, 1)])
def test_provenance_equals_brute_force(server, run, layer, q, y, x, k):
    db, query = _stores(run)
    status, a = server.get(f"/api/provenance?query={q}&y={y}&x={x}&layer={layer}&k={k}")
    assert status == 200, a
    assert a["layer"] == layer and len(a["sources"]) == k
    sims = _brute_force(db, query, q, layer, y, x)
    flat = sims.ravel()
    w = db.layer(layer).shape[2]
    order = np.lexsort((np.arange(flat.size), -flat))[:k]  # best first, ties to the lowest (row, y, x)
    got = [(s["image"], s["y"], s["x"]) for s in a["sources"]]
    want = [(int(i) // sims.shape[1], (int(i) % sims.shape[1]) // w, int(i) % w) for i in order]
    np.testing.assert_allclose([s["similarity"] for s in a["sources"]], flat[order], atol=1e-5)
    for j, (g, r) in enumerate(zip(got, want)):
        if g != r:  # only a near-tie (float32 rounding) may swap candidates
            gi = g[0] * sims.shape[1] + g[1] * w + g[2]
            assert abs(flat[gi] - flat[order[j]]) <= 1e-5, (j, g, r)
    # Ambiguity: each image's best position over the brute-force similarities.
    best = sims.max(axis=1)
    top = int(np.argmax(best))
    amb = a["ambiguity"]
    assert amb["n_images"] == len(db)
    assert amb["best"] == pytest.approx(best[top], abs=1e-5)
    other = np.delete(best, top).max()
    assert amb["other_image_best"] == pytest.approx(other, abs=1e-5)
    assert amb["gap"] == pytest.approx(best[top] - other, abs=1e-5)
    # (an image within float32 rounding of the 0.01 threshold may count either way)
    assert int((best >= best[top] - 0.01 + 1e-5).sum()) <= amb["images_within_near"] <= int(
        (best >= best[top] - 0.01 - 1e-5).sum())


def test_table1_source_rank(tmp_path):
    """Table 1's source is reported at its rank among the exact top-k, or as missing from it."""
    probe = fake_run(tmp_path / "probe")
    db, query = _stores(probe)
    sims = _brute_force(db, query, 0, "fine", 2, 5)
    flat = sims.ravel()
    order = np.lexsort((np.arange(flat.size), -flat))
    w, hw = db.layer("fine").shape[2], sims.shape[1]
    second, worst = int(order[1]), int(order[-1])
    sources = np.zeros((len(query), 3, 8, 8), np.int32)
    sources[0, :, 2, 5] = (second // hw, (second % hw) // w, second % w)
    sources[0, :, 0, 0] = (worst // hw, (worst % hw) // w, worst % w)
    run = fake_run(tmp_path / "ranked", sources=sources)
    s = Server(run)
    try:
        status, a = s.get("/api/provenance?query=0&y=2&x=5&k=5")
        assert status == 200, a
        t = a["table1"]
        assert t["method"] == "shortlist" and t["rank"] == 2
        assert t["similarity"] == pytest.approx(flat[second], abs=1e-6)
        best = sims.max(axis=1)
        assert t["image_rank"] == 1 + int((best > best[second // hw] + 1e-9).sum())
        status, a = s.get("/api/provenance?query=0&y=0&x=0&k=5")
        assert a["table1"]["rank"] is None
        status, a = s.get("/api/provenance?query=0&y=0&x=0&layer=coarse")
        assert a["table1"] is None  # Table 1 matched at the fine layer only
    finally:
        s.stop()


@pytest.mark.parametrize("path,status,words", [
    ("/api/provenance?query=0&y=8&x=0&layer=fine", 400, "y = 8 is outside [0, 7]"),
    ("/api/provenance?query=0&y=-1&x=0", 400, "y = -1"),
    ("/api/provenance?query=0&y=a&x=0", 400, "y must be an integer"),
    ("/api/provenance?query=0&y=1&x=1&layer=nope", 400, "unknown layer 'nope'"),
    ("/api/provenance?query=0&y=1&x=1&k=0", 400, "k = 0"),
    ("/api/provenance?query=0&y=1&x=1&k=101", 400, "k = 101"),
    ("/api/provenance?query=3&y=1&x=1", 404, "unknown query id '3'"),
    ("/api/provenance?query=u1&y=1&x=1", 404, "unknown query id 'u1'"),
    ("/api/provenance?query=../../etc&y=1&x=1", 404, "unknown query id"),
    ("/api/provenance?y=1&x=1", 400, "query is required"),
    ("/img/query/7/input.png", 404, "unknown query id"),
    ("/img/query/0/secret.png", 404, "no picture"),
    ("/img/train/7.png", 404, "no training image 7"),
])
def test_bad_requests_are_4xx_json(server, path, status, words):
    got, body = server.get(path)
    assert got == status and words in body["error"], (got, body)
    assert server.get("/api/info")[0] == 200  # still serving


def test_no_url_reaches_a_file_outside(server, run):
    secret = run.parent / "secret.txt"
    secret.write_text("TOP-SECRET")
    for path in ("/static/../secret.txt", "/static/..%2f..%2f..%2fsecret.txt", "/static/%2e%2e/explore.py",
                 "/static//etc/passwd", "/img/query/0/..%2f..%2fsecret.png", "/img/train/..%2f1.png",
                 "/static/../../experiments/explore.py", "/../secret.txt", "/%2e%2e/%2e%2e/etc/passwd",
                 f"/static/{secret}"):
        status, body = server.get(path)
        assert status == 404, (path, status)
        text = body if isinstance(body, bytes) else str(body).encode()
        assert b"TOP-SECRET" not in text and b"root:" not in text and b"import " not in text, path
    assert server.get("/static/explore.js")[0] == 200


def test_garbage_uploads_are_refused_and_the_server_keeps_serving(server):
    from PIL import Image

    buf = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)  # incompressible: half the
    Image.fromarray(noise).save(buf, format="PNG")                                    # file is half the pixels
    png = buf.getvalue()
    gif = io.BytesIO()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(gif, format="GIF")
    cases = [(b"", 400, "empty"), (b"not an image at all", 415, "not an image"),
             (png[: len(png) // 2], 400, "truncated"), (gif.getvalue(), 415, "GIF"),
             (_png_header(20000, 20000), 413, "megapixels"), (_png_header(9000, 5000), 413, "45 megapixels")]
    for data, status, words in cases:
        got, body = server.upload(data)
        assert got == status and words in body["error"], (words, got, body)
        assert server.get("/api/provenance?query=0&y=1&x=1")[0] == 200
    # A valid image, but this run has no network to run (no train stage): a clear 409, not a crash.
    got, body = server.upload(png)
    assert got == 409 and "network" in body["error"], body
    assert server.get("/api/info")[0] == 200


def _png_header(w: int, h: int) -> bytes:
    """A PNG whose header claims w x h pixels (its data is tiny and wrong)."""
    import struct
    import zlib

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def test_concurrent_clicks_all_answered_alike(server):
    paths = [f"/api/provenance?query={q}&y={y}&x={y}&k=6" for q in range(3) for y in (0, 5)] * 3
    results = [None] * len(paths)

    def click(i):
        results[i] = server.get(paths[i])

    threads = [threading.Thread(target=click, args=(i,)) for i in range(len(paths))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r[0] == 200 for r in results)
    for i, p in enumerate(paths):
        first = results[paths.index(p)][1]
        assert results[i][1]["sources"] == first["sources"]


def test_info_page_and_pictures(server):
    status, info = server.get("/api/info")
    assert status == 200 and info["n_train"] == 7 and info["fine"] == "fine"
    assert [q["id"] for q in info["queries"]] == ["0", "1", "2"]
    assert {l["name"]: l["kernel"] for l in info["layers"]} == {"glob": 1, "coarse": 2, "fine": 3}
    status, page = server.get("/")
    assert status == 200 and b"compnn explorer" in page
    for what in ("input", "cnn", "compnn", "compnn_o", "labels"):
        status, body = server.get(f"/img/query/1/{what}.png")
        assert status == 200 and body[:4] == b"\x89PNG", what


def test_nothing_written_into_the_run_and_ctrl_c_stops(tmp_path):
    run = fake_run(tmp_path)
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    s = Server(run)
    for path in ("/api/info", "/api/provenance?query=0&y=1&x=1&layer=coarse", "/img/query/0/compnn.png"):
        assert s.get(path)[0] == 200
    s.upload(b"garbage")
    code, out = s.stop()
    assert code == 0 and "stopped" in out
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before


def test_ctrl_c_stops_a_server_started_with_sigint_ignored(tmp_path):
    """A background job of a script (`python -m experiments.explore ... &`) starts with SIGINT ignored; the
    explorer still stops on it (before, it kept serving and the caller waited forever)."""
    s = Server(fake_run(tmp_path), sigint_ignored=True)
    assert s.get("/api/info")[0] == 200
    code, out = s.stop()
    assert code == 0 and "stopped" in out


def _explore(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "experiments.explore", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_a_run_without_export_is_refused_in_one_line(tmp_path):
    (tmp_path / "run" / "cache" / "data-x").mkdir(parents=True)
    res = _explore(f"--out_dir={tmp_path / 'run'}", "--port=0")
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "has no finished export stage" in res.stderr, res.stderr
    res = _explore(f"--out_dir={tmp_path / 'nothing'}", "--port=0")
    assert res.returncode == 2 and "is not a compnn run directory" in res.stderr
    res = _explore(f"--out_dir={tmp_path / 'run'}", "--port=70000")
    assert res.returncode == 2 and "--port must be in [0, 65535]" in res.stderr


# ---- a real network: upload round trip -------------------------------------------------------------

@pytest.fixture(scope="module")
def real_server(tmp_path_factory):
    pytest.importorskip("tensorflow")
    from report_run import tiny_run

    s = Server(tiny_run(tmp_path_factory))
    yield s
    s.stop()


def test_upload_round_trip(real_server):
    """A query image of the run, uploaded as a PNG, goes through the run's network and matcher again and
    comes back with the same CNN output and the same exact sources as the exported query."""
    status, info = real_server.get("/api/info")
    status, png = real_server.get("/img/query/0/input.png")
    assert status == 200
    status, up = real_server.upload(png, "query0.png")
    assert status == 200, up
    uid = up["query"]
    assert uid.startswith("u") and up["matcher"] == info["table1_matching"]
    assert uid in [q["id"] for q in real_server.get("/api/info")[1]["queries"]]
    from PIL import Image

    def picture(q, what):
        return np.asarray(Image.open(io.BytesIO(real_server.get(f"/img/query/{q}/{what}.png")[1])))

    np.testing.assert_array_equal(picture(uid, "input"), picture("0", "input"))
    assert (picture(uid, "cnn") == picture("0", "cnn")).all(axis=-1).mean() > 0.99
    assert (picture(uid, "compnn") == picture("0", "compnn")).all(axis=-1).mean() > 0.9
    h, w = next(layer["grid"] for layer in info["layers"] if layer["name"] == info["fine"])
    for y, x in ((0, 0), (h // 2, w // 3), (h - 1, w - 1)):
        a = real_server.get(f"/api/provenance?query=0&y={y}&x={x}&k=3")[1]
        b = real_server.get(f"/api/provenance?query={uid}&y={y}&x={x}&k=3")[1]
        np.testing.assert_allclose([s["similarity"] for s in b["sources"]],
                                   [s["similarity"] for s in a["sources"]], atol=2e-2)
        assert b["table1"]["method"] == info["table1_matching"]


def test_report_click_view_names_the_matcher_and_exact_disagreement(tmp_path_factory):
    """report.html's click view says which matcher picked the sources shown, how often exact search over
    all training images picks another image for that query (the compnn stage's per-query record), and
    points to the explorer."""
    pytest.importorskip("tensorflow")
    import html
    import json
    import re

    from report_run import tiny_run

    out = tiny_run(tmp_path_factory)
    page = (out / "report.html").read_text()
    metrics = json.loads((out / "metrics.json").read_text())
    main = metrics["table1_matching"]
    per = metrics[f"{main}_vs_exact"]["over_all"]["per_query_same_source_image"]
    notes = [html.unescape(t) for t in re.findall(r"<div class='note prov' id='prov-\d+'>(.*?)</div>", page)]
    assert notes and len(notes) <= len(per)
    for note, same in zip(notes, per):
        assert "picked by Table 1's matcher: " + ("exact search within the bottleneck shortlist" if main == "shortlist"
                                                  else "the hierarchical prune") in note, note
        assert f"picks another training image at {1 - same:.1%} of this query's positions" in note, note
        assert "python -m experiments.explore --out_dir=" in note
