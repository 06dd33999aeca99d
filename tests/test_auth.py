"""
Unit tests of token authentication and grants (L{wsheart.auth}): forged
tokens are refused, time is the caller's.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from twisted.trial import unittest

from wsheart.auth import Grants, TokenRejected, TokenSettings, TokenVerifier

NOW = 1_800_000_000.0
SECRET = b"0123456789abcdef0123456789abcdef-secret"


def claims(**extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"sub": "42", "aud": "wsheart", "exp": NOW + 600}
    base.update(extra)
    return {k: v for k, v in base.items() if v is not None}


class VerifierCase(unittest.TestCase):
    def key_file(self, content: bytes) -> str:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(content)
        return path

    def hmac_verifier(self, **settings: Any) -> TokenVerifier:
        return TokenVerifier(TokenSettings(self.key_file(SECRET), **settings))

    def rsa_keys(self) -> tuple[Any, bytes]:
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public_pem = private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return private, public_pem


class TokenTests(VerifierCase):
    def test_valid_hmac_token(self) -> None:
        verifier = self.hmac_verifier()
        token = jwt.encode(claims(info={"name": "ann"}, wsh={"subscribe": ["user.{sub}.*"]}), SECRET, algorithm="HS256")
        identity = verifier.verify(token, NOW)
        self.assertEqual((identity.sub, identity.info, identity.expires_at), ("42", {"name": "ann"}, NOW + 600))
        self.assertTrue(identity.grants.allows("subscribe", "user.42.inbox"))
        self.assertFalse(identity.grants.allows("subscribe", "user.43.inbox"))

    def test_forged_tokens_are_refused(self) -> None:
        verifier = self.hmac_verifier()
        header = base64.urlsafe_b64encode(json.dumps({"alg": "none", "typ": "JWT"}).encode()).rstrip(b"=")
        body = base64.urlsafe_b64encode(json.dumps(claims()).encode()).rstrip(b"=")
        unsigned = (header + b"." + body + b".").decode()
        wrong_secret = jwt.encode(claims(), b"another secret of at least thirty-two bytes", algorithm="HS256")
        tampered = jwt.encode(claims(), SECRET, algorithm="HS256")
        head, payload, sig = tampered.split(".")
        payload = base64.urlsafe_b64encode(json.dumps(claims(sub="admin")).encode()).rstrip(b"=").decode()
        for token, why in [
            (unsigned, "algorithm"),
            (wrong_secret, "Signature verification failed"),
            (f"{head}.{payload}.{sig}", "Signature verification failed"),
            (jwt.encode(claims(aud="another-service"), SECRET, algorithm="HS256"), "audience"),
            (jwt.encode(claims(aud=None), SECRET, algorithm="HS256"), "aud"),
            (jwt.encode(claims(exp=None), SECRET, algorithm="HS256"), "exp"),
            (jwt.encode(claims(sub=None), SECRET, algorithm="HS256"), "sub"),
            (jwt.encode(claims(exp=NOW - 31), SECRET, algorithm="HS256"), "expired"),
            (jwt.encode(claims(nbf=NOW + 60), SECRET, algorithm="HS256"), "not valid yet"),
            (jwt.encode(claims(), SECRET, algorithm="HS512"), "algorithm"),
            (jwt.encode(claims(wsh={"subscribe": "chat.*"}), SECRET, algorithm="HS256"), "list of channel patterns"),
            (jwt.encode(claims(info="x" * 2000), SECRET, algorithm="HS256"), "info"),
            ("not a token", "invalid token"),
            (None, "non-empty string"),
        ]:
            with self.assertRaises(TokenRejected, msg=why) as raised:
                verifier.verify(token, NOW)
            self.assertIn(why, str(raised.exception))

    def test_time_is_the_callers_with_leeway(self) -> None:
        verifier = self.hmac_verifier(leeway=30)
        token = jwt.encode(claims(exp=NOW), SECRET, algorithm="HS256")
        self.assertEqual(verifier.verify(token, NOW + 29).sub, "42")
        with self.assertRaises(TokenRejected):
            verifier.verify(token, NOW + 30)

    def test_issuer_when_configured(self) -> None:
        verifier = self.hmac_verifier(issuer="https://auth.example.com")
        with self.assertRaises(TokenRejected):
            verifier.verify(jwt.encode(claims(), SECRET, algorithm="HS256"), NOW)
        with self.assertRaises(TokenRejected):
            verifier.verify(jwt.encode(claims(iss="https://evil.example"), SECRET, algorithm="HS256"), NOW)
        good = jwt.encode(claims(iss="https://auth.example.com"), SECRET, algorithm="HS256")
        self.assertEqual(verifier.verify(good, NOW).sub, "42")

    def test_public_key_and_the_hmac_confusion_attack(self) -> None:
        """
        With an RSA public key, RS256 tokens signed by its private key pass;
        an HS256 token whose "secret" is the public key's PEM (the classic
        confusion attack) is refused, since the algorithm is pinned.
        """
        private, public_pem = self.rsa_keys()
        verifier = TokenVerifier(TokenSettings(self.key_file(public_pem)))
        self.assertEqual(verifier.algorithms, ("RS256",))
        self.assertEqual(verifier.verify(jwt.encode(claims(), private, algorithm="RS256"), NOW).sub, "42")
        header = base64.urlsafe_b64encode(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()).rstrip(b"=")
        body = base64.urlsafe_b64encode(json.dumps(claims()).encode()).rstrip(b"=")
        signature = base64.urlsafe_b64encode(hmac.new(public_pem, header + b"." + body, hashlib.sha256).digest()).rstrip(b"=")
        with self.assertRaises(TokenRejected):
            verifier.verify((header + b"." + body + b"." + signature).decode(), NOW)

    def test_jwks_picks_the_key_by_kid(self) -> None:
        private = ec.generate_private_key(ec.SECP256R1())
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(private.public_key()))
        jwk.update(kid="k1", alg="ES256")
        verifier = TokenVerifier(TokenSettings(self.key_file(json.dumps({"keys": [jwk]}).encode())))
        good = jwt.encode(claims(), private, algorithm="ES256", headers={"kid": "k1"})
        self.assertEqual(verifier.verify(good, NOW).sub, "42")
        with self.assertRaises(TokenRejected) as raised:
            verifier.verify(jwt.encode(claims(), private, algorithm="ES256", headers={"kid": "k2"}), NOW)
        self.assertIn("kid", str(raised.exception))

    def test_unsafe_configurations_refused_at_start(self) -> None:
        with self.assertRaises(ValueError) as raised:
            TokenVerifier(TokenSettings(self.key_file(b"short secret")))
        self.assertIn("at least 32", str(raised.exception))
        _, public_pem = self.rsa_keys()
        with self.assertRaises(ValueError) as raised:
            TokenVerifier(TokenSettings(self.key_file(public_pem), algorithms=("RS256", "HS256")))
        self.assertIn("do not mix", str(raised.exception))
        with self.assertRaises(ValueError):
            TokenVerifier(TokenSettings(self.key_file(SECRET), algorithms=("RS256",)))
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        private_pem = private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        with self.assertRaises(ValueError) as raised:
            TokenVerifier(TokenSettings(self.key_file(private_pem)))
        self.assertIn("public key only", str(raised.exception))
        with self.assertRaises(ValueError):
            TokenVerifier(TokenSettings(self.key_file(SECRET), algorithms=("HS999",)))


class GrantsTests(unittest.TestCase):
    def test_patterns_and_own_sub(self) -> None:
        grants = Grants.from_claim({"subscribe": ["chat.*", "user.{sub}.*"], "publish": ["chat.*"]}, "ann")
        self.assertTrue(grants.allows("subscribe", "chat.lobby"))
        self.assertTrue(grants.allows("subscribe", "user.ann.inbox"))
        self.assertFalse(grants.allows("subscribe", "user.bob.inbox"))
        self.assertTrue(grants.allows("publish", "chat.lobby"))
        self.assertFalse(grants.allows("history", "chat.lobby"), "not granted: refused")

    def test_a_sub_with_pattern_characters_stays_literal(self) -> None:
        grants = Grants.from_claim({"subscribe": ["user.{sub}.*"]}, "*")
        self.assertFalse(grants.allows("subscribe", "user.bob.inbox"))

    def test_none_and_malformed(self) -> None:
        self.assertFalse(Grants.from_claim(None, "a").allows("subscribe", "chat.x"))
        for bad in ("chat.*", {"subscribe": "chat.*"}, {"publish": [1]}, {"history": [""]}):
            with self.assertRaises(ValueError):
                Grants.from_claim(bad, "a")


class FakeIdP:
    """
    An injected HTTP client: each GET is answered by C{answer} (status and
    body), at once, or later when C{hold} is set (then C{pending} holds the
    Deferreds).
    """

    def __init__(self, answer: tuple[int, bytes]) -> None:
        self.answer = answer
        self.urls: list[str] = []
        self.hold = False
        self.pending: list[Any] = []

    def __call__(self, url: str) -> Any:
        from twisted.internet import defer

        self.urls.append(url)
        if self.hold:
            d: Any = defer.Deferred()
            self.pending.append(d)
            return d
        return defer.succeed(self.answer)


def rsa_jwks(*kids: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """
    RSA private keys by kid, and the JWKS of their public keys.
    """
    privates = {kid: rsa.generate_private_key(public_exponent=65537, key_size=2048) for kid in kids}
    keys = []
    for kid, private in privates.items():
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
        jwk.update(kid=kid, use="sig")
        keys.append(jwk)
    return privates, {"keys": keys}


class JWKSFetcherTests(unittest.TestCase):
    """
    --jwt-jwks-url on a task.Clock with an injected HTTP client: no network.
    """

    URL = "https://idp.example/.well-known/jwks.json"

    def setUp(self) -> None:
        from twisted.internet.task import Clock

        self.clock = Clock()
        self.clock.advance(NOW)
        self.privates, self.jwks = rsa_jwks("k1", "k2")
        self.idp = FakeIdP((200, json.dumps({"keys": self.jwks["keys"][:1]}).encode()))
        self.verifier = TokenVerifier(TokenSettings(jwks_url=self.URL))

    def fetcher(self, **kwargs: Any) -> Any:
        from wsheart.auth.jwks import JWKSFetcher

        fetcher = JWKSFetcher(self.verifier, self.URL, self.clock, self.idp, **kwargs)
        self.addCleanup(lambda: fetcher.running and fetcher.stopService())
        return fetcher

    def token(self, kid: str) -> str:
        return jwt.encode(claims(), self.privates[kid], algorithm="RS256", headers={"kid": kid})

    def test_fetched_at_start_and_refreshed(self) -> None:
        """
        The keys are fetched when the service starts, from the configured
        URL only, and again every refresh interval.
        """
        fetcher = self.fetcher(refresh=600)
        fetcher.startService()
        self.assertEqual(self.idp.urls, [self.URL])
        self.assertEqual(self.verifier.verify(self.token("k1"), NOW).sub, "42")
        self.clock.advance(599)
        self.assertEqual(len(self.idp.urls), 1)
        self.clock.advance(1)
        self.assertEqual(len(self.idp.urls), 2)

    def test_no_keys_yet_is_a_temporary_refusal(self) -> None:
        """
        The daemon starts even if the first fetch fails (logged); tokens
        are then refused with a reason and a retry_after (not a final
        refusal), and fetching is retried every 30 s until keys arrive.
        """
        from twisted.logger import capturedLogs  # type: ignore[attr-defined]

        self.idp.answer = (500, b"oops")
        fetcher = self.fetcher()
        with capturedLogs() as events:
            fetcher.startService()
        self.assertTrue(any("HTTP 500" in str(e.get("why")) and "no keys yet" in str(e.get("kept")) for e in events))
        with self.assertRaises(TokenRejected) as raised:
            self.verifier.verify(self.token("k1"), NOW)
        self.assertIn("no keys yet", str(raised.exception))
        self.assertEqual(raised.exception.retry_after, 35.0)
        self.assertEqual(len(self.idp.urls), 1, "rate-limited: no second fetch within 30 s")
        self.idp.answer = (200, json.dumps(self.jwks).encode())
        self.clock.advance(30)
        self.assertEqual(len(self.idp.urls), 2)
        self.assertEqual(self.verifier.verify(self.token("k2"), NOW + 30).sub, "42")

    def test_unknown_kid_refetches_at_most_every_30_s(self) -> None:
        """
        A kid the keys lack is refused now as "keys are being refreshed"
        and triggers one fetch; forged kids within 30 s trigger none; after
        a rotation the client's retry passes.
        """
        fetcher = self.fetcher()
        fetcher.startService()
        self.clock.advance(40)
        self.idp.answer = (200, json.dumps(self.jwks).encode())  # rotated: k2 added
        with self.assertRaises(TokenRejected) as raised:
            self.verifier.verify(self.token("k2"), NOW + 40)
        self.assertEqual((str(raised.exception), raised.exception.retry_after), ("unknown kid, keys are being refreshed", 5.0))
        self.assertEqual(len(self.idp.urls), 2)
        self.assertEqual(self.verifier.verify(self.token("k2"), NOW + 40).sub, "42")
        forged = jwt.encode(claims(), self.privates["k1"], algorithm="RS256", headers={"kid": "forged"})
        for _ in range(100):
            with self.assertRaises(TokenRejected):
                self.verifier.verify(forged, NOW + 40)
        self.assertEqual(len(self.idp.urls), 2, "no fetch for 30 s after the last")
        self.clock.advance(30)
        with self.assertRaises(TokenRejected):
            self.verifier.verify(forged, NOW + 70)
        self.assertEqual(len(self.idp.urls), 3)

    def test_bad_fetches_keep_the_old_keys(self) -> None:
        """
        An error status, a body that is not JSON, a set with an HMAC key or
        no key for the algorithms, a body over the cap, and a fetch that
        does not answer within the timeout all keep the keys held so far.
        """
        fetcher = self.fetcher(max_bytes=50_000)
        fetcher.startService()
        good = self.token("k1")
        secret = {"kty": "oct", "kid": "s", "k": base64.urlsafe_b64encode(SECRET).rstrip(b"=").decode()}
        ec_key = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP256R1()).public_key()))
        for answer in [
            (404, b"{}"),
            (200, b"<html>"),
            (200, b'{"keys": []}'),
            (200, json.dumps({"keys": [*self.jwks["keys"], secret]}).encode()),
            (200, json.dumps({"keys": [ec_key]}).encode()),
            (200, b" " * 50_001),
        ]:
            self.idp.answer = answer
            self.clock.advance(3600)
            self.assertEqual(self.verifier.verify(good, NOW).sub, "42", answer[:1])
        self.idp.hold = True
        self.clock.advance(3600)
        [pending] = self.idp.pending
        self.clock.advance(5)
        self.assertTrue(pending.called, "cancelled by the timeout")
        self.assertEqual(self.verifier.verify(good, NOW).sub, "42")

    def test_stop_cancels_the_timer_and_the_request(self) -> None:
        """
        Stopping the service cancels the request in flight and the next
        fetch: no delayed call is left, and a verify no longer fetches.
        """
        self.idp.hold = True
        fetcher = self.fetcher()
        fetcher.startService()
        [pending] = self.idp.pending
        fetcher.stopService()
        self.assertTrue(pending.called)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        with self.assertRaises(TokenRejected) as raised:
            self.verifier.verify(self.token("k1"), NOW)
        self.assertIsNone(raised.exception.retry_after, "nobody fetches: the refusal stands")
        self.assertEqual(len(self.idp.urls), 1)

    def test_url_rules(self) -> None:
        """
        https://, or http:// to a loopback host; a URL verifier refuses HMAC
        algorithms and needs exactly one key source.
        """
        from wsheart.auth.jwks import check_jwks_url

        for good in ("https://idp.example/jwks", "http://127.0.0.1:9/jwks", "http://[::1]/k", "http://localhost/k"):
            self.assertEqual(check_jwks_url(good), good)
        for bad in ("http://idp.example/jwks", "http://10.0.0.1/jwks", "file:///etc/jwks", "https:///nohost", "http://127.0.0.1.evil.example/"):
            with self.assertRaises(ValueError, msg=bad):
                check_jwks_url(bad)
        with self.assertRaises(ValueError):
            TokenVerifier(TokenSettings(jwks_url=self.URL, algorithms=("HS256",)))
        with self.assertRaises(ValueError):
            TokenVerifier(TokenSettings())
