"""Synthetic street scenes (a road to a vanishing point, sidewalks, buildings with windows, sky, trees,
walls, fences, poles with signs and lights, cars, buses, pedestrians, riders, void clutter), labelled
with Cityscapes train ids; CamVid's labels are a remapping of the same scenes.

Every scene lies in one of two cities (CITIES, kept in each sample's meta as {"city": ...}) that differ
the way real cities do, in what is there as well as in how it looks, so that restricting CompNN's
matching database to one city (bias modification, the paper's Fig. 9) visibly changes the output:
- "A", an old town: tall, unbroken rows of brick and warm stone buildings, paved sidewalks without
  grass, few trees, yellow road markings, many signs and lights;
- "B", a garden suburb: low white or grey buildings and garden walls with gaps, grass verges, many
  trees, fences, white road markings.
"""

from __future__ import annotations

import numpy as np

from ..palettes import IGNORE
from .canvas import Canvas

ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN, VEGETATION, TERRAIN, SKY = range(11)
PERSON, RIDER, CAR, TRUCK, BUS, TRAIN, MOTORCYCLE, BICYCLE = range(11, 19)

# Cityscapes train id -> CamVid id (SegNet's 11 classes; wall counts as building, terrain as tree).
TO_CAMVID = np.full(256, IGNORE, np.uint8)
for _cs, _cv in {ROAD: 3, SIDEWALK: 4, BUILDING: 1, WALL: 1, FENCE: 7, POLE: 2, LIGHT: 6, SIGN: 6,
                 VEGETATION: 5, TERRAIN: 5, SKY: 0, PERSON: 9, RIDER: 10, CAR: 8, TRUCK: 8, BUS: 8,
                 TRAIN: 8, MOTORCYCLE: 10, BICYCLE: 10}.items():
    TO_CAMVID[_cs] = _cv

_FACADE_COLOURS = np.array([(0.55, 0.27, 0.2), (0.75, 0.62, 0.45), (0.6, 0.6, 0.62), (0.85, 0.8, 0.7),
                            (0.45, 0.42, 0.4), (0.7, 0.45, 0.35), (0.8, 0.75, 0.55)], np.float32)
_PLAIN_COLOURS = np.array([(0.92, 0.92, 0.9), (0.8, 0.82, 0.85), (0.7, 0.72, 0.75), (0.88, 0.86, 0.8),
                          (0.6, 0.64, 0.7)], np.float32)
_CAR_COLOURS = np.array([(0.8, 0.1, 0.1), (0.1, 0.2, 0.6), (0.85, 0.85, 0.85), (0.1, 0.1, 0.1),
                         (0.5, 0.5, 0.55), (0.2, 0.45, 0.25), (0.9, 0.75, 0.2)], np.float32)


CITIES = ("A", "B")
CITY_NAMES = {"A": "old town", "B": "garden suburb"}
# Per city: building palette and textures, how tall (x the base height), chance of a gap in the row and of
# a wall instead of a building, chance of a grass verge on each side, counts of trees / poles (low, high
# exclusive), chance of a fence, road-marking colour.
_CITY = {
    "A": dict(colours=_FACADE_COLOURS, textures=("brick", "brick", "moon"), height=1.5, gap=0.03, wall=0.03,
              verge=0.0, trees=(0, 2), poles=(1, 5), fence=0.1, marking=(0.95, 0.8, 0.15)),
    "B": dict(colours=_PLAIN_COLOURS, textures=("moon", "gravel"), height=0.55, gap=0.3, wall=0.4,
              verge=0.9, trees=(3, 8), poles=(0, 2), fence=0.7, marking=(0.92, 0.92, 0.9)),
}


def _jitter(rng, colour, amount=0.12):
    return np.clip(np.asarray(colour) * (1 + rng.uniform(-amount, amount, 3)), 0, 1)


def street_scene(rng, height: int, width: int, city: str = "A") -> tuple[np.ndarray, np.ndarray]:
    """One scene of `city` (see CITIES): (photo uint8 (H, W, 3), labels uint8 (H, W) in Cityscapes train
    ids, 255 = void)."""
    if city not in _CITY:
        raise ValueError(f"city must be one of {CITIES}, got {city!r}")
    c = Canvas(rng, height, width, SKY)
    c.city = _CITY[city]
    H, W = height, width
    horizon = rng.uniform(0.32, 0.55) * H
    vx = rng.uniform(0.3, 0.7) * W

    overcast = rng.random() < 0.4
    top = _jitter(rng, (0.75, 0.75, 0.78) if overcast else (0.35, 0.55, 0.85))
    bottom = _jitter(rng, (0.9, 0.9, 0.9) if overcast else (0.7, 0.8, 0.92))
    sky = c.gradient(top, bottom) * (1 + 0.25 * (c.material((1, 1, 1), "moon", 0.8, 4.0) - 1))
    c.paint(*c.rect(0, 0, H, W), SKY, sky)

    _buildings(c, horizon, vx)
    _ground(c, horizon, vx)

    # Objects standing on the ground, painted far (near the horizon) to near.
    objects = []
    for _ in range(rng.integers(*c.city["trees"])):
        objects.append(("tree", rng.uniform(horizon + 0.03 * H, H * 0.95)))
    for _ in range(rng.integers(*c.city["poles"])):
        objects.append(("pole", rng.uniform(horizon + 0.02 * H, H * 0.9)))
    for _ in range(rng.integers(0, 6)):
        objects.append(("car", rng.uniform(horizon + 0.05 * H, H * 1.05)))
    for _ in range(rng.integers(0, 6)):
        objects.append(("person", rng.uniform(horizon + 0.05 * H, H)))
    if rng.random() < c.city["fence"]:
        objects.append(("fence", rng.uniform(horizon + 0.02 * H, horizon + 0.25 * (H - horizon))))
    if rng.random() < 0.3:
        objects.append(("clutter", rng.uniform(horizon + 0.05 * H, H)))
    for kind, base in sorted(objects, key=lambda o: o[1]):
        s = (base - horizon) / (H - horizon)  # perspective scale: 0 at the horizon, 1 at the bottom
        _OBJECTS[kind](c, base, s, horizon, vx)

    if rng.random() < 0.25:  # the camera car's bonnet, void as in Cityscapes
        c.paint(*c.ellipse(H * 1.12, W / 2, H * rng.uniform(0.12, 0.2), W * 0.8), IGNORE,
                c.material(_jitter(rng, (0.15, 0.15, 0.18)), "gravel", 0.2))
    return c.finish(), c.labels


def _buildings(c: Canvas, horizon, vx):
    rng, H, W = c.rng, c.h, c.w
    x = -rng.uniform(0, 0.1) * W
    while x < W:
        bw = rng.uniform(0.08, 0.35) * W
        xc = x + bw / 2
        near = 0.4 + 1.6 * abs(xc - vx) / W  # blocks beside the camera look taller
        top = horizon - min(rng.uniform(0.08, 0.3) * H * near * c.city["height"], horizon + 0.05 * H)
        if rng.random() < c.city["gap"]:  # a gap in the row: sky or trees show through
            x += bw
            continue
        kind = WALL if rng.random() < c.city["wall"] else BUILDING
        if kind == WALL:
            top = max(top, horizon - 0.08 * H * near)
        palette = c.city["colours"]
        colour = _jitter(rng, palette[rng.integers(len(palette))], 0.2)
        tex = c.city["textures"][rng.integers(len(c.city["textures"]))]
        face = c.material(colour, tex, rng.uniform(0.2, 0.6), rng.uniform(0.5, 1.5))
        c.paint(*c.rect(top, x, horizon + 0.02 * H, x + bw), kind, face)
        if kind == BUILDING:
            _windows(c, top, x, horizon, bw, near)
        x += bw


def _windows(c: Canvas, top, x, horizon, bw, near):
    rng, H = c.rng, c.h
    rows_h = rng.uniform(0.05, 0.1) * H * near
    cols_w = rng.uniform(0.25, 0.5) * bw
    frac_h, frac_w = rng.uniform(0.35, 0.7), rng.uniform(0.3, 0.7)
    glass = c.reflection(_jitter(rng, (0.15, 0.18, 0.25), 0.3), rng.uniform(0.15, 0.45))
    lit = rng.random() < 0.3
    y = top + rows_h * 0.5
    while y + rows_h * frac_h < horizon - 0.02 * H:
        xx = x + cols_w * 0.3
        while xx + cols_w * frac_w < x + bw - cols_w * 0.1:
            pane = glass if not (lit and rng.random() < 0.3) else np.array([0.9, 0.8, 0.5], np.float32)
            c.paint(*c.rect(y, xx, y + rows_h * frac_h, xx + cols_w * frac_w), BUILDING, pane)
            xx += cols_w
        y += rows_h


def _ground(c: Canvas, horizon, vx):
    rng, H, W = c.rng, c.h, c.w
    h0 = int(round(horizon))
    paving = c.material(_jitter(rng, (0.62, 0.6, 0.57), 0.15), ("brick", "gravel")[rng.integers(2)],
                        rng.uniform(0.2, 0.5), rng.uniform(0.3, 0.8))
    c.paint(*c.rect(h0, 0, H, W), SIDEWALK, paving)
    half = rng.uniform(0.3, 0.8) * W  # road half-width at the bottom edge
    left, right = vx - half + rng.uniform(-0.2, 0.2) * W, vx + half + rng.uniform(-0.2, 0.2) * W
    walk = rng.uniform(0.15, 0.5) * W
    for side, edge in ((-1, left), (1, right)):  # grass verges beyond some sidewalks
        if rng.random() < c.city["verge"]:
            outer = edge + side * walk
            verge = c.material(_jitter(rng, (0.3, 0.5, 0.2), 0.2), "grass", 0.6)
            far = 0 if side < 0 else W * 1.0
            c.paint(*c.polygon([horizon, H, H, horizon], [vx, outer, far + side * W, far]), TERRAIN, verge)
    asphalt = c.material(_jitter(rng, (0.3, 0.3, 0.32), 0.15), "gravel", rng.uniform(0.15, 0.4), 0.5)
    c.paint(*c.polygon([horizon, H, H, horizon], [vx - 0.004 * W, left, right, vx + 0.004 * W]), ROAD, asphalt)
    c.road = (left, right)
    paint = np.array(c.city["marking"], np.float32)
    centre = (left + right) / 2 + rng.uniform(-0.2, 0.2) * (right - left)
    n_dash = 8
    for i in range(n_dash):  # dashed centre line, dashes shrinking toward the horizon
        t0, t1 = (i + 0.25) / n_dash, (i + 0.65) / n_dash
        t0, t1 = t0 ** 2, t1 ** 2
        y0, y1 = horizon + t0 * (H - horizon), horizon + t1 * (H - horizon)
        x0, x1 = vx + t0 * (centre - vx), vx + t1 * (centre - vx)
        c.paint(*c.line(y0, x0, y1, x1, 0.012 * W * (t0 + t1)), None, paint)
    if rng.random() < 0.5:  # a building's shadow across the street: photo only
        ys = horizon + rng.uniform(0, 0.5, 2) * (H - horizon)
        rr, cc = c.polygon([ys[0], H, H, ys[1]], [0, 0, rng.uniform(0.2, 1.0) * W, rng.uniform(0, 0.5) * W])
        c.photo[rr, cc] *= rng.uniform(0.45, 0.7)


def _tree(c: Canvas, base, s, horizon, vx):
    rng, H, W = c.rng, c.h, c.w
    left, right = (vx + s * (edge - vx) for edge in c.road)  # trees line the sidewalks
    x = left - rng.uniform(0, 0.15) * W if rng.random() < 0.5 else right + rng.uniform(0, 0.15) * W
    height = (0.15 + 0.55 * s) * H
    trunk = c.material(_jitter(rng, (0.3, 0.22, 0.15)), "gravel", 0.3)
    c.paint(*c.rect(base - height * 0.45, x - height * 0.03, base, x + height * 0.03), VEGETATION, trunk)
    leaves = c.material(_jitter(rng, (0.2, 0.4, 0.12) if rng.random() < 0.8 else (0.55, 0.4, 0.1), 0.25),
                        "grass", 0.9, rng.uniform(0.5, 1.5))
    for _ in range(rng.integers(3, 7)):
        cy = base - height * rng.uniform(0.55, 0.85)
        cx = x + height * rng.uniform(-0.25, 0.25)
        r = height * rng.uniform(0.15, 0.3)
        c.paint(*c.ellipse(cy, cx, r, r * rng.uniform(0.8, 1.3)), VEGETATION, leaves)


def _pole(c: Canvas, base, s, horizon, vx):
    rng, H, W = c.rng, c.h, c.w
    left, right = (vx + s * (edge - vx) for edge in c.road)
    x = left - rng.uniform(0, 0.05) * W if rng.random() < 0.5 else right + rng.uniform(0, 0.05) * W
    height = (0.2 + 0.6 * s) * H
    width = max(0.004 * W + 0.012 * W * s, 1.0)
    metal = c.material(_jitter(rng, (0.45, 0.45, 0.47)), "gravel", 0.15)
    c.paint(*c.rect(base - height, x - width / 2, base, x + width / 2), POLE, metal)
    top = base - height
    kind = rng.integers(3)
    if kind == 0:  # traffic sign
        colour = ((0.8, 0.1, 0.1), (0.1, 0.3, 0.8), (0.95, 0.8, 0.1))[rng.integers(3)]
        r = width * rng.uniform(2, 3.5)
        shape = c.ellipse(top + r, x, r, r) if rng.random() < 0.5 else c.rect(top, x - r, top + 2 * r, x + r)
        c.paint(*shape, SIGN, c.material(_jitter(rng, colour), None))
    elif kind == 1:  # traffic light
        bw, bh = width * 2.5, width * 6
        c.paint(*c.rect(top, x - bw / 2, top + bh, x + bw / 2), LIGHT, np.array([0.08, 0.08, 0.08]))
        lamp = (0.9, 0.1, 0.1) if rng.random() < 0.5 else (0.1, 0.9, 0.3)
        c.paint(*c.ellipse(top + bh * (0.25 if lamp[0] > 0.5 else 0.75), x, bw * 0.3, bw * 0.3), LIGHT,
                np.array(lamp, np.float32))


def _car(c: Canvas, base, s, horizon, vx):
    rng, H, W = c.rng, c.h, c.w
    kind = CAR if rng.random() < 0.85 else (BUS if rng.random() < 0.5 else TRUCK)
    width = (0.03 + 0.4 * s) * W * (1.3 if kind != CAR else 1.0)
    height = width * (0.45 if kind == CAR else 0.8)
    left, right = (vx + s * (edge - vx) for edge in c.road)  # the road's edges at this depth
    x = rng.uniform(left + width * 0.3, max(right - width * 0.3, left + width * 0.3))
    colour = _jitter(rng, _CAR_COLOURS[rng.integers(len(_CAR_COLOURS))])
    body = c.material(colour, "gravel", 0.1)
    glass = c.reflection((0.1, 0.12, 0.15), 0.25)
    if kind == CAR:
        c.paint(*c.ellipse(base - height * 0.7, x, height * 0.35, width * 0.32), kind, body)
        c.paint(*c.ellipse(base - height * 0.7, x, height * 0.22, width * 0.25), kind, glass)
        c.paint(*c.rect(base - height * 0.6, x - width / 2, base - height * 0.12, x + width / 2), kind, body)
    else:
        c.paint(*c.rect(base - height, x - width / 2, base - height * 0.12, x + width / 2), kind, body)
        c.paint(*c.rect(base - height * 0.9, x - width * 0.45, base - height * 0.55, x + width * 0.45), kind, glass)
    for side in (-1, 1):
        c.paint(*c.ellipse(base - height * 0.12, x + side * width * 0.32, height * 0.12, width * 0.08), kind,
                np.array([0.05, 0.05, 0.05], np.float32))
    c.paint(*c.rect(base - height * 0.5, x - width * 0.45, base - height * 0.4, x - width * 0.3), kind,
            np.array([0.95, 0.9, 0.7], np.float32))  # a headlight: bright pixels that are still car


def _person(c: Canvas, base, s, horizon, vx):
    rng, H, W = c.rng, c.h, c.w
    height = (0.05 + 0.3 * s) * H
    left, right = (vx + s * (edge - vx) for edge in c.road)
    x = rng.uniform(0, left) if rng.random() < 0.5 and left > 0 else rng.uniform(min(right, W), W)
    riding = rng.random() < 0.2
    clothes = c.material(_jitter(rng, rng.uniform(0.05, 0.8, 3), 0.1), "gravel", 0.2)
    skin = np.array(_jitter(rng, (0.85, 0.65, 0.5), 0.15), np.float32)
    label = RIDER if riding else PERSON
    if riding:
        wheel = height * 0.22
        for side in (-1, 1):
            rr, cc = c.ellipse(base - wheel, x + side * wheel * 1.3, wheel, wheel)
            c.paint(rr, cc, BICYCLE, np.array([0.05, 0.05, 0.05], np.float32))
        c.paint(*c.line(base - wheel, x - wheel * 1.3, base - wheel * 2.2, x + wheel * 1.3, height * 0.04),
                BICYCLE, np.array(_jitter(rng, (0.7, 0.1, 0.1)), np.float32))
        base = base - wheel * 1.6
        height *= 0.75
    leg_w = max(height * 0.07, 1.0)
    for side in (-1, 1):
        c.paint(*c.rect(base - height * 0.45, x + side * leg_w - leg_w / 2, base, x + side * leg_w + leg_w / 2),
                label, np.array(_jitter(rng, (0.15, 0.15, 0.25)), np.float32))
    c.paint(*c.rect(base - height * 0.85, x - height * 0.12, base - height * 0.42, x + height * 0.12), label, clothes)
    c.paint(*c.ellipse(base - height * 0.92, x, height * 0.08, height * 0.065), label, skin)


def _fence(c: Canvas, base, s, horizon, vx):
    rng, H, W = c.rng, c.h, c.w
    height = (0.04 + 0.15 * s) * H
    x0 = rng.uniform(-0.2, 0.6) * W
    x1 = x0 + rng.uniform(0.2, 0.6) * W
    wood = c.material(_jitter(rng, (0.5, 0.4, 0.3) if rng.random() < 0.5 else (0.55, 0.55, 0.55)), "gravel", 0.2)
    for y in (base - height * 0.85, base - height * 0.35):
        c.paint(*c.rect(y, x0, y + max(height * 0.08, 1), x1), FENCE, wood)
    step = max(height * 0.35, 3.0)
    for xb in np.arange(x0, x1, step):
        c.paint(*c.rect(base - height, xb, base, xb + max(step * 0.25, 1)), FENCE, wood)


def _clutter(c: Canvas, base, s, horizon, vx):
    """A bin or a box: unlabelled in both Cityscapes ('static') and CamVid (void)."""
    rng, W = c.rng, c.w
    size = (0.02 + 0.1 * s) * c.h
    x = rng.uniform(0, W)
    c.paint(*c.rect(base - size * 1.3, x - size / 2, base, x + size / 2), IGNORE,
            c.material(_jitter(rng, rng.uniform(0.1, 0.7, 3)), "gravel", 0.3))


_OBJECTS = {"tree": _tree, "pole": _pole, "car": _car, "person": _person, "fence": _fence,
            "clutter": _clutter}
