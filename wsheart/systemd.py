"""
Talking to systemd: the sd_notify datagram protocol (READY, STATUS,
WATCHDOG, STOPPING) and the watchdog cadence read from C{WATCHDOG_USEC}.

Nothing is sent when C{NOTIFY_SOCKET} is unset: outside systemd this module
is silent.  The watchdog is fed from the reactor, and only while the
reactor is on time (see L{wsheart.health}): a stalled or lagging process
misses the watchdog and systemd restarts it.
"""

from __future__ import annotations

import os
import socket
from typing import Callable, Mapping, Optional

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger


class Notifier:
    """
    Sends sd_notify messages to C{NOTIFY_SOCKET}, or nothing if unset.
    """

    log = Logger()

    def __init__(self, environ: Optional[Mapping[str, str]] = None) -> None:
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET") or None
        if path is not None and path.startswith("@"):
            path = "\0" + path[1:]  # abstract namespace
        self.address = path
        self._socket: Optional[socket.socket] = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, **fields: object) -> bool:
        """
        Send C{KEY=value} lines, e.g. C{notify(READY=1, STATUS="serving")}.
        Returns whether a datagram was sent.  Failures are logged, never
        raised: systemd being away must not take the daemon down.
        """
        if self.address is None:
            return False
        message = "\n".join(f"{key}={value}" for key, value in fields.items()).encode("utf-8")
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._socket.setblocking(False)
            self._socket.sendto(message, self.address)
        except OSError as e:
            self.log.warn("sd_notify to {address!r} failed: {error}", address=self.address, error=e)
            return False
        return True

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def watchdog_interval(environ: Optional[Mapping[str, str]] = None, pid: Optional[int] = None) -> Optional[float]:
    """
    Seconds between watchdog pings: half of C{WATCHDOG_USEC}, as systemd
    advises; L{None} when the watchdog is off or meant for another process
    (C{WATCHDOG_PID}).
    """
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    watchdog_pid = env.get("WATCHDOG_PID")
    if watchdog_pid and watchdog_pid != str(os.getpid() if pid is None else pid):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    if value <= 0:
        return None
    return value / 1_000_000 / 2


class Watchdog:
    """
    Feeds the systemd watchdog every C{interval} seconds while C{healthy()}
    says so, and refreshes C{STATUS=} with C{status()} at the same time.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        notifier: Notifier,
        interval: Optional[float],
        healthy: Callable[[], bool],
        status: Callable[[], str],
        status_interval: float = 5.0,
    ) -> None:
        self._notifier = notifier
        self._healthy = healthy
        self._status = status
        self.interval = interval
        self._loop = LoopingCall(self._tick)
        self._loop.clock = clock
        self._period = min(interval, status_interval) if interval else status_interval
        self._last_status: Optional[str] = None
        self.missed = 0

    def start(self) -> None:
        if self._notifier.enabled and not self._loop.running:
            self._loop.start(self._period, now=True)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def _tick(self) -> None:
        # One bad tick must not stop the loop for good (LoopingCall stops on
        # an exception), so everything here is caught and logged.
        try:
            status = self._status()
            fields: dict[str, object] = {}
            if status != self._last_status:
                fields["STATUS"] = status
                self._last_status = status
            if self.interval:
                if self._healthy():
                    fields["WATCHDOG"] = 1
                else:
                    self.missed += 1
                    self.log.warn("withholding the systemd watchdog ping: the reactor is lagging")
            if fields:
                self._notifier.notify(**fields)
        except Exception:
            self.log.failure("watchdog tick failed")
