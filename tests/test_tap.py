"""
Tests for wsheart.tap and the twistd plugin: option parsing and validation,
what makeService builds, and that twistd can find the plugin.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import IServiceMaker
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.trial import unittest

from wsheart.deflate import DeflateSettings
from wsheart.handler import EchoHandler, MessageHandler
from wsheart.heartbeat import HeartbeatSettings
from wsheart.tap import DEFAULT_BACKLOG, Options, makeService, with_backlog

from .test_pages import get as get_page


class CustomHandler(MessageHandler):
    """
    A handler loaded through --handler in these tests.
    """

    def __init__(self, hub: Any) -> None:
        self.hub = hub


def not_a_handler(hub: Any) -> object:
    return object()


def parse(*argv: str) -> Options:
    options = Options()
    options.parseOptions(list(argv))
    return options


class OptionsTests(unittest.TestCase):
    """
    Parsing C{twistd wsheart} arguments.
    """

    def test_defaults(self) -> None:
        """
        With no arguments: tcp:8080 with the large backlog, heartbeat
        25 s / 10 s / 2, text ping/pong, 1 MiB messages.
        """
        options = parse()
        self.assertEqual(options["endpoint"], [f"tcp:8080:backlog={DEFAULT_BACKLOG}"])
        self.assertEqual(options["heartbeat"], HeartbeatSettings(25.0, 10.0, 2))
        self.assertEqual((options["app-ping"], options["app-pong"]), ("ping", "pong"))
        self.assertEqual(options["max-message-size"], 1024 * 1024)
        self.assertIsNone(options["handler-factory"])

    def test_endpoints_repeat(self) -> None:
        """
        --endpoint may be given several times; an explicit backlog is kept.
        """
        options = parse("--endpoint", "tcp:9000:interface=127.0.0.1", "-e", "tcp6:9001:backlog=10")
        self.assertEqual(
            options["endpoint"],
            [f"tcp:9000:interface=127.0.0.1:backlog={DEFAULT_BACKLOG}", "tcp6:9001:backlog=10"],
        )

    def test_heartbeat_options(self) -> None:
        """
        The three heartbeat numbers are parsed into HeartbeatSettings.
        """
        options = parse("--ping-interval", "5", "--ping-timeout", "2.5", "--max-missed", "3")
        self.assertEqual(options["heartbeat"], HeartbeatSettings(5.0, 2.5, 3))

    def test_usage_errors(self) -> None:
        """
        Every bad value gets a UsageError whose message names the option.
        """
        cases = [
            (["--ping-interval", "soon"], "--ping-interval must be a number"),
            (["--ping-interval", "-1"], "--ping-interval must be a positive"),
            (["--ping-timeout", "0"], "--ping-timeout must be a positive"),
            (["--max-missed", "0"], "--max-missed must be at least 1"),
            (["--node-id", "a.b"], "--node-id takes 1-32 letters"),
            (["--redis", "http://127.0.0.1:6379"], "--redis takes redis://"),
            (["--redis", "redis://127.0.0.1:6379/x"], "--redis"),
            (["--redis", "redis://127.0.0.1:6379", "--no-channels"], "drop --no-channels"),
            (["--allowed-origin", "example.com"], "--allowed-origin takes scheme://host"),
            (["--allowed-origin", "https://a*.example.com"], "whole first label"),
            (["--allow-missing-origin", "maybe"], "--allow-missing-origin takes yes or no"),
            (["--auth", "basic"], "--auth takes none or jwt"),
            (["--auth", "jwt"], "--auth jwt needs either --jwt-key FILE or --jwt-jwks-url URL"),
            (["--auth", "jwt", "--jwt-key", "/etc/hostname", "--jwt-jwks-url", "https://idp.example/jwks"], "one of them"),
            (["--jwt-jwks-url", "https://idp.example/jwks"], "--jwt-jwks-url needs --auth jwt"),
            (["--auth", "jwt", "--jwt-jwks-url", "http://idp.example/jwks"], "http:// only to a loopback host"),
            (["--auth", "jwt", "--jwt-jwks-url", "ftp://127.0.0.1/jwks"], "an https:// URL"),
            (["--auth", "jwt", "--jwt-jwks-url", "https://idp.example/jwks", "--jwt-algorithms", "HS256"], "public-key algorithms only"),
            (["--jwt-key", "/etc/hostname"], "--jwt-key needs --auth jwt"),
            (["--anonymous-channels", "public.*"], "need --auth jwt"),
            (["--demo-token-url", "http://127.0.0.1:8081/token"], "--demo-token-url need --auth jwt"),
            (["--auth", "jwt", "--jwt-key", "/nonexistent/key"], "--jwt-key: "),
            (["--redis-timeout", "0"], "--redis-timeout must be a positive"),
            (["--max-client-channels", "0"], "--max-client-channels must be at least 1"),
            (["--max-missed", "two"], "--max-missed must be a whole number"),
            (["--ping-interval", "5", "--ping-timeout", "10"], "must not exceed"),
            (["--max-message-size", "0"], "--max-message-size"),
            (["--app-pong", ""], "--app-pong must not be empty"),
            (["--endpoint", "nonsense:1"], "invalid --endpoint 'nonsense:1"),
            (["--endpoint", "tcp:notaport"], "invalid --endpoint"),
            (
                ["--endpoint", "ssl:8443:privateKey=/nonexistent/key.pem:certKey=/nonexistent/cert.pem"],
                "invalid --endpoint",
            ),
            (["--endpoint", "systemd:domain=INET:index=0"], "no such socket was passed"),
            (["--handler", "nocolon"], "must look like"),
            (["--handler", "no_such_module_xyz:make"], "cannot import module"),
            (["--handler", "tests.test_tap:missing"], "has no attribute"),
            (["--history-size", "-1"], "--history-size must be at least 0"),
            (["--max-message-size", "100"], "raise --max-message-size, or turn channels off"),
            (["--history-age", "x"], "--history-age must be a number"),
            (["--max-subscriptions", "0"], "--max-subscriptions must be at least 1"),
            (["--api-token-file", "/nonexistent"], "--api-token-file needs --admin-endpoint"),
            (["--admin-endpoint", "tcp:0", "--api-token-file", "/nonexistent/token"], "--api-token-file: "),
            (["--admin-endpoint", "tcp:0", "--api-token-file", "/dev/null"], "holds no token"),
            (["--trusted-proxy", "10.0.0.0/33"], "--trusted-proxy takes CIDR ranges"),
            (["--trusted-proxy", "127.0.0.1/32,proxy.example.com"], "'proxy.example.com'"),
            (["--trusted-proxy", "10.0.0.1/8"], "has host bits set"),
            (["--trusted-proxy", "10.0.0.0/8", "--forwarded-header", "x-real-ip"], "x-forwarded-for or forwarded"),
            (["--max-connections-per-user", "-1"], "--max-connections-per-user"),
        ]
        for argv, text in cases:
            with self.assertRaises(usage.UsageError, msg=argv) as e:
                parse(*argv)
            self.assertIn(text, str(e.exception), argv)

    def test_with_backlog(self) -> None:
        """
        A backlog is added to tcp, tcp6, ssl and unix endpoints only.
        """
        self.assertEqual(with_backlog("unix:/tmp/s", 7), "unix:/tmp/s:backlog=7")
        self.assertEqual(with_backlog("ssl:443:privateKey=k:certKey=c", 7), "ssl:443:privateKey=k:certKey=c:backlog=7")
        self.assertEqual(with_backlog("systemd:domain=INET:index=0", 7), "systemd:domain=INET:index=0")
        self.assertEqual(with_backlog("tcp:80:backlog=3", 7), "tcp:80:backlog=3")


class MakeServiceTests(unittest.TestCase):
    """
    What makeService composes, on a memory reactor.
    """

    def test_listens_on_every_endpoint(self) -> None:
        """
        One listener per endpoint, all sharing one factory, each with the
        burst-proof backlog.
        """
        reactor = MemoryReactorClock()
        options = parse("-e", "tcp:9000:interface=127.0.0.1", "-e", "tcp:9001:interface=127.0.0.1")
        service = makeService(options, reactor=reactor)
        service.privilegedStartService()
        service.startService()
        self.assertEqual([(p, b, i) for p, f, b, i in reactor.tcpServers], [(9000, 4096, "127.0.0.1"), (9001, 4096, "127.0.0.1")])
        self.assertEqual({id(f) for p, f, b, i in reactor.tcpServers}, {id(service.factory)})
        self.assertIsInstance(service.factory.handler, EchoHandler)
        self.assertEqual(service.factory.heartbeat_settings, HeartbeatSettings())
        self.assertIs(service.factory.hub, service.hub)
        service.stopService()

    def test_health_metrics(self) -> None:
        """
        /metrics tells what /healthz does: the reactor's lag against
        --max-reactor-lag, and whether a drain is on.
        """
        reactor = MemoryReactorClock()
        service = makeService(parse("--max-reactor-lag", "1.5"), reactor=reactor)
        service.lag.start()
        self.addCleanup(service.lag.stop)
        reactor.advance(0.5)
        reactor.rightNow += 0.75  # the tick due at 1.0 s is a quarter of a second late
        text = service.factory.metrics.exposition().decode()
        self.assertIn("wsheart_reactor_lag_seconds 0.25\n", text)
        self.assertIn("wsheart_reactor_lag_limit_seconds 1.5\n", text)
        self.assertIn("wsheart_draining 0.0\n", text)
        service.health.draining = True
        self.assertIn("wsheart_draining 1.0\n", service.factory.metrics.exposition().decode())

    def test_channel_options(self) -> None:
        """
        Channels are on by default with the documented limits; the options
        reach the broker; --no-channels and --no-pages turn them off.
        """
        service = makeService(parse(), reactor=MemoryReactorClock())
        factory, broker = service.factory, service.broker
        self.assertRegex(factory.hub.new_id(), r"^[0-9a-f]{6}\.c1$", "a random node name by default")
        self.assertEqual(makeService(parse("--node-id", "eu-1"), reactor=MemoryReactorClock()).hub.new_id(), "eu-1.c1")
        assert broker is not None and factory.pages is not None
        self.assertEqual(list(factory.subprotocols), ["wsheart.v1"])
        self.assertEqual(broker.settings.history_size, 100)
        self.assertEqual(broker.settings.client_publish, ("chat.*",))
        self.assertEqual(broker.settings.max_client_channels, broker.settings.max_channels)
        options = parse(
            "--history-size", "7", "--history-age", "9", "--max-channels", "3", "--max-subscriptions", "2",
            "--client-publish", "chat.*, game.*", "--quiet-presence", "ticker.*", "--max-client-channels", "5",
        )  # fmt: skip
        settings = makeService(options, reactor=MemoryReactorClock()).broker.settings
        self.assertEqual(settings.max_client_channels, 5)
        self.assertEqual((settings.history_size, settings.history_age, settings.max_channels), (7, 9.0, 3))
        self.assertEqual(settings.client_publish, ("chat.*", "game.*"))
        self.assertEqual(settings.quiet_presence, ("ticker.*",))
        self.assertEqual(parse("--client-publish", "")["channels"].client_publish, ())
        from wsheart.channels.redis.address import RedisAddress
        from wsheart.channels.redis.broker import RedisBroker
        from wsheart.channels.redis.connections import RedisConnections

        redis = makeService(parse("--redis", "redis://:s3cret@10.0.0.5:6380/2", "--redis-prefix", "chat"), reactor=MemoryReactorClock())
        self.assertIsInstance(redis.broker, RedisBroker)
        assert isinstance(redis.broker, RedisBroker)
        self.assertEqual(redis.broker.store.prefix, "chat")
        [connections] = [job for job in redis.background if isinstance(job, RedisConnections)]
        self.assertEqual(connections.address, RedisAddress(host="10.0.0.5", port=6380, db=2, password="s3cret"))
        self.assertEqual(RedisAddress.parse("unix:///run/redis.sock?db=1"), RedisAddress(path="/run/redis.sock", db=1))
        # An ACL user and its password (percent-escapes undone), everywhere.
        self.assertEqual(
            RedisAddress.parse("redis://wsh%40app:p%3Ass@10.0.0.5/1"),
            RedisAddress(host="10.0.0.5", db=1, username="wsh@app", password="p:ss"),
        )
        self.assertEqual(RedisAddress.parse("unix://ann:pw@/run/redis.sock").username, "ann")
        self.assertEqual(RedisAddress.parse("redis+sentinel://ann:pw@10.0.0.1/chat").username, "ann")
        self.assertIsNone(RedisAddress.parse("redis+sentinel://:pw@10.0.0.1/chat").username)
        self.assertTrue(RedisAddress.parse("rediss://cache.example.org").tls)
        # Sentinel: one or more of them (26379 by default), the service, the
        # master's password and database.
        sentinel = RedisAddress.parse("redis+sentinel://:pw@10.0.0.1,10.0.0.2:26380,[::1]/chat/3")
        self.assertEqual(sentinel.sentinels, (("10.0.0.1", 26379), ("10.0.0.2", 26380), ("::1", 26379)))
        self.assertEqual((sentinel.service, sentinel.password, sentinel.db), ("chat", "pw", 3))
        for bad in ("redis+sentinel://10.0.0.1", "redis+sentinel://10.0.0.1:x/chat", "redis+sentinel://,/chat"):
            with self.assertRaises(ValueError, msg=bad):
                RedisAddress.parse(bad)
        origins = parse("--allowed-origin", "https://app.example.com,https://*.example.org", "--allowed-origin", "null",
                        "--allow-missing-origin", "no")  # fmt: skip
        policy = makeService(origins, reactor=MemoryReactorClock()).factory.origin_policy
        self.assertEqual((policy.allowed, policy.allow_missing), (("https://app.example.com", "https://*.example.org", "null"), False))
        self.assertTrue(policy.allows("https://a.example.org", "ws.example.net"))
        self.assertFalse(makeService(parse(), reactor=MemoryReactorClock()).factory.origin_policy.allows("https://a.example.org", "ws.example.net"))
        off = makeService(parse("--no-channels", "--no-pages"), reactor=MemoryReactorClock())
        self.assertIsNone(off.broker)
        self.assertEqual(off.factory.subprotocols, {})
        self.assertIsNone(off.factory.pages)

    def test_options_reach_the_factory(self) -> None:
        """
        Heartbeat, ping/pong, prefix and limits reach the server factory.
        """
        options = parse(
            "--ping-interval", "3", "--ping-timeout", "1", "--max-missed", "4",
            "--app-ping", "", "--echo-prefix", "Echo: ", "--max-message-size", "100",
            "--handshake-timeout", "2", "--close-timeout", "0.5", "--no-channels",
        )  # fmt: skip
        factory = makeService(options, reactor=MemoryReactorClock()).factory
        self.assertEqual(factory.heartbeat_settings, HeartbeatSettings(3, 1, 4))
        self.assertIsNone(factory.app_ping)
        self.assertEqual(factory.handler.prefix, "Echo: ")
        self.assertEqual(factory.maxMessagePayloadSize, 100)
        self.assertEqual((factory.handshake_timeout, factory.close_timeout), (2, 0.5))
        limited = parse("--max-connections", "50000", "--max-connections-per-address", "64", "--max-pending-per-address", "16")
        limits = makeService(limited, reactor=MemoryReactorClock()).factory.limits.settings
        self.assertEqual((limits.max_connections, limits.max_connections_per_address, limits.max_pending_per_address), (50000, 64, 16))
        self.assertEqual(makeService(parse(), reactor=MemoryReactorClock()).factory.limits.settings.max_connections, 0)
        admission = makeService(parse("--accept-rate", "500", "--accept-ramp", "30"), reactor=MemoryReactorClock()).factory.admission
        self.assertEqual((admission.settings.accept_rate, admission.settings.ramp), (500, 30))
        self.assertFalse(makeService(parse(), reactor=MemoryReactorClock()).factory.admission.settings.enabled, "off by default")
        for bad in (["--accept-rate", "-1"], ["--accept-ramp", "soon"], ["--accept-rate", "inf"]):
            with self.assertRaises(usage.UsageError):
                parse(*bad)
        rated = makeService(parse("--client-rate", "50", "--subscribe-rate", "20"), reactor=MemoryReactorClock())
        self.assertEqual((rated.factory.subprotocols["wsheart.v1"].rates.frames, rated.factory.subprotocols["wsheart.v1"].rates.subscribes), (50, 20))

    def test_trusted_proxies(self) -> None:
        """
        --trusted-proxy is repeatable and comma-separated and reaches the
        server factory; by default no proxy is trusted.
        """
        options = parse("--trusted-proxy", "127.0.0.1/32,10.0.0.0/8", "--trusted-proxy", "::1/128")
        trusted = makeService(options, reactor=MemoryReactorClock()).factory.trusted_proxies
        self.assertEqual([str(n) for n in trusted.networks], ["127.0.0.1/32", "10.0.0.0/8", "::1/128"])
        self.assertFalse(makeService(parse(), reactor=MemoryReactorClock()).factory.trusted_proxies)
        self.assertEqual(trusted.header, "x-forwarded-for")
        options = parse("--trusted-proxy", "10.0.0.0/8", "--forwarded-header", "Forwarded")
        self.assertEqual(makeService(options, reactor=MemoryReactorClock()).factory.trusted_proxies.header, "forwarded")

    def test_admission_follows_the_reactor_lag(self) -> None:
        service = makeService(parse("--accept-rate", "100"), reactor=MemoryReactorClock())
        self.assertEqual(service.factory.admission._lag, service.health.lag.current_lag)

    def test_max_connections_per_user(self) -> None:
        options = parse("--max-connections-per-user", "16")
        self.assertEqual(makeService(options, reactor=MemoryReactorClock()).factory.limits.settings.max_connections_per_user, 16)
        self.assertEqual(makeService(parse(), reactor=MemoryReactorClock()).factory.limits.settings.max_connections_per_user, 0)

    def test_auth_options(self) -> None:
        """
        --auth jwt with its key and claims checks reaches the server and the
        wsheart.v1 handler; a short HMAC secret is refused at start.
        """
        key = self.mktemp()
        with open(key, "wb") as f:
            f.write(b"s" * 40)
        options = parse("--auth", "jwt", "--jwt-key", key, "--jwt-audience", "chat", "--jwt-issuer", "https://auth.example.com",
                        "--jwt-leeway", "5", "--auth-timeout", "3", "--anonymous-channels", "public.*,news.*")  # fmt: skip
        service = makeService(options, reactor=MemoryReactorClock())
        auth = service.factory.auth
        assert auth is not None
        self.assertEqual((auth.verifier.settings.audience, auth.verifier.settings.issuer, auth.leeway, auth.timeout), ("chat", "https://auth.example.com", 5, 3))
        self.assertEqual(auth.verifier.algorithms, ("HS256",))
        self.assertEqual(auth.anonymous.subscribe, ("public.*", "news.*"))
        self.assertEqual(auth.anonymous.publish, ())
        self.assertIs(service.factory.subprotocols["wsheart.v1"].auth, auth)
        self.assertIsNone(makeService(parse(), reactor=MemoryReactorClock()).factory.auth)
        with open(key, "wb") as f:
            f.write(b"short")
        with self.assertRaises(usage.UsageError) as raised:
            parse("--auth", "jwt", "--jwt-key", key)
        self.assertIn("at least 32", str(raised.exception))

    def test_demo_token_url(self) -> None:
        """
        --demo-token-url reaches the demo page's config (and so its CSP);
        it must be an http(s) URL, and needs the demo chat.
        """
        key = self.mktemp()
        with open(key, "wb") as f:
            f.write(b"s" * 40)
        auth = ("--auth", "jwt", "--jwt-key", key)
        pages = makeService(parse(*auth, "--demo-token-url", "http://127.0.0.1:8081/token"), reactor=MemoryReactorClock()).factory.pages
        assert pages is not None
        _, headers, body = get_page(pages, "/")
        self.assertIn('"tokenUrl": "http://127.0.0.1:8081/token"', body.decode())
        self.assertIn("http://127.0.0.1:8081", headers["content-security-policy"])
        plain = makeService(parse(*auth), reactor=MemoryReactorClock()).factory.pages
        assert plain is not None
        self.assertNotIn("tokenUrl", get_page(plain, "/")[2].decode())
        for extra, message in [
            (("--demo-token-url", "127.0.0.1:8081/token"), "--demo-token-url: an http:// or https:// URL"),
            (("--demo-token-url", "http://127.0.0.1:8081/token", "--no-pages"), "drop --no-pages"),
        ]:
            with self.assertRaises(usage.UsageError) as raised:
                parse(*auth, *extra)
            self.assertIn(message, str(raised.exception))

    def test_deflate_options(self) -> None:
        """
        --deflate turns permessage-deflate on with wsheart's defaults (no
        context takeover either way, 256-byte minimum); its tuning options
        reach the factory, need --deflate, and are range-checked.
        """
        factory = makeService(parse("--deflate"), reactor=MemoryReactorClock()).factory
        self.assertEqual(factory.deflate, DeflateSettings())
        tuned = parse(
            "--deflate", "--deflate-min-size", "0", "--deflate-window-bits", "12", "--deflate-client-window-bits", "10",
            "--deflate-mem-level", "4", "--deflate-server-context-takeover", "--deflate-client-context-takeover",
        )  # fmt: skip
        self.assertEqual(
            tuned["deflate-settings"],
            DeflateSettings(min_size=0, window_bits=12, peer_window_bits=10, mem_level=4, context_takeover=True, peer_context_takeover=True),
        )
        self.assertIsNone(makeService(parse(), reactor=MemoryReactorClock()).factory.deflate, "off by default")
        for argv, message in [
            (("--deflate-window-bits", "12"), "--deflate-window-bits needs --deflate"),
            (("--deflate-client-context-takeover",), "--deflate-client-context-takeover needs --deflate"),
            (("--deflate", "--deflate-window-bits", "8"), "must be 9-15"),
            (("--deflate", "--deflate-mem-level", "10"), "must be 1-9"),
        ]:
            with self.assertRaises(usage.UsageError) as raised:
                parse(*argv)
            self.assertIn(message, str(raised.exception))

    def test_jwks_url_options(self) -> None:
        """
        --jwt-jwks-url (https://, or http:// to loopback) makes a verifier
        without keys, pinned to RS256 by default, and a JWKS fetcher among
        the daemon's background services with --jwt-jwks-refresh; nothing is
        fetched before the service starts.
        """
        from wsheart.auth.jwks import JWKSFetcher

        for url in ("https://idp.example/.well-known/jwks.json", "http://127.0.0.1:8000/jwks", "http://[::1]/jwks", "http://localhost/jwks"):
            options = parse("--auth", "jwt", "--jwt-jwks-url", url, "--jwt-jwks-refresh", "600")
            reactor = MemoryReactorClock()
            service = makeService(options, reactor=reactor)
            auth = service.factory.auth
            assert auth is not None
            self.assertEqual((auth.verifier.settings.jwks_url, auth.verifier.algorithms, auth.verifier.has_keys), (url, ("RS256",), False))
            [fetcher] = [job for job in service.background if isinstance(job, JWKSFetcher)]
            self.assertEqual((fetcher.url, fetcher.refresh, fetcher.verifier, fetcher.fetches), (url, 600, auth.verifier, 0))
            self.assertEqual(reactor.tcpClients, [])
        self.assertEqual(parse().get("jwt-jwks-refresh"), 3600)
        es = makeService(parse("--auth", "jwt", "--jwt-jwks-url", "https://idp.example/jwks", "--jwt-algorithms", "ES256"), reactor=MemoryReactorClock())
        assert es.factory.auth is not None
        self.assertEqual(es.factory.auth.verifier.algorithms, ("ES256",))
        self.assertEqual([j for j in makeService(parse(), reactor=MemoryReactorClock()).background if isinstance(j, JWKSFetcher)], [])

    def test_custom_handler(self) -> None:
        """
        --handler module:callable is called with the hub.
        """
        service = makeService(parse("--handler", "tests.test_tap:CustomHandler"), reactor=MemoryReactorClock())
        self.assertIsInstance(service.factory.handler, CustomHandler)
        self.assertIs(service.factory.handler.hub, service.hub)

    def test_handler_that_is_not_one(self) -> None:
        """
        A callable that returns something without the handler methods is a
        clear error.
        """
        with self.assertRaises(usage.UsageError) as e:
            makeService(parse("--handler", "tests.test_tap:not_a_handler"), reactor=MemoryReactorClock())
        self.assertIn("lacks connection_opened", str(e.exception))

    def test_failed_bind_stops_startup(self) -> None:
        """
        A listener that cannot bind raises from startService, so twistd
        stops instead of running deaf.
        """
        from twisted.internet.error import CannotListenError

        class Refusing(MemoryReactorClock):
            def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
                raise CannotListenError(interface, port, OSError("Address already in use"))

        service = makeService(parse("-e", "tcp:9000"), reactor=Refusing())
        with self.assertRaises(CannotListenError):
            service.privilegedStartService()
            service.startService()


class PluginTests(unittest.TestCase):
    """
    twistd finds the plugin.
    """

    def test_discovered(self) -> None:
        """
        'wsheart' is among the IServiceMaker plugins and points at wsheart.tap.
        """
        makers = {m.tapname: m for m in getPlugins(IServiceMaker)}
        self.assertIn("wsheart", makers)
        self.assertIsInstance(makers["wsheart"].options(), Options)
