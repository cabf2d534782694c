"""The command line: `python -m experiments.run` and the `compnn` console command.

--help exits 0 with the flags grouped (short, or every flag with --helpfull); every kind of flag error
is one `error:` line and exit status 2; `compnn` dispatches run / explore / bench; a cached run imports
no TensorFlow; TensorFlow's log level is set before it is imported.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from absl import flags

from experiments import cli, cli_help, run, tf_logs

ROOT = Path(__file__).resolve().parents[1]
GROUPS = ["data:", "network:", "matcher:", "run control:"]


def _py(*args, env=None, cwd=ROOT):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONPATH=str(ROOT), **(env or {})))


def _driver_flags():
    return {f.name for f in flags.FLAGS.get_flags_for_module(run)}


def test_help_exits_0_grouped_and_short():
    res = _py("-m", "experiments.run", "--help")
    assert res.returncode == 0 and res.stderr == ""
    out = res.stdout
    positions = [out.index(g) for g in GROUPS]
    assert positions == sorted(positions), out
    assert "other:" not in out
    shown = {name for name in _driver_flags() if f"--{name}=" in out or f"--[no]{name}" in out}
    assert shown == set(run.COMMON_FLAGS) and "--helpfull" in out
    assert len(out.splitlines()) < 60


@pytest.mark.parametrize("arg", ["--helpfull", "--help=all"])
def test_full_help_lists_every_flag_once_in_its_group(arg):
    res = _py("-m", "experiments.run", arg)
    assert res.returncode == 0
    out = res.stdout
    for name in _driver_flags():
        synopses = [line for line in out.splitlines() if line.startswith((f"  --{name}=", f"  --[no]{name} "))
                    or line.strip() == f"--[no]{name}"]
        assert len(synopses) == 1, (name, synopses)
    # Each flag sits under its group's heading: the heading before its line is the group it is in.
    headings = {}
    current = None
    for line in out.splitlines():
        if line in GROUPS:
            current = line[:-1]
        elif line.startswith("  --"):
            headings[line.split()[0].split("=")[0].replace("--[no]", "--")[2:]] = current
    for group, names in run.FLAG_GROUPS.items():
        for name in names:
            if name in _driver_flags():
                assert headings[name] == group, name
    assert "(default: quick)" in out  # defaults are shown in full


def test_every_flag_of_the_driver_is_in_a_group():
    grouped = [n for names in run.FLAG_GROUPS.values() for n in names]
    assert len(grouped) == len(set(grouped))
    assert _driver_flags() <= set(grouped)
    assert set(run.COMMON_FLAGS) <= set(grouped)


@pytest.mark.parametrize("args, words", [
    (["--task=nonsense"], ["--task=nonsense", "cityscapes"]),               # absl enum value
    (["--task=cityscapes", "--no_such_flag=1"], ["no_such_flag"]),          # unknown flag
    (["--task=cityscapes", "stray"], ["stray"]),                            # a positional argument
    (["--task=cityscapes", "--n_train=abc"], ["--n_train=abc"]),            # bad type
    (["--task=cityscapes", "--force=maybe"], ["--force=maybe"]),            # bad boolean
    (["--task=cityscapes", "--n_train=0"], ["--n_train", "0"]),             # a value the driver checks
    ([], ["--task is required"]),                                           # a missing required flag
])
def test_every_flag_error_is_one_line_and_exit_2(args, words, tmp_path):
    res = _py("-m", "experiments.run", *args, f"--out_dir={tmp_path / 'out'}")
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2, res.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert all(w in lines[0] for w in words), lines[0]
    assert res.stdout == "" and not (tmp_path / "out").exists()


# ---- the compnn console command -------------------------------------------------------------------

def test_console_script_is_declared_and_callable():
    tomllib = pytest.importorskip("tomllib")
    with open(ROOT / "pyproject.toml", "rb") as f:
        scripts = tomllib.load(f)["project"]["scripts"]
    module, _, attr = scripts["compnn"].partition(":")
    assert (module, attr) == ("experiments.cli", "main") and callable(cli.main)


def test_compnn_help_and_unknown_command():
    res = _py("-m", "experiments.cli", "--help")
    assert res.returncode == 0 and all(f"  {c} " in res.stdout for c in ("run", "explore", "bench"))
    res = _py("-m", "experiments.cli", "frobnicate")
    assert res.returncode == 2 and res.stderr.strip().splitlines() == [
        "error: unknown command 'frobnicate'; commands: run, explore, bench (see compnn --help)"]


def test_compnn_run_is_the_driver():
    res = _py("-m", "experiments.cli", "run", "--help")
    assert res.returncode == 0 and res.stdout.startswith("usage: compnn run --task=TASK")
    res = _py("-m", "experiments.cli", "run", "--task=nonsense")
    assert res.returncode == 2 and res.stderr.startswith("error: flag --task=nonsense")
    assert "compnn run --help" in res.stderr


STUB = '''
"""A stub explorer: absl flags and a main(argv), like experiments/explore.py."""
from absl import app, flags

flags.DEFINE_string("out_dir", None, "Run directory to explore.")
flags.DEFINE_integer("port", 8000, "Port to serve on.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    print(f"explore {flags.FLAGS.out_dir} {flags.FLAGS.port} {argv[1:]}")
    return 3 if flags.FLAGS.port == 9 else None
'''


@pytest.mark.parametrize("args, rc, out, err", [
    (["--out_dir=/x", "--port=7"], 0, "explore /x 7 []\n", ""),
    (["--port=9"], 3, "explore None 9 []\n", ""),  # main's own status is the exit status
    (["--port=x"], 2, "", "error: flag --port=x"),
    (["stray"], 2, "", "error: unexpected arguments: stray (see compnn explore --help)\n"),
    (["--help"], 0, "usage: compnn explore [flags]", ""),
])
def test_compnn_dispatches_to_an_absl_program_lazily(tmp_path, args, rc, out, err):
    (tmp_path / "stub_explore.py").write_text(STUB)
    code = textwrap.dedent(f"""
        import sys
        from experiments import cli
        cli.COMMANDS["explore"] = ("stub_explore", "stub")
        sys.exit(cli.main(["explore", *{args!r}]))
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(tmp_path)])))
    assert res.returncode == rc, res.stderr
    assert res.stdout.startswith(out) and res.stderr.startswith(err), (res.stdout, res.stderr)
    if args == ["--help"]:
        assert "--port=N" in res.stdout and "--out_dir=OUT_DIR" in res.stdout


def test_a_command_whose_module_is_missing_says_so():
    code = textwrap.dedent("""
        import sys
        from experiments import cli
        cli.COMMANDS["explore"] = ("experiments.no_such_module", "stub")
        sys.exit(cli.main(["explore"]))
    """)
    res = _py("-c", code)
    assert res.returncode == 2 and res.stderr == (
        "error: compnn explore is not available in this version of compnn (experiments.no_such_module is "
        "missing)\n")


def test_compnn_bench_runs_the_matcher_benchmark_by_path():
    res = _py("-m", "experiments.cli", "bench", "--help")
    assert res.returncode == 0 and res.stdout.startswith("usage: bench_match.py") and "--shortlist" in res.stdout
    res = _py("-m", "experiments.cli", "bench", "--no_such_option")
    assert res.returncode == 2 and "unrecognized arguments: --no_such_option" in res.stderr


# ---- no TensorFlow where none is needed ------------------------------------------------------------

def _driver_then_modules(*args):
    """Runs the driver in a subprocess; its stdout ends with whether TensorFlow/Keras were imported."""
    code = textwrap.dedent(f"""
        import sys
        from experiments import run
        rc = run.cli(["run", *{list(args)!r}])
        print("IMPORTED", "tensorflow" in sys.modules, "keras" in sys.modules)
        sys.exit(rc)
    """)
    return _py("-c", code)


def test_help_and_a_cached_data_stage_import_no_tensorflow(tmp_path):
    """--help, flag errors and a cached run answer without TensorFlow (the data stage needs none)."""
    res = _driver_then_modules("--help")
    assert res.returncode == 0 and res.stdout.splitlines()[-1] == "IMPORTED False False"
    args = ["--task=cityscapes", "--size=32,32", "--n_train=3", "--n_query=1", "--shortlist=2", "--stages=data",
            f"--out_dir={tmp_path}"]
    for expected in ("ran", "cached"):
        res = _driver_then_modules(*args)
        assert res.returncode == 0, res.stderr
        assert any(line.split()[:2] == ["data", expected] for line in res.stdout.splitlines()), res.stdout
        assert res.stdout.splitlines()[-1] == "IMPORTED False False"


def test_the_drivers_copy_of_two_architecture_facts_matches_the_registry():
    """run.MODELS (kept so that validation imports no TensorFlow) agrees with tf_models.registry."""
    pytest.importorskip("tensorflow")
    from tf_models import registry

    assert set(run.MODELS) == set(registry.ARCHITECTURES)
    for name, (trainer, square) in run.MODELS.items():
        arch = registry.get(name)
        assert (arch.trainer, arch.square_power_of_two) == (trainer, square), name


def test_tensorflow_log_level_is_set_before_import_unless_verbose(monkeypatch):
    monkeypatch.delenv(tf_logs.LEVEL_VARIABLE, raising=False)
    tf_logs.configure(verbose=True)
    assert tf_logs.LEVEL_VARIABLE not in os.environ
    tf_logs.configure(verbose=False)
    assert os.environ[tf_logs.LEVEL_VARIABLE] == "3"
    monkeypatch.setenv(tf_logs.LEVEL_VARIABLE, "1")  # the user's own choice is kept
    tf_logs.configure(verbose=False)
    assert os.environ[tf_logs.LEVEL_VARIABLE] == "1"


def test_native_stderr_filter_drops_only_the_notices(tmp_path):
    """What C++ writes to file descriptor 2 passes through, but for the listed start-up notices."""
    code = textwrap.dedent("""
        import os
        from experiments import tf_logs
        with tf_logs._filtered_native_stderr(tf_logs.STARTUP_NOTICES):
            os.write(2, b"I0000 port.cc:153] oneDNN custom operations are on. You may see...\\n")
            os.write(2, b"a real problem\\n")
        os.write(2, b"after\\n")
    """)
    res = _py("-c", code)
    assert res.returncode == 0 and res.stderr == "a real problem\nafter\n"


def test_first_sentence():
    assert cli_help.first_sentence("Override it, e.g. --size=8. More.") == "Override it, e.g. --size=8."
    assert cli_help.first_sentence("No stop") == "No stop"


def test_tensorflow_records_through_absl_are_dropped_but_the_drivers_pass():
    import logging

    keep = tf_logs._NotFromTensorFlow()

    def record(path, level=logging.INFO):
        return logging.LogRecord("absl", level, path, 1, "message", None, None)

    assert not keep.filter(record(f"{os.sep}venv{os.sep}tensorflow{os.sep}python{os.sep}functional_saver.py"))
    assert keep.filter(record(f"{os.sep}venv{os.sep}tensorflow{os.sep}x.py", logging.ERROR))
    assert keep.filter(record(str(ROOT / "experiments" / "stages.py")))
    assert keep.filter(record(str(ROOT / "tf_models" / "train.py")))
