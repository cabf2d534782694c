"""Tests of compnn_py.compose on hand-made ActivationStores whose right answers are known by construction,
and against a naive numpy matcher written here (independent of the C++ core).

Tests that need a matcher run twice: with the naive reference patched in (checks the composition logic
on its own) and with the real `compnn_py.match` (skipped while it cannot be imported).
"""

from dataclasses import dataclass

import numpy as np
import pytest

from compnn_py import compose
from compnn_py.compose import Composition, composition_stats, pixel_sources, transfer
from compnn_py.store import ActivationStore

H = W = 8  # pixels; layers: fine 4×4 (stride 2), coarse 2×2 (stride 4), bottleneck 1×1 (stride 8)
N = 3
C = 6


# ---- an independent, slow reference matcher ---------------------------------------------------------

@dataclass(frozen=True)
class NaiveMatches:
    image: np.ndarray
    y: np.ndarray
    x: np.ndarray
    similarity: np.ndarray


def _descriptors(f, kernel):
    f = np.asarray(f, dtype=np.float64)
    h, w, _ = f.shape
    before = (kernel - 1) // 2  # TF 'SAME': offsets -((K-1)//2) .. K//2
    fp = np.pad(f, ((before, kernel - 1 - before), (before, kernel - 1 - before), (0, 0)))
    return np.concatenate([fp[dy:dy + h, dx:dx + w] for dy in range(kernel) for dx in range(kernel)], -1)


def _unit(a):
    n = np.linalg.norm(a, axis=-1, keepdims=True)
    return np.divide(a, n, out=np.zeros_like(a), where=n > 0)


class NaiveMatcher:
    Matches = NaiveMatches

    @staticmethod
    def patches(query, database, *, kernel, k=1, rows=None, threads=None):
        rows = np.arange(len(database)) if rows is None else np.asarray(rows)
        h, w = query.shape[:2]
        hd, wd = database.shape[1:3]
        q = _unit(_descriptors(query, kernel).reshape(h * w, -1))
        d = _unit(np.concatenate([_descriptors(database[r], kernel).reshape(hd * wd, -1) for r in rows]))
        order = np.argsort(-(q @ d.T), axis=1, kind="stable")[:, :k]  # stable: lowest (row, y, x) wins ties
        sim = np.take_along_axis(q @ d.T, order, 1)
        r, pos = np.divmod(order, hd * wd)
        y, x = np.divmod(pos, wd)
        shape = (h, w, k)
        return NaiveMatches(rows[r].reshape(shape).astype(np.int32), y.reshape(shape).astype(np.int32),
                            x.reshape(shape).astype(np.int32), sim.reshape(shape).astype(np.float32))

    @staticmethod
    def global_shortlist(query, database, S, *, rows=None, threads=None):
        rows = np.arange(len(database)) if rows is None else np.asarray(rows)
        q = _unit(np.asarray(query, dtype=np.float64).reshape(1, -1))
        d = _unit(np.asarray(database, dtype=np.float64)[rows].reshape(len(rows), -1))
        sim = (q @ d.T)[0]
        order = np.argsort(-sim, kind="stable")[:S]
        return rows[order].astype(np.int32), sim[order].astype(np.float32)


def _real_matcher():
    return pytest.importorskip("compnn_py.match", reason="compnn_py.match (C++ core) not importable yet")


@pytest.fixture(params=["naive", "real"])
def matcher(request, monkeypatch):
    m = NaiveMatcher if request.param == "naive" else _real_matcher()
    monkeypatch.setattr(compose, "_matcher", lambda: m)
    return m


# ---- hand-made stores ---------------------------------------------------------------------------

def _store(path, feats, *, labels, cnn, images, kernels, strides, ids=None, image_meta=None, label_kind="labels",
           dtype="float32"):
    n = len(images)
    layers = {name: a.shape[1:] for name, a in feats.items()}
    meta = {name: {"kernel": kernels[name], "stride": strides[name]} for name in feats}
    with ActivationStore.create(path, n_images=n, layers=layers, image_shape=images.shape[1:],
                                label_shape=labels.shape[1:], output_shape=cnn.shape[1:], image_ids=ids,
                                label_kind=label_kind, dtype=dtype, layer_meta=meta,
                                metadata={"num_classes": 5}, image_meta=image_meta) as w:
        for i in range(n):
            w.write(i, activations={k: v[i] for k, v in feats.items()}, image=images[i], label=labels[i],
                    cnn_output=cnn[i])
    return ActivationStore.open(path)


def _db_arrays(rng, n=N):
    feats = {"fine": rng.standard_normal((n, 4, 4, C)).astype(np.float32),
             "coarse": rng.standard_normal((n, 2, 2, C)).astype(np.float32),
             "bottleneck": rng.standard_normal((n, 1, 1, C)).astype(np.float32)}
    labels = rng.integers(0, 5, (n, H, W)).astype(np.uint8)
    labels[:, 0, 0] = 255  # some void in the original labels
    cnn = rng.integers(0, 5, (n, H, W)).astype(np.uint8)
    images = rng.integers(0, 256, (n, H, W, 3)).astype(np.uint8)
    return feats, labels, cnn, images


KERNELS1 = {"fine": 1, "coarse": 1, "bottleneck": 1}
STRIDES = {"fine": 2, "coarse": 4, "bottleneck": 8}


def _db(tmp_path, rng, dtype="float32"):
    feats, labels, cnn, images = _db_arrays(rng)
    meta = [{"city": c} for c in ("aachen", "bremen", "aachen")]
    return _store(tmp_path / "db", feats, labels=labels, cnn=cnn, images=images, kernels=KERNELS1,
                  strides=STRIDES, ids=["a0", "b1", "a2"], image_meta=meta, dtype=dtype)


@pytest.fixture
def db(tmp_path, rng):
    return _db(tmp_path, rng)


def _cut_paste(db, tmp_path, left=0, right=2):
    """A query whose left half (native and pixel) is db image `left`, right half db image `right`."""
    feats = {}
    for name in db.layer_names:
        a = np.array(db.layer(name)[[left]])
        half = a.shape[2] // 2
        if half:
            a[0, :, half:] = db.layer(name)[right][:, half:]
        feats[name] = a
    def paste(arr):
        out = np.array(arr[[left]])
        out[0, :, W // 2:] = arr[right][:, W // 2:]
        return out
    q = _store(tmp_path / "query", feats, labels=paste(db.labels), cnn=paste(db.cnn_outputs),
               images=paste(db.images), kernels=KERNELS1, strides=STRIDES, dtype=db.layer("fine").dtype.name)
    return q


# ---- pure composition: no matcher ----------------------------------------------------------------

def test_pixel_sources_blocks_match_hand_loop(rng):
    m = NaiveMatches(rng.integers(0, 3, (2, 3, 1)).astype(np.int32), rng.integers(0, 2, (2, 3, 1)).astype(np.int32),
                     rng.integers(0, 3, (2, 3, 1)).astype(np.int32), np.ones((2, 3, 1), np.float32))
    img, sy, sx = pixel_sources(m, (4, 6), 2)
    for py in range(4):
        for px in range(6):
            qy, qx = py // 2, px // 2
            assert img[py, px] == m.image[qy, qx, 0]
            assert sy[py, px] == m.y[qy, qx, 0] * 2 + py % 2
            assert sx[py, px] == m.x[qy, qx, 0] * 2 + px % 2


def test_pixel_sources_uneven_grids_clip():
    one = np.ones((3, 3, 1), np.int32)
    m = NaiveMatches(0 * one, 2 * one, 2 * one, one.astype(np.float32))
    # ceil grid: 5 pixels over 3 positions of stride 2; pixel 4 is offset 0 of position 2
    _, sy, _ = pixel_sources(m, (5, 5), 2)
    assert sy[4, 0] == 4 and sy[3, 0] == 5 - 1  # 2*2+1 = 5 clipped to 4
    m2 = NaiveMatches(*(a[:2, :2] for a in (0 * one, one, one, one.astype(np.float32))))
    # floor grid: 5 pixels over 2 positions; pixel 4 belongs to position 1 with offset 2 -> 1*2+2 = 4
    _, sy, sx = pixel_sources(m2, (5, 5), 2)
    assert sy[4, 4] == 4 and sx[2, 2] == 2
    with pytest.raises(ValueError, match="stride"):
        pixel_sources(m2, (9, 9), 2)
    with pytest.raises(ValueError, match="stride"):
        pixel_sources(m2, (4, 4), 0)


def test_transfer_matches_naive_gather(rng):
    targets = rng.integers(0, 255, (4, 5, 6, 3)).astype(np.uint8)
    si = rng.integers(0, 4, (7, 8))
    sy, sx = rng.integers(0, 5, (7, 8)), rng.integers(0, 6, (7, 8))
    out = transfer(targets, si, sy, sx)
    for y in range(7):
        for x in range(8):
            np.testing.assert_array_equal(out[y, x], targets[si[y, x], sy[y, x], sx[y, x]])
    with pytest.raises(ValueError, match="source_y"):
        transfer(targets, si, sy + 5, sx)


def test_composition_stats_counts_rigid_pieces():
    yy, xx = np.mgrid[:8, :8]
    img = np.where(xx < 4, 0, 1).astype(np.int32)
    comp = Composition(None, img, yy.astype(np.int32), xx.astype(np.int32), None, "", "", (1, 1))
    assert composition_stats(comp) == {"n_sources": 2, "n_pieces": 2, "mean_piece_area": 32.0}
    # same image, but the right half shifted by one pixel: a third rigid piece
    sx = np.where(xx >= 6, xx - 1, xx).astype(np.int32)
    comp = Composition(None, img, yy.astype(np.int32), sx, None, "", "", (1, 1))
    assert composition_stats(comp)["n_pieces"] == 3


# ---- analyses on hand-made stores ---------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_cut_and_paste_query_is_recomposed_exactly(tmp_path, rng, matcher, dtype):
    db = _db(tmp_path, rng, dtype)
    q = _cut_paste(db, tmp_path)
    yy, xx = np.mgrid[:H, :W]
    for target in ("labels", "cnn_outputs", "images"):
        comp = compose.compnn(db, q, 0, layer="fine", target=target)
        np.testing.assert_array_equal(comp.output, getattr(q, target)[0])
    np.testing.assert_array_equal(comp.source_image, np.where(xx < W // 2, 0, 2))
    np.testing.assert_array_equal(comp.source_y, yy)
    np.testing.assert_array_equal(comp.source_x, xx)
    corr = compose.correspondence(comp, db, top=2)
    assert corr.rows.tolist() == [0, 2] and corr.counts.tolist() == [32, 32]
    assert corr.image_ids == ["a0", "a2"]
    assert corr.explain(3, 6) == {"row": 2, "image_id": "a2", "y": 3, "x": 6}
    np.testing.assert_array_equal(corr.masks[1], xx >= W // 2)
    np.testing.assert_array_equal(corr.source_id, np.where(xx < W // 2, "a0", "a2"))
    corr.save(tmp_path / "corr.npz")
    with np.load(tmp_path / "corr.npz") as z:
        np.testing.assert_array_equal(z["source_x"], xx)
        assert z["source_id"][0, 7] == "a2"


def test_shifted_paste_maps_native_match_to_pixel_block(db, tmp_path, matcher):
    # query native column j is db image 1's column j+1 (last column: db image 0's column 0)
    fine = np.array(db.layer("fine")[[1]])
    fine[0, :, :3] = db.layer("fine")[1][:, 1:]
    fine[0, :, 3] = db.layer("fine")[0][:, 0]
    feats = {"fine": fine, "coarse": np.array(db.layer("coarse")[[0]]),
             "bottleneck": np.array(db.layer("bottleneck")[[0]])}
    q = _store(tmp_path / "q", feats, labels=db.labels[[0]], cnn=db.cnn_outputs[[0]], images=db.images[[0]],
               kernels=KERNELS1, strides=STRIDES)
    comp = compose.compnn(db, q, 0, layer="fine", target="labels")
    yy, xx = np.mgrid[:H, :W]
    exp_img = np.where(xx < 6, 1, 0)
    exp_x = np.where(xx < 6, xx + 2, xx - 6)
    np.testing.assert_array_equal(comp.source_image, exp_img)
    np.testing.assert_array_equal(comp.source_x, exp_x)
    np.testing.assert_array_equal(comp.output, db.labels[exp_img, yy, exp_x])


def test_random_query_equals_naive_reference_k3(tmp_path, rng, matcher):
    feats, labels, cnn, images = _db_arrays(rng, n=4)
    kernels = {"fine": 3, "coarse": 4, "bottleneck": 1}
    db = _store(tmp_path / "db", feats, labels=labels, cnn=cnn, images=images, kernels=kernels, strides=STRIDES)
    qf, ql, qc, qi = _db_arrays(np.random.default_rng(7), n=1)
    q = _store(tmp_path / "q", qf, labels=ql, cnn=qc, images=qi, kernels=kernels, strides=STRIDES)
    for rows in (None, [1, 3]):
        comp = compose.compnn(db, q, 0, layer="fine", target="cnn_outputs", rows=rows)
        ref = NaiveMatcher.patches(qf["fine"][0], feats["fine"], kernel=3, rows=rows)
        np.testing.assert_array_equal(comp.matches.image, ref.image)
        np.testing.assert_array_equal(comp.matches.y, ref.y)
        np.testing.assert_array_equal(comp.matches.x, ref.x)
        for py in range(H):
            for px in range(W):
                n_, y_, x_ = ref.image[py // 2, px // 2, 0], ref.y[py // 2, px // 2, 0], ref.x[py // 2, px // 2, 0]
                assert comp.output[py, px] == cnn[n_, 2 * y_ + py % 2, 2 * x_ + px % 2]


def test_restricted_database_only_uses_its_images(db, tmp_path, matcher):
    q = _cut_paste(db, tmp_path)
    restrictions = {"rows": [1], "ids": ["b1"], "bremen": lambda m, i: m["city"] == "bremen",
                    "aachen": lambda m, i: m["city"] == "aachen", "all": None}
    outs = compose.bias_modification(db, q, 0, restrictions, layer="fine", target="labels")
    for name in ("rows", "ids", "bremen"):
        comp = outs[name]
        assert (comp.source_image == 1).all()
        np.testing.assert_array_equal(comp.output, db.labels[1][comp.source_y, comp.source_x])
    # the query is made of aachen images, so the aachen database rebuilds it exactly
    np.testing.assert_array_equal(outs["aachen"].output, q.labels[0])
    np.testing.assert_array_equal(outs["all"].output, q.labels[0])
    with pytest.raises(ValueError, match="no images"):
        compose.compnn(db, q, 0, layer="fine", rows=lambda m, i: False)
    with pytest.raises(ValueError, match="image ids"):
        compose.compnn(db, q, 0, layer="fine", rows=["nope"])
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        compose.compnn(db, q, 0, layer="fine", rows=[3])


def test_global_nn_copies_the_closest_whole_image(db, tmp_path, matcher):
    q = _cut_paste(db, tmp_path, left=2, right=2)  # the query is db image 2 itself
    for layer in ("bottleneck", "fine"):
        g = compose.global_nn(db, q, 0, layer=layer, target="cnn_outputs")
        np.testing.assert_array_equal(g.output, db.cnn_outputs[2])
        assert (g.source_image == 2).all()
        np.testing.assert_array_equal(g.source_y, np.mgrid[:H, :W][0])
        assert g.matches.similarity[0, 0, 0] == pytest.approx(1.0, abs=1e-5)
    g = compose.global_nn(db, q, 0, layer="fine", target="labels", rows=[0, 1])
    assert set(np.unique(g.source_image)) <= {0, 1}


def test_reconstruction_and_layer_sweep(db, tmp_path, matcher):
    q = _cut_paste(db, tmp_path)
    rec = compose.reconstruction(db, q, 0, layer="fine", global_nn_layer="bottleneck", target="labels")
    np.testing.assert_array_equal(rec.compnn_input.output, q.images[0])
    np.testing.assert_array_equal(rec.compnn_output.output, q.labels[0])
    gi = int(rec.global_input.source_image[0, 0])
    np.testing.assert_array_equal(rec.global_input.output, db.images[gi])
    np.testing.assert_array_equal(rec.global_output.output, db.labels[gi])
    steps = compose.layer_sweep(db, q, 0, layers=["bottleneck", "coarse", "fine"], target="labels")
    assert [s.layer for s in steps] == ["bottleneck", "coarse", "fine"]
    assert steps[0].stats["n_sources"] == 1 and steps[0].stats["n_pieces"] == 1
    assert steps[1].stats["n_sources"] == 2 and steps[2].stats["n_sources"] == 2
    np.testing.assert_array_equal(steps[1].composition.output, q.labels[0])  # halves align with coarse blocks


def test_predict_activations_cut_and_paste(tmp_path, rng, matcher):
    src = rng.standard_normal((N, 2, 2, C)).astype(np.float32)
    tgt = np.maximum(rng.standard_normal((N, 4, 4, 5)), 0).astype(np.float32)
    feats = {"src": src, "tgt": tgt}
    arrays = dict(labels=np.zeros((N, H, W), np.uint8), cnn=np.zeros((N, H, W), np.uint8),
                  images=np.zeros((N, H, W, 3), np.uint8))
    kern, strides = {"src": 1, "tgt": 1}, {"src": 4, "tgt": 2}
    db = _store(tmp_path / "db", feats, kernels=kern, strides=strides, **arrays)
    qsrc = src[[0]].copy()
    qsrc[0, :, 1] = src[1][:, 1]
    qtgt = tgt[[0]].copy()
    qtgt[0, :, 2:] = tgt[1][:, 2:]
    one = {k: v[:1] for k, v in arrays.items()}
    q = _store(tmp_path / "q", {"src": qsrc, "tgt": qtgt}, kernels=kern, strides=strides, **one)
    pred = compose.predict_activations(db, q, 0, source_layer="src", target_layer="tgt")
    np.testing.assert_array_equal(pred.compositional.output, qtgt[0])
    e = pred.errors
    assert e["compositional"]["relative_l2"] == 0 and e["compositional"]["cosine"] == pytest.approx(1)
    assert e["global"]["relative_l2"] > 0.1
    g = int(pred.global_.source_image[0, 0])
    np.testing.assert_array_equal(pred.global_.output, tgt[g])
    from compnn_py import figures

    assert figures.activation_figure(pred, (0, 1, 2)).image.shape == (4 + 128 + 4, 4 + 3 * (128 + 4), 3)
    with pytest.raises(ValueError, match="divide"):
        compose.predict_activations(db, q, 0, source_layer="tgt", target_layer="src")


def test_activation_errors_hand_values():
    a = np.zeros((1, 2, 2))
    a[0, 0] = [3, 4]
    p = np.zeros((1, 2, 2))
    p[0, 0] = [3, 0]
    p[0, 1] = [1, 0]  # actual is zero there -> per-position cosine 0
    e = compose.activation_errors(p, a)
    assert e["relative_l2"] == pytest.approx(np.sqrt(16 + 1) / 5)
    assert e["cosine"] == pytest.approx(9 / (5 * np.sqrt(10)))
    assert e["mean_position_cosine"] == pytest.approx((3 / 5 + 0) / 2)


def test_table1_on_hand_store(db, tmp_path, matcher):
    q = _cut_paste(db, tmp_path)
    table, outs = compose.table1(db, q, layer="fine", bottleneck_layer="bottleneck", decode2_layer="fine",
                                 progress=False)
    assert table.rows[0] == "Baseline CNN" and len(table.rows) == 7
    np.testing.assert_array_equal(outs["CompNN (O)"][0], q.labels[0])
    np.testing.assert_array_equal(outs["CompNN (SS)"][0], q.cnn_outputs[0])
    assert table.value("CompNN (O)", "pixel_acc") == 1.0
    assert table.value("CompNN (SS)", "agree_mean_iou") == 1.0
    assert table.value("Baseline CNN", "agree_pixel_acc") == 1.0
    valid = q.labels[0] != 255
    want = (q.cnn_outputs[0][valid] == q.labels[0][valid]).mean()
    assert table.value("Baseline CNN", "pixel_acc") == pytest.approx(want)


def test_hierarchical_with_everything_shortlisted_equals_exact(db, tmp_path):
    _real_matcher()
    q = _cut_paste(db, tmp_path)
    ex = compose.compnn(db, q, 0, layer="fine", target="labels")
    hi = compose.compnn(db, q, 0, layer="fine", target="labels", method="hierarchical", coarse_layer="coarse",
                        global_layer="bottleneck", shortlist=N, coarse_k=4, margin=2)
    np.testing.assert_array_equal(hi.output, ex.output)
    np.testing.assert_array_equal(hi.source_image, ex.source_image)


def test_bad_arguments(db, tmp_path):
    q = _cut_paste(db, tmp_path)
    with pytest.raises(ValueError, match="target"):
        compose.compnn(db, q, 0, layer="fine", target="photos")
    with pytest.raises(IndexError, match="query index 5"):
        compose.compnn(db, q, 5, layer="fine")
    with pytest.raises(ValueError, match="coarse_layer"):
        compose.match_layer(db, q, 0, layer="fine", method="hierarchical")
    with pytest.raises(ValueError, match="method"):
        compose.match_layer(db, q, 0, layer="fine", method="fast")
    with pytest.raises(KeyError, match="nope"):
        compose.compnn(db, q, 0, layer="nope")


def test_analysis_pictures(db, tmp_path, matcher):
    from compnn_py import figures

    q = _cut_paste(db, tmp_path)
    pal = figures.distinct_colours(5)
    comp = compose.compnn(db, q, 0, layer="fine", target="labels")
    fig = figures.composition_figure(q, 0, {"CompNN (O)": comp}, palette=pal)
    up = 128 // H  # panels upscale small pictures to 128 px cells
    assert fig.image.shape == (4 + 128 + 4, 4 + 4 * (128 + 4), 3)
    x0 = 4 + 3 * (128 + 4)  # fourth panel: the composed labels, colourised
    np.testing.assert_array_equal(fig.image[4:4 + 128:up, x0:x0 + 128:up], figures.colorize(q.labels[0], pal))
    steps = compose.layer_sweep(db, q, 0, layers=["bottleneck", "fine"], target="labels")
    rec = compose.reconstruction(db, q, 0, layer="fine", target="labels")
    bias = compose.bias_modification(db, q, 0, {"b": [1], "all": None}, layer="fine", target="labels")
    for pic in (figures.sweep_figure(steps, palette=pal), figures.reconstruction_figure(rec, q, 0, palette=pal),
                figures.bias_figure(q, 0, bias, palette=pal)):
        assert pic.image.dtype == np.uint8 and pic.image.ndim == 3 and len(pic.titles) > 1
        figures.save_png(tmp_path / "p.png", pic)


def test_table1_synthesis_store(tmp_path, rng, matcher):
    feats, _, _, images = _db_arrays(rng)
    photos = rng.integers(0, 256, (N, H, W, 3)).astype(np.uint8)
    cnn = np.clip(photos.astype(int) + 3, 0, 255).astype(np.uint8)
    db = _store(tmp_path / "db", feats, labels=photos, cnn=cnn, images=images, kernels=KERNELS1, strides=STRIDES,
                label_kind="images")
    q = _cut_paste(db, tmp_path)
    table, outs = compose.table1(db, q, layer="fine", bottleneck_layer="bottleneck", decode2_layer="fine",
                                 progress=False)
    assert table.columns == ["psnr_vs_gt", "ssim_vs_gt", "psnr_vs_cnn", "ssim_vs_cnn"]
    np.testing.assert_array_equal(outs["CompNN (O)"][0], q.labels[0])
    assert table.value("CompNN (O)", "psnr_vs_gt") == float("inf")
    assert table.value("CompNN (SS)", "ssim_vs_cnn") == pytest.approx(1.0)
    mse = ((q.cnn_outputs[0].astype(float) - q.labels[0]) ** 2).mean()
    assert table.value("Baseline CNN", "psnr_vs_gt") == pytest.approx(10 * np.log10(255**2 / mse))
