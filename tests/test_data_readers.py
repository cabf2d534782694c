"""Readers on small on-disk fixtures (hand-built and synthetic), their errors, and the real data."""

import numpy as np
import pytest
from scipy.ndimage import maximum_filter, minimum_filter

from compnn_py.data import colorize, load_split, snap_to_palette
from compnn_py.data.camvid import camvid_pairs
from compnn_py.data.files import read_image, write_image
from compnn_py.data.palettes import FACADES_PALETTE
from compnn_py.data.synthetic import generate, write_dataset


def _ab_fixture(root, split="train", names=("10", "2", "1")):
    """A|B PNGs: A = a photo-like gradient whose value encodes the file, B = facades colour blocks."""
    truth = {}
    for k, name in enumerate(names):
        ids = np.zeros((8, 8), np.uint8)
        ids[:, 4:] = int(name) % 12
        ids[6:, :] = 2
        photo = np.full((8, 8, 3), 10 * (k + 1), np.uint8)
        write_image(root / split / f"{name}.png", np.concatenate([photo, colorize(ids, FACADES_PALETTE)], 1))
        truth[name] = (photo, ids)
    return truth


def test_pix2pix_reader_order_direction_and_labels(tmp_path):
    truth = _ab_fixture(tmp_path)
    seg = load_split("facades_labels", "train", tmp_path, size=8, progress=False)
    assert seg.ids == ["1", "2", "10"]  # numeric, not lexical, order
    for i, name in enumerate(seg.ids):
        np.testing.assert_array_equal(seg.inputs[i], truth[name][0])
        np.testing.assert_array_equal(seg.targets[i], truth[name][1])
    syn = load_split("facades", "train", tmp_path, size=8, progress=False)  # BtoA: labels -> photo
    np.testing.assert_array_equal(syn.targets, seg.inputs)
    np.testing.assert_array_equal(syn.inputs, colorize(seg.targets, FACADES_PALETTE))
    flipped = load_split("facades", "train", tmp_path, size=8, direction="AtoB", progress=False)
    np.testing.assert_array_equal(flipped.inputs, seg.inputs)
    assert len(load_split("facades_labels", "train", tmp_path, size=8, n=2, progress=False)) == 2


def test_pix2pix_resize_keeps_label_values(tmp_path):
    _ab_fixture(tmp_path)
    small = load_split("facades_labels", "train", tmp_path, size=(4, 6), progress=False)
    full = load_split("facades_labels", "train", tmp_path, size=8, progress=False)
    assert small.inputs.shape == (3, 4, 6, 3) and small.targets.shape == (3, 4, 6)
    for a, b in zip(small.targets, full.targets):
        assert set(np.unique(a)) <= set(np.unique(b))


@pytest.mark.parametrize("task", ["cityscapes", "facades", "facades_labels", "maps", "camvid"])
def test_synthetic_png_round_trip_is_exact(tmp_path, task):
    write_dataset(task, tmp_path, counts={"train": 3, "val": 2}, size=(24, 32), seed=5,
                  image_format="png", progress=False)
    for split, n in (("train", 3), ("val", 2)):
        disk = load_split(task, split, tmp_path, size=(24, 32), progress=False)
        mem = generate(task, split, n=n, size=(24, 32), seed=5, progress=False)
        assert disk.ids == mem.ids
        np.testing.assert_array_equal(disk.inputs, mem.inputs)
        np.testing.assert_array_equal(disk.targets, mem.targets)


def test_cityscapes_jpeg_labels_snap_back(tmp_path):
    write_dataset("cityscapes", tmp_path, counts={"val": 4}, size=64, seed=1, progress=False)
    disk = load_split("cityscapes", "val", tmp_path, size=64, progress=False)
    mem = generate("cityscapes", "val", n=4, size=64, seed=1, progress=False)
    assert (disk.targets == mem.targets).mean() > 0.995  # 4:4:4 JPEG: only a few border pixels flip


def test_cityscapes_official_layout(tmp_path):
    write_dataset("cityscapes", tmp_path, counts={"train": 2}, size=(32, 64), seed=2, layout="cityscapes",
                  progress=False)
    disk = load_split("cityscapes", "train", tmp_path, size=(32, 64), progress=False)
    mem = generate("cityscapes", "train", n=2, size=(32, 64), seed=2, progress=False)
    np.testing.assert_array_equal(disk.targets, mem.targets)
    assert disk.meta[0]["city"] == "synth"
    # Hand-made label ids: 7 road -> 0, 26 car -> 13, 0 unlabeled -> 255, 9 parking -> 255, 23 sky -> 10.
    ids = np.array([[7, 26, 0, 9, 23, 23]], np.uint8).repeat(4, 0)
    base = tmp_path / "hand"
    write_image(base / "leftImg8bit/val/x/x_0_0_leftImg8bit.png", np.zeros((4, 6, 3), np.uint8))
    write_image(base / "gtFine/val/x/x_0_0_gtFine_labelIds.png", ids)
    got = load_split("cityscapes", "val", base, size=(4, 6), progress=False).targets[0]
    np.testing.assert_array_equal(got[0], [0, 13, 255, 255, 10, 10])


def test_camvid_lists_are_resolved_under_root(tmp_path):
    write_dataset("camvid", tmp_path, counts={"train": 3}, size=(24, 32), seed=0, progress=False)
    listing = (tmp_path / "train.txt").read_text().split()
    assert listing[0].startswith("/SegNet/CamVid/train/")
    pairs = camvid_pairs(tmp_path, "train")
    assert pairs[0] == (tmp_path / "train" / "synth_00000.png", tmp_path / "trainannot" / "synth_00000.png")
    # Annotations on disk use 11 for void; the reader turns it into 255.
    raw = read_image(tmp_path / "trainannot" / "synth_00000.png", mode="L")
    split = load_split("camvid", "train", tmp_path, size=(24, 32), progress=False)
    np.testing.assert_array_equal(np.where(raw == 11, 255, raw), split.targets[0])
    assert split.meta[0]["sequence"] == "synth"
    (tmp_path / "train.txt").unlink()  # without the list, the folder is listed
    assert load_split("camvid", "train", tmp_path, size=(24, 32), progress=False).ids == split.ids


# --- errors -------------------------------------------------------------------------------------------


def test_missing_split_and_missing_root(tmp_path):
    _ab_fixture(tmp_path)
    with pytest.raises(FileNotFoundError, match="val"):
        load_split("facades", "val", tmp_path, progress=False)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_split("facades", "train", tmp_path / "nowhere", progress=False)
    with pytest.raises(ValueError, match="split"):
        load_split("facades", "dev", tmp_path, progress=False)
    with pytest.raises(ValueError, match="unknown task"):
        load_split("imagenet", "train", tmp_path, progress=False)


def test_empty_folder(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "notes.txt").write_text("no images")
    with pytest.raises(FileNotFoundError, match=r"train.*no \.jpg/\.png"):
        load_split("maps", "train", tmp_path, progress=False)


def test_truncated_png(tmp_path):
    _ab_fixture(tmp_path, names=("1",))
    path = tmp_path / "train" / "1.png"
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(ValueError, match=r"1\.png.*corrupt or truncated"):
        load_split("facades", "train", tmp_path, progress=False)


def test_ab_image_with_odd_width(tmp_path):
    write_image(tmp_path / "train" / "1.png", np.zeros((8, 15, 3), np.uint8))
    with pytest.raises(ValueError, match=r"1\.png.*even width"):
        load_split("maps", "train", tmp_path, progress=False)


def test_camvid_bad_annotations(tmp_path):
    write_dataset("camvid", tmp_path, counts={"val": 1}, size=(8, 8), progress=False)
    annot = tmp_path / "valannot" / "synth_00000.png"
    write_image(annot, np.full((8, 8), 12, np.uint8))
    with pytest.raises(ValueError, match=r"synth_00000\.png.*0\.\.11"):
        load_split("camvid", "val", tmp_path, progress=False)
    write_image(annot, np.zeros((8, 9), np.uint8))
    with pytest.raises(ValueError, match="same size"):
        load_split("camvid", "val", tmp_path, progress=False)
    annot.unlink()
    with pytest.raises(FileNotFoundError, match=r"synth_00000\.png"):
        load_split("camvid", "val", tmp_path, progress=False)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="size"):
        load_split("maps", "train", size=(0, 4))
    with pytest.raises(ValueError, match="n must"):
        load_split("maps", "train", n=0)
    with pytest.raises(ValueError, match="image_format"):
        write_dataset("maps", tmp_path, image_format="bmp")
    with pytest.raises(ValueError, match="layout"):
        write_dataset("facades", tmp_path, layout="cityscapes")


# --- real data ------------------------------------------------------------------------------------------


def test_real_camvid(shared_data):
    root = shared_data / "camvid"
    assert len(camvid_pairs(root, "train")) == 367 and len(camvid_pairs(root, "val")) == 101
    val = load_split("camvid", "val", root, size=(90, 120), progress=False)
    assert len(val) == 101 and val.inputs.shape == (101, 90, 120, 3)
    assert set(np.unique(val.targets).tolist()) <= set(range(11)) | {255}
    full = load_split("camvid", "train", root, n=3, progress=False)
    assert full.inputs.shape == (3, 360, 480, 3) and full.meta[0]["sequence"] == "0001TP"
    raw = read_image(root / "trainannot" / f"{full.ids[0]}.png", mode="L")
    np.testing.assert_array_equal(full.targets[0], np.where(raw == 11, 255, raw))


def test_real_facades_as_pix2pix_ab_jpegs(shared_data, tmp_path):
    """The four real pairs written as Pix2Pix A|B JPEGs (photo | labels) read back as facades_labels."""
    src = shared_data / "facades-samples"
    direct = {}
    for path in sorted(src.glob("*-inputs.png")):
        n = path.name.split("-")[0]
        labels, photo = read_image(path), read_image(src / f"{n}-targets.png")
        write_image(tmp_path / "test" / f"{n}.jpg", np.concatenate([photo, labels], 1))
        direct[n] = snap_to_palette(labels, FACADES_PALETTE)
    split = load_split("facades_labels", "test", tmp_path, progress=False)
    assert split.ids == ["1", "5", "51", "95"] and split.inputs.shape == (4, 256, 256, 3)
    for i, n in enumerate(split.ids):
        interior = minimum_filter(direct[n], 5) == maximum_filter(direct[n], 5)
        assert (split.targets[i][interior] == direct[n][interior]).mean() > 0.99
    assert len(np.unique(split.targets)) <= 12


# --- data safety: undecodable files, empty splits, no absolute paths in metadata ----------------------------


def test_decompression_bomb_is_one_value_error(tmp_path, monkeypatch):
    from PIL import Image
    _ab_fixture(tmp_path, names=("1",))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # the 8x16 fixture now counts as a bomb (> 2x limit)
    with pytest.raises(ValueError, match=r"1\.png: refused, the image is too large to decode safely"):
        load_split("facades", "train", tmp_path, progress=False)


@pytest.mark.parametrize("content", [b"", b"this is not an image", b"\x89PNG\r\n\x1a\n" + b"\0" * 40])
def test_undecodable_image_names_the_file(tmp_path, content):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "7.png").write_bytes(content)
    with pytest.raises(ValueError, match=r"train/7\.png: corrupt or truncated image"):
        load_split("maps", "train", tmp_path, progress=False)


def test_label_image_of_the_wrong_mode(tmp_path):
    write_image(tmp_path / "rgb.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match=r"rgb\.png: expected an 8-bit single-channel label image, got mode RGB"):
        read_image(tmp_path / "rgb.png", mode="L")


def test_has_split_ignores_empty_folders(tmp_path):
    from compnn_py.data import has_split

    write_dataset("camvid", tmp_path / "cv", counts={"train": 1, "val": 1}, size=(8, 8), progress=False)
    (tmp_path / "cv" / "test").mkdir()
    (tmp_path / "cv" / "testannot").mkdir()
    assert [has_split("camvid", s, tmp_path / "cv") for s in ("train", "val", "test")] == [True, True, False]
    (tmp_path / "cv" / "test.txt").write_text("\n \n")  # a blank list is no split either
    assert not has_split("camvid", "test", tmp_path / "cv")
    (tmp_path / "cv" / "test.txt").unlink()
    write_image(tmp_path / "cv" / "test" / "a.png", np.zeros((8, 8, 3), np.uint8))
    assert has_split("camvid", "test", tmp_path / "cv")

    _ab_fixture(tmp_path / "ab")
    (tmp_path / "ab" / "val").mkdir()
    (tmp_path / "ab" / "val" / "readme.txt").write_text("no images")
    assert has_split("facades", "train", tmp_path / "ab") and not has_split("facades", "val", tmp_path / "ab")
    assert not has_split("facades", "test", tmp_path / "ab")

    write_dataset("cityscapes", tmp_path / "cs", counts={"train": 1}, size=(8, 16), layout="cityscapes",
                  progress=False)
    (tmp_path / "cs" / "leftImg8bit" / "val" / "city").mkdir(parents=True)
    assert has_split("cityscapes", "train", tmp_path / "cs") and not has_split("cityscapes", "val", tmp_path / "cs")
    assert has_split("maps", "test", None)  # synthetic data has every split
    with pytest.raises(ValueError, match="split"):
        has_split("maps", "dev", tmp_path)


def test_metadata_records_files_relative_to_the_root(tmp_path):
    write_dataset("camvid", tmp_path / "cv", counts={"train": 2}, size=(8, 8), progress=False)
    assert load_split("camvid", "train", tmp_path / "cv", progress=False).meta[1]["file"] == "train/synth_00001.png"
    (tmp_path / "cv" / "train.txt").unlink()
    assert load_split("camvid", "train", tmp_path / "cv", progress=False).meta[0]["file"] == "train/synth_00000.png"
    _ab_fixture(tmp_path / "ab")
    assert [m["file"] for m in load_split("maps", "train", tmp_path / "ab", progress=False).meta] == \
        ["train/1.png", "train/2.png", "train/10.png"]
    write_dataset("cityscapes", tmp_path / "cs", counts={"val": 1}, size=(8, 16), layout="cityscapes",
                  progress=False)
    meta = load_split("cityscapes", "val", tmp_path / "cs", progress=False).meta[0]
    assert meta["file"].startswith("leftImg8bit/val/synth/") and meta["file"].endswith("_leftImg8bit.png")


def test_16_bit_grayscale_photos_are_scaled_not_clipped(tmp_path):
    """Pillow's convert("RGB") clips 16-bit values to 255 (a photo turns white); the reader scales them."""
    from PIL import Image

    values = np.array([[0, 256, 32767, 32896], [65279, 65535, 128, 129]], np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    got = read_image(tmp_path / "g16.png")
    want = np.floor(values.astype(np.float64) * 255 / 65535 + 0.5).astype(np.uint8)  # round(v / 257)
    assert got.shape == (2, 4, 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, np.repeat(want[..., None], 3, -1))
    np.testing.assert_array_equal(want, [[0, 1, 127, 128], [254, 255, 0, 1]])  # hand-worked
    # A 16-bit label image keeps its ids; ids that do not fit 8 bits are refused, naming the file.
    Image.fromarray(np.array([[0, 3], [11, 7]], np.uint16)).save(tmp_path / "l16.png")
    np.testing.assert_array_equal(read_image(tmp_path / "l16.png", mode="L"), [[0, 3], [11, 7]])
    Image.fromarray(np.array([[0, 300]], np.uint16)).save(tmp_path / "big.png")
    with pytest.raises(ValueError, match=r"big\.png: a 16-bit label image must hold ids 0\.\.255"):
        read_image(tmp_path / "big.png", mode="L")


def test_camvid_list_pointing_outside_the_data_dir_is_refused(tmp_path):
    root = tmp_path / "camvid"
    write_dataset("camvid", root, counts={"train": 2}, size=(24, 32), seed=0, progress=False)
    write_image(tmp_path / "secret.png", np.zeros((24, 32, 3), np.uint8))  # outside the data_dir
    lines = (root / "train.txt").read_text().splitlines()
    lines[1] = "/SegNet/CamVid/../secret.png /SegNet/CamVid/trainannot/" + lines[1].split("/")[-1]
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"train\.txt:2: '/SegNet/CamVid/\.\./secret\.png' does not name a file "
                                         r"inside the data_dir") as err:
        load_split("camvid", "train", root, size=(24, 32), progress=False)
    assert "\n" not in str(err.value)
