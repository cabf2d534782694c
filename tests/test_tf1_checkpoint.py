"""Loading an affinelayer/pix2pix-tensorflow (TF1) checkpoint into our U-net by variable name.

The checkpoints are written here with tf.compat.v1 variables in a Graph and a v1 Saver, under the
reference's names and shapes (both of its naming schemes), with random values; the expected mapping
is spelled out by hand below, independently of tf_models.loaders, and the loaded generator is
checked against a forward pass written with raw tf.nn ops the way the reference computes it.
"""

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from tf_models import loaders  # noqa: E402

DEPTH, NGF, SIZE = 5, 4, 32


def _chans(k):  # output channels of encoder_k, as in the reference's layer_specs
    return NGF * min(2 ** (k - 1), 8)


def reference_shapes(style, depth=DEPTH, in_ch=3, out_ch=3):
    """{variable name: shape} of the reference generator (innermost BN included, as the reference has)."""
    conv, deconv, bn = {"ops": ("conv/filter", "deconv/filter", ("batchnorm/offset", "batchnorm/scale")),
                        "layers": ("conv2d/kernel", "conv2d_transpose/kernel",
                                   ("batch_normalization/beta", "batch_normalization/gamma",
                                    "batch_normalization/moving_mean",
                                    "batch_normalization/moving_variance"))}[style]
    shapes = {}
    for k in range(1, depth + 1):
        cin = in_ch if k == 1 else _chans(k - 1)
        shapes[f"generator/encoder_{k}/{conv}"] = (4, 4, cin, _chans(k))
        if style == "layers":
            shapes[f"generator/encoder_{k}/conv2d/bias"] = (_chans(k),)
        if k > 1:
            shapes.update({f"generator/encoder_{k}/{b}": (_chans(k),) for b in bn})
    for k in range(depth, 0, -1):
        cin = _chans(depth) if k == depth else 2 * _chans(k)
        cout = out_ch if k == 1 else _chans(k - 1)
        shapes[f"generator/decoder_{k}/{deconv}"] = (4, 4, cout, cin)
        if style == "layers":
            shapes[f"generator/decoder_{k}/conv2d_transpose/bias"] = (cout,)
        if k > 1:
            shapes.update({f"generator/decoder_{k}/{b}": (cout,) for b in bn})
    return shapes


def write_checkpoint(directory, shapes, seed=0):
    """A TF1 checkpoint of random values under those names, plus what the reference also saves and we
    must ignore: Adam slots, the discriminator, the global step. Returns {name: value}."""
    rng = np.random.default_rng(seed)
    values = {}
    for name, shape in shapes.items():
        v = rng.normal(0.0, 0.2, shape)
        if name.endswith(("scale", "gamma", "moving_variance")):
            v = 1.0 + np.abs(v)
        values[name] = v.astype(np.float32)
    graph = tf.Graph()
    with graph.as_default():
        for name, v in values.items():
            tf.compat.v1.get_variable(name, initializer=v)
            tf.compat.v1.get_variable(name + "/Adam", initializer=np.zeros_like(v))
            tf.compat.v1.get_variable(name + "/Adam_1", initializer=np.zeros_like(v))
        tf.compat.v1.get_variable("discriminator/layer_1/conv/filter", initializer=np.ones((4, 4, 6, 4), np.float32))
        tf.compat.v1.get_variable("global_step", initializer=np.int64(1000))
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            saver.save(sess, str(directory / "model"), global_step=1000)
    return values


def reference_forward(values, x01, style):
    """The reference generator's forward pass (batch 1, BN on batch statistics, no dropout) with raw
    tf.nn ops: explicit 1-pixel padding + VALID conv, conv2d_transpose SAME, tanh at decoder_1."""
    n = {"ops": dict(conv="conv/filter", deconv="deconv/filter", scale="batchnorm/scale",
                     offset="batchnorm/offset"),
         "layers": dict(conv="conv2d/kernel", deconv="conv2d_transpose/kernel", scale="batch_normalization/gamma",
                        offset="batch_normalization/beta")}[style]

    def bias(scope, kind):
        return values.get(f"{scope}/{kind}/bias", 0.0)

    def bn(x, scope):
        mean, var = tf.nn.moments(x, axes=[0, 1, 2])
        return tf.nn.batch_normalization(x, mean, var, values[f"{scope}/{n['offset']}"],
                                         values[f"{scope}/{n['scale']}"], 1e-5)

    def conv(x, scope):
        padded = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]])
        return tf.nn.conv2d(padded, values[f"{scope}/{n['conv']}"], 2, "VALID") + bias(scope, "conv2d")

    def deconv(x, scope):
        f = values[f"{scope}/{n['deconv']}"]
        b, h, w, _ = x.shape
        return tf.nn.conv2d_transpose(x, f, [b, 2 * h, 2 * w, f.shape[2]], 2, "SAME") + \
            bias(scope, "conv2d_transpose")

    layers = [conv(tf.constant(x01 * 2 - 1), "generator/encoder_1")]
    for k in range(2, DEPTH + 1):
        scope = f"generator/encoder_{k}"
        layers.append(bn(conv(tf.nn.leaky_relu(layers[-1], 0.2), scope), scope))
    x = layers[-1]
    for k in range(DEPTH, 1, -1):
        scope = f"generator/decoder_{k}"
        inp = x if k == DEPTH else tf.concat([x, layers[k - 1]], axis=3)
        x = bn(deconv(tf.nn.relu(inp), scope), scope)
    x = deconv(tf.nn.relu(tf.concat([x, layers[0]], axis=3)), "generator/decoder_1")
    return np.asarray(tf.tanh(x))


@pytest.mark.parametrize("style", ["ops", "layers"])
def test_every_reference_variable_lands_in_its_weight(tmp_path, style):
    values = write_checkpoint(tmp_path, reference_shapes(style))
    assert loaders.detect(tmp_path) == "tf1"
    model, arch = loaders.load_network(tmp_path, image_size=(SIZE, SIZE), kind="segmentation", expect="pix2pix")
    assert arch.name == "pix2pix" and model.count_params() > 0
    # The mapping, spelled out: reference scope/variable -> our layer and weight.
    ours = {"conv/filter": "kernel", "deconv/filter": "kernel", "conv2d/kernel": "kernel",
            "conv2d/bias": "bias", "conv2d_transpose/kernel": "kernel", "conv2d_transpose/bias": "bias",
            "batchnorm/scale": "gamma", "batchnorm/offset": "beta", "batch_normalization/gamma": "gamma",
            "batch_normalization/beta": "beta", "batch_normalization/moving_mean": "moving_mean",
            "batch_normalization/moving_variance": "moving_variance"}
    checked = 0
    for name, value in values.items():
        _, scope, rest = name.split("/", 2)
        part = {"conv": "conv", "conv2d": "conv", "deconv": "deconv", "conv2d_transpose": "deconv",
                "batchnorm": "bn", "batch_normalization": "bn"}[rest.split("/")[0]]
        layer = model.get_layer(f"{scope}_{part}")
        weight = next(w for w in layer.weights if w.path.split("/")[-1] == ours[rest])
        np.testing.assert_array_equal(np.asarray(weight), value, err_msg=name)
        checked += 1
    assert checked == len(values)
    if style == "ops":  # the reference's own ops have no biases: ours are left at zero
        assert not np.asarray(model.get_layer("encoder_2_conv").bias).any()
    # The bottleneck has BN in the reference, so the U-net is built with it.
    assert "encoder_5_bn" in [layer.name for layer in model.layers]

    x = np.random.default_rng(1).uniform(0, 1, (1, SIZE, SIZE, 3)).astype(np.float32)
    want = reference_forward(values, x, style)
    got = np.asarray(model(x * 255.0, training=False))
    np.testing.assert_allclose(got, want, atol=2e-5)


def test_a_checkpoint_that_does_not_map_fails_with_one_clear_error(tmp_path):
    shapes = reference_shapes("ops")
    del shapes["generator/decoder_3/batchnorm/scale"]
    del shapes["generator/encoder_2/batchnorm/offset"]
    shapes["generator/decoder_2/attention/filter"] = (3, 3, 4, 4)
    write_checkpoint(tmp_path, shapes)
    with pytest.raises(ValueError) as err:
        loaders.load_network(tmp_path, image_size=(SIZE, SIZE))
    msg = str(err.value)
    assert "\n" not in msg
    assert "missing: generator/decoder_3/batchnorm/scale, generator/encoder_2/batchnorm/offset" in msg
    assert "not mapped: generator/decoder_2/attention/filter" in msg

    wrong = tmp_path / "wrong"
    wrong.mkdir()
    shapes = reference_shapes("ops")
    shapes["generator/decoder_4/batchnorm/offset"] = (5,)
    write_checkpoint(wrong, shapes)
    with pytest.raises(ValueError, match=r"wrong shape: generator/decoder_4/batchnorm/offset \(5,\)"):
        loaders.load_network(wrong, image_size=(SIZE, SIZE))


def test_detection_and_refusals(tmp_path):
    write_checkpoint(tmp_path, reference_shapes("ops"))
    with pytest.raises(ValueError, match="pix2pix-tensorflow generator .*expected segnet_basic"):
        loaders.load_network(tmp_path, image_size=(SIZE, SIZE), expect="segnet_basic")
    with pytest.raises(ValueError, match="divisible by 32"):
        loaders.load_network(tmp_path, image_size=(48, 48))
    other = tmp_path / "other"
    other.mkdir()
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.get_variable("resnet/conv1/weights", initializer=np.ones((3, 3), np.float32))
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            tf.compat.v1.train.Saver().save(sess, str(other / "model"))
    with pytest.raises(ValueError, match="no pix2pix-tensorflow generator.*resnet/conv1/weights"):
        loaders.load_network(other, image_size=(SIZE, SIZE))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="cannot tell what"):
        loaders.detect(tmp_path / "empty")
