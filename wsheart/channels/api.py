"""
The channel HTTP API on the admin endpoint, for back ends that publish:

  POST /publish/{channel}                 body: JSON, the message data
                                          -> {"channel", "epoch", "seq"}
  GET  /channels                          -> [{"channel", "epoch", "seq", "subscribers", "history"}]
  GET  /channels/{channel}/presence       -> {"channel", "clients": [{"id", "name"?}]}
  GET  /channels/{channel}/history?since=N
                                          -> {"channel", "epoch", "seq", "complete", "messages": [{"seq", "data"}]}

Every request needs C{Authorization: Bearer TOKEN} with one of the tokens of
C{--api-token-file} (one a line, so that they can be rotated; re-read on
SIGHUP, L{ApiTokens}): 401 otherwise.  Without that option the API is off
(404; 413 for a request with a body, which is then not read).  A request body is read only from a caller with the token, and only
up to the size a message may have: 401 or 413 come as soon as the headers
are in, before any of the body is stored (L{BoundedRequest}).  Errors are JSON C{{"error": reason}} with the status the wsheart.v1
error codes use (400, 403, 404, 405, 413, 429).  A publish is whole or not
at all; an C{Idempotency-Key} header makes a retried publish answer with the
first one's position instead of publishing again.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from wsheart import closecodes
from wsheart.channels.broker import Broker, ChannelError, check_channel_name, when_done

log = Logger()

MAX_IDEMPOTENCY_KEY = 128


MIN_TOKEN_LENGTH = 16


def parse_tokens(text: bytes, source: str) -> tuple[bytes, ...]:
    """
    The API tokens in a token file's C{text}: one a line, blank lines and
    C{#} comments ignored, each at least L{MIN_TOKEN_LENGTH} characters and
    without spaces.  Raises L{ValueError} saying which line is wrong (never
    what it holds: it may be a secret).
    """
    tokens: list[bytes] = []
    for number, line in enumerate(text.splitlines(), 1):
        token = line.strip()
        if not token or token.startswith(b"#"):
            continue
        if len(token) < MIN_TOKEN_LENGTH:
            raise ValueError(f"{source}, line {number}: a token must have at least {MIN_TOKEN_LENGTH} characters")
        if any(c in token for c in b" \t\v\f\r"):
            raise ValueError(f"{source}, line {number}: a token has no spaces (a comment goes on a line of its own)")
        if token not in tokens:
            tokens.append(token)
    if not tokens:
        raise ValueError(f"{source} holds no token (only blank lines and # comments)")
    return tuple(tokens)


def read_token_file(path: str) -> tuple[bytes, ...]:
    """
    The API tokens in the file at C{path} (L{parse_tokens}).  Raises
    L{OSError} or L{ValueError} with the reason.
    """
    with open(path, "rb") as f:
        return parse_tokens(f.read(), path)


class ApiTokens:
    """
    The bearer tokens the channel API accepts: any of them lets a caller
    in, so an operator rotates by adding the new token, moving the back
    ends to it, then removing the old one.  L{reload} (SIGHUP) re-reads the
    file; a file that has become unreadable or holds no valid token keeps
    the tokens in use, so a reload never locks every back end out and
    never opens the API.
    """

    def __init__(self, tokens: Sequence[bytes], path: Optional[str] = None) -> None:
        if not tokens:
            raise ValueError("the API needs at least one token")
        self.tokens = tuple(tokens)
        self.path = path

    @classmethod
    def from_file(cls, path: str) -> "ApiTokens":
        """
        The tokens of C{--api-token-file}; raises L{OSError} or
        L{ValueError} with the reason.
        """
        tokens = cls(read_token_file(path), path)
        log.info("API tokens: {count} loaded from {path}", count=len(tokens.tokens), path=path)
        return tokens

    def matches(self, credential: bytes) -> bool:
        """
        Whether C{credential} is one of the tokens, compared in constant
        time against every one (the time does not say which matched).
        """
        found = False
        for token in self.tokens:
            found |= hmac.compare_digest(credential, token)
        return found

    def reload(self) -> bool:
        """
        Re-read the file (what SIGHUP does): whether the tokens it holds
        now are in use.  On failure the current ones stay, and the error is
        logged.
        """
        if self.path is None:
            return False
        try:
            tokens = read_token_file(self.path)
        except (OSError, ValueError) as e:
            log.error(
                "API token reload failed, keeping the {count} current token(s): {error}",
                count=len(self.tokens),
                error=str(e),
            )
            return False
        self.tokens = tokens
        log.info("API tokens reloaded: {count} from {path}", count=len(tokens), path=self.path)
        return True


def json_response(request: Request, status: int, body: Any) -> bytes:
    """
    A JSON answer (also used by L{wsheart.admin}): never cached.
    """
    return json_text_response(request, status, json.dumps(body, separators=(",", ":"), ensure_ascii=False))


def json_text_response(request: Request, status: int, text: str) -> bytes:
    """
    A JSON answer whose body is JSON text already (history is served as
    stored, never encoded again): never cached.
    """
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return text.encode("utf-8") + b"\n"


def has_token(authorization: Optional[bytes], tokens: Optional[ApiTokens]) -> bool:
    """
    Whether an C{Authorization} header value is C{Bearer TOKEN} with one
    of the API's tokens (compared in constant time).
    """
    if tokens is None or not authorization:
        return False
    scheme, _, credential = authorization.partition(b" ")
    return scheme.lower() == b"bearer" and tokens.matches(credential.strip())


@dataclass(frozen=True)
class BodyPolicy:
    """
    Which request bodies the admin endpoint reads: only from callers with
    the API token, and at most C{max_body} bytes.  Without an API nothing
    there takes a body.
    """

    tokens: Optional[ApiTokens] = None
    max_body: int = 0

    def refusal(self, authorization: Optional[bytes], length: Optional[int]) -> Optional[tuple[int, str]]:
        """
        The status and reason to refuse a request with, from its headers
        alone (C{length}: its Content-Length, L{None} when chunked), or
        L{None} to read the body.
        """
        if length == 0:
            return None
        if self.tokens is None:
            return 413, "no request body is read here: the channel API is off"
        if not has_token(authorization, self.tokens):
            return 401, "missing or wrong bearer token"
        if length is not None and length > self.max_body:
            return 413, f"the request body is larger than {self.max_body} bytes"
        return None


class BoundedRequest(Request):
    """
    A request to the admin endpoint that refuses an unwanted body before
    storing it: twisted.web would otherwise spool the whole upload (to disk
    past 100 kB) and only then let a resource look at the headers.  The
    site's C{body_policy} (a L{BodyPolicy}) decides; a refusal is written at
    once and the connection closed, so the rest of the upload is never read.
    """

    _refused = False
    _body_bytes = 0

    def _policy(self) -> BodyPolicy:
        return getattr(getattr(self.channel, "site", None), "body_policy", None) or BodyPolicy()

    def gotLength(self, length: Optional[int]) -> None:
        # getHeader: the same (last) Authorization header _Guarded checks.
        refusal = self._policy().refusal(self.getHeader(b"authorization"), length)
        if refusal is not None:
            self._refuse(*refusal)
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._body_bytes += len(data)
        limit = self._policy().max_body
        if self._body_bytes > limit:  # a chunked body that outgrew the limit
            self._refuse(413, f"the request body is larger than {limit} bytes")
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if not self._refused:
            super().requestReceived(command, path, version)

    def _refuse(self, status: int, reason: str) -> None:
        self._refused = True
        if self.content is not None:
            self.content.close()  # a chunked body may have been spooled to a file
        self.content = None
        # No "100 Continue" after the refusal (twisted.web sends one right
        # after gotLength for a request that expects it).
        self.requestHeaders.removeHeader(b"expect")
        body = json.dumps({"error": reason}).encode("utf-8") + b"\n"
        phrase = {401: b"Unauthorized", 413: b"Content Too Large"}[status]
        head = [
            b"HTTP/1.1 %d %s" % (status, phrase),
            b"Content-Type: application/json",
            b"Cache-Control: no-store",
            b"Content-Length: %d" % len(body),
            b"Connection: close",
        ]
        if status == 401:
            head.append(b'WWW-Authenticate: Bearer realm="wsheart"')
        channel = self.channel
        answer = b"\r\n".join(head) + b"\r\n\r\n" + body
        assert channel.transport is not None  # the request is being read from it
        channel.transport.write(answer)
        channel.loseConnection()


class _Guarded(Resource):
    """
    Base of the API resources: the bearer token check and JSON errors.
    """

    def __init__(self, broker: Broker, tokens: Optional[ApiTokens]) -> None:
        super().__init__()
        self.broker = broker
        self.tokens = tokens

    def render(self, request: Request) -> Any:
        if self.tokens is None:
            return json_response(request, 404, {"error": "the channel API is off: start wsheart with --api-token-file"})
        if not has_token(request.getHeader(b"authorization"), self.tokens):
            request.setHeader(b"www-authenticate", b'Bearer realm="wsheart"')
            return json_response(request, 401, {"error": "missing or wrong bearer token"})
        method = request.method.decode("ascii", "replace")
        handler = getattr(self, f"api_{method}", None)
        if handler is None:
            allowed = sorted(name[4:] for name in dir(self) if name.startswith("api_"))
            request.setHeader(b"allow", ", ".join(allowed).encode("ascii"))
            return json_response(request, 405, {"error": f"{method} not allowed here"})
        try:
            answer = handler(request)
        except ChannelError as e:
            return _refused(request, e)
        if not isinstance(answer, defer.Deferred):
            return answer
        # An engine that answers later (Redis): finish the request then.
        answer.addErrback(self._failed, request)
        answer.addCallback(self._finish, request)
        return NOT_DONE_YET

    def _failed(self, failure: Any, request: Request) -> bytes:
        if failure.check(ChannelError):
            return _refused(request, failure.value)
        log.failure("channel API request failed", failure)
        return json_response(request, 500, {"error": "internal error"})

    def _finish(self, body: bytes, request: Request) -> None:
        if not request.finished and not getattr(request, "_disconnected", False):
            request.setHeader(b"content-length", b"%d" % len(body))
            request.write(body)
            request.finish()


class PublishResource(_Guarded):
    def getChild(self, path: bytes, request: Request) -> Resource:
        return PublishChannel(self.broker, self.tokens, path.decode("utf-8", "replace"))

    def api_POST(self, request: Request) -> bytes:
        raise ChannelError(400, "POST /publish/{channel}")


class PublishChannel(_Guarded):
    isLeaf = True

    def __init__(self, broker: Broker, tokens: Optional[ApiTokens], channel: str) -> None:
        super().__init__(broker, tokens)
        self.channel = channel

    def api_POST(self, request: Request) -> bytes:
        if request.postpath:
            raise ChannelError(400, "POST /publish/{channel}: channel names have no '/'")
        channel = check_channel_name(self.channel)
        assert request.content is not None
        body = request.content.read(self.broker.settings.max_data_bytes + 1)
        if len(body) > self.broker.settings.max_data_bytes:
            raise ChannelError(413, f"message data is larger than {self.broker.settings.max_data_bytes} bytes")
        try:
            data = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise ChannelError(400, f"the body must be JSON (the message data): {e}") from None
        key_header = request.getHeader(b"idempotency-key")
        key = None
        if key_header is not None:
            key = key_header.decode("utf-8", "replace")
            if not 0 < len(key) <= MAX_IDEMPOTENCY_KEY:
                raise ChannelError(400, f"Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY} characters")
        return when_done(
            self.broker.publish(channel, data, idempotency_key=key),
            lambda position: json_response(request, 200, {"channel": channel, "epoch": position.epoch, "seq": position.seq}),
        )


class ChannelsResource(_Guarded):
    def getChild(self, path: bytes, request: Request) -> Resource:
        if not path:
            return self
        return ChannelResource(self.broker, self.tokens, path.decode("utf-8", "replace"))

    def api_GET(self, request: Request) -> bytes:
        return when_done(self.broker.channels(), lambda rows: json_response(request, 200, rows))


class ChannelResource(_Guarded):
    isLeaf = True

    def __init__(self, broker: Broker, tokens: Optional[ApiTokens], channel: str) -> None:
        super().__init__(broker, tokens)
        self.channel = channel

    def api_GET(self, request: Request) -> bytes:
        channel = check_channel_name(self.channel)
        what = request.postpath
        if what == [b"presence"]:
            return when_done(
                self.broker.presence(channel),
                lambda clients: json_response(request, 200, {"channel": channel, "clients": clients}),
            )
        if what == [b"history"]:
            raw = (request.args or {}).get(b"since", [b"0"])[0]
            if not raw.isdigit() or len(raw) > 18:
                raise ChannelError(400, "since must be a non-negative integer (a seq)")
            return when_done(self.broker.history_json(channel, int(raw)), lambda text: json_text_response(request, 200, text))
        raise ChannelError(404, "GET /channels/{channel}/presence or /channels/{channel}/history?since=N")


class DisconnectResource(_Guarded):
    """
    C{POST /disconnect} with C{{"sub": "42"}}: close this process's
    connections of that user (with C{--auth jwt}) with 4403, so that a
    banned or logged-out user does not stay connected until the token
    expires.  Each process answers for its own connections.
    """

    isLeaf = True

    def __init__(self, broker: Broker, tokens: Optional[ApiTokens], hub: Any) -> None:
        super().__init__(broker, tokens)
        self.hub = hub

    def api_POST(self, request: Request) -> bytes:
        assert request.content is not None
        try:
            body = json.loads(request.content.read(4096).decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise ChannelError(400, f'the body must be JSON: {{"sub": "..."}} ({e})') from None
        sub = body.get("sub") if isinstance(body, dict) else None
        if not isinstance(sub, str) or not sub:
            raise ChannelError(400, 'the body must name the user: {"sub": "..."}')
        reason = body.get("reason", "disconnected by the server")
        if not isinstance(reason, str):
            raise ChannelError(400, "reason must be a string")
        closed = 0
        for info in list(self.hub):
            identity = getattr(info.connection, "identity", None)
            if identity is not None and identity.sub == sub:
                info.connection.close(closecodes.FORBIDDEN, reason)
                closed += 1
        log.info("disconnected {count} connection(s) of {sub} through the API", count=closed, sub=sub)
        return json_response(request, 200, {"sub": sub, "disconnected": closed})


def _refused(request: Request, refusal: ChannelError) -> bytes:
    if refusal.retry_after is not None:
        request.setHeader(b"retry-after", b"%d" % max(1, round(refusal.retry_after)))
    return json_response(request, refusal.code, {"error": refusal.reason})


def install_api(root: Resource, broker: Broker, tokens: Optional[ApiTokens], hub: Any = None) -> BodyPolicy:
    """
    Put the API under C{root}, answering callers with one of C{tokens}
    (L{None}: the API is off); returns the L{BodyPolicy} its site must give
    its L{BoundedRequest}s.
    """
    root.putChild(b"publish", PublishResource(broker, tokens))
    root.putChild(b"channels", ChannelsResource(broker, tokens))
    if hub is not None:
        root.putChild(b"disconnect", DisconnectResource(broker, tokens, hub))
    return BodyPolicy(tokens, broker.settings.max_data_bytes)
