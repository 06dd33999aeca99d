"""
The wsheart reactor (L{wsheart.reactor}): Twisted's epoll reactor without
the legacy log context per ready descriptor - the same dispatch, the same
disconnection on errors, and selectable as C{twistd --reactor wsheart}.
Driven one poll at a time on a reactor of its own (never the one trial
runs), with socket pairs.
"""

from __future__ import annotations

import socket
from typing import Any, Optional

from twisted.application.reactors import getReactorTypes
from twisted.internet import abstract
from twisted.python.failure import Failure
from twisted.trial import unittest

from wsheart.reactor import WsheartEPollReactor


class Reader(abstract.FileDescriptor):
    """
    One end of a socket pair, read by the reactor under test.
    """

    def __init__(self, reactor: Any, sock: socket.socket, fail_with: Optional[Exception] = None) -> None:
        super().__init__(reactor)
        self.sock = sock
        self.fail_with = fail_with
        self.received: list[bytes] = []
        self.lost: list[Failure] = []
        self.connected = 1

    def fileno(self) -> int:
        return self.sock.fileno()

    def doRead(self) -> None:
        self.received.append(self.sock.recv(4096))
        if self.fail_with is not None:
            raise self.fail_with

    def connectionLost(self, reason: Failure) -> None:
        self.lost.append(reason)
        super().connectionLost(reason)


class BrokenOnLoss(Reader):
    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        raise RuntimeError("cleaning up failed")


class WsheartReactorTests(unittest.TestCase):
    def setUp(self) -> None:
        self.reactor = WsheartEPollReactor()
        self.addCleanup(self.close_reactor)

    def close_reactor(self) -> None:
        self.reactor.removeAll()
        self.reactor.waker.connectionLost(None)
        self.reactor._poller.close()

    def pair(self, cls: type = Reader, **kwargs: Any) -> tuple[Reader, socket.socket]:
        ours, theirs = socket.socketpair()
        self.addCleanup(ours.close)
        self.addCleanup(theirs.close)
        ours.setblocking(False)
        reader = cls(self.reactor, ours, **kwargs)
        self.reactor.addReader(reader)
        # (Cleanups run last first: off the poller before the socket closes.)
        self.addCleanup(self.reactor.removeReader, reader)
        return reader, theirs

    def test_a_ready_descriptor_is_read(self) -> None:
        """
        Bytes waiting on a descriptor are read by one poll; an idle one is
        not touched.
        """
        busy, busy_peer = self.pair()
        idle, _ = self.pair()
        busy_peer.send(b"pong")
        self.reactor.doIteration(1.0)
        self.assertEqual(busy.received, [b"pong"])
        self.assertEqual(idle.received, [])

    def test_an_error_in_doRead_disconnects_as_before(self) -> None:
        """
        What doRead raises is logged and disconnects that descriptor (the
        stock reactor's handling, unchanged); the reactor goes on.
        """
        reader, peer = self.pair(fail_with=ValueError("bad read"))
        peer.send(b"x")
        self.reactor.doIteration(1.0)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.assertEqual(len(reader.lost), 1)
        self.assertTrue(reader.lost[0].check(ValueError))
        self.assertNotIn(reader, self.reactor.getReaders())

    def test_a_failed_disconnection_spares_the_other_descriptors(self) -> None:
        """
        A descriptor whose cleanup itself fails is logged; every other
        descriptor ready in the same poll is still read.
        """
        broken, broken_peer = self.pair(BrokenOnLoss, fail_with=ValueError("bad read"))
        others = [self.pair() for _ in range(3)]
        broken_peer.send(b"x")
        for _, peer in others:
            peer.send(b"y")
        self.reactor.doIteration(1.0)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual([reader.received for reader, _ in others], [[b"y"]] * 3)

    def test_selectable_as_twistd_reactor(self) -> None:
        """
        C{twistd --reactor wsheart} finds it through the plugin.
        """
        [entry] = [r for r in getReactorTypes() if r.shortName == "wsheart"]
        self.assertEqual(entry.moduleName, "wsheart.reactor")
