"""
What the Redis engine costs Redis: CPU per publish and per presence change,
and memory per history entry, for docs/scaling.md.

    flock /tmp/wsheart-bench.lock python3 bench/redis_cost.py       # about 30 s

A redis-server of its own (CPU 0, nothing persisted) and wsheart's own
engine code (RedisStore, RedisPresence, over txredisapi with hiredis, as
the daemon runs them; in this process on CPU 1): --publishes publishes of
a 64-byte payload spread over --channels channels, --in-flight at a time,
with one pub/sub connection listening on every channel (one wsheart
process with subscribers: each more listening process adds one message
per publish); then --members joins and as many leaves.  Redis's CPU comes
from /proc (its whole process: network and event loop included) and its
own accounting (INFO commandstats: time inside the scripts); memory from
INFO memory's used_memory before and after.  The payload is the
history-size default's worth per channel at most, so history is never
trimmed while it is measured.  Writes bench/results/redis_cost.json and
.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(REPO))

SERVER_CPU, CLIENT_CPU = 0, 1


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--publishes", type=int, default=20000)
    p.add_argument("--channels", type=int, default=200)
    p.add_argument("--members", type=int, default=10000)
    p.add_argument("--in-flight", type=int, default=100)
    p.add_argument("--json", default=str(BENCH / "results" / "redis_cost.json"))
    p.add_argument("--venv", default=str(BENCH / ".venv"))
    return p.parse_args()


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def info(text: Any) -> dict[str, str]:
    if isinstance(text, bytes):
        text = text.decode()
    out = {}
    for line in str(text).splitlines():
        if ":" in line and not line.startswith("#"):
            k, v = line.split(":", 1)
            out[k] = v.strip()
    return out


def script_usec(stats: dict[str, str]) -> tuple[int, int]:
    """
    Calls and microseconds inside EVAL/EVALSHA, from INFO commandstats.
    """
    calls = usec = 0
    for name in ("cmdstat_eval", "cmdstat_evalsha"):
        if name in stats:
            fields = dict(kv.split("=") for kv in stats[name].split(","))
            calls += int(fields["calls"])
            usec += int(fields["usec"])
    return calls, usec


async def measure(reactor: Any, args: argparse.Namespace, redis_pid: int, port: int) -> dict:
    from twisted.internet import defer
    from twisted.internet.endpoints import TCP4ClientEndpoint

    import txredisapi

    from wsheart.channels.broker import ChannelSettings
    from wsheart.channels.redis.connections import command_factory
    from wsheart.channels.redis.presence import RedisPresence
    from wsheart.channels.redis.store import RedisStore

    factory = command_factory("bench")
    factory.startConnecting(TCP4ClientEndpoint(reactor, "127.0.0.1", port))
    redis = factory.handler
    subscriber = txredisapi.SubscriberFactory()
    subscriber.startConnecting(TCP4ClientEndpoint(reactor, "127.0.0.1", port))
    listener = await subscriber.deferred
    settings = ChannelSettings()
    store = RedisStore(redis, reactor, settings, prefix="b", timeout=30.0)
    presence = RedisPresence(store, "n1", 60.0)
    channels = [f"bench.c{i}" for i in range(args.channels)]
    await listener.subscribe([store.key(c) for c in channels])
    await store.publish("bench.warm", json.dumps("warm"))
    await presence.join("bench.warm", "w", "{}")
    payload = json.dumps("x" * 62)  # 64 bytes of JSON

    async def run(count: int, one: Any) -> float:
        """
        Redis's CPU seconds for C{count} calls of C{one(i)}, C{--in-flight}
        at a time.
        """
        await redis.execute_command("CONFIG", "RESETSTAT")
        c0 = cpu_s(redis_pid)
        sem = defer.DeferredSemaphore(args.in_flight)
        await defer.gatherResults([sem.run(one, i) for i in range(count)], consumeErrors=True)
        await redis.ping()
        return cpu_s(redis_pid) - c0

    result: dict[str, Any] = {}
    m0 = int(info(await redis.execute_command("INFO", "memory"))["used_memory"])
    t0 = time.perf_counter()
    publish_cpu = await run(args.publishes, lambda i: store.publish(channels[i % len(channels)], payload))
    publish_wall = time.perf_counter() - t0
    m1 = int(info(await redis.execute_command("INFO", "memory"))["used_memory"])
    calls, usec = script_usec(info(await redis.execute_command("INFO", "commandstats")))
    result["publish"] = {
        "count": args.publishes,
        "redis_cpu_us_per_publish": round(publish_cpu * 1e6 / args.publishes, 1),
        "script_us_per_publish": round(usec / max(1, calls), 1),
        "publishes_per_s_one_client": round(args.publishes / publish_wall),
        "history_bytes_per_entry": round((m1 - m0) / args.publishes),
    }
    join_cpu = await run(args.members, lambda i: presence.join(channels[i % len(channels)], f"n1.c{i}", json.dumps({"id": f"n1.c{i}", "name": f"user{i}"})))
    calls_j, usec_j = script_usec(info(await redis.execute_command("INFO", "commandstats")))
    m2 = int(info(await redis.execute_command("INFO", "memory"))["used_memory"])
    leave_cpu = await run(args.members, lambda i: presence.leave(channels[i % len(channels)], f"n1.c{i}"))
    calls_l, usec_l = script_usec(info(await redis.execute_command("INFO", "commandstats")))
    result["presence"] = {
        "count": args.members,
        "redis_cpu_us_per_join": round(join_cpu * 1e6 / args.members, 1),
        "redis_cpu_us_per_leave": round(leave_cpu * 1e6 / args.members, 1),
        "script_us_per_join": round(usec_j / max(1, calls_j), 1),
        "script_us_per_leave": round(usec_l / max(1, calls_l), 1),
        "bytes_per_member": round((m2 - m1) / args.members),
    }
    await subscriber.disconnect()
    await factory.disconnect()
    return result


def markdown(r: dict) -> str:
    p, m = r["publish"], r["presence"]
    return "\n".join([
        f"`python3 bench/redis_cost.py` (commit {r['commit']}, {r['date']}; Redis {r['redis_version']}, one listening process)",
        "",
        "| operation | count | Redis CPU us each (process) | inside the script us each | memory each |",
        "|---|---:|---:|---:|---:|",
        f"| publish (64-byte data) | {p['count']} | {p['redis_cpu_us_per_publish']} | {p['script_us_per_publish']} | {p['history_bytes_per_entry']} B of history |",
        f"| presence join | {m['count']} | {m['redis_cpu_us_per_join']} | {m['script_us_per_join']} | {m['bytes_per_member']} B per member |",
        f"| presence leave | {m['count']} | {m['redis_cpu_us_per_leave']} | {m['script_us_per_leave']} | - |",
        "",
        f"One client (this process, {r['in_flight']} in flight) published {p['publishes_per_s_one_client']} messages/s.",
        "",
    ])  # fmt: skip


def main() -> int:
    args = parse_args()
    import run  # bench/run.py: the venv bootstrap

    run.ensure_environment(argparse.Namespace(venv=args.venv), script=__file__)
    binary = shutil.which("redis-server")
    if binary is None:
        print("redis-server is not installed (Debian: apt install redis-server)", file=sys.stderr)
        return 1
    os.sched_setaffinity(0, {CLIENT_CPU})
    port = run.free_port()
    directory = tempfile.mkdtemp(prefix="wsheart-redis-cost-")
    redis = subprocess.Popen(
        ["taskset", "-c", str(SERVER_CPU), binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", directory, "--loglevel", "warning"],
        stdout=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        run.wait_port(port, redis)
        from twisted.internet import defer, task

        box: dict = {}

        def go(reactor: Any) -> Any:
            d = defer.ensureDeferred(measure(reactor, args, redis.pid, port))
            return d.addCallback(box.update)

        try:
            task.react(go)
        except SystemExit as e:
            if e.code:
                return int(e.code)
        version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.split()[2].split("=")[1]
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        box.update(commit=commit, date=time.strftime("%Y-%m-%d"), redis_version=version, in_flight=args.in_flight)
    finally:
        redis.terminate()
        try:
            redis.wait(5)
        except subprocess.TimeoutExpired:
            redis.kill()
            redis.wait(5)
        shutil.rmtree(directory, ignore_errors=True)
    Path(args.json).write_text(json.dumps(box, indent=2) + "\n")
    md = markdown(box)
    Path(args.json).with_suffix(".md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
