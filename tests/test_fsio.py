"""compnn_py.fsio: locks across processes, atomic writes, strict JSON, directory publication."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from compnn_py.fsio import (Busy, CorruptFile, exclusive_lock, json_safe, publish_dir, read_json, temp_sibling,
                            write_atomic, write_json)

_HOLD = textwrap.dedent("""
    import sys, time
    from compnn_py.fsio import exclusive_lock
    with exclusive_lock(sys.argv[1], "the test store"):
        print("locked", flush=True)
        sys.stdin.readline()
""")


def _holder(lock):
    """A child process that holds `lock` until its stdin is closed."""
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(lock)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_lock_contention_across_processes(tmp_path):
    lock = tmp_path / ".lock"
    proc = _holder(lock)
    try:
        with pytest.raises(Busy, match=rf"the test store is in use by another process \(pid {proc.pid}, started "
                                       r"\d{4}-.*\); wait for it or use another directory"):
            with exclusive_lock(lock, "the test store"):
                pass
        assert lock.exists()  # the holder's file is left alone
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
    assert proc.returncode == 0
    assert not lock.exists()  # released and removed by its holder
    with exclusive_lock(lock, "the test store"):  # free again
        assert lock.read_text().split()[0] == str(os.getpid())


def test_lock_is_released_when_the_holder_dies(tmp_path):
    lock = tmp_path / "sub" / ".lock"
    proc = _holder(lock)
    proc.kill()
    proc.wait(timeout=30)
    with exclusive_lock(lock, "x"):  # a crash leaves no stale lock
        pass


def test_lock_in_one_process_is_exclusive_too(tmp_path):
    with exclusive_lock(tmp_path / ".lock", "dir A"):
        with pytest.raises(Busy, match="dir A is in use"):
            with exclusive_lock(tmp_path / ".lock", "dir A"):
                pass


def test_write_atomic_replaces_and_leaves_no_temp(tmp_path):
    p = tmp_path / "d" / "f.txt"
    write_atomic(p, "one")
    write_atomic(p, b"two")
    assert p.read_text() == "two"
    assert sorted(x.name for x in p.parent.iterdir()) == ["f.txt"]


def test_write_atomic_failure_keeps_old_file(tmp_path):
    p = tmp_path / "f.txt"
    p.write_text("old")
    with pytest.raises(TypeError):
        write_atomic(p, 12345)  # not str/bytes: fails while writing the temp file
    assert p.read_text() == "old" and [x.name for x in tmp_path.iterdir()] == ["f.txt"]


def test_json_safe_and_strict_json(tmp_path):
    obj = {"a": np.float32(1.5), "b": np.arange(3), "c": [float("nan"), float("inf"), -float("inf")],
           "d": (np.int64(7), np.bool_(True)), "e": {"f": np.array([[np.nan, 2.0]])}, 3: "x"}
    safe = json_safe(obj)
    assert safe == {"a": 1.5, "b": [0, 1, 2], "c": [None, None, None], "d": [7, True],
                    "e": {"f": [[None, 2.0]]}, "3": "x"}
    assert type(safe["b"][0]) is int and type(safe["d"][1]) is bool
    write_json(tmp_path / "x.json", obj)
    text = (tmp_path / "x.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text)["c"] == [None, None, None]
    assert read_json(tmp_path / "x.json", "record") == safe
    with pytest.raises(TypeError):
        write_json(tmp_path / "y.json", {"bad": object()})
    assert not (tmp_path / "y.json").exists()


@pytest.mark.parametrize("content", ["{not json", "", "[1, NaN]", b"\xff\xfe"])
def test_read_json_corrupt_names_path_and_what(tmp_path, content):
    p = tmp_path / "stage.json"
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(CorruptFile, match=rf"^{p}: corrupt stage record \(.+\); delete it or run with --force$"):
        read_json(p, "stage record")
    with pytest.raises(ValueError, match="store manifest.*; rebuild it"):  # CorruptFile is a ValueError
        read_json(p, "store manifest", hint="rebuild it")
    with pytest.raises(FileNotFoundError):
        read_json(tmp_path / "missing.json", "stage record")


def test_temp_sibling_and_publish_new(tmp_path):
    final = tmp_path / "stage"
    tmp = temp_sibling(final)
    assert tmp.parent == tmp_path and tmp.name.startswith(".stage.tmp-") and not any(tmp.iterdir())
    assert temp_sibling(final) != tmp
    (tmp / "a").write_text("A")
    publish_dir(tmp, final)
    assert (final / "a").read_text() == "A" and not tmp.exists()


def test_publish_replaces_existing_and_removes_old(tmp_path):
    final = tmp_path / "stage"
    final.mkdir()
    (final / "old").write_text("old")
    (tmp_path / "neighbour.txt").write_text("keep")
    tmp = temp_sibling(final)
    (tmp / "new").write_text("new")
    publish_dir(tmp, final)
    assert sorted(p.name for p in final.iterdir()) == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["neighbour.txt", "stage"]


def test_publish_failure_restores_old(tmp_path, monkeypatch):
    final = tmp_path / "stage"
    final.mkdir()
    (final / "old").write_text("old")
    tmp = temp_sibling(final)
    real_rename = os.rename

    def rename(src, dst):
        if str(src) == str(tmp):
            raise OSError("disk on fire")
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError, match="disk on fire"):
        publish_dir(tmp, final)
    assert (final / "old").read_text() == "old" and tmp.is_dir()


def test_publish_refuses_files_and_symlinks(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    tmp = temp_sibling(tmp_path / "file")
    with pytest.raises(NotADirectoryError):
        publish_dir(tmp, tmp_path / "file")
    with pytest.raises(ValueError, match="symbolic link"):
        publish_dir(tmp, tmp_path / "link")
    assert (tmp_path / "file").read_text() == "x" and (tmp_path / "real").is_dir()


# ---- publishing a set of files -----------------------------------------------------------------------

def _staged(root, files):
    staging = temp_sibling(root / "site")
    for rel, text in files.items():
        (staging / rel).parent.mkdir(parents=True, exist_ok=True)
        (staging / rel).write_text(text)
    return staging


def test_publish_files_swaps_the_set_and_removes_only_its_own_old_files(tmp_path):
    from compnn_py.fsio import publish_files

    dest, manifest = tmp_path / "run", tmp_path / "run" / ".published.json"
    dest.mkdir()
    (dest / "notes.txt").write_text("the user's")
    publish_files(_staged(dest, {"a.txt": "1", "panels/0.png": "p0", "panels/1.png": "p1"}), dest, manifest)
    (dest / "panels" / "mine.png").write_text("the user's too")
    published = publish_files(_staged(dest, {"a.txt": "2", "panels/0.png": "q0"}), dest, manifest)
    assert sorted(p.relative_to(dest).as_posix() for p in published) == ["a.txt", "panels/0.png"]
    assert (dest / "a.txt").read_text() == "2" and (dest / "panels" / "0.png").read_text() == "q0"
    assert not (dest / "panels" / "1.png").exists()                      # ours, not in the new set
    assert (dest / "notes.txt").read_text() == "the user's"              # never ours
    assert (dest / "panels" / "mine.png").read_text() == "the user's too"
    assert json.loads(manifest.read_text()) == {"files": ["a.txt", "panels/0.png"], "swapping": None}
    assert not list(dest.glob(".site.tmp-*"))
    publish_files(_staged(dest, {"a.txt": "3"}), dest, manifest)
    assert (dest / "panels").is_dir()  # still holds the user's file


def test_publish_files_refuses_a_folder_where_a_file_goes_before_moving_anything(tmp_path):
    from compnn_py.fsio import publish_files

    dest = tmp_path / "run"
    (dest / "b.txt").mkdir(parents=True)
    staging = _staged(dest, {"a.txt": "1", "b.txt": "2"})
    with pytest.raises(ValueError, match="b.txt exists and is not a plain file"):
        publish_files(staging, dest, dest / ".published.json")
    assert not (dest / "a.txt").exists() and (staging / "a.txt").exists()


def test_an_interrupted_swap_is_completed_by_the_next_caller(tmp_path, monkeypatch):
    from compnn_py import fsio

    dest, manifest = tmp_path / "run", tmp_path / "run" / ".published.json"
    dest.mkdir()
    fsio.publish_files(_staged(dest, {"a.txt": "old", "b.txt": "old", "gone.txt": "old"}), dest, manifest)
    real, moved = os.replace, []

    def crash_after_one(src, dst):  # the journal's own atomic writes pass; the second file move is killed
        if Path(dst).name.endswith(".txt"):
            if moved:
                raise KeyboardInterrupt
            moved.append(dst)
        real(src, dst)

    monkeypatch.setattr(fsio.os, "replace", crash_after_one)
    with pytest.raises(KeyboardInterrupt):
        fsio.publish_files(_staged(dest, {"a.txt": "new", "b.txt": "new"}), dest, manifest)
    monkeypatch.undo()
    assert (dest / "a.txt").read_text() == "new" and (dest / "b.txt").read_text() == "old"  # half swapped
    assert fsio.finish_publishing(dest, manifest) == ["b.txt"]
    assert (dest / "a.txt").read_text() == (dest / "b.txt").read_text() == "new"
    assert not (dest / "gone.txt").exists() and not list(dest.glob(".site.tmp-*"))
    assert json.loads(manifest.read_text())["files"] == ["a.txt", "b.txt"]
    assert fsio.finish_publishing(dest, manifest) == []
