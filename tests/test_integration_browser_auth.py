"""
Integration test of the demo chat under C{--auth jwt}: the daemon and the
token back end shipped in C{etc/token_backend.py} as subprocesses on
127.0.0.1, the demo page in headless Chromium (Debian's chromium, driven
by Playwright) fetching its token from the back end (C{--demo-token-url}).
Every process is stopped by its pid.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from twisted.trial import unittest

from .loopback import REPO, Process, free_port, require_tool, skip_unless_allowed, twistd_command, wait_for_port

CHROMIUM = os.environ.get("WSHEART_CHROMIUM", "/usr/bin/chromium")


class AuthenticatedDemoTests(unittest.TestCase):
    timeout = 90

    def setUp(self) -> None:
        chromium = require_tool(CHROMIUM, "the browser tests need Debian's chromium package")
        try:
            from playwright.sync_api import sync_playwright
        except ImportError:
            skip_unless_allowed("the browser tests need playwright (pip install '.[test]')")
        self.playwright = sync_playwright().start()
        self.addCleanup(self.playwright.stop)
        self.browser = self.playwright.chromium.launch(
            executable_path=chromium,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking"],
        )
        self.addCleanup(self.browser.close)
        self.console: list[str] = []

    def wait(self, page: Any, js: str, timeout: float = 10.0, arg: Any = None) -> Any:
        # Functions (not expression strings): the page's CSP forbids eval.
        return page.wait_for_function(js, arg=arg, timeout=timeout * 1000).json_value()

    def test_demo_chat_with_tokens_from_the_back_end(self) -> None:
        """
        With --auth jwt and no anonymous channels, the demo page in two
        tabs, as ann and bob, gets a token for its name from
        etc/token_backend.py (across origins: CORS on the back end, the
        token origin in the page's CSP), connects, sees both in presence,
        and a message ann types appears in bob's tab - a publish, which a
        connection without a token may never make.
        """
        secret = os.path.abspath(self.mktemp())
        with open(secret, "w") as f:
            f.write("demo-secret-0123456789abcdef-0123456789\n")
        port, token_port = free_port(), free_port()
        Process(self, [sys.executable, os.path.join(REPO, "etc", "token_backend.py"), secret, f"http://127.0.0.1:{port}", str(token_port)])
        wait_for_port(token_port)
        Process(
            self,
            twistd_command() + [
                "-n", "--pidfile=", "wsheart", "--endpoint", f"tcp:{port}:interface=127.0.0.1",
                "--auth", "jwt", "--jwt-key", secret, "--auth-timeout", "3",
                "--demo-token-url", f"http://127.0.0.1:{token_port}/token",
            ],
        )  # fmt: skip
        wait_for_port(port)

        pages = []
        for name in ("ann", "bob"):
            page = self.browser.new_context().new_page()
            page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: self.console.append(f"pageerror: {e}"))
            page.goto(f"http://127.0.0.1:{port}/?name={name}")
            pages.append(page)
        ann, bob = pages
        for page in pages:
            self.wait(page, "() => document.querySelectorAll('#presence li').length === 2")
        self.assertEqual(sorted(bob.inner_text("#presence").split()), ["ann", "bob"])
        for page in pages:
            # The token went as the wsheart.bearer subprotocol; the server chose wsheart.v1.
            self.assertEqual(page.evaluate("() => window.wsheartDemo.client._ws.protocol"), "wsheart.v1")

        ann.fill("#message", "hello bob, signed ann")
        ann.click("#send")
        self.wait(bob, "() => window.wsheartDemo.messages.includes('hello bob, signed ann')")
        self.wait(ann, "() => window.wsheartDemo.messages.includes('hello bob, signed ann')")
        self.assertNotIn("server refused", ann.inner_text("#log"))
        # Still open after --auth-timeout: a connection without a token would be closed with 4408.
        bob.wait_for_timeout(3500)
        for page in pages:
            self.assertEqual(page.evaluate("() => window.wsheartDemo.client.state"), "open")
            self.assertEqual(page.evaluate("() => window.wsheartDemo.states.filter(s => s.state === 'reconnecting').length"), 0)
        self.assertEqual(self.console, [])
