"""
The Redis engine's broker: channels shared by every wsheart process that
uses the same Redis.  Seq, epoch, history and idempotency keys live in Redis
(L{wsheart.channels.redis.store}); each process listens on the pub/sub
channel of every channel its own clients subscribe to, and delivers to them
with the same frame-once fan-out as the memory engine.

Per channel the process keeps the last seq it delivered: a message with the
next seq is delivered, an old one dropped, and a jump (a message lost on
pub/sub, a reconnect) is repaired from history first, so local subscribers
get every message once, in order, wherever it was published.  After a
pub/sub reconnect every local channel is listened to again and caught up.

A subscribe or publish while Redis is unreachable or slower than the
store's timeout fails at once with 503 (an error frame with
C{retry_after}, or the HTTP status); open connections and heartbeats are not
touched, and subscriptions catch up when Redis is back.

Presence is shared too (L{RedisPresence}): a join or leave is recorded in
Redis and announced to every process once; the members of a process that
dies are announced gone by the others within the heartbeat bound.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Optional

import txredisapi
from twisted.internet import defer, error
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from wsheart.channels.broker import (
    Broker,
    Channel,
    ChannelError,
    ChannelSettings,
    Position,
    SUBSCRIBED_ENVELOPE,
    Subscribed,
    Subscriber,
    check_channel_name,
    encode,
    message_head,
    utf8_length,
)
from wsheart.channels.redis.presence import RedisPresence
from wsheart.channels.redis.store import HistoryRead, Published, RedisStore
from wsheart.frames import send_to_all
from wsheart.hub import IConnection

log = Logger()

# What an unreachable or slow Redis is answered with; clients retry after.
UNAVAILABLE = 503
RETRY_AFTER_SECONDS = 2
# How soon a process tries again to listen to a channel after a reconnect
# whose catch-up failed.
RELISTEN_SECONDS = 1.0
# Channels without a local subscriber whose last position a process keeps
# (about 150 B each), to find a Redis that lost acknowledged messages.
MAX_FLOORS = 65536


class EngineUnavailable(ChannelError):
    """
    Redis could not be reached in time: nothing was done; try again.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(UNAVAILABLE, f"channels unavailable: {reason}", retry_after=RETRY_AFTER_SECONDS)


@dataclass
class _Listening:
    """
    This process's view of one channel it listens to.

    @ivar ready: whether the SUBSCRIBE is confirmed and the position known;
        until then announced messages wait in C{early}.
    @ivar repairing: a history read filling a gap is under way; messages
        wait in C{early} meanwhile.
    """

    ready: bool = False
    repairing: bool = False
    early: list[tuple[str, int, str]] = field(default_factory=list)
    # Subscribes waiting for the SUBSCRIBE and the position (None: not
    # started yet).
    waiters: Optional[list["defer.Deferred[None]"]] = None
    # Listening again after a pub/sub reconnect: catch up from the last
    # seq delivered instead of starting at Redis's present.
    resume: bool = False


class RedisBroker(Broker):
    """
    A L{Broker} whose shared state is in Redis.  Its C{publish},
    C{subscribe} and C{history_json} answer with Deferreds.
    """

    def __init__(
        self, clock: IReactorTime, settings: ChannelSettings, store: RedisStore, presence: Optional[RedisPresence] = None
    ) -> None:
        super().__init__(clock, settings)
        self.store = store
        # None: members are this process's own (tests of delivery alone).
        self.shared_presence = presence
        self.pubsub: Optional[Any] = None
        self._listening: dict[str, _Listening] = {}
        # Publishes waiting until this process has delivered their seq.
        self._acks: dict[str, list[tuple[Position, "defer.Deferred[Position]"]]] = {}
        # Gaps that could not be filled, each told to the channel's subscribers.
        self.gaps_told_total = 0
        # The highest position this process has seen on channels it no
        # longer (or never) listens to: its publishes' acknowledgements and
        # what it delivered before its last subscriber left.  With the live
        # channels' positions, these are the floors Redis's scripts check
        # (L{RedisStore.publish}): a Redis behind one lost messages that
        # were acknowledged, and the channel starts a new epoch.
        self._floors: OrderedDict[str, Position] = OrderedDict()
        # Channels found behind their floor (a new epoch each).
        self.rollbacks_total = 0

    # -- pub/sub connection ------------------------------------------------------

    def pubsub_connected(self, protocol: Any) -> None:
        """
        A (new) pub/sub connection: listen to every local channel again and
        catch each up from history - what was published meanwhile.
        """
        self.pubsub = protocol
        # Every channel with local subscribers, not only those still being
        # listened to: a catch-up that failed while pub/sub was away again
        # has dropped its channel from _listening, and only this brings it
        # back (after Redis refused reconnects at maxclients, no channel
        # was listened to again and every message was lost silently).
        for name in list(self._channels):
            self._relisten(name, replace=True)

    def _relisten(self, name: str, replace: bool = False) -> None:
        """
        Listen to C{name} again and catch it up; while Redis cannot answer
        yet (its command connection may come back after pub/sub does), try
        again every second for as long as local subscribers want it.
        """
        if name not in self._channels or self.pubsub is None:
            return
        if not replace and name in self._listening:
            return  # a subscribe has started listening again meanwhile
        self._listening[name] = _Listening(resume=True)

        def again(failure: Any) -> None:
            log.info("channel {channel}: catching up failed ({why}); trying again", channel=name, why=failure.getErrorMessage())
            self.clock.callLater(RELISTEN_SECONDS, self._relisten, name)

        self._listen(name).addErrback(again)

    def pubsub_lost(self, protocol: Any) -> None:
        if self.pubsub is protocol:
            self.pubsub = None

    # -- floors: positions Redis must not be behind ------------------------------

    def floor(self, name: str) -> Optional[Position]:
        """
        The highest position of C{name} this process has seen, if any.
        """
        channel = self._channels.get(name)
        if channel is not None and channel.seq > 0:
            # What this process delivered: known from its first listen on,
            # also while it listens again after a reconnect (the moment a
            # rolled-back Redis is met first).
            return channel.position()
        return self._floors.get(name)

    def _raise_floor(self, name: str, position: Position) -> None:
        known = self._floors.get(name)
        if known is None or known.epoch != position.epoch or known.seq < position.seq:
            self._floors[name] = position
        self._floors.move_to_end(name)
        if len(self._floors) > MAX_FLOORS:
            self._floors.popitem(last=False)

    def _rolled_back(self, name: str, floor: Optional[Position], epoch: str) -> None:
        self.rollbacks_total += 1
        self._floors.pop(name, None)
        log.error(
            "channel {channel}: Redis lost acknowledged messages (it is behind {floor_epoch}/{floor_seq}: "
            "restored from an older snapshot, or a lagging replica took over); the channel goes on in "
            "a new epoch {epoch} and its subscribers are told",
            channel=name,
            floor_epoch=floor.epoch if floor else None,
            floor_seq=floor.seq if floor else None,
            epoch=epoch,
        )

    def announced(self, channel_key: Any, message: Any) -> None:
        """
        A message from pub/sub: C{"m" EPOCH ":" SEQ ":" DATA}, or a join
        or leave: C{"j"} or C{"l"} and the client's JSON.
        """
        text = message.decode("utf-8") if isinstance(message, bytes) else str(message)
        key = channel_key.decode("utf-8") if isinstance(channel_key, bytes) else str(channel_key)
        prefix = f"{self.store.prefix}:{{"
        if not (text[:1] in ("m", "j", "l") and key.startswith(prefix) and key.endswith("}")):
            return
        name = key[len(prefix) : -1]
        if text[0] in "jl":
            self._presence_announced(name, "join" if text[0] == "j" else "leave", text[1:])
            return
        epoch, _, rest = text[1:].partition(":")
        seq_text, _, data_json = rest.partition(":")
        if not seq_text.isdigit():
            return
        self._arrived(name, epoch, int(seq_text), data_json)

    # -- presence ---------------------------------------------------------------

    def _announce(self, channel: Channel, op: str, who: Subscriber) -> None:
        # Shared presence: Redis records it and tells every process (this
        # one included), which then tells its own subscribers.
        presence = self.shared_presence
        if presence is None:
            super()._announce(channel, op, who)
            return
        if op == "join":
            d = presence.join(channel.name, who.connection_id, encode(who.client()))
        else:
            # The leaver is out of channel.subscribers already.
            d = presence.leave(channel.name, who.connection_id, last=not channel.subscribers)
        d.addErrback(self._log_failure, f"presence {op} on {{channel}}", channel.name)

    def rejoin(self) -> int:
        """
        Register every local member in Redis again: Redis lost them (it
        came back empty) or another process swept them (this one was
        paused past the bound).  Members Redis still has are not announced
        again.  Returns how many were sent.
        """
        presence = self.shared_presence
        if presence is None:
            return 0
        sent = 0
        for channel in list(self._channels.values()):
            if not self.settings.presence_events(channel.name):
                continue
            for who in list(channel.subscribers.values()):
                presence.join(channel.name, who.connection_id, encode(who.client())).addErrback(
                    self._log_failure, "presence join again on {channel}", channel.name
                )
                sent += 1
        if sent:
            log.info("presence: registered {count} local members again", count=sent)
        return sent

    def reconcile(self) -> "defer.Deferred[Any]":
        """
        After the command connection was away: leaves that could not be
        sent meanwhile are done now (this process's members in Redis become
        its local ones), then every local member is registered again (only
        the ones Redis lacks are announced).
        """
        presence = self.shared_presence
        if presence is None:
            return defer.succeed(None)
        local = [
            (channel.name, who.connection_id)
            for channel in self._channels.values()
            if self.settings.presence_events(channel.name)
            for who in channel.subscribers.values()
        ]

        def done(left: int) -> None:
            if left:
                log.info("presence: {count} leaves made while Redis was away announced now", count=left)
            self.rejoin()

        return presence.reconcile(local).addCallback(done)

    def local_channels(self) -> list[str]:
        """
        The channels this process has subscribers in.
        """
        return list(self._channels)

    def _presence_announced(self, name: str, op: str, client_json: str) -> None:
        channel = self._channels.get(name)
        if channel is None or not self.settings.presence_events(name):
            return
        try:
            client = json.loads(client_json)
        except ValueError:
            return
        if isinstance(client, dict):
            self._tell_members(channel, op, client)

    def presence(self, channel_name: str) -> Any:
        if self.shared_presence is None:
            return super().presence(channel_name)
        d = self.shared_presence.members(channel_name)
        return d.addCallbacks(lambda members: [json.loads(m) for m in members], _unavailable)

    def _members_that_fit(self, channel: Channel, members: list[str], me: Subscriber, budget: int) -> tuple[tuple[dict[str, Any], ...], int]:
        """
        The shared member list for a "subscribed" frame, this subscriber
        included, cut to C{budget} bytes; and how many members there are.
        """
        mine = encode(me.client())
        if mine not in members:
            members = [*members, mine]  # its own join may still be on its way
        listed = []
        for member in members:
            budget -= len(member.encode("utf-8")) + 1
            if budget < 0:
                break
            listed.append(json.loads(member))
        return tuple(listed), len(members)

    # -- delivery ---------------------------------------------------------------

    def _arrived(self, name: str, epoch: str, seq: int, data_json: str) -> None:
        listening = self._listening.get(name)
        channel = self._channels.get(name)
        if listening is None or channel is None:
            return
        if not listening.ready or listening.repairing:
            listening.early.append((epoch, seq, data_json))
            return
        if epoch != channel.epoch:
            # The channel's history was lost (Redis restarted or evicted
            # it): a new epoch, from its first message on (what came before
            # this one is repaired from history below).
            self._restart(channel, epoch, 0, "new epoch")
        if seq <= channel.seq:
            return  # delivered already
        if seq > channel.seq + 1:
            listening.repairing = True
            listening.early.append((epoch, seq, data_json))
            self._repair(name, listening, channel)
            return
        self._deliver(channel, seq, data_json)

    def _deliver(self, channel: Channel, seq: int, data_json: str) -> None:
        channel.seq = seq
        frame = message_head(channel.name, channel.epoch, seq) + data_json + "}"
        ready = []
        for subscriber in channel.subscribers.values():
            pending = subscriber.pending
            if pending is not None:
                pending.append((seq, frame))  # still recovering: after its missed ones
            else:
                ready.append(subscriber.connection)
        self.delivered_total += send_to_all(ready, frame)
        acks = self._acks.get(channel.name)
        if acks:
            # Publishes of this process up to here may be acknowledged now:
            # their publisher, if subscribed, has its message.
            due = [(acked, d) for acked, d in acks if acked.seq <= seq]
            self._acks[channel.name] = [(acked, d) for acked, d in acks if acked.seq > seq]
            for acked, d in due:
                if not d.called:  # a timed-out one has answered already
                    d.callback(acked)

    def _restart(self, channel: Channel, epoch: str, seq: int, reason: str) -> None:
        """
        The gap before the next message cannot be filled (a new epoch, or
        history trimmed past it): move the channel to C{epoch}/C{seq} and
        tell every live local subscriber with an unsolicited "subscribed"
        frame, C{recovered: false}, before the messages that follow - what
        a resubscribe would answer, without a herd of subscribes reading
        Redis at once.  Subscribers still recovering learn it from their
        own "subscribed" answer, which reads the new position.
        """
        log.warn(
            "channel {channel}: cannot deliver {old_epoch}/{old_seq}+ ({reason}); subscribers go on from {epoch}/{seq}",
            channel=channel.name,
            old_epoch=channel.epoch,
            old_seq=channel.seq + 1,
            reason=reason,
            epoch=epoch,
            seq=seq,
        )
        channel.epoch, channel.seq = epoch, seq
        notice = encode(
            {"op": "subscribed", "channel": channel.name, "epoch": epoch, "seq": seq, "recovered": False, "reason": reason}
        )
        ready = [s.connection for s in channel.subscribers.values() if s.pending is None]
        send_to_all(ready, notice)
        self.gaps_told_total += 1

    def _repair(self, name: str, listening: _Listening, channel: Channel) -> None:
        """
        Fill a gap from history, then go on with what waited meanwhile.
        """

        def filled(read: HistoryRead) -> None:
            if read.rolled_back:
                self._rolled_back(name, floor, read.epoch or "")
                self._restart(channel, read.epoch or "", 0, "Redis lost messages")
            if read.epoch == channel.epoch:
                entries = [(seq, data_json) for seq, data_json in read.entries if seq > channel.seq]
                if entries and entries[0][0] > channel.seq + 1:
                    # History lost the start of the gap: say so, then give
                    # what it still holds rather than skip that too.
                    self._restart(channel, channel.epoch, entries[0][0] - 1, "history lost")
                for seq, data_json in entries:
                    if seq == channel.seq + 1:
                        self._deliver(channel, seq, data_json)
            waiting = [seq for epoch, seq, _ in listening.early if epoch == channel.epoch]
            if waiting and min(waiting) > channel.seq + 1:
                # History no longer holds the gap: go on after it, and say
                # so, rather than ask again.
                self._restart(channel, channel.epoch, min(waiting) - 1, "history lost")
            listening.repairing = False
            self._drain_early(name, listening)

        def failed(failure: Any) -> None:
            listening.repairing = False
            log.failure("repairing a gap on {channel}", failure, channel=name)
            self._drain_early(name, listening)

        floor = channel.position()
        self.store.read(name, channel.seq, floor=floor).addCallbacks(filled, failed)

    def _drain_early(self, name: str, listening: _Listening) -> None:
        early, listening.early = listening.early, []
        for epoch, seq, data_json in sorted(early, key=lambda m: m[1]):
            self._arrived(name, epoch, seq, data_json)

    # -- subscribing ------------------------------------------------------------

    def subscribe(
        self,
        connection_id: str,
        connection: IConnection,
        channel_name: str,
        since: Optional[Position] = None,
        name: Optional[str] = None,
        presence_budget: Optional[int] = None,
    ) -> "defer.Deferred[Subscribed]":
        """
        Subscribe through this process: listen to the channel (once per
        process), read its position and the history after C{since} in
        Redis, then send the missed messages and go live - messages that
        arrive meanwhile wait for this subscriber behind its missed ones.
        """
        try:
            result = self.subscribe_here(connection_id, connection, channel_name, None, name, presence_budget)
        except ChannelError as e:
            return defer.fail(e)
        channel = self._channels[channel_name]
        subscriber = channel.subscribers[connection_id]
        # Messages delivered while it recovers wait for it, after its missed ones.
        subscriber.pending = []

        def catch_up(_: None) -> Any:
            if since is not None and since.epoch == channel.epoch and since.seq > channel.seq:
                # The subscriber comes from a process that was ahead of this
                # one (pub/sub reaches processes milliseconds apart): wait
                # until this one has delivered its position too, or the
                # store's timeout - answering now would be "not recovered"
                # and the messages it has already would come again.
                return self._after_delivery(channel_name, since, self.store.clock.seconds())
            return None

        def read_history(_: Any) -> Any:
            if since is None or since.epoch != channel.epoch or since.seq >= channel.seq:
                return None  # nothing to recover: live from the present
            return self.store.read(channel_name, since.seq, floor=self.floor(channel_name))

        def answer(read: Optional[HistoryRead]) -> Any:
            def finish(members: Optional[list[str]]) -> Subscribed:
                # Live messages wait behind the missed ones until this very
                # moment, whatever the subscribe waited for (history, then
                # the shared member list): the reply and the missed frames
                # are written in the same turn, so nothing can overtake them.
                pending, subscriber.pending = subscriber.pending or [], None
                recovered, missed = self._recovered(channel, since, read, pending)
                if members is None:
                    return Subscribed(channel.position(), recovered, missed, result.presence, result.presence_total)
                budget = presence_budget if presence_budget is not None else self.settings.max_data_bytes - SUBSCRIBED_ENVELOPE
                listed, total = self._members_that_fit(channel, members, subscriber, budget)
                return Subscribed(channel.position(), recovered, missed, listed, total)

            if self.shared_presence is None or not self.settings.presence_events(channel_name):
                return finish(None)
            return self.shared_presence.members(channel_name).addCallback(finish)

        def failed(failure: Any) -> Any:
            if channel.subscribers.get(connection_id) is subscriber:
                self.unsubscribe(connection_id, channel_name)
            return _unavailable(failure)

        # failed() also takes what answer() waits for (the shared member
        # list): a stall there is a 503 too, never an error that closes the
        # connection.
        listened = self._listen(channel_name).addCallback(catch_up)
        return listened.addCallback(read_history).addCallback(answer).addErrback(failed)

    def _recovered(
        self, channel: Channel, since: Optional[Position], read: Optional[HistoryRead], pending: list[tuple[int, str]]
    ) -> tuple[bool, tuple[str, ...]]:
        """
        Whether the messages after C{since} up to what this process has
        delivered are all at hand - from history, or delivered while the
        subscriber recovered - and those frames in order.
        """
        if since is None or since.epoch != channel.epoch or since.seq > channel.seq:
            return False, ()
        frames = {seq: frame for seq, frame in pending if since.seq < seq <= channel.seq}
        if read is not None and read.epoch == channel.epoch:
            for seq, data in read.entries:
                if since.seq < seq <= channel.seq and seq not in frames:
                    frames[seq] = message_head(channel.name, channel.epoch, seq) + data + "}"
        wanted = range(since.seq + 1, channel.seq + 1)
        if any(seq not in frames for seq in wanted):
            return False, ()  # older than the history, or aged out
        return True, tuple(frames[seq] for seq in wanted)

    def _listen(self, name: str) -> "defer.Deferred[None]":
        """
        Make sure this process listens to C{name} and knows its position
        (once per channel: later subscribes wait for the first).
        """
        listening = self._listening.setdefault(name, _Listening())
        if listening.ready:
            return defer.succeed(None)
        waiter: defer.Deferred[None] = defer.Deferred()
        if listening.waiters is not None:
            listening.waiters.append(waiter)
            return waiter
        if self.pubsub is None:
            del self._listening[name]
            return defer.fail(EngineUnavailable("Redis not reachable"))
        listening.waiters = [waiter]

        def position(read: HistoryRead) -> None:
            channel = self._channels.get(name)
            listening.ready = True
            if read.rolled_back:
                self._rolled_back(name, floor, read.epoch or "")
            if channel is not None:
                if not listening.resume:
                    # First listen: the subscribers start at the present.
                    channel.epoch = read.epoch or channel.epoch
                    channel.seq = read.seq
                else:
                    if read.epoch is not None and read.epoch != channel.epoch:
                        # Redis lost the channel (restarted empty, evicted,
                        # rolled back): a new epoch, delivered from its
                        # first message on.
                        self._restart(channel, read.epoch, 0, "Redis lost messages" if read.rolled_back else "new epoch")
                    if read.seq > channel.seq:
                        # Published while pub/sub was away: from history.
                        listening.repairing = True
                        self._repair(name, listening, channel)
            waiters, listening.waiters = listening.waiters or [], None
            self._drain_early(name, listening)
            for waiting in waiters:
                waiting.callback(None)

        def failed(failure: Any) -> None:
            if self._listening.get(name) is listening:
                del self._listening[name]
            waiters, listening.waiters = listening.waiters or [], None
            for waiting in waiters:
                waiting.errback(failure)

        floor = self.floor(name)
        d = _bounded(self.pubsub.subscribe(self.store.key(name)), self.store)
        d.addCallback(lambda _: self.store.read(name, start_epoch=True, entries=False, floor=floor))
        d.addCallbacks(position, failed)
        return waiter

    def _maybe_forget(self, channel: Channel) -> None:
        # History lives in Redis: a channel with no local subscriber is
        # forgotten here at once, and this process stops listening to it.
        if not channel.subscribers and self._channels.get(channel.name) is channel:
            del self._channels[channel.name]
            listening = self._listening.get(channel.name)
            if listening is not None and listening.ready and channel.seq > 0:
                self._raise_floor(channel.name, channel.position())
            if channel.backend:
                self._backend_channels -= 1
            self._acks.pop(channel.name, None)  # waiting publishes answer on their timeout
            if self._listening.pop(channel.name, None) is not None and self.pubsub is not None:
                self.pubsub.unsubscribe(self.store.key(channel.name)).addErrback(
                    self._log_failure, "unsubscribing {channel}", channel.name
                )

    # -- publishing and reading --------------------------------------------------

    def publish(
        self, channel_name: str, data: Any, idempotency_key: Optional[str] = None, by_client: bool = False
    ) -> "defer.Deferred[Position]":
        """
        Publish through Redis: the seq is Redis's, and every process that
        listens delivers the message (this one included).
        """
        try:
            check_channel_name(channel_name)
            if idempotency_key is not None:
                utf8_length(idempotency_key)
            data_json, _ = self.encode_data(data)
        except ChannelError as e:
            return defer.fail(e)
        self.published_total += 1
        floor = self.floor(channel_name)
        started = self.store.clock.seconds()
        d: defer.Deferred[Any] = self.store.publish(channel_name, data_json, idempotency_key, floor)

        def published(result: Published) -> "defer.Deferred[Position]":
            if result.rolled_back:
                self._rolled_back(channel_name, floor, result.position.epoch)
            if channel_name not in self._channels and not result.duplicate:
                self._raise_floor(channel_name, result.position)
            return self._after_delivery(channel_name, result.position, started)

        d.addCallbacks(published, _unavailable)
        return d

    def _after_delivery(self, name: str, position: Position, started: float) -> "defer.Deferred[Position]":
        """
        C{position}, once this process has delivered it to its own
        subscribers of the channel (so that a subscribed publisher gets its
        message before the acknowledgement, as on the memory engine) - or
        when the store's timeout, counted from C{started} (when the
        publish began), runs out, whichever comes first: a publish answers
        within one timeout in all (it could take two, one for the script
        and one waiting here).
        """
        channel = self._channels.get(name)
        listening = self._listening.get(name)
        if channel is None or listening is None or not channel.subscribers:
            return defer.succeed(position)
        if channel.epoch == position.epoch and channel.seq >= position.seq:
            return defer.succeed(position)
        left = self.store.timeout - (self.store.clock.seconds() - started)
        if left <= 0:
            return defer.succeed(position)
        waiter: defer.Deferred[Position] = defer.Deferred()
        self._acks.setdefault(name, []).append((position, waiter))
        return waiter.addTimeout(left, self.store.clock, onTimeoutCancel=lambda result, timeout: position)

    def history_json(self, channel_name: str, since_seq: int = 0) -> "defer.Deferred[str]":
        floor = self.floor(channel_name)

        def document(read: HistoryRead) -> str:
            if read.rolled_back:
                self._rolled_back(channel_name, floor, read.epoch or "")
            head = {
                "channel": channel_name,
                "epoch": read.epoch,
                "seq": read.seq,
                "complete": read.oldest() <= since_seq + 1 and since_seq <= read.seq,
            }
            messages = ",".join('{"seq":' + str(seq) + ',"data":' + data + "}" for seq, data in read.entries)
            return encode(head)[:-1] + ',"messages":[' + messages + "]}"

        read = self.store.read(channel_name, since_seq, floor=floor)
        return read.addCallbacks(document, lambda f: _unavailable(f))

    def engine_up(self) -> bool:
        return self.pubsub is not None and self.store.connected()

    def engine_state(self) -> dict[str, Any]:
        # "down" while either connection is away (pub/sub delivers, the
        # command one publishes and reads); /healthz stays 200 (a Redis
        # blip must not empty a load balancer of every process).
        pubsub = self.pubsub is not None
        commands = self.store.connected()
        last = self.store.last_success
        return {
            "engine": "redis",
            "redis": "up" if pubsub and commands else "down",
            "redis_pubsub": "up" if pubsub else "down",
            "redis_commands": "up" if commands else "down",
            # A connection can be up while Redis does not answer (frozen,
            # busy): how long since a command last succeeded tells.
            "redis_last_success_seconds_ago": None if last is None else round(self.store.clock.seconds() - last, 3),
            "redis_rollbacks": self.rollbacks_total,
        }

    def expire(self) -> None:
        # Redis bounds history itself (MAXLEN, PEXPIRE); keys expire there.
        pass

    def _log_failure(self, failure: Any, what: str, channel: str) -> None:
        if failure.check(txredisapi.ConnectionError, error.ConnectionLost, error.ConnectionDone):
            # The connection went (Redis gone, or this process stopping)
            # with the command on it: nothing to undo - a lost pub/sub
            # subscription ends with its connection, a lost presence
            # change is redone by the next beat or swept - and no defect.
            log.info("{what} on {channel}: the connection to Redis closed first", what=what.format(channel=channel), channel=channel)
            return
        log.failure(what, failure, channel=channel)


def _bounded(d: "defer.Deferred[Any]", store: RedisStore) -> "defer.Deferred[Any]":
    # The store's timeout and latency metric, for a pub/sub command.
    return store._bounded(d)


# Redis's answers that mean "not now" rather than "wrong request".
_NOT_SERVING = ("READONLY", "LOADING", "MASTERDOWN")


def _unavailable(failure: Any) -> Any:
    """
    A ChannelError stays; a timeout or a lost connection is a 503.
    """
    if failure.check(defer.TimeoutError):
        raise EngineUnavailable("Redis too slow")
    if failure.check(txredisapi.ConnectionError, error.ConnectError, error.ConnectionLost, error.ConnectionDone):
        raise EngineUnavailable("Redis not reachable")
    if failure.check(txredisapi.ResponseError) and str(failure.value).startswith(_NOT_SERVING):
        # A replica (a failover under way: Sentinel closes such clients and
        # they find the new master), or a Redis still loading its data.
        raise EngineUnavailable(f"Redis not serving writes ({str(failure.value).split()[0]})")
    return failure  # a refusal (ChannelError), or a defect: let it show
