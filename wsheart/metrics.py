"""
Prometheus metrics of one wsheart process, through prometheus_client.

Each L{ServerMetrics} or L{ClientMetrics} has its own registry (tests and
embedding applications can build as many as they like); C{/metrics} on the
admin endpoint exposes the server's.  Names follow Prometheus conventions:
the C{wsheart_} prefix, units in the names, C{_total} on counters.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any, Callable, Iterator, Optional, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.utils import floatToGoString

# Round-trip times: 1 ms on a LAN to many seconds on a congested phone.
RTT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# Time from a peer's last sign of life to its death (bounded by the
# heartbeat settings: 60 s with the defaults).
DETECT_BUCKETS = (1, 2, 5, 10, 20, 30, 45, 60, 90, 120, 300)
# Commands to the channels' engine (Redis): well under a millisecond on a
# LAN, up to the command timeout (2 s by default) when it is slow.
ENGINE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
# Reconnect delays chosen by the backoff schedule.
DELAY_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class HeartbeatTally:
    """
    The per-ping and per-pong figures as plain integers.

    They change on every heartbeat of every connection - 10,000 times a
    second with 10,000 connections at a 1 s interval - and a
    prometheus_client C{Counter.inc} or C{Histogram.observe} takes a lock
    each time (about 0.6 and 1.3 us here, 5% of a heartbeat round).  The
    daemon is single-threaded, so plain attributes suffice; L{_TallyCollector}
    turns them into the same counters and histogram at scrape time.

    @ivar rtt_counts: non-cumulative counts per bucket of L{RTT_BUCKETS},
        the last one for +Inf.
    """

    __slots__ = ("pings_sent", "pongs_received", "rtt_counts", "rtt_sum")

    def __init__(self) -> None:
        self.pings_sent = 0
        self.pongs_received = 0
        self.rtt_counts = [0] * (len(RTT_BUCKETS) + 1)
        self.rtt_sum = 0.0

    def pong(self, rtt: float) -> None:
        """
        A pong answered the ping in flight after C{rtt} seconds.
        """
        self.pongs_received += 1
        # bisect_left: a value equal to a bound belongs to that bucket (le).
        self.rtt_counts[bisect_left(RTT_BUCKETS, rtt)] += 1
        self.rtt_sum += rtt


class _TallyCollector:
    """
    Expose a L{HeartbeatTally} in Prometheus form.
    """

    def __init__(self, tally: HeartbeatTally) -> None:
        self.tally = tally

    def collect(self) -> Iterator[Metric]:
        tally = self.tally
        pings = CounterMetricFamily("wsheart_heartbeat_pings_sent", "Heartbeat ping frames sent.")
        pings.add_metric([], tally.pings_sent)
        yield pings
        pongs = CounterMetricFamily(
            "wsheart_heartbeat_pongs_received", "Pongs that answered the ping in flight."
        )
        pongs.add_metric([], tally.pongs_received)
        yield pongs
        cumulative = 0
        buckets = []
        for bound, count in zip([*map(float, RTT_BUCKETS), float("inf")], tally.rtt_counts):
            cumulative += count
            buckets.append((floatToGoString(bound), cumulative))
        yield HistogramMetricFamily(
            "wsheart_heartbeat_rtt_seconds",
            "Heartbeat round-trip time.",
            buckets=buckets,
            sum_value=tally.rtt_sum,
        )


class ChannelFigures(Protocol):
    """
    What the channel metrics read from a broker at scrape time.
    """

    published_total: int
    delivered_total: int
    gaps_told_total: int

    def engine_up(self) -> bool: ...


class _ChannelCollector:
    """
    Expose a broker's plain counters (bumped per message per subscriber:
    no lock on that path) in Prometheus form.
    """

    def __init__(self, channels: ChannelFigures) -> None:
        self.channels = channels

    def collect(self) -> Iterator[Metric]:
        channels = self.channels
        for name, documentation, value in [
            ("wsheart_channel_publishes", "Messages published on channels through this process.", channels.published_total),
            ("wsheart_channel_deliveries", "Channel messages written to this process's subscribers.", channels.delivered_total),
            (
                "wsheart_channel_gaps_told",
                "Gaps in delivery no history could fill (a new epoch, trimmed history), told to subscribers.",
                channels.gaps_told_total,
            ),
        ]:
            counter = CounterMetricFamily(name, documentation)
            counter.add_metric([], value)
            yield counter
        up = GaugeMetricFamily(
            "wsheart_channel_engine_up", "1 while the channels' engine (memory, or Redis with --redis) can answer, else 0."
        )
        up.add_metric([], 1 if channels.engine_up() else 0)
        yield up


class _CadenceCollector:
    """
    Expose a L{wsheart.heartbeat.CadenceMeter}: the heartbeat cadence the
    server actually keeps.
    """

    def __init__(self, meter: Any) -> None:
        self.meter = meter

    def collect(self) -> Iterator[Metric]:
        meter = self.meter
        figures = (
            ("wsheart_heartbeat_interval_seconds", "The configured heartbeat interval (--ping-interval).", meter.interval),
            (
                "wsheart_heartbeat_effective_interval_seconds",
                "Seconds between a connection's consecutive pings, smoothed over the last thousand or so pings: above "
                "the configured interval when the process cannot keep the cadence.",
                meter.effective_interval,
            ),
            (
                "wsheart_heartbeat_lateness_seconds",
                "Seconds a ping goes out after it was due, smoothed: the reactor's lateness as the heartbeat feels it.",
                meter.lateness,
            ),
            ("wsheart_heartbeat_degraded", "1 while the effective interval is over 10% above the configured one.", int(meter.degraded)),
        )
        for name, documentation, value in figures:
            gauge = GaugeMetricFamily(name, documentation)
            gauge.add_metric([], value)
            yield gauge
        forgiven = CounterMetricFamily(
            "wsheart_heartbeat_answers_read_late",
            "Checks that found no answer but were judged alive after the reactor read its sockets: pongs that had "
            "waited unread while the process was busy (a miss without this rule).",
        )
        forgiven.add_metric([], meter.forgiven)
        yield forgiven


class ServerMetrics:
    """
    Counters and histograms of the daemon.
    """

    def __init__(self, registry: Optional[CollectorRegistry] = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.connections_open = Gauge(
            "wsheart_connections_open", "WebSocket connections open now.", registry=r
        )
        self.connections_opened = Counter(
            "wsheart_connections_opened", "WebSocket connections opened (handshake completed).", registry=r
        )
        self.connections_closed = Counter(
            "wsheart_connections_closed",
            "WebSocket connections closed, by cause (closed, dropped, dead, slow) and close code.",
            ["cause", "code"],
            registry=r,
        )
        self.heartbeat = HeartbeatTally()
        r.register(_TallyCollector(self.heartbeat))
        self.misses = Counter(
            "wsheart_heartbeat_misses", "Pings neither answered nor covered by other traffic in time.", registry=r
        )
        self.dead_peers = Counter(
            "wsheart_heartbeat_dead_peers", "Peers declared dead by the heartbeat.", registry=r
        )
        self.time_to_detect = Histogram(
            "wsheart_heartbeat_time_to_detect_seconds",
            "Time from a dead peer's last inbound traffic to its death.",
            buckets=DETECT_BUCKETS,
            registry=r,
        )
        self.handshake_failures = Counter(
            "wsheart_handshake_failures",
            "Opening handshakes that failed (bad request, timeout, too large).",
            ["reason"],
            registry=r,
        )
        self.limit_refusals = Counter(
            "wsheart_limit_refusals",
            "Connections refused by a connection limit (pending_per_address, connections_per_address, connections).",
            ["limit"],
            registry=r,
        )
        self.admission_refusals = Counter(
            "wsheart_admission_refusals",
            "Handshakes refused by admission control, by reason (rate: over --accept-rate; full: at "
            "--max-connections; address: one client address over its share of slots or arrivals) and answer "
            "(hint: accepted and closed 1013 with a retry window; 503 or 429: HTTP with Retry-After; drop: closed "
            "at accept, before TLS).",
            ["reason", "answer"],
            registry=r,
        )
        self.forwarded_for_ignored = Counter(
            "wsheart_forwarded_for_ignored",
            "X-Forwarded-For (or Forwarded) headers from a trusted proxy ignored as malformed (the TCP peer was kept).",
            registry=r,
        )
        self.accept_paused = Counter(
            "wsheart_accept_paused",
            "Times the listeners stopped accepting for a while: out of file descriptors (or memory) with none in reserve.",
            registry=r,
        )
        self.drain_dropped = Counter(
            "wsheart_drain_dropped_connections",
            "Connections dropped at the end of a drain without finishing the closing handshake.",
            registry=r,
        )

    def track_history_bytes(self, size: Callable[[], int]) -> None:
        """
        Read the channel history gauge from C{size()} at scrape time.
        """
        gauge = Gauge(
            "wsheart_channel_history_bytes",
            "UTF-8 bytes of the message frames held in channel history for recovery.",
            registry=self.registry,
        )
        gauge.set_function(size)

    def track_channels(self, channels: ChannelFigures) -> None:
        """
        Read the channel counters and the engine's state from C{channels}
        at scrape time.
        """
        self.registry.register(_ChannelCollector(channels))

    def track_engine_commands(self) -> Callable[[Optional[float]], None]:
        """
        The engine's command latency histogram and failure counter; returns
        what to call with each command's seconds, or None for a failure.
        """
        seconds = Histogram(
            "wsheart_channel_engine_command_seconds",
            "Time a command to the channels' engine (Redis) took to answer.",
            buckets=ENGINE_BUCKETS,
            registry=self.registry,
        )
        failures = Counter(
            "wsheart_channel_engine_command_failures",
            "Commands to the channels' engine that failed (timed out, connection gone, refused).",
            registry=self.registry,
        )

        def observe(took: Optional[float]) -> None:
            if took is None:
                failures.inc()
            else:
                seconds.observe(took)

        return observe

    def track_admission(self, rate: Callable[[], float], queue: Callable[[], float]) -> None:
        """
        Read the admitted rate and the length of the queue of promised
        slots (L{wsheart.access.admission}) at scrape time.
        """
        Gauge(
            "wsheart_admission_rate",
            "Opening handshakes admitted per second now (--accept-rate, ramping after a start, slowed while the reactor is late; 0: no limit).",
            registry=self.registry,
        ).set_function(rate)
        Gauge(
            "wsheart_admission_queue_seconds",
            "How far ahead the retry slots promised to refused clients reach.",
            registry=self.registry,
        ).set_function(queue)

    def track_cadence(self, meter: Any) -> None:
        """
        Read the heartbeat cadence figures from C{meter} at scrape time.
        """
        self.registry.register(_CadenceCollector(meter))

    def track_health(self, lag: Callable[[], float], limit: float, draining: Callable[[], bool]) -> None:
        """
        Read what C{/healthz} reports (L{wsheart.health}) at scrape time:
        the reactor's lag and its limit (past it C{/healthz} says lagging
        and the systemd watchdog is not fed), and whether a drain is on.
        """
        Gauge(
            "wsheart_reactor_lag_seconds",
            "How late the reactor runs its timers now (every heartbeat waits on it).",
            registry=self.registry,
        ).set_function(lag)
        Gauge(
            "wsheart_reactor_lag_limit_seconds",
            "--max-reactor-lag: past it /healthz says lagging and the systemd watchdog is withheld.",
            registry=self.registry,
        ).set(limit)
        Gauge(
            "wsheart_draining",
            "1 while the process drains its connections before exiting, else 0.",
            registry=self.registry,
        ).set_function(lambda: 1 if draining() else 0)

    def track_open_connections(self, count: Callable[[], int]) -> None:
        """
        Read the open-connection gauge from C{count()} at scrape time.
        """
        self.connections_open.set_function(count)

    def exposition(self) -> bytes:
        """
        The Prometheus text format.
        """
        return generate_latest(self.registry)


class ClientMetrics:
    """
    Metrics of reconnecting client services (any number may share one).
    """

    def __init__(self, registry: Optional[CollectorRegistry] = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.reconnect_attempts = Counter(
            "wsheart_client_connect_attempts", "Connection attempts by client services.", registry=r
        )
        self.reconnect_delay = Histogram(
            "wsheart_client_reconnect_delay_seconds",
            "Delays chosen before reconnect attempts (backoff or server hint).",
            buckets=DELAY_BUCKETS,
            registry=r,
        )
        self.opened = Counter("wsheart_client_connections_opened", "Client connections opened.", registry=r)
        self.server_deaths = Counter(
            "wsheart_client_dead_servers", "Servers declared dead by a client heartbeat.", registry=r
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
