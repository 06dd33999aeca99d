"""
Integration test of --jwt-jwks-url on the real reactor, loopback only: a
twisted.web server on 127.0.0.1 serves a JWKS, the fetcher (treq) takes
it, an RS256 token signed with the matching private key verifies, and a
rotated set is picked up by the unknown-kid re-fetch.
"""

from __future__ import annotations

import json
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from twisted.internet import reactor
from twisted.trial import unittest
from twisted.web import resource, server

from wsheart.auth import TokenRejected, TokenSettings, TokenVerifier
from wsheart.auth.jwks import JWKSFetcher, treq_get

from .loopback import async_test, listen, wait_until


class JWKSResource(resource.Resource):
    """
    Serves C{self.document} as JSON and counts the requests.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.document: dict[str, Any] = {"keys": []}
        self.requests = 0

    def render_GET(self, request: Any) -> bytes:
        self.requests += 1
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(self.document).encode()


def public_jwk(private: Any, kid: str) -> dict[str, Any]:
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
    jwk.update(kid=kid, alg="RS256", use="sig")
    return jwk


class JWKSIntegrationTests(unittest.TestCase):
    timeout = 30

    @async_test
    async def test_fetched_keys_verify_and_rotation_is_picked_up(self) -> None:
        """
        Over real HTTP on loopback: the keys fetched at start verify a token
        signed by the IdP's private key; after the IdP rotates to a new
        key, the first token with the new kid is refused as "being
        refreshed" and triggers a fetch, and the retry passes.
        """
        jwks = JWKSResource()
        old, new = (rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(2))
        jwks.document = {"keys": [public_jwk(old, "old")]}
        site = server.Site(jwks)
        site.noisy = False
        port = await listen(self, site)
        url = f"http://127.0.0.1:{port.getHost().port}/.well-known/jwks.json"
        verifier = TokenVerifier(TokenSettings(jwks_url=url))
        # No wait between fetches here: the 30 s rate limit is a unit test's.
        fetcher = JWKSFetcher(verifier, url, reactor, treq_get(reactor), min_interval=0)
        fetcher.startService()
        self.addCleanup(fetcher.stopService)
        await wait_until(self, lambda: verifier.has_keys)
        now = reactor.seconds()

        def signed(private: Any, kid: str) -> str:
            claims = {"sub": "ann", "aud": "wsheart", "exp": now + 600}
            return jwt.encode(claims, private, algorithm="RS256", headers={"kid": kid})

        self.assertEqual(verifier.verify(signed(old, "old"), now).sub, "ann")
        jwks.document = {"keys": [public_jwk(new, "new")]}
        with self.assertRaises(TokenRejected) as raised:
            verifier.verify(signed(new, "new"), now)
        self.assertEqual(str(raised.exception), "unknown kid, keys are being refreshed")
        self.assertIsNotNone(raised.exception.retry_after)
        await wait_until(self, lambda: jwks.requests == 2 and fetcher._in_flight is None)
        self.assertEqual(verifier.verify(signed(new, "new"), now).sub, "ann")
        with self.assertRaises(TokenRejected):
            verifier.verify(signed(old, "old"), now)  # rotated out
