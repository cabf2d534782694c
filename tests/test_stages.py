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
