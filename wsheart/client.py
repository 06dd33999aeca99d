"""
A Twisted service that keeps one WebSocket connection to a C{ws://} or
C{wss://} URL alive: its own ping/pong heartbeat notices a dead server,
and it reconnects on the full-jitter schedule of L{wsheart.backoff},
obeying the server's hints and stopping on terminal refusals.

Usable from any Twisted program::

    from wsheart.client import ClientListener, ReconnectingClientService

    class Printer(ClientListener):
        def client_message(self, client, message):
            print("got", message)

    service = ReconnectingClientService("wss://example.org/ws", Printer())
    service.setServiceParent(application)   # or service.startService()
    service.send("hello")                    # False while not connected
"""

from __future__ import annotations

import random as _random
from typing import Any, Callable, Optional, Union

from autobahn.websocket.util import parse_url
from twisted.application.service import Service
from twisted.internet import defer, ssl
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IDelayedCall, IReactorTime, IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from wsheart import closecodes
from wsheart.backoff import Backoff, BackoffSettings, hint_from_close, parse_retry_after
from wsheart.deflate import DeflateSettings
from wsheart.heartbeat import Heartbeat, HeartbeatSettings
from wsheart.metrics import ClientMetrics
from wsheart.clientprotocol import ClientFactory, ClientProtocol
from wsheart.tls import ClientTLS, describe_tls_failure

Message = Union[str, bytes]

# Client states, readable as ReconnectingClientService.state.
IDLE = "idle"  # not started
CONNECTING = "connecting"  # TCP, TLS or WebSocket handshake under way
OPEN = "open"
WAITING = "waiting"  # between attempts
STOPPED = "stopped"  # stopped by the application, or gave up (see stop_reason)


class IClientListener(Interface):
    """
    What a L{ReconnectingClientService} tells its application.
    """

    def client_state(client: "ReconnectingClientService", state: str, detail: dict[str, Any]) -> None:
        """
        The state changed.  C{detail} carries C{attempt} (1-based) for
        C{connecting}, C{rtt} (seconds or None) for C{open}, C{delay},
        C{attempt} and C{reason} for C{waiting}, C{reason} for C{stopped}.
        """

    def client_opened(client: "ReconnectingClientService") -> None:
        """
        The WebSocket connection is open.
        """

    def client_message(client: "ReconnectingClientService", message: Message) -> None:
        """
        A message arrived: L{str} for text, L{bytes} for binary.
        """

    def client_rtt(client: "ReconnectingClientService", rtt: float) -> None:
        """
        A pong answered our ping after C{rtt} seconds.  The first ping goes
        out as soon as the connection opens, so this follows C{open} by one
        round trip.
        """

    def client_missed(client: "ReconnectingClientService", misses: int) -> None:
        """
        A ping went unanswered; C{misses} in a row so far.
        """

    def client_closed(
        client: "ReconnectingClientService", code: int, reason: str, was_clean: bool
    ) -> None:
        """
        An open connection closed (1006 when TCP ended without a close).
        """


@implementer(IClientListener)
class ClientListener:
    """
    A listener that ignores everything; subclass it and override what you
    need.
    """

    def client_state(self, client: "ReconnectingClientService", state: str, detail: dict[str, Any]) -> None:
        pass

    def client_opened(self, client: "ReconnectingClientService") -> None:
        pass

    def client_message(self, client: "ReconnectingClientService", message: Message) -> None:
        pass

    def client_rtt(self, client: "ReconnectingClientService", rtt: float) -> None:
        pass

    def client_missed(self, client: "ReconnectingClientService", misses: int) -> None:
        pass

    def client_closed(self, client: "ReconnectingClientService", code: int, reason: str, was_clean: bool) -> None:
        pass


def load_trust_root(ca_file: str) -> ssl.Certificate:
    """
    Read a PEM CA certificate to trust instead of the system's roots.
    """
    with open(ca_file, "rb") as f:
        data = f.read()
    try:
        return ssl.Certificate.loadPEM(data)
    except Exception as e:
        raise ValueError(f"{ca_file} does not hold a PEM certificate: {e}") from e


def endpoint_for_url(
    reactor: Any,
    url: str,
    trust_root: Optional[Any] = None,
    connect_timeout: float = 10.0,
) -> IStreamClientEndpoint:
    """
    The client endpoint for a C{ws://} or C{wss://} URL.  For C{wss://} the
    server's certificate chain is checked against C{trust_root} (default:
    the platform's roots) and its name against the URL's host through
    service-identity, inside the handshake (L{wsheart.tls.ClientTLS}).
    """
    is_secure, host, port, _resource, _path, _params = parse_url(url)
    endpoint: IStreamClientEndpoint = HostnameEndpoint(reactor, host, port, timeout=connect_timeout)
    if is_secure:
        endpoint = wrapClientTLS(ClientTLS(host, trust_root), endpoint)
    return endpoint


def _describe_failure(failure: Failure) -> str:
    tls = describe_tls_failure(failure)
    if tls is not None:
        return tls
    text = failure.getErrorMessage() or getattr(failure.type, "__name__", "error")
    return text.strip().rstrip(".")


class ReconnectingClientService(Service):
    """
    Keeps one WebSocket connection to C{url} open.

    @ivar state: one of C{idle}, C{connecting}, C{open}, C{waiting},
        C{stopped}.
    @ivar stop_reason: why it stopped on its own (terminal close code,
        refused handshake, attempt limit), else L{None}.
    @ivar attempt: the current or next attempt, 1-based, since the last
        stable connection.
    """

    log = Logger()

    def __init__(
        self,
        url: str,
        listener: Optional[IClientListener] = None,
        *,
        reactor: Optional[IReactorTime] = None,
        heartbeat: HeartbeatSettings = HeartbeatSettings(),
        backoff: BackoffSettings = BackoffSettings(),
        trust_root: Optional[Any] = None,
        endpoint: Optional[IStreamClientEndpoint] = None,
        connect_timeout: float = 10.0,
        handshake_timeout: float = 10.0,
        max_message_size: int = 1024 * 1024,
        headers: Optional[dict[str, str]] = None,
        random: Any = _random.random,
        metrics: Optional[ClientMetrics] = None,
        protocols: Optional[list[str]] = None,
        token: Optional[Callable[[], Any]] = None,
        deflate: Optional[DeflateSettings] = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        assert reactor is not None
        parse_url(url)  # raises a clear ValueError on a bad URL
        self.url = url
        self.listener: IClientListener = listener if listener is not None else ClientListener()
        self._clock = reactor
        self._endpoint = endpoint or endpoint_for_url(reactor, url, trust_root, connect_timeout)
        self._backoff = Backoff(backoff, random)
        self._factory = ClientFactory(
            self,
            url,
            reactor,
            heartbeat,
            max_message_size=max_message_size,
            handshake_timeout=handshake_timeout,
            headers=headers,
            protocols=protocols,
            deflate=deflate,
        )
        self.metrics = metrics
        # For a daemon with --auth jwt: returns a token (or a Deferred of
        # one), asked before every attempt and when the server asks for a
        # refresh; sent as Authorization: Bearer.
        self.token = token
        # The largest message sent or received; a larger send is refused.
        self.max_message_size = max_message_size
        self.state = IDLE
        self.stop_reason: Optional[str] = None
        self._protocol: Optional[ClientProtocol] = None
        self._connecting: Optional[defer.Deferred[Any]] = None
        self._retry_call: Optional[IDelayedCall] = None
        self._stable_call: Optional[IDelayedCall] = None
        self._stopping = False
        self._stable = False
        # A connection a stop is closing, and who waits for it to be gone.
        self._closing_protocol: Optional[ClientProtocol] = None
        self._lost: Optional[defer.Deferred[None]] = None
        self._start_when_closed = False
        self._stopped_waiters: list[defer.Deferred[Optional[str]]] = []

    # public API

    @property
    def attempt(self) -> int:
        return self._backoff.failures + 1

    @property
    def rtt(self) -> Optional[float]:
        """
        Latest heartbeat round-trip time in seconds, if any.
        """
        hb = self.heartbeat
        return hb.last_rtt if hb is not None else None

    @property
    def subprotocol(self) -> Optional[str]:
        """
        The subprotocol the server accepted on the open connection, if any.
        """
        protocol = self._protocol
        return getattr(protocol, "websocket_protocol_in_use", None) if protocol is not None else None

    @property
    def heartbeat(self) -> Optional[Heartbeat]:
        return self._protocol.heartbeat if self._protocol is not None else None

    def send(self, message: Message) -> bool:
        """
        Send a text (L{str}) or binary (L{bytes}) message; returns False,
        sending nothing, while not connected, or when the message is larger
        than C{max_message_size} (L{fits} tells which).
        """
        protocol = self._protocol
        if self.state != OPEN or protocol is None or protocol.state != protocol.STATE_OPEN:
            # Not connected, or closing: the message would be lost.
            return False
        binary = isinstance(message, bytes)
        payload = message if isinstance(message, bytes) else message.encode("utf-8")
        if len(payload) > self.max_message_size:
            self.log.warn(
                "not sending a message of {size} bytes to {url}: over the {limit}-byte limit",
                size=len(payload),
                url=self.url,
                limit=self.max_message_size,
            )
            return False
        protocol.send_message(payload, binary)
        return True

    def fits(self, message: Message) -> bool:
        """
        Whether C{message} is within C{max_message_size}: a message that
        does not can never be sent, connected or not.
        """
        size = len(message) if isinstance(message, bytes) else len(message.encode("utf-8"))
        return size <= self.max_message_size

    def when_stopped(self) -> "defer.Deferred[Optional[str]]":
        """
        A Deferred that fires with C{stop_reason} once the service has
        stopped, by the application or by giving up.
        """
        d: defer.Deferred[Optional[str]] = defer.Deferred()
        if self.state == STOPPED:
            d.callback(self.stop_reason)
        else:
            self._stopped_waiters.append(d)
        return d

    def startService(self) -> None:
        super().startService()
        self._stopping = False
        self.stop_reason = None
        self._backoff.succeeded()  # a restart starts the schedule over
        if self._closing_protocol is not None:
            # The previous connection is still finishing its closing
            # handshake: connect once it is gone, never beside it.
            self._start_when_closed = True
            return
        self._connect()

    def stopService(self) -> "defer.Deferred[None]":
        """
        Stop for good: close the connection (1001, going away) and cancel
        any pending attempt.  Fires once the connection is gone.
        """
        if self.running:
            super().stopService()
        if self.state == STOPPED:
            # Already stopped (by the application or by giving up); the
            # connection may still be finishing its close.
            if self._lost is None:
                return defer.succeed(None)
            gone: defer.Deferred[None] = defer.Deferred()

            def relay(result: None) -> None:
                gone.callback(None)
                return result

            self._lost.addCallback(relay)
            return gone
        return self._halt(None)

    # the connection cycle

    def _set_state(self, state: str, **detail: Any) -> None:
        self.state = state
        try:
            self.listener.client_state(self, state, detail)
        except Exception:
            self.log.failure("client listener failed in client_state")

    def _notify(self, method: str, *args: Any) -> None:
        try:
            getattr(self.listener, method)(self, *args)
        except Exception:
            self.log.failure("client listener failed in {method}", method=method)

    def _connect(self) -> None:
        self._retry_call = None
        if self.metrics is not None:
            self.metrics.reconnect_attempts.inc()
        self._set_state(CONNECTING, attempt=self.attempt)
        if self.token is None:
            self._connect_tcp()
            return
        asked = defer.maybeDeferred(self.token)
        self._connecting = asked
        asked.addCallbacks(self._got_token, self._connect_failed)

    def _got_token(self, token: Any) -> None:
        self._connecting = None
        if self._stopping:
            return
        self._factory.headers = dict(self._factory.headers or {}, Authorization=f"Bearer {token}")
        self._connect_tcp()

    def _connect_tcp(self) -> None:
        d = self._endpoint.connect(self._factory)
        self._connecting = d
        d.addCallbacks(self._tcp_connected, self._connect_failed)

    def _tcp_connected(self, protocol: ClientProtocol) -> None:
        self._connecting = None
        self._protocol = protocol

    def _connect_failed(self, failure: Failure) -> None:
        self._connecting = None
        if self._stopping:
            return
        self._retry(self._backoff.failed(), _describe_failure(failure))

    def protocol_opened(self, protocol: ClientProtocol) -> None:
        self._protocol = protocol
        self._stable = False
        self._stable_call = self._clock.callLater(
            self._backoff.settings.stable_after, self._became_stable
        )
        if self.metrics is not None:
            self.metrics.opened.inc()
        self._set_state(OPEN, rtt=None)
        self._notify("client_opened")

    def _became_stable(self) -> None:
        self._stable_call = None
        self._stable = True
        self._backoff.succeeded()

    def protocol_message(self, protocol: ClientProtocol, message: Message) -> None:
        self._notify("client_message", message)

    def protocol_rtt(self, protocol: ClientProtocol, rtt: float) -> None:
        self._notify("client_rtt", rtt)

    def protocol_missed(self, protocol: ClientProtocol, heartbeat: Heartbeat) -> None:
        self._notify("client_missed", heartbeat.misses)

    def protocol_dead(self, protocol: ClientProtocol, heartbeat: Heartbeat) -> None:
        if self.metrics is not None:
            self.metrics.server_deaths.inc()
        self.log.info(
            "server {url} declared dead: {misses} missed pongs",
            url=self.url,
            misses=heartbeat.misses,
        )

    def protocol_closed(
        self,
        protocol: ClientProtocol,
        was_clean: bool,
        code: Optional[int],
        reason: Optional[str],
    ) -> None:
        if protocol is self._closing_protocol:
            # The connection a stop closed is gone.
            self._closing_protocol = None
            lost, self._lost = self._lost, None
            if lost is not None:
                lost.callback(None)
            if self._start_when_closed:
                self._start_when_closed = False
                if self.running and not self._stopping:
                    self._connect()
            return
        if protocol is not self._protocol or self._stopping:
            return
        self._protocol = None
        if self._stable_call is not None:
            self._stable_call.cancel()
            self._stable_call = None
        code = code if code is not None else closecodes.ABNORMAL
        reason = reason or ""
        if protocol.heartbeat is not None and protocol.heartbeat.dead:
            reason = closecodes.HEARTBEAT_TIMEOUT_REASON
        if protocol.opened:
            self._notify("client_closed", code, reason, was_clean)
            self._after_close(code, reason)
        else:
            self._after_failed_handshake(protocol, reason)

    def _after_close(self, code: int, reason: str) -> None:
        description = f"closed with {code}" + (f" ({reason})" if reason else "")
        if closecodes.is_terminal(code):
            self._give_up(f"server refused: {description}")
            return
        hint = hint_from_close(code, reason)
        if hint is not None:
            delay = self._backoff.hinted(hint)
            if not self._stable and not self._backoff.keeps_schedule(hint):
                # A server that hints right after every open is failing us:
                # never come back faster than the normal schedule says.
                # (A hint at least as long as that schedule's next window -
                # admission control's slot for us - is kept as it is.)
                delay = max(delay, self._backoff.failed())
            self._retry(delay, f"{description}, server asked to wait")
            return
        self._retry(self._backoff.failed(), description)

    def _after_failed_handshake(self, protocol: ClientProtocol, reason: str) -> None:
        status = protocol.handshake_status
        if status is None:
            tls = describe_tls_failure(protocol.lost_reason)
            self._retry(
                self._backoff.failed(),
                tls or reason or "connection failed before the WebSocket opened",
            )
            return
        description = f"handshake refused with HTTP {status}"
        if status in closecodes.TERMINAL_HTTP_STATUSES:
            self._give_up(description)
            return
        if status in (429, 503):
            wait = parse_retry_after(protocol.retry_after_header, self._clock.seconds())
            if wait is not None:
                self._retry(self._backoff.retry_after(wait), f"{description}, Retry-After {wait:g} s")
                return
        self._retry(self._backoff.failed(), description)

    def _retry(self, delay: float, reason: str) -> None:
        if self._backoff.exhausted:
            self._give_up(f"gave up after {self._backoff.failures} failed attempts; last: {reason}")
            return
        if self.metrics is not None:
            self.metrics.reconnect_delay.observe(delay)
        self._set_state(WAITING, delay=delay, attempt=self.attempt, reason=reason)
        self._retry_call = self._clock.callLater(delay, self._connect)

    def _give_up(self, reason: str) -> None:
        self.log.warn("client for {url} stops: {reason}", url=self.url, reason=reason)
        self.stop_reason = reason
        self._halt(reason)
        if self.running:
            Service.stopService(self)

    def _halt(self, reason: Optional[str]) -> "defer.Deferred[None]":
        self._stopping = True
        if self._retry_call is not None:
            self._retry_call.cancel()
            self._retry_call = None
        if self._stable_call is not None:
            self._stable_call.cancel()
            self._stable_call = None
        if self._connecting is not None:
            connecting, self._connecting = self._connecting, None
            connecting.addErrback(lambda f: None)
            connecting.cancel()
        lost: defer.Deferred[None] = defer.Deferred()
        protocol, self._protocol = self._protocol, None
        if protocol is not None and protocol.state != protocol.STATE_CLOSED:
            self._closing_protocol = protocol
            self._lost = lost
            protocol.close(closecodes.GOING_AWAY, "client stopping")
        else:
            lost.callback(None)
        self._set_state(STOPPED, reason=reason)
        waiters, self._stopped_waiters = self._stopped_waiters, []
        for waiter in waiters:
            waiter.callback(reason)
        return lost
