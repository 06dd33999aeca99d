"""
Integration tests of the shipped commands as subprocesses on loopback:
C{twistd wsheart} refusing to start on a taken port, writing JSON log
lines, C{wsheart connect} riding out a daemon restart, and the wheel built
from this checkout working from a fresh virtualenv outside the repository.
Every process is stopped by its pid.
"""

from __future__ import annotations

import fnmatch
import glob
import json
import os
import re
import shutil
import signal
import site
import socket
import subprocess
import sys

import websockets.sync.client
from twisted.trial import unittest

from .loopback import REPO, Process, free_port, read_line, read_until, require_tool, twistd_command, wait_for_port


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

    def test_open_files_limit_raised_at_start(self) -> None:
        """
        Started with a soft limit of 512 open files, the daemon raises it to
        the hard limit and says how many connections that leaves room for.
        """
        import resource

        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        port = free_port()
        process = Process(
            self,
            twistd_command() + ["-n", "--pidfile=", "wsheart", "--endpoint", f"tcp:{port}:interface=127.0.0.1"],
            cwd=REPO,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (min(512, hard), hard)),
        )
        assert process.popen.stdout is not None
        line = read_until(process.popen.stdout, b"connections", 20)
        self.assertIn(f"open files: up to {hard} (was {min(512, hard)}): room for about {hard - 64} connections".encode(), line)

    def test_runs_on_the_wsheart_reactor(self) -> None:
        """
        C{twistd --reactor wsheart} (what the systemd units run) serves an
        independent client: a message is echoed, a text ping answered, a
        100 kB message (many reads) echoed whole.
        """
        port = free_port()
        daemon = Process(
            self,
            twistd_command()
            + ["--reactor", "wsheart", "-n", "--pidfile=", "wsheart", "--endpoint", f"tcp:{port}:interface=127.0.0.1",
               "--ping-interval", "0.5", "--ping-timeout", "0.5"],
            cwd=REPO,
        )  # fmt: skip
        wait_for_port(port)
        with websockets.sync.client.connect(f"ws://127.0.0.1:{port}/", proxy=None, open_timeout=10) as ws:
            ws.send("over the wsheart reactor")
            self.assertEqual(ws.recv(timeout=10), "over the wsheart reactor")
            ws.send("ping")
            self.assertEqual(ws.recv(timeout=10), "pong")
            ws.send(b"\x00" * 100_000)
            self.assertEqual(ws.recv(timeout=10), b"\x00" * 100_000)
        daemon.stop(signal.SIGTERM)
        self.assertIn(b"WsheartEPollReactor", daemon.stdout + daemon.stderr)

    def test_runs_from_a_config_file(self) -> None:
        """
        C{twistd wsheart --config FILE} with a key of every group: the
        process serves what the file says (its listener and admin endpoint,
        echo prefix, heartbeat interval in /metrics, compression, history
        size, Origin rule, the Redis it connects to), a WSHEART_ variable
        overrides the file, and C{--print-config} of the same file and
        environment shows every group's value.
        """
        from .loopback import RedisServer, poll_until

        redis = RedisServer(self)
        port, admin = free_port(), free_port()
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        key_file = os.path.join(directory, "jwt.secret")
        with open(key_file, "w") as f:
            f.write("k" * 40)
        path = os.path.join(directory, "wsheart.toml")
        with open(path, "w") as f:
            f.write(
                f'endpoint = ["tcp:{port}:interface=127.0.0.1"]\n'
                "[listeners]\nhandshake-timeout = 7\n"
                "[heartbeat]\nping-interval = 4\nping-timeout = 2\n"
                '[messages]\necho-prefix = "from the file: "\n'
                "[channels]\nhistory-size = 9\n"
                f'[redis]\nredis = "redis://127.0.0.1:{redis.port}/0"\nredis-prefix = "cfg"\n'
                '[auth]\njwt-audience = "from-the-file"\n'
                '[limits]\nallowed-origin = ["https://app.example.com"]\nmax-connections = 77\n'
                "[deflate]\ndeflate = true\n"
                f'[operations]\nadmin-endpoint = "tcp:{admin}:interface=127.0.0.1"\ndrain-time = 1\n'
            )
        environ = {**os.environ, "WSHEART_MAX_CONNECTIONS": "88"}
        printed = subprocess.run(
            twistd_command() + ["wsheart", "--config", path, "--print-config"],
            env={**environ, "PYTHONPATH": REPO}, capture_output=True, timeout=60, cwd=REPO,
        )  # fmt: skip
        self.assertEqual(printed.returncode, 0, printed.stderr)
        text = printed.stdout.decode()
        for line in (
            f'endpoint = ["tcp:{port}:interface=127.0.0.1:backlog=4096"]', "handshake-timeout = 7.0",
            "ping-interval = 4.0", 'echo-prefix = "from the file: "', "history-size = 9",
            'redis-prefix = "cfg"', 'jwt-audience = "from-the-file"', "max-connections = 88",
            "deflate = true", "drain-time = 1.0",
        ):  # fmt: skip
            self.assertIn(line + "\n", text)
        daemon = Process(self, twistd_command() + ["-n", "--pidfile=", "wsheart", "--config", path], cwd=REPO, env=environ)
        wait_for_port(port)
        wait_for_port(admin)
        with websockets.sync.client.connect(
            f"ws://127.0.0.1:{port}/", proxy=None, open_timeout=10, compression="deflate"
        ) as ws:  # fmt: skip
            self.assertIn("permessage-deflate", ws.response.headers.get("Sec-WebSocket-Extensions", ""))
            ws.send("hello")
            self.assertEqual(ws.recv(timeout=10), "from the file: hello")
        with self.assertRaises(websockets.exceptions.InvalidStatus) as refused:
            websockets.sync.client.connect(
                f"ws://127.0.0.1:{port}/", proxy=None, open_timeout=10, origin="https://evil.example"
            )  # fmt: skip
        self.assertEqual(refused.exception.response.status_code, 403)
        import urllib.request

        def fetch(path: str) -> str:
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            with opener.open(f"http://127.0.0.1:{admin}{path}", timeout=5) as response:
                return response.read().decode()  # type: ignore[no-any-return]

        self.assertIn("wsheart_heartbeat_interval_seconds 4.0", fetch("/metrics"))
        poll_until(lambda: json.loads(fetch("/healthz"))["channels"]["redis"] == "up", 15, "the file's Redis")
        daemon.stop(signal.SIGTERM)

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


class LogFormatProcessTests(unittest.TestCase):
    """
    twistd wsheart --log-format json writes JSON lines on stdout.
    """

    timeout = 30

    def test_json_on_stdout(self) -> None:
        """
        Every line twistd writes is a JSON object, and the start-up line
        names the heartbeat bound as a field.
        """
        port = free_port()
        daemon = Process(
            self,
            twistd_command()
            + ["-n", "--pidfile=", "wsheart", "-e", f"tcp:{port}:interface=127.0.0.1", "--log-format", "json"],
            cwd=REPO,
        )
        wait_for_port(port)
        os.kill(daemon.pid, signal.SIGTERM)
        daemon.popen.wait(20)
        daemon.stop()
        lines = [line for line in daemon.stdout.decode().splitlines() if line.strip()]
        records = [json.loads(line) for line in lines]
        starting = [r for r in records if "bound" in r]
        self.assertEqual(len(starting), 1)
        self.assertEqual(starting[0]["bound"], 60.0)
        self.assertTrue(all("text" in r and "level" in r for r in records))


# What a build must not see from the checkout: environments, build output,
# test output and caches (a stale build/lib would end up in the wheel).
NOT_SOURCE = [
    ".git", ".venv", "venv", "build", "dist", "*.egg-info", "_trial_temp*", "node_modules",
    "artifacts", "__pycache__", "*.pyc", ".mypy_cache", "dropin.cache",
]  # fmt: skip


def copy_source(destination: str, leave_out: list[str]) -> None:
    """
    Copy the checkout, as it is on disk (committed or not), to
    C{destination}, without L{NOT_SOURCE} and the paths in C{leave_out}.
    """

    def ignore(directory: str, names: list[str]) -> set[str]:
        return {
            name
            for name in names
            if any(fnmatch.fnmatch(name, pattern) for pattern in NOT_SOURCE)
            or os.path.abspath(os.path.join(directory, name)) in leave_out
        }

    shutil.copytree(REPO, destination, ignore=ignore, symlinks=True)


def dependencies_without_wsheart(destination: str) -> list[str]:
    """
    The running environment's site-packages directories, each rebuilt in
    C{destination} as symbolic links to everything in it except wsheart
    itself (an installed wsheart, its metadata and its drop-in in
    twisted/plugins would hide a broken wheel).  Returns the new
    directories, in the running environment's order.
    """

    def link_all(source: str, target: str) -> None:
        os.makedirs(target)
        for name in os.listdir(source):
            if "wsheart" in name.lower():
                continue
            if name in ("twisted", "plugins") and os.path.isdir(os.path.join(source, name)):
                link_all(os.path.join(source, name), os.path.join(target, name))
            elif name not in ("__pycache__", "dropin.cache"):
                os.symlink(os.path.join(source, name), os.path.join(target, name))

    views = []
    for i, directory in enumerate(d for d in site.getsitepackages() if os.path.isdir(d)):
        view = os.path.join(destination, str(i))
        link_all(directory, view)
        views.append(view)
    return views


# Run in the new venv with the drop-ins' names: where wsheart and each
# drop-in were imported from, which plugins the drop-ins offer (service
# makers by tapname, endpoint parsers by prefix), and which Twisted finds.
LOAD_DROPINS = """
import importlib, json, sys
import wsheart
from twisted.application.service import IServiceMaker
from twisted.internet.interfaces import IStreamServerEndpointStringParser
from twisted.plugin import getPlugins
kinds = {"service makers": (IServiceMaker, "tapname"), "endpoint parsers": (IStreamServerEndpointStringParser, "prefix")}
files, offered = [wsheart.__file__], {kind: [] for kind in kinds}
for name in sys.argv[1:]:
    module = importlib.import_module("twisted.plugins." + name)
    files.append(module.__file__)
    for value in vars(module).values():
        for kind, (interface, key) in kinds.items():
            if interface.providedBy(value):
                offered[kind].append(getattr(value, key))
found = {kind: [getattr(p, key) for p in getPlugins(interface)] for kind, (interface, key) in kinds.items()}
print(json.dumps({"files": files, "offered": offered, "found": found}))
"""


class PackagingTests(unittest.TestCase):
    """
    The wheel built from this checkout, installed in a fresh virtualenv and
    run from outside the repository, so ./twisted/plugins cannot hide a
    broken package.  Self-contained: no package index, no download.
    """

    timeout = 300

    def test_wheel_in_fresh_venv(self) -> None:
        """
        A wheel built from a copy of the checkout holds every file under
        wsheart/ (modules and static files) and every twisted/plugins
        drop-in, with no __init__.py in twisted/ or twisted/plugins/.
        Installed alone (no dependencies, no index) into a new venv that
        gets its dependencies from the running environment minus any
        wsheart, it works from an unrelated directory: wsheart and the
        drop-ins load from the venv, Twisted finds every plugin they offer
        (the service maker, endpoint parsers), `twistd --help` lists wsheart,
        `twistd wsheart --help` shows the options, `wsheart --version`
        answers.  A package or a drop-in missing from setup.cfg fails it.
        """
        work = os.path.abspath(self.mktemp())
        os.makedirs(work)
        # Only what this test names: no pip configuration (its index and
        # find-links), no PYTHONPATH pointing back at the checkout.
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("PIP_")}
        env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")

        source = os.path.join(work, "source")
        copy_source(source, leave_out=[work, os.path.abspath(os.getcwd())])
        dist = os.path.join(work, "dist")
        pip = [sys.executable, "-m", "pip"]
        subprocess.run(
            pip + ["wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", dist, source],
            check=True, cwd=work, env=env, timeout=120,
        )  # fmt: skip
        (wheel,) = glob.glob(os.path.join(dist, "wsheart-*.whl"))

        venv = os.path.join(work, "venv")
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True, env=env, timeout=60)
        python = os.path.join(venv, "bin", "python")
        subprocess.run(
            pip + ["--python", python, "install", "--no-deps", "--no-index", "-q", wheel],
            check=True, cwd=work, env=env, timeout=120,
        )  # fmt: skip
        outside = os.path.join(work, "elsewhere")
        os.makedirs(outside)

        def run(*argv: str) -> subprocess.CompletedProcess[bytes]:
            return subprocess.run(list(argv), cwd=outside, env=env, capture_output=True, timeout=60)

        purelib = run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.decode().strip()
        self.assertTrue(purelib.startswith(venv), purelib)

        # What the wheel installed, against what the checkout has.
        def files(root: str) -> set[str]:
            found: set[str] = set()
            for directory, dirs, names in os.walk(root):
                dirs[:] = [d for d in dirs if d != "__pycache__"]
                found.update(os.path.relpath(os.path.join(directory, n), root) for n in names)
            return found

        wanted = {f for f in files(os.path.join(source, "wsheart")) if f.endswith(".py") or f.startswith("static" + os.sep)}
        self.assertTrue(any(f.startswith("static" + os.sep) for f in wanted))
        self.assertEqual(wanted - files(os.path.join(purelib, "wsheart")), set(), "files missing from the wheel")
        dropins = sorted(f[:-3] for f in os.listdir(os.path.join(source, "twisted", "plugins")) if f.endswith(".py"))
        self.assertIn("wsheart_plugin", dropins)
        plugins = os.path.join(purelib, "twisted", "plugins")
        for name in dropins:
            self.assertTrue(os.path.isfile(os.path.join(plugins, name + ".py")), f"the drop-in {name} is not in the wheel")
        self.assertFalse(os.path.exists(os.path.join(plugins, "__init__.py")))
        self.assertFalse(os.path.exists(os.path.join(purelib, "twisted", "__init__.py")))

        # Dependencies from the running environment, wsheart not among them.
        views = dependencies_without_wsheart(os.path.join(work, "deps"))
        with open(os.path.join(purelib, "running-environment.pth"), "w") as f:
            f.writelines(f"import site; site.addsitedir({view!r})\n" for view in views)

        loaded = run(python, "-c", LOAD_DROPINS, *dropins)
        self.assertEqual(loaded.returncode, 0, loaded.stderr)
        report = json.loads(loaded.stdout)
        for path in report["files"]:
            self.assertTrue(path.startswith(purelib + os.sep), f"{path} is not from the new venv")
        for interface, names in report["offered"].items():
            self.assertLessEqual(set(names), set(report["found"][interface]), f"{interface} plugins twisted does not find")

        twistd = [python, "-c", "from twisted.scripts.twistd import run; run()"]
        commands = run(*twistd, "--help")
        self.assertEqual(commands.returncode, 0, commands.stderr)
        self.assertRegex(commands.stdout, re.compile(rb"^ +wsheart +\S", re.M))
        help_text = run(*twistd, "wsheart", "--help")
        self.assertEqual(help_text.returncode, 0, help_text.stderr)
        self.assertIn(b"--ping-interval", help_text.stdout)
        self.assertIn(b"--endpoint", help_text.stdout)
        version = run(os.path.join(venv, "bin", "wsheart"), "--version")
        self.assertEqual(version.returncode, 0, version.stderr)
        self.assertEqual(version.stdout.strip().split()[0], b"wsheart")
        self.assertFalse(os.path.exists(os.path.join(outside, "twisted")))
