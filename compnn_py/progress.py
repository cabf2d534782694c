"""Progress of long loops: a tqdm bar on a terminal, a few plain log lines everywhere else.

A redrawn bar is the right thing on a terminal and the wrong one in a log file or a pipe, where every
redraw becomes a carriage-return frame. `progress` therefore looks at its stream (stderr by default):

- a terminal: a tqdm bar, as before;
- anything else: one line when the work starts, one line each time `interval` seconds have passed since
  the last line (counts, percentage, rate, elapsed time and ETA), and one line when it ends (or stops
  early: an exception, a loop left with break). A transient
  loop (`leave=False`, e.g. a loop nested inside another one) prints only the periodic lines, so a short
  inner loop adds nothing to the log.

`COMPNN_PROGRESS_INTERVAL` (seconds, default 15) sets the interval; `COMPNN_PROGRESS=0` silences both
forms. Usage matches the part of tqdm compnn uses:

    for item in progress(items, desc="export", unit="batch"):
        ...
    with progress(total=n, desc="train", unit="step") as bar:
        bar.update(1); bar.set_postfix({"loss": 0.1}); bar.write("validated")

Pure Python; no TensorFlow, and tqdm is imported only when a bar is drawn.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TextIO, TypeVar

T = TypeVar("T")

DEFAULT_INTERVAL = 15.0


def _interval_from_env() -> float:
    text = os.environ.get("COMPNN_PROGRESS_INTERVAL")
    if not text:
        return DEFAULT_INTERVAL
    try:
        value = float(text)
    except ValueError:
        return DEFAULT_INTERVAL
    return value if value >= 0 else DEFAULT_INTERVAL


def enabled() -> bool:
    """False when COMPNN_PROGRESS is 0/false/off/no."""
    return os.environ.get("COMPNN_PROGRESS", "1").strip().lower() not in ("0", "false", "off", "no")


def format_duration(seconds: float) -> str:
    """H:MM:SS, or M:SS under an hour (e.g. 75 -> '1:15', 3725 -> '1:02:05')."""
    s = max(0, int(round(seconds)))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class Progress:
    """Counts the units of a long piece of work and shows them (see the module docstring).

    `iterable`: iterate over the returned object to count one unit per item. `total`: the number of
    units (taken from len(iterable) when not given; None when unknown). `initial`: units already done
    (a resumed training). `disable`: show nothing. `leave`: False for transient loops. `file`: the
    stream (default: sys.stderr at the time of the call). `interval`: seconds between log lines.
    `terminal`: force the bar (True) or the lines (False) instead of asking the stream. `clock`: a
    monotonic clock in seconds (tests pass a fake one)."""

    def __init__(self, iterable: Iterable[T] | None = None, *, total: int | None = None, desc: str = "",
                 unit: str = "it", initial: int = 0, disable: bool = False, leave: bool = True,
                 file: TextIO | None = None, interval: float | None = None, terminal: bool | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if total is None and iterable is not None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except TypeError:
                total = None
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.n = self.initial = initial
        self.leave = leave
        self.file = file if file is not None else sys.stderr
        self.interval = _interval_from_env() if interval is None else interval
        self.clock = clock
        self.postfix: dict[str, str] = {}
        self.closed = False
        self.disabled = disable or not enabled()
        self._bar = None
        if self.disabled:
            return
        if terminal if terminal is not None else _is_terminal(self.file):
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=leave, file=self.file)
            return
        self.start = self.last = clock()
        if leave:
            self._line(final=False)

    # ---- counting --------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[T]:
        if self.iterable is None:
            raise TypeError("progress() was given no iterable; use update()")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def update(self, n: int = 1) -> None:
        """Count `n` more units done."""
        if self.disabled or self.closed:
            return
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
            return
        if self.total is not None and self.n >= self.total:
            return  # the final line (at close) reports the end
        if self.clock() - self.last >= self.interval:
            self._line(final=False)

    def set_postfix(self, values: Mapping[str, Any]) -> None:
        """Values shown after the counts (e.g. the latest losses), formatted with str()."""
        self.postfix = {k: str(v) for k, v in values.items()}
        if self._bar is not None:
            self._bar.set_postfix(self.postfix)

    def write(self, message: str) -> None:
        """Print a message on its own line (between bar redraws on a terminal)."""
        if self._bar is not None:
            self._bar.write(message, file=self.file)
        else:
            print(message, file=self.file, flush=True)

    def close(self) -> None:
        """End the work: the bar's last frame, or the final log line (also for a loop left early)."""
        if self.closed:
            return
        self.closed = True
        if self.disabled:
            return
        if self._bar is not None:
            self._bar.close()
        elif self.leave:
            self._line(final=True)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- the log lines ---------------------------------------------------------------------------

    def _line(self, *, final: bool) -> None:
        now = self.clock()
        self.last = now
        print(self.describe(now - self.start, final=final), file=self.file, flush=True)

    def describe(self, elapsed: float, *, final: bool = False) -> str:
        """One log line: counts, percentage, rate, elapsed time, ETA (or the total time when final)."""
        done = self.n - self.initial
        count = f"{self.n}/{self.total}" if self.total is not None else f"{self.n}"
        parts = [f"{self.desc + ': ' if self.desc else ''}{count} {self.unit}"]
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.0f}%)"
        if done > 0 and elapsed > 0:
            rate = done / elapsed
            parts.append(f"{rate:.3g} {self.unit}/s" if rate >= 1 else f"{1 / rate:.3g} s/{self.unit}")
        if final:
            finished = self.total is None or self.n >= self.total
            parts.append(f"{'done in' if finished else 'stopped after'} {format_duration(elapsed)}")
        elif done > 0:
            parts.append(f"{format_duration(elapsed)} elapsed")
            if self.total is not None and done > 0 and elapsed > 0:
                parts.append(f"ETA {format_duration((self.total - self.n) * elapsed / done)}")
        if self.postfix:
            parts.append(" ".join(f"{k} {v}" for k, v in self.postfix.items()))
        return ", ".join(parts)


def progress(iterable: Iterable[T] | None = None, **kwargs: Any) -> Progress:
    """A `Progress` over `iterable` (or counting `update()` calls); keyword arguments as `Progress`."""
    return Progress(iterable, **kwargs)
