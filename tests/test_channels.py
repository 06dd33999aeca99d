"""
Tests for L{wsheart.channels} (the broker: seq, epoch, history, recovery,
presence) and L{wsheart.v1} (the subprotocol's frames), with fake
connections and a L{task.Clock}.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.task import Clock
from twisted.trial import unittest
from zope.interface import implementer

from wsheart.channels import Broker, ChannelError, ChannelSettings, Position
from wsheart.hub import IConnection
from wsheart.v1 import ChannelProtocolHandler


@implementer(IConnection)
class FakeConnection:
    def __init__(self, connection_id: str) -> None:
        self.connection_id = connection_id
        self.peer = "test"
        self.sent: list[str] = []
        self.closed: Any = None

    def send_text(self, text: str) -> bool:
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


def seqs(frames: list[dict[str, Any]]) -> list[int]:
    return [f["seq"] for f in frames if f["op"] == "message"]


class BrokerTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.broker = Broker(self.clock, ChannelSettings(history_size=5, history_age=60))

    def sub(self, cid: str, channel: str = "news", since: Any = None, name: Any = None) -> tuple[FakeConnection, Any]:
        connection = FakeConnection(cid)
        return connection, self.broker.subscribe(cid, connection, channel, since=since, name=name)

    def test_seq_grows_by_one_within_an_epoch(self) -> None:
        a, first = self.sub("a")
        self.assertEqual(first.position.seq, 0)
        positions = [self.broker.publish("news", {"n": i}) for i in range(3)]
        self.assertEqual([p.seq for p in positions], [1, 2, 3])
        self.assertEqual({p.epoch for p in positions}, {first.position.epoch})
        self.assertEqual(
            a.frames(),
            [{"op": "message", "channel": "news", "epoch": first.position.epoch, "seq": i + 1, "data": {"n": i}} for i in range(3)],
        )

    def test_recovery_sends_exactly_the_missed_messages(self) -> None:
        a, s = self.sub("a")
        for i in range(3):
            self.broker.publish("news", i)
        position = Position(s.position.epoch, 3)
        self.broker.remove_connection("a")
        for i in range(3, 6):
            self.broker.publish("news", i)
        b, again = self.sub("b", since=position)
        self.assertTrue(again.recovered)
        self.assertEqual(again.position.seq, 6)
        self.assertEqual([json.loads(m)["seq"] for m in again.missed], [4, 5, 6])
        self.assertEqual([json.loads(m)["data"] for m in again.missed], [3, 4, 5])
        self.broker.publish("news", 6)
        self.assertEqual(seqs(b.frames()), [7], "live messages follow, none repeated")

    def test_nothing_missed(self) -> None:
        _, s = self.sub("a")
        self.broker.publish("news", 1)
        _, again = self.sub("a", since=Position(s.position.epoch, 1))
        self.assertEqual((again.recovered, again.missed), (True, ()))

    def test_gap_older_than_history(self) -> None:
        _, s = self.sub("a")
        for i in range(8):  # history keeps 5: seq 4..8
            self.broker.publish("news", i)
        _, old = self.sub("b", since=Position(s.position.epoch, 2))
        self.assertEqual((old.recovered, old.missed), (False, ()))
        _, edge = self.sub("c", since=Position(s.position.epoch, 3))
        self.assertTrue(edge.recovered)
        self.assertEqual([json.loads(m)["seq"] for m in edge.missed], [4, 5, 6, 7, 8])

    def test_history_age(self) -> None:
        _, s = self.sub("a")
        self.broker.publish("news", "old")
        self.clock.advance(61)
        self.broker.publish("news", "new")
        _, r = self.sub("b", since=Position(s.position.epoch, 0))
        self.assertFalse(r.recovered, "seq 1 expired")
        _, r = self.sub("c", since=Position(s.position.epoch, 1))
        self.assertTrue(r.recovered)
        self.assertEqual(len(r.missed), 1)
        self.assertEqual(self.broker.history("news")["messages"], [{"seq": 2, "data": "new"}])

    def test_wrong_epoch_or_future_position(self) -> None:
        _, s = self.sub("a")
        self.broker.publish("news", 1)
        for since in [Position("other", 0), Position(s.position.epoch, 2), Position(s.position.epoch, -1)]:
            _, r = self.sub("b", since=since)
            self.assertEqual((r.recovered, r.missed), (False, ()), since)
        _, fresh = self.sub("c")
        self.assertFalse(fresh.recovered, "no position: nothing to recover")

    def test_epoch_changes_when_history_is_lost(self) -> None:
        _, s = self.sub("a")
        self.broker.publish("news", 1)
        self.broker.remove_connection("a")
        self.clock.advance(61)
        self.broker.publish("other", "x")  # any activity; "news" is idle and empty
        self.broker.channels()
        self.broker._forget_idle()
        _, r = self.sub("b", since=Position(s.position.epoch, 1))
        self.assertNotEqual(r.position.epoch, s.position.epoch)
        self.assertEqual(r.position.seq, 0)
        self.assertFalse(r.recovered)

    def test_a_new_broker_is_a_new_epoch(self) -> None:
        _, s = self.sub("a")
        restarted = Broker(self.clock)
        r = restarted.subscribe("a", FakeConnection("a"), "news", since=Position(s.position.epoch, 0))
        self.assertNotEqual(r.position.epoch, s.position.epoch)
        self.assertFalse(r.recovered)

    def test_presence(self) -> None:
        a, _ = self.sub("a", name="alice")
        b, sb = self.sub("b", name="bob")
        self.assertEqual(list(sb.presence), [{"id": "a", "name": "alice"}, {"id": "b", "name": "bob"}])
        self.assertEqual(a.take(), [{"op": "join", "channel": "news", "client": {"id": "b", "name": "bob"}}])
        self.assertEqual(b.take(), [], "no join event about oneself")
        self.assertEqual(self.broker.presence("news"), [{"id": "a", "name": "alice"}, {"id": "b", "name": "bob"}])
        self.sub("b", name="bob")  # resubscribe: no second join
        self.assertEqual(a.take(), [])
        self.broker.remove_connection("b")
        self.assertEqual(a.take(), [{"op": "leave", "channel": "news", "client": {"id": "b", "name": "bob"}}])
        self.assertEqual(self.broker.presence("news"), [{"id": "a", "name": "alice"}])

    def test_quiet_presence(self) -> None:
        broker = Broker(self.clock, ChannelSettings(quiet_presence=("ticker.*",)))
        a = FakeConnection("a")
        broker.subscribe("a", a, "ticker.eur")
        broker.subscribe("b", FakeConnection("b"), "ticker.eur")
        broker.remove_connection("b")
        self.assertEqual(a.sent, [])
        self.assertEqual(len(broker.presence("ticker.eur")), 1, "still tracked for the API")

    def test_limits(self) -> None:
        broker = Broker(self.clock, ChannelSettings(max_subscriptions=2, max_channels=3, max_data_bytes=400))
        c = FakeConnection("c")
        broker.subscribe("c", c, "one")
        broker.subscribe("c", c, "two")
        broker.subscribe("c", c, "two")  # again: not a new subscription
        with self.assertRaises(ChannelError) as e:
            broker.subscribe("c", c, "three")
        self.assertEqual(e.exception.code, 429)
        with self.assertRaises(ChannelError) as e:
            broker.publish("one", "x" * 200)
        self.assertEqual(e.exception.code, 413)
        with self.assertRaises(ChannelError) as e:
            broker.publish("one", float("nan"))
        self.assertEqual(e.exception.code, 400)
        self.assertEqual(broker.channels()[0]["seq"], 0, "nothing published by a refused publish")
        broker.publish("three", 1)
        with self.assertRaises(ChannelError) as e:
            broker.publish("four", 1)
        self.assertEqual(e.exception.code, 429)
        for bad in ["", "a/b", ".x", "x" * 129, "sp ace", 5]:
            with self.assertRaises(ChannelError):
                broker.publish(bad, 1)  # type: ignore[arg-type]

    def test_refused_or_unkept_publishes_leave_no_channel(self) -> None:
        with self.assertRaises(ChannelError):
            self.broker.publish("fresh", "x" * 100000)
        broker = Broker(self.clock, ChannelSettings(history_size=0))
        broker.publish("nobody-listens", 1)
        self.assertEqual(self.broker.channels(), [])
        self.assertEqual(broker.channels(), [])

    def test_idempotency_key(self) -> None:
        a, _ = self.sub("a")
        first = self.broker.publish("news", "once", idempotency_key="k1")
        again = self.broker.publish("news", "once", idempotency_key="k1")
        self.assertEqual(first, again)
        self.assertEqual(seqs(a.frames()), [1])
        self.assertEqual(self.broker.publish("news", "other", idempotency_key="k2").seq, 2)

    def test_fan_out(self) -> None:
        """
        Every subscriber gets every message once, in order.
        """
        connections = [self.sub(f"c{i}")[0] for i in range(500)]
        for i in range(20):
            self.broker.publish("news", i)
        for connection in connections:
            self.assertEqual(seqs(connection.frames()), list(range(1, 21)))
        self.assertEqual(self.broker.delivered_total, 500 * 20)


class ProtocolHandlerTests(unittest.TestCase):
    """
    wsheart.v1 frames in and out, through L{ChannelProtocolHandler}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.broker = Broker(self.clock, ChannelSettings(max_data_bytes=1000))
        self.handler = ChannelProtocolHandler(self.broker)

    def send(self, connection: FakeConnection, frame: Any) -> list[dict[str, Any]]:
        self.handler.message_received(connection, frame if isinstance(frame, (str, bytes)) else json.dumps(frame))
        return connection.take()

    def test_subscribe_publish_unsubscribe(self) -> None:
        a, b = FakeConnection("a"), FakeConnection("b")
        [subscribed] = self.send(a, {"op": "subscribe", "channel": "chat.x", "name": "ann", "ref": 1})
        self.assertEqual(subscribed["op"], "subscribed")
        self.assertEqual((subscribed["seq"], subscribed["recovered"], subscribed["ref"]), (0, False, 1))
        self.assertEqual(subscribed["presence"], [{"id": "a", "name": "ann"}])
        self.send(b, {"op": "subscribe", "channel": "chat.x"})
        self.assertEqual(a.take()[0]["op"], "join")
        own, published = self.send(b, {"op": "publish", "channel": "chat.x", "data": {"text": "hi"}, "ref": "p1"})
        self.assertEqual(own["seq"], 1, "the publisher, subscribed, gets its message too, before the ack")
        self.assertEqual((published["op"], published["seq"], published["ref"]), ("published", 1, "p1"))
        self.assertEqual(a.take(), [{"op": "message", "channel": "chat.x", "epoch": subscribed["epoch"], "seq": 1, "data": {"text": "hi"}}])
        self.assertEqual(self.send(b, {"op": "unsubscribe", "channel": "chat.x"}), [{"op": "unsubscribed", "channel": "chat.x"}])
        self.assertEqual(a.take()[0]["op"], "leave")

    def test_resubscribe_with_since(self) -> None:
        a = FakeConnection("a")
        [s] = self.send(a, {"op": "subscribe", "channel": "news"})
        for i in range(4):
            self.broker.publish("news", i)
        self.assertEqual(seqs(a.take()), [1, 2, 3, 4])
        frames = self.send(a, {"op": "subscribe", "channel": "news", "since": {"epoch": s["epoch"], "seq": 2}})
        self.assertEqual(frames[0]["op"], "subscribed")
        self.assertTrue(frames[0]["recovered"])
        self.assertEqual(seqs(frames[1:]), [3, 4])

    def test_ping(self) -> None:
        a = FakeConnection("a")
        self.handler.message_received(a, '{"op":"ping"}')
        self.assertEqual(a.sent, ['{"op":"pong"}'])

    def test_bad_input_gets_an_error_and_harms_nobody(self) -> None:
        a, bystander = FakeConnection("a"), FakeConnection("b")
        self.send(bystander, {"op": "subscribe", "channel": "chat.x"})
        cases = [
            ("{not json", 400),
            ("[" * 100000 + "]" * 100000, 400),  # nested past the recursion limit
            ("[1, 2]", 400),
            ({"no": "op"}, 405),
            ({"op": "dance"}, 405),
            ({"op": 7}, 405),
            ({"op": "subscribe"}, 400),
            ({"op": "subscribe", "channel": "bad/name"}, 400),
            ({"op": "subscribe", "channel": "news", "since": 5}, 400),
            ({"op": "subscribe", "channel": "news", "since": {"epoch": "e", "seq": -1}}, 400),
            ({"op": "subscribe", "channel": "news", "since": {"epoch": "e", "seq": True}}, 400),
            ({"op": "subscribe", "channel": "news", "name": "x" * 65}, 400),
            ({"op": "subscribe", "channel": "news", "ref": {"x": 1}}, 400),
            ({"op": "unsubscribe", "channel": "never"}, 404),
            ({"op": "publish", "channel": "chat.x"}, 400),
            ({"op": "publish", "channel": "news", "data": 1}, 403),
            ({"op": "publish", "channel": "chat.x", "data": "x" * 2000}, 413),
        ]
        for frame, code in cases:
            [error] = self.send(a, frame)
            self.assertEqual((error["op"], error["code"]), ("error", code), frame)
            self.assertTrue(error["reason"])
        self.assertEqual(bystander.sent, [], "nothing reached the bystander")
        self.assertIsNone(a.closed)
        self.assertEqual(self.broker.channels()[0]["seq"], 0, "no refused publish left a trace")

    def test_binary_frame_closes_with_1003(self) -> None:
        a = FakeConnection("a")
        self.handler.message_received(a, b"\x00\x01")
        self.assertEqual(a.closed[0], 1003)

    def test_connection_closed_leaves_every_channel(self) -> None:
        a, b = FakeConnection("a"), FakeConnection("b")
        for channel in ("chat.x", "news"):
            self.send(a, {"op": "subscribe", "channel": channel})
        self.send(b, {"op": "subscribe", "channel": "news"})
        self.handler.connection_closed(a, 1000, "")
        self.assertEqual(self.broker.presence("news"), [{"id": "b"}])
        self.assertEqual(self.broker.presence("chat.x"), [])
        self.assertEqual(list(self.broker.subscriptions("a")), [])


class PresenceDeathTests(unittest.TestCase):
    """
    A dead peer leaves presence when the heartbeat declares it dead, over
    in-memory transports driven by a Clock.
    """

    def test_dead_peer_leaves_presence_within_the_bound(self) -> None:
        from .memory import connect_client, make_server_factory

        clock = Clock()
        broker = Broker(clock)
        factory = make_server_factory(clock, channels=broker)  # interval 10, timeout 4, 2 misses: bound 24 s
        frozen, server_frozen, pump_frozen = connect_client(factory, clock)
        watcher, server_watcher, pump_watcher = connect_client(factory, clock)
        assert factory.channel_handler is not None
        factory.channel_handler.message_received(server_frozen, json.dumps({"op": "subscribe", "channel": "room"}))
        factory.channel_handler.message_received(server_watcher, json.dumps({"op": "subscribe", "channel": "room"}))
        pump_watcher.flush()
        silent_at = clock.seconds()
        frozen.frozen = True
        left_at = None
        for _ in range(400):
            clock.advance(0.1)
            pump_frozen.flush()
            pump_watcher.flush()
            ids = [c["id"] for c in broker.presence("room")]
            if server_frozen.connection_id not in ids:
                left_at = clock.seconds()
                break
        self.assertIsNotNone(left_at, "the frozen peer never left presence")
        assert left_at is not None
        self.assertLessEqual(left_at - silent_at, 10 * 2 + 4 + 0.1)
        self.assertTrue(server_frozen._dead, "it left because the heartbeat declared it dead")
        self.assertIsNone(factory.hub.get(server_frozen.connection_id))
        leaves = [json.loads(m) for m in watcher.messages if '"leave"' in m]
        self.assertEqual([m["client"]["id"] for m in leaves], [server_frozen.connection_id])
        # What a dead peer still says is not acted on: it cannot come back into presence.
        server_frozen.onMessage(json.dumps({"op": "subscribe", "channel": "room"}).encode(), False)
        self.assertNotIn(server_frozen.connection_id, [c["id"] for c in broker.presence("room")])


class FramesTests(unittest.TestCase):
    """
    L{wsheart.frames}: one frame for many connections.
    """

    def test_text_frame_lengths(self) -> None:
        from wsheart.frames import text_frame

        self.assertEqual(text_frame(b""), b"\x81\x00")
        self.assertEqual(text_frame(b"a" * 125)[:2], b"\x81\x7d")
        self.assertEqual(text_frame(b"a" * 126)[:4], b"\x81\x7e\x00\x7e")
        self.assertEqual(text_frame(b"a" * 65535)[:4], b"\x81\x7e\xff\xff")
        self.assertEqual(text_frame(b"a" * 65536)[:10], b"\x81\x7f" + (65536).to_bytes(8, "big"))
        self.assertEqual(len(text_frame(b"a" * 70000)), 70000 + 10)

    def test_frames_are_read_by_an_independent_parser(self) -> None:
        """
        Autobahn's client parser reads what text_frame builds, at every
        length class, through a real server protocol's write_frame.
        """
        from wsheart.frames import send_to_all

        from .memory import connect_client, make_server_factory

        clock = Clock()
        factory = make_server_factory(clock, max_message_size=1 << 20)
        client, server, pump = connect_client(factory, clock)
        texts = ["", "é" * 40, "x" * 200, "y" * 70000]
        for text in texts:
            self.assertEqual(send_to_all([server], text), 1)
        pump.flush()
        self.assertEqual(client.messages, texts)

    def test_send_to_all_frames_once(self) -> None:
        from wsheart.frames import send_to_all

        class Framed(FakeConnection):
            def __init__(self, cid: str) -> None:
                super().__init__(cid)
                self.frames_written: list[bytes] = []

            def write_frame(self, frame: bytes) -> bool:
                self.frames_written.append(frame)
                return True

        framed = [Framed(f"f{i}") for i in range(3)]
        plain = FakeConnection("p")
        self.assertEqual(send_to_all([*framed, plain], "hi"), 4)
        self.assertEqual({id(c.frames_written[0]) for c in framed}.__len__(), 1, "built once, shared")
        self.assertEqual(plain.sent, ["hi"])
