"""
Tests for wsheart.client's ReconnectingClientService, connected in memory
to a real wsheart server factory, on a Clock: the reconnect schedule, the
stable reset, server hints, terminal refusals, and heartbeat death.
"""

from __future__ import annotations

import json
from typing import Any, Optional

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import defer
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.test import iosim
from twisted.trial import unittest
from zope.interface import implementer

from wsheart import client as wclient
from wsheart import closecodes
from wsheart.backoff import BackoffSettings
from wsheart.heartbeat import HeartbeatSettings
from wsheart.clientprotocol import ClientFactory

from .memory import make_server_factory


@implementer(IStreamClientEndpoint)
class MemoryEndpoint:
    """
    Connects to C{server_factory} in memory, or refuses while it is None.
    """

    def __init__(self, clock: Clock, server_factory: Optional[Any]) -> None:
        self.clock = clock
        self.server_factory = server_factory
        self.attempts: list[float] = []
        self.pumps: list[iosim.IOPump] = []

    def connect(self, factory: Any) -> defer.Deferred[Any]:
        self.attempts.append(self.clock.seconds())
        if self.server_factory is None:
            return defer.fail(ConnectionRefusedError("connection refused"))
        client = factory.buildProtocol(None)
        server = self.server_factory.buildProtocol(None)
        pump = iosim.connect(
            server,
            iosim.makeFakeServer(server),
            client,
            iosim.makeFakeClient(client),
            greet=False,
            clock=self.clock,
        )
        self.pumps.append(pump)
        return defer.succeed(client)


class Refusing(Protocol):
    """
    A server that refuses every handshake with C{status} and, if set, a
    Retry-After header.
    """

    status = "503 Service Unavailable"
    retry_after: Optional[str] = "7"

    def dataReceived(self, data: bytes) -> None:
        retry_after = f"Retry-After: {self.retry_after}\r\n" if self.retry_after is not None else ""
        self.transport.write(f"HTTP/1.1 {self.status}\r\n{retry_after}Content-Length: 0\r\n\r\n".encode("ascii"))
        self.transport.loseConnection()


def refusing(status: str, retry_after: Optional[str]) -> Factory:
    """
    A factory of servers that answer every handshake with C{status} and
    C{retry_after}.
    """
    protocol = type("RefusingWith", (Refusing,), {"status": status, "retry_after": retry_after})
    return Factory.forProtocol(protocol)


class Silent(Protocol):
    """
    A server that accepts TCP and never answers the opening handshake.
    """

    def dataReceived(self, data: bytes) -> None:
        pass


class Recorder(wclient.ClientListener):
    def __init__(self) -> None:
        self.states: list[tuple[str, dict[str, Any]]] = []
        self.messages: list[Any] = []
        self.closes: list[tuple[int, str]] = []
        self.misses: list[int] = []

    def client_state(self, client: Any, state: str, detail: dict[str, Any]) -> None:
        self.states.append((state, detail))

    def client_message(self, client: Any, message: Any) -> None:
        self.messages.append(message)

    def client_closed(self, client: Any, code: int, reason: str, was_clean: bool) -> None:
        self.closes.append((code, reason))

    def client_missed(self, client: Any, misses: int) -> None:
        self.misses.append(misses)

    def waits(self) -> list[float]:
        return [detail["delay"] for state, detail in self.states if state == "waiting"]


class ClientServiceTests(unittest.TestCase):
    """
    The reconnecting client against an in-memory server.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.heartbeat = HeartbeatSettings(interval=4, timeout=2, max_missed=2)
        self.server_factory = make_server_factory(self.clock, heartbeat=HeartbeatSettings(interval=60, timeout=10))
        self.endpoint = MemoryEndpoint(self.clock, self.server_factory)
        self.listener = Recorder()
        self.random_value = 1.0

    def make_client(self, handshake_timeout: float = 10.0, **backoff: Any) -> wclient.ReconnectingClientService:
        settings = dict(initial=1, factor=2, cap=30, floor=0, stable_after=10)
        settings.update(backoff)
        service = wclient.ReconnectingClientService(
            "ws://127.0.0.1:9000/",
            self.listener,
            reactor=self.clock,
            heartbeat=self.heartbeat,
            backoff=BackoffSettings(**settings),
            endpoint=self.endpoint,
            random=lambda: self.random_value,
            handshake_timeout=handshake_timeout,
        )
        self.addCleanup(self.stop, service)
        return service

    def stop(self, service: wclient.ReconnectingClientService) -> None:
        if service.running:
            d = service.stopService()
            self.run_for(2)
            self.successResultOf(d)

    def run_for(self, seconds: float, step: float = 0.1) -> None:
        for _ in range(round(seconds / step)):
            self.clock.advance(step)
            for pump in self.endpoint.pumps:
                pump.flush()

    def server_protocols(self) -> list[Any]:
        return [pump.server for pump in self.endpoint.pumps]

    def test_connect_send_receive(self) -> None:
        """
        The service connects, reports open, sends and receives (echo), and
        measures an RTT with its own native pings.
        """
        service = self.make_client()
        service.startService()
        self.run_for(0.5)
        self.assertEqual(service.state, wclient.OPEN)
        self.assertTrue(service.send("hello"))
        self.assertTrue(service.send(b"\x00"))
        self.run_for(5)
        self.assertEqual(self.listener.messages, ["hello", b"\x00"])
        self.assertIsNotNone(service.rtt)
        self.assertEqual([s for s, _ in self.listener.states], ["connecting", "open"])

    def test_send_while_not_connected(self) -> None:
        """
        send() returns False and sends nothing while not connected.
        """
        self.endpoint.server_factory = None
        service = self.make_client()
        self.assertFalse(service.send("x"))
        service.startService()
        self.assertFalse(service.send("x"))

    def test_refused_retries_with_growing_delays(self) -> None:
        """
        Refused connections are failed attempts: delays follow the full
        jitter windows 1, 2, 4, 8 ... (random() = 1 here), up to the cap.
        """
        self.endpoint.server_factory = None
        service = self.make_client(cap=8)
        service.startService()
        self.run_for(40)
        self.assertEqual(self.listener.waits()[:6], [1, 2, 4, 8, 8, 8])
        gaps = [b - a for a, b in zip(self.endpoint.attempts, self.endpoint.attempts[1:])]
        for gap, expected in zip(gaps, [1, 2, 4, 8, 8]):
            self.assertTrue(abs(gap - expected) <= 0.11, (gap, expected))
        attempts = [d["attempt"] for s, d in self.listener.states if s == "connecting"]
        self.assertEqual(attempts[:4], [1, 2, 3, 4])

    def test_metrics(self) -> None:
        """
        With ClientMetrics, attempts, chosen delays and opens are counted.
        """
        from wsheart.metrics import ClientMetrics

        metrics = ClientMetrics()
        self.endpoint.server_factory = None
        service = self.make_client()
        service.metrics = metrics
        service.startService()
        self.run_for(3.5)  # attempts at 0, 1, 3
        self.endpoint.server_factory = self.server_factory
        self.run_for(5)
        text = metrics.exposition().decode()
        self.assertIn("wsheart_client_connect_attempts_total 4.0", text)
        self.assertIn("wsheart_client_reconnect_delay_seconds_count 3.0", text)
        self.assertIn("wsheart_client_connections_opened_total 1.0", text)

    def test_comes_back_when_server_returns(self) -> None:
        """
        After failures, the client connects as soon as the server is back
        and its next attempt is due.
        """
        self.endpoint.server_factory = None
        service = self.make_client()
        service.startService()
        self.run_for(5)
        self.endpoint.server_factory = self.server_factory
        self.run_for(10)
        self.assertEqual(service.state, wclient.OPEN)
        self.assertEqual(len(self.server_factory.hub), 1)

    def test_short_lived_connection_is_a_failure(self) -> None:
        """
        A connection that dies before stable_after does not reset the
        schedule; one that lived longer does.
        """
        service = self.make_client(stable_after=10)
        service.startService()
        delays = []
        for lifetime in (1, 1, 1, 12):
            self.run_for(lifetime)
            self.server_protocols()[-1].close(closecodes.GOING_AWAY, "bye")
            self.run_for(0.2)
            delays.append(self.listener.waits()[-1])
            self.run_for(delays[-1] + 0.2)
        self.assertEqual(delays, [1, 2, 4, 1])

    def test_hint_honoured(self) -> None:
        """
        Close 1012 with {"retry_after": 5, "jitter": 10} makes the client
        wait 5 + uniform(0, 10) seconds (15 with random() = 1), and is not
        counted as a failure.
        """
        service = self.make_client(stable_after=10)
        service.startService()
        self.run_for(11)
        self.server_protocols()[-1].close(
            closecodes.SERVICE_RESTART, json.dumps({"retry_after": 5, "jitter": 10})
        )
        self.run_for(0.2)
        self.assertEqual(self.listener.waits(), [15])
        self.assertEqual(self.listener.closes[0][0], closecodes.SERVICE_RESTART)
        attempts_before = len(self.endpoint.attempts)
        self.run_for(14.5)
        self.assertEqual(len(self.endpoint.attempts), attempts_before)
        self.run_for(1)
        self.assertEqual(service.state, wclient.OPEN)
        self.assertEqual(service.attempt, 1)

    def test_hint_right_after_open_is_a_failure(self) -> None:
        """
        A server that closes with a hint before the connection was stable
        is failing: the wait is the larger of the hint and the normal
        schedule, and the failure counts (no storm at "retry_after": 0).
        """
        service = self.make_client(stable_after=10)
        service.startService()
        delays = []
        for _ in range(4):
            self.run_for(0.5)
            self.server_protocols()[-1].close(closecodes.TRY_AGAIN_LATER, '{"retry_after": 0}')
            self.run_for(0.2)
            delays.append(self.listener.waits()[-1])
            self.run_for(delays[-1])
        self.assertEqual(delays, [1, 2, 4, 8])
        self.assertEqual(service.attempt, 5)

    def test_a_hint_as_long_as_the_schedule_is_kept_as_a_slot(self) -> None:
        """
        Admission control's slot (1013 right after the open with a wait at
        least the next backoff window) is waited out exactly and not counted
        as a failure, so the window does not grow past the slot: 6, 7, 8 s
        (the hint plus its jitter), attempt count unchanged.  A shorter hint
        still counts (the test above).
        """
        service = self.make_client(stable_after=10)
        service.startService()
        delays = []
        for wait in (5, 6, 7):
            self.run_for(0.5)
            self.server_protocols()[-1].close(closecodes.TRY_AGAIN_LATER, json.dumps({"retry_after": wait, "jitter": 1}))
            self.run_for(0.2)
            delays.append(self.listener.waits()[-1])
            self.run_for(delays[-1])
        self.assertEqual(delays, [6, 7, 8])
        self.assertEqual(service.attempt, 1)

    def test_terminal_code_stops(self) -> None:
        """
        A close with a terminal code (1008 policy violation) stops the
        client with a reason; it does not reconnect.
        """
        service = self.make_client()
        stopped = service.when_stopped()
        service.startService()
        self.run_for(1)
        self.server_protocols()[-1].close(closecodes.POLICY_VIOLATION, "not allowed")
        self.run_for(60)
        self.assertEqual(service.state, wclient.STOPPED)
        self.assertIn("1008", service.stop_reason)
        self.assertIn("not allowed", self.successResultOf(stopped))
        self.assertEqual(len(self.endpoint.attempts), 1)
        self.assertFalse(service.running)

    def assertNextAttemptWaits(self, status: str, retry_after: str, wait: float) -> None:
        """
        A handshake refused with C{status} and C{retry_after} makes the
        client wait C{wait} plus the jittered delay (1 s at attempt 1 with
        random() = 1): the second attempt comes no earlier.
        """
        self.endpoint.server_factory = refusing(status, retry_after)
        service = self.make_client()
        service.startService()
        self.run_for(0.5)
        (waited,) = self.listener.waits()
        self.assertAlmostEqual(waited, wait + 1)
        reason = self.listener.states[-1][1]["reason"]
        self.assertIn(status.split()[0], reason)
        self.assertIn(f"Retry-After {wait:g} s", reason)
        self.run_for(wait + 0.3)
        self.assertEqual(len(self.endpoint.attempts), 1, "no attempt before Retry-After has passed")
        self.run_for(1)
        self.assertEqual(len(self.endpoint.attempts), 2)
        self.assertGreaterEqual(self.endpoint.attempts[1] - self.endpoint.attempts[0], wait + 0.1)

    def test_retry_after_on_503(self) -> None:
        """
        A handshake refused with 503 and Retry-After: 7 waits 7 s plus the
        jittered delay before the next attempt.
        """
        self.assertNextAttemptWaits("503 Service Unavailable", "7", 7)

    def test_retry_after_on_429(self) -> None:
        """
        A handshake refused with 429 (too many requests) and Retry-After: 20
        waits 20 s plus the jittered delay: a rate-limited client does not
        come back on its short normal schedule.
        """
        self.assertNextAttemptWaits("429 Too Many Requests", "20", 20)

    def test_retry_after_as_http_date(self) -> None:
        """
        Retry-After may be an HTTP date: read against the client's clock
        (0 = the epoch here), 00:00:12 is 11.9 s after the refusal arrives
        (at 0.1 s, the first pump).
        """
        self.assertNextAttemptWaits("429 Too Many Requests", "Thu, 01 Jan 1970 00:00:12 GMT", 11.9)

    def test_retry_after_only_on_429_and_503(self) -> None:
        """
        Another refusal (500) with a Retry-After header follows the normal
        schedule; a 429 without the header does too.
        """
        for status, retry_after in [("500 Internal Server Error", "30"), ("429 Too Many Requests", None)]:
            self.listener.states.clear()
            self.endpoint.server_factory = refusing(status, retry_after)
            service = self.make_client()
            service.startService()
            self.run_for(0.5)
            self.assertEqual(self.listener.waits(), [1], status)
            self.successResultOf(service.stopService())

    def test_terminal_http_status(self) -> None:
        """
        A handshake answered 403 stops the client.
        """

        class Forbidden(Protocol):
            def dataReceived(self, data: bytes) -> None:
                self.transport.write(b"HTTP/1.1 403 Forbidden\r\n\r\n")
                self.transport.loseConnection()

        self.endpoint.server_factory = Factory.forProtocol(Forbidden)
        service = self.make_client()
        service.startService()
        self.run_for(5)
        self.assertEqual(service.state, wclient.STOPPED)
        self.assertIn("403", service.stop_reason)

    def test_attempt_limit(self) -> None:
        """
        With max_attempts=3, three refused attempts stop the client.
        """
        self.endpoint.server_factory = None
        service = self.make_client(max_attempts=3)
        service.startService()
        self.run_for(60)
        self.assertEqual(len(self.endpoint.attempts), 3)
        self.assertEqual(service.state, wclient.STOPPED)
        self.assertIn("gave up after 3", service.stop_reason)

    def test_dead_server_detected(self) -> None:
        """
        A server that stops answering (frozen: nothing moves) is declared
        dead by the client's heartbeat within its bound; the client reports
        the misses, closes, and reconnects.
        """
        service = self.make_client()
        service.startService()
        self.run_for(1)
        frozen_pump = self.endpoint.pumps[-1]
        self.endpoint.pumps.remove(frozen_pump)  # nothing moves any more
        frozen_at = self.clock.seconds()
        heartbeat = service.heartbeat
        assert heartbeat is not None
        while not heartbeat.dead:
            self.assertLess(self.clock.seconds() - frozen_at, 2 * self.heartbeat.death_bound)
            self.run_for(0.1)
        # Silent since frozen_at (the last traffic was just before).
        self.assertLessEqual(self.clock.seconds() - frozen_at, self.heartbeat.death_bound + 0.1)
        self.assertEqual(self.listener.misses, [1])
        # The close frame cannot get through; after the close timeout the
        # client aborts the connection, and the kernel reports it.
        self.run_for(1.1)
        self.assertTrue(frozen_pump.clientIO.disconnecting)
        frozen_pump.flush()
        self.assertEqual(self.listener.closes[-1], (closecodes.ABNORMAL, "heartbeat timeout"))
        waiting = self.listener.states[-1]
        self.assertEqual(waiting[0], "waiting")
        self.run_for(waiting[1]["delay"] + 0.5)
        self.assertEqual(service.state, wclient.OPEN)

    def test_stop_service(self) -> None:
        """
        stopService closes the connection with 1001 and leaves nothing
        scheduled.
        """
        service = self.make_client()
        service.startService()
        self.run_for(1)
        d = service.stopService()
        self.run_for(0.5)
        self.successResultOf(d)
        self.assertEqual(self.server_protocols()[-1].remoteCloseCode, closecodes.GOING_AWAY)
        self.assertEqual(service.state, wclient.STOPPED)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_while_waiting(self) -> None:
        """
        Stopping between attempts cancels the pending attempt.
        """
        self.endpoint.server_factory = None
        service = self.make_client()
        service.startService()
        self.successResultOf(service.stopService())
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.run_for(10)
        self.assertEqual(len(self.endpoint.attempts), 1)

    def test_restart_before_the_old_connection_closed(self) -> None:
        """
        stopService() then startService() at once: the new connection waits
        for the old one to be gone; there is never more than one, and the
        stop Deferred fires.
        """
        service = self.make_client()
        service.startService()
        self.run_for(1)
        stopped = service.stopService()
        service.startService()
        self.run_for(2)
        self.successResultOf(stopped)
        self.assertEqual(service.state, wclient.OPEN)
        self.assertEqual(len(self.server_factory.hub), 1)
        states = [s for s, _ in self.listener.states]
        self.assertEqual(states, ["connecting", "open", "stopped", "connecting", "open"])

    def test_send_while_closing(self) -> None:
        """
        While the connection is closing, send() says False instead of
        losing the message.
        """
        service = self.make_client()
        service.startService()
        self.run_for(1)
        self.server_protocols()[-1].close(closecodes.SERVICE_RESTART, '{"retry_after": 1}')
        # One pump: the close frame reaches the client, which answers; the
        # server has not dropped TCP yet, so the service still says open.
        self.endpoint.pumps[-1].pump()
        protocol = service._protocol
        assert protocol is not None
        self.assertEqual(protocol.state, protocol.STATE_CLOSING)
        self.assertEqual(service.state, wclient.OPEN)
        self.assertFalse(service.send("lost?"))

    def test_stop_after_giving_up(self) -> None:
        """
        After giving up, stopService() does not report "stopped" again, and
        a restart starts the attempt count over.
        """
        self.endpoint.server_factory = None
        service = self.make_client(max_attempts=2)
        service.startService()
        self.run_for(10)
        self.assertEqual(service.state, wclient.STOPPED)
        self.successResultOf(service.stopService())
        self.assertEqual([s for s, _ in self.listener.states].count("stopped"), 1)
        service.startService()
        connecting = [d for s, d in self.listener.states if s == "connecting"]
        self.assertEqual(connecting[-1], {"attempt": 1})


    def test_silent_server_times_out_the_handshake(self) -> None:
        """
        A server that accepts TCP but never answers the opening handshake:
        after handshake_timeout (5 s here) the client drops the attempt,
        says why, and tries again on its schedule.
        """
        self.endpoint.server_factory = Factory.forProtocol(Silent)
        service = self.make_client(handshake_timeout=5)
        service.startService()
        self.run_for(4.9)
        self.assertEqual(service.state, wclient.CONNECTING)
        self.assertFalse(self.endpoint.pumps[0].clientIO.disconnecting)
        self.run_for(0.2)
        self.assertTrue(self.endpoint.pumps[0].clientIO.disconnecting)
        self.assertEqual(service.state, wclient.WAITING)
        self.assertIn("opening handshake timeout", self.listener.states[-1][1]["reason"])
        self.assertEqual(self.listener.waits(), [1])
        self.run_for(1.2)
        self.assertEqual(len(self.endpoint.attempts), 2)
        self.assertEqual([s for s, _ in self.listener.states], ["connecting", "waiting", "connecting"])

    def test_handshake_timer_gone_once_open(self) -> None:
        """
        A handshake that completes in time cancels the timer: the
        connection outlives handshake_timeout.
        """
        service = self.make_client(handshake_timeout=2)
        service.startService()
        self.run_for(5)
        self.assertEqual(service.state, wclient.OPEN)
        self.assertEqual([s for s, _ in self.listener.states], ["connecting", "open"])

    def test_failing_listener_is_logged_and_the_client_carries_on(self) -> None:
        """
        A listener whose every method raises cannot stop the service: each
        failure is logged with the method's name, the state stays
        consistent, messages keep arriving, and a reconnect still happens.
        """

        class Broken(Recorder):
            def __init__(self) -> None:
                super().__init__()
                self.calls: list[str] = []

            def client_state(self, client: Any, state: str, detail: dict[str, Any]) -> None:
                super().client_state(client, state, detail)
                raise RuntimeError("client_state broke")

            def client_opened(self, client: Any) -> None:
                self.calls.append("opened")
                raise RuntimeError("client_opened broke")

            def client_message(self, client: Any, message: Any) -> None:
                super().client_message(client, message)
                raise RuntimeError("client_message broke")

            def client_closed(self, client: Any, code: int, reason: str, was_clean: bool) -> None:
                super().client_closed(client, code, reason, was_clean)
                raise RuntimeError("client_closed broke")

        self.listener = Broken()
        service = self.make_client()
        with capturedLogs() as events:
            service.startService()
            self.run_for(0.5)
            self.assertEqual(service.state, wclient.OPEN)
            self.assertTrue(service.send("one"))
            self.assertTrue(service.send("two"))
            self.run_for(0.5)
            self.server_protocols()[-1].close(closecodes.GOING_AWAY, "bye")
            self.run_for(0.2)
            self.assertEqual(service.state, wclient.WAITING)
            self.run_for(self.listener.waits()[-1] + 0.5)
            self.assertEqual(service.state, wclient.OPEN)
            stopped = service.stopService()
            self.run_for(1)
            self.successResultOf(stopped)
        self.assertEqual(service.state, wclient.STOPPED)
        self.assertEqual(self.listener.messages, ["one", "two"])
        self.assertEqual(self.listener.calls, ["opened", "opened"])
        self.assertEqual(self.listener.closes, [(closecodes.GOING_AWAY, "bye")])
        self.assertEqual(
            [s for s, _ in self.listener.states], ["connecting", "open", "waiting", "connecting", "open", "stopped"]
        )
        failed = [
            e.get("method") or ("client_state" if "client_state" in e["log_format"] else e["log_format"])
            for e in events
            if e.get("log_failure") is not None
        ]
        self.assertEqual(
            failed,
            ["client_state", "client_state", "client_opened", "client_message", "client_message",
             "client_closed", "client_state", "client_state", "client_state", "client_opened",
             "client_state"],
        )  # fmt: skip
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 11)


class ChoppingServer(WebSocketServerProtocol):
    """
    What Autobahn|Testsuite's cases 6.4.3 and 6.4.4 do: on open, begin a
    text frame and send only its first chop; the rest on C{finish()}.  Its
    Autobahn answers a ping at once, inside the unfinished frame.
    """

    TEXT = "κόσμε: hello".encode("utf-8")

    def onOpen(self) -> None:
        self.factory.opened.append(self)
        self.beginMessage()
        self.beginMessageFrame(len(self.TEXT))
        self.sendMessageFrameData(self.TEXT[:5])

    def finish(self) -> None:
        self.sendMessageFrameData(self.TEXT[5:])
        self.endMessage()


class PeerMidFrameTests(unittest.TestCase):
    """
    The client's heartbeat and a server part-way through sending a frame.
    """

    # The reconnecting client as ClientServiceTests builds and drives it.
    make_client = ClientServiceTests.make_client
    stop = ClientServiceTests.stop
    run_for = ClientServiceTests.run_for

    def setUp(self) -> None:
        ClientServiceTests.setUp(self)  # type: ignore[arg-type]
        factory = WebSocketServerFactory(reactor=self.clock)
        factory.protocol = ChoppingServer
        factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0)
        factory.opened = []
        self.endpoint.server_factory = factory

    def test_first_ping_waits_for_the_frame_to_end(self) -> None:
        """
        The client's first ping is due at open, when the server is already
        inside a frame: it is not sent there (the server's pong would land
        inside the frame and corrupt it, a 1007), so the message arrives
        whole and the connection stays open.
        """
        service = self.make_client()
        service.startService()
        self.run_for(1)
        (server,) = self.endpoint.server_factory.opened
        self.assertEqual(service.state, wclient.OPEN)
        server.finish()
        self.run_for(0.5)
        self.assertEqual(self.listener.closes, [])
        self.assertEqual(self.listener.messages, [ChoppingServer.TEXT.decode("utf-8")])
        self.assertEqual(service.heartbeat.pings_sent, 1)  # due, counted, not written
        self.assertIsNone(service.rtt)
        # Between frames the next ping (interval 4 s) goes out and is answered.
        self.run_for(4)
        self.assertIsNotNone(service.rtt)


class HandshakeTimerTests(unittest.TestCase):
    """
    The client protocol's own opening-handshake timer, on a Clock and an
    in-memory transport nobody answers on.
    """

    def make_protocol(self, handshake_timeout: float) -> tuple[Any, iosim.FakeTransport, Clock]:
        clock = Clock()
        owner = wclient.ClientListener()  # never reached: the handshake does not finish
        factory = ClientFactory(
            owner, "ws://127.0.0.1:9000/", clock, HeartbeatSettings(), handshake_timeout=handshake_timeout
        )
        protocol = factory.buildProtocol(None)
        transport = iosim.makeFakeClient(protocol)
        protocol.makeConnection(transport)
        return protocol, transport, clock

    def test_armed_when_the_connection_is_made(self) -> None:
        """
        connectionMade sends the request and arms a timer for
        handshake_timeout on the factory's clock; when it fires with no
        answer, the TCP connection is aborted as an opening handshake
        timeout.
        """
        protocol, transport, clock = self.make_protocol(3.0)
        self.assertTrue(b"".join(transport.stream).startswith(b"GET / HTTP/1.1"))
        self.assertEqual([call.getTime() for call in clock.getDelayedCalls()], [3.0])
        clock.advance(2.9)
        self.assertFalse(transport.disconnecting)
        clock.advance(0.1)
        self.assertTrue(transport.disconnecting)
        self.assertTrue(protocol.wasOpenHandshakeTimeout)
        self.assertEqual(protocol.wasNotCleanReason, "opening handshake timeout")

    def test_zero_means_no_timer(self) -> None:
        """
        handshake_timeout=0 arms nothing.
        """
        protocol, transport, clock = self.make_protocol(0)
        self.assertEqual(clock.getDelayedCalls(), [])
