"""
Channel members across every wsheart process, in Redis, tied to each
process's presence heartbeat (L{RedisPresence}); the scripts that keep
joins, leaves and sweeps atomic and announced once.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from wsheart.channels.redis.store import RedisStore, _text, meta_ttl

# Presence: one hash per channel, connection id -> the client's JSON, and
# one set per process of the channels where it has members (so that the
# members of a process that died can be found and announced gone).
# Both expire (ARGV: their TTL) unless the processes that have members there
# keep refreshing them (L{REFRESH_SCRIPT}), so a deployment whose processes
# all stopped leaves nothing behind.
# KEYS: presence hash, the process's channel set.  ARGV: connection id,
# client JSON, pub/sub channel, channel name, TTL (s).  Returns 1 for a new
# member.
JOIN_SCRIPT = """
local new = redis.call('hset', KEYS[1], ARGV[1], ARGV[2])
redis.call('expire', KEYS[1], ARGV[5])
redis.call('sadd', KEYS[2], ARGV[4])
redis.call('expire', KEYS[2], ARGV[5])
if new == 1 then redis.call('publish', ARGV[3], 'j' .. ARGV[2]) end
return new
"""

# KEYS: presence hash, the process's channel set.  ARGV: connection id,
# pub/sub channel, channel name, "1" when it was the process's last member
# there (the channel leaves the process's set).  Announces the leave once:
# only the call that removed the member.
LEAVE_SCRIPT = """
if ARGV[4] == '1' then redis.call('srem', KEYS[2], ARGV[3]) end
local client = redis.call('hget', KEYS[1], ARGV[1])
if not client then return 0 end
redis.call('hdel', KEYS[1], ARGV[1])
redis.call('publish', ARGV[2], 'l' .. client)
return 1
"""

# A process's beat keeps what its channels need alive.  KEYS: the
# process's channel set.  ARGV: key prefix ("PREFIX:{"), presence TTL (s),
# meta TTL (s), then channel names.  A meta key is only lengthened (a
# publish may have given it more), and only if it exists (an epoch is never
# made up here).
REFRESH_SCRIPT = """
redis.call('expire', KEYS[1], ARGV[2])
for i = 4, #ARGV do
  local base = ARGV[1] .. ARGV[i] .. '}'
  redis.call('expire', base .. ':p', ARGV[2])
  local left = redis.call('ttl', base .. ':m')
  if left >= 0 and left < tonumber(ARGV[3]) then redis.call('expire', base .. ':m', ARGV[3]) end
end
return 0
"""

# A process that stopped beating: KEYS: the node zset, its channel set.
# ARGV: node, key prefix ("PREFIX:{"), id prefix ("NODE."), the time its
# last beat must be older than.  Only the caller whose ZREM removed it
# sweeps, so each leave is announced once; a process that beat again since
# it was found silent (it was paused, not dead) is left alone.
SWEEP_SCRIPT = """
local last = redis.call('zscore', KEYS[1], ARGV[1])
if not last or tonumber(last) > tonumber(ARGV[4]) then return 0 end
if redis.call('zrem', KEYS[1], ARGV[1]) == 0 then return 0 end
local swept = 0
for _, channel in ipairs(redis.call('smembers', KEYS[2])) do
  local hash = ARGV[2] .. channel .. '}:p'
  local fields = redis.call('hgetall', hash)
  for i = 1, #fields, 2 do
    if string.sub(fields[i], 1, #ARGV[3]) == ARGV[3] then
      redis.call('hdel', hash, fields[i])
      redis.call('publish', ARGV[2] .. channel .. '}', 'l' .. fields[i + 1])
      swept = swept + 1
    end
  end
end
redis.call('del', KEYS[2])
return swept
"""

# After the command connection was away: this process's members in Redis
# become exactly its local ones.  A leave that could not be sent meanwhile
# is done (and announced) now; joins are sent again separately (JOIN_SCRIPT
# announces only the ones Redis lacks).  KEYS: this process's channel set.
# ARGV: key prefix ("PREFIX:{"), id prefix ("NODE."), then "CHANNEL ID" of
# every local member.
RECONCILE_SCRIPT = """
local here = {}
for i = 3, #ARGV do here[ARGV[i]] = true end
local left = 0
for _, channel in ipairs(redis.call('smembers', KEYS[1])) do
  local hash = ARGV[1] .. channel .. '}:p'
  local fields = redis.call('hgetall', hash)
  local mine = 0
  for i = 1, #fields, 2 do
    if string.sub(fields[i], 1, #ARGV[2]) == ARGV[2] then
      if here[channel .. ' ' .. fields[i]] then
        mine = mine + 1
      else
        redis.call('hdel', hash, fields[i])
        redis.call('publish', ARGV[1] .. channel .. '}', 'l' .. fields[i + 1])
        left = left + 1
      end
    end
  end
  if mine == 0 then redis.call('srem', KEYS[1], channel) end
end
return left
"""


class RedisPresence:
    """
    Channel members across every process, in Redis, tied to each
    process's heartbeat: a process beats every C{beat} seconds, and one
    that has not for C{dead_after} is swept by whichever process notices
    first, its members' leaves announced once.
    """

    # Channels per refresh script, so one call stays short in Redis.
    REFRESH_BATCH = 500

    def __init__(self, store: RedisStore, node: str, dead_after: float) -> None:
        self.store = store
        self.node = node
        self.dead_after = dead_after
        # Presence keys outlive three sweep bounds without a refresh.
        self.key_ttl = max(60, int(3 * dead_after) + 1)

    def _node_channels(self, node: str) -> str:
        return f"{self.store.prefix}:node:{node}:ch"

    def join(self, channel: str, connection_id: str, client_json: str) -> "defer.Deferred[bool]":
        keys = [self.store.key(channel, "p"), self._node_channels(self.node)]
        args = [connection_id, client_json, self.store.key(channel), channel, self.key_ttl]
        d = self.store.command(lambda: self.store.redis.eval(JOIN_SCRIPT, keys, args))
        return d.addCallback(lambda new: int(new) == 1)

    def leave(self, channel: str, connection_id: str, last: bool = False) -> "defer.Deferred[bool]":
        """
        C{last}: it was this process's last member of C{channel}.
        """
        keys = [self.store.key(channel, "p"), self._node_channels(self.node)]
        args = [connection_id, self.store.key(channel), channel, "1" if last else ""]
        d = self.store.command(lambda: self.store.redis.eval(LEAVE_SCRIPT, keys, args))
        return d.addCallback(lambda left: int(left) == 1)

    def reconcile(self, members: list[tuple[str, str]]) -> "defer.Deferred[int]":
        """
        Make this process's members in Redis exactly C{members} (channel,
        connection id): the others leave, announced; returns how many.
        """
        keys = [self._node_channels(self.node)]
        args = [f"{self.store.prefix}:{{", f"{self.node}.", *(f"{channel} {cid}" for channel, cid in members)]
        d = self.store.command(lambda: self.store.redis.eval(RECONCILE_SCRIPT, keys, args))
        return d.addCallback(int)

    def refresh(self, channels: list[str]) -> "defer.Deferred[Any]":
        """
        Keep alive the keys of the channels this process has subscribers
        in: presence hashes, meta keys (so a quiet channel keeps its
        epoch while anyone listens), and this process's channel set.
        """
        meta = max(meta_ttl(self.store.settings), self.key_ttl)
        keys = [self._node_channels(self.node)]
        head = [f"{self.store.prefix}:{{", self.key_ttl, meta]
        batches = [channels[i : i + self.REFRESH_BATCH] for i in range(0, len(channels), self.REFRESH_BATCH)] or [[]]

        def send(batch: list[str]) -> "defer.Deferred[Any]":
            return self.store.command(lambda: self.store.redis.eval(REFRESH_SCRIPT, keys, [*head, *batch]))

        return defer.gatherResults([send(batch) for batch in batches], consumeErrors=True)

    def members(self, channel: str) -> "defer.Deferred[list[str]]":
        """
        The members' client JSON, in no particular order.
        """
        d = self.store.command(lambda: self.store.redis.execute_command("HVALS", self.store.key(channel, "p")))
        return d.addCallback(lambda values: [_text(v) for v in values or ()])

    def beat(self) -> "defer.Deferred[bool]":
        """
        This process is alive; then sweep every process that is not.
        Fires with whether this process was missing from Redis (its first
        beat, or it was swept while paused, or Redis came back empty): then
        its members must be registered again.
        """
        nodes = f"{self.store.prefix}:nodes"
        now = self.store.clock.seconds()
        threshold = f"{now - self.dead_after:.3f}"
        d = self.store.command(lambda: self.store.redis.execute_command("ZADD", nodes, f"{now:.3f}", self.node))

        def sweep(added: Any) -> "defer.Deferred[bool]":
            found = self.store.command(lambda: self.store.redis.execute_command("ZRANGEBYSCORE", nodes, "-inf", threshold))
            found.addCallback(self._sweep_all, threshold)
            return found.addCallback(lambda _: int(added) == 1)

        return d.addCallback(sweep)

    def leave_all(self) -> "defer.Deferred[Any]":
        """
        This process stops: sweep it now, as the others would after the
        bound - every member it still has leaves, announced once.
        """
        keys = [f"{self.store.prefix}:nodes", self._node_channels(self.node)]
        return self._sweep(keys, [self.node, f"{self.store.prefix}:{{", f"{self.node}.", "1e300"])

    def _sweep(self, keys: list[str], args: list[str]) -> "defer.Deferred[Any]":
        return self.store.command(lambda: self.store.redis.eval(SWEEP_SCRIPT, keys, args))

    def _sweep_all(self, dead: Any, threshold: str) -> "defer.Deferred[Any]":
        sweeps = []
        for node in dead or ():
            node = _text(node)
            keys = [f"{self.store.prefix}:nodes", self._node_channels(node)]
            args = [node, f"{self.store.prefix}:{{", f"{node}.", threshold]
            sweeps.append(self._sweep(keys, args))
        return defer.gatherResults(sweeps, consumeErrors=True)
