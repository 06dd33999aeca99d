"""
An epoll reactor for large fleets: Twisted's own, minus the legacy log
context it sets up around every ready descriptor.

Twisted's epoll reactor calls each ready descriptor's doRead/doWrite through
C{twisted.python.log.callWithLogger}, which copies a context dictionary so
that old-style C{log.msg} calls made meanwhile carry the connection's log
prefix as their "system".  That costs about 4 us per event here - for an
idle daemon's heartbeat, whose every pong is one such event, about as much
as the rest of reading and matching the pong.  wsheart logs with
C{twisted.logger} (the event's namespace is its system), so the context buys
it nothing; only an old-style log line written by other code during a read
shows "-" instead of the connection's prefix.

Everything else - registration, disconnection, error handling - is the
stock reactor's.  Select it with C{twistd --reactor wsheart}; the daemon runs
unchanged on any other reactor.
"""

from __future__ import annotations

import errno
from typing import Optional

from twisted.internet import epollreactor
from twisted.internet.main import installReactor
from twisted.logger import Logger


class WsheartEPollReactor(epollreactor.EPollReactor):
    """
    L{epollreactor.EPollReactor} that dispatches ready descriptors directly.
    """

    _log = Logger()

    def doPoll(self, timeout: Optional[float]) -> None:
        if timeout is None:
            timeout = -1  # wait until something happens
        try:
            # As the stock reactor: at most as many events as descriptors.
            events = self._poller.poll(timeout, len(self._selectables))
        except OSError as err:
            if err.errno == errno.EINTR:
                return
            raise
        selectables = self._selectables
        handle = self._doReadOrWrite
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is None:
                continue
            try:
                # Catches what doRead/doWrite raise and disconnects; only a
                # failure in that disconnection itself gets here.
                handle(selectable, fd, event)
            except Exception:
                self._log.failure("handling a ready descriptor failed")

    doIteration = doPoll


def install() -> WsheartEPollReactor:
    """
    Install L{WsheartEPollReactor} as the reactor (what C{twistd --reactor
    wsheart} calls).
    """
    reactor = WsheartEPollReactor()
    installReactor(reactor)
    return reactor
