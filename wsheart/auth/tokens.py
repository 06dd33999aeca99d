"""
Token authentication: a JSON Web Token verified with PyJWT into an
L{Identity}.

What is checked, and why:
- the algorithm comes from the configuration, never from the token (a
  token that says C{alg: none}, or HS256 signed with a public key as the
  secret, is refused);
- an HMAC secret shorter than 32 bytes is refused at start (guessable);
  HMAC and public-key algorithms never mix in one configuration;
- C{exp}, C{sub} and C{aud} are required (C{--jwt-audience}, default
  C{wsheart}: a token issued for another service is not one for this);
  C{iss} when C{--jwt-issuer} is set; C{--jwt-leeway} seconds of clock
  skew either way.

The key file (C{--jwt-key}) holds a PEM public key (RSA, EC or Ed25519), a
JWKS document (C{{"keys": [...]}}, a key chosen by the token's C{kid}), or
an HMAC secret.  Keys are read at start (restart to change them); a JWKS
is not fetched from a URL.  Time comes from the caller (the reactor's
clock), not from the wall clock inside PyJWT.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Optional

import jwt

from wsheart.auth.grants import Grants

HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")
MIN_SECRET_BYTES = 32
# Claims handed to handlers and echoed in "authed": what the token's issuer
# meant to be seen (never the whole token).
PUBLIC_CLAIMS = ("sub", "info")
MAX_INFO_BYTES = 1024


class TokenRejected(Exception):
    """
    A token that does not authenticate anyone; the message says why (it
    is safe to show: it names no key material).
    """


@dataclass(frozen=True)
class Identity:
    """
    Who a connection is: the token's subject, its public C{info} (at most
    1 KiB of JSON), its channel grants and when it expires (seconds since
    the epoch; None: anonymous, never).
    """

    sub: Optional[str]
    grants: Grants = field(default_factory=Grants)
    expires_at: Optional[float] = None
    info: Any = None

    @property
    def anonymous(self) -> bool:
        return self.sub is None


@dataclass(frozen=True)
class TokenSettings:
    key_file: str
    algorithms: tuple[str, ...] = ()  # () : from the key's type
    audience: str = "wsheart"
    issuer: Optional[str] = None
    leeway: float = 30.0


class TokenVerifier:
    """
    Verifies tokens against the keys of C{settings}; raises ValueError at
    construction for a configuration that would be unsafe or unusable.
    """

    def __init__(self, settings: TokenSettings) -> None:
        self.settings = settings
        with open(settings.key_file, "rb") as f:
            material = f.read()
        self._jwks: Optional[jwt.PyJWKSet] = None
        self._key: Any = None
        text = material.strip()
        if text.startswith(b"{"):
            try:
                self._jwks = jwt.PyJWKSet.from_dict(json.loads(text))
            except (ValueError, jwt.PyJWTError) as e:
                raise ValueError(f"--jwt-key {settings.key_file}: not a usable JWKS ({e})") from None
            kinds = {"hmac" if k.key_type == "oct" else "public" for k in self._jwks.keys}
            default = tuple(sorted({k.algorithm_name for k in self._jwks.keys if k.algorithm_name}))
        elif text.startswith(b"-----BEGIN"):
            from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
            from cryptography.hazmat.primitives.serialization import load_pem_public_key

            if b"PRIVATE KEY" in text:
                raise ValueError(f"--jwt-key {settings.key_file}: a private key; give wsheart the public key only")
            try:
                self._key = load_pem_public_key(text)
            except ValueError as e:
                raise ValueError(f"--jwt-key {settings.key_file}: not a PEM public key ({e})") from None
            kinds = {"public"}
            if isinstance(self._key, rsa.RSAPublicKey):
                default = ("RS256",)
            elif isinstance(self._key, ec.EllipticCurvePublicKey):
                default = ("ES256",)
            elif isinstance(self._key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
                default = ("EdDSA",)
            else:
                raise ValueError(f"--jwt-key {settings.key_file}: an unsupported key type")
        else:
            if len(text) < MIN_SECRET_BYTES:
                raise ValueError(
                    f"--jwt-key {settings.key_file}: an HMAC secret of {len(text)} bytes; at least {MIN_SECRET_BYTES} "
                    "random bytes, or a public key"
                )
            self._key = text
            kinds = {"hmac"}
            default = ("HS256",)
        self.algorithms = settings.algorithms or default
        if not self.algorithms:
            raise ValueError(f"--jwt-key {settings.key_file}: no algorithm; set --jwt-algorithms")
        hmac = {a in HMAC_ALGORITHMS for a in self.algorithms}
        if len(hmac) > 1 or (True in hmac) != ("hmac" in kinds) or len(kinds) > 1:
            raise ValueError(
                "--jwt-algorithms: HMAC (HS*) and public-key algorithms do not mix, and must match the key "
                f"(key: {', '.join(sorted(kinds))}; algorithms: {', '.join(self.algorithms)})"
            )
        unknown = set(self.algorithms) - set(jwt.algorithms.get_default_algorithms())
        if unknown:
            raise ValueError(f"--jwt-algorithms: unknown {', '.join(sorted(unknown))}")

    def verify(self, token: Any, now: float) -> Identity:
        """
        The identity C{token} proves at time C{now}, or L{TokenRejected}.
        """
        if not isinstance(token, str) or not token or len(token) > 8192:
            raise TokenRejected("the token must be a non-empty string of at most 8 KiB")
        settings = self.settings
        try:
            header = jwt.get_unverified_header(token)
            key = self._key
            if self._jwks is not None:
                kid = header.get("kid")
                matches = [k for k in self._jwks.keys if kid is not None and k.key_id == kid]
                if not matches:
                    raise TokenRejected("no key for this token's kid")
                key = matches[0].key
            claims = jwt.decode(
                token,
                key,
                algorithms=list(self.algorithms),
                audience=settings.audience,
                issuer=settings.issuer,
                leeway=settings.leeway,
                options={
                    "require": ["exp", "sub", "aud"] + (["iss"] if settings.issuer else []),
                    # Checked below against the caller's clock.
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.InvalidAudienceError:
            raise TokenRejected(f"the token is not for this audience ({settings.audience})") from None
        except jwt.InvalidAlgorithmError:
            raise TokenRejected(f"the token's algorithm is not one of {', '.join(self.algorithms)}") from None
        except jwt.PyJWTError as e:
            raise TokenRejected(f"invalid token: {e}") from None
        return self._identity(claims, now)

    def _identity(self, claims: dict[str, Any], now: float) -> Identity:
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub or len(sub) > 128:
            raise TokenRejected("sub must be a string of 1-128 characters")
        exp = claims["exp"]
        if not isinstance(exp, (int, float)) or isinstance(exp, bool):
            raise TokenRejected("exp must be a number")
        if exp + self.settings.leeway <= now:
            raise TokenRejected("the token has expired")
        nbf = claims.get("nbf")
        if nbf is not None and (not isinstance(nbf, (int, float)) or nbf - self.settings.leeway > now):
            raise TokenRejected("the token is not valid yet (nbf)")
        info = claims.get("info")
        if info is not None and len(json.dumps(info, separators=(",", ":"))) > MAX_INFO_BYTES:
            raise TokenRejected(f"info must be at most {MAX_INFO_BYTES} bytes of JSON")
        try:
            grants = Grants.from_claim(claims.get("wsh"), sub)
        except ValueError as e:
            raise TokenRejected(str(e)) from None
        return Identity(sub=sub, grants=grants, expires_at=float(exp), info=info)
