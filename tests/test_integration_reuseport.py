"""
Integration tests of the C{reuseport:} endpoint on 127.0.0.1: several
listeners on one port, the kernel spreading connections over them.
"""

from __future__ import annotations

from twisted.internet import endpoints, protocol, reactor
from twisted.internet.error import CannotListenError
from twisted.trial import unittest

from .loopback import async_test, free_port, wait_until


class Counting(protocol.Factory):
    def __init__(self) -> None:
        self.accepted = 0

    def buildProtocol(self, addr: object) -> protocol.Protocol:
        self.accepted += 1
        return protocol.Protocol()


class ReusePortTests(unittest.TestCase):
    timeout = 30

    @async_test
    async def test_three_listeners_share_one_port(self) -> None:
        """
        Three reuseport listeners bind the same port (a plain tcp: one
        cannot), and 90 connections are spread over all three.
        """
        port = free_port()
        factories = [Counting() for _ in range(3)]
        for factory in factories:
            listening = await endpoints.serverFromString(reactor, f"reuseport:{port}:interface=127.0.0.1").listen(factory)
            self.addCleanup(listening.stopListening)
        with self.assertRaises(CannotListenError):
            await endpoints.serverFromString(reactor, f"tcp:{port}:interface=127.0.0.1").listen(Counting())
        client = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        connected = []
        for _ in range(90):
            connected.append(await client.connect(protocol.Factory.forProtocol(protocol.Protocol)))
        await wait_until(self, lambda: sum(f.accepted for f in factories) == 90)
        for p in connected:
            p.transport.loseConnection()
        self.assertTrue(all(f.accepted > 0 for f in factories), [f.accepted for f in factories])

    @async_test
    async def test_taken_port_is_a_clear_error(self) -> None:
        """
        A port held by a listener without SO_REUSEPORT is refused with
        CannotListenError, as for tcp:.
        """
        held = await endpoints.serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(Counting())
        self.addCleanup(held.stopListening)
        with self.assertRaises(CannotListenError):
            await endpoints.serverFromString(reactor, f"reuseport:{held.getHost().port}:interface=127.0.0.1").listen(Counting())
