"""
permessage-deflate (L{wsheart.deflate}, C{--deflate}): what the server
negotiates, that compression stays bounded in memory (no zlib state between
messages, none on idle connections, inflating capped by
C{--max-message-size}), and that a channel message is compressed once for
every subscriber - over in-memory transports on a Clock.
"""

from __future__ import annotations

import json
import tracemalloc
import zlib
from typing import Any, Optional

from autobahn.twisted.websocket import WebSocketClientFactory
from autobahn.websocket.compress import (
    PerMessageDeflateOffer,
    PerMessageDeflateResponse,
    PerMessageDeflateResponseAccept,
)
from twisted.internet.task import Clock
from twisted.test import iosim
from twisted.trial import unittest

from wsheart.channels import Broker, ChannelSettings
from wsheart.deflate import DeflateSettings, FrameKey, LeanDeflate, server_accept
from wsheart.frames import compressed_text_frame
from wsheart.frames import send_to_all
from wsheart.protocol import ServerFactory

from .memory import RecordingClientProtocol, make_server_factory

CHROME_OFFER = PerMessageDeflateOffer.parse({"client_max_window_bits": [True]})


class RecordingFrames(iosim.FakeTransport):
    """
    A fake transport that also keeps every chunk written, to look at the
    frames on the wire.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))
        super().write(data)


def connect(
    factory: ServerFactory,
    clock: Clock,
    offers: Optional[list[Any]] = None,
    protocols: Optional[list[str]] = None,
) -> tuple[RecordingClientProtocol, Any, RecordingFrames, iosim.IOPump]:
    """
    An Autobahn client offering C{offers} (permessage-deflate by default)
    against a fresh server protocol.
    """
    client_factory = WebSocketClientFactory("ws://127.0.0.1:9000/", reactor=clock, protocols=protocols)
    client_factory.protocol = RecordingClientProtocol
    client_factory.setProtocolOptions(
        openHandshakeTimeout=0,
        closeHandshakeTimeout=0,
        serverConnectionDropTimeout=0,
        perMessageCompressionOffers=offers if offers is not None else [PerMessageDeflateOffer()],
        perMessageCompressionAccept=lambda response: PerMessageDeflateResponseAccept(response)
        if isinstance(response, PerMessageDeflateResponse)
        else None,
    )
    server = factory.buildProtocol(None)
    client = client_factory.buildProtocol(None)
    server_io = RecordingFrames(server, isServer=True)
    client_io = iosim.makeFakeClient(client)
    pump = iosim.connect(server, server_io, client, client_io, clock=clock)
    return client, server, server_io, pump


def frames_sent(transport: RecordingFrames) -> list[tuple[int, int]]:
    """
    (first byte, payload length) of each data frame the server wrote after
    the handshake (each write here is one frame).
    """
    out = []
    for chunk in transport.written:
        if chunk.startswith(b"HTTP/"):
            continue
        first, second = chunk[0], chunk[1] & 0x7F
        if first & 0x0F in (1, 2):
            length = second if second < 126 else int.from_bytes(chunk[2:4] if second == 126 else chunk[2:10], "big")
            out.append((first, length))
    return out


class NegotiationTests(unittest.TestCase):
    def test_settings_are_checked(self) -> None:
        """
        Window bits outside 9-15, a memory level outside 1-9 or a negative
        minimum size are refused with what is wrong.
        """
        for bad in (dict(window_bits=8), dict(peer_window_bits=16), dict(mem_level=0), dict(min_size=-1)):
            with self.assertRaises(ValueError):
                DeflateSettings(**bad)  # type: ignore[arg-type]

    def test_a_browser_offer_is_answered_without_context_takeover_either_way(self) -> None:
        """
        Chromium's offer (permessage-deflate; client_max_window_bits) gets
        server_no_context_takeover (unasked, as RFC 7692 allows) and
        client_no_context_takeover: the server holds no zlib state between
        messages in either direction.
        """
        accept = server_accept(DeflateSettings(), 1 << 20)([CHROME_OFFER])
        self.assertEqual(
            accept.get_extension_string(), "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        )

    def test_options_shape_the_answer(self) -> None:
        """
        Context takeover allowed to clients, with their window capped; a
        client asking for a smaller server window gets it; no offer, no
        compression.
        """
        settings = DeflateSettings(peer_context_takeover=True, peer_window_bits=10)
        accept = server_accept(settings, 1 << 20)([CHROME_OFFER])
        self.assertEqual(accept.get_extension_string(), "permessage-deflate; server_no_context_takeover; client_max_window_bits=10")
        small = PerMessageDeflateOffer.parse({"server_max_window_bits": ["10"]})
        self.assertEqual(server_accept(DeflateSettings(), 1 << 20)([small]).window_bits, 10)
        self.assertIsNone(server_accept(DeflateSettings(), 1 << 20)([]))

    def test_declined_without_deflate(self) -> None:
        """
        Without --deflate an offer is declined and messages go plain.
        """
        clock = Clock()
        client, server, _, pump = connect(make_server_factory(clock), clock)
        self.assertTrue(client.opened)
        self.assertIsNone(server._perMessageCompress)
        self.assertIsNone(server.frame_key)


class CompressedEchoTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.factory = make_server_factory(self.clock, deflate=DeflateSettings(min_size=256), max_message_size=1 << 20)

    def test_echo_compressed_above_the_minimum_size_only(self) -> None:
        """
        A 20 KB JSON message is echoed compressed (RSV1, a fraction of its
        size on the wire) and arrives intact; a short one goes plain.
        """
        client, server, transport, pump = connect(self.factory, self.clock)
        document = json.dumps([{"user": f"u{i}", "text": "hello there, how are you?"} for i in range(400)])
        client.sendMessage(document.encode(), False)
        client.sendMessage(b"hi", False)
        pump.flush()
        self.assertEqual(client.messages, [document, "hi"])
        (big_first, big_length), (small_first, small_length) = frames_sent(transport)
        self.assertEqual(big_first, 0xC1, "FIN, RSV1 (compressed), text")
        self.assertLess(big_length, len(document) / 5)
        self.assertEqual((small_first, small_length), (0x81, 2), "under the minimum size: plain")

    def test_no_zlib_state_between_messages_or_on_idle_connections(self) -> None:
        """
        The negotiated object drops its compressor and decompressor after
        each message (no context takeover either way); an idle connection
        never makes one.
        """
        idle, idle_server, _, _ = connect(self.factory, self.clock)
        client, server, _, pump = connect(self.factory, self.clock)
        self.assertIsInstance(server._perMessageCompress, LeanDeflate)
        client.sendMessage(b"x" * 5000, False)
        pump.flush()
        self.assertEqual(client.messages, ["x" * 5000])
        self.assertFalse(server._perMessageCompress.holds_zlib_state())
        self.assertFalse(idle_server._perMessageCompress.holds_zlib_state())
        self.assertIsNone(idle_server._perMessageCompress._compressor)

    def test_decompression_bomb_closed_with_1009_without_holding_it(self) -> None:
        """
        A 64 KiB frame that inflates to 64 MiB, against a 1 MiB message
        limit: closed with 1009, and the server never held more than a
        few MiB while inflating it.
        """
        client, server, _, pump = connect(self.factory, self.clock)
        compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
        chunk = bytes(1 << 20)
        bomb = b"".join(compressor.compress(chunk) for _ in range(64)) + compressor.flush(zlib.Z_SYNC_FLUSH)[:-4]
        self.assertLess(len(bomb), 100_000)
        n = len(bomb)
        length = bytes((0xFE,)) + n.to_bytes(2, "big") if n < 1 << 16 else bytes((0xFF,)) + n.to_bytes(8, "big")
        frame = b"\xc2" + length + b"\x00\x00\x00\x00" + bomb  # binary, RSV1, masked with a zero key
        tracemalloc.start()
        try:
            server.dataReceived(frame)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        self.assertLess(peak, 8 * 1024 * 1024, f"peak {peak} bytes while inflating")
        pump.flush()
        self.clock.advance(2)  # the closing handshake's end: TCP is closed
        pump.flush()
        self.assertEqual([code for _, code, _ in client.closes], [1009])

    def test_the_service_client_offers_and_uses_deflate(self) -> None:
        """
        wsheart's own client factory offers permessage-deflate when asked,
        and a message it sends over the minimum size arrives compressed
        and intact.
        """
        from wsheart.heartbeat import HeartbeatSettings
        from wsheart.clientprotocol import ClientFactory

        received: list[Any] = []

        class Owner:
            def protocol_opened(self, protocol: Any) -> None:
                protocol.send_text("y" * 3000)

            def protocol_message(self, protocol: Any, message: Any) -> None:
                received.append(message)

            def __getattr__(self, name: str) -> Any:
                return lambda *a, **k: None

        factory = ClientFactory(
            Owner(), "ws://127.0.0.1:9000/", self.clock, HeartbeatSettings(10, 4, 2), deflate=DeflateSettings()
        )
        client = factory.buildProtocol(None)
        server = self.factory.buildProtocol(None)
        pump = iosim.connect(server, iosim.makeFakeServer(server), client, iosim.makeFakeClient(client), clock=self.clock)
        pump.flush()
        self.assertEqual(received, ["y" * 3000])
        self.assertIsInstance(client._perMessageCompress, LeanDeflate)
        self.assertEqual(server.trafficStats.incomingOctetsAppLevel, 3000)
        self.assertLess(server.trafficStats.incomingOctetsWebSocketLevel, 200)


class SharedFrameTests(unittest.TestCase):
    def test_a_channel_message_is_compressed_once_per_parameter_set(self) -> None:
        """
        Three deflate subscribers (two on the default window, one that
        asked for 10 bits) and one plain: the message is compressed twice,
        not three times, the plain one gets the plain frame, and every
        subscriber reads the same text.
        """
        clock = Clock()
        broker = Broker(clock, ChannelSettings())
        factory = make_server_factory(clock, deflate=DeflateSettings(min_size=100), channels=broker)
        small_window = PerMessageDeflateOffer(request_max_window_bits=10)
        peers = [
            connect(factory, clock, protocols=["wsheart.v1"]),
            connect(factory, clock, protocols=["wsheart.v1"]),
            connect(factory, clock, offers=[small_window], protocols=["wsheart.v1"]),
            connect(factory, clock, offers=[], protocols=["wsheart.v1"]),
        ]
        for client, _, _, pump in peers:
            client.sendMessage(b'{"op":"subscribe","channel":"chat.room"}', False)
            pump.flush()
        keys = [server.frame_key for _, server, _, _ in peers]
        self.assertEqual(keys[0], keys[1])
        self.assertEqual(keys[2], FrameKey(10, 8, 100, True))
        self.assertIsNone(keys[3])

        import wsheart.frames as frames_module

        built: list[int] = []
        original = frames_module.compressed_text_frame

        def counting(payload: bytes, window_bits: int, mem_level: int) -> bytes:
            built.append(window_bits)
            return original(payload, window_bits, mem_level)

        frames_module.compressed_text_frame = counting  # type: ignore[assignment]
        self.addCleanup(setattr, frames_module, "compressed_text_frame", original)
        text = "a long enough chat line " * 20
        broker.publish("chat.room", text)
        for _, _, _, pump in peers:
            pump.flush()
        self.assertEqual(sorted(built), [10, 15])
        for client, _, transport, _ in peers:
            data = [json.loads(m) for m in client.messages if '"op":"message"' in m]
            self.assertEqual([d["data"] for d in data], [text])
        self.assertEqual(frames_sent(peers[3][2])[-1][0], 0x81, "the plain subscriber: a plain frame")
        self.assertEqual(frames_sent(peers[0][2])[-1][0], 0xC1, "a deflate subscriber: compressed")

    def test_the_shared_frame_is_what_a_connection_would_send(self) -> None:
        """
        Without context takeover, the frame compressed once is byte for
        byte what the connection's own compressor produces.
        """
        clock = Clock()
        factory = make_server_factory(clock, deflate=DeflateSettings(min_size=0))
        client, server, transport, pump = connect(factory, clock)
        payload = ("same bytes for everyone " * 30).encode()
        server.sendMessage(payload, False)
        self.assertEqual(transport.written[-1], compressed_text_frame(payload, 15, 8))

    def test_context_takeover_compresses_per_connection(self) -> None:
        """
        With --deflate-server-context-takeover the connection compresses
        for itself (send_text); the message still arrives intact, twice.
        """
        clock = Clock()
        factory = make_server_factory(clock, deflate=DeflateSettings(min_size=0, context_takeover=True))
        client, server, transport, pump = connect(factory, clock)
        self.assertFalse(server.frame_key.shared)
        text = "context " * 50
        self.assertEqual(send_to_all([server], text), 1)
        self.assertEqual(send_to_all([server], text), 1)
        pump.flush()
        self.assertEqual(client.messages, [text, text])
        first, second = frames_sent(transport)[-2:]
        self.assertLess(second[1], first[1], "the second one refers back to the first")


class LimitTests(unittest.TestCase):
    def test_incompressible_message_at_the_limit_goes_plain(self) -> None:
        """
        A random binary message just under --max-message-size would grow
        past it compressed (Autobahn would raise; a peer would refuse it,
        as Autobahn counts a compressed frame against the limit too): it is
        echoed plain, and the connection stays open.
        """
        import os as _os

        clock = Clock()
        factory = make_server_factory(clock, deflate=DeflateSettings(), max_message_size=100_000)
        client, server, transport, pump = connect(factory, clock)
        noise = _os.urandom(99_990)
        client.sendMessage(noise, True, doNotCompress=True)
        pump.flush()
        self.assertEqual(client.messages, [noise])
        self.assertEqual(client.closes, [])
        self.assertEqual(frames_sent(transport)[-1][0], 0x82, "sent plain: compressed it could pass the limit")
