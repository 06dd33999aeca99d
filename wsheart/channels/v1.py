"""
The C{wsheart.v1} subprotocol on the server: JSON text frames for channels,
presence and recovery (every frame is documented in docs/protocol.md).

A connection that offers C{wsheart.v1} in C{Sec-WebSocket-Protocol} gets
this handler instead of the daemon's own (echo or C{--handler}); the
channel state lives in a L{wsheart.channels.Broker}.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Optional

from twisted.internet import defer
from twisted.logger import Logger

from wsheart import closecodes
from wsheart.auth import AuthPolicy, Identity, TokenRejected
from wsheart.channels.broker import Broker, ChannelError, Position, check_channel_name, encode, utf8_length, when_done
from wsheart.handler import MessageHandler, Message
from wsheart.hub import IConnection
from wsheart.access.limits import TokenBucket

PONG = '{"op":"pong"}'

# Error codes of "error" frames (the HTTP API answers with the same
# numbers as statuses).
BAD_REQUEST = 400  # malformed JSON, a missing or invalid field
UNAUTHENTICATED = 401  # with --auth: no token yet, and anonymous connections may not do this
FORBIDDEN = 403  # publishing to a channel clients may not publish to; not granted by the token
NOT_SUBSCRIBED = 404  # unsubscribe from a channel not subscribed to
UNKNOWN_OP = 405
TOO_LARGE = 413
TOO_MANY = 429  # subscriptions per connection, or channels

log = Logger()

MAX_REF = 64
# Frames a connection may send while one of its subscribes waits for the
# engine (Redis: at most --redis-timeout); past this they are refused.
MAX_HELD_FRAMES = 64
# Refusals for going too fast that end a connection (1013, come back later):
# this many within ABUSE_WINDOW seconds.
ABUSE_REFUSALS = 20
ABUSE_WINDOW = 5.0
ABUSE_HINT = '{"retry_after": 30, "jitter": 30}'

# With --auth jwt, a connection is asked for a fresh token this long before
# its token expires (at most half its lifetime).
REFRESH_MARGIN = 30.0


class ChannelProtocolHandler(MessageHandler):
    """
    Serves wsheart.v1 connections from a L{Broker}.  With C{auth} (C{--auth
    jwt}), a connection may send its token in an C{auth} frame, and every
    subscribe, recovery and publish is checked against its grants.
    """

    # The server lets a wsheart.v1 connection open without a token: it may
    # send one in an auth frame (browsers cannot set headers).
    authenticates_in_band = True

    def __init__(self, broker: Broker, auth: Optional[AuthPolicy] = None, rates: "Rates | None" = None) -> None:
        self.broker = broker
        self.auth = auth
        # Per connection: its frames' and subscribes' token buckets, and
        # when it was last refused for going too fast.
        self.rates = rates or Rates()
        self._buckets: dict[str, tuple[Optional[TokenBucket], Optional[TokenBucket]]] = {}
        self._refusals: dict[str, list[float]] = {}
        # Per connection: when it is asked for a fresh token.
        self._refresh_asks: dict[str, Any] = {}
        # Per connection with a subscribe waiting for the engine: the
        # frames it sent since, handled once that subscribe is answered.
        self._held: dict[str, list[Message]] = {}
        if auth is not None:
            # Join and leave events reach only members whose token grants
            # presence on the channel (both engines fan out through it).
            broker.presence_visible = self.sees_presence

    def connection_opened(self, connection: IConnection) -> None:
        self._ask_for_refresh_later(connection)

    def message_received(self, connection: IConnection, message: Message) -> Any:
        held = self._held.get(_id(connection))
        if held is not None:
            # A subscribe of this connection waits for the engine: what the
            # client sent after it waits too, so that answers (and the
            # subscription's state) follow the order of the frames - an
            # unsubscribe must not overtake its subscribe.
            if len(held) >= MAX_HELD_FRAMES:
                self._error(connection, TOO_MANY, f"more than {MAX_HELD_FRAMES} frames behind a subscribe in progress: retry later")
                return None
            held.append(message)
            return None
        return self._handle(connection, message)

    def _hold_behind(self, connection: IConnection, subscribing: "defer.Deferred[Any]") -> None:
        """
        Hold this connection's next frames until C{subscribing} has been
        answered, then handle them in order (up to the next subscribe that
        has to wait).
        """
        cid = _id(connection)
        self._held[cid] = []

        def release(result: Any) -> Any:
            held = self._held.pop(cid, None) or []
            while held:
                outcome = self._handle(connection, held.pop(0))
                if isinstance(outcome, defer.Deferred):
                    # Nobody else waits on it: a defect closes the
                    # connection, as the protocol does for a handler's.
                    outcome.addErrback(self._held_frame_failed, connection)
                if cid in self._held:  # another subscribe waits: the rest behind it
                    self._held[cid].extend(held)
                    break
            return result

        subscribing.addBoth(release)

    def _held_frame_failed(self, failure: Any, connection: IConnection) -> None:
        log.failure("a wsheart.v1 frame held behind a subscribe failed; closing connection {cid}", failure, cid=_id(connection))
        connection.close(closecodes.INTERNAL_ERROR, "internal error")

    def _handle(self, connection: IConnection, message: Message) -> Any:
        if isinstance(message, bytes):
            connection.close(closecodes.UNSUPPORTED_DATA, "wsheart.v1 takes JSON text frames")
            return
        try:
            frame = json.loads(message)
        except (ValueError, RecursionError):
            self._error(connection, BAD_REQUEST, "malformed JSON")
            return
        if not isinstance(frame, dict):
            self._error(connection, BAD_REQUEST, "a frame is a JSON object")
            return
        ref = frame.get("ref")
        if ref is not None and not (isinstance(ref, (str, int)) and not isinstance(ref, bool) and len(str(ref)) <= MAX_REF):
            self._error(connection, BAD_REQUEST, f"ref must be a string or integer of at most {MAX_REF} characters")
            return
        if "\\u" in message:
            # Valid JSON may spell a lone surrogate ("\ud800"), which no
            # UTF-8 frame can carry: refuse the frame before any of it (a
            # name, data) is kept - and echo its ref only if that is sound.
            try:
                utf8_length(encode(frame))
            except ChannelError as e:
                try:
                    utf8_length(encode({"ref": ref}))
                except ChannelError:
                    ref = None
                self._error(connection, e.code, e.reason, ref=ref)
                return
            except (RecursionError, ValueError):
                # Encoding nests a few frames deeper than parsing did.
                self._error(connection, BAD_REQUEST, "malformed JSON: nested too deeply")
                return
        op = frame.get("op")
        method = _OPS.get(op) if isinstance(op, str) else None
        if method is None:
            shown = repr(op)
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            self._error(connection, UNKNOWN_OP, f"unknown op {shown}", ref=ref)
            return
        channel = frame.get("channel")
        channel_name = channel if isinstance(channel, str) else None
        if op != "ping":  # the heartbeat is never limited
            wait = self._rate(connection, str(op))
            if wait:
                self._too_fast(connection, str(op), wait, channel_name, ref)
                return None
        try:
            result = method(self, connection, frame)
        except ChannelError as e:
            self._error(connection, e.code, e.reason, channel=channel_name, ref=ref, retry_after=e.retry_after)
            return None
        if isinstance(result, defer.Deferred):
            # An engine that answers later (Redis): its refusals become error
            # frames when they arrive; anything else fails the handler.
            def refused(failure: Any) -> None:
                failure.trap(ChannelError)
                refusal = failure.value
                self._error(connection, refusal.code, refusal.reason, channel=channel_name, ref=ref, retry_after=refusal.retry_after)

            result.addErrback(refused)
            if op == "subscribe":
                self._hold_behind(connection, result)
            return result
        return None

    def connection_closed(self, connection: IConnection, code: int, reason: str) -> None:
        self.broker.remove_connection(_id(connection))
        self._buckets.pop(_id(connection), None)
        self._refusals.pop(_id(connection), None)
        self._held.pop(_id(connection), None)
        ask = self._refresh_asks.pop(_id(connection), None)
        if ask is not None and ask.active():
            ask.cancel()

    # -- ops ------------------------------------------------------------------

    def _subscribe(self, connection: IConnection, frame: dict[str, Any]) -> Any:
        channel = check_channel_name(frame.get("channel"))
        since = _position(frame.get("since"))
        self._check(connection, "subscribe", channel)
        if since is not None:
            # Recovery reads history: a grant lost is not bypassed by since.
            self._check(connection, "history", channel)
        name = frame.get("name")
        answer = self.broker.subscribe(
            _id(connection), connection, channel, since=since, name=name, presence_budget=self._presence_budget(channel, frame)
        )
        return when_done(answer, lambda result: self._subscribed(connection, channel, frame, result))

    def _subscribed(self, connection: IConnection, channel: str, frame: dict[str, Any], result: Any) -> None:
        reply: dict[str, Any] = {
            "op": "subscribed",
            "channel": channel,
            "epoch": result.position.epoch,
            "seq": result.position.seq,
            "recovered": result.recovered,
        }
        if self.broker.settings.presence_events(channel) and self.sees_presence(connection, channel):
            reply["presence"] = list(result.presence)
            if not result.presence_complete:
                # More members than one frame can list: the rest are named
                # by later join events or GET /channels/{c}/presence.
                reply["presence_complete"] = False
                reply["presence_count"] = result.presence_total
        _with_ref(reply, frame)
        connection.send_text(encode(reply))
        for missed in result.missed:
            connection.send_text(missed)

    def _presence_budget(self, channel: str, frame: dict[str, Any]) -> int:
        """
        The bytes a "subscribed" frame leaves for its presence list under
        the size limit: the frame's other fields at their longest.
        """
        skeleton: dict[str, Any] = {
            "op": "subscribed",
            "channel": channel,
            "epoch": "e" * 64,
            "seq": 10**18,
            "recovered": False,
            "presence": [],
            "presence_complete": False,
            "presence_count": 10**18,
        }
        _with_ref(skeleton, frame)
        return self.broker.settings.max_data_bytes - utf8_length(encode(skeleton))

    def _unsubscribe(self, connection: IConnection, frame: dict[str, Any]) -> None:
        channel = check_channel_name(frame.get("channel"))
        if not self.broker.unsubscribe(_id(connection), channel):
            raise ChannelError(NOT_SUBSCRIBED, f"not subscribed to {channel}")
        connection.send_text(encode(_with_ref({"op": "unsubscribed", "channel": channel}, frame)))

    def _publish(self, connection: IConnection, frame: dict[str, Any]) -> Any:
        channel = check_channel_name(frame.get("channel"))
        if "data" not in frame:
            raise ChannelError(BAD_REQUEST, "publish needs data")
        if not self.broker.settings.may_publish(channel):
            raise ChannelError(FORBIDDEN, f"clients may not publish to {channel}")
        self._check(connection, "publish", channel)
        def published(position: Position) -> None:
            reply = {"op": "published", "channel": channel, "epoch": position.epoch, "seq": position.seq}
            connection.send_text(encode(_with_ref(reply, frame)))

        return when_done(self.broker.publish(channel, frame["data"], by_client=True), published)

    def _ping(self, connection: IConnection, frame: dict[str, Any]) -> None:
        connection.send_text(PONG)

    def _auth(self, connection: IConnection, frame: dict[str, Any]) -> None:
        """
        A token in a frame: the first one authenticates the connection, a
        later one refreshes it (same user only), and the channels its grants
        no longer allow are unsubscribed one by one.
        """
        if self.auth is None:
            raise ChannelError(BAD_REQUEST, "this server does not authenticate (no --auth)")
        now = self.broker.clock.seconds()
        try:
            identity = self.auth.verifier.verify(frame.get("token"), now)
        except TokenRejected as e:
            if e.retry_after is not None:
                # Its keys are being fetched (--jwt-jwks-url): a reconnect
                # after the hint may pass; 4401 would stop the client.
                hint = {"retry_after": e.retry_after, "jitter": e.retry_after, "reason": str(e)}
                connection.close(closecodes.TRY_AGAIN_LATER, encode(hint))
                return
            connection.close(closecodes.UNAUTHORIZED, str(e))
            return
        current: Optional[Identity] = getattr(connection, "identity", None)
        if current is not None and not current.anonymous and current.sub != identity.sub:
            connection.close(closecodes.FORBIDDEN, "a token for another user")
            return
        # The server protocol's own, beyond IConnection (which user
        # handlers implement too).
        set_identity = getattr(connection, "set_identity")
        if set_identity(identity) is False:
            # This user holds --max-connections-per-user: closing with 1013.
            return
        reply: dict[str, Any] = {"op": "authed", "sub": identity.sub}
        if identity.expires_at is not None:
            reply["expires_in"] = max(0, round(identity.expires_at - now))
        connection.send_text(encode(_with_ref(reply, frame)))
        self._ask_for_refresh_later(connection)
        for channel in self.broker.subscriptions(_id(connection)):
            if not self.auth.allows(identity, "subscribe", channel) and self.broker.unsubscribe(_id(connection), channel):
                lost = {"op": "unsubscribed", "channel": channel, "code": FORBIDDEN, "reason": "the new token does not grant it"}
                connection.send_text(encode(lost))

    def _rate(self, connection: IConnection, op: str) -> float:
        """
        0 if this frame may be served now, else the seconds until one may
        (--subscribe-rate for subscribes, --client-rate for every other
        frame but ping).
        """
        cid = _id(connection)
        buckets = self._buckets.get(cid)
        if buckets is None:
            clock = self.broker.clock
            frames = TokenBucket(self.rates.frames, self.rates.frames * 2, clock) if self.rates.frames else None
            # A client that reconnects resubscribes to all its channels at
            # once: that always fits the burst.
            burst = max(self.rates.subscribes * 2, self.broker.settings.max_subscriptions)
            subscribes = TokenBucket(self.rates.subscribes, burst, clock) if self.rates.subscribes else None
            buckets = self._buckets[cid] = (frames, subscribes)
        frames, subscribes = buckets
        if op == "subscribe":
            return subscribes.take() if subscribes is not None else 0.0
        return frames.take() if frames is not None else 0.0

    def _too_fast(self, connection: IConnection, op: str, wait: float, channel: Optional[str], ref: Any) -> None:
        """
        Refuse with 429 and when to try again; a connection refused
        ABUSE_REFUSALS times within ABUSE_WINDOW seconds is closed with 1013
        and a reconnect hint.
        """
        now = self.broker.clock.seconds()
        recent = [t for t in self._refusals.get(_id(connection), []) if now - t < ABUSE_WINDOW] + [now]
        self._refusals[_id(connection)] = recent
        if len(recent) >= ABUSE_REFUSALS:
            connection.close(closecodes.TRY_AGAIN_LATER, ABUSE_HINT)
            return
        self._error(connection, TOO_MANY, f"too many requests: {op} again in {wait:.2f} s", channel=channel, ref=ref, retry_after=round(wait, 3))

    def _ask_for_refresh_later(self, connection: IConnection) -> None:
        """
        Before the connection's token expires, send {"op":"refresh"} so the
        client sends a fresh one in time (REFRESH_MARGIN ahead, or half the
        token's remaining life if that is shorter).
        """
        ask = self._refresh_asks.pop(_id(connection), None)
        if ask is not None and ask.active():
            ask.cancel()
        identity: Optional[Identity] = getattr(connection, "identity", None)
        if self.auth is None or identity is None or identity.expires_at is None:
            return
        clock = self.broker.clock
        left = max(0.0, identity.expires_at - clock.seconds())
        expires_at = identity.expires_at

        def ask_now() -> None:
            self._refresh_asks.pop(_id(connection), None)
            remaining = max(0, round(expires_at - clock.seconds()))
            connection.send_text(encode({"op": "refresh", "expires_in": remaining}))

        self._refresh_asks[_id(connection)] = clock.callLater(left - min(REFRESH_MARGIN, left / 2), ask_now)

    def sees_presence(self, connection: IConnection, channel: str) -> bool:
        """
        Whether C{connection} may see who is in C{channel} (the member list
        in C{subscribed}, join and leave events): always without --auth;
        with it, when its current token grants presence there (anonymous
        connections never: --anonymous-channels grants no presence).
        """
        if self.auth is None:
            return True
        return self.auth.allows(getattr(connection, "identity", None), "presence", channel)

    def _check(self, connection: IConnection, action: str, channel: str) -> None:
        """
        With --auth, what the connection's identity does not grant is
        refused: 401 while it has no token, 403 with one.
        """
        if self.auth is None:
            return
        identity: Optional[Identity] = getattr(connection, "identity", None)
        if self.auth.allows(identity, action, channel):
            return
        verb = {"subscribe": "subscribe to", "publish": "publish to", "history": "read the history of"}[action]
        if identity is None or identity.anonymous:
            raise ChannelError(UNAUTHENTICATED, f"authenticate first: anonymous connections may not {verb} {channel}")
        raise ChannelError(FORBIDDEN, f"not allowed to {verb} {channel}")

    # -- helpers --------------------------------------------------------------

    def _error(
        self,
        connection: IConnection,
        code: int,
        reason: str,
        channel: Optional[str] = None,
        ref: Any = None,
        retry_after: Optional[float] = None,
    ) -> None:
        frame: dict[str, Any] = {"op": "error", "code": code, "reason": reason}
        if channel is not None:
            frame["channel"] = channel
        if ref is not None:
            frame["ref"] = ref
        if retry_after is not None:
            frame["retry_after"] = retry_after  # the same request may succeed then (503)
        connection.send_text(encode(frame))


_OPS = {
    "subscribe": ChannelProtocolHandler._subscribe,
    "unsubscribe": ChannelProtocolHandler._unsubscribe,
    "publish": ChannelProtocolHandler._publish,
    "ping": ChannelProtocolHandler._ping,
    "auth": ChannelProtocolHandler._auth,
}


@dataclass(frozen=True)
class Rates:
    """
    Per connection: subscribes, and other frames (all but ping), a second,
    with bursts of twice that (subscribes: at least --max-subscriptions, so
    a reconnect's resubscribes fit); 0: unlimited.
    """

    frames: float = 0.0
    subscribes: float = 0.0


def _id(connection: IConnection) -> str:
    connection_id = getattr(connection, "connection_id", None)
    return connection_id if isinstance(connection_id, str) else str(id(connection))


def _position(since: Any) -> Optional[Position]:
    if since is None:
        return None
    if not isinstance(since, dict):
        raise ChannelError(BAD_REQUEST, 'since must be {"epoch": E, "seq": S}')
    epoch, seq = since.get("epoch"), since.get("seq")
    if not isinstance(epoch, str) or len(epoch) > 64:
        raise ChannelError(BAD_REQUEST, "since.epoch must be a string")
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        raise ChannelError(BAD_REQUEST, "since.seq must be a non-negative integer")
    return Position(epoch, seq)


def _with_ref(reply: dict[str, Any], frame: dict[str, Any]) -> dict[str, Any]:
    if frame.get("ref") is not None:
        reply["ref"] = frame["ref"]
    return reply
