"""
Idle connections on several wsheart processes behind one port: how many
this machine holds at the default heartbeat, and their RSS and CPU per
connection, process by process.

    flock /tmp/wsheart-bench.lock python3 bench/idle_cluster.py     # 36000 on 2 processes, about 3 min

The servers: --processes wsheart processes (twistd, default heartbeat:
ping every 25 s, 10 s timeout, 2 misses) on one `reuseport:` port on
127.0.0.1, each with its own admin endpoint, all on CPU 0.  The load:
enough bench/loadgen.py `hold` processes (at most --per-loadgen
connections each, under one process's 20000 descriptors) on CPU 1, each
from its own loopback source address (127.0.0.2, 127.0.0.3, ...), because
one source address has only about 28000 ephemeral ports towards one server
port.  After every connection is open and --settle seconds have passed,
each server's CPU time and RSS are read from /proc over --window seconds,
and each process's registry size from its /healthz.  Writes
bench/results/idle_cluster.json and .md.  Every process is stopped by its
pid.

Runs in bench/.venv like run.py; wsheart runs from this checkout
(PYTHONPATH), and the results record its commit.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results"
sys.path.insert(0, str(BENCH))

DEFAULT_INTERVAL = 25.0  # wsheart's --ping-interval default: one heartbeat round


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--connections", type=int, default=36000)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--per-loadgen", type=int, default=18000, help="connections per load generator process")
    p.add_argument("--settle", type=float, default=30.0, help="seconds after the last open before measuring")
    p.add_argument("--window", type=float, default=75.0, help="measured seconds (3 heartbeat rounds)")
    p.add_argument("--json", default=str(RESULTS / "idle_cluster.json"))
    p.add_argument("--venv", default=str(BENCH / ".venv"))
    return p.parse_args()


def git_commit() -> str:
    out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "wsheart"], capture_output=True, text=True)
    return out.stdout.strip() + ("+uncommitted" if dirty.stdout.strip() else "")


def measure(args: argparse.Namespace, run: Any) -> dict:
    procs = run.Processes()
    ctx = types.SimpleNamespace(python=str(Path(args.venv).resolve() / "bin" / "python"), procs=procs)
    run.LOGS.mkdir(parents=True, exist_ok=True)
    port = run.free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    twistd = str(Path(args.venv).resolve() / "bin" / "twistd")
    servers = []
    try:
        for i in range(args.processes):
            admin = run.free_port()
            cmd = [twistd, "-n", "--pidfile=", "wsheart", "--node-id", f"n{i + 1}",
                   "--endpoint", f"reuseport:{port}:interface=127.0.0.1",
                   "--admin-endpoint", f"tcp:{admin}:interface=127.0.0.1"]  # fmt: skip
            p = procs.start(cmd, run.SERVER_CPU, run.LOGS / f"idle-cluster-n{i + 1}.log",
                            stdin=subprocess.DEVNULL, cwd=str(REPO), env=env)  # fmt: skip
            run.wait_port(admin, p)
            servers.append({"name": f"n{i + 1}", "process": p, "admin": admin})
        time.sleep(2.0)  # every process listens before the first client comes
        rss0 = [run.proc_rss_kb(s["process"].pid) for s in servers]

        loadgens = []
        count = math.ceil(args.connections / args.per_loadgen)
        left = args.connections
        for i in range(count):
            n = min(args.per_loadgen, left)
            left -= n
            argv = ["hold", "--port", str(port), "--connections", str(n), "--concurrency", "200",
                    "--source", f"127.0.0.{i + 2}", "--max-seconds", str(args.settle + args.window + 600)]  # fmt: skip
            loadgens.append((n, run.LoadGen(ctx, argv, f"idle-cluster-{i + 1}")))
        t_open = time.monotonic()
        opened = [lg.expect("open", 120 + n / 50) for n, lg in loadgens]
        open_seconds = time.monotonic() - t_open
        time.sleep(args.settle)

        before = [run.registry(s["admin"]) for s in servers]
        st0 = [lg.stats() for _, lg in loadgens]
        c0, t0 = [run.proc_cpu_s(s["process"].pid) for s in servers], time.monotonic()
        time.sleep(args.window)
        c1, t1 = [run.proc_cpu_s(s["process"].pid) for s in servers], time.monotonic()
        st1 = [lg.stats() for _, lg in loadgens]
        rss1 = [run.proc_rss_kb(s["process"].pid) for s in servers]
        after = [run.registry(s["admin"]) for s in servers]
        for _, lg in loadgens:
            lg.stop()
    finally:
        procs.stop_all()

    elapsed = t1 - t0
    rounds = elapsed / DEFAULT_INTERVAL
    per_process = []
    for i, s in enumerate(servers):
        n = after[i] or 0
        cpu = c1[i] - c0[i]
        per_process.append({
            "process": s["name"],
            "connections_at_start": before[i],
            "connections_at_end": after[i],
            "rss_idle_mib": round(rss0[i] / 1024, 1),
            "rss_loaded_mib": round(rss1[i] / 1024, 1),
            "rss_kib_per_connection": round((rss1[i] - rss0[i]) / n, 2) if n else None,
            "cpu_pct": round(100 * cpu / elapsed, 2),
            "cpu_us_per_connection_per_round": round(cpu * 1e6 / (n * rounds), 2) if n else None,
        })  # fmt: skip
    total = sum(p["connections_at_end"] or 0 for p in per_process)
    pings = sum(b["pings"] - a["pings"] for a, b in zip(st0, st1))
    return {
        "commit": git_commit(),
        "date": time.strftime("%Y-%m-%d"),
        "connections_asked": args.connections,
        "processes": args.processes,
        "connections_held": total,
        "open_seconds": round(open_seconds, 1),
        "connect_failed": [o["failed"] for o in opened],
        "lost_after_open": sum(b["lost"] for b in st1),
        "open_at_loadgens_end": sum(b["open"] for b in st1),
        "pings_per_connection_per_s": round(pings / max(1, total) / elapsed, 4),
        "window_s": round(elapsed, 1),
        "rss_kib_per_connection": round(sum((r1 - r0) for r0, r1 in zip(rss0, rss1)) / max(1, total), 2),
        "cpu_pct_all_processes": round(sum(p["cpu_pct"] for p in per_process), 2),
        "cpu_us_per_connection_per_round": round(
            sum(c1[i] - c0[i] for i in range(len(servers))) * 1e6 / (max(1, total) * rounds), 2
        ),
        "loadgen_cpu_pct": round(sum(100 * (b["cpu_s"] - a["cpu_s"]) / max(1e-9, b["t"] - a["t"]) for a, b in zip(st0, st1)), 1),
        "per_process": per_process,
    }


def markdown(r: dict) -> str:
    lines = [
        f"`python3 bench/idle_cluster.py` (commit {r['commit']}, {r['date']}): {r['connections_held']} of "
        f"{r['connections_asked']} idle connections held on {r['processes']} processes behind one port, "
        f"default heartbeat (25 s), measured over {r['window_s']} s",
        "",
        "| process | connections | RSS idle MiB | RSS loaded MiB | RSS KiB / connection | CPU % | CPU us / connection / round |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for p in r["per_process"]:
        lines.append(
            f"| {p['process']} | {p['connections_at_end']} | {p['rss_idle_mib']} | {p['rss_loaded_mib']} | "
            f"{p['rss_kib_per_connection']} | {p['cpu_pct']} | {p['cpu_us_per_connection_per_round']} |"
        )
    lines.append(
        f"| all | {r['connections_held']} | | | {r['rss_kib_per_connection']} | {r['cpu_pct_all_processes']} | "
        f"{r['cpu_us_per_connection_per_round']} |"
    )
    lines += [
        "",
        f"Opened in {r['open_seconds']} s; connect failures {r['connect_failed']}; lost after open "
        f"{r['lost_after_open']}; pings per connection per second {r['pings_per_connection_per_s']} "
        f"(one per 25 s is 0.04); load generators {r['loadgen_cpu_pct']} % CPU.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    args = parse_args()
    import run  # bench/run.py: the venv bootstrap and shared helpers

    run.ensure_environment(argparse.Namespace(venv=args.venv), script=__file__)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the servers inherit it
    result = measure(args, run)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    md = markdown(result)
    Path(args.json).with_suffix(".md").write_text(md)
    print(md)
    ok = result["connections_held"] == args.connections and result["lost_after_open"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
