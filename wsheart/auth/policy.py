"""
The authentication policy of a daemon (C{--auth jwt}): how tokens are
verified, what a connection without one may do, and how long it may stay
without one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from wsheart.auth.grants import Grants
from wsheart.auth.tokens import Identity, TokenVerifier

BEARER_SUBPROTOCOL = "wsheart.bearer."


@dataclass(frozen=True)
class AuthPolicy:
    """
    @ivar verifier: checks tokens.
    @ivar anonymous: what a wsheart.v1 connection without a token may do
        (C{--anonymous-channels}: subscribe and read history; never
        publish, never see presence).  Nothing, by default: it must send a token within
        C{timeout} seconds of the open.
    @ivar leeway: seconds past a token's C{exp} before the connection is
        closed (4001).
    """

    verifier: TokenVerifier
    anonymous: Grants = Grants()
    timeout: float = 10.0

    @property
    def leeway(self) -> float:
        return self.verifier.settings.leeway

    def anonymous_identity(self) -> Identity:
        return Identity(sub=None, grants=self.anonymous)

    def allows(self, identity: Optional[Identity], action: str, channel: str) -> bool:
        """
        What is public (the anonymous grants) is public to everyone; the
        rest takes the identity's own grant.
        """
        if self.anonymous.allows(action, channel):
            return True
        return identity is not None and identity.grants.allows(action, channel)

    @property
    def anonymous_allowed(self) -> bool:
        return bool(self.anonymous.subscribe or self.anonymous.history)


def handshake_token(headers: Any, protocols: Any) -> Optional[str]:
    """
    The token a handshake carries: C{Authorization: Bearer TOKEN} (programs)
    or a C{wsheart.bearer.TOKEN} subprotocol offered beside C{wsheart.v1}
    (browsers cannot set headers); never a URL query, which ends up in
    logs.  None: no token.
    """
    authorization = headers.get("authorization")
    if isinstance(authorization, str):
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    for offered in protocols or ():
        if isinstance(offered, str) and offered.startswith(BEARER_SUBPROTOCOL):
            return offered[len(BEARER_SUBPROTOCOL) :]
    return None
