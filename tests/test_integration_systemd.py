"""
Integration tests of the daemon under the real systemd protocols, without a
systemd manager: a NOTIFY_SOCKET datagram socket, LISTEN_FDS through
systemd-socket-activate, signals to a real twistd process, and
systemd-analyze verify on the unit files.  Loopback only; every process is
stopped by its pid.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from typing import Any

import websockets.sync.client
from twisted.trial import unittest

from wsheart.systemd import Notifier

from .loopback import (
    REPO,
    Process,
    free_port,
    make_ca,
    make_server_cert,
    read_until,
    require_tool,
    skip_unless_allowed,
    twistd_command,
    wait_for_port,
)


class NotifyListener:
    """
    A datagram socket playing systemd's NOTIFY_SOCKET.
    """

    def __init__(self, test: unittest.TestCase, abstract: bool = False) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        test.addCleanup(self.sock.close)
        if abstract:
            name = f"wsheart-test-{os.getpid()}-{id(self)}"
            self.sock.bind("\0" + name)
            self.path = "@" + name  # how NOTIFY_SOCKET names the abstract namespace
        else:
            # Not self.mktemp(): an AF_UNIX path must stay under 108 bytes.
            directory = tempfile.mkdtemp()
            test.addCleanup(shutil.rmtree, directory, True)
            self.path = os.path.join(directory, "notify")
            self.sock.bind(self.path)
        self.received: list[tuple[float, dict[str, str]]] = []

    def messages(self) -> list[dict[str, str]]:
        """
        The datagrams waiting now, without blocking.
        """
        self.sock.setblocking(False)
        received = []
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return received
            received.append(dict(line.split("=", 1) for line in data.decode().split("\n")))

    def wait_for(self, key: str, timeout: float = 15.0) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        for _, fields in self.received:
            if key in fields:
                return fields
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                break
            fields = dict(line.split("=", 1) for line in data.decode().split("\n") if "=" in line)
            self.received.append((time.monotonic(), fields))
            if key in fields:
                return fields
        raise AssertionError(f"no {key} within {timeout} s; got {self.received}")


class NotifierSocketTests(unittest.TestCase):
    """
    wsheart.systemd's Notifier on a real AF_UNIX datagram socket standing
    in for systemd's (what is tested is the socket code).
    """

    def test_sends_fields(self) -> None:
        """
        notify() sends KEY=value lines in one datagram.
        """
        server = NotifyListener(self)
        notifier = Notifier({"NOTIFY_SOCKET": server.path})
        self.addCleanup(notifier.close)
        self.assertTrue(notifier.notify(READY=1, STATUS="serving: 0 connections"))
        self.assertEqual(server.messages(), [{"READY": "1", "STATUS": "serving: 0 connections"}])

    def test_abstract_namespace(self) -> None:
        """
        An address starting with @ is in the abstract namespace.
        """
        server = NotifyListener(self, abstract=True)
        notifier = Notifier({"NOTIFY_SOCKET": server.path})
        self.addCleanup(notifier.close)
        notifier.notify(WATCHDOG=1)
        self.assertEqual(server.messages(), [{"WATCHDOG": "1"}])

    def test_gone_socket_is_logged_not_raised(self) -> None:
        """
        A socket path that does not exist is logged; the caller carries on.
        """
        notifier = Notifier({"NOTIFY_SOCKET": "/nonexistent/notify"})
        self.addCleanup(notifier.close)
        self.assertFalse(notifier.notify(READY=1))


def ws_open(url: str, **kwargs: Any) -> Any:
    return websockets.sync.client.connect(url, proxy=None, open_timeout=10, ping_interval=None, **kwargs)


class NotifyTests(unittest.TestCase):
    """
    twistd wsheart talking sd_notify, and draining on SIGTERM.
    """

    timeout = 60

    def test_ready_status_stopping_and_drain(self) -> None:
        """
        READY=1 arrives only once the port accepts connections, STATUS=
        carries the connection count, SIGTERM gives STOPPING=1, every
        client gets 1012 with a JSON hint, and twistd exits 0.
        """
        notify = NotifyListener(self)
        port = free_port()
        env = dict(os.environ, NOTIFY_SOCKET=notify.path)
        daemon = Process(
            self,
            twistd_command()
            + ["-n", "--pidfile=", "wsheart", "-e", f"tcp:{port}:interface=127.0.0.1", "--drain-time", "1"],
            cwd=REPO,
            env=env,
        )
        ready = notify.wait_for("READY")
        self.assertEqual(ready["READY"], "1")
        # READY means listening: a connection succeeds at once.
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        self.assertIn("serving", ready["STATUS"])

        clients = [ws_open(f"ws://127.0.0.1:{port}/") for _ in range(3)]
        for ws in clients:
            ws.send("hi")
            self.assertEqual(ws.recv(timeout=5), "hi")

        os.kill(daemon.pid, signal.SIGTERM)
        stopping = notify.wait_for("STOPPING")
        self.assertIn("draining 3 connections", stopping.get("STATUS", ""))
        for ws in clients:
            with self.assertRaises(websockets.exceptions.ConnectionClosed) as e:
                ws.recv(timeout=10)
            self.assertEqual(e.exception.rcvd.code, 1012)
            self.assertEqual(set(json.loads(e.exception.rcvd.reason)), {"retry_after", "jitter"})
        self.assertEqual(daemon.popen.wait(20), 0)

    def test_silent_without_notify_socket(self) -> None:
        """
        Without NOTIFY_SOCKET the daemon runs and stops normally.
        """
        port = free_port()
        env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
        daemon = Process(
            self, twistd_command() + ["-n", "--pidfile=", "wsheart", "-e", f"tcp:{port}:interface=127.0.0.1"],
            cwd=REPO, env=env,
        )  # fmt: skip
        wait_for_port(port)
        with ws_open(f"ws://127.0.0.1:{port}/") as ws:  # the reactor is running
            ws.send("x")
            ws.recv(timeout=5)
        os.kill(daemon.pid, signal.SIGTERM)
        self.assertEqual(daemon.popen.wait(20), 0)


class SocketActivationTLSTests(unittest.TestCase):
    """
    wss:// on a socket adopted from systemd, and certificate reload.
    """

    timeout = 60

    def setUp(self) -> None:
        self.activate = require_tool("systemd-socket-activate", "socket activation needs systemd's systemd-socket-activate")
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.ca_key, self.ca_cert, self.ca_path = make_ca(self.dir)
        self.key, self.cert = make_server_cert(self.dir, self.ca_key, self.ca_cert, "localhost")

    def peer_cert_serial(self, port: int) -> int:
        context = ssl.create_default_context(cafile=self.ca_path)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                der = tls.getpeercert(binary_form=True)
        assert der is not None
        from cryptography import x509

        return int(x509.load_der_x509_certificate(der).serial_number)

    def test_tls_on_adopted_socket_and_sighup_reload(self) -> None:
        """
        --tls-endpoint systemd:... serves wss:// on the inherited socket;
        after the files change, SIGHUP makes new connections get the new
        certificate while an open connection carries on.
        """
        port = free_port()
        daemon = Process(
            self,
            [self.activate, "-l", f"127.0.0.1:{port}", "--fdname=wsheart", "-E", "PYTHONPATH"]
            + twistd_command()
            + [
                "-n", "--pidfile=", "wsheart",
                "--tls-endpoint", "systemd:domain=INET:name=wsheart",
                "--tls-key", self.key, "--tls-cert", self.cert,
            ],
            cwd=REPO,
        )  # fmt: skip
        wait_for_port(port)
        context = ssl.create_default_context(cafile=self.ca_path)
        old = ws_open(f"wss://localhost:{port}/", ssl=context)
        self.addCleanup(old.close)
        old.send("before")
        self.assertEqual(old.recv(timeout=5), "before")
        first_serial = self.peer_cert_serial(port)

        # Replace the files (as certbot would), then SIGHUP.
        new_key, new_cert = make_server_cert(self.dir, self.ca_key, self.ca_cert, "localhost", stem="renewed")
        os.replace(new_key, self.key)
        os.replace(new_cert, self.cert)
        self.assertEqual(self.peer_cert_serial(port), first_serial)  # not before the signal
        os.kill(daemon.pid, signal.SIGHUP)
        # The daemon says when the new certificate is in use, however
        # long a busy machine makes that take.
        assert daemon.popen.stdout is not None
        read_until(daemon.popen.stdout, b"TLS certificate reloaded", 30)
        self.assertNotEqual(self.peer_cert_serial(port), first_serial)
        old.send("after")
        self.assertEqual(old.recv(timeout=5), "after")
        self.assertIsNone(daemon.popen.poll())

    def test_bad_reload_keeps_serving(self) -> None:
        """
        If the new files are broken, SIGHUP keeps the old certificate.
        """
        port = free_port()
        daemon = Process(
            self,
            twistd_command()
            + [
                "-n", "--pidfile=", "wsheart",
                "--tls-endpoint", f"tcp:{port}:interface=127.0.0.1",
                "--tls-key", self.key, "--tls-cert", self.cert,
            ],
            cwd=REPO,
        )  # fmt: skip
        wait_for_port(port)
        serial = self.peer_cert_serial(port)
        with open(self.cert, "w") as f:
            f.write("not a certificate\n")
        os.kill(daemon.pid, signal.SIGHUP)
        # Once the daemon has tried the new files and said so (not after a
        # guessed delay), the old certificate is still the one served.
        assert daemon.popen.stdout is not None
        read_until(daemon.popen.stdout, b"TLS reload failed, keeping the current certificate", 30)
        self.assertEqual(self.peer_cert_serial(port), serial)
        self.assertIsNone(daemon.popen.poll())


class UnitFileTests(unittest.TestCase):
    """
    The shipped unit files pass systemd-analyze verify.
    """

    def test_verify(self) -> None:
        """
        etc/wsheart.service and etc/wsheart.socket verify cleanly once
        ExecStart points at this environment's twistd.
        """
        analyze = require_tool("systemd-analyze", "the unit file check needs systemd-analyze")
        work = os.path.abspath(self.mktemp())
        os.makedirs(work)
        twistd = twistd_command()[0]
        if not os.path.isabs(twistd) or not os.path.exists(twistd):
            skip_unless_allowed("no twistd executable in this environment")
        for name in ("wsheart.service", "wsheart.socket"):
            with open(os.path.join(REPO, "etc", name)) as f:
                text = f.read()
            with open(os.path.join(work, name), "w") as f:
                f.write(text.replace("/opt/wsheart/bin/twistd", twistd))
        result = subprocess.run(
            [analyze, "verify", os.path.join(work, "wsheart.socket"), os.path.join(work, "wsheart.service")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        # Lines about this test machine (no systemd running) are not about
        # the units.
        problems = [
            line
            for line in (result.stdout + result.stderr).splitlines()
            if "wsheart" in line and "Failed to connect" not in line
        ]
        self.assertEqual(problems, [])
        self.assertEqual(result.returncode, 0, result.stderr)
