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
an HMAC secret; it is read at start (restart to change it).  With
C{--jwt-jwks-url} instead, the verifier starts without keys and
L{wsheart.auth.jwks.JWKSFetcher} hands it each JWKS it fetches
(L{TokenVerifier.load_jwks}): public keys only, checked against the
configured algorithms like a file's.  Time comes from the caller (the
reactor's clock), not from the wall clock inside PyJWT.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import jwt

from wsheart.auth.grants import Grants

HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")
MIN_SECRET_BYTES = 32
# Claims handed to handlers and echoed in "authed": what the token's issuer
# meant to be seen (never the whole token).
PUBLIC_CLAIMS = ("sub", "info")
MAX_INFO_BYTES = 1024


# Which JWK key types can verify which algorithms (a fetched set must
# hold at least one key for the configured algorithms).
_KEY_TYPES = {"RSA": ("RS", "PS"), "EC": ("ES",), "OKP": ("EdDSA", "Ed")}


class TokenRejected(Exception):
    """
    A token that does not authenticate anyone; the message says why (it
    is safe to show: it names no key material).

    @ivar retry_after: None for a refusal that stands; else the token may
        pass after this many seconds (the keys it needs are being fetched),
        so the connection is refused as "try again later" (503 on the
        handshake, 1013 with a hint on an auth frame), not 401/4401, which
        the wsheart clients take as final.
    """

    def __init__(self, reason: str, retry_after: Optional[float] = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


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
    """
    C{key_file} (C{--jwt-key}) or C{jwks_url} (C{--jwt-jwks-url}), not both.
    """

    key_file: Optional[str] = None
    algorithms: tuple[str, ...] = ()  # (): from the key's type; RS256 for a URL
    audience: str = "wsheart"
    issuer: Optional[str] = None
    leeway: float = 30.0
    jwks_url: Optional[str] = None


class TokenVerifier:
    """
    Verifies tokens against the keys of C{settings}; raises ValueError at
    construction for a configuration that would be unsafe or unusable.
    """

    def __init__(self, settings: TokenSettings) -> None:
        self.settings = settings
        self._jwks: Optional[jwt.PyJWKSet] = None
        self._key: Any = None
        # With a JWKS URL: asked for fresh keys when a token names a kid
        # they lack; returns the seconds until they may be there.  Set by
        # the fetcher (None: nobody fetches; the refusal stands).
        self.refresh_keys: Optional[Callable[[], float]] = None
        if (settings.key_file is None) == (settings.jwks_url is None):
            raise ValueError("--auth jwt needs one of --jwt-key FILE and --jwt-jwks-url URL")
        if settings.jwks_url is not None:
            self.algorithms = settings.algorithms or ("RS256",)
            if any(a in HMAC_ALGORITHMS for a in self.algorithms):
                raise ValueError(
                    "--jwt-jwks-url: public-key algorithms only (an HMAC secret is never fetched over the network); "
                    f"got {', '.join(self.algorithms)}"
                )
            self._check_known()
            return
        assert settings.key_file is not None  # one of the two, checked above
        with open(settings.key_file, "rb") as f:
            material = f.read()
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
        self._check_known()

    def _check_known(self) -> None:
        unknown = set(self.algorithms) - set(jwt.algorithms.get_default_algorithms())
        if unknown:
            raise ValueError(f"--jwt-algorithms: unknown {', '.join(sorted(unknown))}")

    @property
    def has_keys(self) -> bool:
        return self._jwks is not None or self._key is not None

    def load_jwks(self, document: Any) -> tuple[str, ...]:
        """
        Take a fetched JWKS in place of the keys held so far; returns the
        kids it holds.  A set that is not a usable JWKS, holds an HMAC
        key (a secret on the wire; and HMAC never mixes with public keys),
        or has no key for the configured algorithms raises ValueError, and
        the keys held so far stay.
        """
        try:
            jwks = jwt.PyJWKSet.from_dict(document)
        except (ValueError, TypeError, AttributeError, jwt.PyJWTError) as e:
            raise ValueError(f"not a usable JWKS ({e})") from None
        if any(k.key_type == "oct" for k in jwks.keys):
            raise ValueError("it holds an HMAC (oct) key: only public keys are taken from a URL")
        fitting = [
            k
            for k in jwks.keys
            if any(a.startswith(_KEY_TYPES.get(k.key_type or "", ())) for a in self.algorithms)
        ]
        if not fitting:
            raise ValueError(f"no key in it is for {', '.join(self.algorithms)}")
        self._jwks = jwks
        return tuple(str(k.key_id) for k in jwks.keys)

    def _refusal_while_fetching(self, reason: str) -> TokenRejected:
        """
        With a JWKS URL: a token refused for want of its key may pass once
        the keys are fetched again (rate-limited by the fetcher).
        """
        if self.refresh_keys is None:
            return TokenRejected(reason)
        return TokenRejected(reason, retry_after=self.refresh_keys())

    def verify(self, token: Any, now: float) -> Identity:
        """
        The identity C{token} proves at time C{now}, or L{TokenRejected}.
        """
        if not isinstance(token, str) or not token or len(token) > 8192:
            raise TokenRejected("the token must be a non-empty string of at most 8 KiB")
        settings = self.settings
        try:
            key = self._key
            if settings.jwks_url is not None and self._jwks is None:
                raise self._refusal_while_fetching("no keys yet: the JWKS from --jwt-jwks-url has not been fetched")
            if self._jwks is not None:
                # The header is read apart only to pick a key by kid (it
                # costs a third of a verification: not for a single key).
                kid = jwt.get_unverified_header(token).get("kid")
                matches = [k for k in self._jwks.keys if kid is not None and k.key_id == kid]
                if not matches:
                    if kid is None or settings.jwks_url is None:
                        raise TokenRejected("no key for this token's kid")
                    # The issuer may have rotated its keys: refused now (verify
                    # stays synchronous), and the keys are fetched again so the
                    # client's retry passes; at most once per 30 s, so forged
                    # kids cannot make wsheart hammer the issuer.
                    raise self._refusal_while_fetching("unknown kid, keys are being refreshed")
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
