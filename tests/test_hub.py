"""
Unit tests of wsheart.hub: the registry of open connections on a Clock,
with recording connections in place of protocols - registration, removal
exactly once, push and broadcast, snapshots, and removal observers.

How the server protocol registers itself is tested with the protocol
(tests/test_protocol.py); here the hub alone.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from twisted.trial import unittest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from wsheart.hub import ConnectionInfo, ConnectionSnapshot, Hub, IConnection


@implementer(IConnection)
class RecordingConnection:
    """
    An L{IConnection} that records what it is sent and takes it only while
    C{accepting}.
    """

    max_message_size = 1024
    identity = None  # no --auth

    def __init__(self, connection_id: str, accepting: bool = True) -> None:
        self.connection_id = connection_id
        self.peer = f"tcp4:127.0.0.1:{1000 + len(connection_id)}"
        self.accepting = accepting
        self.texts: list[str] = []
        self.binaries: list[bytes] = []

    def send_text(self, text: str) -> bool:
        if not self.accepting:
            return False
        self.texts.append(text)
        return True

    def send_binary(self, data: bytes) -> bool:
        if not self.accepting:
            return False
        self.binaries.append(data)
        return True

    def close(self, code: int, reason: str) -> None:
        pass

    def abort(self) -> None:
        pass


class Heartbeat:
    """
    The heartbeat attributes a snapshot reads.
    """

    def __init__(self, last_seen: float, last_rtt: Optional[float], smoothed_rtt: Optional[float], misses: int) -> None:
        self.last_seen = last_seen
        self.last_rtt = last_rtt
        self.smoothed_rtt = smoothed_rtt
        self.misses = misses


class HubTestCase(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.hub = Hub(self.clock)

    def register(self, accepting: bool = True, heartbeat: Any = None) -> RecordingConnection:
        connection = RecordingConnection(self.hub.new_id(), accepting)
        self.hub.add(connection.connection_id, connection.peer, connection, heartbeat)
        return connection


class RegistryTests(HubTestCase):
    """
    Adding, finding and listing connections.
    """

    def test_recording_connection_is_an_iconnection(self) -> None:
        """
        The test double provides the whole L{IConnection} interface, so the
        tests below speak to the hub as a protocol would.
        """
        self.assertTrue(verifyObject(IConnection, RecordingConnection("c1")))

    def test_new_ids_are_unique(self) -> None:
        """
        new_id() hands out distinct identifiers, c1, c2, ...
        """
        self.assertEqual([self.hub.new_id() for _ in range(3)], ["c1", "c2", "c3"])
        self.assertEqual(Hub(self.clock).new_id(), "c1", "each hub counts on its own")

    def test_ids_carry_the_node(self) -> None:
        """
        With a node name (--node-id), ids are unique across the processes
        of a deployment: two processes never hand out the same one.
        """
        a, b = Hub(self.clock, node="a1"), Hub(self.clock, node="b2")
        self.assertEqual([a.new_id(), a.new_id(), b.new_id()], ["a1.c1", "a1.c2", "b2.c1"])

    def test_add_registers_with_the_clock_time(self) -> None:
        """
        add() records peer, connection, heartbeat and the clock's time, and
        the connection is then found, counted and listed.
        """
        self.clock.advance(12.5)
        heartbeat = Heartbeat(0, None, None, 0)
        connection = RecordingConnection("c7")
        info = self.hub.add("c7", "tcp4:10.0.0.1:4000", connection, heartbeat)
        self.assertIsInstance(info, ConnectionInfo)
        self.assertEqual(
            (info.connection_id, info.peer, info.opened_at, info.connection, info.heartbeat),
            ("c7", "tcp4:10.0.0.1:4000", 12.5, connection, heartbeat),
        )
        self.assertIs(self.hub.get("c7"), info)
        self.assertIsNone(self.hub.get("c8"))
        self.assertEqual(len(self.hub), 1)
        self.assertEqual(list(self.hub), [info])
        self.assertEqual(self.hub.opened_total, 1)

    def test_add_twice_is_refused(self) -> None:
        """
        Registering an identifier that is already registered raises
        KeyError and leaves the first registration alone.
        """
        first = self.register()
        with self.assertRaises(KeyError):
            self.hub.add(first.connection_id, "other", RecordingConnection(first.connection_id))
        self.assertIs(self.hub.get(first.connection_id).connection, first)  # type: ignore[union-attr]
        self.assertEqual(self.hub.opened_total, 1)

    def test_iteration_is_over_a_copy(self) -> None:
        """
        Removing connections while iterating the hub (what a drain does)
        visits every connection that was registered when it started.
        """
        connections = [self.register() for _ in range(4)]
        seen = []
        for info in self.hub:
            seen.append(info.connection_id)
            self.hub.remove(info.connection_id, "closed")
        self.assertEqual(seen, [c.connection_id for c in connections])
        self.assertEqual(len(self.hub), 0)


class RemovalTests(HubTestCase):
    """
    Unregistering: exactly once, counted by cause.
    """

    def test_only_the_first_removal_counts(self) -> None:
        """
        The first remove() returns True and is counted under its cause; a
        second one (the TCP loss after a death) returns False and changes
        nothing.
        """
        connection = self.register()
        self.assertTrue(self.hub.remove(connection.connection_id, "dead"))
        self.assertFalse(self.hub.remove(connection.connection_id, "dropped"))
        self.assertEqual(self.hub.closed_total, {"dead": 1})
        self.assertEqual(len(self.hub), 0)
        self.assertIsNone(self.hub.get(connection.connection_id))

    def test_unknown_connection(self) -> None:
        """
        Removing an identifier never registered returns False and counts
        nothing.
        """
        self.assertFalse(self.hub.remove("c99", "closed"))
        self.assertEqual(self.hub.closed_total, {})

    def test_causes_counted_apart(self) -> None:
        """
        closed_total counts each cause on its own; opened_total counts every
        registration ever made.
        """
        for cause in ["closed", "dropped", "closed", "dead", "slow"]:
            self.hub.remove(self.register().connection_id, cause)
        self.assertEqual(self.hub.closed_total, {"closed": 2, "dropped": 1, "dead": 1, "slow": 1})
        self.assertEqual(self.hub.opened_total, 5)

    def test_identifier_free_again_after_removal(self) -> None:
        """
        Once removed, the same identifier may be registered again.
        """
        connection = self.register()
        self.hub.remove(connection.connection_id, "closed")
        self.hub.add(connection.connection_id, connection.peer, connection)
        self.assertEqual(len(self.hub), 1)


class RemovalObserverTests(HubTestCase):
    """
    on_removal observers: told once per connection, and isolated from each
    other's failures.
    """

    def test_observer_told_once_with_info_and_cause(self) -> None:
        """
        An observer gets (info, cause) for each connection that leaves, once,
        and after the connection is already gone from the hub.
        """
        calls: list[tuple[str, str, int]] = []
        self.hub.on_removal(lambda info, cause: calls.append((info.connection_id, cause, len(self.hub))))
        a, b = self.register(), self.register()
        self.hub.remove(a.connection_id, "dead")
        self.hub.remove(a.connection_id, "dropped")
        self.hub.remove(b.connection_id, "closed")
        self.assertEqual(calls, [(a.connection_id, "dead", 1), (b.connection_id, "closed", 0)])

    def test_observers_called_in_order(self) -> None:
        """
        Every observer is called, in the order they were added.
        """
        order: list[str] = []
        self.hub.on_removal(lambda info, cause: order.append("first"))
        self.hub.on_removal(lambda info, cause: order.append("second"))
        self.hub.remove(self.register().connection_id, "closed")
        self.assertEqual(order, ["first", "second"])

    def test_observer_removing_again_is_a_no_op(self) -> None:
        """
        An observer that removes the same connection again (re-entrantly)
        gets False, and nobody is told twice.
        """
        connection = self.register()
        calls: list[str] = []

        def observer(info: ConnectionInfo, cause: str) -> None:
            calls.append(cause)
            calls.append(str(self.hub.remove(info.connection_id, "again")))

        self.hub.on_removal(observer)
        self.assertTrue(self.hub.remove(connection.connection_id, "closed"))
        self.assertEqual(calls, ["closed", "False"])
        self.assertEqual(self.hub.closed_total, {"closed": 1})

    def test_failing_observer_is_logged_and_the_others_still_run(self) -> None:
        """
        An observer that raises does not escape remove(): the failure is
        logged with the connection's id, the observers after it are still
        called, and the connection is removed and counted.
        """
        connection = self.register()
        later: list[str] = []

        def broken(info: ConnectionInfo, cause: str) -> None:
            raise RuntimeError("observer broke")

        self.hub.on_removal(broken)
        self.hub.on_removal(lambda info, cause: later.append(info.connection_id))
        with capturedLogs() as events:
            removed = self.hub.remove(connection.connection_id, "closed")
        self.assertTrue(removed)
        self.assertEqual(later, [connection.connection_id])
        self.assertIsNone(self.hub.get(connection.connection_id))
        self.assertEqual(self.hub.closed_total, {"closed": 1})
        failures = [e for e in events if e.get("log_failure") is not None]
        self.assertEqual(len(failures), 1)
        self.assertEqual(failures[0]["log_level"], LogLevel.critical)
        self.assertEqual(failures[0]["cid"], connection.connection_id)
        self.assertIn("removal observer failed", failures[0]["log_format"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_failing_observer_does_not_break_later_removals(self) -> None:
        """
        After an observer failed once, the next removal still tells every
        observer (the failing one is not dropped either).
        """
        calls: list[str] = []

        def flaky(info: ConnectionInfo, cause: str) -> None:
            calls.append("flaky")
            if len(calls) == 1:
                raise RuntimeError("first time only")

        self.hub.on_removal(flaky)
        self.hub.on_removal(lambda info, cause: calls.append("steady"))
        self.hub.remove(self.register().connection_id, "closed")
        self.hub.remove(self.register().connection_id, "closed")
        self.assertEqual(calls, ["flaky", "steady", "flaky", "steady"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class PushTests(HubTestCase):
    """
    Reaching connections through the hub.
    """

    def test_push_text_and_binary_to_one(self) -> None:
        """
        push_text and push_binary reach only the named connection and say
        True when it took the message.
        """
        a, b = self.register(), self.register()
        self.assertTrue(self.hub.push_text(b.connection_id, "only b"))
        self.assertTrue(self.hub.push_binary(a.connection_id, b"only a"))
        self.assertEqual((a.texts, a.binaries), ([], [b"only a"]))
        self.assertEqual((b.texts, b.binaries), (["only b"], []))

    def test_push_to_unknown_or_refusing(self) -> None:
        """
        Pushing to an identifier not registered, or to a connection that
        does not take the message (closing, too slow), is False.
        """
        refusing = self.register(accepting=False)
        self.assertFalse(self.hub.push_text("c99", "x"))
        self.assertFalse(self.hub.push_binary("c99", b"x"))
        self.assertFalse(self.hub.push_text(refusing.connection_id, "x"))
        self.assertFalse(self.hub.push_binary(refusing.connection_id, b"x"))

    def test_push_after_removal(self) -> None:
        """
        A removed connection is no longer reached.
        """
        connection = self.register()
        self.hub.remove(connection.connection_id, "closed")
        self.assertFalse(self.hub.push_text(connection.connection_id, "late"))
        self.assertEqual(connection.texts, [])

    def test_broadcast_counts_who_took_it(self) -> None:
        """
        broadcast_text sends to every open connection and returns how many
        took the message.
        """
        a, refusing, c = self.register(), self.register(accepting=False), self.register()
        self.assertEqual(self.hub.broadcast_text("all"), 2)
        self.assertEqual((a.texts, refusing.texts, c.texts), (["all"], [], ["all"]))
        self.assertEqual(Hub(self.clock).broadcast_text("nobody"), 0)

    def test_broadcast_survives_removal_during_send(self) -> None:
        """
        A connection that leaves the hub while the broadcast runs (its send
        fails and closes it) does not stop the others from being reached.
        """
        hub = self.hub

        @implementer(IConnection)
        class Leaving(RecordingConnection):
            def send_text(self, text: str) -> bool:
                hub.remove(self.connection_id, "slow")
                return False

        leaving = Leaving(hub.new_id())
        hub.add(leaving.connection_id, leaving.peer, leaving)
        other = self.register()
        self.assertEqual(hub.broadcast_text("all"), 1)
        self.assertEqual(other.texts, ["all"])
        self.assertEqual(len(hub), 1)


class SnapshotTests(HubTestCase):
    """
    The registry as plain values.
    """

    def test_snapshot_reads_the_heartbeat(self) -> None:
        """
        A snapshot row carries age from the clock, and last_seen, RTTs and
        misses read from the connection's heartbeat at that moment.
        """
        self.clock.advance(100)
        heartbeat = Heartbeat(last_seen=101.0, last_rtt=0.02, smoothed_rtt=0.015, misses=1)
        connection = self.register(heartbeat=heartbeat)
        self.clock.advance(4)
        heartbeat.misses = 2  # read when asked, not copied at add()
        (row,) = self.hub.snapshot()
        self.assertEqual(
            row,
            ConnectionSnapshot(
                connection_id=connection.connection_id,
                peer=connection.peer,
                opened_at=100.0,
                age=4.0,
                last_seen=101.0,
                last_rtt=0.02,
                smoothed_rtt=0.015,
                misses=2,
            ),
        )

    def test_snapshot_without_heartbeat(self) -> None:
        """
        A connection without a heartbeat has no last_seen or RTTs and no
        misses.
        """
        self.register()
        (row,) = self.hub.snapshot()
        self.assertEqual((row.last_seen, row.last_rtt, row.smoothed_rtt, row.misses), (None, None, None, 0))

    def test_snapshot_oldest_first_and_detached(self) -> None:
        """
        Rows come oldest connection first; a snapshot is a copy that later
        changes to the hub do not touch.
        """
        first = self.register()
        self.clock.advance(1)
        second = self.register()
        rows = self.hub.snapshot()
        self.assertEqual([r.connection_id for r in rows], [first.connection_id, second.connection_id])
        self.assertEqual([r.age for r in rows], [1.0, 0.0])
        self.hub.remove(first.connection_id, "closed")
        self.assertEqual(len(rows), 2)
        with self.assertRaises(AttributeError):
            rows[0].misses = 5  # type: ignore[misc]
        self.assertEqual(self.hub.snapshot()[0].connection_id, second.connection_id)
        self.assertEqual(Hub(self.clock).snapshot(), [])
