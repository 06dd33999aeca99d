"""
The Redis engine: channels shared by every wsheart process that uses the
same Redis.

  - L{store}: seq, epoch, history and idempotency keys, one script per
    publish;
  - L{presence}: members across processes, tied to each process's beat;
  - L{broker}: this process's delivery to its own subscribers, in order,
    gaps repaired from history or told;
  - L{connections}: the two connections to Redis and their supervision;
  - L{address}: the C{--redis} URL and Sentinel.
"""

from wsheart.channels.redis.address import RedisAddress, SentinelMasterEndpoint
from wsheart.channels.redis.broker import EngineUnavailable, RedisBroker
from wsheart.channels.redis.connections import RedisConnections, command_factory, pubsub_factory
from wsheart.channels.redis.presence import RedisPresence
from wsheart.channels.redis.store import RedisStore

__all__ = [
    "EngineUnavailable",
    "RedisAddress",
    "RedisBroker",
    "RedisConnections",
    "RedisPresence",
    "RedisStore",
    "SentinelMasterEndpoint",
    "command_factory",
    "pubsub_factory",
]
