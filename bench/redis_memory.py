"""
How much Redis memory the Redis engine's keys take: per channel, per message
of history, per presence member and per idempotency key.

    .venv/bin/python bench/redis_memory.py            # N = 10000, K = 1000: about 10 s
    .venv/bin/python bench/redis_memory.py --quick    # N = 1000, K = 200

A redis-server of its own on a free 127.0.0.1 port (nothing persisted),
driven by wsheart's own engine code (RedisStore, RedisPresence over
txredisapi), so the keys are exactly the daemon's.  Each case starts from
FLUSHALL and reads INFO memory's used_memory before and after:

  (a) N channels only subscribed to (the first read gives a channel its
      epoch: one meta hash each);
  (b) N channels with one 100-byte JSON message each (meta hash + stream);
  (c) one channel, K messages, with the default history size (trimmed to
      it) and with one that keeps all K: bytes per message after the first;
  (d) N presence members of one channel: bytes per member after the first;
  (e) N publishes on one channel, each with its own idempotency key (a
      UUID), less the same N publishes without keys.

Also MEMORY USAGE of one key of each kind.  --redis-option NAME=VALUE tries
another redis-server setting (e.g. stream-node-max-bytes=1024).
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--channels", "-n", type=int, default=10000, help="N: channels, members, idempotency keys")
    p.add_argument("--messages", "-k", type=int, default=1000, help="K: messages on one channel in (c)")
    p.add_argument("--in-flight", type=int, default=100, help="commands pipelined at a time")
    p.add_argument("--quick", action="store_true", help="N = 1000, K = 200")
    p.add_argument("--redis-option", action="append", default=[], metavar="NAME=VALUE", help="repeatable")
    args = p.parse_args()
    if args.quick:
        args.channels, args.messages = 1000, 200
    args.redis_args = [a for o in args.redis_option for a in ("--" + o.partition("=")[0], o.partition("=")[2])]
    return args


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"redis-server (exit status {proc.poll()}) did not listen on {port} within {timeout} s")


def info(text: Any) -> dict[str, str]:
    text = text.decode() if isinstance(text, bytes) else str(text)
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line and not line.startswith("#"))


def payload(i: int) -> str:
    """A chat-like JSON message of exactly 100 bytes."""
    user = f"user{i % 100000:05d}"
    return json.dumps({"from": user, "text": "x" * (100 - len(json.dumps({"from": user, "text": ""})))})


async def measure(reactor: Any, args: argparse.Namespace, port: int) -> tuple[str, list, list]:
    from twisted.internet import defer, task
    import txredisapi
    from wsheart.channels.broker import ChannelSettings
    from wsheart.channels.redis.presence import RedisPresence
    from wsheart.channels.redis.store import RedisStore

    def connect() -> Any:
        return txredisapi.Connection("127.0.0.1", port, reconnect=False, convertNumbers=False)

    # No connection stays open across a reading: a client's query and reply
    # buffers grow with pipelined commands and Redis shrinks them only later,
    # in its cron, so they would count as data.  Memory is read by a new
    # connection, alone in Redis, as its first command: the reader's own
    # buffers are then the same at every reading.
    async def command(*words: Any) -> Any:
        conn = await connect()
        try:
            return await conn.execute_command(*words)
        finally:
            await conn.disconnect()

    # Twice, 0.15 s apart, until the same: the key tables grow by doubling
    # and are rehashed bit by bit, both sizes allocated until Redis's cron
    # (every 0.1 s) finishes (64 KiB more at 10000 keys).
    async def used() -> int:
        last = None
        for _ in range(500):
            fields = info(await command("INFO"))
            alone = fields["connected_clients"] == "1"  # else a closed client is not freed yet
            if alone and fields["used_memory"] == last:
                return int(last)
            last = fields["used_memory"] if alone else None
            await task.deferLater(reactor, 0.15 if alone else 0.01, lambda: None)
        raise RuntimeError("Redis's memory did not settle")

    async def each(count: int, one: Any) -> None:
        sem = defer.DeferredSemaphore(args.in_flight)
        await defer.gatherResults([sem.run(one, i) for i in range(count)], consumeErrors=True)

    async def after(work: Any, settings: Any) -> int:
        """used_memory after C{work(store, presence)} on a connection of its own."""
        conn = await connect()
        store = RedisStore(conn, reactor, settings, timeout=30.0)
        await work(store, RedisPresence(store, "node", 60.0))
        await conn.disconnect()
        return await used()

    n, k = args.channels, args.messages
    default, keep_all = ChannelSettings(), ChannelSettings(history_size=k)

    async def grown(work: Any, first: Any = None, settings: Any = default) -> int:
        """From FLUSHALL (and C{first}, when given): what C{work} adds."""
        await command("FLUSHALL", "SYNC")
        base = await (after(first, settings) if first else used())
        return await after(work, settings) - base

    names = RedisStore(None, reactor, default)  # for key names
    rows, samples = [], []  # (case, count, bytes each, total bytes), (key, MEMORY USAGE)

    def row(name: str, count: int, total: int) -> None:
        rows.append((name, count, total / count, total))

    async def sample(name: str, key: str) -> None:  # SAMPLES 0: every element (streams: Redis's estimate)
        samples.append((name, int(await command("MEMORY", "USAGE", key, "SAMPLES", "0"))))

    def member(presence: Any, i: int) -> Any:
        return presence.join("chat.p", f"node.{i}", json.dumps({"id": f"node.{i}", "name": f"user{i}"}))

    # A warm-up: Redis keeps each script's body in its script cache, and the
    # first burst of script calls leaves about 24 KB it keeps (case (a) ran
    # twice was that much larger the first time); neither is data.
    async def warm(st: Any, pr: Any) -> None:
        await each(args.in_flight * 10, lambda i: st.read(f"warm{i}", start_epoch=True, entries=False))
        await st.publish("warm", payload(0), idempotency_key="warm")
        await pr.join("warm", "node.0", "{}")

    await after(warm, default)
    row("(a) channel, subscribed only", n, await grown(lambda st, pr: each(n, lambda i: st.read(f"chat.c{i}", start_epoch=True, entries=False))))
    await sample("meta hash, subscribed only", names.key("chat.c0", "m"))
    row("(b) channel, one 100 B message", n, await grown(lambda st, pr: each(n, lambda i: st.publish(f"chat.c{i}", payload(i)))))
    await sample("meta hash, after a publish", names.key("chat.c0", "m"))
    await sample("history stream, 1 message", names.key("chat.c0", "h"))

    # (c): the first message pays for the channel (case b), so what each
    # next one adds is the cost of history; with the default size the K - 1
    # more publishes leave history_size - 1 more entries.
    first = lambda st, pr: st.publish("chat.c", payload(0))  # noqa: E731
    for settings in (default, keep_all):
        kept = min(k, settings.history_size)
        total = await grown(lambda st, pr: each(k - 1, lambda i: st.publish("chat.c", payload(i + 1))), first, settings)
        row(f"(c) message, history size {settings.history_size}: {k} sent, {kept} kept", kept - 1, total)
        await sample(f"history stream, {kept} kept of {k}", names.key("chat.c", "h"))

    # (d): the first join makes the hash and the process's channel set.
    total = await grown(lambda st, pr: each(n - 1, lambda i: member(pr, i + 1)), lambda st, pr: member(pr, 0))
    row("(d) presence member, one channel", n - 1, total)
    await sample(f"presence hash, {n} members", names.key("chat.p", "p"))

    # (e): the same N publishes without and with keys; the history is the
    # same (trimmed to the default size), so the difference is the keys.
    keys = [str(uuid.uuid4()) for _ in range(n)]
    without = await grown(lambda st, pr: each(n, lambda i: st.publish("chat.c", payload(i))))
    total = await grown(lambda st, pr: each(n, lambda i: st.publish("chat.c", payload(i), idempotency_key=keys[i])))
    row("(e) idempotency key (UUID), over (c)", n, total - without)
    await sample("idempotency hash", names.key("chat.c", f"i:{keys[0]}"))
    return info(await command("INFO", "server"))["redis_version"], rows, samples


def main() -> int:
    args = parse_args()
    port = free_port()
    directory = tempfile.mkdtemp(prefix="wsheart-redis-memory-")
    redis = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", directory, "--loglevel", "warning", *args.redis_args],
        stdout=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    box: dict = {}
    started = time.monotonic()
    try:
        wait_port(port, redis)
        from twisted.internet import defer, task

        try:
            task.react(lambda reactor: defer.ensureDeferred(measure(reactor, args, port)).addCallback(lambda r: box.update(result=r)))
        except SystemExit as e:  # react always exits
            if e.code:
                return int(e.code)
    finally:
        redis.terminate()  # only the server started here, by its pid
        try:
            redis.wait(5)
        except subprocess.TimeoutExpired:
            redis.kill()
            redis.wait(5)
        shutil.rmtree(directory, ignore_errors=True)
    version, rows, samples = box["result"]
    print(f"Redis memory of wsheart's Redis engine (redis-server {version}, N={args.channels}, K={args.messages}, "
          f"{time.strftime('%Y-%m-%d')}, {time.monotonic() - started:.0f} s{''.join(' ' + a for a in args.redis_args)})\n")  # fmt: skip
    print(f"{'case':<62} {'count':>7} {'bytes each':>11} {'total bytes':>12}")
    for case, count, each, total in rows:
        print(f"{case:<62} {count:>7} {each:>11.0f} {total:>12}")
    print(f"\n{'MEMORY USAGE of one key':<62} {'bytes':>7}")
    for key, size in samples:
        print(f"{key:<62} {size:>7}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
