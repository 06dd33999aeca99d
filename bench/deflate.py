"""
What permessage-deflate costs wsheart, beside
Autobahn and websockets with their own deflate on, in one run:

1. idle: server RSS per idle connection, 10000 connections whose client
   offers permessage-deflate as browsers do (loadgen.py hold --deflate;
   the 101s that accepted it are counted), server with and without
   deflate.  Target: with deflate at most 1 KiB more per connection.
2. echo: server CPU per echoed message and bytes on the wire per message
   in each direction, for a JSON chat message (~300 bytes) and a 64 KiB
   JSON document; the client (this script's ``echo-client``, websockets'
   asyncio client with its default deflate, which really compresses and
   inflates) runs in its own process on CPU 1 and counts the bytes its
   transport writes and reads (WebSocket frames, TCP payload).
3. fan-out: server CPU per delivery for one publisher and N subscribers
   (fanout.py's method and client; the subscribers offer deflate and count
   the frames that arrive with RSV1 and their payload bytes, without
   inflating), wsheart without deflate, with --deflate (one compressed
   frame shared by all), with --deflate --deflate-server-context-takeover
   (every subscriber compresses for itself), and the two broadcast peers
   with deflate off and on.
4. zlib: what one message costs zlib with a compressor made for it (no
   context takeover) and with one kept, and what finding the shared frame
   costs per subscriber (a few seconds).

    flock /tmp/wsheart-bench.lock /work/main/.venv/bin/python bench/deflate.py   # about 8 minutes

Needs a Python with wsheart's dependencies and websockets (and twistd next
to it); wsheart runs from this checkout through PYTHONPATH.  Servers on
CPU 0, clients on CPU 1, loopback only, every process stopped by its pid,
every wait bounded.  Writes bench/results/deflate.json and deflate.md.

Deflate parameters as each server negotiates them with these clients:
wsheart: no context takeover either way, window 15, memLevel 8, messages
under 256 bytes plain.  Autobahn (PerMessageDeflateOfferAccept defaults):
context takeover both ways, window 15, memLevel 8.  websockets
(compression="deflate"): context takeover both ways, windows 12 bits,
memLevel 5.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

import run as bench_run  # noqa: E402  (bench/run.py: process and /proc helpers)

SERVER_CPU, CLIENT_CPU = 0, 1
LOGS = BENCH / "results" / "logs"

# ------------------------------------------------------------ messages

WORDS = (
    "the a to and of in is it you that was for on are with as I his they be at one have this from or had by "
    "hot word but what some we can out other were all there when up use your how said an each she which do "
    "their time if will way about many then them write would like so these her long make thing see him two "
    "has look more day could go come did number sound no most people my over know water than call first who "
    "may down side been now find any new work part take get place made live where after back little only "
    "round man year came show every good me give our under name very through just form sentence great think "
    "deploy build release ticket review merge branch lunch meeting tomorrow friday thanks sure ok great idea"
).split()


def chat_data(rng: random.Random, i: int) -> dict[str, Any]:
    text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(22, 30)))
    return {
        "id": f"m-{rng.getrandbits(48):012x}",
        "name": rng.choice(["ann", "bob", "chloe", "dmitri", "esra", "farid", "gwen"]),
        "avatar": f"https://cdn.example.com/u/{rng.randint(1000, 99999)}.png",
        "text": text,
        "ts": 1764860000000 + i * 137,
    }


def chat_messages(count: int = 4096) -> list[str]:
    """
    Distinct chat publishes: 4096 x ~290 bytes, far more than a 32 KiB
    window, so a compressor with context takeover never finds the whole
    message again (a pool smaller than the window would make every message
    after the first round an exact repeat: 11 bytes on the wire).
    """
    rng = random.Random(13)
    return [
        json.dumps({"op": "publish", "channel": "chat.lobby", "data": chat_data(rng, i)}, separators=(",", ":"))
        for i in range(count)
    ]


def json_document(seed: int, size: int = 64 * 1024) -> str:
    """A JSON document of exactly `size` bytes: an API answer, a list of records."""
    rng = random.Random(seed)
    items = []
    text = ""
    i = 0
    while True:
        items.append(
            {
                "id": 100000 + seed * 10000 + i,
                "user": {"login": rng.choice(["ann", "bob", "chloe", "dmitri", "esra"]) + str(rng.randint(1, 999)),
                         "verified": rng.random() < 0.5},  # fmt: skip
                "title": " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8))),
                "body": " ".join(rng.choice(WORDS) for _ in range(rng.randint(10, 40))),
                "tags": rng.sample(["bug", "feature", "ui", "api", "docs", "infra", "p1", "p2", "p3"], 3),
                "score": round(rng.uniform(0, 100), 2),
                "created_at": f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:"
                f"{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}Z",
            }
        )
        i += 1
        text = json.dumps({"items": items, "pad": ""}, separators=(",", ":"))
        if len(text) > size:
            items.pop()
            text = json.dumps({"items": items, "pad": ""}, separators=(",", ":"))
            break
    pad = size - len(text)
    assert pad >= 0
    text = json.dumps({"items": items, "pad": "x" * pad}, separators=(",", ":"))
    assert len(text) == size, len(text)
    return text


MESSAGES = {
    "chat": lambda: chat_messages(),
    "doc64k": lambda: [json_document(seed) for seed in range(4)],
}

# ------------------------------------------------------------ processes


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def start(cmd: list[str], cpu: int, tag: str, **kw: Any) -> subprocess.Popen:
    LOGS.mkdir(parents=True, exist_ok=True)
    log = open(LOGS / f"deflate-{tag}.log", "ab")
    kw.setdefault("stdout", log)
    p = subprocess.Popen(["taskset", "-c", str(cpu), *cmd], stderr=log, cwd=str(REPO),
                         env=dict(os.environ, PYTHONPATH=str(REPO)), start_new_session=True, **kw)  # fmt: skip
    log.close()
    return p


def server_cmd(kind: str, deflate: bool, port: int) -> list[str]:
    """Echo servers, heartbeat every 10 s (timeout 5 s) as run.py's S3."""
    py = sys.executable
    if kind == "wsheart":
        cmd = [str(Path(py).parent / "twistd"), "-n", "--pidfile=", "wsheart",
               "--endpoint", f"tcp:{port}:interface=127.0.0.1", "--ping-interval", "10", "--ping-timeout", "5",
               "--max-missed", "2", "--max-message-size", str(1 << 20)]  # fmt: skip
        return cmd + (["--deflate"] if deflate else [])
    if kind == "autobahn":
        cmd = [py, str(BENCH / "peers" / "autobahn_server.py"), "--port", str(port), "--ping-interval", "10", "--ping-timeout", "5"]
        return cmd + (["--deflate"] if deflate else [])
    cmd = [py, str(BENCH / "peers" / "websockets_server.py"), "--port", str(port), "--ping-interval", "10", "--ping-timeout", "5"]
    return cmd + ["--compression", "deflate" if deflate else "none"]


def run_helpers() -> Any:
    import run

    return run


# ------------------------------------------------------------ 1. idle RSS


def idle_run(kind: str, deflate: bool, n: int, settle: float) -> dict[str, Any]:
    run = run_helpers()
    port = run.free_port()
    tag = f"idle-{kind}-{'on' if deflate else 'off'}"
    server = start(server_cmd(kind, deflate, port), SERVER_CPU, tag)
    gen = None
    try:
        run.wait_port(port, server)
        time.sleep(1.0)
        rss0 = bench_run.proc_rss_kb(server.pid)
        load0 = load()
        gen = start([sys.executable, str(BENCH / "loadgen.py"), "hold", "--port", str(port), "--connections", str(n),
                     "--deflate", "--max-seconds", "300"], CLIENT_CPU, tag + "-loadgen",
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip
        opened = None
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            line = gen.stdout.readline()
            if not line:
                break
            event = json.loads(line)
            if event.get("event") == "open":
                opened = event
                break
        if opened is None:
            raise RuntimeError(f"{tag}: the load generator did not open its connections")
        time.sleep(settle)
        rss1 = bench_run.proc_rss_kb(server.pid)
        established = run.established(port)
        sample = {
            "server": kind, "deflate": deflate, "connections": n, "open": opened["open"], "failed": opened["failed"],
            "deflate_negotiated": opened["deflate_negotiated"], "established_at_end": established,
            "rss_idle_kb": rss0, "rss_kb": rss1, "rss_kib_per_conn": round((rss1 - rss0) / opened["open"], 3),
            "load_before": load0, "load_after": load(),
        }  # fmt: skip
        return sample
    finally:
        if gen is not None:
            try:
                gen.stdin.close()
            except OSError:
                pass
            try:
                gen.wait(10)
            except subprocess.TimeoutExpired:
                bench_run.stop_process(gen)
        bench_run.stop_process(server)


# ------------------------------------------------------------ 2. echo


def echo_client_main(argv: list[str]) -> None:
    """
    The echo driver (its own process, CPU 1): websockets' asyncio client
    with its default permessage-deflate offer, counting every byte its
    transport writes and reads.
    """
    p = argparse.ArgumentParser(prog="deflate.py echo-client")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--server-pid", type=int, required=True)
    p.add_argument("--message", choices=sorted(MESSAGES), required=True)
    p.add_argument("--connections", type=int, default=50)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--seconds", type=float, default=6.0)
    a = p.parse_args(argv)
    print(json.dumps(asyncio.run(echo_client(a))), flush=True)


async def echo_client(a: argparse.Namespace) -> dict[str, Any]:
    from websockets.asyncio.client import ClientConnection, connect

    class Counting(ClientConnection):
        sent = 0
        received = 0

        def connection_made(self, transport: Any) -> None:
            write, writelines = transport.write, transport.writelines

            def counted_write(data: Any) -> None:
                self.sent += len(data)
                write(data)

            def counted_writelines(chunks: Any) -> None:
                chunks = list(chunks)
                self.sent += sum(len(c) for c in chunks)
                writelines(chunks)

            transport.write, transport.writelines = counted_write, counted_writelines
            super().connection_made(transport)

        def data_received(self, data: bytes) -> None:
            self.received += len(data)
            super().data_received(data)

    messages = MESSAGES[a.message]()
    state = {"sending": True, "echoed": 0, "mismatch": 0}
    conns = []
    for _ in range(a.connections):
        ws = await asyncio.wait_for(
            connect(f"ws://127.0.0.1:{a.port}/", create_connection=Counting, ping_interval=None,
                    max_size=1 << 21, max_queue=None, open_timeout=20),  # fmt: skip
            30,
        )
        conns.append(ws)
    extensions = [ws.response.headers.get("Sec-WebSocket-Extensions") for ws in conns]

    async def drive(k: int, ws: Any) -> None:
        sent: list[str] = []
        i = k
        for _ in range(a.depth):
            m = messages[i % len(messages)]
            i += 1
            sent.append(m)
            await ws.send(m)
        while sent:
            reply = await ws.recv()
            expected = sent.pop(0)
            if reply != expected:
                state["mismatch"] += 1
            state["echoed"] += 1
            if state["sending"]:
                m = messages[i % len(messages)]
                i += 1
                sent.append(m)
                await ws.send(m)

    tasks = [asyncio.create_task(drive(k, ws)) for k, ws in enumerate(conns)]
    await asyncio.sleep(a.warmup)

    def snap() -> tuple:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return (state["echoed"], sum(ws.sent for ws in conns), sum(ws.received for ws in conns),
                bench_run.proc_cpu_s(a.server_pid), r.ru_utime + r.ru_stime, time.perf_counter())  # fmt: skip

    s0 = snap()
    await asyncio.sleep(a.seconds)
    s1 = snap()
    state["sending"] = False
    await asyncio.wait_for(asyncio.gather(*tasks), 30)
    for ws in conns:
        await ws.close()
    echoed = s1[0] - s0[0]
    elapsed = s1[5] - s0[5]
    return {
        "message": a.message,
        "message_bytes": statistics.mean(len(m.encode()) for m in messages),
        "connections": a.connections,
        "depth": a.depth,
        "deflate_negotiated": sum(1 for e in extensions if e and e.startswith("permessage-deflate")),
        "extension_answer": extensions[0],
        "echoed": echoed,
        "echoed_per_s": round(echoed / elapsed),
        "server_cpu_pct": round(100 * (s1[3] - s0[3]) / elapsed, 1),
        "server_us_per_message": round(1e6 * (s1[3] - s0[3]) / echoed, 2),
        "client_cpu_pct": round(100 * (s1[4] - s0[4]) / elapsed, 1),
        "wire_bytes_to_server_per_message": round((s1[1] - s0[1]) / echoed, 1),
        "wire_bytes_from_server_per_message": round((s1[2] - s0[2]) / echoed, 1),
        "mismatches": state["mismatch"],
    }


def echo_run(kind: str, deflate: bool, message: str, connections: int, seconds: float) -> dict[str, Any]:
    run = run_helpers()
    port = run.free_port()
    tag = f"echo-{kind}-{'on' if deflate else 'off'}-{message}"
    server = start(server_cmd(kind, deflate, port), SERVER_CPU, tag)
    client = None
    try:
        run.wait_port(port, server)
        time.sleep(0.5)
        load0 = load()
        depth = 4 if message == "chat" else 1
        client = start([sys.executable, str(Path(__file__).resolve()), "echo-client", "--port", str(port),
                        "--server-pid", str(server.pid), "--message", message, "--connections", str(connections),
                        "--depth", str(depth), "--seconds", str(seconds)], CLIENT_CPU, tag + "-client",
                       stdout=subprocess.PIPE)  # fmt: skip
        try:
            out, _ = client.communicate(timeout=seconds + 90)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"{tag}: the echo client did not finish")
        if client.returncode != 0 or not out.strip():
            raise RuntimeError(f"{tag}: echo client exited {client.returncode}; see {LOGS}/deflate-{tag}-client.log")
        sample = json.loads(out.decode().strip().splitlines()[-1])
        sample.update(server=kind, deflate=deflate, load_before=load0, load_after=load(), server_rss_kb=bench_run.proc_rss_kb(server.pid))
        return sample
    finally:
        bench_run.stop_process(client)
        bench_run.stop_process(server)


# ------------------------------------------------------------ 3. fan-out


FANOUT_VARIANTS = {
    # name: (fanout.Server name, extra server arguments)
    "wsheart": ("wsheart", ()),
    "wsheart+deflate": ("wsheart", ("--deflate",)),
    "wsheart+deflate+ctx": ("wsheart", ("--deflate", "--deflate-server-context-takeover")),
    "autobahn": ("autobahn", ()),
    "autobahn+deflate": ("autobahn", ("--deflate",)),
    "websockets": ("websockets", ("--compression", "none")),
    "websockets+deflate": ("websockets", ("--compression", "deflate")),
}


async def fanout_run(variant: str, n: int, seconds: float) -> dict[str, Any]:
    import fanout
    import loadgen

    _, Sub = fanout.subscriber_classes()

    class Counting(Sub):  # type: ignore[misc, valid-type]
        def _frame(self, fin: int, opcode: int, payload: bytes) -> None:
            if opcode == loadgen.OP_TEXT:
                self.gen.text_payload_bytes += len(payload)
            super()._frame(fin, opcode, payload)

    name, extra = FANOUT_VARIANTS[variant]
    wsheart = name == "wsheart"
    port = run_helpers().free_port()
    server = fanout.Server(name, port, history=100, extra=extra)
    window_size = fanout.WINDOW
    clients: list[Any] = []
    try:
        gen = loadgen.Generator(port)
        gen.extra_headers = loadgen.DEFLATE_OFFER  # every subscriber offers, as browsers do
        gen.text_payload_bytes = 0
        Counting.subprotocol = b"wsheart.v1" if wsheart else None
        await fanout.open_clients(clients, lambda opened: Counting(gen, opened), port, n + 1)
        publisher, subscribers = clients[0], clients[1:]
        sub_frame = json.dumps({"op": "subscribe", "channel": "chat.bench"}) if wsheart else "sub"
        for s in subscribers:
            s.send_text(sub_frame)
        deadline = time.monotonic() + 60
        while gen.messages < n and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)
        if gen.messages != n:
            raise RuntimeError(f"{variant}: {gen.messages} answers to {n} subscribes")
        rng = random.Random(13)
        datas = [chat_data(rng, i) for i in range(4096)]  # more than a window: see chat_messages
        if wsheart:
            pubs = [json.dumps({"op": "publish", "channel": "chat.bench", "data": d}, separators=(",", ":")) for d in datas]
        else:  # what a wsheart subscriber receives for the same publish
            pubs = [json.dumps({"op": "message", "channel": "chat.bench", "seq": 1000 + i, "data": d}, separators=(",", ":"))
                    for i, d in enumerate(datas)]  # fmt: skip
        counter = {"i": 0}

        async def window() -> None:
            target = gen.messages + n * window_size + (window_size if wsheart else 0)
            for _ in range(window_size):
                publisher.send_text(pubs[counter["i"] % len(pubs)])
                counter["i"] += 1
            limit = time.monotonic() + 30
            while gen.messages < target:
                if time.monotonic() > limit:
                    raise RuntimeError(f"{variant}: window not delivered ({gen.messages} of {target}; lost {gen.lost_after_open})")
                await asyncio.sleep(0)

        for _ in range(3):
            await window()
        m0, r0, b0 = gen.messages, gen.rsv1_frames, gen.text_payload_bytes
        load0 = load()
        cpu0, my0 = server.cpu(), time.process_time()
        t0 = time.perf_counter()
        windows = 0
        while time.perf_counter() - t0 < seconds:
            await window()
            windows += 1
        elapsed = time.perf_counter() - t0
        server_cpu = server.cpu() - cpu0
        delivered = n * window_size * windows
        texts = gen.messages - m0  # deliveries + the publisher's acks
        return {
            "variant": variant,
            "subscribers": n,
            "deflate_negotiated": gen.deflate_negotiated,
            "published": window_size * windows,
            "delivered_per_second": round(delivered / elapsed),
            "server_cpu_pct": round(100 * server_cpu / elapsed, 1),
            "server_us_per_delivery": round(1e6 * server_cpu / delivered, 3),
            "loadgen_cpu_pct": round(100 * (time.process_time() - my0) / elapsed, 1),
            "compressed_frames": gen.rsv1_frames - r0,
            "deliveries": delivered,
            "payload_bytes_per_text_frame": round((gen.text_payload_bytes - b0) / texts, 1),
            "published_bytes": round(statistics.mean(len(p) for p in pubs), 1),
            "server_rss_kb": bench_run.proc_rss_kb(server.process.pid),
            "lost_connections": gen.lost_after_open,
            "load_before": load0,
            "load_after": load(),
        }
    finally:
        for c in clients:
            if c.transport is not None:
                c.transport.abort()
        server.stop()


# ------------------------------------------------------------ 4. zlib and the shared frame's lookup


def zlib_costs() -> dict[str, Any]:
    """
    In this process (CPU 1): what one message costs zlib with a compressor
    made for it (no context takeover: wsheart's default) and with one kept
    (context takeover), at wsheart's/Autobahn's parameters (window 15,
    memLevel 8) and websockets' (12, 5); and what send_to_all pays per
    subscriber to find the shared compressed frame (a dict lookup keyed by
    each connection's own FrameKey, a frozen dataclass: hash and == in
    Python) against one key object shared by all.
    """
    import zlib

    from wsheart.deflate import FrameKey

    def per_call(f: Any, n: int) -> float:
        t0 = time.process_time()
        for i in range(n):
            f(i)
        return round(1e6 * (time.process_time() - t0) / n, 2)

    out: dict[str, Any] = {}
    for label, texts, n in (("chat", [m.encode() for m in chat_messages()], 4000),
                            ("doc64k", [json_document(s).encode() for s in range(4)], 40)):  # fmt: skip
        for wbits, mem in ((15, 8), (12, 5)):
            def fresh(i: int) -> bytes:
                c = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -wbits, mem)
                return c.compress(texts[i % len(texts)]) + c.flush(zlib.Z_SYNC_FLUSH)

            kept = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -wbits, mem)

            def context(i: int) -> bytes:
                return kept.compress(texts[i % len(texts)]) + kept.flush(zlib.Z_SYNC_FLUSH)

            out[f"{label}_compress_fresh_us_w{wbits}_m{mem}"] = per_call(fresh, n)
            out[f"{label}_compress_kept_us_w{wbits}_m{mem}"] = per_call(context, n)
        blobs = []
        for t in texts[:64]:
            c = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15, 8)
            blobs.append(c.compress(t) + c.flush(zlib.Z_SYNC_FLUSH))
        out[f"{label}_inflate_fresh_us_w15"] = per_call(lambda i: zlib.decompressobj(-15).decompress(blobs[i % len(blobs)], 1 << 20), n)
    keys = [FrameKey(15, 8, 256, True) for _ in range(1000)]
    frames = {keys[0]: b"frame"}
    one = [keys[0]] * 1000
    out["frame_lookup_own_key_us"] = round(per_call(lambda i: [frames.get(k) for k in keys], 400) / 1000, 3)
    out["frame_lookup_shared_key_us"] = round(per_call(lambda i: [frames.get(k) for k in one], 400) / 1000, 3)
    out["load"] = load()
    return out


# ------------------------------------------------------------ report


def med(rows: list[dict], key: str) -> Optional[float]:
    vals = [r[key] for r in rows if r.get(key) is not None]
    return round(statistics.median(vals), 3) if vals else None


def runs(rows: list[dict], key: str, digits: int = 0) -> str:
    """Every repeat's value, in run order: the spread behind a median."""
    return ", ".join(f"{r[key]:.{digits}f}" for r in rows)


def x(a: Optional[float], b: Optional[float], digits: int = 2) -> str:
    return "-" if a is None or not b else f"{a / b:.{digits}f}x"


def markdown(res: dict[str, Any]) -> str:
    out: list[str] = []
    idle = res.get("idle", [])
    if idle:
        out += [f"### Idle: server RSS per connection, {idle[0]['connections']} connections offering permessage-deflate", "",
                "| server | deflate off KiB/conn | deflate on KiB/conn | on - off, bytes/conn | on / off | negotiated (on; off) |",
                "|---|---:|---:|---:|---:|---|"]  # fmt: skip
        for kind in ("wsheart", "autobahn", "websockets"):
            off = [s for s in idle if s["server"] == kind and not s["deflate"]]
            on = [s for s in idle if s["server"] == kind and s["deflate"]]
            if not off or not on:
                continue
            a, b = med(off, "rss_kib_per_conn"), med(on, "rss_kib_per_conn")
            out.append(f"| {kind} | {a:.2f} | {b:.2f} | {1024 * (b - a):+.0f} | {b / a:.2f}x | "
                       f"{on[0]['deflate_negotiated']}/{on[0]['open']}; {off[0]['deflate_negotiated']}/{off[0]['open']} |")  # fmt: skip
        out.append("")
    echo = res.get("echo", [])
    if echo:
        out += ["### Echo: server CPU and bytes on the wire per echoed message", "",
                "| message | server | deflate | server CPU us/msg (runs) | on / off | wsheart-on = 1 | bytes to server/msg | bytes from server/msg | from server on / off | echoed/s | server CPU % | client CPU % | negotiated |",
                "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]  # fmt: skip
        for message in ("chat", "doc64k"):
            ref = [s for s in echo if s["message"] == message and s["server"] == "wsheart" and s["deflate"]]
            ref_cpu = med(ref, "server_us_per_message") if ref else None
            for kind in ("wsheart", "autobahn", "websockets"):
                off = [s for s in echo if s["message"] == message and s["server"] == kind and not s["deflate"]]
                for deflate in (False, True):
                    rows = [s for s in echo if s["message"] == message and s["server"] == kind and s["deflate"] == deflate]
                    if not rows:
                        continue
                    cpu = med(rows, "server_us_per_message")
                    off_cpu = med(off, "server_us_per_message") if off else None
                    fr = med(rows, "wire_bytes_from_server_per_message")
                    off_fr = med(off, "wire_bytes_from_server_per_message") if off else None
                    out.append(
                        f"| {message} ({rows[0]['message_bytes']:.0f} B) | {kind} | {'on' if deflate else 'off'} | {cpu:.0f} ({runs(rows, 'server_us_per_message')}) | "
                        f"{x(cpu, off_cpu)} | {x(cpu, ref_cpu)} | {med(rows, 'wire_bytes_to_server_per_message'):.0f} | {fr:.0f} | "
                        f"{x(fr, off_fr, 3)} | {med(rows, 'echoed_per_s'):.0f} | {med(rows, 'server_cpu_pct'):.0f} | "
                        f"{med(rows, 'client_cpu_pct'):.0f} | {rows[0]['deflate_negotiated']}/{rows[0]['connections']} |"
                    )  # fmt: skip
        out.append("")
    z = res.get("zlib")
    if z:
        out += ["### zlib per message, in one process (CPU 1)", "",
                "| message | window 15, memLevel 8: compressor made for the message | kept (context takeover) | window 12, memLevel 5: made | kept | inflate, fresh decompressor |",
                "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
        for label in ("chat", "doc64k"):
            out.append(f"| {label} | {z[f'{label}_compress_fresh_us_w15_m8']} us | {z[f'{label}_compress_kept_us_w15_m8']} us | "
                       f"{z[f'{label}_compress_fresh_us_w12_m5']} us | {z[f'{label}_compress_kept_us_w12_m5']} us | "
                       f"{z[f'{label}_inflate_fresh_us_w15']} us |")  # fmt: skip
        out += ["", f"Finding a channel's shared compressed frame, per subscriber: {z['frame_lookup_own_key_us']} us with "
                f"each connection's own FrameKey (as now), {z['frame_lookup_shared_key_us']} us with one key object for all.", ""]
    fan = res.get("fanout", [])
    if fan:
        n = fan[0]["subscribers"]
        base = med([s for s in fan if s["variant"] == "wsheart"], "server_us_per_delivery")
        out += [f"### Fan-out: server CPU per delivery, {n} subscribers offering permessage-deflate, ~300-byte chat messages", "",
                "| server | us / delivery (runs) | vs wsheart without deflate | vs the same server without deflate | compressed frames / deliveries | payload bytes / frame | delivered/s | server CPU % | loadgen CPU % | server RSS MiB |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
        for variant in FANOUT_VARIANTS:
            rows = [s for s in fan if s["variant"] == variant]
            if not rows:
                continue
            cost = med(rows, "server_us_per_delivery")
            comp = sum(r["compressed_frames"] for r in rows) / sum(r["deliveries"] for r in rows)
            own = med([s for s in fan if s["variant"] == variant.split("+")[0]], "server_us_per_delivery")
            out.append(f"| {variant} | {cost:.2f} ({runs(rows, 'server_us_per_delivery', 2)}) | {x(cost, base)} | {x(cost, own)} | {comp:.3f} | {med(rows, 'payload_bytes_per_text_frame'):.0f} | "
                       f"{med(rows, 'delivered_per_second'):.0f} | {med(rows, 'server_cpu_pct'):.0f} | {med(rows, 'loadgen_cpu_pct'):.0f} | "
                       f"{med(rows, 'server_rss_kb') / 1024:.0f} |")  # fmt: skip
        out.append("")
    return "\n".join(out)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "echo-client":
        echo_client_main(sys.argv[2:])
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", default="idle,echo,fanout,zlib")
    p.add_argument("--servers", default="wsheart,autobahn,websockets")
    p.add_argument("--idle-connections", type=int, default=10000)
    p.add_argument("--settle", type=float, default=5.0, help="idle: seconds after the last open before RSS is read")
    p.add_argument("--echo-connections", type=int, default=50)
    p.add_argument("--echo-seconds", type=float, default=6.0)
    p.add_argument("--messages", default="chat,doc64k")
    p.add_argument("--subscribers", type=int, default=1000)
    p.add_argument("--fanout-seconds", type=float, default=3.0)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--json", default=str(BENCH / "results" / "deflate.json"))
    p.add_argument("--keep", action="store_true",
                   help="keep the samples of the parts not run now from the existing --json file (their meta under meta.kept)")
    p.add_argument("--replot", action="store_true", help="only rewrite the .md from the existing --json file")
    a = p.parse_args()
    if a.replot:
        old = json.loads(Path(a.json).read_text())
        Path(a.json).with_suffix(".md").write_text(markdown(old) + "\n")
        print(markdown(old))
        return
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    os.sched_setaffinity(0, {CLIENT_CPU})
    parts = a.parts.split(",")
    servers = a.servers.split(",")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "wsheart"], cwd=REPO, capture_output=True, text=True).stdout.strip())
    import autobahn
    import websockets

    res: dict[str, Any] = {
        "meta": {"command": " ".join(sys.argv), "commit": commit, "wsheart_dirty": dirty, "python": sys.version.split()[0],
                 "autobahn": autobahn.__version__, "websockets": websockets.__version__,
                 "date": time.strftime("%Y-%m-%d %H:%M:%S"), "load_at_start": load()},  # fmt: skip
        "idle": [], "echo": [], "fanout": [],
    }  # fmt: skip
    path = Path(a.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    if a.keep and path.exists():
        old = json.loads(path.read_text())
        kept = [part for part in ("idle", "echo", "fanout", "zlib") if part not in parts and old.get(part)]
        for part in kept:
            res[part] = old[part]
        res["meta"]["kept"] = {"parts": kept, "meta": old["meta"]}

    t_start = time.monotonic()

    def save() -> None:
        res["meta"]["load_at_end"] = load()
        res["meta"]["seconds"] = round(time.monotonic() - t_start)
        path.write_text(json.dumps(res, indent=2) + "\n")
        path.with_suffix(".md").write_text(markdown(res) + "\n")

    def rotate(items: list, k: int) -> list:
        return items[k % len(items):] + items[: k % len(items)]

    for r in range(a.repeats):
        variants = rotate([(s, d) for s in servers for d in (False, True)], r)
        if "idle" in parts:
            for kind, deflate in variants:
                sample = idle_run(kind, deflate, a.idle_connections, a.settle)
                sample["repeat"] = r + 1
                print(json.dumps(sample), flush=True)
                res["idle"].append(sample)
                save()
        if "echo" in parts:
            for message in a.messages.split(","):
                for kind, deflate in variants:
                    sample = echo_run(kind, deflate, message, a.echo_connections, a.echo_seconds)
                    sample["repeat"] = r + 1
                    print(json.dumps(sample), flush=True)
                    res["echo"].append(sample)
                    save()
        if "fanout" in parts:
            for variant in rotate([v for v in FANOUT_VARIANTS if FANOUT_VARIANTS[v][0] in servers], r):
                sample = asyncio.run(fanout_run(variant, a.subscribers, a.fanout_seconds))
                sample["repeat"] = r + 1
                print(json.dumps(sample), flush=True)
                res["fanout"].append(sample)
                save()
    if "zlib" in parts:
        res["zlib"] = zlib_costs()
        print(json.dumps(res["zlib"]), flush=True)
    save()
    print("\n" + markdown(res))


if __name__ == "__main__":
    main()
