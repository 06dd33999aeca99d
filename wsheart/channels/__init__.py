"""
Channels: the wsheart.v1 subprotocol's publish/subscribe with positions,
history, recovery and presence.

  broker.py   the channels of one process: seq/epoch, bounded history,
              recovery, presence, limits, housekeeping (pure, clock injected)
  v1.py       the wsheart.v1 frames on the server (a message handler)
  api.py      the channel HTTP API on the admin endpoint
  client.py   wsheart.v1 for the Python client service

L{serve} wires a broker into a daemon: the subprotocol handlers the server
factory offers, and the hub observer that takes a connection out of its
channels the moment it leaves (for a dead peer: the moment of death).
The protocol layer knows none of this; it sees handlers only.
"""

from __future__ import annotations

from typing import Optional

from wsheart.auth import AuthPolicy
from wsheart.channels.broker import Broker, ChannelError, ChannelSettings, Housekeeping, Position
from wsheart.channels.model import SUBPROTOCOL
from wsheart.channels.v1 import ChannelProtocolHandler, Rates
from wsheart.handler import IMessageHandler
from wsheart.hub import Hub
from wsheart.metrics import ServerMetrics

__all__ = [
    "SUBPROTOCOL",
    "Broker",
    "ChannelError",
    "ChannelProtocolHandler",
    "ChannelSettings",
    "Housekeeping",
    "Position",
    "serve",
]


def serve(
    broker: Broker, hub: Hub, metrics: ServerMetrics, auth: Optional[AuthPolicy] = None, rates: Optional[Rates] = None
) -> dict[str, IMessageHandler]:
    """
    Put C{broker}'s channels on a daemon: returns the subprotocol handlers
    for its server factory (C{{"wsheart.v1": handler}}).
    """
    hub.on_removal(lambda info, cause: broker.remove_connection(info.connection_id))
    metrics.track_history_bytes(lambda: broker.history_bytes)
    metrics.track_channels(broker)
    store = getattr(broker, "store", None)
    if store is not None:  # the Redis engine: its command latency
        store.observe = metrics.track_engine_commands()
    return {SUBPROTOCOL: ChannelProtocolHandler(broker, auth, rates)}
