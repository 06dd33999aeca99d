"""
Tests for wsheart.accepts: listening ports pause (0.1 s doubling to 1 s)
when Twisted's Port cannot accept for want of descriptors and has no spare
one, instead of spinning; one log line per episode each way.  In memory:
a MemoryReactorClock and Ports that never bind.
"""

from __future__ import annotations

from twisted.internet import protocol, tcp
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, capturedLogs
from twisted.trial import unittest

from wsheart.accepts import AcceptPauser

PORT_NAMESPACE = "twisted.internet.tcp.Port"


def gave_up(error: str = "EMFILE") -> dict[str, object]:
    """
    The event tcp.Port logs when accept(2) fails and it gives up.
    """
    return {
        "log_namespace": PORT_NAMESPACE,
        "log_format": "Could not accept new connection ({acceptError})",
        "log_level": LogLevel.info,
        "acceptError": error,
    }


class AcceptPauserTests(unittest.TestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.count = 0
        self.pauser = AcceptPauser(self.reactor, paused=self.bump)
        self.ports = []
        for _ in range(2):
            port = tcp.Port(0, protocol.Factory(), reactor=self.reactor)
            port.connected = True  # as after startListening, without a socket
            port.startReading()
            self.ports.append(port)

    def bump(self) -> None:
        self.count += 1

    def reading(self) -> list[bool]:
        return [port in self.reactor.getReaders() for port in self.ports]

    def test_pauses_and_backs_off(self) -> None:
        """
        While accepts keep failing, every listening port stops reading for
        0.1, 0.2, 0.4, 0.8, 1, 1 s; each pause counts; the episode is
        logged once when it starts and once, with the count, when accepts
        have gone through for a second.
        """
        with capturedLogs() as events:
            delays = []
            for _ in range(6):
                self.pauser(gave_up())
                self.assertEqual(self.reading(), [False, False])
                (resume,) = self.reactor.getDelayedCalls()
                delay = resume.getTime() - self.reactor.seconds()
                self.reactor.advance(delay - 0.001)
                self.assertEqual(self.reading(), [False, False])
                self.reactor.advance(0.001)
                self.assertEqual(self.reading(), [True, True])
                delays.append(round(delay, 3))
            self.assertEqual(delays, [0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
            self.assertEqual(self.count, 6)
            self.reactor.advance(1.0)
        texts = [e["log_format"] for e in events]
        self.assertEqual(len([t for t in texts if t.startswith("out of file descriptors")]), 1)
        calm = [e for e in events if e["log_format"].startswith("accepting again")]
        self.assertEqual([(e["pauses"], e["error"]) for e in calm], [(6, "EMFILE")])
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        # A new episode starts short again.
        self.pauser(gave_up("ENFILE"))
        self.reactor.advance(0.1)
        self.assertEqual(self.reading(), [True, True])
        self.pauser.stop()
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_ignores_other_events(self) -> None:
        """
        A client's abort (ECONNABORTED), Twisted's own EMFILE recovery with
        its spare descriptor (no acceptError), and other namespaces pause
        nothing.
        """
        for event in [
            gave_up("ECONNABORTED"),
            {"log_namespace": PORT_NAMESPACE, "log_format": "EMFILE encountered; releasing reserved file descriptor."},
            dict(gave_up(), log_namespace="somewhere.else"),
        ]:
            self.pauser(event)
        self.assertEqual(self.reading(), [True, True])
        self.assertEqual((self.count, self.reactor.getDelayedCalls()), (0, []))

    def test_port_closed_while_paused_stays_closed(self) -> None:
        """
        A port that stopped listening during a pause is not read again.
        """
        self.pauser(gave_up())
        self.ports[0].connected = False
        self.reactor.advance(0.1)
        self.assertEqual(self.reading(), [False, True])
        self.pauser.stop()
        self.assertEqual(self.reactor.getDelayedCalls(), [])
