"""
Graceful drain on shutdown: close every connection with 1012 "service
restart" and a JSON reconnect hint, in batches spread over the drain time,
and drop whatever has not finished its closing handshake at the end.

The hint is sized to the fleet: C{jitter} grows with the number of
connections so that their reconnects arrive at about C{reconnect_rate} per
second, never all at once.  Closes themselves are spread over the drain
time too, which spreads the fleet further.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Optional

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from wsheart import closecodes
from wsheart.backoff import RetryHint
from wsheart.hub import Hub


@dataclass(frozen=True)
class DrainSettings:
    """
    @ivar drain_time: seconds over which the closes are spread.
    @ivar retry_after: the hint's fixed wait, in seconds: about the time a
        restart takes, so that the first clients find the new process up.
    @ivar reconnect_rate: reconnects per second the fleet should arrive at;
        the hint's jitter is C{connections / reconnect_rate}.
    @ivar min_jitter: the smallest jitter window hinted, in seconds.
    @ivar batch_interval: seconds between two batches of closes.
    """

    drain_time: float = 10.0
    retry_after: float = 2.0
    reconnect_rate: float = 500.0
    min_jitter: float = 5.0
    batch_interval: float = 0.1

    def __post_init__(self) -> None:
        if self.drain_time < 0:
            raise ValueError(f"drain time must not be negative, got {self.drain_time}")
        if self.retry_after < 0:
            raise ValueError(f"drain retry-after must not be negative, got {self.retry_after}")
        if not self.reconnect_rate > 0:
            raise ValueError(f"reconnect rate must be positive, got {self.reconnect_rate}")
        if not self.batch_interval > 0:
            raise ValueError(f"batch interval must be positive, got {self.batch_interval}")

    def hint(self, connections: int) -> RetryHint:
        """
        The reconnect hint for a fleet of C{connections}.
        """
        jitter = max(self.min_jitter, connections / self.reconnect_rate)
        return RetryHint.bounded(self.retry_after, jitter)


def hint_reason(hint: RetryHint) -> str:
    """
    The close reason that carries C{hint} (well under 123 bytes).
    """
    return json.dumps({"retry_after": round(hint.retry_after, 3), "jitter": round(hint.jitter, 3)})


class Drainer:
    """
    Closes every connection in C{hub}, politely, within a bound: the drain
    time plus the close timeout.
    """

    log = Logger()

    def __init__(self, clock: IReactorTime, hub: Hub, settings: DrainSettings, close_timeout: float) -> None:
        self._clock = clock
        self._hub = hub
        self.settings = settings
        self._close_timeout = close_timeout
        self._calls: list[IDelayedCall] = []
        self._done: Optional[defer.Deferred[int]] = None
        self._finishing = False
        self.hint: Optional[RetryHint] = None

    def drain(self) -> "defer.Deferred[int]":
        """
        Start draining; fires with the number of connections that had to be
        dropped at the end (0 when every client finished its handshake).
        """
        if self._done is not None:
            return self._done
        self._done = defer.Deferred()
        connections = list(self._hub)
        self.hint = hint = self.settings.hint(len(connections))
        reason = hint_reason(hint)
        batches = max(1, int(self.settings.drain_time / self.settings.batch_interval))
        size = max(1, math.ceil(len(connections) / batches))
        self.log.info(
            "draining {count} connections over {time} s, hint {reason}",
            count=len(connections),
            time=self.settings.drain_time,
            reason=reason,
        )
        for index in range(0, len(connections), size):
            batch = [info.connection_id for info in connections[index : index + size]]
            delay = (index // size) * self.settings.batch_interval
            self._calls.append(self._clock.callLater(delay, self._close_batch, batch, reason))
        last_close = (max(0, math.ceil(len(connections) / size) - 1)) * self.settings.batch_interval
        self._calls.append(self._clock.callLater(last_close + self._close_timeout, self._finish))
        self._hub.on_removal(self._removed)
        if len(self._hub) == 0:
            self._complete(0)
        return self._done

    def _close_batch(self, connection_ids: list[str], reason: str) -> None:
        for connection_id in connection_ids:
            info = self._hub.get(connection_id)
            if info is None:
                continue
            try:
                info.connection.close(closecodes.SERVICE_RESTART, reason)
            except Exception:
                self.log.failure("closing {cid} during drain failed", cid=connection_id)

    def _removed(self, info: Any, cause: str) -> None:
        if len(self._hub) == 0 and not self._finishing:
            self._complete(0)

    def _finish(self) -> None:
        self._finishing = True
        leftovers = list(self._hub)
        for info in leftovers:
            try:
                info.connection.abort()
            except Exception:
                self.log.failure("dropping {cid} during drain failed", cid=info.connection_id)
        if leftovers:
            self.log.warn("drain dropped {count} connections that did not close in time", count=len(leftovers))
        self._complete(len(leftovers))

    def _complete(self, dropped: int) -> None:
        for call in self._calls:
            if call.active():
                call.cancel()
        self._calls = []
        if self._done is not None and not self._done.called:
            self._done.callback(dropped)
