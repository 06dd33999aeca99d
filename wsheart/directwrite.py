"""
Small frames written with one C{send()} when nothing is queued ahead.

A Twisted transport buffers every write: C{write()} registers the socket
for writability (one C{epoll_ctl}), the next reactor iteration sends the
bytes (C{doWrite}), and an empty buffer unregisters it again (a second
C{epoll_ctl}).  For a 14-byte heartbeat ping on an idle connection that
machinery costs more than the ping itself - it was the largest single
item in the profile of 10,000 idle connections.

L{write_small} sends straight to the socket
when the transport is a plain TCP connection with an empty buffer, and
falls back to C{transport.write()} for everything else (TLS, UNIX
sockets, a non-empty buffer, a short or failed send), so ordering and
error handling stay Twisted's.  It reads the transport's buffer fields
(C{_tempDataLen}, C{dataBuffer}, C{offset}), which are not public API:
L{tests.test_integration_directwrite} pins the behaviour against the installed Twisted
so a change there fails the tests rather than corrupting a stream.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet import tcp


def write_small(transport: Any, data: bytes) -> None:
    """
    Write C{data} (a few bytes) to C{transport}: with one C{send()} when it
    is a plain TCP connection with nothing queued, else C{transport.write}.
    """
    if (
        not isinstance(transport, tcp.Connection)
        or transport.TLS
        or transport._tempDataLen
        or transport.offset != len(transport.dataBuffer)
        or not transport.connected
        or transport._writeDisconnected
        or transport.disconnecting
    ):
        transport.write(data)
        return
    try:
        sent = transport.socket.send(data)
    except OSError:
        # EAGAIN, or a broken connection: queue the data and let Twisted's
        # doWrite send it or find the error the usual way.
        sent = 0
    if sent < len(data):
        transport.write(data[sent:])


def queued_bytes(transport: Any) -> Optional[int]:
    """
    How many bytes C{transport} holds that the kernel has not taken yet, or
    L{None} when that cannot be known (not a TCP connection underneath).
    A TLS transport is looked through to the TCP connection it wraps (what
    TLS itself holds back is small: at most a record).
    """
    for _ in range(3):
        if isinstance(transport, tcp.Connection):
            return int(transport._tempDataLen + len(transport.dataBuffer) - transport.offset)
        transport = getattr(transport, "transport", None)
        if transport is None:
            return None
    return None
