"""
Cross-process channels: two wsheart processes A and B sharing one Redis.

    python3 bench/crossprocess.py          # 1000 and 10000 msg/s for 5 s each, recovery of 1000, 3 repeats

1. Latency: 10 subscribers on A (chat.bench), one publisher on B sending
   paced {"op":"publish"} frames whose data is [index, perf_counter() at
   send]; the same load process receives, so latency = arrival - send on one
   clock.  Beside it the same on one process with the memory engine.
2. Recovery: a client subscribes on A, keeps its position, leaves; 1000
   messages are published on A; a new client on B subscribes with since: time
   from its subscribe until the last missed message.  Beside it fanout.py's
   recovery_run (one process, memory engine).

Checked per rate: every subscriber got every message once, seqs consecutive
in arrival order and in the same order for all; every publish answered
"published" (errors are counted); how often the channel's order differs from
the publisher's send order.  --tcp-nodelay runs the servers with Nagle off
(a diagnosis: see NODELAY_SHIM).

Runs in bench/.venv like fanout.py.  Servers and redis-server on CPU 0, the
load (this process) on CPU 1, loopback only, every process stopped by its
pid.  Writes bench/results/crossprocess.json and crossprocess.md.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import datetime
import functools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

import fanout  # bench/fanout.py: subscriber_classes, recovery_run, cpu_ticks, run_helpers

BENCH, REPO = fanout.BENCH, fanout.REPO
CHANNEL = "chat.bench"

# --tcp-nodelay: a sitecustomize for the servers only (diagnosis, wsheart unchanged).  Autobahn's connectionMade calls
# transport.setTcpNoDelay(self.tcpNoDelay) before it copies tcpNoDelay from the factory, and its bare except swallows the
# AttributeError: wsheart's sockets keep Nagle on (getsockopt TCP_NODELAY = 0 on the server's side).
NODELAY_SHIM = "import autobahn.twisted.websocket as w\nw.WebSocketAdapterProtocol.tcpNoDelay = True\n"


def stop(process: Optional[subprocess.Popen[bytes]]) -> None:
    """SIGTERM, SIGKILL after 10 s: by pid, like fanout.Server.stop."""
    if process is not None and process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()


def start_redis(port: int) -> subprocess.Popen[bytes]:
    redis = subprocess.Popen(
        ["taskset", "-c", str(fanout.SERVER_CPU), "redis-server", "--port", str(port), "--bind", "127.0.0.1",
         "--save", "", "--appendonly", "no", "--loglevel", "warning"],
        stdout=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        fanout.run_helpers().wait_port(port, redis)
    except BaseException:
        stop(redis)
        raise
    return redis


class Node:
    """
    One twistd wsheart process on the memory engine, or on a Redis that
    someone else started (fanout.Server starts one redis-server per server;
    here two servers share one).
    """

    extra_path: Optional[str] = None  # a directory put first on the servers' PYTHONPATH (--tcp-nodelay)
    root: Path = REPO  # where wsheart/ and twisted/plugins/ come from (main: a copy of HEAD's)

    def __init__(self, name: str, port: int, history: int, redis_url: Optional[str] = None) -> None:
        cmd = [str(Path(sys.executable).parent / "twistd"), "-n", "--pidfile=", "wsheart",
               "--endpoint", f"tcp:{port}:interface=127.0.0.1", "--history-size", str(history),
               "--quiet-presence", CHANNEL, "--max-message-size", str(1 << 20)]  # fmt: skip
        if redis_url is not None:
            cmd += ["--redis", redis_url]
        logs = BENCH / "results" / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        self.log = open(logs / f"crossprocess-{name}.log", "ab")
        self.process = subprocess.Popen(
            ["taskset", "-c", str(fanout.SERVER_CPU), *cmd], cwd=str(self.root), env=self.env(),
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            fanout.run_helpers().wait_port(port, self.process)
        except BaseException:
            self.stop()
            raise

    def env(self) -> dict[str, str]:
        return dict(os.environ, PYTHONPATH=os.pathsep.join([*filter(None, [self.extra_path]), str(self.root)]))

    def cpu(self) -> float:
        return fanout.cpu_ticks(self.process.pid)

    def stop(self) -> None:
        stop(self.process)
        self.log.close()


@functools.cache
def client_class() -> tuple[Any, Any]:
    loadgen, Sub = fanout.subscriber_classes()

    class Timed(Sub):  # type: ignore[misc, valid-type]
        """fanout's Sub on wsheart.v1, noting each text's arrival time (parsed after the run, not while it runs)."""

        subprotocol = b"wsheart.v1"

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self.arrived: list[float] = []
            self.keep = True

        def _frame(self, fin: int, opcode: int, payload: bytes) -> None:
            if opcode == loadgen.OP_TEXT:
                self.arrived.append(time.perf_counter())
            super()._frame(fin, opcode, payload)

        def reset(self) -> None:
            self.texts.clear()
            self.arrived.clear()

    return loadgen, Timed


async def connect(port: int) -> Any:
    loadgen, Timed = client_class()
    loop = asyncio.get_running_loop()
    opened = loop.create_future()
    _, client = await loop.create_connection(lambda: Timed(loadgen.Generator(port), opened), "127.0.0.1", port)
    await asyncio.wait_for(opened, 30)
    return client


async def wait_for(what: str, done: Callable[[], bool], timeout: float) -> bool:
    limit = time.monotonic() + timeout
    while not done():
        if time.monotonic() > limit:
            print(json.dumps({"warning": f"timed out waiting for {what}"}), flush=True)
            return False
        await asyncio.sleep(0.001)
    return True


async def subscribe(client: Any, since: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    frame: dict[str, Any] = {"op": "subscribe", "channel": CHANNEL}
    if since is not None:
        frame["since"] = since
    client.reset()
    client.send_text(json.dumps(frame))
    await wait_for("subscribed", lambda: bool(client.texts), 10)
    answer = json.loads(client.texts[0])
    assert answer["op"] == "subscribed", answer
    return answer


async def paced(publisher: Any, rate: float, seconds: float, first: int) -> tuple[int, float, float]:
    """
    Open loop: message k goes out at t0 + k / rate (asyncio's timer has ~1 ms
    steps, so at 10k/s they leave in batches of ~10, each stamped as it is
    written).  A loop that falls behind sends what is due at once.
    """
    total = int(rate * seconds)
    t0 = time.perf_counter()
    sent = 0
    while sent < total:
        due = min(total, int((time.perf_counter() - t0) * rate) + 1)
        while sent < due:
            data = [first + sent, time.perf_counter()]
            publisher.send_text(json.dumps({"op": "publish", "channel": CHANNEL, "data": data}))
            sent += 1
        await asyncio.sleep(max(0.0, t0 + sent / rate - time.perf_counter()))
    return sent, t0, time.perf_counter() - t0


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


async def latency_phase(publisher: Any, subs: list[Any], rate: float, seconds: float, first: int,
                        cpu: Callable[[], dict[str, float]]) -> dict[str, Any]:  # fmt: skip
    for c in (publisher, *subs):
        c.reset()
    cpu0, my0 = cpu(), time.process_time()
    sent, t0, send_s = await paced(publisher, rate, seconds, first)
    await wait_for("delivery", lambda: all(len(s.texts) >= sent for s in subs) and len(publisher.texts) >= sent, 60)
    elapsed = time.perf_counter() - t0
    server_cpu = {name: used - cpu0[name] for name, used in cpu().items()}
    my_cpu = time.process_time() - my0
    await asyncio.sleep(0.2)  # anything more (a duplicate) would show up now
    # Every subscriber: each message once, seqs consecutive in arrival order, the same order as every other subscriber.
    exact = True
    order: Optional[list[int]] = None  # the publisher's indexes in seq order, from the first subscriber
    seq_range: Optional[list[int]] = None
    latencies: list[float] = []
    others: list[dict[str, Any]] = []  # anything but a message, e.g. an unsolicited subscribed telling of a gap
    last_arrival = t0
    for s in subs:
        msgs = [(t, json.loads(raw)) for t, raw in zip(s.arrived, s.texts)]
        seqs = [m["seq"] for _, m in msgs if m["op"] == "message"]
        idx = [m["data"][0] for _, m in msgs if m["op"] == "message"]
        order = idx if order is None else order
        seq_range = list(range(seqs[0], seqs[0] + sent)) if seq_range is None and seqs else seq_range
        others += [m for _, m in msgs if m["op"] != "message"]
        exact = exact and len(msgs) == sent and seqs == seq_range and idx == order
        exact = exact and sorted(idx) == list(range(first, first + sent))
        latencies += [t - m["data"][1] for t, m in msgs if m["op"] == "message"]
        last_arrival = max([last_arrival, *s.arrived])
    acks = [json.loads(t) for t in publisher.texts]
    errors = [a for a in acks if a["op"] != "published"]  # 503 when B's Redis commands time out (--redis-timeout)
    acked = not errors and len(acks) == sent and sorted(a["seq"] for a in acks) == seq_range
    # The channel's order need not be the publisher's send order (nothing promises it for one connection's publishes).
    out_of_send_order = sum(1 for a, b in zip(order or [], (order or [])[1:]) if b < a)
    return {
        "target_per_s": rate,
        "sent": sent,
        "sent_per_s": round(sent / send_s),
        # per subscriber: messages / (first send .. last arrival anywhere)
        "delivered_per_s": round(sent / (last_arrival - t0)),
        "p50_ms": round(1000 * pct(latencies, 0.5), 3),
        "p99_ms": round(1000 * pct(latencies, 0.99), 3),
        "max_ms": round(1000 * max(latencies), 3),
        "deliveries": len(latencies),
        "all_once_in_order": exact,  # every subscriber, every message once, consecutive seqs, the same order for all
        "all_acked": acked,  # a "published" with the seq for every publish
        "out_of_send_order": out_of_send_order,  # times the next seq carries an earlier-sent message
        "publish_errors": len(errors),
        "publish_error_sample": errors[:1],
        "other_frames": len(others),
        "other_frames_sample": others[:1],
        "server_cpu_pct": round(100 * sum(server_cpu.values()) / elapsed, 1),  # A + B + redis, all on CPU 0
        "server_cpu_pct_by_process": {name: round(100 * used / elapsed, 1) for name, used in server_cpu.items()},
        "loadgen_cpu_pct": round(100 * my_cpu / elapsed, 1),
    }


async def latency_run(engine: str, sub_port: int, pub_port: int, n: int, rates: list[float], seconds: float,
                      cpu: Callable[[], dict[str, float]]) -> list[dict[str, Any]]:  # fmt: skip
    clients: list[Any] = []
    try:
        subs = [await connect(sub_port) for _ in range(n)]
        clients += subs
        publisher = await connect(pub_port)
        clients.append(publisher)
        for s in subs:
            await subscribe(s)
        first = 0
        await latency_phase(publisher, subs, 1000, 0.5, first, cpu)  # warm-up, not reported
        first += 500
        rows = []
        for rate in rates:
            row = {"engine": engine, "subscribers": n, **await latency_phase(publisher, subs, rate, seconds, first, cpu)}
            first += row["sent"]
            print(json.dumps(row), flush=True)
            rows.append(row)
        return rows
    finally:
        for c in clients:
            if c.transport is not None:
                c.transport.abort()


async def cross_recovery(port_a: int, port_b: int, missed: int) -> dict[str, Any]:
    """Leave A at a known position, M messages published on A, resubscribe on B from that position."""
    clients: list[Any] = []
    try:
        reader = await connect(port_a)
        publisher = await connect(port_a)
        clients += [reader, publisher]
        position = await subscribe(reader)
        reader.transport.close()
        publisher.reset()
        pub = json.dumps({"op": "publish", "channel": CHANNEL, "data": fanout.PAYLOAD})
        for i in range(missed):
            publisher.send_text(pub)
            if i % 100 == 99:  # fanout.recovery_run's pacing: acks show the server has them all so far
                await wait_for("acks", lambda: len(publisher.texts) >= i + 1, 30)
        await wait_for("acks", lambda: len(publisher.texts) >= missed, 30)
        back = await connect(port_b)
        clients.append(back)
        t0 = time.perf_counter()
        answer = await subscribe(back, {"epoch": position["epoch"], "seq": position["seq"]})
        complete = await wait_for("recovery", lambda: len(back.texts) >= missed + 1, 60)
        took = back.arrived[-1] - t0  # the last missed message's arrival, not when the polling loop saw it
        seqs = [json.loads(t)["seq"] for t in back.texts[1:]]
        assert complete and answer["recovered"] is True, answer
        assert seqs == list(range(position["seq"] + 1, position["seq"] + missed + 1)), "recovered seqs not consecutive"
        return {"missed": missed, "recovery_ms": round(took * 1000, 2)}
    finally:
        for c in clients:
            if c.transport is not None:
                c.transport.abort()


async def cross_process(args: argparse.Namespace, rates: list[float]) -> tuple[list[dict[str, Any]], list[float]]:
    helpers = fanout.run_helpers()
    redis_port, port_a, port_b = helpers.free_port(), helpers.free_port(), helpers.free_port()
    redis: Optional[subprocess.Popen[bytes]] = None
    nodes: list[Node] = []
    try:
        redis = start_redis(redis_port)
        url = f"redis://127.0.0.1:{redis_port}/0"
        nodes.append(Node("A", port_a, args.history, url))
        nodes.append(Node("B", port_b, args.history, url))

        def cpu() -> dict[str, float]:
            return {"A": nodes[0].cpu(), "B": nodes[1].cpu(), "redis": fanout.cpu_ticks(redis.pid)}  # type: ignore[union-attr]

        rows = await latency_run("redis, A -> B", port_a, port_b, args.subscribers, rates, args.seconds, cpu)
        runs = []
        for _ in range(args.repeats):
            r = await cross_recovery(port_a, port_b, args.missed)
            print(json.dumps({"engine": "redis, A -> B", **r}), flush=True)
            runs.append(r["recovery_ms"])
        return rows, runs
    finally:
        for node in nodes:
            node.stop()
        stop(redis)


async def one_process(args: argparse.Namespace, rates: list[float]) -> list[dict[str, Any]]:
    port = fanout.run_helpers().free_port()
    node = Node("memory", port, args.history)
    try:
        cpu = lambda: {"server": node.cpu()}  # noqa: E731
        return await latency_run("memory, 1 process", port, port, args.subscribers, rates, args.seconds, cpu)
    finally:
        node.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subscribers", type=int, default=10)
    parser.add_argument("--rates", default="1000,10000", help="publish rates, msg/s")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per rate")
    parser.add_argument("--missed", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3, help="recovery repeats (median)")
    parser.add_argument("--history", type=int, default=2000, help="--history-size of every server")
    parser.add_argument("--live-checkout", action="store_true", help="run wsheart/ as it is now, not HEAD's committed copy")
    parser.add_argument("--tcp-nodelay", action="store_true", help="diagnosis: servers with Nagle off (see NODELAY_SHIM)")
    parser.add_argument("--json", default=str(BENCH / "results" / "crossprocess.json"))
    parser.add_argument("--venv", default=str(BENCH / ".venv"))
    args = parser.parse_args()
    fanout.run_helpers().ensure_environment(args, __file__)
    os.sched_setaffinity(0, {fanout.CLIENT_CPU})
    rates = [float(r) for r in args.rates.split(",")]
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    if not args.live_checkout:
        # HEAD's wsheart, not the working tree: others may be editing wsheart/ while this runs (like run.py's snapshot,
        # but of the commit named in the results).  fanout.recovery_run's Server reads fanout.REPO when it starts.
        Node.root = Path(tempfile.mkdtemp(prefix="wsheart-crossprocess-"))
        atexit.register(shutil.rmtree, Node.root, True)
        archive = subprocess.run(["git", "archive", head, "wsheart", "twisted"], cwd=REPO, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(Node.root)], input=archive.stdout, check=True)
        fanout.REPO = Node.root
        shim = Path(tempfile.mkdtemp(prefix="wsheart-nodelay-"))
        atexit.register(shutil.rmtree, shim, True)
        (shim / "sitecustomize.py").write_text(NODELAY_SHIM)
        Node.extra_path = str(shim)
    started = time.monotonic()

    # The reference first, then the cross-process run, then fanout.py's one-process recovery.
    memory = asyncio.run(one_process(args, rates))
    cross, cross_runs = asyncio.run(cross_process(args, rates))
    mem_runs = []
    for _ in range(args.repeats):
        r = asyncio.run(fanout.recovery_run(args.missed))
        print(json.dumps({"engine": "memory, 1 process", **r}), flush=True)
        mem_runs.append(r["recovery_ms"])
    for row in cross:
        ref = next(m for m in memory if m["target_per_s"] == row["target_per_s"])
        row["p50_vs_memory"] = round(row["p50_ms"] / ref["p50_ms"], 2)
        row["p99_vs_memory"] = round(row["p99_ms"] / ref["p99_ms"], 2)
    recovery = [
        {"engine": "memory, 1 process", "missed": args.missed, "recovery_ms": statistics.median(mem_runs), "runs_ms": mem_runs},
        {"engine": "redis, A -> B", "missed": args.missed, "recovery_ms": statistics.median(cross_runs), "runs_ms": cross_runs},
    ]
    recovery[1]["vs_memory"] = round(recovery[1]["recovery_ms"] / recovery[0]["recovery_ms"], 2)
    def run(*cmd: str) -> str:
        return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True).stdout.strip()

    meta = {
        "command": " ".join(["python3", os.path.relpath(__file__, REPO), *sys.argv[1:]]),
        "commit": head,
        # wsheart runs from the live checkout (PYTHONPATH, as in fanout.py): note uncommitted changes to it.
        "wsheart_source": "live checkout" if args.live_checkout else "the commit (git archive)",
        "wsheart_uncommitted_changes": bool(run("git", "status", "--porcelain", "wsheart", "twisted")) and args.live_checkout,
        "wsheart_digest": fanout.run_helpers().tree_digest(Node.root),
        "tcp_nodelay_shim": args.tcp_nodelay,
        "date": datetime.date.today().isoformat(),
        "python": sys.version.split()[0],
        "redis": run("redis-server", "--version"),
        "seconds": round(time.monotonic() - started, 1),
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"meta": meta, "latency": memory + cross, "recovery": recovery}, f, indent=2)

    def x(row: dict[str, Any], key: str) -> str:
        return f"{row[key]:.2f}x" if key in row else "-"

    nodelay = ", servers with TCP_NODELAY (--tcp-nodelay)" if args.tcp_nodelay else ""
    lines = [f"`{meta['command']}` (commit {meta['commit']}, {meta['date']}; {args.subscribers} subscribers, "
             f"{args.seconds:g} s per rate{nodelay})", "",
             "| engine | target msg/s | sent/s | delivered/s per sub | p50 ms | p99 ms | max ms | p50 / p99 vs memory "
             "| every sub got every message once, in seq order | publishes answered published / error "
             "| seq order != send order | server CPU % | loadgen CPU % |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|"]  # fmt: skip
    for row in memory + cross:
        lines.append(f"| {row['engine']} | {row['target_per_s']:.0f} | {row['sent_per_s']} | {row['delivered_per_s']} | "
                     f"{row['p50_ms']:.2f} | {row['p99_ms']:.2f} | {row['max_ms']:.2f} | "
                     f"{x(row, 'p50_vs_memory')} / {x(row, 'p99_vs_memory')} | {'yes' if row['all_once_in_order'] else 'NO'} | "
                     f"{row['sent'] - row['publish_errors']} / {row['publish_errors']} | {row['out_of_send_order']} | "
                     f"{row['server_cpu_pct']} | {row['loadgen_cpu_pct']} |")  # fmt: skip
    lines += ["", "| recovery | missed | median ms | runs ms | vs memory |", "|---|---:|---:|---|---:|"]
    for r in recovery:
        runs = ", ".join(f"{v:.1f}" for v in r["runs_ms"])
        lines.append(f"| {r['engine']} | {r['missed']} | {r['recovery_ms']:.1f} | {runs} | {x(r, 'vs_memory')} |")
    p99 = next((r["p99_ms"] for r in cross if r["target_per_s"] == 1000), None)
    lines += ["", f"Targets: cross-process p99 at 1000 msg/s < 5 ms: {p99} ms; "
              f"cross-process recovery of {args.missed} < 50 ms: {recovery[1]['recovery_ms']} ms."]  # fmt: skip
    table = "\n".join(lines) + "\n"
    print("\n" + table)
    Path(args.json).with_suffix(".md").write_text(table)


if __name__ == "__main__":
    main()
