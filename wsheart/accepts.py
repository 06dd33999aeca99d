"""
Listening while out of file descriptors: pause accepting instead of spinning.

Twisted's TCP C{Port} keeps one spare descriptor (C{/dev/null}): on C{EMFILE}
it closes it, accepts and at once closes each waiting connection (the
client gets an immediate close, not a SYN-queue timeout) and reopens it.
That needs no help.  But when the spare is gone (reopening it failed once,
say because a thread took the slot: Twisted tries again only when a port
starts listening), or the system is out of files (C{ENFILE}) or memory
(C{ENOBUFS}, C{ENOMEM}), the Port logs "Could not accept new connection" and
returns with the connection still waiting: the epoll reactor reports the
listening socket readable again at once, and the process spins at 100% of
a core, logging a line each turn.

L{AcceptPauser} watches the log for that event and stops every listening
port reading for 0.1 s, doubling up to 1 s while it recurs; it logs one
line when such an episode starts and one, with the number of pauses, when
accepts have gone through again for a second.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet import tcp
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import ILogObserver, Logger, LogEvent
from zope.interface import implementer

# What tcp.Port logs (as acceptError) when it gives up on accept(2) for
# want of a resource; ECONNABORTED, also logged so, is one client's doing.
RESOURCE_ERRORS = frozenset({"EMFILE", "ENFILE", "ENOBUFS", "ENOMEM"})
# tcp.Port's, and the same code's in unix.Port (its logger is named after
# the class that logs).
PORT_NAMESPACES = frozenset({"twisted.internet.tcp.Port", "twisted.internet.unix.Port"})


@implementer(ILogObserver)
class AcceptPauser:
    """
    A log observer (for C{globalLogPublisher}) that pauses the reactor's
    listening ports when they cannot accept for want of descriptors.

    @param reactor: an L{IReactorFDSet} and L{IReactorTime}.
    @param paused: called once per pause (the metric).
    """

    log = Logger()

    def __init__(self, reactor: Any, paused: Any = lambda: None, first: float = 0.1, longest: float = 1.0) -> None:
        self.reactor = reactor
        self.paused = paused
        self.first = first
        self.longest = longest
        self.delay = 0.0  # 0: not in an episode
        self.pauses = 0  # in this episode
        self.error = ""
        self._ports: list[tcp.Port] = []
        self._timer: Optional[IDelayedCall] = None

    def __call__(self, event: LogEvent) -> None:
        if event.get("log_namespace") in PORT_NAMESPACES and event.get("acceptError") in RESOURCE_ERRORS:
            self.pause(str(event["acceptError"]))

    def pause(self, error: str) -> None:
        """
        Stop every listening port reading, and resume them after the
        episode's next delay.
        """
        if self._ports:  # already paused; a port that was not is left alone
            return
        self._cancel()
        self._ports = [r for r in self.reactor.getReaders() if isinstance(r, tcp.Port)]
        for port in self._ports:
            port.stopReading()
        if not self.delay:
            self.delay, self.pauses, self.error = self.first, 0, error
            self.log.warn(
                "out of file descriptors ({error}): pausing accepts for {delay} s at a time",
                error=error,
                delay=self.first,
            )
        else:
            self.delay = min(self.delay * 2, self.longest)
        self.pauses += 1
        self.paused()
        self._timer = self.reactor.callLater(self.delay, self._resume)

    def _resume(self) -> None:
        self._timer = None
        ports, self._ports = self._ports, []
        for port in ports:
            if port.connected and not port.disconnecting:
                port.startReading()
        # A pause before this fires continues the episode (longer delay).
        self._timer = self.reactor.callLater(self.longest, self._calm)

    def _calm(self) -> None:
        self._timer = None
        self.log.info(
            "accepting again after {pauses} pause(s) out of file descriptors ({error})",
            pauses=self.pauses,
            error=self.error,
        )
        self.delay, self.pauses = 0.0, 0

    def _cancel(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def stop(self) -> None:
        """
        Forget any pause (the listeners are stopping): no timer is left.
        """
        self._cancel()
        self._ports = []
        self.delay, self.pauses = 0.0, 0
