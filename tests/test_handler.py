"""
Unit tests of wsheart.handler on recording connections: the echo handler
(text, binary, prefix, an echo over the size limit), the do-nothing base
handler, and loading C{--handler module:callable} with a clear error for
each way it can go wrong.

The echo over a real connection is tested with the protocol
(tests/test_protocol.py), the option with the command line (tests/test_tap.py).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial import unittest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from wsheart import closecodes
from wsheart.handler import (
    EchoHandler,
    HandlerLoadError,
    IMessageHandler,
    MessageHandler,
    build_handler,
    resolve_handler,
)
from wsheart.hub import Hub, IConnection


@implementer(IConnection)
class Connection:
    """
    Records what a handler sends or how it closes.
    """

    def __init__(self, max_message_size: int = 1024) -> None:
        self.connection_id = "c1"
        self.peer = "test"
        self.max_message_size = max_message_size
        self.texts: list[str] = []
        self.binaries: list[bytes] = []
        self.closed: Any = None

    def send_text(self, text: str) -> bool:
        self.texts.append(text)
        return True

    def send_binary(self, data: bytes) -> bool:
        self.binaries.append(data)
        return True

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    def abort(self) -> None:
        pass


class Hooks(MessageHandler):
    """
    A handler class: what --handler tests.test_handler:Hooks loads.
    """

    def __init__(self, hub: Hub) -> None:
        self.hub = hub


class Namespace:
    """
    Holds a factory one attribute deep (--handler module:Namespace.make).
    """

    @staticmethod
    def make(hub: Hub) -> MessageHandler:
        return Hooks(hub)


NOT_CALLABLE = 42


def half_a_handler(hub: Hub) -> object:
    class Half:
        def message_received(self, connection: Any, message: Any) -> None:
            pass

    return Half()


def exploding(hub: Hub) -> MessageHandler:
    raise RuntimeError("no database")


class EchoHandlerTests(unittest.TestCase):
    """
    The default handler.
    """

    def test_text_and_binary_come_back_unchanged(self) -> None:
        """
        Text is echoed as text, binary as binary, byte for byte.
        """
        connection = Connection()
        handler = EchoHandler()
        handler.message_received(connection, "h\u00e9llo")
        handler.message_received(connection, b"\x00\xff")
        self.assertEqual((connection.texts, connection.binaries), (["h\u00e9llo"], [b"\x00\xff"]))

    def test_prefix_on_text_only(self) -> None:
        """
        With a prefix, text comes back prefixed; binary stays unchanged.
        """
        connection = Connection()
        handler = EchoHandler("Echo: ")
        handler.message_received(connection, "hi")
        handler.message_received(connection, b"hi")
        self.assertEqual((connection.texts, connection.binaries), (["Echo: hi"], [b"hi"]))

    def test_prefixed_echo_over_the_limit_closes_with_1009(self) -> None:
        """
        A message that fit the limit but whose prefixed echo does not (in
        UTF-8 bytes) closes the connection with 1009 and a reason giving
        both sizes, and sends nothing; an echo exactly at the limit is sent.
        """
        handler = EchoHandler("\u00e9")  # two bytes
        at_limit = Connection(max_message_size=10)
        handler.message_received(at_limit, "x" * 8)
        self.assertEqual((at_limit.texts, at_limit.closed), (["\u00e9" + "x" * 8], None))
        over = Connection(max_message_size=10)
        handler.message_received(over, "x" * 9)
        self.assertEqual(over.texts, [])
        self.assertEqual(over.closed[0], closecodes.MESSAGE_TOO_BIG)
        self.assertIn("11 bytes, over the 10-byte limit", over.closed[1])

    def test_no_limit(self) -> None:
        """
        A connection without a size limit (0) gets any prefixed echo.
        """
        connection = Connection(max_message_size=0)
        EchoHandler(">").message_received(connection, "y" * 5000)
        self.assertEqual(len(connection.texts[0]), 5001)

    def test_open_and_close_do_nothing(self) -> None:
        """
        The echo handler sends nothing on open or close.
        """
        connection = Connection()
        handler = EchoHandler()
        self.assertIsNone(handler.connection_opened(connection))
        self.assertIsNone(handler.connection_closed(connection, 1000, ""))
        self.assertEqual((connection.texts, connection.binaries, connection.closed), ([], [], None))


class MessageHandlerTests(unittest.TestCase):
    """
    The base class applications subclass.
    """

    def test_provides_the_interface_and_does_nothing(self) -> None:
        """
        MessageHandler and EchoHandler provide IMessageHandler; the base
        class returns None from every method and sends nothing.
        """
        self.assertTrue(verifyObject(IMessageHandler, MessageHandler()))
        self.assertTrue(verifyObject(IMessageHandler, EchoHandler()))
        connection = Connection()
        handler = MessageHandler()
        self.assertIsNone(handler.connection_opened(connection))
        self.assertIsNone(handler.message_received(connection, "x"))
        self.assertIsNone(handler.connection_closed(connection, 1006, ""))
        self.assertEqual((connection.texts, connection.binaries), ([], []))


class LoadingTests(unittest.TestCase):
    """
    --handler module:callable.
    """

    def setUp(self) -> None:
        self.hub = Hub(Clock())

    def test_resolve_and_build_a_class(self) -> None:
        """
        A class is found by name and called with the hub.
        """
        factory = resolve_handler("tests.test_handler:Hooks")
        self.assertIs(factory, Hooks)
        handler = build_handler(factory, self.hub)
        self.assertIsInstance(handler, Hooks)
        self.assertIs(handler.hub, self.hub)  # type: ignore[attr-defined]

    def test_dotted_attribute(self) -> None:
        """
        The callable may sit in an attribute path inside the module.
        """
        factory = resolve_handler("tests.test_handler:Namespace.make")
        self.assertIsInstance(build_handler(factory, self.hub), Hooks)

    def test_resolve_errors(self) -> None:
        """
        Each malformed or unresolvable spec gets a HandlerLoadError naming
        what is wrong, and nothing is called.
        """
        cases = [
            ("nocolon", "must look like 'package.module:callable'"),
            (":make", "must look like"),
            ("tests.test_handler:", "must look like"),
            ("no_such_module_xyz:make", "cannot import module 'no_such_module_xyz'"),
            ("tests.test_handler:missing", "module 'tests.test_handler' has no attribute 'missing'"),
            ("tests.test_handler:Namespace.missing", "has no attribute 'Namespace.missing'"),
            ("tests.test_handler:NOT_CALLABLE", "'tests.test_handler:NOT_CALLABLE' is not callable"),
        ]
        for spec, text in cases:
            with self.assertRaises(HandlerLoadError, msg=spec) as caught:
                resolve_handler(spec)
            self.assertIn(text, str(caught.exception), spec)

    def test_factory_that_fails(self) -> None:
        """
        A factory that raises is reported with its name and the error.
        """
        with self.assertRaises(HandlerLoadError) as caught:
            build_handler(exploding, self.hub)
        self.assertIn("calling exploding failed: no database", str(caught.exception))

    def test_factory_returning_something_else(self) -> None:
        """
        What the factory returns must have all three handler methods; the
        error lists the missing ones and says how to fix it.
        """
        with self.assertRaises(HandlerLoadError) as caught:
            build_handler(half_a_handler, self.hub)
        message = str(caught.exception)
        self.assertIn("lacks connection_opened, connection_closed", message)
        self.assertIn("subclass wsheart.handler.MessageHandler", message)

    def test_load_error_is_a_value_error(self) -> None:
        """
        HandlerLoadError is a ValueError (option parsing turns it into a
        usage error).
        """
        self.assertTrue(issubclass(HandlerLoadError, ValueError))
