"""
The twistd plugin's command line (L{Options}) and composition
(L{makeService}): it parses, validates and builds; it computes nothing.
"""

from __future__ import annotations

import os
from typing import Any, Optional

from twisted.application import strports
from twisted.application.service import MultiService
from twisted.internet import endpoints
from twisted.internet.testing import MemoryReactor
from twisted.logger import Logger
from twisted.python import usage

from wsheart import __version__
from wsheart.coerce import positive_float, positive_int
from wsheart.handler import EchoHandler, HandlerLoadError, IMessageHandler, build_handler, resolve_handler
from wsheart.heartbeat import HeartbeatSettings
from wsheart.hub import Hub
from wsheart.protocol import ServerFactory

DEFAULT_ENDPOINT = "tcp:8080"

# Twisted listens with a backlog of 50, which drops SYNs when a fleet of
# clients reconnects at once; 4096 absorbs a burst of thousands (the kernel
# caps it at net.core.somaxconn).
DEFAULT_BACKLOG = 4096

# Endpoint types that take a backlog= argument.
_BACKLOG_TYPES = frozenset({"tcp", "tcp6", "ssl", "unix"})


def with_backlog(description: str, backlog: int) -> str:
    """
    Add C{backlog=} to a listening endpoint description that takes one and
    does not set it already.
    """
    kind = description.split(":", 1)[0].strip().lower()
    if kind not in _BACKLOG_TYPES or "backlog=" in description:
        return description
    return f"{description}:backlog={backlog}"


class Options(usage.Options):
    """
    C{twistd wsheart} options.
    """

    synopsis = "[options]"
    longdesc = (
        "Serve WebSocket connections with ping/pong heartbeats: a peer that "
        "misses --max-missed pongs in a row is closed with 1011 'heartbeat "
        "timeout' and dropped, at most interval * max-missed + timeout seconds "
        "after it went silent. Text messages are echoed unless --handler says "
        "otherwise."
    )

    optParameters: list[list[Any]] = [
        ["ping-interval", None, 25.0, "Seconds between heartbeat pings.", positive_float("ping-interval")],
        ["ping-timeout", None, 10.0, "Seconds a ping may wait for its pong.", positive_float("ping-timeout")],
        ["max-missed", None, 2, "Consecutive missed pongs that make a peer dead.", positive_int("max-missed")],
        ["app-ping", None, "ping", "Text message answered with --app-pong, for browsers (empty: off)."],
        ["app-pong", None, "pong", "Answer to --app-ping."],
        ["echo-prefix", None, "", "Prefix for echoed text messages, e.g. 'Echo: '."],
        ["handler", None, None, "Application message handler, 'package.module:callable'."],
        [
            "max-message-size",
            None,
            1024 * 1024,
            "Largest message in bytes; larger ones close the connection with 1009.",
            positive_int("max-message-size"),
        ],
        [
            "handshake-timeout",
            None,
            10.0,
            "Seconds a new connection may take to finish the opening handshake.",
            positive_float("handshake-timeout"),
        ],
        [
            "close-timeout",
            None,
            1.0,
            "Seconds the peer has to finish a closing handshake before TCP is dropped.",
            positive_float("close-timeout"),
        ],
        [
            "backlog",
            None,
            DEFAULT_BACKLOG,
            "Listen backlog added to tcp:, ssl: and unix: endpoints that do not set one.",
            positive_int("backlog"),
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["endpoint"] = []

    def opt_endpoint(self, description: str) -> None:
        """
        Listen on this Twisted server endpoint; repeat for several (default tcp:8080). Examples: tcp:8080:interface=127.0.0.1, ssl:443:privateKey=key.pem:certKey=cert.pem, unix:/run/wsheart.sock, systemd:domain=INET:index=0.
        """
        self["endpoint"].append(description)

    opt_e = opt_endpoint

    def opt_version(self) -> None:
        """
        Print the wsheart version and exit.
        """
        print(f"wsheart {__version__}")
        raise SystemExit(0)

    def postOptions(self) -> None:
        try:
            self["heartbeat"] = HeartbeatSettings(
                interval=self["ping-interval"],
                timeout=self["ping-timeout"],
                max_missed=self["max-missed"],
            )
        except ValueError as e:
            raise usage.UsageError(str(e))
        if self["app-ping"] and not self["app-pong"]:
            raise usage.UsageError("--app-pong must not be empty while --app-ping is set")
        if not self["endpoint"]:
            self["endpoint"] = [DEFAULT_ENDPOINT]
        self["endpoint"] = [with_backlog(d, self["backlog"]) for d in self["endpoint"]]
        for description in self["endpoint"]:
            _check_endpoint(description)
        self["handler-factory"] = None
        if self["handler"]:
            try:
                self["handler-factory"] = resolve_handler(self["handler"])
            except HandlerLoadError as e:
                raise usage.UsageError(str(e))


def _check_endpoint(description: str) -> None:
    """
    Parse an endpoint description without listening, so a typo or a
    missing certificate file is a usage error, not a traceback.
    """
    kind = description.split(":", 1)[0].strip().lower()
    if kind == "systemd" and not os.environ.get("LISTEN_FDS"):
        raise usage.UsageError(
            f"--endpoint {description!r} adopts a socket from systemd, but none was passed "
            "(LISTEN_FDS is not set): start wsheart from a .socket unit or systemd-socket-activate"
        )
    try:
        endpoints.serverFromString(MemoryReactor(), description)
    except Exception as e:
        raise usage.UsageError(f"invalid --endpoint {description!r}: {e}")


class WsheartService(MultiService):
    """
    The daemon: one listening service per endpoint, sharing one hub.

    @ivar hub: the registry of open connections.
    @ivar factory: the WebSocket server factory.
    """

    log = Logger()

    def __init__(self, hub: Hub, factory: ServerFactory, endpoints: list[str]) -> None:
        super().__init__()
        self.hub = hub
        self.factory = factory
        self.endpoints = endpoints

    def startService(self) -> None:
        settings = self.factory.heartbeat_settings
        self.log.info(
            "wsheart {version} starting on {endpoints}; heartbeat every {interval} s, "
            "timeout {timeout} s, dead after {max_missed} misses (bound {bound} s)",
            version=__version__,
            endpoints=", ".join(self.endpoints),
            interval=settings.interval,
            timeout=settings.timeout,
            max_missed=settings.max_missed,
            bound=settings.death_bound,
        )
        super().startService()


def makeService(options: Options, reactor: Optional[Any] = None) -> WsheartService:
    """
    Build the daemon from parsed options.
    """
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor  # type: ignore[assignment]
    assert reactor is not None
    hub = Hub(reactor)
    handler_factory = options["handler-factory"]
    handler: IMessageHandler = EchoHandler(options["echo-prefix"])
    if handler_factory is not None:
        try:
            handler = build_handler(handler_factory, hub)
        except HandlerLoadError as e:
            raise usage.UsageError(str(e))
    factory = ServerFactory(
        hub=hub,
        clock=reactor,
        handler=handler,
        heartbeat_settings=options["heartbeat"],
        app_ping=options["app-ping"] or None,
        app_pong=options["app-pong"],
        max_message_size=options["max-message-size"],
        handshake_timeout=options["handshake-timeout"],
        close_timeout=options["close-timeout"],
    )
    service = WsheartService(hub, factory, options["endpoint"])
    for description in options["endpoint"]:
        # strports.service raises from startService when the bind fails, so
        # twistd stops instead of running without a listener.
        listener = strports.service(description, factory, reactor=reactor)
        listener.setServiceParent(service)
    return service
