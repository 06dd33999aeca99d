"""
Tests for L{wsheart.pages}: the browser library and demo page served from
the WebSocket endpoint, as bytes (L{Pages}) and through the server protocol
on an in-memory transport.
"""

from __future__ import annotations

import json
import re

from twisted.internet.task import Clock
from twisted.test import iosim
from twisted.trial import unittest

from wsheart import __version__
from wsheart.pages import Pages, RequestHead, library_module, parse_request_head, static_text, url_origin

from .memory import connect_client, make_server_factory

CONFIG = {"pingText": "ping", "pongText": "pong", "interval": 25000, "timeout": 10000, "maxMissed": 2}


def split(response: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode("iso-8859-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(": ")
        headers[name.lower()] = value
    return status, headers, body


def get(pages: Pages, path: str, method: str = "GET", **headers: str) -> tuple[int, dict[str, str], bytes]:
    response = pages.respond(RequestHead(method, path, {k.replace("_", "-"): v for k, v in headers.items()}))
    assert response is not None, path
    return split(response)


class RequestHeadTests(unittest.TestCase):
    def test_parse(self) -> None:
        request = parse_request_head(b"GET /wsheart.js?v=1#x HTTP/1.1\r\nHost: a\r\nIf-None-Match:  \"x\" ")
        assert request is not None
        self.assertEqual(request.method, "GET")
        self.assertEqual(request.path, "/wsheart.js")
        self.assertEqual(dict(request.headers), {"host": "a", "if-none-match": '"x"'})

    def test_malformed(self) -> None:
        for head in [b"GET /", b"GET / FTP/1.0", b"GET / HTTP/1.1\r\nno colon", b"GET / HTTP/1.1\r\n folded: x"]:
            self.assertIsNone(parse_request_head(head), head)


class PagesTests(unittest.TestCase):
    def setUp(self) -> None:
        self.pages = Pages(CONFIG)

    def test_library(self) -> None:
        """
        /wsheart.js is the library as a JavaScript file, revalidated by ETag.
        """
        status, headers, body = get(self.pages, "/wsheart.js")
        self.assertEqual(status, 200)
        self.assertEqual(headers["content-type"], "text/javascript; charset=utf-8")
        self.assertEqual(headers["cache-control"], "no-cache")
        self.assertEqual(headers["content-length"], str(len(body)))
        self.assertEqual(headers["x-content-type-options"], "nosniff")
        self.assertEqual(body.decode("utf-8"), static_text("wsheart.js"))
        self.assertIn(f'var VERSION = "{__version__}"', body.decode("utf-8"))

    def test_versioned_library_is_immutable(self) -> None:
        status, headers, body = get(self.pages, f"/wsheart-{__version__}.js")
        self.assertEqual(status, 200)
        self.assertEqual(headers["cache-control"], "public, max-age=31536000, immutable")
        self.assertEqual(body, get(self.pages, "/wsheart.js")[2])

    def test_module(self) -> None:
        """
        /wsheart.mjs is the same code ending in ES module exports.
        """
        status, headers, body = get(self.pages, "/wsheart.mjs")
        self.assertEqual(status, 200)
        self.assertEqual(headers["content-type"], "text/javascript; charset=utf-8")
        self.assertEqual(body.decode("utf-8"), library_module())
        self.assertTrue(body.rstrip().endswith(b"export default WsHeart;"))

    def test_conditional_get(self) -> None:
        etag = get(self.pages, "/wsheart.js")[1]["etag"]
        status, headers, body = get(self.pages, "/wsheart.js", if_none_match=f'"other", {etag}')
        self.assertEqual((status, body), (304, b""))
        self.assertEqual(headers["etag"], etag)
        self.assertEqual(get(self.pages, "/wsheart.js", if_none_match='"stale"')[0], 200)

    def test_head(self) -> None:
        status, headers, body = get(self.pages, "/wsheart.js", method="HEAD")
        self.assertEqual((status, body), (200, b""))
        self.assertEqual(headers["content-length"], str(len(get(self.pages, "/wsheart.js")[2])))

    def test_other_methods(self) -> None:
        status, headers, body = get(self.pages, "/", method="POST")
        self.assertEqual(status, 405)
        self.assertEqual(headers["allow"], "GET, HEAD")
        self.assertIn(b"POST", body)

    def test_demo_page(self) -> None:
        """
        The demo page carries this daemon's heartbeat settings, loads only
        this origin's scripts, and says so in its CSP.
        """
        status, headers, body = get(self.pages, "/")
        self.assertEqual(status, 200)
        self.assertEqual(headers["content-type"], "text/html; charset=utf-8")
        self.assertIn("script-src 'self'", headers["content-security-policy"])
        self.assertEqual(headers["x-frame-options"], "DENY")
        html = body.decode("utf-8")
        config = json.loads(re.search(r'<script id="wsheart-config" type="application/json">(.*?)</script>', html).group(1))  # type: ignore[union-attr]
        self.assertEqual(config["interval"], 25000)
        self.assertEqual(config["pingText"], "ping")
        self.assertEqual(config["version"], __version__)
        self.assertIn(f'src="/wsheart-{__version__}.js"', html)
        for src in re.findall(r'(?:src|href)="([^"]+)"', html):
            self.assertTrue(src.startswith("/") or src.startswith("data:"), src)

    def test_token_url_in_config_and_csp(self) -> None:
        """
        With a token URL (--demo-token-url) the demo page gets it in its
        config and may fetch from that origin, and only from it; without
        one its CSP connects to this origin and WebSockets only.
        """
        self.assertIn("connect-src 'self' ws: wss:;", get(self.pages, "/")[1]["content-security-policy"])
        pages = Pages(dict(CONFIG, tokenUrl="http://127.0.0.1:8081/token?app=chat"))
        status, headers, body = get(pages, "/")
        self.assertIn("connect-src 'self' http://127.0.0.1:8081 ws: wss:;", headers["content-security-policy"])
        self.assertIn('"tokenUrl": "http://127.0.0.1:8081/token?app=chat"', body.decode("utf-8"))
        for bad in ["ftp://127.0.0.1/token", "/token", "http://127.0.0.1:8081/token#x", "http://a;b/token", "http://u@127.0.0.1/"]:
            with self.assertRaises(ValueError, msg=bad):
                url_origin(bad)

    def test_config_cannot_break_out_of_its_script(self) -> None:
        pages = Pages(dict(CONFIG, pingText="</script><script>alert(1)</script>"))
        html = get(pages, "/")[2].decode("utf-8")
        self.assertNotIn("</script><script>alert", html)
        self.assertIn("<\\/script>", html)

    def test_unknown_path(self) -> None:
        self.assertIsNone(self.pages.respond(RequestHead("GET", "/chat", {})))

    def test_every_file_served(self) -> None:
        for path in self.pages.paths():
            status, headers, body = get(self.pages, path)
            self.assertEqual(status, 200, path)
            self.assertTrue(body, path)


class ServedByTheProtocolTests(unittest.TestCase):
    """
    Pages through the server protocol, on an in-memory transport.
    """

    def setUp(self) -> None:
        self.clock = Clock()

    def request(self, data: bytes, **kwargs: object) -> bytes:
        factory = make_server_factory(self.clock, **kwargs)
        server = factory.buildProtocol(None)
        transport = iosim.makeFakeServer(server)
        server.makeConnection(transport)
        server.dataReceived(data)
        self.assertTrue(transport.disconnecting, "one request per connection")
        return bytes(transport.getOutBuffer())

    def test_page(self) -> None:
        answer = self.request(b"GET /wsheart.js HTTP/1.1\r\nHost: localhost\r\n\r\n", pages=True)
        status, headers, body = split(answer)
        self.assertEqual(status, 200)
        self.assertEqual(body.decode("utf-8"), static_text("wsheart.js"))

    def test_request_in_pieces(self) -> None:
        factory = make_server_factory(self.clock, pages=True)
        server = factory.buildProtocol(None)
        transport = iosim.makeFakeServer(server)
        server.makeConnection(transport)
        for byte in b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n":
            server.dataReceived(bytes([byte]))
        self.assertEqual(split(bytes(transport.getOutBuffer()))[0], 200)

    def test_demo_page_matches_the_server(self) -> None:
        from wsheart.heartbeat import HeartbeatSettings

        answer = self.request(
            b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
            pages=True,
            app_ping="hb?",
            app_pong="hb!",
            heartbeat=HeartbeatSettings(interval=3, timeout=1.5, max_missed=4),
        )
        html = split(answer)[2].decode("utf-8")
        for expected in ['"interval": 3000', '"timeout": 1500', '"maxMissed": 4', '"pingText": "hb?"', '"pongText": "hb!"']:
            self.assertIn(expected, html)

    def test_pages_off(self) -> None:
        """
        Without pages (the library default; --no-pages in the daemon) every
        plain request gets 426.
        """
        answer = self.request(b"GET /wsheart.js HTTP/1.1\r\nHost: localhost\r\n\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 426 "), answer)

    def test_unknown_path_still_426(self) -> None:
        answer = self.request(b"GET /favicon.ico HTTP/1.1\r\nHost: localhost\r\n\r\n", pages=True)
        self.assertTrue(answer.startswith(b"HTTP/1.1 426 "), answer)

    def test_bad_upgrade_still_judged_by_autobahn(self) -> None:
        answer = self.request(b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\r\n", pages=True)
        self.assertTrue(answer.startswith(b"HTTP/1.1 4"), answer)
        self.assertNotIn(b"<html", answer)

    def test_websocket_on_the_page_path(self) -> None:
        """
        A WebSocket handshake to / opens a connection, pages or not.
        """
        factory = make_server_factory(self.clock, pages=True)
        client, server, pump = connect_client(factory, self.clock)
        self.assertEqual(len(factory.hub), 1)
        client.sendMessage(b"hi")  # text
        pump.flush()
        self.assertEqual(client.messages, ["hi"])

    def test_peer_that_keeps_talking_after_a_page(self) -> None:
        """
        After the page nothing more is buffered, and a peer that does not
        read the answer is cut off after the handshake timeout.
        """
        factory = make_server_factory(self.clock, pages=True, handshake_timeout=5)
        server = factory.buildProtocol(None)
        transport = iosim.makeFakeServer(server)
        server.makeConnection(transport)
        server.dataReceived(b"GET /wsheart.js HTTP/1.1\r\nHost: localhost\r\n\r\n")
        for _ in range(100):
            server.dataReceived(b"x" * 10000)
        self.assertEqual(len(server.data), 0)
        aborted = []
        transport.abortConnection = lambda: aborted.append(True)  # type: ignore[method-assign]
        self.clock.advance(5)
        self.assertEqual(aborted, [True])

    def test_refused_handshake_does_not_buffer_either(self) -> None:
        factory = make_server_factory(self.clock, handshake_timeout=5)
        server = factory.buildProtocol(None)
        transport = iosim.makeFakeServer(server)
        server.makeConnection(transport)
        server.dataReceived(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")  # 426
        server.dataReceived(b"y" * 100000)
        self.assertEqual(len(server.data), 0)
