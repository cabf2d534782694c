"""Class tables of every dataset: names, display colours, and the colour -> class-id rules for snapping.

Cityscapes' tables come from `cityscapesscripts.helpers.labels` (never retyped here). The CMP facades
palette was measured on ../shared/data/facades-samples (see FACADES_PALETTE); CamVid's colours are the
ones SegNet's tutorial uses for display.
"""

from __future__ import annotations

import numpy as np

IGNORE = 255

# --- Cityscapes (19 train ids) -------------------------------------------------------------------------


def _cityscapes_tables():
    from cityscapesscripts.helpers import labels as cs

    train = sorted((lab for lab in cs.labels if 0 <= lab.trainId < IGNORE), key=lambda lab: lab.trainId)
    names = tuple(lab.name for lab in train)
    palette = np.array([lab.color for lab in train], np.uint8)
    # Label-id -> train-id lookup for the official gtFine *_labelIds.png files.
    id_to_train = np.full(256, IGNORE, np.uint8)
    for lab in cs.labels:
        if lab.id >= 0:
            id_to_train[lab.id] = lab.trainId if 0 <= lab.trainId < IGNORE else IGNORE
    # Every colour a rendered Cityscapes label image can contain, with its train id. Some colours are
    # shared (pole/polegroup, car/license plate): the evaluated class wins, so a pole stays a pole.
    colour_to_train: dict[tuple[int, int, int], int] = {}
    for lab in cs.labels:
        train_id = lab.trainId if 0 <= lab.trainId < IGNORE else IGNORE
        colour = tuple(int(c) for c in lab.color)
        if colour_to_train.get(colour, IGNORE) == IGNORE:
            colour_to_train[colour] = train_id
    all_colours = np.array(list(colour_to_train), np.uint8)
    all_ids = np.array(list(colour_to_train.values()), np.uint8)
    return names, palette, id_to_train, all_colours, all_ids


(CITYSCAPES_NAMES, CITYSCAPES_PALETTE, CITYSCAPES_ID_TO_TRAIN,
 CITYSCAPES_ALL_COLOURS, CITYSCAPES_ALL_IDS) = _cityscapes_tables()
CITYSCAPES_VOID_COLOUR = np.array([0, 0, 0], np.uint8)


def _cityscapes_train_to_id():
    from cityscapesscripts.helpers import labels as cs

    lut = np.zeros(256, np.uint8)  # 255 and anything unknown -> label id 0, "unlabeled"
    for train_id, lab in cs.trainId2label.items():
        if 0 <= train_id < IGNORE:
            lut[train_id] = lab.id
    return lut


# Train id -> label id, to write gtFine-style *_labelIds.png files.
CITYSCAPES_TRAIN_TO_ID = _cityscapes_train_to_id()

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
