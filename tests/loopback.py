"""
Helpers for the integration tests: listening on 127.0.0.1, certificates made
on the fly, subprocesses that are always stopped by their id, waiting on a
condition until a deadline, and the one way a test may skip.
"""

from __future__ import annotations

import base64
import datetime
import functools
import ipaddress
import os
import select
import signal
import socket
import subprocess
import sys
import time
from typing import IO, Any, Callable, Coroutine, NoReturn, Optional, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import defer, endpoints, reactor
from twisted.trial import unittest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

T = TypeVar("T")


def async_test(f: Callable[..., Coroutine[Any, Any, Any]]) -> Callable[..., Any]:
    """
    Let trial run an C{async def} test method.
    """

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return defer.ensureDeferred(f(*args, **kwargs))

    return wrapper


async def sleep(seconds: float) -> None:
    """
    Wait on the real reactor.
    """
    d: defer.Deferred[None] = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    await d


async def wait_until(test: unittest.TestCase, predicate: Callable[[], Any], timeout: float = 10.0) -> None:
    """
    Poll C{predicate} on the real reactor until true; fail the test after
    C{timeout} seconds.
    """
    deadline = reactor.seconds() + timeout
    while not predicate():
        if reactor.seconds() > deadline:
            test.fail(f"condition not met within {timeout} s")
        await sleep(0.02)


def twistd_command() -> list[str]:
    """
    The twistd of the running interpreter's environment.
    """
    candidate = os.path.join(os.path.dirname(sys.executable), "twistd")
    if os.path.exists(candidate):
        return [candidate]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def free_port() -> int:
    """
    A TCP port on 127.0.0.1 that was free a moment ago.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def listen(test: unittest.TestCase, factory: Any, description: Optional[str] = None) -> Any:
    """
    Listen with C{factory} on 127.0.0.1 (port 0 unless C{description} says
    otherwise); stopped when the test ends.
    """
    endpoint = endpoints.serverFromString(reactor, description or "tcp:0:interface=127.0.0.1")
    port = await endpoint.listen(factory)
    test.addCleanup(port.stopListening)
    return port


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    """
    Block until something accepts connections on 127.0.0.1:port.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def poll_until(predicate: Callable[[], T], timeout: float = 10.0, what: str = "condition") -> T:
    """
    Block (for tests that do not run the reactor) until C{predicate}
    returns something true, and return it; fail after C{timeout} seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout} s")
        time.sleep(0.05)


def read_line(stream: IO[bytes], timeout: float) -> bytes:
    """
    One line from a pipe, or what there is of it after C{timeout} seconds.
    Reads the file descriptor byte by byte, so whatever is not read stays
    in the pipe (for L{Process.stop} to collect).
    """
    deadline = time.monotonic() + timeout
    line = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([stream], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        char = os.read(stream.fileno(), 1)
        if not char:
            break
        line += char
        if char == b"\n":
            return line
    return line


def read_until(stream: IO[bytes], needle: bytes, timeout: float) -> bytes:
    """
    Lines from a pipe until one contains C{needle}; all of them.  Fails
    after C{timeout} seconds, or at end of file, showing what was read.
    """
    deadline = time.monotonic() + timeout
    seen = b""
    while time.monotonic() < deadline:
        line = read_line(stream, deadline - time.monotonic())
        seen += line
        if needle in line:
            return seen
        if not line:
            break
    raise AssertionError(f"{needle!r} not seen in {timeout} s; got:\n{seen.decode(errors='replace')}")


class Process:
    """
    A subprocess that is always stopped (by its pid) when the test ends.
    """

    def __init__(self, test: unittest.TestCase, argv: list[str], **kwargs: Any) -> None:
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        # Run this checkout's code (and its ./twisted/plugins), whatever
        # version the environment has installed.
        env = dict(kwargs.pop("env", None) or os.environ)
        env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        kwargs["env"] = env
        self.popen = subprocess.Popen(argv, **kwargs)
        self.stdout = b""
        self.stderr = b""
        test.addCleanup(self.stop)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> Optional[int]:
        if self.popen.poll() is None:
            os.kill(self.popen.pid, sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
        if self.popen.stdin is not None and not self.popen.stdin.closed:
            self.popen.stdin.close()
        # The process is gone: what is left in its pipes can be read whole.
        for name in ("stdout", "stderr"):
            stream = getattr(self.popen, name)
            if stream is not None and not stream.closed:
                setattr(self, name, getattr(self, name) + stream.read())
                stream.close()
        return self.popen.returncode


def make_ca(directory: str, ca_name: str = "wsheart test CA") -> tuple[Any, Any, str]:
    """
    A self-signed CA; returns (key, certificate, PEM path).
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ca_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    path = os.path.join(directory, "ca.pem")
    with open(path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert, path


def make_server_cert(
    directory: str, ca_key: Any, ca_cert: Any, hostname: str, stem: str = "server", san: bool = True
) -> tuple[str, str]:
    """
    A server key and certificate for C{hostname} signed by the CA; returns
    (key path, certificate path).  C{san=False} makes the certificate the
    usual C{openssl req -subj /CN=...} one-liner makes: the name in the
    subject's CN only, no subjectAltName.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    names: list[x509.GeneralName]
    try:
        names = [x509.IPAddress(ipaddress.ip_address(hostname))]
    except ValueError:
        names = [x509.DNSName(hostname)]
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = (
        builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key_path = os.path.join(directory, f"{stem}.key")
    cert_path = os.path.join(directory, f"{stem}.pem")
    with open(key_path, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
        f.write(ca_cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def skip_unless_allowed(reason: str) -> NoReturn:
    """
    Skip the calling test for C{reason} - unless C{WSHEART_REQUIRE_ALL=1}
    (set by .ci/run), where it fails instead: CI must never pass by
    skipping.  The only place the test suite raises C{SkipTest}.
    """
    if os.environ.get("WSHEART_REQUIRE_ALL") == "1":
        raise AssertionError(f"{reason} (WSHEART_REQUIRE_ALL=1: every test must run)")
    raise unittest.SkipTest(reason)


def require_tool(path: str, what: str) -> str:
    """
    C{path} (an executable, absolute or on PATH) for a test that needs it.

    Missing, the test is skipped with C{what} as the reason, through
    L{skip_unless_allowed}: a failure under C{WSHEART_REQUIRE_ALL=1}.
    """
    import shutil

    found = path if os.path.isabs(path) and os.access(path, os.X_OK) else shutil.which(path)
    if found:
        return found
    skip_unless_allowed(f"{what}: {path} not found")


class RedisServer:
    """
    A redis-server of its own on a free 127.0.0.1 port, with nothing
    persisted, stopped by its pid when the test ends.  Missing, the test
    is skipped - or fails under WSHEART_REQUIRE_ALL=1.
    """

    def __init__(self, test: unittest.TestCase, *extra: str) -> None:
        self.binary = require_tool("redis-server", "the Redis tests need Debian's redis-server package")
        self.test = test
        self.extra = list(extra)  # more options: --replicaof HOST PORT, ...
        self.port = free_port()
        self.directory = os.path.abspath(test.mktemp())
        os.makedirs(self.directory)
        self.start()

    def start(self) -> None:
        """
        Start (again, after L{stop}: same port, nothing kept).
        """
        self.process = Process(
            self.test,
            [
                self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", self.directory, "--daemonize", "no", "--loglevel", "warning",
                # DEBUG SLEEP plays a slow Redis (refused by default since Redis 7).
                "--enable-debug-command", "local",
                *self.extra,
            ],
        )  # fmt: skip
        wait_for_port(self.port)

    def kill(self) -> None:
        """
        SIGKILL: Redis gone at once, and everything it held with it.
        """
        self.process.stop(signal.SIGKILL)

    @property
    def pid(self) -> int:
        return self.process.pid


class SentinelServer:
    """
    A Redis Sentinel of its own (redis-server in Sentinel mode) on a free
    127.0.0.1 port, watching C{master} as the service C{service}; stopped
    by its pid when the test ends.
    """

    def __init__(self, test: unittest.TestCase, master: RedisServer, service: str = "wsh") -> None:
        binary = require_tool("redis-server", "the Redis tests need Debian's redis-server package")
        self.port = free_port()
        self.service = service
        directory = os.path.abspath(test.mktemp())
        os.makedirs(directory)
        config = os.path.join(directory, "sentinel.conf")  # Sentinel rewrites it: its own file
        with open(config, "w") as f:
            f.write(
                f"port {self.port}\nbind 127.0.0.1\ndir {directory}\nloglevel warning\n"
                f"sentinel monitor {service} 127.0.0.1 {master.port} 1\n"
                f"sentinel down-after-milliseconds {service} 1000\n"
                f"sentinel failover-timeout {service} 5000\n"
            )
        self.process = Process(test, [binary, config, "--sentinel"], stdout=subprocess.DEVNULL)
        wait_for_port(self.port)


def upgrade(sock: socket.socket) -> None:
    """
    The opening handshake of a raw client on a connected socket; the 101
    answer is read byte by byte, so nothing after it is consumed.
    """
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        byte = sock.recv(1)
        assert byte, f"the handshake ended early: {head!r}"
        head += byte
    assert head.startswith(b"HTTP/1.1 101"), head
