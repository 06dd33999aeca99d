"""
Integration tests of the server over real loopback sockets, talked to by
clients wsheart did not write: the websockets library, a raw socket that
freezes after the handshake, and plain HTTP.
"""

from __future__ import annotations

import base64
import os
import socket
import time
from typing import Any

import websockets.sync.client
from twisted.internet import reactor, threads
from twisted.trial import unittest

from wsheart.heartbeat import HeartbeatSettings
from wsheart.hub import Hub
from wsheart.protocol import ServerFactory, ServerProtocol

from .loopback import async_test, listen, wait_until


def ws_connect(port: int, **kwargs: Any) -> Any:
    return websockets.sync.client.connect(
        f"ws://127.0.0.1:{port}/", proxy=None, open_timeout=5, ping_interval=None, **kwargs
    )


class TimedServerProtocol(ServerProtocol):
    """
    Records when the TCP connection was lost.
    """

    def connectionLost(self, reason: Any) -> None:
        self.factory.lost_at.append(reactor.seconds())
        super().connectionLost(reason)


class ServerIntegrationTests(unittest.TestCase):
    """
    A wsheart server in this process, clients in threads.
    """

    timeout = 30

    def make_factory(self, **kwargs: Any) -> ServerFactory:
        factory = ServerFactory(hub=Hub(reactor), clock=reactor, **kwargs)
        factory.protocol = TimedServerProtocol
        factory.lost_at = []
        return factory

    @async_test
    async def test_echo_with_websockets_library(self) -> None:
        """
        The websockets library gets text back as text and binary as binary,
        and its native pings are answered.
        """
        factory = self.make_factory()
        port = (await listen(self, factory)).getHost().port

        def talk() -> list[Any]:
            with ws_connect(port) as ws:
                ws.send("hello wsheart")
                text = ws.recv(timeout=5)
                ws.send(b"\x00\x01\xfe\xff")
                data = ws.recv(timeout=5)
                ws.ping(b"x").wait(5)
                return [text, data]

        self.assertEqual(await threads.deferToThread(talk), ["hello wsheart", b"\x00\x01\xfe\xff"])

    @async_test
    async def test_text_ping_pong(self) -> None:
        """
        The text message "ping" is answered "pong", as a browser needs.
        """
        factory = self.make_factory()
        port = (await listen(self, factory)).getHost().port

        def talk() -> Any:
            with ws_connect(port) as ws:
                ws.send("ping")
                return ws.recv(timeout=5)

        self.assertEqual(await threads.deferToThread(talk), "pong")

    @async_test
    async def test_nagle_off_on_server_sockets(self) -> None:
        """
        The server's sockets have TCP_NODELAY, so a small frame is not held
        back behind a delayed ACK (up to 40 ms on Linux loopback).
        """
        factory = self.make_factory()
        port = (await listen(self, factory)).getHost().port
        ws = await threads.deferToThread(ws_connect, port)
        try:
            await threads.deferToThread(lambda: (ws.send("x"), ws.recv(timeout=5)))
            [info] = list(factory.hub)
            handle = info.connection.transport.getHandle()
            self.assertEqual(handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), 1)
        finally:
            await threads.deferToThread(ws.close)

    @async_test
    async def test_registry_follows_connections(self) -> None:
        """
        Open connections are in the hub; a client's close removes its entry.
        """
        factory = self.make_factory()
        port = (await listen(self, factory)).getHost().port
        ws = await threads.deferToThread(ws_connect, port)
        try:
            await threads.deferToThread(lambda: (ws.send("x"), ws.recv(timeout=5)))
            self.assertEqual(len(factory.hub), 1)
        finally:
            await threads.deferToThread(ws.close)
        await wait_until(self, lambda: len(factory.hub) == 0)
        self.assertEqual(factory.hub.closed_total, {"closed": 1})

    @async_test
    async def test_frozen_peer_closed_within_bound(self) -> None:
        """
        A peer that completes the handshake and then never answers (a frozen
        process: socket open, nothing read) is declared dead no sooner than
        max_missed pings can time out ((max_missed - 1) * interval +
        timeout), no later than the documented bound interval * max_missed
        + timeout plus a fifth of it for a loaded machine's scheduling, and
        its TCP connection is closed at once, not after the close timeout.

        The first ping is made due as late as the interval allows (the
        worst case the bound covers) and the bound is 5 s, so the slack (1
        s) is time a busy 2-core machine may steal from the reactor, not a
        guess at timer jitter; "at once" is within a quarter of the 4 s
        close timeout.
        """
        settings = HeartbeatSettings(interval=2.0, timeout=1.0, max_missed=2)
        slack = settings.death_bound / 5
        close_timeout = 4.0
        factory = self.make_factory(
            heartbeat_settings=settings, close_timeout=close_timeout, random=lambda: 1.0 - 1e-9
        )  # fmt: skip
        removed: list[tuple[float, str]] = []
        factory.hub.on_removal(lambda info, cause: removed.append((reactor.seconds(), cause)))
        port = (await listen(self, factory)).getHost().port

        def open_and_freeze() -> float:
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            self.addCleanup(sock.close)
            key = base64.b64encode(os.urandom(16)).decode()
            sock.sendall(
                (
                    f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                    f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                ).encode()
            )
            answer = b""
            while b"\r\n\r\n" not in answer:
                answer += sock.recv(1)  # byte by byte: leave any frame unread
            assert answer.startswith(b"HTTP/1.1 101"), answer
            return time.time()

        connecting = reactor.seconds()  # before the server could start its heartbeat
        opened_wall = await threads.deferToThread(open_and_freeze)
        opened = reactor.seconds() - (time.time() - opened_wall)  # after it did
        await wait_until(self, lambda: factory.lost_at, timeout=settings.death_bound + close_timeout + 10)
        (died_at, cause), = removed
        self.assertEqual(cause, "dead")
        # Silent from the moment it opened: the bound holds from there.
        self.assertGreaterEqual(died_at - connecting, (settings.max_missed - 1) * settings.interval + settings.timeout)
        self.assertLessEqual(died_at - opened, settings.death_bound + slack)
        self.assertLessEqual(factory.lost_at[0] - died_at, close_timeout / 4)
        self.assertEqual(len(factory.hub), 0)

    @async_test
    async def test_foreign_origin_gets_403_and_no_upgrade(self) -> None:
        """
        A page of another site (a browser sends its Origin) gets 403 before
        any upgrade, and the log says which Origin and which option would
        allow it; the server's own page, an allowed origin and a program
        without an Origin connect.
        """
        from twisted.logger import globalLogPublisher
        from websockets.exceptions import InvalidStatus

        from wsheart.access.origin import OriginPolicy

        logged: list[str] = []

        def observe(event: dict[str, Any]) -> None:
            if "refused a WebSocket upgrade" in event.get("log_format", ""):
                from twisted.logger import formatEvent

                logged.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        factory = self.make_factory(origin_policy=OriginPolicy(("https://*.example.com",)))
        port = (await listen(self, factory)).getHost().port

        def status(origin: Any) -> Any:
            try:
                with ws_connect(port, origin=origin) as ws:
                    ws.send("x")
                    return ws.recv(timeout=5)
            except InvalidStatus as e:
                return e.response.status_code

        self.assertEqual(await threads.deferToThread(status, "https://evil.example.net"), 403)
        self.assertEqual(await threads.deferToThread(status, "https://app.example.com.evil.net"), 403)
        self.assertEqual(await threads.deferToThread(status, f"http://127.0.0.1:{port}"), "x", "the server's own page")
        self.assertEqual(await threads.deferToThread(status, "https://app.example.com"), "x")
        self.assertEqual(await threads.deferToThread(status, None), "x", "no Origin: not a browser")
        self.assertEqual(len(factory.hub), 0)
        self.assertEqual(factory.metrics.handshake_failures.labels(reason="origin")._value.get(), 2)
        self.assertEqual(len(logged), 2)
        self.assertIn("Origin 'https://evil.example.net' is not allowed", logged[0])
        self.assertIn("--allowed-origin 'https://evil.example.net'", logged[0])

    @async_test
    async def test_token_on_the_handshake(self) -> None:
        """
        With --auth jwt, an independent client (websockets) with a valid
        Bearer token echoes; without one, or with a forged or expired one,
        it gets 401 and no upgrade.
        """
        import jwt
        from websockets.exceptions import InvalidStatus

        from wsheart.auth import AuthPolicy, TokenSettings, TokenVerifier

        key = self.mktemp()
        with open(key, "wb") as f:
            f.write(b"k" * 40)
        factory = self.make_factory(auth=AuthPolicy(TokenVerifier(TokenSettings(key))))
        port = (await listen(self, factory)).getHost().port
        now = reactor.seconds()

        def attempt(token: Any) -> Any:
            headers = {"Authorization": f"Bearer {token}"} if token else None
            try:
                with ws_connect(port, additional_headers=headers) as ws:
                    ws.send("x")
                    return ws.recv(timeout=5)
            except InvalidStatus as e:
                return e.response.status_code

        good = jwt.encode({"sub": "ann", "aud": "wsheart", "exp": now + 60}, b"k" * 40, algorithm="HS256")
        forged = jwt.encode({"sub": "ann", "aud": "wsheart", "exp": now + 60}, b"f" * 40, algorithm="HS256")
        expired = jwt.encode({"sub": "ann", "aud": "wsheart", "exp": now - 120}, b"k" * 40, algorithm="HS256")
        self.assertEqual(await threads.deferToThread(attempt, good), "x")
        for token in (None, forged, expired):
            self.assertEqual(await threads.deferToThread(attempt, token), 401)
        self.assertEqual(factory.metrics.handshake_failures.labels(reason="token")._value.get(), 3)

    @async_test
    async def test_per_address_limit_from_several_loopback_addresses(self) -> None:
        """
        Two connections from 127.0.0.2 fill its share; the third gets 429,
        while 127.0.0.3 still connects; closing one makes room.
        """
        from websockets.exceptions import InvalidStatus

        from wsheart.access.limits import LimitSettings

        factory = self.make_factory(limits=LimitSettings(max_connections_per_address=2))
        port = (await listen(self, factory)).getHost().port

        def connect_from(source: str) -> Any:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((source, 0))
            sock.connect(("127.0.0.1", port))
            try:
                return websockets.sync.client.connect(f"ws://127.0.0.1:{port}/", sock=sock, open_timeout=5, ping_interval=None)
            except InvalidStatus as e:
                sock.close()
                return e.response.status_code

        a1 = await threads.deferToThread(connect_from, "127.0.0.2")
        a2 = await threads.deferToThread(connect_from, "127.0.0.2")
        try:
            self.assertEqual(await threads.deferToThread(connect_from, "127.0.0.2"), 429)
            b = await threads.deferToThread(connect_from, "127.0.0.3")
            self.assertNotIsInstance(b, int)
            await threads.deferToThread(b.close)
            await threads.deferToThread(a1.close)
            await wait_until(self, lambda: factory.limits.open.get("127.0.0.2") == 1)
            a3 = await threads.deferToThread(connect_from, "127.0.0.2")
            self.assertNotIsInstance(a3, int)  # room again after a close
            await threads.deferToThread(a3.close)
        finally:
            await threads.deferToThread(a2.close)
        self.assertEqual(factory.metrics.limit_refusals.labels(limit="connections_per_address")._value.get(), 1)

    @async_test
    async def test_real_client_address_through_the_proxy_protocol(self) -> None:
        """
        Behind a proxy that speaks the PROXY protocol (Twisted's haproxy:
        endpoint, e.g. --endpoint haproxy:tcp:8080), the peer is the client
        the proxy names, and the per-address limit counts that address, not
        the proxy's.
        """
        from wsheart.access.limits import LimitSettings

        factory = self.make_factory(limits=LimitSettings(max_connections_per_address=1))
        port = (await listen(self, factory, "haproxy:tcp:0:interface=127.0.0.1")).getHost().port
        key = base64.b64encode(os.urandom(16))

        def open_as(client: str) -> tuple[socket.socket, bytes]:
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(
                f"PROXY TCP4 {client} 127.0.0.1 51000 443\r\n".encode()
                + b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                + b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            answer = b""
            while b"\r\n\r\n" not in answer:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                answer += chunk
            return sock, answer

        first, answer = await threads.deferToThread(open_as, "203.0.113.7")
        self.addCleanup(first.close)
        self.assertTrue(answer.startswith(b"HTTP/1.1 101"), answer)
        await wait_until(self, lambda: len(factory.hub) == 1)
        [info] = list(factory.hub)
        self.assertIn("203.0.113.7", info.peer)
        second, answer = await threads.deferToThread(open_as, "198.51.100.9")
        self.addCleanup(second.close)
        self.assertTrue(answer.startswith(b"HTTP/1.1 101"), "another client behind the same proxy")
        third, answer = await threads.deferToThread(open_as, "203.0.113.7")
        self.addCleanup(third.close)
        self.assertTrue(answer.startswith(b"HTTP/1.1 429"), answer)

    @async_test
    async def test_real_client_address_from_a_trusted_proxys_x_forwarded_for(self) -> None:
        """
        Over loopback from a --trusted-proxy address, the client is the one
        X-Forwarded-For names: two clients behind it each get their place
        under the per-address limit, a second from the first's address gets
        429.
        """
        from wsheart.access.limits import LimitSettings
        from wsheart.access.proxies import TrustedProxies

        factory = self.make_factory(
            limits=LimitSettings(max_connections_per_address=1),
            trusted_proxies=TrustedProxies.parse(["127.0.0.1/32"]),
        )
        port = (await listen(self, factory, "tcp:0:interface=127.0.0.1")).getHost().port
        key = base64.b64encode(os.urandom(16))

        def open_for(client: str) -> tuple[socket.socket, bytes]:
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(
                b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                + b"X-Forwarded-For: " + client.encode() + b"\r\n"
                + b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            answer = b""
            while b"\r\n\r\n" not in answer:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                answer += chunk
            return sock, answer

        first, answer = await threads.deferToThread(open_for, "203.0.113.7")
        self.addCleanup(first.close)
        self.assertTrue(answer.startswith(b"HTTP/1.1 101"), answer)
        await wait_until(self, lambda: len(factory.hub) == 1)
        [info] = list(factory.hub)
        self.assertEqual(info.peer, "tcp4:203.0.113.7")
        second, answer = await threads.deferToThread(open_for, "198.51.100.9")
        self.addCleanup(second.close)
        self.assertTrue(answer.startswith(b"HTTP/1.1 101"), "another client behind the same proxy")
        third, answer = await threads.deferToThread(open_for, "203.0.113.7")
        self.addCleanup(third.close)
        self.assertTrue(answer.startswith(b"HTTP/1.1 429"), answer)

    @async_test
    async def test_plain_http_gets_an_answer(self) -> None:
        """
        A plain HTTP request to the WebSocket port gets 426 at once, not a
        hang.
        """
        factory = self.make_factory()
        port = (await listen(self, factory)).getHost().port

        def get() -> bytes:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
                data = b""
                while chunk := sock.recv(4096):
                    data += chunk
                return data

        answer = await threads.deferToThread(get)
        self.assertTrue(answer.startswith(b"HTTP/1.1 426 Upgrade Required"), answer)

    @async_test
    async def test_oversize_message_closes_1009_others_unharmed(self) -> None:
        """
        An oversize message closes its connection with 1009; a second
        connection keeps working.
        """
        factory = self.make_factory(max_message_size=1000)
        port = (await listen(self, factory)).getHost().port

        def talk() -> tuple[Any, Any]:
            with ws_connect(port) as good, ws_connect(port) as bad:
                bad.send("x" * 2000)
                try:
                    bad.recv(timeout=5)
                except websockets.exceptions.ConnectionClosed as e:
                    code = e.rcvd.code if e.rcvd else None
                good.send("still fine")
                return code, good.recv(timeout=5)

        self.assertEqual(await threads.deferToThread(talk), (1009, "still fine"))
