"""
Integration test of running out of file descriptors: a real C{twistd -n
wsheart} on 127.0.0.1 with 64 open files at most, filled with WebSocket
connections until it serves no more, must stay alive, keep serving the
connections it has, not spin the CPU while at the limit, and accept again
as soon as some are closed.  The daemon is stopped by its pid.
"""

from __future__ import annotations

import os
import resource
import socket
import time
from typing import Any

import websockets.sync.client
from twisted.trial import unittest

from .loopback import REPO, Process, free_port, poll_until, twistd_command, wait_for_port

# Low enough to reach in a second, high enough for the interpreter, the
# log, the reactor's own descriptors and a few dozen connections.
OPEN_FILES = 64

# Far above what OPEN_FILES can hold: the fill stops there whatever happens.
MAX_ATTEMPTS = 200


def cpu_seconds(pid: int) -> float:
    """
    User plus system CPU time the process has used, from /proc/PID/stat.
    """
    with open(f"/proc/{pid}/stat") as f:
        # The command name (field 2) may hold spaces; the rest follows ")".
        fields = f.read().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15, here 11 and 12 (from field 3).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def open_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class OutOfDescriptorsTests(unittest.TestCase):
    """
    The daemon at its open-files limit (RLIMIT_NOFILE, soft = hard, so it
    cannot raise it at start).
    """

    timeout = 60

    def connect(self, port: int, timeout: float = 3.0) -> Any:
        return websockets.sync.client.connect(
            f"ws://127.0.0.1:{port}/", proxy=None, open_timeout=timeout, close_timeout=2
        )

    def test_recovers_after_running_out(self) -> None:
        """
        Filled until a new connection is no longer served, the daemon stays
        alive, still echoes on its oldest connection, uses little CPU while
        at the limit (it does not spin on a listening socket it cannot
        accept from), turns a connection it cannot take away at once
        instead of leaving it in the SYN queue, and upgrades a new
        connection within a few seconds once some are closed.
        """
        port = free_port()
        log_path = os.path.abspath(self.mktemp())
        with open(log_path, "wb") as log:
            daemon = Process(
                self,
                twistd_command() + ["-n", "--pidfile=", "wsheart", "--endpoint", f"tcp:{port}:interface=127.0.0.1"],
                cwd=REPO,
                stdout=log,
                stderr=log,
                preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (OPEN_FILES, OPEN_FILES)),
            )
        wait_for_port(port, 20)

        held: list[Any] = []
        self.addCleanup(lambda: [ws.close() for ws in held])
        refused: BaseException | None = None
        for _ in range(MAX_ATTEMPTS):
            try:
                held.append(self.connect(port))
            except Exception as e:  # EOF, reset or timeout: not served
                refused = e
                break
        self.assertIsNotNone(refused, f"{MAX_ATTEMPTS} connections served under a limit of {OPEN_FILES} open files")
        self.assertGreater(len(held), 20)
        self.assertIsNone(daemon.popen.poll(), "the daemon died at the limit")
        self.assertEqual(open_descriptors(daemon.pid), OPEN_FILES)

        # At the limit, with a connection the daemon cannot keep knocking:
        # it must neither spin nor leave the connection hanging.
        knock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.addCleanup(knock.close)
        before, started = cpu_seconds(daemon.pid), time.monotonic()
        time.sleep(2)
        busy = (cpu_seconds(daemon.pid) - before) / (time.monotonic() - started)
        with open(log_path + ".cpu", "w") as f:  # for the record, beside the log
            f.write(f"{busy:.3f} of one core at the limit with {len(held)} connections\n")
        self.assertLess(busy, 0.3, f"the daemon used {busy:.0%} of a core at the limit")
        # Closed from the other end at once, not left in the accept queue.
        self.assertEqual(knock.recv(1), b"")

        held[0].send("still here")
        self.assertEqual(held[0].recv(timeout=5), "still here")

        for ws in held[-5:]:
            ws.close()
        del held[-5:]

        def upgraded() -> Any:
            try:
                return self.connect(port, timeout=1)
            except Exception:
                return None

        fresh = poll_until(upgraded, timeout=5, what="a new connection upgraded after closing five")
        held.append(fresh)
        fresh.send("back")
        self.assertEqual(fresh.recv(timeout=5), "back")
        self.assertIsNone(daemon.popen.poll())
        # Twisted's spare descriptor handled it: wsheart.accepts (for when
        # there is no spare) had no cause to pause.
        with open(log_path, "rb") as f:
            logged = f.read()
        self.assertIn(b"EMFILE recovery: Closed socket", logged)
        self.assertNotIn(b"pausing accepts", logged)
