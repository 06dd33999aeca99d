"""
The admin HTTP endpoint (C{--admin-endpoint}, off by default): health,
Prometheus metrics and the connection registry, for operators and their
monitoring.  It never listens on the public WebSocket endpoint; bind it to
loopback or a private interface (see README "Monitor").

  GET /healthz      200 {"status": "serving", ...}; 503 while draining or
                    when the reactor lags
  GET /metrics      Prometheus text format
  GET /connections  JSON list of open connections (C{?limit=N}: the first N)
  POST /publish/..., GET /channels/...  the channel API (wsheart.channels.api)
  GET /status       a live page of the connections and their RTT (HTML;
                    its script and style are served here too)
"""

from __future__ import annotations

import os
from typing import Any, Optional

from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from wsheart import __version__
from wsheart.channels.api import ApiTokens, BodyPolicy, BoundedRequest, install_api, json_response
from wsheart.channels.broker import Broker
from wsheart.health import Health
from wsheart.hub import Hub
from wsheart.metrics import CONTENT_TYPE, ServerMetrics
from wsheart.pages import CSS, HTML, HTML_SECURITY_HEADERS, JS, static_text


class HealthResource(Resource):
    isLeaf = True

    def __init__(self, health: Health, hub: Hub, broker: Optional[Broker] = None) -> None:
        super().__init__()
        self._health = health
        self._hub = hub
        self._broker = broker

    def render_GET(self, request: Request) -> bytes:
        state = self._health.state()
        body = {
            "status": state,
            "node": self._hub.node,
            "pid": os.getpid(),
            "connections": len(self._hub),
            "reactor_lag_seconds": round(self._health.lag.current_lag(), 4),
            "version": __version__,
        }
        heartbeat = self._health.heartbeat()
        if heartbeat is not None:
            body["heartbeat"] = heartbeat
        if self._broker is not None:
            body["channels"] = self._broker.engine_state()
        return json_response(request, 200 if state == "serving" else 503, body)


class MetricsResource(Resource):
    isLeaf = True

    def __init__(self, metrics: ServerMetrics) -> None:
        super().__init__()
        self._metrics = metrics

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE.encode("ascii"))
        return self._metrics.exposition()


class ConnectionsResource(Resource):
    isLeaf = True

    def __init__(self, hub: Hub, clock: IReactorTime) -> None:
        super().__init__()
        self._hub = hub
        self._clock = clock

    def render_GET(self, request: Request) -> bytes:
        limit = None
        if b"limit" in request.args:
            raw = request.args[b"limit"][0]
            if not raw.isdigit() or len(raw) > 18:
                return json_response(request, 400, {"error": "limit must be a non-negative integer"})
            limit = int(raw)
        now = self._clock.seconds()
        rows: list[dict[str, Any]] = []
        for snap in self._hub.snapshot():
            if limit is not None and len(rows) >= limit:
                break
            rows.append(
                {
                    "id": snap.connection_id,
                    "node": self._hub.node,
                    "peer": snap.peer,
                    "age_seconds": round(snap.age, 3),
                    "idle_seconds": None if snap.last_seen is None else round(now - snap.last_seen, 3),
                    "last_rtt_seconds": None if snap.last_rtt is None else round(snap.last_rtt, 6),
                    "smoothed_rtt_seconds": None if snap.smoothed_rtt is None else round(snap.smoothed_rtt, 6),
                    "misses": snap.misses,
                    "state": "open" if snap.misses == 0 else "missing pongs",
                }
            )
        return json_response(request, 200, rows)


class StaticResource(Resource):
    """
    One file of C{wsheart/static}, read at start-up.
    """

    isLeaf = True

    def __init__(self, name: str, content_type: str, html: bool = False) -> None:
        super().__init__()
        self._body = static_text(name).encode("utf-8")
        self._content_type = content_type.encode("ascii")
        self._html = html

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", self._content_type)
        request.setHeader(b"cache-control", b"no-cache")
        request.setHeader(b"x-content-type-options", b"nosniff")
        if self._html:
            for name, value in HTML_SECURITY_HEADERS:
                request.setHeader(name.encode("ascii"), value.encode("ascii"))
        return self._body


class _QuietSite(Site):
    """
    A Site without an access log (a scraper every 15 s is not news), and
    with the body policy its requests ask (L{BoundedRequest}).
    """

    body_policy: BodyPolicy = BodyPolicy()

    # Twisted's own signature (typed loosely by Twisted), no log line.
    def log(self, request: Request) -> None:  # type: ignore[override]
        pass


def admin_site(
    hub: Hub,
    health: Health,
    metrics: ServerMetrics,
    clock: IReactorTime,
    broker: Optional[Broker] = None,
    api_tokens: Optional[ApiTokens] = None,
) -> _QuietSite:
    """
    The admin endpoint's site; with a C{broker}, also the channel API
    (L{wsheart.channels.api}), which answers only callers with one of
    C{api_tokens} (L{None}: the API is off).
    """
    root = Resource()
    body_policy = BodyPolicy()
    if broker is not None:
        body_policy = install_api(root, broker, api_tokens, hub)
    root.putChild(b"healthz", HealthResource(health, hub, broker))
    root.putChild(b"metrics", MetricsResource(metrics))
    root.putChild(b"connections", ConnectionsResource(hub, clock))
    root.putChild(b"status", StaticResource("status.html", HTML, html=True))
    root.putChild(b"status.js", StaticResource("status.js", JS))
    root.putChild(b"pages.css", StaticResource("pages.css", CSS))
    # The site's connection timeouts run on the injected clock too.
    site = _QuietSite(root, requestFactory=BoundedRequest, reactor=clock)
    site.body_policy = body_policy
    site.displayTracebacks = False
    site.noisy = False
    return site
