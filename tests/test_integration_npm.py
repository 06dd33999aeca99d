"""
The npm package of the browser library (js/), as a user gets it: C{npm
pack} builds the tarball from wsheart/static (js/build.mjs, its prepack
script), a scratch project installs it from that file, tsc type-checks a
program against it, and a Node.js program from that project talks to a real
daemon (twistd on 127.0.0.1): echo, heartbeat, a channel that recovers
what it missed, reconnects after the daemon restarts.  Needs node and npm
(no registry: the tarball has no dependencies) and tsc from tests/js
(C{npm ci --prefix tests/js}).

Also the fast check that the package's version is the Python package's.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import tarfile
from typing import Any

from twisted.trial import unittest

from wsheart import __version__
from wsheart.pages import library_module, static_text

from .loopback import REPO, Process, free_port, read_line, require_tool, twistd_command, wait_for_port

PACKAGE = os.path.join(REPO, "js")
PROGRAMS = os.path.join(REPO, "tests", "js", "npm")
TSC = os.path.join(REPO, "tests", "js", "node_modules", ".bin", "tsc")


def package_json() -> dict[str, Any]:
    with open(os.path.join(PACKAGE, "package.json"), encoding="utf-8") as f:
        return json.load(f)  # type: ignore[no-any-return]


class PackageManifestTests(unittest.TestCase):
    def test_version_is_the_python_packages(self) -> None:
        """
        js/package.json carries wsheart.__version__ (and so does wsheart.js,
        which the build checks): one release, one version.
        """
        self.assertEqual(package_json()["version"], __version__)
        self.assertIn(f'var VERSION = "{__version__}";', static_text("wsheart.js"))

    def test_manifest(self) -> None:
        """
        An ES module with its types behind "exports", for Node 20 and later,
        MIT, shipping only the built files, built by prepack.
        """
        manifest = package_json()
        self.assertEqual(manifest["name"], "wsheart")
        self.assertEqual(manifest["type"], "module")
        self.assertEqual(manifest["exports"]["."], {"types": "./dist/wsheart.d.ts", "default": "./dist/wsheart.js"})
        self.assertEqual(manifest["types"], "./dist/wsheart.d.ts")
        self.assertEqual(manifest["engines"], {"node": ">=20"})
        self.assertEqual(manifest["license"], "MIT")
        self.assertIs(manifest["sideEffects"], False)
        self.assertEqual(sorted(manifest["files"]), ["dist/wsheart.d.ts", "dist/wsheart.js"])
        self.assertIn("build.mjs", manifest["scripts"]["prepack"])


class NpmPackageTests(unittest.TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.node = require_tool("node", "the npm package tests need Node.js")
        self.npm = require_tool("npm", "the npm package tests need npm")
        self.tsc = require_tool(TSC, "run `npm ci --prefix tests/js` first")
        self.work = os.path.abspath(self.mktemp())
        os.makedirs(self.work)

    def run_tool(self, argv: list[str], cwd: str, timeout: float = 60) -> str:
        # No registry is needed; --offline makes sure none is asked.
        env = dict(os.environ, npm_config_offline="true", npm_config_audit="false", npm_config_fund="false",
                   npm_config_update_notifier="false")  # fmt: skip
        result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
        output = result.stdout + result.stderr
        self.assertEqual(result.returncode, 0, f"{argv}:\n{output}")
        return output

    def pack(self) -> str:
        """
        npm pack js/ into the test's directory; the tarball's path.
        """
        destination = os.path.join(self.work, "packed")
        os.makedirs(destination)
        self.run_tool([self.npm, "pack", "--pack-destination", destination], cwd=PACKAGE)
        [tarball] = glob.glob(os.path.join(destination, "*.tgz"))
        self.assertEqual(os.path.basename(tarball), f"wsheart-{__version__}.tgz")
        return tarball

    def scratch_project(self, tarball: str) -> str:
        """
        A project that installed the tarball, with the programs of
        tests/js/npm beside it.
        """
        project = os.path.join(self.work, "project")
        os.makedirs(project)
        with open(os.path.join(project, "package.json"), "w") as f:
            json.dump({"name": "scratch", "private": True, "type": "module", "dependencies": {"wsheart": f"file:{tarball}"}}, f)
        self.run_tool([self.npm, "install", "--no-package-lock"], cwd=project)
        for name in ("consumer.ts", "tsconfig.json", "client.mjs"):
            shutil.copy(os.path.join(PROGRAMS, name), project)
        return project

    def test_tarball_types_and_a_node_program_against_the_daemon(self) -> None:
        """
        The tarball holds package.json, its README and the two built files: the module
        is the daemon's /wsheart.mjs byte for byte, the types have no
        global.  Installed into a scratch project, it type-checks (bundler
        and Node resolution), and a Node program importing "wsheart" echoes,
        gets heartbeat RTTs, recovers a channel message published while it
        was cut off, and comes back after the daemon restarts.
        """
        tarball = self.pack()
        with tarfile.open(tarball) as archive:
            self.assertEqual(
                sorted(archive.getnames()),
                ["package/README.md", "package/dist/wsheart.d.ts", "package/dist/wsheart.js", "package/package.json"],
            )
            module = archive.extractfile("package/dist/wsheart.js").read().decode("utf-8")  # type: ignore[union-attr]
            types = archive.extractfile("package/dist/wsheart.d.ts").read().decode("utf-8")  # type: ignore[union-attr]
        self.assertEqual(module, library_module())
        self.assertNotIn("declare global", types)
        self.assertTrue(static_text("wsheart.d.ts").startswith(types.split("\nexport default WsHeart;")[0]))

        project = self.scratch_project(tarball)
        self.run_tool([self.tsc, "-p", "."], cwd=project)
        # Node's resolution too (the declaration itself was checked just above).
        self.run_tool([self.tsc, "-p", ".", "--module", "nodenext", "--moduleResolution", "nodenext", "--skipLibCheck"], cwd=project)

        self.run_node_program(project)

    def start_daemon(self, port: int, admin_port: int, token_file: str) -> Process:
        argv = twistd_command() + [
            "-n", "--pidfile=", "wsheart",
            "--endpoint", f"tcp:{port}:interface=127.0.0.1",
            "--admin-endpoint", f"tcp:{admin_port}:interface=127.0.0.1",
            "--api-token-file", token_file,
            "--ping-interval", "1", "--ping-timeout", "0.5", "--max-missed", "2",
            "--drain-time", "0.2", "--drain-retry-after", "0.2",
        ]  # fmt: skip
        process = Process(self, argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.work)
        wait_for_port(port)
        wait_for_port(admin_port)
        return process

    def run_node_program(self, project: str) -> None:
        token = "npm-test-token-0123456789"
        token_file = os.path.join(self.work, "api-token")
        with open(token_file, "w") as f:
            f.write(token + "\n")
        port, admin_port = free_port(), free_port()
        daemon = self.start_daemon(port, admin_port, token_file)
        # Node 22 has a global WebSocket; Node 20 needs the flag.
        has_websocket = subprocess.run([self.node, "-e", "process.exit(typeof WebSocket === 'function' ? 0 : 1)"]).returncode == 0
        flags = [] if has_websocket else ["--experimental-websocket"]
        client = Process(
            self,
            [self.node, *flags, "client.mjs", f"ws://127.0.0.1:{port}/", f"http://127.0.0.1:{admin_port}"],
            cwd=project,
            env=dict(os.environ, WSHEART_API_TOKEN=token),
        )
        events: dict[str, dict[str, Any]] = {}

        def expect(name: str, timeout: float = 25.0) -> dict[str, Any]:
            assert client.popen.stdout is not None
            while name not in events:
                line = read_line(client.popen.stdout, timeout)
                if not line:
                    client.stop()
                    self.fail(f"no {name!r} from the Node program; it said {events}, stderr:\n{client.stderr.decode(errors='replace')}")
                event = json.loads(line)
                self.assertNotEqual(event["event"], "failed", event.get("error"))
                events[event["event"]] = event
            return events[name]

        expect("echo")
        # wsheart.js times the text ping with Date.now(): on loopback the
        # answer often comes within the same millisecond, so 0 is a true RTT.
        rtt = expect("heartbeat")["rtt"]
        self.assertIsInstance(rtt, (int, float))
        self.assertGreaterEqual(rtt, 0)
        self.assertEqual(expect("recovered")["texts"], ["one", "two"])
        expect("restart-now")
        daemon.stop()
        self.start_daemon(port, admin_port, token_file)
        self.assertEqual(expect("closed")["code"], 1012)  # the drain's "come back soon"
        expect("reconnected")
        # A new process has a new epoch: the library says it could not recover.
        resubscribed = expect("resubscribed")
        self.assertEqual(resubscribed["texts"], ["one", "two", "three"])
        self.assertIs(resubscribed["recovered"], False)
        expect("done")
        self.assertEqual(client.popen.wait(10), 0)
