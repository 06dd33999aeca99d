"""
The door: who may open a WebSocket here, decided from the facts of one
opening handshake (L{Knock}) by asking the access layer in its order, and
answered as a L{Decision} that the server protocol carries out.  Nothing
here touches a connection.

The order: who is knocking (the client a trusted proxy names, for the
limits and the logs: L{Door.identify}); then the Origin policy (403), the
connection limits and admission control (429/503, or an in-band refusal
for clients that read hints), the handshake's token with C{--auth jwt}
(401, or 503 while the issuer's keys are fetched), and the per-user limit
(429, or in-band).  A refusal a wsheart client can read opens the
connection only to close it with 1013 and the retry window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

from twisted.logger import Logger

from wsheart.access.admission import HINTS_SUBPROTOCOL, Admission, Refusal, reads_hints
from wsheart.access.limits import USER_HINT, ConnectionLimits, address_key
from wsheart.access.origin import OriginPolicy, suggestion
from wsheart.access.proxies import ForwardedForError, TrustedProxies, peer_name
from wsheart.auth import AuthPolicy, Identity, TokenRejected, handshake_token

log = Logger(namespace="wsheart.protocol.ServerProtocol")

# What a connection over --max-connections-per-user is told, in-band or as
# Retry-After.
USER_REFUSAL = Refusal(USER_HINT[0], USER_HINT[1], "user")


@dataclass(frozen=True)
class Knock:
    """
    The facts of one opening handshake.

    @ivar host: the transport's peer address (a proxy's, behind one).
    @ivar peer: how the connection is named in logs so far.
    @ivar headers: the request's headers, names in lower case, repeated
        lines joined with ", " (as Autobahn gives them).
    @ivar protocols: the subprotocols the client offers, in its order.
    @ivar now: the clock's time.
    """

    host: Optional[str]
    peer: str
    headers: Mapping[str, str]
    protocols: Sequence[str]
    now: float


@dataclass(frozen=True)
class Caller:
    """
    Who is knocking: the address key the limits count it under, and the
    name a trusted proxy gave it (None: the transport's own).
    """

    limit_key: Optional[str]
    peer: Optional[str] = None


@dataclass(frozen=True)
class Refused:
    """
    A handshake answered with an HTTP error: C{status}, C{reason}, the
    C{Retry-After} value if any, and C{kind} for the refusals metric
    (origin, limit, admission, token).
    """

    status: int
    reason: str
    kind: str
    retry_after: Optional[str] = None


@dataclass(frozen=True)
class Decision:
    """
    What to do with a handshake: open it speaking C{subprotocol} as
    C{identity} - or, with C{in_band}, open it only to close it with 1013
    and that retry window - or refuse it (C{refused}).
    """

    subprotocol: Optional[str] = None
    identity: Optional[Identity] = None
    in_band: Optional[Refusal] = None
    refused: Optional[Refused] = None


class Door:
    """
    The access layer, asked in order for each handshake.

    @param forwarded_ignored: told C{(peer, why)} when a trusted proxy's
        header names no client (counted and logged by the factory).
    @param random: for the spread of C{Retry-After} windows.
    """

    def __init__(
        self,
        origin_policy: OriginPolicy,
        trusted_proxies: Optional[TrustedProxies],
        limits: ConnectionLimits,
        admission: Admission,
        auth: Optional[AuthPolicy],
        subprotocols: Mapping[str, Any],
        random: Callable[[], float],
        forwarded_ignored: Callable[[str, str], None],
    ) -> None:
        self.origin_policy = origin_policy
        self.trusted_proxies = trusted_proxies
        self.limits = limits
        self.admission = admission
        self.auth = auth
        self.subprotocols = subprotocols
        self.random = random
        self.forwarded_ignored = forwarded_ignored

    def identify(self, knock: Knock) -> Caller:
        """
        The client behind the connection: the transport's address, or the
        one a trusted proxy names in its header (X-Forwarded-For or
        Forwarded; the other is whatever the client sent and never read).
        """
        key = address_key(knock.host)
        trusted = self.trusted_proxies
        forwarded = knock.headers.get(trusted.header) if trusted else None
        if trusted is None or forwarded is None:
            return Caller(key)
        try:
            client = trusted.client_address(knock.host, [forwarded])
        except ForwardedForError as e:
            self.forwarded_ignored(knock.peer, str(e))
            return Caller(key)
        if client is None:
            return Caller(key)
        return Caller(address_key(str(client)), peer_name(client))

    def decide(self, knock: Knock, caller: Caller) -> Decision:
        """
        Whether C{caller}'s handshake may open, and how.
        """
        refused = self._origin(knock)
        if refused is not None:
            return Decision(refused=refused)
        # The first subprotocol the client offers that this server has a
        # handler for (wsheart.v1 when channels are on); anything else is
        # declined (a wsheart.bearer.TOKEN offer is never echoed).
        chosen = next((str(p) for p in knock.protocols if p in self.subprotocols), None)
        if chosen is None and HINTS_SUBPROTOCOL in knock.protocols:
            # A plain connection from wsheart.js, which offers wsheart.hints
            # to say it reads a 1013's retry window; selected, because a
            # browser fails a handshake that selects none of its offers.
            chosen = HINTS_SUBPROTOCOL
        in_band = reads_hints(knock.protocols)
        admitted = self._admit(caller, in_band)
        if isinstance(admitted, Refused):
            return Decision(refused=admitted)
        if admitted is not None:
            # Opens only to be closed with its retry window: no token check
            # (it costs more than the refusal), no handler.
            return Decision(subprotocol=chosen, in_band=admitted)
        if self.auth is None:
            return Decision(subprotocol=chosen)
        identity = self._authenticate(knock, chosen)
        if isinstance(identity, Refused):
            return Decision(refused=identity)
        if identity.sub is not None and not self.limits.user_may_join(identity.sub):
            # This user holds --max-connections-per-user already: room
            # comes back as the user closes connections.
            if in_band:
                return Decision(subprotocol=chosen, identity=identity, in_band=USER_REFUSAL)
            return Decision(
                refused=Refused(
                    429,
                    f"too many connections for this user (at most {self.limits.settings.max_connections_per_user})",
                    "limit",
                    USER_REFUSAL.retry_after_header(self.random),
                )
            )
        return Decision(subprotocol=chosen, identity=identity)

    def _origin(self, knock: Knock) -> Optional[Refused]:
        """
        A browser page the Origin policy does not allow: 403 before the
        upgrade (cross-site WebSocket hijacking: the browser would send
        this site's cookies with it).
        """
        origin = knock.headers.get("origin")
        if self.origin_policy.allows(origin, knock.headers.get("host")):
            return None
        shown = origin if origin is not None else "(none)"
        log.warn(
            "refused a WebSocket upgrade from {peer}: Origin {origin} is not allowed; "
            "to allow it, start wsheart with --allowed-origin {allow}",
            peer=knock.peer,
            origin=repr(shown[:200]),
            allow="'" + suggestion(origin) + "'" if origin is not None else "... (or --allow-missing-origin yes)",
        )
        return Refused(403, "Origin not allowed", "origin")

    def _admit(self, caller: Caller, in_band: bool) -> "Refusal | Refused | None":
        """
        The connection limits and admission control: None (admitted), a
        refusal a wsheart client reads in-band, or an HTTP refusal with
        C{Retry-After} for everyone else.
        """
        limited = self.limits.may_open(caller.limit_key)
        if limited is not None:
            status, text = limited
            if status != 503:
                # Too many from one address: that address's own doing, not
                # the server's load; its clients wait on their backoff.
                return Refused(status, text, "limit")
            refusal = self.admission.full(in_band)
            kind = "limit"
        else:
            admitted = self.admission.admit(in_band, caller.limit_key)
            if admitted is None:
                return None
            refusal, kind = admitted, "admission"
            text = "too many new connections at once, try again later"
        if in_band:
            return refusal
        retry_after = refusal.retry_after_header(self.random)
        if refusal.reason == "address":
            # This address already holds its share of the queue.
            return Refused(429, "too many connections from your address waiting, try again later", kind, retry_after)
        return Refused(503, text, kind, retry_after)

    def _authenticate(self, knock: Knock, chosen: Optional[str]) -> "Identity | Refused":
        """
        With --auth: the handshake's token makes the identity; without one,
        a handler that authenticates in its own frames (wsheart.v1) starts
        anonymous, anything else is refused with 401.
        """
        auth = self.auth
        assert auth is not None
        token = handshake_token(knock.headers, knock.protocols)
        if token is None:
            handler = self.subprotocols.get(chosen or "")
            if getattr(handler, "authenticates_in_band", False):
                return auth.anonymous_identity()
            return Refused(401, "a token is needed: Authorization: Bearer TOKEN, or the wsheart.bearer.TOKEN subprotocol", "token")
        try:
            return auth.verifier.verify(token, knock.now)
        except TokenRejected as e:
            log.info("refused a WebSocket upgrade from {peer}: {why}", peer=knock.peer, why=str(e))
            if e.retry_after is not None:
                # Its keys are being fetched (--jwt-jwks-url): come back, not
                # 401 (which the wsheart clients take as final).
                return Refused(503, f"{e}; try again in {e.retry_after:g} s", "token", str(max(1, math.ceil(e.retry_after))))
            return Refused(401, str(e), "token")
