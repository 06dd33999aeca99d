"""
Tests for wsheart.logs: JSON lines for journald, written to a stream in
memory.  The daemon's --log-format json, as a process, is tested in
L{tests.test_integration_process}.
"""

from __future__ import annotations

import io
import json

from twisted.logger import Logger, LogLevel
from twisted.trial import unittest

from wsheart.logs import JSONLinesObserver


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
