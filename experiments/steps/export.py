"""The export stage: the trained network's activations of the training and query splits, written into
two ActivationStores (`train/`, `query/`) with the architecture's analysis spec in their metadata, and
`export.json`: which layers were written, the global layer used (a degenerate one is replaced:
tf_models.export.resolve_match_layers) and the bytes per image each split takes on disk.

By default only the layers this run reads are written (the architecture's used layers: CompNN's
global/coarse/fine/decode2 maps, the layer sweep and the activation-prediction pair);
`--export_layers=all` writes every named map.

With a Dask engine (--workers/--scheduler) the rows are sharded: this process loads the network (and
recomputes BN statistics where the architecture asks), saves it as `model.keras` in the stage directory
and creates each store's writer; each task loads that model, writes a range of whole batches into the
pending store (ActivationStore.attach), and this process publishes the stores. The batches are the ones
a single process runs (tf_models.export.write_rows), so the stores are the same bytes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from compnn_py import fsio
from compnn_py.store import ActivationStore
from experiments.errors import UserError
from experiments.steps.data import load_data
from experiments.steps.train import network_options


def export_stores(d: Path, cfg, spec, data_stage: Path, model_dir: Path, engine=None) -> None:
    from tf_models import export, loaders
    from tf_models.train import MODEL_FILE

    splits = {name: load_data(data_stage, name, spec) for name in ("train", "query")}
    try:
        model, arch = loaders.load_network(model_dir, image_size=cfg.size, kind=spec.kind, expect=cfg.model,
                                           bn_inputs=splits["train"].inputs, batch_size=cfg.batch_size,
                                           **network_options(cfg))
        # Degenerate matched layers are found before anything is written (global: falls back, said once).
        arch, _ = export.resolve_match_layers(model, arch, splits["train"].inputs, batch_size=BATCH,
                                              user_named=cfg.match_layers is not None)
    except (ValueError, FileNotFoundError) as e:
        raise UserError(str(e)) from None
    post = arch.postprocess(spec.kind, spec.palette)
    label_kind = "labels" if spec.kind == "segmentation" else "images"
    which = cfg.export_layers
    if which not in ("used", "all"):
        raise UserError(f"export_layers must be used or all, got {which!r}")
    layers = None if which == "all" else arch.analysis_spec(model)["used_layers"]
    metadata = {"num_classes": spec.num_classes, "palette": np.asarray(spec.palette).tolist(),
                "config": cfg.as_dict()}
    model_name = cfg.model if arch.name != "custom" else f"custom:{model.name}"
    summary = {"export_layers": which, "network": model.name, "architecture": arch.name,
               "global_layer": arch.extra["global_layer"], "splits": {}}
    model_path = None
    if engine is not None:
        model_path = d / MODEL_FILE
        model.save(model_path)
    for name, s in splits.items():
        kw = dict(model_name=model_name, task=cfg.task, label_kind=label_kind, postprocess=post,
                  image_meta=s.meta, metadata=metadata, layers=layers, arch=arch)
        if engine is None:
            store = export.export_split(model, s.inputs, s.targets, s.ids, d / name, batch_size=BATCH, **kw)
        else:
            writer, used, _ = export.create_writer(model, s.inputs, s.targets, s.ids, d / name,
                                                   batch_size=BATCH, **kw)
            with writer:  # publishes once the tasks recorded every row; aborts if a task failed
                shards = _shards(len(s.inputs), BATCH, _workers(engine))
                engine.map(export_shard, [(str(model_path), str(writer.pending), str(data_stage), name, a, b)
                                          for a, b in shards],
                           desc=f"export {name}", cfg=cfg, spec=spec, layers=used)
            store = ActivationStore.open(d / name)
        summary["layers"] = store.layer_names
        summary["splits"][name] = disk_usage(d / name, store)
    if model_path is not None:
        model_path.unlink()  # only the stores and export.json are the stage's outputs
    fsio.write_json(d / "export.json", summary)


BATCH = 4  # rows per forward pass; shards are whole batches of it
_cache: dict = {}  # in a worker: (model path, mtime) -> (model, arch), loaded once per process


def _workers(engine) -> int:
    info = engine.describe()
    return max(1, int(info.get("workers") or info.get("workers_at_start") or 1))


def _shards(n: int, batch: int, workers: int) -> list[tuple[int, int]]:
    """[start, stop) row ranges of whole batches (aligned from row 0), about two per worker."""
    per = -(-n // (2 * workers))
    per = max(batch, -(-per // batch) * batch)
    return [(a, min(n, a + per)) for a in range(0, n, per)]


def export_shard(model_path: str, pending: str, data_stage: str, split: str, start: int, stop: int, *,
                 cfg, spec, layers) -> int:
    """Runs on a worker: rows [start, stop) of `split` into the pending store. Returns the rows written."""
    from tf_models import export, loaders

    key = (model_path, Path(model_path).stat().st_mtime_ns)
    if key not in _cache:
        # No bn_inputs: the saved model already holds the recomputed statistics.
        _cache.clear()
        _cache[key] = loaders.load_network(Path(model_path), image_size=cfg.size, kind=spec.kind,
                                           expect=cfg.model, progress=False, **network_options(cfg))
    model, arch = _cache[key]
    s = load_data(Path(data_stage), split, spec)
    writer = ActivationStore.attach(pending)
    with writer:
        export.write_rows(model, writer, s.inputs, s.targets, start, stop, layers,
                          arch.postprocess(spec.kind, spec.palette), BATCH, progress=False)
    return stop - start


def disk_usage(path: Path, store: ActivationStore) -> dict:
    """Bytes a store takes on disk (every file under it), per image, and per image for each layer."""
    total = sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
    n = len(store)
    return {"images": n, "bytes": total, "bytes_per_image": total / n,
            "layer_bytes_per_image": {name: store.layer(name).nbytes / n for name in store.layer_names}}


def open_stores(export_dir: Path) -> tuple[ActivationStore, ActivationStore]:
    return ActivationStore.open(export_dir / "train"), ActivationStore.open(export_dir / "query")
