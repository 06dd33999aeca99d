"""
In-memory plumbing for tests: a wsheart server factory and a plain
Autobahn client connected through twisted.test.iosim, on one Clock; a fake
L{IConnection} that records what it is sent; client frames built by hand.
"""

from __future__ import annotations

import random
from typing import Any, Optional

import json
import os

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.task import Clock
from twisted.test import iosim
from zope.interface import implementer

from wsheart.handler import IMessageHandler
from wsheart.heartbeat import HeartbeatSettings
from wsheart.hub import Hub, IConnection
from wsheart.protocol import ServerFactory


class RecordingClientProtocol(WebSocketClientProtocol):
    """
    A plain Autobahn client that records what it receives and can stop
    answering pings (a frozen peer).
    """

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[Any] = []
        self.pings: list[bytes] = []
        self.closes: list[tuple[bool, Optional[int], Optional[str]]] = []
        self.frozen = False
        self.opened = False

    def onOpen(self) -> None:
        self.opened = True

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.messages.append(payload if isBinary else payload.decode("utf-8"))

    def onPing(self, payload: bytes) -> None:
        self.pings.append(payload)
        if not self.frozen:
            self.sendPong(payload)

    def onClose(self, wasClean: bool, code: Optional[int], reason: Optional[str]) -> None:
        self.closes.append((wasClean, code, reason))


def make_server_factory(
    clock: Clock,
    handler: Optional[IMessageHandler] = None,
    heartbeat: HeartbeatSettings = HeartbeatSettings(interval=10, timeout=4, max_missed=2),
    **kwargs: Any,
) -> ServerFactory:
    kwargs.setdefault("random", random.Random(7).random)
    hub = Hub(clock)
    channels = kwargs.pop("channels", None)
    if channels is not None:
        # As makeService does it: wsheart.v1 from a broker.
        from wsheart.channels import serve
        from wsheart.metrics import ServerMetrics

        kwargs["metrics"] = metrics = kwargs.get("metrics") or ServerMetrics()
        kwargs["subprotocols"] = serve(channels, hub, metrics, kwargs.get("auth"))
    return ServerFactory(hub=hub, clock=clock, handler=handler, heartbeat_settings=heartbeat, **kwargs)


def connect_client(
    server_factory: ServerFactory,
    clock: Clock,
    greet: bool = True,
    protocols: Optional[list[str]] = None,
    headers: Optional[dict[str, str]] = None,
    peer: Optional[str] = None,
) -> tuple[RecordingClientProtocol, Any, iosim.IOPump]:
    """
    Connect a recording client (offering C{protocols}, sending C{headers})
    to a fresh server protocol, which sees it come from the IP address
    C{peer} (iosim's default when None); with C{greet}, pump until the
    opening handshake is done.
    """
    client_factory = WebSocketClientFactory("ws://127.0.0.1:9000/", reactor=clock, protocols=protocols, headers=headers)
    client_factory.protocol = RecordingClientProtocol
    client_factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0, serverConnectionDropTimeout=0)
    server = server_factory.buildProtocol(None)
    client = client_factory.buildProtocol(None)
    if peer is None:
        server_io = iosim.makeFakeServer(server)
    else:
        address = IPv6Address("TCP", peer, 40000) if ":" in peer else IPv4Address("TCP", peer, 40000)
        server_io = iosim.FakeTransport(server, isServer=True, peerAddress=address)
    client_io = iosim.makeFakeClient(client)
    pump = iosim.connect(server, server_io, client, client_io, greet=greet, clock=clock)
    return client, server, pump


@implementer(IConnection)
class FakeConnection:
    """
    An L{IConnection} that records the text it is sent.  C{fail_sends}
    makes every send raise (a connection that breaks mid-announcement).
    """

    max_message_size = 1024 * 1024
    identity = None  # no --auth

    def __init__(self, connection_id: str) -> None:
        self.connection_id = connection_id
        self.peer = "test"
        self.sent: list[str] = []
        self.closed: Any = None
        self.fail_sends = False

    def send_text(self, text: str) -> bool:
        if self.fail_sends:
            raise RuntimeError("this connection is broken")
        text.encode("utf-8")  # what a real connection does first: raises on a lone surrogate
        self.sent.append(text)
        return True

    def send_binary(self, data: bytes) -> bool:
        return True

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    def abort(self) -> None:
        pass

    def frames(self) -> list[dict[str, Any]]:
        return [json.loads(text) for text in self.sent]

    def take(self) -> list[dict[str, Any]]:
        frames = self.frames()
        self.sent.clear()
        return frames


def client_frame(opcode: int, payload: bytes) -> bytes:
    """
    One final, masked frame as a client sends it (RFC 6455 5.2).
    """
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 1 << 16:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def iosim_queued_bytes(transport: Any) -> Optional[int]:
    """
    What an iosim transport holds unsent (its peer has not pumped it): the
    in-memory stand-in for L{wsheart.directwrite.queued_bytes}.
    """
    stream = getattr(transport, "stream", None)
    return None if stream is None else sum(len(chunk) for chunk in stream)
