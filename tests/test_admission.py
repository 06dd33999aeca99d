"""
Admission control (L{wsheart.access.admission}): the accept rate, its ramp after
a start, the queue of promised slots, and how the server answers a
handshake it cannot take yet - on a Clock, over in-memory transports.
"""

from __future__ import annotations

import heapq
import json
import random
from typing import Any, Optional

from twisted.internet.task import Clock
from twisted.test import iosim
from twisted.trial import unittest

from wsheart.access.admission import (
    ADDRESS_ARRIVAL_SHARE,
    ADDRESS_ARRIVALS_MIN,
    ADDRESS_QUEUE_SECONDS,
    ADDRESS_RESERVE,
    BURST_SECONDS,
    DROP_FACTOR,
    FULL_HINT,
    LAG_HIGH,
    LAG_LOW,
    MAX_WAIT,
    RAMP_FROM,
    SLOT_JITTER,
    SLOTS_PER_ADDRESS,
    Admission,
    AdmissionSettings,
    Refusal,
    reads_hints,
)
from wsheart.backoff import hint_from_close
from wsheart.handler import EchoHandler
from wsheart.access.limits import LimitSettings, address_key

from .memory import connect_client, make_server_factory


class RecordingHandler(EchoHandler):
    def __init__(self) -> None:
        super().__init__()
        self.opened: list[Any] = []

    def connection_opened(self, connection: Any) -> None:
        self.opened.append(connection)


class SettingsTests(unittest.TestCase):
    def test_off_by_default_and_bad_values_refused(self) -> None:
        """
        Admission control is off unless a rate is set; a negative or
        infinite rate or ramp is refused with the option's name.
        """
        self.assertFalse(AdmissionSettings().enabled)
        self.assertTrue(AdmissionSettings(accept_rate=5).enabled)
        for bad in (dict(accept_rate=-1), dict(accept_rate=float("inf")), dict(ramp=-1), dict(accept_rate=float("nan"))):
            with self.assertRaises(ValueError) as caught:
                AdmissionSettings(**bad)  # type: ignore[arg-type]
            self.assertIn("--accept-", str(caught.exception))

    def test_which_handshakes_read_hints(self) -> None:
        """
        A wsheart.* subprotocol offer marks a client that reads a 1013
        close's retry window; anything else gets 503 and Retry-After.
        """
        self.assertTrue(reads_hints(["wsheart.v1"]))
        self.assertTrue(reads_hints(["chat", "wsheart.hints"]))
        self.assertTrue(reads_hints(["wsheart.bearer.eyJ.a.b"]))
        self.assertFalse(reads_hints([]))
        self.assertFalse(reads_hints(None))  # type: ignore[arg-type]
        self.assertFalse(reads_hints(["chat", "wsheartv1"]))


class AdmissionTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.refused: list[tuple[str, str]] = []
        self.logged: list[dict[str, Any]] = []

    def admission(self, rate: float, ramp: float = 0.0) -> Admission:
        return Admission(
            AdmissionSettings(accept_rate=rate, ramp=ramp),
            self.clock,
            refused=lambda reason, answer: self.refused.append((reason, answer)),
            log=lambda fmt, **kw: self.logged.append(kw),
        )

    def test_off_admits_everything(self) -> None:
        """
        Without a rate every connection is admitted and none is dropped.
        """
        admission = self.admission(0)
        self.assertTrue(all(admission.arrived() for _ in range(10000)))
        self.assertTrue(all(admission.admit(True) is None for _ in range(10000)))
        self.assertEqual(admission.rate(), 0)
        self.assertEqual(self.refused, [])

    def test_a_burst_then_each_refusal_gets_its_own_slot(self) -> None:
        """
        A tenth of a second's worth is admitted at once; each handshake
        after that gets a slot one admission interval after the previous
        one, with jitter of at least a second.
        """
        admission = self.admission(100)
        burst = int(100 * BURST_SECONDS)
        self.assertEqual([admission.admit(True) for _ in range(burst)], [None] * burst)
        refusals = [admission.admit(i % 2 == 0) for i in range(5)]
        self.assertTrue(all(isinstance(r, Refusal) for r in refusals))
        waits = [r.retry_after for r in refusals if r is not None]
        for i, wait in enumerate(waits):
            self.assertAlmostEqual(wait, (i + 1) / 100)
        self.assertTrue(all(r is not None and r.jitter == SLOT_JITTER for r in refusals))
        self.assertAlmostEqual(admission.queue_seconds(), 0.05)
        self.assertEqual(self.refused, [("rate", "hint"), ("rate", "503")] * 2 + [("rate", "hint")])

    def test_the_rate_refills_and_never_exceeds_its_burst(self) -> None:
        """
        Over any stretch of time at most rate * time + burst are admitted.
        """
        admission = self.admission(50)
        admitted = 0
        for _ in range(400):  # 4 s in 10 ms steps, 10 handshakes a step
            admitted += sum(1 for _ in range(10) if admission.admit(True) is None)
            self.clock.advance(0.01)
        self.assertLessEqual(admitted, 50 * 4 + 50 * BURST_SECONDS + 1)
        self.assertGreaterEqual(admitted, 50 * 4 - 1)

    def test_slots_promised_are_kept_when_the_clients_return(self) -> None:
        """
        A client back at its slot finds a token: the queue moves at the rate.
        """
        admission = self.admission(10)
        admission.admit(True)  # the burst of one
        refusal = admission.admit(True)
        assert refusal is not None
        self.clock.advance(refusal.retry_after)
        self.assertIsNone(admission.admit(True))

    def test_the_ramp_after_a_start(self) -> None:
        """
        The admitted rate starts at a tenth and grows linearly to the full
        rate over the ramp; restart() (a new start) begins it again.
        """
        admission = self.admission(1000, ramp=10)
        self.assertAlmostEqual(admission.rate(), 100)
        self.clock.advance(5)
        self.assertAlmostEqual(admission.rate(), 550)
        self.clock.advance(5)
        self.assertAlmostEqual(admission.rate(), 1000)
        self.clock.advance(100)
        self.assertAlmostEqual(admission.rate(), 1000)
        admission.restart()
        self.assertAlmostEqual(admission.rate(), 100)

    def test_far_over_the_rate_is_dropped_at_accept(self) -> None:
        """
        Arrivals beyond DROP_FACTOR times the full rate (a second's worth
        at once) are dropped before a handshake (no hint: it would cost a
        handshake); the arrival budget refills at that multiple, also
        during the ramp.
        """
        admission = self.admission(100, ramp=10)
        allowed = sum(1 for _ in range(1000) if admission.arrived())
        self.assertEqual(allowed, int(DROP_FACTOR * 100))
        self.clock.advance(0.5)
        allowed = sum(1 for _ in range(1000) if admission.arrived())
        self.assertEqual(allowed, int(DROP_FACTOR * 100 / 2), "refilled at four times the full rate")
        self.clock.advance(100)
        allowed = sum(1 for _ in range(1000) if admission.arrived())
        self.assertEqual(allowed, int(DROP_FACTOR * 100), "never more than one second's worth")
        self.assertIn(("rate", "drop"), self.refused)

    def test_the_queue_is_bounded(self) -> None:
        """
        Past MAX_WAIT of promised slots a refusal gets the longest wait,
        spread over as long again, and takes no slot.
        """
        admission = self.admission(1)
        admission.admit(True)
        for _ in range(int(MAX_WAIT)):
            admission.admit(True)
        queue = admission.queue_seconds()
        refusal = admission.admit(True)
        assert refusal is not None
        self.assertEqual((refusal.retry_after, refusal.jitter), (MAX_WAIT, MAX_WAIT))
        self.assertEqual(admission.queue_seconds(), queue)

    def test_slots_per_address_follow_the_rate(self) -> None:
        """
        Ten seconds' worth of slots at the full rate, at least
        SLOTS_PER_ADDRESS.
        """
        self.assertEqual(self.admission(500).slots_per_address, int(ADDRESS_QUEUE_SECONDS * 500))
        self.assertEqual(self.admission(1).slots_per_address, SLOTS_PER_ADDRESS)

    def test_one_address_cannot_push_the_queue_back(self) -> None:
        """
        An address holding its share of unexpired slots gets no more
        (reason "address"; come back once they are over, spread over as long
        as they span) and the queue does not move; another address gets the
        next slot as before; once its slots have passed, the first address
        gets slots again.
        """
        admission = self.admission(10)
        admission.admit(True, "attacker")  # the burst of one
        for _ in range(admission.slots_per_address):
            self.assertEqual(admission.admit(True, "attacker").reason, "rate")  # type: ignore[union-attr]
        queue = admission.queue_seconds()
        self.assertAlmostEqual(queue, ADDRESS_QUEUE_SECONDS, msg="ten seconds' worth at the full rate")
        for _ in range(1000):
            refusal = admission.admit(False, "attacker")
            assert refusal is not None
            self.assertEqual(refusal.reason, "address")
        # Its last slot ends at the queue's end plus that slot's jitter; its
        # first, SLOT_JITTER after the first slot.
        self.assertAlmostEqual(refusal.retry_after, queue + SLOT_JITTER)
        self.assertAlmostEqual(refusal.jitter, queue - 0.1)
        self.assertAlmostEqual(admission.queue_seconds(), queue, msg="a thousand more did not push the queue back")
        other = admission.admit(True, "someone else")
        assert other is not None
        self.assertAlmostEqual(other.retry_after, queue + 0.1)
        self.assertIn(("address", "429"), self.refused)
        self.clock.advance(queue + 5)
        self.assertEqual(admission.admit(True, "attacker"), None, "slots passed: a token again")
        self.assertEqual(admission.admit(True, "attacker").reason, "rate")  # type: ignore[union-attr]

    def test_one_address_cannot_spend_the_arrival_budget(self) -> None:
        """
        Past its share of a second's arrivals (half the drop threshold, at
        least ADDRESS_ARRIVALS_MIN), one address is dropped at accept once
        the arrival budget is down to the reserve kept for the others; the
        others still arrive, up to that reserve; the next second the
        address may again.
        """
        admission = self.admission(100)
        full = DROP_FACTOR * 100
        taken = sum(1 for _ in range(1000) if admission.arrived("flooder"))
        self.assertEqual(taken, full - ADDRESS_RESERVE * full)
        self.assertGreaterEqual(taken, max(ADDRESS_ARRIVALS_MIN, ADDRESS_ARRIVAL_SHARE * full))
        self.assertIn(("address", "drop"), self.refused)
        others = sum(1 for i in range(1000) if admission.arrived(f"client {i}"))
        self.assertEqual(others, ADDRESS_RESERVE * full)
        self.clock.advance(1)
        self.assertTrue(admission.arrived("flooder"))

    def test_full_has_a_fixed_hint(self) -> None:
        """
        A full process says come back in FULL_HINT, whatever the rate.
        """
        refusal = self.admission(0).full(True)
        self.assertEqual((refusal.retry_after, refusal.jitter, refusal.reason), (*FULL_HINT, "full"))
        self.assertEqual(self.refused, [("full", "hint")])

    def test_hint_texts(self) -> None:
        """
        The close reason is the JSON hint the wsheart clients read; the
        Retry-After header is whole seconds drawn over the jitter.
        """
        refusal = Refusal(2.5, 1.0, "rate")
        hint = hint_from_close(1013, refusal.close_reason())
        assert hint is not None
        self.assertEqual((hint.retry_after, hint.jitter), (2.5, 1.0))
        self.assertLessEqual(len(refusal.close_reason().encode()), 123, "fits a close frame")
        self.assertEqual(refusal.retry_after_header(lambda: 0.0), "3")
        self.assertEqual(refusal.retry_after_header(lambda: 0.99), "4")
        self.assertEqual(Refusal(0.01, 0, "rate").retry_after_header(lambda: 0.0), "1")

    def test_refusals_are_logged_once_per_window_with_counts(self) -> None:
        """
        One log line per 10 s, counting what was refused meanwhile.
        """
        admission = self.admission(10)
        for _ in range(5):
            admission.admit(True)
        self.assertEqual(len(self.logged), 1)
        self.clock.advance(10)
        self.assertIsNone(admission.admit(False), "refilled")
        admission.admit(False)
        self.assertEqual(len(self.logged), 2)
        self.assertEqual(self.logged[1]["counts"], "1 rate/503, 3 rate/hint")


class LagTests(unittest.TestCase):
    """
    The admitted rate follows the reactor's lag: halved (at most once a
    second, down to a tenth) while it is over LAG_HIGH, grown back by a
    tenth a second once it is under LAG_LOW.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.lag = 0.0
        self.logged: list[dict[str, Any]] = []
        self.admission = Admission(
            AdmissionSettings(accept_rate=100, ramp=0), self.clock, log=lambda fmt, **kw: self.logged.append(kw)
        )
        self.admission.follow_lag(lambda: self.lag)

    def rate_after(self, seconds: float) -> float:
        self.clock.advance(seconds)
        self.admission.arrived()  # any question to it looks at the lag
        return self.admission.rate()

    def test_a_late_reactor_halves_the_rate_down_to_a_tenth(self) -> None:
        self.assertEqual(self.rate_after(0), 100)
        self.lag = LAG_HIGH + 0.1
        self.assertEqual(self.rate_after(0.1), 50)
        self.assertEqual(self.rate_after(0.5), 50, "at most once a second")
        self.assertEqual(self.rate_after(0.5), 25)
        for _ in range(5):
            self.rate_after(1)
        self.assertAlmostEqual(self.admission.rate(), 100 * RAMP_FROM)
        self.assertEqual([e["what"] for e in self.logged], ["slowing down"])

    def test_it_grows_back_by_a_tenth_a_second(self) -> None:
        self.lag = 1.0
        self.rate_after(0)
        self.rate_after(1)
        self.assertEqual(self.admission.rate(), 25)
        self.lag = (LAG_LOW + LAG_HIGH) / 2
        self.assertEqual(self.rate_after(1), 25, "between the two: unchanged")
        self.lag = 0.0
        rates = [round(self.rate_after(1)) for _ in range(9)]
        self.assertEqual(rates, [35, 45, 55, 65, 75, 85, 95, 100, 100])
        self.assertEqual([e["what"] for e in self.logged], ["slowing down", "back to its rate"])

    def test_refused_clients_get_slots_at_the_slower_rate(self) -> None:
        """
        Slots are spaced at the rate of the moment: a fleet told to come
        back returns at what the process manages.
        """
        self.lag = 1.0
        self.clock.advance(1)
        while self.admission.admit(True) is None:
            pass  # the burst the rate allows
        self.assertEqual(self.admission.rate(), 50)
        first, second = self.admission.admit(True), self.admission.admit(True)
        assert first is not None and second is not None
        self.assertAlmostEqual(second.retry_after - first.retry_after, 1 / 50)

    def test_without_a_lag_source_the_rate_is_as_configured(self) -> None:
        admission = Admission(AdmissionSettings(accept_rate=100, ramp=0), self.clock)
        self.clock.advance(10)
        admission.arrived()
        self.assertEqual(admission.rate(), 100)


class FleetTests(unittest.TestCase):
    def simulate(
        self, fleet: int, rate: float, ramp: float, seed: int, address: Optional[str] = None
    ) -> tuple[list[float], int]:
        """
        C{fleet} wsheart clients arrive within one second of a start (no
        drain hint) and each retries as L{wsheart.client} does: dropped at
        accept, after its jittered backoff (the window doubling per
        failure, 60 s at most); told 1013 with a hint, after the hint if it
        is at least the next backoff window, else after max(hint, its
        backoff), a failure.  Returns when each was admitted and the
        attempts made.  C{address}: the one client address of the whole
        fleet (None: no address, as from a Unix socket).
        """
        rng = random.Random(seed)
        clock = Clock()
        admission = Admission(AdmissionSettings(accept_rate=rate, ramp=ramp), clock)
        pending = [(rng.random(), i) for i in range(fleet)]
        heapq.heapify(pending)
        failures = [0] * fleet
        admitted_at: list[float] = []
        attempts = 0

        def backoff(client: int) -> float:
            window = min(60.0, 2.0 ** failures[client])
            failures[client] += 1
            return 0.1 + rng.random() * window

        while pending:
            at, client = heapq.heappop(pending)
            clock.advance(max(0.0, at - clock.seconds()))
            attempts += 1
            self.assertLess(attempts, fleet * 20, "the fleet must converge")
            if not admission.arrived(address):
                heapq.heappush(pending, (clock.seconds() + backoff(client), client))
                continue
            refusal = admission.admit(True, address)
            if refusal is None:
                admitted_at.append(clock.seconds())
                continue
            hinted = 0.1 + refusal.retry_after + rng.random() * refusal.jitter
            if refusal.retry_after < min(60.0, 2.0 ** failures[client]):
                hinted = max(hinted, backoff(client))
            heapq.heappush(pending, (clock.seconds() + hinted, client))
        return admitted_at, attempts

    def test_a_fleet_that_obeys_converges_at_the_rate(self) -> None:
        """
        2000 clients come back at once to a process admitting 200/s after a
        5 s ramp: all are admitted; no second admits more than 10% over the
        rate; and the last is in within 30% of the time the rate needs.
        """
        self.converges(address=None)

    def test_a_fleet_behind_one_address_converges_at_the_rate(self) -> None:
        """
        The same fleet sharing one client address (behind NAT, or a load
        balancer that does not pass addresses on) is not held back by the
        per-address share: it too is all in within 30% of the time the rate
        needs.
        """
        self.converges(address="203.0.113.9")

    def converges(self, address: Optional[str]) -> None:
        rate, ramp, fleet = 200.0, 5.0, 2000
        for seed in (1, 2, 3):
            admitted_at, attempts = self.simulate(fleet, rate, ramp, seed, address)
            self.assertEqual(len(admitted_at), fleet)
            per_second: dict[int, int] = {}
            for t in admitted_at:
                per_second[int(t)] = per_second.get(int(t), 0) + 1
            for second, count in per_second.items():
                self.assertLessEqual(count, rate * 1.1, f"second {second}: {count} admitted")
            # The ramp admits rate * (1 + 0.1) / 2 a second on average.
            ideal = ramp + (fleet - ramp * rate * 1.1 / 2) / rate
            self.assertLess(max(admitted_at), ideal * 1.3, f"seed {seed}: all in after {max(admitted_at):.1f} s, ideal {ideal:.1f} s, {attempts} attempts")


class ServerAdmissionTests(unittest.TestCase):
    """
    How the server answers a handshake admission control turns away.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.handler = RecordingHandler()

    def factory(self, **kwargs: Any) -> Any:
        factory = make_server_factory(self.clock, handler=self.handler, **kwargs)
        factory.startFactory()
        return factory

    def connect_from(self, factory: Any, host: str) -> tuple[Any, Any, iosim.IOPump]:
        return connect_client(factory, self.clock, peer=host)

    def test_a_wsheart_client_is_told_in_band_when_to_come_back(self) -> None:
        """
        Over the rate, a client offering a wsheart.* subprotocol is opened
        and closed at once with 1013 and its slot's retry window: never in
        the hub, never seen by the handler, no token checked.
        """
        factory = self.factory(admission=AdmissionSettings(accept_rate=10, ramp=0))
        first, _, _ = connect_client(factory, self.clock, protocols=["wsheart.hints"])
        self.assertTrue(first.opened)
        self.assertEqual(first.closes, [])
        refused, server, pump = connect_client(factory, self.clock, protocols=["wsheart.hints"])
        pump.flush()
        self.assertEqual(len(refused.closes), 1)
        _, code, reason = refused.closes[0]
        self.assertEqual(code, 1013)
        hint = hint_from_close(code, reason)
        assert hint is not None
        self.assertAlmostEqual(hint.retry_after, 0.1)
        self.assertEqual(len(factory.hub), 1, "only the admitted one is in the hub")
        self.assertEqual(len(self.handler.opened), 1, "the handler never saw the refused one")
        self.assertEqual(factory.metrics.admission_refusals.labels(reason="rate", answer="hint")._value.get(), 1)
        self.assertEqual(factory.limits.pending, {})

    def test_other_clients_get_503_with_their_own_retry_after(self) -> None:
        """
        A client that offers no wsheart.* subprotocol gets HTTP 503 with a
        Retry-After in whole seconds, before any upgrade.
        """
        factory = self.factory(admission=AdmissionSettings(accept_rate=10, ramp=0))
        connect_client(factory, self.clock)
        refused, _, _ = connect_client(factory, self.clock)
        self.assertFalse(refused.opened)
        head = refused.http_response_data.decode("latin-1")
        self.assertTrue(head.startswith("HTTP/1.1 503 "), head)
        self.assertRegex(head, r"\r\nRetry-After: [12]\r\n")
        self.assertEqual(factory.metrics.admission_refusals.labels(reason="rate", answer="503")._value.get(), 1)
        self.assertEqual(factory.metrics.handshake_failures.labels(reason="admission")._value.get(), 1)

    def test_far_over_the_rate_dropped_before_a_byte_is_read(self) -> None:
        """
        Past four times the rate the connection is aborted in
        connectionMade: nothing is read, nothing is answered (over TLS,
        no TLS handshake either).
        """
        factory = self.factory(admission=AdmissionSettings(accept_rate=10, ramp=0))
        allowed = int(DROP_FACTOR * 10)
        transports = []
        for _ in range(allowed + 1):
            server = factory.buildProtocol(None)
            transport = iosim.FakeTransport(server, isServer=True)
            server.makeConnection(transport)
            transports.append(transport)
        self.assertEqual([t.disconnecting for t in transports], [False] * allowed + [True])
        self.assertEqual(factory.metrics.admission_refusals.labels(reason="rate", answer="drop")._value.get(), 1)

    def test_a_full_process_tells_wsheart_clients_when_to_come_back(self) -> None:
        """
        At --max-connections a wsheart client gets 1013 with the fixed
        full hint, others 503 with Retry-After; the per-address limit
        stays a plain 429.
        """
        factory = self.factory(limits=LimitSettings(max_connections=1))
        connect_client(factory, self.clock)
        in_band, _, pump = connect_client(factory, self.clock, protocols=["wsheart.v1", "wsheart.hints"])
        pump.flush()
        hint = hint_from_close(in_band.closes[0][1], in_band.closes[0][2])
        assert hint is not None
        self.assertEqual((hint.retry_after, hint.jitter), FULL_HINT)
        other, _, _ = connect_client(factory, self.clock)
        head = other.http_response_data.decode("latin-1")
        self.assertTrue(head.startswith("HTTP/1.1 503 "))
        retry_after = int(head.split("Retry-After: ")[1].split("\r\n")[0])
        self.assertTrue(FULL_HINT[0] <= retry_after <= sum(FULL_HINT) + 1, retry_after)

    def test_admitted_connections_are_unaffected(self) -> None:
        """
        Admitted connections open and echo as always while others are
        refused around them.
        """
        factory = self.factory(admission=AdmissionSettings(accept_rate=10, ramp=0))
        client, _, pump = connect_client(factory, self.clock, protocols=["wsheart.hints"])
        for _ in range(5):
            connect_client(factory, self.clock, protocols=["wsheart.hints"])[2].flush()
        client.sendMessage(b"still here", False)
        pump.flush()
        self.assertEqual(client.messages, ["still here"])
        self.assertEqual(client.closes, [])
        self.assertEqual(json.loads(json.dumps(factory.admission.queue_seconds())) > 0, True)

    def test_the_ramp_starts_when_the_listener_starts(self) -> None:
        """
        startFactory (the first listener starting) begins the ramp, not
        the daemon's composition.
        """
        factory = make_server_factory(self.clock, admission=AdmissionSettings(accept_rate=100, ramp=10))
        self.clock.advance(60)
        self.assertAlmostEqual(factory.admission.rate(), 100)
        factory.startFactory()
        self.assertAlmostEqual(factory.admission.rate(), 10)

    def test_wsheart_hints_is_selected_and_changes_nothing_else(self) -> None:
        """
        A plain connection offering wsheart.hints (wsheart.js) gets it
        selected - a browser fails a handshake whose offers were all
        declined - and is served as any plain connection: echo and the
        text ping.
        """
        factory = self.factory()
        client, server, pump = connect_client(factory, self.clock, protocols=["wsheart.bearer.x", "wsheart.hints"])
        self.assertTrue(client.opened)
        self.assertEqual(client.websocket_protocol_in_use, "wsheart.hints")
        client.sendMessage(b"ping", False)
        client.sendMessage(b"hello", False)
        pump.flush()
        self.assertEqual(client.messages, ["pong", "hello"])

    def test_an_address_holding_its_share_of_slots_gets_429(self) -> None:
        """
        Over the wire: the handshakes of one address past its share of
        slots get 429 with a Retry-After (no slot, the queue unmoved).
        """
        factory = self.factory(admission=AdmissionSettings(accept_rate=10, ramp=0))
        admission = factory.admission
        # Its handshakes so far took the burst and all but two of its slots.
        for _ in range(admission.slots_per_address - 1):
            admission.admit(False, address_key("198.51.100.7"))
        answers = []
        for _ in range(4):
            client, _, _ = self.connect_from(factory, "198.51.100.7")
            answers.append(client.http_response_data.split(b" ", 2)[1] if client.http_response_data else b"101")
        self.assertEqual(answers, [b"503"] * 2 + [b"429"] * 2)
        self.assertRegex(client.http_response_data, rb"\r\nRetry-After: \d+\r\n")
