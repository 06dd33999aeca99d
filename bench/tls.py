"""
wsheart over TLS (wss) beside Node `ws` over TLS, on loopback:

1. handshake: server CPU per connection (TCP + TLS handshake + WebSocket
   upgrade + close) for N connections made by a client process (Python
   `ssl`, blocking sockets with TCP_NODELAY, --handshake-concurrency
   threads, on CPU 1), batches of every server and mode interleaved:
   plain ws (no TLS: the baseline), TLS with a full handshake (no
   session), TLS resuming the session of the thread's previous connection
   (`wrap_socket(..., session=saved)`; the session is taken after the 101
   has been read, so that a TLS 1.3 ticket, which the server sends after
   its handshake, has arrived).  Every connection's `session_reused` is
   counted: what resumed is reported, nothing is assumed.  Server CPU is
   utime + stime from /proc/PID/stat over the batch, divided by N.
2. idle: server RSS per idle connection, N idle connections opened by
   `loadgen.py hold` (with `--tls-ca` for wss; it answers every ping):
   RSS before (after a 20-connection warm-up and 2 s), with all open
   (after --settle s), and after all closed (+--after s); plain ws beside.
3. soak (wsheart only): --soak-seconds of churn over TLS from one asyncio
   client process keeping --soak-concurrency connections cycling (TLS
   connect, upgrade, one echoed message, close handshake); every 10th
   cycle aborts mid-handshake instead, in turn: TCP connect then close, half
   a ClientHello then close, a whole ClientHello then close once the
   server's first flight arrives.  Server RSS, CPU and open fds every 5 s.

Certificates are made at start with `cryptography` in a temp dir: a CA and
a leaf for IP 127.0.0.1 and DNS localhost, both ECDSA P-256 (SHA-256
signatures); the servers present the leaf alone, the clients trust the CA.
No client offers ALPN.

wsheart: `twistd --reactor wsheart -n --pidfile= wsheart --tls-endpoint
tcp:PORT:interface=127.0.0.1 --tls-key KEY --tls-cert CERT`, heartbeat
10 s / 5 s / 2 missed (run.py's S3/S4), from a copy of the checkout taken
at start (run.py's snapshot) through PYTHONPATH.  Node: peers/ws_server.js
with --key/--cert (https.createServer + ws, its heartbeat, 10 s).
Servers on CPU 0, clients on CPU 1, 127.0.0.1 only, every process stopped
by its pid, every wait bounded.

    flock /tmp/wsheart-bench.lock bench/.venv/bin/python bench/tls.py           # about 7 minutes (--repeats 5: 8)
    flock /tmp/wsheart-bench.lock bench/.venv/bin/python bench/tls.py --quick   # about 2 minutes

Writes bench/results/tls.json (meta, raw samples) and bench/results/tls.md
(also printed); logs in bench/results/logs/tls-*.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import datetime
import hashlib
import ipaddress
import json
import os
import queue
import resource
import shutil
import signal
import socket
import ssl
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

import run as bench_run  # noqa: E402  (bench/run.py: environment, processes, /proc)
from loadgen import GUID, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, masked_frame, percentile  # noqa: E402
from run import (  # noqa: E402
    CLIENT_CPU,
    SERVER_CPU,
    LoadGen,
    core_load,
    core_ticks,
    established,
    free_port,
    loadavg,
    proc_cpu_s,
    proc_rss_kb,
    wait_port,
)

RESULTS = BENCH / "results"
LOGS = RESULTS / "logs"
HB = (10.0, 5.0, 2)  # interval s, timeout s, wsheart max-missed: run.py's S3/S4
SERVERS = ["wsheart", "ws"]
ABORT_KINDS = ["tcp_only", "half_client_hello", "client_hello_then_close"]


# ---------------------------------------------------------------- certificates


def make_certs(d: Path, key_type: str = "ecdsa-p256") -> dict[str, str]:
    """A CA and a leaf for 127.0.0.1/localhost in C{d}: ECDSA P-256 (or RSA 2048) keys."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    def new_key():
        if key_type == "rsa2048":
            return rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return ec.generate_private_key(ec.SECP256R1())
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def usage(**on: bool) -> x509.KeyUsage:
        names = ["digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
                 "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only"]
        return x509.KeyUsage(**{n: on.get(n, False) for n in names})

    ca_key = new_key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "wsheart bench CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = new_key()
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                    x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage(digital_signature=True, key_encipherment=key_type == "rsa2048"), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = {"key": d / "key.pem", "cert": d / "cert.pem", "ca": d / "ca.pem"}
    paths["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    paths["cert"].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return {k: str(v) for k, v in paths.items()}


KEY_TYPES = {"ecdsa-p256": "ECDSA P-256", "rsa2048": "RSA 2048"}


def cert_description(key_type: str) -> str:
    name = KEY_TYPES[key_type]
    return (f"{name} leaf (SAN IP 127.0.0.1, DNS localhost) signed by an {name} CA, SHA-256 signatures; "
            "the server sends the leaf alone")


# ---------------------------------------------------------------- WebSocket bits shared by the clients


def upgrade_request(port: int) -> tuple[bytes, str]:
    key = base64.b64encode(os.urandom(16))
    req = (b"GET / HTTP/1.1\r\nHost: 127.0.0.1:" + str(port).encode() + b"\r\n"
           b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
    return req, base64.b64encode(hashlib.sha1(key + GUID).digest()).decode()


def check_101(head: bytes, accept: str) -> None:
    lines = head.decode("latin-1").split("\r\n")
    if not lines[0].startswith("HTTP/1.1 101"):
        raise ConnectionError(f"refused: {lines[0][:60]!r}")
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "sec-websocket-accept":
            if value.strip() != accept:
                raise ConnectionError("bad Sec-WebSocket-Accept")
            return
    raise ConnectionError("no Sec-WebSocket-Accept")


CLOSE_1000 = struct.pack("!H", 1000)


def client_context(ca: str) -> ssl.SSLContext:
    # Python's default client context (TLS 1.2-1.3, certificate checked):
    # it offers no ALPN.
    return ssl.create_default_context(cafile=ca)


def emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def error_kind(e: BaseException) -> str:
    text = str(e)
    return f"{type(e).__name__}: {text[:80]}" if text else type(e).__name__


# ---------------------------------------------------------------- client 1: handshakes


def handshake_client(argv: list[str]) -> None:
    """
    N connections, each: TCP connect, TLS handshake (or none with
    --mode plain), upgrade, close frame, read until the server's EOF.
    Prints {"event": "ready"} after the warm-up (and the seeding of one
    session per thread for --mode resumed), waits for "go" on stdin, then
    prints {"event": "done", ...}.
    """
    p = argparse.ArgumentParser(prog="tls.py handshake-client")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--ca")
    p.add_argument("--mode", choices=("plain", "full", "resumed"), required=True)
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--no-wait", action="store_true", help="do not wait for 'go' (warm-up use)")
    a = p.parse_args(argv)
    ctx = client_context(a.ca) if a.mode != "plain" else None

    def one(session: Optional[ssl.SSLSession]) -> tuple[dict, Optional[ssl.SSLSession], float]:
        t0 = time.perf_counter()
        s: Any = socket.create_connection(("127.0.0.1", a.port), timeout=15)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as browsers: no Nagle wait on the client's writes
        info: dict[str, Any] = {}
        new_session = None
        try:
            if ctx is not None:
                s = ctx.wrap_socket(s, server_hostname="127.0.0.1", session=session)
            req, accept = upgrade_request(a.port)
            s.sendall(req)
            buf = b""
            while b"\r\n\r\n" not in buf:
                chunk = s.recv(4096)
                if not chunk:
                    raise ConnectionError("EOF before the 101")
                buf += chunk
                if len(buf) > 16384:
                    raise ConnectionError("answer too large")
            check_101(buf.split(b"\r\n\r\n", 1)[0], accept)
            if ctx is not None:
                # The 101 has been read: a TLS 1.3 ticket sent after the
                # handshake has been processed by now.
                new_session = s.session
                info = {"reused": s.session_reused, "version": s.version(), "cipher": s.cipher()[0],
                        "ticket": bool(new_session is not None and new_session.has_ticket)}
            s.sendall(masked_frame(OP_CLOSE, CLOSE_1000))
            end = "eof"
            for _ in range(1000):  # the server's close frame, then its EOF
                try:
                    chunk = s.recv(4096)
                except (ConnectionResetError, ssl.SSLError) as e:
                    end = type(e).__name__
                    break
                if not chunk:
                    break
            info["end"] = end
        finally:
            s.close()
        return info, new_session, time.perf_counter() - t0

    lock = threading.Lock()
    state = {"left": 0}
    out: dict[str, Any] = {"ok": 0, "reused": 0, "with_ticket": 0, "errors": collections.Counter(),
                           "versions": collections.Counter(), "ciphers": collections.Counter(),
                           "ends": collections.Counter(), "latency": []}

    def worker(session: Optional[ssl.SSLSession], record: bool) -> None:
        while True:
            with lock:
                if state["left"] <= 0:
                    return
                state["left"] -= 1
            try:
                info, new, took = one(session if a.mode == "resumed" else None)
            except Exception as e:  # counted, never retried
                with lock:
                    out["errors"][error_kind(e)] += 1
                continue
            if a.mode == "resumed" and new is not None:
                session = new  # the newest ticket, as a browser would use
            if record:
                with lock:
                    out["ok"] += 1
                    out["latency"].append(took)
                    out["ends"][info.get("end")] += 1
                    if ctx is not None:
                        out["reused"] += info["reused"]
                        out["with_ticket"] += info["ticket"]
                        out["versions"][info["version"]] += 1
                        out["ciphers"][info["cipher"]] += 1

    # Warm-up: the server's first connections (imports, caches) are not measured.
    state["left"] = a.warmup
    worker(None, False)
    sessions: list[Optional[ssl.SSLSession]] = [None] * a.concurrency
    seeded_with_ticket = 0
    if a.mode == "resumed":
        for i in range(a.concurrency):
            try:
                _info, sessions[i], _ = one(None)
                seeded_with_ticket += bool(sessions[i] is not None and sessions[i].has_ticket)
            except Exception as e:
                out["errors"]["seed " + error_kind(e)] += 1
    emit({"event": "ready", "seeded": a.concurrency if a.mode == "resumed" else 0,
          "seeded_with_ticket": seeded_with_ticket})
    if not a.no_wait:
        line = sys.stdin.readline()
        if line.strip() != "go":
            return
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    state["left"] = a.n
    threads = [threading.Thread(target=worker, args=(sessions[i], True)) for i in range(a.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    lat = sorted(out.pop("latency"))
    emit({"event": "done", "mode": a.mode, "n": a.n, "wall_s": wall,
          "client_cpu_s": (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime),
          "latency_p50_ms": None if not lat else percentile(lat, 0.5) * 1000,
          "latency_p99_ms": None if not lat else percentile(lat, 0.99) * 1000,
          **{k: (dict(v) if isinstance(v, collections.Counter) else v) for k, v in out.items()}})


# ---------------------------------------------------------------- client 2: churn soak


async def read_frame(r: asyncio.StreamReader) -> tuple[int, bytes]:
    h = await r.readexactly(2)
    n = h[1] & 0x7F
    if n == 126:
        n = struct.unpack("!H", await r.readexactly(2))[0]
    elif n == 127:
        n = struct.unpack("!Q", await r.readexactly(8))[0]
    mask = await r.readexactly(4) if h[1] & 0x80 else None
    data = await r.readexactly(n)
    if mask:
        data = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
    return h[0] & 0x0F, data


async def soak_client(a: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    ctx = client_context(a.ca)
    counts: collections.Counter = collections.Counter()
    errors: collections.Counter = collections.Counter()
    seq = [0]
    stop_at = loop.time() + a.seconds
    port = a.port

    def client_hello() -> bytes:
        inb, outb = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = ctx.wrap_bio(inb, outb, server_hostname="127.0.0.1")
        try:
            obj.do_handshake()
        except ssl.SSLWantReadError:
            pass
        return outb.read()

    async def closed(w: asyncio.StreamWriter) -> None:
        w.close()
        try:
            await asyncio.wait_for(w.wait_closed(), 5)
        except Exception:
            pass

    async def cycle() -> None:
        r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="127.0.0.1",
                                              ssl_handshake_timeout=10)
        try:
            req, accept = upgrade_request(port)
            w.write(req)
            check_101((await r.readuntil(b"\r\n\r\n"))[:-4], accept)
            payload = os.urandom(12).hex().encode()
            w.write(masked_frame(OP_TEXT, payload))
            while True:
                op, data = await read_frame(r)
                if op == OP_PING:
                    w.write(masked_frame(OP_PONG, data))
                elif op == OP_TEXT:
                    if data != payload:
                        raise ValueError("echo differs")
                    break
                elif op == OP_CLOSE:
                    raise ConnectionError(f"closed before the echo: {data[:2].hex()}")
            w.write(masked_frame(OP_CLOSE, CLOSE_1000))
            while True:
                op, data = await read_frame(r)
                if op == OP_CLOSE:
                    break
            try:  # the server drops TCP after its close frame
                await asyncio.wait_for(r.read(), 5)
            except Exception as e:
                counts["end_" + type(e).__name__] += 1
        finally:
            await closed(w)

    async def abort(kind: str) -> None:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        try:
            if kind == "half_client_hello":
                hello = client_hello()
                w.write(hello[: len(hello) // 2])
                await w.drain()
            elif kind == "client_hello_then_close":
                w.write(client_hello())
                await w.drain()
                await asyncio.wait_for(r.read(1), 5)  # the server's first flight: it has signed
        finally:
            await closed(w)

    async def worker() -> None:
        while loop.time() < stop_at:
            i = seq[0]
            seq[0] += 1
            if i % a.abort_every == a.abort_every - 1:
                kind = ABORT_KINDS[(i // a.abort_every) % len(ABORT_KINDS)]
                try:
                    await asyncio.wait_for(abort(kind), 15)
                    counts["aborted_" + kind] += 1
                except Exception as e:
                    errors[f"abort {kind}: {error_kind(e)}"] += 1
            else:
                try:
                    await asyncio.wait_for(cycle(), 20)
                    counts["completed"] += 1
                except Exception as e:
                    errors[error_kind(e)] += 1

    async def report() -> None:
        while True:
            await asyncio.sleep(5)
            emit({"event": "stats", "t": time.monotonic(), "counts": dict(counts), "errors": dict(errors)})

    emit({"event": "started", "t": time.monotonic()})
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    reporter = asyncio.ensure_future(report())
    await asyncio.gather(*(worker() for _ in range(a.concurrency)))
    reporter.cancel()
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    emit({"event": "done", "t": time.monotonic(), "wall_s": time.perf_counter() - t0,
          "client_cpu_s": (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime),
          "counts": dict(counts), "errors": dict(errors)})


def soak_client_main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="tls.py soak-client")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--concurrency", type=int, default=200)
    p.add_argument("--abort-every", type=int, default=10)
    asyncio.run(soak_client(p.parse_args(argv)))


# ---------------------------------------------------------------- orchestration


class Child(LoadGen):
    """One of this script's client modes as a process on CPU 1 (run.LoadGen's reader and expect())."""

    def __init__(self, ctx: bench_run.Context, argv: list[str], tag: str) -> None:
        self.ctx = ctx
        self.p = ctx.procs.start([ctx.python, str(Path(__file__).resolve()), *argv], CLIENT_CPU,
                                 LOGS / f"tls-{tag}-client.log", stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 text=True, bufsize=1)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def send(self, line: str) -> None:
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()


def archive_wsheart(rev: str, dest: Path) -> None:
    """wsheart/ and its twistd plugin as committed at C{rev} (git archive: the repository is only read)."""
    import io
    import tarfile

    data = subprocess.run(["git", "archive", "--format=tar", rev, "--", "wsheart", "twisted/plugins/wsheart_plugin.py"],
                          cwd=REPO, capture_output=True, check=True, timeout=60,
                          env=dict(os.environ, GIT_OPTIONAL_LOCKS="0")).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(dest, filter="data")


def server_cmd(ctx: bench_run.Context, kind: str, tls: bool, port: int, certs: dict) -> tuple[list[str], dict]:
    if not tls:
        return bench_run.server_command(ctx, kind, port, HB)  # run.py's plain servers
    if kind == "wsheart":
        cmd, kw = bench_run.server_command(ctx, "wsheart", port, HB)
        i = cmd.index("--endpoint")
        cmd[i:i + 2] = ["--tls-endpoint", f"tcp:{port}:interface=127.0.0.1",
                        "--tls-key", certs["key"], "--tls-cert", certs["cert"]]
        return cmd, kw
    return [shutil.which("node") or "node", str(BENCH / "peers" / "ws_server.js"), "--port", str(port),
            "--ping-interval", str(HB[0]), "--key", certs["key"], "--cert", certs["cert"]], {}


def start_server(ctx: bench_run.Context, kind: str, tls: bool, certs: dict, tag: str):
    port = free_port()
    cmd, kw = server_cmd(ctx, kind, tls, port, certs)
    p = ctx.procs.start(cmd, SERVER_CPU, LOGS / f"tls-{tag}-server.log", stdin=subprocess.DEVNULL, **kw)
    wait_port(port, p)
    return p, port


def log_problems(tag: str) -> dict:
    """Tracebacks and unhandled errors in a server's log."""
    path = LOGS / f"tls-{tag}-server.log"
    counts = {"traceback": 0, "unhandled": 0, "lines": 0}
    try:
        with open(path, errors="replace") as f:
            for line in f:
                counts["lines"] += 1
                counts["traceback"] += "Traceback" in line
                counts["unhandled"] += "Unhandled" in line
    except OSError:
        pass
    return counts


def handshake_part(ctx, servers: list[str], certs: dict, n: int, repeats: int, conc: int, warmup: int,
                   samples: list[dict], save) -> None:
    """
    Every server (plain and TLS, one process each, all started first and
    idle between their batches) and every mode, interleaved: each repeat
    runs every batch once, starting from a different one, so that a busy
    moment on the shared machine does not fall on one server only.
    """
    procs = {}
    try:
        for kind in servers:
            for tls in (False, True):
                procs[(kind, tls)] = start_server(ctx, kind, tls, certs, f"hs-{kind}-{'tls' if tls else 'plain'}")
        time.sleep(1.0)
        batches = [(kind, tls, mode) for kind in servers for tls, mode in ((False, "plain"), (True, "full"), (True, "resumed"))]
        # Unmeasured warm-up of every server in every mode first: Node's JIT
        # (and wsheart's first-use paths) are warm before any batch counts.
        for kind, tls, mode in batches:
            srv, port = procs[(kind, tls)]
            cl = Child(ctx, ["handshake-client", "--port", str(port), "--ca", certs["ca"], "--mode", mode, "--n", "0",
                             "--warmup", str(warmup), "--no-wait"], f"hs-{kind}-{mode}-warmup")
            try:
                cl.expect("done", 120 + warmup * 0.1)
            finally:
                cl.stop()
        for rep in range(repeats):
            k = (rep * len(batches) // max(1, repeats)) % len(batches)
            order = batches[k:] + batches[:k]
            if rep % 2:
                order.reverse()
            for kind, tls, mode in order:
                srv, port = procs[(kind, tls)]
                if srv.poll() is not None:
                    raise RuntimeError(f"{kind} ({'TLS' if tls else 'plain'}) exited with {srv.returncode}")
                tag = f"hs-{kind}-{mode}-r{rep + 1}"
                cl = Child(ctx, ["handshake-client", "--port", str(port), "--ca", certs["ca"], "--mode", mode,
                                 "--n", str(n), "--concurrency", str(conc)], tag)
                try:
                    ready = cl.expect("ready", 120)
                    time.sleep(0.5)
                    c0, k0, t0 = proc_cpu_s(srv.pid), core_ticks(SERVER_CPU), time.monotonic()
                    cl.send("go")
                    done = cl.expect("done", 120 + n * 0.1)
                    time.sleep(0.5)  # the server's side of the last closes
                    c1, k1, t1 = proc_cpu_s(srv.pid), core_ticks(SERVER_CPU), time.monotonic()
                finally:
                    cl.stop()
                cpu = c1 - c0
                smp = {"server": kind, "tls": tls, "mode": mode, "repeat": rep + 1, "n": n, "concurrency": conc,
                       "server_cpu_s": cpu, "window_s": t1 - t0, "loadavg": loadavg()[0], **core_load(k0, k1, cpu),
                       "server_cpu_us_per_conn": cpu * 1e6 / done["ok"] if done["ok"] else None,
                       "seeded_with_ticket": ready.get("seeded_with_ticket"),
                       **{key: v for key, v in done.items() if key != "event"}}
                print(f"  {kind} {mode} r{rep + 1}: {f(smp['server_cpu_us_per_conn'])} us/conn, ok {done['ok']}/{n}, "
                      f"reused {done['reused']}, errors {done['errors']}, {done['wall_s']:.1f} s, "
                      f"CPU 0 other/irq/steal {f(smp.get('cpu0_other_procs_pct'), 1)}/{f(smp.get('cpu0_irq_softirq_pct'), 1)}/"
                      f"{f(smp.get('cpu0_steal_pct'), 1)} %", flush=True)
                samples.append(smp)
                save()
    finally:
        for srv, _port in procs.values():
            ctx.procs.stop(srv)
    for smp in samples:
        smp["server_log"] = log_problems(f"hs-{smp['server']}-{'tls' if smp['tls'] else 'plain'}")


def idle_part(ctx, kind: str, tls: bool, certs: dict, n: int, settle: float, after: float) -> dict:
    tag = f"idle-{kind}-{'tls' if tls else 'plain'}"
    srv, port = start_server(ctx, kind, tls, certs, tag)
    try:
        time.sleep(1.0)
        warm = Child(ctx, ["handshake-client", "--port", str(port), "--ca", certs["ca"],
                           "--mode", "full" if tls else "plain", "--n", "0", "--warmup", "20", "--no-wait"], tag + "-warmup")
        try:
            warm.expect("done", 60)
        finally:
            warm.stop()
        time.sleep(2.0)
        rss0 = proc_rss_kb(srv.pid)
        argv = ["hold", "--port", str(port), "--connections", str(n), "--concurrency", "200",
                "--max-seconds", str(settle + 300)]
        if tls:
            argv += ["--tls-ca", certs["ca"]]
        lg = LoadGen(ctx, argv, f"tls-{tag}")
        try:
            opened = lg.expect("open", 60 + n / 20)
            time.sleep(settle)
            rss1 = proc_rss_kb(srv.pid)
            est1 = established(port)
            st = lg.stats()
            lg.p.stdin.close()  # hold ends: it aborts every connection and exits
            lg.expect("done", 30)
        finally:
            lg.stop()
        t_closed = time.monotonic()
        est2 = None
        for _ in range(100):  # until the server has seen every close (bounded)
            est2 = established(port)
            if est2 == 0:
                break
            time.sleep(0.1)
        time.sleep(max(0.0, after - (time.monotonic() - t_closed)))
        rss2 = proc_rss_kb(srv.pid)
        time.sleep(max(0.0, 2 * after - (time.monotonic() - t_closed)))
        rss3 = proc_rss_kb(srv.pid)  # later releases (a GC, a periodic trim)
    finally:
        ctx.procs.stop(srv)
    grown = rss1 - rss0
    return {"server": kind, "tls": tls, "n": n, "open": opened["open"], "failed": opened["failed"],
            "open_seconds": opened["seconds"], "established_when_open": est1, "established_after_close": est2,
            "pings_seen": st["pings"], "rss_before_kib": rss0, "rss_open_kib": rss1, "rss_after_close_kib": rss2,
            "rss_after_close_2x_kib": rss3,
            "bytes_per_conn": grown * 1024 / n, "given_back_pct": 100.0 * (rss1 - rss2) / grown if grown > 0 else None,
            "given_back_2x_pct": 100.0 * (rss1 - rss3) / grown if grown > 0 else None,
            "settle_s": settle, "after_s": after, "loadavg": loadavg()[0], "server_log": log_problems(tag)}


def slope_kib_per_min(points: list[tuple[float, float]]) -> Optional[float]:
    if len(points) < 2:
        return None
    mt = statistics.fmean(t for t, _ in points)
    mv = statistics.fmean(v for _, v in points)
    den = sum((t - mt) ** 2 for t, _ in points)
    return None if den == 0 else 60.0 * sum((t - mt) * (v - mv) for t, v in points) / den


def soak_part(ctx, certs: dict, seconds: float, conc: int, after: float) -> dict:
    tag = "soak-wsheart-tls"
    srv, port = start_server(ctx, "wsheart", True, certs, tag)
    series: list[dict] = []
    stats: list[dict] = []
    done = None
    try:
        time.sleep(1.0)
        fds = lambda: len(os.listdir(f"/proc/{srv.pid}/fd"))  # noqa: E731
        cl = Child(ctx, ["soak-client", "--port", str(port), "--ca", certs["ca"], "--seconds", str(seconds),
                         "--concurrency", str(conc)], tag)
        try:
            started = cl.expect("started", 60)
            t0 = started["t"]
            series.append({"t": 0.0, "rss_kib": proc_rss_kb(srv.pid), "cpu_s": proc_cpu_s(srv.pid), "fds": fds()})
            next_at = time.monotonic() + 5.0
            deadline = time.monotonic() + seconds + 90
            while time.monotonic() < deadline:
                try:
                    msg = cl.lines.get(timeout=max(0.0, min(next_at - time.monotonic(), 1.0)))
                except queue.Empty:
                    msg = ""
                if msg is None:
                    raise RuntimeError(f"soak client exited ({cl.p.poll()}) before its result")
                if msg and msg.get("event") == "stats":
                    stats.append({"t": round(msg["t"] - t0, 2), "counts": msg["counts"], "errors": msg["errors"]})
                if msg and msg.get("event") == "done":
                    done = msg
                    break
                if time.monotonic() >= next_at:
                    if srv.poll() is not None:
                        raise RuntimeError(f"wsheart exited with {srv.returncode} during the soak")
                    series.append({"t": round(time.monotonic() - t0, 2), "rss_kib": proc_rss_kb(srv.pid),
                                   "cpu_s": proc_cpu_s(srv.pid), "fds": fds()})
                    next_at += 5.0
        finally:
            cl.stop()
        t_end = time.monotonic() - t0
        end_sample = {"t": round(t_end, 2), "rss_kib": proc_rss_kb(srv.pid), "cpu_s": proc_cpu_s(srv.pid), "fds": fds()}
        time.sleep(after)
        after_sample = {"t": round(time.monotonic() - t0, 2), "rss_kib": proc_rss_kb(srv.pid),
                        "cpu_s": proc_cpu_s(srv.pid), "fds": fds(), "established": established(port)}
    finally:
        ctx.procs.stop(srv)
    if done is None:
        raise RuntimeError("soak client gave no result")
    series.append(end_sample)
    third = seconds / 3
    at_third = min(series, key=lambda s: abs(s["t"] - third))
    tail = [(s["t"], s["rss_kib"]) for s in series if s["t"] >= third - 0.01]
    last_third = [(s["t"], s["rss_kib"]) for s in series if s["t"] >= 2 * third - 0.01]
    slope = slope_kib_per_min(tail)
    counts = done["counts"]
    aborted = {k[len("aborted_"):]: v for k, v in counts.items() if k.startswith("aborted_")}
    cpu = end_sample["cpu_s"] - series[0]["cpu_s"]
    growth_tail = None if slope is None else slope * (series[-1]["t"] - at_third["t"]) / 60
    return {
        "seconds": seconds, "concurrency": conc, "wall_s": done["wall_s"], "client_cpu_s": done["client_cpu_s"],
        "completed": counts.get("completed", 0), "aborted": aborted, "aborted_total": sum(aborted.values()),
        "client_counts": counts, "errors": done["errors"], "errors_total": sum(done["errors"].values()),
        "cycles_per_s": (counts.get("completed", 0) + sum(aborted.values())) / done["wall_s"],
        "server_cpu_s": cpu, "server_cpu_pct": 100.0 * cpu / max(1e-9, end_sample["t"]),
        "server_cpu_us_per_cycle": cpu * 1e6 / max(1, counts.get("completed", 0) + sum(aborted.values())),
        "rss_start_kib": series[0]["rss_kib"], "rss_at_third_kib": at_third["rss_kib"], "t_third": at_third["t"],
        "rss_end_kib": end_sample["rss_kib"], "rss_after_kib": after_sample["rss_kib"], "after_s": after,
        "slope_last_two_thirds_kib_per_min": slope,
        "slope_last_third_kib_per_min": slope_kib_per_min(last_third),
        "growth_predicted_last_two_thirds_kib": growth_tail,
        # "stops growing": the fitted growth over the last two thirds is under
        # 2 % of the RSS at one third (or under 1 MiB).
        "stops_growing": None if growth_tail is None else growth_tail < max(1024.0, 0.02 * at_third["rss_kib"]),
        "fds_max": max(s["fds"] for s in series), "fds_after": after_sample["fds"],
        "established_after": after_sample["established"],
        "series": series, "after_sample": after_sample, "client_stats": stats, "loadavg": loadavg()[0],
        "server_log": log_problems(tag), "server_exit": srv.returncode,
    }


# ---------------------------------------------------------------- summary


def med(rows: list[dict], key: str) -> Optional[float]:
    vals = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
    return statistics.median(vals) if vals else None


def f(v: Optional[float], digits: int = 0) -> str:
    return "-" if v is None else f"{v:,.{digits}f}"


def x(a: Optional[float], b: Optional[float]) -> str:
    return "-" if a is None or not b else f"{a / b:.2f}x"


def markdown(res: dict) -> str:
    m = res["meta"]
    v = m["versions"]
    out = [f"# wsheart over TLS beside Node ws over TLS ({m['mode']})", "",
           f"Measured {m['date']} at wsheart commit {str(v.get('wsheart_commit'))[:7]}"
           f" ({v.get('wsheart_source')}{', wsheart/ had uncommitted changes' if v.get('wsheart_uncommitted_changes') else ''}; "
           f"source digest {v.get('wsheart_tree')}); "
           f"`{m['command']}`; {m['elapsed_s']:.0f} s, load average {m['loadavg_at_start'][0]} at start, "
           f"{m.get('loadavg_at_end', ['?'])[0]} at end.",
           f"Python {v.get('python')} ssl ({m['openssl']['python_ssl']}), Twisted {v.get('twisted')}, "
           f"Autobahn {v.get('autobahn')}, pyOpenSSL {m['openssl']['pyopenssl']} ({m['openssl']['pyopenssl_openssl']}), "
           f"cryptography {m['openssl']['cryptography']}, Node {v.get('node')} (OpenSSL {m['openssl'].get('node')}), "
           f"ws {v.get('ws')}; Linux {v.get('kernel')}. Certificate: {m['certificate']}. "
           f"Server on CPU 0, clients on CPU 1, 127.0.0.1; heartbeat every {HB[0]:g} s.", ""]
    kept = m.get("kept")
    if kept and kept["parts"]:
        for part in kept["parts"]:
            km = kept["origins"][part]
            kv = km["versions"]
            out.append(f"Part {part} kept from the run of {km['date']} (`{km['command']}`, wsheart commit "
                       f"{str(kv.get('wsheart_commit'))[:7]}, source digest {kv.get('wsheart_tree')}, load average "
                       f"{km['loadavg_at_start'][0]} at start).")
        out.append("")
    hs = res.get("handshake", [])
    if hs:
        out += ["## Server CPU per connection (TCP + TLS handshake + upgrade + close)", "",
                f"{m['args']['handshakes']} connections per batch, {m['args']['handshake_concurrency']} client threads, "
                f"{m['args']['repeats']} batch(es) per server and mode, interleaved, after {m['args'].get('handshake_warmup', 20)} unmeasured connections per server and mode (median (min-max); every batch in tls.json); server CPU is "
                "utime + stime over the batch / connections completed. *Resumed* offers the session (ticket) of the "
                "thread's previous connection; *resumed* column: connections whose `session_reused` was true.", "",
                "| server | plain ws, us | TLS full, us | TLS resumed, us | resumed / full | TLS full - plain, us | resumed (of connections) | tickets received (resumed batch) | TLS version, cipher | client p50 ms: plain / full / resumed | client errors |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---|---|---|"]
        rows = {}
        for kind in SERVERS:
            by = {mode: [s for s in hs if s["server"] == kind and s["mode"] == mode] for mode in ("plain", "full", "resumed")}
            if not any(by.values()):
                continue
            r = {mode: med(by[mode], "server_cpu_us_per_conn") for mode in by}
            rows[kind] = r
            spread = {mode: [b["server_cpu_us_per_conn"] for b in by[mode] if b.get("server_cpu_us_per_conn") is not None]
                      for mode in by}

            def cell(mode: str) -> str:
                vals = spread[mode]
                if len(vals) < 2:
                    return f(r[mode])
                return f"{f(r[mode])} ({f(min(vals))}-{f(max(vals))})"

            res_rows = by["resumed"]
            reused = f"{sum(s['reused'] for s in res_rows)} of {sum(s['ok'] for s in res_rows)}" if res_rows else "-"
            tickets = f"{sum(s['with_ticket'] for s in res_rows)} of {sum(s['ok'] for s in res_rows)}" if res_rows else "-"
            vers = collections.Counter()
            ciphers = collections.Counter()
            for s in by["full"] + res_rows:
                vers.update(s.get("versions", {}))
                ciphers.update(s.get("ciphers", {}))
            vc = ", ".join(vers) + " " + ", ".join(ciphers) if vers else "-"
            errs = collections.Counter()
            for mode in by:
                for s in by[mode]:
                    errs.update(s["errors"])
            err = "; ".join(f"{k} x{c}" for k, c in errs.items()) or "none"
            diff = None if r["full"] is None or r["plain"] is None else r["full"] - r["plain"]
            lat = " / ".join(f(med(by[mode], "latency_p50_ms"), 1) for mode in ("plain", "full", "resumed"))
            out.append(f"| {kind} | {cell('plain')} | {cell('full')} | {cell('resumed')} | {x(r['resumed'], r['full'])} "
                       f"| {f(diff)} | {reused} | {tickets} | {vc} | {lat} | {err} |")
        if "wsheart" in rows and "ws" in rows:
            a, b = rows["wsheart"], rows["ws"]
            out.append(f"| wsheart / ws | {x(a['plain'], b['plain'])} | {x(a['full'], b['full'])} | {x(a['resumed'], b['resumed'])} "
                       f"| | {x(None if a['full'] is None or a['plain'] is None else a['full'] - a['plain'], None if b['full'] is None or b['plain'] is None else b['full'] - b['plain'])} | | | | | |")
        other = [s.get("cpu0_other_procs_pct") for s in hs if s.get("cpu0_other_procs_pct") is not None]
        steal = [s.get("cpu0_steal_pct") for s in hs if s.get("cpu0_steal_pct") is not None]
        if other:
            out += ["", f"Other processes on CPU 0 during the batches: median {statistics.median(other):.1f} %, max {max(other):.1f} %; "
                    f"steal: max {max(steal):.1f} %."]
        out.append("")
    idle = res.get("idle", [])
    if idle:
        out += ["## Server RSS per idle connection", "",
                "RSS before: after 20 warm-up connections and 2 s; open: all connections open and "
                f"{m['args']['settle']:g} s of settling; after: all closed (client process ended) and "
                f"{m['args']['after']:g} s (and {2 * m['args']['after']:g} s). Given back: (open - after) / (open - before).", "",
                f"| server | transport | connections open | RSS before MiB | RSS open MiB | bytes / connection | RSS +{m['args']['after']:g} s after close MiB | given back | RSS +{2 * m['args']['after']:g} s MiB | given back |",
                "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        by = {}
        for s in idle:
            by[(s["server"], s["tls"])] = s
            out.append(f"| {s['server']} | {'TLS' if s['tls'] else 'plain'} | {s['open']} | {f(s['rss_before_kib'] / 1024, 1)} "
                       f"| {f(s['rss_open_kib'] / 1024, 1)} | {f(s['bytes_per_conn'])} | {f(s['rss_after_close_kib'] / 1024, 1)} "
                       f"| {f(s['given_back_pct'])} % "
                       f"| {f(s['rss_after_close_2x_kib'] / 1024, 1) if s.get('rss_after_close_2x_kib') else '-'} "
                       f"| {f(s.get('given_back_2x_pct'))} % |")
        for tls in (True, False):
            a, b = by.get(("wsheart", tls)), by.get(("ws", tls))
            if a and b:
                out.append(f"| wsheart / ws | {'TLS' if tls else 'plain'} | | | | {x(a['bytes_per_conn'], b['bytes_per_conn'])} | | | | |")
        for kind in SERVERS:
            a, b = by.get((kind, True)), by.get((kind, False))
            if a and b:
                out.append(f"| {kind}: TLS - plain | | | | | {f(a['bytes_per_conn'] - b['bytes_per_conn'])} | | | | |")
        out.append("")
    soak = res.get("soak")
    if soak:
        ab = soak["aborted"]
        out += [f"## Churn soak over TLS (wsheart, {soak['seconds']:g} s)", "",
                f"{soak['concurrency']} connections cycling (TLS connect, upgrade, one echo, close handshake); every 10th "
                "cycle aborted mid-handshake, in turn: TCP connect then close / half a ClientHello then close / a whole "
                "ClientHello then close after the server's first flight. RSS every 5 s.", "",
                "| completed cycles | aborted (tcp / half hello / hello then close) | client errors | cycles / s | server CPU % | server CPU us / cycle | RSS start MiB | RSS at 1/3 MiB | RSS end MiB | RSS +" f"{soak['after_s']:g} s MiB | slope, last 2/3, KiB/min | slope, last 1/3, KiB/min | stops growing | fds max / after |",
                "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
                f"| {soak['completed']} | {soak['aborted_total']} ({ab.get('tcp_only', 0)} / {ab.get('half_client_hello', 0)} / "
                f"{ab.get('client_hello_then_close', 0)}) | {soak['errors_total']} | {f(soak['cycles_per_s'])} | {f(soak['server_cpu_pct'])} "
                f"| {f(soak['server_cpu_us_per_cycle'])} | {f(soak['rss_start_kib'] / 1024, 1)} | {f(soak['rss_at_third_kib'] / 1024, 1)} "
                f"| {f(soak['rss_end_kib'] / 1024, 1)} | {f(soak['rss_after_kib'] / 1024, 1)} | {f(soak['slope_last_two_thirds_kib_per_min'], 1)} "
                f"| {f(soak['slope_last_third_kib_per_min'], 1)} | {'yes' if soak['stops_growing'] else 'no'} | {soak['fds_max']} / {soak['fds_after']} |",
                "",
                "RSS series (s: MiB): " + ", ".join(f"{s['t']:.0f}: {s['rss_kib'] / 1024:.1f}" for s in soak["series"])
                + f"; +{soak['after_s']:g} s: {soak['rss_after_kib'] / 1024:.1f}.", ""]
        if soak["errors"]:
            out.append("Client errors: " + "; ".join(f"{k} x{c}" for k, c in soak["errors"].items()) + ".")
        lp = soak["server_log"]
        out.append(f"Server log: {lp['lines']} lines, {lp['traceback']} with 'Traceback', {lp['unhandled']} with 'Unhandled'; "
                   f"server {'still running at the end' if soak['server_exit'] is None else 'exited ' + str(soak['server_exit'])}. "
                   f"'Stops growing': the fitted growth over the last two thirds is under max(1 MiB, 2 % of the RSS at 1/3).")
        out.append("")
    if res.get("failures"):
        out += ["## Failures", ""] + [f"- {k}" for k in res["failures"]] + [""]
    return "\n".join(out)


# ---------------------------------------------------------------- main


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "handshake-client":
        handshake_client(sys.argv[2:])
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "soak-client":
        soak_client_main(sys.argv[2:])
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a 2-minute smoke: N=300, soak 30 s, 1 repeat, short settles")
    p.add_argument("--parts", default="handshake,idle,soak")
    p.add_argument("--servers", default=",".join(SERVERS))
    p.add_argument("--handshakes", type=int, help="connections per handshake batch (2000; quick 300)")
    p.add_argument("--handshake-concurrency", type=int, default=8, help="client threads (8)")
    p.add_argument("--handshake-warmup", type=int, help="unmeasured connections per server and mode before the first batch (500; quick 100)")
    p.add_argument("--repeats", type=int, help="handshake batches per server and mode, interleaved (3; quick 1)")
    p.add_argument("--idle-connections", type=int, help="(2000; quick 300)")
    p.add_argument("--settle", type=float, help="idle: seconds with all open before RSS is read (10; quick 3)")
    p.add_argument("--after", type=float, help="idle and soak: seconds after closing before RSS is read (10; quick 3)")
    p.add_argument("--soak-seconds", type=float, help="(180; quick 30)")
    p.add_argument("--soak-concurrency", type=int, default=200)
    p.add_argument("--key-type", choices=sorted(KEY_TYPES), default="ecdsa-p256",
                   help="the CA's and the leaf's keys (ecdsa-p256: what most sites use today)")
    p.add_argument("--wsheart-rev", help="run wsheart as committed at this git revision (git archive) "
                   "instead of a copy of the working tree")
    p.add_argument("--wsheart-reactor", default="wsheart", help="twistd --reactor for wsheart ('' for twistd's default)")
    p.add_argument("--venv", default=str(BENCH / ".venv"))
    p.add_argument("--output", default=str(RESULTS / "tls.json"))
    p.add_argument("--replot", action="store_true", help="only rewrite the .md from the --output json")
    p.add_argument("--keep", action="store_true",
                   help="keep the parts not run now from the existing --output json (their meta under meta.kept)")
    a = p.parse_args()
    q = a.quick
    a.handshakes = a.handshakes or (300 if q else 2000)
    a.repeats = a.repeats or (1 if q else 3)
    a.handshake_warmup = a.handshake_warmup if a.handshake_warmup is not None else (100 if q else 500)
    a.idle_connections = a.idle_connections or (300 if q else 2000)
    a.settle = a.settle if a.settle is not None else (3.0 if q else 10.0)
    a.after = a.after if a.after is not None else (3.0 if q else 10.0)
    a.soak_seconds = a.soak_seconds or (30.0 if q else 180.0)
    parts = [s for s in a.parts.split(",") if s]
    servers = [s for s in a.servers.split(",") if s]
    out_json = Path(a.output).resolve()
    if a.replot:
        res = json.loads(out_json.read_text())
        out_json.with_suffix(".md").write_text(markdown(res) + "\n")
        print(markdown(res))
        return 0
    bench_run.ensure_environment(a, script=__file__)  # bench/.venv and node_modules/ws; re-execs in the venv
    if "ws" in servers and not (shutil.which("node") and (BENCH / "node_modules" / "ws").exists()):
        print("node or bench/node_modules/ws missing: skipping ws", file=sys.stderr)
        servers.remove("ws")
    os.sched_setaffinity(0, {CLIENT_CPU})
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < a.idle_connections + 200:
        print(f"RLIMIT_NOFILE hard limit {hard} is too low", file=sys.stderr)
        return 2
    LOGS.mkdir(parents=True, exist_ok=True)
    for old in LOGS.glob("tls-*.log"):
        old.unlink()

    ctx = bench_run.Context(a)
    tmp = Path(tempfile.mkdtemp(prefix="wsheart-bench-tls-"))
    snap = tmp / "wsheart"
    snap.mkdir()
    if a.wsheart_rev:
        archive_wsheart(a.wsheart_rev, snap)
    else:
        bench_run.snapshot_wsheart(snap)  # run.py's copy: edits during the run do not mix in
    ctx.wsheart_root = snap
    ctx.wsheart_tree = bench_run.tree_digest(snap)
    certs = make_certs(tmp, a.key_type)

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    import cryptography
    import OpenSSL

    node_openssl = None
    if shutil.which("node"):
        node_openssl = subprocess.run(["node", "-p", "process.versions.openssl"], capture_output=True, text=True,
                                      timeout=30).stdout.strip()
    res: dict[str, Any] = {
        "meta": {
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "mode": "quick" if q else "full",
            "command": " ".join(["bench/tls.py"] + sys.argv[1:]),
            "args": {k: v for k, v in vars(a).items() if k not in ("venv", "output")},
            "parts": parts, "servers": servers,
            "heartbeat": {"interval_s": HB[0], "timeout_s": HB[1], "wsheart_max_missed": HB[2]},
            "certificate": cert_description(a.key_type),
            "openssl": {"python_ssl": ssl.OPENSSL_VERSION, "pyopenssl": OpenSSL.__version__,
                        "pyopenssl_openssl": OpenSSL.SSL.OpenSSL_version(OpenSSL.SSL.OPENSSL_VERSION).decode(),
                        "cryptography": cryptography.__version__, "node": node_openssl},
            "machine": {"cpus": os.cpu_count(), "server_cpu": SERVER_CPU, "client_cpu": CLIENT_CPU},
            "loadavg_at_start": loadavg(),
            "versions": bench_run.versions(ctx),
        },
        "handshake": [], "idle": [], "soak": None, "failures": [],
    }
    if a.keep and out_json.exists():
        old = json.loads(out_json.read_text())
        kept = [part for part in ("handshake", "idle", "soak") if part not in parts and old.get(part)]
        old_origins = old["meta"].get("kept", {}).get("origins", {})
        own = {k: v for k, v in old["meta"].items() if k != "kept"}
        for part in kept:
            res[part] = old[part]
        # where each kept part was measured (a part kept twice keeps its first run)
        res["meta"]["kept"] = {"parts": kept, "origins": {part: old_origins.get(part, own) for part in kept}}
    if a.wsheart_rev:
        v = res["meta"]["versions"]
        v["wsheart_commit"] = subprocess.run(["git", "rev-parse", a.wsheart_rev], cwd=REPO, capture_output=True,
                                             text=True, env=dict(os.environ, GIT_OPTIONAL_LOCKS="0")).stdout.strip()
        v["wsheart_uncommitted_changes"] = False
        v["wsheart_source"] = f"git archive {a.wsheart_rev}"
    t_start = time.monotonic()

    def save() -> None:
        res["meta"]["elapsed_s"] = round(time.monotonic() - t_start, 1)
        res["meta"]["loadavg_at_end"] = loadavg()
        out_json.parent.mkdir(parents=True, exist_ok=True)
        tmpf = out_json.with_suffix(".tmp")
        tmpf.write_text(json.dumps(res, indent=1) + "\n")
        tmpf.replace(out_json)
        out_json.with_suffix(".md").write_text(markdown(res) + "\n")

    def attempt(name: str, fn) -> Any:
        print(f"[{time.monotonic() - t_start:5.0f} s] {name} ...", flush=True)
        try:
            return fn()
        except KeyboardInterrupt:
            raise
        except Exception as e:
            res["failures"].append(f"{name}: {type(e).__name__}: {e}")
            print(f"  FAILED: {type(e).__name__}: {e}", flush=True)
            return None
        finally:
            ctx.procs.stop_all()

    complete = False
    try:
        if "handshake" in parts:
            attempt("handshake", lambda: handshake_part(ctx, servers, certs, a.handshakes, a.repeats,
                                                        a.handshake_concurrency, a.handshake_warmup, res["handshake"], save))
            save()
        if "idle" in parts:
            for kind in servers:
                for tls in (True, False):
                    got = attempt(f"idle {kind} {'TLS' if tls else 'plain'}",
                                  lambda: idle_part(ctx, kind, tls, certs, a.idle_connections, a.settle, a.after))
                    if got:
                        print(f"  {got['open']} open, {got['bytes_per_conn']:.0f} bytes/conn, given back "
                              f"{f(got['given_back_pct'])} %", flush=True)
                        res["idle"].append(got)
                    save()
        if "soak" in parts and "wsheart" in servers:
            got = attempt("soak wsheart TLS", lambda: soak_part(ctx, certs, a.soak_seconds, a.soak_concurrency, a.after))
            if got:
                print(f"  completed {got['completed']}, aborted {got['aborted_total']}, errors {got['errors_total']}, "
                      f"slope {f(got['slope_last_two_thirds_kib_per_min'], 1)} KiB/min", flush=True)
            res["soak"] = got
            save()
        complete = True
    except KeyboardInterrupt:
        print("\ninterrupted: stopping every process started, keeping partial results", file=sys.stderr)
    finally:
        ctx.procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    res["meta"]["complete"] = complete
    save()
    print()
    print(markdown(res))
    print(f"results: {out_json} and {out_json.with_suffix('.md')}")
    return 0 if complete and not res["failures"] else 1


if __name__ == "__main__":
    sys.exit(main())
