"""SegNet as in the SegNet-Tutorial Caffe models: SegNet-basic (LRN, 4 x [conv 7x7x64, BN, ReLU,
2x2 max-pool with switches], 4 x [unpool with those switches, conv 7x7x64, BN], 1x1 classifier) and
full SegNet (VGG16 encoder, 13 + 13 3x3 convs); the class-weighted loss; layer geometry and match spec.

Layer names follow the Caffe blobs. SegNet-basic: ``norm``, ``conv1``..``conv4`` (after BN+ReLU),
``pool1``..``pool4``, ``upsample4``..``upsample1`` (unpooled maps = what conv_decodeK consumes),
``conv_decode4``..``conv_decode1`` (after BN), ``conv_classifier`` (logits). Full SegNet:
``conv1_1``..``conv5_3``, ``pool1``..``pool5``, ``upsample5``..``upsample1``, ``conv5_3_D``..
``conv1_2_D`` and ``conv1_1_D`` (logits). Unpooling puts every value back at its switch (the TF port
the paper cites computed the indices and then ignored them); pooling is Caffe's ceil mode, so odd
sizes round-trip (45 -> 23 -> 45).

Models take uint8-valued RGB (0..255, no mean subtraction, as the tutorial's data layer feeds Caffe)
and output per-class logits. BN uses moving statistics at inference (SegNet's compute_bn_statistics
step) unless ``bn_inference="image"``. Full SegNet starts from random He-normal weights: the VGG16
ImageNet initialisation of the tutorial cannot be downloaded here.
"""

import keras
import numpy as np
import tensorflow as tf

from .layers import LRN, BatchNorm, MaxPoolWithSwitches, MaxUnpool

BASIC_NAME = "segnet_basic"
VGG16_NAME = "segnet_vgg16"
CAMVID_CLASS_WEIGHTS = (0.2595, 0.1826, 4.5640, 0.1417, 0.9051, 0.3826, 9.6446, 1.8418, 0.6823,
                        6.2478, 7.3614)
IGNORE = 255
_INIT = dict(kernel_initializer="he_normal", bias_initializer="zeros")
_BN = dict(momentum=0.99, epsilon=1e-5, beta_init=0.001)
_VGG_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


def _check_input_shape(input_shape, depth):
    if (len(input_shape) != 3 or input_shape[2] != 3 or
            any(not isinstance(s, int) or s < 2 ** depth // 2 for s in input_shape[:2])):
        raise ValueError(f"input_shape must be (H, W, 3) with H, W >= {2 ** depth // 2}, "
                         f"got {input_shape!r}")


def _conv_bn(x, filters, kernel, name, bn, relu=True):
    x = keras.layers.Conv2D(filters, kernel, padding="same", name=f"{name}_conv", **_INIT)(x)
    x = BatchNorm(name=f"{name}_bn", **bn)(x)
    return keras.layers.ReLU(name=name)(x) if relu else keras.layers.Identity(name=name)(x)


def build_segnet_basic(input_shape=(360, 480, 3), num_classes=11, *, bn_inference="moving"):
    """SegNet-basic (about 1.42M parameters)."""
    _check_input_shape(tuple(input_shape), 4)
    bn = dict(_BN, inference_stats=bn_inference)
    inp = keras.Input(tuple(input_shape), name="input")
    x = LRN(name="norm")(inp)
    skips = []
    for k in range(1, 5):
        conv = _conv_bn(x, 64, 7, f"conv{k}", bn)
        x, switches = MaxPoolWithSwitches(name=f"pool{k}_switches")(conv)
        x = keras.layers.Identity(name=f"pool{k}")(x)
        skips.append((conv, switches))
    for k in range(4, 0, -1):
        conv, switches = skips[k - 1]
        x = MaxUnpool(name=f"upsample{k}")(x, switches, conv)
        x = _conv_bn(x, 64, 7, f"conv_decode{k}", bn, relu=False)
    x = keras.layers.Conv2D(num_classes, 1, name="conv_classifier", **_INIT)(x)
    return keras.Model(inp, x, name=BASIC_NAME)


def build_segnet_vgg16(input_shape=(360, 480, 3), num_classes=11, *, bn_inference="moving"):
    """Full SegNet: VGG16 encoder, mirrored decoder with conv+BN+ReLU, 3x3 classifier conv1_1_D."""
    _check_input_shape(tuple(input_shape), 5)
    bn = dict(_BN, inference_stats=bn_inference)
    inp = keras.Input(tuple(input_shape), name="input")
    x = inp
    skips = []
    for b, block in enumerate(_VGG_BLOCKS, start=1):
        for i, filters in enumerate(block, start=1):
            x = _conv_bn(x, filters, 3, f"conv{b}_{i}", bn)
        conv = x
        x, switches = MaxPoolWithSwitches(name=f"pool{b}_switches")(x)
        x = keras.layers.Identity(name=f"pool{b}")(x)
        skips.append((conv, switches))
    for b in range(5, 0, -1):
        conv, switches = skips[b - 1]
        x = MaxUnpool(name=f"upsample{b}")(x, switches, conv)
        block = _VGG_BLOCKS[b - 1]
        # The decoder mirrors the encoder: the last conv of a block maps to the previous block's width.
        outs = list(block[:-1]) + [_VGG_BLOCKS[b - 2][-1] if b > 1 else None]
        for i in range(len(block), 0, -1):
            filters = outs[len(block) - i]
            name = f"conv{b}_{i}_D"
            if filters is None:
                x = keras.layers.Conv2D(num_classes, 3, padding="same", name=name, **_INIT)(x)
            else:
                x = _conv_bn(x, filters, 3, name, bn)
    return keras.Model(inp, x, name=VGG16_NAME)


def weighted_cross_entropy(logits, labels, class_weights, ignore=IGNORE):
    """Caffe SoftmaxWithLoss with class weighting: sum over valid pixels of w[y] * CE, divided by
    the number of valid (non-ignore) pixels. ``labels`` int (N, H, W), ``ignore`` marks void."""
    labels = tf.cast(labels, tf.int32)
    valid = tf.not_equal(labels, ignore)
    safe = tf.where(valid, labels, tf.zeros_like(labels))
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=safe, logits=logits)
    w = tf.gather(tf.constant(class_weights, tf.float32), safe) * tf.cast(valid, tf.float32)
    return tf.reduce_sum(w * ce) / tf.maximum(tf.reduce_sum(tf.cast(valid, tf.float32)), 1.0)


def _is_basic(model):
    if model.name not in (BASIC_NAME, VGG16_NAME):
        raise ValueError(f"model must be a SegNet built by tf_models.segnet, got {model.name!r}")
    return model.name == BASIC_NAME


def layer_geometry(model):
    """{name: {"kernel": K, "stride": s}} for every named map: K = kernel of the op consuming it
    (7 or 3 for convs, 2 for a map that is pooled, 1 for a map that is unpooled and for the logits),
    s = input pixels per position."""
    geo = {}
    if _is_basic(model):
        geo["norm"] = {"kernel": 7, "stride": 1}
        for k in range(1, 5):
            s = 2 ** (k - 1)
            geo[f"conv{k}"] = {"kernel": 2, "stride": s}
            geo[f"pool{k}"] = {"kernel": 7 if k < 4 else 1, "stride": 2 * s}
            geo[f"upsample{k}"] = {"kernel": 7, "stride": s}
            geo[f"conv_decode{k}"] = {"kernel": 1, "stride": s}
        geo["conv_classifier"] = {"kernel": 1, "stride": 1}
        return geo
    for b, block in enumerate(_VGG_BLOCKS, start=1):
        s = 2 ** (b - 1)
        for i in range(1, len(block) + 1):
            geo[f"conv{b}_{i}"] = {"kernel": 3 if i < len(block) else 2, "stride": s}
            geo[f"conv{b}_{i}_D"] = {"kernel": 3 if i > 1 else 1, "stride": s}
        geo[f"pool{b}"] = {"kernel": 3 if b < 5 else 1, "stride": 2 * s}
        geo[f"upsample{b}"] = {"kernel": 3, "stride": s}
    return geo


def match_spec(model):
    """Global: the last pooled map (bottleneck); coarse: the last decoder map at stride 2; fine and
    "Global Decode2": the penultimate map, consumed by the classifier. SegNet-basic's classifier is
    1x1, so its fine patches are single 64-d positions (K = 1); full SegNet's is 3x3 (K = 3)."""
    geo = layer_geometry(model)
    if _is_basic(model):
        names = {"global": "pool4", "coarse": "conv_decode2", "fine": "conv_decode1",
                 "decode2": "conv_decode1"}
    else:
        names = {"global": "pool5", "coarse": "conv2_1_D", "fine": "conv1_2_D", "decode2": "conv1_2_D"}
    used = sorted(set(names.values()))
    return dict(names, kernel={n: geo[n]["kernel"] for n in used},
                stride={n: geo[n]["stride"] for n in used})


def logits_to_labels(logits):
    """Logit batch (N, H, W, C) -> uint8 class ids (N, H, W)."""
    return np.argmax(np.asarray(logits), axis=-1).astype(np.uint8)
