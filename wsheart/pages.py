"""
Pages served from the WebSocket endpoint itself, for browsers (turned off
with C{--no-pages}):

  GET /                    the demo page: an echo console
  GET /wsheart.js          the browser library as a classic script
  GET /wsheart.mjs         the same as an ES module
  GET /wsheart.d.ts        its TypeScript declaration
  GET /wsheart-VERSION.js  (and .mjs) the same bytes, cacheable for a year
  GET /demo.js, /pages.css the demo page's script and style

A request that asks for a WebSocket upgrade never gets here, whatever its
path; any other path without an upgrade keeps getting C{426 Upgrade
Required}.  Unversioned files are revalidated (C{ETag}, 304); versioned
ones are C{immutable}, so a page can pin the library it was written for.

Pure: L{Pages.respond} turns a parsed request head into the bytes of a
whole HTTP/1.1 response, one request per connection.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any, Mapping, Optional
from urllib.parse import urlsplit

from twisted.web.http import RESPONSES

from wsheart import __version__

# What twisted.web's table lacks (RFC 6585, RFC 7231's 426).
_MORE_PHRASES = {426: "Upgrade Required", 429: "Too Many Requests", 431: "Request Header Fields Too Large"}


def status_phrase(code: int) -> str:
    """
    The reason phrase of an HTTP status: the one twisted.web knows, or
    the few it lacks, or "Error".
    """
    known = RESPONSES.get(code)
    return known.decode("ascii") if known else _MORE_PHRASES.get(code, "Error")


def html_security_headers(connect: tuple[str, ...] = ()) -> tuple[tuple[str, str], ...]:
    """
    The headers of an HTML page: it loads nothing from elsewhere (scripts,
    styles and the WebSocket are all this origin's) and may fetch from
    nowhere else than the origins in C{connect}.
    """
    sources = " ".join(("'self'", *connect, "ws:", "wss:"))
    return (
        ("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; "
         f"img-src 'self' data:; connect-src {sources}; "
         "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
        ("Referrer-Policy", "no-referrer"),
        ("X-Frame-Options", "DENY"),
    )  # fmt: skip


HTML_SECURITY_HEADERS = html_security_headers()


def url_origin(url: str) -> str:
    """
    The origin (scheme://host[:port]) of an absolute http(s) URL; ValueError
    for anything else.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.fragment or parts.username:
        raise ValueError(f"an http:// or https:// URL without user or fragment, got {url!r}")
    parts.port  # raises ValueError for a bad port
    if not re.fullmatch(r"[A-Za-z0-9.:\[\]-]+", parts.netloc):  # it goes into a CSP header as is
        raise ValueError(f"a host name or address and a port, got {parts.netloc!r}")
    return f"{parts.scheme}://{parts.netloc}"

JS = "text/javascript; charset=utf-8"
HTML = "text/html; charset=utf-8"
CSS = "text/css; charset=utf-8"
TEXT = "text/plain; charset=utf-8"


def static_text(name: str) -> str:
    """
    A file of C{wsheart/static}, installed with the package.
    """
    return (resources.files("wsheart") / "static" / name).read_text("utf-8")


def library_module() -> str:
    """
    wsheart.js as an ES module: the classic script defines one C{var
    WsHeart}, which a module keeps to itself and exports
    (C{wsheart.exports.js}, which js/build.mjs appends the same way for
    the npm package).
    """
    return static_text("wsheart.js") + "\n" + static_text("wsheart.exports.js")


@dataclass(frozen=True)
class RequestHead:
    method: str
    path: str
    headers: Mapping[str, str]


def parse_request_head(head: bytes) -> Optional[RequestHead]:
    """
    The request line and headers of an HTTP/1.1 request (without the blank
    line that ends them), or L{None} if they are not well formed.  Header
    names are lower-cased; the query string is dropped from the path.
    """
    try:
        text = head.decode("iso-8859-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes anything
        return None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        return None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            return None
        headers[name.lower()] = value.strip()
    return RequestHead(parts[0], parts[1].split("?", 1)[0].split("#", 1)[0], headers)


def wants_upgrade(request: RequestHead) -> bool:
    """
    Whether the request asks for a protocol upgrade (a WebSocket handshake,
    valid or not: Autobahn judges those).
    """
    return "upgrade" in request.headers


@dataclass(frozen=True)
class _File:
    body: bytes
    content_type: str
    cache_control: str
    etag: str
    extra_headers: tuple[tuple[str, str], ...] = ()


def _file(body: str, content_type: str, immutable: bool = False, html: tuple[tuple[str, str], ...] = ()) -> _File:
    data = body.encode("utf-8")
    return _File(
        body=data,
        content_type=content_type,
        cache_control="public, max-age=31536000, immutable" if immutable else "no-cache",
        etag='"' + hashlib.sha256(data).hexdigest()[:20] + '"',
        extra_headers=html,
    )


class Pages:
    """
    The files served on the WebSocket endpoint.

    @param config: what the demo page's client needs to match this daemon:
        C{pingText}, C{pongText} (L{None}: no text heartbeat), C{interval},
        C{timeout} (ms), C{maxMissed}; C{tokenUrl} (optional): where the
        demo page fetches its token (--demo-token-url), which its CSP then
        lets it reach.
    """

    def __init__(self, config: Mapping[str, Any]) -> None:
        library = static_text("wsheart.js")
        module = library_module()
        page_config = dict(config, version=__version__, library=f"/wsheart-{__version__}.js")
        # "</" would end the <script> element the JSON sits in.
        config_json = json.dumps(page_config, sort_keys=True).replace("</", "<\\/")
        token_origin = (url_origin(config["tokenUrl"]),) if config.get("tokenUrl") else ()
        demo = static_text("demo.html").replace("{{CONFIG}}", config_json).replace("{{VERSION}}", __version__)
        self._files: dict[str, _File] = {
            "/": _file(demo, HTML, html=html_security_headers(token_origin)),
            "/wsheart.js": _file(library, JS),
            "/wsheart.mjs": _file(module, JS),
            f"/wsheart-{__version__}.js": _file(library, JS, immutable=True),
            f"/wsheart-{__version__}.mjs": _file(module, JS, immutable=True),
            "/wsheart.d.ts": _file(static_text("wsheart.d.ts"), TEXT),
            "/demo.js": _file(static_text("demo.js"), JS),
            "/pages.css": _file(static_text("pages.css"), CSS),
        }

    def paths(self) -> list[str]:
        return sorted(self._files)

    def respond(self, request: RequestHead) -> Optional[bytes]:
        """
        The whole HTTP response to C{request}, or L{None} when its path is
        not a page (the caller answers 426 as before).
        """
        page = self._files.get(request.path)
        if page is None:
            return None
        if request.method not in ("GET", "HEAD"):
            body = f"405 Method Not Allowed: {request.method} {request.path}\n".encode("utf-8")
            return _response(405, TEXT, body, (("Allow", "GET, HEAD"),))
        headers = (("Cache-Control", page.cache_control), ("ETag", page.etag), *page.extra_headers)
        if page.etag in [tag.strip() for tag in request.headers.get("if-none-match", "").split(",")]:
            return _response(304, page.content_type, b"", headers, length=False)
        body = page.body if request.method == "GET" else b""
        return _response(200, page.content_type, body, headers, length_of=len(page.body))


def _response(
    status: int,
    content_type: str,
    body: bytes,
    headers: tuple[tuple[str, str], ...] = (),
    length: bool = True,
    length_of: Optional[int] = None,
) -> bytes:
    lines = [f"HTTP/1.1 {status} {status_phrase(status)}", f"Content-Type: {content_type}"]
    if length:
        lines.append(f"Content-Length: {len(body) if length_of is None else length_of}")
    lines += ["X-Content-Type-Options: nosniff", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("iso-8859-1") + body
