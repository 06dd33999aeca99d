"""
Connection limits: how many connections one client address, and the whole
daemon, may hold, so that one host cannot take every file descriptor.

- C{--max-pending-per-address}: TCP connections from one address that have
  not finished the opening handshake (a slowloris holds thousands); one
  over is dropped at once, before anything is read.
- C{--max-connections-per-address}: open WebSocket connections from one
  address; one over gets HTTP 429 (the wsheart clients wait and retry).
- C{--max-connections}: open connections in all; one over gets HTTP 503.
- C{--max-connections-per-user}: open connections of one authenticated
  user (the token's C{sub}; anonymous connections are not counted), in this
  process.  One over is refused once its token is read: HTTP 429 with a
  Retry-After at the handshake, or - for a wsheart client, which reads it -
  close 1013 with a retry window (L{USER_HINT}), also when the token came in
  a wsheart.v1 C{auth} frame.

An address is an IPv4 address, or an IPv6 /64 (one host's share: a client
picks any address in its /64 at will).  Each refusal counts in
C{wsheart_limit_refusals_total{limit}} and is logged, at most one line per
limit every 10 seconds with the number refused meanwhile.

Pure: counters and a clock, no I/O.
"""

from __future__ import annotations

import ipaddress
import resource
from dataclasses import dataclass
from typing import Any, Callable, Optional

from twisted.internet.interfaces import IReactorTime

LOG_EVERY = 10.0

# The retry window of a user over --max-connections-per-user: room comes
# back when that user closes a connection (another tab, another device),
# not at a rate the server knows; come back in 30 to 60 s, not at once.
USER_HINT = (30.0, 30.0)


def address_key(host: Optional[str]) -> Optional[str]:
    """
    What a client address counts as: the IPv4 address, or the IPv6 /64
    (an IPv4-mapped IPv6 address is its IPv4 address).  None: not an IP
    (a Unix socket), which no per-address limit applies to.
    """
    if not host:
        return None
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


@dataclass(frozen=True)
class LimitSettings:
    # 0: off.  Off by default: behind a reverse proxy every connection comes
    # from the proxy's address, and a per-address limit would cap the whole
    # site, unless the proxy names the clients (the PROXY protocol on an
    # haproxy: endpoint, or X-Forwarded-For from a --trusted-proxy).
    max_pending_per_address: int = 0
    max_connections_per_address: int = 0
    # Per authenticated user (token sub), in this process; 0: off.
    max_connections_per_user: int = 0
    max_connections: int = 0

    def __post_init__(self) -> None:
        for name in ("max_pending_per_address", "max_connections_per_address", "max_connections", "max_connections_per_user"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be 0 (off) or more")


class ConnectionLimits:
    """
    The counts the limits are checked against, kept by the server
    protocol: C{connection_made} / C{opened} / C{connection_lost}.
    """

    def __init__(
        self,
        settings: LimitSettings,
        clock: IReactorTime,
        refused: Callable[[str], Any] = lambda limit: None,
        log: Callable[..., Any] = lambda *a, **k: None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self._refused_metric = refused
        self._log = log
        self.pending: dict[str, int] = {}
        self.open: dict[str, int] = {}
        self.open_total = 0
        # Open connections per user (token sub), counted once the token is
        # known: at the open, or at a wsheart.v1 auth frame.
        self.users: dict[str, int] = {}
        self._unlogged: dict[str, int] = {}
        self._logged_at: dict[str, float] = {}

    # -- what the protocol tells ------------------------------------------

    def connection_made(self, key: Optional[str]) -> bool:
        """
        A TCP connection from C{key} was accepted: False if it must be
        dropped at once (too many handshakes in progress from there).
        """
        if key is None:
            return True
        limit = self.settings.max_pending_per_address
        if limit and self.pending.get(key, 0) >= limit:
            self._refuse("pending_per_address", key, limit)
            return False
        self.pending[key] = self.pending.get(key, 0) + 1
        return True

    def moved(self, old: Optional[str], new: Optional[str]) -> None:
        """
        A pending handshake turned out to come from C{new}, not C{old} (a
        PROXY protocol header named the client behind the proxy).
        """
        self._handshake_over(old)
        if new is not None:
            self.pending[new] = self.pending.get(new, 0) + 1

    def may_open(self, key: Optional[str]) -> Optional[tuple[int, str]]:
        """
        The handshake from C{key} is complete: None if it may open, else
        the HTTP status and reason to refuse it with.
        """
        ceiling = self.settings.max_connections
        if ceiling and self.open_total >= ceiling:
            self._refuse("connections", key, ceiling)
            return 503, "the server is full, try again later"
        limit = self.settings.max_connections_per_address
        if key is not None and limit and self.open.get(key, 0) >= limit:
            self._refuse("connections_per_address", key, limit)
            return 429, f"too many connections from your address (at most {limit})"
        return None

    def opened(self, key: Optional[str]) -> None:
        self._handshake_over(key)
        self.open_total += 1
        if key is not None:
            self.open[key] = self.open.get(key, 0) + 1

    def connection_lost(self, key: Optional[str], was_open: bool, was_pending: bool) -> None:
        if was_pending:
            self._handshake_over(key)
        if was_open:
            self.open_total -= 1
            if key is not None:
                left = self.open.get(key, 0) - 1
                if left > 0:
                    self.open[key] = left
                else:
                    self.open.pop(key, None)

    def user_may_join(self, sub: str) -> bool:
        """
        Whether one more connection of user C{sub} may open (or
        authenticate); refusals are counted and logged.
        """
        limit = self.settings.max_connections_per_user
        if limit and self.users.get(sub, 0) >= limit:
            self._refuse("connections_per_user", f"user {sub!r}", limit)
            return False
        return True

    def user_joined(self, sub: str) -> None:
        self.users[sub] = self.users.get(sub, 0) + 1

    def user_left(self, sub: str) -> None:
        left = self.users.get(sub, 0) - 1
        if left > 0:
            self.users[sub] = left
        else:
            self.users.pop(sub, None)

    def _handshake_over(self, key: Optional[str]) -> None:
        if key is None:
            return
        left = self.pending.get(key, 0) - 1
        if left > 0:
            self.pending[key] = left
        else:
            self.pending.pop(key, None)

    # -- refusals ------------------------------------------------------------

    def _refuse(self, limit: str, key: Optional[str], value: int) -> None:
        self._refused_metric(limit)
        now = self.clock.seconds()
        self._unlogged[limit] = self._unlogged.get(limit, 0) + 1
        last = self._logged_at.get(limit)
        if last is None or now - last >= LOG_EVERY:
            self._log(
                "limit {limit} ({value}) reached: refused {count} connection(s), the last from {address}",
                limit=limit,
                value=value,
                count=self._unlogged[limit],
                address=key or "-",
            )
            self._logged_at[limit] = now
            self._unlogged[limit] = 0


# Descriptors a process needs besides its connections: listeners, logs,
# Redis, the admin endpoint, a few files.
RESERVED_DESCRIPTORS = 64


def raise_open_files_limit() -> tuple[int, int]:
    """
    Raise this process's open-file soft limit to its hard limit (each
    connection is a descriptor; systemd and shells often leave the soft
    limit at 1024).  Returns the limit before and after.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            return soft, soft
        return soft, hard
    return soft, soft


class TokenBucket:
    """
    C{rate} actions a second, bursts of C{burst}: L{take} says whether one
    more may happen now, on the injected clock.
    """

    def __init__(self, rate: float, burst: float, clock: IReactorTime) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a token bucket needs a positive rate and a burst of at least 1")
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self._tokens = float(burst)
        self._at = clock.seconds()

    def take(self) -> float:
        """
        0 if the action may happen now (a token is used), else the seconds
        until one may.
        """
        now = self.clock.seconds()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1:
            self._tokens -= 1
            return 0.0
        return (1 - self._tokens) / self.rate
