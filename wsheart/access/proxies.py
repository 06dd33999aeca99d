"""
Which reverse proxies are trusted to say who the client is
(C{--trusted-proxy CIDR}), and the client an C{X-Forwarded-For} header - or,
with C{--forwarded-header forwarded}, the standard C{Forwarded} header
(RFC 7239) - names.  The operator says which one its proxies write: the
other is whatever the client put there, and is never read.

C{X-Forwarded-For: client, proxy1, proxy2} is written by each proxy in turn,
appending the address it received the request from; the TCP peer is the
last proxy.  Anything to the left of the first proxy the daemon trusts was
written by someone it does not, the client included, who can write
anything.  So the header is read only when the TCP peer is trusted, and
from the right: trusted proxies are skipped, and the first address that is
not one is the client.  If every address is a trusted proxy, the left-most
is the client (a request from inside the proxies' own network).

Entries are IP addresses; a port (C{192.0.2.1:4711}, C{[2001:db8::1]:4711})
is dropped and brackets around an IPv6 address are allowed, as some proxies
write them.  A malformed entry on the path the walk reads (an empty entry,
C{unknown}, a host name) means a trusted proxy wrote something wrong: the
whole header is refused (L{ForwardedForError}) and the TCP peer kept.
Entries left of the client are never read, so a client cannot get its
header ignored by adding garbage to it.

An IPv4-mapped IPv6 address (C{::ffff:192.0.2.1}) is its IPv4 address,
both when matched against the trusted ranges and as the client's address.

C{Forwarded: for=192.0.2.60;proto=https, for="[2001:db8::17]:4711"} is the
same list written differently: one element per hop (comma-separated), each
hop's C{for=} parameter (names case-insensitive, the value a token or a
quoted string) its address.  It is walked the same way; an element the walk
reads with no C{for=}, or C{for=unknown} or an obfuscated C{for=_hidden},
refuses the header, since nothing then says who the client is.

Pure: no I/O, no reactor.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence, Union

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


# The headers a trusted proxy may name the client in (--forwarded-header).
X_FORWARDED_FOR = "x-forwarded-for"
FORWARDED = "forwarded"
HEADERS = (X_FORWARDED_FOR, FORWARDED)


class ForwardedForError(ValueError):
    """
    An C{X-Forwarded-For} (or C{Forwarded}) header from a trusted proxy
    that does not name a client address.
    """


def _split_outside_quotes(text: str, separator: str) -> list[str]:
    """
    C{text} split at C{separator}, except inside a quoted string (where a
    backslash escapes the next character).
    """
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return parts


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        inner = value[1:-1]
        out: list[str] = []
        escaped = False
        for char in inner:
            if escaped or char != "\\":
                out.append(char)
                escaped = False
            else:
                escaped = True
        return "".join(out)
    return value


def forwarded_for_entries(header: str) -> list[str]:
    """
    The C{for=} value of each element of a C{Forwarded} header, in order
    (unquoted; an element without one gives C{""}, which no walk accepts).
    """
    entries = []
    for element in _split_outside_quotes(header, ","):
        if not element.strip():
            entries.append("")
            continue
        value = ""
        for pair in _split_outside_quotes(element, ";"):
            name, sep, raw = pair.partition("=")
            if sep and name.strip().lower() == "for":
                value = _unquote(raw)
                break
        entries.append(value)
    return entries


def parse_address(text: str) -> Optional[IPAddress]:
    """
    The IP address C{text} names (IPv4-mapped IPv6 made IPv4), or None.
    Accepts C{[v6]}, C{[v6]:port} and C{v4:port}, as proxies write them.
    """
    text = text.strip()
    if text.startswith("["):
        inside, sep, rest = text[1:].partition("]")
        if not sep or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            return None
        text = inside
    elif text.count(":") == 1:  # v4:port (an IPv6 address has two or more)
        text, _, port = text.partition(":")
        if not port.isdigit():
            return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def peer_name(address: IPAddress) -> str:
    """
    How wsheart names a client found in C{X-Forwarded-For}: like Autobahn's
    C{tcp4:HOST:PORT} / C{tcp6:HOST:PORT}, without the port, which the
    header does not carry (C{tcp4:192.0.2.1}, C{tcp6:2001:db8::1}).
    """
    kind = "tcp4" if address.version == 4 else "tcp6"
    return f"{kind}:{address}"


@dataclass(frozen=True)
class TrustedProxies:
    """
    The address ranges whose C{X-Forwarded-For} is believed; empty (the
    default): the header is never read.
    """

    networks: tuple[IPNetwork, ...] = ()
    # The header they name the client in: X_FORWARDED_FOR or FORWARDED.
    header: str = X_FORWARDED_FOR

    @classmethod
    def parse(cls, values: Iterable[str], header: str = X_FORWARDED_FOR) -> "TrustedProxies":
        """
        Ranges from C{--trusted-proxy} values, each one CIDR or several
        comma-separated (C{127.0.0.1/32,10.0.0.0/8,::1/128}; a bare address
        is a single host), whose C{header} names the client.  Raises
        L{ValueError} naming a bad one.
        """
        header = header.strip().lower()
        if header not in HEADERS:
            raise ValueError(f"--forwarded-header is x-forwarded-for or forwarded, got {header!r}")
        networks: list[IPNetwork] = []
        for value in values:
            for item in value.split(","):
                item = item.strip()
                if not item:
                    continue
                try:
                    network = ipaddress.ip_network(item, strict=True)
                except ValueError as e:
                    raise ValueError(
                        f"--trusted-proxy takes CIDR ranges like 10.0.0.0/8 or ::1/128, got {item!r}: {e}"
                    ) from None
                if isinstance(network, ipaddress.IPv6Network) and network.network_address.ipv4_mapped is not None and network.prefixlen >= 96:
                    # ::ffff:10.0.0.0/104 is 10.0.0.0/8: addresses are matched unmapped.
                    network = ipaddress.ip_network(
                        f"{network.network_address.ipv4_mapped}/{network.prefixlen - 96}"
                    )
                networks.append(network)
        return cls(tuple(networks), header)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def trusts(self, address: Optional[IPAddress]) -> bool:
        """
        Whether C{address} is inside a trusted range.
        """
        if address is None:
            return False
        return any(address in network for network in self.networks)

    def client_address(self, peer_host: Optional[str], header_values: Sequence[str]) -> Optional[IPAddress]:
        """
        The client's address by the C{header_values} of L{header} (one
        string per header line; Autobahn hands repeated lines over already
        joined with ", ", which reads the same), for a request from the TCP
        peer C{peer_host}.  None: keep the TCP peer (it is not a trusted
        proxy, or there is no header).  Raises L{ForwardedForError} if the
        part of the header the walk reads is malformed.
        """
        if not self.networks or not self.trusts(parse_address(peer_host or "")):
            return None
        joined = ",".join(header_values)
        if not joined.replace(",", "").strip():
            return None  # no header, or an empty one: nothing is claimed
        if self.header == FORWARDED:
            entries, what = forwarded_for_entries(joined), "Forwarded for="
        else:
            entries, what = joined.split(","), "X-Forwarded-For entry"
        address: Optional[IPAddress] = None
        for entry in reversed(entries):
            address = parse_address(entry)
            if address is None:
                shown = entry.strip()[:60]
                raise ForwardedForError(f"{what} {shown!r} is not an IP address")
            if not self.trusts(address):
                return address
        return address  # every hop a trusted proxy: the left-most
