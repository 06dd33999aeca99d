"""
One text message to many connections, framed once.

A server's frames are not masked, so the bytes of a text frame are the same
for every connection: L{send_to_all} builds them once and writes them to
each connection that can take a ready frame (the server protocol's
C{write_frame}), instead of running Autobahn's per-message framing for every
subscriber of a channel.  Connections without C{write_frame} get
C{send_text}.
"""

from __future__ import annotations

from typing import Iterable

from wsheart.hub import IConnection


def text_frame(payload: bytes) -> bytes:
    """
    A final, unmasked text frame (opcode 1) carrying C{payload}.
    """
    n = len(payload)
    if n < 126:
        head = bytes((0x81, n))
    elif n < 1 << 16:
        head = bytes((0x81, 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x81, 127)) + n.to_bytes(8, "big")
    return head + payload


def send_to_all(connections: Iterable[IConnection], text: str) -> int:
    """
    Send C{text} to every connection; returns how many took it.
    """
    frame = None
    sent = 0
    for connection in connections:
        write_frame = getattr(connection, "write_frame", None)
        if write_frame is not None:
            if frame is None:
                frame = text_frame(text.encode("utf-8"))
            ok = write_frame(frame)
        else:
            ok = connection.send_text(text)
        if ok:
            sent += 1
    return sent
