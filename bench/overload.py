"""
Heartbeat overload: more idle connections than one core can ping at the
configured rate, with a few frozen peers in the same run.

    flock /tmp/wsheart-bench.lock bench/.venv/bin/python bench/overload.py            # this checkout
    flock /tmp/wsheart-bench.lock bench/.venv/bin/python bench/overload.py \\
        --tree /tmp/wsheart-before --label before-9a036a4                          # another tree

wsheart (CPU 0) runs with --ping-interval 1 --ping-timeout 1 --max-missed 1
and an admin endpoint.  --connections healthy clients (bench/loadgen.py
`hold`, CPU 1, split over load generators of at most --per-loadgen each,
each from its own loopback source address) answer every ping at once.
After all of them are open, --frozen clients (one more load generator,
`hold --silent`: they open, then never answer a ping; the kernel still
ACKs) connect, and the run watches --watch seconds:

- healthy peers dropped: connections of the answering clients that the
  server closed (the clients never close one themselves), during the
  opening and during the watch, with the close codes seen;
- frozen peers closed, and when, from each one's open (the bound is
  interval x max-missed + timeout = 2 s, plus whatever lag the reactor had);
- every --sample seconds, /metrics (the heartbeat's effective interval,
  lateness, degraded, answers read late, dead peers, pings, reactor lag,
  open connections) and /healthz, as the server answered them (each
  request's own time is recorded: the admin endpoint shares the reactor).

Writes --json (default bench/results/overload.json, a list of runs keyed by
--label: a run of another label is kept) and the .md beside it.  Every
process is stopped by its pid; every wait is bounded.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import queue
import re
import resource
import subprocess
import sys
import time
import types
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Optional

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results"
sys.path.insert(0, str(BENCH))

INTERVAL, TIMEOUT, MAX_MISSED = 1.0, 1.0, 1
WANTED = (
    "wsheart_heartbeat_effective_interval_seconds",
    "wsheart_heartbeat_interval_seconds",
    "wsheart_heartbeat_lateness_seconds",
    "wsheart_heartbeat_degraded",
    "wsheart_heartbeat_answers_read_late_total",
    "wsheart_heartbeat_dead_peers_total",
    "wsheart_heartbeat_pings_sent_total",
    "wsheart_heartbeat_pongs_received_total",
    "wsheart_heartbeat_misses_total",
    "wsheart_reactor_lag_seconds",
    "wsheart_connections_open",
)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--connections", type=int, default=18000, help="healthy (answering) clients")
    p.add_argument("--frozen", type=int, default=20, help="clients that never answer a ping")
    p.add_argument("--per-loadgen", type=int, default=9000)
    p.add_argument("--watch", type=float, default=60.0, help="seconds watched after all are open")
    p.add_argument("--sample", type=float, default=2.0, help="seconds between /metrics samples")
    p.add_argument("--tree", default=str(REPO), help="the checkout wsheart runs from (PYTHONPATH)")
    p.add_argument("--label", default="now", help="this run's name in the results")
    p.add_argument("--reactor", default="", help="twistd --reactor for wsheart (e.g. wsheart, as the systemd units; default: twistd's own)")
    p.add_argument("--json", default=str(RESULTS / "overload.json"))
    p.add_argument("--venv", default=str(BENCH / ".venv"))
    return p.parse_args()


def git_commit(tree: str) -> str:
    out = subprocess.run(["git", "-C", tree, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", tree, "status", "--porcelain", "wsheart"], capture_output=True, text=True)
    return out.stdout.strip() + ("+uncommitted" if dirty.stdout.strip() else "")


def fetch(url: str, timeout: float = 8.0) -> tuple[Optional[str], float]:
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            body = r.read().decode()
    except urllib.error.HTTPError as e:  # /healthz's 503 still carries the body
        body = e.read().decode()
    except OSError as e:
        body = None
        print(f"  {url}: {type(e).__name__}: {e}", flush=True)
    return body, time.monotonic() - t0


LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def parse_metrics(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = LINE.match(line)
        if not m:
            continue
        name, labels, value = m.group(1), m.group(2) or "", m.group(3)
        if name in WANTED:
            try:
                out[name + labels] = float(value)
            except ValueError:
                pass
    return out


def drain(lg: Any) -> list[dict]:
    got = []
    while True:
        try:
            msg = lg.lines.get_nowait()
        except queue.Empty:
            return got
        if msg is not None:
            got.append(msg)


def measure(args: argparse.Namespace, run: Any) -> dict:
    procs = run.Processes()
    ctx = types.SimpleNamespace(python=str(Path(args.venv).resolve() / "bin" / "python"), procs=procs)
    run.LOGS.mkdir(parents=True, exist_ok=True)
    port, admin = run.free_port(), run.free_port()
    tree = str(Path(args.tree).resolve())
    env = dict(os.environ, PYTHONPATH=tree)
    twistd = str(Path(args.venv).resolve() / "bin" / "twistd")
    cmd = [twistd, *(["--reactor", args.reactor] if args.reactor else []), "-n", "--pidfile=", "wsheart", "--endpoint", f"tcp:{port}:interface=127.0.0.1",
           "--ping-interval", str(INTERVAL), "--ping-timeout", str(TIMEOUT), "--max-missed", str(MAX_MISSED),
           "--admin-endpoint", f"tcp:{admin}:interface=127.0.0.1"]  # fmt: skip
    base = f"http://127.0.0.1:{admin}"
    samples: list[dict] = []
    frozen_losses: list[dict] = []
    try:
        srv = procs.start(cmd, run.SERVER_CPU, run.LOGS / f"overload-{args.label}-server.log",
                          stdin=subprocess.DEVNULL, cwd=tree, env=env)  # fmt: skip
        run.wait_port(port, srv)
        run.wait_port(admin, srv)
        time.sleep(1.0)
        loadgens = []
        count = math.ceil(args.connections / args.per_loadgen)
        left = args.connections
        bound_s = 2 * args.watch + 600
        for i in range(count):
            n = min(args.per_loadgen, left)
            left -= n
            argv = ["hold", "--port", str(port), "--connections", str(n), "--concurrency", "200",
                    "--source", f"127.0.0.{i + 2}", "--max-seconds", str(bound_s), "--timeout", "60"]  # fmt: skip
            loadgens.append((n, run.LoadGen(ctx, argv, f"overload-{args.label}-{i + 1}")))
        t_open = time.monotonic()
        opened = [lg.expect("open", 300) for _, lg in loadgens]
        open_seconds = time.monotonic() - t_open
        st0 = [lg.stats() for _, lg in loadgens]
        c0 = run.proc_cpu_s(srv.pid)
        t0 = time.monotonic()
        frozen = run.LoadGen(ctx, ["hold", "--port", str(port), "--connections", str(args.frozen), "--concurrency",
                                   "0", "--silent", "--report-losses", "--source", "127.0.0.20", "--max-seconds",
                                   str(bound_s), "--timeout", "60"], f"overload-{args.label}-frozen")  # fmt: skip
        frozen_open = frozen.expect("open", 60)
        t_frozen_open = time.monotonic()
        k = 0
        while True:
            target = t0 + k * args.sample
            now = time.monotonic()
            if now - t0 > args.watch:
                break
            if target > now:
                time.sleep(target - now)
            k += 1
            t = time.monotonic() - t0
            mtext, mt = fetch(base + "/metrics")
            htext, ht = fetch(base + "/healthz")
            st = [lg.stats() for _, lg in loadgens]
            frozen_losses += [m for m in drain(frozen) if m.get("event") == "lost"]
            s = {
                "t": round(t, 2),
                "metrics": parse_metrics(mtext) if mtext else None,
                "metrics_request_s": round(mt, 3),
                "healthz_request_s": round(ht, 3),
                "healthy_lost_so_far": sum(x["lost"] - y["lost"] for x, y in zip(st, st0)),
                "healthy_open": sum(x["open"] for x in st),
                "frozen_closed_so_far": len(frozen_losses),
                "server_cpu_pct": round(100 * (run.proc_cpu_s(srv.pid) - c0) / max(1e-9, time.monotonic() - t0), 1),
            }
            try:
                s["healthz"] = json.loads(htext) if htext else None
            except ValueError:
                s["healthz"] = htext
            samples.append(s)
            m = s["metrics"] or {}
            print(f"  t={t:5.1f} eff={m.get('wsheart_heartbeat_effective_interval_seconds')} "
                  f"late={m.get('wsheart_heartbeat_lateness_seconds')} deg={m.get('wsheart_heartbeat_degraded')} "
                  f"lag={m.get('wsheart_reactor_lag_seconds')} dead={m.get('wsheart_heartbeat_dead_peers_total')} "
                  f"healthy_lost={s['healthy_lost_so_far']} frozen_closed={s['frozen_closed_so_far']} "
                  f"cpu={s['server_cpu_pct']} req={mt:.2f}s", flush=True)  # fmt: skip
        t1 = time.monotonic()
        c1 = run.proc_cpu_s(srv.pid)
        st1 = [lg.stats() for _, lg in loadgens]
        time.sleep(0.5)
        frozen_losses += [m for m in drain(frozen) if m.get("event") == "lost"]
        fst = frozen.stats()
        for _, lg in loadgens:
            lg.stop()
        frozen.stop()
    finally:
        procs.stop_all()

    during_open = sum(s["lost"] for s in st0)
    during_watch = sum(b["lost"] - a["lost"] for a, b in zip(st0, st1))
    codes: dict[str, int] = {}
    for s in st1:
        for c, n in s.get("close_codes", {}).items():
            codes[c] = codes.get(c, 0) + n
    pings = sum(b["pings"] - a["pings"] for a, b in zip(st0, st1))
    open_at_watch = sum(s["open"] for s in st0)
    after = sorted(m["after_open_s"] for m in frozen_losses)
    series = {name: [(s["t"], (s["metrics"] or {}).get(name)) for s in samples] for name in WANTED}

    def col(name: str) -> list[float]:
        return [v for _, v in series[name] if v is not None]

    eff, late, lag = col(WANTED[0]), col(WANTED[2]), col("wsheart_reactor_lag_seconds")
    return {
        "label": args.label,
        "commit": git_commit(tree),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "settings": {"interval_s": INTERVAL, "timeout_s": TIMEOUT, "max_missed": MAX_MISSED,
                     "bound_s": INTERVAL * MAX_MISSED + TIMEOUT},
        "connections": args.connections,
        "frozen": args.frozen,
        "open_seconds": round(open_seconds, 1),
        "connect_failed": [o["failed"] for o in opened],
        "healthy_open_at_watch_start": open_at_watch,
        "healthy_dropped_while_opening": during_open,
        "healthy_dropped_in_watch": during_watch,
        "healthy_close_codes": codes,
        "watch_s": round(t1 - t0, 1),
        "pings_per_healthy_connection_per_s": round(pings / max(1, open_at_watch) / (t1 - t0), 3),
        "server_cpu_pct": round(100 * (c1 - c0) / (t1 - t0), 1),
        "loadgen_cpu_pct": round(sum(100 * (b["cpu_s"] - a["cpu_s"]) / max(1e-9, b["t"] - a["t"]) for a, b in zip(st0, st1)), 1),
        "frozen_opened": frozen_open["open"],
        "frozen_opened_at_s": round(t_frozen_open - t0, 2),
        "frozen_closed": len(after),
        "frozen_still_open_at_end": fst["open"],
        "frozen_closed_after_open_s": [round(x, 2) for x in after],
        "frozen_close_codes": fst.get("close_codes", {}),
        "effective_interval_s": {"min": min(eff, default=None), "max": max(eff, default=None)},
        "lateness_s_max": max(late, default=None),
        "reactor_lag_s_max": max(lag, default=None),
        "degraded_samples": sum(1 for v in col("wsheart_heartbeat_degraded") if v),
        "samples_taken": len(samples),
        "metrics_request_s_max": max((s["metrics_request_s"] for s in samples), default=None),
        "samples": samples,
    }


def fmt(v: Any, d: int = 2) -> str:
    if v is None:
        return "-"
    return f"{v:.{d}f}" if isinstance(v, float) else str(v)


def markdown(runs: list[dict]) -> str:
    lines = [
        "`bench/overload.py`: wsheart on CPU 0 at --ping-interval 1 --ping-timeout 1 --max-missed 1 "
        "(bound 2 s), healthy clients answering every ping at once and frozen clients that never answer, "
        "in one run; watched after all healthy clients are open.",
        "",
        "| run | commit | healthy | open took s | healthy dropped while opening | healthy dropped in watch | "
        "pings / conn / s | server CPU % | frozen closed | frozen closed after open s (min / max) | "
        "effective interval s (min / max) | lateness max s | reactor lag max s | degraded samples | "
        "answers read late (end) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        last = (r["samples"][-1]["metrics"] or {}) if r["samples"] else {}
        fc = r["frozen_closed_after_open_s"]
        e = r["effective_interval_s"]
        lines.append(
            f"| {r['label']} | {r['commit']} | {r['connections']} | {r['open_seconds']} | "
            f"{r['healthy_dropped_while_opening']} | **{r['healthy_dropped_in_watch']}** of "
            f"{r['healthy_open_at_watch_start']} ({r['watch_s']} s) | {r['pings_per_healthy_connection_per_s']} | "
            f"{r['server_cpu_pct']} | {r['frozen_closed']} of {r['frozen']} | "
            f"{fmt(min(fc, default=None))} / {fmt(max(fc, default=None))} | {fmt(e['min'])} / {fmt(e['max'])} | "
            f"{fmt(r['lateness_s_max'])} | {fmt(r['reactor_lag_s_max'])} | {r['degraded_samples']} of "
            f"{r['samples_taken']} | {fmt(last.get('wsheart_heartbeat_answers_read_late_total'), 0)} |"
        )
    lines.append("")
    for r in runs:
        lines.append(f"Samples of `{r['label']}` (t s: effective interval / lateness / degraded / reactor lag / "
                     "dead peers total / healthy lost so far / /metrics request s):")
        lines.append("")
        parts = []
        for s in r["samples"]:
            m = s["metrics"] or {}
            parts.append(
                f"{s['t']:.0f}: {fmt(m.get('wsheart_heartbeat_effective_interval_seconds'))} / "
                f"{fmt(m.get('wsheart_heartbeat_lateness_seconds'))} / {fmt(m.get('wsheart_heartbeat_degraded'), 0)} / "
                f"{fmt(m.get('wsheart_reactor_lag_seconds'))} / {fmt(m.get('wsheart_heartbeat_dead_peers_total'), 0)} / "
                f"{s['healthy_lost_so_far']} / {s['metrics_request_s']}"
            )
        lines.append("; ".join(parts))
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    args = parse_args()
    import run  # bench/run.py: the venv bootstrap and shared helpers

    run.ensure_environment(argparse.Namespace(venv=args.venv), script=__file__)
    os.sched_setaffinity(0, {run.CLIENT_CPU})
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the servers inherit it
    print(f"[overload] {args.label}: {args.connections} healthy + {args.frozen} frozen, load {run.loadavg()}",
          flush=True)
    la0 = run.loadavg()
    result = measure(args, run)
    result["loadavg_before"], result["loadavg_after"] = la0, run.loadavg()
    path = Path(args.json)
    runs = json.loads(path.read_text()) if path.exists() else []
    runs = [r for r in runs if r["label"] != args.label] + [result]
    path.write_text(json.dumps(runs, indent=1) + "\n")
    md = markdown(runs)
    path.with_suffix(".md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
