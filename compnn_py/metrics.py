"""Scores for CompNN outputs (Table 1): segmentation confusion, accuracy and IoU; PSNR/SSIM for synthesis;
and the Table 1 structure that writes CSV and Markdown.

Segmentation conventions: label maps are uint8 class ids, 255 = void. A pixel whose *reference* is void
is ignored. A *prediction* of void (possible when CompNN copies original labels, which contain void) on a
labelled pixel is counted as wrong: it is a miss for the reference class and a hit for no class.

Two "mean pixel accuracy"s exist in the literature and both are reported:
  pixel_accuracy       = correctly labelled pixels / labelled pixels (global, dominated by big classes);
  mean_class_accuracy  = mean over classes present in the reference of (correct pixels of c / pixels of c).
mean_iou is the mean over classes with a non-empty union (reference or prediction) of TP / (TP + FP + FN).
All are accumulated over a whole set of images (summed confusion), not averaged per image.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

VOID = 255
TABLE1_ROWS = ("Baseline CNN", "CompNN (SS)", "CompNN (O)", "Global Bottleneck NN (SS)",
               "Global Bottleneck NN (O)", "Global Decode2 NN (SS)", "Global Decode2 NN (O)")


def _label_array(a, name: str) -> np.ndarray:
    a = np.asarray(a)
    if not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"{name} must hold integer class ids (uint8, 255 = void), got dtype {a.dtype}")
    return a


def confusion_matrix(pred, ref, num_classes: int) -> np.ndarray:
    """int64 (C, C+1) counts: row = reference class, column = predicted class, last column = predicted void.

    Pixels whose reference is 255 are ignored. Ids other than 0..C-1 and 255 are an error in either map.
    """
    if not isinstance(num_classes, (int, np.integer)) or not 0 < num_classes < VOID:
        raise ValueError(f"num_classes must be an int in 1..254, got {num_classes!r}")
    pred, ref = _label_array(pred, "pred"), _label_array(ref, "ref")
    if pred.shape != ref.shape:
        raise ValueError(f"pred {pred.shape} and ref {ref.shape} must have the same shape")
    for a, name in ((pred, "pred"), (ref, "ref")):
        bad = (a < 0) | ((a >= num_classes) & (a != VOID))
        if bad.any():
            raise ValueError(f"{name} has class ids outside 0..{num_classes - 1} and {VOID}: "
                             f"{np.unique(a[bad])[:5].tolist()}")
    keep = ref != VOID
    r = ref[keep].astype(np.int64)
    p = pred[keep].astype(np.int64)
    p[p == VOID] = num_classes
    return np.bincount(r * (num_classes + 1) + p, minlength=num_classes * (num_classes + 1)).reshape(
        num_classes, num_classes + 1)


def segmentation_scores(confusion: np.ndarray) -> dict:
    """Scores from a (C, C+1) confusion (see module doc): pixel_accuracy, mean_class_accuracy, mean_iou,
    per_class_iou (nan where a class is in neither map), per_class_accuracy (nan where absent from ref)."""
    confusion = np.asarray(confusion)
    if confusion.ndim != 2 or confusion.shape[1] != confusion.shape[0] + 1:
        raise ValueError(f"confusion must be (C, C+1), got shape {confusion.shape}")
    c = confusion.shape[0]
    tp = np.diag(confusion[:, :c]).astype(np.float64)
    ref_count = confusion.sum(1).astype(np.float64)
    pred_count = confusion[:, :c].sum(0).astype(np.float64)
    union = ref_count + pred_count - tp
    total = ref_count.sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        class_acc = np.where(ref_count > 0, tp / ref_count, np.nan)
        iou = np.where(union > 0, tp / union, np.nan)
    return {
        "pixel_accuracy": float(tp.sum() / total) if total else float("nan"),
        "mean_class_accuracy": float(np.nanmean(class_acc)) if (ref_count > 0).any() else float("nan"),
        "mean_iou": float(np.nanmean(iou)) if (union > 0).any() else float("nan"),
        "per_class_iou": iou,
        "per_class_accuracy": class_acc,
    }


def evaluate_segmentation(preds: Iterable, refs: Iterable, num_classes: int) -> dict:
    """`segmentation_scores` of the confusion summed over paired label maps."""
    total = np.zeros((num_classes, num_classes + 1), dtype=np.int64)
    n = 0
    for p, r in zip(preds, refs, strict=True):
        total += confusion_matrix(p, r, num_classes)
        n += 1
    if n == 0:
        raise ValueError("no label maps to evaluate")
    return segmentation_scores(total)


def _rgb(a, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[-1] != 3:
        raise TypeError(f"{name} must be a uint8 (H, W, 3) image, got {a.dtype} {a.shape}")
    return a


def psnr(pred, ref) -> float:
    """PSNR in dB of two uint8 RGB images (data range 255); inf when identical."""
    from skimage.metrics import peak_signal_noise_ratio

    pred, ref = _rgb(pred, "pred"), _rgb(ref, "ref")
    if pred.shape != ref.shape:
        raise ValueError(f"pred {pred.shape} and ref {ref.shape} must have the same shape")
    if np.array_equal(pred, ref):
        return float("inf")
    return float(peak_signal_noise_ratio(ref, pred, data_range=255))


def ssim(pred, ref) -> float:
    """Mean SSIM of two uint8 RGB images (scikit-image defaults: 7×7 window, channels averaged)."""
    from skimage.metrics import structural_similarity

    pred, ref = _rgb(pred, "pred"), _rgb(ref, "ref")
    if pred.shape != ref.shape:
        raise ValueError(f"pred {pred.shape} and ref {ref.shape} must have the same shape")
    return float(structural_similarity(ref, pred, data_range=255, channel_axis=-1))


def evaluate_synthesis(preds: Iterable, refs: Iterable) -> dict[str, float]:
    """Mean PSNR (identical pairs, whose PSNR is inf, are left out of the mean and counted) and mean SSIM."""
    ps, ss = [], []
    for p, r in zip(preds, refs, strict=True):
        ps.append(psnr(p, r))
        ss.append(ssim(p, r))
    if not ps:
        raise ValueError("no images to evaluate")
    finite = [v for v in ps if math.isfinite(v)]
    return {"psnr": float(np.mean(finite)) if finite else float("inf"), "ssim": float(np.mean(ss)),
            "identical": len(ps) - len(finite)}


# ---- Table 1 ---------------------------------------------------------------------------------------

@dataclass
class Table:
    """Rows × named numeric columns, written as CSV or Markdown; `per_class` holds optional per-row arrays
    (per-class IoU for segmentation)."""

    rows: list[str]
    columns: list[str]
    values: np.ndarray
    title: str = ""
    per_class: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self):
        self.values = np.asarray(self.values, dtype=np.float64)
        if self.values.shape != (len(self.rows), len(self.columns)):
            raise ValueError(f"values {self.values.shape} do not fit {len(self.rows)} rows × "
                             f"{len(self.columns)} columns")

    def value(self, row: str, column: str) -> float:
        return float(self.values[self.rows.index(row), self.columns.index(column)])

    def to_csv(self, path) -> Path:
        path = Path(path)
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["approach", *self.columns])
            for name, vals in zip(self.rows, self.values):
                w.writerow([name, *(repr(float(v)) for v in vals)])
        return path

    def to_markdown(self, digits: int = 3) -> str:
        lines = [f"**{self.title}**", ""] if self.title else []
        lines.append("| Approach | " + " | ".join(self.columns) + " |")
        lines.append("|---|" + "---:|" * len(self.columns))
        for name, vals in zip(self.rows, self.values):
            lines.append(f"| {name} | " + " | ".join(f"{v:.{digits}f}" for v in vals) + " |")
        return "\n".join(lines) + "\n"

    def write(self, stem) -> tuple[Path, Path]:
        """Write `<stem>.csv` and `<stem>.md`."""
        stem = Path(stem)
        md = stem.with_suffix(".md")
        md.write_text(self.to_markdown())
        return self.to_csv(stem.with_suffix(".csv")), md


SEG_COLUMNS = ["pixel_acc", "mean_class_acc", "mean_iou", "agree_pixel_acc", "agree_mean_class_acc",
               "agree_mean_iou"]
SYN_COLUMNS = ["psnr_vs_gt", "ssim_vs_gt", "psnr_vs_cnn", "ssim_vs_cnn"]


def _check_rows(outputs: Mapping[str, np.ndarray], rows: Sequence[str]):
    missing = [r for r in rows if r not in outputs]
    if missing:
        raise ValueError(f"outputs lack Table 1 rows {missing}; expected {list(rows)}")


def table1_segmentation(outputs: Mapping[str, np.ndarray], gt, cnn, num_classes: int,
                        rows: Sequence[str] = TABLE1_ROWS) -> Table:
    """Table 1 for segmentation: per row, (Q, H, W) predictions scored against ground truth `gt` (columns
    pixel_acc, mean_class_acc, mean_iou) and against the CNN's output `cnn` (agree_*); per_class holds
    each row's per-class IoU against ground truth."""
    _check_rows(outputs, rows)
    vals, per_class = [], {}
    for name in rows:
        s = evaluate_segmentation(outputs[name], gt, num_classes)
        a = evaluate_segmentation(outputs[name], cnn, num_classes)
        vals.append([s["pixel_accuracy"], s["mean_class_accuracy"], s["mean_iou"],
                     a["pixel_accuracy"], a["mean_class_accuracy"], a["mean_iou"]])
        per_class[name] = s["per_class_iou"]
    return Table(list(rows), list(SEG_COLUMNS), np.array(vals), "Table 1 (segmentation)", per_class)


def table1_synthesis(outputs: Mapping[str, np.ndarray], gt, cnn, rows: Sequence[str] = TABLE1_ROWS) -> Table:
    """Table 1 for synthesis: mean PSNR (dB) and SSIM of each row's (Q, H, W, 3) outputs against ground
    truth and against the CNN's output (the CNN row's own PSNR vs itself is inf)."""
    _check_rows(outputs, rows)
    vals = []
    for name in rows:
        g = evaluate_synthesis(outputs[name], gt)
        c = evaluate_synthesis(outputs[name], cnn)
        vals.append([g["psnr"], g["ssim"], c["psnr"], c["ssim"]])
    return Table(list(rows), list(SYN_COLUMNS), np.array(vals), "Table 1 (synthesis)")
