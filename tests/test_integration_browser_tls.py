"""
Headless Chromium over https:// and wss:// against the daemon as shipped
(twistd in a subprocess on 127.0.0.1), on an ssl: --endpoint and a
--tls-endpoint, with a certificate for localhost from a CA made here.

Chromium offers h2 and http/1.1 over ALPN on every TLS connection; before
wsheart chose http/1.1 it failed each handshake (ERR_SSL_PROTOCOL_ERROR),
so no page could open a wss:// connection.  Chromium is told to accept
exactly this certificate's key (--ignore-certificate-errors-spki-list):
the handshake, ALPN included, is the real one.
"""

from __future__ import annotations

import base64
import hashlib
import os
import signal
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .loopback import make_ca, make_server_cert, poll_until
from .test_integration_browser import BACKOFF, BrowserTestCase, publish_to_lobby
from .test_integration_tls import TLSDaemon


def spki_hash(cert_path: str) -> str:
    """
    Chromium's pin of a certificate's key: base64 of the SHA-256 of its
    SubjectPublicKeyInfo.
    """
    with open(cert_path, "rb") as f:
        leaf = x509.load_pem_x509_certificate(f.read())
    der = leaf.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode("ascii")


class BrowserTLSTests(BrowserTestCase):
    """
    The demo page and wsheart.js in Chromium over TLS: echo and the
    heartbeat's RTT on both kinds of listener, a reconnect after the
    daemon restarts, and the chat room's recovery of missed messages.
    """

    timeout = 120

    def setUp(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        ca_key, ca_cert, _ca_path = make_ca(directory)
        self.key, self.cert = make_server_cert(directory, ca_key, ca_cert, "localhost")
        self.extra_browser_args = [f"--ignore-certificate-errors-spki-list={spki_hash(self.cert)}"]
        super().setUp()

    def browser_args(self) -> list[str]:
        return super().browser_args() + self.extra_browser_args

    def start_tls_daemon(self, *extra: str) -> TLSDaemon:
        from .loopback import free_port, wait_for_port

        self.admin_port = free_port()
        daemon = TLSDaemon(self, self.key, self.cert, "--admin-endpoint", f"tcp:{self.admin_port}:interface=127.0.0.1", *extra)
        wait_for_port(self.admin_port)
        return daemon

    def open_tls_page(self, port: int, path: str = "/", context: Any = None) -> Any:
        page = (context or self.browser).new_page()
        page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: self.console.append(f"pageerror: {e}"))
        page.goto(f"https://localhost:{port}{path}")
        return page

    def test_echo_and_heartbeat_over_wss_on_both_listeners(self) -> None:
        """
        On the ssl: endpoint and on the --tls-endpoint: the demo page loads
        over https://, connects over wss://, echoes, shows the RTT of its
        text heartbeat; a bare WebSocket to wss:// opens too, and so does
        the demo's raw echo of a long message.
        """
        daemon = self.start_tls_daemon()
        for port in daemon.ports:
            page = self.open_tls_page(port, "/?mode=echo")
            self.assertEqual(page.evaluate("() => location.protocol"), "https:")
            self.connected(page)
            self.echo(page, f"hello over wss on {port}")
            self.echo(page, "long " * 200)
            rtt = self.wait(page, "() => { const t = document.getElementById('rtt').textContent; return t !== '-' && t; }")
            self.assertRegex(rtt, r"^\d+(\.\d)? ms")
            opened = page.evaluate(
                """(url) => new Promise((resolve) => {
                     const ws = new WebSocket(url);
                     ws.onopen = () => { ws.send("raw"); };
                     ws.onmessage = (e) => { resolve(e.data); ws.close(); };
                     ws.onerror = () => resolve("error");
                   })""",
                f"wss://localhost:{port}/",
            )
            self.assertEqual(opened, "raw")
            self.screenshot(page, f"demo-page-wss-{'ssl' if port == daemon.ssl_port else 'tls-endpoint'}.png")
        self.assert_no_page_errors()

    def test_reconnect_after_the_daemon_restarts(self) -> None:
        """
        The daemon is killed: the wss:// page shows reconnecting with its
        backoff; the daemon comes back on the same ports and the page
        reconnects by itself over TLS and echoes.
        """
        daemon = self.start_tls_daemon()
        page = self.open_tls_page(daemon.ssl_port, f"/?mode=echo&{BACKOFF}")
        self.connected(page)
        daemon.process.stop(signal.SIGKILL)
        self.wait(page, "() => window.wsheartDemo.states.filter(s => s.state === 'reconnecting').length >= 2", 20)
        daemon.start()
        self.connected(page, 20)
        self.echo(page, "back over wss")
        states = [s["state"] for s in self.states(page)]
        self.assertEqual(states[-1], "open")
        self.assertGreaterEqual(states.count("open"), 2)
        self.assert_no_page_errors()

    def test_chat_recovers_missed_messages_over_wss(self) -> None:
        """
        The chat room over wss:// on the --tls-endpoint: one tab drops off
        the network while messages are published, and back online gets
        every one it missed, once, in order (recovered).
        """
        token = "tls-chat-token-0123456789"
        token_file = os.path.abspath(self.mktemp())
        with open(token_file, "w") as f:
            f.write(token + "\n")
        daemon = self.start_tls_daemon("--api-token-file", token_file)
        contexts = [self.browser.new_context() for _ in range(2)]
        ann, bob = [self.open_tls_page(daemon.tls_port, f"/?name={name}&{BACKOFF}", context) for context, name in zip(contexts, ["ann", "bob"])]
        for page in (ann, bob):
            self.wait(page, "() => document.querySelectorAll('#presence li').length === 2")
        for i in range(3):
            publish_to_lobby(self.admin_port, token, f"before {i}")
        self.wait(bob, "() => window.wsheartDemo.publications.length >= 3")
        contexts[1].set_offline(True)
        for i in range(5):
            publish_to_lobby(self.admin_port, token, f"while away {i}")
        self.wait(ann, "() => !document.getElementById('presence').textContent.includes('bob')", 10)
        contexts[1].set_offline(False)
        self.wait(bob, "() => window.wsheartDemo.subscribed.length >= 2 && window.wsheartDemo.client.state === 'open'", 20)
        publish_to_lobby(self.admin_port, token, "the end")
        for page in (ann, bob):
            self.wait(page, "() => window.wsheartDemo.publications.length >= 9", 15)
            seqs = page.evaluate("() => window.wsheartDemo.publications.map(p => p.seq)")
            self.assertEqual(seqs, list(range(1, 10)), "missed, repeated or reordered messages")
        self.assertEqual(bob.evaluate("() => window.wsheartDemo.subscribed.map(s => s.recovered)")[-1], True)
        poll_until(lambda: "bob" in ann.inner_text("#presence"), 10, "bob back in presence")
        self.screenshot(bob, "chat-recovered-wss.png")
        self.assert_no_page_errors()

