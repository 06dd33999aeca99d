"""
Tests for wsheart.logs (JSON lines for journald) and --log-format.
"""

from __future__ import annotations

import io
import json
import os
import signal

from twisted.logger import Logger, LogLevel
from twisted.trial import unittest

from wsheart.logs import JSONLinesObserver

from .loopback import REPO, Process, free_port, twistd_command, wait_for_port


class JSONLinesTests(unittest.TestCase):
    """
    One JSON object per event, fields kept as keys.
    """

    def test_event_fields(self) -> None:
        """
        The text, the level, the namespace and the event's own fields are
        keys of one JSON line.
        """
        stream = io.StringIO()
        observer = JSONLinesObserver(stream)
        log = Logger(namespace="wsheart.test", observer=observer)
        log.info("peer {peer} declared dead: {misses} missed pongs", peer="tcp4:127.0.0.1:1", misses=2, cause="heartbeat")
        (line,) = stream.getvalue().splitlines()
        record = json.loads(line)
        self.assertEqual(record["text"], "peer tcp4:127.0.0.1:1 declared dead: 2 missed pongs")
        self.assertEqual(record["level"], LogLevel.info.name)
        self.assertEqual(record["namespace"], "wsheart.test")
        self.assertEqual((record["peer"], record["misses"], record["cause"]), ("tcp4:127.0.0.1:1", 2, "heartbeat"))
        self.assertIsInstance(record["time"], float)

    def test_failure_and_odd_values(self) -> None:
        """
        Failures carry their traceback; values JSON cannot hold become
        their repr.
        """
        stream = io.StringIO()
        log = Logger(namespace="wsheart.test", observer=JSONLinesObserver(stream))
        try:
            1 / 0
        except ZeroDivisionError:
            log.failure("it broke for {thing}", thing=object())
        record = json.loads(stream.getvalue())
        self.assertIn("ZeroDivisionError", record["traceback"])
        self.assertTrue(record["thing"].startswith("<object object"))
        self.assertEqual(record["level"], "critical")


class LogFormatProcessTests(unittest.TestCase):
    """
    twistd wsheart --log-format json writes JSON lines on stdout.
    """

    timeout = 30

    def test_json_on_stdout(self) -> None:
        """
        Every line twistd writes is a JSON object, and the start-up line
        names the heartbeat bound as a field.
        """
        port = free_port()
        daemon = Process(
            self,
            twistd_command()
            + ["-n", "--pidfile=", "wsheart", "-e", f"tcp:{port}:interface=127.0.0.1", "--log-format", "json"],
            cwd=REPO,
        )
        wait_for_port(port)
        os.kill(daemon.pid, signal.SIGTERM)
        daemon.popen.wait(20)
        daemon.stop()
        lines = [line for line in daemon.stdout.decode().splitlines() if line.strip()]
        records = [json.loads(line) for line in lines]
        starting = [r for r in records if "bound" in r]
        self.assertEqual(len(starting), 1)
        self.assertEqual(starting[0]["bound"], 60.0)
        self.assertTrue(all("text" in r and "level" in r for r in records))
