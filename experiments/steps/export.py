"""The export stage: the trained network's activations of the training and query splits, written into
two ActivationStores (`train/`, `query/`) with the architecture's analysis spec in their metadata, and
`export.json`: which layers were written and the bytes per image each split takes on disk.

By default only the layers this run reads are written (the architecture's used layers: CompNN's
global/coarse/fine/decode2 maps, the layer sweep and the activation-prediction pair);
`--export_layers=all` writes every named map.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from compnn_py import fsio
from compnn_py.store import ActivationStore
from experiments.errors import UserError
from experiments.steps.data import load_data
from experiments.steps.train import network_options


def export_stores(d: Path, cfg, spec, data_stage: Path, model_dir: Path) -> None:
    from tf_models import export, loaders

    splits = {name: load_data(data_stage, name, spec) for name in ("train", "query")}
    try:
        model, arch = loaders.load_network(model_dir, image_size=cfg.size, kind=spec.kind, expect=cfg.model,
                                           bn_inputs=splits["train"].inputs, batch_size=cfg.batch_size,
                                           **network_options(cfg))
    except (ValueError, FileNotFoundError) as e:
        raise UserError(str(e)) from None
    post = arch.postprocess(spec.kind, spec.palette)
    label_kind = "labels" if spec.kind == "segmentation" else "images"
    which = getattr(cfg, "export_layers", "used")
    if which not in ("used", "all"):
        raise UserError(f"export_layers must be used or all, got {which!r}")
    layers = None if which == "all" else arch.analysis_spec(model)["used_layers"]
    metadata = {"num_classes": spec.num_classes, "palette": np.asarray(spec.palette).tolist(),
                "config": cfg.as_dict()}
    model_name = cfg.model if arch.name != "custom" else f"custom:{model.name}"
    summary = {"export_layers": which, "network": model.name, "architecture": arch.name, "splits": {}}
    for name, s in splits.items():
        store = export.export_split(model, s.inputs, s.targets, s.ids, d / name, model_name=model_name,
                                    task=cfg.task, label_kind=label_kind, postprocess=post, image_meta=s.meta,
                                    metadata=metadata, layers=layers, arch=arch)
        summary["layers"] = store.layer_names
        summary["splits"][name] = disk_usage(d / name, store)
    fsio.write_json(d / "export.json", summary)


def disk_usage(path: Path, store: ActivationStore) -> dict:
    """Bytes a store takes on disk (every file under it), per image, and per image for each layer."""
    total = sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
    n = len(store)
    return {"images": n, "bytes": total, "bytes_per_image": total / n,
            "layer_bytes_per_image": {name: store.layer(name).nbytes / n for name in store.layer_names}}


def open_stores(export_dir: Path) -> tuple[ActivationStore, ActivationStore]:
    return ActivationStore.open(export_dir / "train"), ActivationStore.open(export_dir / "query")
