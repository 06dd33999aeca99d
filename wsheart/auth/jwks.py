"""
The keys of C{--jwt-jwks-url}: a JWKS fetched over HTTPS without blocking
the reactor, cached, refreshed every C{--jwt-jwks-refresh} seconds, and
fetched again when a token names a C{kid} the cached set lacks - at most
once every 30 s, so forged kids cannot make wsheart hammer the issuer.

L{JWKSFetcher} is a service: it fetches at start (the daemon starts even if
that fails: tokens are then refused as "try again later" until keys
arrive), and its stop cancels its timer and any request in flight.  Each
fetch is bounded (a timeout, a body cap counted while it arrives); a
failed or invalid one keeps the keys held so far, and is logged.  The URL
is the configuration's, never built from a token.

The HTTP client is injected (a callable from URL to a Deferred of status
and body), and so is the clock: tests run on L{task.Clock} with no
network.  L{treq_get} is the real one (treq, no redirects followed).
"""

from __future__ import annotations

import ipaddress
import json
import math
from typing import Any, Callable, Optional
from urllib.parse import urlsplit

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from wsheart.auth.tokens import TokenVerifier

log = Logger()

DEFAULT_REFRESH = 3600.0
# The least time between two fetches that a token (an unknown kid) asked for.
MIN_REFETCH_INTERVAL = 30.0
FETCH_TIMEOUT = 5.0
MAX_JWKS_BYTES = 1024 * 1024

HTTPGet = Callable[[str], "defer.Deferred[tuple[int, bytes]]"]


class JWKSTooLarge(Exception):
    """
    The response body passed the size cap (the rest was not read).
    """


def check_jwks_url(url: str) -> str:
    """
    C{url} if wsheart may fetch keys from it: https://, or http:// to a
    loopback host only (a JWKS fetched in the clear from elsewhere could be
    swapped on the way); else ValueError with the reason.
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError as e:
        raise ValueError(f"--jwt-jwks-url {url!r}: not a URL ({e})") from None
    if parts.scheme not in ("https", "http") or not host:
        raise ValueError(f"--jwt-jwks-url {url!r}: an https:// URL with a host")
    if parts.scheme == "http" and not _loopback(host):
        raise ValueError(
            f"--jwt-jwks-url {url!r}: http:// only to a loopback host (localhost, 127.0.0.0/8, ::1); "
            "use https:// for any other, so the keys cannot be swapped on the way"
        )
    return url


def _loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def treq_get(reactor: Any, timeout: float = FETCH_TIMEOUT, max_bytes: int = MAX_JWKS_BYTES) -> HTTPGet:
    """
    An HTTP GET through treq: fires with (status, body).  Redirects are not
    followed (a redirect is a failed fetch: the configured URL is where the
    keys are); certificates are verified (Twisted's browser-like policy);
    C{timeout} bounds the wait for the headers (the fetcher bounds the
    whole), and a body over C{max_bytes} fails with L{JWKSTooLarge} as soon
    as it is over, without reading the rest.
    """
    import treq
    from twisted.web.client import Agent, HTTPConnectionPool

    # One fetch an hour: a connection is not worth keeping open.
    client = treq.client.HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))

    def get(url: str) -> "defer.Deferred[tuple[int, bytes]]":
        accept: dict[bytes | str, list[bytes | str]] = {"Accept": ["application/json"]}
        d = client.get(url, timeout=timeout, allow_redirects=False, headers=accept)

        def read(response: Any) -> Any:
            chunks: list[bytes] = []
            size = [0]

            def collect(data: bytes) -> None:
                size[0] += len(data)
                if size[0] > max_bytes:
                    raise JWKSTooLarge(f"the JWKS is larger than {max_bytes} bytes")
                chunks.append(data)

            return treq.collect(response, collect).addCallback(lambda _: (response.code, b"".join(chunks)))

        return d.addCallback(read)

    return get


class JWKSFetcher(Service):
    """
    Keeps C{verifier}'s keys those of the JWKS at C{url}.

    @ivar fetches: fetches started (for tests and logs).
    """

    def __init__(
        self,
        verifier: TokenVerifier,
        url: str,
        clock: IReactorTime,
        get: HTTPGet,
        refresh: float = DEFAULT_REFRESH,
        min_interval: float = MIN_REFETCH_INTERVAL,
        timeout: float = FETCH_TIMEOUT,
        max_bytes: int = MAX_JWKS_BYTES,
    ) -> None:
        self.verifier = verifier
        self.url = url
        self.clock = clock
        self.get = get
        self.refresh = refresh
        self.min_interval = min_interval
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.fetches = 0
        self._next: Optional[IDelayedCall] = None
        self._in_flight: Optional[defer.Deferred[Any]] = None
        self._last_start: Optional[float] = None

    # -- service ----------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self.verifier.refresh_keys = self.keys_wanted
        self.fetch()

    def stopService(self) -> Any:
        stopped = super().stopService()  # first: what the cancel fires sees a stopped service
        self.verifier.refresh_keys = None
        if self._next is not None and self._next.active():
            self._next.cancel()
        self._next = None
        if self._in_flight is not None:
            self._in_flight.cancel()
        return stopped

    # -- fetching ---------------------------------------------------------------

    def keys_wanted(self) -> float:
        """
        A token named a kid the keys lack (or there are no keys yet): fetch
        again now unless a fetch is under way or one started less than
        C{min_interval} seconds ago.  Returns about how many seconds until
        fresh keys may be there (what the refused client is told to wait).
        """
        if not self.running:
            return self.min_interval
        now = self.clock.seconds()
        if self._in_flight is not None:
            wait = self.timeout
        elif self._last_start is None or now - self._last_start >= self.min_interval:
            self.fetch()
            wait = self.timeout
        else:
            wait = self._last_start + self.min_interval - now + self.timeout
        return float(math.ceil(wait))

    def fetch(self) -> "defer.Deferred[Any]":
        """
        Fetch the JWKS now (unless a fetch is under way) and schedule the
        next: after C{refresh} seconds, or C{min_interval} while there are
        no keys at all.  Never fails: what goes wrong is logged.
        """
        if self._in_flight is not None:
            return defer.succeed(None)
        if self._next is not None and self._next.active():
            self._next.cancel()
        self._next = None
        self._last_start = self.clock.seconds()
        self.fetches += 1
        d: "defer.Deferred[Any]"
        try:
            d = self.get(self.url)
        except Exception as e:  # a client that raises instead of failing its Deferred
            d = defer.fail(e)
        d.addTimeout(self.timeout, self.clock)
        d.addCallback(self._received)
        d.addErrback(self._failed)
        self._in_flight = d
        d.addBoth(self._done)  # at once if the client answered at once
        return d

    def _received(self, answer: tuple[int, bytes]) -> None:
        status, body = answer
        if status != 200:
            raise ValueError(f"HTTP {status}")
        if len(body) > self.max_bytes:
            raise JWKSTooLarge(f"the JWKS is larger than {self.max_bytes} bytes")
        try:
            document = json.loads(body)
        except ValueError:
            raise ValueError("not JSON") from None
        kids = self.verifier.load_jwks(document)
        log.info("JWKS from {url}: {count} keys (kid {kids})", url=self.url, count=len(kids), kids=", ".join(kids))

    def _failed(self, failure: Any) -> None:
        if failure.check(defer.CancelledError) and not self.running:
            return  # stopped
        why = "timed out" if failure.check(defer.TimeoutError, defer.CancelledError) else failure.getErrorMessage()
        kept = "keeping the keys held so far" if self.verifier.has_keys else "no keys yet: tokens are refused until a fetch succeeds"
        log.warn("JWKS fetch from {url} failed: {why}; {kept}", url=self.url, why=why, kept=kept)

    def _done(self, _: Any) -> None:
        self._in_flight = None
        if not self.running:
            return
        wait = self.refresh if self.verifier.has_keys else min(self.min_interval, self.refresh)
        self._next = self.clock.callLater(wait, self.fetch)
