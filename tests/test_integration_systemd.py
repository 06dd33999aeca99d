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
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from typing import Any

import websockets.sync.client
from twisted.internet import endpoints
from twisted.internet.testing import MemoryReactor
from twisted.trial import unittest

from wsheart import config
from wsheart.reuseport import ReusePortEndpoint
from wsheart.systemd import Notifier
from wsheart.tap import Options

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

    def client_context(self) -> ssl.SSLContext:
        """
        A client that trusts the test CA and offers ALPN as browsers do.
        """
        context = ssl.create_default_context(cafile=self.ca_path)
        context.set_alpn_protocols(["h2", "http/1.1"])
        return context

    def peer_cert_serial(self, port: int) -> int:
        context = self.client_context()
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
        old = ws_open(f"wss://localhost:{port}/", ssl=self.client_context())
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
    The shipped unit files pass systemd-analyze verify, and the template
    units give each instance the command line they promise.
    """

    def install_units(self, names: tuple[str, ...]) -> str:
        """
        A directory holding etc/C{names} with ExecStart pointing at this
        environment's twistd (verify checks that the binary exists).
        """
        work = os.path.abspath(self.mktemp())
        os.makedirs(work)
        twistd = twistd_command()[0]
        if not os.path.isabs(twistd) or not os.path.exists(twistd):
            skip_unless_allowed("no twistd executable in this environment")
        for name in names:
            with open(os.path.join(REPO, "etc", name)) as f:
                text = f.read()
            with open(os.path.join(work, name), "w") as f:
                f.write(text.replace("/opt/wsheart/bin/twistd", twistd))
        return work

    def verify(self, paths: list[str]) -> tuple[int, list[str]]:
        """
        systemd-analyze verify on C{paths}: its exit status and the lines
        it printed about the units.
        """
        analyze = require_tool("systemd-analyze", "the unit file check needs systemd-analyze")
        result = subprocess.run([analyze, "verify", *paths], capture_output=True, text=True, timeout=60)
        # Lines about this test machine (no systemd running) are not about
        # the units.
        problems = [
            line
            for line in (result.stdout + result.stderr).splitlines()
            if "wsheart" in line and "Failed to connect" not in line
        ]
        return result.returncode, problems

    def test_verify(self) -> None:
        """
        etc/wsheart.service and etc/wsheart.socket verify cleanly once
        ExecStart points at this environment's twistd.
        """
        work = self.install_units(("wsheart.service", "wsheart.socket"))
        status, problems = self.verify([os.path.join(work, "wsheart.socket"), os.path.join(work, "wsheart.service")])
        self.assertEqual(problems, [])
        self.assertEqual(status, 0)

    def test_verify_templates(self) -> None:
        """
        etc/wsheart@.socket and etc/wsheart@.service verify cleanly as the
        instances an operator enables, wsheart@1 and wsheart@2: systemd
        (verify included) finds an instance's unit through the template
        file of that name, with %i set - so each socket's Service= and each
        service's Requires= resolve to the same instance's unit.
        """
        templates = ("wsheart@.socket", "wsheart@.service")
        work = self.install_units(templates)
        instances = [os.path.join(work, f"wsheart@{n}.{kind}") for n in (1, 2) for kind in ("socket", "service")]
        status, problems = self.verify(instances)
        self.assertEqual(problems, [])
        self.assertEqual(status, 0)

        # The check can fail: it reads the templates through the instance
        # names, so a broken template is reported under them.
        with open(os.path.join(work, "wsheart@.service")) as f:
            text = f.read()
        with open(os.path.join(work, "wsheart@.service"), "w") as f:
            f.write(text.replace(twistd_command()[0], "/nonexistent/bin/twistd"))
        status, problems = self.verify(instances[:2])
        self.assertNotEqual(status, 0)
        self.assertTrue(any("wsheart@1.service" in line and "/nonexistent/bin/twistd" in line for line in problems), problems)

    def test_template_without_socket_units(self) -> None:
        """
        The variant wsheart@.service describes for running without socket
        units (its wsheart@%i.socket lines deleted, the reuseport:
        tls-endpoint etc/wsheart.toml shows for the systemd: one) verifies
        cleanly, and its endpoint listens on [::] for IPv6 and IPv4 with
        SO_REUSEPORT on port 443.
        """
        work = self.install_units(("wsheart@.service",))
        path = os.path.join(work, "wsheart@.service")
        with open(path) as f:
            text = f.read()
        text = text.replace("Requires=wsheart@%i.socket\n", "").replace("After=wsheart@%i.socket\n", "")
        with open(path, "w") as f:
            f.write(text)
        status, problems = self.verify([os.path.join(work, "wsheart@1.service")])
        self.assertEqual(problems, [])
        self.assertEqual(status, 0)

        with open(os.path.join(REPO, "etc", "wsheart.toml")) as f:
            shipped = f.read()
        [documented] = [line[1:] for line in shipped.splitlines() if line.startswith("#tls-endpoint = [\"reuseport:")]
        [description] = config.tomllib.loads(documented)["tls-endpoint"]
        endpoint = endpoints.serverFromString(MemoryReactor(), description)
        self.assertIsInstance(endpoint, ReusePortEndpoint)
        self.assertEqual((endpoint.interface, endpoint.port, endpoint.family), ("::", 443, socket.AF_INET6))

    def test_template_instance_configuration(self) -> None:
        """
        What ExecStart of wsheart@.service runs for instances 1 and 2 -
        etc/wsheart.toml, with the unit's Environment= and the shipped
        etc/wsheart.env over it - parses as wsheart options: each instance
        adopts the socket its wsheart@%i.socket names, and gets an admin
        endpoint of its own, 9091 and 9092, although the file says 9090.
        """
        units = {
            name: self.unit_settings(os.path.join(REPO, "etc", name))
            for name in ("wsheart@.socket", "wsheart@.service", "wsheart.socket", "wsheart.service")
        }
        socket_unit, service_unit = units["wsheart@.socket"], units["wsheart@.service"]
        # The same port as the single-instance socket, one socket per
        # instance on it, each handing itself to its own instance.
        self.assertEqual(socket_unit["ListenStream"], units["wsheart.socket"]["ListenStream"])
        self.assertEqual(socket_unit["ReusePort"], ["true"])
        self.assertEqual(socket_unit["Service"], ["wsheart@%i.service"])
        self.assertEqual(service_unit["Requires"], ["wsheart@%i.socket"])
        [fd_name] = socket_unit["FileDescriptorName"]

        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        ca_key, ca_cert, _ = make_ca(directory)
        key, cert = make_server_cert(directory, ca_key, ca_cert, "localhost")
        # The shipped file as an operator edits it (the TLS paths), with a
        # plain listener for the systemd: one, as no socket is passed here.
        with open(os.path.join(REPO, "etc", "wsheart.toml")) as f:
            shipped = f.read()
        adopted = f'tls-endpoint = ["systemd:domain=INET6:name={fd_name}"]'
        self.assertIn(adopted + "\n", shipped)
        edited = os.path.join(directory, "wsheart.toml")
        with open(edited, "w") as f:
            f.write(
                shipped.replace(adopted, 'tls-endpoint = ["tcp:0:interface=127.0.0.1"]')
                .replace("/etc/ssl/private/wsheart.key", key)
                .replace("/etc/ssl/certs/wsheart-fullchain.pem", cert)
            )
        shared = self.env_file(os.path.join(REPO, "etc", "wsheart.env"))
        seen = set()
        for unit, instance in (("wsheart.service", ""), ("wsheart@.service", "1"), ("wsheart@.service", "2")):
            env: dict[str, str] = {}
            for assignment in units[unit].get("Environment", []):
                name, value = assignment.replace("%i", instance).split("=", 1)
                env[name] = value
            env.update(shared)  # EnvironmentFile= overrides Environment=
            [exec_start] = units[unit]["ExecStart"]
            argv = self.expand_exec(exec_start, instance, env)
            self.assertEqual(argv[0], "/opt/wsheart/bin/twistd")
            wsheart_argv = argv[argv.index("wsheart") + 1 :]
            self.assertEqual(wsheart_argv, ["--config", "/etc/wsheart/wsheart.toml"])
            options = Options()
            options.environ = env
            options.parseOptions(["--config", edited])
            self.assertEqual(options["admin-endpoint"], f"tcp:909{instance or 0}:interface=127.0.0.1")
            self.assertEqual((options["tls-key"], options["log-format"], options["ping-interval"]), (key, "json", 25.0))
            seen.add(options["admin-endpoint"])
        self.assertEqual(len(seen), 3)

    @staticmethod
    def unit_settings(path: str) -> dict[str, list[str]]:
        """
        Every Key=value of a unit file, continuation lines joined; a key set
        several times keeps every value.
        """
        with open(path) as f:
            text = f.read().replace("\\\n", " ")
        settings: dict[str, list[str]] = {}
        for line in text.splitlines():
            line = line.strip()
            if line and not line.startswith(("#", ";", "[")):
                key, value = line.split("=", 1)
                settings.setdefault(key.strip(), []).append(value.strip())
        return settings

    @staticmethod
    def env_file(path: str) -> dict[str, str]:
        """
        The assignments of an EnvironmentFile= (no quoting used in ours).
        """
        env = {}
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line and not line.startswith("#"):
                    name, value = line.split("=", 1)
                    env[name] = value
        return env

    @staticmethod
    def expand_exec(command: str, instance: str, env: dict[str, str]) -> list[str]:
        """
        An ExecStart= line as systemd runs it: %i is the instance, a word that
        is C{${VAR}} stays one word, a word that is C{$VAR} is split on
        whitespace.
        """
        argv: list[str] = []
        for word in shlex.split(command.replace("%i", instance)):
            if word.startswith("${") and word.endswith("}"):
                argv.append(env[word[2:-1]])
            elif word.startswith("$"):
                argv.extend(env[word[1:]].split())
            else:
                argv.append(word)
        return argv
