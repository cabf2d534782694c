"""Training (overfitting a tiny batch, resume, run-directory checks, load_model) and export into an
ActivationStore (round trip against a direct forward pass, interrupted export)."""

import json
import logging

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from compnn_py.store import ActivationStore, StoreError  # noqa: E402
from tf_models import export, loaders, pix2pix, registry, segnet, train  # noqa: E402


def tensorboard_scalars(run_dir):
    """{tag: {step: value}} from the event files under run_dir/tensorboard."""
    out = {}
    for f in sorted((run_dir / train.TENSORBOARD).glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(f)):
            for v in event.summary.value:
                assert v.metadata.plugin_data.plugin_name == "scalars" or v.tag in out
                out.setdefault(v.tag, {})[event.step] = float(tf.make_ndarray(v.tensor))
    return out


def smooth_images(n, h, w, seed):
    """Smooth random colour fields: learnable structure, unlike white noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (n, h // 8 + 1, w // 8 + 1, 3))
    up = np.repeat(np.repeat(coarse, 8, axis=1), 8, axis=2)[:, :h, :w]
    return np.clip(up + rng.normal(0, 8, up.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def pix_pair():
    a = smooth_images(2, 64, 64, 0)
    return a, a[:, ::-1, :, ::-1].copy()  # target: flipped, channel-reversed input


@pytest.fixture(scope="module")
def pix_run(tmp_path_factory, pix_pair):
    run = tmp_path_factory.mktemp("pix") / "run"
    gen, hist = train.train_pix2pix(*pix_pair, run, steps=20, ngf=8, ndf=8, seed=3, progress=False,
                                    log_every=10, checkpoint_every=10)
    return run, gen, hist


def test_pix2pix_overfits_one_pair(tmp_path, pix_pair):
    a, b = pix_pair[0][:1], pix_pair[1][:1]
    _, hist = train.train_pix2pix(a, b, tmp_path / "run", steps=300, ngf=16, ndf=16, jitter=False,
                                  log_every=25, progress=False)
    l1 = [e["gen_loss_L1"] for e in hist["train"]]
    assert len(l1) == 12
    assert l1[-1] < l1[0] / 3, l1  # measured 0.51 -> 0.12 (4.2x) on the smooth random pair


def test_segnet_overfits_and_validation_scores_are_right(tmp_path):
    x = smooth_images(1, 48, 64, 1)
    lab = np.minimum(x.mean(-1) // 24, 10).astype(np.uint8)
    lab[:, :3] = 255
    model, hist = train.train_segnet(x, lab, tmp_path / "run", val=(x, lab), val_every=30, steps=60,
                                     batch_size=1, lr=0.01, class_weights=[1.0] * 11, log_every=20,
                                     progress=False)
    loss = [e["loss"] for e in hist["train"]]
    assert loss[-1] < loss[0] / 5, loss
    assert [v["step"] for v in hist["val"]] == [30, 60]
    # The last validation entry must agree with a naive evaluation of the reloaded model.
    reloaded = train.load_model(tmp_path / "run", expect="segnet_basic")
    pred = np.argmax(reloaded(x.astype(np.float32), training=False), -1)
    valid = lab != 255
    assert hist["val"][-1]["pixel_accuracy"] == pytest.approx((pred == lab)[valid].mean(), abs=1e-9)
    ious = []
    for c in range(11):
        p, r = (pred == c) & valid, (lab == c) & valid
        if (p | r).any():
            ious.append((p & r).sum() / (p | r).sum())
    assert hist["val"][-1]["mean_iou"] == pytest.approx(np.mean(ious), abs=1e-9)
    # TensorBoard holds the same numbers as history.json: losses per logged step, validation mIoU.
    tb = tensorboard_scalars(tmp_path / "run")
    assert tb["train/loss"] == pytest.approx({e["step"]: e["loss"] for e in hist["train"]}, rel=1e-6)
    assert tb["val/mean_iou"] == pytest.approx({v["step"]: v["mean_iou"] for v in hist["val"]}, rel=1e-6)


def test_resume_reproduces_uninterrupted_run(tmp_path, pix_pair, pix_run):
    _, straight, _ = pix_run
    run = tmp_path / "run"
    train.train_pix2pix(*pix_pair, run, steps=10, ngf=8, ndf=8, seed=3, progress=False)
    resumed, hist = train.train_pix2pix(*pix_pair, run, steps=20, ngf=8, ndf=8, seed=3, progress=False)
    for w1, w2 in zip(straight.get_weights(), resumed.get_weights()):
        np.testing.assert_array_equal(w1, w2)
    assert json.loads((run / "config.json").read_text())["steps"] == 20


def test_checkpoints_follow_wall_time_and_resume_is_logged(tmp_path, pix_pair, monkeypatch, caplog):
    saved = []
    real_save = train._save
    monkeypatch.setattr(train, "_save", lambda m, c, r, h: (saved.append(int(c.step.numpy())), real_save(m, c, r, h)))
    small = [p[:, :32, :32].copy() for p in pix_pair]
    kw = dict(ngf=4, ndf=4, seed=3, progress=False, log_every=2)
    train.train_pix2pix(*small, tmp_path / "slow", steps=3, **kw)
    assert saved == [3]  # 1000 steps and 60 s are both far away: only the final checkpoint
    saved.clear()
    # A run whose steps take longer than checkpoint_secs checkpoints after every step.
    train.train_pix2pix(*small, tmp_path / "fast", steps=3, checkpoint_secs=1e-9, **kw)
    assert saved == [1, 2, 3]
    with caplog.at_level(logging.INFO):
        _, hist = train.train_pix2pix(*small, tmp_path / "fast", steps=4, **kw)
    assert "resuming at step 3 of 4" in caplog.text
    assert [e["step"] for e in hist["train"]] == [2, 3, 4]
    tb = tensorboard_scalars(tmp_path / "fast")
    assert sorted(tb["train/gen_loss_L1"]) == [2, 3, 4]
    assert tb["train/gen_loss_L1"][4] == pytest.approx(hist["train"][-1]["gen_loss_L1"], rel=1e-6)
    with pytest.raises(ValueError, match="checkpoint_secs"):
        train.train_pix2pix(*small, tmp_path / "bad", steps=1, checkpoint_secs=0, **kw)


def test_own_networks_round_trip_through_keras_format(tmp_path, pix_pair, pix_run):
    _, gen, _ = pix_run
    seg = segnet.build_segnet_basic((24, 32, 3))
    x_seg = smooth_images(4, 24, 32, 5)
    train.finish_training(seg, registry.get("segnet_basic"), x_seg, batch_size=2, progress=False)
    for model, x in ((gen, pix_pair[0]), (seg, x_seg)):
        path = train.save_network(model, tmp_path / f"{model.name}.keras")
        again = keras.models.load_model(path)  # no custom_objects: the layers are registered
        assert again.name == model.name
        for a, b in zip(model.weights, again.weights):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=a.path)
        x = x.astype(np.float32)
        np.testing.assert_array_equal(np.asarray(again(x, training=False)), np.asarray(model(x, training=False)))
        net, arch = loaders.load_network(path, image_size=x.shape[1:3], expect=registry.of_model(model).name)
        assert arch is registry.of_model(model)
    assert not list(tmp_path.glob(".*tmp*"))
    with pytest.raises(ValueError, match="expected segnet_basic"):
        loaders.load_network(tmp_path / f"{gen.name}.keras", expect="segnet_basic")
    with pytest.raises(ValueError, match="--size=24,32"):
        loaders.load_network(tmp_path / f"{seg.name}.keras", image_size=(48, 64))
    with pytest.raises(ValueError, match=".keras"):
        train.save_network(seg, tmp_path / "seg.h5")


def test_run_directory_guards(tmp_path, pix_pair, pix_run):
    run, gen, _ = pix_run
    with pytest.raises(ValueError, match="ngf"):
        train.train_pix2pix(*pix_pair, run, steps=30, ngf=16, ndf=8, seed=3, progress=False)
    with pytest.raises(FileExistsError):
        train.train_pix2pix(*pix_pair, run, steps=30, ngf=8, ndf=8, seed=3, resume=False, progress=False)
    with pytest.raises(ValueError, match="pix2pix"):
        train.load_model(run, expect="segnet_basic")
    with pytest.raises(FileNotFoundError):
        train.load_model(tmp_path / "nothing")
    with pytest.raises(TypeError, match="uint8"):
        train.train_pix2pix(pix_pair[0].astype(np.float32), pix_pair[1], tmp_path / "r", steps=1)
    with pytest.raises(ValueError, match="ids"):
        bad = np.full((1, 48, 64), 11, np.uint8)
        train.train_segnet(np.zeros((1, 48, 64, 3), np.uint8), bad, tmp_path / "s", steps=1)
    # A checkpoint whose config was swapped for another architecture is refused, not half-loaded.
    cfg = json.loads((run / "config.json").read_text())
    other = tmp_path / "swapped"
    other.mkdir()
    (other / "checkpoints").symlink_to(run / "checkpoints")
    (other / "config.json").write_text(json.dumps(dict(cfg, builder=dict(cfg["builder"], ngf=16))))
    with pytest.raises(ValueError, match="does not fit"):
        train.load_model(other)
    loaded = train.load_model(run, expect="pix2pix")
    x = pix_pair[0].astype(np.float32)
    np.testing.assert_array_equal(loaded(x), gen(x))


def test_pix2pix_export_round_trip(tmp_path, pix_pair, pix_run):
    run, gen, _ = pix_run
    x, y = pix_pair
    layers = ["encoder_6", "decoder_2_input", "decoder_1_input", "decoder_1"]
    store = export.export_split(gen, x, y, ["a", "b"], tmp_path / "store", model_name="pix2pix",
                                task="toy", label_kind="images", postprocess=pix2pix.output_to_rgb,
                                layers=layers, batch_size=2, progress=False)
    direct = tf.keras.Model(gen.input, [gen.get_layer(n).output for n in layers])(x.astype(np.float32))
    again = ActivationStore.open(tmp_path / "store")
    for name, want in zip(layers, direct):
        got = again.layer(name)
        assert got.dtype == np.float16 and got.shape == want.shape
        np.testing.assert_array_equal(got, np.asarray(want).astype(np.float16))
    np.testing.assert_array_equal(again.images, x)
    np.testing.assert_array_equal(again.labels, y)
    rgb = tf.image.convert_image_dtype((direct[-1] + 1) / 2, tf.uint8, saturate=True).numpy()  # the reference's
    np.testing.assert_array_equal(again.cnn_outputs, rgb)
    assert again.layer_meta("decoder_1_input")["kernel"] == 4
    assert again.layer_meta("decoder_1_input")["stride"] == 2
    assert again.metadata["match_spec"]["fine"] == "decoder_1_input"
    assert again.image_ids == ["a", "b"] and again.model == "pix2pix" and len(store) == 2


def test_segnet_export_all_layers_and_interrupted_export(tmp_path):
    model = segnet.build_segnet_basic((24, 32, 3))
    x = smooth_images(3, 24, 32, 2)
    lab = np.zeros((3, 24, 32), np.uint8)
    store = export.export_split(model, x, lab, [0, 1, 2], tmp_path / "s", model_name="segnet", task="toy",
                                label_kind="labels", postprocess=segnet.logits_to_labels, batch_size=2,
                                dtype="float32", progress=False)
    assert set(store.layer_names) == set(segnet.layer_geometry(model))
    assert store.layer("pool1").shape == (3, 12, 16, 64)
    logits = np.asarray(model(x.astype(np.float32), training=False))
    np.testing.assert_array_equal(store.cnn_outputs, np.argmax(logits, -1))
    np.testing.assert_allclose(store.layer("conv_classifier"), logits, rtol=1e-4, atol=1e-4)

    calls = []

    def failing(out):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("interrupted")
        return segnet.logits_to_labels(out)

    with pytest.raises(RuntimeError):
        export.export_split(model, x, lab, [0, 1, 2], tmp_path / "broken", model_name="segnet",
                            task="toy", label_kind="labels", postprocess=failing, batch_size=2,
                            progress=False)
    with pytest.raises(StoreError):
        ActivationStore.open(tmp_path / "broken")


def test_export_rejects_bad_arguments(tmp_path):
    model = segnet.build_segnet_basic((24, 32, 3))
    x = np.zeros((1, 24, 32, 3), np.uint8)
    kw = dict(model_name="segnet", task="toy", label_kind="labels", postprocess=segnet.logits_to_labels,
              progress=False)
    with pytest.raises(ValueError, match="layers"):
        export.export_split(model, x, None, ["a"], tmp_path / "a", layers=["nope"], **kw)
    with pytest.raises(ValueError, match="inputs"):
        export.export_split(model, np.zeros((1, 20, 32, 3), np.uint8), None, ["a"], tmp_path / "b", **kw)
    with pytest.raises(TypeError, match="inputs"):
        export.export_split(model, x.astype(np.float32), None, ["a"], tmp_path / "c", **kw)
    with pytest.raises(ValueError, match="postprocess"):
        export.export_split(model, x, None, ["a"], tmp_path / "d", **dict(kw, postprocess=lambda o: o))
    with pytest.raises(ValueError, match="model"):
        export.export_split(tf.keras.Sequential(name="other"), x, None, ["a"], tmp_path / "e", **kw)


def test_pipeline_is_a_function_of_seed_and_step(pix_pair):
    full = list(train.pix2pix_dataset(*pix_pair, seed=5, num_steps=4))
    tail = list(train.pix2pix_dataset(*pix_pair, seed=5, start_step=2, num_steps=2))
    for (a, b), (c, d) in zip(full[2:], tail):
        np.testing.assert_array_equal(a.numpy(), c.numpy())
        np.testing.assert_array_equal(b.numpy(), d.numpy())
    assert full[0][0].shape == (1, 64, 64, 3)
