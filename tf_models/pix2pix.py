"""Pix2Pix networks as in affinelayer/pix2pix-tensorflow (Dec-2017 tf.layers version): the U-net
generator with paper-named layers, the 70x70 PatchGAN discriminator, their losses, and the layer
geometry CompNN needs (kernel and stride of every named map, the match spec).

Generator layer names (``depth`` = d, 8 at 256x256 as in the reference):
  ``encoder_1`` .. ``encoder_d``        encoder outputs (conv, then BN for encoder_2..d), pre-activation
  ``decoder_k_input``                   what decoder_k's transposed conv consumes: ReLU(concat[
                                        decoder_{k+1}, encoder_k]) (ReLU(encoder_d) for k = d)
  ``decoder_d`` .. ``decoder_1``        decoder outputs (BN, dropout on the three innermost; tanh at 1)
The generator takes uint8-valued RGB (0..255, float or int) and maps it to [-1, 1] itself; its output
is in tanh range. The discriminator takes the [-1, 1] generator input and a [-1, 1] image.

Deliberate departures from the reference, each an option (reference value in brackets):
  * ``dropout_at_inference=False`` [True]: the reference never turns dropout off, so its outputs are
    random; explanation needs a deterministic network.
  * ``bn_inference="image"`` [batch statistics]: the reference runs BN in training mode at test time
    with batch 1, i.e. per-image statistics. "image" reproduces that for any export batch size;
    "moving" uses moving averages, which with the reference momentum 0.1 track the last few images.
  * ``innermost_norm=False`` [True]: with batch 1 and a 1x1 bottleneck, BN at encoder_d subtracts the
    only value it sees, so encoder_d equals beta whatever the input and the bottleneck (the paper's
    global descriptor) carries nothing. Later ports drop it; so do we by default.
"""

import math

import numpy as np

import keras
import tensorflow as tf

from .layers import BatchNorm, Dropout


def _init():
    """A fresh N(0, 0.02) initializer per layer. One shared instance made at import would draw its seed
    before keras.utils.set_random_seed (different weights in every process) and, being seeded, give
    every layer of the same shape the same weights."""
    return dict(kernel_initializer=keras.initializers.RandomNormal(0.0, 0.02), bias_initializer="zeros")


_BN = dict(momentum=0.1, epsilon=1e-5, gamma_stddev=0.02)
GENERATOR_NAME = "pix2pix_generator"
DISCRIMINATOR_NAME = "pix2pix_discriminator"
EPS = 1e-12


def default_depth(image_size):
    """The reference's 8 levels at 256 (1x1 bottleneck), fewer for smaller images."""
    return min(8, int(math.log2(image_size)))


def _check_geometry(image_size, depth, ngf):
    if not isinstance(image_size, int) or image_size <= 0:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    if not isinstance(depth, int) or depth < 2:
        raise ValueError(f"depth must be an int >= 2, got {depth!r}")
    if image_size % (2 ** depth):
        raise ValueError(f"image_size={image_size} must be divisible by 2**depth={2 ** depth}")
    if not isinstance(ngf, int) or ngf <= 0:
        raise ValueError(f"ngf must be a positive int, got {ngf!r}")


def encoder_channels(ngf, depth):
    """Output channels of encoder_1..depth: ngf * min(2**(k-1), 8)."""
    return [ngf * min(2 ** k, 8) for k in range(depth)]


def build_generator(image_size=256, in_channels=3, out_channels=3, ngf=64, depth=None, *,
                    dropout_rate=0.5, dropout_at_inference=False, bn_inference="image",
                    innermost_norm=False, seed=0):
    """U-net generator; see the module docstring for names and options. ``depth`` defaults to
    min(8, log2(image_size)); ``seed`` keys the dropout masks."""
    depth = default_depth(image_size) if depth is None else depth
    _check_geometry(image_size, depth, ngf)
    chans = encoder_channels(ngf, depth)
    bn = dict(_BN, inference_stats=bn_inference)

    inp = keras.Input((image_size, image_size, in_channels), name="input")
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="preprocess")(inp)
    enc = []
    for k in range(1, depth + 1):
        if k > 1:
            x = keras.layers.LeakyReLU(0.2, name=f"encoder_{k}_lrelu")(x)
        x = keras.layers.Conv2D(chans[k - 1], 4, 2, padding="same", name=f"encoder_{k}_conv", **_init())(x)
        if k > 1 and (k < depth or innermost_norm):
            x = BatchNorm(name=f"encoder_{k}_bn", **bn)(x)
        x = keras.layers.Identity(name=f"encoder_{k}")(x)
        enc.append(x)

    for k in range(depth, 0, -1):
        if k < depth:
            x = keras.layers.Concatenate(axis=3, name=f"decoder_{k}_concat")([x, enc[k - 1]])
        x = keras.layers.ReLU(name=f"decoder_{k}_input")(x)
        filters = out_channels if k == 1 else chans[k - 2]
        x = keras.layers.Conv2DTranspose(filters, 4, 2, padding="same", name=f"decoder_{k}_deconv",
                                         **_init())(x)
        if k == 1:
            x = keras.layers.Activation("tanh", name="decoder_1")(x)
            break
        x = BatchNorm(name=f"decoder_{k}_bn", **bn)(x)
        if k > depth - 3 and dropout_rate > 0:
            x = Dropout(dropout_rate, at_inference=dropout_at_inference, seed=seed * 1000 + k,
                        name=f"decoder_{k}_dropout")(x)
        x = keras.layers.Identity(name=f"decoder_{k}")(x)
    return keras.Model(inp, x, name=GENERATOR_NAME)


def build_discriminator(image_size=256, in_channels=3, out_channels=3, ndf=64, n_layers=3, *,
                        bn_inference="image"):
    """70x70 PatchGAN (n_layers=3): input [-1,1] generator input and [-1,1] image; output sigmoid
    patch probabilities (30x30x1 at 256)."""
    if not isinstance(ndf, int) or ndf <= 0:
        raise ValueError(f"ndf must be a positive int, got {ndf!r}")
    bn = dict(_BN, inference_stats=bn_inference)
    a = keras.Input((image_size, image_size, in_channels), name="discrim_inputs")
    b = keras.Input((image_size, image_size, out_channels), name="discrim_targets")
    x = keras.layers.Concatenate(axis=3)([a, b])

    def conv(x, filters, stride, name):
        x = keras.layers.ZeroPadding2D(1, name=f"{name}_pad")(x)
        return keras.layers.Conv2D(filters, 4, stride, padding="valid", name=f"{name}_conv", **_init())(x)

    x = keras.layers.LeakyReLU(0.2, name="layer_1")(conv(x, ndf, 2, "layer_1"))
    for i in range(n_layers):
        name = f"layer_{i + 2}"
        x = conv(x, ndf * min(2 ** (i + 1), 8), 1 if i == n_layers - 1 else 2, name)
        x = keras.layers.LeakyReLU(0.2, name=name)(BatchNorm(name=f"{name}_bn", **bn)(x))
    name = f"layer_{n_layers + 2}"
    x = keras.layers.Activation("sigmoid", name=name)(conv(x, 1, 1, name))
    return keras.Model([a, b], x, name=DISCRIMINATOR_NAME)


def discriminator_loss(predict_real, predict_fake):
    return tf.reduce_mean(-(tf.math.log(predict_real + EPS) + tf.math.log(1.0 - predict_fake + EPS)))


def generator_losses(predict_fake, outputs, targets, l1_weight=100.0, gan_weight=1.0):
    """Returns (total, gan, l1) as in the reference: gan_weight * GAN + l1_weight * L1."""
    gan = tf.reduce_mean(-tf.math.log(predict_fake + EPS))
    l1 = tf.reduce_mean(tf.abs(targets - outputs))
    return gan * gan_weight + l1 * l1_weight, gan, l1


def _depth_of(model):
    return sum(1 for layer in model.layers if layer.name.startswith("encoder_") and
               layer.name.count("_") == 1)


def layer_geometry(model):
    """{name: {"kernel": K, "stride": s}} for every named generator map: K is the kernel of the conv
    that consumes the map (1 for the output), s the input pixels per position of the map."""
    depth = _depth_of(model)
    geo = {}
    for k in range(1, depth + 1):
        geo[f"encoder_{k}"] = {"kernel": 4, "stride": 2 ** k}
        geo[f"decoder_{k}_input"] = {"kernel": 4, "stride": 2 ** k}
        geo[f"decoder_{k}"] = {"kernel": 4 if k > 1 else 1, "stride": 2 ** (k - 1)}
    return geo


def match_spec(model):
    """Layers CompNN matches at: the bottleneck as global descriptor, decoder_2's input as the coarse
    stage, decoder_1's input (4x4x(64+64) = 2048-dim patches at ngf 64) as the pixel stage, and the
    same map taken whole as the paper's "Global Decode2" descriptor (128^3 dims at 256)."""
    depth = _depth_of(model)
    geo = layer_geometry(model)
    names = {"global": f"encoder_{depth}", "coarse": "decoder_2_input", "fine": "decoder_1_input",
             "decode2": "decoder_1_input"}
    used = sorted(set(names.values()))
    return dict(names, kernel={n: geo[n]["kernel"] for n in used},
                stride={n: geo[n]["stride"] for n in used})


def unit_to_uint8(x01):
    """Floats meant to lie in [0, 1] -> uint8 exactly as ``tf.image.convert_image_dtype(x, tf.uint8,
    saturate=True)`` converts them (pix2pix-tensorflow saves every image through it): the float32
    product x * 255.5, clipped to [0, 255], truncated. So level k holds [k / 255.5, (k + 1) / 255.5),
    1.0 gives 255, and values outside [0, 1] saturate. (Rounding 255 * x instead differs by one level
    on about a quarter of all values.)"""
    scaled = np.asarray(x01, dtype=np.float32) * np.float32(255.5)
    return np.trunc(np.clip(np.nan_to_num(scaled), 0.0, 255.0)).astype(np.uint8)


def output_to_rgb(outputs):
    """Generator output batch in tanh range -> uint8 RGB (N, H, W, 3), as the reference saves it: its
    ``deprocess`` (y + 1) / 2 in float32, then ``unit_to_uint8`` (TensorFlow's convert_image_dtype)."""
    y = np.asarray(outputs, dtype=np.float32)
    return unit_to_uint8((y + np.float32(1.0)) / np.float32(2.0))
