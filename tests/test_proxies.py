"""
Unit tests of L{wsheart.proxies}: which proxies are trusted, and the client
an C{X-Forwarded-For} header names.
"""

from __future__ import annotations

import ipaddress

from twisted.trial import unittest

from wsheart.proxies import ForwardedForError, TrustedProxies, parse_address, peer_name

PROXIES = TrustedProxies.parse(["127.0.0.1/32,10.0.0.0/8", "::1/128", "2001:db8:ff::/48"])


def ip(text: str) -> object:
    return ipaddress.ip_address(text)


class ParseTests(unittest.TestCase):
    def test_ranges_repeatable_and_comma_separated(self) -> None:
        """
        Each value may hold several CIDRs; a bare address is one host; an
        IPv4-mapped range is its IPv4 range.
        """
        proxies = TrustedProxies.parse(["127.0.0.1/32, 10.0.0.0/8", "::1/128", "192.0.2.9", "::ffff:172.16.0.0/108", ""])
        self.assertEqual(
            [str(n) for n in proxies.networks],
            ["127.0.0.1/32", "10.0.0.0/8", "::1/128", "192.0.2.9/32", "172.16.0.0/12"],
        )
        self.assertTrue(proxies)
        self.assertFalse(TrustedProxies.parse([]), "none by default")

    def test_bad_ranges_are_refused_with_the_value(self) -> None:
        """
        Not a CIDR, or host bits set (10.0.0.1/8 is most likely a typo for
        a single host or a range): a ValueError naming it.
        """
        for bad in ["10.0.0.0/33", "proxy.example.com", "10.0.0.1/8", "10.0.0.0/8,nonsense", "::1/129"]:
            with self.assertRaises(ValueError, msg=bad) as e:
                TrustedProxies.parse([bad])
            self.assertIn("--trusted-proxy", str(e.exception))

    def test_addresses_as_proxies_write_them(self) -> None:
        """
        Entries may carry a port or brackets; mapped IPv4 is IPv4; anything
        else is not an address.
        """
        self.assertEqual(parse_address(" 203.0.113.7 "), ip("203.0.113.7"))
        self.assertEqual(parse_address("203.0.113.7:4711"), ip("203.0.113.7"))
        self.assertEqual(parse_address("[2001:db8::1]:4711"), ip("2001:db8::1"))
        self.assertEqual(parse_address("[2001:db8::1]"), ip("2001:db8::1"))
        self.assertEqual(parse_address("2001:db8::1"), ip("2001:db8::1"))
        self.assertEqual(parse_address("::ffff:203.0.113.7"), ip("203.0.113.7"))
        for garbage in ["", "unknown", "_hidden", "example.com", "1.2.3.4:x", "[2001:db8::1", "[::1]x", "1.2.3.256", "1.2.3.4, 5.6.7.8"]:
            self.assertIsNone(parse_address(garbage), garbage)

    def test_peer_names(self) -> None:
        """
        A forwarded client is named like Autobahn's peers, without a port.
        """
        self.assertEqual(peer_name(ip("203.0.113.7")), "tcp4:203.0.113.7")  # type: ignore[arg-type]
        self.assertEqual(peer_name(ip("2001:db8::1")), "tcp6:2001:db8::1")  # type: ignore[arg-type]


class ClientAddressTests(unittest.TestCase):
    def test_ipv4_client_behind_one_proxy(self) -> None:
        """
        From a trusted peer, the address the proxy appended is the client.
        """
        self.assertEqual(PROXIES.client_address("127.0.0.1", ["203.0.113.7"]), ip("203.0.113.7"))

    def test_ipv6_client_and_proxy(self) -> None:
        """
        IPv6 clients and IPv6 proxies (a listener on ::1, a proxy in a /48).
        """
        self.assertEqual(PROXIES.client_address("::1", ["2001:db8:1::7"]), ip("2001:db8:1::7"))
        self.assertEqual(PROXIES.client_address("2001:db8:ff::2", ["2001:db8:1::7, 2001:db8:ff::9"]), ip("2001:db8:1::7"))

    def test_mapped_ipv4_peer_and_entries(self) -> None:
        """
        A dual-stack listener sees an IPv4 proxy as ::ffff:127.0.0.1: still
        trusted; a mapped entry is the IPv4 client, and a mapped proxy
        address in the chain is skipped like its IPv4 form.
        """
        self.assertEqual(PROXIES.client_address("::ffff:127.0.0.1", ["::ffff:203.0.113.7"]), ip("203.0.113.7"))
        self.assertEqual(PROXIES.client_address("127.0.0.1", ["203.0.113.7, ::ffff:10.0.0.5"]), ip("203.0.113.7"))

    def test_header_from_an_untrusted_peer_is_ignored(self) -> None:
        """
        A client that connects directly can write anything: its header is
        not read, even one naming a trusted address, even a malformed one.
        """
        for header in ["198.51.100.1", "127.0.0.1", "garbage"]:
            self.assertIsNone(PROXIES.client_address("203.0.113.66", [header]), header)
        self.assertIsNone(PROXIES.client_address(None, ["198.51.100.1"]), "a Unix socket peer")
        self.assertIsNone(TrustedProxies().client_address("127.0.0.1", ["198.51.100.1"]), "no --trusted-proxy: never read")

    def test_walk_skips_trusted_hops_and_stops_at_the_first_untrusted(self) -> None:
        """
        Several trusted proxies in a row are skipped; whatever the client
        wrote itself (left of the address the first proxy appended) is not
        believed.
        """
        self.assertEqual(PROXIES.client_address("127.0.0.1", ["203.0.113.7, 10.0.0.2, 10.0.0.1"]), ip("203.0.113.7"))
        spoofed = "1.1.1.1, 10.9.9.9, 203.0.113.7, 10.0.0.1"  # the client claimed "1.1.1.1, 10.9.9.9"
        self.assertEqual(PROXIES.client_address("127.0.0.1", [spoofed]), ip("203.0.113.7"))

    def test_all_trusted_gives_the_left_most(self) -> None:
        """
        A request from inside the proxies' own network: the left-most.
        """
        self.assertEqual(PROXIES.client_address("127.0.0.1", ["10.0.0.7, 10.0.0.1"]), ip("10.0.0.7"))

    def test_garbage_on_the_walked_path_refuses_the_header(self) -> None:
        """
        A malformed entry the walk reaches (written by a trusted proxy, or
        an empty entry) is an error; garbage the client wrote left of its
        own address is never read, so it cannot get the header ignored.
        """
        for header in ["unknown", "203.0.113.7, ", "203.0.113.7, , 10.0.0.1", "not-an-ip, 10.0.0.1", "10.0.0.7, junk"]:
            with self.assertRaises(ForwardedForError, msg=header):
                PROXIES.client_address("127.0.0.1", [header])
        self.assertEqual(PROXIES.client_address("127.0.0.1", ["junk, <script>, 203.0.113.7"]), ip("203.0.113.7"))

    def test_empty_header_is_no_header(self) -> None:
        """
        No X-Forwarded-For (or an empty one): keep the TCP peer.
        """
        self.assertIsNone(PROXIES.client_address("127.0.0.1", []))
        self.assertIsNone(PROXIES.client_address("127.0.0.1", [" "]))

    def test_several_header_lines_read_as_one_list(self) -> None:
        """
        Repeated X-Forwarded-For lines are one list in order (RFC 9110
        5.3), the same as Autobahn's joined "a, b": the last line's last
        entry is the nearest hop.
        """
        lines = ["1.1.1.1", "203.0.113.7, 10.0.0.2"]
        self.assertEqual(PROXIES.client_address("127.0.0.1", lines), ip("203.0.113.7"))
        self.assertEqual(PROXIES.client_address("127.0.0.1", [", ".join(lines)]), ip("203.0.113.7"))
        self.assertEqual(PROXIES.client_address("127.0.0.1", ["203.0.113.7", "10.0.0.2"]), ip("203.0.113.7"))
