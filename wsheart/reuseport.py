"""
The C{reuseport:} server endpoint: a TCP listener with C{SO_REUSEPORT}, so
that several wsheart processes listen on one port and the kernel spreads
new connections over them (Linux 3.9 and later).

Twisted's TCP ports set only C{SO_REUSEADDR}; this endpoint makes the
socket itself (C{SO_REUSEADDR} and C{SO_REUSEPORT} before C{bind}), and
hands it to the reactor with C{adoptStreamPort}, which then owns a
duplicate of the descriptor.  Being an endpoint, it works wherever an
endpoint string does::

    twistd -n wsheart --endpoint reuseport:8080:interface=0.0.0.0
    twistd -n wsheart --tls-endpoint reuseport:443 --tls-key k.pem --tls-cert c.pem

Every process sharing a port must set the option and run as the same user.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IStreamServerEndpoint, IStreamServerEndpointStringParser
from twisted.plugin import IPlugin
from zope.interface import implementer

DEFAULT_BACKLOG = 50  # Twisted's own default for TCP ports


@implementer(IStreamServerEndpoint)
class ReusePortEndpoint:
    """
    Listens on C{interface}:C{port} with C{SO_REUSEPORT}.
    """

    def __init__(self, reactor: Any, port: int, backlog: int = DEFAULT_BACKLOG, interface: str = "") -> None:
        self._reactor = reactor
        self.port = port
        self.backlog = backlog
        self.interface = interface
        self.family = _family(interface)

    def listen(self, protocolFactory: Any) -> "defer.Deferred[Any]":
        return defer.maybeDeferred(self._listen, protocolFactory)

    def _listen(self, factory: Any) -> Any:
        sock = socket.socket(self.family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if self.family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind((self.interface or ("::" if self.family == socket.AF_INET6 else ""), self.port))
            sock.listen(self.backlog)
            sock.setblocking(False)
            # The reactor duplicates the descriptor; ours is closed below.
            return self._reactor.adoptStreamPort(sock.fileno(), self.family, factory)
        except OSError as e:
            raise CannotListenError(self.interface, self.port, e) from e
        finally:
            sock.close()


def _family(interface: str) -> int:
    if not interface:
        return socket.AF_INET
    try:
        return socket.AF_INET6 if ipaddress.ip_address(interface).version == 6 else socket.AF_INET
    except ValueError:
        raise ValueError(f"reuseport: interface must be an IP address, got {interface!r}") from None


@implementer(IPlugin, IStreamServerEndpointStringParser)
class ReusePortParser:
    """
    C{reuseport:PORT[:interface=ADDRESS][:backlog=N]}.
    """

    prefix = "reuseport"

    def parseStreamServer(self, reactor: Any, *args: object, **kwargs: object) -> ReusePortEndpoint:
        if len(args) != 1:
            raise ValueError("reuseport: takes one port, e.g. reuseport:8080:interface=127.0.0.1")
        unknown = set(kwargs) - {"interface", "backlog"}
        if unknown:
            raise ValueError(f"reuseport: unknown option {', '.join(sorted(unknown))} (interface=, backlog=)")
        try:
            port = int(str(args[0]))
        except ValueError:
            raise ValueError(f"reuseport: the port is a number, got {args[0]!r}") from None
        try:
            backlog = int(str(kwargs.get("backlog", DEFAULT_BACKLOG)))
        except ValueError:
            raise ValueError(f"reuseport: backlog is a number, got {kwargs.get('backlog')!r}") from None
        if not 0 <= port <= 65535 or backlog < 1:
            raise ValueError(f"reuseport: port 0-65535 and a backlog of at least 1, got {port}, {backlog}")
        return ReusePortEndpoint(reactor, port, backlog, str(kwargs.get("interface", "")))
