"""
Channels from Python: a L{ReconnectingClientService} listener that speaks
wsheart.v1, keeps each channel's position (epoch, seq) and resubscribes
from it after every reconnect, so the application gets every message it
missed exactly once - or learns (C{recovered=False}) that it must refetch.

    class Chat(ChannelListener):
        def channel_message(self, session, channel, data, epoch, seq):
            print(channel, data)
        def channel_subscribed(self, session, channel, recovered):
            if not recovered:
                refetch(channel)

    session = ChannelSession(Chat(), channels=["chat.lobby"], name="bot")
    service = ReconnectingClientService(url, session, protocols=[SUBPROTOCOL])
    service.startService()
    session.publish("chat.lobby", {"text": "hello"})
"""

from __future__ import annotations

import json
import random as _random
from typing import Any, Callable, Iterable, Optional, TypeGuard

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from twisted.logger import Logger
from zope.interface import Interface, implementer

from wsheart.channels.model import SUBPROTOCOL, Position
from wsheart.client import ClientListener, IClientListener

__all__ = ["SUBPROTOCOL", "ChannelListener", "ChannelSession", "IChannelListener"]


class IChannelListener(Interface):
    def channel_subscribed(session: "ChannelSession", channel: str, recovered: bool) -> None:
        """
        A (re)subscription took effect.  C{recovered} is true when every
        message since the last position was (or is about to be) delivered;
        false on a first subscription or when history could not cover the
        gap (refetch the application state).
        """

    def channel_message(session: "ChannelSession", channel: str, data: Any, epoch: str, seq: int) -> None:
        """
        A message, in order, each once.
        """

    def channel_presence(session: "ChannelSession", channel: str, event: str, client: dict[str, Any]) -> None:
        """
        C{event} is C{"join"} or C{"leave"}.
        """

    def channel_error(session: "ChannelSession", code: int, reason: str, frame: dict[str, Any]) -> None:
        """
        The server refused a request (docs/protocol.md lists the codes).
        """


@implementer(IChannelListener)
class ChannelListener:
    """
    Ignores everything; subclass it and override what you need.  Also gets
    the connection's own events (C{client_state}, C{client_closed}, ...) if
    it defines them.
    """

    def channel_subscribed(self, session: "ChannelSession", channel: str, recovered: bool) -> None:
        pass

    def channel_message(self, session: "ChannelSession", channel: str, data: Any, epoch: str, seq: int) -> None:
        pass

    def channel_presence(self, session: "ChannelSession", channel: str, event: str, client: dict[str, Any]) -> None:
        pass

    def channel_error(self, session: "ChannelSession", code: int, reason: str, frame: dict[str, Any]) -> None:
        pass


@implementer(IClientListener)
class ChannelSession(ClientListener):
    """
    The wsheart.v1 side of one reconnecting client.

    @ivar positions: the last position seen per subscribed channel.
    @ivar presence: the clients present per channel, as last told.
    """

    log = Logger()

    def __init__(
        self,
        listener: Any,
        channels: Iterable[str] = (),
        name: Optional[str] = None,
        reactor: Optional[IReactorTime] = None,
        random: Callable[[], float] = _random.random,
    ) -> None:
        """
        @param reactor: the clock of retries after a refusal that asks for
            one (default: the global reactor).
        """
        self.listener = listener
        self._reactor = reactor
        self._random = random
        self.name = name
        self.positions: dict[str, Optional[Position]] = {channel: None for channel in channels}
        self.presence: dict[str, dict[str, dict[str, Any]]] = {}
        # False for a channel whose member list the server had to cut short
        # (more members than one frame lists); presence_count then says how
        # many there are.
        self.presence_complete: dict[str, bool] = {}
        self.presence_count: dict[str, int] = {}
        self.client: Any = None
        self.duplicates_dropped = 0

    # -- the application's side --------------------------------------------

    def subscribe(self, channel: str) -> None:
        """
        Subscribe now if connected, and after every reconnect.
        """
        if channel not in self.positions:
            self.positions[channel] = None
            self._send_subscribe(channel)

    def unsubscribe(self, channel: str) -> None:
        if self.positions.pop(channel, 0) != 0:
            self._send({"op": "unsubscribe", "channel": channel})

    def publish(self, channel: str, data: Any, ref: Any = None) -> bool:
        """
        Publish through the WebSocket (the server must allow clients to
        publish on C{channel}); False while not connected.
        """
        frame: dict[str, Any] = {"op": "publish", "channel": channel, "data": data}
        if ref is not None:
            frame["ref"] = ref
        return self._send(frame)

    # -- IClientListener -----------------------------------------------------

    def client_opened(self, client: Any) -> None:
        self.client = client
        if getattr(client, "subprotocol", SUBPROTOCOL) != SUBPROTOCOL:
            # A server without channels (--no-channels) echoes or handles
            # frames as plain messages: retrying would not change that.
            self._call("channel_error", 0, "the server did not accept the wsheart.v1 subprotocol", {})
            client.stopService()
            return
        for channel in list(self.positions):
            self._send_subscribe(channel)
        self._forward("client_opened", client)

    def client_message(self, client: Any, message: Any) -> None:
        self.client = client
        if not isinstance(message, str):
            return
        try:
            frame = json.loads(message)
        except ValueError:
            self.log.warn("wsheart.v1: not JSON from the server: {text!r}", text=message[:200])
            return
        if not isinstance(frame, dict):
            return
        op = frame.get("op")
        channel = frame.get("channel")
        if op == "message" and channel in self.positions:
            self._message(channel, frame)
        elif op == "subscribed" and channel in self.positions:
            recovered = frame.get("recovered") is True
            if not recovered:
                # Start from the channel's present; with recovery the
                # missed messages follow and move the position themselves.
                epoch, seq = frame.get("epoch"), frame.get("seq")
                if not isinstance(epoch, str) or not _is_seq(seq):
                    self.log.warn("wsheart.v1: subscribed without a position: {frame!r}", frame=frame)
                    return
                self.positions[channel] = Position(epoch, seq)
            presence = frame.get("presence")
            if isinstance(presence, list):
                self.presence[channel] = {str(c["id"]): c for c in presence if isinstance(c, dict) and "id" in c}
                self.presence_complete[channel] = frame.get("presence_complete") is not False
                count = frame.get("presence_count")
                self.presence_count[channel] = count if _is_seq(count) else len(self.presence[channel])
            self._call("channel_subscribed", channel, recovered)
        elif op in ("join", "leave") and channel in self.positions:
            who = frame.get("client")
            if not isinstance(who, dict):
                return
            members = self.presence.setdefault(channel, {})
            who_id = str(who.get("id"))
            if op == "join":
                members[who_id] = who
            else:
                members.pop(who_id, None)
            self._call("channel_presence", channel, op, who)
        elif op == "refresh":
            self._refresh_token(client)
        elif op == "error":
            retry_after = frame.get("retry_after")
            if frame.get("code") in (429, 503) and channel in self.positions and isinstance(retry_after, (int, float)) and retry_after >= 0:
                # The server's channels were unavailable (its Redis): ask
                # again when it says, spread so that clients do not return
                # together; a resubscribe recovers what was missed.
                self._retry_subscribe(channel, float(retry_after))
            self._call("channel_error", frame.get("code"), frame.get("reason"), frame)

    def client_state(self, client: Any, state: str, detail: dict[str, Any]) -> None:
        self.client = client
        self._forward("client_state", client, state, detail)

    def client_rtt(self, client: Any, rtt: float) -> None:
        self._forward("client_rtt", client, rtt)

    def client_missed(self, client: Any, misses: int) -> None:
        self._forward("client_missed", client, misses)

    def client_closed(self, client: Any, code: int, reason: str, was_clean: bool) -> None:
        self._forward("client_closed", client, code, reason, was_clean)

    # -- internals -------------------------------------------------------------

    def _message(self, channel: str, frame: dict[str, Any]) -> None:
        epoch, seq = frame.get("epoch"), frame.get("seq")
        if not isinstance(epoch, str) or not _is_seq(seq):
            return
        position = self.positions[channel]
        if position is not None and position.epoch == epoch and seq <= position.seq:
            # Already delivered: the server never repeats within a
            # subscription, but a resubscribe racing a live message could.
            self.duplicates_dropped += 1
            return
        self.positions[channel] = Position(epoch, seq)
        self._call("channel_message", channel, frame.get("data"), epoch, seq)

    def _retry_subscribe(self, channel: str, retry_after: float) -> None:
        reactor = self._reactor
        if reactor is None:
            from twisted.internet import reactor as _global

            reactor = _global
        assert reactor is not None
        delay = min(retry_after, 3600.0) * (1 + self._random())

        def again() -> None:
            if channel in self.positions:
                self._send_subscribe(channel)

        reactor.callLater(delay, again)

    def _send_subscribe(self, channel: str) -> None:
        frame: dict[str, Any] = {"op": "subscribe", "channel": channel}
        position = self.positions.get(channel)
        if position is not None:
            frame["since"] = {"epoch": position.epoch, "seq": position.seq}
        if self.name is not None:
            frame["name"] = self.name
        self._send(frame)

    def _refresh_token(self, client: Any) -> None:
        """
        The server asks for a fresh token before this one expires: ask the
        client's token function and send it in an auth frame.
        """
        token = getattr(client, "token", None)
        if token is None:
            return  # a fixed token: the server closes with 4001 at expiry, and the client reconnects
        asked = defer.maybeDeferred(token)
        asked.addCallback(lambda fresh: self._send({"op": "auth", "token": str(fresh)}))
        asked.addErrback(lambda f: self.log.warn("wsheart.v1: no fresh token: {why}", why=f.getErrorMessage()))

    def _send(self, frame: dict[str, Any]) -> bool:
        if self.client is None:
            return False
        return bool(self.client.send(json.dumps(frame, separators=(",", ":"))))

    def _call(self, method: str, *args: Any) -> None:
        handler = getattr(self.listener, method, None)
        if handler is None:
            return
        try:
            handler(self, *args)
        except Exception:
            self.log.failure("channel listener failed in {method}", method=method)

    def _forward(self, method: str, *args: Any) -> None:
        handler = getattr(self.listener, method, None)
        if handler is None:
            return
        try:
            handler(*args)
        except Exception:
            self.log.failure("channel listener failed in {method}", method=method)


def _is_seq(value: Any) -> "TypeGuard[int]":
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
