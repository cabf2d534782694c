"""The architecture registry: everything compnn must know about a family of networks, in one place.

For each architecture: how to build it, the geometry of its named maps (kernel of the op consuming a
map, input pixels per map position), CompNN's match spec (global / coarse / fine / decode2 layers),
the layers of the layer sweep (bottleneck to output), the activation-prediction pair, what its raw
output is and how it becomes uint8 ``cnn_outputs`` for a task, which trainer trains it and whether
its BN statistics are recomputed before it is explained. Export writes the per-model answers into the
store's metadata (``analysis_spec``), so the experiments read layer names from the store and never
compare model-name strings.

A network compnn did not build is described at load time by ``custom``: the user names its global,
coarse and fine layers; strides come from the layers' shapes, kernels from the convs that consume
them (see ``custom`` for the rules and the output conventions).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import keras
import numpy as np

from compnn_py.data import colorize, snap_to_palette

from . import pix2pix, segnet

# What a network's raw output is: per-class scores (labels by argmax), or an image in one value range.
OUTPUT_KINDS = ("logits", "tanh_image", "unit_image", "byte_image")
IMAGE_RANGES = {"tanh_image": (-1.0, 1.0), "unit_image": (0.0, 1.0), "byte_image": (0.0, 255.0)}
MATCH_ROLES = ("global", "coarse", "fine")
VOID = 255


def image_to_rgb(outputs, output: str) -> np.ndarray:
    """An image-output batch in the value range of ``output`` (IMAGE_RANGES) -> uint8 RGB. tanh and
    [0, 1] images follow pix2pix-tensorflow's convention (pix2pix.unit_to_uint8 of (y - lo) / (hi - lo),
    i.e. TensorFlow's convert_image_dtype: floor(255.5 x), saturated); a 0..255 image is rounded and
    clipped."""
    lo, hi = IMAGE_RANGES[output]
    y = np.asarray(outputs, dtype=np.float32)
    if output == "byte_image":
        return np.clip(np.rint(y), 0, 255).astype(np.uint8)
    return pix2pix.unit_to_uint8((y - np.float32(lo)) / np.float32(hi - lo))


def logits_to_labels(logits, num_classes: int | None = None) -> np.ndarray:
    """Argmax class ids, uint8; ids >= num_classes (a network with an extra void/background channel)
    become 255, the predicted-void id the metrics know."""
    labels = np.argmax(np.asarray(logits), axis=-1)
    if num_classes is not None:
        labels = np.where(labels >= num_classes, VOID, labels)
    return labels.astype(np.uint8)


@dataclass(frozen=True)
class Architecture:
    name: str                                                   # the run configuration's model name
    keras_name: str                                             # the built keras.Model's .name
    build: Callable[..., keras.Model]
    layer_geometry: Callable[[keras.Model], dict[str, dict[str, int]]]
    match_spec: Callable[[keras.Model], dict[str, Any]]
    sweep_layers: Callable[[keras.Model], list[str]]
    activation_pairs: Callable[[keras.Model], list[tuple[str, str]]]  # (source, target) layers, Fig. 3
    output: str                                                 # one of OUTPUT_KINDS
    square_power_of_two: bool = False                           # input size must be 2^n x 2^n
    trainer: str | None = None          # "pix2pix" or "segnet" (tf_models.train); None: not trainable here
    trainer_options: Mapping[str, Any] = field(default_factory=dict)   # passed to that trainer
    # SegNet's recipe: BN moving statistics are recomputed over the training set once training is over,
    # before the network is used (tf_models.train.finish_training).
    recompute_bn: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)     # more facts for the store's metadata
    # Where the global descriptor goes when its layer is degenerate (constant over the training images,
    # tf_models.export.resolve_match_layers): the layers above the coarse one, deepest first.
    global_fallbacks: Callable[[keras.Model], list[str]] | None = None

    def postprocess(self, kind: str, palette) -> Callable[[np.ndarray], np.ndarray]:
        """Raw output batch -> uint8 cnn_outputs: class ids for a segmentation task, RGB otherwise. An
        image-output network on a segmentation task (Pix2Pix photo -> labels) is snapped to the palette;
        a logits network's ids beyond the task's classes become 255 (void)."""
        if self.output not in OUTPUT_KINDS:
            raise ValueError(f"architecture {self.name}: unknown output kind {self.output!r}")
        n = len(palette) if kind == "segmentation" and palette is not None and len(palette) else None
        if self.output == "logits":
            return lambda out: logits_to_labels(out, n)
        if kind == "segmentation":
            pal = np.asarray(palette)
            return lambda out: snap_to_palette(image_to_rgb(out, self.output), pal)
        return lambda out: image_to_rgb(out, self.output)

    def training_targets(self, kind: str, palette, targets: np.ndarray) -> np.ndarray:
        """What the network learns to output: an image-output network learns segmentation as image
        translation (the colour label map)."""
        if self.output != "logits" and kind == "segmentation":
            return colorize(targets, palette)
        return targets

    def analysis_spec(self, model: keras.Model) -> dict[str, Any]:
        """The per-model facts the experiments need, as stored in an export's metadata."""
        spec = {"architecture": self.name, "match_spec": self.match_spec(model),
                "sweep_layers": list(self.sweep_layers(model)), "activation_pairs": [list(p) for p in self.activation_pairs(model)],
                **self.extra}
        spec["used_layers"] = used_layers(spec)
        return spec


def used_layers(spec: dict[str, Any]) -> list[str]:
    """Every layer an analysis spec names: what an export must write for a full run."""
    ms = spec["match_spec"]
    names = [ms[k] for k in ("global", "coarse", "fine", "decode2")] + list(spec["sweep_layers"])
    names += [n for pair in spec["activation_pairs"] for n in pair]
    return list(dict.fromkeys(names))


def _pix2pix_sweep(model):
    depth = pix2pix._depth_of(model)
    return [f"decoder_{k}_input" for k in range(depth, 0, -1)]


def _segnet_sweep(model):
    if model.name == segnet.BASIC_NAME:
        return [f"conv_decode{k}" for k in range(4, 0, -1)]
    return [f"conv{b}_1_D" for b in range(5, 1, -1)] + ["conv1_2_D"]


def _pix2pix_pairs(model):
    # A decoder layer predicted from its input, at two depths (coarser first).
    return [(f"decoder_{k}_input", f"decoder_{k}") for k in (3, 2) if k <= pix2pix._depth_of(model)]


def _segnet_pairs(model):
    if model.name == segnet.BASIC_NAME:
        return [("conv_decode3", "conv_decode2"), ("conv_decode2", "conv_decode1")]
    return [("conv3_1_D", "conv2_1_D"), ("conv2_1_D", "conv1_2_D")]


def _pix2pix_fallbacks(model):
    # encoder_{d-1} .. the shallowest encoder map still coarser than the coarse layer (decoder_2_input).
    depth, geo = pix2pix._depth_of(model), pix2pix.layer_geometry(model)
    coarse = geo[pix2pix.match_spec(model)["coarse"]]["stride"]
    return [f"encoder_{k}" for k in range(depth - 1, 0, -1) if geo[f"encoder_{k}"]["stride"] > coarse]


def _segnet_fallbacks(model):
    # The pooled maps below the bottleneck, deepest first, still coarser than the coarse layer.
    geo, ms = segnet.layer_geometry(model), segnet.match_spec(model)
    coarse = geo[ms["coarse"]]["stride"]
    pools = sorted((n for n in geo if n.startswith("pool") and n != ms["global"]),
                   key=lambda n: -geo[n]["stride"])
    return [n for n in pools if geo[n]["stride"] > coarse]


ARCHITECTURES: dict[str, Architecture] = {
    "pix2pix": Architecture("pix2pix", pix2pix.GENERATOR_NAME, pix2pix.build_generator, pix2pix.layer_geometry,
                            pix2pix.match_spec, _pix2pix_sweep, _pix2pix_pairs,
                            "tanh_image", square_power_of_two=True, trainer="pix2pix",
                            global_fallbacks=_pix2pix_fallbacks),
    "segnet_basic": Architecture("segnet_basic", segnet.BASIC_NAME, segnet.build_segnet_basic,
                                 segnet.layer_geometry, segnet.match_spec, _segnet_sweep, _segnet_pairs, "logits",
                                 trainer="segnet", trainer_options={"arch": "basic"}, recompute_bn=True,
                                 global_fallbacks=_segnet_fallbacks),
    "segnet_vgg16": Architecture("segnet_vgg16", segnet.VGG16_NAME, segnet.build_segnet_vgg16,
                                 segnet.layer_geometry, segnet.match_spec, _segnet_sweep, _segnet_pairs, "logits",
                                 trainer="segnet", trainer_options={"arch": "vgg16"}, recompute_bn=True,
                                 global_fallbacks=_segnet_fallbacks),
}


def get(name: str) -> Architecture:
    """The architecture of a run configuration's model name."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; known: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name]


def of_model(model) -> Architecture:
    """The architecture a built keras.Model belongs to (by the name its builder gave it)."""
    for arch in ARCHITECTURES.values():
        if isinstance(model, keras.Model) and model.name == arch.keras_name:
            return arch
    raise ValueError(f"model must be a network built by tf_models ({', '.join(ARCHITECTURES)}), "
                     f"got {getattr(model, 'name', type(model).__name__)!r}")


# ---- networks compnn did not build ----------------------------------------------------------------
def parse_match_layers(spec) -> dict[str, str]:
    """"global:NAME,coarse:NAME,fine:NAME" (or a mapping with those keys) -> {role: layer name}."""
    if isinstance(spec, Mapping):
        parts = {str(k): str(v) for k, v in spec.items()}
    else:
        items = [p.strip() for p in str(spec).split(",") if p.strip()]
        parts = dict(p.split(":", 1) for p in items if ":" in p)
        if len(parts) != len(items):
            parts = {}
    if set(parts) != set(MATCH_ROLES) or not all(parts.values()):
        raise ValueError(f"match_layers must be global:NAME,coarse:NAME,fine:NAME, got {spec!r}")
    return {role: parts[role].strip() for role in MATCH_ROLES}


def _single_output(layer) -> Any | None:
    try:
        out = layer.output
    except (AttributeError, ValueError):  # a layer called more than once has no single output
        return None
    return None if isinstance(out, (list, tuple)) else out


def _producers(model) -> dict[int, str]:
    """id of a layer's (single) output tensor -> that layer's name."""
    producers = {}
    for layer in model.layers:
        out = _single_output(layer)
        if out is not None:
            producers[id(out)] = layer.name
    return producers


def _consumers(model) -> dict[str, list]:
    """layer name -> the layers of ``model`` that take its output as an input."""
    producers = _producers(model)
    consumers: dict[str, list] = {}
    for layer in model.layers:
        try:
            inputs = layer.input
        except (AttributeError, ValueError):
            continue
        for t in keras.tree.flatten(inputs):
            if id(t) in producers:
                consumers.setdefault(producers[id(t)], []).append(layer)
    return consumers


def _spatial(shape) -> tuple | None:
    return tuple(shape[1:3]) if shape is not None and len(shape) == 4 else None


def _consuming_kernel(name: str, consumers, shapes, max_hops: int = 8) -> int | None:
    """The kernel of the conv (or pooling window) that reads map ``name``, following the layers in
    between that keep the spatial size (activations, BN, dropout, concatenation). None when no such
    op is found or the paths disagree."""
    found, frontier = set(), [(name, 0)]
    seen = set()
    while frontier:
        current, hops = frontier.pop()
        for layer in consumers.get(current, []):
            if layer.name in seen:
                continue
            seen.add(layer.name)
            size = getattr(layer, "kernel_size", None) or getattr(layer, "pool_size", None)
            if size is not None:
                size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
                found.add(int(size[0]) if len(set(size)) == 1 else None)
            elif hops < max_hops and shapes.get(layer.name) is not None and \
                    shapes[layer.name] == shapes.get(current):
                frontier.append((layer.name, hops + 1))
    return found.pop() if len(found) == 1 else None


def _check_feature_maps(model, names: dict[str, str]) -> None:
    """Matched layers must be feature maps the network computed: never its input layer, nor a map made
    from the input by layers without weights (an input-rescaling or normalising step: matching there
    compares pixels, not features); coarse and fine never its output (the logits or the image)."""
    producer = _producers(model)
    learned: dict[str, bool] = {}
    for layer in model.layers:  # a functional model lists its layers in topological order
        if isinstance(layer, keras.layers.InputLayer):
            learned[layer.name] = False
            continue
        try:
            parents = [producer.get(id(t)) for t in keras.tree.flatten(layer.input)]
        except (AttributeError, ValueError):
            parents = []
        learned[layer.name] = bool(layer.trainable_weights) or any(learned.get(p, False) for p in parents if p)
    history = getattr(model.outputs[0], "_keras_history", None)
    output = getattr(getattr(history, "operation", None), "name", None) or model.layers[-1].name
    for role in MATCH_ROLES:
        layer = model.get_layer(names[role])
        if isinstance(layer, keras.layers.InputLayer):
            raise ValueError(f"the {role} layer {layer.name} is the network's input layer, not a feature map; "
                             "name a layer the network computes")
        if not learned.get(layer.name, True):
            raise ValueError(f"the {role} layer {layer.name} is computed from the input by layers without weights "
                             "(input scaling or normalisation), not a feature map; name a layer after a conv")
        if role != "global" and layer.name == output:
            raise ValueError(f"the {role} layer {layer.name} is the network's output, not a feature map; name a "
                             "layer before it (e.g. the one the final classifier reads)")


def custom(model, match_layers, *, kind: str, input_size=None, decode2: str | None = None,
           kernel: int | None = None, base: Architecture | None = None) -> Architecture:
    """An Architecture for ``model`` built from the layers the user names (``match_layers``:
    "global:NAME,coarse:NAME,fine:NAME"), for a task of ``kind`` ("segmentation" or "synthesis").

    * Geometry of every single-output 4-D map whose grid divides the input evenly (rounding up, as
      ceil-mode pooling does): stride = input size / map size. Kernel = that of the conv or pooling
      layer that consumes the map through spatially neutral layers, 1 where none can be read; for the
      fine layer ``kernel`` overrides it. ``base`` (a compnn architecture) supplies its own kernels.
    * The named layers must be feature maps (not the input layer, not a map computed from the input
      without weights such as a Rescaling layer; coarse and fine not the output) with strides ordered
      global >= coarse >= fine; ValueError in one line otherwise.
    * Match spec: the named layers; decode2 (Table 1's Global-Decode2 row) defaults to fine. Sweep:
      global, coarse, fine; activation pairs: [(coarse, fine)] when fine's stride divides coarse's.
    * Output: a segmentation task takes class ids by argmax over the last axis (ids beyond the task's
      classes are void); a synthesis task takes the output as an image whose range is read from the
      final activation: tanh -> [-1, 1], sigmoid -> [0, 1], anything else -> [0, 255]. ``base``'s
      output convention wins when given.
    The network must take RGB valued 0..255 (start it with a Rescaling layer if it expects another
    range). ``input_size`` (H, W) is needed only when the network's input size is not fixed."""
    names = parse_match_layers(match_layers)
    decode2 = decode2 or names["fine"]
    if kind not in ("segmentation", "synthesis"):
        raise ValueError(f"kind must be segmentation or synthesis, got {kind!r}")
    try:
        n_inputs = len(model.inputs)
    except (AttributeError, TypeError, ValueError):  # a subclassed model has no symbolic inputs
        n_inputs = 0
    if not isinstance(model, keras.Model) or n_inputs != 1:
        raise ValueError(f"network {getattr(model, 'name', type(model).__name__)!r} must be a Keras functional or "
                         "Sequential model with one input (a subclassed model has no named intermediate maps)")
    if kernel is not None and (not isinstance(kernel, (int, np.integer)) or kernel < 1):
        raise ValueError(f"kernel must be a positive int, got {kernel!r}")
    layer_names = [layer.name for layer in model.layers]
    wanted = {**names, "decode2": decode2}
    unknown = sorted({n for n in wanted.values() if n not in layer_names})
    if unknown:
        raise ValueError(f"layer(s) {', '.join(unknown)} not in network {model.name!r}; its layers: "
                         f"{', '.join(layer_names)}")
    _check_feature_maps(model, names)

    in_shape = tuple(model.inputs[0].shape)
    size = _spatial(in_shape)
    if size is None:
        raise ValueError(f"network {model.name!r} must take (N, H, W, C) images, its input is {in_shape}")
    if None in size:
        if input_size is None:
            raise ValueError(f"network {model.name!r} takes any image size: give input_size")
        size = tuple(int(s) for s in input_size)
    elif input_size is not None and tuple(input_size) != size:
        raise ValueError(f"network {model.name!r} takes {size[0]}x{size[1]} images, not "
                         f"{input_size[0]}x{input_size[1]}: use that size")
    outputs = {layer.name: _single_output(layer) for layer in model.layers
               if not isinstance(layer, keras.layers.InputLayer)}
    maps = {n: t for n, t in outputs.items() if t is not None and len(t.shape) == 4}
    shapes = {n: _spatial(tuple(t.shape)) for n, t in maps.items()}
    if any(None in s for s in shapes.values()) or None in tuple(model.outputs[0].shape[1:3]):
        # A fully convolutional network: the map sizes follow from one forward pass at this size.
        probe = keras.Model(model.inputs[0], list(maps.values()) + [model.outputs[0]])
        outs = probe(np.zeros((1, *size, in_shape[-1]), np.float32), training=False)
        shapes = {n: tuple(o.shape[1:3]) for n, o in zip(maps, outs[:-1])}
        out_size = tuple(outs[-1].shape[1:3])
        out_ndim = len(outs[-1].shape)
    else:
        out_size = tuple(model.outputs[0].shape[1:3])
        out_ndim = len(model.outputs[0].shape)
    if out_ndim != 4 or out_size != size:
        raise ValueError(f"network {model.name!r} must output (N, {size[0]}, {size[1]}, C) maps for "
                         f"{size[0]}x{size[1]} inputs, got {tuple(model.outputs[0].shape)}")

    consumers = _consumers(model)
    base_geo = base.layer_geometry(model) if base is not None else {}
    geo = {}
    for n, (h, w) in shapes.items():
        if not h or not w:
            continue
        s = max(1, int(round(size[0] / h)))
        if -(-size[0] // s) != h or -(-size[1] // s) != w:
            continue  # no integer stride maps this grid onto the input
        k = base_geo.get(n, {}).get("kernel") or _consuming_kernel(n, consumers, shapes) or 1
        geo[n] = {"kernel": int(k), "stride": s}
    if kernel is not None and names["fine"] in geo:
        geo[names["fine"]] = dict(geo[names["fine"]], kernel=int(kernel))
    bad = sorted({n for n in wanted.values() if n not in geo})
    if bad:
        raise ValueError(f"layer(s) {', '.join(bad)} of {model.name!r} are not (N, H, W, C) maps on a grid "
                         f"that divides the {size[0]}x{size[1]} input (shapes: "
                         f"{', '.join(f'{n} {tuple(outputs[n].shape)}' for n in bad)})")

    strides = {r: geo[names[r]]["stride"] for r in MATCH_ROLES}
    if not strides["global"] >= strides["coarse"] >= strides["fine"]:
        raise ValueError("match layers must go from coarse to fine (stride, input pixels per position: global >= "
                         "coarse >= fine); got " + ", ".join(f"{r} {names[r]} stride {strides[r]}" for r in MATCH_ROLES))
    used = list(dict.fromkeys(wanted.values()))
    ms = dict(wanted, kernel={n: geo[n]["kernel"] for n in used}, stride={n: geo[n]["stride"] for n in used})
    sweep = list(dict.fromkeys(names[r] for r in MATCH_ROLES))
    sc, sf = geo[names["coarse"]]["stride"], geo[names["fine"]]["stride"]
    pairs = [(names["coarse"], names["fine"])] if names["coarse"] != names["fine"] and sc % sf == 0 else []
    if base is not None:
        output = base.output
    elif kind == "segmentation":
        output = "logits"
    else:
        history = getattr(model.outputs[0], "_keras_history", None)
        last = getattr(history, "operation", None) or model.layers[-1]
        act = getattr(getattr(last, "activation", None), "__name__", None) or \
            getattr(last, "get_config", lambda: {})().get("activation")
        output = {"tanh": "tanh_image", "sigmoid": "unit_image"}.get(act, "byte_image")
    return Architecture(
        "custom", model.name, None, lambda m: dict(geo), lambda m: dict(ms), lambda m: list(sweep),
        lambda m: list(pairs), output,
        extra={"network": model.name, "output_kind": output, "based_on": base.name if base else None})
