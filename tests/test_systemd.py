"""
Tests for wsheart.systemd: the notifier without systemd, the watchdog
cadence read from C{WATCHDOG_USEC}, and the watchdog fed on a Clock by a
recording notifier - alone and as WsheartService wires it.  The notifier on
a real datagram socket: tests/test_integration_systemd.py.

The lag monitor the watchdog consults is tested in tests/test_health.py.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, capturedLogs
from twisted.trial import unittest

from wsheart.drain import Drainer, DrainSettings
from wsheart.health import LagMonitor
from wsheart.hub import Hub
from wsheart.protocol import ServerFactory
from wsheart.service import WsheartService
from wsheart.systemd import Notifier, Watchdog, watchdog_interval


class NotifierTests(unittest.TestCase):
    """
    sd_notify datagrams.
    """

    def test_silent_without_systemd(self) -> None:
        """
        Without NOTIFY_SOCKET nothing is sent and nothing fails.
        """
        notifier = Notifier({})
        self.assertFalse(notifier.enabled)
        self.assertFalse(notifier.notify(READY=1))


class WatchdogIntervalTests(unittest.TestCase):
    """
    Reading WATCHDOG_USEC and WATCHDOG_PID.
    """

    def test_half_of_usec(self) -> None:
        """
        The watchdog is fed at half of WATCHDOG_USEC.
        """
        self.assertEqual(watchdog_interval({"WATCHDOG_USEC": "20000000"}), 10.0)

    def test_off(self) -> None:
        """
        Unset, zero, garbage or another process's PID: no watchdog.
        """
        self.assertIsNone(watchdog_interval({}))
        self.assertIsNone(watchdog_interval({"WATCHDOG_USEC": "0"}))
        self.assertIsNone(watchdog_interval({"WATCHDOG_USEC": "soon"}))
        self.assertIsNone(watchdog_interval({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}, pid=2))
        self.assertEqual(watchdog_interval({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "2"}, pid=2), 0.5)


class RecordingNotifier(Notifier):
    """
    A notifier that is enabled (as under systemd) and records each
    notification's fields instead of sending a datagram.
    """

    def __init__(self) -> None:
        super().__init__({"NOTIFY_SOCKET": "/run/systemd/notify-test"})
        self.sent: list[tuple[float, dict[str, object]]] = []
        self.clock: Any = None

    def notify(self, **fields: object) -> bool:
        self.sent.append((self.clock.seconds() if self.clock is not None else 0.0, fields))
        return True

    def close(self) -> None:
        pass

    def watchdog_times(self) -> list[float]:
        return [when for when, fields in self.sent if fields.get("WATCHDOG") == 1]

    def statuses(self) -> list[object]:
        return [fields["STATUS"] for _, fields in self.sent if "STATUS" in fields]


class WatchdogTests(unittest.TestCase):
    """
    Feeding the watchdog on a Clock.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.notifier = RecordingNotifier()
        self.notifier.clock = self.clock
        self.healthy = True
        self.connections = 0
        self.watchdog = Watchdog(
            self.clock,
            self.notifier,
            interval=2.0,
            healthy=lambda: self.healthy,
            status=lambda: f"serving: {self.connections} connections",
        )
        self.addCleanup(self.watchdog.stop)

    def test_feeds_while_healthy(self) -> None:
        """
        WATCHDOG=1 at once and then every interval; STATUS only when it
        changes.
        """
        self.watchdog.start()
        self.clock.pump([2.0] * 3)
        self.connections = 5
        self.clock.advance(2.0)
        self.assertEqual(self.notifier.watchdog_times(), [0.0, 2.0, 4.0, 6.0, 8.0])
        self.assertEqual(self.notifier.statuses(), ["serving: 0 connections", "serving: 5 connections"])

    def test_half_of_watchdog_usec_on_a_clock(self) -> None:
        """
        With the interval read from WATCHDOG_USEC=6000000 (6 s), WATCHDOG=1
        goes out every 3 s, half the deadline systemd enforces.
        """
        interval = watchdog_interval({"WATCHDOG_USEC": "6000000"})
        watchdog = Watchdog(self.clock, self.notifier, interval, healthy=lambda: True, status=lambda: "ok")
        self.addCleanup(watchdog.stop)
        watchdog.start()
        self.clock.pump([0.5] * 20)
        self.assertEqual(self.notifier.watchdog_times(), [0.0, 3.0, 6.0, 9.0])

    def test_status_only_without_watchdog(self) -> None:
        """
        Without a watchdog interval no WATCHDOG=1 is ever sent, but STATUS
        is still refreshed every status interval.
        """
        watchdog = Watchdog(
            self.clock, self.notifier, None, healthy=lambda: True, status=lambda: f"{self.connections}", status_interval=5.0
        )
        self.addCleanup(watchdog.stop)
        watchdog.start()
        self.clock.pump([5.0] * 2)
        self.connections = 1
        self.clock.advance(5.0)
        self.assertEqual(self.notifier.watchdog_times(), [])
        self.assertEqual(self.notifier.statuses(), ["0", "1"])

    def test_not_started_outside_systemd(self) -> None:
        """
        With no NOTIFY_SOCKET the watchdog does not even schedule a timer.
        """
        watchdog = Watchdog(self.clock, Notifier({}), 2.0, healthy=lambda: True, status=lambda: "ok")
        watchdog.start()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_leaves_nothing_scheduled(self) -> None:
        """
        stop() ends the feeding: no timer left, nothing sent afterwards.
        """
        self.watchdog.start()
        self.watchdog.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(10)
        self.assertEqual(self.notifier.watchdog_times(), [0.0])

    def test_withheld_while_lagging(self) -> None:
        """
        While unhealthy no WATCHDOG=1 goes out, so systemd will act; each
        withheld ping is counted and logged.
        """
        self.watchdog.start()
        self.healthy = False
        with capturedLogs() as events:
            self.clock.pump([2.0] * 3)
        self.assertEqual(self.notifier.watchdog_times(), [0.0])
        self.assertEqual([e["log_level"] for e in events], [LogLevel.warn] * 3)
        self.assertEqual(self.watchdog.missed, 3)
        self.healthy = True
        self.clock.advance(2.0)
        self.assertEqual(self.notifier.watchdog_times(), [0.0, 8.0])

    def test_a_failing_tick_does_not_stop_the_loop(self) -> None:
        """
        An exception in one tick is logged; the next tick still runs.
        """
        calls = []

        def flaky() -> str:
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("status broke")
            return "ok"

        watchdog = Watchdog(self.clock, self.notifier, 2.0, healthy=lambda: True, status=flaky)
        watchdog.start()
        self.addCleanup(watchdog.stop)
        self.clock.advance(2.0)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertIn((2.0, {"STATUS": "ok", "WATCHDOG": 1}), self.notifier.sent)


class ServiceWatchdogTests(unittest.TestCase):
    """
    WsheartService reads WATCHDOG_USEC from its environment and feeds the
    watchdog from the moment it is ready until it has drained.
    """

    def set_environ(self, **values: str) -> None:
        """
        The process environment for this test only: without any systemd
        variables of the machine running the tests, plus C{values}.
        """
        environ = {k: v for k, v in os.environ.items() if not k.startswith(("WATCHDOG_", "NOTIFY_SOCKET"))}
        environ.update(values)
        self.patch(os, "environ", environ)

    def make_service(self) -> tuple[WsheartService, RecordingNotifier, MemoryReactorClock]:
        reactor = MemoryReactorClock()
        hub = Hub(reactor)
        factory = ServerFactory(hub=hub, clock=reactor)
        notifier = RecordingNotifier()
        notifier.clock = reactor
        service = WsheartService(
            reactor,
            hub,
            factory,
            ["tcp:0"],
            Drainer(reactor, hub, DrainSettings(drain_time=1.0), close_timeout=0.5),
            LagMonitor(reactor, period=0.5, threshold=2.0),
            notifier=notifier,
            install_signal_handlers=False,
        )
        return service, notifier, reactor

    def run_and_stop(self, service: WsheartService, reactor: MemoryReactorClock, seconds: float) -> None:
        service.startService()
        reactor.run()  # runs the callWhenRunning hooks: the service is ready
        reactor.pump([0.5] * round(seconds / 0.5))
        stopped = service.stopService()
        reactor.advance(0)
        self.successResultOf(stopped)

    def test_service_feeds_the_watchdog_at_half_the_interval(self) -> None:
        """
        With WATCHDOG_USEC=4000000 (4 s) the service sends WATCHDOG=1 when
        it is ready and every 2 s after, stops when drained, and leaves no
        timer behind.
        """
        self.set_environ(WATCHDOG_USEC="4000000")
        service, notifier, reactor = self.make_service()
        self.assertEqual(service.watchdog.interval, 2.0)
        self.run_and_stop(service, reactor, 7.0)
        self.assertEqual(notifier.watchdog_times(), [0.0, 2.0, 4.0, 6.0])
        self.assertIn((0.0, {"READY": 1, "STATUS": "serving: 0 connections"}), notifier.sent)
        sent = len(notifier.sent)
        reactor.advance(10)
        self.assertEqual(len(notifier.sent), sent, "nothing sent after the stop")
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_reload_rereads_the_api_tokens_between_reloading_and_ready(self) -> None:
        """
        SIGHUP's reload (here without TLS, with API tokens) tells systemd
        RELOADING=1, re-reads the token file, then READY=1.
        """
        from wsheart.channels.api import ApiTokens

        service, notifier, reactor = self.make_service()
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"first-token-0123456789\n")
        service.api_tokens = ApiTokens.from_file(path)
        with open(path, "wb") as f:
            f.write(b"second-token-0123456789\n")
        service.reload()
        self.assertEqual([fields for _, fields in notifier.sent], [{"RELOADING": 1}, {"READY": 1}])
        self.assertEqual(service.api_tokens.tokens, (b"second-token-0123456789",))

    def test_watchdog_only_once_ready(self) -> None:
        """
        Nothing goes to the watchdog between startService and the reactor
        running: READY and the first WATCHDOG=1 go out together.
        """
        self.set_environ(WATCHDOG_USEC="4000000")
        service, notifier, reactor = self.make_service()
        service.startService()
        self.addCleanup(service.stopService)
        reactor.pump([0.5] * 6)
        self.assertEqual(notifier.sent, [])
        reactor.run()
        self.assertEqual(notifier.watchdog_times(), [3.0])

    def test_no_watchdog_without_watchdog_usec(self) -> None:
        """
        Without WATCHDOG_USEC (or with another process's WATCHDOG_PID) the
        service sends READY and STATUS but never WATCHDOG=1.
        """
        for environ in [{}, {"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid() + 1)}]:
            self.set_environ(**environ)
            service, notifier, reactor = self.make_service()
            self.assertIsNone(service.watchdog.interval)
            self.run_and_stop(service, reactor, 12.0)
            self.assertEqual(notifier.watchdog_times(), [], environ)
            self.assertIn((0.0, {"READY": 1, "STATUS": "serving: 0 connections"}), notifier.sent)
