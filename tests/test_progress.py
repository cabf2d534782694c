"""compnn_py.progress: a bar on a terminal, periodic plain lines in a file or pipe."""

import io
import os
import subprocess
import sys
import textwrap

import pytest

from compnn_py.progress import format_duration, progress


class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def lines_of(stream):
    return stream.getvalue().splitlines()


def test_lines_at_start_every_interval_and_end():
    clock, out = FakeClock(), io.StringIO()
    with progress(total=100, desc="export", unit="img", file=out, interval=10, clock=clock) as bar:
        for _ in range(100):
            clock.t += 1.0  # one image per second: a line every 10 images
            bar.update(1)
    lines = lines_of(out)
    assert "\r" not in out.getvalue()
    assert lines[0] == "export: 0/100 img (0%)"
    # t = 10, 20, ..., 90 s: nine periodic lines; the 100th image is reported by the final line only
    assert len(lines) == 1 + 9 + 1
    assert lines[1] == "export: 10/100 img (10%), 1 img/s, 0:10 elapsed, ETA 1:30"
    assert lines[5] == "export: 50/100 img (50%), 1 img/s, 0:50 elapsed, ETA 0:50"
    assert lines[-1] == "export: 100/100 img (100%), 1 img/s, done in 1:40"


def test_iterable_postfix_write_and_slow_rate():
    clock, out = FakeClock(), io.StringIO()
    bar = progress(["a", "b", "c"], desc="train", unit="step", file=out, interval=5, clock=clock)
    seen = []
    for item in bar:
        seen.append(item)
        clock.t += 4.0  # 4 s per step: rate shown as seconds per unit
        bar.set_postfix({"loss": 0.25})
        if item == "b":
            bar.write("validated")
    assert seen == ["a", "b", "c"]
    assert lines_of(out) == [
        "train: 0/3 step (0%)",
        "validated",
        "train: 2/3 step (67%), 4 s/step, 0:08 elapsed, ETA 0:04, loss 0.25",
        "train: 3/3 step (100%), 4 s/step, done in 0:12, loss 0.25",
    ]


def test_stopped_early_and_unknown_total():
    clock, out = FakeClock(), io.StringIO()
    with pytest.raises(RuntimeError):
        for i in progress(range(10), desc="q", file=out, interval=100, clock=clock):
            clock.t += 2
            if i == 3:
                raise RuntimeError("boom")
    assert lines_of(out)[-1] == "q: 3/10 it (30%), 2.67 s/it, stopped after 0:08"

    out = io.StringIO()
    with progress(desc="tasks", file=out, interval=100, clock=clock) as bar:
        clock.t += 1
        bar.update(5)
    assert lines_of(out) == ["tasks: 0 it", "tasks: 5 it, 5 it/s, done in 0:01"]


def test_transient_loop_is_silent_unless_slow_and_disable_is_silent():
    clock, out = FakeClock(), io.StringIO()
    for _ in progress(range(3), desc="inner", leave=False, file=out, interval=10, clock=clock):
        clock.t += 1
    assert out.getvalue() == ""
    for _ in progress(range(3), desc="inner", leave=False, file=out, interval=10, clock=clock):
        clock.t += 6
    assert lines_of(out) == ["inner: 2/3 it (67%), 6 s/it, 0:12 elapsed, ETA 0:06"]
    out = io.StringIO()
    for _ in progress(range(3), disable=True, file=out, terminal=False):
        pass
    assert out.getvalue() == ""


def test_terminal_gets_a_redrawn_bar():
    out = io.StringIO()
    for _ in progress(range(3), desc="bar", file=out, terminal=True):
        pass
    assert "\r" in out.getvalue() and "3/3" in out.getvalue()


def test_pipe_gets_periodic_lines_not_frames():
    """The real default: stderr of a subprocess is a pipe, so no carriage-return frames, only lines."""
    code = textwrap.dedent("""
        from compnn_py.progress import progress
        for _ in progress(range(50), desc="piped", unit="img"):
            pass
    """)
    env = dict(os.environ, COMPNN_PROGRESS_INTERVAL="0")  # a line at every update: the count is exact
    env.pop("COMPNN_PROGRESS", None)
    err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stderr
    lines = err.splitlines()
    assert "\r" not in err
    assert lines[0] == "piped: 0/50 img (0%)"
    assert len(lines) == 1 + 49 + 1  # start, updates 1..49, final
    assert lines[-1].startswith("piped: 50/50 img (100%)") and "done in" in lines[-1]
    env["COMPNN_PROGRESS"] = "0"
    err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stderr
    assert err == ""


def test_format_duration():
    assert [format_duration(s) for s in (0, 59.4, 75, 3725)] == ["0:00", "0:59", "1:15", "1:02:05"]
