"""
Unit tests of L{wsheart.access.door}: the decision on one handshake, from
its facts alone - no protocol, no transport.  (The protocol carrying the
decisions out is tested in test_protocol, test_origin, test_limits,
test_admission, test_proxies and test_auth_connections.)
"""

from __future__ import annotations

from typing import Any, Optional

import jwt
from twisted.internet.task import Clock
from twisted.trial import unittest

from wsheart.access.admission import HINTS_SUBPROTOCOL, Admission, AdmissionSettings
from wsheart.access.door import USER_REFUSAL, Caller, Door, Knock
from wsheart.access.limits import ConnectionLimits, LimitSettings
from wsheart.access.origin import OriginPolicy
from wsheart.access.proxies import TrustedProxies
from wsheart.auth import AuthPolicy, Grants, TokenSettings, TokenVerifier

NOW = 1_800_000_000.0
SECRET = b"door-test-secret-of-at-least-32-bytes!!"


class InBandHandler:
    authenticates_in_band = True


class DoorTests(unittest.TestCase):
    def door(
        self,
        limits: LimitSettings = LimitSettings(),
        accept_rate: float = 0.0,
        auth: bool = False,
        proxies: Optional[TrustedProxies] = None,
        subprotocols: Optional[dict[str, Any]] = None,
    ) -> Door:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.ignored: list[tuple[str, str]] = []
        self.limits = ConnectionLimits(limits, self.clock)
        admission = Admission(AdmissionSettings(accept_rate=accept_rate, ramp=0), self.clock)
        policy = None
        if auth:
            path = self.mktemp()
            with open(path, "wb") as f:
                f.write(SECRET)
            policy = AuthPolicy(TokenVerifier(TokenSettings(path)), Grants(), 10.0)
        return Door(
            OriginPolicy((), True),
            proxies,
            self.limits,
            admission,
            policy,
            subprotocols if subprotocols is not None else {"wsheart.v1": object()},
            lambda: 0.5,
            lambda peer, why: self.ignored.append((peer, why)),
        )

    def knock(self, headers: Optional[dict[str, str]] = None, protocols: tuple[str, ...] = (), host: str = "192.0.2.7") -> Knock:
        return Knock(host, f"tcp4:{host}:5000", {"host": "example.com", **(headers or {})}, protocols, NOW)

    def test_a_plain_handshake_opens_with_the_first_subprotocol_served(self) -> None:
        door = self.door()
        knock = self.knock(protocols=("chat", "wsheart.v1"))
        decision = door.decide(knock, door.identify(knock))
        self.assertEqual((decision.subprotocol, decision.refused, decision.in_band, decision.identity), ("wsheart.v1", None, None, None))
        knock = self.knock(protocols=("chat", HINTS_SUBPROTOCOL))
        self.assertEqual(door.decide(knock, door.identify(knock)).subprotocol, HINTS_SUBPROTOCOL, "what wsheart.js offers")

    def test_a_page_of_another_site_is_refused_with_403(self) -> None:
        door = self.door()
        knock = self.knock({"origin": "https://evil.example"})
        refused = door.decide(knock, door.identify(knock)).refused
        assert refused is not None
        self.assertEqual((refused.status, refused.kind), (403, "origin"))
        knock = self.knock({"origin": "http://example.com"})
        self.assertIsNone(door.decide(knock, door.identify(knock)).refused, "the server's own page")

    def test_a_trusted_proxy_names_the_caller(self) -> None:
        door = self.door(proxies=TrustedProxies.parse(["10.0.0.0/8"]))
        knock = self.knock({"x-forwarded-for": "203.0.113.9"}, host="10.1.2.3")
        self.assertEqual(door.identify(knock), Caller("203.0.113.9", "tcp4:203.0.113.9"))
        knock = self.knock({"x-forwarded-for": "not an address"}, host="10.1.2.3")
        self.assertEqual(door.identify(knock), Caller("10.1.2.3"), "the proxy's address")
        self.assertEqual(len(self.ignored), 1)
        knock = self.knock({"x-forwarded-for": "203.0.113.9"}, host="192.0.2.7")
        self.assertEqual(door.identify(knock), Caller("192.0.2.7"), "an untrusted sender's header is not read")

    def test_limits_refuse_with_429_or_in_band(self) -> None:
        door = self.door(LimitSettings(max_connections_per_address=1, max_connections=2))
        self.limits.opened("192.0.2.7")
        knock = self.knock()
        refused = door.decide(knock, door.identify(knock)).refused
        assert refused is not None
        self.assertEqual((refused.status, refused.kind), (429, "limit"))
        self.limits.opened("192.0.2.8")
        other = self.knock(host="192.0.2.9", protocols=(HINTS_SUBPROTOCOL,))
        decision = door.decide(other, door.identify(other))
        self.assertIsNone(decision.refused)
        self.assertIsNotNone(decision.in_band, "full: a wsheart client is told in-band when to come back")
        plain = self.knock(host="192.0.2.9")
        refused = door.decide(plain, door.identify(plain)).refused
        assert refused is not None
        self.assertEqual((refused.status, refused.kind), (503, "limit"))
        self.assertIsNotNone(refused.retry_after)

    def test_tokens(self) -> None:
        door = self.door(auth=True, subprotocols={"wsheart.v1": InBandHandler(), "other": object()})
        good = jwt.encode({"sub": "ann", "aud": "wsheart", "exp": NOW + 60}, SECRET, algorithm="HS256")
        knock = self.knock({"authorization": f"Bearer {good}"})
        identity = door.decide(knock, door.identify(knock)).identity
        assert identity is not None
        self.assertEqual(identity.sub, "ann")
        knock = self.knock(protocols=("other",))
        refused = door.decide(knock, door.identify(knock)).refused
        assert refused is not None
        self.assertEqual((refused.status, refused.kind), (401, "token"))
        knock = self.knock(protocols=("wsheart.v1",))
        identity = door.decide(knock, door.identify(knock)).identity
        assert identity is not None
        self.assertTrue(identity.anonymous, "wsheart.v1 authenticates in its own frames")
        knock = self.knock({"authorization": "Bearer forged"})
        refused = door.decide(knock, door.identify(knock)).refused
        assert refused is not None
        self.assertEqual(refused.status, 401)

    def test_one_user_too_many(self) -> None:
        door = self.door(LimitSettings(max_connections_per_user=1), auth=True)
        self.limits.user_joined("ann")
        good = jwt.encode({"sub": "ann", "aud": "wsheart", "exp": NOW + 60}, SECRET, algorithm="HS256")
        knock = self.knock({"authorization": f"Bearer {good}"})
        refused = door.decide(knock, door.identify(knock)).refused
        assert refused is not None
        self.assertEqual((refused.status, refused.kind), (429, "limit"))
        self.assertIsNotNone(refused.retry_after)
        knock = self.knock({"authorization": f"Bearer {good}"}, protocols=(HINTS_SUBPROTOCOL,))
        self.assertIs(door.decide(knock, door.identify(knock)).in_band, USER_REFUSAL)
