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

With --tls-ca CA.pem (hold, burst, echo) every connection is wss: TLS
through asyncio with Python's default client context trusting that CA,
no ALPN offered.

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
        # Extra request header lines (b"Name: value\r\n"), the same on
        # every connection (--header), and bearer tokens, one per
        # connection in turn (--bearer-file).
        self.extra_headers = b""
        # --tls-ca: wss, an ssl.SSLContext trusting that CA (no ALPN offered)
        self.tls: dict = {}
        self.bearers: list[bytes] = []
        self._next_bearer = 0
        self.open_now = 0
        self.opened = 0
        self.pings = 0
        self.close_frames = 0
        self.lost_after_open = 0
        self.messages = 0
        # permessage-deflate (--deflate): handshakes whose 101 accepted the
        # offer, and data frames received with RSV1 set (compressed; this
        # client counts them but never inflates)
        self.deflate_negotiated = 0
        self.rsv1_frames = 0
        # hold --silent: never answer a ping (a frozen peer that the kernel
        # still ACKs for); hold --report-losses: one JSON line per
        # connection lost after its open (seconds since the open, close code)
        self.silent = False
        self.report_losses = False
        self.close_codes: dict = {}
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
        gen = self.gen
        extra = gen.extra_headers
        if gen.bearers:
            extra += b"Authorization: Bearer " + gen.bearers[gen._next_bearer % len(gen.bearers)] + b"\r\n"
            gen._next_bearer += 1
        self.transport.write(
            b"GET / HTTP/1.1\r\nHost: " + gen.host_header + b"\r\n"
            b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: " + self.key + b"\r\nSec-WebSocket-Version: 13\r\n" + extra + b"\r\n"
        )

    def connection_lost(self, exc: Optional[Exception]) -> None:
        if self.is_open:
            self.gen.open_now -= 1
            self.gen.lost_after_open += 1
            code = getattr(self, "close_code", None)
            self.gen.close_codes[str(code)] = self.gen.close_codes.get(str(code), 0) + 1
            if self.gen.report_losses:
                emit({"event": "lost", "after_open_s": time.perf_counter() - self.t_open, "close_code": code,
                      "t": time.monotonic()})
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
        if headers.get("sec-websocket-extensions", "").startswith("permessage-deflate"):
            self.gen.deflate_negotiated += 1
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
            if b0 & 0x40:
                self.gen.rsv1_frames += 1
            self._frame(b0 & 0x80, b0 & 0x0F, payload)
            if self.transport is None or self.transport.is_closing():
                break
        del buf[:pos]

    def _frame(self, fin: int, opcode: int, payload: bytes) -> None:
        if opcode == OP_PING:
            self.gen.pings += 1
            if not self.gen.silent:
                self.transport.write(masked_frame(OP_PONG, payload))
        elif opcode == OP_PONG:
            pass
        elif opcode == OP_CLOSE:
            self.gen.close_frames += 1
            self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
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


DEFLATE_OFFER = b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
ECHO_PAYLOAD = b"wsheart-bench-echo-0123456789abc"  # 32 bytes of text


IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


async def connect(loop: asyncio.AbstractEventLoop, gen: Generator, opened: asyncio.Future) -> tuple:
    if gen.local_addr is None:
        return await loop.create_connection(lambda: Client(gen, opened), "127.0.0.1", gen.port, **gen.tls)
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
    return await loop.create_connection(lambda: Client(gen, opened), sock=sock, **gen.tls)


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


def make_generator(args) -> Generator:
    gen = Generator(args.port, args.source)
    gen.silent = getattr(args, "silent", False)
    gen.report_losses = getattr(args, "report_losses", False)
    for h in args.header or ():
        name, sep, value = h.partition(":")
        if not sep or not name.strip():
            sys.exit(f"--header {h!r}: expected 'Name: value'")
        gen.extra_headers += f"{name.strip()}: {value.strip()}\r\n".encode("latin-1")
    if args.deflate:
        # What browsers offer.  Idle or counting-only use: this client never
        # sends compressed data and does not inflate what it receives.
        gen.extra_headers += DEFLATE_OFFER
    if getattr(args, "tls_ca", None):
        import ssl

        # Python's default client context: TLS 1.2-1.3, the server's
        # certificate checked against this CA for 127.0.0.1, no ALPN.
        gen.tls = {"ssl": ssl.create_default_context(cafile=args.tls_ca), "server_hostname": "127.0.0.1"}
    if args.bearer_file:
        with open(args.bearer_file, "rb") as f:
            gen.bearers = [line.strip() for line in f if line.strip()]
        if not gen.bearers:
            sys.exit(f"--bearer-file {args.bearer_file}: no token")
    return gen


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
        "deflate_negotiated": gen.deflate_negotiated,
        "close_codes": dict(gen.close_codes),
        "cpu_s": cpu_seconds(),
        "t": time.monotonic(),
    }


async def hold(args) -> None:
    loop = asyncio.get_running_loop()
    gen = make_generator(args)
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
            "deflate_negotiated": gen.deflate_negotiated,
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
    gen = make_generator(args)
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
    gen = make_generator(args)
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


# ---------------------------------------------------------------- fleet mode
#
# Clients that reconnect as wsheart's own clients do (wsheart/backoff.py,
# wsheart/client.py _after_close / _after_failed_handshake,
# wsheart/static/wsheart.js), with that policy's default settings:
#
# - full-jitter backoff: floor 0.1 s + uniform(0, min(cap 60, 1 * 2 ** failures)),
#   the failure count incremented by each failed attempt and reset only after
#   a connection stayed open 30 s;
# - a 1013 close with a JSON {"retry_after", "jitter"} reason on a connection
#   not yet stable: floor + retry_after + uniform(0, jitter) if retry_after is
#   at least the next backoff window (kept as the schedule, no failure
#   counted), else max(that, the backoff delay), which counts a failure;
# - HTTP 503/429 with Retry-After: Retry-After + the backoff delay (a failure);
# - a refused or reset TCP connect, a connection lost before the answer, any
#   other refusal or close: the backoff delay;
# - 10 s to connect (HostnameEndpoint's timeout) and 10 s for the handshake.
#
# Every handshake offers the wsheart.hints subprotocol, so that wsheart
# answers "not now" in-band (open, then close 1013 with the retry window).
# Pings are answered; the clients send no pings of their own.
#
# Every attempt is recorded; before each attempt the client checks that its
# own computed delay has passed, and that the policy's lower bound for the
# reason (floor; floor + retry_after; Retry-After + floor) has passed: a
# harness that retries early shows up in "early_*".

FLOOR, INITIAL, FACTOR, CAP, STABLE_AFTER = 0.1, 1.0, 2.0, 60.0, 30.0
CONNECT_TIMEOUT = HANDSHAKE_TIMEOUT = 10.0
EARLY_TOLERANCE = 0.001


def backoff_window(failures: int) -> float:
    window = INITIAL
    for _ in range(failures):
        window *= FACTOR
        if window >= CAP:
            return CAP
    return min(CAP, window)


class FleetConn(Client):
    """
    One attempt of a PolicyClient: the TCP connect, the handshake, then the
    open connection.  Raw non-blocking sockets on the loop's add_reader /
    add_writer (no Task, Future or Transport per attempt: 10000 clients
    returning at once must not leave the generator seconds behind); the
    object is its own "transport" for Client's frame parser.
    """

    def __init__(self, owner: "PolicyClient", gen: Generator) -> None:
        super().__init__(gen, None)  # type: ignore[arg-type]
        self.owner = owner
        self.loop = owner.fleet.loop
        self.sock: Optional[socket.socket] = None
        self.fd = -1
        self.closing = False
        self.timer: Optional[asyncio.TimerHandle] = None
        self.status: Optional[int] = None
        self.retry_after: Optional[str] = None
        self.close_code: Optional[int] = None
        self.close_reason = ""
        self.decided = False

    # -- the socket

    def start(self, source: Optional[str]) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        self.sock, self.fd = sock, sock.fileno()
        try:
            if source:
                sock.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                sock.bind((source, 0))
            err = sock.connect_ex(("127.0.0.1", self.gen.port))
        except OSError as e:
            err = e.errno or -1
        if err == 0:
            self._connected()
        elif err == errno.EINPROGRESS:
            self.loop.add_writer(self.fd, self._on_connect)
            self.timer = self.loop.call_later(CONNECT_TIMEOUT, self._timed_out, "connect_timeout")
        else:
            self._connect_failed(err)

    def _connect_failed(self, err: int) -> None:
        self._drop()
        kind = {errno.ECONNREFUSED: "refused", errno.ECONNRESET: "reset", errno.ETIMEDOUT: "connect_timeout"}
        self.owner.ended(self, kind.get(err, "connect_" + errno.errorcode.get(err, str(err))))

    def _on_connect(self) -> None:
        self.loop.remove_writer(self.fd)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._connect_failed(err)
        else:
            self._connected()

    def _connected(self) -> None:
        self.transport = self  # type: ignore[assignment]
        self.connection_made(self)  # writes the upgrade request
        self.owner.tcp_connected(self)
        if self.sock is not None:
            self.loop.add_reader(self.fd, self._on_read)
            self.timer = self.loop.call_later(HANDSHAKE_TIMEOUT, self._timed_out, "timeout")

    def _timed_out(self, kind: str) -> None:
        self.timer = None
        if not self.is_open and not self.decided:
            self.owner.ended(self, kind)
            self.abort()

    def _on_read(self) -> None:
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return
        except ConnectionResetError as e:
            self._lost(e)
            return
        except OSError as e:
            self._lost(e)
            return
        if not data:
            self._lost(None)
            return
        self.data_received(data)

    def _lost(self, exc: Optional[Exception]) -> None:
        self._drop()
        self.connection_lost(exc)

    def _drop(self, rst: bool = False) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.sock is None:
            return
        self.loop.remove_reader(self.fd)
        self.loop.remove_writer(self.fd)
        if rst:
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        self.sock.close()
        self.sock = None

    # -- what Client's parser calls on its "transport"

    def write(self, data: bytes) -> None:
        if self.sock is not None and not self.closing:
            try:
                self.sock.send(data)  # small frames into a socket buffer with room
            except OSError:
                pass

    def is_closing(self) -> bool:
        return self.closing or self.sock is None

    def close(self) -> None:
        # After the close reply: a FIN, then nothing more is read.
        self.closing = True
        was_open = self.is_open
        self._drop()
        if was_open:
            self.is_open = False
            self.gen.open_now -= 1

    def abort(self) -> None:
        self.closing = True
        was_open = self.is_open
        self._drop(rst=True)
        if was_open:
            self.is_open = False
            self.gen.open_now -= 1

    # -- the protocol

    def _fail(self, why: str) -> None:
        self.owner.ended(self, "bad_answer")
        self.abort()

    def _check_handshake(self, head: str) -> bool:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        lines = head.split("\r\n")
        parts = lines[0].split(" ", 2)
        try:
            self.status = int(parts[1])
        except (IndexError, ValueError):
            self.status = 0
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if self.status != 101:
            self.retry_after = headers.get("retry-after")
            self.owner.ended(self, f"http_{self.status}")
            self.abort()
            return False
        if headers.get("sec-websocket-accept") != base64.b64encode(hashlib.sha1(self.key + GUID).digest()).decode():
            self.owner.ended(self, "bad_accept")
            self.abort()
            return False
        self.is_open = True
        self.t_open = time.monotonic()
        self.gen.open_now += 1
        self.gen.opened += 1
        self.owner.opened(self)
        return True

    def _frame(self, fin: int, opcode: int, payload: bytes) -> None:
        if opcode == OP_CLOSE:
            self.gen.close_frames += 1
            self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            self.close_reason = payload[2:].decode("utf-8", "replace")
            if not self.close_sent:
                self.close_sent = True
                self.write(masked_frame(OP_CLOSE, payload[:2]))
            self.close()
            self.owner.ended(self, "closed")
        else:
            super()._frame(fin, opcode, payload)

    def connection_lost(self, exc: Optional[Exception]) -> None:
        if self.is_open:
            self.gen.open_now -= 1
            self.is_open = False
            self.owner.ended(self, "dropped")
        elif isinstance(exc, ConnectionResetError):
            self.owner.ended(self, "reset")
        else:
            self.owner.ended(self, "eof_before_answer")


class PolicyClient:
    """
    One wsheart client: its failure count, its stable timer, its attempts.
    """

    def __init__(self, fleet: "Fleet", idx: int, source: Optional[str]) -> None:
        self.fleet = fleet
        self.idx = idx
        self.source = source
        self.failures = 0
        self.stable = False
        self.stable_handle: Optional[asyncio.TimerHandle] = None
        self.timer: Optional[asyncio.TimerHandle] = None
        self.conn: Optional[FleetConn] = None
        self.rec: Optional[list] = None
        self.allowed_at = 0.0  # now + the delay this client computed
        self.policy_min_at = 0.0  # now + the policy's lower bound for that reason
        self.early = False

    # -- the policy

    def failed(self) -> float:
        delay = FLOOR + random.random() * backoff_window(self.failures)
        self.failures += 1
        return delay

    def schedule(self, delay: float, lower_bound: float, why: str) -> None:
        now = time.monotonic()
        self.allowed_at = now + delay
        self.policy_min_at = now + lower_bound
        if self.rec is not None:
            self.rec[5] = why
            self.rec[6] = round(delay, 4)
        self.fleet.waiting += 1
        self.timer = self.fleet.loop.call_later(delay, self.attempt)

    # -- an attempt

    def attempt(self) -> None:
        fleet = self.fleet
        if self.timer is not None:
            fleet.waiting -= 1
        self.timer = None
        if fleet.stopping:
            return
        now = time.monotonic()
        if now + EARLY_TOLERANCE < self.allowed_at:
            fleet.early_vs_computed += 1
            self.early = True
        if now + EARLY_TOLERANCE < self.policy_min_at:
            fleet.early_vs_policy += 1
            self.early = True
        # [client, t_start, t_tcp, t_open, t_end, outcome->next-delay reason, next delay, failures before]
        self.rec = [self.idx, round(now, 4), None, None, None, None, None, self.failures]
        fleet.attempts.append(self.rec)
        fleet.connecting += 1
        conn = FleetConn(self, fleet.gen)
        self.conn = conn
        conn.start(self.source)

    def tcp_connected(self, conn: FleetConn) -> None:
        if self.rec is not None and conn is self.conn:
            self.rec[2] = round(time.monotonic(), 4)

    def opened(self, conn: FleetConn) -> None:
        fleet = self.fleet
        fleet.connecting -= 1
        self.rec[3] = round(conn.t_open, 4)
        self.stable = False
        self.stable_handle = fleet.loop.call_later(STABLE_AFTER, self._became_stable)
        fleet.last_open = conn.t_open

    def _became_stable(self) -> None:
        self.stable_handle = None
        self.stable = True
        self.failures = 0
        self.fleet.stable += 1

    def ended(self, conn: FleetConn, outcome: str) -> None:
        """
        The attempt (or the open connection) is over: decide the next one.
        """
        if conn.decided or conn is not self.conn:
            return
        conn.decided = True
        fleet = self.fleet
        was_open = self.rec[3] is not None
        if not was_open:
            fleet.connecting -= 1
        self.rec[4] = round(time.monotonic(), 4)
        if self.stable_handle is not None:
            self.stable_handle.cancel()
            self.stable_handle = None
        if self.stable:
            fleet.stable -= 1
        was_stable, self.stable = self.stable, False
        self.conn = None
        if fleet.stopping:
            return
        if outcome == "closed":
            code = conn.close_code
            hint = parse_hint(code, conn.close_reason)
            kind = f"close_{code}"
            if hint is not None:
                kind += "_hint"
                retry_after, jitter = hint
                delay = FLOOR + retry_after + random.random() * jitter
                if not was_stable and retry_after < backoff_window(self.failures):
                    delay = max(delay, self.failed())
                self.schedule(delay, FLOOR + retry_after, kind)
                return
            self.schedule(self.failed(), FLOOR, kind)
            return
        if outcome.startswith("http_"):
            wait = None
            if conn.status in (429, 503) and conn.retry_after and conn.retry_after.strip().isdigit():
                wait = min(3600.0, float(conn.retry_after.strip()))
            if wait is not None:
                self.schedule(wait + self.failed(), wait + FLOOR, outcome + "_retry_after")
                return
        self.schedule(self.failed(), FLOOR, outcome)

    def stop(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self.stable_handle is not None:
            self.stable_handle.cancel()
        if self.conn is not None:
            self.conn.abort()


def parse_hint(code: Optional[int], reason: str) -> Optional[tuple[float, float]]:
    """
    wsheart.backoff.hint_from_close: 1012/1013 with JSON {"retry_after", "jitter"}.
    """
    if code not in (1012, 1013) or not reason:
        return None
    try:
        data = json.loads(reason)
    except ValueError:
        return None
    if not isinstance(data, dict) or "retry_after" not in data:
        return None
    ra, j = data["retry_after"], data.get("jitter", 0)
    for v in (ra, j):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
            return None
    ra = min(3600.0, max(0.0, float(ra)))
    return ra, min(min(3600.0, max(0.0, float(j))), 3600.0 - ra)


class Fleet:
    def __init__(self, loop: asyncio.AbstractEventLoop, gen: Generator) -> None:
        self.loop = loop
        self.gen = gen
        self.clients: list[PolicyClient] = []
        self.attempts: list[list] = []
        self.waiting = 0
        self.connecting = 0
        self.stable = 0
        self.last_open = 0.0
        self.early_vs_computed = 0
        self.early_vs_policy = 0
        self.stopping = False

    def stats(self) -> dict:
        return {
            "event": "stats",
            "clients": len(self.clients),
            "open": self.gen.open_now,
            "stable": self.stable,
            "waiting": self.waiting,
            "connecting": self.connecting,
            "attempts": len(self.attempts),
            "last_open": self.last_open,
            "pings": self.gen.pings,
            "early_vs_computed": self.early_vs_computed,
            "early_vs_policy": self.early_vs_policy,
            "early_clients": sum(1 for c in self.clients if c.early),
            "cpu_s": cpu_seconds(),
            "t": time.monotonic(),
        }


async def fleet(args) -> None:
    """
    --connections wsheart-policy clients, started at --start-rate a second
    (each then lives by the policy).  stdin: "stats" prints the counters,
    "dump PATH SINCE" writes every attempt that started at or after SINCE
    (time.monotonic(), the same clock in every process) to PATH as JSON;
    end of stdin (or --max-seconds) ends the process.
    """
    loop = asyncio.get_running_loop()
    gen = make_generator(args)
    gen.extra_headers += b"Sec-WebSocket-Protocol: wsheart.hints\r\n"
    fl = Fleet(loop, gen)
    sources = [s for s in (args.sources or "").split(",") if s] or [args.source]
    commands: asyncio.Queue = asyncio.Queue()

    def read_stdin():
        for line in sys.stdin:
            loop.call_soon_threadsafe(commands.put_nowait, line.strip())
        loop.call_soon_threadsafe(commands.put_nowait, None)

    threading.Thread(target=read_stdin, daemon=True).start()
    t0 = loop.time()
    for i in range(args.connections):
        c = PolicyClient(fl, i, sources[i % len(sources)])
        fl.clients.append(c)
        loop.call_at(t0 + i / args.start_rate, c.attempt)
    deadline = t0 + args.max_seconds
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
            emit(fl.stats())
        elif cmd.startswith("dump "):
            _, path, since = cmd.split(" ", 2)
            since_t = float(since)
            with open(path, "w") as f:
                json.dump(
                    {
                        "fields": ["client", "t_start", "t_tcp", "t_open", "t_end", "outcome", "next_delay", "failures_before"],
                        "attempts": [r for r in fl.attempts if r[1] >= since_t],
                        "stats": fl.stats(),
                    },
                    f,
                )
            emit({"event": "dumped", "path": path})
    fl.stopping = True
    final = fl.stats()
    final["event"] = "done"
    emit(final)
    for c in fl.clients:
        c.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=("hold", "burst", "echo", "fleet"))
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--connections", type=int, default=100)
    p.add_argument("--source", help="loopback source address to connect from (127.0.0.2, ...)")
    p.add_argument("--concurrency", type=int, default=500, help="handshakes in flight while opening (hold, echo)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per connect and per handshake")
    p.add_argument("--max-seconds", type=float, default=300.0, help="hold: longest stay (safety bound)")
    p.add_argument("--depth", type=int, default=10, help="echo: messages in flight per connection")
    p.add_argument("--seconds", type=float, default=10.0, help="echo: measured window")
    p.add_argument("--warmup", type=float, default=1.0, help="echo: unmeasured warm-up")
    p.add_argument("--sources", help="fleet: loopback source addresses, comma-separated, used in turn by the clients")
    p.add_argument("--start-rate", type=float, default=1000.0, help="fleet: clients started per second")
    p.add_argument("--header", action="append", help="an extra request header 'Name: value' on every handshake (repeatable)")
    p.add_argument("--deflate", action="store_true", help="offer permessage-deflate (as browsers do; counts the 101s that accepted it; hold mode: never inflates)")
    p.add_argument("--bearer-file", help="tokens, one a line: each handshake sends 'Authorization: Bearer' with the next one")
    p.add_argument("--tls-ca", help="connect with TLS (wss) trusting this CA certificate (PEM); hold, burst, echo")
    p.add_argument("--silent", action="store_true", help="hold: never answer a ping (frozen peers)")
    p.add_argument("--report-losses", action="store_true",
                   help="hold: a JSON line for every connection lost after its open")
    args = p.parse_args()
    limit = raise_nofile()
    if args.connections + 64 > limit:
        sys.exit(f"RLIMIT_NOFILE hard limit {limit} is too low for {args.connections} connections")
    runner = {"hold": hold, "burst": burst, "echo": echo, "fleet": fleet}[args.mode]
    asyncio.run(runner(args))


if __name__ == "__main__":
    main()
