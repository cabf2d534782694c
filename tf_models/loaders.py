"""Loading a trained network to explain, whatever form it comes in: ``load_network(path, ...)`` tells
from what is at ``path`` which of these it is and returns ``(keras.Model, Architecture)``.

* a compnn training run directory (``config.json`` + ``checkpoints/``, written by tf_models.train or
  the driver's train stage): the network is rebuilt from its config and its latest checkpoint, and
  finished as its architecture's recipe says (SegNet: BN statistics recomputed over the training set);
* a Keras file (``.keras``, or legacy ``.h5``) saved with ``model.save``: compnn's own networks (the
  train stage writes ``model.keras``) are recognised by name; any other network needs ``match_layers``;
* a pix2pix-tensorflow checkpoint (affinelayer's TF1 code: a directory with a ``checkpoint`` file and
  ``*.index``/``*.data-*`` files, or one such prefix): the generator's variables are mapped BY NAME onto
  our U-net (``reference_variables`` lists the mapping), which is built to the checkpoint's shapes.

``match_layers`` ("global:NAME,coarse:NAME,fine:NAME") turns any of them into a registry.custom
architecture: the layers named are the ones matched.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from . import layers as _layers  # noqa: F401  (registers compnn's layers for keras.models.load_model)
from . import pix2pix, registry, train

KERAS_SUFFIXES = (".keras", ".h5")
GENERATOR = "generator/"
# Optimizer slots and moving averages the reference saves beside each variable; not network weights.
_NOT_WEIGHTS = re.compile(r"/(Adam|Adam_\d+|ExponentialMovingAverage)$")
# The two naming schemes of the reference's history: its hand-written ops (conv/filter, batchnorm/
# offset+scale, deconv/filter; no biases, BN always on batch statistics) and the later tf.layers
# version (conv2d/kernel+bias, batch_normalization/gamma+beta+moving stats, conv2d_transpose/kernel+bias).
STYLES = {
    "ops": {"conv": "conv/filter", "conv_bias": None, "deconv": "deconv/filter", "deconv_bias": None,
            "gamma": "batchnorm/scale", "beta": "batchnorm/offset", "moving_mean": None,
            "moving_variance": None},
    "layers": {"conv": "conv2d/kernel", "conv_bias": "conv2d/bias", "deconv": "conv2d_transpose/kernel",
               "deconv_bias": "conv2d_transpose/bias", "gamma": "batch_normalization/gamma",
               "beta": "batch_normalization/beta", "moving_mean": "batch_normalization/moving_mean",
               "moving_variance": "batch_normalization/moving_variance"},
}


def detect(path) -> str:
    """"run_dir", "keras" or "tf1": what kind of trained network ``path`` holds (ValueError if none)."""
    path = Path(path)
    if path.is_file() and path.suffix in KERAS_SUFFIXES:
        return "keras"
    if path.is_dir() and (path / train.CONFIG).is_file():
        return "run_dir"
    if _tf1_prefix(path) is not None:
        return "tf1"
    if path.is_dir() and (path / "saved_model.pb").exists():
        raise ValueError(f"{path} is a TensorFlow SavedModel, which has no named layers to match; save the "
                         "Keras model with model.save('network.keras') and give that file")
    if not path.exists() and not Path(str(path) + ".index").exists():
        raise FileNotFoundError(f"{path} does not exist")
    raise ValueError(f"cannot tell what {path} holds: expected a compnn training run directory "
                     f"({train.CONFIG} + {train.CKPT_DIR}/), a Keras {'/'.join(KERAS_SUFFIXES)} file, or a "
                     "pix2pix-tensorflow checkpoint directory (a 'checkpoint' file + .index/.data files)")


def _tf1_prefix(path: Path) -> str | None:
    if path.is_dir():
        return tf.train.latest_checkpoint(str(path))
    return str(path) if Path(str(path) + ".index").is_file() else None


def load_network(path, *, image_size=None, kind: str = "segmentation", expect: str | None = None,
                 match_layers=None, decode2: str | None = None, kernel: int | None = None,
                 bn_inputs: np.ndarray | None = None, batch_size: int = 4, progress: bool = True):
    """The network at ``path`` (see the module docstring) and its Architecture.

    ``image_size`` (H, W): the task's image size; a pix2pix-tensorflow generator is built at it, and a
    Keras network with a fixed input size must match it. ``expect``: the run's configured compnn
    architecture; a compnn network of another one is refused (it is ignored with ``match_layers``,
    and for networks compnn did not build). ``kind``: the task's "segmentation"/"synthesis" (how a
    custom network's output is read). ``bn_inputs``: training images for a run directory whose
    architecture recomputes BN statistics after training (skipped when None, e.g. to only validate)."""
    path = Path(path)
    what = detect(path)
    size = None if image_size is None else tuple(int(s) for s in image_size)
    if what == "run_dir":
        model = train.load_model(path, expect=None if match_layers else expect)
        arch = registry.of_model(model)
        if bn_inputs is not None:
            train.finish_training(model, arch, bn_inputs, batch_size=batch_size, progress=progress, run_dir=path)
    elif what == "keras":
        model = _remembered(("keras",), path, lambda: _load_keras(path))
        arch = _known(model)
        if arch is None and match_layers is None:
            raise ValueError(f"{path}: network {model.name!r} was not built by compnn; name the layers to match "
                             f"with match_layers (--match_layers=global:NAME,coarse:NAME,fine:NAME); its "
                             f"layers: {', '.join(layer.name for layer in model.layers)}")
        if arch is not None and not match_layers and expect is not None and arch.name != expect:
            raise ValueError(f"{path} holds a {arch.name} network, expected {expect}")
    else:
        if expect is not None and not match_layers and expect != "pix2pix":
            raise ValueError(f"{path} holds a pix2pix-tensorflow generator (pix2pix), expected {expect}")
        if size is None:
            raise ValueError(f"{path}: a pix2pix-tensorflow checkpoint needs the image size to build the U-net at")
        model = _remembered(("tf1", size), path, lambda: load_tf1_generator(path, size))
        arch = registry.get("pix2pix")
    if match_layers:
        arch = registry.custom(model, match_layers, kind=kind, input_size=size, decode2=decode2, kernel=kernel,
                               base=_known(model))
    elif size is not None:
        got = tuple(model.inputs[0].shape[1:3])
        if None not in got and got != size:
            raise ValueError(f"{path}: the network takes {got[0]}x{got[1]} images, the run uses {size[0]}x{size[1]}; "
                             f"run with --size={got[0]},{got[1]}")
    return model, arch


# The last Keras file or pix2pix-tensorflow checkpoint loaded, as loaded (before any match spec): the
# driver's checks load it before any stage runs, and the train and export stages of the same process
# get it back without a second load. Keyed by the files' newest modification time, so a network changed
# on disk is loaded again. (A compnn run directory is rebuilt each time: its BN statistics may be
# recomputed in place.)
_LOADED: dict[tuple, keras.Model] = {}


def _remembered(key: tuple, path: Path, load) -> keras.Model:
    key = (*key, str(path.resolve()), _stamp(path))
    if key not in _LOADED:
        model = load()
        _LOADED.clear()
        _LOADED[key] = model
    return _LOADED[key]


def _stamp(path: Path) -> int:
    files = [path] if path.is_file() else list(path.rglob("*")) if path.is_dir() else \
        list(path.parent.glob(path.name + ".*"))
    return max((f.stat().st_mtime_ns for f in files if f.is_file()), default=0)


def fixed_input_size(path) -> tuple[int, int] | None:
    """The (H, W) the network in a Keras file takes when its input shape fixes it, else None. Loads the
    file once (kept for a following load_network)."""
    path = Path(path)
    model = _remembered(("keras",), path, lambda: _load_keras(path))
    try:
        size = tuple(model.inputs[0].shape[1:3])
    except (AttributeError, TypeError, ValueError, IndexError):
        return None
    return None if len(size) != 2 or None in size else (int(size[0]), int(size[1]))


def _known(model) -> registry.Architecture | None:
    try:
        return registry.of_model(model)
    except ValueError:
        return None


def _load_keras(path: Path) -> keras.Model:
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as e:  # Keras raises many kinds; the user needs the first line and the file
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f"cannot load {path} as a Keras model: {first}") from e
    if not isinstance(model, keras.Model):
        raise ValueError(f"{path} holds a {type(model).__name__}, not a Keras model")
    return model


# ---- pix2pix-tensorflow (TF1) checkpoints ---------------------------------------------------------
def reference_variables(model: keras.Model, style: str) -> dict[str, tuple[Any, str | None]]:
    """{"layer/weight": (our variable, reference variable name or None)} for a pix2pix U-net built by
    tf_models.pix2pix: the reference's scopes ``generator/encoder_k`` (k = 1..depth) and
    ``generator/decoder_k`` (k = depth..1) hold a conv (encoders), a transposed conv (decoders) and a
    batch norm (all but encoder_1 and decoder_1). None: the reference of that style has no such
    variable (its convs have no bias; its BN always uses batch statistics); that weight keeps its
    neutral initial value (bias 0, moving mean 0 / variance 1)."""
    names = STYLES[style]
    out = {}
    for layer in model.layers:
        m = re.fullmatch(r"(encoder|decoder)_(\d+)_(conv|deconv|bn)", layer.name)
        if not m:
            continue
        scope = f"{GENERATOR}{m.group(1)}_{m.group(2)}/"
        for w in layer.weights:
            short = w.path.split("/")[-1]
            if m.group(3) in ("conv", "deconv"):
                key = m.group(3) if short == "kernel" else f"{m.group(3)}_bias"
            else:
                key = short
            ref = names[key]
            out[f"{layer.name}/{short}"] = (w, None if ref is None else scope + ref)
    return out


def tf1_generator_info(path) -> dict[str, Any]:
    """What a pix2pix-tensorflow checkpoint's variable list says about its generator, without building
    it: prefix, naming style, U-net depth, ngf, input/output channels, and the image size it was made
    for (``native_size``: 2**depth, the reference's 1x1 bottleneck: 256 for its 8 levels); also the
    generator ``variables`` {name: shape} and a ``reader``. ValueError if it holds no such generator."""
    path = Path(path)
    prefix = _tf1_prefix(path)
    if prefix is None:
        raise ValueError(f"{path} holds no TensorFlow checkpoint")
    try:
        shapes = {n: tuple(s) for n, s in tf.train.list_variables(prefix)}
        reader = tf.train.load_checkpoint(prefix)
    except (tf.errors.OpError, ValueError) as e:
        raise ValueError(f"cannot read checkpoint {prefix}: {' '.join(str(e).split())[:300]}") from e
    gen = {n: s for n, s in shapes.items() if n.startswith(GENERATOR) and not _NOT_WEIGHTS.search(n)}
    style = next((st for st, names in STYLES.items() if f"{GENERATOR}encoder_1/{names['conv']}" in gen), None)
    if style is None:
        raise ValueError(f"{prefix} has no pix2pix-tensorflow generator (no {GENERATOR}encoder_1/conv/filter or "
                         f"{GENERATOR}encoder_1/conv2d/kernel); it holds e.g. {', '.join(sorted(shapes)[:6])}")
    names = STYLES[style]
    depth = max(int(m.group(1)) for n in gen if (m := re.match(rf"{GENERATOR}encoder_(\d+)/", n)))
    first = gen[f"{GENERATOR}encoder_1/{names['conv']}"]
    last = gen.get(f"{GENERATOR}decoder_1/{names['deconv']}")
    if len(first) != 4 or last is None or len(last) != 4:
        raise ValueError(f"{prefix}: expected 4-D {GENERATOR}encoder_1/{names['conv']} and "
                         f"{GENERATOR}decoder_1/{names['deconv']}, found shapes {first} and {last}")
    return {"prefix": prefix, "style": style, "depth": depth, "ngf": int(first[3]), "in_channels": int(first[2]),
            "out_channels": int(last[2]), "native_size": 2 ** depth, "variables": gen, "reader": reader}


def load_tf1_generator(path, image_size, **options) -> keras.Model:
    """Our U-net generator (tf_models.pix2pix) built to the shapes of the affinelayer/pix2pix-tensorflow
    checkpoint at ``path`` (its directory or a prefix) at ``image_size`` (H, W), every reference
    generator variable copied into the weight of the same role, by name. Depth, ngf, channels and
    whether the bottleneck has BN come from the checkpoint; ``options`` (bn_inference,
    dropout_at_inference) default to the reference's test-time behaviour with batch 1, deterministic.
    ValueError naming every variable that did not map (missing, unexpected or of the wrong shape)."""
    info = tf1_generator_info(path)
    prefix, gen, style, depth, reader = (info[k] for k in ("prefix", "variables", "style", "depth", "reader"))
    names = STYLES[style]
    h, w = (int(s) for s in image_size)
    if h != w or h % (2 ** depth):
        raise ValueError(f"{prefix}: its U-net has {depth} levels, so the images must be square with a side "
                         f"divisible by {2 ** depth}; got {h}x{w}")
    innermost_norm = f"{GENERATOR}encoder_{depth}/{names['gamma']}" in gen
    build = dict(image_size=h, in_channels=info["in_channels"], out_channels=info["out_channels"], ngf=info["ngf"],
                 depth=depth, innermost_norm=innermost_norm, bn_inference="image", dropout_at_inference=False)
    build.update(options)
    model = pix2pix.build_generator(**build)

    mapping = reference_variables(model, style)
    wanted = {ref for _, ref in mapping.values() if ref is not None}
    missing = sorted(wanted - set(gen))
    unexpected = sorted(set(gen) - wanted)
    wrong = sorted(f"{ref} {gen[ref]} (ours {tuple(w.shape)})" for w, ref in mapping.values()
                   if ref in gen and tuple(gen[ref]) != tuple(w.shape))
    if missing or unexpected or wrong:
        parts = [f"{label}: {', '.join(items)}" for label, items in
                 (("missing", missing), ("not mapped", unexpected), ("wrong shape", wrong)) if items]
        raise ValueError(f"{prefix} does not map onto a pix2pix U-net (depth {depth}, ngf {build['ngf']}, "
                         f"{style} naming): " + "; ".join(parts))
    try:
        for weight, ref in mapping.values():
            if ref is not None:
                weight.assign(reader.get_tensor(ref).astype(np.float32))
    except (tf.errors.OpError, ValueError, IndexError, RuntimeError) as e:  # a truncated or damaged .data file
        raise ValueError(f"cannot read checkpoint {prefix} (truncated or damaged?): "
                         f"{' '.join(str(e).split())[:300]}") from e
    logging.info("loaded pix2pix-tensorflow generator from %s: depth %d, ngf %d, %d variables (%s naming)",
                 prefix, depth, build["ngf"], len(wanted), style)
    return model


def describe(model: keras.Model, arch: registry.Architecture) -> dict[str, Any]:
    """A small JSON-able summary of a loaded network, for the train stage's record, config.json and the
    report: its name, architecture, input size and channels, output channels, parameter count, the
    layers matched, and for a U-net its depth and ngf (read from the built layers)."""
    in_shape = list(model.inputs[0].shape[1:])
    out = {"network": model.name, "architecture": arch.name, "input_size": in_shape[:2],
           "input_channels": in_shape[-1], "output_channels": model.outputs[0].shape[-1],
           "output": arch.output, "parameters": int(model.count_params())}
    if pix2pix.GENERATOR_NAME == model.name:
        out["depth"] = pix2pix._depth_of(model)
        out["ngf"] = int(model.get_layer("encoder_1_conv").filters)
    ms = arch.match_spec(model)
    out["match_layers"] = {k: ms[k] for k in ("global", "coarse", "fine", "decode2")}
    if arch.extra.get("based_on"):
        out["based_on"] = arch.extra["based_on"]
    return out
