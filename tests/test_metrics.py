"""Tests of compnn_py.metrics against hand-computed confusion matrices, a naive per-pixel loop, and
closed-form PSNR values."""

import csv

import numpy as np
import pytest

from compnn_py import metrics

REF = np.array([[0, 0, 1], [1, 2, 255]], dtype=np.uint8)
PRED = np.array([[0, 1, 1], [255, 2, 0]], dtype=np.uint8)


def test_confusion_and_scores_by_hand():
    conf = metrics.confusion_matrix(PRED, REF, 3)
    # rows: reference 0, 1, 2; columns: predicted 0, 1, 2, void. The (255 ref) pixel is ignored.
    np.testing.assert_array_equal(conf, [[1, 1, 0, 0], [0, 1, 0, 1], [0, 0, 1, 0]])
    s = metrics.segmentation_scores(conf)
    assert s["pixel_accuracy"] == pytest.approx(3 / 5)
    assert s["mean_class_accuracy"] == pytest.approx((1 / 2 + 1 / 2 + 1) / 3)
    np.testing.assert_allclose(s["per_class_iou"], [1 / 2, 1 / 3, 1])  # class 1: TP 1, ref 2, pred 2
    assert s["mean_iou"] == pytest.approx((1 / 2 + 1 / 3 + 1) / 3)


def test_absent_class_is_left_out_of_means():
    s = metrics.evaluate_segmentation([PRED], [REF], 4)  # class 3 in neither map
    assert np.isnan(s["per_class_iou"][3]) and np.isnan(s["per_class_accuracy"][3])
    assert s["mean_iou"] == pytest.approx((1 / 2 + 1 / 3 + 1) / 3)
    # predicted but absent from the reference: IoU 0, counted in mIoU, not in mean class accuracy
    s = metrics.evaluate_segmentation([np.array([[3, 0]], np.uint8)], [np.array([[0, 0]], np.uint8)], 4)
    np.testing.assert_allclose(s["per_class_iou"][[0, 3]], [0.5, 0.0])
    assert s["mean_iou"] == pytest.approx(0.25) and s["mean_class_accuracy"] == pytest.approx(0.5)


def test_confusion_equals_naive_loop_summed_over_images(rng):
    c = 5
    preds = [rng.choice([0, 1, 2, 3, 4, 255], (6, 7)).astype(np.uint8) for _ in range(3)]
    refs = [rng.choice([0, 1, 2, 3, 4, 255], (6, 7)).astype(np.uint8) for _ in range(3)]
    naive = np.zeros((c, c + 1), dtype=np.int64)
    for p, r in zip(preds, refs):
        for a, b in zip(p.ravel(), r.ravel()):
            if b != 255:
                naive[b, c if a == 255 else a] += 1
    total = sum(metrics.confusion_matrix(p, r, c) for p, r in zip(preds, refs))
    np.testing.assert_array_equal(total, naive)
    s = metrics.evaluate_segmentation(preds, refs, c)
    assert s["pixel_accuracy"] == pytest.approx(np.trace(naive[:, :c]) / naive.sum())


def test_perfect_prediction_scores_one(rng):
    ref = rng.integers(0, 4, (5, 5)).astype(np.uint8)
    s = metrics.evaluate_segmentation([ref], [ref], 4)
    assert s["pixel_accuracy"] == s["mean_class_accuracy"] == s["mean_iou"] == 1.0


def test_bad_label_input():
    with pytest.raises(ValueError, match="pred has class ids"):
        metrics.confusion_matrix(np.array([[7]], np.uint8), np.array([[0]], np.uint8), 3)
    with pytest.raises(ValueError, match="ref has class ids"):
        metrics.confusion_matrix(np.array([[0]], np.uint8), np.array([[9]], np.uint8), 3)
    with pytest.raises(TypeError, match="pred must hold integer"):
        metrics.confusion_matrix(np.zeros((2, 2)), np.zeros((2, 2), np.uint8), 3)
    with pytest.raises(ValueError, match="same shape"):
        metrics.confusion_matrix(np.zeros((2, 2), np.uint8), np.zeros((2, 3), np.uint8), 3)
    with pytest.raises(ValueError, match="num_classes"):
        metrics.confusion_matrix(np.zeros((2, 2), np.uint8), np.zeros((2, 2), np.uint8), 0)


def test_psnr_closed_form_and_ssim_properties(rng):
    ref = np.zeros((16, 16, 3), np.uint8)
    assert metrics.psnr(ref + 10, ref) == pytest.approx(10 * np.log10(255**2 / 100))
    assert metrics.psnr(ref, ref) == float("inf")
    img = rng.integers(0, 256, (32, 32, 3)).astype(np.uint8)
    assert metrics.ssim(img, img) == pytest.approx(1.0)
    # flat images: SSIM reduces to the luminance term (2ab + C1) / (a² + b² + C1), C1 = (0.01·255)²
    c1 = (0.01 * 255) ** 2
    flat = np.full((16, 16, 3), 100, np.uint8)
    assert metrics.ssim(flat + 10, flat) == pytest.approx((2 * 100 * 110 + c1) / (100**2 + 110**2 + c1))
    noise = rng.integers(-1, 2, img.shape)
    near = [np.clip(img.astype(int) + a * noise, 0, 255).astype(np.uint8) for a in (10, 40, 80)]
    scores = [metrics.ssim(n, img) for n in near]
    assert scores[0] > scores[1] > scores[2]
    s = metrics.evaluate_synthesis([img, ref + 10], [img, ref])
    assert s["identical"] == 1 and s["psnr"] == pytest.approx(10 * np.log10(255**2 / 100))
    with pytest.raises(TypeError, match="uint8"):
        metrics.psnr(img.astype(np.float32), img)


def test_table_writes_csv_and_markdown(tmp_path):
    t = metrics.Table(["a", "b"], ["x", "y"], [[0.5, 0.25], [1.0, 0.125]], "demo")
    csv_path, md_path = t.write(tmp_path / "t")
    with csv_path.open() as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["approach", "x", "y"]
    assert [r[0] for r in rows[1:]] == ["a", "b"]
    np.testing.assert_array_equal([[float(v) for v in r[1:]] for r in rows[1:]], t.values)
    md = md_path.read_text().splitlines()
    assert "| a | 0.500 | 0.250 |" in md and "| b | 1.000 | 0.125 |" in md
    assert t.value("b", "y") == 0.125
    with pytest.raises(ValueError, match="rows"):
        metrics.Table(["a"], ["x", "y"], [[1, 2], [3, 4]])


def test_table1_segmentation_rows_and_values():
    gt = REF[None]
    cnn = PRED[None]
    outs = {name: cnn for name in metrics.TABLE1_ROWS}
    outs["CompNN (O)"] = gt
    t = metrics.table1_segmentation(outs, gt, cnn, 3)
    assert t.rows == list(metrics.TABLE1_ROWS)
    assert t.value("Baseline CNN", "pixel_acc") == pytest.approx(3 / 5)
    assert t.value("Baseline CNN", "agree_pixel_acc") == 1.0
    assert t.value("CompNN (O)", "mean_iou") == 1.0
    np.testing.assert_allclose(t.per_class["Baseline CNN"], [1 / 2, 1 / 3, 1])
    with pytest.raises(ValueError, match="lack Table 1 rows"):
        metrics.table1_segmentation({"Baseline CNN": cnn}, gt, cnn, 3)


def test_table1_synthesis(rng):
    gt = rng.integers(0, 256, (2, 16, 16, 3)).astype(np.uint8)
    cnn = np.clip(gt.astype(int) + 5, 0, 255).astype(np.uint8)
    outs = {name: cnn for name in metrics.TABLE1_ROWS}
    outs["CompNN (O)"] = gt
    t = metrics.table1_synthesis(outs, gt, cnn)
    assert t.value("CompNN (O)", "ssim_vs_gt") == pytest.approx(1.0)
    assert t.value("Baseline CNN", "psnr_vs_cnn") == float("inf")
    mse = ((cnn.astype(float) - gt) ** 2).mean(axis=(1, 2, 3))
    assert t.value("Baseline CNN", "psnr_vs_gt") == pytest.approx(np.mean(10 * np.log10(255**2 / mse)))
