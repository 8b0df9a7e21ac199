"""Progress reports: a live bar on a terminal, plain lines in a log.

On a terminal tqdm redraws one line in place. Written to a file or a pipe (nohup, a job scheduler,
`2> log`), each redraw becomes a frame of its own, so a log holds thousands of them. There, a stage
gets one line when it starts and ends, and one every `EVERY_S` seconds in between (step, loss, rate).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, TextIO

from tqdm.auto import tqdm

EVERY_S = 30.0  # seconds between two lines of one stage in a log


def progress_bar(iterable: Iterable | None = None, *, total: int | None = None, desc: str | None = None,
                 initial: int = 0, leave: bool = True, disable: bool = False, unit: str = "it",
                 stream: TextIO | None = None):
    """A tqdm bar when `stream` (default stderr) is a terminal, else a LineProgress with the same use.

    A bar with leave=False (inference inside a stage) writes to a log only when it runs longer than
    EVERY_S, so the dev evaluations of a training run add no lines of their own.
    """
    stream = stream if stream is not None else sys.stderr
    if disable or _is_terminal(stream):
        return tqdm(iterable, total=total, desc=desc, initial=initial, leave=leave, disable=disable, unit=unit,
                    file=stream, dynamic_ncols=True)
    return LineProgress(iterable, total=total, desc=desc, initial=initial, leave=leave, unit=unit, stream=stream)


def _is_terminal(stream: TextIO) -> bool:
    """Whether a stream is a terminal (a bar redraws in place) rather than a file or a pipe."""
    isatty = getattr(stream, "isatty", None)
    return isatty is not None and isatty()


@contextlib.contextmanager
def quiet_library_bars() -> Iterator[None]:
    """Inside, a library's own tqdm bars (transformers' GGUF conversion ignores its progress-bar switch)
    write nowhere when stderr is not a terminal; on a terminal nothing changes.
    """
    if _is_terminal(sys.stderr):
        yield
        return
    with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink):
        yield


class LineProgress:
    """tqdm's update / set_postfix / close / iteration, reported as whole lines (see the module)."""

    def __init__(self, iterable: Iterable | None, *, total: int | None, desc: str | None, initial: int,
                 leave: bool, unit: str, stream: TextIO) -> None:
        self.iterable, self.desc, self.unit, self.stream, self.leave = iterable, desc or "progress", unit, stream, leave
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.n, self.first = total, initial, initial
        self.postfix: dict[str, Any] = {}
        self.started = self.last = time.monotonic()
        self.spoke = self.closed = False
        if leave:
            self._line("started" if not initial else f"continuing from {unit} {initial}")

    def __iter__(self) -> Iterator:
        for item in self.iterable or ():
            yield item
            self.update(1)
        self.close()

    def update(self, n: int = 1) -> None:
        """Count n more; write a line when EVERY_S has passed since the last."""
        self.n += n
        now = time.monotonic()
        if now - self.last >= EVERY_S:
            self.last = now
            self._line()

    def set_postfix(self, values: Mapping[str, Any], refresh: bool = True) -> None:
        """The values (loss terms) the next line shows."""
        self.postfix = dict(values)

    def close(self, note: str = "done") -> None:
        """The stage's last line, ending with `note` (for a leave=False bar, only when it wrote any)."""
        if not self.closed:
            self.closed = True
            if self.leave or self.spoke:
                self._line(note)

    def _line(self, note: str | None = None) -> None:
        self.spoke = True
        elapsed = time.monotonic() - self.started
        count = f"{self.unit} {self.n}/{self.total}" if self.total is not None else f"{self.unit} {self.n}"
        values = "".join(f", {k}={v}" for k, v in self.postfix.items())
        rate = (self.n - self.first) / elapsed if elapsed > 0 else 0.0
        tail = f"; {note}" if note else ""
        print(f"{self.desc}: {count}{values}, {rate:.3g} {self.unit}/s, {elapsed:.0f} s{tail}", file=self.stream,
              flush=True)


def stop_bar(bar: tqdm | LineProgress) -> None:
    """Close a bar whose work was cut short (Ctrl-C): its last line in a log says "stopped", never "done"."""
    if isinstance(bar, LineProgress):
        bar.close("stopped")
    else:
        bar.close()  # a terminal's bar stays as drawn, at the step it reached


def quiet_libraries() -> None:
    """Keep the terminal for our progress bars: silence library chatter below errors."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("w2sdefense").setLevel(logging.INFO)


@contextlib.contextmanager
def silenced() -> Iterator[None]:
    """Nothing printed while the block runs (stage lines, progress bars): the Python API's quiet mode. The run's own
    log file still gets every line."""
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        yield
