"""Realistic (spatially smooth, post-ReLU) feature pyramids for matcher benchmarks.

A fixed random conv stack shaped like Pix2Pix's U-net is applied to 256×256 random crops of
scikit-image's bundled colour photos, giving per image:
  fine   (128, 128, 128): decoder features (64) concatenated with the encoder_1 skip (64), like the
         penultimate Pix2Pix layer the paper matches with 4×4 patches;
  coarse (32, 32, 256):  a deeper encoder layer;
  global (256,):         the channel means of the deepest layer (bottleneck stand-in);
  labels (128, 128):     8 colour classes of the crop at fine resolution (for label agreement).
Deterministic for a seed. Nothing here is a test; benchmarks/bench_match.py uses it.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from skimage import data as skdata

from compnn_py.progress import Progress

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "retina")


def _conv(x, w, stride):
    """'SAME'-padded conv (H, W, Cin) * (K, K, Cin, Cout) with ReLU, float32."""
    K = w.shape[0]
    a = (K - 1) // 2
    xp = np.pad(x, ((a, K - 1 - a), (a, K - 1 - a), (0, 0)))
    win = sliding_window_view(xp, (K, K), axis=(0, 1))[::stride, ::stride]  # (H', W', Cin, K, K)
    cols = win.transpose(0, 1, 3, 4, 2).reshape(win.shape[0] * win.shape[1], -1)
    out = cols @ w.reshape(-1, w.shape[-1])
    return np.maximum(out, 0).reshape(win.shape[0], win.shape[1], -1).astype(np.float32)


class ConvStack:
    """Fixed random weights (He init), shared by every image so features are comparable."""

    def __init__(self, seed: int = 0):
        rng = np.random.default_rng(seed)

        def he(k, cin, cout):
            return (rng.standard_normal((k, k, cin, cout)) * np.sqrt(2.0 / (k * k * cin))).astype(np.float32)

        self.e1, self.e2, self.e3, self.e4 = he(4, 3, 64), he(4, 64, 128), he(4, 128, 256), he(4, 256, 256)
        self.d2 = he(3, 128, 64)

    def __call__(self, image: np.ndarray):
        x = image.astype(np.float32) / 127.5 - 1.0
        e1 = _conv(x, self.e1, 2)        # 128×128×64
        e2 = _conv(e1, self.e2, 2)       # 64×64×128
        e3 = _conv(e2, self.e3, 2)       # 32×32×256
        e4 = _conv(e3, self.e4, 2)       # 16×16×256
        up = np.repeat(np.repeat(e2, 2, axis=0), 2, axis=1)
        d1 = _conv(up, self.d2, 1)       # 128×128×64
        fine = np.concatenate([d1 / (d1.std() + 1e-6), e1 / (e1.std() + 1e-6)], axis=-1)
        return fine, e3, e4.mean(axis=(0, 1))


def _photos():
    return [getattr(skdata, name)() for name in PHOTOS]


def _labels(crop: np.ndarray, palette: np.ndarray) -> np.ndarray:
    small = crop.reshape(128, 2, 128, 2, 3).mean(axis=(1, 3))
    d = ((small[:, :, None, :] - palette[None, None]) ** 2).sum(-1)
    return d.argmin(-1).astype(np.uint8)


def make_set(n: int, seed: int, stack: ConvStack | None = None, desc: str = "maps"):
    """n random 256×256 crops (random flips) -> dict of float16 fine/coarse/global, uint8 labels, images."""
    stack = stack or ConvStack(0)
    rng = np.random.default_rng(seed)
    photos = _photos()
    palette = np.random.default_rng(1234).integers(0, 256, (8, 3)).astype(np.float32)
    out = {"fine": np.empty((n, 128, 128, 128), np.float16), "coarse": np.empty((n, 32, 32, 256), np.float16),
           "global": np.empty((n, 256), np.float16), "labels": np.empty((n, 128, 128), np.uint8),
           "images": np.empty((n, 256, 256, 3), np.uint8)}
    for i in Progress(range(n), desc=desc, leave=False):
        p = photos[rng.integers(len(photos))]
        y, x = rng.integers(0, p.shape[0] - 255), rng.integers(0, p.shape[1] - 255)
        crop = p[y:y + 256, x:x + 256]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        crop = np.ascontiguousarray(crop)
        fine, coarse, glob = stack(crop)
        out["fine"][i], out["coarse"][i], out["global"][i] = fine, coarse, glob
        out["labels"][i], out["images"][i] = _labels(crop, palette), crop
    return out
