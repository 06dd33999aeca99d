"""
Integration tests of L{wsheart.channels.redis.store} against a real
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

from wsheart.channels.broker import ChannelSettings, Position
from wsheart.channels.redis.presence import RedisPresence
from wsheart.channels.redis.store import RedisStore

from .loopback import RedisServer, async_test, sleep, wait_until


async def listen(test: unittest.TestCase, port: int, channels: list[str]) -> list[tuple[Any, Any]]:
    """
    What Redis announces on C{channels}, as (channel, message), heard on a
    pub/sub connection of the test's own (closed when the test ends).
    """
    heard: list[tuple[Any, Any]] = []

    class Listener(txredisapi.SubscriberProtocol):
        def messageReceived(self, pattern: Any, channel: Any, message: Any) -> None:
            heard.append((channel, message))

    factory = txredisapi.SubscriberFactory()
    factory.protocol = Listener
    factory.reconnect = False
    factory.startConnecting(TCP4ClientEndpoint(reactor, "127.0.0.1", port))
    test.addCleanup(factory.disconnect)
    listener = await factory.deferred
    await listener.subscribe(channels)
    return heard


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
        heard = await listen(self, self.server.port, [store.key("news")])
        position = (await store.publish("news", '{"x":1}')).position
        await wait_until(self, lambda: heard)
        self.assertEqual(heard, [("t:{news}", f"m{position.epoch}:1:" + '{"x":1}')])

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

    @async_test
    async def test_redis_behind_the_floor_starts_a_new_epoch(self) -> None:
        """
        Redis restored from an older snapshot: the channel's seq went back
        from 5 to 2 under the same epoch.  A publish or read that brings
        the highest position its process has seen (the floor, 5) starts a
        new epoch instead of handing out 3, 4 and 5 a second time (it
        did: seq 301 went back to 150 and 151 positions were acknowledged
        twice); a floor Redis is not behind changes nothing.
        """
        store = await self.connect()
        for i in range(5):
            last = (await store.publish("news", str(i))).position
        self.assertFalse((await store.publish("news", "6", floor=last)).rolled_back, "Redis ahead of the floor")
        floor = Position(last.epoch, 6)
        # What restoring a snapshot taken at seq 2 leaves.
        await self.redis.execute_command("HSET", store.key("news", "m"), "s", "2")
        await self.redis.execute_command("XTRIM", store.key("news", "h"), "MINID", "0-0")
        published = await store.publish("news", '"after the restore"', floor=floor)
        self.assertTrue(published.rolled_back)
        self.assertNotEqual(published.position.epoch, last.epoch)
        self.assertEqual(published.position.seq, 1)
        self.assertEqual((await store.read("news", 0)).entries, ((1, '"after the restore"'),))
        # The same found by a read (a process listening again after Redis restarted).
        await self.redis.execute_command("HSET", store.key("other", "m"), "e", "old", "s", "2")
        read = await store.read("other", 0, start_epoch=True, entries=False, floor=Position("old", 9))
        self.assertTrue(read.rolled_back)
        self.assertNotIn(read.epoch, (None, "old"))
        self.assertEqual(read.seq, 0)
        self.assertFalse((await store.read("other", 0, floor=Position("old", 9))).rolled_back, "a new epoch: the floor is stale")

    @async_test
    async def test_keys_expire_with_the_history_age(self) -> None:
        """
        A channel's meta key lives as long as its history (at least the
        60 s of an idempotency key), not a day: a channel only subscribed
        to, or published to once, leaves nothing after that.  An
        idempotency key lives at least its promised 60 s.
        """
        store = await self.connect(ChannelSettings(history_age=120))
        await store.read("quiet", 0, start_epoch=True, entries=False)
        await store.publish("news", "1", idempotency_key="k")
        for key in (store.key("quiet", "m"), store.key("news", "m"), store.key("news", "h")):
            ttl = await self.redis.execute_command("TTL", key)
            self.assertTrue(115 <= int(ttl) <= 122, (key, ttl))
        self.assertGreaterEqual(int(await self.redis.execute_command("PTTL", store.key("news", "i:k"))), 60_000)
        short = RedisStore(self.redis, reactor, ChannelSettings(history_age=5), prefix="s")
        await short.publish("news", "1", idempotency_key="k")
        self.assertTrue(59 <= int(await self.redis.execute_command("TTL", short.key("news", "m"))) <= 61)
        self.assertGreaterEqual(int(await self.redis.execute_command("PTTL", short.key("news", "i:k"))), 60_000)


class PresenceKeysTests(unittest.TestCase):
    """
    L{RedisPresence}'s keys: they shrink as members leave and expire unless
    a live process refreshes them; a paused process is not swept once it
    beats again, and learns when it was.
    """

    timeout = 30

    async def presence(self, node: str = "a", dead_after: float = 10.0) -> RedisPresence:
        if not hasattr(self, "server"):
            self.server = RedisServer(self)
            self.redis = await txredisapi.Connection("127.0.0.1", self.server.port, reconnect=False, convertNumbers=False)
            self.addCleanup(self.redis.disconnect)
        return RedisPresence(RedisStore(self.redis, reactor, ChannelSettings(), prefix="t"), node, dead_after)

    @async_test
    async def test_the_channel_set_shrinks_and_keys_expire(self) -> None:
        """
        A process's channel set loses a channel with its last member there
        (it grew by every channel ever joined, with no TTL); presence keys
        carry a TTL that the process's beat renews, with the meta keys of
        its channels (only lengthened, never created).
        """
        presence = await self.presence()
        await presence.join("room", "a.1", '{"id":"a.1"}')
        await presence.join("room", "a.2", '{"id":"a.2"}')
        await presence.join("hall", "a.1", '{"id":"a.1"}')
        channels = "t:node:a:ch"
        for key in (channels, "t:{room}:p"):
            self.assertEqual(int(await self.redis.execute_command("TTL", key)), presence.key_ttl)
        await presence.leave("room", "a.1", last=False)
        self.assertEqual(sorted(await self.redis.smembers(channels)), ["hall", "room"])
        await presence.leave("room", "a.2", last=True)
        self.assertEqual(list(await self.redis.smembers(channels)), ["hall"], "left by its last member here")
        # Refreshed: presence and the process's set, and a meta key only lengthened.
        await self.redis.execute_command("EXPIRE", "t:{hall}:p", 5)
        await self.redis.execute_command("HSET", "t:{hall}:m", "e", "x", "s", 1)
        await self.redis.execute_command("EXPIRE", "t:{hall}:m", 5)
        await presence.refresh(["hall", "gone"])
        self.assertEqual(int(await self.redis.execute_command("TTL", "t:{hall}:p")), presence.key_ttl)
        self.assertGreaterEqual(int(await self.redis.execute_command("TTL", "t:{hall}:m")), 60)
        self.assertEqual(int(await self.redis.execute_command("EXISTS", "t:{gone}:m")), 0, "no epoch made up")

    @async_test
    async def test_a_paused_process_is_not_swept_once_it_beats_and_learns_it_was(self) -> None:
        """
        A sweep of a process that beat again since it was found silent
        does nothing; one that was swept learns it from its next beat
        (which fires True), so that it registers its members again.
        """
        a = await self.presence("a", dead_after=0.3)
        b = await self.presence("b", dead_after=0.3)
        self.assertTrue(await a.beat(), "the first beat: not in Redis yet")
        self.assertFalse(await a.beat())
        await a.join("room", "a.1", '{"id":"a.1"}')
        await sleep(0.4)
        # B found A silent, but A beats before B's sweep runs: A stays.
        silent = await self.redis.execute_command("ZRANGEBYSCORE", "t:nodes", "-inf", f"{reactor.seconds() - 0.3:.3f}")
        self.assertEqual(silent, ["a"])
        await a.beat()
        await b._sweep_all(silent, f"{reactor.seconds() - 0.3:.3f}")
        self.assertEqual(list(await self.redis.hkeys("t:{room}:p")), ["a.1"])
        # Silent past the bound and swept: A's next beat says it was missing.
        await sleep(0.4)
        await b.beat()
        self.assertEqual(list(await self.redis.hkeys("t:{room}:p")), [])
        self.assertTrue(await a.beat())

    @async_test
    async def test_reconcile_makes_the_members_in_redis_the_local_ones(self) -> None:
        """
        After the command connection was away, this process's members in
        Redis become exactly its local ones: a member that left meanwhile
        (its leave failed at once) leaves now, announced; the others of
        this process and other processes' members stay.
        """
        a = await self.presence("a")
        b = await self.presence("b")
        for cid in ("a.1", "a.2"):
            await a.join("room", cid, json.dumps({"id": cid}))
        await a.join("hall", "a.3", '{"id":"a.3"}')
        await b.join("room", "b.1", '{"id":"b.1"}')
        heard = await listen(self, self.server.port, ["t:{room}", "t:{hall}"])
        self.assertEqual(await a.reconcile([("room", "a.1")]), 2)
        self.assertEqual(sorted(await self.redis.hkeys("t:{room}:p")), ["a.1", "b.1"])
        self.assertEqual(list(await self.redis.hkeys("t:{hall}:p")), [])
        self.assertEqual(list(await self.redis.smembers("t:node:a:ch")), ["room"])
        await wait_until(self, lambda: len(heard) == 2)
        self.assertEqual(sorted(heard), [("t:{hall}", 'l{"id":"a.3"}'), ("t:{room}", 'l{"id": "a.2"}')])
        self.assertEqual(await a.reconcile([("room", "a.1")]), 0, "nothing more to do")
