"""
In-memory plumbing for tests: a wsheart server factory and a plain
Autobahn client connected through twisted.test.iosim, on one Clock.
"""

from __future__ import annotations

import random
from typing import Any, Optional

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet.task import Clock
from twisted.test import iosim

from wsheart.handler import IMessageHandler
from wsheart.heartbeat import HeartbeatSettings
from wsheart.hub import Hub
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
    return ServerFactory(hub=Hub(clock), clock=clock, handler=handler, heartbeat_settings=heartbeat, **kwargs)


def connect_client(
    server_factory: ServerFactory,
    clock: Clock,
    greet: bool = True,
) -> tuple[RecordingClientProtocol, Any, iosim.IOPump]:
    """
    Connect a recording client to a fresh server protocol; with C{greet},
    pump until the opening handshake is done.
    """
    client_factory = WebSocketClientFactory("ws://127.0.0.1:9000/", reactor=clock)
    client_factory.protocol = RecordingClientProtocol
    client_factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0, serverConnectionDropTimeout=0)
    server = server_factory.buildProtocol(None)
    client = client_factory.buildProtocol(None)
    server_io = iosim.makeFakeServer(server)
    client_io = iosim.makeFakeClient(client)
    pump = iosim.connect(server, server_io, client, client_io, greet=greet, clock=clock)
    return client, server, pump
