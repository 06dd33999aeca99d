"""
Unit tests of the connection limits (L{wsheart.access.limits}), and of the server
applying them over in-memory transports on a Clock.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial import unittest

from wsheart.access.limits import ConnectionLimits, LimitSettings, TokenBucket, address_key, raise_open_files_limit

from .memory import RecordingClientProtocol, connect_client, make_server_factory


class AddressKeyTests(unittest.TestCase):
    def test_ipv4_ipv6_slash_64_and_mapped(self) -> None:
        self.assertEqual(address_key("203.0.113.7"), "203.0.113.7")
        self.assertEqual(address_key("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::/64")
        self.assertEqual(address_key("2001:db8:1:2:ffff::9"), "2001:db8:1:2::/64", "one host's /64 is one address")
        self.assertNotEqual(address_key("2001:db8:1:3::1"), address_key("2001:db8:1:2::1"))
        self.assertEqual(address_key("::ffff:203.0.113.7"), "203.0.113.7")
        self.assertEqual(address_key("fe80::1%eth0"), "fe80::/64")
        self.assertIsNone(address_key(None))
        self.assertIsNone(address_key("/run/wsheart.sock"))


class CountingTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.refused: list[str] = []
        self.logged: list[dict[str, Any]] = []
        self.limits = ConnectionLimits(
            LimitSettings(max_pending_per_address=2, max_connections_per_address=3, max_connections=5),
            self.clock,
            refused=self.refused.append,
            log=lambda fmt, **kw: self.logged.append(kw),
        )

    def test_pending_per_address(self) -> None:
        self.assertTrue(self.limits.connection_made("a"))
        self.assertTrue(self.limits.connection_made("a"))
        self.assertFalse(self.limits.connection_made("a"), "a third handshake in progress")
        self.assertTrue(self.limits.connection_made("b"), "another address is not affected")
        self.limits.connection_lost("a", was_open=False, was_pending=True)
        self.assertTrue(self.limits.connection_made("a"), "one finished: room again")
        self.assertEqual(self.refused, ["pending_per_address"])

    def test_open_per_address_and_in_all(self) -> None:
        for _ in range(3):
            self.assertTrue(self.limits.connection_made("a"))
            self.assertIsNone(self.limits.may_open("a"))
            self.limits.opened("a")
        self.limits.connection_made("a")
        self.assertEqual(self.limits.may_open("a"), (429, "too many connections from your address (at most 3)"))
        self.limits.connection_lost("a", was_open=False, was_pending=True)
        for key in ("b", "c"):
            self.limits.connection_made(key)
            self.limits.opened(key)
        self.limits.connection_made("d")
        self.assertEqual(self.limits.may_open("d"), (503, "the server is full, try again later"))
        self.limits.connection_lost("a", was_open=True, was_pending=False)
        self.assertIsNone(self.limits.may_open("d"))
        self.assertEqual(self.refused, ["connections_per_address", "connections"])
        self.assertEqual(self.limits.pending, {"d": 1})

    def test_a_pending_handshake_moves_to_the_address_a_proxy_names(self) -> None:
        self.limits.connection_made("proxy")
        self.limits.moved("proxy", "203.0.113.7")
        self.assertEqual(self.limits.pending, {"203.0.113.7": 1})
        self.limits.opened("203.0.113.7")
        self.assertEqual((self.limits.pending, self.limits.open), ({}, {"203.0.113.7": 1}))

    def test_log_lines_are_throttled_with_a_count(self) -> None:
        self.limits.connection_made("a")
        self.limits.connection_made("a")
        for _ in range(5):
            self.limits.connection_made("a")
        self.assertEqual([(e["limit"], e["count"]) for e in self.logged], [("pending_per_address", 1)])
        self.clock.advance(10)
        self.limits.connection_made("a")
        self.assertEqual([(e["limit"], e["count"]) for e in self.logged], [("pending_per_address", 1), ("pending_per_address", 5)])

    def test_negative_settings_refused(self) -> None:
        with self.assertRaises(ValueError):
            LimitSettings(max_connections=-1)
        with self.assertRaises(ValueError):
            LimitSettings(max_connections_per_user=-1)

    def test_per_user(self) -> None:
        """
        A user may hold max_connections_per_user; one more is refused
        (counted and logged), another user is not affected, and a
        connection that leaves makes room; off (0), nobody is refused.
        """
        limits = ConnectionLimits(
            LimitSettings(max_connections_per_user=2), self.clock, refused=self.refused.append,
            log=lambda fmt, **kw: self.logged.append(kw),
        )  # fmt: skip
        for _ in range(2):
            self.assertTrue(limits.user_may_join("ann"))
            limits.user_joined("ann")
        self.assertFalse(limits.user_may_join("ann"))
        self.assertTrue(limits.user_may_join("bob"))
        self.assertEqual(self.refused, ["connections_per_user"])
        self.assertEqual(self.logged[-1]["address"], "user 'ann'")
        limits.user_left("ann")
        self.assertTrue(limits.user_may_join("ann"))
        limits.user_left("ann")
        self.assertEqual(limits.users, {}, "nothing kept for a user with no connection")
        off = ConnectionLimits(LimitSettings(), self.clock)
        for _ in range(100):
            self.assertTrue(off.user_may_join("ann"))
            off.user_joined("ann")


class ServerLimitTests(unittest.TestCase):
    """
    The server protocol keeps the counts and refuses as told.
    """

    def setUp(self) -> None:
        self.clock = Clock()

    def connect(self, factory: Any, host: str) -> tuple[RecordingClientProtocol, Any, iosim.IOPump]:
        return connect_client(factory, self.clock, peer=host)

    def test_per_address_limit_refuses_with_429_and_frees_on_close(self) -> None:
        factory = make_server_factory(self.clock, limits=LimitSettings(max_connections_per_address=2))
        first = [self.connect(factory, "10.0.0.1") for _ in range(2)]
        self.assertTrue(all(c.opened for c, _, _ in first))
        refused, _, _ = self.connect(factory, "10.0.0.1")
        self.assertFalse(refused.opened)
        self.assertTrue(refused.http_response_data.startswith(b"HTTP/1.1 429 "))
        other, _, _ = self.connect(factory, "10.0.0.2")
        self.assertTrue(other.opened, "another address is not affected")
        client, server, pump = first[0]
        client.sendClose(1000)
        pump.flush()
        self.assertEqual(factory.limits.open, {"10.0.0.1": 1, "10.0.0.2": 1})
        again, _, _ = self.connect(factory, "10.0.0.1")
        self.assertTrue(again.opened)
        self.assertEqual(factory.metrics.limit_refusals.labels(limit="connections_per_address")._value.get(), 1)

    def test_ceiling_refuses_with_503(self) -> None:
        factory = make_server_factory(self.clock, limits=LimitSettings(max_connections=1))
        self.assertTrue(self.connect(factory, "10.0.0.1")[0].opened)
        full, _, _ = self.connect(factory, "10.0.0.2")
        self.assertTrue(full.http_response_data.startswith(b"HTTP/1.1 503 "))

    def test_pending_handshakes_dropped_at_accept(self) -> None:
        """
        Connections that never send their handshake (a slowloris) count as
        pending; one over the limit is dropped before anything is read, and
        the handshake timeout frees the rest.
        """
        factory = make_server_factory(self.clock, limits=LimitSettings(max_pending_per_address=2), handshake_timeout=5)
        silent = []
        for _ in range(3):
            server = factory.buildProtocol(None)
            transport = iosim.FakeTransport(server, isServer=True, peerAddress=IPv4Address("TCP", "10.0.0.9", 40000))
            server.makeConnection(transport)
            silent.append((server, transport))
        self.assertEqual([t.disconnecting for _, t in silent], [False, False, True])
        self.assertEqual(factory.limits.pending, {"10.0.0.9": 2})
        self.clock.advance(6)
        self.assertEqual([t.disconnecting for _, t in silent], [True, True, True], "the handshake timeout dropped them")
        for server, _ in silent:
            server.connectionLost(Failure(ConnectionDone()))  # what the reactor says next
        self.assertEqual(factory.limits.pending, {})


class OpenFilesTests(unittest.TestCase):
    def test_soft_limit_raised_to_the_hard_limit(self) -> None:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
        low = min(256, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
        self.assertEqual(raise_open_files_limit(), (low, hard))
        self.assertEqual(resource.getrlimit(resource.RLIMIT_NOFILE), (hard, hard))
        self.assertEqual(raise_open_files_limit(), (hard, hard), "already there: nothing to do")


class TokenBucketTests(unittest.TestCase):
    def test_burst_then_rate(self) -> None:
        clock = Clock()
        bucket = TokenBucket(rate=10, burst=20, clock=clock)
        self.assertEqual([bucket.take() for _ in range(20)], [0.0] * 20)
        self.assertAlmostEqual(bucket.take(), 0.1)
        clock.advance(0.1)
        self.assertEqual(bucket.take(), 0.0)
        self.assertGreater(bucket.take(), 0)
        clock.advance(100)
        self.assertEqual(sum(1 for _ in range(25) if bucket.take() == 0.0), 20, "never more than the burst")

    def test_bad_settings(self) -> None:
        with self.assertRaises(ValueError):
            TokenBucket(0, 1, Clock())
        with self.assertRaises(ValueError):
            TokenBucket(1, 0.5, Clock())
