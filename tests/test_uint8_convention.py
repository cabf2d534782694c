"""Network image outputs -> uint8 follow pix2pix-tensorflow's convention: its deprocess (y + 1) / 2, then
tf.image.convert_image_dtype(..., tf.uint8, saturate=True), i.e. floor(255.5 x) saturated to [0, 255]."""

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from tf_models import pix2pix, registry  # noqa: E402


def _edge_values() -> np.ndarray:
    """tanh-range values at and beside every level boundary (x = k / 255.5 after (y + 1) / 2), the
    ends, their neighbours and out-of-range values."""
    k = np.arange(257, dtype=np.float64)
    bounds = (2 * k / 255.5 - 1).astype(np.float32)
    beside = np.concatenate([np.nextafter(bounds, np.float32(-2)), bounds, np.nextafter(bounds, np.float32(2))])
    ends = np.float32([-1.5, -1, np.nextafter(np.float32(-1), 0), 0, np.nextafter(np.float32(1), 0), 1, 1.5])
    rng = np.random.default_rng(0).uniform(-1, 1, 2000).astype(np.float32)
    return np.concatenate([beside, ends, rng]).astype(np.float32)


def test_tanh_outputs_convert_exactly_as_the_reference_saves_them():
    y = _edge_values()
    reference = tf.image.convert_image_dtype((tf.constant(y) + 1) / 2, tf.uint8, saturate=True).numpy()
    formula = np.clip(np.floor(255.5 * ((y.astype(np.float64) + 1) / 2)), 0, 255).astype(np.uint8)
    ours = pix2pix.output_to_rgb(y)
    np.testing.assert_array_equal(ours, reference)
    np.testing.assert_array_equal(registry.image_to_rgb(y, "tanh_image"), reference)
    # The written formula (in float64) agrees off the boundaries, and within float32 rounding on them.
    assert (ours[-2000:] == formula[-2000:]).all()
    assert np.abs(ours.astype(int) - formula).max() <= 1
    # Hand-worked: -1 -> 0, 0 -> floor(127.75) = 127, 1 -> floor(255.5) = 255, beyond the range saturates.
    np.testing.assert_array_equal(pix2pix.output_to_rgb(np.float32([-1.5, -1, 0, 1, 1.5])), [0, 0, 127, 255, 255])
    # Rounding (the old conversion) is a level away on many values: the convention matters.
    assert (np.rint((y + 1) * 127.5).clip(0, 255).astype(np.uint8) != reference).mean() > 0.2


def test_unit_outputs_follow_the_same_convention():
    x = (_edge_values() + 1) / 2
    reference = tf.image.convert_image_dtype(tf.constant(x), tf.uint8, saturate=True).numpy()
    np.testing.assert_array_equal(registry.image_to_rgb(x, "unit_image"), reference)
    np.testing.assert_array_equal(registry.image_to_rgb(np.float32([-3, 0.4, 254.6, 300]), "byte_image"),
                                  [0, 0, 255, 255])
