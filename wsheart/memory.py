"""
Giving memory back after many connections close.

A TLS connection holds about 27 KiB of OpenSSL state beside its own (see
docs/tls.md).  When thousands of them close - a fleet moving to another
process, the end of a reconnect storm - glibc keeps the freed memory in
its heap for later allocations and the process's RSS stays at its peak:
measured, 3000 idle TLS connections took RSS from 62 to 167 MiB, and it
stayed at 167 MiB after they closed.  C{malloc_trim(0)} returns the free
pages to the system (167 -> 109 MiB there).

L{MemoryReleaser} watches the number of open connections and trims once
the count has fallen well below its peak since the last trim, so a steady
daemon never trims and a shrinking one does once per drop.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any, Callable, Optional

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger


def glibc_malloc_trim() -> Optional[Callable[[], Any]]:
    """
    glibc's C{malloc_trim(0)}, or L{None} where the C library has none
    (musl, macOS): there the releaser does nothing.
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


class MemoryReleaser(Service):
    """
    Every C{interval} seconds, compares C{count()} (open connections) with
    its peak since the last trim; once it has fallen by C{min_drop}
    connections and by a quarter of that peak, calls C{trim} and starts
    over from the current count.

    @ivar trims: how many times it trimmed.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        count: Callable[[], int],
        trim: Optional[Callable[[], Any]],
        interval: float = 10.0,
        min_drop: int = 500,
    ) -> None:
        self._clock = clock
        self._count = count
        self._trim = trim
        self.interval = interval
        self.min_drop = min_drop
        self.peak = 0
        self.trims = 0
        self._loop: Optional[LoopingCall] = None

    def check(self) -> None:
        """
        One look at the connection count (the timer's job).
        """
        now = self._count()
        self.peak = max(self.peak, now)
        drop = self.peak - now
        if self._trim is None or drop < self.min_drop or drop * 4 < self.peak:
            return
        try:
            self._trim()
        except Exception:
            self.log.failure("malloc_trim failed")
        self.trims += 1
        self.log.info(
            "{drop} connections closed since the peak of {peak}: free memory given back to the system",
            drop=drop,
            peak=self.peak,
        )
        self.peak = now

    def startService(self) -> None:
        super().startService()
        self._loop = LoopingCall(self._tick)
        self._loop.clock = self._clock
        self._loop.start(self.interval, now=False)

    def _tick(self) -> None:
        # One failure must not stop the loop for good (STYLE.md 8).
        try:
            self.check()
        except Exception:
            self.log.failure("memory release check failed")

    def stopService(self) -> Any:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        return super().stopService()
