"""
Tests for wsheart.heartbeat: cadence, misses, any-traffic liveness, RTT and
the death bound, first on the pure state machine and then wired into the
server protocol over an in-memory connection.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial import unittest

from wsheart import closecodes
from wsheart.heartbeat import CadenceMeter, Heartbeat, HeartbeatSettings, decode_ping, encode_ping

from .memory import connect_client, make_server_factory


class Recorder:
    """
    A Heartbeat wired to lists instead of a connection.
    """

    def __init__(self, clock: Clock, settings: HeartbeatSettings, answer_until: float = -1.0) -> None:
        self.pings: list[tuple[float, bytes]] = []
        self.answer_until = answer_until
        self.deaths: list[float] = []
        self.misses: list[int] = []
        self.clock = clock
        self.heartbeat = Heartbeat(
            clock,
            settings,
            send_ping=self._ping_sent,
            on_dead=lambda hb: self.deaths.append(clock.seconds()),
            on_miss=lambda hb: self.misses.append(hb.misses),
        )

    def _ping_sent(self, payload: bytes) -> None:
        self.pings.append((self.clock.seconds(), payload))
        if self.clock.seconds() < self.answer_until:
            # A healthy peer: the pong comes back at once.
            self.heartbeat.pong_received(payload)

    def answer_last(self) -> None:
        self.heartbeat.pong_received(self.pings[-1][1])


class SettingsTests(unittest.TestCase):
    """
    HeartbeatSettings validation and the bound it states.
    """

    def test_defaults_and_bound(self) -> None:
        """
        The defaults are 25 s / 10 s / 2 and the bound is
        interval * max_missed + timeout = 60 s.
        """
        settings = HeartbeatSettings()
        self.assertEqual((settings.interval, settings.timeout, settings.max_missed), (25.0, 10.0, 2))
        self.assertEqual(settings.death_bound, 60.0)

    def test_invalid(self) -> None:
        """
        Non-positive numbers, a timeout longer than the interval and fewer
        than one miss are refused with a message naming the problem.
        """
        for kwargs, text in [
            (dict(interval=0), "interval"),
            (dict(timeout=-1), "timeout"),
            (dict(interval=5, timeout=6), "must not exceed"),
            (dict(max_missed=0), "at least 1"),
        ]:
            with self.assertRaises(ValueError) as e:
                HeartbeatSettings(**kwargs)  # type: ignore[arg-type]
            self.assertIn(text, str(e.exception))


class PayloadTests(unittest.TestCase):
    """
    Ping payloads carry a sequence number and the send time.
    """

    def test_round_trip(self) -> None:
        """
        The sequence number survives encoding; payloads are 12 bytes.
        """
        payload = encode_ping(42, 1234.5)
        self.assertEqual(len(payload), 12)
        self.assertEqual(decode_ping(payload), 42)

    def test_foreign_payload(self) -> None:
        """
        A pong payload that is not one of ours decodes to None.
        """
        self.assertIsNone(decode_ping(b"hello"))
        self.assertIsNone(decode_ping(b""))


class HeartbeatTests(unittest.TestCase):
    """
    The state machine on a Clock.
    """

    settings = HeartbeatSettings(interval=10, timeout=4, max_missed=2)

    def setUp(self) -> None:
        self.clock = Clock()
        self.rec = Recorder(self.clock, self.settings)
        self.hb = self.rec.heartbeat

    def test_cadence(self) -> None:
        """
        The first ping goes out after the given delay, then one every
        interval while pongs come back; sequence numbers count up.
        """
        self.rec.answer_until = 1000
        self.hb.start(first_delay=3)
        self.clock.pump([1] * 40)
        self.assertEqual([t for t, _ in self.rec.pings], [3, 13, 23, 33])
        self.assertEqual([decode_ping(p) for _, p in self.rec.pings], [1, 2, 3, 4])
        self.assertEqual(self.hb.misses, 0)
        self.assertEqual(self.hb.pongs_received, 4)
        self.assertEqual(self.rec.deaths, [])

    def test_silence_is_death_after_max_missed(self) -> None:
        """
        With no pong and no traffic, each ping is a miss; the second miss
        (max_missed=2) declares death at ping + interval + timeout.
        """
        self.hb.start(first_delay=0)
        self.clock.advance(0)
        self.clock.pump([1] * 30)
        self.assertEqual(self.rec.misses, [1])
        self.assertEqual(self.rec.deaths, [14])  # pings at 0 and 10, checks at 4 and 14
        self.assertTrue(self.hb.dead)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_any_traffic_counts_as_life(self) -> None:
        """
        Inbound traffic during a ping's window saves it from being a miss,
        even with no pong.
        """
        self.hb.start(first_delay=0)
        self.clock.advance(0)
        for _ in range(10):
            self.clock.advance(1)
            self.hb.traffic_received()
            self.clock.advance(9)
        self.assertEqual(self.rec.deaths, [])
        self.assertEqual(self.hb.misses, 0)
        self.assertEqual(self.hb.last_seen, self.clock.seconds() - 9)

    def test_pong_resets_misses(self) -> None:
        """
        One miss followed by an answered ping brings the count back to 0.
        """
        self.hb.start(first_delay=0)
        self.clock.advance(0)
        self.clock.pump([1] * 10)  # first ping missed, second sent
        self.assertEqual(self.hb.misses, 1)
        self.rec.answer_last()
        self.assertEqual(self.hb.misses, 0)
        self.clock.advance(10)
        self.assertEqual(self.rec.deaths, [])

    def test_rtt(self) -> None:
        """
        A matched pong gives the RTT; the smoothed RTT moves by 1/8 of the
        difference per sample.
        """
        self.hb.start(first_delay=0)
        self.clock.advance(0)
        self.clock.advance(0.2)
        self.assertEqual(self.hb.pong_received(self.rec.pings[-1][1]), 0.2)
        self.assertAlmostEqual(self.hb.smoothed_rtt, 0.2)  # type: ignore[arg-type]
        self.clock.pump([0.2] * 4 + [0.5] * 18)  # second ping at exactly 10
        self.clock.advance(1.0)
        self.rec.answer_last()
        self.assertAlmostEqual(self.hb.last_rtt, 1.0)  # type: ignore[arg-type]
        self.assertAlmostEqual(self.hb.smoothed_rtt, 0.2 + (1.0 - 0.2) / 8)  # type: ignore[arg-type]
        self.assertEqual(self.hb.pongs_received, 2)

    def test_late_pong_is_life_not_rtt(self) -> None:
        """
        A pong for an older ping gives no RTT but still counts as traffic.
        """
        self.hb.start(first_delay=0)
        self.clock.advance(0)
        old = self.rec.pings[-1][1]
        self.clock.pump([1] * 10)  # old ping missed, a new one in flight
        self.assertIsNone(self.hb.pong_received(old))
        self.assertIsNone(self.hb.last_rtt)
        self.clock.advance(4)
        self.assertEqual(self.hb.misses, 0)
        self.assertEqual(self.rec.deaths, [])

    def test_stop_cancels(self) -> None:
        """
        Stopping leaves no delayed call behind and no more pings go out.
        """
        self.hb.start(first_delay=1)
        self.clock.advance(1)
        self.hb.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(100)
        self.assertEqual(len(self.rec.pings), 1)


class MovingClock(Clock):
    """
    A Clock whose time creeps forward on every read, as a real one does.
    """

    def seconds(self) -> float:
        self.rightNow += 1e-6
        return self.rightNow

    def callLater(self, delay: float, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        # The reactor refuses negative delays; task.Clock does not.
        assert delay >= 0, f"negative delay {delay}"
        return super().callLater(delay, *args, **kwargs)


class RealClockTests(unittest.TestCase):
    """
    Scheduling must not assume that two reads of the clock agree.
    """

    def test_late_timer_with_moving_clock(self) -> None:
        """
        With timeout == interval (the next ping is due the moment the check
        runs) and a clock that moves between reads, the heartbeat keeps
        pinging instead of failing to schedule.
        """
        clock = MovingClock()
        rec = Recorder(clock, HeartbeatSettings(interval=1, timeout=1, max_missed=2), answer_until=1000)
        rec.heartbeat.start(0)
        clock.pump([0.25] * 40)
        self.assertGreaterEqual(len(rec.pings), 9)
        self.assertEqual(rec.deaths, [])


class CadenceTests(unittest.TestCase):
    """
    Late timers do not slow the ping rate down.
    """

    def test_rate_kept_with_late_timers(self) -> None:
        """
        With timeout == interval and every timer firing 50 ms late (a timer
        wheel's slack), 100 intervals still carry 100 pings, not ~90.
        """
        clock = Clock()

        class Late:
            def callLater(self, delay: float, f: Any, *args: Any) -> Any:
                return clock.callLater(delay + 0.05, f, *args)

        settings = HeartbeatSettings(interval=1, timeout=1, max_missed=2)
        pings: list[float] = []

        def send(payload: bytes) -> None:
            pings.append(clock.seconds())
            heartbeat.pong_received(payload)

        heartbeat = Heartbeat(clock, settings, send_ping=send, on_dead=lambda hb: None, scheduler=Late())
        heartbeat.start(0)
        clock.pump([0.01] * 10_000)
        self.assertGreaterEqual(len(pings), 99)
        self.assertLessEqual(len(pings), 101)


class DeathBoundTests(unittest.TestCase):
    """
    The contract: a peer silent from time t is declared dead no later than
    t + interval * max_missed + timeout, wherever t falls in the cycle.
    """

    def check_bound(self, settings: HeartbeatSettings, first_delay: float) -> None:
        step = settings.interval / 16  # exact in binary: no float drift
        for k in range(48):  # three intervals of silence start times
            silent_at = first_delay + k * step
            clock = Clock()
            # The peer answers every ping at once until it goes silent.
            rec = Recorder(clock, settings, answer_until=silent_at)
            rec.heartbeat.start(first_delay)
            clock.pump([step] * int((silent_at + settings.death_bound) / step + 40))
            self.assertEqual(len(rec.deaths), 1, f"silent at {silent_at}")
            # The Clock only fires timers at step boundaries: that is the
            # "scheduler slack" of the contract, one step here.
            self.assertLessEqual(
                rec.deaths[0] - silent_at,
                settings.death_bound + step,
                f"silent at {silent_at}: dead at {rec.deaths[0]}",
            )
            # ... and not absurdly early: at least (max_missed - 1)
            # intervals plus the timeout after the last answered ping.
            self.assertGreaterEqual(
                rec.deaths[0] - silent_at,
                (settings.max_missed - 1) * settings.interval + settings.timeout - step,
            )

    def test_default_bound(self) -> None:
        """
        Defaults (25 s, 10 s, 2): dead within 60 s of going silent.
        """
        self.check_bound(HeartbeatSettings(), first_delay=7.8125)

    def test_other_settings(self) -> None:
        """
        Other settings (2 s, 2 s, 3), where timeout equals interval.
        """
        self.check_bound(HeartbeatSettings(interval=2, timeout=2, max_missed=3), first_delay=0.5)

    def test_single_miss(self) -> None:
        """
        max_missed=1 (4 s, 1 s): dead within 5 s.
        """
        self.check_bound(HeartbeatSettings(interval=4, timeout=1, max_missed=1), first_delay=3)


class ServerHeartbeatTests(unittest.TestCase):
    """
    The heartbeat wired into the server protocol, over an in-memory
    connection to a plain Autobahn client.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.settings = HeartbeatSettings(interval=10, timeout=4, max_missed=2)
        self.factory = make_server_factory(self.clock, heartbeat=self.settings, close_timeout=1.0)
        self.client, self.server, self.pump = connect_client(self.factory, self.clock)

    def advance(self, seconds: float, pump: bool = True) -> None:
        for _ in range(int(seconds * 10)):
            self.clock.advance(0.1)
            if pump:
                self.pump.flush()

    def test_native_pings_answered(self) -> None:
        """
        The server sends native pings with sequence numbers; an answering
        client stays registered with an RTT.
        """
        self.advance(35)
        self.assertGreaterEqual(len(self.client.pings), 3)
        self.assertEqual([decode_ping(p) for p in self.client.pings[:3]], [1, 2, 3])
        self.assertEqual(len(self.factory.hub), 1)
        snapshot = self.factory.hub.snapshot()[0]
        self.assertEqual(snapshot.misses, 0)
        self.assertIsNotNone(snapshot.last_rtt)

    def test_first_ping_spread(self) -> None:
        """
        Connections opened together get their first ping at different
        moments spread over the interval.
        """
        firsts = []
        for _ in range(20):
            client, server, pump = connect_client(self.factory, self.clock)
            firsts.append(server.heartbeat._call.getTime() - self.clock.seconds())
        self.assertTrue(all(0 <= f <= self.settings.interval for f in firsts))
        self.assertGreater(max(firsts) - min(firsts), self.settings.interval / 2)

    def test_frozen_peer_declared_dead_within_bound(self) -> None:
        """
        A client that stops answering (its socket stays open) is declared
        dead within interval * max_missed + timeout, leaves the hub at that
        moment, gets close 1011 "heartbeat timeout", and its TCP connection
        is closed right away (aborted close_timeout later if that stalls).
        """
        self.advance(12)
        removed = []
        self.factory.hub.on_removal(lambda info, cause: removed.append((self.clock.seconds(), cause)))
        frozen_at = self.clock.seconds()
        # A frozen process: its socket stays open, nothing is read or sent.
        while not removed and self.clock.seconds() < frozen_at + 100:
            self.advance(0.1, pump=False)
        self.assertEqual(len(removed), 1)
        died_at, cause = removed[0]
        self.assertEqual(cause, "dead")
        self.assertLessEqual(died_at - frozen_at, self.settings.death_bound + 0.1)
        self.assertEqual(len(self.factory.hub), 0)
        self.assertEqual(self.server.localCloseCode, closecodes.INTERNAL_ERROR)
        self.assertEqual(self.server.localCloseReason, b"heartbeat timeout")
        # The close frame went out and TCP is closing at once: waiting for
        # a dead peer to answer is pointless.  Should even the flush stall,
        # the connection is aborted close_timeout later.
        server_io = self.pump.serverIO
        self.assertTrue(server_io.disconnecting)
        aborted: list[float] = []
        self.server.transport.abortConnection = lambda: aborted.append(self.clock.seconds())
        self.clock.advance(1.0)
        self.assertEqual(aborted, [died_at + 1.0])
        self.pump.flush()
        self.assertEqual(self.factory.hub.closed_total, {"dead": 1})
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_death_logged_once(self) -> None:
        """
        The death is logged once, with peer, misses and last RTT.
        """
        from twisted.logger import capturedLogs

        self.advance(12)
        self.client.frozen = True
        with capturedLogs() as events:
            self.advance(40)
        deaths = [e for e in events if e.get("cause") == "heartbeat"]
        self.assertEqual(len(deaths), 1)
        self.assertEqual(deaths[0]["misses"], 2)
        self.assertIn("ms", deaths[0]["rtt"])
        self.assertEqual(deaths[0]["peer"], self.server.peer)


class PayloadAndSettingsEdgeTests(unittest.TestCase):
    """
    Edges that a mutation run found unprotected.
    """

    def test_ping_payload_layout(self) -> None:
        """
        A ping carries its seq (4 bytes) and its send time in microseconds
        (8 bytes), big-endian: 12 bytes, as the pong fast path expects.
        """
        import struct

        payload = encode_ping(7, 1.5)
        self.assertEqual(payload, struct.pack("!IQ", 7, 1_500_000))
        self.assertEqual(decode_ping(payload), 7)

    def test_zero_timeout_is_refused(self) -> None:
        """
        A ping timeout of zero is as invalid as a negative one.
        """
        with self.assertRaises(ValueError):
            HeartbeatSettings(interval=10, timeout=0)


class ServerLatenessTests(unittest.TestCase):
    """
    The server's own lateness is never charged to a peer: the verdict waits
    for the reactor's next read, a late ping gets its whole timeout, and a
    cadence that cannot be kept stretches instead of bunching - visibly.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.settings = HeartbeatSettings(interval=1.0, timeout=0.5, max_missed=1)
        self.verdicts: list[Any] = []
        self.meter = CadenceMeter(self.settings, slack=0.0, on_change=self.changes_append)
        self.changes: list[bool] = []
        self.pings: list[tuple[float, bytes]] = []
        self.deaths: list[float] = []

    def changes_append(self, degraded: bool) -> None:
        self.changes.append(degraded)

    def after_reads(self, f: Any) -> Any:
        """
        What the reactor does with callLater(0): run it on its next turn,
        after reading its sockets; here the test plays that turn.
        """
        call = self.clock.callLater(10_000, f)  # never by time: only by read_then_judge
        self.verdicts.append(call)
        return call

    def read_then_judge(self) -> None:
        pending, self.verdicts = self.verdicts, []
        for call in pending:
            if call.active():
                func, args = call.func, call.args
                call.cancel()
                func(*args)

    def heartbeat(self, scheduler: Any = None) -> Heartbeat:
        return Heartbeat(
            self.clock,
            self.settings,
            send_ping=lambda payload: self.pings.append((self.clock.seconds(), payload)),
            on_dead=lambda hb: self.deaths.append(self.clock.seconds()),
            scheduler=scheduler,
            after_reads=self.after_reads,
            meter=self.meter,
        )

    def test_an_answer_read_after_the_check_is_an_answer(self) -> None:
        """
        The check finds no pong (it sits unread while the reactor is busy):
        no verdict yet; the reactor's next turn reads it, then judges: alive,
        and counted as an answer read late.
        """
        heartbeat = self.heartbeat()
        heartbeat.start(0)
        self.clock.advance(0)  # the first ping goes out at 0
        self.clock.advance(0.5)
        self.assertEqual((heartbeat.misses, self.deaths, len(self.verdicts)), (0, [], 1), "judged only after a read")
        heartbeat.pong_received(self.pings[-1][1])  # the read finds the pong
        self.read_then_judge()
        self.assertEqual((heartbeat.misses, self.deaths, self.meter.forgiven), (0, [], 1))
        self.clock.advance(0.5)
        self.assertEqual(len(self.pings), 2, "the cadence goes on")

    def test_silence_is_still_death_after_the_read(self) -> None:
        """
        Nothing in the read either: the verdict is death (max_missed 1), at
        the reactor's next turn after the check.
        """
        heartbeat = self.heartbeat()
        heartbeat.start(0)
        self.clock.advance(0)  # the first ping goes out at 0
        self.clock.advance(0.5)
        self.read_then_judge()
        self.assertEqual(self.deaths, [0.5])
        self.assertTrue(heartbeat.dead)
        self.assertEqual(self.meter.forgiven, 0)

    def test_stop_cancels_a_pending_verdict(self) -> None:
        """
        A connection that closes while its verdict waits is never judged.
        """
        heartbeat = self.heartbeat()
        heartbeat.start(0)
        self.clock.advance(0)  # the first ping goes out at 0
        self.clock.advance(0.5)
        heartbeat.stop()
        self.read_then_judge()
        self.assertEqual(self.deaths, [])

    def test_a_late_ping_gets_its_whole_timeout(self) -> None:
        """
        Timers firing 0.4 s late (timeout 0.5 s): a pong 0.45 s after the
        ping actually went out still counts; a silent peer is judged 0.5 s
        after the actual send, not before.
        """
        clock = self.clock

        class Late:
            def callLater(self, delay: float, f: Any, *args: Any) -> Any:
                return clock.callLater(delay + 0.4, f, *args)

        heartbeat = self.heartbeat(scheduler=Late())
        heartbeat.start(0)
        clock.advance(0.4)
        sent_at, payload = self.pings[-1]
        self.assertAlmostEqual(sent_at, 0.4)
        clock.advance(0.45)  # the check was due at 0.5 + 0.4 late = 0.9: not yet the whole timeout
        heartbeat.pong_received(payload)
        clock.advance(0.2)
        self.read_then_judge()
        self.assertEqual((heartbeat.misses, self.deaths), (0, []))
        heartbeat.stop()

        silent = self.heartbeat(scheduler=Late())
        self.deaths.clear()
        silent.start(0)
        clock.advance(0.4)
        ping_at = self.pings[-1][0]
        for _ in range(20):
            clock.advance(0.05)
            self.read_then_judge()
        self.assertEqual(len(self.deaths), 1)
        self.assertGreaterEqual(self.deaths[0] - ping_at, self.settings.timeout - 1e-9)

    def test_the_cadence_stretches_instead_of_bunching_and_says_so(self) -> None:
        """
        A scheduler 1.5 intervals late: pings never go out back to back to
        catch up; the meter's effective interval rises past the configured
        one and it reports degradation once, then recovery once when the
        lateness ends.
        """
        clock = self.clock
        lateness = [1.5]

        class Late:
            def callLater(self, delay: float, f: Any, *args: Any) -> Any:
                return clock.callLater(delay + lateness[0], f, *args)

        sent: list[float] = []

        def answer(payload: bytes) -> None:
            sent.append(clock.seconds())
            heartbeat.pong_received(payload)

        self.meter.alpha = 0.2  # one connection: let a few pings move the average
        heartbeat = Heartbeat(clock, self.settings, send_ping=answer, on_dead=self.deaths.append, scheduler=Late(), meter=self.meter)
        heartbeat.start(0)
        clock.pump([0.05] * 400)  # 20 s
        gaps = [b - a for a, b in zip(sent, sent[1:])]
        self.assertGreater(min(gaps), 0.5, "no back-to-back pings")
        self.assertGreater(self.meter.effective_interval, 1.5 * self.settings.interval)
        self.assertEqual(self.changes, [True])
        lateness[0] = 0.0
        clock.pump([0.05] * 400)
        self.assertEqual(self.changes, [True, False])
        self.assertLess(self.meter.effective_interval, 1.1 * self.settings.interval)
        self.assertEqual(self.deaths, [])


class CadenceMeterTests(unittest.TestCase):
    def test_degraded_with_hysteresis(self) -> None:
        """
        Degraded above 10% over the interval (plus the wheel's slack), and
        again healthy only below 5%.
        """
        changes: list[bool] = []
        meter = CadenceMeter(HeartbeatSettings(interval=1.0, timeout=0.5), slack=0.05, on_change=changes.append, alpha=1.0)
        meter.pinged(0.0, 1.14)
        self.assertEqual(changes, [])
        meter.pinged(0.2, 1.16)
        self.assertEqual((changes, meter.degraded), ([True], True))
        meter.pinged(0.0, 1.11)
        self.assertEqual(changes, [True], "between 5% and 10% over: still degraded")
        meter.pinged(0.0, 1.09)
        self.assertEqual(changes, [True, False])
        self.assertAlmostEqual(meter.lateness, 0.0)

    def test_smoothed_over_time_not_over_a_count_of_pings(self) -> None:
        """
        Under a heavy load thousands of pings go out a second: the figures
        are smoothed over about the last 30 s whatever their number, so a
        burst of 100000 late pings within one second moves them by about a
        thirtieth of the way, and a minute of them all the way.
        """
        meter = CadenceMeter(HeartbeatSettings(interval=1.0, timeout=0.5), slack=0.0)
        now = 1000.0
        meter.pinged(0.0, 1.0, now)
        for _ in range(100_000):
            now += 1e-5
            meter.pinged(1.0, 2.0, now)
        self.assertLess(abs(meter.effective_interval - (1.0 + 1.0 / 30)), 0.005, meter.effective_interval)
        self.assertFalse(meter.degraded)
        for _ in range(6000):
            now += 0.01
            meter.pinged(1.0, 2.0, now)
        self.assertLess(abs(meter.effective_interval - 2.0), 0.2, meter.effective_interval)
        self.assertTrue(meter.degraded)
