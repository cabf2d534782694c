"""Dask as the engine: the compnn stage on 2 worker processes writes the same files as in one process,
a worker killed mid-task has its task retried, and without --workers/--scheduler Dask is never imported."""

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from experiments import distributed as dist
from experiments.errors import UserError
from experiments.steps import compnn as step
from tiny_export import SPEC, config, make_export

ROOT = Path(__file__).resolve().parents[1]


def test_no_flags_no_engine_and_no_dask_import():
    code = ("import sys\nimport experiments.run\nfrom experiments import distributed\n"
            "from experiments.steps import compnn\n"
            "assert distributed.engine(None, None, 4) is None\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')]\n"
            "assert not bad, bad\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


def test_bad_engine_flags_are_one_line_errors():
    with pytest.raises(UserError, match="only one"):
        dist.engine(workers=2, scheduler="tcp://127.0.0.1:1")
    with pytest.raises(UserError, match="--workers must be >= 1"):
        pytest.importorskip("distributed")
        dist.engine(workers=0)


distributed = pytest.importorskip("distributed", reason="Dask distributed is not installed "
                                  "(pip install 'dask[distributed]')")


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    d = tmp_path_factory.mktemp("export")
    make_export(d, seed=1, n_train=10, n_query=5)
    return d


@pytest.fixture(scope="module")
def engine():
    e = dist.engine(workers=2, threads=2)
    yield e
    e.close()


@pytest.fixture(scope="module")
def single(export, tmp_path_factory):
    d = tmp_path_factory.mktemp("single")
    step.run_compnn(d, config(), SPEC, export, "both", 1, exact_queries=3)
    return d


def _assert_same_outputs(a: Path, b: Path):
    for name in ("table1.csv", "table1.md", "sources.npy"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    with np.load(a / "outputs.npz") as x, np.load(b / "outputs.npz") as y:
        assert sorted(x.files) == sorted(y.files)
        for k in x.files:
            np.testing.assert_array_equal(x[k], y[k])
            assert x[k].dtype == y[k].dtype
    ma, mb = (json.loads((p / "metrics.json").read_text()) for p in (a, b))
    for m in (ma, mb):  # what may differ: timings and what ran the tasks
        m.pop("seconds_per_image")
        m["matcher"].pop("engine")
        m["matcher"].pop("threads")
    assert ma == mb


def test_two_workers_give_the_single_process_files(export, engine, single, tmp_path):
    assert engine.threads == 1 and engine.describe()["workers"] == 2
    step.run_compnn(tmp_path, config(), SPEC, export, "both", None, exact_queries=3, engine=engine)
    _assert_same_outputs(single, tmp_path)
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["matcher"]["engine"]["kind"] == "local"


def _kill_once(marker, export_dir, q, job):
    """Runs on a worker: the first time query 1 is asked for, the worker process dies mid-task."""
    if q == 1 and not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)
    from experiments.steps.compnn import query_task

    return query_task(export_dir, q, job)


def test_killed_worker_task_is_retried(export, engine, single, tmp_path, monkeypatch):
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test file
    marker = tmp_path / "killed"
    monkeypatch.setattr(step, "query_task", functools.partial(_kill_once, str(marker)))
    out = tmp_path / "out"
    out.mkdir()
    step.run_compnn(out, config(), SPEC, export, "both", None, exact_queries=3, engine=engine)
    assert marker.exists(), "no worker was killed: the test did not test anything"
    _assert_same_outputs(single, out)


def test_engine_map_keeps_item_order_and_raises_task_errors(engine):
    assert engine.map(pow, [(2, k) for k in range(7)]) == [2 ** k for k in range(7)]
    with pytest.raises(ZeroDivisionError):
        engine.map(divmod, [(1, 1), (1, 0)])


def test_analyses_on_two_workers_write_the_same_files(export, engine, tmp_path):
    from experiments.steps import analyses

    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    analyses.run_analyses(one, config(), SPEC, export, 1, match_method="both")
    analyses.run_analyses(two, config(), SPEC, export, None, match_method="both", engine=engine)
    names = sorted(p.name for p in one.iterdir())
    assert names == sorted(p.name for p in two.iterdir()) and any(n.endswith(".png") for n in names)
    for name in names:
        assert (one / name).read_bytes() == (two / name).read_bytes(), name


def test_scheduler_address_uses_an_existing_cluster(engine):
    with dist.engine(scheduler=engine.cluster.scheduler_address, threads=1) as remote:
        assert remote.describe()["kind"] == "scheduler" and remote.describe()["workers_at_start"] == 2
        assert remote.map(pow, [(3, k) for k in range(4)]) == [1, 3, 9, 27]
    assert engine.map(pow, [(2, 3)]) == [8]  # closing that client left the cluster running


def test_export_shards_are_whole_batches_covering_every_row():
    from experiments.steps.export import _shards

    for n, workers in [(1, 2), (3, 2), (12, 2), (13, 3), (40, 1), (5, 8)]:
        shards = _shards(n, 4, workers)
        assert shards[0][0] == 0 and shards[-1][1] == n
        assert all(a % 4 == 0 and a < b for a, b in shards)
        assert all(b == c for (_, b), (c, _) in zip(shards, shards[1:]))


def test_export_stage_on_two_workers_writes_the_single_process_bytes(tmp_path):
    """The driver's export stage, sharded over 2 worker processes into one store per split, gives the
    same files, byte for byte, as the single-process export (same seed, so the same trained model)."""
    tiny = ["--task=cityscapes", "--size=32,32", "--n_train=12", "--n_query=3", "--steps=30", "--shortlist=4",
            "--coarse_k=4", "--stages=data,train,export"]
    runs = {}
    for name, extra in (("one", []), ("two", ["--workers=2"])):
        r = subprocess.run([sys.executable, "-m", "experiments.run", *tiny, *extra, f"--out_dir={tmp_path / name}"],
                           cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        runs[name] = r
    assert "export train" in runs["two"].stderr and "task" in runs["two"].stderr  # it did run as tasks
    (a,), (b,) = (list((tmp_path / n / "cache").glob("export-*")) for n in ("one", "two"))
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file() and p.name != "DONE.json")
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file() and p.name != "DONE.json")
    assert len([f for f in files if f.suffix == ".npy"]) >= 2 * 5 and Path("export.json") in files
    for f in files:  # .npy arrays, both manifests and export.json (bytes per image)
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
