"""ActivationStore: round trip, atomic publication, and the errors a user meets."""

import json

import numpy as np
import pytest

from compnn_py.store import ActivationStore, StoreError


def _make(path, rng, n=3, dtype="float16", **kw):
    acts = rng.standard_normal((n, 4, 5, 6)).astype(np.float32)
    small = rng.standard_normal((n, 1, 1, 8)).astype(np.float32)
    imgs = rng.integers(0, 256, (n, 8, 10, 3), dtype=np.uint8)
    labels = rng.integers(0, 5, (n, 8, 10), dtype=np.uint8)
    w = ActivationStore.create(path, n_images=n, layers={"dec": (4, 5, 6), "enc": (1, 1, 8)},
                               image_shape=(8, 10, 3), label_shape=(8, 10), output_shape=(8, 10),
                               image_ids=[f"img{i}" for i in range(n)], model="m", task="t", dtype=dtype,
                               layer_meta={"dec": {"kernel": 4, "stride": 2}},
                               image_meta=[{"sequence": "A" if i % 2 else "B"} for i in range(n)],
                               metadata={"num_classes": 5}, **kw)
    return w, acts, small, imgs, labels


def test_round_trip_values_and_metadata(tmp_path, rng):
    w, acts, small, imgs, labels = _make(tmp_path / "s", rng)
    with w:
        for i in range(3):
            w.write(i, activations={"dec": acts[i], "enc": small[i]}, image=imgs[i], label=labels[i])
            w.write(i, cnn_output=labels[i][::-1])
    s = ActivationStore.open(tmp_path / "s")
    assert len(s) == 3 and s.layer_names == ["dec", "enc"]
    assert s.layer("dec").dtype == np.float16
    np.testing.assert_array_equal(s.layer("dec"), acts.astype(np.float16))
    np.testing.assert_array_equal(s.images, imgs)
    np.testing.assert_array_equal(s.labels, labels)
    np.testing.assert_array_equal(s.cnn_outputs, labels[:, ::-1])
    assert s.layer_meta("dec") == {"shape": [3, 4, 5, 6], "dtype": "float16", "kernel": 4, "stride": 2}
    assert s.metadata["num_classes"] == 5 and s.image_ids == ["img0", "img1", "img2"]
    assert s.rows_where(lambda m, _id: m["sequence"] == "A").tolist() == [1]
    assert isinstance(s.layer("dec"), np.memmap)


def test_float32_store_is_exact(tmp_path, rng):
    w, acts, small, imgs, labels = _make(tmp_path / "s", rng, dtype="float32")
    for i in range(3):
        w.write(i, activations={"dec": acts[i], "enc": small[i]}, image=imgs[i], label=labels[i], cnn_output=labels[i])
    s = w.close()
    np.testing.assert_array_equal(s.layer("dec"), acts)


def test_interrupted_export_never_opens(tmp_path, rng):
    w, acts, small, imgs, labels = _make(tmp_path / "s", rng)
    with pytest.raises(RuntimeError):
        with w:
            w.write(0, activations={"dec": acts[0], "enc": small[0]}, image=imgs[0], label=labels[0])
            raise RuntimeError("killed")
    with pytest.raises(StoreError, match="interrupted"):
        ActivationStore.open(tmp_path / "s")


def test_close_refuses_missing_rows(tmp_path, rng):
    w, acts, small, imgs, labels = _make(tmp_path / "s", rng)
    w.write(0, activations={"dec": acts[0], "enc": small[0]}, image=imgs[0], label=labels[0], cnn_output=labels[0])
    with pytest.raises(StoreError, match="incomplete"):
        w.close()
    assert not (tmp_path / "s" / "manifest.json").exists()


@pytest.mark.parametrize("bad, match", [
    (dict(activations={"dec": np.zeros((4, 5, 7))}), "shape"),
    (dict(activations={"nope": np.zeros((4, 5, 6))}), "not part"),
    (dict(activations={"dec": np.full((4, 5, 6), np.nan)}), "NaN"),
    (dict(activations={"dec": np.full((4, 5, 6), 1e6)}), "float16"),
    (dict(label=np.full((8, 10), 300)), "uint8"),
])
def test_bad_writes_name_the_problem(tmp_path, rng, bad, match):
    w, *_ = _make(tmp_path / "s", rng)
    with pytest.raises(ValueError, match=match):
        w.write(0, **bad)


def test_create_validation(tmp_path):
    with pytest.raises(ValueError, match="n_images"):
        ActivationStore.create(tmp_path / "a", n_images=0, layers={})
    with pytest.raises(ValueError, match="image_ids"):
        ActivationStore.create(tmp_path / "a", n_images=2, layers={}, image_ids=["x", "x"])
    with pytest.raises(ValueError, match="dtype"):
        ActivationStore.create(tmp_path / "a", n_images=2, layers={}, dtype="int8")
    with pytest.raises(ValueError, match="label_kind"):
        ActivationStore.create(tmp_path / "a", n_images=2, layers={}, label_kind="boxes")


def test_existing_store_is_not_overwritten_by_accident(tmp_path, rng):
    w, acts, small, imgs, labels = _make(tmp_path / "s", rng)
    for i in range(3):
        w.write(i, activations={"dec": acts[i], "enc": small[i]}, image=imgs[i], label=labels[i], cnn_output=labels[i])
    w.close()
    with pytest.raises(StoreError, match="already exists"):
        _make(tmp_path / "s", rng)
    ActivationStore.open(tmp_path / "s")  # still intact


def test_corrupt_stores_are_named(tmp_path, rng):
    w, acts, small, imgs, labels = _make(tmp_path / "s", rng)
    for i in range(3):
        w.write(i, activations={"dec": acts[i], "enc": small[i]}, image=imgs[i], label=labels[i], cnn_output=labels[i])
    w.close()
    path = tmp_path / "s"
    data = (path / "dec.npy").read_bytes()
    (path / "dec.npy").write_bytes(data[: len(data) // 2])
    with pytest.raises(StoreError, match="dec.npy"):
        ActivationStore.open(path)
    (path / "dec.npy").unlink()
    with pytest.raises(StoreError, match="missing"):
        ActivationStore.open(path)
    m = json.loads((path / "manifest.json").read_text())
    m["format_version"] = 99
    (path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(StoreError, match="version"):
        ActivationStore.open(path)
    (path / "manifest.json").write_text("{not json")
    with pytest.raises(StoreError, match="corrupt"):
        ActivationStore.open(path)
    with pytest.raises(StoreError, match="does not exist"):
        ActivationStore.open(tmp_path / "nowhere")
