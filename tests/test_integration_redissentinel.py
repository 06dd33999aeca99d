"""
Integration tests of the Redis engine behind Redis Sentinel
(C{--redis redis+sentinel://...}): a real master, a real replica and a
real Sentinel on 127.0.0.1 (each on a free port, stopped by pid), and the
engine's connections as the daemon runs them (L{RedisConnections}).
"""

from __future__ import annotations

from typing import Any

import txredisapi
from twisted.internet import reactor
from twisted.trial import unittest

from wsheart.channels.broker import ChannelError, ChannelSettings
from wsheart.channels.redis.address import RedisAddress
from wsheart.channels.redis.broker import RedisBroker
from wsheart.channels.redis.connections import RedisConnections
from wsheart.channels.redis.store import RedisStore

from .loopback import RedisServer, SentinelServer, async_test, sleep, wait_until
from .memory import FakeConnection


def messages(connection: FakeConnection) -> list[dict[str, Any]]:
    return [f for f in connection.frames() if f["op"] == "message"]


class SentinelTests(unittest.TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.master = RedisServer(self)
        self.replica = RedisServer(self, "--replicaof", "127.0.0.1", str(self.master.port))
        self.sentinel = SentinelServer(self, self.master)

    async def engine(self) -> RedisBroker:
        settings = ChannelSettings()
        broker = RedisBroker(reactor, settings, RedisStore(None, reactor, settings, prefix="t", timeout=1.0))
        address = RedisAddress.parse(f"redis+sentinel://127.0.0.1:{self.sentinel.port}/{self.sentinel.service}")
        connections = RedisConnections(broker, address, reactor)
        connections.startService()
        self.addCleanup(connections.stopService)
        await wait_until(self, lambda: broker.pubsub is not None, timeout=20)
        return broker

    async def command(self, port: int, *args: str) -> Any:
        connection = await txredisapi.Connection("127.0.0.1", port, reconnect=False, convertNumbers=False)
        try:
            return await connection.execute_command(*args)
        finally:
            await connection.disconnect()

    async def sentinel_command(self, *args: str) -> Any:
        return await self.command(self.sentinel.port, *args)

    async def master_port(self) -> int:
        _, port = await self.sentinel_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.sentinel.service)
        return int(port)

    async def publish_until_it_works(self, broker: RedisBroker, data: Any, within: float = 30.0) -> None:
        deadline = reactor.seconds() + within
        while True:
            try:
                await broker.publish("news", data)
                return
            except ChannelError as e:
                self.assertEqual(e.code, 503)  # Redis unavailable meanwhile, nothing else
                if reactor.seconds() > deadline:
                    self.fail(f"no publish went through within {within} s of the failover")
                await sleep(0.2)

    @async_test
    async def test_master_found_through_sentinel_and_again_after_failover(self) -> None:
        """
        The engine connects to the master Sentinel names; after a failover
        (SENTINEL FAILOVER: the replica becomes master, Sentinel closes the
        old master's clients) both connections find the new master by
        themselves: publishes go through again and the subscriber gets
        every message once, in seq order, in the same epoch (the replica
        had the history).
        """
        broker = await self.engine()
        connection = FakeConnection("s")
        subscribed = await broker.subscribe("s", connection, "news")
        await broker.publish("news", "before")
        await wait_until(self, lambda: len(messages(connection)) == 1)
        self.assertEqual(await self.master_port(), self.master.port)

        # The replica has everything, and Sentinel knows it, before the failover.
        async def replica_ready() -> bool:
            replicas = await self.sentinel_command("SENTINEL", "REPLICAS", self.sentinel.service)
            return any(
                dict(zip(r[::2], r[1::2])).get("master-link-status") == "ok" and dict(zip(r[::2], r[1::2])).get("flags") == "slave"
                for r in replicas
            )

        for _ in range(150):
            if await replica_ready():
                break
            await sleep(0.2)
        else:
            self.fail("Sentinel never saw the replica")
        replica = await txredisapi.Connection("127.0.0.1", self.replica.port, reconnect=False, convertNumbers=False)
        self.addCleanup(replica.disconnect)
        for _ in range(100):
            if await replica.execute_command("EXISTS", "t:{news}:h"):
                break
            await sleep(0.1)
        else:
            self.fail("the history never reached the replica")
        await self.sentinel_command("SENTINEL", "FAILOVER", self.sentinel.service)
        for _ in range(150):
            if await self.master_port() == self.replica.port:
                break
            await sleep(0.2)
        else:
            self.fail("the failover did not happen")

        # Sentinel names the new master first, then turns the old one into
        # its replica (and closes the old one's clients): publish only then,
        # so that the message can only go through the new master.
        for _ in range(150):
            role = await self.command(self.master.port, "ROLE")  # a new connection: Sentinel closes the old ones
            if role[0] in ("slave", b"slave"):
                break
            await sleep(0.2)
        else:
            self.fail("the old master never became a replica")
        await self.publish_until_it_works(broker, "after")
        await wait_until(self, lambda: messages(connection)[-1:] and messages(connection)[-1]["data"] == "after", timeout=30)
        got = messages(connection)
        self.assertEqual([m["seq"] for m in got], list(range(1, len(got) + 1)), "a gap or a duplicate across the failover")
        self.assertEqual({m["epoch"] for m in got}, {subscribed.position.epoch})
        self.assertEqual(got[0]["data"], "before")
