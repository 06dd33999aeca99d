"""
Unit tests of L{wsheart.access.proxies}: which proxies are trusted, and the client
an C{X-Forwarded-For} header names; and the server applying it, over
in-memory transports on a Clock: the peer and the per-address limits are
the client's.
"""

from __future__ import annotations

import ipaddress
import random
from typing import Any, Optional

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.test import iosim
from twisted.trial import unittest

from wsheart.access.limits import LimitSettings
from wsheart.access.proxies import FORWARDED, ForwardedForError, TrustedProxies, forwarded_for_entries, parse_address, peer_name

from .memory import RecordingClientProtocol, connect_client, make_server_factory

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


class ForwardedHeaderTests(unittest.TestCase):
    """
    --forwarded-header forwarded: the standard header's for= parameters,
    walked as X-Forwarded-For is.
    """

    proxies = TrustedProxies.parse(["127.0.0.1/32,10.0.0.0/8", "::1/128"], header="Forwarded")

    def test_the_header_is_chosen_and_checked(self) -> None:
        self.assertEqual(self.proxies.header, FORWARDED)
        self.assertEqual(TrustedProxies.parse(["10.0.0.0/8"]).header, "x-forwarded-for", "the default")
        with self.assertRaisesRegex(ValueError, "x-forwarded-for or forwarded"):
            TrustedProxies.parse(["10.0.0.0/8"], header="x-real-ip")

    def test_for_values_as_rfc_7239_writes_them(self) -> None:
        """
        Elements by comma, pairs by semicolon, names in any case, values
        bare or quoted (a quoted comma or semicolon does not split), IPv6
        in brackets with a port; an element without for= is "".
        """
        header = 'for=192.0.2.60;proto=http;by=203.0.113.43, For="[2001:db8:cafe::17]:4711", proto=https, for="a,b;c"'
        self.assertEqual(forwarded_for_entries(header), ["192.0.2.60", "[2001:db8:cafe::17]:4711", "", "a,b;c"])
        self.assertEqual(forwarded_for_entries('for="\\"quoted\\""'), ['"quoted"'])

    def test_client_behind_proxies(self) -> None:
        proxies = self.proxies
        self.assertEqual(proxies.client_address("127.0.0.1", ["for=203.0.113.7;proto=https"]), ip("203.0.113.7"))
        self.assertEqual(
            proxies.client_address("127.0.0.1", ['for=1.1.1.1, for="[2001:db8:1::7]:4711", for=10.0.0.2;by=10.0.0.1']),
            ip("2001:db8:1::7"),
            "trusted hops skipped, what the client wrote left of its own address not believed",
        )
        self.assertIsNone(proxies.client_address("203.0.113.66", ["for=198.51.100.1"]), "an untrusted peer's header")
        self.assertIsNone(proxies.client_address("127.0.0.1", ["203.0.113.7"][:0]), "no header")

    def test_unknown_obfuscated_or_missing_for_refuses_the_header(self) -> None:
        for header in ["for=unknown", 'for="_hidden"', "proto=https", "for=203.0.113.7, proto=http", "for=203.0.113.7, "]:
            with self.assertRaises(ForwardedForError, msg=header):
                self.proxies.client_address("127.0.0.1", [header])
        # Garbage left of the client's own address is never read.
        self.assertEqual(self.proxies.client_address("127.0.0.1", ["for=unknown, for=203.0.113.7"]), ip("203.0.113.7"))

    def test_any_header_is_an_address_none_or_a_clear_error(self) -> None:
        """
        Whatever a proxy (or a client behind it) writes - random mixtures of
        the syntax's own characters - the walk gives an address, nothing,
        or ForwardedForError: never another exception.
        """
        rng = random.Random(7239)
        alphabet = 'for=by;proto,"\\[]:_unknown 0123456789abcdef.:FoR=\t'
        for _ in range(3000):
            header = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40)))
            for proxies in (self.proxies, PROXIES):
                try:
                    result = proxies.client_address("127.0.0.1", [header])
                except ForwardedForError:
                    continue
                self.assertTrue(result is None or isinstance(result, (ipaddress.IPv4Address, ipaddress.IPv6Address)), header)

    def test_x_forwarded_for_syntax_is_no_forwarded_header(self) -> None:
        with self.assertRaises(ForwardedForError):
            self.proxies.client_address("127.0.0.1", ["203.0.113.7"])  # no for=


class ForwardedForServerTests(unittest.TestCase):
    """
    The server protocol names and counts the client a trusted proxy's
    X-Forwarded-For names, and nobody else's.
    """

    def setUp(self) -> None:
        self.clock = Clock()

    def factory(self, trusted: str = "127.0.0.1/32,::1/128", header: str = "x-forwarded-for", **limits: int) -> Any:
        return make_server_factory(
            self.clock,
            limits=LimitSettings(**limits),
            trusted_proxies=TrustedProxies.parse([trusted] if trusted else [], header),
        )

    def connect(
        self, factory: Any, peer: str, forwarded_for: Optional[str], headers: Optional[dict[str, str]] = None
    ) -> tuple[RecordingClientProtocol, Any]:
        """
        A client whose TCP peer address is C{peer}, sending
        C{X-Forwarded-For} if not None, and C{headers}.
        """
        headers = dict(headers or {})
        if forwarded_for is not None:
            headers["X-Forwarded-For"] = forwarded_for
        client, server, _ = connect_client(factory, self.clock, headers=headers, peer=peer)
        return client, server

    def status(self, client: RecordingClientProtocol) -> Optional[bytes]:
        data = client.http_response_data
        return data.split(b" ", 2)[1] if data else None

    def test_clients_behind_one_trusted_proxy_are_counted_apart(self) -> None:
        """
        Two clients behind the same trusted proxy each get their own place
        under --max-connections-per-address 1, with their own peer name in
        the hub; a second connection from the first client's address gets
        429.
        """
        factory = self.factory(max_connections_per_address=1)
        first, server1 = self.connect(factory, "127.0.0.1", "203.0.113.7")
        second, server2 = self.connect(factory, "127.0.0.1", "198.51.100.9")
        self.assertTrue(first.opened and second.opened, "two clients, not one proxy")
        self.assertEqual((server1.peer, server2.peer), ("tcp4:203.0.113.7", "tcp4:198.51.100.9"))
        self.assertEqual(sorted(info.peer for info in factory.hub), ["tcp4:198.51.100.9", "tcp4:203.0.113.7"])
        third, _ = self.connect(factory, "127.0.0.1", "203.0.113.7")
        self.assertFalse(third.opened)
        self.assertEqual(self.status(third), b"429")
        self.assertEqual(factory.limits.open, {"203.0.113.7": 1, "198.51.100.9": 1})
        self.assertEqual(factory.limits.pending, {}, "nothing left counted against the proxy")

    def test_only_the_chosen_header_is_read(self) -> None:
        """
        --forwarded-header forwarded: the client is the one Forwarded names,
        and an X-Forwarded-For (the client's own: these proxies do not
        write it) is not read; by default it is the other way round.
        """
        both = {"Forwarded": "for=198.51.100.9;proto=https"}
        _, server = self.connect(self.factory(header="forwarded"), "127.0.0.1", "203.0.113.66", both)
        self.assertEqual(server.peer, "tcp4:198.51.100.9")
        _, server = self.connect(self.factory(), "127.0.0.1", "203.0.113.66", both)
        self.assertEqual(server.peer, "tcp4:203.0.113.66")
        _, server = self.connect(self.factory(), "127.0.0.1", None, both)
        self.assertEqual(server.peer, "tcp4:127.0.0.1:40000", "Forwarded alone is not read by default")

    def test_untrusted_peers_header_is_ignored(self) -> None:
        """
        A client that connects directly and writes X-Forwarded-For itself
        is still its own TCP address: a second connection claiming another
        address gets 429.
        """
        factory = self.factory(max_connections_per_address=1)
        first, server = self.connect(factory, "192.0.2.50", "203.0.113.7")
        self.assertTrue(first.opened)
        self.assertEqual(server.peer, "tcp4:192.0.2.50:40000")
        spoofing, _ = self.connect(factory, "192.0.2.50", "198.51.100.9")
        self.assertEqual(self.status(spoofing), b"429")
        self.assertEqual(factory.limits.open, {"192.0.2.50": 1})

    def test_never_read_without_trusted_proxies(self) -> None:
        """
        Without --trusted-proxy the header is not read, even from loopback.
        """
        factory = self.factory(trusted="", max_connections_per_address=1)
        client, server = self.connect(factory, "127.0.0.1", "203.0.113.7")
        self.assertTrue(client.opened)
        self.assertEqual(server.peer, "tcp4:127.0.0.1:40000")
        self.assertEqual(factory.limits.open, {"127.0.0.1": 1})

    def test_ipv6_client_behind_an_ipv6_proxy(self) -> None:
        """
        An IPv6 client behind an IPv6 proxy is named tcp6:ADDRESS and
        counted by its /64.
        """
        factory = self.factory()
        client, server = self.connect(factory, "::1", "2001:db8:1:2::7")
        self.assertTrue(client.opened)
        self.assertEqual(server.peer, "tcp6:2001:db8:1:2::7")
        self.assertEqual(factory.limits.open, {"2001:db8:1:2::/64": 1})

    def test_several_header_lines(self) -> None:
        """
        X-Forwarded-For sent on two lines (a proxy that adds its own line
        instead of appending) is read as one list, the last line last.
        """
        factory = self.factory()
        server = factory.buildProtocol(None)
        transport = iosim.FakeTransport(server, isServer=True, peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        server.makeConnection(transport)
        server.dataReceived(
            b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            b"X-Forwarded-For: 1.1.1.1\r\nX-Forwarded-For: 203.0.113.7\r\n\r\n"
        )
        self.assertTrue(transport.getOutBuffer().startswith(b"HTTP/1.1 101 "))
        self.assertEqual(server.peer, "tcp4:203.0.113.7")

    def test_malformed_header_keeps_the_proxy_counted_and_logged_once(self) -> None:
        """
        A trusted proxy's header that names no client keeps the proxy as
        the peer; it is counted in a metric, and logged once for a burst.
        """
        factory = self.factory()
        with capturedLogs() as events:
            results = [self.connect(factory, "127.0.0.1", "unknown") for _ in range(3)]
        self.assertTrue(all(client.opened for client, _ in results), "the connection is not refused for it")
        self.assertEqual({server.peer for _, server in results}, {"tcp4:127.0.0.1:40000"})
        self.assertEqual(factory.limits.open, {"127.0.0.1": 3})
        self.assertEqual(factory.metrics.forwarded_for_ignored._value.get(), 3)
        lines = [e for e in events if e.get("header") == "X-Forwarded-For"]
        self.assertEqual(len(lines), 1)
        self.assertIn("'unknown' is not an IP address", lines[0]["why"])
        self.clock.advance(10)
        with capturedLogs() as events:
            self.connect(factory, "127.0.0.1", "unknown")
        self.assertEqual(
            [e["count"] for e in events if e.get("header") == "X-Forwarded-For"], [3], "the two unlogged and this one"
        )

    def test_pending_limit_does_not_cap_a_trusted_proxy(self) -> None:
        """
        Handshakes in progress through a trusted proxy are not counted
        against the proxy's address at accept (it carries every client's);
        an untrusted address is still dropped over the limit.
        """
        factory = make_server_factory(
            self.clock,
            limits=LimitSettings(max_pending_per_address=1),
            trusted_proxies=TrustedProxies.parse(["127.0.0.1/32"]),
            handshake_timeout=5,
        )
        transports = []
        for host in ["127.0.0.1", "127.0.0.1", "192.0.2.50", "192.0.2.50"]:
            server: Any = factory.buildProtocol(None)
            transport = iosim.FakeTransport(server, isServer=True, peerAddress=IPv4Address("TCP", host, 40000))
            server.makeConnection(transport)
            transports.append(transport)
        self.assertEqual([t.disconnecting for t in transports], [False, False, False, True])
        self.assertEqual(factory.limits.pending, {"192.0.2.50": 1})
        self.clock.advance(6)  # the handshake timeout, so no call is left behind
