"""
Admission control under a returning fleet: a wsheart daemon holding 10000
wsheart clients crashes (SIGKILL) and is started again on the same port,
once with admission control (--accept-rate 500 --accept-ramp 10: "on") and
once without ("off"), from the same state, in one run.

How:
- wsheart: `twistd -n --pidfile= wsheart --endpoint
  tcp:PORT:interface=127.0.0.1:backlog=4096 --ping-interval 5
  --ping-timeout 5 --max-missed 2 --admin-endpoint tcp:PORT2:...`, pinned
  to CPU 0, RLIMIT_NOFILE raised to the hard limit.  The first server runs
  without admission control in both modes (the fleet connects at 1000/s);
  only the restarted one differs.
- the fleet: one `loadgen.py fleet` process on CPU 1 with 10000 clients that
  reconnect exactly as wsheart's clients do (see loadgen.py, "fleet mode":
  full-jitter backoff, reset after 30 s stable, 1013 hints read in-band
  through the wsheart.hints subprotocol, 503 Retry-After, 10 s connect and
  handshake timeouts), from the loopback source addresses 127.0.0.2-5.
- once every client has been open 30 s (all failure counts reset), the
  server is SIGKILLed and started again at once (same port, same flags
  but --accept-rate/--accept-ramp for "on").  Every second the run reads
  the fleet's counters, the server's /metrics and its CPU time, until all
  clients are open again and then --after more seconds (heartbeat deaths
  of just-admitted connections would show then), at most --max-return s.

What it reports per mode (bench/results/admission.json and .md):
- admitted (opened and not closed with a 1013 hint) connections per 1 s
  window from the moment the new server listens, the peak window, and for
  "on" the admitted count per window against the configured rate
  (500 * (0.1 + 0.9 * t / 10) during the 10 s ramp, 500 after), while
  clients were still waiting;
- time until all 10000 are open again (from the kill and from the listen);
- every attempt's outcome by kind: refused (nothing listening), reset (TCP
  accepted and dropped: wsheart's drop at accept), 503, 1013 hint, timeout
  (connect or handshake, 10 s);
- clients that ever tried again sooner than their own computed delay, or
  sooner than the policy's lower bound for the reason (must be 0);
- heartbeat deaths of admitted connections: the new server's
  wsheart_heartbeat_dead_peers_total, and the clients' view (admitted
  connections later closed with 1011 or dropped); refusals from
  wsheart_admission_refusals_total;
- the server's CPU seconds from listen until all are back.

Run (about 4 minutes per mode; take the lock, the machine is shared):

    flock /tmp/wsheart-bench.lock /work/main/.venv/bin/python bench/admission.py

Loopback only; every process it starts is stopped by its pid, every wait
is bounded.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import queue
import re
import resource
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from run import free_port, loadavg, proc_cpu_s, stop_process  # noqa: E402  (bench/run.py's helpers)

REPO = BENCH.parent
RESULTS = BENCH / "results"
LOGS = RESULTS / "logs"
SERVER_CPU, CLIENT_CPU = 0, 1
HEARTBEAT = ["--ping-interval", "5", "--ping-timeout", "5", "--max-missed", "2"]
SOURCES = "127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5"


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def listening(port: int) -> bool:
    """
    Whether something listens on 127.0.0.1:port, from /proc/net/tcp (not by
    connecting: a probe would be one more handshake for admission control).
    """
    local = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split()
            if parts[1] == local and parts[3] == "0A":
                return True
    return False


def metrics(admin_port: int) -> dict[str, float]:
    """
    The server's /metrics as {name{labels}: value} (samples only).
    """
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^(\S+)\s+(\S+)$", line)
        if m:
            try:
                out[m.group(1)] = float(m.group(2))
            except ValueError:
                pass
    return out


def msum(m: dict, prefix: str) -> float:
    return sum(v for k, v in m.items() if k == prefix or k.startswith(prefix + "{"))


class Procs:
    def __init__(self) -> None:
        self.live: list[subprocess.Popen] = []

    def start(self, cmd: list[str], cpu: int, log: Path, **kw: Any) -> subprocess.Popen:
        with open(log, "ab") as logf:
            kw.setdefault("stdout", logf)
            p = subprocess.Popen(["taskset", "-c", str(cpu), *cmd], stderr=logf, start_new_session=True, **kw)
        self.live.append(p)
        return p

    def kill(self, p: subprocess.Popen) -> None:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
        p.wait(10)
        if p in self.live:
            self.live.remove(p)

    def stop(self, p: subprocess.Popen, grace: float = 5.0) -> None:
        stop_process(p, grace)
        if p in self.live:
            self.live.remove(p)

    def stop_all(self) -> None:
        for p in reversed(list(self.live)):
            self.stop(p, 3.0)


class Fleet:
    def __init__(self, procs: Procs, python: str, port: int, n: int, tag: str) -> None:
        argv = [python, str(BENCH / "loadgen.py"), "fleet", "--port", str(port), "--connections", str(n),
                "--sources", SOURCES, "--start-rate", "1000", "--max-seconds", "1200"]
        self.procs = procs
        self.p = procs.start(argv, CLIENT_CPU, LOGS / f"admission-{tag}-fleet.log",
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.p.stdout:
            try:
                self.lines.put(json.loads(line))
            except ValueError:
                pass
        self.lines.put(None)

    def ask(self, cmd: str, event: str, timeout: float = 30.0) -> dict:
        self.p.stdin.write(cmd + "\n")
        self.p.stdin.flush()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                msg = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                continue
            if msg is None:
                raise RuntimeError(f"fleet exited ({self.p.poll()})")
            if msg.get("event") == event:
                return msg
        raise RuntimeError(f"fleet: no {event!r} within {timeout} s")

    def stop(self) -> None:
        try:
            self.p.stdin.close()
        except OSError:
            pass
        self.procs.stop(self.p, 10.0)


def server_cmd(python: str, port: int, admin: int, on: bool, args) -> list[str]:
    twistd = str(Path(python).parent / "twistd")
    cmd = [twistd, "-n", "--pidfile=", "wsheart",
           "--endpoint", f"tcp:{port}:interface=127.0.0.1:backlog=4096",
           "--admin-endpoint", f"tcp:{admin}:interface=127.0.0.1", *HEARTBEAT]
    if on:
        cmd += ["--accept-rate", str(args.rate), "--accept-ramp", str(args.ramp)]
    return cmd


def configured(rate: float, ramp: float, t0: float, t1: float) -> float:
    """
    Admissions the configured rate allows in [t0, t1] after the start
    (wsheart.admission: from a tenth of the rate to all of it over the ramp).
    """
    steps = 50
    total = 0.0
    for i in range(steps):
        t = t0 + (i + 0.5) * (t1 - t0) / steps
        r = rate if ramp <= 0 or t >= ramp else rate * (0.1 + 0.9 * t / ramp)
        total += r * (t1 - t0) / steps
    return total


def run_mode(mode: str, args, procs: Procs, python: str, env: dict) -> dict:
    on = mode == "on"
    n = args.clients
    port, admin = free_port(), free_port()
    log = LOGS / f"admission-{mode}-server.log"
    srv = procs.start(server_cmd(python, port, admin, False, args), SERVER_CPU, log,
                      stdin=subprocess.DEVNULL, cwd=str(REPO), env=env)
    fleet = None
    try:
        for _ in range(300):
            if listening(port) or srv.poll() is not None:
                break
            time.sleep(0.1)
        if not listening(port):
            raise RuntimeError("first server did not listen")
        fleet = Fleet(procs, python, port, n, mode)
        # Everyone open, then everyone stable (failure counts reset).
        t_wait = time.monotonic()
        st = {}
        while time.monotonic() - t_wait < 240:
            time.sleep(1)
            st = fleet.ask("stats", "stats")
            if st["stable"] >= n:
                break
        if st.get("stable", 0) < n:
            raise RuntimeError(f"fleet not stable: {st}")
        print(f"[{mode}] {n} open and stable after {time.monotonic() - t_wait:.0f} s; load {loadavg()}", flush=True)
        before = st
        load_before = loadavg()
        # The crash, and the restart on the same port.
        t_kill = time.monotonic()
        procs.kill(srv)
        srv = procs.start(server_cmd(python, port, admin, on, args), SERVER_CPU, log,
                          stdin=subprocess.DEVNULL, cwd=str(REPO), env=env)
        t_listen = None
        for _ in range(1500):
            if listening(port):
                t_listen = time.monotonic()
                break
            if srv.poll() is not None:
                raise RuntimeError("restarted server exited")
            time.sleep(0.01)
        if t_listen is None:
            raise RuntimeError("restarted server did not listen")
        cpu_listen = proc_cpu_s(srv.pid)
        # The server's side, every 0.5 s, in a thread of its own (a fleet
        # that lags must not delay these samples).
        server_samples: list[dict] = []
        stop_sampling = threading.Event()

        def sample_server() -> None:
            k = 0
            while not stop_sampling.is_set() and k < 2000:
                k += 1
                try:
                    m = metrics(admin)
                    # Stamped when the answer arrived: a busy reactor answers
                    # late, and the counts are those of that moment.
                    t = time.monotonic()
                    cpu = proc_cpu_s(srv.pid)
                except OSError:
                    m = None
                if m is not None:
                    server_samples.append({
                        "t": round(t - t_listen, 3), "server_cpu_s": round(cpu - cpu_listen, 2),
                        "opened_total": msum(m, "wsheart_connections_opened_total"),
                        "open": msum(m, "wsheart_connections_open"),
                        "refusals": msum(m, "wsheart_admission_refusals_total"),
                        "dead": msum(m, "wsheart_heartbeat_dead_peers_total"),
                        "rate_gauge": m.get("wsheart_admission_rate"),
                        "queue_s": m.get("wsheart_admission_queue_seconds"),
                    })
                stop_sampling.wait(max(0.0, 0.5 - (time.monotonic() - t_listen) % 0.5))

        sampler = threading.Thread(target=sample_server, daemon=True)
        sampler.start()
        samples = []
        t_all = None
        cpu_all = None
        end = t_listen + args.max_return
        while time.monotonic() < end:
            time.sleep(max(0.0, 1.0 - (time.monotonic() - t_listen) % 1.0))
            t_ask = time.monotonic()
            st = fleet.ask("stats", "stats")
            cpu = proc_cpu_s(srv.pid)
            samples.append({
                "t": round(time.monotonic() - t_listen, 3),
                "open": st["open"], "waiting": st["waiting"], "connecting": st["connecting"],
                "server_cpu_s": round(cpu - cpu_listen, 2), "fleet_cpu_s": st["cpu_s"],
                "fleet_lag_s": round(st["t"] - t_ask, 3),  # how late the fleet's loop read the question
            })
            if t_all is None and st["open"] >= n:
                t_all = st["last_open"]
                cpu_all = cpu - cpu_listen
                end = min(end, time.monotonic() + args.after)
                print(f"[{mode}] all {n} open {t_all - t_listen:.1f} s after listen", flush=True)
        stop_sampling.set()
        sampler.join(10)
        final_m = metrics(admin)
        load_after = loadavg()
        dump = LOGS / f"admission-{mode}-attempts.json"
        fleet.ask(f"dump {dump} {t_kill}", "dumped", 60)
        final = fleet.ask("stats", "stats")
    finally:
        if fleet is not None:
            fleet.stop()
        procs.stop(srv)
    with open(dump) as f:
        data = json.load(f)
    out = analyse(mode, args, data["attempts"], samples, final_m, final, before,
                  t_kill, t_listen, t_all, cpu_all, load_before, load_after)
    out["server_samples"] = server_samples
    # The server's own count of admitted (opened) connections per 1 s
    # window, interpolated from its 0.5 s samples of
    # wsheart_connections_opened_total.
    def opened_at(t: float) -> float:
        prev = (0.0, 0.0)
        for x in server_samples:
            if x["t"] >= t:
                t0, v0 = prev
                return v0 + (x["opened_total"] - v0) * ((t - t0) / (x["t"] - t0) if x["t"] > t0 else 1)
            prev = (x["t"], x["opened_total"])
        return prev[1]
    horizon = len(out["admitted_per_s"])
    server_windows = [round(opened_at(i + 1) - opened_at(i)) for i in range(horizon)]
    out["server_admitted_per_s"] = server_windows
    out["server_peak_admitted_per_s"] = max(server_windows) if server_windows else 0
    if "rate_windows" in out:
        for r in out["rate_windows"]:
            r["server_admitted"] = server_windows[r["t"]]
            r["server_ratio"] = round(server_windows[r["t"]] / r["configured"], 3)
        sat = [r for r in out["rate_windows"] if r["refused"] > 0]
        post = [r for r in sat if r["t"] >= args.ramp]
        ramp = [r for r in sat if r["t"] < args.ramp]
        for name, rows in (("server_saturated", sat), ("server_saturated_post_ramp", post), ("server_saturated_ramp", ramp)):
            out[name + "_vs_configured"] = (
                round(sum(r["server_admitted"] for r in rows) / sum(r["configured"] for r in rows), 3) if rows else None
            )
    return out


HINT = "close_1013_hint"


def analyse(mode, args, attempts, samples, m, final, before, t_kill, t_listen, t_all, cpu_all, load_before, load_after) -> dict:
    n = args.clients
    kinds: dict[str, int] = {}
    admitted_open_t = []
    admitted_lost: dict[str, int] = {}
    still_open = 0
    for client, t_start, t_tcp, t_open, t_end, why, delay, fb in attempts:
        if t_end is None and t_open is not None:
            still_open += 1
        kind = why if t_end is not None else ("open" if t_open is not None else "in_progress")
        kinds[kind] = kinds.get(kind, 0) + 1
        if t_open is not None and why != HINT:
            admitted_open_t.append(t_open - t_listen)
            if t_end is not None:
                admitted_lost[why] = admitted_lost.get(why, 0) + 1
    horizon = int((t_all - t_listen) + 1) if t_all else int(args.max_return)
    windows = [0] * (horizon + 1)
    for t in admitted_open_t:
        if 0 <= t < len(windows):
            windows[int(t)] += 1
    hinted_windows = [0] * (horizon + 1)
    for a in attempts:
        if a[5] == HINT and a[3] is not None:
            t = a[3] - t_listen
            if 0 <= t < len(hinted_windows):
                hinted_windows[int(t)] += 1
    out: dict[str, Any] = {
        "mode": mode,
        "server_flags": (f"--accept-rate {args.rate:g} --accept-ramp {args.ramp:g}" if mode == "on" else "none") + ", " + " ".join(HEARTBEAT),
        "clients": n,
        "load_before": load_before,
        "load_after": load_after,
        "listen_after_kill_s": round(t_listen - t_kill, 3),
        "all_back": t_all is not None,
        "all_back_after_listen_s": round(t_all - t_listen, 2) if t_all else None,
        "all_back_after_kill_s": round(t_all - t_kill, 2) if t_all else None,
        "open_at_end": final["open"],
        "attempts": len(attempts),
        "outcomes": dict(sorted(kinds.items())),
        "admitted_per_s": windows,
        "hinted_opens_per_s": hinted_windows,
        "peak_admitted_per_s": max(windows) if windows else 0,
        "early_attempts_vs_computed": final["early_vs_computed"],
        "early_attempts_vs_policy": final["early_vs_policy"],
        "early_clients": final["early_clients"],
        "admitted_then_closed": admitted_lost,
        "server_dead_peers_total": msum(m, "wsheart_heartbeat_dead_peers_total"),
        "server_admission_refusals": {k: v for k, v in m.items() if k.startswith("wsheart_admission_refusals_total")},
        "server_handshake_failures": {k: v for k, v in m.items() if k.startswith("wsheart_handshake_failures_total")},
        "server_opened_total": msum(m, "wsheart_connections_opened_total"),
        "server_cpu_s_listen_to_all_back": round(cpu_all, 2) if cpu_all is not None else None,
        "server_cpu_s_to_end": samples[-1]["server_cpu_s"] if samples else None,
        "fleet_cpu_s_during_return": round(final["cpu_s"] - before["cpu_s"], 2),
        "attempts_per_client": dict(sorted(collections.Counter(collections.Counter(a[0] for a in attempts).values()).items())),
        "hints_per_admitted_client": dict(sorted(collections.Counter(
            collections.Counter(a[0] for a in attempts if a[5] == HINT).get(c, 0) for c in {a[0] for a in attempts}).items())),
        "fleet_max_lag_s": max((x["fleet_lag_s"] for x in samples), default=None),
        "samples": samples,
    }
    if mode == "on":
        # Admitted vs configured, per 1 s window, while clients still waited
        # for their turn (the fleet's last admission closes the comparison).
        rows = []
        last = int(t_all - t_listen) if t_all else horizon
        for i in range(0, last):
            conf = configured(args.rate, args.ramp, i, i + 1)
            rows.append({"t": i, "admitted": windows[i], "configured": round(conf, 1), "ratio": round(windows[i] / conf, 3)})
        # Saturated windows: some handshake was refused in them (a hint, a
        # 503 or a drop at accept), so demand exceeded what was admitted.
        refused_at = [0] * (horizon + 1)
        for a in attempts:
            if a[5] in (HINT, "http_503_retry_after", "reset", "eof_before_answer"):
                t = (a[3] if a[3] is not None else (a[2] if a[2] is not None else a[1])) - t_listen
                if 0 <= t < len(refused_at):
                    refused_at[int(t)] += 1
        for r in rows:
            r["refused"] = refused_at[r["t"]]
        sat = [r for r in rows if r["refused"] > 0]
        out["saturated_windows"] = len(sat)
        out["saturated_admitted_vs_configured"] = (
            round(sum(r["admitted"] for r in sat) / sum(r["configured"] for r in sat), 3) if sat else None
        )
        sat_post = [r for r in sat if r["t"] >= args.ramp]
        out["saturated_post_ramp_vs_configured"] = (
            round(sum(r["admitted"] for r in sat_post) / sum(r["configured"] for r in sat_post), 3) if sat_post else None
        )
        ramp_rows = [r for r in rows if r["t"] < args.ramp]
        post_rows = [r for r in rows if r["t"] >= args.ramp]
        out["rate_windows"] = rows
        out["ramp_admitted_vs_configured"] = (
            round(sum(r["admitted"] for r in ramp_rows) / sum(r["configured"] for r in ramp_rows), 3) if ramp_rows else None
        )
        out["post_ramp_admitted_per_s"] = (
            round(sum(r["admitted"] for r in post_rows) / len(post_rows), 1) if post_rows else None
        )
        out["post_ramp_vs_configured"] = (
            round(sum(r["admitted"] for r in post_rows) / sum(r["configured"] for r in post_rows), 3) if post_rows else None
        )
        out["worst_window_ratio"] = (
            {"min": min(r["ratio"] for r in rows), "max": max(r["ratio"] for r in rows)} if rows else None
        )
    return out


def markdown(results: dict) -> str:
    by = {r["mode"]: r for r in results["runs"]}
    off, on = by.get("off"), by.get("on")

    def val(r, k):
        return "-" if r is None or r.get(k) is None else r[k]

    def ratio(k):
        a, b = val(on, k), val(off, k)
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b:
            return f"{a / b:.2f}x"
        return "-"

    def kind(r, *names):
        if r is None:
            return "-"
        return sum(v for k, v in r["outcomes"].items() if k in names or any(k.startswith(nm) for nm in names if nm.endswith("_")))

    rows = [
        (f"all {results['meta']['clients']} open again", lambda r: "yes" if r["all_back"] else "no", None),
        ("time until all open, from listen (s)", lambda r: val(r, "all_back_after_listen_s"), "all_back_after_listen_s"),
        ("time until all open, from kill (s)", lambda r: val(r, "all_back_after_kill_s"), "all_back_after_kill_s"),
        ("peak admitted / s, server's count (1 s windows)", lambda r: val(r, "server_peak_admitted_per_s"), "server_peak_admitted_per_s"),
        ("peak admitted / s, clients' count", lambda r: val(r, "peak_admitted_per_s"), "peak_admitted_per_s"),
        ("attempts after the kill", lambda r: val(r, "attempts"), "attempts"),
        ("refused (nothing listening)", lambda r: kind(r, "refused"), None),
        ("reset (dropped at accept)", lambda r: kind(r, "reset", "eof_before_answer"), None),
        ("HTTP 503", lambda r: kind(r, "http_503_retry_after", "http_503"), None),
        ("1013 hint", lambda r: kind(r, HINT), None),
        ("timeout (connect / handshake)", lambda r: f'{kind(r, "connect_timeout")} / {kind(r, "timeout")}', None),
        ("clients retrying early (vs own delay / policy bound)",
         lambda r: f'{r["early_clients"]} ({r["early_attempts_vs_computed"]} / {r["early_attempts_vs_policy"]} attempts)', None),
        ("heartbeat deaths (server metric)", lambda r: val(r, "server_dead_peers_total"), None),
        ("admitted then closed 1011 / dropped (clients)",
         lambda r: f'{r["admitted_then_closed"].get("close_1011", 0)} / {r["admitted_then_closed"].get("dropped", 0)}', None),
        ("server CPU s, listen to all open", lambda r: val(r, "server_cpu_s_listen_to_all_back"), "server_cpu_s_listen_to_all_back"),
        ("fleet CPU s during the return", lambda r: val(r, "fleet_cpu_s_during_return"), "fleet_cpu_s_during_return"),
        ("attempts per client after the kill: {count: clients}", lambda r: r.get("attempts_per_client", "-"), None),
        ("fleet loop's worst lag answering a 1 s poll (s)", lambda r: val(r, "fleet_max_lag_s"), None),
        ("load average before / after", lambda r: f'{" ".join(r["load_before"])} / {" ".join(r["load_after"])}', None),
    ]
    lines = [
        f"# Admission control: restart under {results['meta']['clients']} returning clients",
        "",
        f"Measured {results['meta']['date']} at wsheart commit {results['meta']['commit']}; "
        f"`{results['meta']['command']}`. Server flags besides the endpoint: {' '.join(HEARTBEAT)}; "
        f"\"on\" adds `--accept-rate {results['meta']['rate']:g} --accept-ramp {results['meta']['ramp']:g}`.",
        "",
        "| | off | on | on / off |",
        "|---|---:|---:|---:|",
    ]
    for label, f, key in rows:
        lines.append(f"| {label} | {f(off) if off else '-'} | {f(on) if on else '-'} | {ratio(key) if key else ''} |")
    if on and on.get("rate_windows") is not None:
        lines += [
            "",
            f"Admitted vs configured ({results['meta']['rate']:g}/s, ramp {results['meta']['ramp']:g} s), 1 s windows from the listen, "
            f"until the last client was admitted: during the ramp {on['ramp_admitted_vs_configured']}, "
            f"after it {on['post_ramp_vs_configured']} ({on['post_ramp_admitted_per_s']}/s); "
            f"worst window {on['worst_window_ratio']}. In the {on['saturated_windows']} windows where handshakes were also refused "
            f"(demand above the admitted rate): {on['saturated_admitted_vs_configured']} of the configured rate "
            f"({on['saturated_post_ramp_vs_configured']} after the ramp); by the server's count "
            f"{on.get('server_saturated_vs_configured')} (ramp {on.get('server_saturated_ramp_vs_configured')}, "
            f"after it {on.get('server_saturated_post_ramp_vs_configured')}).",
            "",
            "| t (s) | " + " | ".join(str(r["t"]) for r in on["rate_windows"]) + " |",
            "|---|" + "---:|" * len(on["rate_windows"]),
            "| admitted (server) | " + " | ".join(str(r.get("server_admitted", "-")) for r in on["rate_windows"]) + " |",
            "| admitted (clients) | " + " | ".join(str(r["admitted"]) for r in on["rate_windows"]) + " |",
            "| configured | " + " | ".join(f'{r["configured"]:.0f}' for r in on["rate_windows"]) + " |",
            "| refused | " + " | ".join(str(r["refused"]) for r in on["rate_windows"]) + " |",
        ]
    if off:
        lines += ["", "Off, admitted per 1 s window from the listen, server's count: "
                  + ", ".join(str(x) for x in off.get("server_admitted_per_s", [])) + "; clients' count: "
                  + ", ".join(str(x) for x in off["admitted_per_s"])]
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=10000)
    p.add_argument("--modes", default="off,on")
    p.add_argument("--rate", type=float, default=500.0)
    p.add_argument("--ramp", type=float, default=10.0)
    p.add_argument("--after", type=float, default=20.0, help="seconds watched after all are back")
    p.add_argument("--max-return", type=float, default=150.0, help="longest wait for the fleet's return")
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--json", default=str(RESULTS / "admission.json"))
    args = p.parse_args()
    hard = raise_nofile()
    if hard < args.clients + 500:
        sys.exit(f"RLIMIT_NOFILE hard limit {hard} too low")
    LOGS.mkdir(parents=True, exist_ok=True)
    os.sched_setaffinity(0, {CLIENT_CPU})
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs = Procs()

    def on_term(signum, frame):
        procs.stop_all()
        sys.exit(1)

    signal.signal(signal.SIGTERM, on_term)
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "wsheart"], capture_output=True, text=True).stdout.strip())
    results = {
        "meta": {
            "command": "python bench/admission.py " + " ".join(sys.argv[1:]),
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "commit": commit, "wsheart_dirty": dirty,
            "clients": args.clients, "rate": args.rate, "ramp": args.ramp,
            "python": sys.version.split()[0], "nproc": os.cpu_count(),
        },
        "runs": [],
    }
    try:
        for mode in [m for m in args.modes.split(",") if m]:
            results["runs"].append(run_mode(mode, args, procs, args.python, env))
            Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    finally:
        procs.stop_all()
    md = markdown(results)
    Path(args.json).with_suffix(".md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
