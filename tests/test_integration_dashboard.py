"""
etc/grafana-dashboard.json and etc/wsheart-alerts.yml against the real
thing, so neither can rot silently: a real Prometheus (Debian's
C{prometheus}) scrapes a daemon (twistd on 127.0.0.1, channels on Redis so
every metric exists) under a short synthetic load - echoes, heartbeats, a
channel publish and its delivery, a dropped connection, a silent peer the
heartbeat declares dead, a plain HTTP request refused with 426 - and
evaluates every PromQL expression of the dashboard and of the rules; each
must evaluate without error and name only metrics the daemon exposes.
promtool checks the rules and runs their unit tests.  Fast checks of the
dashboard's shape need nothing.

With C{WSHEART_DASHBOARD_PNG=PATH} (and C{WSHEART_DASHBOARD_SECONDS}, the
load's length), the integration test also draws the dashboard's panels
over that load with bench/dashboard_png.py: how docs/dashboard.png is made.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Iterator

from twisted.trial import unittest

from .loopback import REPO, Process, RedisServer, free_port, poll_until, require_tool, twistd_command, upgrade, wait_for_port

DASHBOARD = os.path.join(REPO, "etc", "grafana-dashboard.json")
RULES = os.path.join(REPO, "etc", "wsheart-alerts.yml")
RULE_TESTS = os.path.join(REPO, "etc", "wsheart-alerts.test.yml")
# What Grafana substitutes before a query reaches Prometheus.
GRAFANA_VARIABLES = {"$__rate_interval": "15s", "$instance": ".+"}
METRIC = re.compile(r"\bwsheart_[a-z_]+\b")


def load_dashboard() -> dict[str, Any]:
    with open(DASHBOARD, encoding="utf-8") as f:
        return json.load(f)  # type: ignore[no-any-return]


def dashboard_queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    """
    (panel title, legend, PromQL as Prometheus gets it) of every target.
    """
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            yield panel["title"], target.get("legendFormat", ""), as_promql(target["expr"])


def as_promql(expr: str) -> str:
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    return expr


def rule_expressions() -> list[tuple[str, str]]:
    """
    (alert name, expression) of every rule, read without a YAML library:
    the file's own layout (an `expr:` line, or `expr: |` and an indented
    block).
    """
    rules: list[tuple[str, str]] = []
    lines = open(RULES, encoding="utf-8").read().splitlines()
    name = ""
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("- alert:"):
            name = stripped.split(":", 1)[1].strip()
        elif stripped.startswith("expr:"):
            value = stripped.split(":", 1)[1].strip()
            if value == "|":
                indent = len(line) - len(line.lstrip()) + 2
                block = []
                for follow in lines[i + 1 :]:
                    if follow.strip() and len(follow) - len(follow.lstrip()) < indent:
                        break
                    block.append(follow.strip())
                value = " ".join(b for b in block if b)
            rules.append((name, value))
    return rules


def exposed_metrics(exposition: str) -> set[str]:
    """
    Every series name a query may use: the samples' names, and each family
    a # TYPE line announces (a labelled counter has no sample until its
    first increment), histograms with their _bucket, _sum and _count.
    """
    names: set[str] = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(" ", 3)
            names.add(family)
            if kind == "histogram":
                names.update(family + suffix for suffix in ("_bucket", "_sum", "_count"))
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, 1)[0])
    return names


def http_get(url: str, timeout: float = 5) -> bytes:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=timeout) as response:
        return response.read()  # type: ignore[no-any-return]


class DashboardShapeTests(unittest.TestCase):
    def test_importable(self) -> None:
        """
        The dashboard is what Grafana's import takes as is: a uid, a schema
        version, a Prometheus data source asked for at import
        (${DS_PROMETHEUS}), panels with unique ids on the grid, each with
        at least one PromQL target on that data source.
        """
        dashboard = load_dashboard()
        self.assertEqual(dashboard["uid"], "wsheart-overview")
        self.assertGreaterEqual(dashboard["schemaVersion"], 36)
        [source] = dashboard["__inputs"]
        self.assertEqual((source["name"], source["type"], source["pluginId"]), ("DS_PROMETHEUS", "datasource", "prometheus"))
        ids = [panel["id"] for panel in dashboard["panels"]]
        self.assertEqual(len(ids), len(set(ids)))
        for panel in dashboard["panels"]:
            self.assertEqual(panel["datasource"]["uid"], "${DS_PROMETHEUS}", panel["title"])
            self.assertEqual(set(panel["gridPos"]), {"h", "w", "x", "y"})
            self.assertTrue(panel["targets"], panel["title"])
            for target in panel["targets"]:
                self.assertEqual(target["datasource"]["uid"], "${DS_PROMETHEUS}")
                self.assertRegex(target["expr"], METRIC)

    def test_panels_an_operator_needs(self) -> None:
        """
        The dashboard shows what the issue asked for: connections, opens
        and closes by cause, deaths and time to detect, RTT, reactor lag
        and watchdog, drain, channels, the engine, refusals, accept pauses.
        """
        exprs = " ".join(expr for _, _, expr in dashboard_queries(load_dashboard()))
        for metric in [
            "wsheart_connections_open", "wsheart_connections_opened_total", "wsheart_connections_closed_total",
            "wsheart_heartbeat_dead_peers_total", "wsheart_heartbeat_time_to_detect_seconds_bucket",
            "wsheart_heartbeat_rtt_seconds_bucket", "wsheart_reactor_lag_seconds", "wsheart_reactor_lag_limit_seconds",
            "wsheart_draining", "wsheart_drain_dropped_connections_total", "wsheart_channel_publishes_total",
            "wsheart_channel_deliveries_total", "wsheart_channel_engine_up", "wsheart_channel_engine_command_seconds_bucket",
            "wsheart_handshake_failures_total", "wsheart_limit_refusals_total", "wsheart_admission_refusals_total",
            "wsheart_admission_rate", "wsheart_accept_paused_total",
        ]:  # fmt: skip
            self.assertIn(metric, exprs)
        self.assertIn("by (cause)", exprs)


class AlertRuleTests(unittest.TestCase):
    def promtool(self, *argv: str) -> str:
        promtool = require_tool("promtool", "the alert rule tests need Debian's prometheus package (promtool)")
        result = subprocess.run([promtool, *argv], cwd=os.path.dirname(RULES), capture_output=True, text=True, timeout=60)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        return result.stdout + result.stderr

    def test_check_rules(self) -> None:
        """
        promtool check rules: the file is valid, with every rule found.
        """
        output = self.promtool("check", "rules", RULES)
        self.assertIn(f"SUCCESS: {len(rule_expressions())} rules found", output)

    def test_rule_unit_tests(self) -> None:
        """
        promtool test rules: each alert fires for a misbehaving instance,
        not for a well one, and not before its `for`.
        """
        output = self.promtool("test", "rules", RULE_TESTS)
        self.assertIn("SUCCESS", output)
        tested = set(re.findall(r"alertname: (\w+)", open(RULE_TESTS, encoding="utf-8").read()))
        self.assertEqual(tested, {name for name, _ in rule_expressions()})


class SyntheticLoad:
    """
    A little of everything the daemon counts, against 127.0.0.1:port.
    """

    def __init__(self, port: int, admin_port: int, token: str) -> None:
        import websockets.sync.client

        self.port, self.admin_port, self.token = port, admin_port, token
        self.connect = websockets.sync.client.connect
        self.url = f"ws://127.0.0.1:{port}/"
        self.open: list[Any] = []
        self.silent: list[socket.socket] = []

    def raw_handshake(self) -> socket.socket:
        """
        A WebSocket opened by hand, that then answers nothing.
        """
        s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        upgrade(s)
        return s

    def publish(self, text: str) -> None:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.admin_port}/publish/chat.lobby",
            data=json.dumps({"text": text}).encode(),
            headers={"Authorization": f"Bearer {self.token}"},
            method="POST",
        )
        with opener.open(request, timeout=5) as response:
            assert response.status == 200

    def start(self) -> None:
        for _ in range(4):
            self.open.append(self.connect(self.url, proxy=None, open_timeout=5))
        subscriber = self.connect(self.url, proxy=None, open_timeout=5, subprotocols=["wsheart.v1"])
        subscriber.send(json.dumps({"op": "subscribe", "channel": "chat.lobby"}))
        assert json.loads(subscriber.recv(timeout=5))["op"] == "subscribed"
        self.open.append(subscriber)

    def round(self, n: int) -> None:
        """
        One second's worth: an echo per connection, a publish, a refused
        plain HTTP request; every few rounds a dropped connection, a silent
        peer (dead after the heartbeat bound), a newcomer, a clean leaver.
        """
        for ws in self.open[:4]:
            ws.send(f"echo {n}")
            ws.recv(timeout=5)
        self.publish(f"message {n}")
        self.open[4].recv(timeout=5)  # the subscriber reads it (unread, it would be closed as slow)
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n")
            s.recv(4096)  # 426 Upgrade Required
        if n % 4 == 0:
            self.raw_handshake().close()  # no closing handshake: dropped
        if n % 6 == 0:
            self.silent.append(self.raw_handshake())
        if n % 3 == 1:
            self.open.append(self.connect(self.url, proxy=None, open_timeout=5))
        if n % 5 == 4 and len(self.open) > 6:
            self.open.pop().close()

    def stop(self) -> None:
        for ws in self.open:
            ws.close()
        for s in self.silent:
            s.close()


class DashboardAgainstPrometheusTests(unittest.TestCase):
    timeout = 300

    def start_prometheus(self, admin_port: int) -> str:
        prometheus = require_tool("prometheus", "the dashboard test needs Debian's prometheus package")
        directory = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(directory, "data"))
        config = os.path.join(directory, "prometheus.yml")
        with open(config, "w") as f:
            f.write(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                f"rule_files:\n  - {RULES}\n"
                f"scrape_configs:\n  - job_name: wsheart\n    static_configs:\n      - targets: ['127.0.0.1:{admin_port}']\n"
            )
        port = free_port()
        Process(
            self,
            [prometheus, f"--config.file={config}", f"--storage.tsdb.path={os.path.join(directory, 'data')}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for_port(port, timeout=30)
        return f"http://127.0.0.1:{port}"

    def query(self, prometheus: str, expr: str) -> list[Any]:
        url = f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            body = http_get(url)
        except urllib.error.HTTPError as e:  # 400: the expression is wrong
            body = e.read()
        answer = json.loads(body)
        self.assertEqual(answer["status"], "success", f"{expr}: {answer.get('error')}")
        return answer["data"]["result"]  # type: ignore[no-any-return]

    def test_every_query_evaluates_against_a_scraped_daemon(self) -> None:
        """
        Every expression of the dashboard and of the alert rules evaluates
        in a real Prometheus that scraped the daemon under load, names only
        metrics the daemon's /metrics exposes, and every panel shows data.
        """
        redis = RedisServer(self)
        token = "dashboard-test-token-0123456789"
        token_file = os.path.abspath(self.mktemp())
        with open(token_file, "w") as f:
            f.write(token + "\n")
        port, admin_port = free_port(), free_port()
        Process(
            self,
            twistd_command() + [
                "-n", "--pidfile=", "wsheart",
                "--endpoint", f"tcp:{port}:interface=127.0.0.1",
                "--admin-endpoint", f"tcp:{admin_port}:interface=127.0.0.1",
                "--api-token-file", token_file,
                "--redis", f"redis://127.0.0.1:{redis.port}",
                "--ping-interval", "1", "--ping-timeout", "0.5", "--max-missed", "2",
            ],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=os.path.dirname(token_file),
        )  # fmt: skip
        wait_for_port(port)
        wait_for_port(admin_port)
        prometheus = self.start_prometheus(admin_port)

        load = SyntheticLoad(port, admin_port, token)
        load.start()
        seconds = int(os.environ.get("WSHEART_DASHBOARD_SECONDS", "12"))
        started, started_at = time.monotonic(), time.time()
        for n in range(seconds):
            load.round(n)
            time.sleep(max(0.0, started + n + 1 - time.monotonic()))
        load.stop()

        exposed = exposed_metrics(http_get(f"http://127.0.0.1:{admin_port}/metrics").decode())
        # Enough scrapes for a 15 s rate, and the dead peer counted.
        poll_until(lambda: self.query(prometheus, "count_over_time(up[1m]) >= 8"), timeout=30, what="8 scrapes")
        poll_until(lambda: self.query(prometheus, "wsheart_heartbeat_dead_peers_total > 0"), timeout=30, what="a dead peer")

        queries = list(dashboard_queries(load_dashboard()))
        for title, legend, expr in queries + [(f"alert {name}", "", expr) for name, expr in rule_expressions()]:
            unknown = set(METRIC.findall(expr)) - exposed
            self.assertEqual(unknown, set(), f"{title} ({legend}) names metrics /metrics does not have: {expr}")
            self.query(prometheus, expr)
        for panel in load_dashboard()["panels"]:
            results = [self.query(prometheus, as_promql(t["expr"])) for t in panel["targets"]]
            self.assertTrue(any(results), f"panel {panel['title']!r} shows nothing")

        picture = os.environ.get("WSHEART_DASHBOARD_PNG")
        if picture:
            python = os.environ.get("WSHEART_MATPLOTLIB_PYTHON", "/usr/bin/python3")
            end = time.time()
            subprocess.run(
                [python, os.path.join(REPO, "bench", "dashboard_png.py"), prometheus, DASHBOARD, picture,
                 str(started_at - 5), str(end)],
                check=True, timeout=120,
            )  # fmt: skip
