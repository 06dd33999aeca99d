"""
The Redis engine under faults, the way an operator's bad day goes: a real
redis-server and two real C{twistd wsheart --redis} processes on
127.0.0.1, subscribers (the websockets library, wsheart.v1) that keep a
ledger of every frame, and a publisher that keeps a ledger of every
acknowledgement.  Each test injects one fault while messages flow, then
judges the ledgers:

  - no position acknowledged or delivered for two different messages;
  - every subscriber got its messages in order, each once: a message is
    the next seq of what it has, unless a "subscribed" frame with
    C{recovered: false} told it to start again from a new position;
  - every message acknowledged after a subscriber subscribed reached it,
    or it was told (such a frame came after the acknowledgement): zero
    silent losses.

Each test writes its figures (acknowledged, delivered, told lost) to
C{$WSHEART_ARTIFACTS/redis-faults.txt} when that is set.  Every process
is stopped by its pid.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import struct
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Optional

import websockets.sync.client
from twisted.trial import unittest

from .loopback import Process, RedisServer, free_port, poll_until, twistd_command, wait_for_port

TOKEN = "redis-faults-test-token-0123456"
CHANNEL = "ledger"


class Daemon:
    """
    One C{twistd -n wsheart --redis ...}, its log in a file (a pipe nobody
    reads would fill up and stall it), stopped by its pid.
    """

    def __init__(self, test: unittest.TestCase, redis_port: int, token_file: str, name: str, extra: tuple[str, ...] = ()) -> None:
        self.name = name
        self.port, self.admin_port = free_port(), free_port()
        directory = os.path.abspath(test.mktemp())
        os.makedirs(directory)
        self.log_path = os.path.join(directory, "wsheart.log")
        self.log = open(self.log_path, "wb")
        test.addCleanup(self.log.close)
        self.process = Process(
            test,
            twistd_command()
            + [
                "-n", "--pidfile=", "wsheart",
                "--endpoint", f"tcp:{self.port}:interface=127.0.0.1",
                "--admin-endpoint", f"tcp:{self.admin_port}:interface=127.0.0.1",
                "--api-token-file", token_file,
                "--redis", f"redis://127.0.0.1:{redis_port}/0",
                "--redis-timeout", "1",
                "--node-id", name,
                # Presence bound: a silent process is swept after 3 s.
                "--ping-interval", "1", "--ping-timeout", "1", "--max-missed", "1",
                # 12 s of messages: a process that comes back from a fault
                # seconds after the other (a loaded machine) still finds
                # what it missed in history, so where Redis kept its data
                # no subscriber may be told of a loss.
                "--history-size", "1000",
                *extra,
            ],
            cwd=directory,
            stdout=self.log,
            stderr=subprocess_stdout(),
        )  # fmt: skip

    def ready(self) -> None:
        wait_for_port(self.admin_port, 30)
        poll_until(lambda: self.health()["channels"]["redis"] == "up", 15, f"Redis up in {self.name}'s /healthz")

    def logged(self) -> str:
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def _open(self, request: Any, timeout: float) -> Any:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(request, timeout=timeout) as response:
            return json.loads(response.read())

    def health(self) -> Any:
        return self._open(f"http://127.0.0.1:{self.admin_port}/healthz", 5)

    def api(self, method: str, path: str, body: Any = None, headers: Optional[dict[str, str]] = None, timeout: float = 5) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.admin_port}{path}",
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {TOKEN}", **(headers or {})},
        )
        return self._open(request, timeout)

    def members(self) -> set[str]:
        return {row["id"] for row in self.api("GET", f"/channels/{CHANNEL}/presence")["clients"]}


def subprocess_stdout() -> int:
    import subprocess

    return subprocess.STDOUT


@dataclass
class Ledger:
    """
    What one subscriber saw, in order: C{("subscribed", epoch, seq,
    recovered, time)} and C{("message", epoch, seq, data, time)}.
    """

    name: str
    entries: list[tuple[Any, ...]] = field(default_factory=list)
    joined_at: Optional[float] = None  # its first "subscribed"
    reconnects: int = 0


class Subscriber(threading.Thread):
    """
    A wsheart.v1 subscriber that records every frame.  With C{chaos}, it
    aborts its TCP connection (RST) every 0.2-1 s and comes back, on
    either daemon, with the position it had, as a client library does.
    """

    def __init__(self, name: str, daemons: list[Daemon], home: int, stop: threading.Event, chaos: bool = False) -> None:
        super().__init__(name=name, daemon=True)
        self.ledger = Ledger(name)
        self.daemons = daemons
        self.home = home
        self.stop_event = stop
        self.chaos = chaos
        self.position: Optional[tuple[str, int]] = None
        # Joins and leaves heard: (op, name).
        self.presence: list[tuple[str, Optional[str]]] = []
        self.error: Optional[BaseException] = None
        self.subscribed = threading.Event()

    def run(self) -> None:
        try:
            while not self.stop_event.is_set():
                daemon = self.daemons[self.home if not self.chaos else random.randrange(len(self.daemons))]
                try:
                    self._session(daemon)
                except (OSError, websockets.exceptions.WebSocketException):
                    time.sleep(0.1)
                self.ledger.reconnects += 1
        except BaseException as e:  # pragma: no cover - reported by the test
            self.error = e

    def _session(self, daemon: Daemon) -> None:
        with websockets.sync.client.connect(
            f"ws://127.0.0.1:{daemon.port}/", subprotocols=["wsheart.v1"], proxy=None, open_timeout=5,
            ping_interval=None, close_timeout=0.5,
        ) as ws:  # fmt: skip
            subscribe: dict[str, Any] = {"op": "subscribe", "channel": CHANNEL, "name": self.ledger.name}
            if self.position is not None:
                subscribe["since"] = {"epoch": self.position[0], "seq": self.position[1]}
            ws.send(json.dumps(subscribe))
            abort_at = time.monotonic() + random.uniform(0.2, 1.0) if self.chaos else None
            while not self.stop_event.is_set():
                if abort_at is not None and time.monotonic() > abort_at:
                    abort(ws)
                    return
                try:
                    text = ws.recv(timeout=0.1)
                except TimeoutError:
                    continue
                self._record(json.loads(text))

    def _record(self, frame: dict[str, Any]) -> None:
        now = time.monotonic()
        if frame.get("op") == "subscribed" and frame.get("channel") == CHANNEL:
            self.ledger.entries.append(("subscribed", frame["epoch"], frame["seq"], frame.get("recovered", False), now))
            self.position = (frame["epoch"], frame["seq"])
            if self.ledger.joined_at is None:
                self.ledger.joined_at = now
            self.subscribed.set()
        elif frame.get("op") == "message" and frame.get("channel") == CHANNEL:
            self.ledger.entries.append(("message", frame["epoch"], frame["seq"], json.dumps(frame["data"], sort_keys=True), now))
            self.position = (frame["epoch"], frame["seq"])
        elif frame.get("op") in ("join", "leave"):
            self.presence.append((frame["op"], frame["client"].get("name")))
        elif frame.get("op") == "error" and frame.get("code") == 503:
            # The subscribe met Redis down: ask again, as clients do.
            raise OSError("subscribe refused with 503")


def abort(ws: Any) -> None:
    """
    Close with a TCP reset, as a dropped network does: no close frame.
    """
    sock = ws.socket
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class Publisher(threading.Thread):
    """
    Publishes numbered messages through the daemons' HTTP API, each with
    an C{Idempotency-Key}, alternating daemons; a failed publish is tried
    again with the same key on the other daemon until it is acknowledged
    (or the run ends).  Records every acknowledgement.
    """

    def __init__(self, daemons: list[Daemon], stop: threading.Event, interval: float = 0.01) -> None:
        super().__init__(name="publisher", daemon=True)
        self.daemons = daemons
        self.stop_event = stop
        self.interval = interval
        # (epoch, seq, data JSON, acknowledged at), in acknowledgement order.
        self.acks: list[tuple[str, int, str, float]] = []
        self.failures = 0
        self.unacknowledged = 0
        self.error: Optional[BaseException] = None

    def run(self) -> None:
        n = 0
        try:
            while not self.stop_event.is_set():
                n += 1
                data = {"n": n}
                for attempt in range(1000):
                    if self.stop_event.is_set():
                        self.unacknowledged += 1
                        break
                    daemon = self.daemons[(n + attempt) % len(self.daemons)]
                    try:
                        reply = daemon.api("POST", f"/publish/{CHANNEL}", data, {"Idempotency-Key": f"m{n}"}, timeout=3)
                    except (OSError, urllib.error.URLError, ValueError):
                        self.failures += 1
                        time.sleep(0.05)
                        continue
                    self.acks.append((reply["epoch"], reply["seq"], json.dumps(data, sort_keys=True), time.monotonic()))
                    break
                time.sleep(self.interval)
        except BaseException as e:  # pragma: no cover - reported by the test
            self.error = e


@dataclass
class Verdict:
    acknowledged: int = 0
    delivered: int = 0
    told_lost: int = 0
    silent_lost: int = 0
    reused_positions: int = 0
    out_of_order: int = 0
    duplicates: int = 0
    told: int = 0  # "subscribed ... recovered: false" after the first
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"acknowledged {self.acknowledged}, delivered {self.delivered}, told lost {self.told_lost}, "
            f"silently lost {self.silent_lost}, positions reused {self.reused_positions}, "
            f"out of order {self.out_of_order}, duplicates {self.duplicates}, notices {self.told}"
        )


def judge(acks: list[tuple[str, int, str, float]], ledgers: list[Ledger]) -> Verdict:
    """
    The verdict on a run: see the module's docstring.
    """
    verdict = Verdict(acknowledged=len(acks))
    known: dict[tuple[str, int], str] = {}
    for epoch, seq, data, _ in acks:
        if known.setdefault((epoch, seq), data) != data:
            verdict.reused_positions += 1
            verdict.problems.append(f"({epoch}, {seq}) acknowledged for {known[(epoch, seq)]} and for {data}")
    for ledger in ledgers:
        delivered: dict[tuple[str, int], str] = {}
        at: Optional[tuple[str, int]] = None
        notices: list[float] = []
        for entry in ledger.entries:
            if entry[0] == "subscribed":
                _, epoch, seq, recovered, when = entry
                if at is not None and not recovered:
                    notices.append(when)
                    verdict.told += 1
                if recovered and at is not None and (epoch, seq) < at and epoch == at[0]:
                    verdict.problems.append(f"{ledger.name}: recovered to {epoch}/{seq}, behind {at}")
                if at is None or not recovered or at[0] != epoch:
                    at = (epoch, seq)
                continue
            _, epoch, seq, data, when = entry
            if known.get((epoch, seq), data) != data or delivered.get((epoch, seq), data) != data:
                verdict.reused_positions += 1
                verdict.problems.append(f"{ledger.name}: ({epoch}, {seq}) delivered as {data}, acknowledged as {known.get((epoch, seq))}")
            if (epoch, seq) in delivered:
                verdict.duplicates += 1
                verdict.problems.append(f"{ledger.name}: ({epoch}, {seq}) twice")
            elif at is None or epoch != at[0] or seq != at[1] + 1:
                verdict.out_of_order += 1
                verdict.problems.append(f"{ledger.name}: ({epoch}, {seq}) after {at}")
            delivered[(epoch, seq)] = data
            at = (epoch, seq)
        joined = ledger.joined_at
        for epoch, seq, data, acknowledged_at in acks:
            if joined is None or acknowledged_at < joined:
                continue  # acknowledged before it subscribed
            if (epoch, seq) in delivered:
                verdict.delivered += 1
            elif any(n > acknowledged_at for n in notices):
                verdict.told_lost += 1
            elif ledger.entries and ledger.entries[0][1] == epoch and seq <= ledger.entries[0][2]:
                continue  # before its first position: it subscribed after this one
            else:
                verdict.silent_lost += 1
                if verdict.silent_lost <= 10:
                    verdict.problems.append(f"{ledger.name}: ({epoch}, {seq}) {data} never delivered, never told")
    return verdict


class FaultCase(unittest.TestCase):
    """
    One Redis, two daemons (A and B), four subscribers on each, and a
    publisher of about 80 messages/s alternating between them.
    """

    timeout = 120
    redis_args: tuple[str, ...] = ()
    subscribers_per_daemon = 4
    chaos = False

    def setUp(self) -> None:
        self.redis = RedisServer(self, *self.redis_args)
        token_file = os.path.abspath(self.mktemp())
        with open(token_file, "w") as f:
            f.write(TOKEN + "\n")
        self.daemons = [Daemon(self, self.redis.port, token_file, name) for name in ("a", "b")]
        for daemon in self.daemons:
            daemon.ready()
        self.stop_subscribers = threading.Event()
        self.stop_publishing = threading.Event()
        self.addCleanup(self.stop_publishing.set)
        self.addCleanup(self.stop_subscribers.set)
        self.subscribers = [
            Subscriber(f"s{home}.{i}", self.daemons, home, self.stop_subscribers, chaos=self.chaos)
            for home in range(len(self.daemons))
            for i in range(self.subscribers_per_daemon)
        ]
        for subscriber in self.subscribers:
            subscriber.start()
        for subscriber in self.subscribers:
            self.assertTrue(subscriber.subscribed.wait(10), f"{subscriber.name} subscribed")
        self.publisher = Publisher(self.daemons, self.stop_publishing)
        self.publisher.start()

    def flowing(self, seconds: float) -> None:
        """
        Let messages flow for C{seconds}, checking that some are acknowledged.
        """
        before = len(self.publisher.acks)
        time.sleep(seconds)
        self.assertGreater(len(self.publisher.acks), before, "messages are acknowledged")

    def finish(self, label: str) -> Verdict:
        """
        Stop publishing, wait until every subscriber has the last
        acknowledged message (or 15 s), stop them and judge.
        """
        self.stop_publishing.set()
        self.publisher.join(10)
        self.assertIsNone(self.publisher.error)
        last = self.publisher.acks[-1]
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if all(s.position == (last[0], last[1]) for s in self.subscribers):
                break
            time.sleep(0.1)
        time.sleep(0.3)  # anything late would show as a duplicate
        self.stop_subscribers.set()
        for subscriber in self.subscribers:
            subscriber.join(10)
            self.assertIsNone(subscriber.error)
        verdict = judge(self.publisher.acks, [s.ledger for s in self.subscribers])
        report = f"{label}: {verdict.line()}; publish attempts failed {self.publisher.failures}"
        artifacts = os.environ.get("WSHEART_ARTIFACTS")
        if artifacts:
            os.makedirs(artifacts, exist_ok=True)
            with open(os.path.join(artifacts, "redis-faults.txt"), "a") as f:
                f.write(report + "\n")
        problems = "\n".join(verdict.problems[:20])
        self.assertEqual(verdict.reused_positions, 0, f"{report}\n{problems}")
        self.assertEqual(verdict.silent_lost, 0, f"{report}\n{problems}")
        self.assertEqual(verdict.out_of_order, 0, f"{report}\n{problems}")
        self.assertEqual(verdict.duplicates, 0, f"{report}\n{problems}")
        self.assertGreater(verdict.delivered, 0, report)
        return verdict

    def restart_redis(self, keep: Optional[str] = None) -> None:
        """
        SIGKILL Redis and start it again on its port: empty, or from the
        file C{keep} (an RDB snapshot copied aside earlier).
        """
        self.redis.kill()
        for name in ("dump.rdb",):
            path = os.path.join(self.redis.directory, name)
            if os.path.exists(path):
                os.remove(path)
        if keep is not None:
            shutil.copy(keep, os.path.join(self.redis.directory, "dump.rdb"))
        time.sleep(0.5)
        self.redis.start()

    def redis_command(self, *args: str, wait: bool = True) -> str:
        """
        One command to Redis on a connection of the test's own; its reply's
        first line (C{+OK}, C{:3}, C{-ERR ...}).  Without C{wait}, the
        command is sent and its reply not waited for (C{DEBUG SLEEP}).
        """
        return redis_command(self.redis.port, *args, wait=wait)


def redis_command(port: int, *args: str, wait: bool = True) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        if not wait:
            sock.sendall(encode_command(args))
            time.sleep(0.1)  # read by Redis before the close
            return ""
        return resp(sock, *args)


def encode_command(args: tuple[str, ...]) -> bytes:
    return (f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)).encode()


class RedisRestartTests(FaultCase):
    def test_killed_and_restarted_empty(self) -> None:
        """
        Redis SIGKILLed and started again with nothing: the channel gets a
        new epoch, every subscriber is told (C{recovered: false}), nothing
        is lost silently, and presence has every member again.
        """
        self.flowing(1.5)
        members = self.daemons[0].members()
        self.assertEqual(len(members), 2 * self.subscribers_per_daemon)
        self.restart_redis()
        self.flowing(2.5)
        poll_until(lambda: self.daemons[1].members() == members, 10, "every member back in presence")
        verdict = self.finish("Redis killed, restarted empty")
        self.assertGreaterEqual(verdict.told, len(self.subscribers), "each subscriber told of the new epoch")

    def test_restarted_from_an_older_snapshot(self) -> None:
        """
        Redis restored from a snapshot taken a while ago: the channel's seq
        went back under the same epoch.  The daemons find it behind what
        they had seen and start a new epoch: no position is acknowledged
        twice (151 were), and every subscriber is told rather than left
        to miss what is published after the restore.
        """
        self.flowing(1.0)
        self.assertEqual(self.redis_command("SAVE"), "+OK")
        snapshot = os.path.join(self.redis.directory, "older.rdb")
        shutil.copy(os.path.join(self.redis.directory, "dump.rdb"), snapshot)
        self.flowing(1.5)
        self.restart_redis(keep=snapshot)
        self.flowing(2.5)
        verdict = self.finish("Redis restarted from an older RDB snapshot")
        self.assertGreaterEqual(verdict.told, len(self.subscribers), "each subscriber told of the new epoch")
        self.assertTrue(
            any("Redis lost acknowledged messages" in d.logged() for d in self.daemons), "the rollback is logged"
        )


class RedisAppendOnlyTests(FaultCase):
    # Every write is on disk before it is acknowledged.
    redis_args = ("--appendonly", "yes", "--appendfsync", "always")

    def test_killed_and_restarted_from_its_append_only_file(self) -> None:
        """
        Redis SIGKILLed and started again from its append-only file: it
        has every acknowledged message, so every subscriber gets every
        one, in order, and none is told of a loss (processes that came
        back seconds apart told some "history lost" wrongly).
        """
        self.flowing(1.5)
        self.restart_redis()
        self.flowing(2.5)
        verdict = self.finish("Redis killed, restarted from its AOF")
        self.assertEqual((verdict.told, verdict.told_lost), (0, 0), verdict.line())


class RedisStallTests(FaultCase):
    def test_frozen(self) -> None:
        """
        Redis frozen (SIGSTOP) for 3 s, three times the daemons' Redis
        timeout: publishes fail and are retried, and when it thaws every
        subscriber gets every acknowledged message, none told of a loss.
        """
        self.flowing(1.0)
        os.kill(self.redis.pid, signal.SIGSTOP)
        self.addCleanup(os.kill, self.redis.pid, signal.SIGCONT)
        time.sleep(3)
        os.kill(self.redis.pid, signal.SIGCONT)
        self.flowing(2.0)
        verdict = self.finish("Redis frozen 3 s (SIGSTOP)")
        self.assertEqual((verdict.told, verdict.told_lost), (0, 0), verdict.line())

    def test_busy_in_a_slow_command(self) -> None:
        """
        Redis busy for 3 s in one command (C{DEBUG SLEEP}): the same.
        """
        self.flowing(1.0)
        self.redis_command("DEBUG", "SLEEP", "3", wait=False)
        time.sleep(3)
        self.flowing(2.0)
        verdict = self.finish("Redis busy 3 s (DEBUG SLEEP)")
        self.assertEqual((verdict.told, verdict.told_lost), (0, 0), verdict.line())


class RedisConnectionTests(FaultCase):
    def test_connections_killed(self) -> None:
        """
        C{CLIENT KILL} of the daemons' pub/sub connections, then of their
        command connections: each comes back and catches up, nothing is
        lost or told.
        """
        self.flowing(1.0)
        self.assertRegex(self.redis_command("CLIENT", "KILL", "TYPE", "pubsub"), r"^:[1-9]")
        self.flowing(1.0)
        self.assertRegex(self.redis_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"), r"^:[1-9]")
        self.flowing(2.0)
        verdict = self.finish("CLIENT KILL of pub/sub, then of command connections")
        self.assertEqual((verdict.told, verdict.told_lost), (0, 0), verdict.line())

    def test_maxclients_reached_while_reconnecting(self) -> None:
        """
        The daemons' connections are killed while Redis is at
        C{maxclients}: their reconnects are refused for 2 s (txredisapi
        stopped trying for good there, and the engine stayed down while
        publishes still answered 200); then there is room, and both
        engines come back and catch up.
        """
        self.flowing(1.0)
        with socket.create_connection(("127.0.0.1", self.redis.port), timeout=10) as control:
            self.assertEqual(resp(control, "CONFIG", "SET", "maxclients", "1"), "+OK")
            self.assertRegex(resp(control, "CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"), r"^:[1-9]")
            self.assertRegex(resp(control, "CLIENT", "KILL", "TYPE", "pubsub"), r"^:[1-9]")
            time.sleep(2)
            for daemon in self.daemons:
                self.assertEqual(daemon.health()["channels"]["redis"], "down", "refused")
            self.assertEqual(resp(control, "CONFIG", "SET", "maxclients", "10000"), "+OK")
        for daemon in self.daemons:
            poll_until(lambda: daemon.health()["channels"]["redis"] == "up", 10, f"{daemon.name}'s engine back")
        self.flowing(2.0)
        verdict = self.finish("maxclients reached while the connections reconnect")
        self.assertEqual((verdict.told, verdict.told_lost), (0, 0), verdict.line())


class DaemonPausedTests(FaultCase):
    def test_paused_past_the_presence_bound(self) -> None:
        """
        Daemon A frozen (SIGSTOP) for 5 s, past the 3 s presence bound: B
        sweeps A's members (their leaves announced), and when A thaws it
        learns it was swept and registers them again (they were missing
        for good); messages reach everyone, or they are told.
        """
        a, b = self.daemons
        # One more member on A, who leaves after the thaw, and one on B
        # who listens for that leave.
        leaving, listening = threading.Event(), threading.Event()
        self.addCleanup(leaving.set)
        self.addCleanup(listening.set)
        leaver = Subscriber("leaver", self.daemons, 0, leaving)
        watcher = Subscriber("watcher", self.daemons, 1, listening)
        for extra in (leaver, watcher):
            extra.start()
            self.assertTrue(extra.subscribed.wait(10))
        self.flowing(1.0)
        everyone = b.members()
        self.assertEqual(len(everyone), 2 * self.subscribers_per_daemon + 2)
        os.kill(a.process.pid, signal.SIGSTOP)
        self.addCleanup(lambda: a.process.popen.poll() is None and os.kill(a.process.pid, signal.SIGCONT))
        poll_until(lambda: len(b.members()) == self.subscribers_per_daemon + 1, 10, "A's members swept")
        time.sleep(1)
        os.kill(a.process.pid, signal.SIGCONT)
        # By count: a member whose connection A closed on thawing comes back
        # under a new id.
        poll_until(lambda: len(b.members()) == len(everyone), 10, "A's members back in presence")
        heard = len(watcher.presence)
        leaving.set()
        leaver.join(10)
        poll_until(lambda: ("leave", "leaver") in watcher.presence[heard:], 10, "a leave after the thaw announced")
        listening.set()
        watcher.join(10)
        self.flowing(1.0)
        self.finish("daemon A frozen 5 s (SIGSTOP), past the presence bound")


class ChaosTests(FaultCase):
    """
    Ten subscribers aborting their TCP connections every 0.2-1 s and
    coming back on either daemon with their position, while keyed
    publishes are retried on the other daemon, and Redis's connections are
    killed once: every subscriber gets every message once and in order
    (it recovers what it missed), or it is told.
    """

    chaos = True
    subscribers_per_daemon = 5

    def test_aborting_subscribers_across_two_daemons(self) -> None:
        self.flowing(3.0)
        self.redis_command("CLIENT", "KILL", "TYPE", "pubsub")
        self.flowing(3.0)
        self.finish("chaos: 10 subscribers aborting TCP every 0.2-1 s across two daemons")
        reconnects = sum(s.ledger.reconnects for s in self.subscribers)
        self.assertGreater(reconnects, 30, "the subscribers came and went")


def resp(sock: socket.socket, *args: str) -> str:
    """
    One command on an open connection; its reply's first line.
    """
    sock.sendall(encode_command(args))
    reply = b""
    while b"\r\n" not in reply:
        chunk = sock.recv(4096)
        if not chunk:
            break
        reply += chunk
    return reply.split(b"\r\n", 1)[0].decode()
