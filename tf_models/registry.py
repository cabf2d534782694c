"""The architecture registry: everything compnn must know about a family of networks, in one place.

For each architecture: how to build it, the geometry of its named maps (kernel of the op consuming a
map, input pixels per map position), CompNN's match spec (global / coarse / fine / decode2 layers),
the layers of the layer sweep (bottleneck to output), the activation-prediction pair, and how its raw
output becomes uint8 ``cnn_outputs`` for a task. Export writes the per-model answers into the store's
metadata (``analysis_spec``), so the experiments read layer names from the store and never compare
model-name strings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import keras
import numpy as np

from compnn_py.data import colorize, snap_to_palette

from . import pix2pix, segnet


@dataclass(frozen=True)
class Architecture:
    name: str                                                   # the run configuration's model name
    keras_name: str                                             # the built keras.Model's .name
    build: Callable[..., keras.Model]
    layer_geometry: Callable[[keras.Model], dict[str, dict[str, int]]]
    match_spec: Callable[[keras.Model], dict[str, Any]]
    sweep_layers: Callable[[keras.Model], list[str]]
    activation_pair: Callable[[keras.Model], tuple[str, str] | None]
    output: str                                                 # "tanh_image" or "logits"

    def postprocess(self, kind: str, palette) -> Callable[[np.ndarray], np.ndarray]:
        """Raw output batch -> uint8 cnn_outputs: class ids for a segmentation task, RGB otherwise. An
        image-output network on a segmentation task (Pix2Pix photo -> labels) is snapped to the palette."""
        if self.output == "logits":
            return segnet.logits_to_labels
        if kind == "segmentation":
            pal = np.asarray(palette)
            return lambda out: snap_to_palette(pix2pix.output_to_rgb(out), pal)
        return pix2pix.output_to_rgb

    def training_targets(self, kind: str, palette, targets: np.ndarray) -> np.ndarray:
        """What the network learns to output: an image-output network learns segmentation as image
        translation (the colour label map)."""
        if self.output == "tanh_image" and kind == "segmentation":
            return colorize(targets, palette)
        return targets

    def analysis_spec(self, model: keras.Model) -> dict[str, Any]:
        """The per-model facts the experiments need, as stored in an export's metadata."""
        spec = {"architecture": self.name, "match_spec": self.match_spec(model),
                "sweep_layers": list(self.sweep_layers(model)), "activation_pair": self.activation_pair(model)}
        spec["used_layers"] = used_layers(spec)
        return spec


def used_layers(spec: dict[str, Any]) -> list[str]:
    """Every layer an analysis spec names: what an export must write for a full run."""
    ms = spec["match_spec"]
    names = [ms[k] for k in ("global", "coarse", "fine", "decode2")] + list(spec["sweep_layers"])
    names += list(spec["activation_pair"] or [])
    return list(dict.fromkeys(names))


def _pix2pix_sweep(model):
    depth = pix2pix._depth_of(model)
    return [f"decoder_{k}_input" for k in range(depth, 0, -1)]


def _segnet_sweep(model):
    if model.name == segnet.BASIC_NAME:
        return [f"conv_decode{k}" for k in range(4, 0, -1)]
    return [f"conv{b}_1_D" for b in range(5, 1, -1)] + ["conv1_2_D"]


def _segnet_pair(model):
    return ("conv_decode2", "conv_decode1") if model.name == segnet.BASIC_NAME else ("conv2_1_D", "conv1_2_D")


ARCHITECTURES: dict[str, Architecture] = {
    "pix2pix": Architecture("pix2pix", pix2pix.GENERATOR_NAME, pix2pix.build_generator, pix2pix.layer_geometry,
                            pix2pix.match_spec, _pix2pix_sweep, lambda m: ("decoder_3_input", "decoder_3"),
                            "tanh_image"),
    "segnet_basic": Architecture("segnet_basic", segnet.BASIC_NAME, segnet.build_segnet_basic,
                                 segnet.layer_geometry, segnet.match_spec, _segnet_sweep, _segnet_pair, "logits"),
    "segnet_vgg16": Architecture("segnet_vgg16", segnet.VGG16_NAME, segnet.build_segnet_vgg16,
                                 segnet.layer_geometry, segnet.match_spec, _segnet_sweep, _segnet_pair, "logits"),
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
