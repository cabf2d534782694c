"""Stores never crash their reader or writer with a signal, and never block: a full disk, a file
truncated under an open store, a FIFO named like a layer file, a file of the wrong size, and values
float16 cannot hold each give one clear line (or, for underflow, a recorded warning)."""

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from compnn_py import store as store_mod
from compnn_py.store import ActivationStore, StoreError, StoreWarning

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(ROOT))


def _store(path, n=4, layer=(4, 4, 8), values=None):
    with ActivationStore.create(path, n_images=n, layers={"fine": layer}, image_shape=(8, 8, 3)) as w:
        for i in range(n):
            w.write(i, activations={"fine": np.full(layer, 0.5, np.float32) if values is None else values},
                    image=np.full((8, 8, 3), i, np.uint8))
    return ActivationStore.open(path)


def test_a_store_larger_than_the_free_space_fails_with_one_line(tmp_path, monkeypatch):
    class Full:
        f_bavail, f_frsize = 10, 4096

    monkeypatch.setattr(store_mod.os, "statvfs", lambda p: Full())
    with pytest.raises(StoreError, match=r"needs \d+ bytes, 40960 are free") as e:
        _store(tmp_path / "s", layer=(64, 64, 8))
    assert str(tmp_path / "s") in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "s").exists() and not list(tmp_path.glob(".s.tmp-*"))


def test_a_disk_filling_up_meanwhile_fails_at_the_reservation(tmp_path, monkeypatch):
    def enospc(fd, offset, size):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_mod.os, "posix_fallocate", enospc)
    with pytest.raises(StoreError, match=r"fine\.npy: no space for its \d+ bytes"):
        _store(tmp_path / "s")
    assert not list(tmp_path.glob(".s.tmp-*"))


def test_a_real_full_disk_is_an_error_not_sigbus(tmp_path):
    """On a 1 MiB tmpfs (needs permission to mount; skipped otherwise) a 4 MiB store is refused."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        code = textwrap.dedent(f"""
            import numpy as np, sys
            from compnn_py.store import ActivationStore, StoreError
            try:
                with ActivationStore.create({str(mnt / 's')!r}, n_images=16, layers={{"fine": (64, 64, 16)}}) as w:
                    for i in range(16):
                        w.write(i, activations={{"fine": np.ones((64, 64, 16), np.float32)}})
            except StoreError as e:
                print(e); sys.exit(3)
        """)
        r = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=300)
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)
    assert r.returncode == 3, (r.returncode, r.stderr[-2000:])
    assert "bytes" in r.stdout and str(mnt / "s") in r.stdout


def test_a_file_truncated_while_a_reader_reads_gives_an_error_not_sigbus(tmp_path):
    _store(tmp_path / "s", n=64, layer=(16, 16, 32))
    code = textwrap.dedent(f"""
        import sys, time
        import numpy as np
        from compnn_py.store import ActivationStore, StoreError
        s = ActivationStore.open({str(tmp_path / 's')!r})
        print("READY", flush=True)
        deadline = time.monotonic() + 120
        i = 0
        try:
            while time.monotonic() < deadline:
                total = float(np.asarray(s.layer("fine")[i % 64]).sum()) + float(s.images[i % 64].sum())
                total += float(s.layer("fine")[(i % 60):(i % 60) + 4].sum())
                i += 1
        except StoreError as e:
            print("STOREERROR", e, flush=True); sys.exit(3)
        sys.exit(4)  # never saw the truncation
    """)
    child = subprocess.Popen([sys.executable, "-c", code], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout.readline().strip() == "READY"
        os.truncate(tmp_path / "s" / "fine.npy", 4096)
        out, err = child.communicate(timeout=300)
    finally:
        child.kill()
    assert child.returncode == 3, (child.returncode, err[-2000:])
    assert "truncated" in out or "changed size" in out


def test_a_fifo_named_like_a_layer_file_is_refused_without_blocking(tmp_path):
    _store(tmp_path / "s")
    layer = tmp_path / "s" / "fine.npy"
    layer.unlink()
    os.mkfifo(layer)
    code = f"from compnn_py.store import ActivationStore; ActivationStore.open({str(tmp_path / 's')!r})"
    r = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "is not a regular file" in r.stderr.splitlines()[-1]


def test_a_file_longer_than_its_header_says_is_refused(tmp_path):
    _store(tmp_path / "s")
    with open(tmp_path / "s" / "fine.npy", "ab") as f:
        f.write(b"\0" * 64)
    with pytest.raises(StoreError, match="fine.npy is corrupt or truncated: has"):
        ActivationStore.open(tmp_path / "s")


def test_float16_underflow_is_warned_and_recorded(tmp_path):
    values = np.full((4, 4, 8), 0.5, np.float32)
    values[0, 0, :3] = 1e-9          # rounds to 0 in float16
    values[1, 1, 0] = 1e-6           # a float16 subnormal: kept (not zero)
    with pytest.warns(StoreWarning, match=r"layer 'fine': 12 of 512 values underflow float16"):
        s = _store(tmp_path / "s", values=values)
    assert s.layer_meta("fine")["float16_underflow"] == 12
    assert float(s.layer("fine")[0][1, 1, 0]) > 0 and float(s.layer("fine")[0][0, 0, 0]) == 0.0


def test_row_reads_equal_the_memmap(tmp_path):
    s = _store(tmp_path / "s")
    fine = np.asarray(s.layer("fine"))
    for index in (0, -1, slice(1, 3), slice(None), (2, 1), (slice(0, 2), 0, 1), [0, 2]):
        np.testing.assert_array_equal(s.layer("fine")[index], fine[index])
    assert s.images[3].shape == (8, 8, 3) and int(s.images[3][0, 0, 0]) == 3
    with pytest.raises(IndexError):
        s.images[4]
