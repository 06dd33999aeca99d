"""
What both sides of wsheart.v1 share - the server's channels and the
clients (L{wsheart.channels.client}, the CLI): the subprotocol's name, a
position in a channel, a channel name's rule, and the error a channel
request is refused with.  Nothing here knows a server.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

SUBPROTOCOL = "wsheart.v1"

# fullmatch, never match + "$": "$" also matches before a final newline.
CHANNEL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:@-]{0,127}")


@dataclass(frozen=True)
class Position:
    """
    Where a subscriber is in a channel: the channel's epoch and the seq of
    the last message it has.
    """

    epoch: str
    seq: int


class ChannelError(Exception):
    """
    A request about channels that cannot be done; C{code} is the error code
    of the protocol (docs/protocol.md) and the HTTP status of the API.
    """

    def __init__(self, code: int, reason: str, retry_after: Optional[float] = None) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        # Seconds after which the same request may succeed (503, 429).
        self.retry_after = retry_after


def check_channel_name(name: object) -> str:
    if not isinstance(name, str) or not CHANNEL_NAME.fullmatch(name):
        raise ChannelError(
            400,
            "channel names are 1-128 characters of letters, digits and _ . : @ - (not starting with . : @ -)",
        )
    return name
