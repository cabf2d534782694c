"""Drawing primitives of the synthetic scenes: textures cut from scikit-image's bundled sample photos,
materials (tinted textures), and a Canvas that paints a label map and a photo in one painter's pass."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image
from skimage import draw

# Only images shipped inside scikit-image (no pooch download): checked to load offline.
GRAY_TEXTURES = ("brick", "grass", "gravel", "moon", "camera")
COLOUR_PHOTOS = ("astronaut", "coffee", "rocket", "chelsea", "immunohistochemistry")


@lru_cache(maxsize=None)
def _source(name: str) -> np.ndarray:
    import skimage.data

    image = getattr(skimage.data, name)().astype(np.float32) / 255.0
    return image


@lru_cache(maxsize=256)
def _scaled(name: str, scale: float) -> np.ndarray:
    """The sample image resized by `scale`, tiled (mirrored) to at least 256 px a side."""
    src = _source(name)
    h, w = src.shape[:2]
    size = (max(8, round(w * scale)), max(8, round(h * scale)))
    channels = [src] if src.ndim == 2 else [src[..., c] for c in range(src.shape[2])]
    out = np.stack([np.asarray(Image.fromarray(c).resize(size, Image.BILINEAR)) for c in channels], -1)
    return out[..., 0] if src.ndim == 2 else out


def texture(rng, name: str, shape, scale: float) -> np.ndarray:
    """A random (h, w[, 3]) window of a sample image at `scale`, randomly flipped; mean ~0.5 for gray."""
    # Scales snap to steps of 2^(1/3) so the resized sources stay few and cached.
    tex = _scaled(name, float(2.0 ** (np.round(np.log2(max(scale, 1e-3)) * 3) / 3)))
    h, w = shape
    reps = (-(-h // tex.shape[0]), -(-w // tex.shape[1]))
    if reps != (1, 1):  # mirror-tile so the seams are invisible
        rows = [tex if i % 2 == 0 else tex[::-1] for i in range(reps[0])]
        tex = np.concatenate(rows, 0)
        cols = [tex if i % 2 == 0 else tex[:, ::-1] for i in range(reps[1])]
        tex = np.concatenate(cols, 1)
    y = rng.integers(0, tex.shape[0] - h + 1)
    x = rng.integers(0, tex.shape[1] - w + 1)
    win = tex[y: y + h, x: x + w]
    if rng.random() < 0.5:
        win = win[:, ::-1]
    return win


class Canvas:
    """A label map and a float RGB photo of the same size, painted together shape by shape."""

    def __init__(self, rng, height: int, width: int, background_label: int):
        self.rng = rng
        self.h, self.w = height, width
        self.labels = np.full((height, width), background_label, np.uint8)
        self.photo = np.zeros((height, width, 3), np.float32)
        self.scale = min(height, width) / 256.0  # texture scale: scenes look alike at any size

    # --- materials: full-canvas (H, W, 3) float images -----------------------------------------------

    def material(self, colour, tex: str | None = "gravel", contrast: float = 0.5, tex_scale: float = 1.0):
        colour = np.asarray(colour, np.float32).reshape(1, 1, 3)
        if tex is None:
            return np.broadcast_to(colour, (self.h, self.w, 3))
        t = texture(self.rng, tex, (self.h, self.w), self.scale * tex_scale)
        t = t - t.mean()
        return colour * (1.0 + contrast * 2.0 * t[..., None])

    def reflection(self, tint, strength: float = 0.35):
        """Glass: a dark tint plus a blurred, darkened window of a colour photo (sky/street reflections)."""
        name = COLOUR_PHOTOS[self.rng.integers(len(COLOUR_PHOTOS))]
        ref = texture(self.rng, name, (self.h, self.w), self.scale * self.rng.uniform(0.3, 0.8))
        return np.asarray(tint, np.float32) * (1 - strength) + ref * strength

    def gradient(self, top, bottom):
        t = np.linspace(0, 1, self.h, dtype=np.float32)[:, None, None]
        return np.broadcast_to(np.asarray(top, np.float32) * (1 - t) + np.asarray(bottom, np.float32) * t,
                               (self.h, self.w, 3))

    # --- painting ----------------------------------------------------------------------------------

    def paint(self, rr, cc, label: int | None, appearance) -> None:
        """Paint pixels (rr, cc) (index arrays or slices): label (None keeps the labels: shading,
        markings) and photo values."""
        if label is not None:
            self.labels[rr, cc] = label
        app = np.asarray(appearance, np.float32)
        self.photo[rr, cc] = app[rr, cc] if app.ndim == 3 else app

    def rect(self, y0, x0, y1, x1):
        """Slices of an axis-aligned box (float corners allowed), at least one pixel thick."""
        y0, y1 = (y0, y1) if y0 <= y1 else (y1, y0)
        x0, x1 = (x0, x1) if x0 <= x1 else (x1, x0)
        r0 = min(max(int(round(y0)), 0), self.h)
        c0 = min(max(int(round(x0)), 0), self.w)
        r1 = min(max(int(round(y1)), r0 + 1), self.h)
        c1 = min(max(int(round(x1)), c0 + 1), self.w)
        return slice(r0, r1), slice(c0, c1)

    def ellipse(self, cy, cx, ry, rx):
        return draw.ellipse(cy, cx, max(ry, 0.6), max(rx, 0.6), shape=(self.h, self.w))

    def polygon(self, ys, xs):
        return draw.polygon(np.asarray(ys), np.asarray(xs), shape=(self.h, self.w))

    def line(self, y0, x0, y1, x1, width: float):
        """A thick segment as a polygon (at least a 1-pixel line)."""
        d = np.array([y1 - y0, x1 - x0], float)
        n = np.array([-d[1], d[0]]) / max(np.hypot(*d), 1e-6) * max(width, 1.0) / 2
        return self.polygon([y0 + n[0], y1 + n[0], y1 - n[0], y0 - n[0]],
                            [x0 + n[1], x1 + n[1], x1 - n[1], x0 - n[1]])

    # --- finishing: lighting the labels do not see ------------------------------------------------------

    def finish(self, *, gain_range=(0.55, 1.25), cast=0.15, noise=0.02) -> np.ndarray:
        """Global exposure, colour cast, a light falloff across the frame and sensor noise -> uint8."""
        rng = self.rng
        gain = rng.uniform(*gain_range) * (1 + rng.uniform(-cast, cast, 3)).astype(np.float32)
        angle = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0: self.h, 0: self.w].astype(np.float32)
        ramp = (np.cos(angle) * xx / self.w + np.sin(angle) * yy / self.h)
        falloff = 1 + rng.uniform(0.1, 0.4) * (ramp - ramp.mean())
        photo = self.photo * gain * falloff[..., None]
        photo += rng.normal(0, noise, photo.shape).astype(np.float32)
        return (np.clip(photo, 0, 1) * 255 + 0.5).astype(np.uint8)
