"""Tests of compnn_py.figures: colours, panel geometry and content (pixels only: titles stay text), PNG
round trip and cutting a saved panel back into its pictures, and the correspondence figure drawn from a
hand-made composition."""

import json

import numpy as np
import pytest
from PIL import Image

from compnn_py import compose, figures
from compnn_py.compose import Composition
from compnn_py.store import ActivationStore


def test_colorize_with_palette_and_void():
    pal = np.array([[10, 20, 30], [40, 50, 60]], np.uint8)
    lab = np.array([[0, 1], [255, 0]], np.uint8)
    out = figures.colorize(lab, pal)
    np.testing.assert_array_equal(out, [[[10, 20, 30], [40, 50, 60]], [[0, 0, 0], [10, 20, 30]]])
    with pytest.raises(ValueError, match=r"outside 0\.\.1"):
        figures.colorize(np.array([[2]], np.uint8), pal)
    with pytest.raises(TypeError, match="integer"):
        figures.colorize(np.zeros((2, 2)), pal)


def test_distinct_colours_are_distinct():
    c = figures.distinct_colours(24)
    assert c.shape == (24, 3) and c.dtype == np.uint8
    assert len({tuple(v) for v in c}) == 24


def test_panel_places_images_and_upscales_small_ones(rng):
    a = rng.integers(0, 256, (8, 8, 3)).astype(np.uint8)
    b = rng.integers(0, 256, (4, 4, 3)).astype(np.uint8)
    p = figures.panel([a, b], pad=2, min_cell=0)
    assert p.image.shape == (2 + 8 + 2, 2 + 2 * (8 + 2), 3) and p.titles == ("", "")
    np.testing.assert_array_equal(p.image[2:10, 2:10], a)
    np.testing.assert_array_equal(p.image[2:10, 12:20], np.repeat(np.repeat(b, 2, 0), 2, 1))
    titled = figures.panel([a, b, a], ["one", "two", "three"], ncols=2, pad=2, min_cell=20)  # cells 24×24
    assert titled.image.shape == (2 * (24 + 2) + 2, 2 + 2 * (24 + 2), 3)  # no band of text: pixels only
    np.testing.assert_array_equal(titled.image[2:26, 2:26], np.repeat(np.repeat(a, 3, 0), 3, 1))
    assert (titled.image[28:, 28:] == 255).all()  # the empty fourth cell
    assert titled.layout() == {"titles": ["one", "two", "three"], "ncols": 2, "cell": [24, 24], "pad": 2,
                               "scale": 3, "colour_scale": None}
    with pytest.raises(ValueError, match="titles"):
        figures.panel([a], ["x", "y"])


def test_panel_pixels_hold_no_text(rng):
    """Titles never reach the pixels: the same pictures with and without (long) titles give the same image."""
    a = rng.integers(0, 256, (6, 6, 3)).astype(np.uint8)
    plain = figures.panel([a, a])
    titled = figures.panel([a, a], ["a long title " * 5, "CompNN relL2=0.12"])
    np.testing.assert_array_equal(plain.image, titled.image)


def test_cells_of_cuts_a_saved_panel_back_into_its_pictures(tmp_path, rng):
    pics = [rng.integers(0, 256, (5, 7, 3)).astype(np.uint8) for _ in range(5)]
    p = figures.panel(pics, [f"t{j}" for j in range(5)], ncols=3)
    figures.save_png(tmp_path / "p.png", p)
    saved = np.asarray(Image.open(tmp_path / "p.png"))
    layout = json.loads(json.dumps(p.layout()))  # what analyses.json keeps
    for got, want in zip(figures.cells_of(saved, layout), pics):
        np.testing.assert_array_equal(got, want)  # the pictures at their own resolution
    big = figures.cells_of(saved, layout, native=False)
    assert big[0].shape == (p.cell[0], p.cell[1], 3) and p.scale == 19  # 7 px upscaled past 128


def test_save_png_round_trip(tmp_path, rng):
    a = rng.integers(0, 256, (5, 6, 3)).astype(np.uint8)
    path = figures.save_png(tmp_path / "a.png", a)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), a)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        figures.save_png(tmp_path / "missing" / "a.png", a)


def test_activation_rgb_scales_each_channel():
    act = np.zeros((2, 1, 4))
    act[1, 0] = [2, 4, 6, 8]
    out = figures.activation_rgb(act, (0, 1, 3))
    np.testing.assert_array_equal(out[:, 0], [[0, 0, 0], [255, 255, 255]])


def _db(tmp_path, rng, n=3, h=8, w=8):
    with ActivationStore.create(tmp_path / "db", n_images=n, layers={"f": (4, 4, 2)}, image_shape=(h, w, 3),
                                label_shape=(h, w), output_shape=(h, w), image_ids=["x", "y", "z"],
                                layer_meta={"f": {"kernel": 1, "stride": 2}},
                                metadata={"palette": [[1, 2, 3], [4, 5, 6], [7, 8, 9]]}) as wr:
        for i in range(n):
            wr.write(i, activations={"f": np.ones((4, 4, 2))}, image=rng.integers(0, 256, (h, w, 3)),
                     label=rng.integers(0, 3, (h, w)), cnn_output=rng.integers(0, 3, (h, w)))
    return ActivationStore.open(tmp_path / "db")


def test_correspondence_map_and_figure(tmp_path, rng):
    db = _db(tmp_path, rng)
    yy, xx = np.mgrid[:8, :8]
    src = np.where(xx < 2, 0, np.where(xx < 7, 2, 1)).astype(np.int32)  # image 2 used most, then 0, then 1
    comp = Composition(db.labels[0], src, yy.astype(np.int32), xx.astype(np.int32), None, "f", "labels", (2, 2))
    np.testing.assert_array_equal(figures.palette_of(db)[2], [7, 8, 9])
    corr = compose.correspondence(comp, db, top=2)
    assert corr.rows.tolist() == [2, 0, 1] and corr.counts.tolist() == [40, 16, 8] and len(corr.masks) == 2
    cmap = figures.correspondence_map(corr)
    colours = figures.distinct_colours(2)
    np.testing.assert_array_equal(cmap[0, 4], colours[0])
    np.testing.assert_array_equal(cmap[0, 0], colours[1])
    np.testing.assert_array_equal(cmap[0, 7], figures.OTHER_COLOUR)
    marked = figures.mark_region(db.images[2], corr.masks[0], colours[0], alpha=1.0)
    np.testing.assert_array_equal(marked[3, 3], colours[0])
    np.testing.assert_array_equal(marked[3, 0], np.round(db.images[2][3, 0] * 0.35).astype(np.uint8))
    fig = figures.correspondence_figure(corr, db, comp.output)
    assert fig.image.dtype == np.uint8 and fig.image.shape[1] == 4 + 4 * (128 + 4)  # output, map, 2 sources; 8px ×16
    assert fig.titles[:2] == ("CompNN", "sources") and fig.titles[2] == "z (40px)"
    figures.save_png(tmp_path / "corr.png", fig)
    by_label = figures.correspondence_figure(corr, db, show="labels", palette=figures.palette_of(db))
    assert by_label.image.shape[1] == 4 + 3 * (128 + 4)
    with pytest.raises(ValueError, match="show"):
        figures.correspondence_figure(corr, db, show="photos")


def test_heatmap_ramp_ends_and_clipping():
    v = np.array([[0.0, 1.0, 2.0, -5.0, 9.0]])
    out = figures.heatmap(v, 0.0, 2.0)
    ramp = figures.RAMP.astype(np.uint8)
    np.testing.assert_array_equal(out[0, 0], ramp[0])
    np.testing.assert_array_equal(out[0, 2], ramp[-1])
    np.testing.assert_array_equal(out[0, 1], ramp[len(ramp) // 2])  # midpoint of a 5-anchor ramp
    np.testing.assert_array_equal(out[0, 3], ramp[0])   # below lo clips to the darkest
    np.testing.assert_array_equal(out[0, 4], ramp[-1])  # above hi clips to the brightest
    # Brightness grows along the ramp (a reader can rank values by lightness).
    lum = figures.heatmap(np.linspace(0, 1, 50)[None], 0, 1)[0] @ np.array([0.3, 0.59, 0.11])
    assert np.all(np.diff(lum) > -1e-9)


def test_strongest_channels_and_activation_heatmaps(rng):
    act = np.zeros((4, 4, 5))
    act[..., 3] = rng.normal(0, 5, (4, 4))
    act[..., 1] = rng.normal(0, 1, (4, 4))
    assert figures.strongest_channels(act, 2) == [1, 3]

    class Pred:  # the fields activation_heatmaps reads from compose.ActivationPrediction
        actual = act
        compositional = Composition(act, *(np.zeros((4, 4), np.int32),) * 3, None, "s", "t", (1, 1))
        global_ = Composition(np.zeros_like(act), *(np.zeros((4, 4), np.int32),) * 3, None, "s", "t", (1, 1))

    fig, channels = figures.activation_heatmaps(Pred, n_channels=2)
    assert channels == [1, 3]
    assert fig.image.shape == (4 + 2 * (128 + 4), 4 + 4 * (128 + 4), 3)  # CNN, CompNN, global, |error| per row
    assert fig.titles[:4] == ("ch 1 CNN", "CompNN", "global", "|CompNN-CNN|")
    assert fig.colour_scale == ("channel min (error 0)", "channel max (error = range)")  # as words, not pixels
    # A perfect compositional prediction: its error panel is all the ramp's darkest colour.
    err = fig.image[4:4 + 128, 4 + 3 * 132:4 + 3 * 132 + 128]
    assert (err == figures.RAMP[0].astype(np.uint8)).all()


def test_bias_figure_shows_changed_pixels(rng):
    class Q:
        images = rng.integers(0, 256, (1, 8, 8, 3)).astype(np.uint8)
        cnn_outputs = np.zeros((1, 8, 8), np.uint8)

    a = np.zeros((8, 8), np.uint8)
    b = a.copy()
    b[:, 4:] = 1
    fig = figures.bias_figure(Q, 0, {"x": a, "y": b}, palette=figures.distinct_colours(2), changed=a != b,
                              cnn=True)
    assert fig.image.shape[1] == 4 + 5 * (128 + 4)  # input, CNN, two outputs, changed mask
    assert fig.titles == ("input", "CNN output", "from x", "from y", "changed 50%")
    mask = fig.image[4:4 + 128, 4 + 4 * 132:4 + 4 * 132 + 128]
    assert (mask[:, :64] == 40).all() and (mask[:, 64:] == 255).all()
