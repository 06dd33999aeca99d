"""
Is this process healthy?  A reactor lag monitor (a timer that notes how late
it fires) and the serving/draining state, read by C{/healthz} and by the
systemd watchdog.

Every heartbeat timer runs on the same reactor, so a reactor that fires its
timers late delays every heartbeat: lag is the measure of the heartbeat
machinery's health.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger


class LagMonitor:
    """
    Measures how late the reactor runs a timer due every C{period} seconds.

    @ivar lag: lateness of the latest tick, in seconds.
    @ivar max_lag: the worst lateness seen.
    """

    log = Logger()

    def __init__(self, clock: IReactorTime, period: float = 0.5, threshold: float = 2.0) -> None:
        self._clock = clock
        self.period = period
        self.threshold = threshold
        self.lag = 0.0
        self.max_lag = 0.0
        self._expected: Optional[float] = None
        self._last_tick: Optional[float] = None
        self._loop = LoopingCall(self._tick)
        self._loop.clock = clock

    def start(self) -> None:
        if not self._loop.running:
            self._expected = None
            self._loop.start(self.period, now=True)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def _tick(self) -> None:
        now = self._clock.seconds()
        if self._expected is not None:
            self.lag = max(0.0, now - self._expected)
            self.max_lag = max(self.max_lag, self.lag)
            if self.lag > self.threshold:
                self.log.warn("the reactor is {lag:.2f} s late", lag=self.lag)
        self._last_tick = now
        self._expected = now + self.period

    def current_lag(self) -> float:
        """
        The lag now: also counts a tick that is overdue right now.
        """
        if self._expected is None:
            return self.lag
        return max(self.lag, self._clock.seconds() - self._expected)

    def healthy(self) -> bool:
        return self.current_lag() <= self.threshold


class Health:
    """
    Serving, draining, or lagging: what C{/healthz} reports.

    @ivar cadence: the heartbeat's L{wsheart.heartbeat.CadenceMeter}, when
        the service has one: how the configured cadence is being kept.
    """

    def __init__(self, lag: LagMonitor, cadence: Optional[Any] = None) -> None:
        self.lag = lag
        self.cadence = cadence
        self.draining = False

    def heartbeat(self) -> Optional[dict[str, Any]]:
        """
        The heartbeat's cadence for C{/healthz}: configured and effective
        interval, lateness, whether it is degraded.
        """
        cadence = self.cadence
        if cadence is None:
            return None
        return {
            "interval_seconds": cadence.interval,
            "effective_interval_seconds": round(cadence.effective_interval, 4),
            "lateness_seconds": round(cadence.lateness, 4),
            "degraded": cadence.degraded,
        }

    def state(self) -> str:
        if self.draining:
            return "draining"
        if not self.lag.healthy():
            return "lagging"
        return "serving"

    def ok(self) -> bool:
        return self.state() == "serving"
