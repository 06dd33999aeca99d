"""
Integration tests of wsheart.v1 over real loopback sockets: the websockets
library as an independent client, the HTTP API on a real admin site, the
Python channel client recovering across a forced disconnect in the middle
of a burst, and the CLI against a real twistd.
"""

from __future__ import annotations

import json
import threading
import os
import subprocess
import sys
import urllib.error
import urllib.request
from typing import Any, Optional

import websockets.sync.client
from twisted.internet import reactor, threads
from twisted.trial import unittest

from wsheart.admin import admin_site
from wsheart.backoff import BackoffSettings
from wsheart.channels.api import ApiTokens
from wsheart.channels.client import ChannelListener, ChannelSession
from wsheart.channels import Broker, ChannelSettings, serve
from wsheart.client import OPEN, ReconnectingClientService
from wsheart.health import Health, LagMonitor
from wsheart.heartbeat import HeartbeatSettings
from wsheart.hub import Hub
from wsheart.metrics import ServerMetrics
from wsheart.protocol import ServerFactory
from wsheart.channels.model import SUBPROTOCOL

from .loopback import (
    Process,
    async_test,
    free_port,
    listen,
    poll_until,
    read_line,
    sleep,
    twistd_command,
    wait_for_port,
    wait_until,
)

TOKEN = "test-token-0123456789abcdef"


def http(url: str, method: str = "GET", body: Optional[bytes] = None, token: Optional[str] = TOKEN,
         headers: Optional[dict[str, str]] = None) -> tuple[int, Any]:  # fmt: skip
    request = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


class ChannelServer:
    """
    A wsheart server with channels and the admin API, in this process.
    """

    def __init__(
        self,
        test: unittest.TestCase,
        settings: ChannelSettings = ChannelSettings(),
        heartbeat: HeartbeatSettings = HeartbeatSettings(1, 0.5, 2),
    ) -> None:
        self.test = test
        self.hub = Hub(reactor)
        self.broker = Broker(reactor, settings)
        metrics = ServerMetrics()
        self.factory = ServerFactory(
            hub=self.hub,
            clock=reactor,
            subprotocols=serve(self.broker, self.hub, metrics),
            metrics=metrics,
            heartbeat_settings=heartbeat,
        )
        health = Health(LagMonitor(reactor))
        self.site = admin_site(self.hub, health, self.factory.metrics, reactor, broker=self.broker, api_tokens=ApiTokens([TOKEN.encode()]))

    async def start(self) -> None:
        port = await listen(self.test, self.factory)
        admin = await listen(self.test, self.site)
        self.url = f"ws://127.0.0.1:{port.getHost().port}/"
        self.admin = f"http://127.0.0.1:{admin.getHost().port}"


def ws(url: str) -> Any:
    return websockets.sync.client.connect(url, proxy=None, open_timeout=5, subprotocols=[SUBPROTOCOL])


class IndependentClientTests(unittest.TestCase):
    timeout = 30

    @async_test
    async def test_subscribe_publish_over_http_and_errors(self) -> None:
        """
        The websockets library negotiates wsheart.v1, subscribes, receives
        what the HTTP API publishes; bad frames get errors and the
        connection carries on.
        """
        server = ChannelServer(self)
        await server.start()

        def client_side() -> list[Any]:
            with ws(server.url) as c:
                assert c.subprotocol == SUBPROTOCOL
                c.send(json.dumps({"op": "subscribe", "channel": "news", "name": "ws"}))
                frames = [json.loads(c.recv(timeout=5))]
                c.send("{oops")
                frames.append(json.loads(c.recv(timeout=5)))
                c.send(json.dumps({"op": "publish", "channel": "news", "data": 1}))
                frames.append(json.loads(c.recv(timeout=5)))
                c.send(json.dumps({"op": "ping"}))
                frames.append(c.recv(timeout=5))
                c.send(json.dumps({"op": "ready"}))  # unknown op: an error, then the test publishes
                frames.append(json.loads(c.recv(timeout=5)))
                errors_done.set()
                frames.append(json.loads(c.recv(timeout=5)))
                return frames

        errors_done = threading.Event()
        received = threads.deferToThread(client_side)
        await wait_until(self, lambda: server.broker.presence("news"))
        await wait_until(self, lambda: server.broker.channels()[0]["subscribers"] == 1)
        await threads.deferToThread(errors_done.wait, 10)
        status, answer = await threads.deferToThread(
            http, server.admin + "/publish/news", "POST", json.dumps({"headline": "hi"}).encode()
        )
        self.assertEqual(status, 200, answer)
        frames = await received
        self.assertEqual(frames[0]["op"], "subscribed")
        self.assertEqual((frames[1]["op"], frames[1]["code"]), ("error", 400))
        self.assertEqual((frames[2]["op"], frames[2]["code"]), ("error", 403))
        self.assertEqual(frames[3], '{"op":"pong"}')
        self.assertEqual((frames[4]["op"], frames[4]["code"]), ("error", 405))
        self.assertEqual(frames[5], {"op": "message", "channel": "news", "epoch": answer["epoch"], "seq": 1, "data": {"headline": "hi"}})

    @async_test
    async def test_http_api(self) -> None:
        """
        The HTTP API over a real admin site: a token is required,
        publishing numbers messages, an Idempotency-Key publishes once, bad
        bodies, names and methods get 400, 405 or 413 with an error, and
        /channels, history (with its completeness) and presence answer.
        """
        server = ChannelServer(self, ChannelSettings(history_size=3, max_data_bytes=1024))
        await server.start()
        api = server.admin

        def calls() -> dict[str, Any]:
            out: dict[str, Any] = {}
            out["no token"] = http(api + "/channels", token=None)
            out["wrong token"] = http(api + "/channels", token="x" * 30)
            out["publish"] = [http(api + "/publish/news", "POST", json.dumps(i).encode()) for i in range(5)]
            out["retry"] = http(api + "/publish/news", "POST", b'"once"', headers={"Idempotency-Key": "k"})
            out["retry again"] = http(api + "/publish/news", "POST", b'"once"', headers={"Idempotency-Key": "k"})
            out["bad json"] = http(api + "/publish/news", "POST", b"{nope")
            out["too big"] = http(api + "/publish/news", "POST", json.dumps("x" * 900).encode())
            out["bad name"] = http(api + "/publish/bad%20name", "POST", b"1")
            out["get publish"] = http(api + "/publish/news")
            out["channels"] = http(api + "/channels")
            out["history"] = http(api + "/channels/news/history?since=2")
            out["history bad"] = http(api + "/channels/news/history?since=x")
            out["presence"] = http(api + "/channels/news/presence")
            return out

        out = await threads.deferToThread(calls)
        self.assertEqual(out["no token"][0], 401)
        self.assertEqual(out["wrong token"][0], 401)
        self.assertEqual([r[1]["seq"] for r in out["publish"]], [1, 2, 3, 4, 5])
        self.assertEqual(out["retry"][1]["seq"], 6)
        self.assertEqual(out["retry again"][1]["seq"], 6, "an Idempotency-Key publishes once")
        for key in ("bad json", "too big", "bad name", "get publish"):
            self.assertIn(out[key][0], (400, 405, 413), key)
            self.assertIn("error", out[key][1], key)
        self.assertEqual(out["too big"][0], 413)
        self.assertEqual(out["get publish"][0], 405)
        [row] = out["channels"][1]
        self.assertEqual((row["channel"], row["seq"], row["history"]), ("news", 6, 3))
        history = out["history"][1]
        self.assertFalse(history["complete"], "seq 3 is no longer in a 3-message history")
        self.assertEqual([m["seq"] for m in history["messages"]], [4, 5, 6])
        self.assertEqual(out["history bad"][0], 400)
        self.assertEqual(out["presence"], (200, {"channel": "news", "clients": []}))


class Collector(ChannelListener):
    def __init__(self) -> None:
        self.messages: list[tuple[str, int, Any]] = []
        self.subscribed: list[bool] = []

    def channel_message(self, session: Any, channel: str, data: Any, epoch: str, seq: int) -> None:
        self.messages.append((epoch, seq, data))

    def channel_subscribed(self, session: Any, channel: str, recovered: bool) -> None:
        self.subscribed.append(recovered)


class RecoveryTests(unittest.TestCase):
    timeout = 60

    @async_test
    async def test_python_client_recovers_a_burst_across_an_abort(self) -> None:
        """
        300 messages are published while the client's connection is
        aborted twice in the middle: it reconnects, resubscribes from its
        position and ends with every message exactly once, in order.
        """
        server = ChannelServer(self, ChannelSettings(history_size=1000))
        await server.start()
        collector = Collector()
        session = ChannelSession(collector, channels=["feed"])
        service = ReconnectingClientService(
            server.url,
            session,
            reactor=reactor,
            heartbeat=HeartbeatSettings(1, 0.5, 2),
            backoff=BackoffSettings(initial=0.05, factor=2, cap=0.2, floor=0.01, stable_after=0.5),
            protocols=[SUBPROTOCOL],
        )
        service.startService()
        self.addCleanup(service.stopService)
        await wait_until(self, lambda: collector.subscribed)

        aborted = 0
        for i in range(300):
            server.broker.publish("feed", {"n": i})
            if i in (100, 200):
                # Mid-burst: wait for the client to be connected and
                # subscribed again, then cut it off.  (Cut before its
                # resubscribe is answered, it would subscribe once less.)
                await wait_until(self, lambda: len(server.hub) == 1 and len(collector.subscribed) == aborted + 1)
                for info in server.hub:
                    info.connection.abort()  # type: ignore[attr-defined]
                    aborted += 1
            if i % 10 == 0:
                await sleep(0.005)  # pacing, not waiting: the reactor delivers part of the burst
        self.assertEqual(aborted, 2)
        await wait_until(self, lambda: len(collector.messages) >= 300 and service.state == OPEN, timeout=20)
        # A last message, on the one open connection: once it is in, any
        # repeat of an earlier one would have arrived before it.
        server.broker.publish("feed", {"n": 300})
        await wait_until(self, lambda: any(seq == 301 for _, seq, _ in collector.messages))
        seqs = [seq for _, seq, _ in collector.messages]
        self.assertEqual(seqs, list(range(1, 302)), "lost, repeated or reordered messages")
        self.assertEqual([d["n"] for _, _, d in collector.messages], list(range(301)))
        self.assertEqual(len({epoch for epoch, _, _ in collector.messages}), 1)
        self.assertEqual(collector.subscribed, [False, True, True])
        self.assertEqual(session.duplicates_dropped, 0)

    @async_test
    async def test_gap_beyond_history_is_reported(self) -> None:
        """
        Away longer than the history reaches: recovered is false.
        """
        server = ChannelServer(self, ChannelSettings(history_size=5))
        await server.start()
        collector = Collector()
        session = ChannelSession(collector, channels=["feed"])
        service = ReconnectingClientService(
            server.url, session, reactor=reactor,
            backoff=BackoffSettings(initial=0.5, factor=2, cap=1, floor=0.3), protocols=[SUBPROTOCOL],
        )  # fmt: skip
        service.startService()
        self.addCleanup(service.stopService)
        await wait_until(self, lambda: collector.subscribed)
        for info in server.hub:
            info.connection.abort()  # type: ignore[attr-defined]
        for i in range(20):  # while it waits at least 0.3 s to come back
            server.broker.publish("feed", i)
        await wait_until(self, lambda: len(collector.subscribed) == 2, timeout=10)
        self.assertEqual(collector.subscribed, [False, False])


class CommandLineTests(unittest.TestCase):
    """
    wsheart connect --channel and wsheart publish against a real twistd.
    """

    timeout = 60

    def test_connect_and_publish(self) -> None:
        """
        Against a real twistd: wsheart connect --channel prints each
        message wsheart publish sends (text, and --json data), once and in
        order; publish with a wrong token exits 1 saying HTTP 401.
        """
        token_file = os.path.abspath(self.mktemp())  # trial's temporary directory, not /tmp
        with open(token_file, "w") as f:
            f.write(TOKEN + "\n")
        port, admin = free_port(), free_port()
        Process(self, twistd_command() + [
            "-n", "--pidfile=", "wsheart", "--endpoint", f"tcp:{port}:interface=127.0.0.1",
            "--admin-endpoint", f"tcp:{admin}:interface=127.0.0.1", "--api-token-file", token_file,
        ])  # fmt: skip
        wait_for_port(port)
        wait_for_port(admin)
        cli = [sys.executable, "-m", "wsheart"]
        listener = Process(self, cli + ["connect", f"ws://127.0.0.1:{port}/", "--channel", "news", "--name", "term"], stdin=subprocess.PIPE)
        assert listener.popen.stdout is not None
        poll_until(
            lambda: http(f"http://127.0.0.1:{admin}/channels/news/presence")[1]["clients"],
            timeout=20,
            what="the listener subscribed",
        )
        published = []
        for i, message in enumerate(["hello", '{"n": 2}']):
            argv = cli + ["publish", f"http://127.0.0.1:{admin}", "news", message, "--token-file", token_file]
            if i == 1:
                argv.append("--json")
            result = subprocess.run(argv, capture_output=True, text=True, timeout=20, env=dict(os.environ, PYTHONPATH=_repo()))
            self.assertEqual(result.returncode, 0, result.stderr)
            published.append(json.loads(result.stdout))
        self.assertEqual([p["seq"] for p in published], [1, 2])
        refused = subprocess.run(
            cli + ["publish", f"http://127.0.0.1:{admin}", "news", "x"],
            capture_output=True, text=True, timeout=20, env=dict(os.environ, PYTHONPATH=_repo(), WSHEART_API_TOKEN="w" * 20),
        )  # fmt: skip
        self.assertEqual(refused.returncode, 1)
        self.assertIn("HTTP 401", refused.stderr)
        # Both messages printed (however long that takes), then nothing
        # else by the time the listener stops.
        printed = read_line(listener.popen.stdout, 20) + read_line(listener.popen.stdout, 20)
        listener.stop()
        lines = [json.loads(line) for line in (printed + listener.stdout).decode().splitlines()]
        self.assertEqual([(m["seq"], m["data"]) for m in lines], [(1, "hello"), (2, {"n": 2})])
        self.assertIn("subscribed to news at seq 0", listener.stderr.decode())


def _repo() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class NoChannelsTests(unittest.TestCase):
    timeout = 30

    @async_test
    async def test_cli_stops_when_the_server_has_no_channels(self) -> None:
        """
        wsheart connect --channel against a server without wsheart.v1 says
        so and exits 1 instead of retrying for ever.
        """
        factory = ServerFactory(hub=Hub(reactor), clock=reactor)  # channels off
        port = await listen(self, factory)
        argv = [sys.executable, "-m", "wsheart", "connect", f"ws://127.0.0.1:{port.getHost().port}/", "--channel", "news"]
        # stdin stays open: the command would end (0) when stdin closes.
        process = Process(self, argv, stdin=subprocess.PIPE)
        status = await threads.deferToThread(process.popen.wait, 20)
        process.stop()
        stderr = process.stderr.decode()
        self.assertEqual(status, 1, stderr)
        self.assertIn("did not accept the wsheart.v1 subprotocol", stderr)


class SlowReaderTests(unittest.TestCase):
    timeout = 60

    @async_test
    async def test_slow_reader_is_closed_and_harms_nobody(self) -> None:
        """
        A subscriber that stops reading is closed (1013) once its unsent
        bytes pass the limit; the daemon's memory stays bounded and a
        healthy subscriber gets every message.
        """
        import base64
        import socket as socketlib

        # A heartbeat slower than the test: the slow reader never answers a
        # ping, and must be closed for its backlog, not found dead first
        # (which a slow machine made happen at 1 s / 0.5 s / 2).
        server = ChannelServer(self, ChannelSettings(history_size=10, max_data_bytes=100000), HeartbeatSettings(30, 10, 2))
        server.factory.max_send_buffer = 2 * 1024 * 1024
        await server.start()
        port = int(server.url.rsplit(":", 1)[1].strip("/"))

        slow = socketlib.socket()
        self.addCleanup(slow.close)
        slow.setsockopt(socketlib.SOL_SOCKET, socketlib.SO_RCVBUF, 4096)
        slow.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        slow.sendall(
            f"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: wsheart.v1\r\n\r\n".encode()
        )
        await wait_until(self, lambda: len(server.hub) == 1)
        payload = json.dumps({"op": "subscribe", "channel": "news"}).encode()
        mask = os.urandom(4)
        slow.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
        await wait_until(self, lambda: server.broker.presence("news"))
        slow_id = server.broker.presence("news")[0]["id"]

        collector = Collector()
        session = ChannelSession(collector, channels=["news"])
        service = ReconnectingClientService(server.url, session, reactor=reactor, protocols=[SUBPROTOCOL])
        service.startService()
        self.addCleanup(service.stopService)
        await wait_until(self, lambda: collector.subscribed)

        data = "x" * 50000
        for i in range(300):  # 15 MB for each subscriber, far more than the kernel buffers
            server.broker.publish("news", {"i": i, "pad": data})
            if i % 2 == 0:
                await sleep(0.005)  # 100 KB a turn: the healthy one keeps up
        # Closed for reading too slowly - the metric's cause says it was not
        # the heartbeat (that would be cause="dead"), so the wait may be long.
        await wait_until(self, lambda: slow_id not in [c["id"] for c in server.broker.presence("news")], timeout=10)
        metric = server.factory.metrics.exposition().decode()
        self.assertIn('wsheart_connections_closed_total{cause="slow",code="1013"} 1.0', metric)
        await wait_until(self, lambda: len(collector.messages) == 300, timeout=30)
        self.assertEqual([seq for _, seq, _ in collector.messages], list(range(1, 301)))
