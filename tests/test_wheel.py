"""
Tests for wsheart.wheel: timers grouped in slots on a Clock, never early,
at most one resolution late, cancellable, and leaving nothing behind.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial import unittest

from wsheart.heartbeat import Heartbeat, HeartbeatSettings
from wsheart.wheel import TimerWheel


class TimerWheelTests(unittest.TestCase):
    """
    The wheel on a Clock.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.wheel = TimerWheel(self.clock, resolution=0.1)
        self.fired: list[tuple[str, float]] = []

    def record(self, name: str) -> None:
        self.fired.append((name, self.clock.seconds()))

    def test_not_early_at_most_one_slot_late(self) -> None:
        """
        Each timer fires at or after its due time and within one
        resolution of it.
        """
        delays = [0.0, 0.01, 0.05, 0.1, 0.25, 1.0, 1.05, 3.333]
        for i, delay in enumerate(delays):
            self.wheel.callLater(delay, self.record, str(i))
        self.clock.pump([0.01] * 400)
        self.assertEqual(len(self.fired), len(delays))
        for name, at in self.fired:
            due = delays[int(name)]
            self.assertGreaterEqual(at + 1e-9, due)
            self.assertLessEqual(at, due + 0.1 + 0.01 + 1e-9)

    def test_one_reactor_timer_per_slot(self) -> None:
        """
        A thousand timers in the same slot cost one reactor timer.
        """
        for i in range(1000):
            self.wheel.callLater(0.5 + i / 100_000, self.record, str(i))
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.assertEqual(len(self.wheel), 1000)
        self.clock.advance(0.7)
        self.assertEqual(len(self.fired), 1000)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancel(self) -> None:
        """
        A cancelled timer does not fire; when none is left, no reactor
        timer is left either.
        """
        a = self.wheel.callLater(1, self.record, "a")
        b = self.wheel.callLater(2, self.record, "b")
        a.cancel()
        self.assertFalse(a.active())
        self.assertTrue(b.active())
        b.cancel()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(5)
        self.assertEqual(self.fired, [])

    def test_failure_does_not_stop_the_others(self) -> None:
        """
        A timer that raises is logged; the rest of its slot still runs.
        """

        def boom() -> None:
            raise RuntimeError("one bad connection")

        self.wheel.callLater(1, boom)
        self.wheel.callLater(1, self.record, "after")
        self.clock.advance(1.1)
        self.assertEqual([name for name, _ in self.fired], ["after"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_heartbeat_bound_on_the_wheel(self) -> None:
        """
        A heartbeat scheduled on the wheel keeps the death bound, plus one
        resolution of slack per timer.
        """
        settings = HeartbeatSettings(interval=1, timeout=0.5, max_missed=2)
        for silent_at in (0.0, 0.3, 0.77, 1.5):
            clock = Clock()
            wheel = TimerWheel(clock, resolution=0.05)
            deaths: list[float] = []

            def send_ping(payload: bytes) -> None:
                if clock.seconds() < silent_at:
                    heartbeat.pong_received(payload)

            heartbeat = Heartbeat(
                clock, settings, send_ping=send_ping,
                on_dead=lambda hb: deaths.append(clock.seconds()), scheduler=wheel,
            )  # fmt: skip
            heartbeat.start(0.2)
            clock.pump([0.01] * 600)
            self.assertEqual(len(deaths), 1)
            self.assertLessEqual(deaths[0] - silent_at, settings.death_bound + 2 * (0.05 + 0.01))


class WheelEdgeTests(unittest.TestCase):
    """
    Edges that a mutation run found unprotected.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.wheel = TimerWheel(self.clock, resolution=0.05)
        self.fired: list[str] = []

    def test_an_earlier_timer_moves_the_reactor_timer(self) -> None:
        """
        A 1 s timer added after a 10 s one fires at about 1 s, not 10.
        """
        self.wheel.callLater(10, self.fired.append, "late")
        self.wheel.callLater(1, self.fired.append, "early")
        self.clock.advance(1.05)
        self.assertEqual(self.fired, ["early"])
        self.assertEqual(len(self.wheel), 1)
        self.clock.advance(9)
        self.assertEqual(self.fired, ["early", "late"])
        self.assertEqual(len(self.wheel), 0)

    def test_cancelling_one_timer_of_a_slot_keeps_the_others(self) -> None:
        """
        Two timers in one slot; the first cancelled, the second still runs.
        """
        first = self.wheel.callLater(0.99, self.fired.append, "first")  # both in the slot ending at 1.0
        self.wheel.callLater(1.0, self.fired.append, "second")
        first.cancel()
        self.clock.advance(1.1)
        self.assertEqual(self.fired, ["second"])

    def test_a_tick_exactly_on_a_slot_boundary(self) -> None:
        """
        A timer due exactly on a slot boundary fires when the clock gets
        there (the float division must not leave it for ever).
        """
        self.clock.advance(0.3)  # 0.3 / 0.05 is 5.999... in floating point
        self.wheel.callLater(0, self.fired.append, "now")
        self.clock.advance(0.001)
        self.assertEqual(self.fired, ["now"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_cancels_everything_and_may_be_repeated(self) -> None:
        """
        stop() leaves no timer active, none pending, no reactor timer; a
        second stop() is harmless.
        """
        timers = [self.wheel.callLater(d, self.fired.append, str(d)) for d in (1, 2, 3)]
        self.wheel.stop()
        self.wheel.stop()
        self.assertEqual([t.active() for t in timers], [False, False, False])
        self.assertEqual(len(self.wheel), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(5)
        self.assertEqual(self.fired, [])

    def test_resolution_must_be_positive(self) -> None:
        """
        A wheel with no or a negative resolution is refused.
        """
        for resolution in (0, -0.05):
            with self.assertRaises(ValueError):
                TimerWheel(self.clock, resolution=resolution)


class CallAtTests(unittest.TestCase):
    """
    L{TimerWheel.call_at}: a moment instead of a delay.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.wheel = TimerWheel(self.clock, resolution=0.05)
        self.fired: list[tuple[str, float]] = []

    def record(self, name: str) -> None:
        self.fired.append((name, self.clock.seconds()))

    def test_a_moment_ahead_is_never_early_and_at_most_a_slot_late(self) -> None:
        self.clock.advance(3.0)
        self.wheel.call_at(4.012, self.record, "ahead")
        self.clock.advance(1.0)
        self.assertEqual(self.fired, [])
        self.clock.advance(0.05)
        [(name, at)] = self.fired
        self.assertGreaterEqual(at, 4.012)
        self.assertLessEqual(at, 4.012 + 0.05)

    def test_a_moment_past_runs_on_the_next_turn(self) -> None:
        """
        Set from outside a slot for a moment already past: the next turn
        of the reactor runs it, however long ago the moment was.
        """
        self.clock.advance(10.0)
        self.wheel.call_at(2.0, self.record, "past")
        self.clock.advance(0)
        self.assertEqual(self.fired, [("past", 10.0)])
        self.assertEqual(len(self.wheel), 0)

    def test_a_moment_past_set_while_a_slot_runs_runs_in_that_slot(self) -> None:
        """
        A check that finds the next ping already due (timeout == interval)
        sends it in the same slot, not a slot later.
        """

        def check() -> None:
            self.record("check")
            self.wheel.call_at(self.clock.seconds() - 0.01, self.record, "ping")

        self.wheel.call_at(1.0, check)
        self.clock.advance(1.0)
        self.assertEqual(self.fired, [("check", 1.0), ("ping", 1.0)])
        self.assertEqual(len(self.wheel), 0)
