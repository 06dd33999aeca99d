"""
Tests for L{wsheart.v1}: the wsheart.v1 subprotocol's frames in and out of
L{ChannelProtocolHandler}, with fake connections on a L{task.Clock}, and
presence following the heartbeat over in-memory transports.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.task import Clock
from twisted.trial import unittest

from wsheart.channels.broker import Broker, ChannelSettings
from wsheart.channels.v1 import ChannelProtocolHandler

from .memory import FakeConnection


def seqs(frames: list[dict[str, Any]]) -> list[int]:
    return [f["seq"] for f in frames if f["op"] == "message"]


class ProtocolHandlerTests(unittest.TestCase):
    """
    wsheart.v1 frames in and out, through L{ChannelProtocolHandler}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.broker = Broker(self.clock, ChannelSettings(max_data_bytes=1024))
        self.handler = ChannelProtocolHandler(self.broker)

    def send(self, connection: FakeConnection, frame: Any) -> list[dict[str, Any]]:
        self.handler.message_received(connection, frame if isinstance(frame, (str, bytes)) else json.dumps(frame))
        return connection.take()

    def test_subscribe_publish_unsubscribe(self) -> None:
        """
        The round trip of docs/protocol.md: subscribed with presence and
        ref, join, publish with the publisher's own copy first, leave.
        """
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
        """
        A subscribe with since sends subscribed, then the missed messages.
        """
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
        """
        {"op":"ping"} is answered {"op":"pong"}.
        """
        a = FakeConnection("a")
        self.handler.message_received(a, '{"op":"ping"}')
        self.assertEqual(a.sent, ['{"op":"pong"}'])

    def test_bad_input_gets_an_error_and_harms_nobody(self) -> None:
        """
        Every malformed or refused frame gets an error frame with its code;
        the connection stays open and no bystander hears a thing.
        """
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
        """
        wsheart.v1 is JSON text: a binary frame closes with 1003.
        """
        a = FakeConnection("a")
        self.handler.message_received(a, b"\x00\x01")
        self.assertEqual(a.closed[0], 1003)

    def test_connection_closed_leaves_every_channel(self) -> None:
        """
        A closed connection leaves every channel it was in.
        """
        a, b = FakeConnection("a"), FakeConnection("b")
        for channel in ("chat.x", "news"):
            self.send(a, {"op": "subscribe", "channel": channel})
        self.send(b, {"op": "subscribe", "channel": "news"})
        self.handler.connection_closed(a, 1000, "")
        self.assertEqual(self.broker.presence("news"), [{"id": "b"}])
        self.assertEqual(self.broker.presence("chat.x"), [])
        self.assertEqual(list(self.broker.subscriptions("a")), [])

    def test_lone_surrogate_escapes_get_400_and_leave_no_ghost(self) -> None:
        """
        Defect 1: valid ASCII JSON that spells a lone surrogate - in data,
        a name, a ref, anywhere - is answered with a 400 error frame, the
        connection stays open, nothing is joined or published, and when
        the sender leaves it leaves presence everywhere.
        """
        a, bystander = FakeConnection("a"), FakeConnection("b")
        self.send(bystander, {"op": "subscribe", "channel": "chat.x"})
        self.send(a, {"op": "subscribe", "channel": "chat.y", "name": "ann"})
        for raw in [
            '{"op":"publish","channel":"chat.x","data":"\\ud800"}',
            '{"op":"subscribe","channel":"chat.x","name":"\\ud800"}',
            '{"op":"subscribe","channel":"chat.x","ref":"\\ud800"}',
            '{"op":"ping","ref":"\\udfff"}',
            '{"op":"publish","channel":"chat.x","data":{"\\ud83d":1}}',
        ]:
            [error] = self.send(a, raw)
            self.assertEqual((error["op"], error["code"]), ("error", 400), raw)
            self.assertNotIn("ref", error, "the bad ref is not echoed")
        self.assertIsNone(a.closed)
        self.assertEqual(bystander.sent, [], "no join, no message reached the bystander")
        [ok] = self.send(a, {"op": "publish", "channel": "chat.x", "data": "\ud83d\ude00 fine"})
        self.assertEqual(ok["op"], "published", "a surrogate pair (an emoji) is fine")
        self.assertEqual(seqs(bystander.take()), [1])
        self.handler.connection_closed(a, 1000, "")
        self.assertEqual(self.broker.presence("chat.y"), [])
        self.assertEqual(self.broker.presence("chat.x"), [{"id": "b"}])

    def test_quiet_channel_refuses_surrogate_names(self) -> None:
        """
        Defect 1: on a quiet-presence channel, too, a surrogate name is
        refused, so the presence API can always encode its members.
        """
        broker = Broker(self.clock, ChannelSettings(quiet_presence=("q.*",)))
        handler = ChannelProtocolHandler(broker)
        a = FakeConnection("a")
        handler.message_received(a, '{"op":"subscribe","channel":"q.1","name":"\\ud800"}')
        self.assertEqual(a.frames()[0]["code"], 400)
        self.assertEqual(broker.presence("q.1"), [])

    def test_subscribed_frame_always_fits_the_limit(self) -> None:
        """
        Defect 3a: with members enough to outgrow the limit, a subscriber
        still gets a "subscribed" frame within --max-message-size that
        says the list is incomplete and how many members there are.
        """
        broker = Broker(self.clock, ChannelSettings(max_data_bytes=16 * 1024))
        handler = ChannelProtocolHandler(broker)
        for i in range(250):
            handler.message_received(FakeConnection(f"m{i}"), json.dumps({"op": "subscribe", "channel": "room", "name": "n" * 64}))
        late = FakeConnection("late")
        handler.message_received(late, json.dumps({"op": "subscribe", "channel": "room", "ref": "r" * 64}))
        [frame] = late.sent
        self.assertLessEqual(len(frame.encode()), 16 * 1024)
        subscribed = json.loads(frame)
        self.assertEqual((subscribed["op"], subscribed["presence_complete"], subscribed["presence_count"]), ("subscribed", False, 251))
        self.assertLess(len(subscribed["presence"]), 251)
        [small] = self.send(FakeConnection("x"), {"op": "subscribe", "channel": "small"})
        self.assertNotIn("presence_complete", small, "a complete list says nothing more")

    def test_text_ping_is_not_answered_on_wsheart_v1(self) -> None:
        """
        On wsheart.v1 the heartbeat is {"op":"ping"}; the plain text
        "ping" is a malformed frame like any other.
        """
        a = FakeConnection("a")
        [error] = self.send(a, "ping")
        self.assertEqual((error["op"], error["code"]), ("error", 400))


class PresenceDeathTests(unittest.TestCase):
    """
    A dead peer leaves presence when the heartbeat declares it dead, over
    in-memory transports driven by a Clock.
    """

    def test_dead_peer_leaves_presence_within_the_bound(self) -> None:
        """
        A frozen peer leaves presence (the others hear its leave) no later
        than the heartbeat bound, and cannot come back by what it still says.
        """
        from .memory import connect_client, make_server_factory  # noqa: F811

        clock = Clock()
        broker = Broker(clock)
        factory = make_server_factory(clock, channels=broker)  # interval 10, timeout 4, 2 misses: bound 24 s
        frozen, server_frozen, pump_frozen = connect_client(factory, clock)
        watcher, server_watcher, pump_watcher = connect_client(factory, clock)
        handler = factory.subprotocols["wsheart.v1"]
        handler.message_received(server_frozen, json.dumps({"op": "subscribe", "channel": "room"}))
        handler.message_received(server_watcher, json.dumps({"op": "subscribe", "channel": "room"}))
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




class NestingTests(unittest.TestCase):
    def test_deep_nesting_with_escapes_is_400_at_every_depth(self) -> None:
        """
        Frames nested near the recursion limit, with a \\u escape (which
        makes the handler re-encode them), get a pong or a 400 - never an
        exception (which would close the connection with 1011).
        """
        handler = ChannelProtocolHandler(Broker(Clock()))
        for depth in range(800, 1000, 7):
            connection = FakeConnection("a")
            handler.message_received(connection, '{"op":"ping","x":"\\u0041","d":' + "[" * depth + "]" * depth + "}")
            [frame] = connection.frames()
            self.assertIn(frame.get("op"), ("pong", "error"), depth)


class LaterBroker(Broker):
    """
    A broker whose answers arrive later, as a remote engine's (Redis)
    would: each result or refusal comes through a Deferred fired when the
    clock moves.
    """

    def _later(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        from twisted.internet import task

        return task.deferLater(self.clock, 0.01, method, *args, **kwargs)  # type: ignore[arg-type]

    def publish(self, *args: Any, **kwargs: Any) -> Any:
        return self._later(super().publish, *args, **kwargs)

    def subscribe(self, *args: Any, **kwargs: Any) -> Any:
        return self._later(super().subscribe, *args, **kwargs)

    def history_json(self, *args: Any, **kwargs: Any) -> Any:
        return self._later(super().history_json, *args, **kwargs)

    def presence(self, *args: Any, **kwargs: Any) -> Any:
        return self._later(super().presence, *args, **kwargs)

    def channels(self) -> Any:
        return self._later(super().channels)


class EngineThatAnswersLaterTests(unittest.TestCase):
    """
    The handler takes an engine whose answers are Deferreds: replies go
    out when they fire, refusals become error frames then.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.broker = LaterBroker(self.clock, ChannelSettings())
        self.handler = ChannelProtocolHandler(self.broker)

    def test_replies_when_the_engine_answers(self) -> None:
        """
        subscribed and published go out once the engine has answered, with
        their refs; nothing before.
        """
        a = FakeConnection("a")
        self.handler.message_received(a, '{"op":"subscribe","channel":"chat.x","ref":1}')
        self.handler.message_received(a, '{"op":"publish","channel":"chat.x","data":"hi","ref":2}')
        self.assertEqual(a.sent, [], "nothing before the engine answers")
        self.clock.advance(0.01)
        # The publish waited behind the subscribe, then for the engine.
        self.assertEqual([(f["op"], f.get("ref")) for f in a.frames()], [("subscribed", 1)])
        self.clock.advance(0.01)
        ops = [(f["op"], f.get("ref")) for f in a.frames()]
        self.assertEqual(ops, [("subscribed", 1), ("message", None), ("published", 2)])

    def test_frames_after_a_subscribe_are_answered_after_it(self) -> None:
        """
        subscribe then unsubscribe, sent back to back to an engine that
        answers later: subscribed, then unsubscribed, and the subscription
        is off (the unsubscribe was answered first before, and the
        subscription stayed on).  Another connection is not held up.
        """
        a, b = FakeConnection("a"), FakeConnection("b")
        self.handler.message_received(a, '{"op":"subscribe","channel":"chat.x","ref":1}')
        self.handler.message_received(a, '{"op":"unsubscribe","channel":"chat.x","ref":2}')
        self.handler.message_received(b, '{"op":"ping"}')
        self.assertEqual([f["op"] for f in b.frames()], ["pong"], "b waits for nothing of a's")
        self.clock.advance(0.01)
        self.assertEqual([(f["op"], f.get("ref")) for f in a.frames()], [("subscribed", 1), ("unsubscribed", 2)])
        self.assertNotIn("a", self.broker._channels["chat.x"].subscribers if "chat.x" in self.broker._channels else {})

    def test_a_held_frame_that_fails_closes_its_connection(self) -> None:
        """
        A frame handled after the subscribe it waited for, whose engine
        call fails with a defect (not a refusal): logged, and that
        connection is closed with 1011, as a handler failure is.
        """

        class Broken(LaterBroker):
            def publish(self, *args: Any, **kwargs: Any) -> Any:
                return self._later(lambda: 1 / 0)

        handler = ChannelProtocolHandler(Broken(self.clock, ChannelSettings()))
        a = FakeConnection("a")
        handler.message_received(a, '{"op":"subscribe","channel":"chat.x"}')
        handler.message_received(a, '{"op":"publish","channel":"chat.x","data":1}')
        self.clock.advance(0.01)  # the subscribe is answered; the publish goes to the engine
        self.clock.advance(0.01)  # which fails
        self.assertEqual(a.closed[0], 1011)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_held_frames_are_bounded(self) -> None:
        """
        Behind a subscribe in progress a connection may queue 64 frames;
        the next ones are refused with 429 at once, and the 64 are handled
        when the subscribe has been answered.
        """
        a = FakeConnection("a")
        self.handler.message_received(a, '{"op":"subscribe","channel":"chat.x"}')
        for _ in range(66):
            self.handler.message_received(a, '{"op":"ping"}')
        self.assertEqual([(f["op"], f["code"]) for f in a.frames()], [("error", 429)] * 2)
        self.clock.advance(0.01)
        self.assertEqual([f["op"] for f in a.frames()[2:]], ["subscribed"] + ["pong"] * 64)

    def test_late_refusal_is_an_error_frame(self) -> None:
        """
        A refusal that arrives later (here: over the subscription limit)
        is an error frame with the request's ref and channel, and the
        connection stays open.
        """
        broker = LaterBroker(self.clock, ChannelSettings(max_subscriptions=1))
        handler = ChannelProtocolHandler(broker)
        a = FakeConnection("a")
        handler.message_received(a, '{"op":"subscribe","channel":"one"}')
        self.clock.advance(0.01)
        result = handler.message_received(a, '{"op":"subscribe","channel":"two","ref":"r"}')
        self.clock.advance(0.01)
        error = a.frames()[-1]
        self.assertEqual((error["op"], error["code"], error["ref"], error["channel"]), ("error", 429, "r", "two"))
        self.assertIsNone(self.successResultOf(result))
        self.assertIsNone(a.closed)

    def test_late_failure_fails_the_handler(self) -> None:
        """
        Anything but a refusal fails the returned Deferred, which the
        protocol answers like any handler failure (1011 for that
        connection alone).
        """

        class Broken(LaterBroker):
            def publish(self, *args: Any, **kwargs: Any) -> Any:
                return self._later(lambda: 1 / 0)

        handler = ChannelProtocolHandler(Broken(self.clock, ChannelSettings()))
        result = handler.message_received(FakeConnection("a"), '{"op":"publish","channel":"chat.x","data":1}')
        self.clock.advance(0.01)
        self.failureResultOf(result, ZeroDivisionError)



class FieldEdgeTests(unittest.TestCase):
    """
    Field limits of wsheart.v1 frames at their edges.
    """

    def setUp(self) -> None:
        self.broker = Broker(Clock(), ChannelSettings(max_client_channels=1))
        self.handler = ChannelProtocolHandler(self.broker)

    def send(self, frame: Any) -> list[dict[str, Any]]:
        connection = FakeConnection("a")
        self.handler.message_received(connection, json.dumps(frame))
        return connection.frames()

    def test_ref_and_since_edges(self) -> None:
        """
        A ref of 64 characters is echoed, 65 is refused; since.seq 0 is a
        position; since.epoch must be a string of at most 64.
        """
        self.assertEqual(self.send({"op": "ping", "ref": "r" * 64}), [{"op": "pong"}])
        self.assertEqual(self.send({"op": "ping", "ref": "r" * 65})[0]["code"], 400)
        [subscribed] = self.send({"op": "subscribe", "channel": "news", "since": {"epoch": "e", "seq": 0}})
        self.assertEqual(subscribed["op"], "subscribed")
        for since in [{"epoch": 5, "seq": 0}, {"epoch": "e" * 65, "seq": 0}, {"seq": 0}, {"epoch": "e"}]:
            [error] = self.send({"op": "subscribe", "channel": "news", "since": since})
            self.assertEqual((error["op"], error["code"], error["channel"]), ("error", 400, "news"), since)

    def test_errors_name_their_channel(self) -> None:
        """
        An error about a channel says which one.
        """
        [error] = self.send({"op": "publish", "channel": "news", "data": 1})
        self.assertEqual((error["code"], error["channel"]), (403, "news"))
        [error] = self.send({"op": "unsubscribe", "channel": "elsewhere"})
        self.assertEqual((error["code"], error["channel"]), (404, "elsewhere"))

    def test_client_publishes_use_the_clients_budget(self) -> None:
        """
        A client's publish that would make a channel counts against
        --max-client-channels, not the back end's budget.
        """
        self.assertEqual(self.send({"op": "publish", "channel": "chat.one", "data": 1})[0]["op"], "published")
        [error] = self.send({"op": "publish", "channel": "chat.two", "data": 1})
        self.assertEqual(error["code"], 429)
        self.broker.publish("news.backend", 1)  # the back end still has room


class RateLimitTests(unittest.TestCase):
    """
    --client-rate and --subscribe-rate: 429 with retry_after, the heartbeat
    never limited, sustained abuse closed with 1013 and a hint.
    """

    def setUp(self) -> None:
        from wsheart.channels.v1 import Rates

        self.clock = Clock()
        self.broker = Broker(self.clock, ChannelSettings(max_subscriptions=3))
        self.handler = ChannelProtocolHandler(self.broker, rates=Rates(frames=5, subscribes=1))

    def send(self, connection: FakeConnection, frame: Any) -> list[dict[str, Any]]:
        self.handler.message_received(connection, json.dumps(frame))
        return connection.take()

    def test_frames_over_the_rate_get_429_then_room_again(self) -> None:
        c = FakeConnection("c")
        replies = [self.send(c, {"op": "publish", "channel": "chat.x", "data": i, "ref": i}) for i in range(11)]
        self.assertEqual([r[0]["op"] for r in replies[:10]], ["published"] * 10, "a burst of twice the rate")
        [refused] = replies[10]
        self.assertEqual((refused["code"], refused["ref"]), (429, 10))
        self.assertAlmostEqual(refused["retry_after"], 0.2)
        self.assertEqual(self.broker.publish("chat.x", "check").seq, 11, "the refused one was not published")
        self.assertEqual(self.send(c, {"op": "ping"}), [{"op": "pong"}], "the heartbeat is never limited")
        self.clock.advance(0.2)
        self.assertEqual(self.send(c, {"op": "publish", "channel": "chat.x", "data": "again"})[0]["op"], "published")
        other = FakeConnection("other")
        self.assertEqual(self.send(other, {"op": "publish", "channel": "chat.x", "data": 1})[0]["op"], "published", "per connection")

    def test_subscribes_have_their_own_rate_and_a_resubscribe_fits(self) -> None:
        """
        A reconnect's resubscribe to every channel allowed (here 3, over
        twice the rate) fits the burst; faster than that gets 429.
        """
        c = FakeConnection("c")
        for name in ("a", "b", "c"):
            self.assertEqual(self.send(c, {"op": "subscribe", "channel": name})[0]["op"], "subscribed")
        for name in ("a", "b", "c"):
            self.send(c, {"op": "unsubscribe", "channel": name})
        [refused] = self.send(c, {"op": "subscribe", "channel": "d"})
        self.assertEqual((refused["code"], refused["channel"]), (429, "d"))
        self.assertAlmostEqual(refused["retry_after"], 1.0)
        self.assertEqual(self.send(c, {"op": "publish", "channel": "chat.x", "data": 1})[0]["op"], "published", "other frames have their own budget")

    def test_sustained_abuse_closes_with_a_hint(self) -> None:
        c = FakeConnection("c")
        for i in range(10 + 19):
            self.send(c, {"op": "publish", "channel": "chat.x", "data": i})
        self.assertIsNone(c.closed)
        self.send(c, {"op": "publish", "channel": "chat.x", "data": "one too many"})
        self.assertEqual(c.closed, (1013, '{"retry_after": 30, "jitter": 30}'))
