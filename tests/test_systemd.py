"""
Tests for wsheart.systemd (sd_notify over a real datagram socket, the
watchdog cadence) and wsheart.health (reactor lag).
"""

from __future__ import annotations

import os
import socket
import tempfile

from twisted.internet.task import Clock
from twisted.trial import unittest

from wsheart.health import Health, LagMonitor
from wsheart.systemd import Notifier, Watchdog, watchdog_interval


class NotifySocket:
    """
    A real AF_UNIX datagram socket standing in for systemd's.
    """

    def __init__(self, test: unittest.TestCase, abstract: bool = False) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        test.addCleanup(self.sock.close)
        if abstract:
            name = f"wsheart-test-{os.getpid()}-{id(self)}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            directory = tempfile.mkdtemp()
            test.addCleanup(os.rmdir, directory)
            path = os.path.join(directory, "notify")
            self.sock.bind(path)
            test.addCleanup(os.unlink, path)
            self.address = path
        self.sock.setblocking(False)

    def messages(self) -> list[dict[str, str]]:
        received = []
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return received
            received.append(dict(line.split("=", 1) for line in data.decode().split("\n")))


class NotifierTests(unittest.TestCase):
    """
    sd_notify datagrams.
    """

    def test_sends_fields(self) -> None:
        """
        notify() sends KEY=value lines in one datagram.
        """
        server = NotifySocket(self)
        notifier = Notifier({"NOTIFY_SOCKET": server.address})
        self.addCleanup(notifier.close)
        self.assertTrue(notifier.notify(READY=1, STATUS="serving: 0 connections"))
        self.assertEqual(server.messages(), [{"READY": "1", "STATUS": "serving: 0 connections"}])

    def test_abstract_namespace(self) -> None:
        """
        An address starting with @ is in the abstract namespace.
        """
        server = NotifySocket(self, abstract=True)
        notifier = Notifier({"NOTIFY_SOCKET": server.address})
        self.addCleanup(notifier.close)
        notifier.notify(WATCHDOG=1)
        self.assertEqual(server.messages(), [{"WATCHDOG": "1"}])

    def test_silent_without_systemd(self) -> None:
        """
        Without NOTIFY_SOCKET nothing is sent and nothing fails.
        """
        notifier = Notifier({})
        self.assertFalse(notifier.enabled)
        self.assertFalse(notifier.notify(READY=1))

    def test_gone_socket_is_logged_not_raised(self) -> None:
        """
        A socket path that does not exist is logged; the caller carries on.
        """
        notifier = Notifier({"NOTIFY_SOCKET": "/nonexistent/notify"})
        self.addCleanup(notifier.close)
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


class WatchdogTests(unittest.TestCase):
    """
    Feeding the watchdog on a Clock.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.server = NotifySocket(self)
        self.notifier = Notifier({"NOTIFY_SOCKET": self.server.address})
        self.addCleanup(self.notifier.close)
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
        WATCHDOG=1 every interval; STATUS only when it changes.
        """
        self.watchdog.start()
        self.clock.pump([2.0] * 3)
        self.connections = 5
        self.clock.advance(2.0)
        messages = self.server.messages()
        self.assertEqual(len(messages), 5)
        self.assertTrue(all(m.get("WATCHDOG") == "1" for m in messages))
        statuses = [m["STATUS"] for m in messages if "STATUS" in m]
        self.assertEqual(statuses, ["serving: 0 connections", "serving: 5 connections"])

    def test_withheld_while_lagging(self) -> None:
        """
        While unhealthy no WATCHDOG=1 goes out, so systemd will act.
        """
        self.watchdog.start()
        self.server.messages()
        self.healthy = False
        self.clock.pump([2.0] * 3)
        self.assertEqual([m for m in self.server.messages() if "WATCHDOG" in m], [])
        self.assertEqual(self.watchdog.missed, 3)
        self.healthy = True
        self.clock.advance(2.0)
        self.assertEqual(self.server.messages(), [{"WATCHDOG": "1"}])

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
        self.assertIn({"STATUS": "ok", "WATCHDOG": "1"}, self.server.messages())


class LagMonitorTests(unittest.TestCase):
    """
    Reactor lag measured on a Clock.
    """

    def test_on_time(self) -> None:
        """
        Ticks on time measure no lag.
        """
        clock = Clock()
        lag = LagMonitor(clock, period=0.5, threshold=2.0)
        lag.start()
        clock.pump([0.5] * 10)
        self.assertEqual(lag.lag, 0)
        self.assertTrue(lag.healthy())
        lag.stop()

    def test_stall_is_unhealthy(self) -> None:
        """
        A tick 3 s late (a stalled reactor) makes it unhealthy, also while
        the late tick is still pending; recovery makes it healthy again.
        """
        clock = Clock()
        lag = LagMonitor(clock, period=0.5, threshold=2.0)
        health = Health(lag)
        lag.start()
        clock.rightNow += 3.5  # time passes, no timer runs: a stall
        self.assertFalse(lag.healthy())
        self.assertEqual(health.state(), "lagging")
        clock.advance(0)
        self.assertAlmostEqual(lag.lag, 3.0)
        clock.pump([0.5] * 2)
        self.assertTrue(lag.healthy())
        self.assertEqual(health.state(), "serving")
        self.assertEqual(lag.max_lag, 3.0)
        health.draining = True
        self.assertEqual(health.state(), "draining")
        lag.stop()
