"""
The daemon's life cycle: listen, tell systemd it is ready, feed the
watchdog, reload certificates and API tokens on SIGHUP, and on shutdown
stop accepting and drain every connection with a reconnect hint.
"""

from __future__ import annotations

import signal
from typing import Any, Optional, Sequence

from twisted.application.service import IService, MultiService, Service
from twisted.internet import defer
from twisted.logger import Logger, globalLogPublisher

from wsheart import __version__
from wsheart.accepts import AcceptPauser
from wsheart.channels.api import ApiTokens
from wsheart.drain import Drainer
from wsheart.health import Health, LagMonitor
from wsheart.hub import Hub
from wsheart.access.limits import RESERVED_DESCRIPTORS, raise_open_files_limit
from wsheart.protocol import ServerFactory
from wsheart.systemd import Notifier, Watchdog, watchdog_interval
from wsheart.tls import ReloadableServerTLS


class WsheartService(MultiService):
    """
    The daemon: listeners sharing one hub, an optional admin endpoint, and
    the process-level duties around them.

    @ivar hub: the registry of open connections.
    @ivar factory: the WebSocket server factory.
    @ivar health: serving / draining / lagging.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        hub: Hub,
        factory: ServerFactory,
        endpoints: list[str],
        drainer: Drainer,
        lag: LagMonitor,
        notifier: Optional[Notifier] = None,
        tls: Sequence[ReloadableServerTLS] = (),
        install_signal_handlers: bool = True,
        api_tokens: Optional[ApiTokens] = None,
    ) -> None:
        super().__init__()
        self._reactor = reactor
        self.hub = hub
        self.factory = factory
        self.endpoints = endpoints
        self.drainer = drainer
        self.lag = lag
        self.health = Health(lag, getattr(factory, "cadence", None))
        self.notifier = notifier if notifier is not None else Notifier()
        self.watchdog = Watchdog(
            reactor,
            self.notifier,
            watchdog_interval(),
            healthy=self.lag.healthy,
            status=self.status,
        )
        self.tls = tuple(tls)
        # The channel API's tokens (--api-token-file), re-read on SIGHUP.
        self.api_tokens = api_tokens
        self._install_signal_handlers = install_signal_handlers
        self._previous_sighup: Any = None
        self._previous_sigterm: Any = None
        self.listeners: list[IService] = []
        self.admin: Optional[IService] = None
        # Periodic jobs (channel housekeeping), stopped after the drain.
        self.background: list[IService] = []
        # The channels' broker, when channels are on (set by makeService).
        self.broker: Optional[Any] = None
        self._stopping: Optional[defer.Deferred[None]] = None
        # Out of descriptors with none in reserve, stop accepting for a
        # while rather than spin (wsheart.accepts).
        self.accept_pauser = AcceptPauser(reactor, paused=factory.metrics.accept_paused.inc)
        self._pauser_observing = False

    def add_listener(self, listener: IService) -> None:
        self.listeners.append(listener)
        listener.setServiceParent(self)

    def add_background(self, job: IService) -> None:
        self.background.append(job)
        job.setServiceParent(self)

    def set_admin(self, admin: IService) -> None:
        self.admin = admin
        admin.setServiceParent(self)

    def status(self) -> str:
        state = self.health.state()
        status = f"{state}: {len(self.hub)} connections"
        cadence = self.health.cadence
        if cadence is not None and cadence.degraded:
            status += (
                f"; heartbeat every {cadence.effective_interval:.1f} s, not {cadence.interval:g} s "
                f"(pings {cadence.lateness:.2f} s late: overloaded)"
            )
        return status

    def startService(self) -> None:
        settings = self.factory.heartbeat_settings
        self.log.info(
            "wsheart {version} starting on {endpoints}; heartbeat every {interval} s, "
            "timeout {timeout} s, dead after {max_missed} misses (bound {bound} s)",
            version=__version__,
            endpoints=", ".join(self.endpoints),
            interval=settings.interval,
            timeout=settings.timeout,
            max_missed=settings.max_missed,
            bound=settings.death_bound,
        )
        if self._install_signal_handlers:  # the daemon itself, not a test harness
            self._raise_open_files_limit()
            globalLogPublisher.addObserver(self.accept_pauser)
            self._pauser_observing = True
        # Listeners bind in privilegedStartService (before this), raising if
        # they cannot: once here, every endpoint listens.
        super().startService()
        self.lag.start()
        if (self.tls or self.api_tokens is not None) and self._install_signal_handlers:
            self._previous_sighup = signal.signal(signal.SIGHUP, self._sighup)
        # Ready once the reactor runs: only then are twistd's SIGTERM
        # handlers in place, so a stop right after READY drains instead of
        # killing the process.
        self._reactor.callWhenRunning(self._ready)

    def _raise_open_files_limit(self) -> None:
        before, now = raise_open_files_limit()
        connections = max(0, now - RESERVED_DESCRIPTORS)
        self.log.info(
            "open files: up to {now} (was {before}): room for about {connections} connections",
            now=now,
            before=before,
            connections=connections,
        )
        ceiling = self.factory.limits.settings.max_connections
        if ceiling > connections:
            self.log.warn(
                "--max-connections {ceiling} is above what {now} open files allow; raise LimitNOFILE "
                "(or ulimit -Hn) or lower it",
                ceiling=ceiling,
                now=now,
            )

    def _ready(self) -> None:
        if not self.running:
            return
        if self._install_signal_handlers:
            # twistd stops on SIGTERM and then re-raises it, exiting by the
            # signal; a completed drain is a clean stop, so exit 0.
            self._previous_sigterm = signal.signal(signal.SIGTERM, self._sigterm)
        self.watchdog.start()
        self.notifier.notify(READY=1, STATUS=self.status())
        self.log.info("wsheart ready: {status}", status=self.status())

    def _sigterm(self, signum: int, frame: Any) -> None:
        self.log.info("SIGTERM: draining, then exiting")
        self._reactor.callFromThread(self._reactor.stop)

    def _sighup(self, signum: int, frame: Any) -> None:
        # Signal context: do the work from the reactor.
        self._reactor.callFromThread(self.reload)

    def reload(self) -> None:
        """
        What SIGHUP does: re-read the TLS key and certificate, and the API
        tokens.  Each keeps what it has when its new files are broken, and
        one failing does not stop the other.
        """
        self.notifier.notify(RELOADING=1)
        try:
            for tls in self.tls:
                try:
                    tls.reload()
                except Exception:
                    self.log.failure("TLS reload failed")
            if self.api_tokens is not None:
                try:
                    self.api_tokens.reload()
                except Exception:
                    self.log.failure("API token reload failed")
        finally:
            self.notifier.notify(READY=1)

    def stopService(self) -> "defer.Deferred[None]":
        """
        Stop accepting, tell systemd, drain every connection with a 1012
        hint spread over the drain time, then stop the rest.
        """
        if self._stopping is not None:
            return self._stopping
        Service.stopService(self)
        self.health.draining = True
        self.notifier.notify(STOPPING=1, STATUS=f"draining {len(self.hub)} connections")
        for signum, attribute in ((signal.SIGHUP, "_previous_sighup"), (signal.SIGTERM, "_previous_sigterm")):
            previous = getattr(self, attribute)
            if previous is not None:
                signal.signal(signum, previous)
                setattr(self, attribute, None)

        if self._pauser_observing:
            globalLogPublisher.removeObserver(self.accept_pauser)
            self._pauser_observing = False
        self.accept_pauser.stop()
        self._stopping = defer.ensureDeferred(self._shut_down())
        return self._stopping

    async def _shut_down(self) -> None:
        try:
            # First stop accepting, so the drain has a fixed set to close.
            results = await defer.DeferredList(
                [defer.maybeDeferred(listener.stopService) for listener in self.listeners],
                consumeErrors=True,
            )
            for ok, result in results:
                if not ok:
                    self.log.failure("stopping a listener failed", result)
            dropped = await self.drainer.drain()
            if dropped:
                self.factory.metrics.drain_dropped.inc(dropped)
            self.log.info("drain finished; {dropped} connections had to be dropped", dropped=dropped)
        except Exception:
            self.log.failure("drain failed")
        finally:
            self.watchdog.stop()
            self.lag.stop()
            for job in self.background:
                try:
                    await defer.maybeDeferred(job.stopService)
                except Exception:
                    self.log.failure("stopping {job} failed", job=job)
            if self.admin is not None:
                try:
                    await defer.maybeDeferred(self.admin.stopService)
                except Exception:
                    self.log.failure("stopping the admin endpoint failed")
            self.notifier.close()
