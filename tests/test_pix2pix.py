"""Pix2Pix generator and discriminator: reference parameter counts, paper layer names and shapes,
U-net wiring, inference options (dropout, BN statistics, innermost BN), losses, jitter."""

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from tf_models import pix2pix, train  # noqa: E402


def n_params(model):
    return sum(int(np.prod(v.shape)) for v in model.trainable_weights)


@pytest.fixture(scope="module")
def small():
    return pix2pix.build_generator(64, ngf=8, seed=1)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3)).astype(np.float32)


def test_reference_parameter_counts_and_paper_shapes():
    # Counts of affinelayer/pix2pix-tensorflow at 256x256, ngf = ndf = 64 (from the issue).
    g_ref = pix2pix.build_generator(256, ngf=64, innermost_norm=True)
    assert n_params(g_ref) == 54_420_483
    g = pix2pix.build_generator(256, ngf=64)
    assert n_params(g) == 54_419_459
    d = pix2pix.build_discriminator(256, ndf=64)
    assert n_params(d) == 2_769_601
    assert tuple(d.output.shape[1:]) == (30, 30, 1)
    # The paper's feature sizes: 4*4*128 = 2048 for decoder_1, 4*4*512 = 8192 for decoder_3.
    assert tuple(g.get_layer("decoder_1_input").output.shape[1:]) == (128, 128, 128)
    assert tuple(g.get_layer("decoder_3_input").output.shape[1:]) == (32, 32, 512)
    assert tuple(g.get_layer("encoder_8").output.shape[1:]) == (1, 1, 512)
    assert tuple(g.output.shape[1:]) == (256, 256, 3)


def test_small_layer_names_and_shapes(small):
    ch = [8, 16, 32, 64, 64, 64]  # ngf * min(2**k, 8)
    for k in range(1, 7):
        assert tuple(small.get_layer(f"encoder_{k}").output.shape[1:]) == (64 >> k, 64 >> k, ch[k - 1])
        inner = ch[5] if k == 6 else ch[k - 1] + ch[k - 1]
        assert tuple(small.get_layer(f"decoder_{k}_input").output.shape[1:]) == (64 >> k, 64 >> k, inner)
        out_c = 3 if k == 1 else ch[k - 2]
        assert tuple(small.get_layer(f"decoder_{k}").output.shape[1:]) == (64 >> (k - 1), 64 >> (k - 1), out_c)
    assert set(pix2pix.layer_geometry(small)) == {f"{p}_{k}{s}" for k in range(1, 7)
                                                  for p, s in (("encoder", ""), ("decoder", ""),
                                                               ("decoder", "_input"))}


def test_unet_wiring(small, images):
    names = [f"encoder_{k}" for k in range(1, 7)] + [f"decoder_{k}" for k in range(1, 7)] + \
            [f"decoder_{k}_input" for k in range(1, 7)]
    feats = dict(zip(names, tf.keras.Model(small.input, [small.get_layer(n).output for n in names])(images)))
    relu = lambda a: np.maximum(np.asarray(a), 0)  # noqa: E731
    np.testing.assert_allclose(feats["decoder_6_input"], relu(feats["encoder_6"]), atol=1e-6)
    for k in range(1, 6):
        want = relu(np.concatenate([feats[f"decoder_{k + 1}"], feats[f"encoder_{k}"]], axis=-1))
        np.testing.assert_allclose(feats[f"decoder_{k}_input"], want, atol=1e-6)
    out = np.asarray(feats["decoder_1"])
    assert out.min() >= -1 and out.max() <= 1


def test_inference_is_deterministic_and_batch_independent(small, images):
    a = np.asarray(small(images, training=False))
    np.testing.assert_array_equal(a, np.asarray(small(images, training=False)))
    # "image" BN statistics: an image's output does not depend on its batch companions.
    np.testing.assert_allclose(a[1:2], np.asarray(small(images[1:2], training=False)), atol=1e-5)


def test_reference_faults_are_options(images):
    noisy = pix2pix.build_generator(64, ngf=8, dropout_at_inference=True)
    assert not np.allclose(noisy(images), noisy(images))
    moving = pix2pix.build_generator(64, ngf=8, bn_inference="moving", seed=1)
    per_image = pix2pix.build_generator(64, ngf=8, bn_inference="image", seed=1)
    per_image.set_weights(moving.get_weights())
    assert not np.allclose(moving(images), per_image(images), atol=1e-3)
    # With batch-1 statistics the innermost BN sees one value per channel and outputs beta for any input.
    erased = pix2pix.build_generator(64, ngf=8, innermost_norm=True)
    enc = tf.keras.Model(erased.input, erased.get_layer("encoder_6").output)(images).numpy()
    np.testing.assert_allclose(enc[0], enc[1], atol=1e-4)
    kept = pix2pix.build_generator(64, ngf=8)
    enc = tf.keras.Model(kept.input, kept.get_layer("encoder_6").output)(images).numpy()
    assert np.abs(enc[0] - enc[1]).max() > 1e-3


def test_discriminator_small_shape_and_range(images):
    d = pix2pix.build_discriminator(64, ndf=8)
    p = np.asarray(d([images / 127.5 - 1, images / 127.5 - 1]))
    assert p.shape == (3, 6, 6, 1) and (p > 0).all() and (p < 1).all()


def test_losses_match_numpy():
    rng = np.random.default_rng(1)
    pr, pf = rng.uniform(0.01, 0.99, (2, 5, 5, 1)), rng.uniform(0.01, 0.99, (2, 5, 5, 1))
    out, tgt = rng.uniform(-1, 1, (2, 8, 8, 3)), rng.uniform(-1, 1, (2, 8, 8, 3))
    d = float(pix2pix.discriminator_loss(tf.constant(pr), tf.constant(pf)))
    assert d == pytest.approx(np.mean(-(np.log(pr) + np.log(1 - pf))), rel=1e-6)
    total, gan, l1 = (float(v) for v in pix2pix.generator_losses(tf.constant(pf), tf.constant(out),
                                                                tf.constant(tgt), 100.0, 1.0))
    assert gan == pytest.approx(np.mean(-np.log(pf)), rel=1e-6)
    assert l1 == pytest.approx(np.mean(np.abs(out - tgt)), rel=1e-6)
    assert total == pytest.approx(gan + 100 * l1, rel=1e-6)


def test_jitter_same_draw_for_both_images():
    rng = np.random.default_rng(2)
    a = rng.integers(0, 256, (64, 64, 3)).astype(np.uint8)
    outs = [train.jitter_pair(tf.constant(a), tf.constant(a), tf.constant([7, s], tf.int64)) for s in range(8)]
    for x, y in outs:
        assert x.shape == (64, 64, 3)
        np.testing.assert_array_equal(x.numpy(), y.numpy())
    # Different samples draw different crops/flips; the same seed draws the same one.
    assert len({x.numpy().tobytes() for x, _ in outs}) > 1
    again = train.jitter_pair(tf.constant(a), tf.constant(a), tf.constant([7, 0], tf.int64))[0]
    np.testing.assert_array_equal(again.numpy(), outs[0][0].numpy())


def test_match_spec(small):
    spec = pix2pix.match_spec(small)
    assert spec["global"] == "encoder_6" and spec["fine"] == "decoder_1_input"
    assert spec["kernel"]["decoder_1_input"] == 4 and spec["stride"]["decoder_1_input"] == 2
    assert spec["stride"]["decoder_2_input"] == 4


@pytest.mark.parametrize("kwargs", [dict(image_size=100), dict(image_size=64, depth=7),
                                    dict(image_size=64, ngf=0), dict(image_size=64, bn_inference="batch")])
def test_bad_geometry(kwargs):
    with pytest.raises(ValueError):
        pix2pix.build_generator(**kwargs)


_WEIGHTS_DIGEST = """
import hashlib, keras, numpy as np
from tf_models import pix2pix
keras.utils.set_random_seed(7)
g = pix2pix.build_generator(32, ngf=4)
d = pix2pix.build_discriminator(32, ndf=4)
print(hashlib.sha1(b"".join(np.asarray(w).tobytes() for w in g.get_weights() + d.get_weights())).hexdigest())
"""


def test_initial_weights_are_a_function_of_the_seed_and_distinct_per_layer():
    import subprocess
    import sys

    # Two processes, same seed: the same weights (an initializer made at import drew its seed before
    # set_random_seed, so each process started from different weights).
    digests = {subprocess.run([sys.executable, "-c", _WEIGHTS_DIGEST], capture_output=True, text=True,
                              check=True).stdout.split()[-1] for _ in range(2)}
    assert len(digests) == 1
    # Layers of the same shape start from different weights (a shared seeded initializer repeats them).
    tf.keras.utils.set_random_seed(0)
    g = pix2pix.build_generator(64, ngf=8)
    a, b = (np.asarray(g.get_layer(f"encoder_{k}_conv").kernel) for k in (5, 6))
    assert a.shape == b.shape and not np.array_equal(a, b)
