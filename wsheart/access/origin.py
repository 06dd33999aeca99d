"""
Which web pages may open a WebSocket to wsheart: the Origin policy.

A browser sends the cookies of the WebSocket's host with the upgrade, from
whatever page opens it, and WebSockets have no same-origin rule of their
own; a page on another site could ride a user's session into the socket
(cross-site WebSocket hijacking).  Browsers always send C{Origin} with the
upgrade, so the server decides on it before the upgrade.

The default allows the page's own host only (the demo page and wsheart.js
served on the same endpoint): an Origin whose host and port are those the
request was sent to (its C{Host} header).  C{--allowed-origin} adds exact
origins (C{https://app.example.com}, C{http://localhost:3000}), whole-label
wildcards (C{https://*.example.com} matches C{https://a.b.example.com} and
never C{https://app.example.com.evil.net} nor C{https://example.com}),
C{null} (sandboxed pages, C{file:} URLs), or C{*} (every origin: only for
sockets that carry no cookies or other ambient credentials).  Requests
without an Origin come from programs, not browsers (which always send
one); C{--allow-missing-origin no} refuses them too.

Pure: no I/O, no reactor.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}

_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*$")
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


@dataclass(frozen=True)
class Origin:
    """
    A parsed C{scheme://host[:port]} origin (lower case, port explicit).
    """

    scheme: str
    host: str
    port: Optional[int]

    @classmethod
    def parse(cls, text: str) -> Optional["Origin"]:
        """
        The origin C{text} names, or None if it is not one (a path, a
        user name, a bad port, no host: a browser never sends those).
        """
        scheme, sep, rest = text.strip().lower().partition("://")
        if not sep or not _SCHEME.match(scheme) or not rest or any(c in rest for c in "/?#@ \t\\"):
            return None
        host, port = _split_port(rest)
        if host is None or not host:
            return None
        return cls(scheme, host, port if port is not None else DEFAULT_PORTS.get(scheme))


def _split_port(netloc: str) -> tuple[Optional[str], Optional[int]]:
    """
    C{host[:port]} and C{[v6]:port} into host and port (None: none given);
    host None: not a valid netloc.
    """
    if netloc.startswith("["):
        end = netloc.find("]")
        if end < 0:
            return None, None
        host, rest = netloc[: end + 1], netloc[end + 1 :]
        if not rest:
            return host, None
        if not rest.startswith(":"):
            return None, None
        port_text = rest[1:]
    elif ":" in netloc:
        host, _, port_text = netloc.rpartition(":")
        if ":" in host:
            return None, None
    else:
        return netloc, None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        return None, None
    return host, int(port_text)


@dataclass(frozen=True)
class _Pattern:
    scheme: str
    suffix: str  # the host, or for a wildcard the labels after "*."
    wildcard: bool
    port: Optional[int]

    def matches(self, origin: Origin) -> bool:
        if origin.scheme != self.scheme or origin.port != self.port:
            return False
        if not self.wildcard:
            return origin.host == self.suffix
        # Whole labels: at least one more label, then exactly ".suffix".
        return origin.host.endswith("." + self.suffix) and len(origin.host) > len(self.suffix) + 1


def _parse_pattern(text: str) -> _Pattern:
    scheme, sep, rest = text.strip().lower().partition("://")
    if not sep or not _SCHEME.match(scheme):
        raise ValueError(f"--allowed-origin takes scheme://host[:port], *, or null, got {text!r}")
    wildcard = rest.startswith("*.")
    if wildcard:
        rest = rest[2:]
    if "*" in rest:
        raise ValueError(f"--allowed-origin {text!r}: a wildcard is a whole first label only (https://*.example.com)")
    origin = Origin.parse(f"{scheme}://{rest}")
    if origin is None:
        raise ValueError(f"--allowed-origin {text!r}: not an origin (scheme://host[:port], no path)")
    if wildcard:
        labels = origin.host.split(".")
        if len(labels) < 2 or not all(_LABEL.match(label) for label in labels):
            raise ValueError(f"--allowed-origin {text!r}: a wildcard needs a domain of two labels or more under it")
    return _Pattern(scheme, origin.host, wildcard, origin.port)


class OriginPolicy:
    """
    @param allowed: the C{--allowed-origin} values (a bad one raises
        ValueError, with what is wrong).
    @param allow_missing: whether a request without an Origin header (not
        from a browser) may connect.
    """

    def __init__(self, allowed: tuple[str, ...] = (), allow_missing: bool = True) -> None:
        self.allowed = tuple(a.strip() for a in allowed)
        self.allow_missing = allow_missing
        self._any = "*" in self.allowed
        self._null = "null" in self.allowed
        self._patterns = tuple(_parse_pattern(a) for a in self.allowed if a not in ("*", "null"))

    def __repr__(self) -> str:
        return f"OriginPolicy(allowed={self.allowed!r}, allow_missing={self.allow_missing!r})"

    def allows(self, origin: Optional[str], host: Optional[str]) -> bool:
        """
        Whether a handshake with C{Origin: origin} (None: no header), sent
        to C{Host: host}, may upgrade.
        """
        if origin is None:
            return self.allow_missing
        if self._any:
            return True
        if origin.strip().lower() == "null":
            return self._null
        parsed = Origin.parse(origin)
        if parsed is None:
            return False
        if host is not None and _same_host(parsed, host):
            return True
        return any(p.matches(parsed) for p in self._patterns)


def _same_host(origin: Origin, host_header: str) -> bool:
    """
    The page is the server's own: the Origin's host and port are those the
    request went to.  A Host without a port names the default port of
    whatever scheme the browser used, which the server cannot always know
    (behind a proxy that ends TLS, https pages reach it over plain TCP):
    then the Origin must be on its own scheme's default port.
    """
    host, port = _split_port(host_header.strip().lower())
    if host is None or origin.host != host:
        return False
    if port is None:
        return origin.port == DEFAULT_PORTS.get(origin.scheme)
    return origin.port == port


def suggestion(origin: str) -> str:
    """
    What to pass to C{--allowed-origin} to allow C{origin}, for the log.
    """
    parsed = Origin.parse(origin)
    if parsed is None:
        return "(not a valid origin)"
    port = "" if parsed.port == DEFAULT_PORTS.get(parsed.scheme) else f":{parsed.port}"
    return f"{parsed.scheme}://{parsed.host}{port}"
