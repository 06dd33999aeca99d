"""
Integration test of the Redis engine the way it is deployed: two real
C{twistd wsheart --redis} processes on 127.0.0.1 sharing one real
redis-server; clients from the websockets library (wsheart.v1) on each and
the HTTP API of each.  Every process is stopped by its pid.
"""

from __future__ import annotations

import json
import os
import urllib.request
from typing import Any, Optional, Sequence

import websockets.sync.client
from twisted.trial import unittest

from .loopback import Process, RedisServer, free_port, poll_until, read_until, twistd_command, wait_for_port

TOKEN = "redis-processes-test-token-0123"


def ws_v1(port: int) -> Any:
    return websockets.sync.client.connect(
        f"ws://127.0.0.1:{port}/", subprotocols=["wsheart.v1"], proxy=None, open_timeout=5, ping_interval=None,
        close_timeout=0.5,  # a client of a killed process closes at once
    )  # fmt: skip


def receive(ws: Any, op: str, timeout: float = 10) -> dict[str, Any]:
    """
    The next frame with C{op} (join/leave and others skipped).
    """
    while True:
        frame = json.loads(ws.recv(timeout=timeout))
        if frame["op"] == op:
            return frame  # type: ignore[no-any-return]


class Node:
    """
    One C{twistd -n wsheart --redis ...}: its WebSocket and admin ports.
    """

    def __init__(
        self,
        test: unittest.TestCase,
        redis_port: int,
        token_file: str,
        name: str,
        endpoint: Optional[str] = None,
        extra: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.port, self.admin_port = free_port(), free_port()
        endpoint = endpoint or f"tcp:{self.port}:interface=127.0.0.1"
        cwd = os.path.abspath(test.mktemp())
        os.makedirs(cwd)
        self.process = Process(
            test,
            twistd_command()
            + [
                "-n", "--pidfile=", "wsheart",
                "--endpoint", endpoint,
                "--admin-endpoint", f"tcp:{self.admin_port}:interface=127.0.0.1",
                "--api-token-file", token_file,
                "--redis", f"redis://127.0.0.1:{redis_port}/0",
                "--node-id", name,
                *extra,
            ],
            cwd=cwd,
        )  # fmt: skip
        assert self.process.popen.stdout is not None
        read_until(self.process.popen.stdout, b"wsheart ready", 30)
        wait_for_port(self.admin_port)
        # Ready means listening; channels answer 503 until the Redis
        # connections are up a moment later.
        poll_until(lambda: self.health()["channels"]["redis"] == "up", 10, "Redis up in /healthz")

    def health(self) -> Any:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"http://127.0.0.1:{self.admin_port}/healthz", timeout=5) as response:
            return json.loads(response.read())

    def metrics(self) -> str:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"http://127.0.0.1:{self.admin_port}/metrics", timeout=5) as response:
            return response.read().decode()  # type: ignore[no-any-return]

    def api(self, method: str, path: str, body: Any = None) -> Any:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.admin_port}{path}", data=data, method=method, headers={"Authorization": f"Bearer {TOKEN}"}
        )
        with opener.open(request, timeout=10) as response:
            return json.loads(response.read())


class TwoProcessesTests(unittest.TestCase):
    timeout = 90

    def test_channels_are_shared_through_redis(self) -> None:
        """
        A subscriber on A gets what is published through B's HTTP API and
        by a client on B, with one seq sequence; a client that leaves A
        after seq 2 and comes back on B with its position recovers exactly
        what it missed; /healthz of both names the Redis engine, up.
        """
        redis = RedisServer(self)
        token_file = os.path.abspath(self.mktemp())
        with open(token_file, "w") as f:
            f.write(TOKEN + "\n")
        a, b = Node(self, redis.port, token_file, "a"), Node(self, redis.port, token_file, "b")
        for node in (a, b):
            channels = node.health()["channels"]
            self.assertEqual(
                {k: channels[k] for k in ("engine", "redis", "redis_pubsub", "redis_commands", "redis_rollbacks")},
                {"engine": "redis", "redis": "up", "redis_pubsub": "up", "redis_commands": "up", "redis_rollbacks": 0},
            )
            # The presence beat ran a command on connecting.
            self.assertLess(channels["redis_last_success_seconds_ago"], 30)

        with ws_v1(a.port) as on_a, ws_v1(b.port) as on_b:
            on_a.send('{"op":"subscribe","channel":"chat.room"}')
            epoch = receive(on_a, "subscribed")["epoch"]
            on_b.send('{"op":"subscribe","channel":"chat.room","name":"bob"}')
            subscribed = receive(on_b, "subscribed")
            self.assertEqual(subscribed["epoch"], epoch, "one channel, one epoch")
            self.assertEqual(sorted(c["id"].split(".")[0] for c in subscribed["presence"]), ["a", "b"], "members of both processes")
            self.assertEqual(receive(on_a, "join")["client"]["name"], "bob", "a join on B is announced on A")
            self.assertEqual(b.api("POST", "/publish/chat.room", {"from": "api on b"})["seq"], 1)
            on_b.send('{"op":"publish","channel":"chat.room","data":{"from":"client on b"}}')
            got = [receive(on_a, "message") for _ in range(2)]
            self.assertEqual([(m["seq"], m["data"]["from"]) for m in got], [(1, "api on b"), (2, "client on b")])
            self.assertEqual({m["epoch"] for m in got}, {epoch})

        for i in range(3, 5):
            self.assertEqual(a.api("POST", "/publish/chat.room", {"n": i})["seq"], i)
        with ws_v1(b.port) as again:
            again.send(json.dumps({"op": "subscribe", "channel": "chat.room", "since": {"epoch": epoch, "seq": 2}}))
            subscribed = receive(again, "subscribed")
            self.assertEqual((subscribed["recovered"], subscribed["seq"]), (True, 4))
            self.assertEqual([receive(again, "message")["seq"] for _ in range(2)], [3, 4])
            a.api("POST", "/publish/chat.room", {"n": 5})
            self.assertEqual(receive(again, "message")["seq"], 5, "then live, from a publish on the other process")
        history = b.api("GET", "/channels/chat.room/history?since=3")
        self.assertEqual([m["seq"] for m in history["messages"]], [4, 5])
        text = a.metrics()
        self.assertIn("wsheart_channel_engine_up 1.0\n", text)
        self.assertIn("wsheart_channel_publishes_total 3.0\n", text, "A's three API publishes")
        self.assertRegex(text, r"wsheart_channel_engine_command_seconds_count [1-9]", "Redis latency is measured")


    def test_cli_on_one_process_sees_the_other(self) -> None:
        """
        `wsheart connect --channel` on A prints what is published through
        B's HTTP API and what `wsheart publish` sends to B, in seq order.
        """
        import subprocess
        import sys

        from .loopback import REPO, read_line

        redis = RedisServer(self)
        token_file = os.path.abspath(self.mktemp())
        with open(token_file, "w") as f:
            f.write(TOKEN + "\n")
        a, b = Node(self, redis.port, token_file, "a"), Node(self, redis.port, token_file, "b")
        cli = Process(self, [sys.executable, "-m", "wsheart", "connect", f"ws://127.0.0.1:{a.port}/", "--channel", "news"], stdin=subprocess.PIPE, cwd=REPO)
        assert cli.popen.stdout is not None and cli.popen.stderr is not None
        read_until(cli.popen.stderr, b"subscribed to news", 15)
        b.api("POST", "/publish/news", {"text": "from the api"})
        published = subprocess.run(
            [sys.executable, "-m", "wsheart", "publish", f"http://127.0.0.1:{b.admin_port}", "news", "from the command"],
            env={**os.environ, "WSHEART_API_TOKEN": TOKEN, "PYTHONPATH": REPO},
            capture_output=True,
            timeout=30,
        )
        self.assertEqual(published.returncode, 0, published.stderr)
        lines = [json.loads(read_line(cli.popen.stdout, 10)) for _ in range(2)]
        self.assertEqual([(m["seq"], m["data"]) for m in lines], [(1, {"text": "from the api"}), (2, "from the command")])


    def test_a_stopped_process_members_leave_at_once(self) -> None:
        """
        A process stopped the usual way (SIGTERM) drains its clients and
        leaves Redis: the other process's members hear each of its members
        leave at once, not after the presence bound (85 s here), and it
        logs no failed leave on the way out (closing its Redis connections
        failed the drain's leaves in flight).
        """
        import signal

        redis = RedisServer(self)
        token_file = os.path.abspath(self.mktemp())
        with open(token_file, "w") as f:
            f.write(TOKEN + "\n")
        a, b = Node(self, redis.port, token_file, "a"), Node(self, redis.port, token_file, "b")
        with ws_v1(b.port) as watcher:
            watcher.send('{"op":"subscribe","channel":"room","name":"watcher"}')
            receive(watcher, "subscribed")
            members = [ws_v1(a.port) for _ in range(3)]
            for i, ws in enumerate(members):
                self.addCleanup(ws.close)
                ws.send(json.dumps({"op": "subscribe", "channel": "room", "name": f"m{i}"}))
                receive(ws, "subscribed")
            for _ in range(3):
                receive(watcher, "join")
            a.process.stop(signal.SIGTERM, timeout=30)
            left = sorted(receive(watcher, "leave", timeout=5)["client"]["name"] for _ in range(3))
            self.assertEqual(left, ["m0", "m1", "m2"])
            self.assertEqual([row["name"] for row in b.api("GET", "/channels/room/presence")["clients"]], ["watcher"])
        self.assertNotIn(b"critical", a.process.stdout)


class ThreeProcessesOnePortTests(unittest.TestCase):
    timeout = 120

    def test_a_killed_process_is_survived(self) -> None:
        """
        Three processes on one reuseport port share a Redis; clients spread
        over them all subscribe to one channel.  One process is killed
        (SIGKILL: nothing closes): every member it had leaves, announced
        once to the others within the heartbeat bound, and its clients,
        reconnecting to the same port, land on the others and recover
        what was published meanwhile.
        """
        import signal

        redis = RedisServer(self)
        token_file = os.path.abspath(self.mktemp())
        with open(token_file, "w") as f:
            f.write(TOKEN + "\n")
        port = free_port()
        # Heartbeat 1 s / 1 s / 1 miss: a silent process is swept after 3 s.
        # (At 0.5 s / 0.25 s a loaded machine - 30 client threads in this
        # process - answered a ping late now and then, and a survivor was
        # closed as dead, 1011.)
        extra = ["--ping-interval", "1", "--ping-timeout", "1", "--max-missed", "1"]
        nodes = [Node(self, redis.port, token_file, f"n{i}", endpoint=f"reuseport:{port}:interface=127.0.0.1", extra=extra) for i in range(3)]
        clients = []
        for i in range(30):
            ws = ws_v1(port)
            self.addCleanup(ws.close)
            ws.send(json.dumps({"op": "subscribe", "channel": "chat.room", "name": f"user{i}"}))
            subscribed = receive(ws, "subscribed")
            clients.append((ws, subscribed["epoch"], ws.local_address[1]))
        by_node: dict[str, int] = {}
        for node in nodes:
            by_node[node.name] = node.health()["connections"]
        self.assertEqual(sum(by_node.values()), 30)
        self.assertTrue(all(count > 0 for count in by_node.values()), by_node)

        victim = nodes[0]
        victims = {row["id"] for row in victim.api("GET", "/channels/chat.room/presence")["clients"] if row["id"].startswith("n0.")}
        self.assertEqual(len(victims), by_node["n0"])
        victim_peers = {row["peer"] for row in victim.api("GET", "/connections")}
        os.kill(victim.process.pid, signal.SIGKILL)
        victim.process.popen.wait(10)
        nodes[1].api("POST", "/publish/chat.room", {"after": "the kill"})

        survivors = [ws for ws, _, local in clients if f"tcp4:127.0.0.1:{local}" not in victim_peers]
        self.assertEqual(len(survivors), 30 - len(victims))
        for ws in survivors:
            self.assertEqual(receive(ws, "message")["data"], {"after": "the kill"})
        # Each survivor hears every member of the dead process leave, once.
        watcher = survivors[0]
        left: list[str] = []
        deadline_frames = 0
        while len(left) < len(victims) and deadline_frames < 200:
            frame = json.loads(watcher.recv(timeout=10))
            deadline_frames += 1
            if frame["op"] == "leave":
                left.append(frame["client"]["id"])
        self.assertEqual(sorted(left), sorted(victims), "every member of the killed process left, once")
        remaining = {row["id"] for row in nodes[1].api("GET", "/channels/chat.room/presence")["clients"]}
        self.assertFalse(remaining & victims)
        # A client of the killed process comes back on the same port and recovers.
        back = ws_v1(port)
        self.addCleanup(back.close)
        epoch = clients[0][1]
        back.send(json.dumps({"op": "subscribe", "channel": "chat.room", "since": {"epoch": epoch, "seq": 0}}))
        subscribed = receive(back, "subscribed")
        self.assertEqual((subscribed["recovered"], subscribed["seq"]), (True, 1))
        self.assertEqual(receive(back, "message")["data"], {"after": "the kill"})
