"""Measurements in isolation: workers on one machine pause training while one of them times.

Two lock files per user and machine (fcntl.flock, so a killed process never leaves one held):
a training step passes the *gate* (a shared lock taken and dropped) and then holds *busy*
(shared) while it computes; a measurement takes the gate exclusively, so no new step starts,
then busy exclusively, so it waits for the steps in flight to end. Every process of this package
on the machine takes part (any study, any storage); processes that are not ours cannot be
paused, and a measurement that cannot get the machine within its timeout goes ahead flagged
as not isolated. Torch-free.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # not on POSIX: no isolation, measurements say so
    fcntl = None  # type: ignore[assignment]

__all__ = ["Isolation", "lock_dir"]


def lock_dir() -> Path:
    """Where the lock files live: one folder per user in the machine's temp folder."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(os.environ.get("CONDCONV_NAS_LOCK_DIR") or
                Path(tempfile.gettempdir()) / f"condconv-nas-{uid}")


class Isolation:
    """The machine's gate and busy locks; `step()` for trainers, `exclusive()` for measurers."""

    def __init__(self, folder: str | Path | None = None) -> None:
        self.folder = Path(folder) if folder is not None else lock_dir()
        self._fds: dict[str, int] = {}

    def _fd(self, name: str) -> int | None:
        if fcntl is None:
            return None
        if name not in self._fds:
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                self._fds[name] = os.open(self.folder / f"measure.{name}", os.O_RDWR | os.O_CREAT,
                                          0o666)
            except OSError:
                return None  # an unwritable temp folder: run unisolated rather than fail
        return self._fds[name]

    @contextlib.contextmanager
    def step(self) -> Iterator[None]:
        """Around one training or evaluation step: waits while a measurement runs."""
        gate, busy = self._fd("gate"), self._fd("busy")
        if gate is None or busy is None:
            yield
            return
        fcntl.flock(gate, fcntl.LOCK_SH)
        fcntl.flock(gate, fcntl.LOCK_UN)
        fcntl.flock(busy, fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(busy, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def exclusive(self, timeout: float = 300.0) -> Iterator[bool]:
        """Hold the machine: yields True when every cooperating trainer is paused, else False."""
        gate, busy = self._fd("gate"), self._fd("busy")
        if gate is None or busy is None:
            yield False
            return
        held = []
        try:
            deadline = time.monotonic() + timeout
            for fd in (gate, busy):
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        held.append(fd)
                        break
                    except BlockingIOError:
                        if time.monotonic() >= deadline:
                            break
                        time.sleep(0.005)
            yield len(held) == 2
        finally:
            for fd in reversed(held):
                fcntl.flock(fd, fcntl.LOCK_UN)

    def close(self) -> None:
        """Close the lock files (locks held by this object are released with them)."""
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
