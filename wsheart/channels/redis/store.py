"""
Channel state in Redis, shared by every wsheart process: the building block
of the Redis engine.  Through txredisapi, a Twisted-native
client; no RESP of our own.

What one publish does, atomically, in one server-side script
(L{PUBLISH_SCRIPT}): answer a retried C{Idempotency-Key} with its first
position; otherwise take the next seq of the channel (keeping its epoch, or
starting one), append the message to the channel's history stream (bounded
by size; entries carry their time for the age bound), remember the key, and
announce the message on the channel's pub/sub channel so every process can
deliver it.  No two processes can hand out the same seq.

Keys, with C{prefix} (default C{wsh}) and the channel name in a hash tag so
that all keys of one channel share a Redis Cluster slot:

  PREFIX:{CH}:m        hash: e = epoch, s = last seq
  PREFIX:{CH}:h        stream: id SEQ-0, fields d = data JSON, t = time (ms)
  PREFIX:{CH}:i:KEY    hash: e, s of the publish an idempotency key made
  PREFIX:{CH}          pub/sub: "m" EPOCH ":" SEQ ":" DATA

Times come from the injected clock (C{IReactorTime.seconds}), like
everywhere in wsheart, so the processes' clocks must agree (NTP) for the
age bound to hold across them.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any, Callable, Optional

import txredisapi
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from wsheart.channels.broker import ChannelSettings, Position

# KEYS: meta, history, idempotency (or the meta key again when there is no
# idempotency key: Redis Cluster wants every key declared).
# ARGV: data JSON, history size, history age (ms), meta TTL (s), a fresh
# epoch, the pub/sub channel, idempotency TTL (s, "" without a key), now (ms),
# and the floor: the epoch and the highest seq this process has seen
# acknowledged or delivered on the channel ("" and 0 when it knows none).
# Returns {seq, epoch, 1 if it answered a retry, 1 if it found Redis behind
# the floor and started a new epoch}.
PUBLISH_SCRIPT = """
if ARGV[7] ~= '' then
  local done = redis.call('hmget', KEYS[3], 'e', 's')
  if done[1] then return {tonumber(done[2]), done[1], 1, 0} end
end
local meta = redis.call('hmget', KEYS[1], 'e', 's')
local epoch = meta[1]
local rolled = 0
if epoch and epoch == ARGV[9] and tonumber(meta[2] or '0') < tonumber(ARGV[10]) then
  -- Redis lost writes it had acknowledged (restored from an older
  -- snapshot, or a replica that lagged took over): the positions after
  -- its seq were handed out already, so they start again in a new epoch.
  epoch = nil
  rolled = 1
end
if not epoch then
  epoch = ARGV[5]
  redis.call('hset', KEYS[1], 'e', epoch, 's', 0)
end
local seq = redis.call('hincrby', KEYS[1], 's', 1)
redis.call('expire', KEYS[1], ARGV[4])
if seq == 1 then
  -- A new epoch: whatever a stream still holds belongs to an old one.
  redis.call('del', KEYS[2])
end
if tonumber(ARGV[2]) > 0 then
  redis.call('xadd', KEYS[2], 'MAXLEN', ARGV[2], seq .. '-0', 'd', ARGV[1], 't', ARGV[8])
  redis.call('pexpire', KEYS[2], ARGV[3])
end
if ARGV[7] ~= '' then
  redis.call('hset', KEYS[3], 'e', epoch, 's', seq)
  redis.call('expire', KEYS[3], ARGV[7])
end
redis.call('publish', ARGV[6], 'm' .. epoch .. ':' .. seq .. ':' .. ARGV[1])
return {seq, epoch, 0, rolled}
"""

# KEYS: meta, history.  ARGV: the seq to read after, at most how many (0:
# the position only), a fresh epoch, the meta TTL (s), whether to give a
# channel without one its epoch now ("1" or ""), and the floor (as for a
# publish).  Returns {epoch or false, last seq, entries, 1 if it found Redis
# behind the floor}: one read, so the position and the entries agree.
READ_SCRIPT = """
local meta = redis.call('hmget', KEYS[1], 'e', 's')
local rolled = 0
if meta[1] and meta[1] == ARGV[6] and tonumber(meta[2] or '0') < tonumber(ARGV[7]) then
  -- Redis lost acknowledged writes (see the publish script): a new
  -- epoch, and its history, which belongs to the old one, dropped.
  redis.call('del', KEYS[1], KEYS[2])
  meta = {false, false}
  rolled = 1
end
if not meta[1] and (ARGV[5] ~= '' or rolled == 1) then
  -- A subscriber comes first: the epoch it is told is the one the first
  -- publish will keep.
  redis.call('hset', KEYS[1], 'e', ARGV[3], 's', 0)
  redis.call('expire', KEYS[1], ARGV[4])
  meta[1] = ARGV[3]
end
local entries = {}
if tonumber(ARGV[2]) > 0 then
  entries = redis.call('xrange', KEYS[2], '(' .. ARGV[1] .. '-0', '+', 'COUNT', ARGV[2])
end
return {meta[1], tonumber(meta[2] or '0'), entries, rolled}
"""


def meta_ttl(settings: ChannelSettings) -> int:
    """
    Seconds a channel's meta key (its epoch and seq) lives after its last
    publish: as long as its history and its idempotency keys, so that a
    channel with neither history nor subscribers leaves nothing in Redis
    after the history age (at least 60 s).  The processes that listen to a
    channel keep its meta alive while it has subscribers
    (L{RedisPresence.refresh}), so their positions stay meaningful however
    quiet the channel is.
    """
    return int(settings.key_lifetime) + 1


@dataclass(frozen=True)
class Published:
    position: Position
    duplicate: bool  # answered a retried idempotency key, published nothing
    # Redis was found behind the floor (it lost acknowledged messages) and
    # the channel started a new epoch with this publish.
    rolled_back: bool = False


@dataclass(frozen=True)
class HistoryRead:
    """
    A channel's position and the history entries after a seq that are
    still within the history age: C{(seq, data JSON)} in order.
    """

    epoch: Optional[str]
    seq: int
    entries: tuple[tuple[int, str], ...]
    # Redis was found behind the floor: the channel has a new epoch.
    rolled_back: bool = False

    def oldest(self) -> int:
        return self.entries[0][0] if self.entries else self.seq + 1


class RedisStore:
    """
    Seq, epoch, history and idempotency of every channel, in Redis.

    @param redis: a txredisapi connection or pool (with
        C{convertNumbers=False}: data is kept as the text it was).
    @param clock: the time of publishes and of the age bound.
    @param timeout: seconds a command may take before it fails (Redis
        slow or gone: fail fast, never hang a publish).
    """

    def __init__(
        self,
        redis: Any,
        clock: IReactorTime,
        settings: ChannelSettings,
        prefix: str = "wsh",
        timeout: float = 2.0,
    ) -> None:
        self.redis = redis
        self.clock = clock
        self.settings = settings
        self.prefix = prefix
        self.timeout = timeout
        # Told the seconds each command took, or None when it failed
        # (timed out, connection gone): the engine's latency metric.
        self.observe: Callable[[Optional[float]], None] = lambda seconds: None
        # Whether the command connection is up (RedisConnections tells);
        # unknown counts as up, and commands wait for their timeout.
        self.connected: Callable[[], bool] = lambda: True
        # When a command last succeeded (the clock's seconds), for /healthz.
        self.last_success: Optional[float] = None

    def key(self, channel: str, part: str = "") -> str:
        base = f"{self.prefix}:{{{channel}}}"
        return f"{base}:{part}" if part else base

    def publish(
        self, channel: str, data_json: str, idempotency_key: Optional[str] = None, floor: Optional[Position] = None
    ) -> "defer.Deferred[Published]":
        """
        Publish C{data_json} (already validated) on C{channel}.  C{floor}:
        the highest position of the channel this process has seen; Redis
        behind it under the same epoch lost acknowledged messages, and the
        channel starts a new epoch rather than hand their positions out a
        second time.
        """
        settings = self.settings
        keys = [self.key(channel, "m"), self.key(channel, "h")]
        keys.append(self.key(channel, f"i:{idempotency_key}") if idempotency_key is not None else keys[0])
        args = [
            data_json,
            settings.history_size,
            int(settings.history_age * 1000),
            meta_ttl(settings),
            secrets.token_hex(6),
            self.key(channel),
            int(settings.key_lifetime) + 1 if idempotency_key is not None else "",
            int(self.clock.seconds() * 1000),
            *_floor_args(floor),
        ]
        d = self.command(lambda: self.redis.eval(PUBLISH_SCRIPT, keys, args))
        return d.addCallback(lambda r: Published(Position(_text(r[1]), int(r[0])), bool(int(r[2])), bool(int(r[3]))))

    def read(
        self,
        channel: str,
        since_seq: int = 0,
        start_epoch: bool = False,
        entries: bool = True,
        floor: Optional[Position] = None,
    ) -> "defer.Deferred[HistoryRead]":
        """
        The channel's position and (with C{entries}) its history after
        C{since_seq}, less what is older than the history age.
        C{start_epoch}: give a channel that has none its epoch now (a
        subscriber's first read).  C{floor}: as for L{publish}.
        """
        keys = [self.key(channel, "m"), self.key(channel, "h")]
        count = max(1, self.settings.history_size) if entries else 0
        args = [since_seq, count, secrets.token_hex(6), meta_ttl(self.settings), "1" if start_epoch else "", *_floor_args(floor)]
        d = self.command(lambda: self.redis.eval(READ_SCRIPT, keys, args))
        return d.addCallback(self._history)

    def _history(self, reply: Any) -> HistoryRead:
        epoch, seq, raw_entries, rolled_back = reply
        horizon = (self.clock.seconds() - self.settings.history_age) * 1000
        entries = []
        for entry_id, fields in raw_entries or ():
            values = dict(zip(fields[::2], fields[1::2]))
            if float(values["t"]) < horizon:
                continue  # older than the history age: gone for recovery
            entries.append((int(_text(entry_id).split("-")[0]), _text(values["d"])))
        return HistoryRead(_text(epoch) if epoch else None, int(seq), tuple(entries), bool(int(rolled_back)))

    def command(self, issue: Callable[[], "defer.Deferred[Any]"]) -> "defer.Deferred[Any]":
        """
        Send a command (C{issue} sends it), bounded by the timeout.  While
        the command connection is known to be down it fails at once, as
        Redis being unreachable (a 503 for clients), instead of waiting out
        the timeout in txredisapi's queue - and being sent later, when the
        caller has long been told it failed.
        """
        if not self.connected():
            self.observe(None)
            return defer.fail(txredisapi.ConnectionError("Redis not connected"))
        return self._bounded(issue())

    def _bounded(self, d: "defer.Deferred[Any]") -> "defer.Deferred[Any]":
        started = self.clock.seconds()

        def took(result: Any) -> Any:
            now = self.clock.seconds()
            self.last_success = now
            self.observe(now - started)
            return result

        def failed(failure: Any) -> Any:
            self.observe(None)
            return failure

        return d.addTimeout(self.timeout, self.clock).addCallbacks(took, failed)


def _floor_args(floor: Optional[Position]) -> list[Any]:
    return [floor.epoch, floor.seq] if floor is not None and floor.epoch else ["", 0]


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
