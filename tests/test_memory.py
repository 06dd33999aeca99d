"""
Unit tests of wsheart.memory on task.Clock: the releaser trims once the
connection count has fallen well below its peak, never while it is steady
or growing, once per drop, and survives a failing trim.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial import unittest

from wsheart.memory import MemoryReleaser, glibc_malloc_trim


class MemoryReleaserTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.open = 0
        self.trimmed: list[int] = []
        self.releaser = MemoryReleaser(self.clock, lambda: self.open, lambda: self.trimmed.append(self.open), interval=10)
        self.releaser.startService()
        self.addCleanup(self.releaser.stopService)

    def at(self, count: int) -> None:
        self.open = count
        self.clock.advance(10)

    def test_steady_and_growing_counts_never_trim(self) -> None:
        """
        A daemon whose connections come and go a little, or grow, is never
        trimmed.
        """
        for count in [100, 3000, 2900, 3100, 2800, 5000, 4900]:
            self.at(count)
        self.assertEqual(self.trimmed, [])

    def test_a_large_drop_trims_once(self) -> None:
        """
        3000 open, then 1000: trimmed once, at 1000; staying there, or
        falling by less than the thresholds from there, trims no more.
        """
        self.at(3000)
        self.at(1000)
        self.assertEqual(self.trimmed, [1000])
        self.at(1000)
        self.at(700)
        self.assertEqual(self.trimmed, [1000])
        self.assertEqual(self.releaser.trims, 1)

    def test_both_thresholds_count(self) -> None:
        """
        The drop must be at least min_drop (500) connections and a quarter
        of the peak: 400 of 600 is too few connections, 600 of 4000 too
        small a share; 1000 of 4000 trims.
        """
        self.at(600)
        self.at(200)
        self.assertEqual(self.trimmed, [])
        self.at(4000)
        self.at(3400)
        self.assertEqual(self.trimmed, [])
        self.at(3000)
        self.assertEqual(self.trimmed, [3000])

    def test_a_failing_trim_is_logged_and_the_loop_goes_on(self) -> None:
        """
        A trim that raises is logged; the next drop is still trimmed.
        """
        calls = []

        def trim() -> None:
            calls.append(self.open)
            raise OSError("no")

        releaser = MemoryReleaser(self.clock, lambda: self.open, trim, interval=10)
        releaser.startService()
        self.addCleanup(releaser.stopService)
        with capturedLogs() as events:
            self.at(3000)
            self.at(0)
            self.at(3000)
            self.at(0)
        self.assertEqual(calls, [0, 0])
        self.assertTrue(any(e.get("log_failure") is not None for e in events))
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 2)

    def test_without_malloc_trim_nothing_happens(self) -> None:
        """
        Where the C library has no malloc_trim, the releaser only watches.
        """
        releaser = MemoryReleaser(self.clock, lambda: self.open, None, interval=10)
        self.open = 3000
        releaser.check()
        self.open = 0
        releaser.check()
        self.assertEqual(releaser.trims, 0)

    def test_glibc_trim_runs(self) -> None:
        """
        On glibc (this machine), malloc_trim is found and callable.
        """
        trim = glibc_malloc_trim()
        assert trim is not None
        self.assertIn(trim(), (0, 1))
