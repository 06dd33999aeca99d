"""
Integration tests of L{wsheart.channels.redisstore} against a real
redis-server on 127.0.0.1 (one per test, stopped by pid): the publish
script's seq, epoch, history and idempotency, and its announcement.
"""

from __future__ import annotations

import json
from typing import Any

import txredisapi
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.trial import unittest

from wsheart.channels.broker import ChannelSettings
from wsheart.channels.redisstore import RedisStore

from .loopback import RedisServer, async_test, sleep, wait_until


class StoreTests(unittest.TestCase):
    timeout = 30

    async def connect(self, settings: ChannelSettings = ChannelSettings()) -> RedisStore:
        self.server = RedisServer(self)
        self.redis = await txredisapi.Connection("127.0.0.1", self.server.port, reconnect=False, convertNumbers=False)
        self.addCleanup(self.redis.disconnect)
        return RedisStore(self.redis, reactor, settings, prefix="t")

    @async_test
    async def test_seq_epoch_and_history(self) -> None:
        """
        Publishes get 1, 2, 3 in one epoch; the history read after a seq
        gives exactly the later messages, data as published.
        """
        store = await self.connect()
        positions = [(await store.publish("news", json.dumps({"n": i}, ensure_ascii=False))).position for i in range(3)]
        self.assertEqual([p.seq for p in positions], [1, 2, 3])
        self.assertEqual(len({p.epoch for p in positions}), 1)
        read = await store.read("news", 1)
        self.assertEqual((read.epoch, read.seq), (positions[0].epoch, 3))
        self.assertEqual(read.entries, ((2, '{"n": 1}'), (3, '{"n": 2}')))
        self.assertEqual((await store.read("never", 0)).epoch, None)

    @async_test
    async def test_history_is_bounded_by_size_and_age(self) -> None:
        """
        MAXLEN keeps the last history_size messages; messages older than
        the history age are not read back.
        """
        store = await self.connect(ChannelSettings(history_size=3, history_age=0.3))
        for i in range(5):
            await store.publish("news", str(i))
        read = await store.read("news", 0)
        self.assertEqual([seq for seq, _ in read.entries], [3, 4, 5])
        self.assertEqual(read.oldest(), 3)
        await sleep(0.4)
        read = await store.read("news", 0)
        self.assertEqual((read.seq, read.entries), (5, ()), "aged out; the position stays")

    @async_test
    async def test_idempotent_retry_publishes_once(self) -> None:
        """
        A retried publish with its key answers the first position and
        publishes (and announces) nothing.
        """
        store = await self.connect()
        first = await store.publish("news", '"deploy"', idempotency_key="k1")
        again = await store.publish("news", '"deploy"', idempotency_key="k1")
        self.assertEqual((again.position, again.duplicate, first.duplicate), (first.position, True, False))
        self.assertEqual([seq for seq, _ in (await store.read("news", 0)).entries], [1])

    @async_test
    async def test_two_publishers_never_share_a_seq(self) -> None:
        """
        Two connections publishing at once to one channel get distinct,
        gapless seqs: the script is atomic.
        """
        store = await self.connect()
        other_connection = await txredisapi.Connection("127.0.0.1", self.server.port, reconnect=False, convertNumbers=False)
        self.addCleanup(other_connection.disconnect)
        other = RedisStore(other_connection, reactor, ChannelSettings(), prefix="t")
        results = await defer.gatherResults([s.publish("busy", str(i)) for i in range(100) for s in (store, other)])
        self.assertEqual(sorted(r.position.seq for r in results), list(range(1, 201)))

    @async_test
    async def test_lost_meta_starts_a_new_epoch_and_clears_history(self) -> None:
        """
        If the channel's meta is lost (evicted, flushed), the next publish
        starts a new epoch and the stale history is dropped; a flushed
        script cache heals itself (NOSCRIPT).
        """
        store = await self.connect()
        old = (await store.publish("news", "1")).position
        await store.publish("news", "2")
        await self.redis.delete(store.key("news", "m"))
        await self.redis.execute_command("SCRIPT", "FLUSH")
        new = (await store.publish("news", "3")).position
        self.assertNotEqual(new.epoch, old.epoch)
        self.assertEqual(new.seq, 1)
        self.assertEqual((await store.read("news", 0)).entries, ((1, "3"),))

    @async_test
    async def test_publish_is_announced(self) -> None:
        """
        Every process listening on the channel's pub/sub channel hears
        "m" EPOCH ":" SEQ ":" DATA.
        """
        store = await self.connect()
        heard: list[Any] = []

        class Listener(txredisapi.SubscriberProtocol):
            def messageReceived(self, pattern: Any, channel: Any, message: Any) -> None:
                heard.append(message)

        factory = txredisapi.SubscriberFactory()
        factory.protocol = Listener
        factory.reconnect = False
        factory.startConnecting(TCP4ClientEndpoint(reactor, "127.0.0.1", self.server.port))
        self.addCleanup(factory.disconnect)
        listener = await factory.deferred
        await listener.subscribe(store.key("news"))
        position = (await store.publish("news", '{"x":1}')).position
        await wait_until(self, lambda: heard)
        self.assertEqual(heard, [f"m{position.epoch}:1:" + '{"x":1}'])

    @async_test
    async def test_a_stopped_redis_fails_fast(self) -> None:
        """
        Redis frozen (SIGSTOP): a publish fails within the store's timeout
        instead of hanging.
        """
        import os
        import signal

        store = await self.connect()
        store.timeout = 0.5
        os.kill(self.server.pid, signal.SIGSTOP)
        self.addCleanup(os.kill, self.server.pid, signal.SIGCONT)
        started = reactor.seconds()
        with self.assertRaises(defer.TimeoutError):
            await store.publish("news", "1")
        self.assertLess(reactor.seconds() - started, 2)
