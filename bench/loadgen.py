"""
The benchmark's load generator: a minimal WebSocket client written for the
bench (asyncio protocols over raw TCP sockets, no WebSocket library), run as
its own process so that it can be pinned to its own CPU and frozen with
SIGSTOP.

What the client does: the HTTP/1.1 upgrade handshake (checks the 101 status
and Sec-WebSocket-Accept), masked client frames, a pong for every ping, a
close frame in answer to a close frame, and echo round trips.

Modes (each prints JSON lines on stdout; the last one is the result):

  hold   open --connections connections (at most --concurrency handshakes
         at a time), print {"event": "open", ...}, then stay connected and
         answer pings.  On stdin, the line "stats" prints the counters; end
         of stdin (or --max-seconds) ends the process.
  burst  open --connections connections all at once and print the time
         until every opening handshake has completed.
  echo   open --connections connections, keep --depth text messages in
         flight on each for --seconds (after --warmup), print round trips
         per second and latency percentiles.

    python bench/loadgen.py hold --port 9000 --connections 1000
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import errno
import hashlib
import json
import os
import random
import resource
import socket
import struct
import sys
import threading
import time
from array import array
from collections import deque
from typing import Optional

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_HANDSHAKE_RESPONSE = 16 * 1024

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def masked_frame(opcode: int, payload: bytes) -> bytes:
    """
    One final client frame: FIN set, payload masked with a random key.
    """
    n = len(payload)
    if n < 126:
        header = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    key = random.getrandbits(32).to_bytes(4, "little")
    if n:
        repeated = (key * (n // 4 + 1))[:n]
        payload = (int.from_bytes(payload, "little") ^ int.from_bytes(repeated, "little")).to_bytes(n, "little")
    return header + key + payload


def emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def percentile(sorted_values, q: float) -> Optional[float]:
    if not sorted_values:
        return None
    i = min(len(sorted_values) - 1, max(0, int(round(q * (len(sorted_values) - 1)))))
    return sorted_values[i]


class Generator:
    """
    Counters shared by every connection of this process.
    """

    def __init__(self, port: int, source: Optional[str] = None) -> None:
        self.port = port
        # A loopback source address of its own (127.0.0.2, ...): each gives
        # another 28000 ephemeral ports towards the one server port, so
        # several load generators can hold more than 28000 connections.
        self.local_addr = (source, 0) if source else None
        self.host_header = f"127.0.0.1:{port}".encode()
        self.open_now = 0
        self.opened = 0
        self.pings = 0
        self.close_frames = 0
        self.lost_after_open = 0
        self.messages = 0
        # echo mode
        self.recording = False
        self.sending = False
        self.latencies = array("d")
        self.outstanding = 0


class Client(asyncio.Protocol):
    def __init__(self, gen: Generator, opened: asyncio.Future) -> None:
        self.gen = gen
        self.opened = opened
        self.transport: Optional[asyncio.Transport] = None
        self.buf = bytearray()
        self.is_open = False
        self.close_sent = False
        self.key = base64.b64encode(os.urandom(16))
        self.t_start = time.perf_counter()
        self.t_open: Optional[float] = None
        self.sent_at: deque = deque()
        self.fragments: list = []

    # -- TCP

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(
            b"GET / HTTP/1.1\r\nHost: " + self.gen.host_header + b"\r\n"
            b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: " + self.key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )

    def connection_lost(self, exc: Optional[Exception]) -> None:
        if self.is_open:
            self.gen.open_now -= 1
            self.gen.lost_after_open += 1
            self.gen.outstanding -= len(self.sent_at)
            self.sent_at.clear()
        elif not self.opened.done():
            self.opened.set_exception(ConnectionError(f"closed during handshake: {exc}"))
        self.is_open = False

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.is_open:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_HANDSHAKE_RESPONSE:
                    self._fail("handshake response too large")
                return
            head = bytes(self.buf[:end]).decode("latin-1")
            del self.buf[: end + 4]
            if not self._check_handshake(head):
                return
        self._parse_frames()

    def _check_handshake(self, head: str) -> bool:
        lines = head.split("\r\n")
        if not lines[0].startswith("HTTP/1.1 101"):
            self._fail(f"handshake refused: {lines[0]!r}")
            return False
        expected = base64.b64encode(hashlib.sha1(self.key + GUID).digest()).decode()
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("sec-websocket-accept") != expected:
            self._fail("bad Sec-WebSocket-Accept")
            return False
        self.is_open = True
        self.t_open = time.perf_counter()
        self.gen.open_now += 1
        self.gen.opened += 1
        if not self.opened.done():
            self.opened.set_result(self.t_open - self.t_start)
        return True

    def _fail(self, why: str) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(why))
        if self.transport is not None:
            self.transport.abort()

    # -- WebSocket frames

    def _parse_frames(self) -> None:
        buf = self.buf
        pos = 0
        size = len(buf)
        while size - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            n = b1 & 0x7F
            head = 2
            if n == 126:
                if size - pos < 4:
                    break
                n = (buf[pos + 2] << 8) | buf[pos + 3]
                head = 4
            elif n == 127:
                if size - pos < 10:
                    break
                n = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                head = 10
            mask = None
            if b1 & 0x80:  # servers must not mask; tolerate it anyway
                if size - pos < head + 4:
                    break
                mask = bytes(buf[pos + head : pos + head + 4])
                head += 4
            if size - pos < head + n:
                break
            payload = bytes(buf[pos + head : pos + head + n])
            pos += head + n
            if mask is not None and n:
                repeated = (mask * (n // 4 + 1))[:n]
                payload = (int.from_bytes(payload, "little") ^ int.from_bytes(repeated, "little")).to_bytes(n, "little")
            self._frame(b0 & 0x80, b0 & 0x0F, payload)
            if self.transport is None or self.transport.is_closing():
                break
        del buf[:pos]

    def _frame(self, fin: int, opcode: int, payload: bytes) -> None:
        if opcode == OP_PING:
            self.gen.pings += 1
            self.transport.write(masked_frame(OP_PONG, payload))
        elif opcode == OP_PONG:
            pass
        elif opcode == OP_CLOSE:
            self.gen.close_frames += 1
            if not self.close_sent:
                self.close_sent = True
                self.transport.write(masked_frame(OP_CLOSE, payload[:2]))
            self.transport.close()
        elif opcode in (OP_TEXT, OP_BINARY, OP_CONT):
            if not fin:
                self.fragments.append(payload)
                return
            if self.fragments:
                self.fragments.clear()
            self._message()

    def _message(self) -> None:
        gen = self.gen
        gen.messages += 1
        if self.sent_at:
            t0 = self.sent_at.popleft()
            gen.outstanding -= 1
            if gen.recording:
                gen.latencies.append(time.perf_counter() - t0)
            if gen.sending:
                self.send_echo()

    def send_echo(self) -> None:
        self.sent_at.append(time.perf_counter())
        self.gen.outstanding += 1
        self.transport.write(masked_frame(OP_TEXT, ECHO_PAYLOAD))


ECHO_PAYLOAD = b"wsheart-bench-echo-0123456789abc"  # 32 bytes of text


IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


async def connect(loop: asyncio.AbstractEventLoop, gen: Generator, opened: asyncio.Future) -> tuple:
    if gen.local_addr is None:
        return await loop.create_connection(lambda: Client(gen, opened), "127.0.0.1", gen.port)
    # From a source address of its own: bind() with port 0 would search
    # for a free port itself (slower and slower as thousands are taken);
    # IP_BIND_ADDRESS_NO_PORT leaves the choice to connect(), as without
    # a bind.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind(gen.local_addr)
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", gen.port))
    except BaseException:
        sock.close()
        raise
    return await loop.create_connection(lambda: Client(gen, opened), sock=sock)


async def open_one(gen: Generator, timeout: float) -> tuple[Client, float]:
    loop = asyncio.get_running_loop()
    opened = loop.create_future()
    transport, client = await asyncio.wait_for(connect(loop, gen, opened), timeout)
    try:
        took = await asyncio.wait_for(opened, timeout)
    except BaseException:
        transport.abort()
        raise
    return client, took


async def open_many(gen: Generator, n: int, concurrency: int, timeout: float):
    """
    Open n connections with at most `concurrency` handshakes in flight
    (0: all at once).  Returns (clients, handshake times, failures by kind).
    """
    sem = asyncio.Semaphore(concurrency) if concurrency > 0 else None
    clients: list[Client] = []
    times: list[float] = []
    failures: dict[str, int] = {}

    async def one():
        try:
            if sem is None:
                client, took = await open_one(gen, timeout)
            else:
                async with sem:
                    client, took = await open_one(gen, timeout)
            clients.append(client)
            times.append(took)
        except Exception as e:  # counted and reported, never retried
            kind = type(e).__name__ + (f" {errno.errorcode.get(e.errno, e.errno)}" if isinstance(e, OSError) and e.errno else "")
            failures[kind] = failures.get(kind, 0) + 1

    await asyncio.gather(*(one() for _ in range(n)))
    return clients, times, failures


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def stats(gen: Generator) -> dict:
    return {
        "event": "stats",
        "open": gen.open_now,
        "opened": gen.opened,
        "pings": gen.pings,
        "close_frames": gen.close_frames,
        "lost": gen.lost_after_open,
        "cpu_s": cpu_seconds(),
        "t": time.monotonic(),
    }


async def hold(args) -> None:
    loop = asyncio.get_running_loop()
    gen = Generator(args.port, args.source)
    commands: asyncio.Queue = asyncio.Queue()

    def read_stdin():  # a thread: stdin lines become commands, EOF ends
        for line in sys.stdin:
            loop.call_soon_threadsafe(commands.put_nowait, line.strip())
        loop.call_soon_threadsafe(commands.put_nowait, None)

    threading.Thread(target=read_stdin, daemon=True).start()
    t0 = time.perf_counter()
    clients, times, failures = await open_many(gen, args.connections, args.concurrency, args.timeout)
    emit(
        {
            "event": "open",
            "open": gen.open_now,
            "failed": failures,
            "seconds": time.perf_counter() - t0,
        }
    )
    deadline = loop.time() + args.max_seconds
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        try:
            cmd = await asyncio.wait_for(commands.get(), remaining)
        except TimeoutError:
            break
        if cmd is None:
            break
        if cmd == "stats":
            emit(stats(gen))
    final = stats(gen)
    final["event"] = "done"
    emit(final)
    for c in clients:
        if c.transport is not None:
            c.transport.abort()


async def burst(args) -> None:
    gen = Generator(args.port, args.source)
    c0 = cpu_seconds()
    t0 = time.perf_counter()
    clients, times, failures = await open_many(gen, args.connections, 0, args.timeout)
    total = time.perf_counter() - t0
    times.sort()
    emit(
        {
            "event": "done",
            "open": len(clients),
            "failed": failures,
            "seconds": total,
            "handshake_p50_s": percentile(times, 0.50),
            "handshake_p99_s": percentile(times, 0.99),
            "handshake_max_s": times[-1] if times else None,
            "cpu_s": cpu_seconds() - c0,
        }
    )
    for c in clients:
        c.transport.abort()


async def echo(args) -> None:
    gen = Generator(args.port, args.source)
    clients, _times, failures = await open_many(gen, args.connections, args.concurrency, args.timeout)
    emit({"event": "open", "open": len(clients), "failed": failures})
    gen.sending = True
    for c in clients:
        for _ in range(args.depth):
            c.send_echo()
    await asyncio.sleep(args.warmup)
    gen.recording = True
    c0, t0 = cpu_seconds(), time.perf_counter()
    emit({"event": "recording"})
    await asyncio.sleep(args.seconds)
    gen.recording = False
    window = time.perf_counter() - t0
    emit({"event": "recorded"})
    cpu = cpu_seconds() - c0
    gen.sending = False
    # let the messages in flight come back (bounded)
    drain_deadline = time.perf_counter() + 3.0
    while gen.outstanding > 0 and time.perf_counter() < drain_deadline:
        await asyncio.sleep(0.05)
    lat = sorted(gen.latencies)
    emit(
        {
            "event": "done",
            "open": len(clients),
            "failed": failures,
            "lost": gen.lost_after_open,
            "window_s": window,
            "round_trips": len(lat),
            "rps": len(lat) / window,
            "p50_ms": None if not lat else percentile(lat, 0.50) * 1000,
            "p99_ms": None if not lat else percentile(lat, 0.99) * 1000,
            "max_ms": None if not lat else lat[-1] * 1000,
            "unanswered_at_end": gen.outstanding,
            "cpu_pct": 100.0 * cpu / window,
        }
    )
    for c in clients:
        c.transport.abort()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=("hold", "burst", "echo"))
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--connections", type=int, default=100)
    p.add_argument("--source", help="loopback source address to connect from (127.0.0.2, ...)")
    p.add_argument("--concurrency", type=int, default=500, help="handshakes in flight while opening (hold, echo)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per connect and per handshake")
    p.add_argument("--max-seconds", type=float, default=300.0, help="hold: longest stay (safety bound)")
    p.add_argument("--depth", type=int, default=10, help="echo: messages in flight per connection")
    p.add_argument("--seconds", type=float, default=10.0, help="echo: measured window")
    p.add_argument("--warmup", type=float, default=1.0, help="echo: unmeasured warm-up")
    args = p.parse_args()
    limit = raise_nofile()
    if args.connections + 64 > limit:
        sys.exit(f"RLIMIT_NOFILE hard limit {limit} is too low for {args.connections} connections")
    runner = {"hold": hold, "burst": burst, "echo": echo}[args.mode]
    asyncio.run(runner(args))


if __name__ == "__main__":
    main()
