"""
The client side of a wsheart connection (L{ClientProtocol}) and its
factory, driven by L{wsheart.client.ReconnectingClientService}: the same
heartbeat as the server's (L{wsheart.liveness}), what a refused handshake
said (status, C{Retry-After}), and the events the service needs.
"""

from __future__ import annotations

from typing import Any, Optional

from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
)
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure

from wsheart.deflate import DeflateSettings, client_accept, client_offers, make_lean, may_compress
from wsheart.heartbeat import Heartbeat, HeartbeatSettings
from wsheart.liveness import Liveness, autobahn_options


# The ignore: Autobahn's own bases disagree on the types of "peer" and
# "_transport_details" (see wsheart.liveness).
class ClientProtocol(Liveness, WebSocketClientProtocol):  # type: ignore[misc]
    """
    The client side of one connection, driven by a L{ClientFactory} whose
    C{owner} (the reconnecting service) receives every event.

    @ivar opened: whether the opening handshake completed.
    @ivar lost_reason: the Failure the TCP/TLS connection ended with.
    @ivar handshake_status: HTTP status of a refused handshake, if any.
    @ivar retry_after_header: its C{Retry-After} header, if any.
    """

    factory: "ClientFactory"
    opened = False
    handshake_status: Optional[int] = None
    retry_after_header: Optional[str] = None
    lost_reason: Optional[Failure] = None

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        # Kept so the service can say why a TLS handshake failed (Autobahn
        # reduces a failed hostname check to "peer dropped the connection").
        self.lost_reason = reason
        super().connectionLost(reason)

    def connectionMade(self) -> None:
        self.clock = self.factory.clock
        self.close_timeout = self.factory.close_timeout
        super().connectionMade()
        self._no_nagle()
        self._arm_handshake_timer(self.factory.handshake_timeout)

    def processHandshake(self) -> None:
        # Autobahn decodes the response head as UTF-8 for a debug line
        # (even with debug logging off) and raises on any other byte above
        # 0x7F, e.g. a Latin-1 reason phrase; the refusal - and its
        # Retry-After - would be lost.  HTTP heads are Latin-1 by
        # definition: make them valid UTF-8 first, keeping what follows.
        end = self.data.find(b"\r\n\r\n")
        if end >= 0:
            head = self.data[:end]
            try:
                head.decode("utf-8")
            except UnicodeDecodeError:
                self.data = head.decode("latin-1").encode("utf-8") + self.data[end:]
        super().processHandshake()

    def failHandshake(self, reason: str) -> None:
        status_line = getattr(self, "http_status_line", None) or ""
        parts = status_line.split()
        if len(parts) >= 2 and parts[1].isdigit():
            self.handshake_status = int(parts[1])
            headers = getattr(self, "http_headers", None) or {}
            self.retry_after_header = headers.get("retry-after")
        super().failHandshake(reason)

    def onOpen(self) -> None:
        self.opened = True
        if self._perMessageCompress is not None:
            make_lean(self._perMessageCompress, self)
        # The first ping goes out at once so the application learns the
        # RTT right away; a fleet's clients are already spread by their
        # jittered reconnects.
        self._start_heartbeat(self.factory.heartbeat_settings, 0.0)
        self.factory.owner.protocol_opened(self)

    def onPong(self, payload: bytes) -> None:
        if self.heartbeat is not None:
            rtt = self.heartbeat.pong_received(payload)
            if rtt is not None:
                self.factory.owner.protocol_rtt(self, rtt)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        message: Any = payload if isBinary else payload.decode("utf-8")
        self.factory.owner.protocol_message(self, message)

    def _heartbeat_missed(self, heartbeat: Heartbeat) -> None:
        self.factory.owner.protocol_missed(self, heartbeat)

    def _heartbeat_dead(self, heartbeat: Heartbeat) -> None:
        self.factory.owner.protocol_dead(self, heartbeat)
        super()._heartbeat_dead(heartbeat)

    def onClose(self, wasClean: bool, code: Optional[int], reason: Optional[str]) -> None:
        self._stop_timers()
        self.factory.owner.protocol_closed(self, wasClean, code, reason)

    def send_message(self, payload: bytes, binary: bool) -> None:
        """
        Send one message (the service has checked its size); below the
        deflate minimum size, uncompressed.
        """
        if self.state == self.STATE_OPEN:
            deflate = self.factory.deflate
            limit = int(self.maxMessagePayloadSize)
            plain = deflate is not None and not may_compress(len(payload), deflate, limit)
            self.sendMessage(payload, binary, doNotCompress=plain)

    def send_text(self, text: str) -> None:
        self.send_message(text.encode("utf-8"), False)

    def send_binary(self, data: bytes) -> None:
        self.send_message(data, True)


class ClientFactory(WebSocketClientFactory):
    """
    Builds L{ClientProtocol}s for one reconnecting client service.
    """

    # Autobahn types this as its own protocol class; ours is one.
    protocol = ClientProtocol  # type: ignore[assignment]

    def __init__(
        self,
        owner: Any,
        url: str,
        clock: IReactorTime,
        heartbeat_settings: HeartbeatSettings,
        max_message_size: int = 1024 * 1024,
        handshake_timeout: float = 10.0,
        close_timeout: float = 1.0,
        headers: Optional[dict[str, str]] = None,
        protocols: Optional[list[str]] = None,
        deflate: Optional[DeflateSettings] = None,
    ) -> None:
        super().__init__(url=url, reactor=clock, headers=headers, protocols=protocols)
        self.deflate = deflate
        self.owner = owner
        self.clock = clock
        self.heartbeat_settings = heartbeat_settings
        self.handshake_timeout = handshake_timeout
        self.close_timeout = close_timeout
        # A client judges its server after reading too (wsheart.heartbeat).
        self.after_reads = lambda f: clock.callLater(0, f)
        # The server drops TCP after the closing handshake; if it does not,
        # wsheart's close timer (not Autobahn's global-reactor one) does.
        self.setProtocolOptions(serverConnectionDropTimeout=0, **autobahn_options(max_message_size))
        if deflate is not None:
            # Offer permessage-deflate; the server chooses the parameters.
            self.setProtocolOptions(
                perMessageCompressionOffers=client_offers(deflate),
                perMessageCompressionAccept=client_accept(deflate, max_message_size),
            )
