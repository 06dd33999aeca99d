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
import heapq
import itertools
import json
import secrets
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional, TypeVar, Union

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from wsheart.channels.model import ChannelError, Position, check_channel_name
from wsheart.frames import send_to_all
from wsheart.hub import IConnection

# Room for a message frame's envelope around its data: op, channel name
# (at most 128), epoch and seq.  Data plus this must fit the size limit
# that subscribers enforce (the same --max-message-size by default).
FRAME_ENVELOPE = 256
MAX_CLIENT_NAME = 64
# What a "subscribed" frame holds besides its presence list, at most: op,
# channel, epoch, seq, recovered, ref (64 characters, up to 6 bytes each
# escaped) and the presence counts.  The list gets the rest of the frame
# limit, unless the caller says exactly how much it may take.
SUBSCRIBED_ENVELOPE = 1024
# Idempotency keys remembered at once; past this, a publish with a new key
# is refused (429) rather than an older key forgotten early.
MAX_IDEMPOTENCY_KEYS = 100_000

log = Logger()


def utf8_length(text: str) -> int:
    """
    The UTF-8 size of C{text}; L{ChannelError} 400 when it cannot be sent
    at all - a lone surrogate, which valid JSON can spell as C{"\\ud800"}.
    """
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise ChannelError(
            400, "text must be valid Unicode: a lone surrogate escape (\\ud800-\\udfff) cannot be sent"
        ) from None


@dataclass(frozen=True)
class ChannelSettings:
    """
    @ivar history_size: messages kept per channel for recovery.
    @ivar history_age: seconds a message is kept for recovery.
    @ivar max_channels: channels the back end (the HTTP API, a Python
        handler) may have at once.
    @ivar max_client_channels: channels that exist only because clients
        subscribed or published to them.  A separate budget, so that
        anonymous subscribers cannot use up the channels the back end's
        publishes need.
    @ivar max_subscriptions: channels one connection may subscribe to.
    @ivar max_data_bytes: largest frame a channel sends (the subscribers'
        message size limit); message data gets this less L{FRAME_ENVELOPE}.
    @ivar client_publish: channel patterns (fnmatch) clients may publish to.
    @ivar quiet_presence: channel patterns without join/leave events.
    @ivar max_idempotency_keys: idempotency keys remembered at once.
    """

    history_size: int = 100
    history_age: float = 300.0
    max_channels: int = 10000
    max_subscriptions: int = 100
    max_data_bytes: int = 64 * 1024
    client_publish: tuple[str, ...] = ("chat.*",)
    quiet_presence: tuple[str, ...] = ()
    max_client_channels: Optional[int] = None  # None: the same as max_channels
    max_idempotency_keys: int = MAX_IDEMPOTENCY_KEYS

    def __post_init__(self) -> None:
        if self.history_size < 0:
            raise ValueError(f"history size must not be negative, got {self.history_size}")
        if not self.history_age >= 0:
            raise ValueError(f"history age must not be negative, got {self.history_age}")
        if self.max_client_channels is None:
            object.__setattr__(self, "max_client_channels", self.max_channels)
        for name in ("max_channels", "max_client_channels", "max_subscriptions", "max_idempotency_keys"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', ' ')} must be at least 1, got {getattr(self, name)}")
        if self.max_data_bytes < SUBSCRIBED_ENVELOPE:
            # Room for the largest frame besides messages: a "subscribed"
            # with a 128-character channel name and a 64-character ref.
            raise ValueError(
                f"channels need a message size limit of at least {SUBSCRIBED_ENVELOPE} bytes, got {self.max_data_bytes} "
                "(raise --max-message-size, or turn channels off with --no-channels)"
            )

    @property
    def key_lifetime(self) -> float:
        """
        Seconds an idempotency key is remembered: the history age, and at
        least a minute (docs/protocol.md promises both).
        """
        return max(self.history_age, 60.0)

    def may_publish(self, channel: str) -> bool:
        return any(fnmatch.fnmatchcase(channel, pattern) for pattern in self.client_publish)

    def presence_events(self, channel: str) -> bool:
        return not any(fnmatch.fnmatchcase(channel, pattern) for pattern in self.quiet_presence)


@dataclass(slots=True)
class _Entry:
    """
    One message in history: only its "message" frame, serialised once for
    every subscriber; the data is the JSON text from C{data_start} to the
    frame's closing brace (the history API copies it from there, so a long
    history is never parsed or serialised again).
    """

    seq: int
    time: float
    frame: str
    data_start: int
    size: int  # the frame's UTF-8 bytes

    def data_json(self) -> str:
        return self.frame[self.data_start : -1]


@dataclass
class Subscriber:
    connection: IConnection
    connection_id: str
    name: Optional[str]
    # The UTF-8 size of client() as JSON, for the bounded presence list.
    presence_bytes: int = 0
    # While an engine recovers its missed messages (the Redis engine reads
    # them from Redis): the (seq, frame) of live messages that wait behind
    # them.  None: live.
    pending: Optional[list[tuple[int, str]]] = None

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
    # Whether the back end has published here (see ChannelSettings
    # max_channels and max_client_channels).
    backend: bool = False
    # Whether an expiry of this channel's history is scheduled.
    expiry_scheduled: bool = False

    def position(self) -> Position:
        return Position(self.epoch, self.seq)


@dataclass(frozen=True)
class Subscribed:
    """
    The answer to a subscribe: where the channel is, whether the gap since
    the client's position was covered, and the missed frames to send first.
    C{presence} is as much of the member list as fits one frame;
    C{presence_total} is how many members there are.
    """

    position: Position
    recovered: bool
    missed: tuple[str, ...]
    presence: tuple[dict[str, Any], ...]
    presence_total: int = 0

    @property
    def presence_complete(self) -> bool:
        return len(self.presence) == self.presence_total


# What an engine's operations answer: the value now (the memory engine), or
# a Deferred of it (an engine that asks Redis).  Callers take both through
# when_done.
T = TypeVar("T")
MaybeDeferred = Union[T, "defer.Deferred[T]"]


def when_done(result: Any, then: Callable[[Any], Any]) -> Any:
    """
    C{then(result)} now, or when C{result} (a Deferred, from an engine
    that answers later) fires: returns what C{then} returns, or that
    Deferred.  The memory engine answers at once; callers written this way
    take an engine that answers later unchanged.
    """
    if isinstance(result, defer.Deferred):
        return result.addCallback(then)
    return then(result)


def message_head(channel: str, epoch: str, seq: int) -> str:
    """
    A "message" frame up to its data: built by hand around the data's JSON
    (which ends it with a "}"), so the data is serialised once.
    """
    return '{"op":"message","channel":' + json.dumps(channel) + ',"epoch":' + json.dumps(epoch) + ',"seq":' + str(seq) + ',"data":'


def encode(frame: dict[str, Any]) -> str:
    return json.dumps(frame, separators=(",", ":"), ensure_ascii=False)


class Broker:
    """
    All channels of one wsheart process.

    @ivar history_bytes: the UTF-8 size of every message frame held in
        history (what history costs in memory, near enough).
    @ivar presence_visible: whether a member's connection may see a
        channel's join and leave events (with C{--auth jwt}: its token's
        presence grant, asked at each event, so a refresh that drops it
        takes effect at once); None: every member sees them.  Both engines
        tell members through L{_tell_members}, which asks it.
    """

    def __init__(self, clock: IReactorTime, settings: ChannelSettings = ChannelSettings()) -> None:
        self.clock = clock
        self.settings = settings
        self._channels: dict[str, Channel] = {}
        self._backend_channels = 0
        # connection id -> names of the channels it is subscribed to
        self._subscriptions: dict[str, set[str]] = {}
        # (channel, key) -> (position, time), oldest first: a publish retried
        # with the same Idempotency-Key is answered, not repeated.
        self._idempotency: OrderedDict[tuple[str, str], tuple[Position, float]] = OrderedDict()
        # (time of a channel's oldest history entry, tie-breaker, channel):
        # expiry visits only channels with something to expire.
        self._expiries: list[tuple[float, int, Channel]] = []
        self._tie = itertools.count()
        self.published_total = 0
        self.delivered_total = 0
        self.history_bytes = 0
        self._last_sweep = float("-inf")
        self.presence_visible: Optional[Callable[[IConnection, str], bool]] = None

    # -- publishing -----------------------------------------------------------

    def publish(
        self, channel_name: str, data: Any, idempotency_key: Optional[str] = None, by_client: bool = False
    ) -> "MaybeDeferred[Position]":
        """
        Append C{data} to a channel and send it to every subscriber.
        C{by_client}: a wsheart.v1 client publishes (it may create a channel
        only within C{max_client_channels}); otherwise the back end.
        Raises L{ChannelError} (nothing published) for a bad name, data too
        large or not JSON, or too many channels or idempotency keys.
        """
        check_channel_name(channel_name)
        now = self.clock.seconds()
        self._expire_keys(now)
        if idempotency_key is not None:
            utf8_length(idempotency_key)
            done = self._idempotency.get((channel_name, idempotency_key))
            if done is not None:
                return done[0]
            if len(self._idempotency) >= self.settings.max_idempotency_keys:
                raise ChannelError(
                    429,
                    f"more than {self.settings.max_idempotency_keys} idempotency keys in the last "
                    f"{self.settings.key_lifetime:g} s: retry later",
                )
        # Checked before the channel exists: a refused publish leaves nothing.
        data_json, data_size = self.encode_data(data)
        channel = self._channel(channel_name, create=True, by_client=by_client)
        assert channel is not None
        seq = channel.seq + 1
        head = message_head(channel_name, channel.epoch, seq)
        frame = head + data_json + "}"
        channel.seq = seq
        self.published_total += 1
        if self.settings.history_size:
            # The head is ASCII (a channel name, a hex epoch, digits).
            self._append_history(channel, _Entry(seq, now, frame, len(head), len(head) + data_size + 1))
        self._expire_history(channel, now)
        self.delivered_total += send_to_all([s.connection for s in channel.subscribers.values()], frame)
        position = channel.position()
        self._maybe_forget(channel)  # nothing to keep (history off)
        if idempotency_key is not None:
            self._idempotency[(channel_name, idempotency_key)] = (position, now)
        return position

    def encode_data(self, data: Any) -> tuple[str, int]:
        """
        Message data as JSON text, and its UTF-8 size; L{ChannelError} when
        it is not JSON, cannot be sent (a lone surrogate) or is too large.
        """
        try:
            data_json = json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError, RecursionError) as e:
            raise ChannelError(400, f"message data is not JSON: {e}") from None
        data_size = utf8_length(data_json)
        if data_size + FRAME_ENVELOPE > self.settings.max_data_bytes:
            raise ChannelError(413, self._too_large())
        return data_json, data_size

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
        presence_budget: Optional[int] = None,
    ) -> "MaybeDeferred[Subscribed]":
        """
        Subscribe a connection: see L{subscribe_here}.  This engine answers
        at once; one that answers later (Redis) returns a Deferred.
        """
        return self.subscribe_here(connection_id, connection, channel_name, since, name, presence_budget)

    def subscribe_here(
        self,
        connection_id: str,
        connection: IConnection,
        channel_name: str,
        since: Optional[Position] = None,
        name: Optional[str] = None,
        presence_budget: Optional[int] = None,
    ) -> Subscribed:
        """
        Subscribe a connection in this process (again, if it already is: a
        resubscribe recovers from C{since} like a first one).  The caller sends the
        C{subscribed} frame and then C{missed}, before anything else; the
        presence list in the answer takes at most C{presence_budget} bytes
        as JSON (default: what L{SUBSCRIBED_ENVELOPE} leaves of the limit).
        """
        check_channel_name(channel_name)
        if name is not None and (not isinstance(name, str) or len(name) > MAX_CLIENT_NAME):
            raise ChannelError(400, f"name must be a string of at most {MAX_CLIENT_NAME} characters")
        if name is not None:
            utf8_length(name)
        mine = self._subscriptions.get(connection_id, set())
        if channel_name not in mine and len(mine) >= self.settings.max_subscriptions:
            raise ChannelError(429, f"at most {self.settings.max_subscriptions} subscriptions per connection")
        channel = self._channel(channel_name, create=True, by_client=True)
        assert channel is not None
        self._expire_history(channel, self.clock.seconds())
        recovered, missed = self._recover(channel, since)
        subscriber = Subscriber(connection, connection_id, name)
        subscriber.presence_bytes = len(encode(subscriber.client()).encode("utf-8")) + 1
        joined = connection_id not in channel.subscribers
        channel.subscribers[connection_id] = subscriber
        self._subscriptions[connection_id] = mine
        mine.add(channel_name)
        presence: tuple[dict[str, Any], ...] = ()
        # Presence costs O(subscribers) per subscribe (the list, and a join
        # frame to each): quiet channels skip both.
        if self.settings.presence_events(channel_name):
            if presence_budget is None:
                presence_budget = self.settings.max_data_bytes - SUBSCRIBED_ENVELOPE
            presence = self._presence_that_fits(channel, presence_budget)
            if joined:
                self._announce(channel, "join", subscriber)
        return Subscribed(channel.position(), recovered, missed, presence, len(channel.subscribers))

    def _presence_that_fits(self, channel: Channel, budget: int) -> tuple[dict[str, Any], ...]:
        """
        As many members as fit C{budget} bytes of JSON: a channel with more
        members than one "subscribed" frame can list must stay joinable
        (the rest are named by join events, or through the API).
        """
        members = []
        for subscriber in channel.subscribers.values():
            budget -= subscriber.presence_bytes
            if budget < 0:
                break
            members.append(subscriber.client())
        return tuple(members)

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
        self._tell_members(channel, op, who.client())

    def _tell_members(self, channel: Channel, op: str, client: dict[str, Any]) -> None:
        """
        Send a join or leave of C{client} to this process's other members
        (those L{presence_visible} allows).
        """
        frame = encode({"op": op, "channel": channel.name, "client": client})
        visible = self.presence_visible
        for subscriber in list(channel.subscribers.values()):
            if subscriber.connection_id == client.get("id"):
                continue
            if visible is None or visible(subscriber.connection, channel.name):
                # One member's failing connection must not stop the others'
                # announcements, nor the join or leave that caused them.
                try:
                    subscriber.connection.send_text(frame)
                except Exception:
                    log.failure(
                        "presence {op} on {channel} could not be sent to {cid}",
                        op=op,
                        channel=channel.name,
                        cid=subscriber.connection_id,
                    )

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

    def presence(self, channel_name: str) -> "MaybeDeferred[list[dict[str, Any]]]":
        channel = self._channel(channel_name, create=False)
        return [] if channel is None else [s.client() for s in channel.subscribers.values()]

    def history_json(self, channel_name: str, since_seq: int = 0) -> "MaybeDeferred[str]":
        """
        The messages after C{since_seq} still in history, and whether they
        are all of them (C{complete}), as a JSON document:
        C{{"channel", "epoch", "seq", "complete", "messages": [{"seq", "data"}]}}.
        Each message's data is copied from its stored frame, never parsed
        or serialised again: a long history costs a join, not a re-encoding.
        """
        channel = self._channel(channel_name, create=False)
        if channel is None:
            head = {"channel": channel_name, "epoch": None, "seq": 0, "complete": since_seq == 0}
            messages = ""
        else:
            self._expire_history(channel, self.clock.seconds())
            oldest = channel.history[0].seq if channel.history else channel.seq + 1
            head = {
                "channel": channel.name,
                "epoch": channel.epoch,
                "seq": channel.seq,
                "complete": oldest <= since_seq + 1 and since_seq <= channel.seq,
            }
            messages = ",".join(
                '{"seq":' + str(e.seq) + ',"data":' + e.data_json() + "}" for e in channel.history if e.seq > since_seq
            )
        return encode(head)[:-1] + ',"messages":[' + messages + "]}"

    def subscriptions(self, connection_id: str) -> Iterable[str]:
        return sorted(self._subscriptions.get(connection_id, ()))

    # -- housekeeping ---------------------------------------------------------

    # Gaps in delivery that could not be filled and were told to the
    # subscribers (never in memory: every message is delivered at once).
    gaps_told_total = 0

    def engine_state(self) -> dict[str, Any]:
        """
        What /healthz says of the engine that holds the channels.
        """
        return {"engine": "memory"}

    def engine_up(self) -> bool:
        """
        Whether the engine can answer now (memory: always).
        """
        return True

    def expire(self) -> None:
        """
        Drop every history entry older than the history age, and every
        idempotency key past its lifetime, and forget channels left with
        nothing: memory is freed on time, not when a channel is next
        touched.  L{Housekeeping} calls this every second.
        """
        now = self.clock.seconds()
        self._expire_keys(now)
        horizon = now - self.settings.history_age
        expiries = self._expiries
        while expiries and expiries[0][0] < horizon:
            _, _, channel = heapq.heappop(expiries)
            channel.expiry_scheduled = False
            if self._channels.get(channel.name) is not channel:
                continue  # forgotten since; a new life has its own entry
            self._expire_history(channel, now)
            self._maybe_forget(channel)

    def _append_history(self, channel: Channel, entry: _Entry) -> None:
        history = channel.history
        history.append(entry)
        self.history_bytes += entry.size
        while len(history) > self.settings.history_size:
            self.history_bytes -= history.popleft().size
        self._schedule_expiry(channel)

    def _schedule_expiry(self, channel: Channel) -> None:
        # At most one entry per channel: the time of its oldest message.
        if channel.history and not channel.expiry_scheduled:
            channel.expiry_scheduled = True
            heapq.heappush(self._expiries, (channel.history[0].time, next(self._tie), channel))

    def _channel(self, name: str, create: bool, by_client: bool = True) -> Optional[Channel]:
        channel = self._channels.get(name)
        if channel is not None and (by_client or channel.backend or not create):
            return channel
        if not create:
            return None
        self._check_room(by_client)
        channel = self._channels.get(name)  # the sweep in _check_room may have forgotten it
        if channel is not None:
            # The back end takes over a channel clients made.
            channel.backend = True
            self._backend_channels += 1
            return channel
        # A new epoch for every new life of a channel: whoever kept a
        # position from an earlier one learns its history is gone.
        channel = Channel(name, secrets.token_hex(6), backend=not by_client)
        self._channels[name] = channel
        if channel.backend:
            self._backend_channels += 1
        return channel

    def _check_room(self, by_client: bool) -> None:
        if by_client:
            # Set by ChannelSettings (max_channels when not given).
            limit, what = self.settings.max_client_channels or self.settings.max_channels, "channels made by clients"
        else:
            limit, what = self.settings.max_channels, "channels"
        if self._count(by_client) < limit:
            return
        # A sweep costs O(channels): at most one a second, so a client
        # asking for new names cannot make every ask pay it.
        now = self.clock.seconds()
        if now - self._last_sweep >= 1.0:
            self._last_sweep = now
            for channel in list(self._channels.values()):
                self._maybe_forget(channel)
        if self._count(by_client) >= limit:
            raise ChannelError(429, f"at most {limit} {what}")

    def _count(self, by_client: bool) -> int:
        return len(self._channels) - self._backend_channels if by_client else self._backend_channels

    def _expire_history(self, channel: Channel, now: float) -> None:
        horizon = now - self.settings.history_age
        history = channel.history
        while history and history[0].time < horizon:
            self.history_bytes -= history.popleft().size
        self._schedule_expiry(channel)

    def _maybe_forget(self, channel: Channel) -> None:
        self._expire_history(channel, self.clock.seconds())
        if not channel.subscribers and not channel.history and self._channels.get(channel.name) is channel:
            del self._channels[channel.name]
            if channel.backend:
                self._backend_channels -= 1

    def _expire_keys(self, now: float) -> None:
        # Keys are kept in the order they were made: the expired ones are
        # at the front.
        horizon = now - self.settings.key_lifetime
        keys = self._idempotency
        while keys:
            key, (_, time) = next(iter(keys.items()))
            if time >= horizon:
                break
            del keys[key]


class Housekeeping(Service):
    """
    Runs L{Broker.expire} every C{interval} seconds while the daemon runs.
    """

    def __init__(self, broker: Broker, interval: float = 1.0) -> None:
        self.broker = broker
        self.interval = interval
        self._loop: Optional[LoopingCall] = None

    def _tick(self) -> None:
        # One failure must not stop expiry for good (STYLE.md 8).
        try:
            self.broker.expire()
        except Exception:
            log.failure("channel housekeeping failed")

    def startService(self) -> None:
        super().startService()
        self._loop = LoopingCall(self._tick)
        self._loop.clock = self.broker.clock
        self._loop.start(self.interval, now=False)

    def stopService(self) -> Any:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        return super().stopService()
