"""
What token verification costs wsheart (--auth jwt).

1. Per verification, in-process: wsheart.auth.TokenVerifier.verify for
   HS256 (a 64-byte secret), RS256 (RSA 2048), ES256 (P-256) and EdDSA
   (Ed25519).  Keys are made here with `cryptography`, tokens signed with
   PyJWT (sub, aud "wsheart", exp, a channel grant "wsh"); --iterations
   verifications of --distinct different tokens in turn, CPU time
   (process_time) and wall time per call, median of --repeats, this process
   pinned to CPU 0.
2. The S4 burst (bench/run.py): --connections connections opened at once
   (loadgen.py burst, CPU 1) against `twistd wsheart` (CPU 0, heartbeat as
   S4: 10 s / 5 s / 2) without auth, and with `--auth jwt --jwt-key` an
   HS256 secret file or an RS256 public PEM, every handshake sending
   `Authorization: Bearer <its own token>`.  Time from the first connect()
   until the last 101 is verified, handshake p99, and the server's CPU
   seconds (/proc) over the burst; --repeats interleaved repeats, each
   starting with another configuration; medians and ratios vs no auth.

Run (about 1 minute; take the lock, the machine is shared):

    flock /tmp/wsheart-bench.lock /work/main/.venv/bin/python bench/tokens.py

Writes bench/results/tokens.json and tokens.md.  Loopback only; every
process it starts is stopped by its pid, every wait is bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results"
LOGS = RESULTS / "logs"
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH))

import jwt  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa  # noqa: E402

from admission import free_port, listening, loadavg, proc_cpu_s  # noqa: E402
from run import stop_process as stop  # noqa: E402
from wsheart.auth.tokens import TokenSettings, TokenVerifier  # noqa: E402

SERVER_CPU, CLIENT_CPU = 0, 1
S4_HEARTBEAT = ["--ping-interval", "10", "--ping-timeout", "5", "--max-missed", "2"]


def make_keys(d: Path) -> dict[str, dict[str, Any]]:
    """
    {alg: {"signing": key for jwt.encode, "file": the --jwt-key file}}.
    """
    def pem_pub(private) -> bytes:
        return private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    keys: dict[str, dict[str, Any]] = {}
    secret = os.urandom(32).hex().encode()  # 64 bytes of text
    (d / "hs256.key").write_bytes(secret)
    keys["HS256"] = {"signing": secret, "file": d / "hs256.key"}
    for alg, private in (
        ("RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        ("ES256", ec.generate_private_key(ec.SECP256R1())),
        ("EdDSA", ed25519.Ed25519PrivateKey.generate()),
    ):
        path = d / f"{alg.lower()}.pem"
        path.write_bytes(pem_pub(private))
        keys[alg] = {"signing": private, "file": path}
    return keys


def tokens(alg: str, key: Any, n: int) -> list[str]:
    exp = int(time.time()) + 3600
    return [
        jwt.encode(
            {"sub": f"user-{i}", "aud": "wsheart", "exp": exp, "wsh": {"subscribe": ["chat.*", "user.{sub}.*"], "publish": ["chat.room1"]}},
            key,
            algorithm=alg,
        )
        for i in range(n)
    ]


def time_verify(keys: dict, iterations: int, distinct: int, repeats: int) -> dict:
    out = {}
    now = time.time()
    for alg, k in keys.items():
        verifier = TokenVerifier(TokenSettings(key_file=str(k["file"])))
        toks = tokens(alg, k["signing"], distinct)
        verifier.verify(toks[0], now)  # warm-up, and a check that it verifies
        cpu_us, wall_us = [], []
        for _ in range(repeats):
            c0, w0 = time.process_time(), time.perf_counter()
            for i in range(iterations):
                verifier.verify(toks[i % distinct], now)
            cpu_us.append((time.process_time() - c0) / iterations * 1e6)
            wall_us.append((time.perf_counter() - w0) / iterations * 1e6)
        out[alg] = {
            "cpu_us_per_verify": round(statistics.median(cpu_us), 2),
            "wall_us_per_verify": round(statistics.median(wall_us), 2),
            "repeats_cpu_us": [round(x, 2) for x in cpu_us],
            "token_bytes": len(toks[0]),
        }
        print(f"[verify] {alg}: {out[alg]['cpu_us_per_verify']} us CPU per verify", flush=True)
    return out


def start(cmd: list[str], cpu: int, log: Path, **kw) -> subprocess.Popen:
    with open(log, "ab") as f:
        return subprocess.Popen(["taskset", "-c", str(cpu), *cmd], stdout=kw.pop("stdout", f), stderr=f,
                                start_new_session=True, **kw)


def burst(python: str, config: str, key_file: Path | None, bearer_file: Path | None, n: int, tag: str, live: list) -> dict:
    port = free_port()
    twistd = str(Path(python).parent / "twistd")
    cmd = [twistd, "-n", "--pidfile=", "wsheart", "--endpoint", f"tcp:{port}:interface=127.0.0.1", *S4_HEARTBEAT]
    if key_file is not None:
        cmd += ["--auth", "jwt", "--jwt-key", str(key_file)]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    srv = start(cmd, SERVER_CPU, LOGS / f"tokens-{tag}-server.log", stdin=subprocess.DEVNULL, cwd=str(REPO), env=env)
    live.append(srv)
    try:
        for _ in range(300):
            if listening(port) or srv.poll() is not None:
                break
            time.sleep(0.1)
        if not listening(port):
            raise RuntimeError(f"{config}: server did not listen")
        time.sleep(1.0)  # let it settle after start-up
        c0 = proc_cpu_s(srv.pid)
        argv = [python, str(BENCH / "loadgen.py"), "burst", "--port", str(port), "--connections", str(n), "--timeout", "60"]
        if bearer_file is not None:
            argv += ["--bearer-file", str(bearer_file)]
        lg = start(argv, CLIENT_CPU, LOGS / f"tokens-{tag}-loadgen.log", stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        live.append(lg)
        try:
            out, _ = lg.communicate(timeout=180)
        finally:
            stop(lg)
            live.remove(lg)
        c1 = proc_cpu_s(srv.pid)
    finally:
        stop(srv)
        live.remove(srv)
    done = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")][-1]
    return {
        "config": config,
        "all_open_s": done["seconds"] if done["open"] == n else None,
        "open": done["open"],
        "failed": done["failed"],
        "handshake_p99_s": done["handshake_p99_s"],
        "server_cpu_s": round(c1 - c0, 3),
        "loadgen_cpu_s": round(done["cpu_s"], 3),
    }


def markdown(res: dict) -> str:
    m = res["meta"]
    lines = [
        "# Token verification cost",
        "",
        f"Measured {m['date']} at wsheart commit {m['commit']}, PyJWT {m['pyjwt']}, cryptography {m['cryptography']}; "
        f"`{m['command']}`; load average before / after: {' '.join(m['load_before'])} / {' '.join(m['load_after'])}.",
        "",
        f"## TokenVerifier.verify, in-process ({m['iterations']} calls, {m['distinct']} distinct tokens, median of {m['repeats']})",
        "",
        "| algorithm | key | CPU us / verify | wall us / verify | vs HS256 | token bytes |",
        "|---|---|---:|---:|---:|---:|",
    ]
    keydesc = {"HS256": "64-byte secret", "RS256": "RSA 2048", "ES256": "P-256", "EdDSA": "Ed25519"}
    hs = res["verify"]["HS256"]["cpu_us_per_verify"]
    for alg, v in res["verify"].items():
        lines.append(f"| {alg} | {keydesc[alg]} | {v['cpu_us_per_verify']} | {v['wall_us_per_verify']} | "
                     f"{v['cpu_us_per_verify'] / hs:.2f}x | {v['token_bytes']} |")
    lines += [
        "",
        f"## S4 burst: {m['connections']} connections at once (medians of {m['repeats']} interleaved repeats)",
        "",
        "| auth | all handshakes done s | vs none | handshake p99 s | server CPU s | vs none | server CPU us / handshake over none | all opened |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    med = res["burst_medians"]
    base = med["none"]
    for cfg, v in med.items():
        extra = (v["server_cpu_s"] - base["server_cpu_s"]) / m["connections"] * 1e6
        lines.append(
            f"| {cfg} | {v['all_open_s']:.3f} | {v['all_open_s'] / base['all_open_s']:.2f}x | {v['handshake_p99_s']:.3f} | "
            f"{v['server_cpu_s']:.2f} | {v['server_cpu_s'] / base['server_cpu_s']:.2f}x | "
            f"{'-' if cfg == 'none' else f'{extra:.0f}'} | {v['all_opened']} |"
        )
    lines += ["", "Every sample: `samples` in tokens.json."]
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iterations", type=int, default=3000)
    p.add_argument("--distinct", type=int, default=200)
    p.add_argument("--connections", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--json", default=str(RESULTS / "tokens.json"))
    args = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    LOGS.mkdir(parents=True, exist_ok=True)
    import cryptography

    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    res: dict[str, Any] = {
        "meta": {
            "command": "python bench/tokens.py " + " ".join(sys.argv[1:]),
            "date": time.strftime("%Y-%m-%d %H:%M"), "commit": commit,
            "pyjwt": jwt.__version__, "cryptography": cryptography.__version__, "python": sys.version.split()[0],
            "iterations": args.iterations, "distinct": args.distinct, "repeats": args.repeats,
            "connections": args.connections, "load_before": loadavg(),
        }
    }
    live: list[subprocess.Popen] = []
    try:
        with tempfile.TemporaryDirectory(prefix="wsheart-tokens-") as tmp:
            d = Path(tmp)
            keys = make_keys(d)
            os.sched_setaffinity(0, {SERVER_CPU})
            res["verify"] = time_verify(keys, args.iterations, args.distinct, args.repeats)
            os.sched_setaffinity(0, {CLIENT_CPU})
            bearer = {}
            for alg in ("HS256", "RS256"):
                bearer[alg] = d / f"bearer-{alg}.txt"
                bearer[alg].write_text("\n".join(tokens(alg, keys[alg]["signing"], args.connections)) + "\n")
            configs = [
                ("none", None, None),
                ("jwt HS256", keys["HS256"]["file"], bearer["HS256"]),
                ("jwt RS256", keys["RS256"]["file"], bearer["RS256"]),
            ]
            samples = []
            for r in range(args.repeats):
                order = configs[r % len(configs):] + configs[: r % len(configs)]
                for cfg, key_file, bf in order:
                    s = burst(args.python, cfg, key_file, bf, args.connections, f"{cfg.replace(' ', '-')}-{r}", live)
                    s["repeat"] = r
                    samples.append(s)
                    print(f"[burst] {cfg} #{r}: {s['all_open_s']} s, server {s['server_cpu_s']} s CPU, failed {s['failed']}", flush=True)
    finally:
        for p_ in live:
            stop(p_)
    res["samples"] = samples
    med = {}
    for cfg, _, _ in configs:
        ss = [s for s in samples if s["config"] == cfg]
        ok = [s for s in ss if s["all_open_s"] is not None]
        med[cfg] = {
            "all_open_s": statistics.median(s["all_open_s"] for s in ok) if ok else float("nan"),
            "handshake_p99_s": statistics.median(s["handshake_p99_s"] for s in ok) if ok else float("nan"),
            "server_cpu_s": statistics.median(s["server_cpu_s"] for s in ss),
            "all_opened": f"{len(ok)}/{len(ss)}",
        }
    res["burst_medians"] = med
    res["meta"]["load_after"] = loadavg()
    Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
    md = markdown(res)
    Path(args.json).with_suffix(".md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
