"""Ctrl-C during training: the first press asks the loop to stop at the next step boundary (which
saves the resumable state); a second press interrupts at once."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from tqdm.auto import tqdm


class StopRequest:
    """Set by SIGINT; read by the training loop once per optimizer step."""

    def __init__(self) -> None:
        self.requested = False


@contextmanager
def stop_on_sigint() -> Iterator[StopRequest]:
    """Turn the first SIGINT into a stop request while the block runs (main thread only)."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = signal.getsignal(signal.SIGINT)

    def handle(signum, frame) -> None:
        request.requested = True
        tqdm.write("stopping at the end of this step (Ctrl-C again to stop at once)...")
        signal.signal(signal.SIGINT, signal.default_int_handler)

    signal.signal(signal.SIGINT, handle)
    try:
        yield request
    finally:
        signal.signal(signal.SIGINT, previous)
