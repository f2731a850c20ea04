"""Ctrl-C and SIGTERM that cannot be lost: a stop request sticks until the command ends.

Python raises KeyboardInterrupt in whatever the main thread runs when a signal arrives. When that
is a finalizer or a weakref callback (SQLAlchemy runs some during garbage collection), Python
prints "Exception ignored" and the run goes on as if nothing was asked. The handler installed by
`stop_on_signals` also records the request, and `check_interrupt` (each training step, each
claim) raises it again where it cannot be swallowed.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

__all__ = ["check_interrupt", "deferred_interrupt", "stop_on_signals"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_requested = False  # set by the installed handler; read by check_interrupt


def _on_signal(signum: int, frame: FrameType | None) -> None:
    global _requested
    _requested = True
    raise KeyboardInterrupt


def _heeded() -> list[int]:
    # A shell starts background jobs with SIGINT ignored, so that Ctrl-C in its terminal leaves
    # them running; that choice is kept.
    return [s for s in _SIGNALS if signal.getsignal(s) is not signal.SIG_IGN]


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()  # only it may set handlers


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block Ctrl-C and SIGTERM (how schedulers stop jobs) raise KeyboardInterrupt,
    and a request swallowed on the way is raised again at the next `check_interrupt`."""
    global _requested
    if not _main_thread():
        yield
        return
    saved = {s: signal.signal(s, _on_signal) for s in _heeded()}
    _requested = False
    try:
        yield
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)
        _requested = False


def check_interrupt() -> None:
    """Raise KeyboardInterrupt if a stop was requested (its first raise may have been lost)."""
    if _requested:
        raise KeyboardInterrupt


@contextlib.contextmanager
def deferred_interrupt() -> Iterator[None]:
    """Hold Ctrl-C/SIGTERM until the block ends, so a trial is never half claimed or half told."""
    global _requested
    if not _main_thread():
        yield
        return
    caught: list[int] = []
    saved = {s: signal.signal(s, lambda signum, frame: caught.append(signum)) for s in _heeded()}
    try:
        yield
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)
        if caught:
            # Under stop_on_signals the held request sticks like one that arrived outside.
            _requested = _requested or saved[caught[0]] is _on_signal
            raise KeyboardInterrupt
