"""
When a client tries again: full-jitter exponential backoff, the reset after
a stable connection, and the hints a server gives (close 1012/1013 with a
JSON retry window, C{Retry-After} on a 503/429 handshake answer).

Pure policy: no reactor, no wall clock.  The random source is injected so
tests can fix it and simulate fleets.

Schedule (see README "Reconnect schedule"): the delay before retry number
C{n} (counting consecutive failures from 0) is

    floor + uniform(0, min(cap, initial * factor ** n))

The jitter spans the whole window, also at the cap, so a fleet that lost
its server at the same moment spreads its retries instead of marching in
step.
"""

from __future__ import annotations

import json
import random as _random
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Callable, Optional

from wsheart import closecodes

# A server hint longer than this (retry_after and jitter together) is
# clamped: a misconfigured or hostile server must not park its clients for
# days.
MAX_HINT_SECONDS = 3600.0


@dataclass(frozen=True)
class BackoffSettings:
    """
    @ivar initial: window of the first retry, in seconds.
    @ivar factor: growth of the window per consecutive failure.
    @ivar cap: largest window, in seconds.
    @ivar floor: added to every delay, so no retry is immediate.
    @ivar stable_after: seconds a connection must stay open before the
        failure count resets.
    @ivar max_attempts: give up after this many consecutive failed
        attempts; L{None} retries for ever.
    """

    initial: float = 1.0
    factor: float = 2.0
    cap: float = 60.0
    floor: float = 0.1
    stable_after: float = 30.0
    max_attempts: Optional[int] = None

    def __post_init__(self) -> None:
        if not self.initial > 0:
            raise ValueError(f"initial backoff must be positive, got {self.initial}")
        if not self.factor >= 1:
            raise ValueError(f"backoff factor must be at least 1, got {self.factor}")
        if not self.cap >= self.initial:
            raise ValueError(
                f"backoff cap ({self.cap} s) must be at least the initial delay ({self.initial} s)"
            )
        if not self.floor >= 0:
            raise ValueError(f"backoff floor must not be negative, got {self.floor}")
        if not self.stable_after >= 0:
            raise ValueError(f"stable-after must not be negative, got {self.stable_after}")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError(f"max attempts must be at least 1, got {self.max_attempts}")

    def window(self, failures: int) -> float:
        """
        The jitter window after C{failures} consecutive failures.
        """
        # Compare exponents, not powers: factor ** 2000 overflows a float.
        window = self.initial
        for _ in range(failures):
            window *= self.factor
            if window >= self.cap:
                return self.cap
        return min(self.cap, window)


@dataclass(frozen=True)
class RetryHint:
    """
    A server's request to wait C{retry_after + uniform(0, jitter)} seconds.
    """

    retry_after: float
    jitter: float = 0.0

    @classmethod
    def bounded(cls, retry_after: float, jitter: float) -> "RetryHint":
        """
        A hint whose longest wait, C{retry_after + jitter}, is at most
        L{MAX_HINT_SECONDS}: the fixed part first, the jitter gets the rest.
        """
        retry_after = _clamp(retry_after)
        return cls(retry_after, min(_clamp(jitter), MAX_HINT_SECONDS - retry_after))


def _clamp(value: float) -> float:
    return min(MAX_HINT_SECONDS, max(0.0, value))


def hint_from_close(code: Optional[int], reason: Optional[str]) -> Optional[RetryHint]:
    """
    Read the reconnect hint in a close frame: only codes 1012 and 1013 carry
    one, as a JSON object like C{{"retry_after": 5, "jitter": 10}}
    (C{retry_after} required, C{jitter} optional).  Anything else (no
    reason, not JSON, no C{retry_after}, wrong types) is no hint.
    """
    if code not in closecodes.HINTED or not reason:
        return None
    try:
        data = json.loads(reason)
    except ValueError:
        return None
    if not isinstance(data, dict) or "retry_after" not in data:
        return None
    retry_after = data["retry_after"]
    jitter = data.get("jitter", 0)
    for value in (retry_after, jitter):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        if value != value:  # NaN
            return None
    return RetryHint.bounded(float(retry_after), float(jitter))


def parse_retry_after(value: Optional[str], now: float) -> Optional[float]:
    """
    Seconds to wait from an HTTP C{Retry-After} header: delta-seconds or an
    HTTP date (compared with C{now}, POSIX seconds).  L{None} if absent or
    unreadable.
    """
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return _clamp(float(value))
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return _clamp(when.timestamp() - now)


class Backoff:
    """
    The retry schedule of one client.

    @ivar failures: consecutive failed attempts since the last stable
        connection.
    """

    def __init__(
        self,
        settings: BackoffSettings,
        random: Callable[[], float] = _random.random,
    ) -> None:
        self.settings = settings
        self._random = random
        self.failures = 0

    @property
    def exhausted(self) -> bool:
        """
        Whether the attempt limit, if any, has been reached.
        """
        limit = self.settings.max_attempts
        return limit is not None and self.failures >= limit

    def failed(self) -> float:
        """
        Record a failed attempt (refused, handshake failed, died before it
        was stable) and return the delay before the next one.
        """
        delay = self._jittered()
        self.failures += 1
        return delay

    def succeeded(self) -> None:
        """
        A connection stayed open C{stable_after} seconds: start over.
        """
        self.failures = 0

    def hinted(self, hint: RetryHint) -> float:
        """
        The server closed with a retry hint: wait what it asked, with its
        jitter.  A hinted close is the server's choice, not a failure of
        ours, so the failure count is unchanged.
        """
        return self.settings.floor + hint.retry_after + self._random() * hint.jitter

    def keeps_schedule(self, hint: RetryHint) -> bool:
        """
        Whether a hint given right after an open (so a refusal, not a
        restart of a stable connection) is kept as the schedule: its fixed
        wait is at least the next backoff window.  Admission control gives
        each refused client its own slot; counting the refusal as a failure
        would grow the window and could carry the client past its slot.  A
        shorter hint (a server that says "now" after every open) counts as
        a failure and the normal schedule applies, so it cannot make the
        client come back faster than its backoff allows.
        """
        return hint.retry_after >= self.settings.window(self.failures)

    def retry_after(self, seconds: float) -> float:
        """
        The handshake was answered 503/429 with C{Retry-After}: a failure,
        and the next try waits at least that long, plus the normal jittered
        delay so that a fleet told the same number does not return as one.
        """
        return seconds + self.failed()

    def _jittered(self) -> float:
        window = self.settings.window(self.failures)
        return self.settings.floor + self._random() * window
