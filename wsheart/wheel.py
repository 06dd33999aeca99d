"""
A timer wheel: one reactor timer serves every heartbeat that falls due in
the same slot, instead of one reactor timer per connection.

With thousands of connections each heartbeat would otherwise put two
DelayedCalls per interval on the reactor's heap; here a slot of
C{resolution} seconds collects all timers due in it, and the reactor only
sees one DelayedCall per non-empty slot.  Timers fire at or after their due
time, at most C{resolution} seconds late (the "scheduler slack" of the
heartbeat bound).

The wheel offers the part of L{IReactorTime} the heartbeat uses:
C{callLater} returning an object with C{cancel}, C{active} and C{getTime},
and C{seconds}.
"""

from __future__ import annotations

import heapq
import math
from typing import Any, Callable, Optional

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger


class WheelTimer:
    """
    One pending call on a L{TimerWheel}.
    """

    __slots__ = ("_time", "_func", "_args", "_state", "_wheel")

    _PENDING, _CANCELLED, _CALLED = 0, 1, 2

    def __init__(self, wheel: "TimerWheel", time: float, func: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self._wheel = wheel
        self._time = time
        self._func = func
        self._args = args
        self._state = self._PENDING

    def getTime(self) -> float:
        return self._time

    def active(self) -> bool:
        return self._state == self._PENDING

    def cancel(self) -> None:
        # Lazy: the slot drops it when it comes round.
        if self._state == self._PENDING:
            self._state = self._CANCELLED
            self._func = _nothing
            self._args = ()
            self._wheel._cancelled()


def _nothing(*args: Any) -> None:
    return None


class TimerWheel:
    """
    Timers grouped in slots of C{resolution} seconds on top of C{clock}.
    """

    log = Logger()

    def __init__(self, clock: IReactorTime, resolution: float = 0.05) -> None:
        if not resolution > 0:
            raise ValueError(f"resolution must be positive, got {resolution}")
        self._clock = clock
        self.resolution = resolution
        self._slots: dict[int, list[WheelTimer]] = {}
        self._order: list[int] = []  # heap of slot numbers with timers
        self._tick_call: Optional[IDelayedCall] = None
        self._tick_slot: Optional[int] = None
        self._pending = 0

    def __len__(self) -> int:
        """
        Timers still pending.
        """
        return self._pending

    def _cancelled(self) -> None:
        self._pending -= 1
        if self._pending == 0:
            # Nothing left to run: leave no reactor timer behind.
            self.stop()

    def seconds(self) -> float:
        return self._clock.seconds()

    def callLater(self, delay: float, func: Callable[..., Any], *args: Any) -> WheelTimer:
        return self.call_at(self._clock.seconds() + max(0.0, delay), func, *args)

    def call_at(self, when: float, func: Callable[..., Any], *args: Any) -> WheelTimer:
        """
        Call C{func(*args)} at clock time C{when} (a time already past: in
        the current or next slot).  A heartbeat knows when its next ping or
        check is due; this spares it a clock read per timer.
        """
        timer = WheelTimer(self, when, func, args)
        self._pending += 1
        slot = math.ceil(when / self.resolution)
        timers = self._slots.get(slot)
        if timers is None:
            self._slots[slot] = [timer]
            heapq.heappush(self._order, slot)
            if self._tick_slot is None or slot < self._tick_slot:
                self._schedule(slot)
        else:
            timers.append(timer)
        return timer

    def _schedule(self, slot: int) -> None:
        if self._tick_call is not None and self._tick_call.active():
            self._tick_call.cancel()
        delay = max(0.0, slot * self.resolution - self._clock.seconds())
        self._tick_slot = slot
        self._tick_call = self._clock.callLater(delay, self._tick)

    def _tick(self) -> None:
        self._tick_call = None
        self._tick_slot = None
        now_slot = math.floor(self._clock.seconds() / self.resolution + 1e-9)
        order = self._order
        while order and order[0] <= now_slot:
            slot = heapq.heappop(order)
            for timer in self._slots.pop(slot, ()):
                if timer._state != WheelTimer._PENDING:
                    continue
                timer._state = WheelTimer._CALLED
                self._pending -= 1
                try:
                    timer._func(*timer._args)
                except Exception:
                    # One connection's failure must not stop the others'.
                    self.log.failure("timer wheel call failed")
        if order:
            self._schedule(order[0])

    def stop(self) -> None:
        """
        Cancel everything (used when the daemon stops).
        """
        if self._tick_call is not None and self._tick_call.active():
            self._tick_call.cancel()
        self._tick_call = None
        self._tick_slot = None
        slots = list(self._slots.values())
        self._slots.clear()
        self._order.clear()
        for timers in slots:
            for timer in timers:
                if timer._state == WheelTimer._PENDING:
                    timer._state = WheelTimer._CANCELLED
        self._pending = 0
