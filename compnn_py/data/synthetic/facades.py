"""Synthetic CMP-like facades: a grid of floors and bays with windows, sills, blinds, balconies, deco,
cornices, moldings, pillars, doors and shops, labelled with the 12 CMP ids. Two styles ("european":
ornate plaster or brick; "american": plain grids, shops) let a matching database be biased by style."""

from __future__ import annotations

import numpy as np

from .canvas import Canvas

(BACKGROUND, FACADE, WINDOW, DOOR, CORNICE, SILL, BALCONY, BLIND, DECO, MOLDING, PILLAR,
 SHOP) = range(12)
STYLES = ("european", "american")

_WARM = np.array([(0.85, 0.75, 0.55), (0.8, 0.6, 0.45), (0.9, 0.85, 0.7), (0.7, 0.55, 0.4),
                  (0.75, 0.8, 0.7), (0.85, 0.7, 0.65), (0.6, 0.35, 0.25)], np.float32)
_PLAIN = np.array([(0.6, 0.6, 0.6), (0.75, 0.73, 0.7), (0.45, 0.45, 0.5), (0.8, 0.8, 0.78),
                   (0.55, 0.5, 0.45)], np.float32)


def _jitter(rng, colour, amount=0.12):
    return np.clip(np.asarray(colour, np.float32) * (1 + rng.uniform(-amount, amount, 3)), 0, 1)


def facade_scene(rng, height: int, width: int, style: str | None = None):
    """One facade: (photo uint8 (H, W, 3), labels uint8 (H, W) CMP ids 0..11, style name)."""
    style = style or STYLES[rng.integers(len(STYLES))]
    ornate = style == "european"
    c = Canvas(rng, height, width, BACKGROUND)
    H, W = height, width

    # Background: sky above, neighbouring buildings beside (still "background" in CMP).
    sky = c.gradient(_jitter(rng, (0.55, 0.7, 0.9), 0.2), _jitter(rng, (0.85, 0.88, 0.9), 0.1))
    c.paint(*c.rect(0, 0, H, W), BACKGROUND, sky)
    for x0, x1 in ((0, W * 0.2), (W * 0.8, W)):
        if rng.random() < 0.6:
            nb = c.material(_jitter(rng, _PLAIN[rng.integers(len(_PLAIN))], 0.25),
                            ("brick", "moon")[rng.integers(2)], 0.4)
            c.paint(*c.rect(rng.uniform(0, 0.4) * H, x0, H, x1), BACKGROUND, nb)

    fx0, fx1 = rng.uniform(0, 0.12) * W, rng.uniform(0.88, 1.0) * W
    fy0 = rng.uniform(0.0, 0.15) * H
    base = _jitter(rng, (_WARM if ornate else _PLAIN)[rng.integers(len(_WARM if ornate else _PLAIN))], 0.15)
    tex = ("brick", "moon", "gravel")[rng.integers(3)] if ornate else ("moon", "gravel")[rng.integers(2)]
    wall = c.material(base, tex, rng.uniform(0.15, 0.45), rng.uniform(0.4, 1.2))
    c.paint(*c.rect(fy0, fx0, H, fx1), FACADE, wall)
    lighter = np.clip(wall * 1.2 + 0.05, 0, 1)
    darker = wall * 0.7

    floors = rng.integers(3, 6) if ornate else rng.integers(4, 9)
    bays = rng.integers(2, 6) if ornate else rng.integers(4, 9)
    ground_h = (H - fy0) * rng.uniform(0.18, 0.28)
    top_h = (H - fy0) * (rng.uniform(0.04, 0.08) if ornate else rng.uniform(0.0, 0.04))
    floor_h = (H - fy0 - ground_h - top_h) / floors
    bay_w = (fx1 - fx0) / bays

    if top_h > 1:
        c.paint(*c.rect(fy0, fx0, fy0 + top_h, fx1), MOLDING, lighter)
        c.paint(*c.rect(fy0 + top_h * 0.8, fx0, fy0 + top_h, fx1), MOLDING, darker)
    if ornate and rng.random() < 0.4:
        for b in range(bays + 1):
            px = fx0 + b * bay_w
            c.paint(*c.rect(fy0 + top_h, px - bay_w * 0.05, H - ground_h, px + bay_w * 0.05), PILLAR,
                    lighter * 1.05)

    glass = c.reflection(_jitter(rng, (0.2, 0.22, 0.28), 0.3), rng.uniform(0.2, 0.5))
    frame = _jitter(rng, (0.9, 0.9, 0.88) if rng.random() < 0.7 else (0.3, 0.2, 0.15), 0.1)
    blind_colour = _jitter(rng, ((0.25, 0.4, 0.25), (0.5, 0.35, 0.2), (0.85, 0.85, 0.8))[rng.integers(3)])
    win_w, win_h = rng.uniform(0.35, 0.6) * bay_w, rng.uniform(0.45, 0.7) * floor_h
    has_sills, has_blinds = rng.random() < (0.8 if ornate else 0.3), ornate and rng.random() < 0.4
    has_deco, has_cornice = ornate and rng.random() < 0.6, ornate and rng.random() < 0.7
    for f in range(floors):
        y_floor = fy0 + top_h + f * floor_h
        if has_cornice and f > 0:
            c.paint(*c.rect(y_floor - floor_h * 0.04, fx0, y_floor + floor_h * 0.04, fx1), CORNICE, lighter)
        balcony_floor = ornate and rng.random() < 0.3
        for b in range(bays):
            cx = fx0 + (b + 0.5) * bay_w
            wy0 = y_floor + (floor_h - win_h) * 0.55
            wy1, wx0, wx1 = wy0 + win_h, cx - win_w / 2, cx + win_w / 2
            if has_deco:
                c.paint(*c.rect(wy0 - floor_h * 0.15, wx0 - win_w * 0.1, wy0 - floor_h * 0.03, wx1 + win_w * 0.1),
                        DECO, lighter * np.float32(0.95))
            c.paint(*c.rect(wy0, wx0, wy1, wx1), WINDOW, frame)
            t = max(win_w * 0.08, 1.0)
            c.paint(*c.rect(wy0 + t, wx0 + t, wy1 - t, wx1 - t), WINDOW, glass)
            c.paint(*c.rect(wy0 + t, cx - t / 2, wy1 - t, cx + t / 2), WINDOW, frame)
            if has_blinds:
                for side in (-1, 1):
                    bx = wx0 - win_w * 0.35 if side < 0 else wx1
                    c.paint(*c.rect(wy0, bx, wy1, bx + win_w * 0.35), BLIND, blind_colour)
            if has_sills:
                c.paint(*c.rect(wy1, wx0 - win_w * 0.08, wy1 + floor_h * 0.05, wx1 + win_w * 0.08), SILL, lighter)
            if balcony_floor or (ornate and rng.random() < 0.1):
                rail = np.array(_jitter(rng, (0.12, 0.12, 0.12), 0.3), np.float32)
                by0 = wy1 - win_h * 0.35
                c.paint(*c.rect(by0, wx0 - win_w * 0.2, wy1 + floor_h * 0.05, wx1 + win_w * 0.2), BALCONY, rail)
                step = max(win_w * 0.12, 2.0)
                for bx in np.arange(wx0 - win_w * 0.15, wx1 + win_w * 0.15, step):
                    c.paint(*c.rect(by0 + max(win_h * 0.05, 1), bx, wy1, bx + step * 0.5), BALCONY,
                            glass * np.float32(0.8))

    # Ground floor: shop fronts and/or a door.
    gy0 = H - ground_h
    if not ornate or rng.random() < 0.5:
        sx0 = fx0 + rng.uniform(0.0, 0.2) * (fx1 - fx0)
        sx1 = fx1 - rng.uniform(0.0, 0.2) * (fx1 - fx0)
        sign = np.array(_jitter(rng, rng.uniform(0.1, 0.9, 3), 0.1), np.float32)
        c.paint(*c.rect(gy0 + ground_h * 0.1, sx0, H, sx1), SHOP, glass)
        c.paint(*c.rect(gy0 + ground_h * 0.1, sx0, gy0 + ground_h * 0.3, sx1), SHOP, sign)
    dw = min(bay_w * rng.uniform(0.4, 0.7), ground_h * 0.6)
    dx = fx0 + (rng.integers(bays) + 0.5) * bay_w
    door = c.material(_jitter(rng, (0.4, 0.25, 0.12) if ornate else (0.3, 0.32, 0.35), 0.3), "gravel", 0.2)
    c.paint(*c.rect(gy0 + ground_h * 0.15, dx - dw / 2, H, dx + dw / 2), DOOR, door)
    return c.finish(gain_range=(0.6, 1.2)), c.labels, style
