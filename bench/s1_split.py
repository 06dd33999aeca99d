"""
S1 A/B: the CPU of one idle heartbeat round, split into user and system
time, for several wsheart checkouts (and Node ws) side by side, in
interleaved repeats - what tells a change to the heartbeat's Python from the
kernel's share, which no Python change moves.

Each run starts one server on CPU 0 (wsheart from --tree, on --reactor if
given, at 1 s / 1 s / 2; or bench/peers/ws_server.js at 1 s), opens N
connections with `bench/loadgen.py hold` on CPU 1, waits 4 s, and reads the
server's utime and stime from /proc over --window seconds; with --pyspy it
also records a py-spy profile (raw, collapsed stacks) of that window.

    flock /tmp/wsheart-bench.lock bench/.venv/bin/python bench/s1_split.py \\
        --run before=/path/to/old/checkout --run after=. --run reactor=.:wsheart \\
        --ws --repeats 4 --window 20

Loopback only; every process is started in its own session and stopped by
its pid.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
VENV = BENCH / ".venv"
sys.path.insert(0, str(BENCH))
from run import CLIENT_CPU, SERVER_CPU, free_port, pinned, stop_process, wait_port  # noqa: E402


def cpu_ticks(pid: int) -> tuple[int, int]:
    """utime and stime of a process, in clock ticks (run.proc_cpu_s sums them)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


def measure(label: str, tree: str | None, reactor: str, n: int, window: float, pyspy: str | None) -> dict:
    port = free_port()
    if tree is None:
        cmd = ["node", str(BENCH / "peers" / "ws_server.js"), "--port", str(port), "--ping-interval", "1"]
        kwargs: dict = {"cwd": str(BENCH)}
    else:
        cmd = [str(VENV / "bin" / "twistd"), *(["--reactor", reactor] if reactor else []), "-n", "--pidfile=",
               "wsheart", "--endpoint", f"tcp:{port}:interface=127.0.0.1",
               "--ping-interval", "1", "--ping-timeout", "1", "--max-missed", "2"]  # fmt: skip
        kwargs = {"cwd": tree, "env": dict(os.environ, PYTHONPATH=tree)}
    server = subprocess.Popen(pinned(cmd, SERVER_CPU), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True, **kwargs)  # fmt: skip
    loadgen = None
    try:
        wait_port(port, server)
        loadgen = subprocess.Popen(
            pinned([str(VENV / "bin" / "python"), str(BENCH / "loadgen.py"), "hold",
                    "--port", str(port), "--connections", str(n), "--max-seconds", str(int(window) + 120)], CLIENT_CPU),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            start_new_session=True,
        )  # fmt: skip
        assert loadgen.stdout is not None
        deadline = time.monotonic() + 60 + n / 50
        while True:
            if time.monotonic() > deadline:
                raise SystemExit("the connections did not open in time")
            line = loadgen.stdout.readline()
            if not line:
                raise SystemExit("the load generator ended early")
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") == "open":
                break
        time.sleep(4.0)
        u0, s0 = cpu_ticks(server.pid)
        t0 = time.monotonic()
        spy = None
        if pyspy:
            spy = subprocess.Popen([str(VENV / "bin" / "py-spy"), "record", "--nonblocking", "-r", "200",
                                    "-d", str(int(window)), "-f", "raw", "-o", pyspy, "-p", str(server.pid)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        time.sleep(window)
        u1, s1 = cpu_ticks(server.pid)
        t1 = time.monotonic()
        if spy is not None:
            spy.wait(60)
    finally:
        stop_process(loadgen)
        stop_process(server)
    hz = os.sysconf("SC_CLK_TCK")
    rounds = n * (t1 - t0)  # one ping and its pong per connection per second
    user, system = (u1 - u0) / hz / rounds * 1e6, (s1 - s0) / hz / rounds * 1e6
    return {"label": label, "user_us": user, "system_us": system, "total_us": user + system}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", action="append", default=[], metavar="LABEL=TREE[:REACTOR]",
                   help="a wsheart checkout to measure (repeatable), optionally on twistd --reactor REACTOR")  # fmt: skip
    p.add_argument("--ws", action="store_true", help="also Node ws (bench/peers/ws_server.js)")
    p.add_argument("-n", "--connections", type=int, default=2000)
    p.add_argument("--window", type=float, default=20.0)
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--pyspy", metavar="DIR", help="write a py-spy raw profile per wsheart run here")
    args = p.parse_args()
    runs: list[tuple[str, str | None, str]] = []
    for spec in args.run:
        label, _, rest = spec.partition("=")
        tree, _, reactor = rest.partition(":")
        runs.append((label, str(Path(tree).resolve()), reactor))
    if args.ws:
        runs.append(("ws", None, ""))
    if not runs:
        p.error("nothing to measure: give --run and/or --ws")
    results: dict[str, list[dict]] = {label: [] for label, _, _ in runs}
    for repeat in range(args.repeats):
        # Interleaved, each repeat starting with another run: a slow minute
        # of the machine hits every run alike.
        order = runs[repeat % len(runs):] + runs[: repeat % len(runs)]
        for label, tree, reactor in order:
            pyspy = None
            if args.pyspy and tree is not None:
                Path(args.pyspy).mkdir(parents=True, exist_ok=True)
                pyspy = str(Path(args.pyspy) / f"{label}-{repeat + 1}.txt")
            r = measure(label, tree, reactor, args.connections, args.window, pyspy)
            results[label].append(r)
            print(f"[{repeat + 1}] {label}: user {r['user_us']:.1f} + system {r['system_us']:.1f}"
                  f" = {r['total_us']:.1f} us per round", flush=True)  # fmt: skip
    print(f"\nmedians of {args.repeats}, {args.connections} idle connections, 1 s interval (us per round):")
    for label, rs in results.items():
        med = {k: statistics.median(r[k] for r in rs) for k in ("user_us", "system_us", "total_us")}
        print(f"  {label}: user {med['user_us']:.1f}, system {med['system_us']:.1f}, total {med['total_us']:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
