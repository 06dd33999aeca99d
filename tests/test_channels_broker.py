"""
Tests for L{wsheart.channels.broker}: the broker's seq, epoch, history, recovery,
presence, limits and housekeeping, with fake connections and a
L{task.Clock}.

L{BrokerContract} is written once for every engine: it uses the broker's
public methods only, and builds its broker and moves its time through two
hooks (L{BrokerContract.make_broker}, L{BrokerContract.advance}).  The
memory engine runs it here.  An engine that shares state elsewhere (Redis)
subclasses it with its own hooks and is held to the same promises; since
such an engine answers later (Deferreds, which wsheart.v1 and the HTTP API
already take: tests/test_channels_v1.py LaterBroker), its subclass is where
the contract's calls learn to wait.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.task import Clock
from twisted.trial import unittest

from wsheart.channels.broker import MAX_CLIENT_NAME, Broker, ChannelError, ChannelSettings, Housekeeping, Position

from .memory import FakeConnection


def seqs(frames: list[dict[str, Any]]) -> list[int]:
    return [f["seq"] for f in frames if f["op"] == "message"]


def history(broker: Broker, channel: str, since: int = 0) -> dict[str, Any]:
    return json.loads(broker.history_json(channel, since))  # type: ignore[no-any-return]


class BrokerContract:
    """
    What every channel engine promises (docs/protocol.md).  Mixed into a
    L{unittest.TestCase} that provides L{make_broker} and L{advance}.
    """

    clock: Clock
    broker: Broker
    # TestCase methods, for the type checker.
    assertEqual: Any
    assertNotEqual: Any
    assertTrue: Any
    assertFalse: Any
    assertIn: Any
    assertLessEqual: Any
    assertRaises: Any
    flushLoggedErrors: Any

    def make_broker(self, settings: ChannelSettings) -> Broker:
        raise NotImplementedError

    def advance(self, seconds: float) -> None:
        raise NotImplementedError

    def setUp(self) -> None:
        self.broker = self.make_broker(ChannelSettings(history_size=5, history_age=60))

    def sub(self, cid: str, channel: str = "news", since: Any = None, name: Any = None, broker: Any = None) -> tuple[FakeConnection, Any]:
        connection = FakeConnection(cid)
        return connection, (broker or self.broker).subscribe(cid, connection, channel, since=since, name=name)

    def refused(self, code: int, call: Any, *args: Any, **kwargs: Any) -> ChannelError:
        with self.assertRaises(ChannelError) as e:
            call(*args, **kwargs)
        self.assertEqual(e.exception.code, code, e.exception.reason)
        return e.exception  # type: ignore[no-any-return]

    # -- positions and recovery -----------------------------------------------

    def test_seq_grows_by_one_within_an_epoch(self) -> None:
        """
        Each message of a channel gets the next seq of one epoch, and
        subscribers get the frames the protocol document shows.
        """
        a, first = self.sub("a")
        self.assertEqual(first.position.seq, 0)
        positions = [self.broker.publish("news", {"n": i}) for i in range(3)]
        self.assertEqual([p.seq for p in positions], [1, 2, 3])
        self.assertEqual({p.epoch for p in positions}, {first.position.epoch})
        self.assertEqual(
            a.frames(),
            [{"op": "message", "channel": "news", "epoch": first.position.epoch, "seq": i + 1, "data": {"n": i}} for i in range(3)],
        )

    def test_recovery_sends_exactly_the_missed_messages(self) -> None:
        """
        A resubscribe from a position gets exactly the messages after it,
        then live ones, none twice.
        """
        a, s = self.sub("a")
        for i in range(3):
            self.broker.publish("news", i)
        position = Position(s.position.epoch, 3)
        self.broker.remove_connection("a")
        for i in range(3, 6):
            self.broker.publish("news", i)
        b, again = self.sub("b", since=position)
        self.assertTrue(again.recovered)
        self.assertEqual(again.position.seq, 6)
        self.assertEqual([json.loads(m)["seq"] for m in again.missed], [4, 5, 6])
        self.assertEqual([json.loads(m)["data"] for m in again.missed], [3, 4, 5])
        self.broker.publish("news", 6)
        self.assertEqual(seqs(b.frames()), [7], "live messages follow, none repeated")

    def test_nothing_missed(self) -> None:
        """
        A position at the head recovers nothing, successfully.
        """
        _, s = self.sub("a")
        self.broker.publish("news", 1)
        _, again = self.sub("a", since=Position(s.position.epoch, 1))
        self.assertEqual((again.recovered, again.missed), (True, ()))

    def test_gap_older_than_history(self) -> None:
        """
        A gap that history no longer covers is not recovered; the edge
        case (the oldest kept message is the first missed) is.
        """
        _, s = self.sub("a")
        for i in range(8):  # history keeps 5: seq 4..8
            self.broker.publish("news", i)
        _, old = self.sub("b", since=Position(s.position.epoch, 2))
        self.assertEqual((old.recovered, old.missed), (False, ()))
        _, edge = self.sub("c", since=Position(s.position.epoch, 3))
        self.assertTrue(edge.recovered)
        self.assertEqual([json.loads(m)["seq"] for m in edge.missed], [4, 5, 6, 7, 8])

    def test_history_age(self) -> None:
        """
        Messages older than the history age are not recovered nor listed.
        """
        _, s = self.sub("a")
        self.broker.publish("news", "old")
        self.advance(61)
        self.broker.publish("news", "new")
        _, r = self.sub("b", since=Position(s.position.epoch, 0))
        self.assertFalse(r.recovered, "seq 1 expired")
        _, r = self.sub("c", since=Position(s.position.epoch, 1))
        self.assertTrue(r.recovered)
        self.assertEqual(len(r.missed), 1)
        self.assertEqual(history(self.broker, "news")["messages"], [{"seq": 2, "data": "new"}])

    def test_wrong_epoch_or_future_position(self) -> None:
        """
        Another epoch, a seq ahead of the channel or a negative one
        recovers nothing.
        """
        _, s = self.sub("a")
        self.broker.publish("news", 1)
        for since in [Position("other", 0), Position(s.position.epoch, 2), Position(s.position.epoch, -1)]:
            _, r = self.sub("b", since=since)
            self.assertEqual((r.recovered, r.missed), (False, ()), since)
        _, fresh = self.sub("c")
        self.assertFalse(fresh.recovered, "no position: nothing to recover")

    def test_epoch_changes_when_history_is_lost(self) -> None:
        """
        A channel forgotten (no subscribers, history expired) comes back
        with a new epoch, so an old position cannot pass for a new one.
        """
        _, s = self.sub("a")
        self.broker.publish("news", 1)
        self.broker.remove_connection("a")
        self.advance(61)
        self.broker.expire()
        _, r = self.sub("b", since=Position(s.position.epoch, 1))
        self.assertNotEqual(r.position.epoch, s.position.epoch)
        self.assertEqual(r.position.seq, 0)
        self.assertFalse(r.recovered)

    def test_history_document(self) -> None:
        """
        The history JSON lists the messages after C{since} with their data
        as published, and says whether they are all of them.
        """
        for i in range(7):  # history keeps 5: seq 3..7
            self.broker.publish("news", {"i": i, "t": "é\n"})
        doc = history(self.broker, "news", 4)
        self.assertEqual([m["seq"] for m in doc["messages"]], [5, 6, 7])
        self.assertEqual(doc["messages"][0]["data"], {"i": 4, "t": "é\n"})
        self.assertEqual((doc["seq"], doc["complete"]), (7, True))
        self.assertFalse(history(self.broker, "news", 1)["complete"], "seq 2 is gone")
        self.assertEqual(
            history(self.broker, "never"), {"channel": "never", "epoch": None, "seq": 0, "complete": True, "messages": []}
        )

    # -- presence -------------------------------------------------------------

    def test_presence(self) -> None:
        """
        Subscribers are listed with their names; others hear joins and
        leaves, nobody hears about themselves, a resubscribe is no join.
        """
        a, _ = self.sub("a", name="alice")
        b, sb = self.sub("b", name="bob")
        self.assertEqual(list(sb.presence), [{"id": "a", "name": "alice"}, {"id": "b", "name": "bob"}])
        self.assertTrue(sb.presence_complete)
        self.assertEqual(a.take(), [{"op": "join", "channel": "news", "client": {"id": "b", "name": "bob"}}])
        self.assertEqual(b.take(), [], "no join event about oneself")
        self.assertEqual(self.broker.presence("news"), [{"id": "a", "name": "alice"}, {"id": "b", "name": "bob"}])
        self.sub("b", name="bob")  # resubscribe: no second join
        self.assertEqual(a.take(), [])
        self.broker.remove_connection("b")
        self.assertEqual(a.take(), [{"op": "leave", "channel": "news", "client": {"id": "b", "name": "bob"}}])
        self.assertEqual(self.broker.presence("news"), [{"id": "a", "name": "alice"}])

    def test_quiet_presence(self) -> None:
        """
        Quiet channels send no join or leave events but still track
        members for the API.
        """
        broker = self.make_broker(ChannelSettings(quiet_presence=("ticker.*",)))
        a, _ = self.sub("a", "ticker.eur", broker=broker)
        self.sub("b", "ticker.eur", broker=broker)
        broker.remove_connection("b")
        self.assertEqual(a.sent, [])
        self.assertEqual(len(broker.presence("ticker.eur")), 1, "still tracked for the API")

    def test_presence_list_fits_the_frame_limit(self) -> None:
        """
        Defect 3a: a channel with more members than one frame can list
        stays joinable - the list in the answer is cut to fit its budget
        and says how many members there are; every member is still there.
        """
        broker = self.make_broker(ChannelSettings(max_data_bytes=16 * 1024))
        for i in range(200):
            self.sub(f"member-{i:03d}", "room", name="n" * MAX_CLIENT_NAME, broker=broker)
        _, s = self.sub("late", "room", name="me", broker=broker, )
        listed = json.dumps(list(s.presence), separators=(",", ":"), ensure_ascii=False).encode()
        self.assertLessEqual(len(listed), 16 * 1024 - 1024)
        self.assertFalse(s.presence_complete)
        self.assertEqual(s.presence_total, 201)
        self.assertEqual(len(broker.presence("room")), 201)
        budgeted = broker.subscribe("x", FakeConnection("x"), "room", presence_budget=300)
        self.assertLessEqual(len(json.dumps(list(budgeted.presence), separators=(",", ":"))), 300)

    def test_a_broken_member_connection_cannot_leave_a_ghost(self) -> None:
        """
        Defect 1 (last part): a member whose connection raises while a
        leave is announced does not stop the leaving connection from
        leaving every channel, nor the other members from hearing it.
        """
        broken, _ = self.sub("broken", "one")
        self.sub("broken", "two")
        listener, _ = self.sub("listener", "one")
        self.sub("leaver", "one")
        self.sub("leaver", "two")
        broken.fail_sends = True
        self.assertEqual(self.broker.remove_connection("leaver"), 2)
        self.assertEqual([c["id"] for c in self.broker.presence("one")], ["broken", "listener"])
        self.assertEqual([c["id"] for c in self.broker.presence("two")], ["broken"])
        self.assertEqual([f["op"] for f in listener.take()], ["join", "leave"])
        self.flushLoggedErrors(RuntimeError)

    # -- bad input and limits ---------------------------------------------------

    def test_lone_surrogates_are_refused_with_400(self) -> None:
        """
        Defect 1: text no UTF-8 frame can carry (a lone surrogate, which
        JSON may spell "\\ud800") is refused as data, key or member name,
        and leaves nothing behind.
        """
        a, _ = self.sub("a")
        self.refused(400, self.broker.publish, "news", "\ud800")
        self.refused(400, self.broker.publish, "news", {"\udfff": 1})
        self.refused(400, self.broker.publish, "news", 1, idempotency_key="\ud800")
        self.refused(400, self.broker.subscribe, "b", FakeConnection("b"), "news", name="\ud800")
        self.assertEqual(self.broker.presence("news"), [{"id": "a"}])
        self.assertEqual(a.sent, [], "nothing published, nobody joined")
        self.assertEqual(history(self.broker, "news")["seq"], 0)

    def test_channel_names(self) -> None:
        """
        Defect 9: names are 1-128 of the allowed characters - a final
        newline is not allowed (a regex "$" would let it through).
        """
        for bad in ["", "a/b", ".x", "x" * 129, "sp ace", 5, "chat.lobby\n", "x" * 128 + "\n", "news\n", "a\nb"]:
            self.refused(400, self.broker.publish, bad, 1)
            self.refused(400, self.broker.subscribe, "a", FakeConnection("a"), bad)
        for good in ["x", "x" * 128, "chat.lobby", "user:42@eu-1", "_private"]:
            self.broker.publish(good, 1)

    def test_limits(self) -> None:
        """
        Subscriptions per connection, data size and JSON-ness are checked,
        and a refused publish publishes nothing.
        """
        broker = self.make_broker(ChannelSettings(max_subscriptions=2, max_channels=3, max_data_bytes=1024))
        c = FakeConnection("c")
        broker.subscribe("c", c, "one")
        broker.subscribe("c", c, "two")
        broker.subscribe("c", c, "two")  # again: not a new subscription
        self.refused(429, broker.subscribe, "c", c, "three")
        self.assertEqual(list(broker.subscriptions("c")), ["one", "two"], "a refused subscribe changes nothing")
        self.refused(413, broker.publish, "one", "x" * 900)
        self.refused(400, broker.publish, "one", float("nan"))
        self.assertEqual(broker.channels()[0]["seq"], 0, "nothing published by a refused publish")
        for name in ("three", "four", "five"):
            broker.publish(name, 1)
        self.refused(429, broker.publish, "six", 1)

    def test_subscribers_cannot_take_the_back_ends_channels(self) -> None:
        """
        Defect 10: channels made by clients (subscribes, client publishes)
        have their own budget: filling it blocks new client channels, never
        the back end's publishes; the back end's own budget is its own.
        """
        broker = self.make_broker(ChannelSettings(max_channels=3, max_subscriptions=100))
        for i in range(3):
            self.sub("anon", f"junk.{i}", broker=broker)
        self.refused(429, broker.subscribe, "anon", FakeConnection("anon"), "junk.3")
        self.refused(429, broker.publish, "chat.spam", 1, by_client=True)
        for name in ("news.deploys", "news.alerts", "junk.0"):  # the last one: taken over from clients
            broker.publish(name, "from the back end")
        self.refused(429, broker.publish, "news.other", 1)
        self.sub("anon", "junk.3", broker=broker)  # junk.0 is the back end's now: a client slot is free

    def test_refused_or_unkept_publishes_leave_no_channel(self) -> None:
        """
        A refused publish, or one to a channel that keeps nothing, leaves
        no channel behind.
        """
        self.refused(413, self.broker.publish, "fresh", "x" * 100000)
        broker = self.make_broker(ChannelSettings(history_size=0))
        broker.publish("nobody-listens", 1)
        self.assertEqual(self.broker.channels(), [])
        self.assertEqual(broker.channels(), [])

    # -- idempotency ----------------------------------------------------------

    def test_idempotency_key(self) -> None:
        """
        A publish retried with its key answers with the first position and
        publishes nothing; another key publishes.
        """
        a, _ = self.sub("a")
        first = self.broker.publish("news", "once", idempotency_key="k1")
        again = self.broker.publish("news", "once", idempotency_key="k1")
        self.assertEqual(first, again)
        self.assertEqual(seqs(a.frames()), [1])
        self.assertEqual(self.broker.publish("news", "other", idempotency_key="k2").seq, 2)

    def test_idempotency_keys_live_their_lifetime_whatever_the_traffic(self) -> None:
        """
        Defect 4: a key is remembered for the history age (at least 60 s)
        however many other keyed publishes follow (the old code forgot it
        after 10000 others).
        """
        broker = self.make_broker(ChannelSettings(history_age=120))
        self.sub("keeper", broker=broker)  # the channel lives on: no new epoch
        first = broker.publish("news", "deploy", idempotency_key="retry-me")
        for i in range(12000):
            broker.publish("news", i, idempotency_key=f"other-{i}")
        self.advance(119)
        self.assertEqual(broker.publish("news", "deploy", idempotency_key="retry-me"), first, "published twice")
        self.advance(2)
        broker.expire()
        self.assertEqual(broker.publish("news", "deploy", idempotency_key="retry-me").seq, 12002, "expired: a new publish")

    def test_idempotency_key_cap_refuses_new_keys(self) -> None:
        """
        Past the cap of live keys a publish with a new key is refused
        (429), while keys already known still answer and unkeyed publishes
        go through; once keys expire, new ones are taken again.
        """
        broker = self.make_broker(ChannelSettings(history_age=60, max_idempotency_keys=3))
        known = [broker.publish("news", i, idempotency_key=f"k{i}") for i in range(3)]
        self.refused(429, broker.publish, "news", 9, idempotency_key="one-too-many")
        self.assertEqual(broker.publish("news", 0, idempotency_key="k0"), known[0])
        self.assertEqual(broker.publish("news", "plain").seq, 4)
        self.advance(61)
        self.assertEqual(broker.publish("news", 9, idempotency_key="one-too-many").seq, 5, "the old keys expired: room again")

    def test_idempotency_keys_expire(self) -> None:
        """
        Keys are forgotten after their lifetime: at least 60 s, even with
        a shorter history age.
        """
        broker = self.make_broker(ChannelSettings(history_age=5))
        first = broker.publish("news", 1, idempotency_key="k")
        self.advance(59.9)
        self.assertEqual(broker.publish("news", 1, idempotency_key="k"), first)
        self.advance(1.2)
        self.assertEqual(broker.publish("news", 1, idempotency_key="k").seq, first.seq + 1)

    # -- fan-out --------------------------------------------------------------

    def test_fan_out(self) -> None:
        """
        Every subscriber gets every message once, in order.
        """
        connections = [self.sub(f"c{i}")[0] for i in range(500)]
        for i in range(20):
            self.broker.publish("news", i)
        for connection in connections:
            self.assertEqual(seqs(connection.frames()), list(range(1, 21)))
        self.assertEqual(self.broker.delivered_total, 500 * 20)


class MemoryBrokerTests(BrokerContract, unittest.TestCase):
    """
    The memory engine (L{Broker}, the embedded default) against the
    contract, plus what only a process-local engine can show.
    """

    def make_broker(self, settings: ChannelSettings) -> Broker:
        return Broker(self.clock, settings)

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    def setUp(self) -> None:
        self.clock = Clock()
        super().setUp()

    def test_a_new_broker_is_a_new_epoch(self) -> None:
        """
        A restarted process starts new epochs: old positions recover
        nothing.
        """
        _, s = self.sub("a")
        restarted = Broker(self.clock)
        r = restarted.subscribe("a", FakeConnection("a"), "news", since=Position(s.position.epoch, 0))
        self.assertNotEqual(r.position.epoch, s.position.epoch)
        self.assertFalse(r.recovered)

    def test_housekeeping_frees_expired_history_untouched(self) -> None:
        """
        Defect 5: expired history is freed on time by the housekeeping
        service, without any request touching the channel; a history entry
        holds its frame only (no second, parsed copy of the data).
        """
        broker = Broker(self.clock, ChannelSettings(history_size=500, history_age=2, max_data_bytes=2 * 1024 * 1024))
        housekeeping = Housekeeping(broker)
        housekeeping.startService()
        self.addCleanup(housekeeping.stopService)
        payload = "x" * (1000 * 1024)
        for i in range(200):
            broker.publish(f"big.{i % 7}", payload)
        self.assertLessEqual(200 * len(payload), broker.history_bytes)
        self.assertLessEqual(broker.history_bytes, 200 * (len(payload) + 256))
        self.clock.advance(3.5)
        self.assertEqual(broker.history_bytes, 0)
        self.assertEqual(broker.channels(), [], "channels left with nothing are forgotten")
        housekeeping.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [], "stopped, it leaves no timer")

    def test_history_keeps_one_copy_of_each_message(self) -> None:
        """
        Defect 5: a history entry holds the message once - its frame - not
        a parsed copy of the data beside it.  Measured with tracemalloc:
        five messages whose data (100000 numbers) would take about 3.6 MB
        each as Python objects cost little more than their JSON text.
        """
        import gc
        import tracemalloc

        broker = Broker(self.clock, ChannelSettings(max_data_bytes=4 * 1024 * 1024))
        tracemalloc.start()
        self.addCleanup(tracemalloc.stop)
        before = tracemalloc.get_traced_memory()[0]
        for i in range(5):
            broker.publish("numbers", list(range(100_000 + i)))  # the caller's list is dropped after the call
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
        text = broker.history_bytes
        self.assertGreater(text, 5 * 500_000)
        self.assertLess(held, 2 * text, f"{held} bytes held for {text} bytes of messages")

    def test_history_bytes_tracks_what_is_held(self) -> None:
        """
        history_bytes is the UTF-8 size of the frames history holds,
        through appends, trimming by size, and expiry.
        """
        broker = Broker(self.clock, ChannelSettings(history_size=3, history_age=10))
        a, _ = self.sub("x", "a", broker=broker)
        b, _ = self.sub("y", "b", broker=broker)
        for i in range(5):
            broker.publish("a", {"text": "é" * i})
        for i in range(2):
            broker.publish("b", i)
        held = sum(len(f.encode()) for f in a.sent[-3:] + b.sent[-2:])
        self.assertEqual(broker.history_bytes, held)
        self.clock.advance(11)
        broker.expire()
        self.assertEqual(broker.history_bytes, 0)

    def test_housekeeping_survives_a_failure(self) -> None:
        """
        One failing expiry is logged and the next second's runs.
        """
        calls = []

        class Flaky(Broker):
            def expire(self) -> None:
                calls.append(1)
                if len(calls) == 1:
                    raise RuntimeError("boom")

        housekeeping = Housekeeping(Flaky(self.clock), interval=1)
        housekeeping.startService()
        self.addCleanup(housekeeping.stopService)
        self.clock.advance(1)
        self.clock.advance(1)
        self.assertEqual(len(calls), 2)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_expiry_visits_only_channels_with_history_to_expire(self) -> None:
        """
        Expiry is driven by each channel's oldest message: a publish keeps
        its channel's history until its own age is reached, and channels
        forgotten and made again expire on their new life's schedule.
        """
        self.broker.publish("a", 1)
        self.advance(30)
        self.broker.publish("b", 1)
        self.advance(31)  # a's message is 61 s old, b's 31 s
        self.broker.expire()
        self.assertEqual([row["channel"] for row in self.broker.channels()], ["b"])
        self.broker.publish("a", 2)  # a new life of "a"
        self.advance(30)
        self.broker.expire()
        self.assertEqual([row["channel"] for row in self.broker.channels()], ["a"])


class BrokerEdgeTests(unittest.TestCase):
    """
    Boundaries and bookkeeping of the memory engine that a mutation run
    found unprotected.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.broker = Broker(self.clock, ChannelSettings(history_size=5, history_age=60))

    def test_settings_validation_and_defaults(self) -> None:
        """
        Negative sizes and ages, and zero limits, are refused; the
        defaults are the documented ones.
        """
        for kwargs in [
            dict(history_size=-1), dict(history_age=-1), dict(max_channels=0), dict(max_client_channels=0),
            dict(max_subscriptions=0), dict(max_idempotency_keys=0), dict(max_data_bytes=1023),
        ]:  # fmt: skip
            with self.assertRaises(ValueError, msg=kwargs):
                ChannelSettings(**kwargs)  # type: ignore[arg-type]
        ChannelSettings(history_size=0, history_age=0, max_data_bytes=1024)
        d = ChannelSettings()
        self.assertEqual(
            (d.history_size, d.history_age, d.max_channels, d.max_client_channels, d.max_subscriptions, d.max_idempotency_keys),
            (100, 300.0, 10000, 10000, 100, 100_000),
        )
        self.assertEqual((ChannelSettings(history_age=5).key_lifetime, ChannelSettings(history_age=90).key_lifetime), (60.0, 90.0))

    def test_data_at_the_size_limit(self) -> None:
        """
        Data of exactly the limit less the envelope is taken; one byte
        more is 413.
        """
        broker = Broker(self.clock, ChannelSettings(max_data_bytes=2000))
        broker.publish("news", "x" * (2000 - 256 - 2))
        with self.assertRaises(ChannelError) as e:
            broker.publish("news", "x" * (2000 - 256 - 1))
        self.assertEqual(e.exception.code, 413)

    def test_unsubscribe_then_close_leaves_no_ghost(self) -> None:
        """
        A connection in two channels leaves one, then closes: it is in
        neither afterwards.
        """
        a = FakeConnection("a")
        for name in ("one", "two"):
            self.broker.subscribe("a", a, name)
        self.broker.subscribe("b", FakeConnection("b"), "one")
        self.broker.subscribe("b", FakeConnection("b"), "two")
        self.assertTrue(self.broker.unsubscribe("a", "one"))
        self.assertFalse(self.broker.unsubscribe("a", "one"), "not twice")
        self.assertEqual(self.broker.remove_connection("a"), 1)
        self.assertEqual(self.broker.presence("one"), [{"id": "b"}])
        self.assertEqual(self.broker.presence("two"), [{"id": "b"}])
        self.assertEqual(list(self.broker.subscriptions("a")), [])

    def test_reading_creates_nothing(self) -> None:
        """
        Presence and history of an unknown channel are empty and leave no
        channel behind.
        """
        self.assertEqual(self.broker.presence("ghost"), [])
        self.assertEqual(json.loads(self.broker.history_json("ghost", 3))["complete"], False)
        self.assertEqual(self.broker.channels(), [])

    def test_recovery_from_the_start_and_history_edges(self) -> None:
        """
        From (epoch, 0) every message is recovered while history still
        holds seq 1; "complete" is true exactly when it reaches back far
        enough; a channel whose history was all trimmed recovers nothing.
        """
        a = FakeConnection("a")
        s = self.broker.subscribe("a", a, "news")
        for i in range(5):
            self.broker.publish("news", i)
        again = self.broker.subscribe("b", FakeConnection("b"), "news", since=Position(s.position.epoch, 0))
        self.assertEqual((again.recovered, len(again.missed)), (True, 5))
        self.assertTrue(json.loads(self.broker.history_json("news", 0))["complete"])
        self.broker.publish("news", 5)  # history keeps 5: seq 2..6
        self.assertFalse(json.loads(self.broker.history_json("news", 0))["complete"])
        self.assertTrue(json.loads(self.broker.history_json("news", 1))["complete"])
        self.assertFalse(json.loads(self.broker.history_json("news", 7))["complete"], "ahead of the channel")
        late = self.broker.subscribe("c", FakeConnection("c"), "news", since=Position(s.position.epoch, 0))
        self.assertFalse(late.recovered)
        self.clock.advance(61)
        empty = self.broker.subscribe("d", FakeConnection("d"), "news", since=Position(s.position.epoch, 3))
        self.assertFalse(empty.recovered, "history aged out: nothing covers 4..6")

    def test_history_expires_exactly_at_its_age(self) -> None:
        """
        A message is kept for history_age seconds and gone after.
        """
        broker = Broker(self.clock, ChannelSettings(history_age=10))
        broker.publish("news", 1)
        self.clock.advance(10)
        broker.expire()
        self.assertEqual(broker.channels()[0]["history"], 1, "kept for the whole age")
        self.clock.advance(0.001)
        broker.expire()
        self.assertEqual(broker.channels(), [])

    def test_channel_budgets_count_right(self) -> None:
        """
        Unequal budgets; a takeover moves a channel from the clients'
        budget to the back end's, once; forgetting a channel frees its
        slot.
        """
        broker = Broker(self.clock, ChannelSettings(max_channels=2, max_client_channels=1, history_size=0))
        c = FakeConnection("c")

        def refused(call: Any, *args: Any) -> None:
            with self.assertRaises(ChannelError) as e:
                call(*args)
            self.assertEqual(e.exception.code, 429)

        broker.subscribe("c", c, "mine")
        refused(broker.subscribe, "c", c, "second")  # the clients' one slot is taken
        broker.publish("mine", 1)  # taken over by the back end: 1 of 2
        broker.publish("mine", 2)  # the same channel: still 1 of 2
        broker.subscribe("c", c, "second")  # the clients' slot is free again
        broker.publish("second", 1)  # taken over: 2 of 2
        refused(broker.publish, "third", 1)
        broker.unsubscribe("c", "mine")  # nothing left in "mine": forgotten, 1 of 2
        broker.publish("third", 1)  # made and, keeping nothing, forgotten at once
        broker.publish("fourth", 1)  # so there is still room
        self.assertEqual([row["channel"] for row in broker.channels()], ["second"])

    def test_housekeeping_runs_every_second_by_default(self) -> None:
        """
        The daemon's housekeeping interval is one second.
        """
        self.assertEqual(Housekeeping(self.broker).interval, 1.0)
