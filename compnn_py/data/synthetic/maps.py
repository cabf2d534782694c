"""Synthetic aerial photo -> map pairs: a rotated street grid with blocks of buildings, parks, parking
lots, a major road and water, rendered once as a satellite-like photo and once as a flat map."""

from __future__ import annotations

import numpy as np

from .canvas import Canvas

LAND, BUILDING, ROAD, MAJOR_ROAD, WATER, PARK = range(6)
MAP_NAMES = ("land", "building", "road", "major_road", "water", "park")
# Flat map colours in the style of a web map.
MAP_PALETTE = np.array([(236, 233, 226), (216, 208, 200), (255, 255, 255), (250, 205, 110),
                        (170, 210, 245), (195, 228, 180)], np.uint8)


def _cuts(rng, length, lo, hi):
    """Sorted positions along one axis, gaps drawn from [lo, hi], covering [-length, length] (any
    rotated image coordinate of an H x W image lies there when length = H + W)."""
    pos = [-length - rng.uniform(0, hi)]
    while pos[-1] <= length:
        pos.append(pos[-1] + rng.uniform(lo, hi))
    return np.array(pos)


def map_scene(rng, height: int, width: int):
    """One pair: (aerial uint8 (H, W, 3), map uint8 (H, W, 3), layout ids (H, W))."""
    H, W = height, width
    c = Canvas(rng, H, W, LAND)
    n = min(H, W)
    theta = rng.uniform(-0.5, 0.5) if rng.random() < 0.7 else rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    u = np.cos(theta) * xx + np.sin(theta) * yy
    v = -np.sin(theta) * xx + np.cos(theta) * yy

    cu, cv = _cuts(rng, H + W, 0.2 * n, 0.45 * n), _cuts(rng, H + W, 0.2 * n, 0.45 * n)
    iu = np.searchsorted(cu, u) - 1  # block index along each axis
    iv = np.searchsorted(cv, v) - 1
    du = np.minimum(u - cu[iu], cu[iu + 1] - u)  # distance to the nearest street centre line
    dv = np.minimum(v - cv[iv], cv[iv + 1] - v)
    half_road = rng.uniform(0.015, 0.03) * n
    road = (du < half_road) | (dv < half_road)

    block = (iu * 7919 + iv * 104729) % 1000  # a stable pseudo-random number per block
    kind_draw = (block * 0.001 + rng.uniform()) % 1.0
    labels = np.full((H, W), LAND, np.uint8)
    is_park = kind_draw < 0.2
    is_lot = (kind_draw >= 0.2) & (kind_draw < 0.3)
    labels[is_park] = PARK
    # Buildings: lots along the block's u axis, each inset from its lot's edges.
    lots = 2 + block % 4
    span = cu[iu + 1] - cu[iu]
    frac = (u - cu[iu]) / span * lots
    inset = np.minimum(frac % 1.0, 1 - frac % 1.0) * span / lots
    building = (~is_park & ~is_lot & (inset > 0.06 * n * 0.3) & (du > half_road * 2.2)
                & (dv > half_road * 2.2))
    labels[building] = BUILDING
    labels[road] = ROAD
    if rng.random() < 0.6:  # an avenue cutting the grid
        angle = rng.uniform(0, np.pi)
        off = rng.uniform(0.2, 0.8) * n
        dist = np.abs(np.cos(angle) * (xx - W / 2) + np.sin(angle) * (yy - H / 2) - (off - n / 2))
        labels[dist < half_road * 1.8] = MAJOR_ROAD
    if rng.random() < 0.45:  # a winding river
        angle = rng.uniform(0, np.pi)
        a = np.cos(angle) * xx + np.sin(angle) * yy
        b = -np.sin(angle) * xx + np.cos(angle) * yy
        b_mid = (-np.sin(angle) * W + np.cos(angle) * H) / 2  # b at the image centre
        centre = b_mid + rng.uniform(-0.3, 0.3) * n + 0.15 * n * np.sin(a / n * rng.uniform(2, 6)
                                                                      + rng.uniform(0, 6))
        labels[np.abs(b - centre) < rng.uniform(0.06, 0.15) * n] = WATER

    # Aerial photo: a texture per layout class, roofs varying block by block.
    roofs = np.array([(0.55, 0.3, 0.25), (0.5, 0.5, 0.52), (0.7, 0.68, 0.65), (0.35, 0.33, 0.3),
                      (0.6, 0.55, 0.45)], np.float32)
    roof_colour = roofs[(block + (frac.astype(np.int64) * 31)) % len(roofs)]
    aerial = {
        LAND: c.material((0.45, 0.45, 0.35), "gravel", 0.5),
        PARK: c.material((0.2, 0.38, 0.15), "grass", 0.8, 0.7),
        ROAD: c.material((0.35, 0.35, 0.36), "gravel", 0.25, 0.5),
        MAJOR_ROAD: c.material((0.4, 0.4, 0.4), "gravel", 0.2, 0.5),
        WATER: c.material((0.12, 0.22, 0.28), "moon", 0.4, 2.0),
    }
    photo = np.empty((H, W, 3), np.float32)
    for k, app in aerial.items():
        m = labels == k
        photo[m] = app[m]
    m = labels == BUILDING
    roof_tex = c.material((1, 1, 1), ("brick", "gravel")[rng.integers(2)], 0.3, 0.5)
    photo[m] = roof_colour[m] * roof_tex[m]
    # Roofs cast shadows toward one side: darken land just beside each building.
    sy, sx = rng.integers(1, max(2, n // 40) + 1, 2)
    shadow = np.zeros_like(m)
    shadow[sy:, sx:] = m[:-sy, :-sx]
    photo[shadow & ~m] *= 0.55
    c.photo = photo
    aerial_img = c.finish(gain_range=(0.7, 1.2), cast=0.1)

    target = MAP_PALETTE[labels].astype(np.float32)
    # Streets carry a thin grey outline, as on a rendered map.
    edge = (road | (labels == MAJOR_ROAD)) & ~((du < half_road * 0.7) | (dv < half_road * 0.7)) \
        & (labels != MAJOR_ROAD) & (labels != WATER)
    target[edge] = (205, 200, 195)
    return aerial_img, target.astype(np.uint8), labels
