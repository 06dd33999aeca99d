#!/usr/bin/env python3
"""
Draw the panels of etc/grafana-dashboard.json as a PNG grid, from the same
queries over a Prometheus's range API (Grafana itself is not in the package
registries here).  Needs matplotlib (bench/requirements.txt, or Debian's
python3-matplotlib); run by tests/test_integration_dashboard.py when
WSHEART_DASHBOARD_PNG is set, which is how docs/dashboard.png is made:

    WSHEART_DASHBOARD_PNG=$PWD/docs/dashboard.png WSHEART_DASHBOARD_SECONDS=60 \\
        .venv/bin/python -m twisted.trial tests.test_integration_dashboard.DashboardAgainstPrometheusTests

    dashboard_png.py PROMETHEUS_URL DASHBOARD_JSON OUT_PNG START END
"""

from __future__ import annotations

import json
import math
import sys
import urllib.parse
import urllib.request

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# What Grafana substitutes before a query reaches Prometheus.
VARIABLES = {"$__rate_interval": "15s", "$instance": ".+"}


def query_range(prometheus: str, expr: str, start: float, end: float) -> list[dict]:
    for name, value in VARIABLES.items():
        expr = expr.replace(name, value)
    url = f"{prometheus}/api/v1/query_range?" + urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": 1})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=10) as response:
        return json.load(response)["data"]["result"]


def legend(template: str, labels: dict) -> str:
    for key, value in labels.items():
        template = template.replace("{{" + key + "}}", value)
    return template


def main(prometheus: str, dashboard_path: str, out: str, start: float, end: float) -> None:
    with open(dashboard_path, encoding="utf-8") as f:
        panels = json.load(f)["panels"]
    rows = math.ceil(len(panels) / 2)
    fig, axes = plt.subplots(rows, 2, figsize=(14, 2.6 * rows), sharex=True)
    for ax, panel in zip(axes.flat, panels):
        for target in panel["targets"]:
            for series in query_range(prometheus, target["expr"], start, end):
                points = [(float(t) - start, float(v)) for t, v in series["values"] if not math.isnan(float(v))]
                if points:
                    xs, ys = zip(*points)
                    ax.plot(xs, ys, linewidth=1.2, label=legend(target.get("legendFormat", ""), series["metric"]))
        unit = panel["fieldConfig"]["defaults"].get("unit", "")
        ax.set_title(panel["title"] + {"s": " (s)", "ops": " (/s)"}.get(unit, ""), fontsize=10, loc="left")
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper left", framealpha=0.7)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("seconds", fontsize=8)
    fig.suptitle("wsheart dashboard (etc/grafana-dashboard.json) over the test's synthetic load", fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    fig.savefig(out, dpi=80)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5]))
