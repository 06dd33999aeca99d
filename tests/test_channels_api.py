"""
Tests for L{wsheart.channels.api}, the channel HTTP API: the bearer token, publish,
history, presence and the refusal of unwanted request bodies before they
are stored - through the admin site's real HTTP parser on in-memory
transports, with a L{task.Clock}.
"""

from __future__ import annotations

import json
from typing import Any, Optional

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from wsheart.admin import admin_site
from wsheart.channels.api import ApiTokens, parse_tokens, read_token_file
from wsheart.channels.broker import Broker, ChannelSettings
from wsheart.health import Health, LagMonitor
from wsheart.hub import Hub
from wsheart.metrics import ServerMetrics

from .memory import FakeConnection

TOKEN = b"t0ken-for-the-api-tests"


def tokens_of(token: Optional[bytes]) -> Optional[ApiTokens]:
    return None if token is None else ApiTokens([token])


class Answer:
    """
    What the site wrote on one connection, parsed.
    """

    def __init__(self, transport: StringTransport) -> None:
        self.transport = transport
        raw = transport.value()
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        self.raw = raw
        self.status = int(lines[0].split()[1]) if lines[0] else 0
        self.headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            self.headers[name.strip().lower()] = value.strip()

    def json(self) -> Any:
        return json.loads(self.body)


class APITestCase(unittest.TestCase):
    """
    An admin site with the API over a broker, and raw HTTP to it.
    """

    broker: Broker

    def setUp(self) -> None:
        self.clock = Clock()
        self.broker = self.make_broker(ChannelSettings(max_data_bytes=64 * 1024))
        self.site = self.make_site(TOKEN)

    def make_broker(self, settings: ChannelSettings) -> Broker:
        return Broker(self.clock, settings)

    def make_site(self, token: Optional[bytes]) -> Any:
        hub = Hub(self.clock)
        health = Health(LagMonitor(self.clock))
        return admin_site(hub, health, ServerMetrics(), self.clock, broker=self.broker, api_tokens=tokens_of(token))

    def send(self, raw: bytes, site: Any = None) -> Answer:
        """
        Feed raw HTTP bytes to a fresh connection of the site.
        """
        channel = (site or self.site).buildProtocol(None)
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(raw)
        return Answer(transport)

    def request(self, method: str, path: str, body: bytes = b"", auth: Optional[bytes] = b"Bearer " + TOKEN, headers: bytes = b"", site: Any = None) -> Answer:
        head = f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {len(body)}\r\n".encode() + headers
        if auth is not None:
            head += b"Authorization: " + auth + b"\r\n"
        return self.send(head + b"\r\n" + body, site)



class APITests(APITestCase):
    # -- the token ------------------------------------------------------------

    def test_bearer_token_only(self) -> None:
        """
        Only "Bearer <the token>" is let in: no header, another scheme
        with the right token, or a wrong token get 401 with
        WWW-Authenticate.
        """
        for auth in [None, b"Basic " + TOKEN, b"Token " + TOKEN, b"Bearer wrong-token-1234567", b"Bearer", TOKEN]:
            answer = self.request("GET", "/channels", auth=auth)
            self.assertEqual(answer.status, 401, auth)
            self.assertEqual(answer.headers[b"www-authenticate"], b'Bearer realm="wsheart"')
        self.assertEqual(self.request("GET", "/channels", auth=b"bearer  " + TOKEN).status, 200, "scheme is case-insensitive")

    def test_api_is_off_without_a_token(self) -> None:
        """
        With channels but no token configured, every API path answers 404
        (never "anyone may publish"), whatever Authorization says.
        """
        site = self.make_site(None)
        for method, path in [("GET", "/channels"), ("GET", "/channels/news/presence"), ("POST", "/publish/news")]:
            self.assertEqual(self.request(method, path, auth=b"Bearer " + TOKEN, site=site).status, 404, (method, path))
        # A body is not even read: nothing here takes one while the API is off.
        answer = self.request("POST", "/publish/news", body=b'"hi"', auth=b"Bearer " + TOKEN, site=site)
        self.assertEqual(answer.status, 413)
        self.assertTrue(answer.transport.disconnecting)
        self.assertEqual(self.broker.channels(), [], "nothing was published")

    # -- publish ----------------------------------------------------------------

    def test_publish_and_read_back(self) -> None:
        """
        A publish answers its position; presence and history read it back.
        """
        a = FakeConnection("a")
        self.broker.subscribe("a", a, "news", name="ann")
        answer = self.request("POST", "/publish/news", body=b'{"text": "hi"}')
        self.assertEqual(answer.status, 200)
        self.assertEqual(answer.json()["seq"], 1)
        self.assertEqual(a.frames()[0]["data"], {"text": "hi"})
        self.assertEqual(self.request("GET", "/channels/news/presence").json(), {"channel": "news", "clients": [{"id": "a", "name": "ann"}]})
        doc = self.request("GET", "/channels/news/history?since=0").json()
        self.assertEqual(doc["messages"], [{"seq": 1, "data": {"text": "hi"}}])

    def test_publish_bad_input(self) -> None:
        """
        Bad bodies, names and keys get 400/413 with a JSON reason; a body
        spelling a lone surrogate (defect 1) is a 400, not a 500.
        """
        cases = [
            ("/publish/news", b"{not json", 400),
            ("/publish/news", b'"\\ud800"', 400),
            ("/publish/news", b'{"\\udfff": 1}', 400),
            ("/publish/news", b"\xff\xfe", 400),
            ("/publish/news", b'"' + b"x" * 70000 + b'"', 413),
            ("/publish/news%0A", b"1", 400),  # defect 9: "news\n" is no channel name
            ("/publish/bad%2Fname", b"1", 400),
            ("/publish/news/extra", b"1", 400),
        ]
        for path, body, status in cases:
            answer = self.request("POST", path, body=body)
            self.assertEqual(answer.status, status, (path, body[:20]))
            self.assertTrue(answer.json()["error"])
        self.assertEqual(self.request("POST", "/publish/news", body=b"1", headers=b"Idempotency-Key: " + b"k" * 129 + b"\r\n").status, 400)
        self.assertEqual(self.broker.channels(), [], "nothing published, no channel made")

    def test_idempotency_key_header(self) -> None:
        """
        A publish retried with its Idempotency-Key answers the first
        position and publishes once.
        """
        key = b"Idempotency-Key: deploy-42\r\n"
        first = self.request("POST", "/publish/news", body=b"1", headers=key).json()
        again = self.request("POST", "/publish/news", body=b"1", headers=key).json()
        self.assertEqual(first, again)
        self.assertEqual(self.broker.channels()[0]["seq"], 1)

    def test_history_is_served_without_re_encoding(self) -> None:
        """
        Defect 6: GET .../history copies the stored JSON of each message;
        it never serialises the history again (which took seconds of the
        reactor for 100 MB).  Counted: what json.dumps produces while the
        request is served stays a small envelope, whatever the history holds.
        """
        broker = Broker(self.clock, ChannelSettings(max_data_bytes=1024 * 1024, history_size=50))
        self.broker = broker
        site = self.make_site(TOKEN)
        for i in range(50):
            broker.publish("big", {"i": i, "pad": "p" * 50000})
        produced = []
        real_dumps = json.dumps

        def counting_dumps(*args: Any, **kwargs: Any) -> str:
            text = real_dumps(*args, **kwargs)
            produced.append(len(text))
            return text

        self.patch(json, "dumps", counting_dumps)
        answer = self.request("GET", "/channels/big/history?since=10", site=site)
        self.assertEqual(answer.status, 200)
        self.assertEqual(answer.headers[b"content-type"], b"application/json")
        self.assertLess(sum(produced), 1000, "the messages were serialised again")
        doc = json.loads(answer.body)
        self.assertEqual([m["seq"] for m in doc["messages"]], list(range(11, 51)))
        self.assertEqual(doc["messages"][0]["data"], {"i": 10, "pad": "p" * 50000})

    def test_history_and_presence_errors(self) -> None:
        """
        A bad since, a bad name or an unknown sub-path get 400/404.
        """
        for path, status in [
            ("/channels/news/history?since=-1", 400),
            ("/channels/news/history?since=x", 400),
            ("/channels/news/history?since=" + "9" * 19, 400),
            ("/channels/bad%2F/presence", 400),
            ("/channels/news/other", 404),
        ]:
            self.assertEqual(self.request("GET", path).status, status, path)
        self.assertEqual(self.request("DELETE", "/channels").status, 405)

    # -- bodies refused before they are stored (defect 7) ----------------------

    def test_body_without_token_refused_before_it_is_read(self) -> None:
        """
        Defect 7: a 300 MiB upload without a token gets 401 as soon as its
        headers are in - before any of the body arrives - and the
        connection is closed, so the rest is never read or stored.
        """
        head = b"POST /publish/news HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (300 * 1024 * 1024)
        channel = self.site.buildProtocol(None)
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(head)
        answer = Answer(transport)
        self.assertEqual(answer.status, 401)
        self.assertTrue(transport.disconnecting)
        [request] = channel._channel.requests  # the HTTP/1.1 channel inside the protocol switcher
        channel.dataReceived(b"x" * 65536)  # what was already on its way is dropped
        self.assertIsNone(request.content, "no body stored")
        self.assertEqual(self.broker.channels(), [])

    def test_body_over_the_limit_refused_before_it_is_read(self) -> None:
        """
        Defect 7: with the token, a Content-Length over the message limit
        gets 413 at once; a chunked body gets 413 when it passes the limit.
        """
        head = b"POST /publish/news HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN + b"\r\nContent-Length: %d\r\n\r\n"
        answer = self.send(head % (64 * 1024 + 1))
        self.assertEqual(answer.status, 413)
        self.assertTrue(answer.transport.disconnecting)
        chunked = b"POST /publish/news HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
        chunk = b"%x\r\n%s\r\n" % (40000, b"7" * 40000)
        answer = self.send(chunked + chunk + chunk)
        self.assertEqual(answer.status, 413)
        self.assertTrue(answer.transport.disconnecting)
        small = self.send(chunked + b"2\r\n42\r\n0\r\n\r\n")
        self.assertEqual((small.status, small.json()["seq"]), (200, 1), "a chunked body within the limit is fine")

    def test_refusal_sends_no_100_continue(self) -> None:
        """
        A refused request that asked "Expect: 100-continue" gets the
        refusal alone, never a 100 Continue inviting the body.
        """
        answer = self.send(b"POST /publish/news HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5000000\r\n\r\n")
        self.assertEqual(answer.status, 401)
        self.assertNotIn(b"100 Continue", answer.raw)

    def test_bodies_elsewhere_on_the_admin_endpoint(self) -> None:
        """
        Without the token nothing on the admin endpoint reads a body; body-less
        requests (health checks, scrapes) are untouched.
        """
        self.assertEqual(self.request("POST", "/healthz", body=b"x" * 100, auth=None).status, 401)
        self.assertEqual(self.request("GET", "/healthz", auth=None).status, 200)
        self.assertEqual(self.request("GET", "/metrics", auth=None).status, 200)


class EngineThatAnswersLaterTests(APITestCase):
    """
    The API takes an engine whose answers are Deferreds (as Redis's will
    be): each request is answered when its Deferred fires.
    """

    def make_broker(self, settings: ChannelSettings) -> Broker:
        from .test_channels_v1 import LaterBroker

        return LaterBroker(self.clock, settings)

    def test_answers_when_the_engine_does(self) -> None:
        """
        publish, channels, presence and history answer once the engine
        has; a refusal that arrives later gets its status.
        """
        publish = self.request("POST", "/publish/news", body=b'{"n": 1}')
        self.assertEqual(publish.transport.value(), b"", "no answer before the engine's")
        self.clock.advance(0.01)
        self.assertEqual(Answer(publish.transport).json()["seq"], 1)
        for path in ["/channels", "/channels/news/presence", "/channels/news/history?since=0"]:
            answer = self.request("GET", path)
            self.clock.advance(0.01)
            self.assertEqual(Answer(answer.transport).status, 200, path)
        self.assertEqual(json.loads(Answer(answer.transport).body)["messages"], [{"seq": 1, "data": {"n": 1}}])
        late = self.request("POST", "/publish/news", body=b'"' + b"x" * 65300 + b'"')  # fits the body limit, not the frame
        self.clock.advance(0.01)
        self.assertEqual(Answer(late.transport).status, 413)


class APIEdgeTests(APITestCase):
    """
    The API's limits at their edges.
    """

    def test_token_file(self) -> None:
        """
        A token file holds one token a line, each at least 16 characters;
        blank lines and # comments are skipped; a short token, a token with
        a space (an inline comment) or no token at all is refused, naming
        the line but never its text.
        """
        text = b"# old, remove after the move\n" + b"x" * 16 + b"\n\n  # new\r\n" + b"y" * 40 + b"  \r\n" + b"x" * 16 + b"\n"
        self.assertEqual(parse_tokens(text, "f"), (b"x" * 16, b"y" * 40), "duplicates once")
        for bad, why in [
            (b"x" * 15 + b"\n", "f, line 1: a token must have at least 16"),
            (b"# ok\n" + b"x" * 20 + b" # inline\n", "f, line 2: a token has no spaces"),
            (b"\n# only comments\n\n", "f holds no token"),
            (b"", "f holds no token"),
        ]:
            with self.assertRaises(ValueError) as e:
                parse_tokens(bad, "f")
            self.assertIn(why, str(e.exception))
            self.assertNotIn("xxxx", str(e.exception), "the token is never shown")
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(text)
        self.assertEqual(read_token_file(path), (b"x" * 16, b"y" * 40))
        with self.assertRaises(OSError):
            read_token_file(path + ".missing")

    def test_several_tokens_each_let_in(self) -> None:
        """
        With two tokens both are let in (a rotation in progress), to the
        early body check too; anything else is not.
        """
        first, second = b"first-token-0123456789", b"second-token-0123456789"
        site = admin_site(
            Hub(self.clock), Health(LagMonitor(self.clock)), ServerMetrics(), self.clock,
            broker=self.broker, api_tokens=ApiTokens([first, second]),
        )  # fmt: skip
        for token in (first, second):
            self.assertEqual(self.request("GET", "/channels", auth=b"Bearer " + token, site=site).status, 200)
            self.assertEqual(self.request("POST", "/publish/news", body=b"1", auth=b"Bearer " + token, site=site).status, 200)
        for wrong in [b"third-token-0123456789", first + second, first[:-1], b""]:
            self.assertEqual(self.request("GET", "/channels", auth=b"Bearer " + wrong, site=site).status, 401, wrong)
            self.assertEqual(self.request("POST", "/publish/news", body=b"1", auth=b"Bearer " + wrong, site=site).status, 401, wrong)

    def test_key_length_and_since_edges(self) -> None:
        """
        An Idempotency-Key of 128 characters is taken; since may have 18
        digits; a body of exactly the message limit is read whole.
        """
        key = b"Idempotency-Key: " + b"k" * 128 + b"\r\n"
        self.assertEqual(self.request("POST", "/publish/news", body=b"1", headers=key).status, 200)
        self.assertEqual(self.request("GET", "/channels/news/history?since=" + "9" * 18).status, 200)
        body = b'"' + b"x" * (64 * 1024 - 2) + b'"'  # exactly max_data_bytes: read whole, then 413 for the frame
        answer = self.request("POST", "/publish/news", body=body)
        self.assertEqual(answer.status, 413)
        self.assertIn("message data is larger", answer.json()["error"], "refused by the broker, not as unreadable JSON")

    def test_methods_and_paths(self) -> None:
        """
        A 405 says which methods are allowed; bare /publish is a 400; the
        early 401 carries WWW-Authenticate; presence answers 200.
        """
        answer = self.request("DELETE", "/channels/news/presence")
        self.assertEqual((answer.status, answer.headers[b"allow"]), (405, b"GET"))
        self.assertEqual(self.request("POST", "/publish", body=b"1").status, 400)
        early = self.request("POST", "/publish/news", body=b"1", auth=None)
        self.assertEqual((early.status, early.headers[b"www-authenticate"]), (401, b'Bearer realm="wsheart"'))
        self.assertEqual(self.request("GET", "/channels/news/presence").status, 200)


class DisconnectTests(APITestCase):
    """
    POST /disconnect closes a user's connections on this process.
    """

    def make_site(self, token: Optional[bytes]) -> Any:
        self.hub = Hub(self.clock)
        health = Health(LagMonitor(self.clock))
        return admin_site(self.hub, health, ServerMetrics(), self.clock, broker=self.broker, api_tokens=tokens_of(token))

    def test_a_users_connections_are_closed_and_no_others(self) -> None:
        from wsheart.auth import Identity

        connections = {}
        for cid, sub in [("c1", "ann"), ("c2", "ann"), ("c3", "bob"), ("c4", None)]:
            connection = FakeConnection(cid)
            connection.identity = Identity(sub=sub) if sub is not None else None  # type: ignore[assignment]
            self.hub.add(cid, "tcp4:127.0.0.1:1", connection)
            connections[cid] = connection
        answer = self.request("POST", "/disconnect", body=json.dumps({"sub": "ann", "reason": "banned"}).encode())
        self.assertEqual((answer.status, answer.json()), (200, {"sub": "ann", "disconnected": 2}))
        self.assertEqual([connections[c].closed for c in ("c1", "c2", "c3", "c4")], [(4403, "banned"), (4403, "banned"), None, None])
        self.assertEqual(self.request("POST", "/disconnect", body=b'{"sub": ""}').status, 400)
        self.assertEqual(self.request("POST", "/disconnect", body=b"not json").status, 400)
        self.assertEqual(self.request("POST", "/disconnect", body=b'{"sub": "ann"}', auth=b"Bearer wrong-token-1234567").status, 401)


class TokenReloadTests(APITestCase):
    """
    SIGHUP re-reads --api-token-file: the daemon as makeService builds it,
    its reload method called directly (what the signal handler does).
    """

    OLD = b"old-token-0123456789"
    NEW = b"new-token-0123456789"

    def setUp(self) -> None:
        from twisted.internet.testing import MemoryReactorClock

        from wsheart.tap import Options, makeService

        super().setUp()
        self.path = self.mktemp()
        self.write(b"# the back ends' token\n" + self.OLD + b"\n")
        options = Options()
        options.parseOptions(["--admin-endpoint", "tcp:0:interface=127.0.0.1", "--api-token-file", self.path])
        self.service = makeService(options, reactor=MemoryReactorClock())
        self.daemon_site = self.service.admin.factory  # type: ignore[union-attr]

    def write(self, text: bytes) -> None:
        with open(self.path, "wb") as f:
            f.write(text)

    def statuses(self) -> tuple[int, int]:
        return tuple(  # type: ignore[return-value]
            self.request("GET", "/channels", auth=b"Bearer " + token, site=self.daemon_site).status
            for token in (self.OLD, self.NEW)
        )

    def test_rotation(self) -> None:
        """
        Adding a token lets it in at once beside the old one; removing the
        old one shuts it out; the log says how many were loaded, never the
        tokens.
        """
        from twisted.logger import capturedLogs

        self.assertEqual(self.statuses(), (200, 401))
        self.write(self.OLD + b"\n" + self.NEW + b"\n")
        with capturedLogs() as events:
            self.service.reload()
        self.assertEqual(self.statuses(), (200, 200), "both during the move")
        self.assertIn(2, [e.get("count") for e in events])
        self.write(b"# rotated\n" + self.NEW + b"\n")
        with capturedLogs() as more:
            self.service.reload()
        self.assertEqual(self.statuses(), (401, 200), "the old one is out")
        self.assertIn(1, [e.get("count") for e in more])
        for event in list(events) + list(more):
            text = repr(event)
            self.assertNotIn("token-0123456789", text, "a token was logged")

    def test_broken_file_keeps_the_tokens_in_use(self) -> None:
        """
        A file that is gone, empty, all comments or holds a bad token on
        reload keeps the current tokens (never locks everyone out, never
        opens the API) and logs an error; a good file later is taken.
        """
        import os

        from twisted.logger import LogLevel, capturedLogs

        for breakage in ("missing", b"", b"# nothing yet\n\n", b"short\n", self.NEW + b" # comment\n"):
            if breakage == "missing":
                os.remove(self.path)
            else:
                self.write(breakage)  # type: ignore[arg-type]
            with capturedLogs() as events:
                self.service.reload()
            self.assertEqual(self.statuses(), (200, 401), breakage)
            errors = [e for e in events if e["log_level"] == LogLevel.error]
            self.assertEqual(len(errors), 1, breakage)
            self.assertIn("keeping the 1 current token", errors[0]["log_format"].format(**errors[0]))
        self.assertEqual(self.request("POST", "/publish/news", body=b"1", auth=b"Bearer nobody-0123456789", site=self.daemon_site).status, 401)
        self.write(self.NEW + b"\n")
        self.service.reload()
        self.assertEqual(self.statuses(), (401, 200))
