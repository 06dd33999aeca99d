"""
Integration tests of the Redis engine's broker (L{wsheart.channels.redis.broker}):
two brokers - two wsheart processes, as far as Redis can tell - sharing one
real redis-server on 127.0.0.1 (one per test, stopped by pid).
"""

from __future__ import annotations

import os
import re
import signal
from typing import Any, Optional

import txredisapi
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.trial import unittest

from wsheart.channels.broker import ChannelError, ChannelSettings, Position
from wsheart.channels.redis.broker import RedisBroker
from wsheart.channels.redis.connections import command_factory, pubsub_factory
from wsheart.channels.redis.presence import RedisPresence
from wsheart.channels.redis.store import RedisStore
from wsheart.metrics import ServerMetrics

from .loopback import RedisServer, async_test, sleep, wait_until
from .memory import FakeConnection


def seqs(connection: FakeConnection) -> list[int]:
    return [f["seq"] for f in connection.frames() if f["op"] == "message"]


class RedisBrokerCase(unittest.TestCase):
    """
    A redis-server per test, and brokers on it as processes have them.
    """

    timeout = 60

    def setUp(self) -> None:
        self.server = RedisServer(self)

    async def broker(
        self, settings: ChannelSettings = ChannelSettings(), timeout: float = 2.0, node: Optional[str] = None, dead_after: float = 60
    ) -> RedisBroker:
        """
        A broker as one process has it; with C{node}, its presence is
        shared through Redis under that node name.
        """
        commands_factory = command_factory("test")
        commands_factory.startConnecting(TCP4ClientEndpoint(reactor, "127.0.0.1", self.server.port))
        self.addCleanup(commands_factory.disconnect)
        commands = commands_factory.handler
        store = RedisStore(commands, reactor, settings, prefix="t", timeout=timeout)
        presence = RedisPresence(store, node, dead_after) if node is not None else None
        broker = RedisBroker(reactor, settings, store, presence)
        factory = pubsub_factory(broker)
        factory.startConnecting(TCP4ClientEndpoint(reactor, "127.0.0.1", self.server.port))
        self.addCleanup(factory.disconnect)
        await wait_until(self, lambda: broker.pubsub is not None)
        return broker

    async def subscribe(self, broker: RedisBroker, cid: str, channel: str = "news", since: Any = None) -> tuple[FakeConnection, Any]:
        connection = FakeConnection(cid)
        result = await broker.subscribe(cid, connection, channel, since=since)
        for frame in result.missed:
            connection.send_text(frame)
        return connection, result



class RedisBrokerTests(RedisBrokerCase):
    @async_test
    async def test_publish_on_one_process_reaches_the_other(self) -> None:
        """
        A subscriber on A gets what is published on B and on A, once, in
        seq order, in the epoch its subscribe was told.
        """
        a, b = await self.broker(), await self.broker()
        connection, subscribed = await self.subscribe(a, "a1")
        for i in range(5):
            await (b if i % 2 else a).publish("news", {"n": i})
        await wait_until(self, lambda: len(seqs(connection)) == 5)
        self.assertEqual(seqs(connection), [1, 2, 3, 4, 5])
        self.assertEqual({f["epoch"] for f in connection.frames()}, {subscribed.position.epoch})
        self.assertEqual([f["data"]["n"] for f in connection.frames()], [0, 1, 2, 3, 4])

    @async_test
    async def test_one_process_publishes_in_send_order(self) -> None:
        """
        Publishes sent one after the other without waiting (one client's
        frames) get seqs in the order they were sent.
        """
        a = await self.broker()
        positions = await defer.gatherResults([defer.ensureDeferred(a.publish("news", i)) for i in range(200)])
        self.assertEqual([p.seq for p in positions], list(range(1, 201)))

    @async_test
    async def test_recovery_on_another_process(self) -> None:
        """
        A client that saw seq 3 on A and comes back on B with since gets
        exactly 4-6 from the shared history, then live messages.
        """
        a, b = await self.broker(), await self.broker()
        first, _ = await self.subscribe(a, "c1")
        for i in range(3):
            await a.publish("news", i)
        await wait_until(self, lambda: len(seqs(first)) == 3)
        position = Position(first.frames()[-1]["epoch"], 3)
        a.remove_connection("c1")
        for i in range(3, 6):
            await a.publish("news", i)
        again, result = await self.subscribe(b, "c1", since=position)
        self.assertTrue(result.recovered)
        self.assertEqual(seqs(again), [4, 5, 6])
        await a.publish("news", 6)
        await wait_until(self, lambda: seqs(again)[-1:] == [7])
        self.assertEqual(seqs(again), [4, 5, 6, 7], "no gap and no duplicate at the seam")

    @async_test
    async def test_a_client_from_a_process_ahead_of_this_one_recovers(self) -> None:
        """
        A client that saw seq 3 on A comes back on B before B has the last
        two messages from pub/sub (held here): B waits until it has them,
        answers recovered at 3, and sends neither again (it answered "not
        recovered", then sent 2 and 3 a second time: the chaos run's
        duplicates).
        """
        a, b = await self.broker(), await self.broker()
        first, _ = await self.subscribe(a, "c1")
        watcher, _ = await self.subscribe(b, "w1")
        await a.publish("news", 0)
        await wait_until(self, lambda: seqs(watcher) == [1])
        held: list[tuple[Any, Any]] = []
        announced = b.announced
        b.announced = lambda key, message: held.append((key, message))  # type: ignore[method-assign]
        for i in (1, 2):
            await a.publish("news", i)
        await wait_until(self, lambda: seqs(first) == [1, 2, 3] and len(held) == 2)
        position = Position(first.frames()[-1]["epoch"], 3)
        a.remove_connection("c1")
        subscribing = b.subscribe("c1", FakeConnection("c1"), "news", since=position)
        answered: list[Any] = []
        subscribing.addBoth(lambda result: answered.append(result) or result)
        await sleep(0.1)
        self.assertEqual(answered, [], "waits for B to catch up")
        b.announced = announced  # type: ignore[method-assign]
        for key, message in held:
            b.announced(key, message)
        result = await subscribing
        self.assertEqual((result.recovered, result.position.seq, result.missed), (True, 3, ()))
        await a.publish("news", 3)
        connection = b._channels["news"].subscribers["c1"].connection
        await wait_until(self, lambda: seqs(connection) == [4])

    @async_test
    async def test_gap_beyond_history_is_not_recovered(self) -> None:
        """
        A position older than the shared history recovers nothing.
        """
        a, b = await self.broker(ChannelSettings(history_size=3)), await self.broker(ChannelSettings(history_size=3))
        _, subscribed = await self.subscribe(a, "x")
        for i in range(6):
            await a.publish("news", i)
        _, result = await self.subscribe(b, "y", since=Position(subscribed.position.epoch, 1))
        self.assertFalse(result.recovered)
        self.assertEqual(result.position.seq, 6)

    @async_test
    async def test_idempotent_publish_answered_on_any_process(self) -> None:
        """
        A retried publish with its Idempotency-Key through another process
        is answered with the first position; subscribers get it once.
        """
        a, b = await self.broker(), await self.broker()
        connection, _ = await self.subscribe(a, "s")
        first = await a.publish("news", "deploy", idempotency_key="k")
        again = await b.publish("news", "deploy", idempotency_key="k")
        self.assertEqual(first, again)
        await sleep(0.2)
        self.assertEqual(seqs(connection), [1])

    @async_test
    async def test_pubsub_reconnect_catches_up(self) -> None:
        """
        A's pub/sub connection is killed; what B publishes meanwhile
        reaches A's subscriber after the reconnect, from history, exactly
        once and in order, followed by live messages.
        """
        a, b = await self.broker(), await self.broker()
        connection, _ = await self.subscribe(a, "s")
        await b.publish("news", 0)
        await wait_until(self, lambda: seqs(connection) == [1])
        killer = await txredisapi.Connection("127.0.0.1", self.server.port, reconnect=False, convertNumbers=False)
        self.addCleanup(killer.disconnect)
        lost = a.pubsub
        await killer.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        await wait_until(self, lambda: a.pubsub is not lost and a.pubsub is not None, timeout=20)
        # b's listener reconnects too; publish once both listen again.
        for i in range(1, 4):
            await b.publish("news", i)
        await wait_until(self, lambda: len(seqs(connection)) >= 4, timeout=20)
        self.assertEqual(seqs(connection), [1, 2, 3, 4])

    @async_test
    async def test_messages_lost_on_pubsub_are_repaired(self) -> None:
        """
        A jump in seq (a message that never arrived on pub/sub) is filled
        from history before the later message is delivered.
        """
        a = await self.broker()
        connection, subscribed = await self.subscribe(a, "s")
        await a.publish("news", "one")
        await wait_until(self, lambda: seqs(connection) == [1])
        # As if seq 1 had never arrived: the process delivered nothing yet.
        a._channels["news"].seq = 0
        connection.sent.clear()
        await a.publish("news", "two")
        await wait_until(self, lambda: seqs(connection) == [1, 2])

    @async_test
    async def test_gap_gone_from_history_is_told(self) -> None:
        """
        A gap whose start history no longer holds: the subscriber is told
        (an unsolicited "subscribed", recovered false, at the position the
        process goes on from), then gets what history still holds, in
        order, then live messages.
        """
        settings = ChannelSettings(history_size=3)
        a, b = await self.broker(settings), await self.broker(settings)
        connection, subscribed = await self.subscribe(a, "s")
        for i in range(6):
            await b.publish("news", i)
        await wait_until(self, lambda: seqs(connection)[-1:] == [6])
        # As if 2-6 had never arrived: history holds only 5 and 6 of them.
        a._channels["news"].seq = 1
        connection.sent.clear()
        await b.publish("news", 6)
        await wait_until(self, lambda: seqs(connection)[-1:] == [7])
        told, *messages = connection.frames()
        self.assertEqual(
            told,
            {"op": "subscribed", "channel": "news", "epoch": subscribed.position.epoch, "seq": 4, "recovered": False, "reason": "history lost"},
        )
        self.assertEqual([m["seq"] for m in messages], [5, 6, 7])
        self.assertEqual(a.gaps_told_total, 1)
        await b.publish("news", 7)
        await wait_until(self, lambda: seqs(connection)[-1:] == [8])

    @async_test
    async def test_redis_killed_and_restarted(self) -> None:
        """
        Redis killed (SIGKILL) and started again empty: the broker's
        connections come back by themselves, and the next publish starts a
        new epoch that the subscribers get - nothing stays stuck.
        """
        settings = ChannelSettings()
        commands = txredisapi.lazyConnection("127.0.0.1", self.server.port, reconnect=True, convertNumbers=False)
        self.addCleanup(commands.disconnect)
        broker = RedisBroker(reactor, settings, RedisStore(commands, reactor, settings, prefix="t", timeout=1.0))
        factory = pubsub_factory(broker)
        factory.startConnecting(TCP4ClientEndpoint(reactor, "127.0.0.1", self.server.port))
        self.addCleanup(factory.disconnect)
        await wait_until(self, lambda: broker.pubsub is not None)
        connection, subscribed = await self.subscribe(broker, "s")
        await broker.publish("news", "before")
        await wait_until(self, lambda: seqs(connection) == [1])
        self.server.kill()
        await wait_until(self, lambda: broker.pubsub is None)
        with self.assertRaises(ChannelError):
            await broker.publish("news", "while gone")
        self.server.start()
        await wait_until(self, lambda: broker.pubsub is not None, timeout=30)
        position = None
        for _ in range(50):  # the command connection reconnects on its own schedule
            try:
                position = await broker.publish("news", "after")
                break
            except ChannelError:
                await sleep(0.2)
        assert position is not None
        self.assertNotEqual(position.epoch, subscribed.position.epoch, "Redis lost everything: a new epoch")
        await wait_until(self, lambda: len(seqs(connection)) == 2, timeout=10)
        told, last = connection.frames()[-2:]
        self.assertEqual(
            told,
            {"op": "subscribed", "channel": "news", "epoch": position.epoch, "seq": 0, "recovered": False, "reason": "new epoch"},
            "the subscriber is told before the new epoch's first message",
        )
        self.assertEqual((last["epoch"], last["seq"], last["data"]), (position.epoch, 1, "after"))

    @async_test
    async def test_slow_redis_fails_fast_then_catches_up(self) -> None:
        """
        A slow Redis (DEBUG SLEEP: every command waits): a publish and a
        new subscribe fail with 503 and a retry hint within the timeout,
        the engine's metrics show the failures, and the live subscriber
        then gets every message Redis took, once and in order - a timed
        out publish may still have happened, as documented.
        """
        a, b = await self.broker(timeout=0.5), await self.broker(timeout=10)
        metrics = ServerMetrics()
        metrics.track_channels(a)
        a.store.observe = metrics.track_engine_commands()
        connection, _ = await self.subscribe(a, "s")
        await a.publish("news", "before")
        await wait_until(self, lambda: seqs(connection) == [1])
        sleeper = await txredisapi.Connection("127.0.0.1", self.server.port, reconnect=False, convertNumbers=False)
        self.addCleanup(sleeper.disconnect)
        slept = sleeper.execute_command("DEBUG", "SLEEP", "2")
        await sleep(0.1)  # Redis is asleep now
        started = reactor.seconds()
        with self.assertRaises(ChannelError) as e:
            await a.publish("news", "timed out")
        self.assertEqual((e.exception.code, e.exception.retry_after), (503, 2))
        with self.assertRaises(ChannelError) as e:
            await a.subscribe("s2", FakeConnection("s2"), "other")
        self.assertEqual(e.exception.code, 503)
        self.assertLess(reactor.seconds() - started, 1.5, "each fails after the 0.5 s timeout, not after Redis")
        waited = b.publish("news", "waited")  # a patient process gets through once Redis answers
        await slept
        await waited
        await wait_until(self, lambda: len(seqs(connection)) == 3)
        self.assertEqual(seqs(connection), [1, 2, 3])
        self.assertEqual(sorted(f["data"] for f in connection.frames()), ["before", "timed out", "waited"])
        text = metrics.exposition().decode()
        self.assertIn("wsheart_channel_engine_command_failures_total 2.0\n", text)
        self.assertIn("wsheart_channel_engine_up 1.0\n", text, "pub/sub stayed connected: the engine is up")
        answered = float(re.search(r"^wsheart_channel_engine_command_seconds_count (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]
        self.assertGreaterEqual(answered, 3, "the subscribe's two commands and the publish before")
        self.assertEqual(list(a.subscriptions("s")), ["news"])

    @async_test
    async def test_redis_frozen_fails_fast_with_503(self) -> None:
        """
        Redis frozen (SIGSTOP): a publish and a new subscribe fail with 503
        within the timeout; the broker works again once Redis resumes.
        """
        a = await self.broker(timeout=0.5)
        await a.publish("news", "before")
        os.kill(self.server.pid, signal.SIGSTOP)
        resumed = []
        self.addCleanup(lambda: resumed or os.kill(self.server.pid, signal.SIGCONT))
        started = reactor.seconds()
        with self.assertRaises(ChannelError) as e:
            await a.publish("news", "during")
        self.assertEqual(e.exception.code, 503)
        with self.assertRaises(ChannelError) as e:
            await a.subscribe("s", FakeConnection("s"), "other")
        self.assertEqual(e.exception.code, 503)
        self.assertLess(reactor.seconds() - started, 3)
        self.assertEqual(list(a.subscriptions("s")), [], "a failed subscribe leaves nothing")
        os.kill(self.server.pid, signal.SIGCONT)
        resumed.append(True)
        await sleep(0.2)
        position = await a.publish("news", "after")
        self.assertGreaterEqual(position.seq, 2)


class SharedPresenceTests(RedisBrokerCase):
    """
    Presence through Redis: one member list for every process, joins and
    leaves announced once, a dead process's members swept by the others.
    """

    def ops(self, connection: FakeConnection) -> list[tuple[str, str]]:
        return [(f["op"], f["client"]["id"]) for f in connection.frames() if f["op"] in ("join", "leave")]

    @async_test
    async def test_members_and_events_across_processes(self) -> None:
        """
        A member on A and one on B: each subscribed frame lists both, A
        hears B's join and leave exactly once, the API's list is shared.
        """
        a, b = await self.broker(node="a"), await self.broker(node="b")
        ann = FakeConnection("a.c1")
        await a.subscribe("a.c1", ann, "room", name="ann")
        bob = FakeConnection("b.c1")
        joined = await b.subscribe("b.c1", bob, "room", name="bob")
        self.assertEqual(sorted(c["id"] for c in joined.presence), ["a.c1", "b.c1"])
        self.assertEqual(joined.presence_total, 2)
        await wait_until(self, lambda: self.ops(ann) == [("join", "b.c1")], timeout=3)
        self.assertEqual(sorted(c["id"] for c in await a.presence("room")), ["a.c1", "b.c1"])
        b.remove_connection("b.c1")
        b.remove_connection("b.c1")  # twice: still one leave
        await wait_until(self, lambda: self.ops(ann) == [("join", "b.c1"), ("leave", "b.c1")])
        await sleep(0.2)
        self.assertEqual(self.ops(ann), [("join", "b.c1"), ("leave", "b.c1")])
        self.assertEqual(self.ops(bob), [], "no event about oneself")
        self.assertEqual([c["id"] for c in await b.presence("room")], ["a.c1"])

    @async_test
    async def test_live_messages_wait_behind_recovered_ones_while_presence_is_read(self) -> None:
        """
        A subscriber recovering on A with since, while the shared member
        list is being read (held open here) and a message is published on
        B and reaches A: it gets the missed messages, then the live one -
        never the live one first (it did: the buffering of live messages
        ended before the member list was read, and ChannelSession then
        dropped the late recovered ones as duplicates).
        """
        a, b = await self.broker(node="a"), await self.broker(node="b")
        first = FakeConnection("a.c1")
        subscribed = await a.subscribe("a.c1", first, "room")
        for i in range(3):
            await b.publish("room", i)
        await wait_until(self, lambda: len(seqs(first)) == 3)
        a.remove_connection("a.c1")
        for i in range(3, 6):
            await b.publish("room", i)
        assert a.shared_presence is not None
        members = a.shared_presence.members
        held: list[defer.Deferred[Any]] = []

        def held_members(channel: str) -> "defer.Deferred[Any]":
            gate: defer.Deferred[Any] = defer.Deferred()
            held.append(gate)
            return members(channel).addCallback(lambda result: gate.addCallback(lambda _: result))

        a.shared_presence.members = held_members  # type: ignore[method-assign]
        again = FakeConnection("a.c2")
        answer = defer.ensureDeferred(a.subscribe("a.c2", again, "room", since=Position(subscribed.position.epoch, 3)))
        await wait_until(self, lambda: held)
        await b.publish("room", 6)
        await wait_until(self, lambda: a._channels["room"].seq == 7)
        held[0].callback(None)
        result = await answer
        self.assertTrue(result.recovered)
        for frame in result.missed:
            again.send_text(frame)
        self.assertEqual(seqs(again), [4, 5, 6, 7])

    @async_test
    async def test_member_list_too_slow_is_a_503(self) -> None:
        """
        A subscribe whose shared member list does not come in time (a
        Redis stall) is refused with the engine's 503 and its retry hint,
        and leaves no subscriber behind (the timeout escaped before, and
        the connection was closed with 1011).
        """
        a = await self.broker(node="a")
        assert a.shared_presence is not None
        members = a.shared_presence.members
        a.shared_presence.members = lambda channel: defer.fail(defer.TimeoutError("Redis too slow"))  # type: ignore[method-assign]
        with self.assertRaises(ChannelError) as caught:
            await a.subscribe("a.c1", FakeConnection("a.c1"), "room")
        self.assertEqual(caught.exception.code, 503)
        self.assertIsNotNone(caught.exception.retry_after)
        self.assertNotIn("a.c1", a._channels["room"].subscribers if "room" in a._channels else {})
        # Its join was recorded in Redis and is taken back.
        a.shared_presence.members = members  # type: ignore[method-assign]
        for _ in range(100):
            if not await a.presence("room"):
                break
            await sleep(0.02)
        self.assertEqual(await a.presence("room"), [])

    @async_test
    async def test_dead_process_members_leave_once(self) -> None:
        """
        B beats once and then dies (no more beats, its connections never
        close); after dead_after, the next beat of A or C sweeps it: its
        members leave, announced once, whoever sweeps.
        """
        a, b, c = [await self.broker(node=n, dead_after=0.5) for n in ("a", "b", "c")]
        watcher = FakeConnection("a.c1")
        await a.subscribe("a.c1", watcher, "room")
        for i in range(3):
            await b.subscribe(f"b.c{i}", FakeConnection(f"b.c{i}"), "room")
        await a.shared_presence.beat()
        await b.shared_presence.beat()
        await c.shared_presence.beat()
        await wait_until(self, lambda: len(self.ops(watcher)) == 3)
        await sleep(0.6)
        await defer.gatherResults([a.shared_presence.beat(), c.shared_presence.beat()])
        await wait_until(self, lambda: len(self.ops(watcher)) == 6)
        await sleep(0.2)
        leaves = [cid for op, cid in self.ops(watcher) if op == "leave"]
        self.assertEqual(sorted(leaves), ["b.c0", "b.c1", "b.c2"], "each leave once")
        self.assertEqual([m["id"] for m in await a.presence("room")], ["a.c1"])


class RedisOverV1Tests(unittest.TestCase):
    """
    wsheart.v1 frames on the Redis engine.
    """

    timeout = 60

    @async_test
    async def test_own_message_before_published_and_503_with_retry_after(self) -> None:
        """
        A subscribed publisher gets its own message before "published"
        (as on the memory engine); with Redis frozen a publish is an error
        frame 503 with retry_after, and the connection stays open.
        """
        from wsheart.channels.v1 import ChannelProtocolHandler

        case = RedisBrokerTests("test_publish_on_one_process_reaches_the_other")  # for its helpers
        case.server = RedisServer(self)
        case.addCleanup = self.addCleanup  # type: ignore[method-assign]
        broker = await case.broker(timeout=0.5)
        handler = ChannelProtocolHandler(broker)
        a = FakeConnection("a")
        await handler.message_received(a, '{"op":"subscribe","channel":"chat.x"}')
        await handler.message_received(a, '{"op":"publish","channel":"chat.x","data":"hi","ref":1}')
        self.assertEqual([f["op"] for f in a.frames()], ["subscribed", "message", "published"])
        os.kill(case.server.pid, signal.SIGSTOP)
        self.addCleanup(os.kill, case.server.pid, signal.SIGCONT)
        a.sent.clear()
        await handler.message_received(a, '{"op":"publish","channel":"chat.x","data":"x","ref":2}')
        [error] = a.frames()
        self.assertEqual((error["op"], error["code"], error["ref"], error["retry_after"]), ("error", 503, 2, 2))
        self.assertIsNone(a.closed)


class RedisAclUserTests(unittest.TestCase):
    """
    --redis redis://USER:PASSWORD@...: both of the engine's connections
    log in as the ACL user, against a real redis-server whose default user
    is off (the user name was dropped before, so the login failed and the
    engine stayed down).
    """

    timeout = 60

    @async_test
    async def test_both_connections_log_in_as_the_acl_user(self) -> None:
        from wsheart.channels.redis.address import RedisAddress
        from wsheart.channels.redis.connections import RedisConnections

        server = RedisServer(
            self, "--user", "default", "off", "--user", "wsh", "on", ">s3cret pass", "~*", "&*", "+@all"
        )
        settings = ChannelSettings()
        broker = RedisBroker(reactor, settings, RedisStore(None, reactor, settings, prefix="t", timeout=2.0))
        address = RedisAddress.parse(f"redis://wsh:s3cret%20pass@127.0.0.1:{server.port}/0")
        self.assertEqual((address.username, address.password), ("wsh", "s3cret pass"))
        connections = RedisConnections(broker, address, reactor)
        connections.startService()
        self.addCleanup(connections.stopService)
        await wait_until(self, lambda: broker.pubsub is not None)
        listener = FakeConnection("c1")
        await broker.subscribe("c1", listener, "news")
        await broker.publish("news", {"n": 1})
        await wait_until(self, lambda: seqs(listener) == [1])

    @async_test
    async def test_a_refused_login_is_tried_again(self) -> None:
        """
        The ACL user is disabled when the engine first connects (Redis
        refuses every login), and enabled a moment later: both connections
        come up on their own and a publish goes through (txredisapi gave
        up for good at the first refused login).
        """
        from wsheart.channels.redis.address import RedisAddress
        from wsheart.channels.redis.connections import RedisConnections

        server = RedisServer(self, "--user", "wsh", "off", ">pw", "~*", "&*", "+@all")
        settings = ChannelSettings()
        broker = RedisBroker(reactor, settings, RedisStore(None, reactor, settings, prefix="t", timeout=2.0))
        connections = RedisConnections(broker, RedisAddress.parse(f"redis://wsh:pw@127.0.0.1:{server.port}"), reactor)
        connections.startService()
        self.addCleanup(connections.stopService)
        await sleep(1.5)
        self.assertIsNone(broker.pubsub)
        admin = await txredisapi.Connection("127.0.0.1", server.port, reconnect=False)
        await admin.execute_command("ACL", "SETUSER", "wsh", "on")
        await admin.disconnect()
        await wait_until(self, lambda: broker.pubsub is not None, timeout=20)
        await self.publish_until_it_works(broker)

    async def publish_until_it_works(self, broker: RedisBroker) -> None:
        deadline = reactor.seconds() + 20
        while True:
            try:
                await broker.publish("news", {"n": 1})
                return
            except ChannelError as e:
                self.assertEqual(e.code, 503)
                if reactor.seconds() > deadline:
                    self.fail("the command connection did not come back")
                await sleep(0.2)


class FailFastTests(unittest.TestCase):
    """
    The engine as the daemon composes it (RedisConnections): while its
    command connection is down, a publish and a subscribe fail at once with
    the 503, instead of waiting out --redis-timeout in txredisapi's queue;
    /healthz's state names the connection that is down.
    """

    timeout = 60

    @async_test
    async def test_commands_fail_at_once_while_redis_is_down(self) -> None:
        from wsheart.channels.redis.address import RedisAddress
        from wsheart.channels.redis.connections import RedisConnections

        server = RedisServer(self)
        settings = ChannelSettings()
        broker = RedisBroker(reactor, settings, RedisStore(None, reactor, settings, prefix="t", timeout=3.0))
        connections = RedisConnections(broker, RedisAddress.parse(f"redis://127.0.0.1:{server.port}"), reactor)
        connections.startService()
        self.addCleanup(connections.stopService)
        await wait_until(self, lambda: broker.pubsub is not None and broker.store.connected())
        self.assertEqual(broker.engine_state()["redis"], "up")
        self.assertIsNone(broker.engine_state()["redis_last_success_seconds_ago"], "no command yet")
        await broker.publish("news", "before")
        self.assertLess(broker.engine_state()["redis_last_success_seconds_ago"], 1)
        server.kill()
        await wait_until(self, lambda: not broker.store.connected())
        self.assertEqual(broker.engine_state()["redis_commands"], "down")
        self.assertEqual(broker.engine_state()["redis"], "down")
        started = reactor.seconds()
        with self.assertRaises(ChannelError) as caught:
            await broker.publish("news", "while down")
        self.assertEqual(caught.exception.code, 503)
        with self.assertRaises(ChannelError) as caught:
            await broker.subscribe("s1", FakeConnection("s1"), "other")
        self.assertEqual(caught.exception.code, 503)
        self.assertLess(reactor.seconds() - started, 0.5, "at once, not after the 3 s timeout")
        server.start()
        await wait_until(self, lambda: broker.store.connected() and broker.pubsub is not None, timeout=30)
        position = await broker.publish("news", "after")
        self.assertGreaterEqual(position.seq, 1)
