"""
Tests for wsheart.drain: closes spread over the drain time with a 1012
hint sized to the fleet, leftovers dropped, and a fleet of wsheart clients
obeying the hint without a reconnect storm.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from typing import Optional

from twisted.internet.task import Clock
from twisted.trial import unittest

from wsheart import closecodes
from wsheart.backoff import Backoff, BackoffSettings, RetryHint, hint_from_close
from wsheart.drain import Drainer, DrainSettings, hint_reason
from wsheart.hub import Hub

from .memory import connect_client, make_server_factory


class FakeConnection:
    """
    Records the close it gets; finishes the closing handshake after
    C{answer_after} seconds (never if None).
    """

    def __init__(self, clock: Clock, hub: Hub, connection_id: str, answer_after: Optional[float]) -> None:
        self.clock = clock
        self.hub = hub
        self.connection_id = connection_id
        self.answer_after = answer_after
        self.closed: Optional[tuple[float, int, str]] = None
        self.aborted_at: Optional[float] = None

    def close(self, code: int, reason: str) -> None:
        self.closed = (self.clock.seconds(), code, reason)
        if self.answer_after is not None:
            self.clock.callLater(self.answer_after, self.hub.remove, self.connection_id, "closed")

    def abort(self) -> None:
        self.aborted_at = self.clock.seconds()
        self.hub.remove(self.connection_id, "dropped")


class DrainTests(unittest.TestCase):
    """
    The Drainer on a Clock with recording connections.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.hub = Hub(self.clock)

    def populate(self, count: int, answer_after: Optional[float] = 0.05) -> list[FakeConnection]:
        connections = []
        for _ in range(count):
            cid = self.hub.new_id()
            connection = FakeConnection(self.clock, self.hub, cid, answer_after)
            self.hub.add(cid, "tcp4:127.0.0.1:1", connection)
            connections.append(connection)
        return connections

    def test_hint_grows_with_the_fleet(self) -> None:
        """
        Jitter is connections / reconnect_rate, at least min_jitter; the
        reason is JSON a client can read back.
        """
        settings = DrainSettings(retry_after=2, reconnect_rate=500, min_jitter=5)
        self.assertEqual(settings.hint(100), RetryHint(2, 5))
        self.assertEqual(settings.hint(10_000), RetryHint(2, 20))
        reason = hint_reason(settings.hint(10_000))
        self.assertLess(len(reason.encode()), 123)
        self.assertEqual(hint_from_close(closecodes.SERVICE_RESTART, reason), RetryHint(2, 20))

    def test_hint_for_a_huge_fleet_stays_within_an_hour(self) -> None:
        """
        Defect 12: a drain hint's retry_after plus jitter is at most an
        hour, however large the fleet or the configured wait.
        """
        settings = DrainSettings(retry_after=3000, reconnect_rate=1)
        hint = settings.hint(1_000_000)
        self.assertEqual(hint, RetryHint(3000, 600))
        self.assertEqual(hint_from_close(closecodes.SERVICE_RESTART, hint_reason(hint)), hint)

    def test_closes_spread_over_drain_time(self) -> None:
        """
        1000 connections are closed in batches across the drain time, each
        with 1012 and the same hint, and the drain ends when the last one
        has finished its handshake.
        """
        connections = self.populate(1000)
        drainer = Drainer(self.clock, self.hub, DrainSettings(drain_time=10, batch_interval=0.1), close_timeout=1)
        d = drainer.drain()
        self.clock.pump([0.05] * 220)
        self.assertEqual(self.successResultOf(d), 0)
        times = [c.closed[0] for c in connections if c.closed]
        self.assertEqual(len(times), 1000)
        self.assertEqual({c.closed[1] for c in connections if c.closed}, {closecodes.SERVICE_RESTART})
        self.assertEqual(len({c.closed[2] for c in connections if c.closed}), 1)
        per_second = Counter(int(t) for t in times)
        self.assertEqual(sorted(per_second), list(range(10)))
        self.assertLessEqual(max(per_second.values()), 110)
        self.assertEqual(len(self.hub), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_leftovers_dropped(self) -> None:
        """
        Connections that never finish the closing handshake are dropped at
        drain time + close timeout; the result counts them.
        """
        polite = self.populate(10)
        silent = self.populate(5, answer_after=None)
        drainer = Drainer(self.clock, self.hub, DrainSettings(drain_time=2, batch_interval=0.1), close_timeout=1)
        d = drainer.drain()
        self.clock.pump([0.1] * 40)
        self.assertEqual(self.successResultOf(d), 5)
        self.assertTrue(all(c.aborted_at is None for c in polite))
        self.assertTrue(all(c.aborted_at is not None and c.aborted_at <= 3.0 + 1e-9 for c in silent))
        self.assertEqual(self.hub.closed_total, {"closed": 10, "dropped": 5})

    def test_empty_hub(self) -> None:
        """
        With nothing to drain, the drain is over at once.
        """
        d = Drainer(self.clock, self.hub, DrainSettings(), close_timeout=1).drain()
        self.assertEqual(self.successResultOf(d), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_fleet_obeys_the_hint(self) -> None:
        """
        5000 wsheart clients drained together come back spread over the
        hinted window: nobody before retry_after, and no second holds more
        than three times the target reconnect rate - where clients that
        ignored the hint and retried at once would all arrive in the first
        second.
        """
        connections = self.populate(5000)
        settings = DrainSettings(drain_time=10, retry_after=2, reconnect_rate=500)
        Drainer(self.clock, self.hub, settings, close_timeout=1).drain()
        self.clock.pump([0.1] * 130)
        rng = random.Random(42)
        returns = []
        for connection in connections:
            assert connection.closed is not None
            closed_at, code, reason = connection.closed
            hint = hint_from_close(code, reason)
            assert hint is not None
            returns.append(closed_at + Backoff(BackoffSettings(), rng.random).hinted(hint))
        self.assertGreaterEqual(min(returns), 2)
        per_second = Counter(int(t) for t in returns)
        self.assertLessEqual(max(per_second.values()), 3 * settings.reconnect_rate)
        self.assertGreater(max(returns) - min(returns), 10)


class DrainOverWebSocketTests(unittest.TestCase):
    """
    The drain against real server protocols and Autobahn clients in memory.
    """

    def test_clients_get_1012_with_hint(self) -> None:
        """
        Every client receives close 1012 whose reason is the JSON hint, and
        the hub is empty afterwards.
        """
        clock = Clock()
        factory = make_server_factory(clock)
        pairs = [connect_client(factory, clock) for _ in range(20)]
        d = Drainer(clock, factory.hub, DrainSettings(drain_time=1, batch_interval=0.1), close_timeout=1).drain()
        for _ in range(30):
            clock.advance(0.1)
            for _, _, pump in pairs:
                pump.flush()
        self.assertEqual(self.successResultOf(d), 0)
        for client, _, _ in pairs:
            (was_clean, code, reason), = client.closes
            self.assertEqual(code, closecodes.SERVICE_RESTART)
            self.assertTrue(was_clean)
            self.assertEqual(json.loads(reason), {"retry_after": 2.0, "jitter": 5.0})
        self.assertEqual(len(factory.hub), 0)
