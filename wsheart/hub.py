"""
The registry of open connections: who is connected, since when, how alive.

Protocols register themselves when the WebSocket opens and unregister when
they close, are dropped, or are declared dead - exactly once, whichever
happens first.  Anything that needs to reach a connection (the server
pushing a message, an admin listing) goes through here.

The hub holds no I/O of its own: connections are reached through the small
L{IConnection} interface that the protocol implements.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import Attribute, Interface


class IConnection(Interface):
    """
    One open WebSocket connection, as the hub and handlers see it.
    """

    connection_id = Attribute("Hub-assigned identifier, unique among the processes of a deployment (str).")
    peer = Attribute("Peer address as a string, e.g. 'tcp4:127.0.0.1:51234'.")
    max_message_size = Attribute("Largest message this connection sends, in bytes (int).")
    identity = Attribute(
        "Who the peer is with --auth jwt (wsheart.auth.Identity: sub, info, grants, expires_at; sub None: no token); "
        "None when the daemon does not authenticate."
    )

    def send_text(text: str) -> bool:
        """
        Send a text message; False (nothing sent) unless the connection is
        open, or when the message is larger than C{max_message_size}.
        """

    def send_binary(data: bytes) -> bool:
        """
        Send a binary message; False (nothing sent) unless the connection
        is open, or when the message is larger than C{max_message_size}.
        """

    def close(code: int, reason: str) -> None:
        """
        Start the closing handshake with C{code} and C{reason}; the TCP
        connection is dropped if the peer does not finish it in time.
        """

    def abort() -> None:
        """
        Drop the TCP connection now, without a closing handshake.
        """


@dataclass(slots=True)
class ConnectionInfo:
    """
    What the hub knows of one connection.

    C{last_seen}, RTTs and misses are read from the connection's heartbeat
    when asked (see L{Hub.snapshot}), never copied on every frame.
    """

    connection_id: str
    peer: str
    opened_at: float
    connection: IConnection
    heartbeat: object = None


@dataclass(frozen=True)
class ConnectionSnapshot:
    """
    A read-only view of one connection at one moment.
    """

    connection_id: str
    peer: str
    opened_at: float
    age: float
    last_seen: Optional[float]
    last_rtt: Optional[float]
    smoothed_rtt: Optional[float]
    misses: int


class Hub:
    """
    The registry of open connections of one wsheart process.

    @ivar opened_total: connections ever registered.
    @ivar closed_total: connections unregistered, by cause.
    """

    log = Logger()

    def __init__(self, clock: IReactorTime, node: str = "") -> None:
        """
        @param node: this process's name among the processes that share a
            port or channels (C{--node-id}); it prefixes every connection id
            so that ids are unique across them.
        """
        self._clock = clock
        self.node = node
        self._connections: dict[str, ConnectionInfo] = {}
        self._ids = itertools.count(1)
        self._removal_observers: list[Callable[[ConnectionInfo, str], object]] = []
        self.opened_total = 0
        self.closed_total: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._connections)

    def __iter__(self) -> Iterator[ConnectionInfo]:
        return iter(list(self._connections.values()))

    def new_id(self) -> str:
        """
        A fresh connection identifier.
        """
        number = next(self._ids)
        return f"{self.node}.c{number}" if self.node else f"c{number}"

    def add(
        self,
        connection_id: str,
        peer: str,
        connection: IConnection,
        heartbeat: object = None,
    ) -> ConnectionInfo:
        """
        Register an open connection.
        """
        if connection_id in self._connections:
            raise KeyError(f"connection {connection_id} is already registered")
        info = ConnectionInfo(connection_id, peer, self._clock.seconds(), connection, heartbeat)
        self._connections[connection_id] = info
        self.opened_total += 1
        return info

    def remove(self, connection_id: str, cause: str) -> bool:
        """
        Unregister a connection because of C{cause} ("closed", "dropped",
        "dead", ...).  Returns whether it was registered: only the first
        removal of a connection counts, so callers on several paths (death,
        then the TCP loss that follows) need no coordination.
        """
        info = self._connections.pop(connection_id, None)
        if info is None:
            return False
        self.closed_total[cause] = self.closed_total.get(cause, 0) + 1
        for observer in list(self._removal_observers):
            try:
                observer(info, cause)
            except Exception:
                self.log.failure("hub removal observer failed for {cid}", cid=connection_id)
        return True

    def on_removal(self, observer: Callable[[ConnectionInfo, str], object]) -> None:
        """
        Call C{observer(info, cause)} whenever a connection leaves.
        """
        self._removal_observers.append(observer)

    def get(self, connection_id: str) -> Optional[ConnectionInfo]:
        return self._connections.get(connection_id)

    def push_text(self, connection_id: str, text: str) -> bool:
        """
        Send a text message to one connection; False if it is not open.
        """
        info = self._connections.get(connection_id)
        if info is None:
            return False
        return bool(info.connection.send_text(text))

    def push_binary(self, connection_id: str, data: bytes) -> bool:
        """
        Send a binary message to one connection; False if it is not open.
        """
        info = self._connections.get(connection_id)
        if info is None:
            return False
        return bool(info.connection.send_binary(data))

    def broadcast_text(self, text: str) -> int:
        """
        Send a text message to every open connection; returns how many.
        """
        count = 0
        for info in list(self._connections.values()):
            if info.connection.send_text(text):
                count += 1
        return count

    def snapshot(self) -> list[ConnectionSnapshot]:
        """
        The registry as plain values, oldest connection first.
        """
        now = self._clock.seconds()
        result = []
        for info in self._connections.values():
            hb = info.heartbeat
            result.append(
                ConnectionSnapshot(
                    connection_id=info.connection_id,
                    peer=info.peer,
                    opened_at=info.opened_at,
                    age=now - info.opened_at,
                    last_seen=getattr(hb, "last_seen", None),
                    last_rtt=getattr(hb, "last_rtt", None),
                    smoothed_rtt=getattr(hb, "smoothed_rtt", None),
                    misses=getattr(hb, "misses", 0),
                )
            )
        return result
