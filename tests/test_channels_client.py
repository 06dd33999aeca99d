"""
Unit tests of wsheart.channels.client's ChannelSession, driven by a fake
reconnecting client (what ReconnectingClientService offers the session:
C{send}, C{subprotocol}, C{stopService}) and wsheart.v1 frames written by
hand: positions, resubscribing with C{since} after a reconnect, dropping
already-seen seqs, presence, errors, publishing while not connected.  No
sockets, no server.
"""

from __future__ import annotations

import json
from typing import Any, Optional

from twisted.logger import LogLevel, capturedLogs
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from wsheart.channels.client import SUBPROTOCOL, ChannelListener, ChannelSession, IChannelListener
from wsheart.channels.broker import Position
from wsheart.client import IClientListener


class FakeClient:
    """
    Stands in for a ReconnectingClientService: send() is False (nothing
    sent) while not connected, as the real one's is.
    """

    def __init__(self) -> None:
        self.subprotocol: Optional[str] = SUBPROTOCOL
        self.connected = False
        self.sent: list[dict[str, Any]] = []
        self.stopped = False

    def send(self, message: Any) -> bool:
        if not self.connected:
            return False
        self.sent.append(json.loads(message))
        return True

    def take(self) -> list[dict[str, Any]]:
        sent, self.sent = self.sent, []
        return sent

    def stopService(self) -> None:
        self.stopped = True


class Recorder(ChannelListener):
    """
    Records every channel event and every forwarded connection event.
    """

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def channel_subscribed(self, session: ChannelSession, channel: str, recovered: bool) -> None:
        self.events.append(("subscribed", channel, recovered))

    def channel_message(self, session: ChannelSession, channel: str, data: Any, epoch: str, seq: int) -> None:
        self.events.append(("message", channel, data, epoch, seq))

    def channel_presence(self, session: ChannelSession, channel: str, event: str, client: dict[str, Any]) -> None:
        self.events.append(("presence", channel, event, client))

    def channel_error(self, session: ChannelSession, code: int, reason: str, frame: dict[str, Any]) -> None:
        self.events.append(("error", code, reason, frame))

    def client_opened(self, client: Any) -> None:
        self.events.append(("opened",))

    def client_state(self, client: Any, state: str, detail: dict[str, Any]) -> None:
        self.events.append(("state", state, detail))

    def client_rtt(self, client: Any, rtt: float) -> None:
        self.events.append(("rtt", rtt))

    def client_missed(self, client: Any, misses: int) -> None:
        self.events.append(("missed", misses))

    def client_closed(self, client: Any, code: int, reason: str, was_clean: bool) -> None:
        self.events.append(("closed", code, reason, was_clean))

    def take(self) -> list[tuple[Any, ...]]:
        events, self.events = self.events, []
        return events

    def messages(self) -> list[tuple[str, int]]:
        return [(e[3], e[4]) for e in self.events if e[0] == "message"]


class SessionTestCase(unittest.TestCase):
    def setUp(self) -> None:
        self.client = FakeClient()
        self.listener = Recorder()
        self.session = ChannelSession(self.listener, channels=["chat"], name="bot")

    def connect(self) -> list[dict[str, Any]]:
        """
        The connection opens; returns what the session sent.
        """
        self.client.connected = True
        self.session.client_opened(self.client)
        return self.client.take()

    def disconnect(self) -> None:
        self.client.connected = False
        self.session.client_closed(self.client, 1006, "", False)

    def receive(self, **frame: Any) -> None:
        self.session.client_message(self.client, json.dumps(frame))

    def subscribed(self, channel: str, epoch: str, seq: int, recovered: bool, **more: Any) -> None:
        self.receive(op="subscribed", channel=channel, epoch=epoch, seq=seq, recovered=recovered, **more)

    def message(self, channel: str, epoch: str, seq: int, data: Any = None) -> None:
        self.receive(op="message", channel=channel, epoch=epoch, seq=seq, data=data if data is not None else seq)


class InterfaceTests(unittest.TestCase):
    """
    The session is a client listener; the listener base class is a
    channel listener that ignores everything.
    """

    def test_interfaces(self) -> None:
        """
        ChannelSession provides IClientListener (it is what the service
        calls) and ChannelListener provides IChannelListener.
        """
        self.assertTrue(verifyObject(IClientListener, ChannelSession(ChannelListener())))
        self.assertTrue(verifyObject(IChannelListener, ChannelListener()))

    def test_base_listener_ignores_everything(self) -> None:
        """
        With the plain ChannelListener (no connection events defined) every
        frame and connection event is taken without an error logged.
        """
        client = FakeClient()
        client.connected = True
        session = ChannelSession(ChannelListener(), channels=["chat"])
        with capturedLogs() as events:
            session.client_opened(client)
            session.client_state(client, "open", {"rtt": None})
            session.client_rtt(client, 0.01)
            session.client_missed(client, 1)
            for frame in [
                {"op": "subscribed", "channel": "chat", "epoch": "e", "seq": 0, "recovered": False},
                {"op": "message", "channel": "chat", "epoch": "e", "seq": 1, "data": 1},
                {"op": "join", "channel": "chat", "client": {"id": "c2"}},
                {"op": "error", "code": 400, "reason": "bad"},
            ]:
                session.client_message(client, json.dumps(frame))
            session.client_closed(client, 1000, "", True)
        self.assertEqual([e for e in events if e["log_level"] >= LogLevel.warn], [])
        self.assertEqual(session.positions["chat"], Position("e", 1))

    def test_listener_with_only_some_methods(self) -> None:
        """
        A listener that defines none of the channel methods (any object
        will do) still gets the positions kept, and nothing fails.
        """
        client = FakeClient()
        client.connected = True
        session = ChannelSession(object(), channels=["chat"])
        with capturedLogs() as events:
            session.client_opened(client)
            for frame in [
                {"op": "subscribed", "channel": "chat", "epoch": "e", "seq": 0, "recovered": False},
                {"op": "message", "channel": "chat", "epoch": "e", "seq": 1},
                {"op": "error", "code": 400, "reason": "bad"},
            ]:
                session.client_message(client, json.dumps(frame))
            session.client_closed(client, 1000, "", True)
        self.assertEqual([e for e in events if e["log_level"] >= LogLevel.warn], [])
        self.assertEqual(session.positions["chat"], Position("e", 1))


class SubscribeTests(SessionTestCase):
    """
    What the session asks the server for.
    """

    def test_subscribes_on_open(self) -> None:
        """
        When the connection opens the session subscribes to its channels
        with its name, without a position the first time, and then tells
        the listener the connection opened.
        """
        session = ChannelSession(self.listener, channels=["a", "b"], name="bot")
        self.client.connected = True
        session.client_opened(self.client)
        self.assertEqual(
            self.client.take(),
            [{"op": "subscribe", "channel": "a", "name": "bot"}, {"op": "subscribe", "channel": "b", "name": "bot"}],
        )
        self.assertEqual(self.listener.take(), [("opened",)])

    def test_without_a_name(self) -> None:
        """
        A session without a name sends no name.
        """
        session = ChannelSession(self.listener, channels=["a"])
        self.client.connected = True
        session.client_opened(self.client)
        self.assertEqual(self.client.take(), [{"op": "subscribe", "channel": "a"}])

    def test_subscribe_while_connected_and_while_not(self) -> None:
        """
        subscribe() while connected asks at once, and only once however
        often it is called; subscribed while disconnected, the channel is
        asked for when the connection opens.
        """
        self.connect()
        self.session.subscribe("news")
        self.session.subscribe("news")
        self.assertEqual(self.client.take(), [{"op": "subscribe", "channel": "news", "name": "bot"}])
        self.disconnect()
        self.session.subscribe("later")
        self.assertEqual(self.client.take(), [])
        channels = [frame["channel"] for frame in self.connect()]
        self.assertEqual(channels, ["chat", "news", "later"])

    def test_unsubscribe(self) -> None:
        """
        unsubscribe() tells the server, forgets the position, is not
        resubscribed after a reconnect, and later messages of the channel
        are ignored; unsubscribing a channel never subscribed sends nothing.
        """
        self.connect()
        self.subscribed("chat", "e1", 3, False)
        self.session.unsubscribe("chat")
        self.session.unsubscribe("never")
        self.assertEqual(self.client.take(), [{"op": "unsubscribe", "channel": "chat"}])
        self.assertNotIn("chat", self.session.positions)
        self.message("chat", "e1", 4)
        self.assertEqual(self.listener.messages(), [])
        self.disconnect()
        self.assertEqual(self.connect(), [])

    def test_server_without_channels(self) -> None:
        """
        A server that did not accept wsheart.v1 gets no subscribe: the
        listener hears why (code 0) and the client is stopped, since
        retrying would not change the answer.
        """
        self.client.subprotocol = None
        self.assertEqual(self.connect(), [])
        self.assertTrue(self.client.stopped)
        ((kind, code, reason, frame),) = self.listener.take()
        self.assertEqual((kind, code, frame), ("error", 0, {}))
        self.assertIn("wsheart.v1", reason)


class PositionTests(SessionTestCase):
    """
    Positions (epoch, seq) and recovery after a reconnect.
    """

    def test_first_subscription_starts_at_the_present(self) -> None:
        """
        A first "subscribed" (not recovered) sets the position to the
        channel's present and tells the listener recovered=False.
        """
        self.connect()
        self.listener.take()
        self.subscribed("chat", "e1", 41, False)
        self.assertEqual(self.session.positions["chat"], Position("e1", 41))
        self.assertEqual(self.listener.take(), [("subscribed", "chat", False)])

    def test_messages_move_the_position(self) -> None:
        """
        Each message is delivered with its data, epoch and seq, and moves
        the position.
        """
        self.connect()
        self.subscribed("chat", "e1", 0, False)
        self.message("chat", "e1", 1, {"text": "hi"})
        self.message("chat", "e1", 2, {"text": "again"})
        self.assertEqual(
            [e for e in self.listener.take() if e[0] == "message"],
            [("message", "chat", {"text": "hi"}, "e1", 1), ("message", "chat", {"text": "again"}, "e1", 2)],
        )
        self.assertEqual(self.session.positions["chat"], Position("e1", 2))

    def test_resubscribe_with_since_after_reconnect(self) -> None:
        """
        After a reconnect the session resubscribes from its last position;
        a recovered subscription keeps that position until the missed
        messages, which follow, move it - each delivered once, in order.
        """
        self.connect()
        self.subscribed("chat", "e1", 5, False)
        self.message("chat", "e1", 6)
        self.message("chat", "e1", 7)
        self.disconnect()
        self.assertEqual(
            self.connect(),
            [{"op": "subscribe", "channel": "chat", "since": {"epoch": "e1", "seq": 7}, "name": "bot"}],
        )
        self.subscribed("chat", "e1", 9, True)
        self.assertEqual(self.session.positions["chat"], Position("e1", 7))
        self.message("chat", "e1", 8)
        self.message("chat", "e1", 9)
        self.assertEqual(self.session.positions["chat"], Position("e1", 9))
        self.assertEqual(self.listener.messages(), [("e1", 6), ("e1", 7), ("e1", 8), ("e1", 9)])
        self.assertIn(("subscribed", "chat", True), self.listener.events)

    def test_unrecovered_resubscription_starts_over(self) -> None:
        """
        When history could not cover the gap (recovered=False, maybe a new
        epoch), the listener is told to refetch and the position jumps to
        the server's present.
        """
        self.connect()
        self.subscribed("chat", "e1", 5, False)
        self.disconnect()
        self.connect()
        self.listener.take()
        self.subscribed("chat", "e2", 3, False)
        self.assertEqual(self.listener.take(), [("subscribed", "chat", False)])
        self.assertEqual(self.session.positions["chat"], Position("e2", 3))
        self.message("chat", "e2", 4)
        self.assertEqual(self.listener.messages(), [("e2", 4)])

    def test_gap_told_while_connected_starts_over(self) -> None:
        """
        A "subscribed" the server sends on its own while the connection
        stays up (history lost, a new epoch) moves the position there and
        tells the listener recovered=False; the messages after it count.
        """
        self.connect()
        self.subscribed("chat", "e1", 0, False)
        self.message("chat", "e1", 1)
        self.message("chat", "e1", 2)
        self.listener.take()
        self.receive(op="subscribed", channel="chat", epoch="e2", seq=0, recovered=False, reason="new epoch")
        self.assertEqual(self.listener.take(), [("subscribed", "chat", False)])
        self.assertEqual(self.session.positions["chat"], Position("e2", 0))
        self.message("chat", "e2", 1)
        self.assertEqual(self.listener.messages(), [("e2", 1)])

    def test_already_seen_seqs_are_dropped(self) -> None:
        """
        A message at or before the position in the same epoch (a resend
        racing a resubscribe) is dropped and counted, not delivered again.
        """
        self.connect()
        self.subscribed("chat", "e1", 0, False)
        for seq in [1, 2, 2, 1, 3, 0, 3]:
            self.message("chat", "e1", seq)
        self.assertEqual(self.listener.messages(), [("e1", 1), ("e1", 2), ("e1", 3)])
        self.assertEqual(self.session.duplicates_dropped, 4)
        self.assertEqual(self.session.positions["chat"], Position("e1", 3))

    def test_another_epoch_is_not_a_duplicate(self) -> None:
        """
        A lower seq in another epoch is a new history, not a duplicate:
        delivered, and the position follows it.
        """
        self.connect()
        self.subscribed("chat", "e1", 10, False)
        self.message("chat", "e2", 1)
        self.assertEqual(self.listener.messages(), [("e2", 1)])
        self.assertEqual(self.session.duplicates_dropped, 0)
        self.assertEqual(self.session.positions["chat"], Position("e2", 1))

    def test_message_before_subscribed_frame(self) -> None:
        """
        A message for a subscribed channel whose position is not known yet
        is delivered and sets the position.
        """
        self.connect()
        self.message("chat", "e1", 4)
        self.assertEqual(self.session.positions["chat"], Position("e1", 4))
        self.assertEqual(self.listener.messages(), [("e1", 4)])

    def test_ignored_messages(self) -> None:
        """
        Messages for channels not subscribed, and messages without a string
        epoch or an integer seq, are ignored and move no position.
        """
        self.connect()
        self.subscribed("chat", "e1", 1, False)
        self.message("other", "e1", 2)
        self.receive(op="message", channel="chat", seq=2, data=1)
        self.receive(op="message", channel="chat", epoch="e1", seq="2", data=1)
        self.receive(op="message", channel="chat", epoch=7, seq=2, data=1)
        self.assertEqual(self.listener.messages(), [])
        self.assertEqual(self.session.positions, {"chat": Position("e1", 1)})


class PresenceAndErrorTests(SessionTestCase):
    """
    Who is there, and what the server refused.
    """

    def test_presence(self) -> None:
        """
        The presence list of "subscribed" fills session.presence; joins and
        leaves update it and reach the listener with the client.
        """
        self.connect()
        self.subscribed("chat", "e1", 0, False, presence=[{"id": "c1", "name": "bot"}, {"id": "c2", "name": "ann"}])
        self.receive(op="join", channel="chat", client={"id": "c3", "name": "bob"})
        self.receive(op="leave", channel="chat", client={"id": "c2", "name": "ann"})
        self.assertEqual(sorted(self.session.presence["chat"]), ["c1", "c3"])
        self.assertEqual(self.session.presence["chat"]["c3"], {"id": "c3", "name": "bob"})
        presence = [e for e in self.listener.take() if e[0] == "presence"]
        self.assertEqual(
            presence,
            [
                ("presence", "chat", "join", {"id": "c3", "name": "bob"}),
                ("presence", "chat", "leave", {"id": "c2", "name": "ann"}),
            ],
        )

    def test_presence_cut_short_by_the_server(self) -> None:
        """
        A "subscribed" whose member list the server cut short to fit one
        frame is marked incomplete, with the real count.
        """
        self.connect()
        self.subscribed("chat", "e1", 0, False, presence=[{"id": "c1"}], presence_complete=False, presence_count=5000)
        self.assertEqual((self.session.presence_complete["chat"], self.session.presence_count["chat"]), (False, 5000))
        self.subscribed("chat", "e1", 0, False, presence=[{"id": "c1"}, {"id": "c2"}])  # a resubscribe, all listed
        self.assertEqual((self.session.presence_complete["chat"], self.session.presence_count["chat"]), (True, 2))

    def test_resubscription_replaces_the_presence_list(self) -> None:
        """
        After a reconnect the new "subscribed" presence list replaces the
        old one (who left while we were away is gone).
        """
        self.connect()
        self.subscribed("chat", "e1", 0, False, presence=[{"id": "c1"}, {"id": "c2"}])
        self.disconnect()
        self.connect()
        self.subscribed("chat", "e1", 0, True, presence=[{"id": "c9"}])
        self.assertEqual(list(self.session.presence["chat"]), ["c9"])

    def test_presence_of_other_channels_ignored(self) -> None:
        """
        Joins and leaves for channels not subscribed change nothing.
        """
        self.connect()
        self.receive(op="join", channel="other", client={"id": "c3"})
        self.assertEqual(self.session.presence, {})
        self.assertEqual([e for e in self.listener.events if e[0] == "presence"], [])

    def test_leave_of_someone_unknown(self) -> None:
        """
        A leave of a client never seen is passed on and breaks nothing.
        """
        self.connect()
        self.receive(op="leave", channel="chat", client={"id": "c5"})
        self.assertEqual(self.session.presence["chat"], {})
        self.assertIn(("presence", "chat", "leave", {"id": "c5"}), self.listener.events)

    def test_error(self) -> None:
        """
        An error frame reaches channel_error with its code, reason and the
        whole frame.
        """
        self.connect()
        frame = {"op": "error", "code": 403, "reason": "clients may not publish to news", "channel": "news"}
        self.receive(**frame)
        self.assertEqual(self.listener.take()[-1], ("error", 403, "clients may not publish to news", frame))


class PublishTests(SessionTestCase):
    """
    Publishing through the WebSocket.
    """

    def test_publish_while_not_connected(self) -> None:
        """
        Before the first connection, and after it is lost, publish() is
        False and nothing is sent.
        """
        self.assertFalse(self.session.publish("chat", {"text": "early"}))
        self.connect()
        self.disconnect()
        self.assertFalse(self.session.publish("chat", {"text": "late"}))
        self.assertEqual(self.client.sent, [])

    def test_publish_while_connected(self) -> None:
        """
        While connected publish() sends the frame, with C{ref} when given.
        """
        self.connect()
        self.assertTrue(self.session.publish("chat", {"text": "hi"}))
        self.assertTrue(self.session.publish("chat", [1, 2], ref=7))
        self.assertEqual(
            self.client.take(),
            [
                {"op": "publish", "channel": "chat", "data": {"text": "hi"}},
                {"op": "publish", "channel": "chat", "data": [1, 2], "ref": 7},
            ],
        )


class RobustnessTests(SessionTestCase):
    """
    Bad frames and failing listeners.
    """

    def test_garbage_from_the_server(self) -> None:
        """
        Text that is not JSON is logged as a warning; JSON that is not an
        object, unknown ops and binary messages are ignored.
        """
        self.connect()
        self.listener.take()
        with capturedLogs() as events:
            self.session.client_message(self.client, "not json {")
            self.session.client_message(self.client, "[1, 2]")
            self.session.client_message(self.client, '{"op": "frobnicate", "channel": "chat"}')
            self.session.client_message(self.client, b'{"op": "message"}')
        warnings = [e for e in events if e["log_level"] == LogLevel.warn]
        self.assertEqual(len(warnings), 1)
        self.assertEqual(warnings[0]["text"], "not json {")
        self.assertEqual(self.listener.take(), [])

    def test_malformed_frames_from_the_server(self) -> None:
        """
        A subscribed frame without a position, presence entries without
        an id, a join without a client, a seq of true: each is ignored
        (the first logged), never an exception out of client_message.
        """
        self.connect()
        self.listener.take()
        with capturedLogs() as events:
            self.receive(op="subscribed", channel="chat", recovered=False)
            self.receive(op="subscribed", channel="chat", epoch="e", seq=True, recovered=False)
            self.receive(op="join", channel="chat", client="ann")
            self.message("chat", "e", True)  # type: ignore[arg-type]
        self.assertEqual(len([e for e in events if e["log_level"] == LogLevel.warn]), 2)
        self.assertEqual(self.listener.take(), [])
        self.subscribed("chat", "e", 3, False, presence=[{"id": "c1"}, {"name": "no id"}, "junk"])
        self.assertEqual(self.session.positions["chat"], Position("e", 3))
        self.assertEqual(list(self.session.presence["chat"]), ["c1"])
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_failing_listener_is_logged_and_the_session_carries_on(self) -> None:
        """
        A channel_message that raises is logged; the position still moves,
        and the next message is still delivered.
        """

        class Fragile(Recorder):
            def channel_message(self, session: ChannelSession, channel: str, data: Any, epoch: str, seq: int) -> None:
                super().channel_message(session, channel, data, epoch, seq)
                if seq == 1:
                    raise RuntimeError("listener broke")

        listener = Fragile()
        session = ChannelSession(listener, channels=["chat"])
        self.client.connected = True
        session.client_opened(self.client)
        for seq in (1, 2):
            session.client_message(self.client, json.dumps({"op": "message", "channel": "chat", "epoch": "e", "seq": seq}))
        self.assertEqual(listener.messages(), [("e", 1), ("e", 2)])
        self.assertEqual(session.positions["chat"], Position("e", 2))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_failing_forwarded_event_is_logged(self) -> None:
        """
        A connection event the listener fails on (client_state here) is
        logged, not raised into the client service.
        """

        class Fragile(Recorder):
            def client_state(self, client: Any, state: str, detail: dict[str, Any]) -> None:
                raise RuntimeError("listener broke")

        session = ChannelSession(Fragile())
        session.client_state(self.client, "waiting", {"delay": 1.0})
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_connection_events_forwarded(self) -> None:
        """
        The connection's own events reach the listener with their
        arguments (without the client, as IClientListener gives them).
        """
        self.session.client_state(self.client, "connecting", {"attempt": 1})
        self.connect()
        self.session.client_rtt(self.client, 0.25)
        self.session.client_missed(self.client, 2)
        self.session.client_closed(self.client, 1012, "restart", True)
        self.assertEqual(
            self.listener.take(),
            [
                ("state", "connecting", {"attempt": 1}),
                ("opened",),
                ("rtt", 0.25),
                ("missed", 2),
                ("closed", 1012, "restart", True),
            ],
        )


class TokenRefreshTests(SessionTestCase):
    def test_refresh_is_answered_with_a_fresh_token(self) -> None:
        """
        Asked to refresh, the session sends the client's token function's
        fresh token in an auth frame; with no token function, nothing.
        """
        self.connect()
        self.receive(op="refresh", expires_in=30)
        self.assertEqual(self.client.take(), [])
        self.client.token = lambda: "fresh"  # type: ignore[attr-defined]
        self.receive(op="refresh", expires_in=30)
        self.assertEqual(self.client.take(), [{"op": "auth", "token": "fresh"}])


class RetryAfterUnavailableTests(SessionTestCase):
    """
    A subscribe refused because the server's channels were unavailable
    (503, its Redis) is asked again after retry_after, spread.
    """

    def test_subscribe_retried_after_503(self) -> None:
        """
        503 with retry_after 2: the subscribe goes again after
        2 * (1 + random) seconds, from the last position; other refusals
        are not retried.
        """
        from twisted.internet.task import Clock

        clock = Clock()
        self.session = ChannelSession(self.listener, channels=["chat"], name="bot", reactor=clock, random=lambda: 0.5)
        self.connect()
        self.receive(op="error", code=503, reason="channels unavailable", channel="chat", retry_after=2)
        clock.advance(2.99)
        self.assertEqual(self.client.take(), [])
        clock.advance(0.01)
        self.assertEqual(self.client.take(), [{"op": "subscribe", "channel": "chat", "name": "bot"}])
        self.receive(op="error", code=403, reason="no", channel="chat")
        clock.advance(10)
        self.assertEqual(self.client.take(), [])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_subscribe_retried_after_429(self) -> None:
        """
        Refused for subscribing too fast (--subscribe-rate), a subscribe
        goes again after its retry_after, spread the same way.
        """
        from twisted.internet.task import Clock

        clock = Clock()
        self.session = ChannelSession(self.listener, channels=["chat"], name="bot", reactor=clock, random=lambda: 0.0)
        self.connect()
        self.receive(op="error", code=429, reason="too many requests", channel="chat", retry_after=0.5)
        clock.advance(0.49)
        self.assertEqual(self.client.take(), [])
        clock.advance(0.01)
        self.assertEqual(self.client.take(), [{"op": "subscribe", "channel": "chat", "name": "bot"}])
