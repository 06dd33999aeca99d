#!/usr/bin/env python3
"""
wsheart benchmark suite: wsheart against a raw Twisted+Autobahn server with
autoPing (the baseline), the Python `websockets` server and Node's `ws`.

    python3 bench/run.py --quick        # small N, 1 repeat, about 3 minutes
    python3 bench/run.py                # full: N = 2000,5000,10000, 5 repeats

The first run creates bench/.venv from bench/requirements.txt (and runs
`npm ci` in bench/ for `ws` when node is present), then re-executes itself
in that venv.  Results: bench/results/results.json (raw samples, medians,
ratios to Autobahn), bench/results/chart.png, a markdown table on stdout,
and the servers' and load generator's logs in bench/results/logs/.

Scenarios (see bench/README.md):
  s1  idle heartbeat cost: server CPU per ping/pong round and RSS per connection
  s2  dead-peer detection: freeze the load generator, time until every socket is closed
  s3  echo: 100 connections x 10 messages in flight, round trips/s and latency
  s4  burst: 2000 connections opened at once, time until every handshake completed

Every server is pinned to CPU 0, the load generator (and this script) to
CPU 1, everything on 127.0.0.1.  Every process started is stopped by its
pid (SIGTERM, then SIGKILL), also on errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import queue
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results"
LOGS = RESULTS / "logs"
CLK_TCK = os.sysconf("SC_CLK_TCK")
SERVER_CPU, CLIENT_CPU = 0, 1
BASELINE = "autobahn"
ALL_PEERS = ["wsheart", "autobahn", "websockets", "ws"]
ALL_SCENARIOS = ["s1", "s2", "s3", "s4"]

# Heartbeat settings per scenario: (interval s, timeout s, wsheart max-missed).
# S2's are chosen so that every server's dead-peer bound is 4 s:
#   wsheart    interval * max_missed + timeout = 2 * 1 + 2
#   autobahn   interval + timeout (ping after interval, drop after timeout)
#   websockets interval + timeout (same, then a close handshake of <= 1 s)
#   ws         2 * interval (a client silent for a whole tick is terminated on the next)
HEARTBEAT = {
    "s1": (1.0, 1.0, 2),
    "s2": (2.0, 2.0, 1),
    "s3": (10.0, 5.0, 2),
    "s4": (10.0, 5.0, 2),
}


def dead_bound(peer: str, interval: float, timeout: float, max_missed: int) -> float:
    if peer == "wsheart":
        return interval * max_missed + timeout
    if peer == "ws":
        return 2 * interval
    return interval + timeout


# ---------------------------------------------------------------- environment


def ensure_environment(args: argparse.Namespace, script: Optional[str] = None) -> None:
    """
    Create the bench venv from requirements.txt (re-created when that file
    changes), install `ws` with npm ci, and re-exec this script (or
    C{script}: bench/fanout.py shares the venv) in the venv.
    """
    venv = Path(args.venv).resolve()
    py = venv / "bin" / "python"
    req = BENCH / "requirements.txt"
    digest = hashlib.sha256(req.read_bytes()).hexdigest()
    stamp = venv / ".bench-requirements.sha256"
    if not py.exists() or not stamp.exists() or stamp.read_text().strip() != digest:
        print(f"[setup] creating {venv} from {req.relative_to(REPO)}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "-r", str(req)], check=True)
        stamp.write_text(digest + "\n")
    if shutil.which("node") and shutil.which("npm") and not (BENCH / "node_modules" / "ws" / "package.json").exists():
        print("[setup] npm ci (ws) in bench/", flush=True)
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=BENCH, check=True)
    if Path(sys.prefix).resolve() != venv:
        os.execv(str(py), [str(py), str(Path(script or __file__).resolve()), *sys.argv[1:]])


# ---------------------------------------------------------------- processes


def pinned(cmd: list[str], cpu: int) -> list[str]:
    """
    The command pinned to one CPU with taskset (which execs it: the pid we
    get is the pid of the command).  Without taskset, Processes.start pins
    the process right after it starts.  The RLIMIT_NOFILE that main()
    raised is inherited.
    """
    taskset = shutil.which("taskset")
    return [taskset, "-c", str(cpu), *cmd] if taskset else cmd


def loadavg() -> list[str]:
    with open("/proc/loadavg") as f:
        return f.read().split()[:3]


def stop_process(p: Optional[subprocess.Popen], grace: float = 5.0) -> None:
    """
    Stop C{p} by its pid if it still runs: SIGTERM (and SIGCONT, in case it
    is frozen), SIGKILL after C{grace} seconds.
    """
    if p is None or p.poll() is not None:
        return
    for sig in (signal.SIGTERM, signal.SIGCONT):
        try:
            os.kill(p.pid, sig)
        except ProcessLookupError:
            pass
    try:
        p.wait(grace)
    except subprocess.TimeoutExpired:
        try:
            os.kill(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait(5)


class Processes:
    """
    Every child this run started; stop_all() ends the ones still alive.
    """

    def __init__(self) -> None:
        self.live: list[subprocess.Popen] = []

    def start(self, cmd: list[str], cpu: int, log: Path, **kw: Any) -> subprocess.Popen:
        with open(log, "ab") as logf:
            kw.setdefault("stdout", logf)
            p = subprocess.Popen(
                pinned(cmd, cpu),
                stderr=logf,
                start_new_session=True,  # Ctrl-C reaches us, and we stop them in order
                **kw,
            )
        self.live.append(p)
        if not shutil.which("taskset"):
            os.sched_setaffinity(p.pid, {cpu})
        return p

    def stop(self, p: subprocess.Popen, grace: float = 5.0) -> None:
        stop_process(p, grace)
        if p in self.live:
            self.live.remove(p)

    def stop_all(self) -> None:
        for p in reversed(list(self.live)):
            self.stop(p, grace=3.0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server did not listen on {port} within {timeout} s")


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def core_ticks(cpu: int) -> dict[str, int]:
    """Ticks of one core from /proc/stat: processes, interrupts, steal, total."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{cpu} "):
                user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in line.split()[1:9])
                return {
                    "proc": user + nice + system,
                    "irq": irq + softirq,
                    "steal": steal,
                    "total": user + nice + system + idle + iowait + irq + softirq + steal,
                }
    raise RuntimeError(f"no cpu{cpu} in /proc/stat")


def core_load(k0: dict, k1: dict, server_cpu_s: float) -> dict:
    """What else ran on the server's core during a window, in % of it."""
    total = k1["total"] - k0["total"]
    if total <= 0:
        return {}
    other = (k1["proc"] - k0["proc"]) - server_cpu_s * CLK_TCK
    return {
        "cpu0_other_procs_pct": max(0.0, 100.0 * other / total),
        "cpu0_irq_softirq_pct": 100.0 * (k1["irq"] - k0["irq"]) / total,
        "cpu0_steal_pct": 100.0 * (k1["steal"] - k0["steal"]) / total,
    }


def established(port: int) -> int:
    """Server-side ESTABLISHED TCP sockets on 127.0.0.1:port."""
    if shutil.which("ss"):
        out = subprocess.run(
            ["ss", "-Htn", "state", "established", "(", "sport", "=", f":{port}", ")"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
        return sum(1 for line in out.splitlines() if line.strip())
    want = f":{port:04X}"
    n = 0
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split()
            if parts[1].endswith(want) and parts[3] == "01":
                n += 1
    return n


def registry(admin_port: int) -> Optional[int]:
    """wsheart's registry size from its admin endpoint's /healthz."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/healthz", timeout=5) as r:
            return int(json.loads(r.read())["connections"])
    except urllib.error.HTTPError as e:  # 503 still carries the body
        return int(json.loads(e.read())["connections"])
    except (OSError, ValueError, KeyError):
        return None


# ---------------------------------------------------------------- servers and load generator


def wsheart_files(root: Path) -> list[Path]:
    """
    What wsheart runs from: its modules, its static files (the pages and
    wsheart.js, read at start-up) and the twistd plugin.
    """
    files = sorted(p for p in (root / "wsheart").rglob("*.py") if "__pycache__" not in p.parts)
    static = sorted(p for p in (root / "wsheart" / "static").glob("*") if p.is_file())
    return files + static + [root / "twisted" / "plugins" / "wsheart_plugin.py"]


def tree_digest(root: Path) -> str:
    """sha256 over wsheart's source files: which code a sample ran."""
    h = hashlib.sha256()
    for f in wsheart_files(root):
        h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def snapshot_wsheart(dest: Path) -> None:
    for f in wsheart_files(REPO):
        target = dest / f.relative_to(REPO)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, target)


class Context:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.procs = Processes()
        self.venv = Path(args.venv).resolve()
        # Where twistd finds wsheart: the checkout itself, or (default) a
        # copy of the checkout's wsheart/ and twisted/plugins/ taken when the
        # run starts, so that edits made while a long run goes on do not mix
        # two versions of wsheart in one results file.
        self.wsheart_root = REPO
        self.wsheart_tree = tree_digest(REPO)
        self.python = str(self.venv / "bin" / "python")


def server_command(ctx: Context, peer: str, port: int, hb: tuple, admin_port: int = 0) -> tuple[list[str], dict]:
    interval, timeout, max_missed = hb
    if peer == "wsheart":
        env = dict(os.environ, PYTHONPATH=str(ctx.wsheart_root))
        # As the systemd units run it: `--reactor wsheart` (wsheart.reactor),
        # unless --wsheart-reactor says otherwise ("" for twistd's default).
        reactor = ["--reactor", ctx.args.wsheart_reactor] if ctx.args.wsheart_reactor else []
        cmd = [
            str(ctx.venv / "bin" / "twistd"), *reactor, "-n", "--pidfile=", "wsheart",
            "--endpoint", f"tcp:{port}:interface=127.0.0.1",
            "--ping-interval", str(interval), "--ping-timeout", str(timeout),
            "--max-missed", str(max_missed),
        ]
        if admin_port:
            cmd += ["--admin-endpoint", f"tcp:{admin_port}:interface=127.0.0.1"]
        return cmd, {"cwd": str(ctx.wsheart_root), "env": env}
    if peer == "autobahn":
        script = BENCH / "peers" / "autobahn_server.py"
        return [ctx.python, str(script), "--port", str(port), "--ping-interval", str(interval),
                "--ping-timeout", str(timeout)], {}
    if peer == "websockets":
        script = BENCH / "peers" / "websockets_server.py"
        return [ctx.python, str(script), "--port", str(port), "--ping-interval", str(interval),
                "--ping-timeout", str(timeout)], {}
    if peer == "ws":
        script = BENCH / "peers" / "ws_server.js"
        return [shutil.which("node") or "node", str(script), "--port", str(port),
                "--ping-interval", str(interval)], {}
    raise ValueError(peer)


@contextmanager
def server(ctx: Context, peer: str, hb: tuple, tag: str, admin_port: int = 0):
    port = free_port()
    cmd, kw = server_command(ctx, peer, port, hb, admin_port)
    p = ctx.procs.start(cmd, SERVER_CPU, LOGS / f"{tag}-server.log", stdin=subprocess.DEVNULL, **kw)
    try:
        wait_port(port, p)
        if admin_port:
            wait_port(admin_port, p)
        yield p, port
    finally:
        ctx.procs.stop(p, grace=5.0)


class LoadGen:
    def __init__(self, ctx: Context, argv: list[str], tag: str) -> None:
        self.ctx = ctx
        self.p = ctx.procs.start(
            [ctx.python, str(BENCH / "loadgen.py"), *argv],
            CLIENT_CPU,
            LOGS / f"{tag}-loadgen.log",
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.p.stdout:
            try:
                self.lines.put(json.loads(line))
            except ValueError:
                pass
        self.lines.put(None)

    def expect(self, event: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(f"load generator: no {event!r} within {timeout:.0f} s")
            try:
                msg = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if msg is None:
                raise RuntimeError(f"load generator exited ({self.p.poll()}) before {event!r}")
            if msg.get("event") == event:
                return msg

    def stats(self) -> dict:
        self.p.stdin.write("stats\n")
        self.p.stdin.flush()
        return self.expect("stats", 30)

    def stop(self) -> None:
        try:
            self.p.stdin.close()
        except OSError:
            pass
        self.ctx.procs.stop(self.p, grace=5.0)


# ---------------------------------------------------------------- scenarios


def s1_idle(ctx: Context, peer: str, n: int, tag: str) -> dict:
    a = ctx.args
    hb = HEARTBEAT["s1"]
    interval = hb[0]
    with server(ctx, peer, hb, tag) as (srv, port):
        time.sleep(1.0)
        rss0 = proc_rss_kb(srv.pid)
        lg = LoadGen(ctx, ["hold", "--port", str(port), "--connections", str(n),
                           "--max-seconds", str(a.settle + a.window + 120)], tag)
        try:
            opened = lg.expect("open", 60 + n / 50)
            time.sleep(a.settle)
            open_start = established(port)
            st0 = lg.stats()
            c0, k0, t0 = proc_cpu_s(srv.pid), core_ticks(SERVER_CPU), time.monotonic()
            time.sleep(a.window)
            c1, k1, t1 = proc_cpu_s(srv.pid), core_ticks(SERVER_CPU), time.monotonic()
            st1 = lg.stats()
            rss1 = proc_rss_kb(srv.pid)
            open_end = established(port)
        finally:
            lg.stop()
    elapsed = t1 - t0
    cpu = c1 - c0
    pings = st1["pings"] - st0["pings"]
    return {
        **core_load(k0, k1, cpu),
        "cpu_us_per_round": cpu * 1e6 / (n * elapsed / interval),
        "cpu_us_per_ping": cpu * 1e6 / pings if pings else None,
        "server_cpu_pct": 100.0 * cpu / elapsed,
        "rss_kib_per_conn": (rss1 - rss0) / n,
        "rss_idle_mib": rss0 / 1024,
        "rss_loaded_mib": rss1 / 1024,
        "pings_per_conn_per_s": pings / n / elapsed,
        "open_at_start": open_start,
        "open_at_end": open_end,
        "connect_failed": opened["failed"],
        "connect_s": opened["seconds"],
        "loadgen_cpu_pct": 100.0 * (st1["cpu_s"] - st0["cpu_s"]) / max(1e-9, st1["t"] - st0["t"]),
        "window_s": elapsed,
        "interval_s": interval,
    }


def s2_dead(ctx: Context, peer: str, n: int, tag: str) -> dict:
    hb = HEARTBEAT["s2"]
    interval = hb[0]
    bound = dead_bound(peer, *hb)
    series: list[tuple[float, int]] = []
    first = last = None
    # wsheart removes a peer from its registry at the moment it declares it
    # dead, then gives it --close-timeout (1 s) to finish the closing
    # handshake before it drops TCP: /healthz shows the registry's size.
    admin_port = free_port() if peer == "wsheart" else 0
    dead_first = dead_last = None
    with server(ctx, peer, hb, tag, admin_port) as (srv, port):
        lg = LoadGen(ctx, ["hold", "--port", str(port), "--connections", str(n), "--max-seconds", "600"], tag)
        try:
            opened = lg.expect("open", 60 + n / 50)
            time.sleep(2 * interval + 1)  # every connection has had a ping and a pong
            st = lg.stats()
            before = established(port)
            os.kill(lg.p.pid, signal.SIGSTOP)
            t0 = time.monotonic()
            deadline = t0 + bound + 10.0
            registry_before = registry(admin_port) if admin_port else None
            while True:
                count = established(port)
                t = time.monotonic() - t0
                series.append((round(t, 3), count))
                if first is None and count < before:
                    first = t
                if admin_port and dead_last is None:
                    alive = registry(admin_port)
                    t_reg = time.monotonic() - t0
                    if dead_first is None and alive is not None and alive < registry_before:
                        dead_first = t_reg
                    if alive == 0:
                        dead_last = t_reg
                if count == 0:
                    last = t
                    break
                if time.monotonic() > deadline:
                    break
                time.sleep(0.05)
        finally:
            try:
                os.kill(lg.p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            lg.stop()
    limit = bound + 0.5
    within = [c for (t, c) in series if t <= limit]
    left_at_limit = within[-1] if within else before
    return {
        "bound_s": bound,
        "open_before": before,
        "pinged_before": st["pings"],
        "connect_failed": opened["failed"],
        "first_close_s": first,
        "last_close_s": last,
        "open_after_deadline": series[-1][1] if series else None,
        "all_closed_within_bound_plus_half": last is not None and last <= limit and before == n,
        "closed_pct_by_bound_plus_half": 100.0 * (before - left_at_limit) / before if before else None,
        "series": series[:: max(1, len(series) // 100)],
        "registry_first_dead_s": dead_first,
        "registry_last_dead_s": dead_last,
    }


def s3_echo(ctx: Context, peer: str, n: int, tag: str) -> dict:
    a = ctx.args
    with server(ctx, peer, HEARTBEAT["s3"], tag) as (srv, port):
        lg = LoadGen(ctx, ["echo", "--port", str(port), "--connections", str(n), "--depth", str(a.depth),
                           "--seconds", str(a.echo_seconds), "--warmup", "1"], tag)
        try:
            lg.expect("open", 60)
            lg.expect("recording", 30)
            c0, k0, t0 = proc_cpu_s(srv.pid), core_ticks(SERVER_CPU), time.monotonic()
            lg.expect("recorded", a.echo_seconds + 30)
            c1, k1, t1 = proc_cpu_s(srv.pid), core_ticks(SERVER_CPU), time.monotonic()
            done = lg.expect("done", 30)
        finally:
            lg.stop()
    return {
        "rps": done["rps"],
        "p50_ms": done["p50_ms"],
        "p99_ms": done["p99_ms"],
        "max_ms": done["max_ms"],
        "round_trips": done["round_trips"],
        "lost": done["lost"],
        "server_cpu_pct": 100.0 * (c1 - c0) / (t1 - t0),
        "loadgen_cpu_pct": done["cpu_pct"],
        **core_load(k0, k1, c1 - c0),
        "depth": a.depth,
    }


def s4_burst(ctx: Context, peer: str, n: int, tag: str) -> dict:
    with server(ctx, peer, HEARTBEAT["s4"], tag) as (srv, port):
        c0 = proc_cpu_s(srv.pid)
        lg = LoadGen(ctx, ["burst", "--port", str(port), "--connections", str(n), "--timeout", "60"], tag)
        try:
            done = lg.expect("done", 180)
            c1 = proc_cpu_s(srv.pid)
        finally:
            lg.stop()
    return {
        "all_open_s": done["seconds"] if done["open"] == n else None,
        "open": done["open"],
        "failed": done["failed"],
        "handshake_p50_s": done["handshake_p50_s"],
        "handshake_p99_s": done["handshake_p99_s"],
        "server_cpu_s": c1 - c0,
        "loadgen_cpu_s": done["cpu_s"],
    }


SCENARIO_FUNCS = {"s1": s1_idle, "s2": s2_dead, "s3": s3_echo, "s4": s4_burst}


def scenario_sizes(args: argparse.Namespace) -> dict[str, list[int]]:
    return {
        "s1": args.connections,
        "s2": [args.dead_connections],
        "s3": [args.echo_connections],
        "s4": [args.burst_connections],
    }


# ---------------------------------------------------------------- summary


# metric -> (label, format, lower is better)
HEADLINE = {
    "s1": ["cpu_us_per_round", "cpu_us_per_ping", "server_cpu_pct", "rss_kib_per_conn", "open_at_end", "loadgen_cpu_pct",
           "cpu0_other_procs_pct", "cpu0_irq_softirq_pct", "cpu0_steal_pct"],
    "s2": ["bound_s", "first_close_s", "last_close_s", "closed_pct_by_bound_plus_half", "registry_first_dead_s", "registry_last_dead_s"],
    "s3": ["rps", "p50_ms", "p99_ms", "server_cpu_pct", "loadgen_cpu_pct"],
    "s4": ["all_open_s", "handshake_p99_s", "server_cpu_s", "loadgen_cpu_s"],
}
RATIO_METRICS = {
    "s1": ["cpu_us_per_round", "cpu_us_per_ping", "rss_kib_per_conn"],
    "s2": ["first_close_s", "last_close_s"],
    "s3": ["rps", "p50_ms", "p99_ms"],
    "s4": ["all_open_s", "server_cpu_s"],
}


def median_of(values: list) -> Optional[float]:
    vals = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return statistics.median(vals) if vals else None


def summarize(samples: list[dict]) -> tuple[dict, dict]:
    medians: dict = {}
    for s in samples:
        if "error" in s:
            continue
        key = medians.setdefault(s["scenario"], {}).setdefault(str(s["n"]), {}).setdefault(s["peer"], {})
        for metric in HEADLINE[s["scenario"]]:
            key.setdefault(metric, []).append(s["metrics"].get(metric))
        if s["scenario"] == "s2":
            key.setdefault("within", []).append(s["metrics"]["all_closed_within_bound_plus_half"])
    for sc in medians.values():
        for by_peer in sc.values():
            for peer, metrics in by_peer.items():
                within = metrics.pop("within", None)
                by_peer[peer] = {m: median_of(v) for m, v in metrics.items()}
                by_peer[peer]["repeats"] = max(len(v) for v in metrics.values())
                if within is not None:
                    by_peer[peer]["all_closed_within_bound_plus_half"] = f"{sum(within)}/{len(within)}"
    ratios: dict = {}
    for sc, by_n in medians.items():
        for n, by_peer in by_n.items():
            base = by_peer.get(BASELINE)
            if not base:
                continue
            for peer, metrics in by_peer.items():
                for m in RATIO_METRICS[sc]:
                    b, v = base.get(m), metrics.get(m)
                    if b and v is not None:
                        ratios.setdefault(sc, {}).setdefault(n, {}).setdefault(peer, {})[m] = v / b
    return medians, ratios


def fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def ratio(ratios: dict, sc: str, n: str, peer: str, m: str) -> str:
    r = ratios.get(sc, {}).get(n, {}).get(peer, {}).get(m)
    return "-" if r is None else f"{r:.2f}x"


def markdown(medians: dict, ratios: dict, peers: list[str]) -> str:
    out = []

    def rows(sc: str):
        for n in sorted(medians.get(sc, {}), key=int):
            for peer in peers:
                m = medians[sc][n].get(peer)
                if m:
                    yield n, peer, m

    if "s1" in medians:
        out += ["### S1 idle heartbeat cost (interval 1 s)", "",
                "| server | N | CPU us / round | vs Autobahn | CPU us / ping seen | server CPU % | RSS KiB / conn | vs Autobahn | open at end | loadgen CPU % | CPU 0: other processes / irq+softirq / steal % |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for n, peer, m in rows("s1"):
            out.append(f"| {peer} | {n} | {fmt(m['cpu_us_per_round'])} | {ratio(ratios, 's1', n, peer, 'cpu_us_per_round')} "
                       f"| {fmt(m['cpu_us_per_ping'])} | {fmt(m['server_cpu_pct'])} | {fmt(m['rss_kib_per_conn'], 2)} "
                       f"| {ratio(ratios, 's1', n, peer, 'rss_kib_per_conn')} | {fmt(m['open_at_end'], 0)} "
                       f"| {fmt(m['loadgen_cpu_pct'])} | {fmt(m.get('cpu0_other_procs_pct'))} / "
                       f"{fmt(m.get('cpu0_irq_softirq_pct'))} / {fmt(m.get('cpu0_steal_pct'))} |")
        out.append("")
    if "s2" in medians:
        out += ["### S2 dead-peer detection (load generator frozen with SIGSTOP)", "",
                "| server | N | bound s | first close s | last close s | vs Autobahn | closed by bound+0.5 s % | all closed within bound+0.5 s | wsheart registry: first / last dead s |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for n, peer, m in rows("s2"):
            reg = "-" if m.get("registry_last_dead_s") is None else \
                f"{fmt(m['registry_first_dead_s'], 2)} / {fmt(m['registry_last_dead_s'], 2)}"
            out.append(f"| {peer} | {n} | {fmt(m['bound_s'])} | {fmt(m['first_close_s'], 2)} | {fmt(m['last_close_s'], 2)} "
                       f"| {ratio(ratios, 's2', n, peer, 'last_close_s')} | {fmt(m['closed_pct_by_bound_plus_half'])} "
                       f"| {m['all_closed_within_bound_plus_half']} | {reg} |")
        out.append("")
    if "s3" in medians:
        out += ["### S3 echo (10 messages in flight per connection)", "",
                "| server | connections | round trips / s | vs Autobahn | p50 ms | p99 ms | server CPU % | loadgen CPU % |",
                "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for n, peer, m in rows("s3"):
            out.append(f"| {peer} | {n} | {fmt(m['rps'], 0)} | {ratio(ratios, 's3', n, peer, 'rps')} | {fmt(m['p50_ms'], 2)} "
                       f"| {fmt(m['p99_ms'], 2)} | {fmt(m['server_cpu_pct'])} | {fmt(m['loadgen_cpu_pct'])} |")
        out.append("")
    if "s4" in medians:
        out += ["### S4 burst (all connections opened at once)", "",
                "| server | N | all handshakes done s | vs Autobahn | handshake p99 s | server CPU s | loadgen CPU s |",
                "|---|---:|---:|---:|---:|---:|---:|"]
        for n, peer, m in rows("s4"):
            out.append(f"| {peer} | {n} | {fmt(m['all_open_s'], 3)} | {ratio(ratios, 's4', n, peer, 'all_open_s')} "
                       f"| {fmt(m['handshake_p99_s'], 3)} | {fmt(m['server_cpu_s'], 2)} | {fmt(m['loadgen_cpu_s'], 2)} |")
        out.append("")
    return "\n".join(out)


def chart(medians: dict, peers: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"wsheart": "tab:red", "autobahn": "tab:blue", "websockets": "tab:green", "ws": "tab:orange"}
    fig, axes = plt.subplots(2, 3, figsize=(16, 9))
    fig.suptitle(title)

    def line(ax, sc, metric, ylabel, label):
        data = medians.get(sc, {})
        for peer in peers:
            pts = sorted((int(n), v[peer][metric]) for n, v in data.items() if peer in v and v[peer].get(metric) is not None)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=colors.get(peer), label=peer)
        ax.set_title(label)
        ax.set_xticks(sorted(int(n) for n in data))
        ax.set_xlabel("connections")
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)

    def bars(ax, sc, metric, ylabel, label, hline=None, marker=None):
        data = medians.get(sc, {})
        n = max(data, key=int) if data else None
        names = [p for p in peers if n and p in data[n] and data[n][p].get(metric) is not None]
        vals = [data[n][p][metric] for p in names]
        ax.bar(names, vals, color=[colors.get(p) for p in names])
        if marker:
            metric2, text = marker
            for i, p in enumerate(names):
                v2 = data[n][p].get(metric2)
                if v2 is not None:
                    ax.plot([i], [v2], "kx", markersize=10, label=text)
        for i, v in enumerate(vals):
            ax.text(i, v, f"{v:.3g}", ha="center", va="bottom", fontsize=8)
        if hline is not None:
            ax.axhline(hline, color="black", linestyle="--", linewidth=1, label=f"bound {hline:g} s")
            ax.axhline(hline + 0.5, color="grey", linestyle=":", linewidth=1, label="bound + 0.5 s")
            ax.set_ylim(0, max(vals + [hline + 0.5]) * 1.4)
            ax.legend(fontsize=8, loc="upper left", ncol=2)
        ax.set_title(f"{label} (N={n})" if n else label)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, axis="y")

    line(axes[0][0], "s1", "cpu_us_per_round", "CPU us per ping/pong round", "S1 idle: server CPU per heartbeat round")
    line(axes[0][1], "s1", "rss_kib_per_conn", "KiB per connection", "S1 idle: RSS per connection")
    bound = None
    s2 = medians.get("s2", {})
    if s2:
        bounds = {v.get("bound_s") for by in s2.values() for v in by.values()}
        bound = bounds.pop() if len(bounds) == 1 else None
    bars(axes[0][2], "s2", "last_close_s", "seconds after SIGSTOP", "S2 dead peers: last socket closed", hline=bound,
         marker=("registry_last_dead_s", "wsheart: last peer declared dead"))
    bars(axes[1][0], "s3", "rps", "round trips / s", "S3 echo throughput")
    bars(axes[1][1], "s3", "p99_ms", "ms", "S3 echo p99 latency")
    bars(axes[1][2], "s4", "all_open_s", "seconds", "S4 burst: all handshakes done")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def chart_title(meta: dict) -> str:
    return (f"wsheart bench ({meta['mode']}, {meta['args']['repeats']} repeat(s), medians) - "
            f"server on CPU 0, load generator on CPU 1")


# ---------------------------------------------------------------- main


def versions(ctx: Context) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    v: dict[str, Any] = {"python": platform.python_version(), "kernel": platform.release()}
    for pkg in ("twisted", "autobahn", "websockets", "matplotlib"):
        try:
            v[pkg] = version(pkg)
        except PackageNotFoundError:
            v[pkg] = None
    if shutil.which("node"):
        v["node"] = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
        try:
            v["ws"] = json.loads((BENCH / "node_modules" / "ws" / "package.json").read_text())["version"]
        except OSError:
            v["ws"] = None
    env = dict(os.environ, GIT_OPTIONAL_LOCKS="0")
    try:
        v["wsheart_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                                             text=True, env=env).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "wsheart", "twisted"], cwd=REPO, env=env)
        v["wsheart_uncommitted_changes"] = dirty.returncode != 0
        v["wsheart_tree"] = ctx.wsheart_tree
        v["wsheart_source"] = "snapshot of the checkout at start" if ctx.wsheart_root != REPO else "live checkout"
    except OSError:
        pass
    return v


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small N, 1 repeat, shorter windows (about 3 minutes)")
    p.add_argument("--connections", help="S1 connection counts, comma separated (quick: 1000; full: 2000,5000,10000)")
    p.add_argument("--dead-connections", type=int, help="S2 connections (quick: 2000; full: 10000)")
    p.add_argument("--echo-connections", type=int, default=100, help="S3 connections (100)")
    p.add_argument("--depth", type=int, default=10, help="S3 messages in flight per connection (10)")
    p.add_argument("--burst-connections", type=int, default=2000, help="S4 connections opened at once (2000)")
    p.add_argument("--repeats", type=int, help="interleaved repeats (quick: 1; full: 5)")
    p.add_argument("--scenarios", default=",".join(ALL_SCENARIOS), help="comma separated subset of s1,s2,s3,s4")
    p.add_argument("--peers", default=",".join(ALL_PEERS), help="comma separated subset of " + ",".join(ALL_PEERS))
    p.add_argument("--window", type=float, help="S1 measuring window, s (quick: 10; full: 15)")
    p.add_argument("--settle", type=float, help="S1 wait after the last connection opened, s (quick: 3; full: 5)")
    p.add_argument("--echo-seconds", type=float, help="S3 measured window, s (quick: 5; full: 10)")
    p.add_argument("--wsheart-reactor", default="wsheart",
                   help="twistd --reactor for wsheart (wsheart: as the systemd units; '' for twistd's default)")
    p.add_argument("--venv", default=str(BENCH / ".venv"), help="the bench's own virtualenv (created if missing)")
    p.add_argument("--output", default=str(RESULTS), help="results directory (bench/results)")
    p.add_argument("--live-checkout", action="store_true",
                   help="run wsheart from the checkout itself, not from a copy taken at start")
    p.add_argument("--replot", action="store_true",
                   help="only redraw chart.png and results.md from the results.json in --output")
    p.add_argument("--no-setup", action="store_true", help="do not create the venv or re-exec; run with this python")
    a = p.parse_args()
    q = a.quick
    a.connections = [int(x) for x in (a.connections or ("1000" if q else "2000,5000,10000")).split(",")]
    a.dead_connections = a.dead_connections or (2000 if q else 10000)
    a.repeats = a.repeats or (1 if q else 5)
    a.window = a.window or (10.0 if q else 15.0)
    a.settle = a.settle or (3.0 if q else 5.0)
    a.echo_seconds = a.echo_seconds or (5.0 if q else 10.0)
    a.scenarios = [s.strip() for s in a.scenarios.split(",") if s.strip()]
    a.peers = [s.strip() for s in a.peers.split(",") if s.strip()]
    for s in a.scenarios:
        if s not in ALL_SCENARIOS:
            p.error(f"unknown scenario {s}")
    for s in a.peers:
        if s not in ALL_PEERS:
            p.error(f"unknown peer {s}")
    return a


def main() -> int:
    args = parse_args()
    if not args.no_setup:
        ensure_environment(args)
    global RESULTS, LOGS
    RESULTS = Path(args.output).resolve()
    LOGS = RESULTS / "logs"
    if args.replot:
        doc = json.loads((RESULTS / "results.json").read_text())
        peers = doc["meta"]["args"]["peers"]
        table = markdown(doc["medians"], doc["ratios_vs_autobahn"], peers)
        chart(doc["medians"], peers, RESULTS / "chart.png", chart_title(doc["meta"]))
        (RESULTS / "results.md").write_text(table + "\n")
        print(table)
        return 0
    if os.cpu_count() < 2:
        print("warning: fewer than 2 CPUs; server and load generator share CPU 0", file=sys.stderr)
        global CLIENT_CPU
        CLIENT_CPU = 0
    if "ws" in args.peers and not (shutil.which("node") and (BENCH / "node_modules" / "ws").exists()):
        print("node or bench/node_modules/ws missing: skipping the ws peer", file=sys.stderr)
        args.peers.remove("ws")
    os.sched_setaffinity(0, {CLIENT_CPU})
    # Raised here, inherited by every server and load generator started.
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    need = max(args.connections + [args.dead_connections, args.burst_connections]) + 100
    if hard < need:
        print(f"RLIMIT_NOFILE hard limit {hard} < {need}: lower the connection counts", file=sys.stderr)
        return 2
    if BASELINE not in args.peers:
        print("note: autobahn is not among the peers, so there will be no ratios", file=sys.stderr)

    RESULTS.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(LOGS, ignore_errors=True)
    LOGS.mkdir(parents=True)
    ctx = Context(args)
    snapshot_dir = None
    if not args.live_checkout:
        import tempfile

        snapshot_dir = Path(tempfile.mkdtemp(prefix="wsheart-bench-"))
        snapshot_wsheart(snapshot_dir)
        ctx.wsheart_root = snapshot_dir
        ctx.wsheart_tree = tree_digest(snapshot_dir)

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)

    sizes = scenario_sizes(args)
    runs = []
    for rep in range(args.repeats):
        for sc in args.scenarios:
            for n in sizes[sc]:
                # Interleaved: every repeat runs every server once, starting
                # from a different one each time.
                k = rep % len(args.peers)
                for peer in args.peers[k:] + args.peers[:k]:
                    runs.append((rep, sc, n, peer))
    meta = {
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "args": {k: v for k, v in vars(args).items() if k not in ("venv", "output")},
        "heartbeat": {k: {"interval_s": v[0], "timeout_s": v[1], "wsheart_max_missed": v[2]} for k, v in HEARTBEAT.items()},
        "machine": {"cpus": os.cpu_count(), "server_cpu": SERVER_CPU, "client_cpu": CLIENT_CPU,
                    "loadavg_at_start": loadavg()},
        "versions": versions(ctx),
    }
    samples: list[dict] = []
    out_json = RESULTS / "results.json"
    t_start = time.monotonic()

    def save(final: bool) -> tuple[dict, dict]:
        medians, ratios = summarize(samples)
        meta["elapsed_s"] = round(time.monotonic() - t_start, 1)
        meta["complete"] = final
        meta["loadavg_at_end"] = loadavg()
        doc = {"meta": meta, "medians": medians, "ratios_vs_autobahn": ratios, "samples": samples}
        tmp = out_json.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        tmp.replace(out_json)
        return medians, ratios

    complete = False
    try:
        for i, (rep, sc, n, peer) in enumerate(runs, 1):
            tag = f"{sc}-{peer}-n{n}-r{rep + 1}"
            print(f"[{i}/{len(runs)}] {tag} ...", end=" ", flush=True)
            t0 = time.monotonic()
            sample = {"scenario": sc, "peer": peer, "n": n, "repeat": rep + 1,
                      "loadavg": loadavg()[0]}
            if peer == "wsheart":
                sample["wsheart_tree"] = tree_digest(ctx.wsheart_root)
            try:
                sample["metrics"] = SCENARIO_FUNCS[sc](ctx, peer, n, tag)
                brief = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in sample["metrics"].items()
                         if k in HEADLINE[sc]}
                print(f"{time.monotonic() - t0:.0f} s {brief}", flush=True)
            except KeyboardInterrupt:
                raise
            except Exception as e:
                sample["error"] = f"{type(e).__name__}: {e}"
                print(f"FAILED: {sample['error']}", flush=True)
            finally:
                ctx.procs.stop_all()
            sample["seconds"] = round(time.monotonic() - t0, 1)
            samples.append(sample)
            save(False)
        complete = True
    except KeyboardInterrupt:
        print("\ninterrupted: stopping every process started, keeping partial results", file=sys.stderr)
    finally:
        ctx.procs.stop_all()
        if snapshot_dir is not None:
            shutil.rmtree(snapshot_dir, ignore_errors=True)
    trees = sorted({s["wsheart_tree"] for s in samples if "wsheart_tree" in s})
    meta["wsheart_trees_measured"] = trees
    if len(trees) > 1:
        print(f"WARNING: wsheart's source changed during the run ({trees}); see samples[].wsheart_tree",
              file=sys.stderr)
    medians, ratios = save(complete)
    table = markdown(medians, ratios, args.peers)
    try:
        chart(medians, args.peers, RESULTS / "chart.png", chart_title(meta))
    except Exception as e:  # the numbers matter more than the picture
        print(f"chart failed: {type(e).__name__}: {e}", file=sys.stderr)
    (RESULTS / "results.md").write_text(table + "\n")
    print()
    print(table)
    print(f"results: {out_json}  chart: {RESULTS / 'chart.png'}  ({meta['elapsed_s']:.0f} s)")
    return 0 if complete and not any("error" in s for s in samples) else 1


if __name__ == "__main__":
    sys.exit(main())
