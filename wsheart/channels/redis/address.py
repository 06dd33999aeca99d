"""
Where the Redis engine's Redis is: the C{--redis} URL (L{RedisAddress}),
and the endpoint that asks Sentinel for the current master.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import txredisapi
from twisted.internet import defer, error

@dataclass(frozen=True)
class RedisAddress:
    """
    Where Redis is: C{redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]},
    C{rediss://...} (TLS), C{unix:///PATH[?db=N]}, or the master that
    Sentinel names: C{redis+sentinel://[[USER]:PASSWORD@]HOST[:PORT][,HOST[:PORT]...]/SERVICE[/DB]}
    (Sentinel's own port is 26379 by default; the user and password are
    the master's).  With a user, the connections log in as that ACL user
    (C{AUTH USER PASSWORD}, Redis 6 and later).
    """

    host: str = "127.0.0.1"
    port: int = 6379
    path: Optional[str] = None
    db: Optional[int] = None
    password: Optional[str] = None
    username: Optional[str] = None
    tls: bool = False
    sentinels: tuple[tuple[str, int], ...] = ()
    service: Optional[str] = None

    @classmethod
    def parse(cls, url: str) -> "RedisAddress":
        from urllib.parse import parse_qs, unquote, urlsplit

        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss", "unix", "redis+sentinel"):
            raise ValueError(
                f"--redis takes redis://HOST[:PORT][/DB], rediss://..., unix:///PATH or "
                f"redis+sentinel://HOST[:PORT][,HOST[:PORT]...]/SERVICE[/DB], got {url!r}"
            )
        try:
            if parts.scheme == "unix":
                if not parts.path:
                    raise ValueError("no socket path")
                db = parse_qs(parts.query).get("db", [None])[0]
                return cls(
                    path=parts.path,
                    db=int(db) if db is not None else None,
                    password=unquote(parts.password) if parts.password else None,
                    username=unquote(parts.username) if parts.username else None,
                )
            if parts.scheme == "redis+sentinel":
                return cls._parse_sentinel(parts.netloc, parts.path)
            db_text = parts.path.strip("/")
            return cls(
                host=parts.hostname or "127.0.0.1",
                port=parts.port or 6379,
                db=int(db_text) if db_text else None,
                password=unquote(parts.password) if parts.password else None,
                username=unquote(parts.username) if parts.username else None,
                tls=parts.scheme == "rediss",
            )
        except ValueError as e:
            raise ValueError(f"--redis {url!r}: {e}") from None

    @classmethod
    def _parse_sentinel(cls, netloc: str, path: str) -> "RedisAddress":
        from urllib.parse import unquote, urlsplit

        userinfo, _, hosts = netloc.rpartition("@")
        user, _, password_text = userinfo.partition(":")
        password = unquote(password_text) if userinfo else None
        sentinels = []
        for host in hosts.split(","):
            one = urlsplit(f"//{host}")  # brackets for IPv6, and the port checked
            if not one.hostname:
                raise ValueError("a Sentinel address without a host")
            sentinels.append((one.hostname, one.port or 26379))
        service, _, db_text = path.strip("/").partition("/")
        if not service:
            raise ValueError("no service name (redis+sentinel://HOST:26379/SERVICE)")
        return cls(
            sentinels=tuple(sentinels),
            service=service,
            password=password or None,
            username=unquote(user) or None,
            db=int(db_text) if db_text else None,
        )

    def endpoint(self, reactor: Any) -> Any:
        from twisted.internet import endpoints

        from wsheart.tls import ClientTLS

        if self.sentinels:
            return SentinelMasterEndpoint(reactor, self.sentinels, self.service or "")
        if self.path is not None:
            return endpoints.UNIXClientEndpoint(reactor, self.path)
        endpoint: Any = endpoints.HostnameEndpoint(reactor, self.host, self.port)
        if self.tls:
            endpoint = endpoints.wrapClientTLS(ClientTLS(self.host, alpn=()), endpoint)
        return endpoint

    def __str__(self) -> str:
        if self.sentinels:
            return f"{self.service} via Sentinel {','.join(f'{h}:{p}' for h, p in self.sentinels)}"
        return self.path or f"{self.host}:{self.port}"


class SentinelMasterEndpoint:
    """
    A client endpoint that asks Sentinel for the current master of
    C{service} before every connection (txredisapi's Sentinel client does
    the asking).  After a failover, Sentinel closes the clients of the old
    master, and the engine's connections, which reconnect by themselves,
    come here again and find the new one.
    """

    def __init__(self, reactor: Any, sentinels: tuple[tuple[str, int], ...], service: str) -> None:
        self.reactor = reactor
        self.service = service
        self.sentinel = txredisapi.Sentinel(list(sentinels))

    def connect(self, protocol_factory: Any) -> "defer.Deferred[Any]":
        from twisted.internet.endpoints import HostnameEndpoint

        def found(address: tuple[str, int]) -> Any:
            host, port = address
            return HostnameEndpoint(self.reactor, host, port).connect(protocol_factory)

        def not_found(failure: Any) -> Any:
            failure.trap(txredisapi.MasterNotFoundError)
            raise error.ConnectError(string=f"Sentinel knows no master for {self.service!r}")

        return self.sentinel.discover_master(self.service).addCallbacks(found, not_found)

    def disconnect(self) -> Any:
        return self.sentinel.disconnect()
