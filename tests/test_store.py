"""ActivationStore: round trip, atomic publication, and the errors a user meets."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from compnn_py.fsio import Busy
from compnn_py.store import ActivationStore, StoreError


def _make(path, rng, n=3, dtype="float16", **kw):
    acts = rng.standard_normal((n, 4, 5, 6)).astype(np.float32)
    small = rng.standard_normal((n, 1, 1, 8)).astype(np.float32)
    imgs = rng.integers(0, 256, (n, 8, 10, 3), dtype=np.uint8)
    labels = rng.integers(0, 5, (n, 8, 10), dtype=np.uint8)
    kw.setdefault("metadata", {"num_classes": 5})
    w = ActivationStore.create(path, n_images=n, layers={"dec": (4, 5, 6), "enc": (1, 1, 8)},
                               image_shape=(8, 10, 3), label_shape=(8, 10), output_shape=(8, 10),
                               image_ids=[f"img{i}" for i in range(n)], model="m", task="t", dtype=dtype,
                               layer_meta={"dec": {"kernel": 4, "stride": 2}},
                               image_meta=[{"sequence": "A" if i % 2 else "B"} for i in range(n)],
                               **kw)
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
    with pytest.raises(StoreError, match="does not exist"):
        ActivationStore.open(tmp_path / "s")
    assert list(tmp_path.iterdir()) == []  # the pending directory and the lock are gone too
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "dec.npy").write_bytes(b"")  # an older compnn's interrupted export
    with pytest.raises(StoreError, match=r"half has no manifest\.json: not a store, or an export that was "
                                         "interrupted"):
        ActivationStore.open(tmp_path / "half")


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


# --- data safety: where stores are written, who writes them, what they accept ---------------------------


def _fill(w, acts, small, imgs, labels, rows=None):
    for i in range(len(acts)) if rows is None else rows:
        w.write(i, activations={"dec": acts[i], "enc": small[i]}, image=imgs[i], label=labels[i],
                cnn_output=labels[i])


def _full(path, rng, **kw):
    w, *data = _make(path, rng, **kw)
    _fill(w, *data)
    w.close()
    return data


def test_overwrite_never_deletes_files_the_store_does_not_list(tmp_path, rng):
    path = tmp_path / "s"
    acts = _full(path, rng)[0]
    (path / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match=r"cannot replace the store at .*s: .*\(notes\.txt\)"):
        _make(path, rng, overwrite=True)
    assert (path / "notes.txt").read_text() == "mine"
    np.testing.assert_array_equal(ActivationStore.open(path).layer("dec"), acts.astype(np.float16))


def test_overwrite_keeps_the_old_store_until_the_new_one_is_complete(tmp_path, rng):
    path = tmp_path / "s"
    old = _full(path, rng)[0]
    w, acts, small, imgs, labels = _make(path, np.random.default_rng(1), overwrite=True)
    _fill(w, acts, small, imgs, labels, rows=[0])
    np.testing.assert_array_equal(ActivationStore.open(path).layer("dec"), old.astype(np.float16))
    w.abort()  # a failed re-export leaves the old store as it was
    np.testing.assert_array_equal(ActivationStore.open(path).layer("dec"), old.astype(np.float16))
    w, acts, small, imgs, labels = _make(path, np.random.default_rng(1), overwrite=True)
    _fill(w, acts, small, imgs, labels)
    assert np.array_equal(w.close().layer("dec"), acts.astype(np.float16))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # no temp, old copy or lock left behind


def test_a_directory_that_is_not_a_store_is_refused(tmp_path, rng):
    user = tmp_path / "photos"
    user.mkdir()
    (user / "images.npy").write_bytes(b"precious")
    for overwrite in (False, True):
        with pytest.raises(StoreError, match=r"photos: the directory is not empty and holds no store \(images\.npy\)"):
            _make(user, rng, overwrite=overwrite)
    assert (user / "images.npy").read_bytes() == b"precious"
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="not a directory"):
        _make(tmp_path / "file", rng)
    (tmp_path / "empty").mkdir()  # an empty directory is fine
    _full(tmp_path / "empty", rng)
    assert len(ActivationStore.open(tmp_path / "empty")) == 3


def test_overwrite_refuses_a_damaged_manifest(tmp_path, rng):
    path = tmp_path / "s"
    _full(path, rng)
    (path / "manifest.json").write_text("{oops")
    with pytest.raises(StoreError, match=r"cannot replace .*s: .*manifest\.json: corrupt store manifest"):
        _make(path, rng, overwrite=True)
    assert (path / "dec.npy").exists()


def test_second_writer_is_busy(tmp_path, rng):
    w, *data = _make(tmp_path / "s", rng)
    with pytest.raises(Busy, match=rf"activation store .*s is in use by another process \(pid {os.getpid()}, "):
        _make(tmp_path / "s", rng)
    _fill(w, *data)
    w.close()  # the first writer is unaffected, and the lock is free afterwards
    _full(tmp_path / "s", rng, overwrite=True)


_WORKER = textwrap.dedent("""
    import sys
    import numpy as np
    from compnn_py.store import ActivationStore
    rng = np.random.default_rng(0)
    acts = rng.standard_normal((3, 4, 5, 6)).astype(np.float32)
    small = rng.standard_normal((3, 1, 1, 8)).astype(np.float32)
    imgs = rng.integers(0, 256, (3, 8, 10, 3), dtype=np.uint8)
    labels = rng.integers(0, 5, (3, 8, 10), dtype=np.uint8)
    w = ActivationStore.attach(sys.argv[1])
    for i in map(int, sys.argv[2:]):
        w.write(i, activations={"dec": acts[i], "enc": small[i]}, image=imgs[i], label=labels[i], cnn_output=labels[i])
    assert w.close() is None
""")


def test_processes_fill_one_pending_store(tmp_path):
    path = tmp_path / "s"
    w, acts, small, imgs, labels = _make(path, np.random.default_rng(0))  # same data as _WORKER's
    assert w.pending.parent == tmp_path and w.pending.name.startswith(".s.tmp-")
    _fill(w, acts, small, imgs, labels, rows=[0])
    subprocess.run([sys.executable, "-c", _WORKER, str(w.pending), "1"], check=True)
    assert not path.exists()  # an attached writer never publishes
    with pytest.raises(StoreError, match=r"incomplete; rows never written: layer:dec: 2; layer:enc: 2; images: 2"):
        w.close()
    aborted = ActivationStore.attach(w.pending)
    aborted.write(2, image=imgs[2])
    aborted.abort()  # records nothing
    with pytest.raises(StoreError, match="images: 2"):
        w.close()
    subprocess.run([sys.executable, "-c", _WORKER, str(w.pending), "2"], check=True)
    s = w.close()
    np.testing.assert_array_equal(s.layer("dec"), acts.astype(np.float16))
    np.testing.assert_array_equal(s.images, imgs)
    np.testing.assert_array_equal(s.cnn_outputs, labels)
    assert sorted(p.name for p in path.iterdir()) == sorted(
        ["manifest.json", "dec.npy", "enc.npy", "images.npy", "labels.npy", "cnn_outputs.npy"])
    with pytest.raises(StoreError, match="not a pending store"):
        ActivationStore.attach(w.pending)


@pytest.mark.parametrize("bad, match", [
    (dict(image=np.full((8, 10, 3), 0.5)), r"images for row 0 must be integers in 0\.\.255 .*float64"),
    (dict(image=np.full((8, 10, 3), 255.0)), r"images .*must be integers in 0\.\.255"),
    (dict(label=np.full((8, 10), -1.0)), r"labels .*must be integers in 0\.\.255"),
    (dict(label=np.full((8, 10), -1)), r"labels for row 0 has values -1\.\.-1 outside 0\.\.255"),
    (dict(cnn_output=np.full((8, 10), 300.0)), r"cnn_outputs .*0\.\.255"),
    (dict(label=np.full((8, 10), True)), r"labels .*integers"),
    (dict(activations={"dec": np.full((4, 5, 6), 70000)}), "float16"),
])
def test_uint8_arrays_reject_what_a_cast_would_corrupt(tmp_path, rng, bad, match):
    w, *_ = _make(tmp_path / "s", rng)
    with pytest.raises(ValueError, match=match):
        w.write(0, **bad)
    w.write(0, image=np.full((8, 10, 3), 255, np.int64), label=np.zeros((8, 10), np.int32))  # in range: fine
    w.abort()


def _damage(path, edit):
    m = json.loads((path / "manifest.json").read_text())
    edit(m)
    (path / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize("edit, match", [
    (lambda m: m.pop("n_images"), r"manifest lacks \['n_images'\]"),
    (lambda m: m.pop("layers"), r"manifest lacks \['layers'\]"),
    (lambda m: m.update(n_images=2), r"image_ids has 3 entries .* for n_images=2"),
    (lambda m: m.update(image_ids=["a", "b"]), r"image_ids has 2 entries"),
    (lambda m: m.update(image_meta=[{}]), "image_meta must be null or a list of 3 objects"),
    (lambda m: m["layers"]["dec"].update(file="../outside.npy"), r"file '\.\./outside\.npy'; expected a plain"),
    (lambda m: m["layers"]["dec"].update(file="/tmp/x.npy"), "expected a plain .npy name"),
    (lambda m: m["layers"]["dec"].update(file="sub/dec.npy"), "expected a plain .npy name"),
    (lambda m: m["arrays"]["images"].update(file="dec.npy"), "listed twice"),
    (lambda m: m["layers"]["dec"].update(shape=[2, 4, 5, 6]), r"'layer:dec' has 2 rows but n_images is 3"),
    (lambda m: m["layers"]["dec"].update(shape=[3, 4, 5]), r"'layer:dec' has shape \[3, 4, 5\]"),
    (lambda m: m["layers"]["dec"].update(shape=[3, 4, 5, 7]), r"dec\.npy is float16\[3, 4, 5, 6\], manifest says"),
    (lambda m: m["layers"]["dec"].update(dtype="int64"), "dtype 'int64'"),
    (lambda m: m["layers"]["dec"].pop("dtype"), "must be an object with file, shape and dtype"),
    (lambda m: m["arrays"].update(extra=m["arrays"]["labels"]), "unknown arrays"),
    (lambda m: m.update(label_kind="boxes"), "label_kind"),
])
def test_damaged_manifest_is_one_store_error(tmp_path, rng, edit, match):
    path = tmp_path / "s"
    _full(path, rng)
    (tmp_path / "outside.npy").write_bytes((path / "dec.npy").read_bytes())
    _damage(path, edit)
    with pytest.raises(StoreError, match=match) as err:
        ActivationStore.open(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


@pytest.mark.parametrize("cut", [0, 10, 128, -1])
def test_truncated_arrays_are_store_errors(tmp_path, rng, cut):
    path = tmp_path / "s"
    _full(path, rng)
    data = (path / "enc.npy").read_bytes()
    (path / "enc.npy").write_bytes(data[:cut])
    with pytest.raises(StoreError, match=r"enc\.npy is corrupt or truncated"):
        ActivationStore.open(path)


def test_metadata_is_strict_json_without_absolute_paths(tmp_path, rng):
    path = tmp_path / "s"
    _full(path, rng, metadata={"loss": float("nan"), "size": np.int64(3)})
    text = (path / "manifest.json").read_text()
    assert "NaN" not in text
    assert ActivationStore.open(path).metadata == {"loss": None, "size": 3}
    with pytest.raises(ValueError, match=r"image_meta\[1\]\['file'\] hold absolute paths; .*relative"):
        ActivationStore.create(tmp_path / "t", n_images=2, layers={},
                               image_meta=[{"file": "a.png"}, {"file": str(tmp_path / "b.png")}])
    with pytest.raises(ValueError, match=r"metadata\['config'\]\['data_dir'\]"):
        ActivationStore.create(tmp_path / "t", n_images=2, layers={}, metadata={"config": {"data_dir": "/data"}})
    assert not (tmp_path / "t").exists()


def test_a_dead_writers_pending_directory_is_cleaned_up(tmp_path):
    code = ("import os, sys; from compnn_py.store import ActivationStore\n"
            "w = ActivationStore.create(sys.argv[1], n_images=2, layers={'a': (1, 1, 2)})\n"
            "print(w.pending, flush=True); os._exit(0)  # killed mid-export: no close, no abort")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "s")], check=True, capture_output=True, text=True)
    pending = Path(out.stdout.strip())
    assert pending.is_dir() and (pending / "a.npy").exists()
    (tmp_path / ".other.tmp-1-abc").mkdir()  # someone else's temporary directory: not ours to remove
    w = ActivationStore.create(tmp_path / "s", n_images=2, layers={"a": (1, 1, 2)})  # the lock died with it
    assert not pending.exists() and (tmp_path / ".other.tmp-1-abc").is_dir()
    w.abort()
