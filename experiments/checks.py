"""Every check of the network to explain and of the flags that depend on the data's size, before any
stage runs: the driver's settings() calls `before_stages`, and a failure is one `error:` line (exit 2)
with nothing created.

With --checkpoint the network is loaded here, once (tf_models.loaders keeps it for the train and export
stages of the same process), and checked:
  * what it is (a compnn run directory, a .keras file, a pix2pix-tensorflow checkpoint) and that it
    loads: a truncated or damaged checkpoint, or one with missing variables, fails here, not after the
    data stage;
  * its input size: where the network fixes it and --size is not given, the run takes it (a .keras with
    a fixed input shape, a compnn run directory's builder size, a pix2pix-tensorflow U-net of d levels:
    2^d x 2^d, i.e. 256x256 for the reference's 8); a --size that does not fit is refused;
  * --model: it must name the checkpoint's architecture; it does not apply to a network compnn did not
    build. Without --model the checkpoint's architecture is the run's model;
  * the task: a compnn network trained for another task (its config.json records it) is refused; a
    class-score network must have the task's number of classes (or one more, a void class), an image
    network three channels; the input must be RGB;
  * the matched layers: feature maps (not the input layer, not an input-scaling layer, not the output)
    with strides ordered global >= coarse >= fine (tf_models.registry.custom says which rule failed).
Without a network: --kernel at most 64 (the matcher's largest patch) and --shortlist at most the
number of training images, counted by listing the data (nothing is decoded).

`describe_network` gives config.json and the report what was explained instead of the preset's
training fields, which do not apply to a given network.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from absl import logging

from compnn_py.data import count_split
from experiments.errors import UserError

MAX_KERNEL = 64  # cnn_core's kMaxKernel: the largest fine patch the matcher takes
# RunConfig fields that only describe training compnn's own network: they do not apply to a given one.
TRAINING_FIELDS = ("steps", "epochs", "ngf")


@dataclasses.dataclass(frozen=True)
class Network:
    """The network at --checkpoint, as the checks loaded it."""
    form: str                  # "run_dir", "keras" or "tf1" (tf_models.loaders.detect)
    description: dict          # tf_models.loaders.describe: architecture, sizes, parameters, layers


def before_stages(cfg, spec, *, data_dir: Path | None, checkpoint: Path | None, match_method: str,
                  size_given: bool, model_given: bool):
    """Checks the invocation against the network and the data's size; returns (cfg, network): the run
    configuration with the size and model the network fixes (when the flags left them open), and the
    Network (None without --checkpoint). UserError (one line) on the first problem."""
    if cfg.kernel is not None and cfg.kernel > MAX_KERNEL:
        raise UserError(f"--kernel must be at most {MAX_KERNEL} (the matcher's largest patch), got {cfg.kernel}")
    network = None
    if checkpoint is not None:
        cfg, network = _check_network(cfg, spec, checkpoint, size_given=size_given, model_given=model_given)
    if match_method != "exact":
        n = _training_images(cfg, data_dir)
        if cfg.shortlist > n:
            raise UserError(f"--shortlist {cfg.shortlist} exceeds the {n} training images")
    return cfg, network


def _training_images(cfg, data_dir: Path | None) -> int:
    try:
        available = count_split(cfg.task, "train", data_dir)
    except (OSError, ValueError) as e:
        raise UserError(f"--data_dir: {e}") from None
    if data_dir is None and cfg.n_train is not None:
        return cfg.n_train  # the synthetic set generates exactly that many
    return min(available, cfg.n_train) if cfg.n_train is not None else available


def _fixed_size(form: str, checkpoint: Path, loaders, train) -> tuple[int, int] | None:
    """The input size the network at `checkpoint` fixes, or None where it takes any."""
    if form == "tf1":
        side = loaders.tf1_generator_info(checkpoint)["native_size"]
        return side, side
    if form == "run_dir":
        builder = train.load_config(checkpoint).get("builder") or {}
        if "image_size" in builder:
            return int(builder["image_size"]), int(builder["image_size"])
        shape = builder.get("input_shape")
        return (int(shape[0]), int(shape[1])) if shape else None
    return loaders.fixed_input_size(checkpoint)


def _recorded_task(form: str, checkpoint: Path) -> tuple[str, str] | None:
    """(task, architecture) a compnn network was trained for: its run directory's config.json (beside
    a model.keras the train stage wrote, too); None when not recorded."""
    conf = checkpoint / "config.json" if form == "run_dir" else checkpoint.parent / "config.json"
    if form == "tf1" or not conf.is_file():
        return None
    try:
        record = json.loads(conf.read_text())
        task, arch = record.get("task"), record.get("arch")
    except (OSError, ValueError, AttributeError):
        return None
    return (task, str(arch)) if isinstance(task, str) else None


def _check_network(cfg, spec, checkpoint: Path, *, size_given: bool, model_given: bool):
    from tf_models import loaders, train  # TensorFlow: only with --checkpoint

    where = f"--checkpoint {checkpoint}"
    try:
        form = loaders.detect(checkpoint)
        recorded = _recorded_task(form, checkpoint)
        if recorded is not None and recorded[0] != cfg.task:
            raise UserError(f"{where} holds a {recorded[1]} network trained for --task={recorded[0]} (its "
                            f"config.json), not --task={cfg.task}")
        fixed = _fixed_size(form, checkpoint, loaders, train)
        if fixed is not None and not size_given and tuple(fixed) != tuple(cfg.size):
            logging.info("checkpoint takes %dx%d images: the run uses that size (--size changes it)", *fixed)
            cfg = dataclasses.replace(cfg, size=tuple(fixed))
        options = {"match_layers": cfg.match_layers, "decode2": cfg.decode2, "kernel": cfg.kernel}
        # Without --model, the checkpoint's own architecture is the run's model (nothing to expect).
        model, arch = loaders.load_network(checkpoint, image_size=cfg.size, kind=spec.kind,
                                           expect=cfg.model if model_given else None, **options)
    except (ValueError, FileNotFoundError) as e:
        raise UserError(f"{where}: {e}") from None
    own = arch.extra.get("based_on") if arch.name == "custom" else arch.name
    if model_given and own != cfg.model:
        what = f"a {own} network" if own else f"network {model.name!r}, which compnn did not build"
        raise UserError(f"--model={cfg.model} does not apply: {where} holds {what}; drop --model "
                        "(a given network's own architecture is used)")
    if own and own != cfg.model:
        cfg = dataclasses.replace(cfg, model=own)
    _check_task_fit(model, arch, spec, where)
    ms = arch.match_spec(model)
    strides = [ms["stride"][ms[r]] for r in ("global", "coarse", "fine")]
    if not strides[0] >= strides[1] >= strides[2]:
        raise UserError(f"{where}: the matched layers' strides must go global >= coarse >= fine, got {strides}")
    return cfg, Network(form, describe_network(model, arch, form))


def _check_task_fit(model, arch, spec, where: str) -> None:
    """The network's input and output against the task: RGB in; class scores for the task's classes
    (or one more, a void class) or an RGB image out."""
    channels_in, channels_out = model.inputs[0].shape[-1], model.outputs[0].shape[-1]
    if channels_in != 3:
        raise UserError(f"{where}: the network takes {channels_in}-channel images; the data is RGB (3)")
    if arch.output == "logits":
        if spec.kind != "segmentation":
            raise UserError(f"{where}: the network outputs {channels_out} class scores, but --task={spec.name} "
                            "makes images")
        n = spec.num_classes
        if channels_out not in (n, n + 1):
            raise UserError(f"{where}: the network outputs {channels_out} class scores, --task={spec.name} has {n} "
                            f"classes ({n}, or {n + 1} with a void class, expected): a network of another task?")
    elif channels_out != 3:
        raise UserError(f"{where}: the network outputs {channels_out}-channel images; expected RGB (3)")


def describe_network(model, arch, form: str) -> dict[str, Any]:
    """What config.json and the report show of a given network (tf_models.loaders.describe + its form)."""
    from tf_models import loaders

    return {"form": {"run_dir": "compnn training run", "keras": "Keras file",
                     "tf1": "pix2pix-tensorflow checkpoint"}[form], **loaders.describe(model, arch)}


def configuration(resolved: dict[str, Any], network: Network | None) -> dict[str, Any]:
    """The run's configuration as config.json and the report show it: with a given network, its
    description replaces the preset's training fields (TRAINING_FIELDS; the model name for a network
    compnn did not build; the batch size except for a compnn run, whose BN statistics may be recomputed
    with it), which did not apply."""
    if network is None:
        return resolved
    drop = TRAINING_FIELDS + (("model",) if network.description["architecture"] == "custom" else ()) \
        + (("batch_size",) if network.form != "run_dir" else ())  # read only to recompute a run's BN statistics
    out = {k: v for k, v in resolved.items() if k not in drop}
    out["network"] = network.description
    return out
