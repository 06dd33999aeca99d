"""
Unit tests for wsheart.admin's resources, rendered in memory.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial import unittest
from twisted.web.test.requesthelper import DummyRequest

from wsheart.admin import admin_site
from wsheart.health import Health, LagMonitor
from wsheart.hub import Hub
from wsheart.metrics import ServerMetrics


class FakeHeartbeat:
    last_seen = 8.0
    last_rtt = 0.012
    smoothed_rtt = 0.010
    misses = 1


def render(site: Any, path: bytes, args: Any = None) -> tuple[int, dict[bytes, list[bytes]], bytes]:
    request = DummyRequest(path.strip(b"/").split(b"/"))
    request.args = args or {}
    resource = site.getResourceFor(request)
    body = resource.render(request)
    return request.responseCode or 200, dict(request.responseHeaders.getAllRawHeaders()), body


class AdminResourceTests(unittest.TestCase):
    """
    /healthz, /connections and /metrics.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.hub = Hub(self.clock, node="n1")
        self.lag = LagMonitor(self.clock, period=0.5, threshold=2.0)
        self.health = Health(self.lag)
        self.metrics = ServerMetrics()
        self.metrics.track_open_connections(self.hub.__len__)
        self.site = admin_site(self.hub, self.health, self.metrics, self.clock)

    def test_healthz_states(self) -> None:
        """
        200 while serving; 503 while draining or lagging, with the state.
        """
        status, headers, body = render(self.site, b"/healthz")
        self.assertEqual((status, json.loads(body)["status"]), (200, "serving"))
        self.assertEqual((json.loads(body)["node"], json.loads(body)["pid"]), ("n1", os.getpid()), "which process answers")
        self.assertEqual(headers[b"Content-Type"], [b"application/json"])
        self.health.draining = True
        status, _, body = render(self.site, b"/healthz")
        self.assertEqual((status, json.loads(body)["status"]), (503, "draining"))
        self.health.draining = False
        self.lag.start()
        self.clock.rightNow += 5  # the reactor stalls
        status, _, body = render(self.site, b"/healthz")
        self.assertEqual((status, json.loads(body)["status"]), (503, "lagging"))
        self.lag.stop()

    def test_connections(self) -> None:
        """
        Each open connection with its age, idleness, RTTs and misses.
        """
        self.clock.advance(5)
        self.hub.add("c1", "tcp4:127.0.0.1:5000", object(), FakeHeartbeat())
        self.clock.advance(5)
        status, _, body = render(self.site, b"/connections")
        (row,) = json.loads(body)
        self.assertEqual(status, 200)
        self.assertEqual(
            row,
            {
                "id": "c1",
                "node": "n1",
                "peer": "tcp4:127.0.0.1:5000",
                "age_seconds": 5.0,
                "idle_seconds": 2.0,
                "last_rtt_seconds": 0.012,
                "smoothed_rtt_seconds": 0.01,
                "misses": 1,
                "state": "missing pongs",
            },
        )

    def test_metrics(self) -> None:
        """
        Prometheus text with the open-connection gauge read at scrape time.
        """
        self.hub.add("c1", "p", object())
        self.metrics.heartbeat.pings_sent = 3
        self.metrics.heartbeat.pong(0.001)
        self.metrics.heartbeat.pong(0.002)
        self.metrics.heartbeat.pong(20.0)
        status, headers, body = render(self.site, b"/metrics")
        self.assertEqual(status, 200)
        self.assertTrue(headers[b"Content-Type"][0].startswith(b"text/plain"))
        self.assertIn(b"wsheart_connections_open 1.0", body)
        self.assertIn(b"wsheart_heartbeat_pings_sent_total 3.0", body)
        self.assertIn(b"wsheart_heartbeat_pongs_received_total 3.0", body)
        # Cumulative buckets; a value equal to a bound counts in that bucket.
        self.assertIn(b'wsheart_heartbeat_rtt_seconds_bucket{le="0.001"} 1.0', body)
        self.assertIn(b'wsheart_heartbeat_rtt_seconds_bucket{le="0.005"} 2.0', body)
        self.assertIn(b'wsheart_heartbeat_rtt_seconds_bucket{le="10.0"} 2.0', body)
        self.assertIn(b'wsheart_heartbeat_rtt_seconds_bucket{le="+Inf"} 3.0', body)
        self.assertIn(b"wsheart_heartbeat_rtt_seconds_count 3.0", body)
        self.assertIn(b"wsheart_heartbeat_rtt_seconds_sum 20.003", body)

    def test_connections_limit(self) -> None:
        """
        C{?limit=N} returns the first N rows; a bad limit is a 400 with a reason.
        """
        for i in range(5):
            self.hub.add(f"c{i}", "p", object())
        status, _, body = render(self.site, b"/connections", {b"limit": [b"2"]})
        self.assertEqual((status, [row["id"] for row in json.loads(body)]), (200, ["c0", "c1"]))
        status, _, body = render(self.site, b"/connections", {b"limit": [b"-1"]})
        self.assertEqual(status, 400)
        self.assertIn("limit", json.loads(body)["error"])

    def test_status_page(self) -> None:
        """
        /status is HTML that loads only its own script and style, served here.
        """
        status, headers, body = render(self.site, b"/status")
        self.assertEqual(status, 200)
        self.assertEqual(headers[b"Content-Type"], [b"text/html; charset=utf-8"])
        self.assertIn(b"script-src 'self'", headers[b"Content-Security-Policy"][0])
        self.assertIn(b'src="/status.js"', body)
        for path, kind in [(b"/status.js", b"text/javascript"), (b"/pages.css", b"text/css")]:
            status, headers, asset = render(self.site, path)
            self.assertEqual(status, 200)
            self.assertTrue(headers[b"Content-Type"][0].startswith(kind), path)
            self.assertTrue(asset)


class HeartbeatCadenceTests(unittest.TestCase):
    """
    A server that cannot keep its heartbeat cadence says so: /healthz,
    /metrics and the systemd STATUS line.
    """

    def test_degraded_cadence_everywhere(self) -> None:
        """
        With the meter degraded (pings every 1.6 s instead of 1 s, 0.4 s
        late), /healthz carries the figures (and stays 200: a stretched
        cadence is not an outage), /metrics the gauges and the counter of
        answers read late, and the service's status line the reason.
        """
        from wsheart.heartbeat import CadenceMeter, HeartbeatSettings
        from wsheart.tap import Options, makeService
        from twisted.internet.testing import MemoryReactorClock

        options = Options()
        options.parseOptions(["--ping-interval", "1", "--ping-timeout", "0.5"])
        service = makeService(options, reactor=MemoryReactorClock())
        meter: CadenceMeter = service.factory.cadence
        meter.alpha = 1.0
        with capturedLogs() as events:
            meter.pinged(0.4, 1.6)
        meter.forgiven = 7
        self.assertTrue(meter.degraded)
        self.assertEqual(len(events), 1)
        self.assertIn("heartbeat cadence degraded: pinging every 1.60 s instead of 1 s", formatEvent(events[0]))
        site = admin_site(service.hub, service.health, service.factory.metrics, Clock())
        status, _, body = render(site, b"/healthz")
        self.assertEqual(status, 200)
        self.assertEqual(
            json.loads(body)["heartbeat"],
            {"interval_seconds": 1.0, "effective_interval_seconds": 1.6, "lateness_seconds": 0.4, "degraded": True},
        )
        exposition = service.factory.metrics.exposition().decode()
        for line in (
            "wsheart_heartbeat_interval_seconds 1.0",
            "wsheart_heartbeat_effective_interval_seconds 1.6",
            "wsheart_heartbeat_lateness_seconds 0.4",
            "wsheart_heartbeat_degraded 1.0",
            "wsheart_heartbeat_answers_read_late_total 7.0",
        ):
            self.assertIn(line, exposition)
        self.assertIn("heartbeat every 1.6 s, not 1 s", service.status())
        with capturedLogs() as events:
            meter.pinged(0.0, 1.0)
        self.assertNotIn("heartbeat every", service.status())
        self.assertIn("heartbeat cadence restored", formatEvent(events[0]))
        self.assertEqual(HeartbeatSettings(1, 0.5).interval, meter.interval)
