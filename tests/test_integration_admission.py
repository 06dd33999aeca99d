"""
Integration test of admission control over real loopback sockets: a fleet
of wsheart client services arriving at once at a server that admits 20
handshakes a second is told when to come back - in-band (1013) or by
Retry-After (503) - waits as told, and is all in soon after the rate
allows; an independent client (the websockets library) sees the 503.
"""

from __future__ import annotations

from typing import Any

import socket
import ssl as stdlib_ssl
import os

import websockets.exceptions
import websockets.sync.client
from twisted.internet import reactor, threads
from twisted.trial import unittest

from wsheart import client as wclient
from wsheart.access.admission import AdmissionSettings
from wsheart.heartbeat import HeartbeatSettings
from wsheart.hub import Hub
from wsheart.protocol import ServerFactory

from .loopback import async_test, free_port, listen, make_ca, make_server_cert, wait_until


class Recorder(wclient.ClientListener):
    def __init__(self) -> None:
        self.waits: list[tuple[float, dict[str, Any]]] = []
        self.attempts: list[float] = []
        self.opened_at: list[float] = []

    def client_state(self, client: Any, state: str, detail: dict[str, Any]) -> None:
        if state == "waiting":
            self.waits.append((reactor.seconds(), detail))
        elif state == "connecting":
            self.attempts.append(reactor.seconds())

    def client_opened(self, client: Any) -> None:
        self.opened_at.append(reactor.seconds())


class AdmissionIntegrationTests(unittest.TestCase):
    timeout = 40

    @async_test
    async def test_a_fleet_arriving_at_once_is_admitted_at_the_rate(self) -> None:
        """
        40 clients start together against --accept-rate 20: the first are
        admitted, every other one is told when to come back (half in-band,
        half with 503 and Retry-After), none tries again before it was told
        to, and all are in within 12 s (the rate needs 2, the clients'
        backoff adds to it).
        """
        factory = ServerFactory(
            hub=Hub(reactor),
            clock=reactor,
            heartbeat_settings=HeartbeatSettings(5, 2, 2),
            admission=AdmissionSettings(accept_rate=20, ramp=0),
        )
        port_number = free_port()
        await listen(self, factory, f"tcp:{port_number}:interface=127.0.0.1")
        url = f"ws://127.0.0.1:{port_number}/"
        recorders = []
        start = reactor.seconds()
        for i in range(40):
            recorder = Recorder()
            service = wclient.ReconnectingClientService(
                url,
                recorder,
                reactor=reactor,
                heartbeat=HeartbeatSettings(5, 2, 2),
                protocols=["wsheart.hints"] if i % 2 else None,
            )
            self.addCleanup(lambda s=service: s.running and s.stopService())
            service.startService()
            recorders.append(recorder)
        # A client told to wait in-band opens first (101, then close 1013),
        # so "opened" is not "admitted": the hub says who is in.
        await wait_until(self, lambda: len(factory.hub) == 40, timeout=15)
        took = reactor.seconds() - start
        # The rate needs 2 s; a client refused again after its slot (the
        # slots' jitter bunches some arrivals) waits its backoff too, whose
        # window doubles per refusal: a few reach 4-8 s.
        self.assertLess(took, 12.0)
        self.assertEqual(len(factory.hub), 40)

        refusals = factory.metrics.admission_refusals
        in_band = refusals.labels(reason="rate", answer="hint")._value.get()
        http = refusals.labels(reason="rate", answer="503")._value.get()
        # How many are refused depends on when each attempt lands; some of
        # each kind always are (20 of each start at once, 2 are admitted).
        self.assertGreater(in_band, 3, "hint-reading clients were told in-band")
        self.assertGreater(http, 3, "the others got 503")
        self.assertEqual(refusals.labels(reason="rate", answer="drop")._value.get(), 0)
        reasons = [detail["reason"] for r in recorders for _, detail in r.waits]
        self.assertTrue(any("server asked to wait" in reason for reason in reasons), reasons[:5])
        self.assertTrue(any("Retry-After" in reason for reason in reasons), reasons[:5])
        for recorder in recorders:
            # Each attempt after a wait comes no sooner than the wait said.
            for (told_at, detail), attempt_at in zip(recorder.waits, recorder.attempts[1:]):
                self.assertGreaterEqual(attempt_at - told_at, detail["delay"] - 0.01)

    @async_test
    async def test_an_independent_client_sees_503_with_retry_after(self) -> None:
        """
        The websockets library, offering no wsheart subprotocol, is refused
        with HTTP 503 and a Retry-After in whole seconds once the rate's
        burst is used.
        """
        factory = ServerFactory(hub=Hub(reactor), clock=reactor, admission=AdmissionSettings(accept_rate=1, ramp=0))
        port_number = free_port()
        await listen(self, factory, f"tcp:{port_number}:interface=127.0.0.1")

        def connect_twice() -> Any:
            url = f"ws://127.0.0.1:{port_number}/"
            with websockets.sync.client.connect(url, proxy=None, open_timeout=5):
                try:
                    with websockets.sync.client.connect(url, proxy=None, open_timeout=5):
                        return None
                except websockets.exceptions.InvalidStatus as e:
                    return e.response

        response = await threads.deferToThread(connect_twice)
        self.assertIsNotNone(response, "the second connection should have been refused")
        self.assertEqual(response.status_code, 503)
        self.assertTrue(response.headers["Retry-After"].isdigit())
        self.assertGreaterEqual(int(response.headers["Retry-After"]), 1)

    @async_test
    async def test_far_over_the_rate_no_tls_handshake_is_done(self) -> None:
        """
        Past four times the rate (a second's worth at once) a connection to
        an ssl: endpoint is closed before the TLS handshake: the client's
        ClientHello gets no ServerHello, only the end of the connection,
        while the ones before it get TLS as usual.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        ca_key, ca_cert, ca_path = make_ca(directory)
        key, cert = make_server_cert(directory, ca_key, ca_cert, "127.0.0.1")
        factory = ServerFactory(hub=Hub(reactor), clock=reactor, admission=AdmissionSettings(accept_rate=1, ramp=0))
        port = await listen(self, factory, f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}")
        number = port.getHost().port

        def handshakes() -> list[str]:
            context = stdlib_ssl.create_default_context(cafile=ca_path)
            outcomes = []
            held = []
            for _ in range(5):
                try:
                    # A connection closed at accept may already be reset
                    # when connect() returns.
                    raw = socket.create_connection(("127.0.0.1", number), timeout=5)
                except OSError as e:
                    outcomes.append(type(e).__name__)
                    continue
                try:
                    held.append(context.wrap_socket(raw, server_hostname="127.0.0.1"))
                    outcomes.append("tls")
                except (stdlib_ssl.SSLError, ConnectionError, OSError) as e:
                    raw.close()
                    outcomes.append(type(e).__name__)
            for s in held:
                s.close()
            return outcomes

        outcomes = await threads.deferToThread(handshakes)
        self.assertEqual(outcomes[:4], ["tls"] * 4)
        self.assertNotEqual(outcomes[4], "tls")
        self.assertEqual(factory.metrics.admission_refusals.labels(reason="rate", answer="drop")._value.get(), 1)
