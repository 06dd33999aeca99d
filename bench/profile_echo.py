"""
A profile of wsheart's echo path: S3's load (bench/loadgen.py echo, 100
connections x 10 messages of 32 bytes in flight, CPU 1) against wsheart
(CPU 0, S3's heartbeat settings) while `py-spy record` samples the server
for --seconds (py-spy from the bench venv: `bench/.venv/bin/pip install
py-spy`).  Prints and writes the top functions by own time (the leaf frame
of each sample) and by total time (any frame of a sample).

    flock /tmp/wsheart-bench.lock bench/.venv/bin/python bench/profile_echo.py \\
        --out bench/results/issue14-profile.txt

Every process is stopped by its pid.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

FRAME = re.compile(r"^(.*) \((.*?)(?::(\d+))?\)$")


def func_of(frame: str) -> str:
    """'name (path/file.py:123)' -> 'name (file path)', line dropped: one row per function."""
    m = FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m.group(2)
    for marker in ("site-packages/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    else:
        path = os.path.relpath(path, REPO) if path.startswith(str(REPO)) else path
    return f"{m.group(1)} ({path})"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    p.add_argument("--top", type=int, default=10)
    p.add_argument("--out", default=str(BENCH / "results" / "issue14-profile.txt"))
    p.add_argument("--venv", default=str(BENCH / ".venv"))
    args = p.parse_args()
    import run

    venv = Path(args.venv).resolve()
    pyspy = venv / "bin" / "py-spy"
    os.sched_setaffinity(0, {run.CLIENT_CPU})
    run.LOGS.mkdir(parents=True, exist_ok=True)
    procs = run.Processes()
    ctx = types.SimpleNamespace(python=str(venv / "bin" / "python"), procs=procs)
    port = run.free_port()
    interval, timeout, missed = run.HEARTBEAT["s3"]
    cmd = [str(venv / "bin" / "twistd"), "-n", "--pidfile=", "wsheart", "--endpoint", f"tcp:{port}:interface=127.0.0.1",
           "--ping-interval", str(interval), "--ping-timeout", str(timeout), "--max-missed", str(missed)]  # fmt: skip
    raw = Path(tempfile.mkdtemp(prefix="wsheart-prof-")) / "echo.txt"
    la0 = run.loadavg()
    try:
        srv = procs.start(cmd, run.SERVER_CPU, run.LOGS / "profile-echo-server.log", stdin=subprocess.DEVNULL,
                          cwd=str(REPO), env=dict(os.environ, PYTHONPATH=str(REPO)))  # fmt: skip
        run.wait_port(port, srv)
        lg = run.LoadGen(ctx, ["echo", "--port", str(port), "--connections", "100", "--depth", "10",
                               "--seconds", str(args.seconds + 4), "--warmup", "1"], "profile-echo")  # fmt: skip
        lg.expect("open", 60)
        lg.expect("recording", 30)
        c0, t0 = run.proc_cpu_s(srv.pid), time.monotonic()
        spy = procs.start([str(pyspy), "record", "-p", str(srv.pid), "-d", str(int(args.seconds)), "-r",
                           str(args.rate), "-f", "raw", "-o", str(raw), "--nonblocking"],
                          run.CLIENT_CPU, run.LOGS / "profile-echo-pyspy.log")  # fmt: skip
        spy.wait(args.seconds + 60)
        c1, t1 = run.proc_cpu_s(srv.pid), time.monotonic()
        done = lg.expect("done", args.seconds + 60)
        lg.stop()
    finally:
        procs.stop_all()
    own: collections.Counter = collections.Counter()
    total: collections.Counter = collections.Counter()
    n = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        c = int(count)
        frames = [func_of(f) for f in stack.split(";") if f.strip()]
        # py-spy's raw stacks start with the thread's name ("process N:..." / "thread (0x..)")
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        n += c
        own[frames[-1]] += c
        for f in set(frames):
            total[f] += c
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()  # fmt: skip
    lines = [
        f"wsheart echo path profile: commit {commit}, {time.strftime('%Y-%m-%d %H:%M')} UTC,",
        f"py-spy record --nonblocking -r {args.rate} for {args.seconds:.0f} s on wsheart (CPU 0) under S3's load",
        "(bench/loadgen.py echo: 100 connections x 10 in flight, 32-byte text, CPU 1);",
        f"load average before {' '.join(la0)}, after {' '.join(run.loadavg())};",
        f"server CPU {100 * (c1 - c0) / (t1 - t0):.0f} % over the sampled window; echo over the loadgen's window "
        f"(profiler attached): {done['rps']:.0f} round trips/s, p50 {done['p50_ms']:.1f} ms, p99 {done['p99_ms']:.1f} ms;",
        f"{n} samples. Command: bench/.venv/bin/python bench/profile_echo.py --seconds {args.seconds:.0f}",
        "",
        f"Top {args.top} functions by own time (leaf frame of the sample):",
        "",
        f"{'own %':>6}  {'total %':>7}  function (file)",
    ]
    for f, c in own.most_common(args.top):
        lines.append(f"{100 * c / n:6.1f}  {100 * total[f] / n:7.1f}  {f}")
    lines += ["", f"Top {args.top + 10} by total time (on the stack):", "", f"{'total %':>7}  {'own %':>6}  function (file)"]
    for f, c in total.most_common(args.top + 10):
        lines.append(f"{100 * c / n:7.1f}  {100 * own[f] / n:6.1f}  {f}")
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
