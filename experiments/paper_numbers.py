"""The paper's Table 1 (Liu et al., "Interpreting CNNs via compositional nearest neighbors"), for
showing beside a run's own numbers.

The paper reports two numbers per approach for three segmentation tasks: what it calls "mean pixel
accuracy" and mean IoU, each against ground-truth labels. Its "Facades" column is Facades-to-Labels
(Pix2Pix photo -> labels), this project's `facades_labels` task; "CityScape" is Pix2Pix on Cityscapes,
"CamVid" SegNet on CamVid. The paper does not define its accuracy further (global pixel accuracy or the
mean over classes), so the report shows it beside both of ours. Rows are named as in
compnn_py.metrics.TABLE1_ROWS.
"""

from __future__ import annotations

PAPER = "Liu et al., Table 1"
PAPER_ACCURACY = "mean pixel accuracy"   # the paper's own name for its accuracy column
PAPER_IOU = "mean IoU"

# task -> row -> (accuracy, mean IoU), transcribed from the paper's Table 1.
TABLE1: dict[str, dict[str, tuple[float, float]]] = {
    "facades_labels": {
        "Baseline CNN": (0.545, 0.157), "CompNN (SS)": (0.505, 0.137), "CompNN (O)": (0.493, 0.134),
        "Global Bottleneck NN (SS)": (0.324, 0.057), "Global Bottleneck NN (O)": (0.381, 0.065),
        "Global Decode2 NN (SS)": (0.387, 0.087), "Global Decode2 NN (O)": (0.393, 0.090),
    },
    "cityscapes": {
        "Baseline CNN": (0.735, 0.217), "CompNN (SS)": (0.738, 0.210), "CompNN (O)": (0.722, 0.217),
        "Global Bottleneck NN (SS)": (0.579, 0.109), "Global Bottleneck NN (O)": (0.585, 0.133),
        "Global Decode2 NN (SS)": (0.590, 0.110), "Global Decode2 NN (O)": (0.600, 0.136),
    },
    "camvid": {
        "Baseline CNN": (0.790, 0.444), "CompNN (SS)": (0.767, 0.378), "CompNN (O)": (0.754, 0.372),
        "Global Bottleneck NN (SS)": (0.564, 0.246), "Global Bottleneck NN (O)": (0.570, 0.226),
        "Global Decode2 NN (SS)": (0.659, 0.287), "Global Decode2 NN (O)": (0.664, 0.308),
    },
}


def table1(task: str) -> dict[str, tuple[float, float]] | None:
    """The paper's (accuracy, mean IoU) per Table 1 row for `task`, or None when the paper has no numbers
    for it (facades labels -> photo and maps are image synthesis; the paper reports no scores for them)."""
    return TABLE1.get(task)
