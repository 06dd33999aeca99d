"""
The server side of a wsheart connection (L{ServerProtocol}) and its
factory: the opening handshake through the door (admission, proxies,
Origin, tokens, limits), the HTTP pages, message dispatch to the handler,
backpressure, and the heartbeat (L{wsheart.liveness}).  State lives in the
hub, policy in the core modules.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Optional

from autobahn.twisted.websocket import (
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from autobahn.twisted.util import peer2str
from autobahn.websocket.types import ConnectionDeny
from twisted.internet import defer
from twisted.internet.interfaces import IProtocolNegotiationFactory, IReactorTime
from twisted.logger import Logger
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from wsheart import closecodes
from wsheart.access.admission import Admission, AdmissionSettings, Refusal
from wsheart.auth import AuthPolicy, Identity
from wsheart.deflate import DeflateSettings, FrameKey, make_lean, may_compress, server_accept
from wsheart.handler import EchoHandler, IMessageHandler
from wsheart.directwrite import queued_bytes, write_small
from wsheart.frames import data_frame
from wsheart.heartbeat import CadenceMeter, Heartbeat, HeartbeatSettings
from wsheart.hub import Hub, IConnection
from wsheart.metrics import ServerMetrics
from wsheart.access.door import USER_REFUSAL, Door, Knock
from wsheart.access.limits import LOG_EVERY, ConnectionLimits, LimitSettings, address_key
from wsheart.access.origin import OriginPolicy
from wsheart.access.proxies import TrustedProxies, parse_address
from wsheart.pages import Pages, parse_request_head, status_phrase, wants_upgrade
from wsheart.wheel import TimerWheel
from wsheart.liveness import Liveness, autobahn_options

# Largest opening-handshake request a server accepts before answering 431.
MAX_HANDSHAKE_BYTES = 16 * 1024


_limits_log = Logger(namespace="wsheart.access.limits")
_admission_log = Logger(namespace="wsheart.access.admission")
_heartbeat_log = Logger(namespace="wsheart.heartbeat")
_proxies_log = Logger(namespace="wsheart.access.proxies")


# The ignore: Autobahn's own bases disagree on the types of "peer" and
# "_transport_details" (see wsheart.liveness).
@implementer(IConnection)
class ServerProtocol(Liveness, WebSocketServerProtocol):  # type: ignore[misc]
    """
    One server-side WebSocket connection.
    """

    factory: "ServerFactory"
    connection_id: Optional[str] = None
    # Why the handshake is refused, for the metric (None: the HTTP status).
    _refusal: Optional[str] = None
    # The connection limits' view of it (wsheart.access.limits): its address key,
    # and whether it is counted as a pending handshake or an open connection.
    _limit_key: Optional[str] = None
    _counted: Optional[str] = None
    # The user (token sub) this connection counts against
    # --max-connections-per-user, once it does.
    _user_counted: Optional[str] = None
    _refused_at_accept = False
    # Admission control turned this handshake away (wsheart.access.admission): it
    # opens only to be closed with 1013 and this retry window.
    _admission_refusal: Optional[Refusal] = None
    # Retry-After of a refused handshake's HTTP answer.
    _retry_after: Optional[str] = None
    # Who the peer is (wsheart.auth.Identity) when the daemon runs with
    # --auth; None without.  Handlers read it; wsheart.v1's auth frame sets
    # it through set_identity.
    identity: Optional[Identity] = None
    _dead = False
    _too_slow = False
    # How this connection takes a channel's ready frame (wsheart.deflate):
    # None, the plain frame; set in onOpen when permessage-deflate was
    # negotiated.
    frame_key: Optional[FrameKey] = None
    # The handler of this connection: the factory's, or the one of the
    # subprotocol it negotiated (chosen in onOpen).
    handler: IMessageHandler = EchoHandler()

    def connectionMade(self) -> None:
        self.clock = self.factory.clock
        self.close_timeout = self.factory.close_timeout
        super().connectionMade()
        self._no_nagle()
        limits = self.factory.limits
        host = getattr(self.transport.getPeer(), "host", None)
        self._limit_key = address_key(host)
        trusted = self.factory.trusted_proxies
        if trusted and trusted.trusts(parse_address(host or "")):
            # A trusted proxy carries the handshakes of many clients: each
            # is counted once its X-Forwarded-For names it (onConnect).
            self._limit_key = None
        if not limits.connection_made(self._limit_key):
            # Too many handshakes in progress from this address: drop it
            # before reading anything.
            self._refused_at_accept = True
            self.transport.abortConnection()
            return
        self._counted = "pending"
        if not self.factory.admission.arrived(self._limit_key):
            # Handshakes arrive far faster than they are admitted (or this
            # address takes more than its share): refuse before TLS and
            # before reading a byte (a hint costs a handshake).
            self._refused_at_accept = True
            self.transport.abortConnection()
            return
        self._arm_handshake_timer(self.factory.handshake_timeout)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        counted, self._counted = self._counted, None
        if counted is not None:
            self.factory.limits.connection_lost(self._limit_key, was_open=counted == "open", was_pending=counted == "pending")
        user, self._user_counted = self._user_counted, None
        if user is not None:
            self.factory.limits.user_left(user)
        super().connectionLost(reason)

    def dataReceived(self, data: bytes) -> None:
        if self._refused_at_accept:
            return
        if self.state == self.STATE_CLOSED:
            # After a page or a refused handshake nothing more is read;
            # Autobahn would keep appending it to self.data.
            return
        if self.state == self.STATE_CONNECTING and len(self.data) + len(data) > MAX_HANDSHAKE_BYTES:
            self.failHandshake("opening handshake request too large", 431)
            return
        super().dataReceived(data)

    def _linger_at_most(self, seconds: float) -> None:
        """
        The answer (a page, a refusal) is written and the connection is
        closing: a peer that does not read it must not hold the socket.
        """
        if self._close_timer is None and not self._connection_gone:
            self._close_timer = self.clock.callLater(seconds, self._close_timed_out)

    def processHandshake(self) -> None:
        # A browser asking for a page (no Upgrade header) gets it from
        # wsheart.pages; everything else - WebSocket handshakes, good or
        # bad, and unknown paths - goes to Autobahn as before.
        pages = self.factory.pages
        if pages is not None:
            end = self.data.find(b"\r\n\r\n")
            request = parse_request_head(self.data[:end]) if end >= 0 else None
            if request is not None and not wants_upgrade(request):
                response = pages.respond(request)
                if response is not None:
                    self.sendData(response)
                    self.data = b""
                    self.dropConnection(abort=False)
                    self._linger_at_most(self.factory.handshake_timeout)
                    return
        super().processHandshake()

    def sendHttpErrorResponse(self, code, reason, responseHeaders=None):
        # A short, complete HTTP answer (Autobahn's has no body and puts the
        # reason in the status line), so curl or a browser shows why.
        body = f"{code} {status_phrase(code)}: {reason}\n".encode("utf-8")
        lines = [
            f"HTTP/1.1 {code} {status_phrase(code)}",
            "Content-Type: text/plain; charset=utf-8",
            f"Content-Length: {len(body)}",
            "Connection: close",
        ]
        if code == 426:
            lines.append("Upgrade: websocket")
        for name, value in responseHeaders or ():
            lines.append(f"{name}: {value}")
        self.sendData(("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + body)

    def failHandshake(self, reason: str, code: int = 400, responseHeaders=None):
        self.factory.metrics.handshake_failures.labels(reason=self._refusal or f"http_{code}").inc()
        if self._retry_after is not None:
            responseHeaders = list(responseHeaders or ()) + [("Retry-After", self._retry_after)]
        result = super().failHandshake(reason, code, responseHeaders)
        self.data = b""
        self._linger_at_most(self.factory.handshake_timeout)
        return result

    def _handshake_timed_out(self) -> None:
        if self.state == self.STATE_CONNECTING:
            self.factory.metrics.handshake_failures.labels(reason="timeout").inc()
        super()._handshake_timed_out()

    def _send_heartbeat_ping(self, payload: bytes) -> None:
        # _peer_mid_frame, inlined: this runs for every ping.
        if self.state == self.STATE_OPEN and not self.data and getattr(self, "current_frame", None) is None:
            # A server frame is unmasked: FIN + opcode 9, then the length.
            write_small(self.transport, b"\x89\x0c" + payload)
            self.factory.metrics.heartbeat.pings_sent += 1

    def onPong(self, payload: bytes) -> None:
        if self.heartbeat is not None:
            rtt = self.heartbeat.pong_received(payload)
            if rtt is not None:
                self.factory.metrics.heartbeat.pong(rtt)

    def onPing(self, payload: bytes) -> None:
        # A pong is queued like any message: a peer that pings and never
        # reads must meet --max-send-buffer too.
        if self._may_send(len(payload) + 2):
            self.sendPong(payload)

    def _heartbeat_missed(self, heartbeat: Heartbeat) -> None:
        self.factory.metrics.misses.inc()

    def onConnect(self, request: Any) -> Optional[str]:
        """
        Ask the door (L{wsheart.access.door}) and carry out its decision.
        """
        door = self.factory.door
        host = getattr(self.transport.getPeer(), "host", None)
        named = peer2str(self.transport) if address_key(host) != self._limit_key else None
        knock = Knock(host, named or str(self.peer), request.headers, tuple(request.protocols), self.clock.seconds())
        caller = door.identify(knock)
        if caller.limit_key != self._limit_key:
            if self._counted == "pending":
                self.factory.limits.moved(self._limit_key, caller.limit_key)
            self._limit_key = caller.limit_key
        if caller.peer is not None or named is not None:
            self.peer = caller.peer or named
        decision = door.decide(knock, caller)
        refused = decision.refused
        if refused is not None:
            self._refusal = refused.kind
            self._retry_after = refused.retry_after
            raise ConnectionDeny(refused.status, refused.reason)
        self._admission_refusal = decision.in_band
        self.identity = decision.identity
        return decision.subprotocol

    def set_identity(self, identity: Identity) -> bool:
        """
        The peer is now C{identity} (a token sent in a frame, or a refresh):
        the connection closes with 4001 when its token expires.  False: the
        user holds --max-connections-per-user already, and this connection
        is closing with 1013 and a retry window.
        """
        if self._user_counted is None and identity.sub is not None:  # not anonymous
            if not self.factory.limits.user_may_join(identity.sub):
                self.close(closecodes.TRY_AGAIN_LATER, USER_REFUSAL.close_reason())
                return False
        self.identity = identity
        self._count_user()
        self._arm_auth_timer()
        return True

    def _count_user(self) -> None:
        identity = self.identity
        if self._user_counted is None and identity is not None and identity.sub is not None:
            self.factory.limits.user_joined(identity.sub)
            self._user_counted = identity.sub

    def _arm_auth_timer(self) -> None:
        auth = self.factory.auth
        if auth is None or self.identity is None:
            return
        if self._auth_timer is not None and self._auth_timer.active():
            self._auth_timer.cancel()
        self._auth_timer = None
        if self.identity.anonymous:
            if not auth.anonymous_allowed:
                self._auth_timer = self.clock.callLater(
                    auth.timeout, self.close, closecodes.AUTH_TIMEOUT, f"no token within {auth.timeout:g} s"
                )
        elif self.identity.expires_at is not None:
            delay = max(0.0, self.identity.expires_at + auth.leeway - self.clock.seconds())
            self._auth_timer = self.clock.callLater(delay, self.close, closecodes.TOKEN_EXPIRED, "token expired")

    def onOpen(self) -> None:
        factory = self.factory
        refusal = self._admission_refusal
        if refusal is not None:
            # Admission control said not now: tell a wsheart client when to
            # come back, in the close frame it can read.
            if self._handshake_timer is not None:
                self._handshake_timer.cancel()
                self._handshake_timer = None
            self._forget_handshake()
            self.close(closecodes.TRY_AGAIN_LATER, refusal.close_reason())
            self.transport.loseConnection()
            return
        self.handler = factory.subprotocols.get(self.websocket_protocol_in_use or "", factory.handler)
        factory.metrics.connections_opened.inc()
        self._deflate_opened()
        self.connection_id = factory.hub.new_id()
        self._start_heartbeat(
            factory.heartbeat_settings,
            factory.random() * factory.heartbeat_settings.interval,
        )
        factory.hub.add(self.connection_id, str(self.peer), self, self.heartbeat)
        factory.limits.opened(self._limit_key)
        self._counted = "open"
        self._count_user()
        self._arm_auth_timer()
        self._forget_handshake()
        self._call_handler("connection_opened", self)

    def _forget_handshake(self) -> None:
        # The opening handshake is over: thousands of idle connections
        # should not each keep a copy of its request and response (None,
        # which Autobahn's types do not foresee, frees them for good).
        self.http_headers = self.http_request_data = self.http_response_data = None  # type: ignore[assignment]

    def _deflate_opened(self) -> None:
        """
        permessage-deflate was negotiated: drop zlib state between messages
        where no context is taken over, and say how channel frames reach
        this connection (shared compressed frames need no context takeover
        on the server's side).
        """
        pmce = self._perMessageCompress
        settings = self.factory.deflate
        if pmce is None or settings is None:
            return
        make_lean(pmce, self)
        key = FrameKey(
            window_bits=pmce.server_max_window_bits,
            mem_level=pmce.mem_level,
            min_size=settings.min_size,
            shared=bool(pmce.server_no_context_takeover),
        )
        # One object per parameter set: fan-out compares keys by identity
        # first (hashing a key per subscriber costs more than the lookup).
        self.frame_key = self.factory.frame_keys.setdefault(key, key)

    def sendMessage(self, payload, isBinary=False, fragmentSize=None, sync=False, doNotCompress=False):
        # Below --deflate-min-size a message goes uncompressed: a compressor
        # set up for a few bytes costs more than it saves.
        settings = self.factory.deflate
        if settings is not None and not may_compress(len(payload), settings, self.max_message_size):
            doNotCompress = True
        super().sendMessage(payload, isBinary, fragmentSize, sync, doNotCompress)

    def _fast_messages(self, data: bytes) -> bytes:
        """
        The common case of chat and games without Autobahn's general frame
        parser: complete, unfragmented, masked text and binary frames with
        no extension bits, up to 64 KiB, read between messages.  Each is
        unmasked, its text checked as UTF-8 and dispatched as Autobahn
        would.  At the first frame that is anything else - a control frame,
        a fragment, a partial frame, a compressed one, a 64-bit length, a
        non-minimal length, invalid UTF-8, over the size limit - the rest
        goes the long way, from that frame on, and Autobahn answers it
        exactly as before (1002, 1007, 1009 ...).
        """
        if (
            self.state != self.STATE_OPEN
            or self.data
            or self.current_frame is not None
            or self.inside_message
        ):
            return data
        limit = self.maxMessagePayloadSize or 0x7FFFFFFF
        frame_limit = self.maxFramePayloadSize or 0x7FFFFFFF
        pos = 0
        end_of_data = len(data)
        while end_of_data - pos >= 6:
            first = data[pos]
            if first != 0x81 and first != 0x82:
                break  # not FIN + text/binary with no RSV bits
            second = data[pos + 1]
            length = second & 0x7F
            if not second & 0x80:
                break  # unmasked: a protocol error, Autobahn's to answer
            if length < 126:
                head = pos + 2
            elif length == 126:
                if end_of_data - pos < 8:
                    break
                length = (data[pos + 2] << 8) | data[pos + 3]
                if length < 126:
                    break  # not the minimal encoding: Autobahn fails it
                head = pos + 4
            else:
                break  # 64-bit lengths: large messages go the long way
            if length > limit or length > frame_limit:
                break  # 1009 from Autobahn
            start = head + 4
            end = start + length
            if end > end_of_data:
                break  # incomplete: Autobahn buffers it
            mask = data[head:start]
            if length:
                repeated = (mask * ((length >> 2) + 1))[:length]
                payload = (int.from_bytes(data[start:end], "big") ^ int.from_bytes(repeated, "big")).to_bytes(length, "big")
            else:
                payload = b""
            if first == 0x81:
                try:
                    text: Optional[str] = payload.decode("utf-8")
                except UnicodeDecodeError:
                    break  # 1007 from Autobahn, fail-fast as ever
            else:
                text = None
            pos = end
            self._message(payload, text)
            if self.state != self.STATE_OPEN:
                break
        return data[pos:] if pos else data

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        # Autobahn's long way: it has checked the UTF-8 of a text message.
        self._message(payload, None if isBinary else payload.decode("utf-8"))

    def _message(self, payload: bytes, text: Optional[str]) -> None:
        """
        One whole message: C{text} for a text message (checked UTF-8),
        None for a binary one.
        """
        if self._dead or self.state != self.STATE_OPEN:
            # Declared dead (and gone from the hub and presence), or
            # closing: what it still says must not act, e.g. resubscribe.
            return
        factory = self.factory
        if text is not None:
            # The text ping is for plain connections: a subprotocol has its
            # own (wsheart.v1: {"op":"ping"}).
            if factory.app_ping is not None and payload == factory.app_ping and self.handler is factory.handler:
                if self._may_send(len(factory.app_pong)):
                    self.sendMessage(factory.app_pong, False)
                return
            self._call_handler("message_received", self, text)
        else:
            self._call_handler("message_received", self, payload)

    def _call_handler(self, method: str, *args: Any) -> None:
        try:
            result = getattr(self.handler, method)(*args)
        except Exception:
            self._handler_failed(Failure(), method)
            return
        # (Most handlers return None; isinstance on Deferred is not free.)
        if result is not None and isinstance(result, defer.Deferred):
            result.addErrback(self._handler_failed, method)

    def _handler_failed(self, failure: Failure, method: str) -> None:
        self.logger.failure(
            "handler {method} failed on connection {cid} from {peer}; closing it",
            failure,
            method=method,
            cid=self.connection_id,
            peer=self.peer,
        )
        if method != "connection_closed" and self.state in (self.STATE_OPEN, self.STATE_CONNECTING):
            self.close(closecodes.INTERNAL_ERROR, "internal error")

    def _heartbeat_dead(self, heartbeat: Heartbeat) -> None:
        # Leave the registry at the moment of death, not when TCP notices.
        self._dead = True
        metrics = self.factory.metrics
        metrics.misses.inc()
        metrics.dead_peers.inc()
        metrics.time_to_detect.observe(self.clock.seconds() - heartbeat.last_seen)
        if self.connection_id is not None:
            self.factory.hub.remove(self.connection_id, "dead")
        rtt = heartbeat.last_rtt
        self.logger.info(
            "peer {peer} declared dead: {misses} missed pongs, last RTT {rtt}",
            peer=self.peer,
            misses=heartbeat.misses,
            rtt="none" if rtt is None else f"{rtt * 1000:.1f} ms",
            cid=self.connection_id,
            cause="heartbeat",
        )
        super()._heartbeat_dead(heartbeat)

    def onClose(self, wasClean: bool, code: Optional[int], reason: Optional[str]) -> None:
        self._stop_timers()
        if self.connection_id is None:
            return  # the opening handshake never completed
        cause = "dead" if self._dead else "slow" if self._too_slow else ("closed" if wasClean else "dropped")
        self.factory.hub.remove(self.connection_id, cause)
        if self._dead:
            # Whatever the dead peer's TCP connection did after the verdict,
            # metrics and the application hear the verdict.
            code, reason = closecodes.INTERNAL_ERROR, closecodes.HEARTBEAT_TIMEOUT_REASON
        elif self._too_slow:
            code, reason = closecodes.TRY_AGAIN_LATER, "too slow: send buffer full"
        elif not wasClean or code is None:
            code = closecodes.ABNORMAL
        self.factory.metrics.connections_closed.labels(cause=cause, code=closecodes.metric_label(code)).inc()
        self._call_handler("connection_closed", self, code, reason or "")

    # IConnection

    @property
    def max_message_size(self) -> int:
        return int(self.maxMessagePayloadSize)

    def send_text(self, text: str) -> bool:
        payload = text.encode("utf-8")
        if not self._may_send_message(len(payload)):
            return False
        self._write_message(payload, 0x1)
        return True

    def send_binary(self, data: bytes) -> bool:
        if not self._may_send_message(len(data)):
            return False
        self._write_message(data, 0x2)
        return True

    def _write_message(self, payload: bytes, opcode: int) -> None:
        """
        One message, framed here (a server frame is one header and the
        payload, unmasked) unless it is to be compressed, which Autobahn
        does.  Autobahn's own sendMessage checks and counts on every call.
        """
        settings = self.factory.deflate
        if self._perMessageCompress is not None and settings is not None and may_compress(len(payload), settings, self.max_message_size):
            self.sendMessage(payload, opcode == 0x2)
        else:
            self.transport.write(data_frame(payload, opcode))

    def _may_send_message(self, size: int) -> bool:
        """
        L{_may_send}, and the message fits C{--max-message-size}: the limit
        holds for what the daemon sends too, and a message over it is not
        sent (False), never an exception in the handler.
        """
        limit = self.max_message_size
        if 0 < limit < size:
            self.logger.warn(
                "not sending a message of {size} bytes to {peer}: larger than the {limit}-byte limit",
                size=size,
                peer=self.peer,
                limit=limit,
                cid=self.connection_id,
            )
            return False
        return self._may_send(size)

    def _may_send(self, size: int) -> bool:
        """
        Whether C{size} more bytes may be queued for this peer.  A peer that
        reads slower than it is sent to (a busy channel, a stalled phone)
        would make the daemon buffer without bound: once what waits for it
        would pass C{max_send_buffer} plus the largest legal message
        (C{--max-message-size}), it is closed with 1013 (try again later),
        which clients answer by reconnecting on their backoff - and, on
        wsheart.v1, by recovering what they missed from history.

        The allowance of one largest message means that a message of any
        legal size - even larger than C{--max-send-buffer} - never counts
        as slowness by itself, nor does a pong or a channel frame queued
        behind it while the peer reads it at its own pace.
        """
        if self.state != self.STATE_OPEN or self._too_slow:
            return False
        queued = self.factory.queued_bytes(self.transport)
        if queued is None or queued + size <= self.factory.max_send_buffer + self.max_message_size:
            return True
        self._too_slow = True
        self.logger.warn(
            "peer {peer} reads too slowly: {queued} bytes unsent (limit {limit}: --max-send-buffer plus one largest "
            "message); closing it with 1013",
            peer=self.peer,
            queued=queued,
            limit=self.factory.max_send_buffer + self.max_message_size,
            cid=self.connection_id,
            cause="slow reader",
        )
        self.close(closecodes.TRY_AGAIN_LATER, "too slow: send buffer full")
        return False

    def write_frame(self, frame: bytes) -> bool:
        """
        Write a ready WebSocket frame (L{wsheart.frames}): the same bytes
        go to every subscriber of a channel, framed once - plain, or
        compressed once per L{frame_key} when permessage-deflate was
        negotiated without context takeover on the server's side (a plain
        frame stays valid on such a connection: compression is per
        message).
        """
        if self.transport is None or not self._may_send(len(frame)):
            return False
        # Buffered, not write_small: a burst of publishes then leaves in one
        # send() per subscriber per reactor turn instead of one per message.
        self.transport.write(frame)
        return True

    def abort(self) -> None:
        self.dropConnection(abort=True)


@implementer(IProtocolNegotiationFactory)
class ServerFactory(WebSocketServerFactory):
    """
    Builds L{ServerProtocol}s that share one hub, one handler and one set of
    heartbeat settings.

    It names C{http/1.1} for ALPN, so that it also serves ALPN-offering
    clients (every browser) behind a TLS listener of Twisted's own (an
    application that embeds it under C{ssl:} of its own making); the
    daemon's listeners use L{wsheart.tls}.
    """

    # Autobahn types this as its own protocol class; ours is one (see the
    # class's ignore).
    protocol = ServerProtocol  # type: ignore[assignment]

    def __init__(
        self,
        hub: Hub,
        clock: IReactorTime,
        handler: Optional[IMessageHandler] = None,
        heartbeat_settings: HeartbeatSettings = HeartbeatSettings(),
        app_ping: Optional[str] = "ping",
        app_pong: str = "pong",
        max_message_size: int = 1024 * 1024,
        handshake_timeout: float = 10.0,
        close_timeout: float = 1.0,
        random: Callable[[], float] = random.random,
        url: Optional[str] = None,
        metrics: Optional[ServerMetrics] = None,
        pages: bool = False,
        subprotocols: Optional[dict[str, IMessageHandler]] = None,
        pages_settings: Optional[dict[str, Any]] = None,
        max_send_buffer: int = 8 * 1024 * 1024,
        queued_bytes: Callable[[Any], Optional[int]] = queued_bytes,
        origin_policy: OriginPolicy = OriginPolicy(),
        auth: Optional[AuthPolicy] = None,
        limits: LimitSettings = LimitSettings(),
        admission: AdmissionSettings = AdmissionSettings(),
        deflate: Optional[DeflateSettings] = None,
        trusted_proxies: TrustedProxies = TrustedProxies(),
    ) -> None:
        super().__init__(url=url, reactor=clock)
        # Proxies whose X-Forwarded-For names the client (--trusted-proxy);
        # none: the header is never read.
        self.trusted_proxies = trusted_proxies
        self._forwarded_for_logged_at: Optional[float] = None
        self._forwarded_for_unlogged = 0
        # Token authentication (--auth jwt); None: every peer is let in.
        self.auth = auth
        # Which web pages may open a WebSocket here (wsheart.access.origin).
        self.origin_policy = origin_policy
        self.hub = hub
        # One timer wheel for every connection's heartbeat; its slack (the
        # resolution) is small against any sensible timeout.
        self.timers = TimerWheel(clock, resolution=min(0.05, heartbeat_settings.timeout / 20))
        # A heartbeat's verdict waits for the reactor's next turn, which
        # reads the sockets first (wsheart.heartbeat: no peer is judged on
        # the server's own lateness).
        self.after_reads = lambda f: clock.callLater(0, f)
        # How well the cadence is kept, for metrics, /healthz and the log.
        self.cadence = CadenceMeter(heartbeat_settings, slack=self.timers.resolution, on_change=self._cadence_changed)
        self.metrics = metrics if metrics is not None else ServerMetrics()
        self.metrics.track_open_connections(hub.__len__)
        self.limits = ConnectionLimits(
            limits,
            clock,
            refused=lambda limit: self.metrics.limit_refusals.labels(limit=limit).inc(),
            log=_limits_log.warn,
        )
        # How fast new connections are taken (wsheart.access.admission).
        self.admission = Admission(
            admission,
            clock,
            refused=lambda reason, answer: self.metrics.admission_refusals.labels(reason=reason, answer=answer).inc(),
            log=_admission_log.warn,
        )
        self.metrics.track_admission(self.admission.rate, self.admission.queue_seconds)
        self.metrics.track_cadence(self.cadence)
        self.clock = clock
        self.handler = handler if handler is not None else EchoHandler()
        self.heartbeat_settings = heartbeat_settings
        self.app_ping = app_ping.encode("utf-8") if app_ping else None
        self.app_pong = app_pong.encode("utf-8")
        self.handshake_timeout = handshake_timeout
        self.close_timeout = close_timeout
        self.random = random
        # Unsent bytes a peer may have waiting before it is closed (1013),
        # and how they are counted (wsheart.directwrite; tests count an
        # in-memory transport's).
        self.max_send_buffer = max_send_buffer
        self.queued_bytes = queued_bytes
        # Handlers by subprotocol (wsheart.channels.serve gives wsheart.v1's):
        # a connection that negotiates one gets its handler instead.
        self.subprotocols = dict(subprotocols or {})
        # Who may open a WebSocket here (wsheart.access.door): asked by
        # every handshake, with the policies above.
        self.door = Door(
            self.origin_policy,
            self.trusted_proxies,
            self.limits,
            self.admission,
            self.auth,
            self.subprotocols,
            self.random,
            self.forwarded_for_ignored,
        )
        # The browser library and demo page (wsheart.pages), set up to match
        # this server's text heartbeat.
        self.pages: Optional[Pages] = None
        if pages:
            self.pages = Pages(
                {
                    "pingText": app_ping or None,
                    "pongText": app_pong if app_ping else None,
                    "interval": round(heartbeat_settings.interval * 1000),
                    "timeout": round(heartbeat_settings.timeout * 1000),
                    "maxMissed": heartbeat_settings.max_missed,
                    "channels": False,
                    "channel": "chat.lobby",
                    **(pages_settings or {}),
                }
            )
        # permessage-deflate (--deflate; wsheart.deflate); None: declined.
        self.deflate = deflate
        self.frame_keys: dict[FrameKey, FrameKey] = {}
        self.setProtocolOptions(
            # A plain HTTP request gets "426 Upgrade Required", not a page.
            webStatus=False,
            **autobahn_options(max_message_size),
        )
        if deflate is not None:
            self.setProtocolOptions(perMessageCompressionAccept=server_accept(deflate, max_message_size))

    def acceptableProtocols(self) -> list[bytes]:
        """
        ALPN: WebSocket's opening handshake is HTTP/1.1 (RFC 6455).
        """
        return [b"http/1.1"]

    def forwarded_for_ignored(self, peer: str, why: str) -> None:
        """
        A trusted proxy sent an X-Forwarded-For that names no client: the
        connection keeps the proxy's address.  Counted, and logged at most
        once every L{LOG_EVERY} seconds (a misconfigured proxy would send
        it with every connection).
        """
        self.metrics.forwarded_for_ignored.inc()
        self._forwarded_for_unlogged += 1
        now = self.clock.seconds()
        last = self._forwarded_for_logged_at
        if last is None or now - last >= LOG_EVERY:
            _proxies_log.warn(
                "ignored {header} from trusted proxy {peer}: {why}; the connection keeps the proxy's "
                "address ({count} such header(s) since the last line, this one included)",
                header="Forwarded" if self.trusted_proxies.header == "forwarded" else "X-Forwarded-For",
                peer=peer,
                why=why,
                count=self._forwarded_for_unlogged,
            )
            self._forwarded_for_logged_at = now
            self._forwarded_for_unlogged = 0


    def _cadence_changed(self, degraded: bool) -> None:
        cadence = self.cadence
        if degraded:
            _heartbeat_log.warn(
                "heartbeat cadence degraded: pinging every {effective:.2f} s instead of {interval:g} s, pings "
                "{lateness:.2f} s late on average: this process cannot keep up ({connections} connections); "
                "peers are not judged on its lateness, and a silent one is found dead that much later",
                effective=cadence.effective_interval,
                interval=cadence.interval,
                lateness=cadence.lateness,
                connections=len(self.hub),
            )
        else:
            _heartbeat_log.info(
                "heartbeat cadence restored: pinging every {effective:.2f} s (configured {interval:g} s)",
                effective=cadence.effective_interval,
                interval=cadence.interval,
            )

    def startFactory(self) -> None:
        # The first listener starts: admission control's ramp starts now,
        # not when the daemon was composed.
        super().startFactory()
        self.admission.restart()
