"""
The Redis engine's two connections to Redis while the daemon runs - one
for commands (the scripts), one for pub/sub - over txredisapi, with the
reconnecting wsheart needs from it: for ever, whatever failed, on one
short bounded backoff.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import txredisapi
from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger

from wsheart.channels.redis.address import RedisAddress, SentinelMasterEndpoint
from wsheart.channels.redis.broker import RedisBroker

log = Logger()


# txredisapi parses replies with hiredis (the Redis project's C parser) when
# it is installed, and wsheart depends on it: its own pure-Python parser
# hands what follows each bulk reply to the next reactor turn and copies the
# rest of the buffer for every line, so each pub/sub message was fanned out
# in a turn of its own (one send() per subscriber per message: 5.5x the CPU
# per delivery of the memory engine) and 1000 history entries took 80 ms.
if txredisapi.hiredis is None:  # pragma: no cover - setup.cfg installs it
    raise ImportError("wsheart's Redis engine needs hiredis (pip install hiredis)")


class PubSubProtocol(txredisapi.SubscriberProtocol):
    """
    The broker's pub/sub connection: hands it to the broker when it is
    ready, and every announced message after that.
    """

    def connectionMade(self) -> Any:
        d = super().connectionMade()
        return d.addCallback(lambda _: self.factory.broker.pubsub_connected(self))

    def messageReceived(self, pattern: Any, channel: Any, message: Any) -> None:
        self.factory.broker.announced(channel, message)

    def connectionLost(self, why: Any) -> None:
        self.factory.broker.pubsub_lost(self)
        super().connectionLost(why)


if TYPE_CHECKING:
    # What _KeepTrying is mixed into, for the type checker.
    from txredisapi import RedisFactory as _Factory
else:
    _Factory = object


class _KeepTrying(_Factory):
    """
    For a txredisapi factory: a login (C{AUTH}) or C{SELECT} that Redis
    refuses does not stop the reconnecting.  txredisapi stops for good
    there, which left the engine down for ever after Redis answered a
    reconnect with an error for a moment (at C{maxclients}, during a
    password rotation, while loading).  Here the connection is closed and
    tried again on the factory's backoff, until the daemon stops
    (L{RedisConnections.stopService} disconnects the factory, which needs
    no C{stopTrying}).

    The backoff is short and bounded the same for every process (0.25 s
    doubling to 2 s, 10 % jitter), so that after Redis restarts all the
    processes are back within about two seconds of each other: with
    txredisapi's 1 s growing to 10 s they came back up to 8 s apart, and
    a subscriber of a late process could be told its history was lost
    while Redis still held it.  A few processes retrying every 2 s cost
    Redis nothing.

    C{on_ready}, when set, is called with each connection that is ready
    (logged in, database selected).
    """

    initialDelay = 0.25
    factor = 2.0
    maxDelay = 2.0
    jitter = 0.1
    on_ready: Any = None

    def addConnection(self, conn: Any) -> None:
        super().addConnection(conn)
        if self.on_ready is not None and conn.connected:
            self.on_ready(conn)

    def stopTrying(self) -> Any:
        return defer.succeed(None)

    def connectionError(self, why: str) -> None:
        # txredisapi fails a Deferred nobody holds here (a lazy factory's),
        # which surfaces later as an unhandled error: say it once, plainly.
        log.warn("{why}; trying again", why=why)


class _CommandFactory(_KeepTrying, txredisapi.RedisFactory):
    pass


class _PubSubFactory(_KeepTrying, txredisapi.SubscriberFactory):
    pass


def pubsub_factory(broker: RedisBroker) -> Any:
    """
    A reconnecting txredisapi subscriber factory for C{broker}; start it
    with C{factory.startConnecting(endpoint)}.
    """
    factory = _PubSubFactory()
    factory.protocol = PubSubProtocol
    factory.broker = broker
    factory.reconnect = True
    return factory


def command_factory(name: str, db: Optional[int] = None, password: Optional[str] = None, username: Optional[str] = None) -> Any:
    """
    A reconnecting txredisapi factory of the engine's command connection;
    start it with C{factory.startConnecting(endpoint)} and send commands
    through C{factory.handler}.

    One connection, not a pool: Redis runs one command at a time anyway,
    txredisapi pipelines on the connection, and commands run in the order
    they were sent, so one client's publishes get seqs in its order (over a
    pool of two, consecutive publishes could swap).
    """
    factory = _CommandFactory(name, db, 1, isLazy=True, password=password, convertNumbers=False, username=username)
    return factory


class RedisConnections(Service):
    """
    The Redis engine's two connections while the daemon runs: one for
    commands (the scripts) and one for pub/sub; both reconnect
    with backoff by themselves (txredisapi).
    """

    def __init__(self, broker: RedisBroker, address: RedisAddress, reactor: Any, beat_interval: float = 25.0) -> None:
        self.broker = broker
        self.address = address
        self.reactor = reactor
        self.beat_interval = beat_interval
        self.commands: Any = None
        self.pubsub: Any = None
        self._endpoint: Any = None
        self._beat: Optional[Any] = None

    def startService(self) -> None:
        super().startService()
        address = self.address
        factory = command_factory(str(address), address.db, address.password, address.username)
        # One endpoint for both connections: with Sentinel, one set of
        # connections to the Sentinels asks for the master.
        self._endpoint = address.endpoint(self.reactor)
        # Back on the command connection: set presence straight at once
        # (leaves that could not be sent, members Redis lost when it
        # restarted empty) rather than at the next beat, and beat.
        factory.on_ready = lambda conn: self._reconnected() if self.running else None
        factory.startConnecting(self._endpoint)
        self.commands = factory.handler
        self._command_factory = factory
        self.broker.store.redis = self.commands
        # Commands fail at once while this connection is down.
        self.broker.store.connected = lambda: factory.size > 0
        self.pubsub = pubsub_factory(self.broker)
        self.pubsub.password = address.password
        self.pubsub.username = address.username
        self.pubsub.dbid = address.db
        self.pubsub.startConnecting(self._endpoint)
        if self.broker.shared_presence is not None:
            # This process's presence heartbeat, and the sweep of the dead.
            from twisted.internet.task import LoopingCall

            self._beat = LoopingCall(self._beat_once)
            self._beat.clock = self.reactor
            # The first beat is the command connection's: on_ready above.
            self._beat.start(self.beat_interval, now=False)

    def _reconnected(self) -> None:
        """
        The command connection is up (again): set presence straight -
        what changed while it was away - then beat.
        """
        if self.broker.shared_presence is None:
            return
        self.broker.reconcile().addErrback(
            lambda f: log.warn("presence: setting it straight after a reconnect failed: {why}", why=f.getErrorMessage())
        )
        self._beat_once()

    def _beat_once(self) -> None:
        """
        This process's presence heartbeat: beat (and sweep the dead),
        register its members again if Redis had lost them, and keep its
        channels' keys alive.
        """
        presence = self.broker.shared_presence
        if presence is None:
            return

        def beaten(missing: bool) -> Any:
            if missing:
                self.broker.rejoin()
            return presence.refresh(self.broker.local_channels())

        presence.beat().addCallback(beaten).addErrback(
            lambda f: log.warn("presence heartbeat failed: {why}", why=f.getErrorMessage())
        )

    def stopService(self) -> Any:
        """
        Leave Redis: this process's members that are still registered
        (the drain's leaves are sent already, on the same connection,
        before this) leave now, announced once, rather than when the others
        sweep it after the presence bound; then the connections close.
        Closing at once failed the drain's leaves in flight.
        """
        super().stopService()
        if self._beat is not None and self._beat.running:
            self._beat.stop()
        presence = self.broker.shared_presence
        leaving: defer.Deferred[Any] = defer.succeed(None)
        if presence is not None and self.broker.store.connected():
            leaving = presence.leave_all()
            leaving.addErrback(lambda f: log.info("leaving presence on the way out failed: {why}", why=f.getErrorMessage()))

        def close(_: Any) -> "defer.Deferred[Any]":
            closing = [defer.maybeDeferred(f.disconnect) for f in (self._command_factory, self.pubsub) if f is not None]
            if isinstance(self._endpoint, SentinelMasterEndpoint):
                closing.append(defer.maybeDeferred(self._endpoint.disconnect))
            return defer.gatherResults(closing, consumeErrors=True)

        return leaving.addCallback(close)
