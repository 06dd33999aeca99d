"""
Liveness of one WebSocket connection: when to ping, what counts as a miss,
when the peer is dead, and the round-trip times along the way.

This module is the pure core of heartbeating.  It sends nothing and reads no
clock of its own: the caller hands in an L{IReactorTime} and two callables
(send a ping payload, report death) and feeds in what arrives (any traffic,
pong payloads).  Server and client protocols both use it.

The contract (see README "Heartbeat bound"):

  - a ping goes out every C{interval} seconds; its payload carries a
    sequence number and the send time, so a pong is matched to its ping;
  - a ping not answered within C{timeout} seconds, with no other inbound
    traffic in that window either, is a miss;
  - C{max_missed} consecutive misses declare the peer dead;
  - hence a peer that goes silent at time t is declared dead no later than
    C{t + interval * max_missed + timeout}.

The server's own lateness is never charged to a peer (see README "Heartbeat
bound"):

  - a ping counts as missed only once the peer has had the full C{timeout}
    since the ping actually went out (a ping sent late gets its check
    moved, not shortened);
  - a check that finds no answer does not decide at once: the verdict waits
    for the reactor's next turn (C{after_reads}), after it has read what
    its sockets hold, so a pong already received by the kernel but not yet
    read - because the reactor was busy - counts as an answer;
  - when the reactor cannot keep the cadence (more than an interval behind),
    the cadence stretches instead of bunching pings, and L{CadenceMeter}
    reports the interval actually achieved and the lateness, so the bound
    above holds with the effective interval plus that lateness.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Callable, Optional

from twisted.internet.interfaces import IDelayedCall, IReactorTime

# Ping payload: sequence number (unsigned 32 bit) and send time in
# microseconds of the injected clock (unsigned 64 bit).  Twelve bytes, far
# below the 125 bytes a control frame may carry.
_PAYLOAD = struct.Struct("!IQ")

# Weight of a new sample in the smoothed RTT, as TCP's SRTT (RFC 6298).
_RTT_ALPHA = 0.125


@dataclass(frozen=True)
class HeartbeatSettings:
    """
    The three numbers that define a heartbeat, validated once.

    @ivar interval: seconds between pings.
    @ivar timeout: seconds a ping may wait for its pong; at most C{interval}.
    @ivar max_missed: consecutive misses that make the peer dead.
    """

    interval: float = 25.0
    timeout: float = 10.0
    max_missed: int = 2

    def __post_init__(self) -> None:
        if not self.interval > 0:
            raise ValueError(f"ping interval must be positive, got {self.interval}")
        if not self.timeout > 0:
            raise ValueError(f"ping timeout must be positive, got {self.timeout}")
        if self.timeout > self.interval:
            raise ValueError(
                f"ping timeout ({self.timeout} s) must not exceed the ping "
                f"interval ({self.interval} s): one ping is answered or missed "
                "before the next goes out"
            )
        if self.max_missed < 1:
            raise ValueError(f"max missed pongs must be at least 1, got {self.max_missed}")

    @property
    def death_bound(self) -> float:
        """
        Seconds after a peer goes silent by which it is declared dead.
        """
        return self.interval * self.max_missed + self.timeout


def encode_ping(seq: int, sent_at: float) -> bytes:
    """
    Build the payload of ping number C{seq} sent at C{sent_at} seconds.
    """
    return _PAYLOAD.pack(seq & 0xFFFFFFFF, max(0, int(sent_at * 1_000_000)))


def decode_ping(payload: bytes) -> Optional[int]:
    """
    The sequence number in a pong payload, or L{None} if it is not ours.
    """
    if len(payload) != _PAYLOAD.size:
        return None
    seq, _sent = _PAYLOAD.unpack(payload)
    return int(seq)


class CadenceMeter:
    """
    How well a server keeps its heartbeat cadence: every ping of every
    connection reports how late it went out and how long after its
    connection's previous one.  Smoothed over time (about the last
    C{window} seconds, however many pings that is: a count of pings would
    be a few milliseconds under a heavy load, and the figures noise); no
    clock of its own, the pings bring the time.

    @ivar effective_interval: smoothed seconds between a connection's
        consecutive pings (the configured interval while all is well).
    @ivar lateness: smoothed seconds a ping went out after it was due.
    @ivar degraded: whether the effective interval is more than 10% (and a
        timer-wheel slot) over the configured one; the callback
        C{on_change(degraded)} hears each change (with hysteresis: it ends
        below 5%).
    @ivar forgiven: checks that found no answer, judged alive after the
        reactor read its sockets (a pong that had waited unread).
    """

    __slots__ = (
        "interval", "slack", "alpha", "window", "effective_interval", "lateness", "degraded", "forgiven",
        "_on_change", "_last_at",
    )  # fmt: skip

    def __init__(
        self,
        settings: HeartbeatSettings,
        slack: float = 0.05,
        on_change: Optional[Callable[[bool], object]] = None,
        alpha: Optional[float] = None,
        window: float = 30.0,
    ) -> None:
        # Weight of one ping in the smoothed figures: fixed when given (tests
        # of one connection), else the share of the window since the last
        # ping of any connection.
        self.alpha = alpha
        self.window = window
        self._last_at: Optional[float] = None
        self.interval = settings.interval
        self.slack = slack
        self.effective_interval = settings.interval
        self.lateness = 0.0
        self.degraded = False
        self.forgiven = 0
        self._on_change = on_change

    def pinged(self, late: float, since_previous: Optional[float], now: Optional[float] = None) -> None:
        alpha = self.alpha
        if alpha is None:
            last, self._last_at = self._last_at, now
            if now is None or last is None:
                alpha = 1.0 / 1000
            else:
                alpha = min(1.0, max(0.0, now - last) / self.window)
        self.lateness += alpha * (late - self.lateness)
        if since_previous is not None:
            self.effective_interval += alpha * (since_previous - self.effective_interval)
            over = self.effective_interval - self.interval - self.slack
            if not self.degraded and over > 0.10 * self.interval:
                self._change(True)
            elif self.degraded and over < 0.05 * self.interval:
                self._change(False)

    def _change(self, degraded: bool) -> None:
        self.degraded = degraded
        if self._on_change is not None:
            self._on_change(degraded)


class Heartbeat:
    """
    The heartbeat state machine of one connection.

    At most one delayed call is pending at any time: either the next ping or
    the check of the ping in flight.

    @ivar misses: consecutive misses so far.
    @ivar last_rtt: round-trip time of the latest matched pong, in seconds.
    @ivar smoothed_rtt: exponentially smoothed RTT, in seconds.
    @ivar last_seen: clock time of the latest inbound traffic.
    @ivar pings_sent: pings sent on this connection.
    @ivar pongs_received: pongs matched to a ping in flight.
    @ivar dead: whether the peer has been declared dead.
    """

    # One per connection: slots keep thousands of them small.
    __slots__ = (
        "_clock", "settings", "_send_ping", "_on_dead", "_on_miss", "_call",
        "_seq", "_in_flight", "_life_since_ping", "_ping_due", "misses", "last_rtt",
        "smoothed_rtt", "last_seen", "pings_sent", "pongs_received", "dead",
        "_after_reads", "_meter", "_last_ping_at", "_call_at",
    )  # fmt: skip

    def __init__(
        self,
        clock: IReactorTime,
        settings: HeartbeatSettings,
        send_ping: Callable[[bytes], object],
        on_dead: Callable[["Heartbeat"], object],
        on_miss: Optional[Callable[["Heartbeat"], object]] = None,
        scheduler: Optional[IReactorTime] = None,
        after_reads: Optional[Callable[[Callable[[], None]], IDelayedCall]] = None,
        meter: Optional[CadenceMeter] = None,
    ) -> None:
        self._clock = clock
        # Where the ping and check timers go: the clock itself, or a shared
        # timer wheel (wsheart.wheel) that serves many connections at once.
        timers = scheduler if scheduler is not None else clock
        # Timers are set for a known moment (when the ping or check is due):
        # the wheel takes that moment as it is; a plain clock wants a delay.
        call_at = getattr(timers, "call_at", None)
        if call_at is None:

            def call_at(when: float, func: Callable[[], None]) -> IDelayedCall:
                return timers.callLater(max(0.0, when - clock.seconds()), func)

        self._call_at: Callable[[float, Callable[[], None]], IDelayedCall] = call_at
        self.settings = settings
        self._send_ping = send_ping
        self._on_dead = on_dead
        self._on_miss = on_miss
        # Runs a verdict after the reactor has read its sockets (the
        # reactor's callLater(0): new calls wait for the next turn, and each
        # turn polls and reads before it runs timers); None: judge at once.
        self._after_reads = after_reads
        self._meter = meter
        self._last_ping_at: Optional[float] = None
        self._call: Optional[IDelayedCall] = None
        self._seq = 0
        # The ping awaiting its pong: (sequence number, send time).
        self._in_flight: Optional[tuple[int, float]] = None
        self._life_since_ping = False
        # When the current or next ping is due by the schedule.
        self._ping_due = 0.0
        self.misses = 0
        self.last_rtt: Optional[float] = None
        self.smoothed_rtt: Optional[float] = None
        self.last_seen = clock.seconds()
        self.pings_sent = 0
        self.pongs_received = 0
        self.dead = False

    @property
    def running(self) -> bool:
        return self._call is not None

    def start(self, first_delay: float) -> None:
        """
        Begin heartbeating; the first ping goes out after C{first_delay}
        seconds (callers spread it over the interval so that connections
        opened together do not ping together).
        """
        if self._call is not None or self.dead:
            return
        self._ping_due = self._clock.seconds() + max(0.0, first_delay)
        self._call = self._call_at(self._ping_due, self._ping)

    def stop(self) -> None:
        """
        Stop heartbeating (the connection closed); cancels the pending call.
        """
        if self._call is not None:
            if self._call.active():
                self._call.cancel()
            self._call = None

    def traffic_received(self) -> None:
        """
        Inbound traffic of any kind arrived: the peer is alive.
        """
        self.last_seen = self._clock.seconds()
        self._life_since_ping = True

    def pong_received(self, payload: bytes) -> Optional[float]:
        """
        A pong arrived.  If it answers the ping in flight, record the RTT
        and return it; otherwise (a late or foreign pong) return L{None}.
        Either way it counts as traffic.
        """
        # Called for every pong of every connection: one clock read, no
        # helper calls (traffic_received and decode_ping, inlined).
        now = self.last_seen = self._clock.seconds()
        self._life_since_ping = True
        in_flight = self._in_flight
        if in_flight is None or len(payload) != _PAYLOAD.size or _PAYLOAD.unpack(payload)[0] != in_flight[0]:
            return None
        rtt = now - in_flight[1]
        self._in_flight = None
        self.pongs_received += 1
        self.misses = 0
        self.last_rtt = rtt
        if self.smoothed_rtt is None:
            self.smoothed_rtt = rtt
        else:
            self.smoothed_rtt += _RTT_ALPHA * (rtt - self.smoothed_rtt)
        return rtt

    def _ping(self) -> None:
        # Runs for every connection every interval: plain local arithmetic.
        now = self._clock.seconds()
        settings = self.settings
        due = self._ping_due
        late = now - due
        if late > settings.interval:
            # More than an interval behind: the server cannot keep the
            # cadence.  Stretch it from now rather than send the pings it
            # owes back to back (which would only add to the load).
            self._ping_due = due = now
        last = self._last_ping_at
        if self._meter is not None:
            self._meter.pinged(late, None if last is None else now - last, now)
        self._last_ping_at = now
        self._seq = seq = (self._seq + 1) & 0xFFFFFFFF
        self._in_flight = (seq, now)
        self._life_since_ping = False
        self.pings_sent += 1
        # The check is due a timeout after the ping was *due*, so a late
        # timer does not stretch every cycle (with timeout == interval that
        # lost ~10% of the pings); a ping sent late still gets its whole
        # timeout: an unanswered check moves to a timeout after the send.
        timeout = settings.timeout
        check_at = due + timeout
        if check_at < now + timeout / 2:
            check_at = now + timeout / 2
        self._call = self._call_at(check_at, self._check)
        self._send_ping(encode_ping(seq, now))

    def _check(self) -> None:
        in_flight = self._in_flight
        if in_flight is not None and not self._life_since_ping:
            # No answer yet.  First, the peer must have had its whole
            # timeout since the ping actually went out.
            full_timeout_at = in_flight[1] + self.settings.timeout
            if full_timeout_at > self._clock.seconds():
                self._call = self._call_at(full_timeout_at, self._check)
                return
            # Then judge after the reactor's next read of its sockets: an
            # answer already in the kernel's buffer is an answer.
            if self._after_reads is not None:
                self._call = self._after_reads(self._judge_after_reads)
                return
        self._judge()

    def _judge_after_reads(self) -> None:
        if self._meter is not None and (self._in_flight is None or self._life_since_ping):
            # The answer had been waiting, unread, while the reactor was busy.
            self._meter.forgiven += 1
        self._judge()

    def _judge(self) -> None:
        self._call = None
        answered = self._in_flight is None
        self._in_flight = None
        if answered or self._life_since_ping:
            self.misses = 0
        else:
            self.misses += 1
            if self.misses >= self.settings.max_missed:
                self.dead = True
                self._on_dead(self)
                return
        # Keep the cadence: the next ping is due an interval after the last
        # one was due, not after this (possibly late) check; if that moment
        # has passed, ping at once.
        self._ping_due += self.settings.interval
        self._call = self._call_at(self._ping_due, self._ping)
        if self.misses and self._on_miss is not None:
            self._on_miss(self)
