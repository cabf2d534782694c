"""TensorFlow's own log chatter: off by default in the driver, `--verbose` brings it back.

TensorFlow writes INFO and WARNING lines of its own (grappler's "remapper failed", "Sharding callback
duration", CPU-feature and oneDNN notices) to the process's stderr from C++, and more through the
`tensorflow` logger and Python warnings. The driver's log should hold its own lines and its progress;
so, unless verbose:

- `configure` sets TF_CPP_MIN_LOG_LEVEL=3 before TensorFlow is imported (a value the user set is
  kept), so Dask workers started later inherit it too. 3, not 2: grappler reports its harmless
  "remapper failed" at ERROR level; a real failure still reaches the driver as a Python exception;
- `quiet` imports TensorFlow (once, where a stage needs it) with the native stderr held aside, and
  writes back every line but the start-up notices that TensorFlow prints before its log level applies
  (STARTUP_NOTICES); then it lowers the `tensorflow` and `keras` Python loggers to errors, drops their
  INFO/WARNING records sent through absl's logger, and ignores their Python warnings.

Nothing here is needed for correctness; errors are always shown.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator

LEVEL_VARIABLE = "TF_CPP_MIN_LOG_LEVEL"
# Lines TensorFlow's C++ side writes at import and at its first operation, before absl's log
# initialisation, whatever TF_CPP_MIN_LOG_LEVEL says. Only these are dropped.
STARTUP_NOTICES = (
    "All log messages before absl::InitializeLog() is called are written to STDERR",
    "oneDNN custom operations are on.",
    "This TensorFlow binary is optimized to use available CPU instructions",
    "To enable the following instructions:",
    "Unable to register cuDNN factory",
    "Unable to register cuFFT factory",
    "Unable to register cuBLAS factory",
    "computation placer already registered",
    "TF-TRT Warning: Could not find TensorRT",
)


def configure(*, verbose: bool) -> None:
    """Set TensorFlow's C++ log level for this process and its children; call before importing it."""
    if not verbose:
        os.environ.setdefault(LEVEL_VARIABLE, "3")


@contextlib.contextmanager
def _filtered_native_stderr(drop: tuple[str, ...]) -> Iterator[None]:
    """Hold file descriptor 2 aside (C++ writes there directly), then write back every line that
    contains none of `drop`."""
    try:
        fd = sys.__stderr__.fileno() if sys.__stderr__ else 2
    except (AttributeError, OSError, ValueError):  # no real stderr (embedded interpreters)
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), fd)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, fd)
            os.close(saved)
            held.seek(0)
            kept = [line for line in held.read().decode(errors="replace").splitlines(keepends=True)
                    if not any(notice in line for notice in drop)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


class _NotFromTensorFlow(logging.Filter):
    """Drops records below ERROR that TensorFlow or Keras code logged (through absl's logger, e.g.
    "Sharding callback duration"); the driver's own records pass."""

    PACKAGES = tuple(f"{os.sep}{name}{os.sep}" for name in ("tensorflow", "keras", "tf_keras"))

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or not any(p in record.pathname for p in self.PACKAGES)


def quiet(*, verbose: bool) -> None:
    """Import TensorFlow with its start-up notices dropped (unless verbose), and lower its Python
    loggers to errors. Imports TensorFlow: call only where a stage needs it."""
    configure(verbose=verbose)
    if verbose:
        return
    if "tensorflow" not in sys.modules:
        with _filtered_native_stderr(STARTUP_NOTICES):
            import tensorflow as tf

            tf.constant(0.0) + 1.0  # the first operation prints the rest of the notices
    for name in ("tensorflow", "keras"):
        logging.getLogger(name).setLevel(logging.ERROR)
    absl_logger = logging.getLogger("absl")
    if not any(isinstance(f, _NotFromTensorFlow) for f in absl_logger.filters):
        absl_logger.addFilter(_NotFromTensorFlow())
    warnings.filterwarnings("ignore", module=r"(tensorflow|keras)(\.|$)")
