"""
Integration test of the heartbeat under the server's own overload, over
real loopback sockets: a wsheart server whose handler works 3 ms on each of
the 200 messages a chatty peer sends in one write every second, so that
once a second one read of the reactor takes 0.6 s (more than the ping
timeout),
with peers in another process that answer every ping at once - and a few
that never do.
No healthy peer may be declared dead (their pongs sit in the kernel while
the reactor is busy: they count as answers); the silent ones must still be
found dead within the bound plus the server's own measured lag.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from twisted.internet import reactor, threads
from twisted.trial import unittest

from wsheart.handler import EchoHandler
from wsheart.health import LagMonitor
from wsheart.heartbeat import HeartbeatSettings
from wsheart.hub import Hub
from wsheart.protocol import ServerFactory

from .loopback import Process, async_test, listen, read_until, sleep, wait_until

HERE = os.path.dirname(os.path.abspath(__file__))


class OverloadTests(unittest.TestCase):
    timeout = 60

    @async_test
    async def test_no_healthy_peer_dies_of_the_servers_lateness(self) -> None:
        """
        200 answering peers (one of them chatty) and 3 silent ones,
        heartbeat 1 s / 0.5 s / 1 miss (no second chance), while every
        second a read loop of the server's reactor takes about 0.6 s of
        handler work, for 8 s: none of the 200 is declared dead - a pong that
        arrived during a read loop is read before its check is judged - all
        3 silent ones are, each within interval * max_missed + timeout plus
        the worst reactor lag seen, and the checks that found no answer
        before the reactor read its sockets are counted.
        """
        settings = HeartbeatSettings(interval=1.0, timeout=0.5, max_missed=1)
        class Worker(EchoHandler):
            """
            The server's own work: 3 ms of CPU for each "work" message
            (the reactor reads nothing while it runs).
            """

            working = False

            def message_received(self, connection: object, message: object) -> None:
                if message == "work" and self.working:
                    end = time.monotonic() + 0.003
                    while time.monotonic() < end:
                        pass

        worker = Worker()
        factory = ServerFactory(hub=Hub(reactor), clock=reactor, heartbeat_settings=settings, handler=worker)
        port = (await listen(self, factory)).getHost().port
        # Each death's time to detect (seconds from the peer's last sign of
        # life), as the server measures it - recorded from the start: a
        # silent peer may die while the others still connect.
        detected: list[float] = []
        observe = factory.metrics.time_to_detect.observe
        factory.metrics.time_to_detect.observe = lambda value: (detected.append(value), observe(value))  # type: ignore[method-assign]

        peers = Process(
            self,
            # Answers leave 50 ms after their ping, as over a network: some
            # are always in flight when a work burst begins, and land unread
            # behind it (with instant answers that took a lucky phase).
            [sys.executable, os.path.join(HERE, "pingpeers.py"), str(port), "203", "3", "1", "40", "0.05"],
            stdin=subprocess.PIPE,
        )
        await threads.deferToThread(read_until, peers.popen.stdout, b"ready", 20)
        await wait_until(self, lambda: len(factory.hub) + int(factory.metrics.dead_peers._value.get()) == 203)

        lag = LagMonitor(reactor, period=0.1)
        lag.start()
        self.addCleanup(lag.stop)

        worker.working = True
        await sleep(8.0)
        worker.working = False

        dead = factory.metrics.dead_peers._value.get()
        self.assertEqual(dead, 3, "exactly the three silent peers")
        self.assertEqual(len(factory.hub), 200, "every answering peer is still connected")
        self.assertEqual(len(detected), 3)
        self.assertLessEqual(max(detected), settings.death_bound + lag.max_lag + 0.3, (detected, lag.max_lag))
        self.assertGreater(lag.max_lag, 0.4, "the overload made the reactor late")
        self.assertGreater(factory.cadence.forgiven, 0, "some answers were only read after their check")
        peers.popen.stdin.close()
