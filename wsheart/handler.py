"""
What the daemon does with application messages: the handler interface, the
default echo handler, and loading an application's own handler from
C{--handler module:callable}.

Heartbeats, text ping/pong, size limits and UTF-8 checks happen before a
message reaches a handler; a handler sees only application data.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Union

from zope.interface import Interface, implementer

from wsheart import closecodes
from wsheart.hub import Hub, IConnection

Message = Union[str, bytes]


class IMessageHandler(Interface):
    """
    An application's logic inside wsheart.

    Every method may return L{None} or a L{twisted.internet.defer.Deferred}.
    An exception (raised, or as a failed Deferred) is logged and closes
    that connection alone with code 1011; the daemon and every other
    connection carry on.
    """

    def connection_opened(connection: IConnection) -> Any:
        """
        A WebSocket connection completed its opening handshake.
        """

    def message_received(connection: IConnection, message: Message) -> Any:
        """
        A message arrived: L{str} for a text message, L{bytes} for binary.
        """

    def connection_closed(connection: IConnection, code: int, reason: str) -> Any:
        """
        The connection is gone: closed cleanly, dropped, or declared dead by
        the heartbeat (code 1011, reason "heartbeat timeout").
        """


@implementer(IMessageHandler)
class MessageHandler:
    """
    A handler that does nothing; subclass it and override what you need.
    """

    def connection_opened(self, connection: IConnection) -> Any:
        return None

    def message_received(self, connection: IConnection, message: Message) -> Any:
        return None

    def connection_closed(self, connection: IConnection, code: int, reason: str) -> Any:
        return None


class EchoHandler(MessageHandler):
    """
    Send every message back: text as text, binary as binary, payload
    unchanged.  With a C{prefix}, text messages come back as
    C{prefix + message} (binary messages stay unchanged).
    """

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix

    def message_received(self, connection: IConnection, message: Message) -> None:
        if isinstance(message, bytes):
            connection.send_binary(message)
        elif not self.prefix:
            connection.send_text(message)
        else:
            echo = self.prefix + message
            limit = getattr(connection, "max_message_size", 0)
            size = len(echo.encode("utf-8"))
            if 0 < limit < size:
                # The message fit the limit, its echo does not: the same
                # answer as for a message too big to take (1009).
                connection.close(
                    closecodes.MESSAGE_TOO_BIG,
                    f"message too big: its echo would be {size} bytes, over the {limit}-byte limit",
                )
                return
            connection.send_text(echo)


class HandlerLoadError(ValueError):
    """
    C{--handler} named something that cannot be loaded or is not a handler.
    """


def resolve_handler(spec: str) -> Callable[[Hub], Any]:
    """
    Import C{module:callable} and return the callable, without calling it.
    """
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise HandlerLoadError(f"--handler must look like 'package.module:callable', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:
        raise HandlerLoadError(f"--handler: cannot import module {module_name!r}: {e}") from e
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise HandlerLoadError(
                f"--handler: module {module_name!r} has no attribute {attribute!r}"
            ) from None
    if not callable(target):
        raise HandlerLoadError(f"--handler: {spec!r} is not callable")
    return target


def build_handler(factory: Callable[[Hub], Any], hub: Hub) -> IMessageHandler:
    """
    Call a handler factory with the hub and check that what it returns has
    the L{IMessageHandler} methods.  A class works as the factory.
    """
    name = getattr(factory, "__qualname__", repr(factory))
    try:
        handler = factory(hub)
    except Exception as e:
        raise HandlerLoadError(f"--handler: calling {name} failed: {e}") from e
    missing = [
        method
        for method in ("connection_opened", "message_received", "connection_closed")
        if not callable(getattr(handler, method, None))
    ]
    if missing:
        raise HandlerLoadError(
            f"--handler: {name} returned {handler!r}, which lacks {', '.join(missing)} "
            "(subclass wsheart.handler.MessageHandler)"
        )
    return handler
