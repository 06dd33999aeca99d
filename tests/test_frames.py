"""
Unit tests of wsheart.frames: text frames built by hand are exactly what
RFC 6455 says (read back by hand and by Autobahn's own frame parser over an
in-memory connection), and send_to_all frames a message once for the
connections that take ready frames and uses send_text for the others.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial import unittest
from zope.interface import implementer

from wsheart import frames
from wsheart.frames import send_to_all, text_frame
from wsheart.hub import IConnection

from .memory import FakeConnection, connect_client, make_server_factory

# The lengths where the encoding of the payload length changes: 7 bits up
# to 125, 16 bits from 126 to 65535, 64 bits from 65536.
BOUNDARY_LENGTHS = [0, 1, 125, 126, 127, 65535, 65536]


def parse_frame(data: bytes) -> tuple[bool, int, bool, bytes, bytes]:
    """
    Read one frame by hand (RFC 6455 5.2): (fin, opcode, masked, payload,
    what follows the frame).
    """
    fin = bool(data[0] & 0x80)
    opcode = data[0] & 0x0F
    masked = bool(data[1] & 0x80)
    length = data[1] & 0x7F
    offset = 2
    if length == 126:
        length = int.from_bytes(data[2:4], "big")
        offset = 4
    elif length == 127:
        length = int.from_bytes(data[2:10], "big")
        offset = 10
    if masked:
        offset += 4
    return fin, opcode, masked, data[offset : offset + length], data[offset + length :]


def payload_of(length: int) -> bytes:
    return (b"0123456789abcdef" * (length // 16 + 1))[:length]


@implementer(IConnection)
class FrameConnection(FakeConnection):
    """
    A connection that takes ready frames (as the server protocol does) and
    records them; C{accepting=False} refuses them.
    """

    def __init__(self, connection_id: str, accepting: bool = True) -> None:
        super().__init__(connection_id)
        self.accepting = accepting
        self.written: list[bytes] = []

    def write_frame(self, frame: bytes) -> bool:
        if not self.accepting:
            return False
        self.written.append(frame)
        return True


class TextFrameTests(unittest.TestCase):
    """
    The bytes of text_frame.
    """

    def test_headers_at_the_length_boundaries(self) -> None:
        """
        The header is FIN + opcode 1, then the length in 7 bits (0 and 125),
        126 and 16 bits (126 and 65535), or 127 and 64 bits (65536); no mask.
        """
        expected_heads = {
            0: b"\x81\x00",
            125: b"\x81\x7d",
            126: b"\x81\x7e\x00\x7e",
            65535: b"\x81\x7e\xff\xff",
            65536: b"\x81\x7f\x00\x00\x00\x00\x00\x01\x00\x00",
            70000: b"\x81\x7f\x00\x00\x00\x00\x00\x01\x11\x70",
        }
        for length, head in expected_heads.items():
            payload = payload_of(length)
            frame = text_frame(payload)
            self.assertEqual(frame[: len(head)], head, length)
            self.assertEqual(frame[len(head) :], payload, length)
            self.assertEqual(len(frame), len(head) + length, length)

    def test_read_back_by_hand(self) -> None:
        """
        Every boundary length parses back to one final, unmasked text frame
        holding exactly the payload and nothing after it.
        """
        for length in BOUNDARY_LENGTHS:
            payload = payload_of(length)
            self.assertEqual(parse_frame(text_frame(payload)), (True, 1, False, payload, b""), length)

    def test_length_counts_bytes_not_characters(self) -> None:
        """
        The length is the UTF-8 byte count: 63 two-byte characters are a
        126-byte payload, which needs the 16-bit length form.
        """
        payload = ("\u00e9" * 63).encode("utf-8")
        frame = text_frame(payload)
        self.assertEqual(frame[:4], b"\x81\x7e\x00\x7e")
        self.assertEqual(parse_frame(frame)[3].decode("utf-8"), "\u00e9" * 63)


class AutobahnReadsTheFramesTests(unittest.TestCase):
    """
    The frames written to a real server protocol's transport, read by an
    Autobahn client over an in-memory connection.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.factory = make_server_factory(self.clock)

    def test_boundary_lengths_arrive_as_messages(self) -> None:
        """
        Autobahn's parser reads each boundary-length frame as one text
        message with the same text, in order, and the connection stays open.
        """
        client, server, pump = connect_client(self.factory, self.clock)
        texts = [payload_of(length).decode("ascii") for length in BOUNDARY_LENGTHS]
        texts.append("caf\u00e9 \u2603" * 30)
        for text in texts:
            self.assertTrue(server.write_frame(text_frame(text.encode("utf-8"))))
        pump.flush()
        self.assertEqual(client.messages, texts)
        self.assertEqual(client.closes, [])
        self.assertEqual(client.state, client.STATE_OPEN)

    def test_frames_mix_with_autobahns_own(self) -> None:
        """
        Ready frames and messages Autobahn frames itself share one stream
        without corrupting each other.
        """
        client, server, pump = connect_client(self.factory, self.clock)
        server.write_frame(text_frame(b"one"))
        server.send_text("two")
        server.write_frame(text_frame(b"three"))
        pump.flush()
        self.assertEqual(client.messages, ["one", "two", "three"])


class SendToAllTests(unittest.TestCase):
    """
    One message to many connections.
    """

    def test_frame_built_once_for_every_write_frame_connection(self) -> None:
        """
        Connections with write_frame all get the very same frame object
        (built once), holding the text as one text frame.
        """
        built: list[bytes] = []

        def counting_text_frame(payload: bytes) -> bytes:
            built.append(payload)
            return text_frame(payload)

        self.patch(frames, "text_frame", counting_text_frame)
        connections = [FrameConnection(f"c{i}") for i in range(3)]
        self.assertEqual(send_to_all(connections, "h\u00e9llo"), 3)
        self.assertEqual(built, ["h\u00e9llo".encode("utf-8")])
        first = connections[0].written[0]
        for connection in connections:
            self.assertEqual(len(connection.written), 1)
            self.assertIs(connection.written[0], first)
            self.assertEqual(connection.sent, [], "no per-connection framing")
        self.assertEqual(parse_frame(first), (True, 1, False, "h\u00e9llo".encode("utf-8"), b""))

    def test_connections_without_write_frame_get_send_text(self) -> None:
        """
        A connection without write_frame gets the text through send_text;
        when no connection takes frames, no frame is built at all.
        """
        built: list[bytes] = []

        def counting_text_frame(payload: bytes) -> bytes:
            built.append(payload)
            return text_frame(payload)

        self.patch(frames, "text_frame", counting_text_frame)
        plain = [FakeConnection("a"), FakeConnection("b")]
        self.assertEqual(send_to_all(plain, "hi"), 2)
        self.assertEqual([c.sent for c in plain], [["hi"], ["hi"]])
        self.assertEqual(built, [])

    def test_mixed_and_refusing_connections(self) -> None:
        """
        The count is of the connections that took the message: a refused
        write_frame or a False send_text is not counted, and does not stop
        the others.
        """

        @implementer(IConnection)
        class Refusing(FakeConnection):
            def send_text(self, text: str) -> bool:
                return False

        framed, refusing_framed = FrameConnection("f1"), FrameConnection("f2", accepting=False)
        plain, refusing_plain = FakeConnection("p1"), Refusing("p2")
        connections: list[Any] = [refusing_framed, plain, refusing_plain, framed]
        self.assertEqual(send_to_all(connections, "x"), 2)
        self.assertEqual(len(framed.written), 1)
        self.assertEqual(plain.sent, ["x"])

    def test_nobody(self) -> None:
        """
        No connections: nothing sent, 0 returned; a generator works too.
        """
        self.assertEqual(send_to_all([], "x"), 0)
        connection = FrameConnection("c1")
        self.assertEqual(send_to_all((c for c in [connection]), "x"), 1)

    def test_real_protocols_and_clients(self) -> None:
        """
        Through real server protocols, every client receives the message;
        a connection that is closing takes nothing and is not counted.
        """
        clock = Clock()
        factory = make_server_factory(clock)
        a, server_a, pump_a = connect_client(factory, clock)
        b, server_b, pump_b = connect_client(factory, clock)
        c, server_c, pump_c = connect_client(factory, clock)
        server_c.close(1001, "going away")
        self.assertEqual(send_to_all([server_a, server_b, server_c], "to all"), 2)
        for pump in (pump_a, pump_b, pump_c):
            pump.flush()
        self.assertEqual(a.messages, ["to all"])
        self.assertEqual(b.messages, ["to all"])
        self.assertEqual(c.messages, [])
