"""
The access layer: what stands between an accepted connection and its
handler, other than who the peer is (that is L{wsheart.auth}).

- L{origin}: which web pages may open a WebSocket here (C{--allowed-origin});
- L{proxies}: which proxies may name the client (C{--trusted-proxy},
  X-Forwarded-For);
- L{limits}: connections per client address and in all, the open-files
  limit, and the token bucket the per-connection rates use;
- L{admission}: how fast new connections are taken (C{--accept-rate}) and
  when each refused one should come back.

Each is pure (counters, a clock, no I/O).  The server protocol
(L{wsheart.protocol}) asks them before any token is checked: at accept,
the per-address pending limit, then admission's arrival budget (both drop
the connection before TLS); on the handshake, the client a trusted proxy
names, the Origin, the connection limits, then admission's rate.
"""
