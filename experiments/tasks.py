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

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_PIX2PIX_QUICK = dict(model="pix2pix", size=(64, 64), n_train=200, n_query=12, steps=2000, ngf=16,
                      shortlist=20)
_PIX2PIX_PAPER = dict(model="pix2pix", size=(256, 256), n_train=None, n_query=None, epochs=200, ngf=64,
                      shortlist=100)

_TABLE: dict[tuple[str, str], dict[str, Any]] = {
    **{(t, "quick"): _PIX2PIX_QUICK for t in ("cityscapes", "facades", "facades_labels", "maps")},
    **{(t, "paper"): _PIX2PIX_PAPER for t in ("cityscapes", "facades", "facades_labels", "maps")},
    ("camvid", "quick"): dict(model="segnet_basic", size=(48, 64), n_train=150, n_query=12, epochs=12,
                              batch_size=4, shortlist=10),
    ("camvid", "paper"): dict(model="segnet_basic", size=(360, 480), n_train=None, n_query=None, epochs=300,
                              batch_size=4, shortlist=10),
}


def run_config(task: str, preset: str, *, real_data: bool, **overrides) -> RunConfig:
    """The preset for `task`, adjusted for real data (all images, CPU-sized) and for overrides."""
    if (task, preset) not in _TABLE:
        raise ValueError(f"no preset {preset!r} for task {task!r}; presets: {PRESETS}")
    fields = dict(_TABLE[(task, preset)])
    model = overrides.get("model")
    if model is not None and model.startswith("segnet") != fields["model"].startswith("segnet"):
        # Another family of network: take that family's training settings, keep the task's data counts.
        other = _TABLE[("camvid", preset)] if model.startswith("segnet") else (
            _PIX2PIX_QUICK if preset == "quick" else _PIX2PIX_PAPER)
        fields = dict(other, n_train=fields["n_train"], n_query=fields["n_query"])
    if real_data and preset == "quick":
        # Real data: every image; SegNet at quarter CamVid resolution, the largest a CPU trains in minutes.
        fields.update(n_train=None, n_query=None)
        if fields["model"].startswith("segnet"):
            fields.update(size=(90, 120), epochs=10)
    clean = {k: v for k, v in overrides.items() if v is not None}
    if "steps" in clean:
        clean.setdefault("epochs", None)
    if "epochs" in clean and "steps" not in clean:
        clean["steps"] = None
    return replace(RunConfig(task=task, preset=preset, **fields), **clean)
