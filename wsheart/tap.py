"""
The twistd plugin's command line (L{Options}) and composition
(L{makeService}): it parses, validates and builds; it computes nothing.
"""

from __future__ import annotations

import os
import re
import secrets
import sys
import textwrap
from typing import Any, Optional

from twisted.application import strports
from twisted.internet import endpoints
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python import usage

from wsheart import __version__, config
from wsheart.admin import admin_site
from wsheart.access.admission import AdmissionSettings
from wsheart.auth import AuthPolicy, Grants, TokenSettings, TokenVerifier
from wsheart.auth.jwks import JWKSFetcher, check_jwks_url, treq_get
from wsheart.channels.api import ApiTokens
from wsheart.channels.redis.address import RedisAddress
from wsheart.channels.redis.broker import RedisBroker
from wsheart.channels.redis.connections import RedisConnections
from wsheart.channels.redis.presence import RedisPresence
from wsheart.channels.redis.store import RedisStore
from wsheart.channels import Broker, ChannelSettings, Housekeeping, serve
from wsheart.channels.v1 import Rates
from wsheart.deflate import DeflateSettings
from wsheart.coerce import Coercer, non_negative_float, non_negative_int, non_negative_rate, positive_float, positive_int, positive_rate
from wsheart.drain import Drainer, DrainSettings
from wsheart.handler import EchoHandler, HandlerLoadError, IMessageHandler, build_handler, resolve_handler
from wsheart.heartbeat import HeartbeatSettings
from wsheart.hub import Hub
from wsheart.metrics import ServerMetrics
from wsheart.health import LagMonitor
from wsheart.access.limits import LimitSettings
from wsheart.access.origin import OriginPolicy
from wsheart.pages import url_origin
from wsheart.protocol import ServerFactory
from wsheart.access.proxies import TrustedProxies
from wsheart.memory import MemoryReleaser, glibc_malloc_trim
from wsheart.service import WsheartService
from wsheart.tls import ReloadableServerTLS, SSLEndpoint, TLSConfigError

DEFAULT_ENDPOINT = "tcp:8080"

# Twisted listens with a backlog of 50, which drops SYNs when a fleet of
# clients reconnects at once; 4096 absorbs a burst of thousands (the kernel
# caps it at net.core.somaxconn).
DEFAULT_BACKLOG = 4096

# Endpoint types that take a backlog= argument.
_BACKLOG_TYPES = frozenset({"tcp", "tcp6", "ssl", "unix", "reuseport"})


def with_backlog(description: str, backlog: int) -> str:
    """
    Add C{backlog=} to a listening endpoint description that takes one and
    does not set it already.
    """
    kind = description.split(":", 1)[0].strip().lower()
    if kind not in _BACKLOG_TYPES or "backlog=" in description:
        return description
    return f"{description}:backlog={backlog}"


def _check_node_id(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", value):
        raise usage.UsageError(f"--node-id takes 1-32 letters, digits, _ and -, got {value!r}")
    return value


_node_id = Coercer(_check_node_id, "1-32 letters, digits, _ and -.")


class Options(usage.Options):
    """
    C{twistd wsheart} options.
    """

    synopsis = "[options]"
    longdesc = (
        "Serve WebSocket connections with ping/pong heartbeats: a peer that "
        "misses --max-missed pongs in a row is closed with 1011 'heartbeat "
        "timeout' and dropped, at most interval * max-missed + timeout seconds "
        "after it went silent. Text messages are echoed unless --handler says "
        "otherwise."
    )

    optFlags: list[list[Any]] = [
        ["no-pages", None, "Do not serve the browser library (/wsheart.js) and the demo page (/) on the WebSocket endpoints."],
        ["no-channels", None, "Turn the wsheart.v1 subprotocol (channels, presence, recovery) off."],
        ["deflate", None, "Accept permessage-deflate (RFC 7692) from clients that offer it: messages of --deflate-min-size bytes or more are compressed; a channel message is compressed once for every subscriber."],
        ["deflate-server-context-takeover", None, "--deflate: keep the server's compressor context between messages (better ratios on similar messages; a compressor held per connection, and channel frames compressed per subscriber)."],
        ["deflate-client-context-takeover", None, "--deflate: let clients keep their compressor context (a decompressor held per connection that sends compressed messages)."],
        ["print-config", None, "Print the effective configuration (file, environment and command line merged; secrets masked) as a --config file, and exit."],
    ]

    optParameters: list[list[Any]] = [
        ["config", None, None, "Read options from this TOML file: the long option names as keys, at the top level or in tables named after their groups (ping-interval = 5, endpoint = [\"tcp:8080\"], [heartbeat]); WSHEART_* environment variables (WSHEART_PING_INTERVAL=5) override it, the command line overrides both. WSHEART_CONFIG names the file when this does not."],
        ["ping-interval", None, 25.0, "Seconds between heartbeat pings.", positive_float("ping-interval")],
        ["ping-timeout", None, 10.0, "Seconds a ping may wait for its pong.", positive_float("ping-timeout")],
        ["max-missed", None, 2, "Consecutive missed pongs that make a peer dead.", positive_int("max-missed")],
        ["app-ping", None, "ping", "Text message answered with --app-pong, for browsers (empty: off)."],
        ["app-pong", None, "pong", "Answer to --app-ping."],
        ["echo-prefix", None, "", "Prefix for echoed text messages, e.g. 'Echo: '."],
        ["handler", None, None, "Application message handler, 'package.module:callable'."],
        ["node-id", None, None, "This process's name among processes sharing a port or channels; it prefixes connection ids (default: random per start).", _node_id],
        [
            "max-message-size",
            None,
            1024 * 1024,
            "Largest message in bytes; larger ones close the connection with 1009.",
            positive_int("max-message-size"),
        ],
        [
            "handshake-timeout",
            None,
            10.0,
            "Seconds a new connection may take to finish the opening handshake.",
            positive_float("handshake-timeout"),
        ],
        [
            "close-timeout",
            None,
            1.0,
            "Seconds the peer has to finish a closing handshake before TCP is dropped.",
            positive_float("close-timeout"),
        ],
        [
            "backlog",
            None,
            DEFAULT_BACKLOG,
            "Listen backlog added to tcp:, ssl: and unix: endpoints that do not set one.",
            positive_int("backlog"),
        ],
        ["tls-key", None, None, "PEM private key for --tls-endpoint listeners (re-read on SIGHUP)."],
        ["tls-cert", None, None, "PEM certificate, then its chain, for --tls-endpoint listeners (re-read on SIGHUP)."],
        ["admin-endpoint", None, None, "Serve /healthz, /metrics and /connections here, e.g. tcp:9090:interface=127.0.0.1 (default: off)."],
        ["drain-time", None, 10.0, "Seconds over which shutdown closes connections (1012 with a reconnect hint).", non_negative_float("drain-time")],
        ["drain-retry-after", None, 2.0, "The drain hint's fixed wait: about how long a restart takes.", non_negative_float("drain-retry-after")],
        [
            "drain-reconnect-rate",
            None,
            500.0,
            "Reconnects per second the drained fleet should come back at (sizes the hint's jitter).",
            positive_rate("drain-reconnect-rate"),
        ],
        ["max-reactor-lag", None, 2.0, "Reactor lag in seconds past which /healthz fails and the watchdog is withheld.", positive_float("max-reactor-lag")],
        ["log-format", None, "text", "text or json (one JSON object per line on stdout)."],
        [
            "max-send-buffer",
            None,
            8 * 1024 * 1024,
            "Unsent bytes a peer may have waiting; a slower reader is closed with 1013.",
            positive_int("max-send-buffer"),
        ],
        ["history-size", None, 100, "wsheart.v1: messages kept per channel for recovery (0: none).", non_negative_int("history-size")],
        ["history-age", None, 300.0, "wsheart.v1: seconds a message is kept for recovery.", non_negative_float("history-age")],
        ["max-channels", None, 10000, "wsheart.v1: channels the back end (HTTP API) may have at once.", positive_int("max-channels")],
        ["max-client-channels", None, None, "wsheart.v1: channels that only clients made (subscribed or published to) at once; a budget of their own so they cannot use up the back end's (default: --max-channels).", positive_int("max-client-channels")],
        ["max-idempotency-keys", None, 100_000, "Idempotency keys remembered at once (about 0.5 kB each); keyed publishes are limited to this many per key lifetime (history age, at least 60 s) - 333/s with the defaults.", positive_int("max-idempotency-keys")],
        ["max-subscriptions", None, 100, "wsheart.v1: channels one connection may subscribe to.", positive_int("max-subscriptions")],
        ["client-publish", None, "chat.*", "wsheart.v1: comma-separated channel patterns clients may publish to (empty: none)."],
        ["quiet-presence", None, "", "wsheart.v1: comma-separated channel patterns without join/leave events."],
        ["redis", None, None, "wsheart.v1: share channels, history and idempotency keys with every process on this Redis: redis://[[USER]:PASSWORD@]HOST[:PORT][/DB], rediss://... (TLS), unix:///PATH or redis+sentinel://HOST[:PORT][,HOST[:PORT]...]/SERVICE[/DB] (default: in this process's memory)."],
        ["redis-prefix", None, "wsh", "wsheart.v1: prefix of wsheart's Redis keys (one per deployment sharing a Redis)."],
        ["redis-timeout", None, 2.0, "wsheart.v1: seconds a Redis command may take before the publish or subscribe fails with 503.", positive_float("redis-timeout")],
        ["auth", None, "none", "none or jwt: with jwt, every connection proves who it is with a JSON Web Token (Authorization: Bearer, the wsheart.bearer.TOKEN subprotocol, or a wsheart.v1 auth frame) and may use only the channels its token grants."],
        ["jwt-key", None, None, "--auth jwt: file with the verification key: a PEM public key (RSA, EC, Ed25519), a JWKS document, or an HMAC secret of at least 32 bytes."],
        ["jwt-jwks-url", None, None, "--auth jwt: instead of --jwt-key, fetch the issuer's public keys (a JWKS) from this https:// URL (http:// only to a loopback host): at start, every --jwt-jwks-refresh seconds, and again (at most every 30 s) when a token names an unknown kid."],
        ["jwt-jwks-refresh", None, 3600.0, "--auth jwt: seconds between fetches of --jwt-jwks-url.", positive_float("jwt-jwks-refresh")],
        ["jwt-algorithms", None, "", "--auth jwt: comma-separated algorithms tokens may use (default: from the key: HS256, RS256, ES256, EdDSA, or the JWKS keys' own; RS256 with --jwt-jwks-url)."],
        ["jwt-audience", None, "wsheart", "--auth jwt: the aud tokens must carry."],
        ["jwt-issuer", None, None, "--auth jwt: the iss tokens must carry (default: not checked)."],
        ["jwt-leeway", None, 30.0, "--auth jwt: seconds of clock skew allowed on exp and nbf.", non_negative_float("jwt-leeway")],
        ["auth-timeout", None, 10.0, "--auth jwt: seconds a wsheart.v1 connection without a token may stay open (closed with 4408), unless --anonymous-channels lets it in.", positive_float("auth-timeout")],
        ["anonymous-channels", None, "", "--auth jwt: comma-separated channel patterns connections without a token may subscribe to and recover from (never publish)."],
        ["demo-token-url", None, None, "--auth jwt: the demo page (/) fetches its token from URL?user=NAME before each connection and on refresh, e.g. http://127.0.0.1:8081/token from etc/token_backend.py (default: it sends none)."],
        ["client-rate", None, 0.0, "wsheart.v1: frames (all but ping) one connection may send a second, bursts of twice that; more get error 429 with retry_after, and 20 refusals in 5 s close with 1013 (0: unlimited).", non_negative_rate("client-rate")],
        ["subscribe-rate", None, 0.0, "wsheart.v1: subscribes one connection may send a second, bursts of twice that (0: unlimited).", non_negative_rate("subscribe-rate")],
        ["deflate-min-size", None, 256, "--deflate: messages shorter than this many bytes are sent uncompressed.", non_negative_int("deflate-min-size")],
        ["deflate-window-bits", None, 15, "--deflate: the server's compression window, 9-15 (2**bits bytes; a client may ask for less).", positive_int("deflate-window-bits")],
        ["deflate-client-window-bits", None, 15, "--deflate: the largest window a client may compress with, 9-15, when the client lets the server choose (it matters with --deflate-client-context-takeover: without it no client window outlives a message).", positive_int("deflate-client-window-bits")],
        ["deflate-mem-level", None, 8, "--deflate: zlib memory level of the server's compressor, 1-9.", positive_int("deflate-mem-level")],
        ["max-connections", None, 0, "Open connections in all; one more is told to come back later (0: no ceiling).", non_negative_int("max-connections")],
        ["accept-rate", None, 0.0, "Opening handshakes admitted per second; the rest are told when to come back (wsheart clients: close 1013 with a retry window; others: 503 with Retry-After) and, past 4 times the rate, dropped at accept (0: no limit).", non_negative_rate("accept-rate")],
        ["accept-ramp", None, 10.0, "Seconds after a start over which --accept-rate grows from a tenth to all of it.", non_negative_float("accept-ramp")],
        ["max-connections-per-address", None, 0, "Open connections from one client address (an IPv4 address or an IPv6 /64); one more gets 429 (0: off; behind a proxy every connection has its address, unless --trusted-proxy or an haproxy: endpoint names the clients).", non_negative_int("max-connections-per-address")],
        ["max-connections-per-user", None, 0, "Open connections of one authenticated user (the token's sub; anonymous ones are not counted), in this process; one more is refused once its token is read: 429 with Retry-After, or for wsheart clients close 1013 with a 30-60 s retry window (0: off).", non_negative_int("max-connections-per-user")],
        ["max-pending-per-address", None, 0, "Connections from one client address still in the opening handshake; one more is dropped at once (0: off).", non_negative_int("max-pending-per-address")],
        ["forwarded-header", None, "x-forwarded-for", "The header the --trusted-proxy proxies name the client in: x-forwarded-for, or forwarded (RFC 7239, its for= parameters); the other header is never read."],
        ["allow-missing-origin", None, "yes", "yes or no: whether a handshake without an Origin header (a program, not a browser: browsers always send one) may connect."],
        ["api-token-file", None, None, "File of the bearer tokens of the channel HTTP API on --admin-endpoint, one a line (at least 16 characters; blank lines and # comments ignored; any of them is let in, so a token is rotated by adding the new one first); SIGHUP re-reads it (default: API off)."],
    ]

    def __init__(self) -> None:
        super().__init__()
        # Where WSHEART_* variables are read (tests give their own).
        self.environ: Any = os.environ
        self["endpoint"] = []
        self["tls-endpoint"] = []
        self["allowed-origin"] = []
        self["trusted-proxy"] = []

    def opt_allowed_origin(self, value: str) -> None:
        """
        Web pages of this origin may open WebSockets here, besides the server's own (Origin host and port equal to the request's Host): https://app.example.com, https://*.example.com (whole labels), null, or * (any page: only for sockets without cookies); repeatable or comma-separated. Upgrades from other pages get 403.
        """
        self["allowed-origin"].extend(v.strip() for v in value.split(",") if v.strip())

    def opt_trusted_proxy(self, value: str) -> None:
        """
        Reverse proxies in this CIDR range (127.0.0.1/32, 10.0.0.0/8, ::1/128) are trusted to name the client in X-Forwarded-For: a connection from one is the right-most address there that is not itself a trusted proxy, in logs, /connections and the per-address limits; list the proxies themselves, never a range that also holds clients (they could name anyone); repeatable or comma-separated (default: none, the header is never read).
        """
        self["trusted-proxy"].append(value)

    def _deflate_settings(self) -> Optional[DeflateSettings]:
        tuned = [
            name
            for name, default in (
                ("deflate-min-size", 256),
                ("deflate-window-bits", 15),
                ("deflate-client-window-bits", 15),
                ("deflate-mem-level", 8),
                ("deflate-server-context-takeover", 0),
                ("deflate-client-context-takeover", 0),
            )
            if self[name] != default
        ]
        if not self["deflate"]:
            if tuned:
                raise usage.UsageError(f"--{tuned[0]} needs --deflate")
            return None
        try:
            return DeflateSettings(
                min_size=self["deflate-min-size"],
                window_bits=self["deflate-window-bits"],
                peer_window_bits=self["deflate-client-window-bits"],
                mem_level=self["deflate-mem-level"],
                context_takeover=bool(self["deflate-server-context-takeover"]),
                peer_context_takeover=bool(self["deflate-client-context-takeover"]),
            )
        except ValueError as e:
            raise usage.UsageError(f"--deflate: {e}")

    def _auth_policy(self) -> Optional[AuthPolicy]:
        if self["auth"] not in ("none", "jwt"):
            raise usage.UsageError(f"--auth takes none or jwt, got {self['auth']!r}")
        if self["auth"] == "none":
            for option in ("jwt-key", "jwt-jwks-url", "jwt-issuer"):
                if self[option]:
                    raise usage.UsageError(f"--{option} needs --auth jwt")
            if self["jwt-algorithms"] or self["anonymous-channels"] or self["demo-token-url"]:
                raise usage.UsageError("--jwt-algorithms, --anonymous-channels and --demo-token-url need --auth jwt")
            return None
        if bool(self["jwt-key"]) == bool(self["jwt-jwks-url"]):
            raise usage.UsageError("--auth jwt needs either --jwt-key FILE or --jwt-jwks-url URL (one of them)")
        if self["jwt-jwks-url"]:
            try:
                check_jwks_url(self["jwt-jwks-url"])
            except ValueError as e:
                raise usage.UsageError(str(e))
        if self["no-channels"] and self["anonymous-channels"]:
            raise usage.UsageError("--anonymous-channels needs channels (drop --no-channels)")
        settings = TokenSettings(
            key_file=self["jwt-key"] or None,
            algorithms=_patterns(self["jwt-algorithms"]),
            audience=self["jwt-audience"],
            issuer=self["jwt-issuer"],
            leeway=self["jwt-leeway"],
            jwks_url=self["jwt-jwks-url"] or None,
        )
        try:
            verifier = TokenVerifier(settings)
        except OSError as e:
            raise usage.UsageError(f"--jwt-key: {e}")
        except ValueError as e:
            raise usage.UsageError(str(e))
        if self["demo-token-url"]:
            if self["no-pages"] or self["no-channels"]:
                raise usage.UsageError("--demo-token-url is for the demo chat: drop --no-pages and --no-channels")
            try:
                url_origin(self["demo-token-url"])
            except ValueError as e:
                raise usage.UsageError(f"--demo-token-url: {e}")
        anonymous = _patterns(self["anonymous-channels"])
        return AuthPolicy(verifier, Grants(subscribe=anonymous, history=anonymous), self["auth-timeout"])

    def opt_endpoint(self, description: str) -> None:
        """
        Listen on this Twisted server endpoint; repeat for several (default tcp:8080). Examples: tcp:8080:interface=127.0.0.1, ssl:443:privateKey=key.pem:certKey=cert.pem, unix:/run/wsheart.sock, systemd:domain=INET:index=0.
        """
        self["endpoint"].append(description)

    opt_e = opt_endpoint

    def opt_tls_endpoint(self, description: str) -> None:
        """
        Listen on this endpoint with TLS from --tls-key/--tls-cert (any endpoint type, e.g. systemd:domain=INET:index=0); repeatable. SIGHUP re-reads the key and certificate.
        """
        self["tls-endpoint"].append(description)

    # Options given several times that collect every value in a list.
    REPEATABLE = ("endpoint", "tls-endpoint", "allowed-origin", "trusted-proxy")

    def getUsage(self, width: Optional[int] = None) -> str:
        """
        The options by group (wsheart.config.GROUPS), then what the daemon does.
        """
        width = width or int(os.environ.get("COLUMNS", "80"))
        longdesc = "\n".join(textwrap.wrap(self.longdesc, width))
        return config.grouped_usage(self, width) + "\n" + longdesc + "\n"

    def parseOptions(self, options: Optional[list[str]] = None) -> None:
        argv = list(sys.argv[1:] if options is None else options)
        kinds = config.OptionKinds(self, self.REPEATABLE)
        try:
            super().parseOptions(config.merged_arguments(argv, self.environ, kinds))
            if self["print-config"]:
                sys.stdout.write(config.render(self, kinds))
                raise SystemExit(0)
        except usage.UsageError as e:
            if getattr(self, "parent", None) is None:
                raise  # called directly (tests, embedding): the error itself
            # Under twistd: say what is wrong and exit 1.  twistd before
            # 26.10 printed its help and exited 0 on a usage error, so a
            # service manager saw a clean stop.
            raise SystemExit(f"twistd wsheart: {e}\n(see: twistd wsheart --help)")

    def opt_version(self) -> None:
        """
        Print the wsheart version and exit.
        """
        print(f"wsheart {__version__}")
        raise SystemExit(0)

    def postOptions(self) -> None:
        try:
            self["heartbeat"] = HeartbeatSettings(
                interval=self["ping-interval"],
                timeout=self["ping-timeout"],
                max_missed=self["max-missed"],
            )
        except ValueError as e:
            raise usage.UsageError(str(e))
        if self["app-ping"] and not self["app-pong"]:
            raise usage.UsageError("--app-pong must not be empty while --app-ping is set")
        if not self["endpoint"] and not self["tls-endpoint"]:
            self["endpoint"] = [DEFAULT_ENDPOINT]
        for key in ("endpoint", "tls-endpoint"):
            self[key] = [with_backlog(d, self["backlog"]) for d in self[key]]
            for description in self[key]:
                if not description.startswith("ssl:"):
                    _check_endpoint(description, f"--{key}")
                elif key == "tls-endpoint":
                    raise usage.UsageError(
                        f"--tls-endpoint {description!r}: give a plain endpoint (tcp:, reuseport:, systemd:), "
                        "wsheart adds the TLS; or use --endpoint ssl:... with its own files"
                    )
        if self["admin-endpoint"]:
            _check_endpoint(self["admin-endpoint"], "--admin-endpoint")
        self["tls"] = self._load_tls()
        self["tls-listeners"] = self._tls_listeners()
        try:
            self["drain"] = DrainSettings(
                drain_time=self["drain-time"],
                retry_after=self["drain-retry-after"],
                reconnect_rate=self["drain-reconnect-rate"],
            )
        except ValueError as e:
            raise usage.UsageError(str(e))
        if self["log-format"] not in ("text", "json"):
            raise usage.UsageError(f"--log-format must be text or json, got {self['log-format']!r}")
        parent = getattr(self, "parent", None)
        if self["log-format"] == "json" and parent is not None and not parent.get("logger"):
            # twistd reads its observer factory from its own --logger
            # option after this returns; --log-format json fills it in.
            parent["logger"] = "wsheart.logs.json_stdout_observer"
        self["channels"] = None
        if not self["no-channels"]:
            try:
                self["channels"] = ChannelSettings(
                    history_size=self["history-size"],
                    history_age=self["history-age"],
                    max_channels=self["max-channels"],
                    max_client_channels=self["max-client-channels"],
                    max_idempotency_keys=self["max-idempotency-keys"],
                    max_subscriptions=self["max-subscriptions"],
                    max_data_bytes=self["max-message-size"],
                    client_publish=_patterns(self["client-publish"]),
                    quiet_presence=_patterns(self["quiet-presence"]),
                )
            except ValueError as e:
                raise usage.UsageError(str(e))
        if self["allow-missing-origin"] not in ("yes", "no"):
            raise usage.UsageError(f"--allow-missing-origin takes yes or no, got {self['allow-missing-origin']!r}")
        try:
            self["origin-policy"] = OriginPolicy(tuple(self["allowed-origin"]), self["allow-missing-origin"] == "yes")
        except ValueError as e:
            raise usage.UsageError(str(e))
        self["auth-policy"] = self._auth_policy()
        self["deflate-settings"] = self._deflate_settings()
        try:
            self["admission"] = AdmissionSettings(accept_rate=self["accept-rate"], ramp=self["accept-ramp"])
            self["trusted-proxies"] = TrustedProxies.parse(self["trusted-proxy"], self["forwarded-header"])
        except ValueError as e:
            raise usage.UsageError(str(e))
        self["redis-address"] = None
        if self["redis"]:
            if self["no-channels"]:
                raise usage.UsageError("--redis holds channels: drop --no-channels")
            try:
                self["redis-address"] = RedisAddress.parse(self["redis"])
            except ValueError as e:
                raise usage.UsageError(str(e))
        self["api-tokens"] = None
        if self["api-token-file"]:
            if not self["admin-endpoint"]:
                raise usage.UsageError("--api-token-file needs --admin-endpoint (the API is served there)")
            if self["no-channels"]:
                raise usage.UsageError("--api-token-file: the channel API needs channels (drop --no-channels)")
            try:
                self["api-tokens"] = ApiTokens.from_file(self["api-token-file"])
            except (OSError, ValueError) as e:
                raise usage.UsageError(f"--api-token-file: {e}")
        self["handler-factory"] = None
        if self["handler"]:
            try:
                self["handler-factory"] = resolve_handler(self["handler"])
            except HandlerLoadError as e:
                raise usage.UsageError(str(e))


    def _load_tls(self) -> Optional[ReloadableServerTLS]:
        key, cert = self["tls-key"], self["tls-cert"]
        if not self["tls-endpoint"]:
            if key or cert:
                raise usage.UsageError(
                    "--tls-key/--tls-cert apply to --tls-endpoint listeners; "
                    "an ssl: --endpoint names its files itself"
                )
            return None
        if not key or not cert:
            raise usage.UsageError("--tls-endpoint needs both --tls-key and --tls-cert")
        try:
            return ReloadableServerTLS(key, cert)
        except TLSConfigError as e:
            raise usage.UsageError(f"--tls-key/--tls-cert: {e}")

    def _tls_listeners(self) -> list[tuple[str, ReloadableServerTLS]]:
        """
        Every TLS listener as (plain endpoint, its TLS): each ssl:
        --endpoint with its own files, every --tls-endpoint with
        --tls-key/--tls-cert.  wsheart's TLS policy serves them all
        (wsheart.tls).
        """
        listeners = []
        for description in self["endpoint"]:
            if not description.startswith("ssl:"):
                continue
            try:
                endpoint = SSLEndpoint.parse(description)
                tls = ReloadableServerTLS(endpoint.key_path, endpoint.cert_path, endpoint.chain_path)
            except ValueError as e:  # TLSConfigError included
                raise usage.UsageError(f"invalid --endpoint {description!r}: {e}")
            _check_endpoint(endpoint.listen, "--endpoint")
            listeners.append((endpoint.listen, tls))
        if self["tls"] is not None:
            listeners += [(description, self["tls"]) for description in self["tls-endpoint"]]
        return listeners


def _patterns(value: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in value.split(",") if p.strip())


# What endpoint parsers are given while options are checked: never used.
_NO_REACTOR: Any = object()


def _check_endpoint(description: str, option: str = "--endpoint") -> None:
    """
    Parse an endpoint description without listening, so a typo or a
    missing certificate file is a usage error, not a traceback.
    """
    kind = description.split(":", 1)[0].strip().lower()
    try:
        # Parsing needs no reactor (it is only stored), and importing the
        # real one here would install it before twistd's --reactor does.
        endpoints.serverFromString(_NO_REACTOR, description)
    except (IndexError, KeyError) as e:
        if kind != "systemd":
            raise usage.UsageError(f"invalid {option} {description!r}: {e!r}")
        # Twisted reads (and then clears) LISTEN_FDS, LISTEN_PID and
        # LISTEN_FDNAMES when it is imported; no such socket means systemd
        # passed none, or not under that index or name.
        raise usage.UsageError(
            f"{option} {description!r} adopts a socket from systemd, but no such socket was "
            "passed (LISTEN_FDS/LISTEN_FDNAMES): start wsheart from a .socket unit or "
            "systemd-socket-activate --fdname=NAME"
        )
    except Exception as e:
        raise usage.UsageError(f"invalid {option} {description!r}: {e}")


def makeService(options: Options, reactor: Optional[Any] = None) -> WsheartService:
    """
    Build the daemon from parsed options.
    """
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    assert reactor is not None
    # Connection ids are unique across every process of a deployment.
    hub = Hub(reactor, node=options["node-id"] or secrets.token_hex(3))
    handler_factory = options["handler-factory"]
    handler: IMessageHandler = EchoHandler(options["echo-prefix"])
    if handler_factory is not None:
        try:
            handler = build_handler(handler_factory, hub)
        except HandlerLoadError as e:
            raise usage.UsageError(str(e))
    metrics = ServerMetrics()
    broker: Optional[Broker] = None
    redis: Optional[RedisConnections] = None
    if options["channels"] is not None and options["redis-address"] is not None:
        store = RedisStore(None, reactor, options["channels"], prefix=options["redis-prefix"], timeout=options["redis-timeout"])
        beat = options["heartbeat"]
        # A process that stops beating is dead after the same bound as a
        # peer: its members' leaves are announced by the others.
        dead_after = beat.interval * (beat.max_missed + 1) + beat.timeout
        presence = RedisPresence(store, hub.node, dead_after)
        broker = RedisBroker(reactor, options["channels"], store, presence)
        redis = RedisConnections(broker, options["redis-address"], reactor, beat_interval=beat.interval)
    elif options["channels"] is not None:
        broker = Broker(reactor, options["channels"])
    rates = Rates(frames=options["client-rate"], subscribes=options["subscribe-rate"])
    subprotocols = serve(broker, hub, metrics, options["auth-policy"], rates) if broker is not None else {}
    factory = ServerFactory(
        hub=hub,
        clock=reactor,
        handler=handler,
        heartbeat_settings=options["heartbeat"],
        app_ping=options["app-ping"] or None,
        app_pong=options["app-pong"],
        max_message_size=options["max-message-size"],
        handshake_timeout=options["handshake-timeout"],
        close_timeout=options["close-timeout"],
        pages=not options["no-pages"],
        pages_settings={"channels": broker is not None, **({"tokenUrl": options["demo-token-url"]} if options["demo-token-url"] else {})},
        subprotocols=subprotocols,
        metrics=metrics,
        max_send_buffer=options["max-send-buffer"],
        origin_policy=options["origin-policy"],
        auth=options["auth-policy"],
        limits=LimitSettings(
            max_pending_per_address=options["max-pending-per-address"],
            max_connections_per_address=options["max-connections-per-address"],
            max_connections=options["max-connections"],
            max_connections_per_user=options["max-connections-per-user"],
        ),
        admission=options["admission"],
        deflate=options["deflate-settings"],
        trusted_proxies=options["trusted-proxies"],
    )
    drainer = Drainer(reactor, hub, options["drain"], options["close-timeout"])
    lag = LagMonitor(reactor, threshold=options["max-reactor-lag"])
    # The admitted rate (--accept-rate) slows down while the reactor is late.
    factory.admission.follow_lag(lag.current_lag)
    service = WsheartService(
        reactor,
        hub,
        factory,
        options["endpoint"] + options["tls-endpoint"],
        drainer,
        lag,
        tls=[tls for _description, tls in options["tls-listeners"]],
        api_tokens=options["api-tokens"],
    )
    service.broker = broker
    metrics.track_health(lag.current_lag, lag.threshold, lambda: service.health.draining)
    if broker is not None:
        # Expired history and idempotency keys are freed every second, not
        # when a channel happens to be touched.
        service.add_background(Housekeeping(broker))
    if redis is not None:
        service.add_background(redis)
    # RSS comes down after thousands of connections close (wsheart.memory).
    service.add_background(MemoryReleaser(reactor, lambda: len(hub), glibc_malloc_trim()))
    auth = options["auth-policy"]
    if auth is not None and auth.verifier.settings.jwks_url is not None:
        # Fetched at start; the daemon starts even if that fails (tokens are
        # refused as "try again later" until keys arrive).
        jwks_url = auth.verifier.settings.jwks_url
        service.add_background(JWKSFetcher(auth.verifier, jwks_url, reactor, treq_get(reactor), refresh=options["jwt-jwks-refresh"]))
    # strports.service raises from privilegedStartService when the bind
    # fails, so twistd stops instead of running without a listener.
    for description in options["endpoint"]:
        if not description.startswith("ssl:"):
            service.add_listener(strports.service(description, factory, reactor=reactor))
    for description, tls in options["tls-listeners"]:
        tls_factory = TLSMemoryBIOFactory(tls, False, factory, clock=reactor)
        service.add_listener(strports.service(description, tls_factory, reactor=reactor))
    if options["admin-endpoint"]:
        site = admin_site(hub, service.health, factory.metrics, reactor, broker=broker, api_tokens=options["api-tokens"])
        service.set_admin(strports.service(options["admin-endpoint"], site, reactor=reactor))
    return service
