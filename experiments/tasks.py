"""Presets: the model, image size, data counts, training length and matcher knobs for each task.

`quick` is sized for a 2-core CPU (the default demo finishes in minutes); `paper` is the paper's
setting (256x256 ngf=64 Pix2Pix for 200 epochs, SegNet at 360x480) for a GPU. Any field can be
overridden from the driver's flags.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

PRESETS = ("quick", "paper")


@dataclass(frozen=True)
class RunConfig:
    task: str
    preset: str
    model: str                      # "pix2pix", "segnet_basic" or "segnet_vgg16"
    size: tuple[int, int]           # (H, W) every image is resized to
    n_train: int | None             # images of the training split (None: all; synthetic sets need a count)
    n_query: int | None             # images of the query split explained
    query_sample: str = "spread"    # which n_query images: "spread" evenly over the split, "first", "random"
    steps: int | None = None        # training length: steps, or epochs when steps is None
    epochs: int | None = None
    batch_size: int = 1
    ngf: int = 64                   # Pix2Pix width
    seed: int = 0
    shortlist: int = 10             # S: images kept by the global (bottleneck) shortlist
    coarse_k: int = 8               # candidates per coarse position in the hierarchical prune
    margin: int = 1                 # extra fine positions searched around each coarse candidate
    n_panels: int = 6               # queries shown as panels and explained in the report
    export_layers: str = "used"     # "used": the layers this run's matching and analyses read; "all"
    match_layers: str | None = None  # a network compnn did not build: "global:NAME,coarse:NAME,fine:NAME"
    decode2: str | None = None      # ... its layer for Table 1's Global-Decode2 row (default: fine)
    kernel: int | None = None       # ... its fine patch size (default: read from the consuming conv)
    recipe: str = "tutorial"        # SegNet's training recipe: a key of SEGNET_RECIPES

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def train_recipe(self) -> dict[str, Any]:
        """The training options of SegNet's recipe that shape the network (the train stage's key reads
        them, so a changed recipe trains a new network). A schedule that decays over the run makes
        the length part of the network too; a constant rate lets a longer run continue the stage."""
        if self.recipe not in SEGNET_RECIPES:
            raise ValueError(f"no recipe {self.recipe!r}; recipes: {sorted(SEGNET_RECIPES)}")
        options = dict(SEGNET_RECIPES[self.recipe])
        if options.get("lr_schedule", "constant") != "constant":
            options["length"] = {"steps": self.steps, "epochs": self.epochs}
        return {"recipe": self.recipe, **options}


# SegNet training recipes (tf_models.train.train_segnet options, besides length, batch and seed).
# "tutorial": the SegNet-Tutorial solver (SGD at its base_lr, no augmentation, the tutorial's CamVid
# class weights, the last checkpoint). "camvid": the recipe measured on real CamVid at 90x120 (README,
# "Real CamVid"): median-frequency class weights from the training labels, flips + zoom-crops +
# brightness, Adam with warmup and cosine decay, and the checkpoint with the best validation mIoU
# (scored with BN statistics recomputed over 96 training images, as the finished network uses them).
SEGNET_RECIPES: dict[str, dict[str, Any]] = {
    "tutorial": {},
    "camvid": dict(class_weights="median_frequency", optimizer="adam", lr=1e-3, lr_schedule="cosine",
                   warmup_epochs=1.0, weight_decay=5e-4, flip=True, zoom=1.25, brightness=0.2, keep="best_val",
                   val_bn_images=96),
}


# Training settings of each family of networks (tf_models.registry: Architecture.trainer), by preset.
_FAMILIES: dict[tuple[str, str], dict[str, Any]] = {
    ("pix2pix", "quick"): dict(model="pix2pix", size=(64, 64), steps=2000, ngf=16, shortlist=20),
    ("pix2pix", "paper"): dict(model="pix2pix", size=(256, 256), epochs=200, ngf=64, shortlist=100),
    ("segnet", "quick"): dict(model="segnet_basic", size=(48, 64), epochs=12, batch_size=4, shortlist=10),
    ("segnet", "paper"): dict(model="segnet_basic", size=(360, 480), epochs=300, batch_size=4, shortlist=10),
}
# Real data with the quick preset: every image, at a size a CPU trains in about an hour (SegNet: quarter
# CamVid resolution, the camvid recipe for 50 epochs: 0.511 val mIoU, 80 min on 2 cores; README "Real CamVid").
_REAL_QUICK = {"pix2pix": {}, "segnet": dict(size=(90, 120), epochs=50, recipe="camvid")}
# Each task's own family of networks (the paper's), and its image counts with the quick preset.
_TASKS = {"cityscapes": "pix2pix", "facades": "pix2pix", "facades_labels": "pix2pix", "maps": "pix2pix",
          "camvid": "segnet"}
_QUICK_COUNTS = {"pix2pix": dict(n_train=200, n_query=12), "segnet": dict(n_train=150, n_query=12)}


def run_config(task: str, preset: str, *, real_data: bool, family: str | None = None, **overrides) -> RunConfig:
    """The preset for `task`, adjusted for real data (all images, CPU-sized) and for overrides. `family`
    is the trainer family of an overriding --model (default: the task's own): the training settings come
    from that family, the image counts from the task."""
    if task not in _TASKS or preset not in PRESETS:
        raise ValueError(f"no preset {preset!r} for task {task!r}; presets: {PRESETS}")
    family = family or _TASKS[task]
    if (family, preset) not in _FAMILIES:
        raise ValueError(f"no {preset!r} preset for networks trained as {family!r}")
    counts = _QUICK_COUNTS[_TASKS[task]] if preset == "quick" else dict(n_train=None, n_query=None)
    fields = dict(_FAMILIES[(family, preset)], **counts)
    if real_data and preset == "quick":
        fields.update(n_train=None, n_query=None, **_REAL_QUICK[family])
    clean = {k: v for k, v in overrides.items() if v is not None}
    if "steps" in clean:
        clean.setdefault("epochs", None)
    if "epochs" in clean and "steps" not in clean:
        clean["steps"] = None
    return replace(RunConfig(task=task, preset=preset, **fields), **clean)
