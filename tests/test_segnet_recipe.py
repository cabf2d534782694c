"""SegNet's CamVid recipe (tf_models.train): median-frequency class weights, paired augmentation, the
best-validation checkpoint, determinism for a seed, BN statistics computed once per network, and the
camvid preset that selects it (experiments.tasks)."""

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from experiments.tasks import SEGNET_RECIPES, run_config  # noqa: E402
from tf_models import loaders, registry, train  # noqa: E402


def test_median_frequency_weights_by_hand():
    # Three 2x2 label maps, 3 classes, 255 = void.
    labels = np.array([[[0, 0], [1, 255]],      # 3 labelled pixels: class 0 x2, class 1 x1
                       [[0, 1], [1, 1]],        # 4 labelled: class 0 x1, class 1 x3
                       [[2, 2], [2, 0]]], np.uint8)  # 4 labelled: class 2 x3, class 0 x1
    # f_c = pixels of c / labelled pixels of the images where c appears:
    f0 = (2 + 1 + 1) / (3 + 4 + 4)   # 4/11
    f1 = (1 + 3) / (3 + 4)           # 4/7
    f2 = 3 / 4
    med = sorted([f0, f1, f2])[1]    # 4/7
    weights, info = train.median_frequency_weights(labels, 3)
    np.testing.assert_allclose(weights, [med / f0, med / f1, med / f2], rtol=1e-12)
    assert info["pixels"] == [4, 4, 3]
    np.testing.assert_allclose(info["frequency"], [f0, f1, f2], rtol=1e-12)
    # A class that never appears gets weight 0 and stays out of the median.
    weights4, _ = train.median_frequency_weights(labels, 4)
    np.testing.assert_allclose(weights4, [med / f0, med / f1, med / f2, 0.0], rtol=1e-12)


def _coded_pair(h=12, w=16):
    """An image whose red channel encodes each pixel's column and green its row, and labels equal to
    the column: after any flip/crop that moves image and labels together, labels == red."""
    cols = np.broadcast_to(np.arange(w, dtype=np.float32)[None, :], (h, w))
    rows = np.broadcast_to(np.arange(h, dtype=np.float32)[:, None], (h, w))
    image = np.stack([cols, rows, np.zeros((h, w), np.float32)], -1)
    return tf.constant(image), tf.constant(cols.astype(np.uint8))


def test_flip_moves_image_and_labels_together():
    image, labels = _coded_pair()
    flipped = 0
    for s in range(16):
        x, y = train.augment_pair(image, labels, tf.constant([7, s], tf.int64), flip=True)
        x, y = x.numpy(), y.numpy()
        np.testing.assert_array_equal(x[..., 0], y)            # same columns moved in both
        np.testing.assert_array_equal(x[..., 1], image.numpy()[..., 1])  # rows untouched
        if x[0, 0, 0] == 15:
            np.testing.assert_array_equal(y, labels.numpy()[:, ::-1])
            flipped += 1
        else:
            np.testing.assert_array_equal(y, labels.numpy())
    assert 0 < flipped < 16  # both outcomes drawn


def test_zoom_crop_keeps_labels_on_their_pixels():
    # The image's red channel is the column, bilinear-resampled; the labels (the column too) are
    # resampled nearest-neighbour: after the same zoom, crop and flip they differ by under a pixel.
    image, labels = _coded_pair()
    zoomed = 0
    for s in range(8):
        x, y = train.augment_pair(image, labels, tf.constant([1, s], tf.int64), flip=True, zoom=1.5)
        x, y = x.numpy(), y.numpy()
        assert x.shape == (12, 16, 3) and y.shape == (12, 16) and y.dtype == np.uint8
        assert np.abs(x[..., 0] - y).max() <= 1.0
        steps = np.abs(np.diff(x[..., 0], axis=1))
        zoomed += bool(steps.min() < 0.99)  # columns closer than one source pixel: zoomed in
    assert zoomed == 8


def test_brightness_changes_image_only():
    image, labels = _coded_pair()
    x, y = train.augment_pair(image * 10, labels, tf.constant([0, 3], tf.int64), flip=False, brightness=0.3)
    np.testing.assert_array_equal(y.numpy(), labels.numpy())
    assert not np.allclose(x.numpy(), image.numpy() * 10)
    assert x.numpy().min() >= 0 and x.numpy().max() <= 255


def _tiny_set(n=6, h=16, w=24, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    y = (x[..., 0] // 64).astype(np.uint8)  # 4 classes, learnable from the red channel
    return x, y


def _weights(model):
    return [v.numpy() for v in model.weights]


def test_best_validation_checkpoint_is_the_network_kept(tmp_path, monkeypatch):
    x, y = _tiny_set()
    scores = iter([0.2, 0.7, 0.4])  # the second validation (step 4) is the best
    real = train.evaluate_segmentation

    def scripted(pred, labels, n):
        return dict(real(pred, labels, n), mean_iou=next(scores))

    monkeypatch.setattr(train, "evaluate_segmentation", scripted)
    run = tmp_path / "run"
    model, hist = train.train_segnet(x, y, run, val=(x, y), num_classes=4, class_weights="median_frequency",
                                     steps=6, val_every=2, batch_size=2, optimizer="adam", lr=1e-2,
                                     keep="best_val", progress=False)
    assert [e["step"] for e in hist["val"]] == [2, 4, 6]
    assert hist["best"]["step"] == 4
    # The returned network is the step-4 checkpoint's, not the last one's ...
    last = train._SEGNET_BUILDERS["basic"]([16, 24, 3], 4)
    tf.train.Checkpoint(model=last).restore(tf.train.latest_checkpoint(str(run / train.CKPT_DIR))).expect_partial()
    assert any(not np.array_equal(a, b) for a, b in zip(_weights(model), _weights(last)))
    best = train._SEGNET_BUILDERS["basic"]([16, 24, 3], 4)
    tf.train.Checkpoint(model=best).restore(str(run / train.BEST_DIR / "ckpt-4")).expect_partial()
    for a, b in zip(_weights(model), _weights(best)):
        np.testing.assert_array_equal(a, b)
    # ... and it is the one load_model (hence the driver's export) restores.
    for a, b in zip(_weights(train.load_model(run)), _weights(best)):
        np.testing.assert_array_equal(a, b)
    # The weights were computed from the labels and recorded.
    import json
    config = json.loads((run / train.CONFIG).read_text())
    assert config["class_balancing"]["method"] == "median_frequency"
    assert config["class_weights"] == train.median_frequency_weights(y, 4)[0]


def test_same_seed_trains_the_same_network(tmp_path):
    x, y = _tiny_set()
    recipe = dict(val=(x, y), num_classes=4, class_weights="median_frequency", steps=5, batch_size=2,
                  optimizer="adam", lr=1e-3, lr_schedule="cosine", warmup_steps=2, flip=True, zoom=1.3,
                  brightness=0.2, keep="best_val", progress=False, seed=5)
    a, _ = train.train_segnet(x, y, tmp_path / "a", **recipe)
    b, _ = train.train_segnet(x, y, tmp_path / "b", **recipe)
    c, _ = train.train_segnet(x, y, tmp_path / "c", **dict(recipe, seed=6))
    for u, v in zip(_weights(a), _weights(b)):
        np.testing.assert_array_equal(u, v)
    assert any(not np.array_equal(u, v) for u, v in zip(_weights(a), _weights(c)))


def test_warmup_cosine_schedule():
    s = train.WarmupCosine(1.0, total=10, warmup=2)
    got = [float(s(i)) for i in range(11)]
    assert got[0] == pytest.approx(0.5) and got[1] == pytest.approx(1.0)
    assert got[2] == pytest.approx(1.0) and got[10] == pytest.approx(0.0, abs=1e-7)
    assert got[6] == pytest.approx(0.5)  # half-way through the decay
    assert all(a >= b for a, b in zip(got[2:], got[3:]))


def test_bn_statistics_are_computed_once_per_network(tmp_path, monkeypatch):
    x, y = _tiny_set()
    run = tmp_path / "run"
    train.train_segnet(x, y, run, num_classes=4, class_weights=[1.0] * 4, steps=2, batch_size=2, progress=False)
    calls = []
    recompute = train.recompute_bn_statistics

    def counted(*args, **kwargs):
        calls.append(1)
        return recompute(*args, **kwargs)

    monkeypatch.setattr(train, "recompute_bn_statistics", counted)
    arch = registry.get("segnet_basic")
    # The train stage finishes the network once (storing the statistics) ...
    train.finish_training(train.load_model(run), arch, x, batch_size=2, progress=False, run_dir=run)
    assert len(calls) == 1 and (run / train.FINISHED_BN).is_file()
    # ... and the export stage's load reuses them: no second pass, the same activations.
    exported, _ = loaders.load_network(run, bn_inputs=x, batch_size=2, progress=False)
    assert len(calls) == 1
    fresh = recompute(train.load_model(run), x, batch_size=2, progress=False)
    np.testing.assert_array_equal(exported(x.astype(np.float32)).numpy(), fresh(x.astype(np.float32)).numpy())
    # Other images or another batch size are another computation.
    loaders.load_network(run, bn_inputs=x[:4], batch_size=2, progress=False)
    assert len(calls) == 2
    loaders.load_network(run, bn_inputs=x[:4], batch_size=2, progress=False)
    assert len(calls) == 2


def test_camvid_preset_uses_the_recipe_and_keys_it():
    from experiments.run import stage_configs

    real = run_config("camvid", "quick", real_data=True)
    assert real.recipe == "camvid" and real.size == (90, 120)
    assert run_config("camvid", "quick", real_data=False).recipe == "tutorial"
    assert run_config("camvid", "paper", real_data=True).size == (360, 480)
    assert real.train_recipe()["keep"] == "best_val" and real.train_recipe()["length"]["epochs"] == real.epochs
    assert set(SEGNET_RECIPES["camvid"]) <= set(train.train_segnet.__code__.co_varnames) | {"warmup_epochs"}
    kw = dict(data_dir=None, query_split="val", checkpoint=None, match_method="shortlist", exact_queries=0,
              out_dir="o")
    base = stage_configs(real, **kw)["train"]
    from dataclasses import replace
    assert stage_configs(replace(real, recipe="tutorial"), **kw)["train"] != base
    # A decaying schedule makes the length part of the network.
    assert stage_configs(replace(real, epochs=real.epochs + 1), **kw)["train"] != base


def test_validation_scores_the_network_with_recomputed_bn_statistics(tmp_path, monkeypatch):
    x, y = _tiny_set(n=8)
    calls = []
    recompute = train.recompute_bn_statistics
    monkeypatch.setattr(train, "recompute_bn_statistics", lambda m, imgs, **kw: calls.append(len(imgs)) or
                        recompute(m, imgs, **kw))
    run = tmp_path / "run"
    model, hist = train.train_segnet(x, y, run, val=(x, y), num_classes=4, class_weights=[1.0] * 4, steps=4,
                                     val_every=2, batch_size=2, optimizer="adam", lr=1e-2, keep="best_val",
                                     val_bn_images=4, progress=False)
    assert calls == [4, 4]  # before each validation, over 4 evenly spaced training images
    # The kept network holds the statistics it was scored with: scoring it again gives the same mIoU.
    from compnn_py.metrics import evaluate_segmentation
    best = train.load_model(run)
    again = evaluate_segmentation(train.label_predictor(best)(x), y, 4)
    assert again["mean_iou"] == hist["best"]["mean_iou"]


def test_recomputed_bn_statistics_are_the_mean_of_batch_statistics():
    from tf_models import segnet
    from tf_models.layers import BatchNorm

    x, _ = _tiny_set(n=6)
    model = segnet.build_segnet_basic((16, 24, 3), 4)
    train.recompute_bn_statistics(model, x, batch_size=2, progress=False)
    # Reference: each BN layer's input per batch (a sub-model in inference mode is not the same
    # thing, so run the layers' inputs in training mode, eagerly) and numpy's moments averaged.
    bns = [layer for layer in model.layers if isinstance(layer, BatchNorm)]
    got = {layer.name: (layer.moving_mean.numpy(), layer.moving_variance.numpy()) for layer in bns}
    assert all(layer.momentum == 0.99 for layer in bns)  # restored
    probe = tf.keras.Model(model.input, [layer.input for layer in bns])
    ref = {layer.name: [[], []] for layer in bns}
    for start in range(0, 6, 2):
        feats = probe(x[start: start + 2].astype(np.float32), training=True)
        for layer, f in zip(bns, feats):
            f = np.asarray(f, np.float64)
            ref[layer.name][0].append(f.mean(axis=(0, 1, 2)))
            ref[layer.name][1].append(f.var(axis=(0, 1, 2)))
    for layer in bns:
        np.testing.assert_allclose(got[layer.name][0], np.mean(ref[layer.name][0], 0), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(got[layer.name][1], np.mean(ref[layer.name][1], 0), rtol=1e-4, atol=1e-4)


def test_stored_bn_statistics_do_not_make_a_checkpoint_new(tmp_path):
    import os

    from experiments.steps.train import FINISHED_BN, checkpoint_stamp

    run = tmp_path / "run"
    (run / "best").mkdir(parents=True)
    (run / "best" / "ckpt-1.index").write_text("x")
    os.utime(run / "best" / "ckpt-1.index", (1000, 1000))
    before = checkpoint_stamp(run)
    (run / FINISHED_BN).write_text("stats")  # written later by an export of this network
    assert FINISHED_BN == train.FINISHED_BN and checkpoint_stamp(run) == before == 1000
    (run / "best" / "ckpt-2.index").write_text("y")  # a new checkpoint is a change
    assert checkpoint_stamp(run) > before
