"""
Integration tests of the shipped commands as subprocesses on loopback:
C{twistd wsheart} refusing to start on a taken port, C{wsheart connect}
riding out a daemon restart, and the built wheel working from a fresh
virtualenv outside the repository.  Every process is stopped by its pid.
"""

from __future__ import annotations

import glob
import os
import select
import signal
import socket
import subprocess
import sys
import time
from typing import IO

import websockets.sync.client
from twisted.trial import unittest

from .loopback import REPO, Process, free_port, require_tool, skip_unless_allowed, twistd_command, wait_for_port


def read_line(stream: IO[bytes], timeout: float) -> bytes:
    """
    One line from a pipe, or b"" after C{timeout} seconds.
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
    Lines from a pipe until one contains C{needle}; all of them.
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


class DaemonProcessTests(unittest.TestCase):
    """
    C{twistd -n wsheart} and C{wsheart connect} as real processes.
    """

    timeout = 60

    def daemon(self, port: int, *extra: str) -> Process:
        return Process(
            self,
            twistd_command()
            + ["-n", "--pidfile=", "wsheart", "--endpoint", f"tcp:{port}:interface=127.0.0.1", *extra],
            cwd=REPO,
        )

    def test_failed_bind_stops_startup(self) -> None:
        """
        With the port taken, twistd exits non-zero and says why, instead of
        running without a listener.
        """
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen(1)
            port = taken.getsockname()[1]
            process = self.daemon(port)
            try:
                process.popen.wait(20)
            except subprocess.TimeoutExpired:
                self.fail("twistd kept running although it could not listen")
            output = process.popen.stdout.read() + process.popen.stderr.read()  # type: ignore[union-attr]
        self.assertNotEqual(process.popen.returncode, 0)
        self.assertIn(b"Address already in use", output)

    def test_bad_option_is_a_usage_error(self) -> None:
        """
        A bad option stops twistd with the option's message.
        """
        process = Process(
            self, twistd_command() + ["-n", "--pidfile=", "wsheart", "--ping-interval", "-3"], cwd=REPO
        )
        process.popen.wait(20)
        output = process.popen.stdout.read() + process.popen.stderr.read()  # type: ignore[union-attr]
        self.assertNotEqual(process.popen.returncode, 0)
        self.assertIn(b"--ping-interval must be a positive number of seconds", output)

    def test_socket_activation(self) -> None:
        """
        --endpoint systemd:domain=INET:index=0 serves on a socket passed by
        systemd-socket-activate (LISTEN_FDS), the way a .socket unit does.
        """
        activate = require_tool("systemd-socket-activate", "socket activation needs systemd's systemd-socket-activate")
        port = free_port()
        Process(
            self,
            # Twisted needs LISTEN_FDNAMES beside LISTEN_FDS, as systemd
            # 227 and newer always set; systemd-socket-activate only with
            # --fdname.
            [activate, "-l", f"127.0.0.1:{port}", "--fdname=wsheart", "-E", "PYTHONPATH"]
            + twistd_command()
            + ["-n", "--pidfile=", "wsheart", "--endpoint", "systemd:domain=INET:index=0"],
            cwd=REPO,
        )
        wait_for_port(port)
        with websockets.sync.client.connect(f"ws://127.0.0.1:{port}/", proxy=None, open_timeout=10) as ws:
            ws.send("activated")
            self.assertEqual(ws.recv(timeout=10), "activated")

    def test_cli_rides_out_a_restart(self) -> None:
        """
        wsheart connect echoes stdin lines through the daemon, reports the
        daemon's death and its reconnect attempts on stderr, and comes back
        by itself when the daemon restarts; closing stdin ends it with 0.
        """
        port = free_port()
        daemon = self.daemon(port)
        wait_for_port(port)
        cli = Process(
            self,
            [
                sys.executable, "-m", "wsheart", "connect", f"ws://127.0.0.1:{port}/",
                "--ping-interval", "1", "--ping-timeout", "0.5",
                "--initial-delay", "0.3", "--max-delay", "1", "--stable-after", "1",
            ],
            stdin=subprocess.PIPE,
            cwd=REPO,
        )  # fmt: skip
        assert cli.popen.stdin is not None and cli.popen.stdout is not None and cli.popen.stderr is not None
        read_until(cli.popen.stderr, b"open, RTT", 10)
        cli.popen.stdin.write(b"first\n")
        cli.popen.stdin.flush()
        self.assertEqual(read_line(cli.popen.stdout, 10), b"first\n")

        daemon.stop(signal.SIGTERM)
        seen = read_until(cli.popen.stderr, b"reconnecting in", 10)
        self.assertIn(b"closed with code", seen)
        read_until(cli.popen.stderr, b"attempt 2", 10)

        self.daemon(port)
        read_until(cli.popen.stderr, b"open, RTT", 15)
        cli.popen.stdin.write(b"second\n")
        cli.popen.stdin.flush()
        self.assertEqual(read_line(cli.popen.stdout, 10), b"second\n")

        cli.popen.stdin.close()
        self.assertEqual(cli.popen.wait(10), 0)


class PackagingTests(unittest.TestCase):
    """
    The built wheel, installed in a fresh virtualenv and run from outside
    the repository, so ./twisted/plugins cannot hide a broken package.
    """

    timeout = 600

    def test_wheel_in_fresh_venv(self) -> None:
        """
        pip builds a wheel; a new venv installs it (with its dependencies);
        from an unrelated directory `twistd wsheart --help` lists the
        options and `wsheart --version` answers.
        """
        if os.environ.get("WSHEART_SKIP_WHEEL_TEST"):
            skip_unless_allowed("WSHEART_SKIP_WHEEL_TEST is set")
        work = os.path.abspath(self.mktemp())
        os.makedirs(work)
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", work, REPO],
            check=True,
            cwd=work,
            timeout=300,
        )
        (wheel,) = glob.glob(os.path.join(work, "wsheart-*.whl"))
        venv = os.path.join(work, "venv")
        subprocess.run([sys.executable, "-m", "venv", venv], check=True, timeout=120)
        bindir = os.path.join(venv, "bin")
        subprocess.run(
            [os.path.join(bindir, "pip"), "install", "-q", wheel], check=True, cwd=work, timeout=400
        )
        outside = os.path.join(work, "elsewhere")
        os.makedirs(outside)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        help_text = subprocess.run(
            [os.path.join(bindir, "twistd"), "wsheart", "--help"],
            cwd=outside, env=env, capture_output=True, timeout=60,
        )  # fmt: skip
        self.assertEqual(help_text.returncode, 0, help_text.stderr)
        self.assertIn(b"--ping-interval", help_text.stdout)
        self.assertIn(b"--endpoint", help_text.stdout)
        version = subprocess.run(
            [os.path.join(bindir, "wsheart"), "--version"], cwd=outside, env=env, capture_output=True, timeout=60
        )
        self.assertEqual(version.stdout.strip().split()[0], b"wsheart")
        self.assertFalse(os.path.exists(os.path.join(outside, "twisted")))
