"""SegNet: pooling switches and unpooling against a naive numpy reference (odd sizes included),
Caffe-model parameter counts and shapes, the class-weighted loss, geometry and match spec."""

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from tf_models import segnet  # noqa: E402
from tf_models.layers import MaxPoolWithSwitches, MaxUnpool  # noqa: E402


def naive_pool_unpool(x):
    """Caffe ceil-mode 2x2/2 max pooling with first-max switches, then unpooling to x's size."""
    n, h, w, c = x.shape
    ph, pw = -(-h // 2), -(-w // 2)
    pooled = np.zeros((n, ph, pw, c), x.dtype)
    unpooled = np.zeros_like(x)
    for b in range(n):
        for i in range(ph):
            for j in range(pw):
                for k in range(c):
                    best, at = None, None
                    for di in range(2):
                        for dj in range(2):
                            y, z = 2 * i + di, 2 * j + dj
                            if y < h and z < w and (best is None or x[b, y, z, k] > best):
                                best, at = x[b, y, z, k], (y, z)
                    pooled[b, i, j, k] = best
                    unpooled[b, at[0], at[1], k] = best
    return pooled, unpooled


@pytest.mark.parametrize("shape", [(2, 45, 61, 3), (1, 8, 6, 2), (1, 1, 3, 1)])
def test_pool_unpool_matches_numpy(shape):
    rng = np.random.default_rng(0)
    # Small integers make ties frequent: the first maximum in row-major order must win.
    x = rng.integers(-3, 4, shape).astype(np.float32)
    x[0, -1, :, 0] = -10  # a clipped last row of windows must still pick a real cell
    pooled, switches = MaxPoolWithSwitches()(tf.constant(x))
    unpooled = MaxUnpool()(pooled, switches, tf.constant(x))
    want_pooled, want_unpooled = naive_pool_unpool(x)
    np.testing.assert_array_equal(pooled.numpy(), want_pooled)
    np.testing.assert_array_equal(unpooled.numpy(), want_unpooled)


def test_unpool_gradient_reaches_only_the_switch():
    x = tf.constant([[[[1.0], [5.0], [2.0]], [[5.0], [0.0], [7.0]], [[3.0], [4.0], [4.0]]]])
    with tf.GradientTape() as tape:
        tape.watch(x)
        pooled, sw = MaxPoolWithSwitches()(x)
        y = tf.reduce_sum(MaxUnpool()(pooled, sw, x))
    g = tape.gradient(y, x).numpy()[0, :, :, 0]
    # Windows: {1,5,5,0} -> first 5; {2,7} -> 7; {3,4} -> 4; {4} -> 4 (clipped window).
    np.testing.assert_array_equal(g, [[0, 1, 0], [0, 0, 1], [0, 1, 1]])


def caffe_params(convs):
    """conv weights + biases + BN scale/shift for (k, cin, cout, has_bn) tuples."""
    return sum(k * k * ci * co + co + (2 * co if bn else 0) for k, ci, co, bn in convs)


def test_segnet_basic_counts_and_shapes():
    m = segnet.build_segnet_basic((45, 60, 3))
    convs = [(7, 3, 64, True)] + [(7, 64, 64, True)] * 7 + [(1, 64, 11, False)]
    assert sum(int(np.prod(v.shape)) for v in m.trainable_weights) == caffe_params(convs) == 1_416_587
    sizes = [(45, 60), (23, 30), (12, 15), (6, 8), (3, 4)]
    for k in range(1, 5):
        assert tuple(m.get_layer(f"conv{k}").output.shape[1:]) == (*sizes[k - 1], 64)
        assert tuple(m.get_layer(f"pool{k}").output.shape[1:]) == (*sizes[k], 64)
        assert tuple(m.get_layer(f"upsample{k}").output.shape[1:]) == (*sizes[k - 1], 64)
        assert tuple(m.get_layer(f"conv_decode{k}").output.shape[1:]) == (*sizes[k - 1], 64)
    out = m(np.zeros((1, 45, 60, 3), np.float32))
    assert out.shape == (1, 45, 60, 11)


def test_segnet_vgg16_count():
    m = segnet.build_segnet_vgg16((32, 32, 3))
    enc = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256), (256, 512),
           (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)]
    dec = [(512, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 256), (256, 256),
           (256, 256), (256, 128), (128, 128), (128, 64), (64, 64)]
    want = caffe_params([(3, a, b, True) for a, b in enc + dec] + [(3, 64, 11, False)])
    assert sum(int(np.prod(v.shape)) for v in m.trainable_weights) == want
    assert 29.3e6 < want < 29.5e6
    assert m.output.shape[1:] == (32, 32, 11)
    assert m.get_layer("pool5").output.shape[1:] == (1, 1, 512)


def test_weighted_cross_entropy_matches_numpy():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(2, 5, 7, 11)).astype(np.float32)
    labels = rng.integers(0, 11, (2, 5, 7)).astype(np.uint8)
    labels[0, 0] = 255
    w = np.array(segnet.CAMVID_CLASS_WEIGHTS)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    valid = labels != 255
    y = np.where(valid, labels, 0)
    ce = -np.take_along_axis(logp, y[..., None].astype(int), -1)[..., 0]
    want = (w[y] * ce * valid).sum() / valid.sum()
    got = float(segnet.weighted_cross_entropy(tf.constant(logits), tf.constant(labels), w))
    assert got == pytest.approx(want, rel=1e-5)


def test_geometry_and_match_spec():
    m = segnet.build_segnet_basic((48, 64, 3))
    geo = segnet.layer_geometry(m)
    assert geo["conv_decode1"] == {"kernel": 1, "stride": 1}
    assert geo["upsample2"] == {"kernel": 7, "stride": 2}
    assert geo["pool4"]["stride"] == 16
    for name in geo:
        m.get_layer(name)  # every geometry entry is a real layer
    spec = segnet.match_spec(m)
    assert spec["fine"] == "conv_decode1" and spec["kernel"]["conv_decode1"] == 1
    assert spec["global"] == "pool4"
    v = segnet.build_segnet_vgg16((32, 32, 3))
    assert segnet.match_spec(v)["kernel"]["conv1_2_D"] == 3
    for name in segnet.layer_geometry(v):
        v.get_layer(name)


def test_logits_to_labels():
    logits = np.zeros((1, 2, 2, 3), np.float32)
    logits[0, 0, 1, 2] = 1
    np.testing.assert_array_equal(segnet.logits_to_labels(logits), [[[0, 2], [0, 0]]])


def test_bad_input_shape():
    with pytest.raises(ValueError, match="input_shape"):
        segnet.build_segnet_basic((45, 60))


def test_recompute_bn_statistics_is_the_mean_of_batch_statistics():
    import keras

    from tf_models.layers import BatchNorm
    from tf_models.train import recompute_bn_statistics

    x = keras.Input((4, 5, 3))
    model = keras.Model(x, BatchNorm(name="bn")(x))
    data = np.random.default_rng(1).integers(0, 256, (6, 4, 5, 3)).astype(np.uint8)
    recompute_bn_statistics(model, data, batch_size=2, progress=False)
    batches = data.astype(np.float64).reshape(3, 2, 4, 5, 3)
    want_mean = batches.mean(axis=(1, 2, 3)).mean(0)
    want_var = batches.var(axis=(1, 2, 3)).mean(0)
    bn = model.get_layer("bn")
    np.testing.assert_allclose(bn.moving_mean.numpy(), want_mean, rtol=1e-5)
    np.testing.assert_allclose(bn.moving_variance.numpy(), want_var, rtol=1e-4)
    assert bn.momentum == 0.99  # restored
