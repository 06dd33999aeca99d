"""
Admission control: how fast a process takes new connections, and how it
tells those it cannot take yet when to come back.

A restarted daemon meets its whole fleet at once.  Serving every handshake
as it comes (TLS, the upgrade, a token check, the heartbeat's first round)
can take the reactor longer than the clients' handshake timeout, so they
all fail, retry, and fail again.  wsheart instead admits at most
C{--accept-rate} opening handshakes a second (ramping up from a tenth of
it over C{--accept-ramp} seconds after the start, while caches, Redis
presence and the first heartbeats settle) and gives every handshake it
refuses a place in a queue of future admissions:

- the first refused gets a slot one admission interval (1 / rate) from
  now, the next one the interval after that, and so on; its hint is the
  wait until its slot, plus a little jitter.  A fleet told this comes back
  spread at about the rate the process admits, whatever its size, instead
  of all at once again.  A slot is a time to come back, not a reservation:
  a client that finds no admission left then (newcomers took it) gets a
  new slot at the end of the queue;
- one client address may hold at most ten seconds' worth of slots
  (L{ADDRESS_QUEUE_SECONDS} times the rate, at least L{SLOTS_PER_ADDRESS};
  more get 429 with a Retry-After and no slot), and past half of the
  arrivals the process takes before it drops, it cannot use the quarter of
  that budget kept for the others (more are dropped at accept): one host
  can neither push everyone's slots back by more than that nor spend the
  whole shared budget - while a fleet that shares one address (behind NAT,
  or a load balancer that does not pass the client's address on) still
  comes back at the full rate;
- a wsheart client that can read the hint in-band (one that offers a
  C{wsheart.*} subprotocol: wsheart.js, wsheart.v1 clients) is accepted
  and closed at once with 1013 and C{{"retry_after": R, "jitter": J}}; any
  other client gets HTTP 503 with C{Retry-After: R} (whole seconds, its
  own slot's, so foreign clients that honour it are spread too);
- handshakes arriving at more than C{DROP_FACTOR} times the full rate
  (with a burst of one second's worth) are dropped at accept, before TLS
  and before anything is read: a hint costs a handshake, and past that
  rate hints would cost more than the clients they steer.  Those clients
  retry on their own backoff.

A full process (C{--max-connections}) answers the same way, with a fixed
hint (L{FULL_HINT}): when room frees up depends on the clients, not on a
rate.

The rate also follows the reactor's own lag (L{Admission.follow_lag}): a
configured rate is a guess at what the process can take, and a process
whose timers run late is taking more than it can - its heartbeats are late
too.  While the lag is over L{LAG_HIGH} the admitted rate halves, at most
once a second, down to a tenth of C{--accept-rate}; once it is under
L{LAG_LOW} it grows back by a tenth a second.  Refused clients are told
slots at the rate of the moment, so they come back spread at what the
process managed, not at what it was told.

Pure: a clock and counters, no I/O.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

from twisted.internet.interfaces import IReactorTime

# Handshakes arriving faster than this many times the admitted rate are
# dropped at accept (no hint: the hint itself costs a handshake).
DROP_FACTOR = 4.0
# The admitted rate starts at this fraction of --accept-rate after a start
# and grows linearly to all of it over --accept-ramp seconds.
RAMP_FROM = 0.1
# Admissions the rate may bunch together: a tenth of a second's worth, so
# the busiest second admits at most 1.1 times the rate.
BURST_SECONDS = 0.1
# The queue of slots reaches at most this far ahead: a client refused when
# it is longer waits this long (spread over the jitter).
MAX_WAIT = 300.0
# One client address (an IPv4 address, an IPv6 /64) may hold at most this
# many seconds' worth of unexpired slots at the full rate (and at least
# SLOTS_PER_ADDRESS); past them it is told 429 with a Retry-After and takes
# no slot, so that one host cannot push the whole queue back by more.  Not
# fewer: a whole fleet may share one address (CGNAT, a corporate proxy, a
# load balancer without the PROXY protocol), and with a few slots it would
# trickle in at a fraction of the rate.
ADDRESS_QUEUE_SECONDS = 10.0
SLOTS_PER_ADDRESS = 16
# One address may take this share of the arrivals a second (and at least
# ADDRESS_ARRIVALS_MIN a second); past it, its connections are dropped at
# accept once the arrival budget is down to ADDRESS_RESERVE of a second's
# worth, which stays for the other addresses.  One host cannot spend the
# whole budget everyone shares, yet a fleet that shares one address still
# arrives at three times the admitted rate.
ADDRESS_ARRIVAL_SHARE = 0.5
ADDRESS_RESERVE = 0.25
ADDRESS_ARRIVALS_MIN = 20.0
# A slot's jitter: a client comes back up to this long after it (at least
# one admission interval, so neighbours do not land on one instant).
SLOT_JITTER = 1.0
# The hint for a full process (--max-connections): room comes back as
# clients leave, at no rate the server knows; spread the returns over 30 s.
FULL_HINT = (5.0, 25.0)
# Refusals are logged at most once per this many seconds, with a count.
LOG_EVERY = 10.0
# The reactor's lag that halves the admitted rate (at most once every
# LAG_STEP seconds, down to RAMP_FROM of it), and the lag under which it
# grows back by LAG_RECOVERY of the rate each LAG_STEP.
LAG_HIGH = 0.2
LAG_LOW = 0.05
LAG_STEP = 1.0
LAG_RECOVERY = 0.1

HINT_SUBPROTOCOL_PREFIX = "wsheart."
# What wsheart.js offers on a plain connection to say it reads hints; the
# server selects it when it selects nothing else (browsers fail a handshake
# that offered subprotocols and got none), and it changes nothing else.
HINTS_SUBPROTOCOL = "wsheart.hints"


def reads_hints(offered: Iterable[Any]) -> bool:
    """
    Whether a handshake comes from a wsheart client that reads an in-band
    hint (a close 1013 with a JSON retry window): it offers a
    C{wsheart.*} subprotocol (C{wsheart.v1}, C{wsheart.hints},
    C{wsheart.bearer.TOKEN}).  Others cannot be relied on to read a close
    reason, and get HTTP 503 with C{Retry-After}.
    """
    return any(isinstance(p, str) and p.startswith(HINT_SUBPROTOCOL_PREFIX) for p in offered or ())


@dataclass(frozen=True)
class AdmissionSettings:
    """
    @ivar accept_rate: opening handshakes admitted per second (0: no
        limit).
    @ivar ramp: seconds after the start over which the admitted rate grows
        from a tenth of C{accept_rate} to all of it (0: full at once).
    """

    accept_rate: float = 0.0
    ramp: float = 10.0

    def __post_init__(self) -> None:
        if not self.accept_rate >= 0 or math.isinf(self.accept_rate):
            raise ValueError(f"--accept-rate must be 0 (off) or a positive number, got {self.accept_rate}")
        if not self.ramp >= 0 or math.isinf(self.ramp):
            raise ValueError(f"--accept-ramp must be 0 or more seconds, got {self.ramp}")

    @property
    def enabled(self) -> bool:
        return self.accept_rate > 0


@dataclass(frozen=True)
class Refusal:
    """
    Come back in C{retry_after + uniform(0, jitter)} seconds; C{reason} is
    C{"rate"} or C{"full"}.
    """

    retry_after: float
    jitter: float
    reason: str

    def close_reason(self) -> str:
        """
        The reason text of the 1013 close frame: wsheart clients read it.
        """
        return f'{{"retry_after":{self.retry_after:.3f},"jitter":{self.jitter:.3f}}}'

    def retry_after_header(self, random: Callable[[], float]) -> str:
        """
        C{Retry-After} for a client that reads only that: whole seconds,
        with this refusal's jitter drawn by the server (a client told the
        same number as its neighbours would come back with them).
        """
        return str(max(1, math.ceil(self.retry_after + random() * self.jitter)))


class Admission:
    """
    The accept rate, its ramp and the queue of promised slots, on an
    injected clock.  The server protocol asks L{arrived} when a TCP
    connection is accepted and L{admit} when its handshake asks to open.
    """

    def __init__(
        self,
        settings: AdmissionSettings,
        clock: IReactorTime,
        refused: Callable[[str, str], Any] = lambda reason, answer: None,
        log: Callable[..., Any] = lambda *a, **k: None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self._refused_metric = refused
        self._log = log
        self.started_at = clock.seconds()
        self._tokens = 0.0
        self._arrival_tokens = 0.0
        self._at = self.started_at
        self._next_slot = self.started_at
        self._unlogged: dict[str, int] = {}
        self._logged_at: Optional[float] = None
        # Per client address: the ends of its unexpired slots (in the order
        # given, which is the order they end), and its arrivals in the
        # current second.
        self._slots: dict[str, deque[float]] = {}
        self._arrivals: dict[str, int] = {}
        self._arrivals_second = 0
        # The share of the rate the reactor's lag allows (1: all of it).
        self.lag_factor = 1.0
        self._lag: Optional[Callable[[], float]] = None
        self._lag_changed_at: Optional[float] = None
        self.restart()

    def follow_lag(self, lag: Callable[[], float]) -> None:
        """
        Let the admitted rate follow C{lag()}, the reactor's lag in seconds
        now (L{wsheart.health.LagMonitor.current_lag}).
        """
        self._lag = lag

    def _follow_lag(self, now: float) -> None:
        if self._lag is None:
            return
        lag = self._lag()
        before = self.lag_factor
        if lag > LAG_HIGH:
            wanted = max(RAMP_FROM, before / 2)
        elif lag < LAG_LOW:
            wanted = min(1.0, before + LAG_RECOVERY)
        else:
            return
        if wanted == before:
            return
        if self._lag_changed_at is not None and now - self._lag_changed_at < LAG_STEP:
            return  # one step a second: the lag a change makes takes that long to show
        self._lag_changed_at = now
        self.lag_factor = wanted
        if (wanted < 1.0) != (before < 1.0):
            self._log(
                "admission control {what}: the reactor is {lag:.2f} s late; admitting {admitting}",
                what="slowing down" if self.lag_factor < 1.0 else "back to its rate",
                lag=lag,
                admitting=f"{self.rate(now):.0f}/s",
            )

    def restart(self) -> None:
        """
        The process starts listening now: the ramp starts over (and the
        buckets start with one burst's worth).
        """
        now = self.clock.seconds()
        self.started_at = self._at = self._next_slot = now
        self._tokens = self._burst(self.rate(now))
        self._arrival_tokens = max(1.0, self.settings.accept_rate * DROP_FACTOR)

    def rate(self, now: Optional[float] = None) -> float:
        """
        Handshakes admitted per second at C{now} (0: no limit).
        """
        full = self.settings.accept_rate
        if full <= 0:
            return 0.0
        ramp = self.settings.ramp
        if now is None:
            now = self.clock.seconds()
        elapsed = now - self.started_at
        if ramp > 0 and elapsed < ramp:
            full *= RAMP_FROM + (1 - RAMP_FROM) * max(0.0, elapsed) / ramp
        return full * self.lag_factor

    @property
    def slots_per_address(self) -> int:
        """
        The most unexpired slots one client address may hold.
        """
        return max(SLOTS_PER_ADDRESS, int(ADDRESS_QUEUE_SECONDS * self.settings.accept_rate))

    @staticmethod
    def _burst(rate: float) -> float:
        return max(1.0, rate * BURST_SECONDS)

    def _refill(self, now: float) -> float:
        self._follow_lag(now)
        rate = self.rate(now)
        elapsed = max(0.0, now - self._at)
        self._at = now
        burst = self._burst(rate)
        self._tokens = min(burst, self._tokens + elapsed * rate)
        # The drop threshold follows the full rate, not the ramp: while the
        # rate ramps up, the fleet is told when to come back rather than
        # sent to its backoff.
        full = self.settings.accept_rate * DROP_FACTOR
        self._arrival_tokens = min(max(1.0, full), self._arrival_tokens + elapsed * full)
        return rate

    # -- what the protocol asks ---------------------------------------------

    def arrived(self, key: Optional[str] = None) -> bool:
        """
        A TCP connection from client address C{key} was accepted: False if
        it must be dropped at once, before TLS and before anything is read
        (handshakes arrive at more than L{DROP_FACTOR} times the admitted
        rate, or this address takes more than its share of them).
        """
        if not self.settings.enabled:
            return True
        now = self.clock.seconds()
        self._refill(now)
        if key is not None:
            second = int(now)
            if second != self._arrivals_second:
                self._arrivals_second = second
                self._arrivals.clear()
            count = self._arrivals.get(key, 0) + 1
            self._arrivals[key] = count
            full = DROP_FACTOR * self.settings.accept_rate
            share = max(ADDRESS_ARRIVALS_MIN, ADDRESS_ARRIVAL_SHARE * full)
            if count > share and self._arrival_tokens < 1 + ADDRESS_RESERVE * full:
                self._refuse("address", "drop")
                return False
        if self._arrival_tokens >= 1:
            self._arrival_tokens -= 1
            return True
        self._refuse("rate", "drop")
        return False

    def admit(self, reads_hints: bool, key: Optional[str] = None) -> Optional[Refusal]:
        """
        A handshake from client address C{key} asks to open: None if it
        may, else when it should come back (and its slot in the queue is
        taken; L{Refusal.reason} C{"address"}: this address holds its share
        of slots already, and gets no new one).
        """
        if not self.settings.enabled:
            return None
        now = self.clock.seconds()
        rate = self._refill(now)
        if self._tokens >= 1:
            self._tokens -= 1
            return None
        held: Optional[deque[float]] = None
        if key is not None:
            held = self._slots.get(key)
            if held is None:
                held = self._slots[key] = deque()
            while held and held[0] <= now:
                held.popleft()
            if len(held) >= self.slots_per_address:
                self._refuse("address", "hint" if reads_hints else "429")
                # Come back once the slots this address holds are over,
                # spread over as long as they span (the address's own
                # queue, which takes no room in everyone's).  Slot ends
                # follow the order given but for the jitter shrinking as the
                # rate ramps up: the last is about the latest.
                last = max(held[0], held[-1])
                return Refusal(last - now, max(SLOT_JITTER, last - held[0]), "address")
        if len(self._slots) > 10 * SLOTS_PER_ADDRESS * max(1.0, rate):
            # Forget addresses whose slots have all passed.
            self._slots = {k: v for k, v in self._slots.items() if v and v[-1] > now}
        # Slots are spaced at the rate of their own time: during the ramp
        # a later slot comes round faster.
        base = max(self._next_slot, now)
        interval = 1.0 / self.rate(base)
        slot = base + interval
        if slot - now > MAX_WAIT:
            # The queue is as long as it may get: no slot, the longest wait
            # spread over as long again.
            refusal = Refusal(MAX_WAIT, MAX_WAIT, "rate")
        else:
            self._next_slot = slot
            refusal = Refusal(slot - now, max(SLOT_JITTER, interval), "rate")
            if held is not None:
                held.append(slot + refusal.jitter)
        self._refuse("rate", "hint" if reads_hints else "503")
        return refusal

    def full(self, reads_hints: bool) -> Refusal:
        """
        The process holds --max-connections: when to come back.
        """
        self._refuse("full", "hint" if reads_hints else "503")
        return Refusal(FULL_HINT[0], FULL_HINT[1], "full")

    def queue_seconds(self) -> float:
        """
        How far ahead the promised slots reach (0: no queue).
        """
        return max(0.0, self._next_slot - self.clock.seconds())

    # -- refusals ------------------------------------------------------------

    def _refuse(self, reason: str, answer: str) -> None:
        self._refused_metric(reason, answer)
        key = f"{reason}/{answer}"
        self._unlogged[key] = self._unlogged.get(key, 0) + 1
        now = self.clock.seconds()
        if self._logged_at is None or now - self._logged_at >= LOG_EVERY:
            counts = ", ".join(f"{n} {k}" for k, n in sorted(self._unlogged.items()))
            rate = self.rate(now)
            self._log(
                "admission control refused {counts} (reason/answer) since its last line; "
                "admitting {admitting}, promised slots reach {queue:.1f} s ahead",
                counts=counts,
                admitting=f"{rate:.0f}/s" if rate else "at any rate",
                queue=self.queue_seconds(),
            )
            self._logged_at = now
            self._unlogged = {}
