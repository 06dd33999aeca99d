"""
Unit tests of the Origin policy (L{wsheart.access.origin}): what a browser page
may open a WebSocket to wsheart, and what it may not.
"""

from __future__ import annotations

from twisted.trial import unittest

from wsheart.access.origin import Origin, OriginPolicy, suggestion


class OriginParseTests(unittest.TestCase):
    def test_origins(self) -> None:
        self.assertEqual(Origin.parse("https://App.Example.com"), Origin("https", "app.example.com", 443))
        self.assertEqual(Origin.parse("http://localhost:3000"), Origin("http", "localhost", 3000))
        self.assertEqual(Origin.parse("http://[::1]:8080"), Origin("http", "[::1]", 8080))
        self.assertEqual(Origin.parse("chrome-extension://abcdef"), Origin("chrome-extension", "abcdef", None))

    def test_not_origins(self) -> None:
        for text in ("", "example.com", "https://", "https://a.com/path", "https://user@a.com", "https://a.com:0",
                     "https://a.com:99999", "https://a.com:x", "https://a.com?q", "https://[::1", "https://a b.com"):  # fmt: skip
            self.assertIsNone(Origin.parse(text), text)


class OriginPolicyTests(unittest.TestCase):
    def test_default_allows_the_servers_own_pages_only(self) -> None:
        """
        The demo page served by wsheart on the same endpoint connects; a
        page of any other host or port does not.
        """
        policy = OriginPolicy()
        self.assertTrue(policy.allows("http://127.0.0.1:8080", "127.0.0.1:8080"))
        self.assertTrue(policy.allows("https://chat.example.org", "chat.example.org"))
        self.assertTrue(policy.allows("https://chat.example.org", "chat.example.org:443"))
        # Behind a proxy that ends TLS: Host without a port, https page.
        self.assertTrue(policy.allows("http://chat.example.org", "chat.example.org"))
        self.assertFalse(policy.allows("https://chat.example.org:8443", "chat.example.org"), "not a default port")
        self.assertTrue(policy.allows("https://CHAT.example.org", "chat.EXAMPLE.org"))
        self.assertFalse(policy.allows("https://evil.example", "chat.example.org"))
        self.assertFalse(policy.allows("http://127.0.0.1:9999", "127.0.0.1:8080"), "another port is another origin")
        self.assertFalse(policy.allows("https://chat.example.org.evil.net", "chat.example.org"))
        self.assertFalse(policy.allows("http://127.0.0.1:8080", None), "no Host: nothing to compare")
        self.assertFalse(policy.allows("null", "chat.example.org"))
        self.assertFalse(policy.allows("not an origin", "chat.example.org"))

    def test_exact_origins(self) -> None:
        policy = OriginPolicy(("https://app.example.com", "http://localhost:3000"))
        self.assertTrue(policy.allows("https://app.example.com", "ws.example.com"))
        self.assertTrue(policy.allows("https://app.example.com:443", "ws.example.com"))
        self.assertTrue(policy.allows("http://localhost:3000", "ws.example.com"))
        self.assertFalse(policy.allows("http://app.example.com", "ws.example.com"), "another scheme")
        self.assertFalse(policy.allows("https://app.example.com:8443", "ws.example.com"), "another port")
        self.assertFalse(policy.allows("http://localhost:3001", "ws.example.com"))
        self.assertFalse(policy.allows("https://x.app.example.com", "ws.example.com"), "exact is exact")

    def test_wildcards_match_whole_labels(self) -> None:
        policy = OriginPolicy(("https://*.example.com",))
        self.assertTrue(policy.allows("https://app.example.com", "ws.other.org"))
        self.assertTrue(policy.allows("https://a.b.example.com", "ws.other.org"))
        for refused in ("https://app.example.com.evil.net", "https://example.com", "https://evilexample.com",
                        "http://app.example.com", "https://app.example.com:8443", "https://.example.com"):  # fmt: skip
            self.assertFalse(policy.allows(refused, "ws.other.org"), refused)

    def test_null_and_star_are_explicit(self) -> None:
        self.assertTrue(OriginPolicy(("null",)).allows("null", "h"))
        self.assertFalse(OriginPolicy(("null",)).allows("https://a.com", "h"))
        self.assertTrue(OriginPolicy(("*",)).allows("https://anything.example", "h"))

    def test_missing_origin_by_option(self) -> None:
        """
        No Origin header: a program, not a browser; allowed unless told.
        """
        self.assertTrue(OriginPolicy().allows(None, "h"))
        self.assertFalse(OriginPolicy(allow_missing=False).allows(None, "h"))

    def test_bad_patterns_are_refused_with_the_reason(self) -> None:
        for bad, reason in [
            ("example.com", "scheme://host"),
            ("https://example.com/app", "not an origin"),
            ("https://*", "whole first label"),
            ("https://*.com", "two labels"),
            ("https://a*.example.com", "whole first label"),
            ("https://app.*.example.com", "whole first label"),
            ("https://*.*.example.com", "whole first label"),
        ]:
            with self.assertRaises(ValueError) as raised:
                OriginPolicy((bad,))
            self.assertIn(reason, str(raised.exception), bad)

    def test_suggestion_for_the_log(self) -> None:
        self.assertEqual(suggestion("https://App.Example.com:443"), "https://app.example.com")
        self.assertEqual(suggestion("http://localhost:3000"), "http://localhost:3000")
        self.assertEqual(suggestion("bogus"), "(not a valid origin)")
