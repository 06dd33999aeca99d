"""
Runs Autobahn|Testsuite against wsheart and sums up its verdicts.

    python3 tests/conformance/run.py server            # the daemon, cases 1.* to 10.*
    python3 tests/conformance/run.py client            # the client service, the same cases
    python3 tests/conformance/run.py server client --full  # all 517 cases, both sides
    python3 tests/conformance/run.py server --deflate  # with permessage-deflate and
    python3 tests/conformance/run.py client --deflate  # a compression subset

server: starts C{twistd -n wsheart} on a free loopback port (with
C{--max-message-size 33554432}, so the 16 MiB cases of 9.* fit, and any
arguments after C{--}) and points C{wstest -m fuzzingclient} at it.
client: starts C{wstest -m fuzzingserver} on a free loopback port and runs
echo_client.py (one wsheart ReconnectingClientService per case, echoing
every message) against it.

Prints the count of each verdict (OK, NON-STRICT, INFORMATIONAL,
UNIMPLEMENTED, FAILED) and the FAILED case ids; exits 1 if any case
FAILED (its verdict, or its closing behaviour: the suite's two results
per case), 2 if the run itself failed (no report, time limit).  wstest comes
from .venv27/ (tests/conformance/install.sh); wsheart from the Python that
runs this script.  Reports (HTML and JSON): .conformance/<mode>/ at the
repository root.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Optional

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
DEFAULT_WSTEST = ROOT / ".venv27" / "env" / "bin" / "wstest"
DEFAULT_REPORTS = ROOT / ".conformance"

# Framing, pings, reserved bits, opcodes, fragmentation, UTF-8, close,
# limits and performance: everything but compression.
QUICK_CASES = ["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "8.*", "9.*", "10.*"]
# permessage-deflate in a minute or two: the default offer with small to
# middling messages, whole and auto-fragmented (12.1.*), and each of the
# seven offers 13.1 to 13.7 (window bits, no context takeover) once.
COMPRESSION_CASES = [
    "12.1.1", "12.1.2", "12.1.3", "12.1.4", "12.1.5", "12.1.11",
    "13.1.1", "13.2.1", "13.3.1", "13.4.1", "13.5.1", "13.6.1", "13.7.1",
]  # fmt: skip
FULL_CASES = ["*"]
# The largest message of cases 1.* to 10.* is 16 MiB (9.1.6, 9.2.6).
MAX_MESSAGE_SIZE = 32 * 1024 * 1024

BEHAVIORS = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[Any], name: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RunFailed(f"{name} exited with {process.returncode} before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RunFailed(f"nothing listened on 127.0.0.1:{port} within {timeout:g} s")
            time.sleep(0.1)


class RunFailed(Exception):
    """
    The run itself went wrong (as opposed to a case that FAILED).
    """


def start(command: list[str], log: Path, cwd: Optional[Path] = None, env: Optional[dict[str, str]] = None) -> subprocess.Popen[Any]:
    """
    Start C{command} in its own process group (so stopping it stops its
    children too), its output to C{log}.
    """
    print("$ " + " ".join(command), flush=True)
    with open(log, "ab") as out:
        return subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=env, start_new_session=True
        )


def stop(process: subprocess.Popen[Any], grace: float = 10.0) -> None:
    """
    Stop what C{start} started: SIGTERM to its group, SIGKILL after C{grace}.
    """
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass


def run_bounded(command: list[str], log: Path, timeout: float, env: Optional[dict[str, str]] = None) -> int:
    process = start(command, log, env=env)
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        raise RunFailed(f"{Path(command[0]).name} did not finish within {timeout:g} s (see {log})")
    finally:
        stop(process)


def twistd_command() -> list[str]:
    """
    The twistd of the Python running this script (its venv's script, else
    the same module through C{-c}).
    """
    beside = Path(sys.executable).parent / "twistd"
    if beside.exists():
        return [str(beside)]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def run_server(args: argparse.Namespace, cases: list[str], outdir: Path) -> None:
    port = free_port()
    spec = {
        "outdir": str(outdir),
        "servers": [{"agent": args.agent, "url": f"ws://127.0.0.1:{port}"}],
        "cases": cases,
        "exclude-cases": [],
        "exclude-agent-cases": {},
    }
    spec_file = outdir / "spec.json"
    spec_file.write_text(json.dumps(spec, indent=2))
    reactor = ["--reactor", args.reactor] if args.reactor else []
    daemon_args = reactor + [
        "-n", "--pidfile=", "wsheart",
        "--endpoint", f"tcp:{port}:interface=127.0.0.1",
        "--max-message-size", str(MAX_MESSAGE_SIZE),
    ] + args.daemon_args  # fmt: skip
    # From an empty directory: twistd puts its working directory on
    # sys.path, and the repository's would shadow the installed wsheart.
    with tempfile.TemporaryDirectory(prefix="wsheart-conformance-") as cwd:
        daemon = start(twistd_command() + daemon_args, outdir / "daemon.log", cwd=Path(cwd))
        try:
            wait_for_port(port, daemon, "the daemon", 30)
            status = run_bounded(
                [str(args.wstest), "-m", "fuzzingclient", "-s", str(spec_file)], outdir / "wstest.log", args.timeout
            )
            if status != 0:
                raise RunFailed(f"wstest exited with {status} (see {outdir / 'wstest.log'})")
            if daemon.poll() is not None:
                raise RunFailed(f"the daemon exited with {daemon.returncode} during the run (see {outdir / 'daemon.log'})")
        finally:
            stop(daemon)


def run_client(args: argparse.Namespace, cases: list[str], outdir: Path) -> None:
    port = free_port()
    spec = {
        "url": f"ws://127.0.0.1:{port}",
        "outdir": str(outdir),
        "cases": cases,
        "exclude-cases": [],
        "exclude-agent-cases": {},
    }
    spec_file = outdir / "spec.json"
    spec_file.write_text(json.dumps(spec, indent=2))
    # --webport 0: no HTTP server of its own on 8080.
    suite = start([str(args.wstest), "-m", "fuzzingserver", "--webport", "0", "-s", str(spec_file)], outdir / "wstest.log")
    try:
        wait_for_port(port, suite, "wstest", 30)
        driver = [sys.executable, str(HERE / "echo_client.py"), f"ws://127.0.0.1:{port}", "--agent", args.agent]
        if args.deflate:
            driver.append("--deflate")
        for option in args.client_options:
            driver += ["--option", option]
        status = run_bounded(driver, outdir / "client.log", args.timeout)
        if status != 0:
            raise RunFailed(f"echo_client.py exited with {status} (see {outdir / 'client.log'})")
    finally:
        stop(suite)


def summarize(outdir: Path, agent: str, expected: int) -> int:
    """
    Print the verdicts of C{outdir}'s report; the number of FAILED cases.
    """
    index = outdir / "index.json"
    if not index.exists():
        raise RunFailed(f"no report at {index}")
    results: dict[str, Any] = json.loads(index.read_text()).get(agent, {})
    if not results:
        raise RunFailed(f"the report at {index} has no cases for agent {agent!r}")
    counts = Counter(r["behavior"] for r in results.values())
    failed = sorted((c for c, r in results.items() if r["behavior"] == "FAILED"), key=_case_key)
    close_failed = sorted((c for c, r in results.items() if r.get("behaviorClose") == "FAILED"), key=_case_key)
    line = ", ".join(f"{counts.get(b, 0)} {b}" for b in BEHAVIORS)
    others = set(counts) - set(BEHAVIORS)
    if others:
        line += ", " + ", ".join(f"{counts[b]} {b}" for b in sorted(others))
    print(f"{len(results)} cases: {line}")
    if expected and len(results) != expected:
        raise RunFailed(f"the report has {len(results)} cases, the suite announced {expected}")
    if failed:
        print("FAILED: " + " ".join(failed))
    if close_failed:
        print("closing behaviour FAILED: " + " ".join(close_failed))
    close_notes = Counter(
        r.get("behaviorClose") for r in results.values() if r.get("behaviorClose") not in ("OK", "FAILED", "INFORMATIONAL")
    )
    if close_notes:
        print("closing behaviour, other verdicts: " + ", ".join(f"{n} {v}" for v, n in sorted(close_notes.items())))
    print(f"report: {outdir / 'index.html'}")
    return len(failed) + len(set(close_failed) - set(failed))


def _case_key(case: str) -> tuple[int, ...]:
    return tuple(int(part) for part in case.split(".") if part.isdigit())


def announced_cases(outdir: Path) -> int:
    """
    How many cases wstest said it would run (0 if it did not say).
    """
    for name in ("wstest.log",):
        log = outdir / name
        if log.exists():
            for line in log.read_text(errors="replace").splitlines():
                words = line.split()
                # "Ok, will run 301 test cases ..." (both modes)
                if "will run" in line and "test" in words:
                    for i, word in enumerate(words):
                        if word == "run" and i + 1 < len(words) and words[i + 1].isdigit():
                            return int(words[i + 1])
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    daemon_args: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, daemon_args = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(
        description="Run Autobahn|Testsuite against wsheart's server or client.",
        epilog="Arguments after -- go to the daemon (server mode), e.g. -- --ping-interval 1 --ping-timeout 1.",
    )
    parser.add_argument("modes", nargs="+", metavar="MODE", choices=["server", "client"], help="server, client, or both")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--full", action="store_true", help="every case of the suite (517), not cases 1.* to 10.*")
    which.add_argument("--cases", nargs="+", metavar="ID", help="these case ids or patterns (e.g. 6.4.* 9.1.6)")
    parser.add_argument(
        "--compression", action="store_true", help="add a permessage-deflate subset of 12.* and 13.* to cases 1.* to 10.*"
    )
    parser.add_argument(
        "--deflate",
        action="store_true",
        help="permessage-deflate on (the daemon's --deflate, the client's deflate=DeflateSettings()); implies --compression",
    )
    parser.add_argument(
        "--client-option",
        dest="client_options",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help="client mode: a ReconnectingClientService keyword argument, e.g. handshake_timeout=5 (repeatable)",
    )
    parser.add_argument(
        "--reactor", default="", metavar="NAME", help="server mode: twistd's --reactor (e.g. wsheart; default: twistd's own)"
    )
    parser.add_argument("--wstest", type=Path, default=DEFAULT_WSTEST, help=f"default: {DEFAULT_WSTEST}")
    parser.add_argument("--reports", type=Path, default=DEFAULT_REPORTS, help=f"default: {DEFAULT_REPORTS}")
    parser.add_argument("--timeout", type=float, default=None, help="seconds the suite may run (default: 600, --full 3600)")
    parser.add_argument("--agent", default="wsheart", help="agent name in the reports")
    args = parser.parse_args(argv)
    args.extra_daemon_args = daemon_args
    args.daemon_args = (["--deflate"] if args.deflate else []) + daemon_args
    if daemon_args and "server" not in args.modes:
        parser.error("arguments after -- are for the daemon, in server mode")
    if args.client_options and "client" not in args.modes:
        parser.error("--client-option is for client mode")
    if args.deflate:
        args.compression = True
    if args.timeout is None:
        args.timeout = 3600.0 if args.full else 600.0
    if not args.wstest.exists():
        print(f"run.py: no wstest at {args.wstest}; install it with tests/conformance/install.sh", file=sys.stderr)
        return 2
    if args.full:
        cases = FULL_CASES
    elif args.cases:
        cases = args.cases
    else:
        cases = QUICK_CASES + (COMPRESSION_CASES if args.compression else [])

    worst = 0
    for mode in args.modes:
        worst = max(worst, run_mode(args, mode, cases))
    return worst


def run_mode(args: argparse.Namespace, mode: str, cases: list[str]) -> int:
    """
    One side's run: 0 if no case FAILED, 1 if one did, 2 if the run failed.
    """
    outdir = (args.reports / mode).resolve()
    shutil.rmtree(outdir, ignore_errors=True)
    outdir.mkdir(parents=True)
    label = mode + (" --deflate" if args.deflate else "")
    if mode == "server" and args.extra_daemon_args:
        label += " -- " + " ".join(args.extra_daemon_args)
    if mode == "client":
        label += "".join(f" --client-option {o}" for o in args.client_options)
    print(f"=== Autobahn|Testsuite against wsheart {label}: cases {' '.join(cases)}", flush=True)
    started = time.monotonic()
    try:
        (run_server if mode == "server" else run_client)(args, cases, outdir)
        failed = summarize(outdir, args.agent, announced_cases(outdir))
    except RunFailed as e:
        print(f"CONFORMANCE RUN FAILED ({label}): {e}", file=sys.stderr)
        for log in sorted(outdir.glob("*.log")):
            tail = log.read_text(errors="replace").splitlines()[-15:]
            print(f"--- last lines of {log}:", *tail, sep="\n", file=sys.stderr)
        return 2
    print(f"{time.monotonic() - started:.0f} s", flush=True)
    if failed:
        print(f"CONFORMANCE FAILED ({label}): {failed} case(s) FAILED; see the report above", file=sys.stderr)
        return 1
    return 0

if __name__ == "__main__":
    sys.exit(main())
