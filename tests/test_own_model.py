"""Explaining a network compnn did not build: a plain Keras encoder-decoder, defined and trained here
(not with tf_models), saved as .keras and handed to the driver with --checkpoint and --match_layers."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from compnn_py.data import load_split  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SIZE, N_TRAIN, N_QUERY, CLASSES = (32, 32), 24, 3, 11
LAYERS = "global:bottleneck,coarse:dec2,fine:dec1"


def build_network():
    """A small U-net-free encoder-decoder: 32x32 -> 8x8 bottleneck -> 32x32 class scores."""
    x = inp = keras.Input((*SIZE, 3), name="image")
    x = keras.layers.Rescaling(1 / 255.0, name="scale")(x)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="enc1")(x)
    x = keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu", name="enc2")(x)
    x = keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu", name="bottleneck")(x)
    x = keras.layers.UpSampling2D(name="up2")(x)
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="dec2")(x)
    x = keras.layers.UpSampling2D(name="up1")(x)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="dec1")(x)
    x = keras.layers.Conv2D(CLASSES, 1, name="logits")(x)
    return keras.Model(inp, x, name="my_segmenter")


@pytest.fixture(scope="module")
def saved_network(tmp_path_factory):
    keras.utils.set_random_seed(0)
    data = load_split("camvid", "train", None, size=SIZE, n=N_TRAIN, seed=0, progress=False)
    x = data.inputs.astype(np.float32)
    y = np.where(data.targets == 255, 0, data.targets).astype(np.int32)  # void taught as class 0 here
    model = build_network()
    model.compile(keras.optimizers.Adam(3e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=8, epochs=25, verbose=0)
    path = tmp_path_factory.mktemp("net") / "my_segmenter.keras"
    model.save(path)
    return path, model, x


def test_a_plain_keras_network_is_explained_end_to_end(tmp_path, saved_network):
    path, model, _ = saved_network
    out = tmp_path / "run"
    res = subprocess.run([sys.executable, "-m", "experiments.run", "--task=camvid", f"--size={SIZE[0]},{SIZE[1]}",
                          f"--n_train={N_TRAIN}", f"--n_query={N_QUERY}", "--shortlist=4", "--coarse_k=4",
                          f"--checkpoint={path}", f"--match_layers={LAYERS}", f"--out_dir={out}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    with open(out / "table1.csv") as f:
        header, *body = list(csv.reader(f))
    rows = {r[0]: r[1:] for r in body}
    col = header[1:].index("agree_pixel_acc")
    assert float(rows["Baseline CNN"][col]) == pytest.approx(1.0)
    # CompNN matches at dec1, which the 1x1 classifier reads, so it reproduces the network's own labels.
    assert float(rows["CompNN (SS)"][col]) > 0.8, rows
    assert len(list((out / "panels").glob("*.png"))) >= N_QUERY
    assert (out / "report.html").is_file()

    export = next((out / "cache").glob("export-*"))
    info = json.loads((export / "export.json").read_text())
    assert info["architecture"] == "custom" and info["network"] == "my_segmenter"
    assert set(info["layers"]) == {"bottleneck", "dec2", "dec1"}  # only what the run uses
    assert info["splits"]["train"]["images"] == N_TRAIN and info["splits"]["train"]["bytes_per_image"] > 0

    # The network's own outputs are what the store holds as the CNN's labels.
    from compnn_py.store import ActivationStore

    # Geometry read from the shapes (stride) and from the convs that consume each map (kernel).
    q = ActivationStore.open(export / "query")
    want = np.argmax(np.asarray(model(np.asarray(q.images).astype(np.float32))), -1)
    np.testing.assert_array_equal(np.asarray(q.cnn_outputs), want)
    assert {n: q.layer_meta(n)["kernel"] for n in q.layer_names} == {"bottleneck": 1, "dec2": 1, "dec1": 1}
    assert {n: q.layer_meta(n)["stride"] for n in q.layer_names} == {"bottleneck": 4, "dec2": 2, "dec1": 1}
    assert q.metadata["match_spec"]["decode2"] == "dec1" and q.metadata["activation_pairs"] == [["dec2", "dec1"]]

    # --export_layers=all: every map on a grid that divides the input, the same layers' bytes unchanged.
    res = subprocess.run([sys.executable, "-m", "experiments.run", "--task=camvid", f"--size={SIZE[0]},{SIZE[1]}",
                          f"--n_train={N_TRAIN}", f"--n_query={N_QUERY}", "--shortlist=4", "--coarse_k=4",
                          f"--checkpoint={path}", f"--match_layers={LAYERS}", "--export_layers=all",
                          "--stages=data,train,export", f"--out_dir={out}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    full = [json.loads(p.read_text()) for p in (out / "cache").glob("export-*/export.json")]
    full = next(e for e in full if e["export_layers"] == "all")
    assert set(full["layers"]) == {"scale", "enc1", "enc2", "bottleneck", "up2", "dec2", "up1", "dec1", "logits"}
    used, every = info["splits"]["train"], full["splits"]["train"]
    assert every["bytes_per_image"] > used["bytes_per_image"]
    assert all(every["layer_bytes_per_image"][n] == b for n, b in used["layer_bytes_per_image"].items())


def test_custom_architecture_geometry_by_hand():
    """Strides from the shapes; kernels from the conv or pool that reads a map, through layers that
    keep its size (BN, activations, concatenation), 1 when it is resized first or read by several."""
    from tf_models import registry

    x = inp = keras.Input((24, 32, 3))
    a = keras.layers.Conv2D(8, 3, padding="same", name="a")(x)
    b = keras.layers.ReLU(name="b")(keras.layers.BatchNormalization(name="a_bn")(a))
    c = keras.layers.Conv2D(8, 5, strides=2, padding="same", name="c")(b)          # 12x16
    d = keras.layers.MaxPooling2D(2, name="d")(c)                                   # 6x8
    e = keras.layers.Conv2D(8, 3, padding="same", name="e")(keras.layers.UpSampling2D(name="up")(d))
    f = keras.layers.Concatenate(name="f")([e, c])
    g = keras.layers.Conv2DTranspose(8, 4, strides=2, padding="same", name="g")(f)  # 24x32
    out = keras.layers.Conv2D(11, 1, name="out")(keras.layers.Activation("relu", name="g_act")(g))
    model = keras.Model(inp, out, name="toy")
    arch = registry.custom(model, "global:d,coarse:e,fine:b", kind="segmentation")
    geo = arch.layer_geometry(model)
    assert geo["a"] == {"kernel": 5, "stride": 1}   # through BN and ReLU to c's 5x5 conv
    assert geo["b"] == {"kernel": 5, "stride": 1}
    assert geo["c"] == {"kernel": 1, "stride": 2}   # read by the pool (2) and via the concat by g (4): no one K
    assert geo["d"] == {"kernel": 1, "stride": 4}   # upsampled before any conv
    assert geo["e"] == {"kernel": 4, "stride": 2}   # concat keeps the size; the transposed conv reads it
    assert geo["g"] == {"kernel": 1, "stride": 1}
    ms = arch.match_spec(model)
    assert (ms["global"], ms["coarse"], ms["fine"], ms["decode2"]) == ("d", "e", "b", "b")
    assert ms["kernel"] == {"d": 1, "e": 4, "b": 5} and ms["stride"] == {"d": 4, "e": 2, "b": 1}
    assert arch.sweep_layers(model) == ["d", "e", "b"] and arch.activation_pairs(model) == [("e", "b")]
    assert registry.custom(model, "global:d,coarse:e,fine:b", kind="segmentation", kernel=3,
                           decode2="g").match_spec(model)["kernel"]["b"] == 3
    labels = arch.postprocess("segmentation", np.zeros((4, 3), np.uint8))(np.eye(11)[None, None, [0, 3, 7]])
    np.testing.assert_array_equal(labels, [[[0, 3, 255]]])  # ids beyond the task's 4 classes are void
    # An image task reads the output as an image, its range from the final activation.
    for act, want in (("tanh", [0, 127, 255]), ("sigmoid", [0, 0, 255]), (None, [0, 0, 1])):
        y = keras.layers.Conv2D(3, 1, activation=act, name="rgb")(g)
        net = keras.Model(inp, y, name=f"toy_{act}")
        img = registry.custom(net, "global:d,coarse:e,fine:b", kind="synthesis").postprocess("synthesis", None)
        np.testing.assert_array_equal(img(np.array([[[[-1.0, 0.0, 1.0]]]]))[0, 0, 0], want)
    with pytest.raises(ValueError, match="nope"):
        registry.custom(model, "global:nope,coarse:e,fine:b", kind="segmentation")
    with pytest.raises(ValueError, match="global:NAME"):
        registry.custom(model, "coarse:e,fine:b", kind="segmentation")


def test_without_match_layers_the_driver_says_what_to_give(tmp_path, saved_network):
    path, _, _ = saved_network
    res = subprocess.run([sys.executable, "-m", "experiments.run", "--task=camvid", "--size=32,32", "--n_train=4",
                          "--n_query=1", "--shortlist=2", f"--checkpoint={path}", f"--out_dir={tmp_path / 'o'}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "--match_layers" in res.stderr and "my_segmenter" in res.stderr
    res = subprocess.run([sys.executable, "-m", "experiments.run", "--task=camvid", "--size=32,32", "--n_train=4",
                          "--n_query=1", "--shortlist=2", f"--checkpoint={path}",
                          "--match_layers=global:nope,coarse:dec2,fine:dec1", f"--out_dir={tmp_path / 'p'}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "nope" in res.stderr and "Traceback" not in res.stderr
