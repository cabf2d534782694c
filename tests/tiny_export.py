"""A tiny export (train/ and query/ ActivationStores like the export stage writes) made without TensorFlow,
for tests of the compnn stage: three matcher layers with the geometry metadata the stage reads."""

from types import SimpleNamespace

import numpy as np

from compnn_py.store import ActivationStore
from experiments.tasks import run_config

NUM_CLASSES = 4
SIZE = 16
LAYERS = {"glob": ((2, 2, 6), 1, 8), "coarse": ((4, 4, 5), 2, 4), "fine": ((8, 8, 4), 3, 2)}  # shape, K, stride
MATCH_SPEC = {"global": "glob", "coarse": "coarse", "fine": "fine", "decode2": "fine"}
SPEC = SimpleNamespace(num_classes=NUM_CLASSES)


def config(**overrides):
    """A RunConfig with small matcher knobs (overridable)."""
    knobs = {"shortlist": 3, "coarse_k": 2, "margin": 0, **overrides}
    return run_config("cityscapes", "quick", real_data=False, **knobs)


def _store(path, rng, n, prefix):
    w = ActivationStore.create(
        path, n_images=n, layers={k: v[0] for k, v in LAYERS.items()}, image_shape=(SIZE, SIZE, 3),
        label_shape=(SIZE, SIZE), output_shape=(SIZE, SIZE), image_ids=[f"{prefix}{i}" for i in range(n)],
        model="tiny", task="tiny", layer_meta={k: {"kernel": v[1], "stride": v[2]} for k, v in LAYERS.items()},
        metadata={"num_classes": NUM_CLASSES, "match_spec": MATCH_SPEC})
    # Smooth-ish label maps so copied blocks carry structure; ReLU-like activations with exact zeros.
    base = rng.integers(0, NUM_CLASSES, (n, SIZE // 4, SIZE // 4))
    labels = np.kron(base, np.ones((4, 4), dtype=base.dtype)).astype(np.uint8)
    with w:
        for i in range(n):
            acts = {k: np.maximum(rng.standard_normal(v[0]), 0).astype(np.float32) for k, v in LAYERS.items()}
            out = labels[i].copy()
            out[rng.random((SIZE, SIZE)) < 0.1] = rng.integers(0, NUM_CLASSES)
            w.write(i, activations=acts, image=rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8),
                    label=labels[i], cnn_output=out)
    return ActivationStore.open(path)


def make_export(directory, seed=0, n_train=9, n_query=4):
    """Write `directory`/train and `directory`/query; returns (db, query) opened."""
    rng = np.random.default_rng(seed)
    return _store(directory / "train", rng, n_train, "t"), _store(directory / "query", rng, n_query, "q")
