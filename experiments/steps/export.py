"""The export stage: the trained network's activations of the training and query splits, written into
two ActivationStores (`train/`, `query/`) with the architecture's analysis spec in their metadata."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from compnn_py.store import ActivationStore
from experiments.steps.data import load_data


def export_stores(d: Path, cfg, spec, data_stage: Path, model_dir: Path) -> None:
    from tf_models import export, registry, train as tft

    model = tft.load_model(model_dir, expect=cfg.model)
    arch = registry.of_model(model)
    splits = {name: load_data(data_stage, name, spec) for name in ("train", "query")}
    if arch.output == "logits":
        # SegNet's own recipe: BN statistics recomputed over the training set once training is over.
        tft.recompute_bn_statistics(model, splits["train"].inputs, batch_size=cfg.batch_size)
    post = arch.postprocess(spec.kind, spec.palette)
    label_kind = "labels" if spec.kind == "segmentation" else "images"
    metadata = {"num_classes": spec.num_classes, "palette": np.asarray(spec.palette).tolist(),
                "config": cfg.as_dict()}
    for name, s in splits.items():
        export.export_split(model, s.inputs, s.targets, s.ids, d / name, model_name=cfg.model, task=cfg.task,
                            label_kind=label_kind, postprocess=post, image_meta=s.meta, metadata=metadata)


def open_stores(export_dir: Path) -> tuple[ActivationStore, ActivationStore]:
    return ActivationStore.open(export_dir / "train"), ActivationStore.open(export_dir / "query")
