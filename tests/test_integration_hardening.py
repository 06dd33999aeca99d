"""
Integration tests of defects found by attacking the daemon, reproduced the
way they were found: over real loopback sockets by clients wsheart did not
write (a raw socket, the websockets library), and through the shipped
C{wsheart connect} command against a real C{twistd wsheart}.  The unit
tests beside each module pin the same defects deterministically; these
prove the fixes hold on a real TCP stack.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from typing import Any

import websockets.sync.client
from twisted.internet import reactor, threads
from twisted.trial import unittest

from wsheart.channels import Broker, serve
from wsheart.metrics import ServerMetrics
from wsheart.hub import Hub
from wsheart.protocol import ServerFactory

from .loopback import (
    REPO,
    Process,
    async_test,
    free_port,
    listen,
    read_line,
    read_until,
    twistd_command,
    upgrade,
    wait_for_port,
    wait_until,
)


def masked_frame(opcode: int, payload: bytes) -> bytes:
    mask = os.urandom(4)
    assert len(payload) < 126
    return bytes((0x80 | opcode, 0x80 | len(payload))) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class RealSocketTests(unittest.TestCase):
    """
    A wsheart server in this process; clients in threads.
    """

    timeout = 60

    @async_test
    async def test_ping_flood_from_a_peer_that_never_reads(self) -> None:
        """
        Defect 2: a raw peer that sends ping frames and never reads is
        closed as a slow reader (1013) once the pongs queued for it pass
        --max-send-buffer, instead of growing the daemon's memory.
        """
        factory = ServerFactory(hub=Hub(reactor), clock=reactor, max_send_buffer=256 * 1024)
        port = (await listen(self, factory)).getHost().port

        def flood() -> int:
            sock = socket.socket()
            # A small receive window: the kernel holds little, the daemon
            # has to queue the rest.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.settimeout(10)
            sock.connect(("127.0.0.1", port))
            upgrade(sock)
            batch = masked_frame(0x9, b"p" * 125) * 500
            sent = 0
            try:
                # At most 200 MB of pings: far past any kernel buffer.
                while sent < 200 * 1024 * 1024:
                    sock.sendall(batch)
                    sent += len(batch)
            except OSError:
                pass  # the daemon closed us: what this test waits for
            finally:
                sock.close()
            return sent

        sent = await threads.deferToThread(flood)
        closed = factory.metrics.connections_closed.labels(cause="slow", code="1013")
        await wait_until(self, lambda: closed._value.get() == 1, timeout=10)
        self.assertLess(sent, 200 * 1024 * 1024, "never closed: the pongs queued without bound")
        self.assertEqual(len(factory.hub), 0)

    @async_test
    async def test_a_16_mib_echo_to_a_reader_at_a_modest_pace(self) -> None:
        """
        A 16 MiB message (legal under --max-message-size 32 MiB, twice the
        default 8 MiB --max-send-buffer) is echoed whole to a raw peer that
        reads it at about 8 MiB/s and sends a ping meanwhile: no 1013, the
        echo arrives intact, then the pong.
        """
        factory = ServerFactory(hub=Hub(reactor), clock=reactor, max_message_size=32 * 1024 * 1024)
        port = (await listen(self, factory)).getHost().port
        payload = os.urandom(8 * 1024 * 1024).hex().encode()  # 16 MiB of text

        def echo() -> tuple[bytes, bytes]:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            sock.settimeout(20)
            sock.connect(("127.0.0.1", port))
            upgrade(sock)
            mask = os.urandom(4)
            masked = (int.from_bytes(payload, "big") ^ int.from_bytes(mask * (len(payload) // 4), "big")).to_bytes(len(payload), "big")
            sock.sendall(b"\x81\xff" + len(payload).to_bytes(8, "big") + mask + masked)
            received = b""
            pinged = False
            deadline = time.monotonic() + 20
            while len(received) < 10 + len(payload) + 3 and time.monotonic() < deadline:
                chunk = sock.recv(128 * 1024)
                if not chunk:
                    break
                received += chunk
                time.sleep(0.015)  # about 8 MiB/s at most
                if not pinged and len(received) > 1024 * 1024:
                    sock.sendall(masked_frame(0x9, b"still here"))
                    pinged = True
            sock.close()
            return received[:10], received[10:]

        head, rest = await threads.deferToThread(echo)
        self.assertEqual(head, b"\x81\x7f" + len(payload).to_bytes(8, "big"), "the echo's frame header")
        self.assertEqual(rest[: len(payload)], payload)
        # Then the pong (a heartbeat ping of the server's may follow it).
        self.assertEqual(rest[len(payload) : len(payload) + 12], b"\x8a\x0astill here", "then the pong")
        self.assertEqual(factory.metrics.connections_closed.labels(cause="slow", code="1013")._value.get(), 0)

    @async_test
    async def test_lone_surrogate_over_wsheart_v1(self) -> None:
        """
        Defect 1: the websockets library sends a publish whose data spells
        a lone surrogate; it gets a 400 error frame and its connection
        stays usable, while another subscriber is not disturbed.
        """
        broker = Broker(reactor)
        hub, metrics = Hub(reactor), ServerMetrics()
        factory = ServerFactory(hub=hub, clock=reactor, subprotocols=serve(broker, hub, metrics), metrics=metrics)
        port = (await listen(self, factory)).getHost().port

        def talk() -> list[Any]:
            url = f"ws://127.0.0.1:{port}/"
            with websockets.sync.client.connect(url, subprotocols=["wsheart.v1"], proxy=None, open_timeout=5) as other:
                other.send('{"op":"subscribe","channel":"chat.x"}')
                json.loads(other.recv(timeout=5))
                with websockets.sync.client.connect(url, subprotocols=["wsheart.v1"], proxy=None, open_timeout=5) as ws:
                    ws.send('{"op":"publish","channel":"chat.x","data":"\\ud800","ref":1}')
                    error = json.loads(ws.recv(timeout=5))
                    ws.send('{"op":"publish","channel":"chat.x","data":"ok"}')
                    published = json.loads(ws.recv(timeout=5))
                message = json.loads(other.recv(timeout=5))
                return [error, published, message]

        error, published, message = await threads.deferToThread(talk)
        self.assertEqual((error["op"], error["code"], error.get("ref")), ("error", 400, 1))
        self.assertEqual(published["op"], "published")
        self.assertEqual((message["op"], message["data"]), ("message", "ok"), "the other subscriber saw only the good one")


class CommandTests(unittest.TestCase):
    """
    The shipped commands as subprocesses, stopped by their pids.
    """

    def test_connect_skips_a_line_too_large_and_sends_the_rest(self) -> None:
        """
        Defect 8: a stdin line over the message limit is reported and
        skipped; the lines after it are still echoed; the exit status (1)
        says a line was not sent.
        """
        port = free_port()
        daemon = Process(
            self,
            twistd_command() + ["-n", "--pidfile=", "wsheart", "--endpoint", f"tcp:{port}:interface=127.0.0.1"],
            cwd=self.mktemp_dir(),
        )
        wait_for_port(port)
        self.assertIsNone(daemon.popen.poll())
        cli = Process(
            self,
            [sys.executable, "-m", "wsheart", "connect", f"ws://127.0.0.1:{port}/", "--max-message-size", "1000"],
            stdin=subprocess.PIPE,
            cwd=REPO,
        )
        assert cli.popen.stdin is not None and cli.popen.stdout is not None and cli.popen.stderr is not None
        read_until(cli.popen.stderr, b"open, RTT", 10)
        cli.popen.stdin.write(b"before\n" + b"x" * 5000 + b"\nafter\n")
        cli.popen.stdin.flush()
        self.assertEqual(read_line(cli.popen.stdout, 10), b"before\n")
        self.assertEqual(read_line(cli.popen.stdout, 10), b"after\n")
        cli.popen.stdin.close()
        status = cli.popen.wait(20)
        cli.stop()
        self.assertIn(b"a stdin line of 5000 bytes is over the 1000-byte message limit: not sent", cli.stderr)
        self.assertEqual(status, 1)

    def mktemp_dir(self) -> str:
        path = self.mktemp()
        os.makedirs(path)
        return path
