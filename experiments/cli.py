"""The `compnn` console command (pyproject's [project.scripts]): one entry for the package's programs.

    compnn run --task=cityscapes [flags]   the pipeline; the same flags as `python -m experiments.run`
    compnn explore [flags]                 the provenance explorer (experiments/explore.py)
    compnn bench [args]                    the matcher benchmark (benchmarks/bench_match.py)

Each command's module is imported only when it is asked for (so `compnn --help` and `compnn run` on a
cached run import no TensorFlow, and the explorer's absl flags never meet the driver's). A command's
module either offers `cli(argv, prog=...)` (the driver) or is an absl program with a `main(argv)`; the
latter gets the driver's conventions here: --help exits 0, a flag error is one `error:` line, exit 2.

The benchmark is dispatched by path: benchmarks/ is a folder of developer scripts beside the package
(run by path in the README and the tests, with their own synthetic-data helper), not installed code, so
`compnn bench` works from a source checkout (the README's editable install) and says so otherwise.
"""

from __future__ import annotations

import importlib
import runpy
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# command -> (module, one-line description)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("experiments.run", "run the pipeline for a task (data, train, export, compnn, analyses, report)"),
    "explore": ("experiments.explore", "browse which training patch each output pixel came from"),
    "bench": ("benchmarks/bench_match.py", "benchmark the matcher against numpy/BLAS brute force"),
}


def usage() -> str:
    lines = ["usage: compnn COMMAND [flags]", "", "commands:"]
    lines += [f"  {name:9s} {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "`compnn COMMAND --help` shows a command's flags; `compnn run --helpfull` lists all of them."]
    return "\n".join(lines)


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _run_absl_program(module, argv: list[str], prog: str) -> int:
    """An absl program's `main(argv)`, with its flags parsed here by the driver's conventions."""
    from absl import app, flags, logging

    from experiments import cli_help

    wanted = cli_help.requested(argv[1:])
    FLAGS = flags.FLAGS
    if wanted:
        summary = (module.__doc__ or "").strip().split("\n\n")[0]
        print(cli_help.render(FLAGS, module.__name__, {}, (), usage=f"usage: {prog} [flags]",
                              summary=" ".join(summary.split()), full=True))
        return 0
    try:
        rest = FLAGS(argv)
    except flags.Error as e:
        return _error(f"{cli_help.error_line(e)} (see {prog} --help)")
    logging.use_absl_handler()
    try:
        status = module.main(rest)
    except app.UsageError as e:  # what an absl main raises for a stray argument
        return _error(f"{cli_help.error_line(e)} (see {prog} --help)")
    return int(status or 0)


def _run_script(path: Path, argv: list[str], prog: str) -> int:
    if not path.is_file():
        return _error(f"{prog} runs {path.relative_to(ROOT)} of a source checkout, and this installation has "
                      "none: install from the repository (`pip install -e .`) or run the script by path")
    saved = sys.argv
    sys.argv = [str(path), *argv[1:]]
    try:
        runpy.run_path(str(path), run_name="__main__")
    except SystemExit as e:  # argparse's --help (0) and usage errors (2), the script's own exit
        return e.code if isinstance(e.code, int) else (0 if e.code is None else _error(str(e.code)))
    finally:
        sys.argv = saved
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`compnn COMMAND ...`: dispatch to the command's module (argv without the program name)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        return _error(f"unknown command {command!r}; commands: {', '.join(COMMANDS)} (see compnn --help)")
    target, _ = COMMANDS[command]
    prog = f"compnn {command}"
    if target.endswith(".py"):
        return _run_script(ROOT / target, [prog, *rest], prog)
    try:
        module = importlib.import_module(target)
    except ModuleNotFoundError as e:
        if e.name != target:
            raise  # the command exists but one of its own imports is missing: a real error
        return _error(f"{prog} is not available in this version of compnn ({target} is missing)")
    if hasattr(module, "cli"):
        return module.cli([prog, *rest], prog=prog)
    return _run_absl_program(module, [prog, *rest], prog)


if __name__ == "__main__":
    sys.exit(main())
