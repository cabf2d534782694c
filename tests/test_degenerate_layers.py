"""Degenerate matched layers (constant over the training images) are found before export: a dead global
layer falls back to the deepest live one above the coarse layer (said in the export's metadata, metrics.json
and the report); a dead coarse or fine layer is one error naming it; a global layer the user named is kept."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from tf_models import export, pix2pix, registry  # noqa: E402
from tf_models.export import _Spread  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _images(n, size, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_the_rule_by_hand():
    def degenerate(rows):
        sp = _Spread(export.DEGENERATE_RTOL)
        sp.update(np.asarray(rows, np.float32))
        return not sp.varies

    assert degenerate(np.zeros((5, 3)))                                   # all zero
    assert degenerate([[1.0, -2.0, 3.0]] * 4)                             # identical
    assert degenerate([[1000.0, 5.0], [1000.5, 5.0], [999.5, 5.2]])       # within 1e-3 of the largest value
    assert not degenerate([[1000.0, 5.0], [1002.0, 5.0]])                 # 2e-3: varies
    assert not degenerate([[0.0, 0.0], [0.0, 1e-30]])                     # one image not zero: varies
    assert not degenerate([[1.0, 1.0]] * 9 + [[1.0, 1.1]])                # the last image differs


def test_a_dead_unet_bottleneck_falls_back_to_encoder_7():
    """pix2pix-tensorflow's own U-net with batch 1: BN of the 1x1 bottleneck over one sample returns its
    offset, so encoder_8 is the same for every image. Today's code used it as the global descriptor."""
    keras.utils.set_random_seed(0)
    model = pix2pix.build_generator(256, ngf=2, depth=8, innermost_norm=True, bn_inference="image")
    arch = registry.get("pix2pix")
    x = _images(6, 256)
    acts = np.asarray(keras.Model(model.inputs[0], model.get_layer("encoder_8").output)(x.astype(np.float32)))
    assert np.ptp(acts, axis=0).max() == 0.0  # the property the test builds on: really constant
    assert arch.match_spec(model)["global"] == "encoder_8"
    assert arch.global_fallbacks(model) == ["encoder_7", "encoder_6", "encoder_5", "encoder_4", "encoder_3"]
    assert export.degenerate_layers(model, x, ["encoder_8", "encoder_7", "decoder_1_input"]) == ["encoder_8"]

    fixed, record = export.resolve_match_layers(model, arch, x)
    ms = fixed.match_spec(model)
    assert ms["global"] == "encoder_7" and ms["stride"]["encoder_7"] == 128 and ms["kernel"]["encoder_7"] == 4
    assert record["layer"] == "encoder_7" and record["named"] == "encoder_8" and record["degenerate"] == ["encoder_8"]
    spec = fixed.analysis_spec(model)
    assert spec["global_layer"] == record and "encoder_7" in spec["used_layers"]
    assert "encoder_8" not in spec["used_layers"]
    # Named by the user (--match_layers): kept, with the finding recorded.
    _, kept = export.resolve_match_layers(model, arch, x, user_named=True)
    assert kept["layer"] == "encoder_8" and kept["degenerate"] == ["encoder_8"]


def test_a_dead_fine_layer_is_one_error_naming_it():
    inp = keras.Input((16, 16, 3))
    coarse = keras.layers.Conv2D(4, 3, strides=2, padding="same", name="coarse")(inp)
    glob = keras.layers.Conv2D(4, 3, strides=2, padding="same", name="glob")(coarse)
    dead = keras.layers.Conv2D(4, 1, kernel_initializer="zeros", name="dead")(inp)  # zero for every image
    up = keras.layers.UpSampling2D(4, name="up")(glob)
    out = keras.layers.Conv2D(5, 1, name="logits")(keras.layers.Concatenate(name="cat")([dead, up]))
    model = keras.Model(inp, out, name="net")
    arch = registry.custom(model, "global:glob,coarse:coarse,fine:dead", kind="segmentation")
    with pytest.raises(ValueError, match=r"^the fine layer dead of net is constant across the 4 training "
                                         r"images \(degenerate: .*\); match at another layer") as err:
        export.resolve_match_layers(model, arch, _images(4, 16), user_named=True)
    assert "\n" not in str(err.value)
    fine = registry.custom(model, "global:glob,coarse:coarse,fine:up", kind="segmentation")
    assert export.resolve_match_layers(model, fine, _images(4, 16), user_named=True)[1]["degenerate"] == []


def test_the_driver_reports_the_global_layer_it_used(tmp_path):
    """End to end on a compnn U-net (.keras) whose bottleneck is dead: export, metrics.json and the
    report's Table 1 name encoder_4 (depth 5), and the shortlist is no longer the first S rows."""
    from compnn_py import match
    from compnn_py.store import ActivationStore

    keras.utils.set_random_seed(1)
    model = pix2pix.build_generator(32, ngf=4, depth=5, innermost_norm=True, bn_inference="image")
    path = tmp_path / "unet.keras"
    model.save(path)
    out = tmp_path / "run"
    res = subprocess.run([sys.executable, "-m", "experiments.run", "--task=facades", "--size=32,32", "--n_train=8",
                          "--n_query=2", "--shortlist=3", "--match_method=shortlist", f"--checkpoint={path}",
                          f"--out_dir={out}"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "global layer encoder_5 is constant across the 8 training images; using encoder_4" in res.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["global_layer"]["layer"] == "encoder_4" and metrics["global_layer"]["named"] == "encoder_5"
    assert "Global Bottleneck NN (SS) at encoder_4 (encoder_5 is constant over the training images)" in \
        (out / "report.html").read_text()
    export_dir = next((out / "cache").glob("export-*"))
    assert json.loads((export_dir / "export.json").read_text())["global_layer"]["layer"] == "encoder_4"
    db, query = (ActivationStore.open(export_dir / s) for s in ("train", "query"))
    assert db.metadata["match_spec"]["global"] == "encoder_4"
    lists = [sorted(match.global_shortlist(query.layer("encoder_4")[i], db.layer("encoder_4"), 3).rows.tolist())
             for i in range(len(query))]
    assert any(rows != [0, 1, 2] for rows in lists), lists
