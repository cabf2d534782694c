"""Stage caching of the driver: each stage's key holds exactly the inputs that change its output.

A table over every flag of experiments.run says which stages a change re-runs; the keys are checked
for every row, and a tiny real run checks the behaviour behind them: cached re-runs, a resumed
training, partial runs, rebuilt outputs, corrupt records, and flags validated before anything runs.
"""

import contextlib
import io
import json
import logging
from pathlib import Path

import pytest

pytest.importorskip("tensorflow")

from absl import flags, logging as absl_logging  # noqa: E402

from experiments import run  # noqa: E402
from experiments.stages import Stage  # noqa: E402
from experiments.steps import compnn as compnn_step  # noqa: E402

FLAGS = flags.FLAGS
ALL = set(run.STAGES)
AFTER_TRAIN = {"export", "compnn", "analyses", "report"}
MATCHING = {"compnn", "analyses", "report"}
BASE = ["--task=cityscapes", "--size=32,32", "--n_train=12", "--n_query=3", "--steps=30", "--shortlist=4",
        "--coarse_k=4"]

# flag -> (the changed invocation's extra flags, the stages whose key changes)
TABLE = {
    "task": (["--task=facades"], ALL),
    "data_dir": (["--data_dir={tmp}"], ALL),
    "query_split": (["--query_split=train"], ALL),
    "preset": (["--preset=paper", "--size=32,32", "--n_train=12", "--n_query=3", "--steps=30"], ALL - {"data"}),
    "size": (["--size=64,64"], ALL),
    "n_train": (["--n_train=13"], ALL),
    "n_query": (["--n_query=2"], ALL),
    "query_sample": (["--query_sample=first"], ALL),
    "seed": (["--seed=1"], ALL),
    "model": (["--model=segnet_basic"], {"train"} | AFTER_TRAIN),
    "checkpoint": (["--checkpoint={tmp}"], {"train"} | AFTER_TRAIN),
    "match_layers": (["--checkpoint={tmp}", "--match_layers=global:a,coarse:b,fine:c"], {"train"} | AFTER_TRAIN),
    "decode2": (["--checkpoint={tmp}", "--match_layers=global:a,coarse:b,fine:c", "--decode2=d"],
                {"train"} | AFTER_TRAIN),
    "kernel": (["--checkpoint={tmp}", "--match_layers=global:a,coarse:b,fine:c", "--kernel=3"],
               {"train"} | AFTER_TRAIN),
    "steps": (["--steps=60"], AFTER_TRAIN),             # the training continues: same train key
    "epochs": (["--epochs=2"], AFTER_TRAIN),
    "export_layers": (["--export_layers=all"], AFTER_TRAIN),
    "match_method": (["--match_method=hierarchical"], MATCHING),
    "exact_queries": (["--exact_queries=1"], {"compnn", "report"}),
    "shortlist": (["--shortlist=3"], MATCHING),
    "coarse_k": (["--coarse_k=2"], MATCHING),
    "margin": (["--margin=2"], MATCHING),
    "out_dir": (["--out_dir={tmp}/elsewhere"], {"report"}),
    "stages": (["--stages=data,train"], set()),
    "force": (["--force"], set()),
    "clean": (["--clean"], set()),
    "threads": (["--threads=1"], set()),
    "workers": (["--workers=2"], set()),
    "scheduler": (["--scheduler=tcp://127.0.0.1:8786"], set()),
    "verbose": (["--verbose"], set()),
}


@pytest.fixture(autouse=True, scope="module")
def _restore_global_flags():
    """Parsing the driver's flags sets absl's verbosity (a process-wide logger level): put it back."""
    yield
    FLAGS.unparse_flags()
    absl_logging.get_absl_logger().setLevel(logging.NOTSET)


@pytest.fixture(autouse=True)
def _no_network_checks(monkeypatch):
    """Keys only: --checkpoint and --data_dir here are empty folders; the checks of a given network and of
    the data's size (experiments.checks, run by settings()) are tested in test_checks.py."""
    from experiments import checks

    monkeypatch.setattr(checks, "_check_network", lambda cfg, spec, checkpoint, **kw: (cfg, None))
    monkeypatch.setattr(checks, "_training_images", lambda cfg, data_dir: 10**6)


def _parse(*args):
    FLAGS.unparse_flags()
    FLAGS(["run", *args])


def _keys(args, tmp):
    _parse(*[a.format(tmp=tmp) for a in args])
    s = run.settings()
    stamp = 0.0 if s.checkpoint else None
    configs = run.stage_configs(s.cfg, data_dir=s.data_dir, query_split=s.query_split, checkpoint=s.checkpoint,
                                match_method=s.match_method, exact_queries=s.exact_queries, out_dir=s.out_dir,
                                checkpoint_stamp=stamp)
    return {name: Stage(tmp, name, c).key for name, c in configs.items()}


def test_the_table_covers_every_flag_of_the_driver():
    own = {f.name for f in FLAGS.get_flags_for_module(run)}
    assert own == set(TABLE)


@pytest.mark.parametrize("flag", sorted(TABLE))
def test_a_flag_changes_exactly_the_keys_of_the_stages_it_affects(flag, tmp_path):
    extra, expected = TABLE[flag]
    base = _keys([*BASE, f"--out_dir={tmp_path}/run"], tmp_path)
    # --epochs replaces the base's --steps (the two are exclusive).
    kept = [a for a in BASE if not (flag == "epochs" and a.startswith("--steps="))]
    changed = _keys([*kept, f"--out_dir={tmp_path}/run", *extra], tmp_path)
    assert {name for name in run.STAGES if base[name] != changed[name]} == expected


def test_the_prune_knobs_are_no_input_of_exact_search_within_the_shortlist():
    args = [*BASE, "--match_method=shortlist"]
    assert _keys(args, Path("/tmp")) == _keys([*args, "--coarse_k=2", "--margin=3"], Path("/tmp"))
    assert _keys(args, Path("/tmp"))["compnn"] != _keys([*args, "--shortlist=3"], Path("/tmp"))["compnn"]


def test_exact_queries_is_no_input_of_a_single_method():
    args = [*BASE, "--match_method=hierarchical"]
    assert _keys(args, Path("/tmp")) == _keys([*args, "--exact_queries=1"], Path("/tmp"))


# ---- the behaviour behind the keys, on a tiny real run ---------------------------------------------

def _drive(out, *args):
    """Runs the driver in this process; returns (exit status, stderr, {stage: state}); the stage
    directories of the last run are in DIRS."""
    _parse(*BASE, f"--out_dir={out}", *args)
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        rc = run.main(["run"])
    states = {}
    for line in stdout.getvalue().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] in run.STAGES and line.startswith("  "):
            states[parts[0]] = " ".join(parts[1:3]) if parts[1] == "not" else parts[1]
            DIRS[parts[0]] = Path(parts[-1])
    return rc, stderr.getvalue(), states


DIRS: dict[str, Path] = {}


def _ran(states):
    return {name for name, state in states.items() if state in ("ran", "resumed")}


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("stages")
    rc, err, states = _drive(out)
    assert rc == 0, err
    assert set(states.values()) == {"ran"}  # a first training is no resumed one
    return out


def test_a_second_run_is_a_no_op(base_run):
    rc, err, states = _drive(base_run)
    assert rc == 0, err
    assert set(states.values()) == {"cached"}


def test_a_matcher_knob_reruns_only_the_matching_stages(base_run):
    rc, err, states = _drive(base_run, "--shortlist=3")
    assert rc == 0, err
    assert _ran(states) == MATCHING
    assert {states[n] for n in ("data", "train", "export")} == {"cached"}


def test_a_longer_training_resumes_from_the_saved_step(base_run, caplog):
    with caplog.at_level(logging.INFO):
        rc, err, states = _drive(base_run, "--steps=40", "--verbosity=0")
    assert rc == 0, err
    assert states["train"] == "resumed" and states["data"] == "cached"
    assert _ran(states) == {"train"} | AFTER_TRAIN
    assert "resuming at step 30 of 40" in caplog.text
    history = json.loads(next(base_run.glob("cache/train-*/history.json")).read_text())
    assert history["train"][-1]["step"] == 40
    # A shorter training than the cached one is refused with one line, and nothing is lost.
    rc, err, _ = _drive(base_run, "--steps=20")
    assert rc == 2 and "reached 40 steps" in err and len(err.strip().splitlines()) == 1
    # The original length is still cached downstream: no training is needed for it.
    rc, err, states = _drive(base_run)
    assert rc == 0, err and set(states.values()) == {"cached"}


def test_deleted_or_corrupt_outputs_are_rebuilt(base_run):
    (base_run / "report.html").unlink()
    rc, err, states = _drive(base_run)
    assert rc == 0, err
    assert _ran(states) == {"report"} and (base_run / "report.html").exists()
    compnn_dir = DIRS["compnn"]
    done = compnn_dir / "DONE.json"
    (compnn_dir / "sources.npy").write_bytes(b"truncated")
    rc, err, states = _drive(base_run, "--stages=compnn")
    assert rc == 0, err
    assert _ran(states) == {"compnn"}
    done.write_text("{")
    rc, err, states = _drive(base_run, "--stages=compnn")
    assert rc == 0, err
    assert _ran(states) == {"compnn"}


def test_bad_flags_fail_before_anything_is_touched(base_run):
    table = base_run / "table1.csv"
    before = table.read_bytes()
    for args in (["--force", "--stages=compnn", "--threads=-1"], ["--n_query=0"], ["--shortlist=0"],
                 ["--threads=100000"], ["--steps=1", "--epochs=1"], ["--stages=bogus"],
                 ["--match_layers=global:a"], ["--force", "--shortlist=13"]):
        rc, err, states = _drive(base_run, *args)
        assert rc == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, (args, err)
        assert not _ran(states)
    assert table.read_bytes() == before


def test_a_failed_forced_stage_leaves_the_cached_one_untouched(base_run, monkeypatch):
    rc, err, _ = _drive(base_run)
    assert rc == 0, err
    compnn_dir = DIRS["compnn"]
    before = {p.name: p.read_bytes() for p in compnn_dir.iterdir() if p.is_file()}

    def broken(d, *args, **kwargs):
        (d / "sources.npy").write_bytes(b"half-written")
        raise RuntimeError("matcher crashed")

    monkeypatch.setattr(compnn_step, "run_compnn", broken)  # the driver imports the step when it runs
    rc, err, _ = _drive(base_run, "--force", "--stages=compnn")
    assert rc == 1 and "matcher crashed" in err and len(err.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in compnn_dir.iterdir() if p.is_file()} == before
    assert not list((base_run / "cache").glob(".compnn-*"))  # its temporary directory is gone too


def test_force_retrains_a_finished_training_from_step_0(tmp_path):
    rc, err, states = _drive(tmp_path, "--stages=data,train", "--steps=6")
    assert rc == 0, err
    first = json.loads((DIRS["train"] / "history.json").read_text())
    rc, err, states = _drive(tmp_path, "--stages=data,train", "--steps=6", "--force")
    assert rc == 0, err
    assert states["train"] == "ran" and states["data"] == "ran"
    again = json.loads((DIRS["train"] / "history.json").read_text())
    # Trained again from step 0 with the same seed: the same curve, not a continuation past step 6.
    assert [e["step"] for e in again["train"]] == [e["step"] for e in first["train"]]
    assert again["train"][-1]["step"] == 6


def test_an_out_dir_that_is_a_file_is_refused(tmp_path):
    f = tmp_path / "not_a_dir"
    f.write_text("a user's file")
    rc, err, _ = _drive(f)
    assert rc == 2 and "not a directory" in err and f.read_text() == "a user's file"


def test_a_second_run_on_the_same_directory_is_refused(base_run):
    from compnn_py import fsio

    with fsio.exclusive_lock(base_run / "cache" / ".lock", "held by the test"):
        rc, err, _ = _drive(base_run)
    assert rc == 2 and "in use by another process" in err


def test_partial_runs_then_a_full_run_reuses_them(tmp_path):
    rc, err, states = _drive(tmp_path, "--stages=data,train")
    assert rc == 0, err
    assert _ran(states) == {"data", "train"}
    assert states["export"] == "not run"
    rc, err, states = _drive(tmp_path)
    assert rc == 0, err
    assert states["data"] == states["train"] == "cached" and _ran(states) == AFTER_TRAIN
    # Re-explaining with new matcher knobs needs only the matching stages.
    rc, err, states = _drive(tmp_path, "--stages=compnn,analyses,report", "--margin=0")
    assert rc == 0, err and _ran(states) == MATCHING
    # A stage that is needed but neither cached nor selected is named.
    rc, err, _ = _drive(tmp_path, "--stages=compnn", "--seed=5")
    assert rc == 2 and "stage export is needed" in err


def test_metrics_json_is_strict_json(base_run):
    def strict(text):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))

    strict((base_run / "metrics.json").read_text())
    strict((base_run / "config.json").read_text())


# ---- the run directory is one consistent set; records catch damage; --clean ------------------------

TOP = ("report.html", "metrics.json", "table1.csv", "table1.md", "config.json")


def _top(out):
    return {f: (out / f).read_bytes() for f in TOP if (out / f).exists()}


def test_a_partial_run_leaves_the_top_level_files_alone(base_run):
    rc, err, _ = _drive(base_run)
    assert rc == 0, err
    before = _top(base_run)
    assert set(before) == set(TOP)
    rc, err, states = _drive(base_run, "--stages=data", "--shortlist=5")
    assert rc == 0, err
    assert _top(base_run) == before  # config.json still describes the report beside it
    assert json.loads((base_run / "cache" / "last-run.json").read_text())["shortlist"] == 5


def test_the_report_names_no_absolute_path(base_run):
    for f in ("report.html", "config.json", "metrics.json"):
        assert str(base_run) not in (base_run / f).read_text(), f
    assert json.loads((base_run / "config.json").read_text())["out_dir"] == "."


def test_a_report_failing_part_way_leaves_the_previous_set(base_run, monkeypatch):
    rc, err, _ = _drive(base_run)
    assert rc == 0, err
    before = _top(base_run)
    panels = sorted(p.name for p in (base_run / "panels").iterdir())

    def broken(*args, **kwargs):
        raise RuntimeError("page writer crashed")

    from experiments import report_page

    monkeypatch.setattr(report_page, "write_report", broken)
    rc, err, states = _drive(base_run, "--shortlist=3")  # new metrics and tables, then the page fails
    assert rc == 1 and "page writer crashed" in err
    assert _top(base_run) == before
    assert sorted(p.name for p in (base_run / "panels").iterdir()) == panels
    assert not list(base_run.glob(".compnn-report.tmp-*"))
    monkeypatch.undo()
    rc, err, states = _drive(base_run, "--shortlist=3")
    assert rc == 0, err and states["report"] == "ran"
    after = _top(base_run)
    assert all(after[f] != before[f] for f in ("config.json", "metrics.json"))
    assert json.loads(after["config.json"])["shortlist"] == 3


def test_published_files_are_checked_by_content(base_run):
    """Two configurations whose top-level files have the same sizes: the cached report of the first is
    not taken for the files the second one published."""
    rc, err, _ = _drive(base_run, "--shortlist=3")
    assert rc == 0, err
    shortlist3 = _top(base_run)
    rc, err, states = _drive(base_run, "--shortlist=2")
    assert rc == 0, err
    rc, err, states = _drive(base_run, "--shortlist=3")  # compnn/analyses cached; the files are not its
    assert rc == 0, err and states["report"] == "ran"
    assert json.loads((base_run / "config.json").read_text())["shortlist"] == 3
    assert _top(base_run)["table1.csv"] == shortlist3["table1.csv"]


def test_a_forced_upstream_stage_makes_the_later_stages_stale(base_run):
    rc, err, states = _drive(base_run)
    assert rc == 0, err and set(states.values()) == {"cached"}
    rc, err, states = _drive(base_run, "--force", "--stages=train")
    assert rc == 0, err and _ran(states) == {"train"}
    rc, err, states = _drive(base_run)
    assert rc == 0, err
    assert _ran(states) == AFTER_TRAIN and states["train"] == "cached"


def test_a_same_size_change_in_a_cached_store_rebuilds_it(base_run):
    rc, err, states = _drive(base_run)
    assert rc == 0, err and set(states.values()) == {"cached"}
    layer = next(p for p in DIRS["export"].rglob("*.npy") if p.stat().st_size > 4096)
    data = bytearray(layer.read_bytes())
    data[-7] ^= 0x10  # one bit of one activation: same size, still a valid store
    layer.write_bytes(bytes(data))
    rc, err, states = _drive(base_run)
    assert rc == 0, err
    assert states["export"] == "ran" and _ran(states) == {"export", "compnn", "analyses", "report"}
    assert layer.read_bytes() != bytes(data)  # the rebuilt store, not the damaged one


def test_a_malformed_record_or_corrupt_stage_json_reruns_the_stage(base_run, caplog):
    rc, err, _ = _drive(base_run)
    assert rc == 0, err
    done = DIRS["compnn"] / "DONE.json"
    record = json.loads(done.read_text())
    done.write_text(json.dumps(dict(record, files="sources.npy")))
    with caplog.at_level(logging.WARNING):
        rc, err, states = _drive(base_run, "--verbosity=0")
    assert rc == 0, err
    assert "compnn" in _ran(states) and f"{done}: malformed record" in caplog.text
    train_json = DIRS["data"] / "train.json"
    train_json.write_text("{" + " " * (len(train_json.read_bytes()) - 1))  # same size, not JSON
    rc, err, states = _drive(base_run)
    assert rc == 0, err and states["data"] == "ran"
    json.loads(train_json.read_text())


def test_a_training_restarted_from_step_0_is_not_called_resumed(tmp_path):
    rc, err, states = _drive(tmp_path, "--stages=data,train", "--steps=6")
    assert rc == 0, err
    train_dir = DIRS["train"]
    # An interrupted first training that saved no checkpoint yet: its directory, no record, no checkpoint.
    (train_dir / "DONE.json").unlink()
    for p in sorted((train_dir / "checkpoints").iterdir()):
        p.unlink()
    rc, err, states = _drive(tmp_path, "--stages=data,train", "--steps=6")
    assert rc == 0, err
    assert states["train"] == "ran"


def test_clean_removes_only_stage_folders_of_other_configurations(base_run):
    rc, err, _ = _drive(base_run, "--shortlist=3")
    assert rc == 0, err
    other = dict(DIRS)
    cache = base_run / "cache"
    mine = cache / "my-notes"
    mine.mkdir()
    (mine / "keep.txt").write_text("a user's file")
    lookalike = cache / "export-0123456789"  # named like a stage, but no record of that key
    lookalike.mkdir()
    (lookalike / "DONE.json").write_text(json.dumps({"config": {"x": 1}, "files": {}}))
    stdout = io.StringIO()
    _parse(*BASE, f"--out_dir={base_run}", "--clean")
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(io.StringIO()):
        assert run.main(["run"]) == 0
    out = stdout.getvalue()
    for name in ("compnn", "analyses", "report"):
        assert not other[name].exists() and f"removed {other[name]}" in out
    assert (mine / "keep.txt").read_text() == "a user's file" and lookalike.is_dir()
    assert f"kept {lookalike}" in out and "my-notes" not in out
    rc, err, states = _drive(base_run)  # the current configuration's folders were kept
    assert rc == 0, err and set(states.values()) == {"cached"}


def test_a_corrupt_training_config_or_split_list_is_named(tmp_path):
    from compnn_py import fsio

    rc, err, states = _drive(tmp_path, "--stages=data,train", "--steps=6")
    assert rc == 0, err
    config = DIRS["train"] / "config.json"
    (DIRS["train"] / "DONE.json").unlink()  # an interrupted training: continued in place, from its files
    config.write_text("{not json")
    rc, err, _ = _drive(tmp_path, "--stages=data,train", "--steps=6")
    assert rc == 2 and str(config) in err and len(err.strip().splitlines()) == 1, err
    split = DIRS["data"] / "train.json"
    split.write_text("[")
    with pytest.raises(fsio.CorruptFile, match=f"{split}: corrupt train split list"):
        run.data_step.count(DIRS["data"], "train")
