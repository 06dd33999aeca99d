"""
Integration test of several wsheart processes on one port, the way the
wsheart@.service instances run: two real C{twistd wsheart} processes on
127.0.0.1 with the C{reuseport:} endpoint, the kernel spreading connections
over them, and one of them drained while the other serves on.  Every
process is stopped by its pid.
"""

from __future__ import annotations

import json
import os
import signal
import urllib.error
import urllib.request
from typing import Any

import websockets.sync.client
from twisted.trial import unittest

from .loopback import Process, free_port, poll_until, read_until, twistd_command, wait_for_port


def http_json(url: str) -> Any:
    """
    The JSON body of a GET, 503 included (a draining /healthz).
    """
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=5) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as e:
        return json.loads(e.read())


def ws_open(url: str) -> Any:
    return websockets.sync.client.connect(url, proxy=None, open_timeout=5, ping_interval=None)


class Instance:
    """
    One C{twistd -n wsheart} on the shared port, with its own admin
    endpoint.
    """

    def __init__(self, test: unittest.TestCase, cwd: str, port: int, admin_port: int) -> None:
        self.admin_port = admin_port
        self.process = Process(
            test,
            twistd_command()
            + [
                "-n", "--pidfile=", "wsheart",
                "--endpoint", f"reuseport:{port}:interface=127.0.0.1",
                "--admin-endpoint", f"tcp:{admin_port}:interface=127.0.0.1",
                # Long enough that new connections are made while this
                # process is still draining.
                "--drain-time", "3",
            ],
            cwd=cwd,
        )  # fmt: skip

    def wait_ready(self) -> None:
        # Ready means every endpoint listens: a connection to the shared
        # port could otherwise prove only that the other process does.
        assert self.process.popen.stdout is not None
        read_until(self.process.popen.stdout, b"wsheart ready", 30)
        wait_for_port(self.admin_port)

    def health(self) -> Any:
        return http_json(f"http://127.0.0.1:{self.admin_port}/healthz")

    def peers(self) -> set[str]:
        return {row["peer"] for row in http_json(f"http://127.0.0.1:{self.admin_port}/connections")}


def peer_of(ws: Any) -> str:
    """
    How the server names this client's connection in /connections.
    """
    host, port = ws.local_address[:2]
    return f"tcp4:{host}:{port}"


class ReusePortProcessesTests(unittest.TestCase):
    """
    Two daemons listening on one port with reuseport:.
    """

    timeout = 60

    def connect(self, url: str, count: int) -> list[Any]:
        clients = []
        for _ in range(count):
            ws = ws_open(url)
            self.addCleanup(ws.close)
            clients.append(ws)
        return clients

    def assert_echo(self, clients: list[Any], text: str) -> None:
        for ws in clients:
            ws.send(text)
            self.assertEqual(ws.recv(timeout=5), text)

    def test_two_processes_share_a_port_and_drain_one_at_a_time(self) -> None:
        """
        Two twistd wsheart processes bind one port with reuseport: and both
        get some of 40 connections, which add up to 40 in their /healthz.
        SIGTERM to one closes each of its clients with 1012 and a reconnect
        hint and it exits 0, while the other's clients carry on; new
        connections to the port, made once the stopped process no longer
        listens, all reach the other process.
        """
        cwd = os.path.abspath(self.mktemp())
        os.makedirs(cwd)
        ports: set[int] = set()
        while len(ports) < 3:
            ports.add(free_port())
        port, *admin_ports = sorted(ports)
        first, second = (Instance(self, cwd, port, admin) for admin in admin_ports)
        first.wait_ready()
        second.wait_ready()
        url = f"ws://127.0.0.1:{port}/"

        clients = self.connect(url, 40)

        def counted_all() -> list[int]:
            counts = [instance.health()["connections"] for instance in (first, second)]
            return counts if sum(counts) == 40 else []

        counts = poll_until(counted_all, timeout=10, what="40 connections in the two /healthz")
        self.assertTrue(all(c > 0 for c in counts), counts)
        by_peer = {peer_of(ws): ws for ws in clients}
        first_peers, second_peers = first.peers(), second.peers()
        self.assertEqual(first_peers | second_peers, set(by_peer))
        self.assertEqual(first_peers & second_peers, set())
        first_clients = [by_peer[peer] for peer in sorted(first_peers)]
        second_clients = [by_peer[peer] for peer in sorted(second_peers)]
        self.assert_echo(clients, "both")

        os.kill(first.process.pid, signal.SIGTERM)
        # A drain closes connections only once the listeners are stopped:
        # after the first 1012, the first process no longer listens.
        closes = []
        with self.assertRaises(websockets.exceptions.ConnectionClosed) as e:
            first_clients[0].recv(timeout=15)
        closes.append(e.exception.rcvd)
        newcomers = self.connect(url, 20)
        self.assert_echo(newcomers, "new")
        for ws in first_clients[1:]:
            with self.assertRaises(websockets.exceptions.ConnectionClosed) as e:
                ws.recv(timeout=15)
            closes.append(e.exception.rcvd)
        for close in closes:
            self.assertIsNotNone(close)
            self.assertEqual(close.code, 1012)
            self.assertEqual(set(json.loads(close.reason)), {"retry_after", "jitter"})
        self.assertEqual(first.process.popen.wait(20), 0)

        self.assert_echo(second_clients + newcomers, "after")
        health = second.health()
        self.assertEqual(health["status"], "serving")
        self.assertEqual(health["connections"], len(second_clients) + 20)
        self.assertEqual(second.peers(), set(second_peers) | {peer_of(ws) for ws in newcomers})
        self.assertIsNone(second.process.popen.poll())
