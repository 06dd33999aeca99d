"""
Unit tests of the Redis engine's broker module without a Redis: how it
reads its connections (everything one read brings is parsed in that read's
reactor turn: txredisapi on hiredis, which wsheart depends on; its
pure-Python parser took a turn per bulk string), on in-memory transports,
and which of Redis's failures are a 503.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import error
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

import txredisapi

from wsheart.channels.broker import ChannelError
from wsheart.channels.redis.connections import PubSubProtocol
from wsheart.channels.redis.broker import _unavailable


def bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def pubsub_message(channel: bytes, payload: bytes) -> bytes:
    return b"*3\r\n" + bulk(b"message") + bulk(channel) + bulk(payload)


class Announcements:
    def __init__(self) -> None:
        self.messages: list[tuple[Any, Any]] = []

    def announced(self, channel: Any, message: Any) -> None:
        self.messages.append((channel, message))

    def pubsub_connected(self, protocol: Any) -> None:
        pass

    def pubsub_lost(self, protocol: Any) -> None:
        pass


class ReadInOneTurnTests(unittest.TestCase):
    def pubsub(self) -> tuple[PubSubProtocol, Announcements, Clock]:
        protocol = PubSubProtocol()
        broker = Announcements()
        protocol.factory = type("Factory", (), {"broker": broker})()
        clock = Clock()
        protocol.callLater = clock.callLater  # what txredisapi would defer to
        protocol.makeConnection(StringTransport())
        return protocol, broker, clock

    def test_all_pubsub_messages_of_one_read_in_that_turn(self) -> None:
        """
        Three announcements in one read are all handed to the broker before
        the read returns: no reactor turn per message.
        """
        protocol, broker, clock = self.pubsub()
        protocol.dataReceived(b"".join(pubsub_message(b"wsh:c", b"m%d" % i) for i in range(3)))
        self.assertEqual(broker.messages, [("wsh:c", "m0"), ("wsh:c", "m1"), ("wsh:c", "m2")])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_many_messages_in_one_read_do_not_recurse(self) -> None:
        """
        Thousands of replies in one read are read in a loop, not one stack
        frame each (which would overflow the stack).
        """
        protocol, broker, _ = self.pubsub()
        protocol.dataReceived(b"".join(pubsub_message(b"c", b"m%d" % i) for i in range(5000)))
        self.assertEqual(len(broker.messages), 5000)
        self.assertEqual(broker.messages[-1], ("c", "m4999"))

    def test_a_message_split_over_reads(self) -> None:
        """
        A message cut anywhere between two reads is delivered once, whole,
        and the next one too.
        """
        wire = pubsub_message(b"chan", b"first") + pubsub_message(b"chan", b"second")
        for cut in range(1, len(wire)):
            protocol, broker, _ = self.pubsub()
            protocol.dataReceived(wire[:cut])
            protocol.dataReceived(wire[cut:])
            self.assertEqual(broker.messages, [("chan", "first"), ("chan", "second")], f"cut at {cut}")

    def test_command_replies_of_one_read_in_that_turn(self) -> None:
        """
        On the command connection, pipelined replies (history entries) that
        arrive together all fire in that read.
        """
        protocol = txredisapi.RedisProtocol(convertNumbers=False)
        clock = Clock()
        protocol.callLater = clock.callLater
        protocol.transport = StringTransport()
        protocol.connected = 1
        results: list[Any] = []
        for _ in range(3):  # three commands sent, waiting for their replies
            protocol.replyQueue.get().addCallback(results.append)
        protocol.dataReceived(bulk(b"a") + b"*2\r\n" + bulk(b"b") + bulk(b"c") + bulk(b"d"))
        self.assertEqual(results, ["a", ["b", "c"], "d"])
        self.assertEqual(clock.getDelayedCalls(), [])


class UnavailableTests(unittest.TestCase):
    def outcome(self, exception: Exception) -> Any:
        try:
            result = _unavailable(Failure(exception))
        except ChannelError as e:
            return (e.code, e.reason, e.retry_after is not None)
        return result

    def test_not_now_is_a_503_with_a_retry_hint(self) -> None:
        """
        Redis gone, too slow, a replica after a failover, or still loading:
        503 with a retry hint, and the reason says which.
        """
        from twisted.internet.defer import TimeoutError

        self.assertEqual(self.outcome(TimeoutError()), (503, "channels unavailable: Redis too slow", True))
        self.assertEqual(self.outcome(error.ConnectionLost()), (503, "channels unavailable: Redis not reachable", True))
        readonly = txredisapi.ResponseError("READONLY You can't write against a read only replica.")
        self.assertEqual(self.outcome(readonly), (503, "channels unavailable: Redis not serving writes (READONLY)", True))
        loading = txredisapi.ResponseError("LOADING Redis is loading the dataset in memory")
        self.assertEqual(self.outcome(loading)[0], 503)

    def test_other_errors_stay_what_they_are(self) -> None:
        """
        A script error is a defect, not an outage: it is not hidden as 503.
        """
        wrong = txredisapi.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value")
        self.assertIsInstance(self.outcome(wrong), Failure)


class SharedPresenceFilterTests(unittest.TestCase):
    def test_announcements_from_redis_reach_only_members_who_may_see_them(self) -> None:
        """
        A join or leave that Redis announces goes out through the same
        fan-out as the memory engine's, so the broker's presence filter
        (the token's presence grant, with --auth jwt) applies to it too.
        """
        from wsheart.channels.broker import ChannelSettings, Subscriber
        from wsheart.channels.redis.broker import RedisBroker

        from .memory import FakeConnection

        broker = RedisBroker(Clock(), ChannelSettings(), store=None)  # type: ignore[arg-type]
        channel = broker._channel("chat.a", create=True)
        assert channel is not None
        seer, blind = FakeConnection("seer"), FakeConnection("blind")
        for connection in (seer, blind):
            channel.subscribers[connection.connection_id] = Subscriber(connection, connection.connection_id, None)
        broker.presence_visible = lambda connection, name: connection is seer and name == "chat.a"
        broker._presence_announced("chat.a", "join", '{"id":"other.c1"}')
        self.assertEqual(seer.take(), [{"op": "join", "channel": "chat.a", "client": {"id": "other.c1"}}])
        self.assertEqual(blind.take(), [])


class ScriptedRedis:
    """
    Just enough of a txredisapi connection for L{RedisStore}: each C{eval}
    answers with the next Deferred the test hands out.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[Any], list[Any]]] = []
        self.replies: list[Any] = []

    def eval(self, script: str, keys: list[Any], args: list[Any]) -> Any:
        from twisted.internet import defer

        self.calls.append((script, keys, args))
        d: Any = defer.Deferred()
        self.replies.append(d)
        return d


class PublishDeadlineTests(unittest.TestCase):
    def test_a_publish_answers_within_one_timeout_in_all(self) -> None:
        """
        A publish whose script took most of the timeout waits for its own
        delivery only for what is left of it: the answer comes one timeout
        after the publish began (it came after two).
        """
        from wsheart.channels.broker import Broker, ChannelSettings, Position
        from wsheart.channels.redis.broker import RedisBroker, _Listening
        from wsheart.channels.redis.store import RedisStore

        clock = Clock()
        redis = ScriptedRedis()
        settings = ChannelSettings()
        broker = RedisBroker(clock, settings, RedisStore(redis, clock, settings, timeout=2.0))
        # A local subscriber, listening and ready at 7/3, so the publish
        # waits for its own delivery.
        broker._listening["news"] = _Listening(ready=True)
        Broker.subscribe(broker, "c1", type("Connection", (), {"sendMessage": lambda *a: None})(), "news")
        channel = broker._channels["news"]
        channel.epoch, channel.seq = "7", 3
        answers: list[Any] = []
        broker.publish("news", {"n": 4}).addBoth(answers.append)
        clock.advance(1.5)
        redis.replies[0].callback([4, "7", 0, 0])  # the script answers after 1.5 s
        self.assertEqual(answers, [], "waiting for its delivery")
        clock.advance(0.49)
        self.assertEqual(answers, [])
        clock.advance(0.02)
        self.assertEqual(answers, [Position("7", 4)], "at 2.0 s: the timeout, counted from the publish")
