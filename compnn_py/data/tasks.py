"""The five tasks of the paper (TaskSpec, TASKS) and the Split container every reader returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import palettes as P


@dataclass(frozen=True, eq=False)  # arrays inside: compare specs by identity
class TaskSpec:
    """What a task maps from and to.

    kind: "segmentation" (targets are uint8 class ids, 255 = ignore) or "synthesis" (targets are RGB).
    layout: the on-disk layout its reader expects ("pix2pix" A|B files or SegNet's "camvid").
    direction: which half of a pix2pix A|B file is the input ("AtoB": left half; "BtoA": right half).
    num_classes / class_names / palette: the target's classes for segmentation; for a synthesis task
    whose input is a label map (facades: labels -> photo) those of the input; empty for maps.
    ignore_colors: colours of a rendered label image that mean "ignore" (snapped to 255).
    size: native (H, W) of one image; readers keep it unless asked for another size.
    splits: the splits the real dataset has.
    """

    name: str
    kind: str
    layout: str
    direction: str
    num_classes: int
    class_names: tuple[str, ...]
    palette: np.ndarray = field(repr=False)
    ignore_colors: np.ndarray = field(repr=False)
    size: tuple[int, int]
    splits: tuple[str, ...]

    @property
    def labels_are_input(self) -> bool:
        """True when the input image is a colour label map (facades labels -> photo)."""
        return self.kind == "synthesis" and self.num_classes > 0


_NONE = np.zeros((0, 3), np.uint8)
_CS_IGNORE = P.CITYSCAPES_ALL_COLOURS[P.CITYSCAPES_ALL_IDS == P.IGNORE]

TASKS: dict[str, TaskSpec] = {
    "cityscapes": TaskSpec("cityscapes", "segmentation", "pix2pix", "AtoB", 19, P.CITYSCAPES_NAMES,
                           P.CITYSCAPES_PALETTE, _CS_IGNORE, (256, 256), ("train", "val")),
    "facades": TaskSpec("facades", "synthesis", "pix2pix", "BtoA", 12, P.FACADES_NAMES,
                        P.FACADES_PALETTE, _NONE, (256, 256), ("train", "val", "test")),
    "facades_labels": TaskSpec("facades_labels", "segmentation", "pix2pix", "AtoB", 12, P.FACADES_NAMES,
                               P.FACADES_PALETTE, _NONE, (256, 256), ("train", "val", "test")),
    "maps": TaskSpec("maps", "synthesis", "pix2pix", "AtoB", 0, (), _NONE, _NONE, (256, 256),
                     ("train", "val")),
    "camvid": TaskSpec("camvid", "segmentation", "camvid", "", 11, P.CAMVID_NAMES, P.CAMVID_PALETTE,
                       _NONE, (360, 480), ("train", "val", "test")),
}


def get_task(task) -> TaskSpec:
    if isinstance(task, TaskSpec):
        return task
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {sorted(TASKS)}")
    return TASKS[task]


@dataclass
class Split:
    """One split of a task, fully in memory.

    inputs: uint8 (N, H, W, 3). targets: uint8 ids (N, H, W) with 255 = ignore for segmentation,
    uint8 RGB (N, H, W, 3) for synthesis. ids: one name per image (file stem or synthetic id).
    meta: one dict per image (e.g. CamVid {"sequence": "0001TP"}, synthetic facades {"style": ...}).
    """

    inputs: np.ndarray
    targets: np.ndarray
    ids: list[str]
    meta: list[dict]
    spec: TaskSpec

    def __len__(self) -> int:
        return len(self.ids)

    def __post_init__(self):
        n = len(self.ids)
        if not (len(self.inputs) == len(self.targets) == len(self.meta) == n):
            raise ValueError(f"Split arrays disagree in length: inputs {len(self.inputs)}, targets "
                             f"{len(self.targets)}, ids {n}, meta {len(self.meta)}")
