"""
Integration tests of wsheart.js and the pages in a real headless Chromium
(Debian's chromium, driven by Playwright; never a downloaded browser)
against the daemon as shipped: twistd in a subprocess on 127.0.0.1.

Each test starts its own daemon and browser and stops both.  Screenshots
of the demo and status pages go to $WSHEART_ARTIFACTS (default:
./artifacts, which under trial is _trial_temp/artifacts).
"""

from __future__ import annotations

import os
import signal
import subprocess
from typing import Any

from twisted.trial import unittest

from .loopback import (
    Process,
    free_port,
    poll_until,
    read_until,
    require_tool,
    skip_unless_allowed,
    twistd_command,
    wait_for_port,
)

CHROMIUM = os.environ.get("WSHEART_CHROMIUM", "/usr/bin/chromium")
# Short timings so that each story takes seconds: server heartbeat 1 s /
# 0.5 s / 2 misses (the page takes these from the daemon), backoff windows
# 200, 400, 800 ... ms up to 3 s.
BACKOFF = "initialDelay=200&maxDelay=3000&minDelay=50"


def publish_to_lobby(admin_port: int, token: str, text: str) -> None:
    """
    POST a chat message to chat.lobby through the HTTP API of a daemon.
    """
    import json
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(
        f"http://127.0.0.1:{admin_port}/publish/chat.lobby",
        data=json.dumps({"name": "api", "text": text}).encode(),
        headers={"Authorization": f"Bearer {token}"},
        method="POST",
    )
    with opener.open(request, timeout=5) as response:
        assert response.status == 200


def artifacts_dir() -> str:
    path = os.path.abspath(os.environ.get("WSHEART_ARTIFACTS", "artifacts"))
    os.makedirs(path, exist_ok=True)
    return path


class BrowserTestCase(unittest.TestCase):
    """
    Chromium started per test, and the helpers the stories share.
    """

    timeout = 120

    def setUp(self) -> None:
        chromium = require_tool(CHROMIUM, "the browser tests need Debian's chromium package")
        try:
            from playwright.sync_api import sync_playwright
        except ImportError:
            skip_unless_allowed("the browser tests need playwright (pip install '.[test]')")
        self.playwright = sync_playwright().start()
        self.addCleanup(self.playwright.stop)
        self.browser = self.playwright.chromium.launch(executable_path=chromium, args=self.browser_args())
        self.addCleanup(self.browser.close)
        self.port = free_port()
        self.admin_port = free_port()
        self.console: list[str] = []

    # -- helpers ------------------------------------------------------------

    def browser_args(self) -> list[str]:
        return ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking"]

    def start_daemon(self, *extra: str) -> Process:
        argv = twistd_command() + [
            "-n", "--pidfile=", "wsheart",
            "--endpoint", f"tcp:{self.port}:interface=127.0.0.1",
            "--admin-endpoint", f"tcp:{self.admin_port}:interface=127.0.0.1",
            "--ping-interval", "1", "--ping-timeout", "0.5", "--max-missed", "2",
            *extra,
        ]  # fmt: skip
        process = Process(self, argv)
        wait_for_port(self.port)
        wait_for_port(self.admin_port)
        return process

    def open_page(self, path: str = "/") -> Any:
        page = self.browser.new_page()
        page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: self.console.append(f"pageerror: {e}"))
        page.goto(f"http://127.0.0.1:{self.port}{path}")
        return page

    def wait(self, page: Any, js: str, timeout: float = 10.0, arg: Any = None) -> Any:
        # Functions (not expression strings): the pages' CSP forbids eval.
        return page.wait_for_function(js, arg=arg, timeout=timeout * 1000).json_value()

    def states(self, page: Any) -> list[dict[str, Any]]:
        return page.evaluate("() => window.wsheartDemo.states")  # type: ignore[no-any-return]

    def screenshot(self, page: Any, name: str) -> None:
        page.screenshot(path=os.path.join(artifacts_dir(), name), full_page=True)

    def connected(self, page: Any, timeout: float = 10.0) -> None:
        self.wait(page, "() => document.getElementById('state').textContent === 'connected'", timeout)

    def echo(self, page: Any, text: str) -> None:
        page.fill("#message", text)
        page.click("#send")
        self.wait(page, "(t) => window.wsheartDemo.messages.includes(t)", arg=text)

    def assert_no_page_errors(self) -> None:
        # Failed WebSocket connects while the daemon is down are expected
        # console noise; anything else (a CSP violation, an exception) is not.
        unexpected = [line for line in self.console if "WebSocket connection to" not in line]
        self.assertEqual(unexpected, [])



class BrowserTests(BrowserTestCase):
    """
    The demo page, the status page and wsheart.js over plain ws://.
    """

    def test_echo_rtt_and_status_page(self) -> None:
        """
        The demo page connects, echoes, shows the RTT; the library loads as
        an ES module too; the admin status page lists the connection with
        its RTT and draws the chart, updating without a reload.
        """
        self.start_daemon()
        page = self.open_page("/?mode=echo")
        self.connected(page)
        self.echo(page, "hello from chromium")
        rtt = self.wait(page, "() => { const t = document.getElementById('rtt').textContent; return t !== '-' && t; }")
        self.assertRegex(rtt, r"^\d+(\.\d)? ms")
        version = page.evaluate("async () => (await import('/wsheart.mjs')).WsHeart.VERSION")
        self.assertEqual(version, page.evaluate("() => WsHeart.VERSION"))
        self.screenshot(page, "demo-page.png")

        status = self.browser.new_page()
        status.on("console", lambda m: self.console.append(f"{m.type}: {m.text}") if m.type == "error" else None)
        status.goto(f"http://127.0.0.1:{self.admin_port}/status")
        self.wait(status, "() => document.querySelectorAll('#connections tr').length === 1")
        # The server's own heartbeat gives the RTT within a couple of intervals.
        self.wait(status, "() => /ms$/.test(document.querySelector('#connections tr td:nth-child(5)').textContent)")
        polls = status.evaluate("() => window.wsheartStatus.polls")
        second = self.open_page("/?mode=echo")
        self.connected(second)
        self.wait(status, "() => document.querySelectorAll('#connections tr').length === 2")
        self.assertGreater(status.evaluate("() => window.wsheartStatus.polls"), polls)
        self.assertEqual(status.inner_text("#count"), "2")
        # The chart has drawn something (a blank canvas is one colour).
        coloured = status.evaluate(
            """() => { const c = document.getElementById('rtt-chart');
                       const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                       const seen = new Set(); for (let i = 0; i < d.length; i += 4) seen.add(d[i] + ',' + d[i+1] + ',' + d[i+2] + ',' + d[i+3]);
                       return seen.size; }"""
        )
        self.assertGreater(coloured, 2)
        self.screenshot(status, "status-page.png")
        self.assert_no_page_errors()

    def test_deflate_echo_ping_and_chat(self) -> None:
        """
        With --deflate the daemon takes the permessage-deflate Chromium
        offers by itself: a raw WebSocket sees it negotiated; the demo's
        echo (a long message, compressed both ways), its text ping/pong
        heartbeat and the chat room's subscription and messages all work.
        """
        self.start_daemon("--deflate", "--deflate-min-size", "64")
        echo = self.open_page(f"/?mode=echo&{BACKOFF}")
        extensions = echo.evaluate(
            """(url) => new Promise((resolve, reject) => {
                 const ws = new WebSocket(url);
                 ws.onopen = () => { resolve(ws.extensions); ws.close(); };
                 ws.onerror = () => reject(new Error("no connection"));
               })""",
            f"ws://127.0.0.1:{self.port}/",
        )
        self.assertIn("permessage-deflate", extensions)
        self.assertIn("server_no_context_takeover", extensions)
        self.connected(echo)
        long_text = "compress me, " * 40
        self.echo(echo, long_text)
        self.echo(echo, "short")
        # The text heartbeat: RTTs keep coming over several intervals.
        self.wait(echo, "() => { const t = document.getElementById('rtt').textContent; return t !== '-' && t; }")
        echo.wait_for_timeout(2500)
        states = [s["state"] for s in self.states(echo)]
        self.assertEqual((states[-1], states.count("reconnecting")), ("open", 0), f"no heartbeat death under deflate: {states}")

        chat = self.open_page(f"/?name=ann&{BACKOFF}")
        self.wait(chat, "() => document.querySelectorAll('#presence li').length === 1")
        chat.fill("#message", long_text)
        chat.click("#send")
        self.wait(chat, "(t) => window.wsheartDemo.messages.includes(t)", arg=long_text)
        self.assert_no_page_errors()

    def test_token_from_the_browser(self) -> None:
        """
        With --auth jwt, wsheart.js in Chromium sends the token its token
        function returns as the wsheart.bearer subprotocol: the server takes
        it (the private channel the token grants is subscribed) and does not
        echo it; the same page without a token is refused that channel with
        401, while the anonymous demo chat on chat.* goes on.
        """
        import time

        import jwt

        key = os.path.abspath(self.mktemp())
        with open(key, "wb") as f:
            f.write(b"browser-test-secret-0123456789abcdef")
        self.start_daemon("--auth", "jwt", "--jwt-key", key, "--anonymous-channels", "chat.*")
        page = self.open_page("/")
        self.connected(page)
        token = jwt.encode(
            {"sub": "ann", "aud": "wsheart", "exp": int(time.time()) + 300, "wsh": {"subscribe": ["user.{sub}.*"]}},
            b"browser-test-secret-0123456789abcdef",
            algorithm="HS256",
        )
        script = """async ([url, token]) => {
            const client = new WsHeart(url, {protocols: ["wsheart.v1"], token: token ? () => Promise.resolve(token) : undefined});
            const outcome = await new Promise((resolve) => {
                client.addEventListener("subscribed", (e) => resolve({subscribed: e.detail.channel, protocol: client._ws.protocol}));
                client.addEventListener("error", (e) => resolve({error: e.detail.code}));
                client.subscribe("user.ann.inbox");
            });
            client.close();
            return outcome;
        }"""
        url = f"ws://127.0.0.1:{self.port}/"
        self.assertEqual(page.evaluate(script, [url, token]), {"subscribed": "user.ann.inbox", "protocol": "wsheart.v1"})
        self.assertEqual(page.evaluate(script, [url, None]), {"error": 401})
        self.connected(page)
        self.assert_no_page_errors()

    def test_token_refreshed_in_the_browser(self) -> None:
        """
        A 4-second token: the server asks for a fresh one before it expires,
        wsheart.js gets it from its token function and sends it on the open
        socket, and the connection outlives the first token - one open, no
        reconnect, an authed event.
        """
        import time

        import jwt

        secret = b"browser-test-secret-0123456789abcdef"
        key = os.path.abspath(self.mktemp())
        with open(key, "wb") as f:
            f.write(secret)
        self.start_daemon("--auth", "jwt", "--jwt-key", key, "--jwt-leeway", "1", "--anonymous-channels", "chat.*")
        page = self.open_page("/")
        self.connected(page)
        now = int(time.time())
        grants = {"subscribe": ["user.{sub}.*"]}
        tokens = [
            jwt.encode({"sub": "ann", "aud": "wsheart", "exp": now + 4, "wsh": grants}, secret, algorithm="HS256"),
            jwt.encode({"sub": "ann", "aud": "wsheart", "exp": now + 120, "wsh": grants}, secret, algorithm="HS256"),
        ]
        script = """async ([url, tokens]) => {
            const queue = tokens.slice();
            const client = new WsHeart(url, {protocols: ["wsheart.v1"], token: () => Promise.resolve(queue.length > 1 ? queue.shift() : queue[0])});
            const seen = {opens: 0, authed: [], closes: []};
            client.addEventListener("open", () => seen.opens++);
            client.addEventListener("authed", (e) => seen.authed.push(e.detail.sub));
            client.addEventListener("close", (e) => seen.closes.push(e.detail.code));
            client.subscribe("user.ann.inbox");
            await new Promise((resolve) => setTimeout(resolve, 7000));
            seen.state = client.state;
            client.close();
            return seen;
        }"""
        seen = page.evaluate(script, [f"ws://127.0.0.1:{self.port}/", tokens])
        self.assertEqual(seen, {"opens": 1, "authed": ["ann"], "closes": [], "state": "open"})
        self.assert_no_page_errors()

    def test_reconnects_with_growing_jittered_delays(self) -> None:
        """
        The daemon is killed: two tabs show "reconnecting" with delays drawn
        from growing windows, each tab its own; the daemon comes back and
        both reconnect by themselves.
        """
        daemon = self.start_daemon()
        tabs = [self.open_page(f"/?{BACKOFF}") for _ in range(2)]
        for tab in tabs:
            self.connected(tab)
        daemon.stop(signal.SIGKILL)
        for tab in tabs:
            self.wait(tab, "() => window.wsheartDemo.states.filter(s => s.state === 'reconnecting').length >= 4", 20)
        self.assertIn("as attempt", tabs[0].inner_text("#detail"))
        self.assertEqual(tabs[0].inner_text("#state"), "reconnecting")
        self.screenshot(tabs[0], "demo-page-reconnecting.png")
        sequences = []
        for tab in tabs:
            waits = [s for s in self.states(tab) if s["state"] == "reconnecting"][:4]
            windows = [s["window"] for s in waits]
            self.assertEqual(windows, [200, 400, 800, 1600])
            for s in waits:
                self.assertGreaterEqual(s["delay"], 50)
                self.assertLessEqual(s["delay"], 50 + s["window"])
            self.assertEqual([s["attempt"] for s in waits], [1, 2, 3, 4])
            sequences.append([s["delay"] for s in waits])
        self.assertNotEqual(sequences[0], sequences[1], "two tabs retried in step")

        self.start_daemon()
        for tab in tabs:
            self.connected(tab, timeout=15)
            self.echo(tab, "back again")
        self.assert_no_page_errors()

    def test_drain_hint_makes_the_page_wait(self) -> None:
        """
        SIGTERM drains with close 1012 and a hint: the page waits at least
        retry_after before its next attempt, says the server asked, and
        then reconnects to the new daemon.
        """
        daemon = self.start_daemon("--drain-time", "0", "--drain-retry-after", "2")
        page = self.open_page(f"/?{BACKOFF}&stableAfter=500")
        self.connected(page)
        # Stable (the library's own flag, set stableAfter after the open),
        # so that the hint alone decides the wait.
        self.wait(page, "() => window.wsheartDemo.client._stable === true")
        daemon.stop(signal.SIGTERM)
        self.assertEqual(daemon.popen.returncode, 0)
        waiting = self.wait(page, "() => window.wsheartDemo.states.find(s => s.state === 'reconnecting')")
        self.assertTrue(waiting["hinted"])
        self.assertGreaterEqual(waiting["delay"], 2000)
        self.assertLessEqual(waiting["delay"], 2000 + 5000 + 50 + 1)  # retry_after + jitter (at least 5 s) + floor
        self.assertIn("server asked to wait", page.inner_text("#detail"))
        self.screenshot(page, "demo-page-hinted-wait.png")
        self.start_daemon()  # back at once: the page must still wait
        self.connected(page, timeout=15)
        states = self.states(page)
        reconnecting = next(s for s in states if s["state"] == "reconnecting")
        attempt = next(s for s in states if s["state"] == "connecting" and s["at"] > reconnecting["at"])
        self.assertGreaterEqual(attempt["at"] - reconnecting["at"], 2000)
        self.assert_no_page_errors()

    def test_frozen_server_is_found_dead(self) -> None:
        """
        A daemon that stops answering (SIGSTOP: its sockets stay open) is
        declared dead by the page's own heartbeat within interval * maxMissed
        + timeout (2.5 s here) plus timer slack.
        """
        daemon = self.start_daemon()
        page = self.open_page(f"/?{BACKOFF}")
        self.connected(page)
        self.wait(page, "() => window.wsheartDemo.client.rtt !== null")
        os.kill(daemon.pid, signal.SIGSTOP)
        self.addCleanup(self._cont, daemon)
        start = page.evaluate("() => Date.now()")
        dead = self.wait(page, "() => window.wsheartDemo.states.find(s => s.state === 'reconnecting')", 10)
        self.assertIn("heartbeat timeout", dead["reason"])
        # Slack: the page's timers on a loaded machine (a timer late by more
        # than min(1 s, timeout / 2) probes instead of counting a miss).
        self.assertLessEqual(dead["at"] - start, 2500 + 1000)
        self.assertGreaterEqual(dead["at"] - start, 1000, "not declared dead before its timeout could pass")

    def _cont(self, daemon: Process) -> None:
        if daemon.popen.poll() is None:
            os.kill(daemon.pid, signal.SIGCONT)

    def test_tab_that_was_offline_gets_every_missed_message_once(self) -> None:
        """
        The demo chat room (wsheart.v1) in two Chromium tabs and a Python
        client (wsheart connect --channel); one tab drops off the network
        in the middle of a burst of messages and, back online, shows every
        one it missed, once, in order.
        """
        import json
        import sys

        token = "chat-test-token-0123456789"
        token_file = os.path.abspath(self.mktemp())  # trial's temporary directory, not /tmp
        with open(token_file, "w") as f:
            f.write(token + "\n")
        self.start_daemon("--api-token-file", token_file)
        python_client = Process(
            self,
            [sys.executable, "-m", "wsheart", "connect", f"ws://127.0.0.1:{self.port}/", "--channel", "chat.lobby", "--name", "py"],
            stdin=subprocess.PIPE,
        )
        contexts = [self.browser.new_context() for _ in range(2)]
        pages = []
        for context, name in zip(contexts, ["ann", "bob"]):
            page = context.new_page()
            page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}") if m.type == "error" else None)
            page.goto(f"http://127.0.0.1:{self.port}/?name={name}&{BACKOFF}")
            pages.append(page)
        ann, bob = pages
        for page in pages:
            self.wait(page, "() => document.querySelectorAll('#presence li').length === 3")
        self.assertEqual(sorted(ann.inner_text("#presence").split()), ["ann", "bob", "py"])

        def publish(text: str) -> None:
            publish_to_lobby(self.admin_port, token, text)

        def say(page: Any, text: str) -> None:
            page.fill("#message", text)
            page.click("#send")

        say(ann, "hello from ann")
        for i in range(5):
            publish(f"burst {i}")
        self.wait(bob, "() => window.wsheartDemo.publications.length >= 6")
        contexts[1].set_offline(True)  # bob drops off the network mid-burst
        for i in range(5, 15):
            publish(f"burst {i}")
        say(ann, "bob, are you there?")
        # The server's heartbeat finds bob dead (bound 2.5 s here): ann sees him leave.
        self.wait(ann, "() => !document.getElementById('presence').textContent.includes('bob')", 10)
        for i in range(15, 20):
            publish(f"burst {i}")
        self.screenshot(bob, "chat-offline.png")
        contexts[1].set_offline(False)
        self.wait(bob, "() => window.wsheartDemo.subscribed.length >= 2 && window.wsheartDemo.client.state === 'open'", 20)
        say(bob, "back")
        total = 1 + 20 + 1 + 1
        for page in pages:
            self.wait(page, "(n) => window.wsheartDemo.publications.length >= n", 15, arg=total)
        # A last message: once it is in, any repeat of an earlier one would
        # have arrived before it (one connection, in order).
        publish("the end")
        total += 1
        for page in pages:
            self.wait(page, "(n) => window.wsheartDemo.publications.length >= n", 15, arg=total)
        for page in pages:
            seqs = page.evaluate("() => window.wsheartDemo.publications.map(p => p.seq)")
            self.assertEqual(seqs, list(range(1, total + 1)), "missed, repeated or reordered messages")
        self.assertEqual(bob.evaluate("() => window.wsheartDemo.subscribed.map(s => s.recovered)")[-1], True)
        self.assertIn("missed message(s) recovered", bob.inner_text("#log"))
        self.wait(ann, "() => document.getElementById('presence').textContent.includes('bob')")
        self.screenshot(bob, "chat-recovered.png")
        self.screenshot(ann, "chat-other-tab.png")
        assert python_client.popen.stdout is not None
        printed = read_until(python_client.popen.stdout, b'"the end"', 15)
        python_client.stop()
        lines = [json.loads(line) for line in (printed + python_client.stdout).decode().splitlines()]
        self.assertEqual([m["seq"] for m in lines], list(range(1, total + 1)))
        self.assert_no_page_errors()


class TwoProcessesBrowserTests(BrowserTestCase):
    """
    The demo chat room in two Chromium tabs served by two processes that
    share their channels through Redis (--redis).
    """

    timeout = 120

    def setUp(self) -> None:
        super().setUp()
        from .loopback import RedisServer

        self.redis = RedisServer(self)
        self.token = "two-process-chat-token-0123"
        self.token_file = os.path.abspath(self.mktemp())
        with open(self.token_file, "w") as f:
            f.write(self.token + "\n")

    def daemon(self, name: str) -> tuple[int, int]:
        import json
        import urllib.request

        port, admin = free_port(), free_port()
        argv = twistd_command() + [
            "-n", "--pidfile=", "wsheart",
            "--endpoint", f"tcp:{port}:interface=127.0.0.1",
            "--admin-endpoint", f"tcp:{admin}:interface=127.0.0.1",
            "--ping-interval", "1", "--ping-timeout", "0.5", "--max-missed", "2",
            "--api-token-file", self.token_file,
            "--redis", f"redis://127.0.0.1:{self.redis.port}/0", "--node-id", name,
        ]  # fmt: skip
        Process(self, argv)
        wait_for_port(port)
        wait_for_port(admin)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        poll_until(
            lambda: json.loads(opener.open(f"http://127.0.0.1:{admin}/healthz", timeout=5).read())["channels"]["redis"] == "up",
            10,
            "Redis up",
        )
        return port, admin

    def test_chat_across_two_processes(self) -> None:
        """
        ann's tab on process A, bob's on process B: each sees the other in
        presence and every message, wherever it was sent (a tab, the API of
        either process), in one seq order; bob closes his tab and ann sees
        him leave.  (Recovery on another process is
        proven with Python clients in test_integration_redis_processes.)
        """
        a_port, a_admin = self.daemon("a")
        b_port, b_admin = self.daemon("b")
        def publish(admin: int, text: str) -> None:
            publish_to_lobby(admin, self.token, text)

        contexts = [self.browser.new_context() for _ in range(2)]
        pages = []
        for context, (name, port) in zip(contexts, [("ann", a_port), ("bob", b_port)]):
            page = context.new_page()
            page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}") if m.type == "error" else None)
            page.goto(f"http://127.0.0.1:{port}/?name={name}&{BACKOFF}")
            pages.append(page)
        ann, bob = pages
        for page in pages:
            self.wait(page, "() => document.querySelectorAll('#presence li').length === 2")
        self.assertEqual(sorted(bob.inner_text("#presence").split()), ["ann", "bob"])

        ann.fill("#message", "hello from ann on A")
        ann.click("#send")
        publish(b_admin, "from B's API")
        publish(a_admin, "from A's API")
        self.wait(bob, "() => window.wsheartDemo.publications.length >= 3")
        total = 3
        publish(b_admin, "the end")
        total += 1
        for page in pages:
            self.wait(page, "(n) => window.wsheartDemo.publications.length >= n", 15, arg=total)
            seqs = page.evaluate("() => window.wsheartDemo.publications.map(p => p.seq)")
            self.assertEqual(seqs, list(range(1, total + 1)), "missed, repeated or reordered messages")
        self.screenshot(bob, "chat-two-processes.png")
        contexts[1].close()  # bob closes his tab: process A's tab sees him leave
        self.wait(ann, "() => document.querySelectorAll('#presence li').length === 1")
        self.assertEqual(ann.inner_text("#presence").split(), ["ann"])
        unexpected = [line for line in self.console if "WebSocket connection to" not in line]
        self.assertEqual(unexpected, [])
