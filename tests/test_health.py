"""
Unit tests of wsheart.health on a Clock: the reactor lag monitor (on time,
stalled, recovering, stopped and restarted) and the serving / draining /
lagging state that /healthz and the systemd watchdog read.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from twisted.trial import unittest

from wsheart.health import Health, LagMonitor


class LagMonitorTests(unittest.TestCase):
    """
    Reactor lag measured on a Clock.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.lag = LagMonitor(self.clock, period=0.5, threshold=2.0)
        self.addCleanup(self.lag.stop)

    def stall(self, seconds: float) -> None:
        """
        Time passes and no timer runs (a blocked reactor), then the late
        timers fire.
        """
        self.clock.rightNow += seconds
        self.clock.advance(0)

    def test_on_time(self) -> None:
        """
        Ticks on time measure no lag.
        """
        self.lag.start()
        self.clock.pump([0.5] * 10)
        self.assertEqual(self.lag.lag, 0)
        self.assertEqual(self.lag.max_lag, 0)
        self.assertTrue(self.lag.healthy())

    def test_not_started(self) -> None:
        """
        Before the first tick there is nothing to be late for: no lag,
        healthy, and no timer scheduled.
        """
        self.clock.advance(100)
        self.assertEqual(self.lag.current_lag(), 0.0)
        self.assertTrue(self.lag.healthy())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_late_tick_measured(self) -> None:
        """
        A tick that runs 1.2 s after it was due measures 1.2 s of lag; the
        next on-time tick measures none, and max_lag keeps the worst.
        """
        self.lag.start()
        self.stall(1.7)  # due at 0.5, runs at 1.7
        self.assertAlmostEqual(self.lag.lag, 1.2)
        self.assertTrue(self.lag.healthy(), "1.2 s is under the 2 s threshold")
        self.clock.advance(0.5)
        self.assertEqual(self.lag.lag, 0.0)
        self.assertAlmostEqual(self.lag.max_lag, 1.2)

    def test_stall_is_unhealthy_while_pending(self) -> None:
        """
        A stalled reactor is unhealthy already while the overdue tick is
        still pending (current_lag counts it), and again once it ran; it is
        healthy after it recovers.
        """
        self.lag.start()
        self.clock.rightNow += 3.5  # due at 0.5: 3 s overdue, not run yet
        self.assertAlmostEqual(self.lag.current_lag(), 3.0)
        self.assertEqual(self.lag.lag, 0.0, "no tick has measured it yet")
        self.assertFalse(self.lag.healthy())
        self.clock.advance(0)
        self.assertAlmostEqual(self.lag.lag, 3.0)
        self.assertFalse(self.lag.healthy())
        self.clock.pump([0.5] * 2)
        self.assertTrue(self.lag.healthy())
        self.assertEqual(self.lag.max_lag, 3.0)

    def test_threshold_is_inclusive(self) -> None:
        """
        Lag exactly at the threshold is still healthy; just over it is not.
        """
        self.lag.start()
        self.clock.rightNow += 2.5  # 2.0 s overdue
        self.assertTrue(self.lag.healthy())
        self.clock.rightNow += 0.01
        self.assertFalse(self.lag.healthy())

    def test_lag_over_threshold_is_logged(self) -> None:
        """
        A tick later than the threshold logs a warning with the lag; a late
        tick under the threshold logs nothing.
        """
        self.lag.start()
        with capturedLogs() as events:
            self.stall(1.5)
            self.clock.advance(0.5)
            self.stall(3.5)
        warnings = [e for e in events if e["log_level"] == LogLevel.warn]
        self.assertEqual(len(warnings), 1)
        self.assertAlmostEqual(warnings[0]["lag"], 3.0)
        self.assertIn("late", warnings[0]["log_format"])

    def test_start_twice_and_stop_twice(self) -> None:
        """
        start() while running and stop() while stopped change nothing;
        stop() leaves no timer behind.
        """
        self.lag.start()
        self.lag.start()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.lag.stop()
        self.lag.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_restart_after_a_pause_is_not_lag(self) -> None:
        """
        A monitor stopped for a while and started again does not count the
        pause as lag: the first tick after start() measures nothing.
        """
        self.lag.start()
        self.clock.advance(0.5)
        self.lag.stop()
        self.clock.advance(60)
        self.lag.start()
        self.assertEqual(self.lag.lag, 0.0)
        self.assertTrue(self.lag.healthy())
        self.clock.advance(0.5)
        self.assertEqual(self.lag.lag, 0.0)


class HealthTests(unittest.TestCase):
    """
    What /healthz reports.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.lag = LagMonitor(self.clock, period=0.5, threshold=2.0)
        self.health = Health(self.lag)
        self.addCleanup(self.lag.stop)

    def test_serving(self) -> None:
        """
        Not draining and on time: serving, ok.
        """
        self.lag.start()
        self.clock.pump([0.5] * 4)
        self.assertEqual(self.health.state(), "serving")
        self.assertTrue(self.health.ok())

    def test_lagging(self) -> None:
        """
        A stalled reactor makes it lagging, not ok; recovery makes it
        serving again.
        """
        self.lag.start()
        self.clock.rightNow += 5
        self.assertEqual(self.health.state(), "lagging")
        self.assertFalse(self.health.ok())
        self.clock.advance(0)
        self.clock.pump([0.5] * 2)
        self.assertEqual(self.health.state(), "serving")

    def test_draining_wins(self) -> None:
        """
        Draining is reported as draining (not ok) whatever the lag: a
        draining process must leave the load balancer even if it is late.
        """
        self.health.draining = True
        self.assertEqual(self.health.state(), "draining")
        self.assertFalse(self.health.ok())
        self.lag.start()
        self.clock.rightNow += 5
        self.assertEqual(self.health.state(), "draining")
