"""
Channels of the wsheart.v1 subprotocol: publish, fan-out, bounded history,
positions (epoch, seq) and presence.  Pure: the clock is injected, and
subscribers are L{wsheart.hub.IConnection}s that receive text frames.

Guarantees (docs/protocol.md states them for clients):
- every message of a channel gets the next C{seq} (1, 2, 3, ...) within its
  C{epoch}; a new epoch starts whenever the channel's history is lost (the
  channel was forgotten, or the process restarted: epochs are random);
- a subscriber that resumes from C{(epoch, seq)} gets exactly the messages
  after C{seq}, in order, then live ones - or C{recovered: false} when the
  history no longer reaches back that far or the epoch changed;
- messages reach subscribers in seq order, each once per subscription.
Everything runs on one reactor thread: a publish is whole or not at all.
"""

from __future__ import annotations

import fnmatch
import json
import re
import secrets
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

from twisted.internet.interfaces import IReactorTime

from wsheart.frames import send_to_all
from wsheart.hub import IConnection

CHANNEL_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:@-]{0,127}$")
# Room for a message frame's envelope around its data: op, channel name
# (at most 128), epoch and seq.  Data plus this must fit the size limit
# that subscribers enforce (the same --max-message-size by default).
FRAME_ENVELOPE = 256
MAX_CLIENT_NAME = 64


class ChannelError(Exception):
    """
    A request about channels that cannot be done; C{code} is the error code
    of the protocol (docs/protocol.md) and the HTTP status of the API.
    """

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def check_channel_name(name: object) -> str:
    if not isinstance(name, str) or not CHANNEL_NAME.match(name):
        raise ChannelError(
            400,
            "channel names are 1-128 characters of letters, digits and _ . : @ - (not starting with . : @ -)",
        )
    return name


@dataclass(frozen=True)
class ChannelSettings:
    """
    @ivar history_size: messages kept per channel for recovery.
    @ivar history_age: seconds a message is kept for recovery.
    @ivar max_channels: channels (with subscribers or history) at once.
    @ivar max_subscriptions: channels one connection may subscribe to.
    @ivar max_data_bytes: largest message data, as JSON.
    @ivar client_publish: channel patterns (fnmatch) clients may publish to.
    @ivar quiet_presence: channel patterns without join/leave events.
    """

    history_size: int = 100
    history_age: float = 300.0
    max_channels: int = 10000
    max_subscriptions: int = 100
    max_data_bytes: int = 64 * 1024
    client_publish: tuple[str, ...] = ("chat.*",)
    quiet_presence: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.history_size < 0:
            raise ValueError(f"history size must not be negative, got {self.history_size}")
        if not self.history_age >= 0:
            raise ValueError(f"history age must not be negative, got {self.history_age}")
        for name in ("max_channels", "max_subscriptions"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', ' ')} must be at least 1, got {getattr(self, name)}")
        if self.max_data_bytes <= FRAME_ENVELOPE:
            raise ValueError(
                f"channel messages need a size limit above {FRAME_ENVELOPE} bytes, got {self.max_data_bytes} "
                "(raise --max-message-size, or turn channels off with --no-channels)"
            )

    def may_publish(self, channel: str) -> bool:
        return any(fnmatch.fnmatchcase(channel, pattern) for pattern in self.client_publish)

    def presence_events(self, channel: str) -> bool:
        return not any(fnmatch.fnmatchcase(channel, pattern) for pattern in self.quiet_presence)


@dataclass(frozen=True)
class Position:
    epoch: str
    seq: int


@dataclass
class _Entry:
    seq: int
    time: float
    data: Any
    frame: str  # the "message" frame, serialised once for every subscriber


@dataclass
class Subscriber:
    connection: IConnection
    connection_id: str
    name: Optional[str]

    def client(self) -> dict[str, Any]:
        info: dict[str, Any] = {"id": self.connection_id}
        if self.name is not None:
            info["name"] = self.name
        return info


@dataclass
class Channel:
    name: str
    epoch: str
    seq: int = 0
    history: deque[_Entry] = field(default_factory=deque)
    subscribers: dict[str, Subscriber] = field(default_factory=dict)

    def position(self) -> Position:
        return Position(self.epoch, self.seq)


@dataclass(frozen=True)
class Subscribed:
    """
    The answer to a subscribe: where the channel is, whether the gap since
    the client's position was covered, and the missed frames to send first.
    """

    position: Position
    recovered: bool
    missed: tuple[str, ...]
    presence: tuple[dict[str, Any], ...]


def encode(frame: dict[str, Any]) -> str:
    return json.dumps(frame, separators=(",", ":"), ensure_ascii=False)


class Broker:
    """
    All channels of one wsheart process.
    """

    def __init__(self, clock: IReactorTime, settings: ChannelSettings = ChannelSettings()) -> None:
        self.clock = clock
        self.settings = settings
        self._channels: dict[str, Channel] = {}
        # connection id -> names of the channels it is subscribed to
        self._subscriptions: dict[str, set[str]] = {}
        # (channel, key) -> (position, time): a publish retried with the same
        # Idempotency-Key is answered, not repeated.
        self._idempotency: OrderedDict[tuple[str, str], tuple[Position, float]] = OrderedDict()
        self.published_total = 0
        self.delivered_total = 0
        self._last_sweep = float("-inf")

    # -- publishing -----------------------------------------------------------

    def publish(self, channel_name: str, data: Any, idempotency_key: Optional[str] = None) -> Position:
        """
        Append C{data} to a channel and send it to every subscriber.
        Raises L{ChannelError} (nothing published) for a bad name, data too
        large or not JSON, or too many channels.
        """
        check_channel_name(channel_name)
        now = self.clock.seconds()
        if idempotency_key is not None:
            self._expire_keys(now)
            done = self._idempotency.get((channel_name, idempotency_key))
            if done is not None:
                return done[0]
        try:
            data_json = json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError, RecursionError) as e:
            raise ChannelError(400, f"message data is not JSON: {e}") from None
        # Checked before the channel exists: a refused publish leaves nothing.
        if len(data_json.encode("utf-8")) + FRAME_ENVELOPE > self.settings.max_data_bytes:
            raise ChannelError(413, self._too_large())
        channel = self._channel(channel_name, create=True)
        assert channel is not None
        seq = channel.seq + 1
        # Built by hand around the data's JSON, so the data is serialised once.
        frame = (
            '{"op":"message","channel":' + json.dumps(channel_name) + ',"epoch":' + json.dumps(channel.epoch)
            + ',"seq":' + str(seq) + ',"data":' + data_json + "}"
        )  # fmt: skip
        channel.seq = seq
        self.published_total += 1
        if self.settings.history_size:
            channel.history.append(_Entry(seq, now, data, frame))
            while len(channel.history) > self.settings.history_size:
                channel.history.popleft()
        self._expire_history(channel, now)
        self.delivered_total += send_to_all([s.connection for s in channel.subscribers.values()], frame)
        position = channel.position()
        if not channel.subscribers and not channel.history:
            del self._channels[channel_name]  # nothing to keep (history off)
        if idempotency_key is not None:
            self._idempotency[(channel_name, idempotency_key)] = (position, now)
            while len(self._idempotency) > 10000:
                self._idempotency.popitem(last=False)
        return position

    def _too_large(self) -> str:
        limit = self.settings.max_data_bytes - FRAME_ENVELOPE
        return f"message data is larger than {limit} bytes (the message frame must fit {self.settings.max_data_bytes})"

    # -- subscribing ----------------------------------------------------------

    def subscribe(
        self,
        connection_id: str,
        connection: IConnection,
        channel_name: str,
        since: Optional[Position] = None,
        name: Optional[str] = None,
    ) -> Subscribed:
        """
        Subscribe a connection (again, if it already is: a resubscribe
        recovers from C{since} like a first one).  The caller sends the
        C{subscribed} frame and then C{missed}, before anything else.
        """
        check_channel_name(channel_name)
        if name is not None and (not isinstance(name, str) or len(name) > MAX_CLIENT_NAME):
            raise ChannelError(400, f"name must be a string of at most {MAX_CLIENT_NAME} characters")
        mine = self._subscriptions.setdefault(connection_id, set())
        if channel_name not in mine and len(mine) >= self.settings.max_subscriptions:
            raise ChannelError(429, f"at most {self.settings.max_subscriptions} subscriptions per connection")
        channel = self._channel(channel_name, create=True)
        assert channel is not None
        self._expire_history(channel, self.clock.seconds())
        recovered, missed = self._recover(channel, since)
        subscriber = Subscriber(connection, connection_id, name)
        joined = connection_id not in channel.subscribers
        channel.subscribers[connection_id] = subscriber
        mine.add(channel_name)
        presence: tuple[dict[str, Any], ...] = ()
        # Presence costs O(subscribers) per subscribe (the list, and a join
        # frame to each): quiet channels skip both.
        if self.settings.presence_events(channel_name):
            presence = tuple(s.client() for s in channel.subscribers.values())
            if joined:
                self._announce(channel, "join", subscriber)
        return Subscribed(channel.position(), recovered, missed, presence)

    def _recover(self, channel: Channel, since: Optional[Position]) -> tuple[bool, tuple[str, ...]]:
        if since is None or since.epoch != channel.epoch or since.seq > channel.seq or since.seq < 0:
            return False, ()
        if since.seq == channel.seq:
            return True, ()
        oldest = channel.history[0].seq if channel.history else channel.seq + 1
        if oldest > since.seq + 1:
            return False, ()  # the gap is older than the history
        return True, tuple(e.frame for e in channel.history if e.seq > since.seq)

    def unsubscribe(self, connection_id: str, channel_name: str) -> bool:
        """
        Returns whether the connection was subscribed.
        """
        mine = self._subscriptions.get(connection_id)
        if not mine or channel_name not in mine:
            return False
        mine.discard(channel_name)
        if not mine:
            del self._subscriptions[connection_id]
        self._leave(channel_name, connection_id)
        return True

    def remove_connection(self, connection_id: str) -> int:
        """
        A connection is gone (closed, dropped or declared dead): it leaves
        every channel at once.  Returns how many.
        """
        names = self._subscriptions.pop(connection_id, set())
        for channel_name in names:
            self._leave(channel_name, connection_id)
        return len(names)

    def _leave(self, channel_name: str, connection_id: str) -> None:
        channel = self._channels.get(channel_name)
        if channel is None:
            return
        subscriber = channel.subscribers.pop(connection_id, None)
        if subscriber is not None and self.settings.presence_events(channel_name):
            self._announce(channel, "leave", subscriber)
        self._maybe_forget(channel)

    def _announce(self, channel: Channel, op: str, who: Subscriber) -> None:
        frame = encode({"op": op, "channel": channel.name, "client": who.client()})
        for subscriber in list(channel.subscribers.values()):
            if subscriber.connection_id != who.connection_id:
                subscriber.connection.send_text(frame)

    # -- reading --------------------------------------------------------------

    def channels(self) -> list[dict[str, Any]]:
        now = self.clock.seconds()
        rows = []
        for channel in sorted(self._channels.values(), key=lambda c: c.name):
            self._expire_history(channel, now)
            rows.append(
                {
                    "channel": channel.name,
                    "epoch": channel.epoch,
                    "seq": channel.seq,
                    "subscribers": len(channel.subscribers),
                    "history": len(channel.history),
                }
            )
        return rows

    def presence(self, channel_name: str) -> list[dict[str, Any]]:
        channel = self._channel(channel_name, create=False)
        return [] if channel is None else [s.client() for s in channel.subscribers.values()]

    def history(self, channel_name: str, since_seq: int = 0) -> dict[str, Any]:
        """
        The messages after C{since_seq} still in history, and whether they
        are all of them (C{complete}).
        """
        channel = self._channel(channel_name, create=False)
        if channel is None:
            return {"channel": channel_name, "epoch": None, "seq": 0, "complete": since_seq == 0, "messages": []}
        self._expire_history(channel, self.clock.seconds())
        oldest = channel.history[0].seq if channel.history else channel.seq + 1
        return {
            "channel": channel.name,
            "epoch": channel.epoch,
            "seq": channel.seq,
            "complete": oldest <= since_seq + 1 and since_seq <= channel.seq,
            "messages": [{"seq": e.seq, "data": e.data} for e in channel.history if e.seq > since_seq],
        }

    def subscriptions(self, connection_id: str) -> Iterable[str]:
        return sorted(self._subscriptions.get(connection_id, ()))

    # -- housekeeping ---------------------------------------------------------

    def _channel(self, name: str, create: bool) -> Optional[Channel]:
        channel = self._channels.get(name)
        if channel is None and create:
            if len(self._channels) >= self.settings.max_channels:
                # A sweep costs O(channels): at most one a second, so a
                # client asking for new names cannot make every ask pay it.
                now = self.clock.seconds()
                if now - self._last_sweep >= 1.0:
                    self._last_sweep = now
                    self._forget_idle()
                if len(self._channels) >= self.settings.max_channels:
                    raise ChannelError(429, f"at most {self.settings.max_channels} channels")
            # A new epoch for every new life of a channel: whoever kept a
            # position from an earlier one learns its history is gone.
            channel = Channel(name, secrets.token_hex(6))
            self._channels[name] = channel
        return channel

    def _expire_history(self, channel: Channel, now: float) -> None:
        horizon = now - self.settings.history_age
        history = channel.history
        while history and history[0].time < horizon:
            history.popleft()

    def _maybe_forget(self, channel: Channel) -> None:
        self._expire_history(channel, self.clock.seconds())
        if not channel.subscribers and not channel.history:
            del self._channels[channel.name]

    def _forget_idle(self) -> None:
        for channel in list(self._channels.values()):
            self._maybe_forget(channel)

    def _expire_keys(self, now: float) -> None:
        horizon = now - max(self.settings.history_age, 60.0)
        while self._idempotency:
            key, (_, time) = next(iter(self._idempotency.items()))
            if time >= horizon:
                break
            del self._idempotency[key]
