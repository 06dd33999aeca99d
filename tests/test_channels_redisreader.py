"""
Unit tests of how the Redis engine reads its connections: everything one
read brings is parsed in that read's reactor turn (txredisapi on hiredis,
which wsheart depends on; its pure-Python parser took a turn per bulk
string), on in-memory transports.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

import txredisapi

from wsheart.channels.redisbroker import PubSubProtocol


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
