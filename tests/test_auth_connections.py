"""
Token authentication on connections (C{--auth jwt}): the handshake's token,
wsheart.v1's auth frame, channel grants on subscribe, recovery and
publish, refresh, expiry and the auth timeout - on a L{task.Clock}, over
fake connections and in-memory transports.
"""

from __future__ import annotations

import json
import re
from typing import Any, Optional

import jwt
from twisted.internet.task import Clock
from twisted.trial import unittest

from wsheart import closecodes
from wsheart.access.limits import USER_HINT, LimitSettings
from wsheart.backoff import hint_from_close
from wsheart.auth import AuthPolicy, Grants, Identity, TokenSettings, TokenVerifier
from wsheart.channels.broker import Broker, ChannelSettings
from wsheart.channels.v1 import ChannelProtocolHandler

from .memory import FakeConnection, connect_client, make_server_factory

NOW = 1_800_000_000.0
SECRET = b"0123456789abcdef0123456789abcdef-secret"


def token(sub: str = "ann", exp: float = NOW + 600, **wsh: list[str]) -> str:
    return jwt.encode({"sub": sub, "aud": "wsheart", "exp": exp, "wsh": wsh}, SECRET, algorithm="HS256")


def policy(test: unittest.TestCase, anonymous: tuple[str, ...] = (), timeout: float = 10.0) -> AuthPolicy:
    path = test.mktemp()
    with open(path, "wb") as f:
        f.write(SECRET)
    verifier = TokenVerifier(TokenSettings(path, leeway=5))
    return AuthPolicy(verifier, Grants(subscribe=anonymous, history=anonymous), timeout)


class AuthedConnection(FakeConnection):
    """
    A fake connection that keeps the identity the handler gives it.
    """

    identity: Optional[Identity] = None

    def set_identity(self, identity: Identity) -> None:
        self.identity = identity


class AuthFrameTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.broker = Broker(self.clock, ChannelSettings(max_data_bytes=4096))
        self.auth = policy(self, anonymous=("public.*",))
        self.handler = ChannelProtocolHandler(self.broker, self.auth)

    def connection(self, cid: str = "c1") -> AuthedConnection:
        connection = AuthedConnection(cid)
        connection.identity = self.auth.anonymous_identity()
        return connection

    def send(self, connection: FakeConnection, frame: Any) -> list[dict[str, Any]]:
        self.handler.message_received(connection, json.dumps(frame))
        return connection.take()

    def test_anonymous_then_authenticated(self) -> None:
        """
        Without a token: public channels only, to read; after an auth frame,
        what the token grants, and nothing more.
        """
        c = self.connection()
        [refused] = self.send(c, {"op": "subscribe", "channel": "chat.lobby"})
        self.assertEqual((refused["op"], refused["code"]), ("error", 401))
        self.assertEqual(self.send(c, {"op": "subscribe", "channel": "public.news"})[0]["op"], "subscribed")
        [refused] = self.send(c, {"op": "publish", "channel": "public.news", "data": 1})
        self.assertEqual(refused["code"], 403, "--client-publish (chat.*) says no first")
        [authed] = self.send(c, {"op": "auth", "token": token(subscribe=["chat.*", "user.{sub}.*"], publish=["chat.*"]), "ref": 7})
        self.assertEqual(authed, {"op": "authed", "sub": "ann", "expires_in": 600, "ref": 7})
        self.assertEqual([f["op"] for f in self.send(c, {"op": "subscribe", "channel": "chat.lobby"})], ["subscribed"])
        self.assertEqual(self.send(c, {"op": "subscribe", "channel": "user.ann.inbox"})[0]["op"], "subscribed")
        [refused] = self.send(c, {"op": "subscribe", "channel": "user.bob.inbox"})
        self.assertEqual((refused["code"], refused["reason"]), (403, "not allowed to subscribe to user.bob.inbox"))
        self.assertEqual([f["op"] for f in self.send(c, {"op": "publish", "channel": "chat.lobby", "data": "hi"})], ["message", "published"])

    def test_publish_needs_the_grant(self) -> None:
        c = self.connection()
        self.send(c, {"op": "auth", "token": token(subscribe=["chat.*"])})
        [refused] = self.send(c, {"op": "publish", "channel": "chat.lobby", "data": "hi"})
        self.assertEqual((refused["code"], refused["reason"]), (403, "not allowed to publish to chat.lobby"))
        self.assertEqual(self.broker.publish("chat.lobby", "from the back end").seq, 1, "nothing was published by the refusal")

    def test_recovery_needs_history(self) -> None:
        """
        A since on a channel the token grants only to subscribe to is
        refused whole: recovery never bypasses the history grant.
        """
        writer = self.connection("w")
        self.send(writer, {"op": "auth", "token": token(sub="w", subscribe=["chat.*"], publish=["chat.*"])})
        [subscribed] = self.send(writer, {"op": "subscribe", "channel": "chat.room"})
        for i in range(3):
            self.send(writer, {"op": "publish", "channel": "chat.room", "data": i})
        since = {"epoch": subscribed["epoch"], "seq": 0}
        reader = self.connection("r")
        self.send(reader, {"op": "auth", "token": token(sub="r", subscribe=["chat.*"])})
        [refused] = self.send(reader, {"op": "subscribe", "channel": "chat.room", "since": since})
        self.assertEqual((refused["code"], refused["reason"]), (403, "not allowed to read the history of chat.room"))
        self.assertEqual(list(self.broker.subscriptions("r")), [])
        self.send(reader, {"op": "auth", "token": token(sub="r", subscribe=["chat.*"], history=["chat.*"])})
        frames = self.send(reader, {"op": "subscribe", "channel": "chat.room", "since": since})
        self.assertEqual([f.get("seq") for f in frames], [3, 1, 2, 3])
        self.assertTrue(frames[0]["recovered"])

    def test_refresh_narrows_channel_by_channel(self) -> None:
        c = self.connection()
        self.send(c, {"op": "auth", "token": token(subscribe=["chat.a", "chat.b"])})
        self.send(c, {"op": "subscribe", "channel": "chat.a"})
        self.send(c, {"op": "subscribe", "channel": "chat.b"})
        frames = self.send(c, {"op": "auth", "token": token(subscribe=["chat.a"], exp=NOW + 1200)})
        self.assertEqual(frames[0], {"op": "authed", "sub": "ann", "expires_in": 1200})
        self.assertEqual(frames[1], {"op": "unsubscribed", "channel": "chat.b", "code": 403, "reason": "the new token does not grant it"})
        self.assertEqual(list(self.broker.subscriptions("c1")), ["chat.a"])
        self.broker.publish("chat.b", "not for ann any more")
        self.broker.publish("chat.a", "still for ann")
        self.assertEqual([f["data"] for f in c.take()], ["still for ann"])

    def test_bad_tokens_and_another_user_close(self) -> None:
        c = self.connection()
        self.send(c, {"op": "auth", "token": token(exp=NOW - 60)})
        self.assertEqual(c.closed, (closecodes.UNAUTHORIZED, "the token has expired"))
        c = self.connection("c2")
        self.send(c, {"op": "auth", "token": token(sub="ann")})
        self.send(c, {"op": "auth", "token": token(sub="bob")})
        self.assertEqual(c.closed, (closecodes.FORBIDDEN, "a token for another user"))
        self.assertEqual(c.identity.sub, "ann")  # type: ignore[union-attr]

    def test_auth_frame_without_auth_is_an_error(self) -> None:
        handler = ChannelProtocolHandler(self.broker)
        c = FakeConnection("x")
        handler.message_received(c, json.dumps({"op": "auth", "token": "t"}))
        [error] = c.take()
        self.assertEqual((error["code"], error["reason"]), (400, "this server does not authenticate (no --auth)"))


class PresenceGrantTests(unittest.TestCase):
    """
    With --auth jwt, the member list in "subscribed" and the join/leave
    events reach only connections whose token grants presence on the
    channel; without --auth, everyone sees them as before.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.broker = Broker(self.clock, ChannelSettings(max_data_bytes=4096))
        self.auth = policy(self, anonymous=("public.*",))
        self.handler = ChannelProtocolHandler(self.broker, self.auth)

    def connection(self, cid: str, **wsh: list[str]) -> AuthedConnection:
        connection = AuthedConnection(cid)
        connection.identity = self.auth.anonymous_identity()
        if wsh:
            self.send(connection, {"op": "auth", "token": token(sub=cid, **wsh)})
        return connection

    def send(self, connection: FakeConnection, frame: Any) -> list[dict[str, Any]]:
        self.handler.message_received(connection, json.dumps(frame))
        return connection.take()

    def test_without_the_grant_no_members_and_no_joins(self) -> None:
        """
        A token that grants subscribe but not presence gets a "subscribed"
        without a presence list and no join or leave frames; one that
        grants presence gets both.  Being seen needs no grant.
        """
        blind = self.connection("blind", subscribe=["chat.*"])
        seer = self.connection("seer", subscribe=["chat.*"], presence=["chat.*"])
        [subscribed] = self.send(blind, {"op": "subscribe", "channel": "chat.a"})
        self.assertEqual(subscribed["op"], "subscribed")
        self.assertNotIn("presence", subscribed)
        [subscribed] = self.send(seer, {"op": "subscribe", "channel": "chat.a"})
        self.assertEqual(subscribed["presence"], [{"id": "blind"}, {"id": "seer"}])
        other = self.connection("other", subscribe=["chat.*"])
        self.send(other, {"op": "subscribe", "channel": "chat.a"})
        self.send(other, {"op": "unsubscribe", "channel": "chat.a"})
        self.assertEqual(blind.take(), [])
        self.assertEqual([(f["op"], f["client"]["id"]) for f in seer.take()], [("join", "other"), ("leave", "other")])

    def test_anonymous_connections_get_no_presence(self) -> None:
        """
        --anonymous-channels grants subscribe and history, not presence.
        """
        anonymous = self.connection("anon")
        [subscribed] = self.send(anonymous, {"op": "subscribe", "channel": "public.news"})
        self.assertNotIn("presence", subscribed)
        self.send(self.connection("ann", subscribe=["public.*"]), {"op": "subscribe", "channel": "public.news"})
        self.assertEqual(anonymous.take(), [])

    def test_refresh_that_drops_presence_stops_join_and_leave(self) -> None:
        """
        A refresh whose token no longer grants presence keeps the
        subscription (and its messages) but stops the join/leave events.
        """
        c = self.connection("c1", subscribe=["chat.*"], presence=["chat.*"])
        self.send(c, {"op": "subscribe", "channel": "chat.a"})
        self.send(self.connection("x", subscribe=["chat.*"]), {"op": "subscribe", "channel": "chat.a"})
        self.assertEqual([f["op"] for f in c.take()], ["join"])
        [authed] = self.send(c, {"op": "auth", "token": token(sub="c1", subscribe=["chat.*"])})
        self.assertEqual(authed["op"], "authed")
        self.send(self.connection("y", subscribe=["chat.*"]), {"op": "subscribe", "channel": "chat.a"})
        self.broker.publish("chat.a", "still here")
        self.assertEqual([f["op"] for f in c.take()], ["message"])
        self.assertEqual(list(self.broker.subscriptions("c1")), ["chat.a"])

    def test_without_auth_everyone_sees_presence(self) -> None:
        """
        Without --auth the broker has no presence filter: lists and events
        as before.
        """
        broker = Broker(self.clock, ChannelSettings(max_data_bytes=4096))
        handler = ChannelProtocolHandler(broker)
        self.assertIsNone(broker.presence_visible)
        a, b = FakeConnection("a"), FakeConnection("b")
        handler.message_received(a, json.dumps({"op": "subscribe", "channel": "chat.a"}))
        handler.message_received(b, json.dumps({"op": "subscribe", "channel": "chat.a"}))
        self.assertEqual([f.get("presence") for f in b.take()], [[{"id": "a"}, {"id": "b"}]])
        self.assertEqual([f["op"] for f in a.take()], ["subscribed", "join"])


class WaitingForKeysTests(unittest.TestCase):
    """
    A token refused because its keys are being fetched (--jwt-jwks-url) is
    refused as "try again later", which the clients retry, not as a bad
    token, which they take as final.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.verifier = TokenVerifier(TokenSettings(jwks_url="https://idp.example/jwks"))
        self.verifier.refresh_keys = lambda: 5.0
        self.auth = AuthPolicy(self.verifier)
        self.waiting_token = jwt.encode({"sub": "ann", "aud": "wsheart", "exp": NOW + 60}, SECRET, algorithm="HS256", headers={"kid": "k9"})

    def test_handshake_gets_503(self) -> None:
        """
        On the handshake: 503 with the reason, not 401.
        """
        factory = make_server_factory(self.clock, auth=self.auth)
        client, server, pump = connect_client(factory, self.clock, headers={"Authorization": "Bearer " + self.waiting_token})
        self.assertFalse(client.opened)
        self.assertTrue(client.http_response_data.startswith(b"HTTP/1.1 503 "), client.http_response_data)
        self.assertRegex(client.http_response_data, rb"\r\nRetry-After: \d+\r\n", "the wait, for clients that read it")
        self.assertIn(b"no keys yet", client.data)

    def test_auth_frame_closes_with_1013_and_a_hint(self) -> None:
        """
        In an auth frame: close 1013 with a reconnect hint the clients obey
        (within the 123 bytes of a close reason), not 4401.
        """
        handler = ChannelProtocolHandler(Broker(self.clock, ChannelSettings()), self.auth)
        c = AuthedConnection("c1")
        handler.message_received(c, json.dumps({"op": "auth", "token": self.waiting_token}))
        code, reason = c.closed
        self.assertEqual(code, closecodes.TRY_AGAIN_LATER)
        self.assertEqual(json.loads(reason), {"retry_after": 5.0, "jitter": 5.0, "reason": "no keys yet: the JWKS from --jwt-jwks-url has not been fetched"})
        self.assertLessEqual(len(reason.encode()), 123)


class HandshakeAuthTests(unittest.TestCase):
    """
    The handshake's token, the auth timeout and expiry, over in-memory
    transports on a Clock.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)

    def test_plain_connection_needs_a_token(self) -> None:
        factory = make_server_factory(self.clock, auth=policy(self))
        client, server, pump = connect_client(factory, self.clock)
        self.assertFalse(client.opened)
        self.assertTrue(client.http_response_data.startswith(b"HTTP/1.1 401 "), client.http_response_data)
        self.assertIn(b"a token is needed", client.data)
        self.assertEqual(factory.metrics.handshake_failures.labels(reason="token")._value.get(), 1)

    def test_bearer_header_and_expiry(self) -> None:
        """
        Authorization: Bearer opens a plain connection as its token's user;
        the connection closes with 4001 when the token expires (plus the
        leeway), not before.
        """
        factory = make_server_factory(self.clock, auth=policy(self))
        client, server, pump = connect_client(factory, self.clock, headers={"Authorization": "Bearer " + token(exp=NOW + 60)})
        self.assertTrue(client.opened)
        self.assertEqual(server.identity.sub, "ann")
        self.clock.advance(64)
        pump.flush()
        self.assertEqual(client.closes, [])
        self.clock.advance(1)
        pump.flush()
        self.assertEqual(client.closes[0][1], closecodes.TOKEN_EXPIRED)

    def test_forged_handshake_token_gets_401(self) -> None:
        factory = make_server_factory(self.clock, auth=policy(self))
        forged = jwt.encode({"sub": "ann", "aud": "wsheart", "exp": NOW + 60}, b"x" * 40, algorithm="HS256")
        client, server, pump = connect_client(factory, self.clock, headers={"Authorization": "Bearer " + forged})
        self.assertFalse(client.opened)
        self.assertTrue(client.http_response_data.startswith(b"HTTP/1.1 401 "), client.http_response_data)
        self.assertIn(b"Signature verification failed", client.data)
        self.assertIsNone(server.identity)

    def test_bearer_subprotocol_is_not_echoed(self) -> None:
        broker = Broker(self.clock, ChannelSettings())
        factory = make_server_factory(self.clock, channels=broker, auth=policy(self))
        client, server, pump = connect_client(factory, self.clock, protocols=["wsheart.v1", "wsheart.bearer." + token(subscribe=["chat.*"])])
        self.assertTrue(client.opened)
        self.assertEqual(client.websocket_protocol_in_use, "wsheart.v1")
        self.assertEqual(server.identity.sub, "ann")

    def test_no_token_on_v1_closes_after_the_auth_timeout(self) -> None:
        broker = Broker(self.clock, ChannelSettings())
        factory = make_server_factory(self.clock, channels=broker, auth=policy(self, timeout=10))
        client, server, pump = connect_client(factory, self.clock, protocols=["wsheart.v1"])
        self.assertTrue(client.opened, "it may send its token in an auth frame")
        self.clock.advance(9.9)
        pump.flush()
        self.assertEqual(client.closes, [])
        self.clock.advance(0.2)
        pump.flush()
        self.assertEqual(client.closes[0][1], closecodes.AUTH_TIMEOUT)

    def test_asked_for_a_fresh_token_before_expiry(self) -> None:
        """
        30 s before the token expires the server sends {"op":"refresh"}; a
        fresh token in an auth frame keeps the connection past the old
        token's expiry; one that never comes closes it with 4001.
        """
        broker = Broker(self.clock, ChannelSettings())
        factory = make_server_factory(self.clock, channels=broker, auth=policy(self))
        client, server, pump = connect_client(factory, self.clock, protocols=["wsheart.v1", "wsheart.bearer." + token(exp=NOW + 100)])
        self.clock.advance(69)
        pump.flush()
        self.assertNotIn('{"op":"refresh","expires_in":30}', client.messages)
        self.clock.advance(1)
        pump.flush()
        self.assertIn('{"op":"refresh","expires_in":30}', client.messages)
        client.sendMessage(json.dumps({"op": "auth", "token": token(exp=NOW + 400)}).encode())
        pump.flush()
        self.clock.advance(200)  # past the first token's exp + leeway
        pump.flush()
        self.assertEqual(client.closes, [])
        self.clock.advance(300)  # past the second's, with no refresh
        pump.flush()
        self.assertEqual(client.closes[0][1], closecodes.TOKEN_EXPIRED)

    def test_auth_frame_cancels_the_timeout(self) -> None:
        broker = Broker(self.clock, ChannelSettings())
        factory = make_server_factory(self.clock, channels=broker, auth=policy(self, timeout=10))
        client, server, pump = connect_client(factory, self.clock, protocols=["wsheart.v1"])
        client.sendMessage(json.dumps({"op": "auth", "token": token(exp=NOW + 3600)}).encode())
        pump.flush()
        self.assertEqual(json.loads(client.messages[-1])["op"], "authed")
        self.clock.advance(60)
        pump.flush()
        self.assertEqual(client.closes, [])


class PerUserLimitTests(unittest.TestCase):
    """
    --max-connections-per-user: counted once the token is read (at the
    handshake or in a wsheart.v1 auth frame), refused past it in a way
    each kind of client reads, freed when a connection closes.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.broker = Broker(self.clock, ChannelSettings())
        self.factory = make_server_factory(
            self.clock, channels=self.broker, auth=policy(self), limits=LimitSettings(max_connections_per_user=2)
        )

    def connect(self, sub: str = "ann", **kwargs: Any) -> tuple[Any, Any, Any]:
        kwargs.setdefault("headers", {"Authorization": "Bearer " + token(sub=sub)})
        return connect_client(self.factory, self.clock, **kwargs)

    def test_a_third_handshake_gets_429_with_retry_after(self) -> None:
        first, _, _ = self.connect()
        second, _, _ = self.connect()
        other, _, _ = self.connect(sub="bob")
        self.assertTrue(first.opened and second.opened and other.opened)
        third, server, _ = self.connect()
        self.assertFalse(third.opened)
        self.assertTrue(third.http_response_data.startswith(b"HTTP/1.1 429 "), third.http_response_data)
        self.assertIn(b"too many connections for this user (at most 2)", third.data)
        retry_after = int(re.search(rb"\r\nRetry-After: (\d+)\r\n", third.http_response_data).group(1))  # type: ignore[union-attr]
        self.assertGreaterEqual(retry_after, USER_HINT[0])
        self.assertLessEqual(retry_after, USER_HINT[0] + USER_HINT[1] + 1)
        self.assertEqual(self.factory.metrics.limit_refusals.labels(limit="connections_per_user")._value.get(), 1)
        self.assertEqual(self.factory.limits.users, {"ann": 2, "bob": 1})

    def test_a_wsheart_client_is_told_in_band_when_to_come_back(self) -> None:
        for _ in range(2):
            self.connect()
        client, server, pump = self.connect(protocols=["wsheart.hints"])
        pump.flush()
        [(_, code, reason)] = [(c[0], c[1], c[2]) for c in client.closes]
        self.assertEqual(code, closecodes.TRY_AGAIN_LATER)
        hint = hint_from_close(code, reason)
        self.assertEqual((hint.retry_after, hint.jitter), USER_HINT)  # type: ignore[union-attr]
        self.assertEqual(self.factory.limits.users, {"ann": 2}, "the refused one never counted")
        self.assertEqual(len(self.factory.hub), 2)

    def test_a_closed_connection_makes_room(self) -> None:
        first, server, pump = self.connect()
        self.connect()
        first.sendClose(1000)
        pump.flush()
        self.assertEqual(self.factory.limits.users, {"ann": 1})
        again, _, _ = self.connect()
        self.assertTrue(again.opened)

    def test_an_auth_frame_over_the_limit_closes_with_1013(self) -> None:
        """
        Anonymous wsheart.v1 connections are not counted; the auth frame
        that would make a third connection of the user closes it with 1013
        and the retry window, without an authed reply; a refresh of a
        counted connection is not counted twice.
        """
        factory = make_server_factory(
            self.clock, channels=self.broker, auth=policy(self, anonymous=("public.*",)),
            limits=LimitSettings(max_connections_per_user=2),
        )  # fmt: skip
        connections = [connect_client(factory, self.clock, protocols=["wsheart.v1"]) for _ in range(3)]
        self.assertEqual(factory.limits.users, {})
        for client, _, pump in connections[:2]:
            client.sendMessage(json.dumps({"op": "auth", "token": token()}).encode())
            pump.flush()
            self.assertEqual(json.loads(client.messages[-1])["op"], "authed")
        client, _, pump = connections[0]
        client.sendMessage(json.dumps({"op": "auth", "token": token(exp=NOW + 900)}).encode())
        pump.flush()
        self.assertEqual(json.loads(client.messages[-1])["op"], "authed", "a refresh")
        self.assertEqual(factory.limits.users, {"ann": 2})
        client, server, pump = connections[2]
        client.sendMessage(json.dumps({"op": "auth", "token": token()}).encode())
        pump.flush()
        self.assertNotIn("authed", "".join(client.messages))
        [close] = client.closes
        self.assertEqual(close[1], closecodes.TRY_AGAIN_LATER)
        self.assertEqual(hint_from_close(close[1], close[2]).retry_after, USER_HINT[0])  # type: ignore[union-attr]
        self.assertTrue(server.identity.anonymous, "it never became ann")
        self.assertEqual(factory.limits.users, {"ann": 2})

