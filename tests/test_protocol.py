"""
Tests for wsheart.protocol's server side over in-memory connections: echo,
text ping/pong, the handler interface, bad input, and the hub's view.
"""

from __future__ import annotations

import random
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.test import iosim
from twisted.trial import unittest

from wsheart import closecodes
from wsheart.handler import EchoHandler, MessageHandler
from wsheart.protocol import MAX_HANDSHAKE_BYTES

from .memory import client_frame, connect_client, iosim_queued_bytes, make_server_factory


class EchoTests(unittest.TestCase):
    """
    The default handler and the text ping/pong.
    """

    def setUp(self) -> None:
        self.clock = Clock()

    def test_text_and_binary_echo(self) -> None:
        """
        Text comes back as text, binary as binary, unchanged.
        """
        factory = make_server_factory(self.clock)
        client, server, pump = connect_client(factory, self.clock)
        self.assertTrue(client.opened)
        client.sendMessage("héllo".encode("utf-8"), False)
        client.sendMessage(b"\x00\xff\x10", True)
        pump.flush()
        self.assertEqual(client.messages, ["héllo", b"\x00\xff\x10"])

    def test_echo_prefix(self) -> None:
        """
        --echo-prefix gives the "Echo: " form for text; binary is unchanged.
        """
        factory = make_server_factory(self.clock, handler=EchoHandler("Echo: "))
        client, server, pump = connect_client(factory, self.clock)
        client.sendMessage(b"hi", False)
        client.sendMessage(b"\x01", True)
        pump.flush()
        self.assertEqual(client.messages, ["Echo: hi", b"\x01"])

    def test_app_ping(self) -> None:
        """
        The text "ping" is answered with "pong", counts as life, and never
        reaches the handler.
        """
        seen: list[Any] = []

        class Recording(MessageHandler):
            def message_received(self, connection: Any, message: Any) -> None:
                seen.append(message)

        factory = make_server_factory(self.clock, handler=Recording())
        client, server, pump = connect_client(factory, self.clock)
        self.clock.advance(3)
        client.sendMessage(b"ping", False)
        pump.flush()
        self.assertEqual(client.messages, ["pong"])
        self.assertEqual(seen, [])
        self.assertEqual(server.heartbeat.last_seen, 3)

    def test_app_ping_configurable_and_off(self) -> None:
        """
        Other words can be configured; with app_ping=None "ping" is an
        ordinary message.
        """
        factory = make_server_factory(self.clock, app_ping="hb?", app_pong="hb!")
        client, server, pump = connect_client(factory, self.clock)
        client.sendMessage(b"hb?", False)
        pump.flush()
        self.assertEqual(client.messages, ["hb!"])

        factory = make_server_factory(self.clock, app_ping=None)
        client, server, pump = connect_client(factory, self.clock)
        client.sendMessage(b"ping", False)
        pump.flush()
        self.assertEqual(client.messages, ["ping"])

    def test_binary_ping_is_not_app_ping(self) -> None:
        """
        Only a text message matches the app ping.
        """
        factory = make_server_factory(self.clock)
        client, server, pump = connect_client(factory, self.clock)
        client.sendMessage(b"ping", True)
        pump.flush()
        self.assertEqual(client.messages, [b"ping"])


class HubRegistrationTests(unittest.TestCase):
    """
    Server protocols in the hub: registered on open, removed exactly once,
    reachable through it (the hub's own behaviour: tests/test_hub.py).
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.factory = make_server_factory(self.clock)
        self.hub = self.factory.hub

    def test_registered_while_open(self) -> None:
        """
        An open connection is in the hub with its peer and opening time; a
        clean close removes it once, as "closed".
        """
        self.clock.advance(5)
        client, server, pump = connect_client(self.factory, self.clock)
        (snapshot,) = self.hub.snapshot()
        self.assertEqual(snapshot.connection_id, server.connection_id)
        self.assertEqual(snapshot.opened_at, 5)
        self.assertEqual(snapshot.peer, server.peer)
        client.sendClose(1000, "bye")
        pump.flush()
        self.assertEqual(len(self.hub), 0)
        self.assertEqual(self.hub.closed_total, {"closed": 1})

    def test_dropped(self) -> None:
        """
        A TCP connection lost without a closing handshake is removed as
        "dropped".
        """
        client, server, pump = connect_client(self.factory, self.clock)
        client.transport.abortConnection()
        pump.flush()
        self.assertEqual(self.hub.closed_total, {"dropped": 1})

    def test_push(self) -> None:
        """
        The server can push to any open connection through the hub.
        """
        a, server_a, pump_a = connect_client(self.factory, self.clock)
        b, server_b, pump_b = connect_client(self.factory, self.clock)
        self.assertTrue(self.hub.push_text(server_b.connection_id, "only b"))
        self.assertTrue(self.hub.push_binary(server_a.connection_id, b"only a"))
        self.assertEqual(self.hub.broadcast_text("all"), 2)
        self.assertFalse(self.hub.push_text("nope", "x"))
        pump_a.flush()
        pump_b.flush()
        self.assertEqual(a.messages, [b"only a", "all"])
        self.assertEqual(b.messages, ["only b", "all"])

    def test_unfinished_handshake_never_registered(self) -> None:
        """
        A connection that never completes the opening handshake is not in
        the hub and is dropped after the handshake timeout.
        """
        server = self.factory.buildProtocol(None)
        transport = iosim.makeFakeServer(server)
        server.makeConnection(transport)
        server.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n")
        self.clock.advance(9.9)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.2)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(len(self.hub), 0)
        self.assertEqual(self.hub.opened_total, 0)


class BadInputTests(unittest.TestCase):
    """
    Bad input gets a clear answer and harms no other connection.
    """

    def setUp(self) -> None:
        self.clock = Clock()

    def raw_server(self, factory: Any) -> tuple[Any, Any]:
        server = factory.buildProtocol(None)
        transport = iosim.makeFakeServer(server)
        server.makeConnection(transport)
        return server, transport

    def test_plain_http_request(self) -> None:
        """
        A plain HTTP GET gets a short, complete 426 answer and the
        connection is closed, not left hanging.
        """
        factory = make_server_factory(self.clock)
        server, transport = self.raw_server(factory)
        server.dataReceived(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        answer = transport.getOutBuffer()
        self.assertTrue(answer.startswith(b"HTTP/1.1 426 Upgrade Required\r\n"), answer)
        head, _, body = answer.partition(b"\r\n\r\n")
        self.assertIn(b"Content-Length: %d" % len(body), head)
        self.assertIn(b"Upgrade", body)
        self.assertTrue(transport.disconnecting)

    def test_oversized_handshake(self) -> None:
        """
        An opening handshake larger than the limit gets 431 and is closed.
        """
        factory = make_server_factory(self.clock)
        server, transport = self.raw_server(factory)
        server.dataReceived(b"GET / HTTP/1.1\r\n" + b"X-Junk: " + b"a" * MAX_HANDSHAKE_BYTES)
        self.assertTrue(transport.getOutBuffer().startswith(b"HTTP/1.1 431 "))
        self.assertTrue(transport.disconnecting)

    def test_oversized_message(self) -> None:
        """
        A message over max_message_size closes that connection with 1009;
        another connection carries on.
        """
        factory = make_server_factory(self.clock, max_message_size=1000)
        big, server_big, pump_big = connect_client(factory, self.clock)
        ok, server_ok, pump_ok = connect_client(factory, self.clock)
        big.sendMessage(b"x" * 1001, False)
        pump_big.flush()
        self.assertEqual(big.closes[0][1], closecodes.MESSAGE_TOO_BIG)
        ok.sendMessage(b"x" * 1000, False)
        pump_ok.flush()
        self.assertEqual(ok.messages, ["x" * 1000])
        self.assertEqual(len(factory.hub), 1)

    def test_invalid_utf8(self) -> None:
        """
        A text message that is not UTF-8 closes with 1007.
        """
        factory = make_server_factory(self.clock)
        client, server, pump = connect_client(factory, self.clock)
        client.sendMessage(b"\xff\xfe", False)
        pump.flush()
        self.assertEqual(client.closes[0][1], closecodes.INVALID_PAYLOAD)

    def test_handler_exception_closes_only_that_connection(self) -> None:
        """
        An exception in the handler is logged and closes that connection
        with 1011; other connections carry on.
        """

        class Fragile(EchoHandler):
            def message_received(self, connection: Any, message: Any) -> None:
                if message == "boom":
                    raise RuntimeError("application bug")
                super().message_received(connection, message)

        factory = make_server_factory(self.clock, handler=Fragile())
        bad, server_bad, pump_bad = connect_client(factory, self.clock)
        good, server_good, pump_good = connect_client(factory, self.clock)
        bad.sendMessage(b"boom", False)
        pump_bad.flush()
        self.assertEqual(bad.closes[0][1], closecodes.INTERNAL_ERROR)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        good.sendMessage(b"still here", False)
        pump_good.flush()
        self.assertEqual(good.messages, ["still here"])

    def test_handler_failed_deferred(self) -> None:
        """
        A handler's failed Deferred is treated like an exception.
        """

        class Async(MessageHandler):
            def message_received(self, connection: Any, message: Any) -> Any:
                return defer.fail(ValueError("async bug"))

        factory = make_server_factory(self.clock, handler=Async())
        client, server, pump = connect_client(factory, self.clock)
        client.sendMessage(b"x", False)
        pump.flush()
        self.assertEqual(client.closes[0][1], closecodes.INTERNAL_ERROR)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_close_handshake_bounded(self) -> None:
        """
        A peer that never answers a server-initiated close is dropped after
        close_timeout.
        """
        factory = make_server_factory(self.clock, close_timeout=1.0)
        client, server, pump = connect_client(factory, self.clock)
        server.close(closecodes.GOING_AWAY, "bye")
        self.clock.advance(0.9)
        self.assertFalse(pump.serverIO.disconnecting)
        self.clock.advance(0.2)
        self.assertTrue(pump.serverIO.disconnecting)
        pump.flush()
        self.assertEqual(len(factory.hub), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class CloseTimeoutTests(unittest.TestCase):
    """
    Every closing handshake ends in bounded time, whoever started it.
    """

    def test_peer_initiated_close_with_lingering_socket(self) -> None:
        """
        After answering a peer's close, the server asks for a graceful TCP
        close; if the socket lingers (output queued for a peer that stopped
        reading), it is aborted close_timeout later.
        """
        clock = Clock()
        factory = make_server_factory(clock, close_timeout=1.0)
        client, server, pump = connect_client(factory, clock)
        client.sendClose(1000, "bye")
        pump.pump()  # the server reads the close, answers, asks TCP to close
        aborted: list[float] = []
        server.transport.abortConnection = lambda: aborted.append(clock.seconds())
        clock.advance(0.9)
        self.assertEqual(aborted, [])
        clock.advance(0.2)
        self.assertEqual(len(aborted), 1)

    def test_handler_hears_the_heartbeat_verdict(self) -> None:
        """
        When the heartbeat declares a peer dead, the handler's
        connection_closed gets 1011 "heartbeat timeout", even though the
        frozen peer's TCP connection ended with an abort.
        """
        closed: list[tuple[int, str]] = []

        class Recording(MessageHandler):
            def connection_closed(self, connection: Any, code: int, reason: str) -> None:
                closed.append((code, reason))

        clock = Clock()
        factory = make_server_factory(clock, handler=Recording(), close_timeout=1.0)
        client, server, pump = connect_client(factory, clock)
        clock.pump([0.5] * 100)  # frozen: nothing is pumped any more
        pump.flush()
        self.assertEqual(closed, [(closecodes.INTERNAL_ERROR, "heartbeat timeout")])

    def test_push_to_a_closing_connection(self) -> None:
        """
        The hub says False when asked to push to a connection that is
        already closing: nothing would reach the peer.
        """
        clock = Clock()
        factory = make_server_factory(clock)
        client, server, pump = connect_client(factory, clock)
        server.close(closecodes.GOING_AWAY, "bye")
        self.assertFalse(factory.hub.push_text(server.connection_id, "too late"))


class HardeningTests(unittest.TestCase):
    """
    Defects found by attacking the daemon, each pinned by a test that
    failed before its fix (in-memory transports, a Clock).
    """

    def setUp(self) -> None:
        self.clock = Clock()

    def non_reading_peer(self, **kwargs: Any) -> tuple[Any, Any]:
        """
        An open connection whose client never reads again: what the server
        writes stays queued in the in-memory transport, counted the way
        the real daemon counts a TCP socket's unsent bytes.
        """
        kwargs.setdefault("queued_bytes", iosim_queued_bytes)
        factory = make_server_factory(self.clock, **kwargs)
        client, server, pump = connect_client(factory, self.clock)
        self.assertTrue(client.opened)
        self.pump = pump
        return factory, server

    def test_pings_count_against_the_send_buffer(self) -> None:
        """
        Defect 2: a peer that sends ping frames and never reads is closed
        as a slow reader (1013) once its queued pongs pass
        --max-send-buffer, exactly like one that is sent messages (what
        waits, with the allowance of one largest message, is judged).
        """
        factory, server = self.non_reading_peer(max_send_buffer=2000, max_message_size=1000)
        for _ in range(100):
            server.dataReceived(client_frame(0x9, b"p" * 125))
        self.assertTrue(server._too_slow)
        self.assertEqual(server.state, server.STATE_CLOSING)
        queued = iosim_queued_bytes(server.transport)
        self.assertLessEqual(queued, 2000 + 1000 + 30, "no pong queued past the limit (the close frame is allowed)")
        self.clock.advance(1.0)  # close timeout: the socket is cut
        self.assertTrue(server.transport.disconnected or server.transport.disconnecting)

    def test_text_pings_count_against_the_send_buffer(self) -> None:
        """
        Defect 2: the same for the text "ping" that browsers send.
        """
        factory, server = self.non_reading_peer(max_send_buffer=500, max_message_size=100)
        for _ in range(200):
            server.dataReceived(client_frame(0x1, b"ping"))
        self.assertTrue(server._too_slow)
        # At most one pong past the limit check, then the close frame.
        self.assertLessEqual(iosim_queued_bytes(server.transport), 500 + 100 + 30)

    def test_slow_reader_of_messages_is_closed_at_the_limit(self) -> None:
        """
        The slow-reader bound itself: a peer whose echoes pile up unread is
        closed with 1013 once --max-send-buffer plus one largest message
        would be passed.
        """
        factory, server = self.non_reading_peer(max_send_buffer=10000, max_message_size=2000)
        for _ in range(30):
            server.dataReceived(client_frame(0x1, b"m" * 1000))
        self.assertTrue(server._too_slow)
        self.assertLessEqual(iosim_queued_bytes(server.transport), 10000 + 2000 + 30)
        self.clock.advance(1.0)  # the close timeout cuts the socket
        self.pump.flush()
        self.assertEqual(factory.metrics.connections_closed.labels(cause="slow", code="1013")._value.get(), 1)

    def test_one_message_larger_than_the_send_buffer_is_not_slowness(self) -> None:
        """
        A legal message larger than --max-send-buffer is echoed in full to a
        peer that has not read it yet, and a pong queued behind it too: one
        message never counts as slowness.  A second such message, with the
        first still unread, does.
        """
        factory, server = self.non_reading_peer(max_send_buffer=1000, max_message_size=5000)
        server.dataReceived(client_frame(0x1, b"m" * 4000))
        server.dataReceived(client_frame(0x9, b"p"))
        self.assertFalse(server._too_slow)
        self.assertGreater(iosim_queued_bytes(server.transport), 4000)
        server.dataReceived(client_frame(0x1, b"m" * 4000))
        self.assertTrue(server._too_slow)

    def test_echo_over_the_limit_is_1009_not_1011(self) -> None:
        """
        Defect 3b: with --echo-prefix, a message that fits the limit but
        whose echo does not closes with 1009 (message too big), like a
        message too big to take - not 1011.
        """
        factory = make_server_factory(self.clock, handler=EchoHandler("Echo: "), max_message_size=1000)
        client, server, pump = connect_client(factory, self.clock)
        client.sendMessage(b"x" * 994, False)  # its echo: exactly 1000 bytes
        pump.flush()
        self.assertEqual(client.messages, ["Echo: " + "x" * 994])
        client.sendMessage(b"x" * 995, False)
        pump.flush()
        self.assertEqual(client.closes[0][1], closecodes.MESSAGE_TOO_BIG)
        self.assertEqual(self.flushLoggedErrors(), [], "no handler failure")

    def test_handler_sending_too_much_gets_false(self) -> None:
        """
        Defect 3: a handler that sends more than --max-message-size gets
        False from send_text/send_binary (nothing sent, documented), not
        an exception that closes the connection with 1011.
        """
        results: list[bool] = []

        class Greedy(MessageHandler):
            def message_received(self, connection: Any, message: Any) -> None:
                results.append(connection.send_text("y" * 2000))
                results.append(connection.send_binary(b"y" * 2000))
                results.append(connection.send_text("fits"))

        factory = make_server_factory(self.clock, handler=Greedy(), max_message_size=1000)
        client, server, pump = connect_client(factory, self.clock)
        client.sendMessage(b"go", False)
        pump.flush()
        self.assertEqual(results, [False, False, True])
        self.assertEqual(client.messages, ["fits"])
        self.assertEqual(client.closes, [])

    def test_handshake_limit_is_16_kib(self) -> None:
        """
        The opening handshake limit is 16 KiB: one byte more gets 431, a
        request just under it is served.
        """
        factory = make_server_factory(self.clock)
        server, transport = BadInputTests.raw_server(self, factory)  # type: ignore[arg-type]
        server.dataReceived(b"GET / HTTP/1.1\r\nX-Junk: " + b"a" * (16 * 1024))
        self.assertTrue(transport.getOutBuffer().startswith(b"HTTP/1.1 431 "))
        server, transport = BadInputTests.raw_server(self, factory)  # type: ignore[arg-type]
        head = b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Junk: " + b"a" * (15 * 1024) + b"\r\n\r\n"
        server.dataReceived(head)
        self.assertTrue(transport.getOutBuffer().startswith(b"HTTP/1.1 426 "), "served, not refused as too large")

    def test_oversize_message_in_fragments_is_1009(self) -> None:
        """
        A message over the limit sent as fragments that each fit closes
        with 1009 all the same.
        """
        factory = make_server_factory(self.clock, max_message_size=1000)
        client, server, pump = connect_client(factory, self.clock)
        client.sendMessage(b"x" * 1200, False, fragmentSize=300)
        pump.flush()
        self.assertEqual(client.closes[0][1], closecodes.MESSAGE_TOO_BIG)
        self.assertEqual(client.messages, [])

    def test_close_codes_in_metrics_are_bounded(self) -> None:
        """
        Defect 11: peer-chosen close codes do not become label values -
        200 peers closing with 3000-3199 add one series, not 200.
        """
        factory = make_server_factory(self.clock)
        for code in range(3000, 3200):
            client, server, pump = connect_client(factory, self.clock)
            client.sendClose(code=code)
            pump.flush()
        client, server, pump = connect_client(factory, self.clock)
        client.sendClose(code=4999)
        pump.flush()
        text = factory.metrics.exposition().decode()
        series = [line for line in text.splitlines() if line.startswith("wsheart_connections_closed_total{")]
        self.assertEqual(len(series), 2, series)
        self.assertIn('code="3xxx"', " ".join(series))
        self.assertIn('code="4xxx"', " ".join(series))
        self.assertIn('cause="closed",code="3xxx"} 200.0', text)

    def test_text_ping_not_answered_on_wsheart_v1(self) -> None:
        """
        A wsheart.v1 connection's text "ping" is a malformed frame (400),
        not the plain-protocol pong: on v1 the heartbeat is {"op":"ping"}.
        """
        from wsheart.channels.broker import Broker

        factory = make_server_factory(self.clock, channels=Broker(self.clock))
        client, server, pump = connect_client(factory, self.clock, protocols=["wsheart.v1"])
        client.sendMessage(b"ping", False)
        pump.flush()
        self.assertNotIn("pong", client.messages)
        self.assertIn('"code":400', client.messages[0])


class ClientHandshakeTests(unittest.TestCase):
    """
    The client side of the opening handshake, on an in-memory transport.
    """

    def test_refusal_with_latin1_header_keeps_its_retry_after(self) -> None:
        """
        Defect 12: a refusal whose head holds a byte above 0x7F that is not
        UTF-8 (a Latin-1 reason phrase) used to crash Autobahn's client in a
        debug line, losing the status and Retry-After; now both are read.
        """
        from wsheart.heartbeat import HeartbeatSettings
        from wsheart.clientprotocol import ClientFactory

        clock = Clock()
        owner = object()
        factory = ClientFactory(owner, "ws://127.0.0.1:9/", clock, HeartbeatSettings())
        protocol = factory.buildProtocol(None)
        transport = iosim.makeFakeClient(protocol)
        protocol.makeConnection(transport)
        protocol.dataReceived(
            b"HTTP/1.1 503 Service Indisponible \xe9t\xe9\r\nRetry-After: 7\r\nX-Note: caf\xe9\r\nContent-Length: 0\r\n\r\n"
        )
        self.assertEqual((protocol.handshake_status, protocol.retry_after_header), (503, "7"))
        self.assertTrue(transport.disconnecting, "the refused handshake is failed and closed")
        self.assertEqual(self.flushLoggedErrors(), [])


class ChannelMetricsTests(unittest.TestCase):
    def test_history_bytes_gauge(self) -> None:
        """
        /metrics shows what channel history holds, and the figure falls
        when housekeeping expires it.
        """
        from wsheart.channels.broker import Broker, ChannelSettings

        clock = Clock()
        broker = Broker(clock, ChannelSettings(history_age=10))
        factory = make_server_factory(clock, channels=broker)
        broker.publish("news", "x" * 1000)
        self.assertGreater(broker.history_bytes, 1000)
        self.assertIn(f"wsheart_channel_history_bytes {float(broker.history_bytes)}\n", factory.metrics.exposition().decode())
        clock.advance(11)
        broker.expire()
        self.assertIn("wsheart_channel_history_bytes 0.0\n", factory.metrics.exposition().decode())

    def test_publish_and_delivery_counters(self) -> None:
        """
        /metrics counts publishes and deliveries (one per subscriber per
        message) and says the memory engine is up.
        """
        from wsheart.channels.broker import Broker, ChannelSettings

        from .memory import FakeConnection

        clock = Clock()
        broker = Broker(clock, ChannelSettings())
        factory = make_server_factory(clock, channels=broker)
        for cid in ("a", "b", "c"):
            broker.subscribe(cid, FakeConnection(cid), "news")
        broker.publish("news", "one")
        broker.publish("news", "two")
        text = factory.metrics.exposition().decode()
        for line in [
            "wsheart_channel_publishes_total 2.0",
            "wsheart_channel_deliveries_total 6.0",
            "wsheart_channel_gaps_told_total 0.0",
            "wsheart_channel_engine_up 1.0",
        ]:
            self.assertIn(line + "\n", text)
        self.assertNotIn("wsheart_channel_engine_command_seconds", text, "no engine commands without Redis")


class ProtocolEdgeTests(unittest.TestCase):
    """
    Behaviours of the server protocol that a mutation run found
    unprotected.
    """

    def setUp(self) -> None:
        self.clock = Clock()

    def test_server_protocol_is_an_iconnection(self) -> None:
        """
        What handlers and the hub are given provides IConnection.
        """
        from zope.interface.verify import verifyObject

        from wsheart.hub import IConnection

        client, server, pump = connect_client(make_server_factory(self.clock), self.clock)
        self.assertTrue(verifyObject(IConnection, server))

    def test_handshake_timeout_is_counted_and_the_timer_gone_after_open(self) -> None:
        """
        A handshake that never completes is counted as reason="timeout";
        an open connection keeps no handshake timer.
        """
        factory = make_server_factory(self.clock, handshake_timeout=5)
        server = factory.buildProtocol(None)
        server.makeConnection(iosim.makeFakeServer(server))
        self.clock.advance(5.1)
        self.assertEqual(factory.metrics.handshake_failures.labels(reason="timeout")._value.get(), 1)
        client, opened, pump = connect_client(factory, self.clock)
        self.assertIsNone(opened._handshake_timer)

    def test_426_says_upgrade(self) -> None:
        """
        The answer to plain HTTP names the protocol to upgrade to.
        """
        factory = make_server_factory(self.clock)
        server = factory.buildProtocol(None)
        transport = iosim.makeFakeServer(server)
        server.makeConnection(transport)
        server.dataReceived(b"GET /x HTTP/1.1\r\nHost: localhost\r\n\r\n")
        head = transport.getOutBuffer().split(b"\r\n\r\n")[0]
        self.assertIn(b"\r\nUpgrade: websocket", head)

    def test_dropped_connection_reports_1006_to_the_handler(self) -> None:
        """
        A connection lost without a closing handshake reaches the handler
        as 1006.
        """
        closes: list[Any] = []

        class Recording(MessageHandler):
            def connection_closed(self, connection: Any, code: int, reason: str) -> None:
                closes.append(code)

        client, server, pump = connect_client(make_server_factory(self.clock, handler=Recording()), self.clock)
        client.transport.abortConnection()
        pump.flush()
        self.assertEqual(closes, [closecodes.ABNORMAL])

    def test_pong_split_over_two_reads_is_still_a_pong(self) -> None:
        """
        A pong frame that arrives in two reads (the fast path only takes
        whole ones) still answers the ping.
        """
        factory = make_server_factory(self.clock)
        client, server, pump = connect_client(factory, self.clock)
        client.frozen = True
        self.clock.advance(10)  # the first ping goes out within the interval
        pump.flush()
        [ping] = client.pings
        frame = client_frame(0xA, ping)
        server.dataReceived(frame[:5])
        server.dataReceived(frame[5:])
        self.assertIsNotNone(server.heartbeat.last_rtt)
        self.assertEqual(server.heartbeat.misses, 0)


class PeerMidFrameTests(unittest.TestCase):
    """
    The server's heartbeat and a client part-way through sending a frame:
    Autobahn|Testsuite's cases 6.4.3 and 6.4.4 send one text frame in
    chops with a second's pause between them, and their Autobahn answers a
    ping at once, writing the pong inside that frame.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        # The first ping falls within the first interval (10 s).
        self.factory = make_server_factory(self.clock)
        self.client, self.server, self.pump = connect_client(self.factory, self.clock)

    def start_chopped_frame(self, payload: bytes, first: int) -> None:
        self.client.beginMessage()
        self.client.beginMessageFrame(len(payload))
        self.client.sendMessageFrameData(payload[:first])
        self.pump.flush()

    def test_no_ping_while_the_peer_is_inside_a_frame(self) -> None:
        """
        A ping due while the client is inside a frame is not sent, so a
        client that answers at once cannot corrupt its own frame: the
        message completes and is echoed, and the connection stays open.
        """
        text = "κόσμε and more".encode("utf-8")
        self.start_chopped_frame(text, 5)
        # Past the first ping and the second (interval 10 s), inside the
        # frame and within the death bound (24 s).
        for _ in range(15):
            self.clock.advance(1)
            self.pump.flush()
        self.client.sendMessageFrameData(text[5:])
        self.client.endMessage()
        self.pump.flush()
        self.assertEqual(self.client.closes, [])
        self.assertEqual(self.client.messages, [text.decode("utf-8")])
        self.assertEqual(self.client.pings, [])
        # Between frames the heartbeat pings again.
        self.clock.advance(10)
        self.pump.flush()
        self.assertEqual(len(self.client.pings), 1)

    def test_peer_stalled_inside_a_frame_is_still_declared_dead(self) -> None:
        """
        Not pinging a peer inside a frame does not shield it: one that
        goes silent there is declared dead within the heartbeat bound,
        because a miss is a window with no inbound traffic at all.
        """
        self.start_chopped_frame(b"abcdef", 2)
        silent_since = self.clock.seconds()
        bound = self.factory.heartbeat_settings.death_bound
        while not self.server.heartbeat.dead:
            self.assertLessEqual(self.clock.seconds() - silent_since, bound + 1)
            self.clock.advance(0.5)
            self.pump.flush()
        self.assertEqual(self.client.pings, [])


def raw_frame(first: int, payload: bytes, mask: bytes = b"\x11\x22\x33\x44", length_form: str = "minimal") -> bytes:
    """
    A client frame with a chosen first byte (FIN, RSV, opcode), masked with
    C{mask} (None: unmasked), its length in the minimal form or a chosen
    longer one ("16" or "64"), so that malformed frames can be written too.
    """
    n = len(payload)
    masked_bit = 0x80 if mask is not None else 0
    if length_form == "minimal":
        length_form = "7" if n < 126 else "16" if n < 1 << 16 else "64"
    if length_form == "7":
        head = bytes((first, masked_bit | n))
    elif length_form == "16":
        head = bytes((first, masked_bit | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((first, masked_bit | 127)) + n.to_bytes(8, "big")
    if mask is None:
        return head + payload
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class FastMessageTests(unittest.TestCase):
    """
    The fast path for ordinary client messages (C{_fast_messages}) behaves
    exactly as Autobahn's general parser: every byte sequence below, cut
    into reads every which way, gives the same messages to the handler, the
    same bytes back on the wire (echoes, pongs, close frames with their
    codes) and the same state, with the fast path on and off.
    """

    HANDSHAKE = (
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1:9000\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )

    def setUp(self) -> None:
        self.factories: dict[bool, Any] = {}

    def run_server(self, reads: list[bytes], fast: bool) -> tuple[list[Any], bytes, int]:
        from twisted.internet.testing import StringTransport

        class Recording(EchoHandler):
            def __init__(self) -> None:
                super().__init__()
                self.messages: list[Any] = []

            def message_received(self, connection: Any, message: Any) -> None:
                self.messages.append(message)
                if message == "close now":
                    connection.close(4000, "asked")
                    return
                super().message_received(connection, message)

        class Transport(StringTransport):
            def unregisterProducer(self) -> None:
                self.producer = None

        handler = Recording()
        factory = self.factories.get(fast)
        if factory is None:
            # One per side for the whole test (building one is the slow
            # part); each run gets its own handler and connection.
            factory = self.factories[fast] = make_server_factory(Clock(), max_message_size=1000)
        factory.handler = handler
        server = factory.buildProtocol(None)
        transport = Transport()
        server.makeConnection(transport)
        server.dataReceived(self.HANDSHAKE)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 101"))
        transport.clear()
        if not fast:
            server._fast_messages = lambda data: data
        for data in reads:
            if server.state == server.STATE_CLOSED:
                break
            server.dataReceived(data)
        return handler.messages, transport.value(), server.state

    def assert_same(self, stream: bytes, label: str) -> None:
        cuts = [[stream]]
        cuts.append([stream[i : i + 1] for i in range(len(stream))])  # a byte at a time
        for at in range(1, min(len(stream), 30), 3):
            cuts.append([stream[:at], stream[at:]])
        rng = random.Random(label)
        for _ in range(4):
            points = sorted(rng.sample(range(1, len(stream)), min(3, len(stream) - 1))) if len(stream) > 1 else []
            edges = [0, *points, len(stream)]
            cuts.append([stream[a:b] for a, b in zip(edges, edges[1:])])
        for reads in cuts:
            fast = self.run_server(reads, fast=True)
            slow = self.run_server(reads, fast=False)
            self.assertEqual(fast, slow, f"{label}: reads of {[len(r) for r in reads]}")

    CASES: dict[str, bytes] = {
        "three texts": raw_frame(0x81, b"one") + raw_frame(0x81, b"two") + raw_frame(0x81, b"three"),
        "binary": raw_frame(0x82, bytes(range(40))),
        "16-bit length": raw_frame(0x81, b"x" * 200) + raw_frame(0x82, b"\x00" * 126),
        "empty text and binary": raw_frame(0x81, b"") + raw_frame(0x82, b""),
        "unicode": raw_frame(0x81, "héllo wörld ☃ 😀".encode()),
        "ping between": raw_frame(0x81, b"a") + raw_frame(0x89, b"p") + raw_frame(0x81, b"b"),
        "text ping": raw_frame(0x81, b"ping") + raw_frame(0x81, b"after"),
        "fragmented": raw_frame(0x01, b"frag") + raw_frame(0x80, b"ment") + raw_frame(0x81, b"next"),
        "control inside fragments": raw_frame(0x01, b"a") + raw_frame(0x89, b"") + raw_frame(0x80, b"b"),
        "invalid utf-8": raw_frame(0x81, b"ok") + raw_frame(0x81, b"\xff\xfe") + raw_frame(0x81, b"never"),
        "split code point": raw_frame(0x81, "€".encode()[:2]) + raw_frame(0x81, b"x"),
        "surrogate": raw_frame(0x81, b"\xed\xa0\x80"),
        "oversize": raw_frame(0x81, b"a") + raw_frame(0x81, b"y" * 1001),
        "non-minimal 16-bit": raw_frame(0x81, b"short", length_form="16"),
        "non-minimal 64-bit": raw_frame(0x81, b"short", length_form="64"),
        "unmasked": raw_frame(0x81, b"plain", mask=None),  # type: ignore[arg-type]
        "rsv bit": raw_frame(0xC1, b"rsv1") + raw_frame(0x81, b"after"),
        "reserved opcode": raw_frame(0x83, b"op3"),
        "continuation first": raw_frame(0x80, b"cont"),
        "close then text": raw_frame(0x81, b"a") + raw_frame(0x88, b"\x03\xe8bye") + raw_frame(0x81, b"late"),
        "handler closes mid-read": raw_frame(0x81, b"close now") + raw_frame(0x81, b"ignored"),
        "binary 1000": raw_frame(0x82, b"\x07" * 1000),
    }

    def test_every_edge_case_matches_autobahns_parser(self) -> None:
        """
        Each case alone, cut into reads at every position, gives what
        Autobahn's own parser gives.
        """
        for label, stream in self.CASES.items():
            self.assert_same(stream, label)

    def test_mixtures_match(self) -> None:
        """
        Random sequences of the cases, cut at random, give what Autobahn's
        own parser gives.
        """
        rng = random.Random(2026)
        names = sorted(self.CASES)
        for i in range(25):
            stream = b"".join(self.CASES[rng.choice(names)] for _ in range(rng.randint(2, 5)))
            self.assert_same(stream, f"mixture {i}")

    def test_the_fast_path_is_taken(self) -> None:
        """
        Ordinary messages do not reach Autobahn's parser at all.
        """
        clock = Clock()
        factory = make_server_factory(clock)
        client, server, pump = connect_client(factory, clock)
        parsed: list[bytes] = []
        original = server._dataReceived
        server._dataReceived = lambda data: (parsed.append(data), original(data))
        server.dataReceived(raw_frame(0x81, b"fast") + raw_frame(0x82, b"\x01\x02"))
        pump.flush()
        self.assertEqual(client.messages, ["fast", b"\x01\x02"])
        self.assertEqual(parsed, [])
        server.dataReceived(raw_frame(0x81, b"a") + raw_frame(0x89, b"p"))
        self.assertEqual(parsed, [raw_frame(0x89, b"p")], "from the control frame on: the long way")
