"""Export of a trained network's activations into an ActivationStore (compnn_py.store): one forward
pass per image writes every selected named layer, the input image, its ground truth and the CNN's own
output (the paper's self-supervised labels, Eq. 8). The architecture's facts (layer geometry, match
spec, sweep layers, activation pairs: tf_models.registry) go into the store's metadata once, here.

Before anything is written, ``resolve_match_layers`` checks that the matched layers are not degenerate
(constant over the training images; see DEGENERATE_RULE) and moves a dead global layer to the deepest
live one above the coarse layer.

Rows go straight into the store's memmaps, so a split larger than RAM exports; the store publishes its
manifest only when every row is written, so an interrupted export never looks complete.
"""

import dataclasses

import numpy as np
import keras
from absl import logging

from compnn_py.progress import Progress
from compnn_py.store import ActivationStore

from . import registry


def _check_uint8(a, name, ndims):
    if not isinstance(a, np.ndarray) or a.dtype != np.uint8:
        raise TypeError(f"{name} must be a uint8 numpy array, got "
                        f"{getattr(a, 'dtype', type(a).__name__)}")
    if a.ndim not in ndims:
        raise ValueError(f"{name} must have {' or '.join(map(str, ndims))} dims, got shape {a.shape}")


def export_split(model, inputs, labels, ids, store_path, *, model_name, task, label_kind, postprocess,
                 layers=None, dtype="float16", image_meta=None, metadata=None, batch_size=4,
                 progress=True, overwrite=False, arch=None):
    """Runs ``model`` in inference mode over uint8 ``inputs`` (N, H, W, C) and writes a store at
    ``store_path``. ``labels``: uint8 ground truth (N, H, W) ids or (N, H, W, 3) images, or None.
    ``postprocess`` maps the model's output batch (numpy float: tanh range for Pix2Pix, logits for
    SegNet) to uint8 cnn_outputs (B, H, W) or (B, H, W, 3), e.g. ``pix2pix.output_to_rgb`` or
    ``segnet.logits_to_labels``. ``layers``: names to store (default every named map). ``arch``: the
    network's registry.Architecture (default: the compnn architecture that built ``model``; give
    ``registry.custom(...)`` for any other network). The match spec and architecture are added to the
    store's metadata. Returns the opened store."""
    writer, layers, first = create_writer(
        model, inputs, labels, ids, store_path, model_name=model_name, task=task, label_kind=label_kind,
        postprocess=postprocess, layers=layers, dtype=dtype, image_meta=image_meta, metadata=metadata,
        batch_size=batch_size, overwrite=overwrite, arch=arch)
    with writer:
        write_rows(model, writer, inputs, labels, 0, len(inputs), layers, postprocess, batch_size,
                   first=first, progress=progress, desc=f"export {model_name}/{task}")
    return ActivationStore.open(store_path)


def _validate(model, inputs, labels, ids, postprocess, batch_size, layers, arch):
    arch = registry.of_model(model) if arch is None else arch
    _check_uint8(inputs, "inputs", (4,))
    n = len(inputs)
    want = tuple(model.inputs[0].shape[1:])
    if n == 0 or len(want) != 3 or any(w is not None and w != g for w, g in zip(want, inputs.shape[1:])):
        raise ValueError(f"inputs must be (N>0, {', '.join(map(str, want))}) for this model, got {inputs.shape}")
    if labels is not None:
        _check_uint8(labels, "labels", (3, 4))
        if labels.shape[:3] != inputs.shape[:3]:
            raise ValueError(f"labels {labels.shape} do not match inputs {inputs.shape}")
    ids = [str(i) for i in ids]
    if len(ids) != n:
        raise ValueError(f"ids must name the {n} images, got {len(ids)}")
    if not callable(postprocess):
        raise TypeError("postprocess must be callable: output batch -> uint8 cnn_outputs")
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    geometry = arch.layer_geometry(model)
    layers = list(geometry) if layers is None else list(layers)
    unknown = [name for name in layers if name not in geometry]
    if unknown or not layers:
        raise ValueError(f"layers {unknown} are not named maps of {model.name}; choose from {list(geometry)}")
    return arch, ids, layers, geometry


def _forward(model, inputs, layers, postprocess, batch_size):
    """forward(i) -> (activations per layer, uint8 cnn_outputs) of the batch starting at row i."""
    features = keras.Model(model.inputs[0], [model.get_layer(name).output for name in layers] + [model.outputs[0]])
    n = len(inputs)

    def forward(i):
        outs = features(inputs[i: i + batch_size].astype(np.float32), training=False)
        acts = [np.asarray(a) for a in outs[:-1]]
        out = np.asarray(postprocess(np.asarray(outs[-1])))
        b = min(batch_size, n - i)
        if out.dtype != np.uint8 or out.ndim not in (3, 4) or out.shape[:3] != (b, *inputs.shape[1:3]):
            raise ValueError(f"postprocess must return uint8 (B, H, W) or (B, H, W, 3) with B, H, W = "
                             f"{(b, *inputs.shape[1:3])}, got {out.dtype} {out.shape}")
        return acts, out
    return forward


def create_writer(model, inputs, labels, ids, store_path, *, model_name, task, label_kind, postprocess,
                  layers=None, dtype="float16", image_meta=None, metadata=None, batch_size=4,
                  overwrite=False, arch=None):
    """Validates export_split's arguments and creates the store's writer (shapes from the first batch).
    Returns (writer, layers, first) with `first` the first batch's forward result, which write_rows
    reuses. The writer's `pending` directory can be handed to other processes (ActivationStore.attach)."""
    arch, ids, layers, geometry = _validate(model, inputs, labels, ids, postprocess, batch_size, layers, arch)
    first = _forward(model, inputs, layers, postprocess, batch_size)(0)
    meta = dict(metadata or {}, **arch.analysis_spec(model))
    writer = ActivationStore.create(
        store_path, n_images=len(inputs), layers={name: a.shape[1:] for name, a in zip(layers, first[0])},
        image_shape=inputs.shape[1:], label_shape=None if labels is None else labels.shape[1:],
        output_shape=first[1].shape[1:], image_ids=ids, model=model_name, task=task,
        label_kind=label_kind, dtype=dtype, layer_meta={name: geometry[name] for name in layers},
        metadata=meta, image_meta=image_meta, overwrite=overwrite)
    return writer, layers, first


def write_rows(model, writer, inputs, labels, start, stop, layers, postprocess, batch_size=4, *,
               first=None, progress=True, desc="export"):
    """Writes rows [start, stop) into ``writer``. Batches are aligned to multiples of ``batch_size``
    counted from row 0 (``start`` must be such a multiple), so any split of the rows between processes
    runs exactly the batches a single process runs: float results can depend on a batch's composition.
    ``first``: the forward result of the batch at row 0, if already computed."""
    if start % batch_size or not 0 <= start <= stop <= len(inputs):
        raise ValueError(f"rows [{start}, {stop}) must start at a multiple of {batch_size} within 0..{len(inputs)}")
    forward = _forward(model, inputs, layers, postprocess, batch_size)
    for i in Progress(range(start, stop, batch_size), desc=desc, disable=not progress, unit="batch"):
        acts, out = first if (i == 0 and first is not None) else forward(i)
        for j in range(min(len(out), stop - i)):
            writer.write(i + j, activations={name: a[j] for name, a in zip(layers, acts)},
                         image=inputs[i + j], cnn_output=out[j],
                         label=None if labels is None else labels[i + j])


# ---- degenerate layers ------------------------------------------------------------------------------
DEGENERATE_RTOL = 1e-3
DEGENERATE_RULE = (f"a layer is degenerate when, for every training image i, max|a_i - a_0| <= {DEGENERATE_RTOL:g} * "
                   "max(max|a_0|, max|a_i|) over its flattened map (a_0: the first image), an all-zero layer "
                   "included; it cannot tell the images apart")


class _Spread:
    """Running test of one layer over a stream of batches: has some image differed from the first one
    by more than the rule's tolerance (DEGENERATE_RULE)?"""

    def __init__(self, rtol: float):
        self.rtol, self.first, self.first_scale, self.varies = rtol, None, 0.0, False

    def update(self, batch: np.ndarray) -> None:
        flat = np.asarray(batch, dtype=np.float32).reshape(len(batch), -1)
        if self.first is None:
            self.first = flat[0].copy()
            self.first_scale = float(np.abs(self.first).max(initial=0.0))
        diff = np.abs(flat - self.first).max(axis=1, initial=0.0)
        scale = np.maximum(np.abs(flat).max(axis=1, initial=0.0), self.first_scale)
        self.varies = self.varies or bool((diff > self.rtol * scale).any())


def degenerate_layers(model, inputs, layers, *, batch_size: int = 4, rtol: float = DEGENERATE_RTOL) -> list[str]:
    """The names among ``layers`` that are degenerate over the uint8 ``inputs`` (DEGENERATE_RULE), in
    the order given. One forward pass of the part of ``model`` those layers need, stopped as soon as
    every layer has varied (usually after the first batch). Fewer than two images: [] (cannot tell)."""
    layers = list(dict.fromkeys(layers))
    if len(inputs) < 2 or not layers:
        return []
    probe = keras.Model(model.inputs[0], [model.get_layer(n).output for n in layers])
    spreads = {n: _Spread(rtol) for n in layers}
    for i in range(0, len(inputs), batch_size):
        outs = probe(np.asarray(inputs[i: i + batch_size]).astype(np.float32), training=False)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        for name, out in zip(layers, outs):
            if not spreads[name].varies:
                spreads[name].update(np.asarray(out))
        if all(sp.varies for sp in spreads.values()):
            break
    return [n for n in layers if not spreads[n].varies]


def resolve_match_layers(model, arch, train_inputs, *, user_named: bool = False,
                         batch_size: int = 4) -> tuple[registry.Architecture, dict]:
    """Checks the matched layers of ``arch`` over the training images before anything is exported.

    * coarse or fine degenerate: ValueError naming the layer (pixel matching on it would be arbitrary);
    * global degenerate, layers chosen by compnn: the global descriptor moves to the deepest
      non-degenerate layer of ``arch.global_fallbacks`` (U-net: encoder_7 for a dead encoder_8), said in
      one log line; none left: ValueError;
    * global degenerate, named by the user (``user_named``, --match_layers): a warning, the layer kept.
    Returns the architecture to export with (its match spec names the global layer used, its metadata
    holds ``global_layer``: the layer used, the one named, the degenerate layers found and the rule)."""
    ms = arch.match_spec(model)
    n = len(train_inputs)
    dead = degenerate_layers(model, train_inputs, [ms[r] for r in ("global", "coarse", "fine")], batch_size=batch_size)
    for role in ("fine", "coarse"):
        if ms[role] in dead:
            raise ValueError(f"the {role} layer {ms[role]} of {model.name} is constant across the {n} training "
                             f"images (degenerate: {DEGENERATE_RULE}); match at another layer "
                             "(--match_layers=global:NAME,coarse:NAME,fine:NAME)")
    record = {"layer": ms["global"], "named": ms["global"], "degenerate": [], "images": n, "rule": DEGENERATE_RULE}
    if ms["global"] not in dead:
        return _with_global(arch, model, ms, record), record
    record["degenerate"].append(ms["global"])
    fallbacks = [] if user_named or arch.global_fallbacks is None else list(arch.global_fallbacks(model))
    if user_named or not fallbacks:
        logging.warning("global layer %s is constant across the %d training images: its shortlist and Table 1's "
                        "Global Bottleneck row cannot tell the images apart (kept: %s)", ms["global"], n,
                        "named with --match_layers" if user_named else "no other layer to fall back to")
        return _with_global(arch, model, ms, record), record
    dead_below = degenerate_layers(model, train_inputs, fallbacks, batch_size=batch_size)
    live = next((f for f in fallbacks if f not in dead_below), None)
    if live is None:
        raise ValueError(f"the global layer {ms['global']} of {model.name} and every layer it could fall back to "
                         f"({', '.join(fallbacks)}) are constant across the {n} training images")
    record["degenerate"] += fallbacks[:fallbacks.index(live)]
    record["layer"] = live
    logging.warning("global layer %s is constant across the %d training images; using %s, the deepest layer "
                    "above the coarse one that is not", ms["global"], n, live)
    geo = arch.layer_geometry(model)
    new = dict(ms, **{"global": live})
    used = list(dict.fromkeys(new[k] for k in ("global", "coarse", "fine", "decode2")))
    new["kernel"] = {u: geo[u]["kernel"] for u in used}
    new["stride"] = {u: geo[u]["stride"] for u in used}
    return _with_global(arch, model, new, record), record


def _with_global(arch, model, ms: dict, record: dict):
    return dataclasses.replace(arch, match_spec=lambda m: dict(ms), extra={**arch.extra, "global_layer": record})
