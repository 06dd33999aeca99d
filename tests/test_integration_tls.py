"""
Integration tests of wss:// with the clients people run, against the
daemon as shipped (twistd in a subprocess on 127.0.0.1) with certificates
made here (a CA, a leaf for localhost, a CN-only one): curl, a Python
client offering ALPN as browsers do, openssl s_client, Node's own
WebSocket and the ws package, and wsheart's own client and CLI refusing
certificates that do not name the host they dialled.  Chromium over
https:// and wss:// is in test_integration_browser_tls.

Every daemon listens twice: an ssl: --endpoint and a --tls-endpoint, the
two ways to configure TLS, which must behave the same.
"""

from __future__ import annotations

import json
import os
import socket
import ssl as stdlib_ssl
import subprocess
import sys

from twisted.trial import unittest

from .loopback import (
    REPO,
    Process,
    free_port,
    make_ca,
    make_server_cert,
    read_until,
    require_tool,
    twistd_command,
    upgrade,
    wait_for_port,
)


class TLSDaemon:
    """
    A wsheart daemon serving TLS on an ssl: endpoint (C{ssl_port}) and a
    --tls-endpoint (C{tls_port}) with one key and certificate, stopped when
    the test ends.
    """

    def __init__(self, test: unittest.TestCase, key: str, cert: str, *extra: str) -> None:
        self.ssl_port = free_port()
        self.tls_port = free_port()
        self.argv = twistd_command() + [
            "-n", "--pidfile=", "wsheart",
            "--endpoint", f"ssl:{self.ssl_port}:interface=127.0.0.1:privateKey={key}:certKey={cert}",
            "--tls-endpoint", f"tcp:{self.tls_port}:interface=127.0.0.1", "--tls-key", key, "--tls-cert", cert,
            "--ping-interval", "1", "--ping-timeout", "0.5", "--max-missed", "2",
            *extra,
        ]  # fmt: skip
        self.test = test
        self.start()

    def start(self) -> None:
        self.process = Process(self.test, self.argv, stderr=subprocess.STDOUT)
        wait_for_port(self.ssl_port)
        wait_for_port(self.tls_port)

    @property
    def ports(self) -> list[int]:
        return [self.ssl_port, self.tls_port]

    def output(self) -> str:
        """
        What the daemon logged, once it has stopped.
        """
        self.process.stop()
        return self.process.stdout.decode("utf-8", "replace")


class CertificatesTestCase(unittest.TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.ca_key, self.ca_cert, self.ca_path = make_ca(self.directory)
        self.key, self.cert = make_server_cert(self.directory, self.ca_key, self.ca_cert, "localhost")


def python_client_context(ca_path: str, alpn: list[str]) -> stdlib_ssl.SSLContext:
    context = stdlib_ssl.create_default_context(cafile=ca_path)
    if alpn:
        context.set_alpn_protocols(alpn)
    return context


class WSSClientsTests(CertificatesTestCase):
    """
    The clients users run, over real TLS to both kinds of listener.
    """

    def test_curl_with_alpn(self) -> None:
        """
        curl offers h2 and http/1.1 over ALPN (it failed the handshake with
        'tlsv1 alert internal error' before): the server accepts http/1.1,
        the demo page comes back 200 over HTTP/1.1 and an upgrade gets 101.
        """
        curl = require_tool("curl", "the TLS client tests need curl")
        daemon = TLSDaemon(self, self.key, self.cert)
        for port in daemon.ports:
            page = subprocess.run(
                [curl, "-sS", "-v", "--cacert", self.ca_path, "-o", "/dev/null", "-w", "%{http_code} %{http_version}",
                 f"https://localhost:{port}/"],
                capture_output=True, timeout=20, text=True,
            )  # fmt: skip
            self.assertEqual(page.stdout, "200 1.1", page.stderr)
            self.assertRegex(page.stderr, r"ALPN.*(accepted|server accepted).*http/1\.1", page.stderr)
            upgrade = subprocess.run(
                [curl, "-sS", "-i", "--cacert", self.ca_path, "--max-time", "3",
                 "-H", "Connection: Upgrade", "-H", "Upgrade: websocket", "-H", "Sec-WebSocket-Version: 13",
                 "-H", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", f"https://localhost:{port}/"],
                capture_output=True, timeout=20,
            )  # fmt: skip
            # After the 101 come WebSocket frames (the heartbeat's pings).
            self.assertTrue(upgrade.stdout.startswith(b"HTTP/1.1 101"), upgrade.stdout[:200] + upgrade.stderr)

    def test_python_client_offering_alpn_like_a_browser(self) -> None:
        """
        Python's ssl offering h2 and http/1.1 gets http/1.1 and a 101; the
        websockets library with that same context echoes and answers the
        text ping.
        """
        from websockets.sync.client import connect

        daemon = TLSDaemon(self, self.key, self.cert)
        context = python_client_context(self.ca_path, ["h2", "http/1.1"])
        for port in daemon.ports:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
                with context.wrap_socket(raw, server_hostname="localhost") as tls:
                    self.assertEqual(tls.selected_alpn_protocol(), "http/1.1")
                    self.assertEqual(tls.version(), "TLSv1.3")
                    upgrade(tls)
            with connect(f"wss://localhost:{port}/", ssl=context, proxy=None, open_timeout=5) as ws:
                ws.send("over alpn")
                self.assertEqual(ws.recv(timeout=5), "over alpn")
                ws.send("ping")
                self.assertEqual(ws.recv(timeout=5), "pong")

    def test_h2_only_client_gets_no_application_protocol(self) -> None:
        """
        A client that offers only h2 (WebSocket over HTTP/2, RFC 8441, is
        not served) is refused in the handshake with the
        no_application_protocol alert; the daemon logs why in one line and
        goes on serving: a client offering http/1.1 right after connects.
        """
        from OpenSSL import SSL

        # The alert OpenSSL sends for a refusing ALPN callback: the RFC's
        # since OpenSSL 4.0 (cryptography 50); OpenSSL 3.2 (cryptography
        # 42, the oldest supported) sends internal_error.
        alert = "alert no application protocol" if SSL.OPENSSL_VERSION_NUMBER >= 0x40000000 else "alert internal error"
        daemon = TLSDaemon(self, self.key, self.cert)
        for port in daemon.ports:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
                with self.assertRaises(stdlib_ssl.SSLError) as caught:
                    python_client_context(self.ca_path, ["h2"]).wrap_socket(raw, server_hostname="localhost")
            self.assertIn(alert, str(caught.exception).lower())
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
                with python_client_context(self.ca_path, ["http/1.1"]).wrap_socket(raw, server_hostname="localhost") as tls:
                    upgrade(tls)
        output = daemon.output()
        import twisted

        # The line is Autobahn's log of the lost connection's reason; Twisted
        # before 26 loses a connection refused this early without telling
        # the protocol, so nothing is logged there.
        if int(twisted.__version__.split(".")[0]) >= 26:
            self.assertEqual(output.count("client offered ALPN h2; this server speaks http/1.1 only"), 2, output)
        self.assertNotIn("Traceback", output)

    def test_protocol_versions_and_ciphers_with_openssl_s_client(self) -> None:
        """
        openssl s_client: TLS 1.3 and TLS 1.2 (ECDHE, AES-GCM) connect and
        choose http/1.1 over ALPN; TLS 1.1 and a TLS 1.2 suite without
        forward secrecy are refused.
        """
        openssl = require_tool("openssl", "the TLS tests need openssl")
        daemon = TLSDaemon(self, self.key, self.cert)

        def s_client(port: int, *args: str) -> str:
            result = subprocess.run(
                [openssl, "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost",
                 "-CAfile", self.ca_path, "-alpn", "h2,http/1.1", *args],
                input="", capture_output=True, timeout=20, text=True,
            )  # fmt: skip
            return result.stdout + result.stderr

        for port in daemon.ports:
            tls13 = s_client(port, "-tls1_3")
            self.assertIn("New, TLSv1.3", tls13)
            self.assertIn("ALPN protocol: http/1.1", tls13)
            self.assertIn("Verify return code: 0 (ok)", tls13)
            tls12 = s_client(port, "-tls1_2")
            self.assertRegex(tls12, r"New, TLSv1\.2, Cipher is ECDHE-ECDSA-AES(128|256)-GCM-SHA(256|384)")
            # The client really offers TLS 1.1 (its own security level
            # lowered), and the server refuses it.
            tls11 = s_client(port, "-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0")
            self.assertRegex(tls11, r"alert protocol version|unsupported protocol|no protocols available")
            self.assertNotIn("New, TLSv1.1", tls11)
            static = s_client(port, "-tls1_2", "-cipher", "AES128-GCM-SHA256")
            self.assertIn("handshake failure", static)
            self.assertNotIn("Cipher is AES128-GCM-SHA256", static)

    def test_tls13_tickets_resume(self) -> None:
        """
        A client that keeps the session (a TLS 1.3 ticket) of its last
        connection resumes it on the next: the reconnect of a returning
        client costs no full handshake.  Both listeners; a session from one
        listener is not offered to the other.
        """
        daemon = TLSDaemon(self, self.key, self.cert)
        context = python_client_context(self.ca_path, ["http/1.1"])
        for port in daemon.ports:
            session = None
            reused = []
            for _ in range(3):
                with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
                    with context.wrap_socket(raw, server_hostname="localhost", session=session) as tls:
                        # TLS 1.3 tickets come after the handshake: read the 101.
                        upgrade(tls)
                        reused.append(tls.session_reused)
                        session = tls.session
            self.assertEqual(reused, [False, True, True])

    def test_reuseport_group(self) -> None:
        """
        Two daemons on one reuseport: TLS port, each with its own ticket
        key: every connection of a client offering ALPN gets http/1.1 and
        a 101, whichever process the kernel picks, and one that presents a
        ticket of the other process falls back to a full handshake instead
        of failing.
        """
        port = free_port()
        for _ in range(2):
            Process(
                self,
                twistd_command() + [
                    "-n", "--pidfile=", "wsheart",
                    "--tls-endpoint", f"reuseport:{port}:interface=127.0.0.1",
                    "--tls-key", self.key, "--tls-cert", self.cert,
                ],
            )  # fmt: skip
            wait_for_port(port)
        context = python_client_context(self.ca_path, ["h2", "http/1.1"])
        session = None
        for _ in range(30):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
                with context.wrap_socket(raw, server_hostname="localhost", session=session) as tls:
                    self.assertEqual(tls.selected_alpn_protocol(), "http/1.1")
                    upgrade(tls)
                    session = tls.session
        # Not asserted: how often the kernel sent a connection back to the
        # process whose ticket it held (about half the time with two).

    def test_node_websocket_and_ws(self) -> None:
        """
        Node's own WebSocket (undici, which offers ALPN http/1.1) and the
        ws package, trusting the test CA: both open over wss:// on both
        listeners and echo.
        """
        node = require_tool("node", "the Node client tests need node")
        modules = os.path.join(REPO, "tests", "js", "node_modules")
        if not os.path.isdir(os.path.join(modules, "ws")):
            from .loopback import skip_unless_allowed

            skip_unless_allowed("the ws package is missing: npm ci --prefix tests/js")
        daemon = TLSDaemon(self, self.key, self.cert)
        script = r"""
const [kind, url] = process.argv.slice(-2);
const Socket = kind === "ws" ? require("ws") : globalThis.WebSocket;
if (!Socket) { console.log(JSON.stringify({error: "no WebSocket in this Node"})); process.exit(0); }
const ws = new Socket(url);
const timer = setTimeout(() => { console.log(JSON.stringify({error: "timeout"})); process.exit(0); }, 5000);
ws.onopen = () => ws.send("hello from " + kind);
ws.onmessage = (e) => { console.log(JSON.stringify({echo: String(e.data)})); clearTimeout(timer); ws.close(); };
ws.onerror = (e) => { console.log(JSON.stringify({error: String(e.message || e.error || e.type)})); clearTimeout(timer); process.exit(0); };
"""
        env = dict(os.environ, NODE_EXTRA_CA_CERTS=self.ca_path, NODE_PATH=modules)
        for port in daemon.ports:
            for kind, flags in [("ws", []), ("websocket", ["--experimental-websocket"])]:
                # Node 22 has WebSocket by default and still takes the flag.
                result = subprocess.run(
                    [node, *flags, "-e", script, kind, f"wss://localhost:{port}/"],
                    capture_output=True, timeout=20, text=True, env=env,
                )  # fmt: skip
                lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
                self.assertEqual(lines, [json.dumps({"echo": f"hello from {kind}"}, separators=(",", ":"))], result.stderr)


class ClientRefusesWrongNamesTests(CertificatesTestCase):
    """
    wsheart's own clients - the CLI and the ReconnectingClientService - over
    real TLS refuse a certificate that does not name the host they dialled
    (CN-only certificates included), with a one-line reason and no
    traceback, and keep their backoff schedule.
    """

    timeout = 60

    def connect_cli(self, url: str) -> Process:
        return Process(
            self,
            [sys.executable, "-m", "wsheart", "connect", "--ca", self.ca_path, url,
             "--initial-delay", "0.2", "--max-delay", "0.5"],
            stdin=subprocess.PIPE,
        )  # fmt: skip

    def assertCliRefuses(self, url: str, reason: str) -> None:
        cli = self.connect_cli(url)
        assert cli.popen.stderr is not None
        # Three attempts, each refused with the one-line reason.
        seen = read_until(cli.popen.stderr, b"as attempt 4", 20).decode("utf-8", "replace")
        assert cli.popen.stdin is not None
        cli.popen.stdin.write(b"must not be echoed\n")
        cli.popen.stdin.flush()
        cli.stop()
        everything = seen + cli.stderr.decode("utf-8", "replace")
        self.assertEqual(everything.count(reason), 3 + everything.count("as attempt 5"), everything)
        self.assertNotIn("Traceback", everything)
        self.assertNotIn("open, RTT", everything)
        self.assertNotIn("CertificateError", everything)
        self.assertEqual(cli.stdout, b"")

    def test_cli_refuses_a_cn_only_certificate_for_another_host(self) -> None:
        """
        CN=otherhost with no subjectAltName (what `openssl req -subj
        /CN=otherhost` makes), dialled as localhost: refused on every
        attempt, never opened, nothing echoed (it opened and echoed
        before, after a traceback).
        """
        key, cert = make_server_cert(self.directory, self.ca_key, self.ca_cert, "otherhost", stem="cn-only", san=False)
        daemon = TLSDaemon(self, key, cert)
        self.assertCliRefuses(
            f"wss://localhost:{daemon.ssl_port}/",
            "TLS: the server's certificate does not match hostname localhost: it has no subjectAltName",
        )

    def test_cli_refuses_a_cn_only_certificate_even_for_its_own_name(self) -> None:
        """
        CN=localhost without a subjectAltName is refused too: browsers have
        not read the CN for years.
        """
        key, cert = make_server_cert(self.directory, self.ca_key, self.ca_cert, "localhost", stem="cn-only", san=False)
        daemon = TLSDaemon(self, key, cert)
        self.assertCliRefuses(f"wss://localhost:{daemon.tls_port}/", "it has no subjectAltName")

    def test_cli_refuses_the_wrong_ip_address(self) -> None:
        """
        A certificate for the IP address 127.0.0.2 dialled as 127.0.0.1 is
        refused; the right one (IP 127.0.0.1 in the subjectAltName) opens.
        """
        key, cert = make_server_cert(self.directory, self.ca_key, self.ca_cert, "127.0.0.2", stem="other-ip")
        daemon = TLSDaemon(self, key, cert)
        self.assertCliRefuses(f"wss://127.0.0.1:{daemon.ssl_port}/", "does not match hostname 127.0.0.1")
        daemon.process.stop()
        key, cert = make_server_cert(self.directory, self.ca_key, self.ca_cert, "127.0.0.1", stem="right-ip")
        daemon = TLSDaemon(self, key, cert)
        cli = self.connect_cli(f"wss://127.0.0.1:{daemon.tls_port}/")
        assert cli.popen.stderr is not None and cli.popen.stdin is not None and cli.popen.stdout is not None
        read_until(cli.popen.stderr, b"open, RTT", 20)
        cli.popen.stdin.write(b"right address\n")
        cli.popen.stdin.flush()
        read_until(cli.popen.stdout, b"right address", 10)


def walkthrough_commands(path: str) -> list[list[str]]:
    """
    The shell commands between <!-- walkthrough --> and <!-- /walkthrough
    --> in a Markdown file, continuation lines joined, split as the shell
    would.
    """
    import shlex

    with open(path, encoding="utf-8") as f:
        text = f.read()
    block = text.split("<!-- walkthrough -->", 1)[1].split("<!-- /walkthrough -->", 1)[0]
    lines = [line for line in block.splitlines() if not line.startswith("```")]
    return [shlex.split(command) for command in "\n".join(lines).replace("\\\n", " ").splitlines() if command.strip()]


class DocsWalkthroughTests(unittest.TestCase):
    """
    The "Try it" walkthrough of docs/tls.md, run as written: the openssl
    command makes the certificate, twistd serves it on an ssl: endpoint,
    and wsheart connect trusting it opens and echoes.  (The port is a free
    one instead of 8443; the venv's commands are this environment's.)
    """

    timeout = 60

    def test_docs_tls_walkthrough(self) -> None:
        openssl = require_tool("openssl", "the TLS walkthrough needs openssl")
        make_cert, serve, connect = walkthrough_commands(os.path.join(REPO, "docs", "tls.md"))
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        self.assertEqual(make_cert[0], "openssl")
        subprocess.run([openssl, *make_cert[1:]], cwd=directory, check=True, capture_output=True, timeout=30)
        port = free_port()

        def local(argv: list[str]) -> list[str]:
            return [arg.replace("8443", str(port)) for arg in argv]

        self.assertEqual(serve[0], ".venv/bin/twistd")
        Process(self, twistd_command() + local(serve[1:]), cwd=directory)
        wait_for_port(port)
        self.assertEqual(connect[:2], [".venv/bin/wsheart", "connect"])
        cli = Process(self, [sys.executable, "-m", "wsheart", *local(connect[1:])], cwd=directory, stdin=subprocess.PIPE)
        assert cli.popen.stderr is not None and cli.popen.stdin is not None and cli.popen.stdout is not None
        read_until(cli.popen.stderr, b"open, RTT", 20)
        cli.popen.stdin.write(b"hello from the docs\n")
        cli.popen.stdin.flush()
        read_until(cli.popen.stdout, b"hello from the docs", 10)
