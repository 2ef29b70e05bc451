"""SIGINT (Ctrl-C) and SIGTERM during a run: the run stops with `Interrupted`, which the experiment wrapper turns into
a run marked interrupted and a line saying how to resume it.

Outside training the signal raises where the main thread is. Inside a training loop (`stops_between_steps`) the first
signal is only recorded and the loop raises at its next step boundary (`stop_if_interrupted`): raised anywhere, the
exception can surface in Python code that TensorFlow's C++ is calling back (a tf.data pipeline traced for the next
epoch, a checkpoint being written), and tearing that down half-built once killed the process (`free(): invalid next
size`) instead of stopping it. A second signal raises at once.
"""

from __future__ import annotations

import contextlib
import os
import signal

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """SIGINT or SIGTERM during a run."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.exit_code = 128 + signum


_received: list[int] = []
_between_steps_only = False


def _on_signal(signum, frame):
    first = not _received
    _received.append(signum)
    if _between_steps_only and first:
        # os.write, not print: the handler may run while the main thread is inside a write to stderr
        os.write(2, f"\n{signal.Signals(signum).name}: stopping after this training step (a second Ctrl-C or SIGTERM "
                    "stops at once)\n".encode())
        return
    raise Interrupted(signum)


@contextlib.contextmanager
def handling_interrupts():
    """SIGINT and SIGTERM raise `Interrupted` inside the block; the previous handlers come back after it."""
    _received.clear()
    previous = {sig: signal.signal(sig, _on_signal) for sig in SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _received.clear()


def interrupt_received() -> int | None:
    """The last signal received inside `handling_interrupts`, even if the exception it raised was swallowed."""
    return _received[-1] if _received else None


def stop_if_interrupted() -> None:
    """A training loop's step boundary: raise `Interrupted` if a signal has arrived."""
    if _received:
        raise Interrupted(_received[-1])


@contextlib.contextmanager
def stops_between_steps():
    """Inside the block (a training loop that calls `stop_if_interrupted` after each step) the first signal waits for
    the next step boundary; a loop that ends with a signal pending raises it on leaving the block."""
    global _between_steps_only
    outer = _between_steps_only
    _between_steps_only = True
    try:
        yield
    finally:
        _between_steps_only = outer
    stop_if_interrupted()
