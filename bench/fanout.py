"""
Channel benchmarks: publish fan-out (1 publisher -> N subscribers, messages
delivered per second) for wsheart's wsheart.v1 channels against a raw
Twisted + Autobahn broadcast (prepareMessage once, sendPreparedMessage to
each: the baseline of every ratio) and websockets.broadcast; and recovery
time for a wsheart client that missed M messages.

    python3 bench/fanout.py                       # N = 100, 1000, 5000; 3 interleaved repeats
    python3 bench/fanout.py --subscribers 1000 --repeats 1

Runs in bench/.venv like run.py (created from bench/requirements.txt).  Each
server on CPU 0, the load (all subscribers and the publisher, one asyncio
process: bench/loadgen.py's client) on CPU 1, loopback only, every process
stopped by its pid.  Writes bench/results/fanout.json and prints a table.

Fan-out method: the publisher sends a window of 20 messages (64-byte text
payloads; wsheart: {"op":"publish"} frames on the channel chat.bench), then
waits until every subscriber has received all of them, and repeats for
--seconds.  Delivered/s = N * messages / elapsed.  The server's CPU time
per delivered message is the figure that does not depend on the load
generator: delivered/s is its limit whenever it runs near 100%.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

SERVER_CPU, CLIENT_CPU = 0, 1
PAYLOAD = "x" * 64
WINDOW = 20


def run_helpers() -> Any:
    import run  # bench/run.py: the venv bootstrap and shared helpers

    return run


def cpu_ticks(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Server:
    """
    One benchmarked server: wsheart (memory engine), wsheart-redis (the
    Redis engine, its own redis-server), wsheart-redis-2p (two wsheart
    processes on one reuseport port sharing that Redis: the kernel spreads
    the subscribers), or a raw peer.  All on the server's CPU; the CPU of
    every process here counts as the server's.
    """

    def __init__(self, name: str, port: int, history: int, extra: tuple[str, ...] = ()) -> None:
        self.name = name
        venv_bin = Path(sys.executable).parent
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self.redis: Optional[subprocess.Popen[bytes]] = None
        commands: list[list[str]] = []
        if name.startswith("wsheart"):
            processes = 2 if name.endswith("-2p") else 1
            endpoint = f"reuseport:{port}:interface=127.0.0.1" if processes > 1 else f"tcp:{port}:interface=127.0.0.1"
            cmd = [str(venv_bin / "twistd"), "-n", "--pidfile=", "wsheart",
                   "--endpoint", endpoint, "--history-size", str(history),
                   # Like the broadcast peers: no presence (its join events are O(N) per subscribe).
                   "--quiet-presence", "chat.bench",
                   "--max-message-size", str(1 << 20)]  # fmt: skip
            if name.startswith("wsheart-redis"):
                redis_port = run_helpers().free_port()
                self.redis = subprocess.Popen(
                    ["taskset", "-c", str(SERVER_CPU), "redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                     "--save", "", "--appendonly", "no", "--loglevel", "warning"],
                    stdout=subprocess.DEVNULL, start_new_session=True,
                )  # fmt: skip
                run_helpers().wait_port(redis_port, self.redis)
                cmd += ["--redis", f"redis://127.0.0.1:{redis_port}/0"]
            commands = [cmd + ["--node-id", f"n{i}", *extra] for i in range(processes)]
        elif name == "autobahn":
            commands = [[sys.executable, str(BENCH / "peers" / "autobahn_broadcast.py"), "--port", str(port), *extra]]
        else:
            commands = [[sys.executable, str(BENCH / "peers" / "websockets_broadcast.py"), "--port", str(port), *extra]]
        logs = BENCH / "results" / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        self.log = open(logs / f"fanout-{name}.log", "ab")
        self.processes = []
        for cmd in commands:
            process = subprocess.Popen(
                ["taskset", "-c", str(SERVER_CPU), *cmd], cwd=str(REPO), env=env,
                stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
            self.processes.append(process)
            run_helpers().wait_port(port, process)
        if len(self.processes) > 1:
            time.sleep(2.0)  # the later ones listen too before clients come
        self.process = self.processes[0]

    def cpu(self) -> float:
        return sum(cpu_ticks(p.pid) for p in self.processes) + (cpu_ticks(self.redis.pid) if self.redis is not None else 0.0)

    def stop(self) -> None:
        for process in (*self.processes, self.redis):
            if process is not None and process.poll() is None:
                os.kill(process.pid, signal.SIGTERM)
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    os.kill(process.pid, signal.SIGKILL)
                    process.wait()
        self.log.close()


def subscriber_classes() -> Any:
    import loadgen

    class Sub(loadgen.Client):
        """
        loadgen's client, offering wsheart.v1 and keeping the last text;
        the generator's extra headers too (loadgen.DEFLATE_OFFER: frames
        with RSV1 are counted, not inflated).
        """

        subprotocol: Optional[bytes] = None

        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            extra = b"Sec-WebSocket-Protocol: " + self.subprotocol + b"\r\n" if self.subprotocol else b""
            transport.write(
                b"GET / HTTP/1.1\r\nHost: " + self.gen.host_header + b"\r\n"
                b"Upgrade: websocket\r\nConnection: Upgrade\r\n" + extra + self.gen.extra_headers
                + b"Sec-WebSocket-Key: " + self.key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )  # fmt: skip
            self.texts: list[bytes] = []
            self.keep = False

        def _frame(self, fin: int, opcode: int, payload: bytes) -> None:
            if opcode == loadgen.OP_TEXT and self.keep:
                self.texts.append(payload)
            super()._frame(fin, opcode, payload)

        def send_text(self, text: str) -> None:
            self.transport.write(loadgen.masked_frame(loadgen.OP_TEXT, text.encode()))

    return loadgen, Sub


async def open_clients(clients: list[Any], make: Any, port: int, count: int, batch: int = 250) -> None:
    """
    Open C{count} WebSocket clients to 127.0.0.1:C{port}, C{batch}
    handshakes at a time, appending each to C{clients} once open;
    C{make(opened)} builds a client protocol that resolves C{opened}.
    """
    loop = asyncio.get_running_loop()

    async def one() -> None:
        opened = loop.create_future()
        _, client = await loop.create_connection(lambda: make(opened), "127.0.0.1", port)
        await asyncio.wait_for(opened, 30)
        clients.append(client)

    for first in range(0, count, batch):
        await asyncio.gather(*(one() for _ in range(min(batch, count - first))))


async def fanout_run(name: str, n: int, seconds: float) -> dict[str, Any]:
    loadgen, Sub = subscriber_classes()
    port = run_helpers().free_port()
    server = Server(name, port, history=100)
    try:
        gen = loadgen.Generator(port)
        Sub.subprotocol = b"wsheart.v1" if name.startswith("wsheart") else None
        clients: list[Any] = []
        await open_clients(clients, lambda opened: Sub(gen, opened), port, n + 1)
        publisher, subscribers = clients[0], clients[1:]
        sub_frame = json.dumps({"op": "subscribe", "channel": "chat.bench"}) if name.startswith("wsheart") else "sub"
        for s in subscribers:
            s.send_text(sub_frame)
        deadline = time.monotonic() + 60
        while gen.messages < n and time.monotonic() < deadline:  # every "subscribed" answer
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)
        if gen.messages != n:
            raise RuntimeError(f"{name}: {gen.messages} answers to {n} subscribes")
        if name.startswith("wsheart"):
            pub = json.dumps({"op": "publish", "channel": "chat.bench", "data": PAYLOAD})
        else:
            pub = PAYLOAD

        async def window() -> None:
            target = gen.messages + n * WINDOW + (WINDOW if name.startswith("wsheart") else 0)  # + the publisher's acks
            for _ in range(WINDOW):
                publisher.send_text(pub)
            limit = time.monotonic() + 30
            while gen.messages < target:
                if time.monotonic() > limit:
                    behind = sum(1 for c in subscribers if c.transport is not None and c.transport.is_closing())
                    raise RuntimeError(
                        f"{name}: window not delivered ({gen.messages} of {target}; "
                        f"connections lost {gen.lost_after_open}, closing {behind}, close frames {gen.close_frames})"
                    )
                await asyncio.sleep(0)

        for _ in range(3):  # warm up
            await window()
        start_messages = gen.messages
        server_cpu0, my_cpu0 = server.cpu(), time.process_time()
        t0 = time.perf_counter()
        windows = 0
        while time.perf_counter() - t0 < seconds:
            await window()
            windows += 1
        elapsed = time.perf_counter() - t0
        delivered = n * WINDOW * windows
        assert gen.messages - start_messages >= delivered
        server_cpu = server.cpu() - server_cpu0
        return {
            "server": name,
            "subscribers": n,
            "messages_published": WINDOW * windows,
            "delivered_per_second": round(delivered / elapsed),
            "server_cpu_pct": round(100 * server_cpu / elapsed, 1),
            "server_us_per_delivery": round(1e6 * server_cpu / delivered, 3),
            "loadgen_cpu_pct": round(100 * (time.process_time() - my_cpu0) / elapsed, 1),
            "lost_connections": gen.lost_after_open,
        }
    finally:
        for c in locals().get("clients", []):
            if c.transport is not None:
                c.transport.abort()
        server.stop()


async def recovery_run(missed: int) -> dict[str, Any]:
    """
    A wsheart client subscribes, goes away, M messages are published, and
    it resubscribes from its position: time until the last missed message.
    """
    loadgen, Sub = subscriber_classes()
    port = run_helpers().free_port()
    server = Server("wsheart", port, history=max(missed, 100))
    try:
        gen = loadgen.Generator(port)
        Sub.subprotocol = b"wsheart.v1"
        loop = asyncio.get_running_loop()

        async def connect() -> Any:
            opened = loop.create_future()
            _, client = await loop.create_connection(lambda: Sub(gen, opened), "127.0.0.1", port)
            await asyncio.wait_for(opened, 30)
            client.keep = True
            return client

        reader, publisher = await connect(), await connect()
        reader.send_text(json.dumps({"op": "subscribe", "channel": "chat.bench"}))
        while not reader.texts:
            await asyncio.sleep(0.01)
        subscribed = json.loads(reader.texts[0])
        reader.transport.close()
        pub = json.dumps({"op": "publish", "channel": "chat.bench", "data": PAYLOAD})
        for i in range(missed):
            publisher.send_text(pub)
            if i % 100 == 99:
                while len(publisher.texts) < i + 1:  # acks: the server has them all so far
                    await asyncio.sleep(0)
        while len(publisher.texts) < missed:
            await asyncio.sleep(0.001)
        back = await connect()
        t0 = time.perf_counter()
        back.send_text(json.dumps({"op": "subscribe", "channel": "chat.bench",
                                   "since": {"epoch": subscribed["epoch"], "seq": subscribed["seq"]}}))  # fmt: skip
        limit = time.monotonic() + 60
        while len(back.texts) < missed + 1:
            if time.monotonic() > limit:
                raise RuntimeError(f"recovered {len(back.texts) - 1} of {missed}")
            await asyncio.sleep(0)
        took = time.perf_counter() - t0
        answer = json.loads(back.texts[0])
        seqs = [json.loads(t)["seq"] for t in back.texts[1:]]
        assert answer["recovered"] is True and seqs == list(range(1, missed + 1)), "recovery incomplete"
        for c in (publisher, back):
            c.transport.abort()
        return {"missed": missed, "recovery_ms": round(took * 1000, 2), "messages_per_second": round(missed / took)}
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subscribers", default="100,1000,5000")
    parser.add_argument("--servers", default="wsheart,autobahn,websockets")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--missed", default="1000,10000")
    parser.add_argument("--json", default=str(BENCH / "results" / "fanout.json"))
    parser.add_argument("--venv", default=str(BENCH / ".venv"))
    args = parser.parse_args()
    import run  # the bench venv bootstrap (re-executes in bench/.venv)

    run.ensure_environment(args, __file__)
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    os.sched_setaffinity(0, {CLIENT_CPU})
    servers = args.servers.split(",")
    sizes = [int(n) for n in args.subscribers.split(",")]
    samples: list[dict[str, Any]] = []
    for repeat in range(args.repeats):
        order = servers[repeat % len(servers):] + servers[: repeat % len(servers)]
        for n in sizes:
            for name in order:
                sample = asyncio.run(fanout_run(name, n, args.seconds))
                sample["repeat"] = repeat + 1
                print(json.dumps(sample), flush=True)
                samples.append(sample)
    recovery = []
    for m in [int(x) for x in args.missed.split(",")]:
        runs = [asyncio.run(recovery_run(m)) for _ in range(args.repeats)]
        result = {"missed": m, "recovery_ms": statistics.median(r["recovery_ms"] for r in runs),
                  "runs_ms": [r["recovery_ms"] for r in runs]}  # fmt: skip
        result["messages_per_second"] = round(m / (result["recovery_ms"] / 1000))
        print(json.dumps(result), flush=True)
        recovery.append(result)
    medians = []
    for n in sizes:
        base = None
        rows = []
        for name in servers:
            vals = [s["delivered_per_second"] for s in samples if s["server"] == name and s["subscribers"] == n]
            cpu = [s["server_cpu_pct"] for s in samples if s["server"] == name and s["subscribers"] == n]
            load = [s["loadgen_cpu_pct"] for s in samples if s["server"] == name and s["subscribers"] == n]
            cost = [s["server_us_per_delivery"] for s in samples if s["server"] == name and s["subscribers"] == n]
            row = {"server": name, "subscribers": n, "delivered_per_second": statistics.median(vals),
                   "server_cpu_pct": statistics.median(cpu), "loadgen_cpu_pct": statistics.median(load),
                   "server_us_per_delivery": statistics.median(cost)}  # fmt: skip
            if name == "autobahn":
                base = row
            rows.append(row)
        for row in rows:
            row["vs_autobahn"] = round(row["delivered_per_second"] / base["delivered_per_second"], 2) if base else None
            row["cost_vs_autobahn"] = round(row["server_us_per_delivery"] / base["server_us_per_delivery"], 2) if base else None
        medians += rows
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"command": " ".join(sys.argv), "samples": samples, "medians": medians, "recovery": recovery}, f, indent=2)
    lines = ["| subscribers | server | delivered/s | vs Autobahn | server CPU us / delivery | vs Autobahn | server CPU % | loadgen CPU % |",
             "|---:|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    def x(ratio: Optional[float]) -> str:
        return "-" if ratio is None else f"{ratio:.2f}x"

    for row in medians:
        lines.append(f"| {row['subscribers']} | {row['server']} | {row['delivered_per_second']:.0f} | "
                     f"{x(row['vs_autobahn'])} | {row['server_us_per_delivery']:.2f} | {x(row['cost_vs_autobahn'])} | "
                     f"{row['server_cpu_pct']} | {row['loadgen_cpu_pct']} |")  # fmt: skip
    lines += ["", "| missed messages | recovery (median) | messages/s |", "|---:|---:|---:|"]
    for r in recovery:
        lines.append(f"| {r['missed']} | {r['recovery_ms']:.1f} ms | {r['messages_per_second']} |")
    table = "\n".join(lines) + "\n"
    print("\n" + table)
    Path(args.json).with_suffix(".md").write_text(table)


if __name__ == "__main__":
    main()
