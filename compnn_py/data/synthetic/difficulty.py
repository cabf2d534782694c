"""How much composition a dataset needs: label copying from whole training images versus from
training patches, all on raw pixels (no learned features).

- global_nn: copy the label map of the training photo with the highest cosine similarity (flattened
  raw pixels) - the paper's global nearest neighbour, on pixels instead of CNN features;
- global_oracle: copy the training label map that agrees best with the ground truth (an upper bound for
  any method that copies one whole training label map);
- patch_nn: for each query pixel, copy the label at the centre of the most similar training patch
  (k x k raw RGB, cosine), over all training images and positions - composition with the crudest
  embedding; patch_nn_context adds the k x k patches of the image shrunk 4 and 16 times (a hand-made
  local + global descriptor, a stand-in for a CNN's). When it beats global_oracle, no whole-image
  copy can match pixel-wise composition.
"""

from __future__ import annotations

import numpy as np

from ..palettes import IGNORE


def pixel_accuracy(pred: np.ndarray, truth: np.ndarray) -> float:
    """Fraction of non-ignored truth pixels predicted right, pooled over all images."""
    valid = truth != IGNORE
    if not valid.any():
        raise ValueError("truth holds only ignored pixels")
    return float((pred[valid] == truth[valid]).mean())


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = x.reshape(len(x), -1).astype(np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-6)


def global_nn(train_inputs, query_inputs) -> np.ndarray:
    """Index of the most similar training image (cosine on raw pixels) for each query."""
    return (_unit_rows(query_inputs) @ _unit_rows(train_inputs).T).argmax(1)


def global_oracle(train_targets, query_targets) -> np.ndarray:
    """Index of the training label map agreeing best with each query's ground truth."""
    best = np.empty(len(query_targets), np.int64)
    for q, truth in enumerate(query_targets):
        valid = truth != IGNORE
        best[q] = (train_targets[:, valid] == truth[valid]).sum(1).argmax()
    return best


def _patches(images: np.ndarray, k: int, ys: np.ndarray, xs: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Flattened k x k RGB patches (edge-padded) centred at (rows, ys, xs)."""
    r = k // 2
    padded = np.pad(images, ((0, 0), (r, r), (r, r), (0, 0)), mode="edge")
    dy, dx = np.mgrid[0:k, 0:k]
    return padded[rows[:, None, None], ys[:, None, None] + dy, xs[:, None, None] + dx].reshape(len(rows), -1)


def _downsample(images: np.ndarray, factor: int) -> np.ndarray:
    """Block means over factor x factor pixels (edges padded), float32."""
    n, h, w, c = images.shape
    hp, wp = -(-h // factor) * factor, -(-w // factor) * factor
    x = np.pad(images.astype(np.float32), ((0, 0), (0, hp - h), (0, wp - w), (0, 0)), mode="edge")
    return x.reshape(n, hp // factor, factor, wp // factor, factor, c).mean((2, 4))


def _descriptors(images, k, scales, ys, xs, rows):
    """Per scale, a unit k x k patch of the image shrunk by that scale; concatenated."""
    parts = []
    for f in scales:
        small = images if f == 1 else _downsample(images, f)
        parts.append(_unit_rows(_patches(small, k, ys // f, xs // f, rows)))
    return np.concatenate(parts, 1) / np.sqrt(len(scales))


def patch_nn(train_inputs, train_targets, query_inputs, query_targets, *, k: int = 7, scales=(1,),
             stride: int = 4, queries: int = 2000, seed: int = 0, chunk: int = 256):
    """Pixel accuracy of patch-wise label copying at `queries` random non-ignored query pixels.

    A position's descriptor is its k x k RGB patch, plus, for each extra entry f of `scales`, the
    k x k patch around it in the image shrunk f times (context). The database holds every training
    position on a `stride` grid. Returns (accuracy, predictions, truths) for the sampled pixels.
    """
    n, h, w = train_targets.shape[:3]
    gy, gx = np.mgrid[0:h:stride, 0:w:stride]
    rows = np.repeat(np.arange(n), gy.size)
    ys, xs = np.tile(gy.ravel(), n), np.tile(gx.ravel(), n)
    database = _descriptors(train_inputs, k, scales, ys, xs, rows)
    db_labels = train_targets[rows, ys, xs]

    rng = np.random.default_rng(seed)
    qn, qy, qx = np.nonzero(query_targets != IGNORE)
    pick = rng.choice(len(qn), size=min(queries, len(qn)), replace=False)
    qn, qy, qx = qn[pick], qy[pick], qx[pick]
    truth = query_targets[qn, qy, qx]
    pred = np.empty_like(truth)
    for s in range(0, len(qn), chunk):
        q = _descriptors(query_inputs, k, scales, qy[s:s + chunk], qx[s:s + chunk], qn[s:s + chunk])
        pred[s:s + chunk] = db_labels[(q @ database.T).argmax(1)]
    return float((pred == truth).mean()), pred, truth


def difficulty_report(train, query, **patch_kw) -> dict[str, float]:
    """Pixel accuracies of global_nn, global_oracle, patch_nn (one scale) and patch_nn_context
    (scales 1, 4, 16) for segmentation Splits."""
    g = global_nn(train.inputs, query.inputs)
    o = global_oracle(train.targets, query.targets)
    args = (train.inputs, train.targets, query.inputs, query.targets)
    return {"global_nn": pixel_accuracy(train.targets[g], query.targets),
            "global_oracle": pixel_accuracy(train.targets[o], query.targets),
            "patch_nn": patch_nn(*args, **patch_kw)[0],
            "patch_nn_context": patch_nn(*args, **{"scales": (1, 4, 16), **patch_kw})[0]}
