"""Class tables of every dataset: names, display colours, and the colour -> class-id rules for snapping.

Cityscapes' tables derive from its label definition, carried as data (CITYSCAPES_LABELS). The CMP facades
palette was measured on ../shared/data/facades-samples (see FACADES_PALETTE); CamVid's colours are the
ones SegNet's tutorial uses for display.
"""

from __future__ import annotations

import numpy as np

IGNORE = 255

# --- Cityscapes (19 train ids) -------------------------------------------------------------------------

# The Cityscapes label definition (Cordts et al. 2016; the `labels` list of the cityscapesScripts
# package, which compnn no longer needs): every label as (name, id, trainId, colour). trainId 255 is
# not evaluated; "license plate" has id -1 (it occurs in no *_labelIds.png file).
CITYSCAPES_LABELS: tuple[tuple[str, int, int, tuple[int, int, int]], ...] = (
    ("unlabeled", 0, 255, (0, 0, 0)),
    ("ego vehicle", 1, 255, (0, 0, 0)),
    ("rectification border", 2, 255, (0, 0, 0)),
    ("out of roi", 3, 255, (0, 0, 0)),
    ("static", 4, 255, (0, 0, 0)),
    ("dynamic", 5, 255, (111, 74, 0)),
    ("ground", 6, 255, (81, 0, 81)),
    ("road", 7, 0, (128, 64, 128)),
    ("sidewalk", 8, 1, (244, 35, 232)),
    ("parking", 9, 255, (250, 170, 160)),
    ("rail track", 10, 255, (230, 150, 140)),
    ("building", 11, 2, (70, 70, 70)),
    ("wall", 12, 3, (102, 102, 156)),
    ("fence", 13, 4, (190, 153, 153)),
    ("guard rail", 14, 255, (180, 165, 180)),
    ("bridge", 15, 255, (150, 100, 100)),
    ("tunnel", 16, 255, (150, 120, 90)),
    ("pole", 17, 5, (153, 153, 153)),
    ("polegroup", 18, 255, (153, 153, 153)),
    ("traffic light", 19, 6, (250, 170, 30)),
    ("traffic sign", 20, 7, (220, 220, 0)),
    ("vegetation", 21, 8, (107, 142, 35)),
    ("terrain", 22, 9, (152, 251, 152)),
    ("sky", 23, 10, (70, 130, 180)),
    ("person", 24, 11, (220, 20, 60)),
    ("rider", 25, 12, (255, 0, 0)),
    ("car", 26, 13, (0, 0, 142)),
    ("truck", 27, 14, (0, 0, 70)),
    ("bus", 28, 15, (0, 60, 100)),
    ("caravan", 29, 255, (0, 0, 90)),
    ("trailer", 30, 255, (0, 0, 110)),
    ("train", 31, 16, (0, 80, 100)),
    ("motorcycle", 32, 17, (0, 0, 230)),
    ("bicycle", 33, 18, (119, 11, 32)),
    ("license plate", -1, -1, (0, 0, 142)),
)


def _train_id(train_id: int) -> int:
    return train_id if 0 <= train_id < IGNORE else IGNORE


def _cityscapes_tables():
    train = sorted((lab for lab in CITYSCAPES_LABELS if _train_id(lab[2]) != IGNORE), key=lambda lab: lab[2])
    names = tuple(name for name, *_ in train)
    palette = np.array([colour for *_, colour in train], np.uint8)
    # Label-id -> train-id lookup for the official gtFine *_labelIds.png files.
    id_to_train = np.full(256, IGNORE, np.uint8)
    for _, label_id, train_id, _ in CITYSCAPES_LABELS:
        if label_id >= 0:
            id_to_train[label_id] = _train_id(train_id)
    # Every colour a rendered Cityscapes label image can contain, with its train id. Some colours are
    # shared (pole/polegroup, car/license plate): the evaluated class wins, so a pole stays a pole.
    colour_to_train: dict[tuple[int, int, int], int] = {}
    for _, _, train_id, colour in CITYSCAPES_LABELS:
        if colour_to_train.get(colour, IGNORE) == IGNORE:
            colour_to_train[colour] = _train_id(train_id)
    all_colours = np.array(list(colour_to_train), np.uint8)
    all_ids = np.array(list(colour_to_train.values()), np.uint8)
    # Train id -> label id, to write gtFine-style *_labelIds.png files; 255 and anything unknown -> 0
    # ("unlabeled").
    train_to_id = np.zeros(256, np.uint8)
    for _, label_id, train_id, _ in train:
        train_to_id[train_id] = label_id
    return names, palette, id_to_train, all_colours, all_ids, train_to_id


(CITYSCAPES_NAMES, CITYSCAPES_PALETTE, CITYSCAPES_ID_TO_TRAIN, CITYSCAPES_ALL_COLOURS, CITYSCAPES_ALL_IDS,
 CITYSCAPES_TRAIN_TO_ID) = _cityscapes_tables()
CITYSCAPES_VOID_COLOUR = np.array([0, 0, 0], np.uint8)

# --- CMP facades (12 classes) --------------------------------------------------------------------------

FACADES_NAMES = ("background", "facade", "window", "door", "cornice", "sill", "balcony", "blind",
                 "deco", "molding", "pillar", "shop")
# Pix2Pix's facade label halves colour the CMP ids along a jet-like ramp with a step of ~80 RGB units.
# Ten colours are the median of the pixels snapped to them in the four real samples; balcony and blind
# do not occur there and are interpolated on the same ramp (between sill and deco).
FACADES_PALETTE = np.array([
    (0, 0, 222), (0, 48, 255), (2, 127, 255), (1, 207, 255), (34, 255, 224), (112, 254, 142),
    (192, 255, 63), (255, 238, 0), (255, 159, 0), (255, 80, 0), (248, 3, 3), (174, 0, 1),
], np.uint8)

# --- CamVid, SegNet's 11 classes (+ 11 = void on disk) ---------------------------------------------------

CAMVID_NAMES = ("sky", "building", "pole", "road", "pavement", "tree", "sign_symbol", "fence", "car",
                "pedestrian", "bicyclist")
CAMVID_PALETTE = np.array([
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
    (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
], np.uint8)
CAMVID_VOID = 11
