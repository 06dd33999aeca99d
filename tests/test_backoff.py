"""
Tests for wsheart.backoff: the full-jitter schedule, its spread at the cap,
the stable reset, server hints and Retry-After.
"""

from __future__ import annotations

import random
from collections import Counter

from twisted.trial import unittest

from wsheart.backoff import (
    MAX_HINT_SECONDS,
    Backoff,
    BackoffSettings,
    RetryHint,
    hint_from_close,
    parse_retry_after,
)


class SettingsTests(unittest.TestCase):
    """
    BackoffSettings validation and windows.
    """

    def test_window_grows_to_cap(self) -> None:
        """
        The window is initial * factor ** n, capped.
        """
        settings = BackoffSettings(initial=1, factor=2, cap=60)
        self.assertEqual([settings.window(n) for n in range(8)], [1, 2, 4, 8, 16, 32, 60, 60])

    def test_huge_failure_count(self) -> None:
        """
        Thousands of failures do not overflow; the window stays at the cap.
        """
        self.assertEqual(BackoffSettings().window(5000), 60)

    def test_invalid(self) -> None:
        """
        Nonsense settings are refused with a message naming the field.
        """
        for kwargs, text in [
            (dict(initial=0), "initial"),
            (dict(factor=0.5), "factor"),
            (dict(initial=10, cap=5), "cap"),
            (dict(floor=-1), "floor"),
            (dict(max_attempts=0), "max attempts"),
            (dict(initial=-1), "initial"),
            (dict(stable_after=-1), "stable-after"),
        ]:
            with self.assertRaises(ValueError) as e:
                BackoffSettings(**kwargs)  # type: ignore[arg-type]
            self.assertIn(text, str(e.exception))

    def test_limits_that_are_allowed(self) -> None:
        """
        The edges of the valid range are accepted: no growth (factor 1), a
        cap equal to the initial window, no floor, no stable wait, one
        attempt.
        """
        BackoffSettings(factor=1, initial=5, cap=5, floor=0, stable_after=0, max_attempts=1)

    def test_defaults_are_the_documented_ones(self) -> None:
        """
        The defaults README's "Reconnect schedule" table states.
        """
        settings = BackoffSettings()
        self.assertEqual(
            (settings.initial, settings.factor, settings.cap, settings.floor, settings.stable_after, settings.max_attempts),
            (1.0, 2.0, 60.0, 0.1, 30.0, None),
        )


class ScheduleTests(unittest.TestCase):
    """
    Delays drawn by Backoff.
    """

    def test_bounds(self) -> None:
        """
        Every delay lies in [floor, floor + window(n)] for its attempt n.
        """
        settings = BackoffSettings(initial=0.5, factor=3, cap=20, floor=0.1)
        rng = random.Random(1)
        backoff = Backoff(settings, rng.random)
        for n in range(12):
            delay = backoff.failed()
            self.assertGreaterEqual(delay, settings.floor)
            self.assertLessEqual(delay, settings.floor + settings.window(n))
        self.assertEqual(backoff.failures, 12)

    def test_extremes_of_the_random_source(self) -> None:
        """
        random() = 0 gives the floor; random() -> 1 gives floor + window.
        """
        settings = BackoffSettings(initial=1, factor=2, cap=8, floor=0.25)
        self.assertEqual(Backoff(settings, lambda: 0.0).failed(), 0.25)
        backoff = Backoff(settings, lambda: 1.0)
        self.assertEqual([backoff.failed() for _ in range(5)], [1.25, 2.25, 4.25, 8.25, 8.25])

    def test_spread_at_the_cap(self) -> None:
        """
        A thousand clients that all failed many times do not line up: their
        delays cover the whole capped window, with no one-second bucket
        holding more than three times its fair share.
        """
        settings = BackoffSettings(initial=1, factor=2, cap=60, floor=0.1)
        rng = random.Random(2024)
        delays = []
        for _ in range(1000):
            backoff = Backoff(settings, rng.random)
            backoff.failures = 20
            delays.append(backoff.failed())
        buckets = Counter(int(d) for d in delays)
        self.assertGreaterEqual(len(buckets), 60)  # every second of [0.1, 60.1)
        self.assertLessEqual(max(buckets.values()), 3 * 1000 / 60)
        self.assertLess(min(delays), 2)
        self.assertGreater(max(delays), 58)

    def test_stable_reset(self) -> None:
        """
        succeeded() - called once a connection stayed open stable_after
        seconds - starts the schedule over.
        """
        backoff = Backoff(BackoffSettings(initial=1, factor=2, cap=60, floor=0), lambda: 1.0)
        for _ in range(5):
            backoff.failed()
        self.assertEqual(backoff.failed(), 32)
        backoff.succeeded()
        self.assertEqual(backoff.failures, 0)
        self.assertEqual(backoff.failed(), 1)

    def test_attempt_limit(self) -> None:
        """
        With max_attempts, the schedule is exhausted after that many failures.
        """
        backoff = Backoff(BackoffSettings(max_attempts=3))
        for _ in range(2):
            backoff.failed()
            self.assertFalse(backoff.exhausted)
        backoff.failed()
        self.assertTrue(backoff.exhausted)
        self.assertFalse(Backoff(BackoffSettings()).exhausted)

    def test_hint(self) -> None:
        """
        A hinted close waits retry_after + uniform(0, jitter) (plus the
        floor) and does not count as a failure.
        """
        settings = BackoffSettings(floor=0.1)
        self.assertEqual(Backoff(settings, lambda: 0.0).hinted(RetryHint(5, 10)), 5.1)
        backoff = Backoff(settings, lambda: 0.5)
        self.assertEqual(backoff.hinted(RetryHint(5, 10)), 10.1)
        self.assertEqual(backoff.failures, 0)

    def test_hint_spreads_a_fleet(self) -> None:
        """
        A fleet given the same hint returns spread over the jitter window.
        """
        rng = random.Random(5)
        delays = [Backoff(BackoffSettings(floor=0), rng.random).hinted(RetryHint(5, 10)) for _ in range(500)]
        self.assertTrue(all(5 <= d <= 15 for d in delays))
        buckets = Counter(int(d) for d in delays)
        self.assertEqual(sorted(buckets), list(range(5, 15)))
        self.assertLessEqual(max(buckets.values()), 3 * 500 / 10)

    def test_retry_after_is_a_failure_plus_jitter(self) -> None:
        """
        A 503 with Retry-After waits at least that long plus the jittered
        delay, and counts as a failure.
        """
        backoff = Backoff(BackoffSettings(initial=1, floor=0), lambda: 0.5)
        self.assertEqual(backoff.retry_after(7), 7.5)
        self.assertEqual(backoff.failures, 1)


class HintParsingTests(unittest.TestCase):
    """
    Reading hints from close frames and HTTP headers.
    """

    def test_close_hint(self) -> None:
        """
        1012 and 1013 with a JSON reason carry a hint.
        """
        self.assertEqual(hint_from_close(1012, '{"retry_after": 5, "jitter": 10}'), RetryHint(5, 10))
        self.assertEqual(hint_from_close(1013, '{"retry_after": 2.5}'), RetryHint(2.5, 0))

    def test_no_hint(self) -> None:
        """
        Other codes, plain text, non-objects and wrong types carry none.
        """
        for code, reason in [
            (1000, '{"retry_after": 5}'),
            (1011, '{"retry_after": 5}'),
            (1012, None),
            (1012, "service restart"),
            (1012, "[5]"),
            (1012, '{"retry_after": "soon"}'),
            (1012, '{"retry_after": true}'),
            (1012, '{"retry_after": NaN}'),
            (1012, '{"jitter": 3}'),
            (1012, '"5"'),
            (1012, "5"),
            (1012, '{"retry_after": 5, "jitter": "x"}'),
        ]:
            self.assertIsNone(hint_from_close(code, reason), (code, reason))

    def test_hint_clamped(self) -> None:
        """
        Negative hints become 0; huge ones are clamped to an hour.
        """
        self.assertEqual(
            hint_from_close(1013, '{"retry_after": -5, "jitter": 1e9}'),
            RetryHint(0, MAX_HINT_SECONDS),
        )

    def test_hint_clamped_to_one_hour_in_all(self) -> None:
        """
        Defect 12: retry_after and jitter together wait at most an hour -
        clamping each to an hour let a hint park a client for two.
        """
        for reason, expected in [
            ('{"retry_after": 3600, "jitter": 3600}', RetryHint(3600, 0)),
            ('{"retry_after": 3000, "jitter": 1000}', RetryHint(3000, 600)),
            ('{"retry_after": 1e9, "jitter": 1e9}', RetryHint(3600, 0)),
        ]:
            hint = hint_from_close(1012, reason)
            self.assertEqual(hint, expected, reason)
            assert hint is not None
            backoff = Backoff(BackoffSettings(floor=0.1), random=lambda: 1.0)
            self.assertLessEqual(backoff.hinted(hint), MAX_HINT_SECONDS + 0.1)

    def test_retry_after_header(self) -> None:
        """
        Retry-After as delta-seconds or as an HTTP date.
        """
        self.assertEqual(parse_retry_after("120", now=0), 120)
        now = 784111777.0  # Sun, 06 Nov 1994 08:49:37 GMT
        self.assertEqual(parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now=now), 30)
        self.assertEqual(parse_retry_after("Sun, 06 Nov 1994 08:40:00 GMT", now=now), 0)
        self.assertIsNone(parse_retry_after(None, now=0))
        self.assertIsNone(parse_retry_after("soon", now=0))
