"""
Integration tests of the composed daemon (makeService on the real reactor,
loopback only): the admin endpoint's health, metrics and connection list,
and the drain a client sees on shutdown.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from typing import Any

import websockets.sync.client
from twisted.internet import reactor, threads
from twisted.trial import unittest

from wsheart.tap import Options, makeService

from .loopback import async_test, free_port, wait_until


def http_get(url: str) -> tuple[int, str, bytes]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=5) as response:
            return response.status, response.headers.get("content-type", ""), response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("content-type", ""), e.read()


class AdminIntegrationTests(unittest.TestCase):
    """
    The daemon as twistd would build it, on loopback ports.
    """

    timeout = 40

    def start_daemon(self, *argv: str) -> Any:
        """
        The composed daemon with a fast heartbeat (bound 0.5 * 2 + 0.3 =
        1.3 s); C{argv} comes last, so it may override those numbers.
        """
        self.ws_port = free_port()
        self.admin_port = free_port()
        options = Options()
        options.parseOptions(
            [
                "--endpoint", f"tcp:{self.ws_port}:interface=127.0.0.1",
                "--admin-endpoint", f"tcp:{self.admin_port}:interface=127.0.0.1",
                "--ping-interval", "0.5", "--ping-timeout", "0.3", "--close-timeout", "0.5",
                *argv,
            ]
        )  # fmt: skip
        service = makeService(options, reactor=reactor)
        service.privilegedStartService()
        service.startService()
        self.addCleanup(lambda: service.running and service.stopService())
        return service

    def admin(self, path: str) -> Any:
        return threads.deferToThread(http_get, f"http://127.0.0.1:{self.admin_port}{path}")

    def metrics_show(self, service: Any, *patterns: str) -> bool:
        """
        Whether the daemon's metrics (read in this process: the admin site
        runs on the reactor this test waits on) match every pattern.
        """
        text = service.factory.metrics.exposition().decode()
        return all(re.search(pattern, text, re.M) for pattern in patterns)

    @async_test
    async def test_health_metrics_connections(self) -> None:
        """
        With one live client: /healthz is 200 "serving", /connections lists
        it with an RTT, /metrics counts pings, pongs and the open connection.
        """
        # A pong may take up to a second (a loaded machine) without a miss.
        service = self.start_daemon("--ping-interval", "1", "--ping-timeout", "1")
        ws = await threads.deferToThread(
            websockets.sync.client.connect, f"ws://127.0.0.1:{self.ws_port}/", proxy=None, ping_interval=None
        )
        self.addCleanup(lambda: threads.deferToThread(ws.close))
        # A heartbeat answered by websockets, however long the machine takes.
        await wait_until(
            self,
            lambda: self.metrics_show(
                service, r"^wsheart_heartbeat_pongs_received_total [1-9]", r"^wsheart_heartbeat_rtt_seconds_count [1-9]"
            ),
        )

        status, ctype, body = await self.admin("/healthz")
        self.assertEqual(status, 200)
        self.assertEqual(ctype, "application/json")
        health = json.loads(body)
        self.assertEqual((health["status"], health["connections"]), ("serving", 1))

        status, _, body = await self.admin("/connections")
        (row,) = json.loads(body)
        self.assertEqual(status, 200)
        self.assertTrue(row["peer"].startswith("tcp4:127.0.0.1:"))
        self.assertIsNotNone(row["last_rtt_seconds"])
        self.assertEqual(row["misses"], 0)

        status, ctype, body = await self.admin("/metrics")
        self.assertEqual(status, 200)
        self.assertIn("text/plain", ctype)
        text = body.decode()
        self.assertIn("wsheart_connections_open 1.0", text)
        self.assertRegex(text, r"wsheart_heartbeat_pings_sent_total [1-9]")
        self.assertRegex(text, r"wsheart_heartbeat_pongs_received_total [1-9]")
        self.assertRegex(text, r"wsheart_heartbeat_rtt_seconds_count [1-9]")
        self.assertEqual(service.health.state(), "serving")

        status, _, _ = await self.admin("/nothing-here")
        self.assertEqual(status, 404)

    @async_test
    async def test_drain_on_stop(self) -> None:
        """
        Stopping the service stops accepting, answers /healthz 503 while
        draining, and closes the client with 1012 and a JSON hint.
        """
        service = self.start_daemon("--drain-time", "1")
        ws = await threads.deferToThread(
            websockets.sync.client.connect, f"ws://127.0.0.1:{self.ws_port}/", proxy=None, ping_interval=None
        )

        def wait_for_close() -> Any:
            try:
                ws.recv(timeout=10)
            except websockets.exceptions.ConnectionClosed as e:
                return e.rcvd
            return None

        closed = threads.deferToThread(wait_for_close)
        stopped = service.stopService()
        self.assertEqual(service.health.state(), "draining")
        received = await closed
        self.assertEqual(received.code, 1012)
        hint = json.loads(received.reason)
        self.assertEqual(set(hint), {"retry_after", "jitter"})
        await stopped
        self.assertEqual(len(service.hub), 0)

        def refused() -> bool:
            try:
                websockets.sync.client.connect(f"ws://127.0.0.1:{self.ws_port}/", proxy=None, open_timeout=2)
            except OSError:
                return True
            return False

        self.assertTrue(await threads.deferToThread(refused))

    @async_test
    async def test_dead_peer_in_metrics(self) -> None:
        """
        A peer that stops answering is counted as dead, with its
        time-to-detect, and as closed with cause "dead" and code 1011.
        """
        service = self.start_daemon()
        import socket

        def open_and_freeze() -> socket.socket:
            sock = socket.create_connection(("127.0.0.1", self.ws_port), timeout=5)
            sock.sendall(
                b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            answer = b""
            while b"\r\n\r\n" not in answer:
                answer += sock.recv(1)
            return sock

        sock = await threads.deferToThread(open_and_freeze)
        self.addCleanup(sock.close)
        expected = [
            "wsheart_heartbeat_dead_peers_total 1.0",
            'wsheart_connections_closed_total{cause="dead",code="1011"} 1.0',
            "wsheart_heartbeat_time_to_detect_seconds_count 1.0",
            "wsheart_connections_open 0.0",
        ]
        # The bound is 1.3 s; how long this takes is the heartbeat tests'
        # business, what the metrics say once it is done is this test's.
        await wait_until(self, lambda: self.metrics_show(service, *map(re.escape, expected)), timeout=20)
        _, _, body = await self.admin("/metrics")
        text = body.decode()
        for line in expected:
            self.assertIn(line, text)
