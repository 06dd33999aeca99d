"""
S5 reconnect storm: a fleet of wsheart client services whose server goes
away, by a crash (SIGKILL) or a drain (SIGTERM: 1012 with a reconnect hint),
and comes back on the same port.  Measures the peak rate of connection
attempts and the time until every client is connected again.

Each scenario runs wsheart as shipped against a baseline without jitter:
- crash: wsheart's clients (full-jitter backoff with its default settings)
  against the same clients with random() always 1 - the classic exponential
  backoff, every client waiting exactly initial * factor**n;
- drain: wsheart (the server closes in batches over --drain-time 2 with a
  hint, each client waits retry_after + uniform(0, jitter)) against a naive
  restart (the server closes everyone at once, --drain-time 0, and every
  client waits exactly the hinted time); a third run keeps wsheart's batched
  closes and takes only the clients' jitter away, to show each part's share.
The peak is counted in 100 ms windows (what a listen backlog and an accept
loop feel; a burst of simultaneous attempts looks the same in any window
that holds it) and in 1 s windows.

Run:  python bench/storm.py [--clients 1000] [--json bench/results/storm.json]
Loopback only; every process it starts is stopped by its pid.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from typing import Any, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def raise_nofile() -> None:
    """
    Raise the soft limit on open files to the hard limit (one fd per client).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def twistd() -> list[str]:
    candidate = os.path.join(os.path.dirname(sys.executable), "twistd")
    return [candidate] if os.path.exists(candidate) else [sys.executable, "-m", "twisted.scripts.twistd"]


def start_server(port: int, drain_time: float = 2.0) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=REPO)
    argv = ["taskset", "-c", "0"] + twistd() + [
        "-n", "--pidfile=", "wsheart", "-e", f"tcp:{port}:interface=127.0.0.1",
        "--drain-time", str(drain_time), "--drain-retry-after", "1", "--drain-reconnect-rate", "200",
    ]  # fmt: skip
    return subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_listening(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"server on {port} did not listen")


def stop(process: Optional[subprocess.Popen[Any]], sig: int = signal.SIGTERM) -> None:
    if process is None or process.poll() is not None:
        return
    os.kill(process.pid, sig)
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()


# The fleet: runs in its own process (pinned to the other core).


def fleet_main(port: int, count: int, jitter: bool, out: str) -> None:
    from twisted.internet import reactor, stdio
    from twisted.protocols.basic import LineReceiver

    from wsheart.backoff import BackoffSettings
    from wsheart.client import ClientListener, ReconnectingClientService
    from wsheart.heartbeat import HeartbeatSettings

    attempts: list[float] = []
    opens: list[float] = []
    state = {"open": 0}

    class Recorder(ClientListener):
        def client_state(self, client: Any, s: str, detail: dict[str, Any]) -> None:
            if s == "connecting":
                attempts.append(time.monotonic())

        def client_opened(self, client: Any) -> None:
            opens.append(time.monotonic())
            state["open"] += 1

        def client_closed(self, client: Any, code: int, reason: str, was_clean: bool) -> None:
            state["open"] -= 1

    # Without jitter every client takes the whole window: random() == 1.
    rand = __import__("random").random if jitter else (lambda: 1.0)
    # The defaults, except a shorter stable period so that the fleet counts
    # as stable a few seconds after it connected.
    backoff = BackoffSettings(stable_after=3)
    services = []
    for _ in range(count):
        service = ReconnectingClientService(
            f"ws://127.0.0.1:{port}/",
            Recorder(),
            reactor=reactor,
            heartbeat=HeartbeatSettings(10, 5, 2),
            backoff=backoff,
            random=rand,
        )
        services.append(service)

    class Control(LineReceiver):
        delimiter = b"\n"

        def lineReceived(self, line: bytes) -> None:
            if line == b"status":
                self.sendLine(str(state["open"]).encode())
            elif line == b"dump":
                with open(out, "w") as f:
                    json.dump({"attempts": attempts, "opens": opens}, f)
                self.sendLine(b"dumped")

    stdio.StandardIO(Control())
    for i, service in enumerate(services):
        reactor.callLater(i * 0.002, service.startService)
    reactor.run()


class Fleet:
    def __init__(self, port: int, count: int, jitter: bool, out: str) -> None:
        env = dict(os.environ, PYTHONPATH=REPO)
        self.process = subprocess.Popen(
            ["taskset", "-c", "1", sys.executable, __file__, "--fleet", str(port), str(count), "1" if jitter else "0", out],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            cwd=REPO,
        )

    def ask(self, command: str) -> str:
        assert self.process.stdin and self.process.stdout
        self.process.stdin.write(command.encode() + b"\n")
        self.process.stdin.flush()
        return self.process.stdout.readline().decode().strip()

    def wait_open(self, count: int, timeout: float) -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if int(self.ask("status") or 0) >= count:
                return time.monotonic() - start
            time.sleep(0.05)
        raise RuntimeError(f"fleet did not reach {count} open connections in {timeout} s")


def peak_rate(times: list[float], window: float = 1.0) -> float:
    """
    The largest number of events in any window of C{window} seconds.
    """
    times = sorted(times)
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] < t - window:
            j += 1
        best = max(best, i - j + 1)
    return best / window


def one_run(count: int, how: str, jitter: bool, timeout: float, drain_time: float = 2.0) -> dict[str, Any]:
    port = free_port()
    out = os.path.join(HERE, "results", f"storm-{how}-{'jitter' if jitter else 'nojitter'}.tmp.json")
    server = start_server(port, drain_time)
    fleet: Optional[Fleet] = None
    replacement: Optional[subprocess.Popen[bytes]] = None
    try:
        wait_listening(port, 20)
        fleet = Fleet(port, count, jitter, out)
        fleet.wait_open(count, timeout)
        time.sleep(3.5)  # stable: the next failure starts from the first window
        event = time.monotonic()
        if how == "crash":
            stop(server, signal.SIGKILL)
            time.sleep(1.0)  # a crash and an automatic restart
        else:
            os.kill(server.pid, signal.SIGTERM)  # drain: 1012 with a hint
            time.sleep(0.3)  # the old process has stopped listening
        replacement = start_server(port)
        fleet.wait_open(count, timeout)
        all_back = time.monotonic() - event
        fleet.ask("dump")
        with open(out) as f:
            data = json.load(f)
        os.unlink(out)
        after = [t - event for t in data["attempts"] if t > event]
        return {
            "scenario": how,
            "jitter": jitter,
            "server_drain_time": drain_time if how == "drain" else None,
            "clients": count,
            "attempts_after_event": len(after),
            "peak_attempts_per_second": peak_rate(after),
            "peak_attempts_per_100ms": peak_rate(after, 0.1) * 0.1,
            "seconds_until_all_back": round(all_back, 3),
            "first_attempt_s": round(min(after), 3) if after else None,
            "last_attempt_s": round(max(after), 3) if after else None,
        }
    finally:
        if fleet is not None:
            stop(fleet.process, signal.SIGKILL)
        stop(server, signal.SIGKILL)
        stop(replacement, signal.SIGKILL)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--fleet":
        port, count, jitter, out = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1", sys.argv[5]
        raise_nofile()
        fleet_main(port, count, jitter, out)
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=90.0)
    parser.add_argument("--json", default=os.path.join(HERE, "results", "storm.json"))
    args = parser.parse_args()
    raise_nofile()
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    runs = [
        # (label, scenario, client jitter, server drain time)
        ("wsheart", "crash", True, 2.0),
        ("no jitter", "crash", False, 2.0),
        ("wsheart", "drain", True, 2.0),
        ("naive: all closed at once, no jitter", "drain", False, 0.0),
        ("batched closes, clients without jitter", "drain", False, 2.0),
    ]
    results = []
    for label, how, jitter, drain_time in runs:
        result = one_run(args.clients, how, jitter, args.timeout, drain_time)
        result["label"] = label
        print(json.dumps(result), flush=True)
        results.append(result)
    by_scenario = {r["scenario"]: r for r in results if r["label"] == "wsheart"}
    for r in results:
        ours = by_scenario[r["scenario"]]
        r["peak_100ms_vs_wsheart"] = round(r["peak_attempts_per_100ms"] / max(ours["peak_attempts_per_100ms"], 1), 2)
        r["peak_1s_vs_wsheart"] = round(r["peak_attempts_per_second"] / max(ours["peak_attempts_per_second"], 1), 2)
    with open(args.json, "w") as f:
        json.dump(results, f, indent=2)
    print()
    print(
        "| scenario | clients | run | peak attempts in 100 ms | x wsheart's | peak attempts in 1 s | x wsheart's "
        "| all back after (s) | attempts |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['scenario']} | {r['clients']} | {r['label']} "
            f"| {r['peak_attempts_per_100ms']:.0f} | {r['peak_100ms_vs_wsheart']:.1f} "
            f"| {r['peak_attempts_per_second']:.0f} | {r['peak_1s_vs_wsheart']:.1f} "
            f"| {r['seconds_until_all_back']:.1f} | {r['attempts_after_event']} |"
        )


if __name__ == "__main__":
    main()
