"""
One text message to many connections, framed once.

A server's frames are not masked, so the bytes of a text frame are the same
for every connection: L{send_to_all} builds them once and writes them to
each connection that can take a ready frame (the server protocol's
C{write_frame}), instead of running Autobahn's per-message framing for every
subscriber of a channel.  Connections without C{write_frame} get
C{send_text}.  With permessage-deflate (L{wsheart.deflate}) the same holds
for the compressed frame, once per parameter set.
"""

from __future__ import annotations

import zlib
from typing import Iterable, Optional

from wsheart.deflate import FrameKey
from wsheart.hub import IConnection


def frame_head(first: int, n: int) -> bytes:
    """
    An unmasked frame's header: its first byte (FIN, RSV, opcode) and the
    payload length C{n} in its minimal form.
    """
    if n < 126:
        return bytes((first, n))
    if n < 1 << 16:
        return bytes((first, 126)) + n.to_bytes(2, "big")
    return bytes((first, 127)) + n.to_bytes(8, "big")


def data_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """
    A final, unmasked data frame carrying C{payload}: text (opcode 1) or
    binary (2).
    """
    return frame_head(0x80 | opcode, len(payload)) + payload


def text_frame(payload: bytes) -> bytes:
    """
    A final, unmasked text frame (opcode 1) carrying C{payload}.
    """
    return data_frame(payload, 0x1)


def compressed_text_frame(payload: bytes, window_bits: int, mem_level: int) -> bytes:
    """
    A final, unmasked text frame with RSV1 set carrying C{payload}
    compressed on its own (no context), as RFC 7692 frames it: deflate,
    flushed with Z_SYNC_FLUSH, its 00 00 FF FF tail removed.  The same bytes
    a connection's own compressor would produce without context takeover.
    """
    compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -window_bits, mem_level)
    data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
    body = data[:-4]
    # FIN, RSV1 (compressed), text.
    return frame_head(0xC1, len(body)) + body


def send_to_all(connections: Iterable[IConnection], text: str) -> int:
    """
    Send C{text} to every connection; returns how many took it.

    The plain frame is built once; with permessage-deflate, one compressed
    frame per L{FrameKey} (connections without context takeover on the
    server's side share it), and connections whose compressor keeps its
    context compress for themselves (C{send_text}).
    """
    payload = None
    frame = None
    compressed: dict[FrameKey, bytes] = {}
    # Subscribers mostly share one key object: compare by identity first.
    last_key: Optional[FrameKey] = None
    last_frame = b""
    sent = 0
    for connection in connections:
        write_frame = getattr(connection, "write_frame", None)
        if write_frame is None:
            ok = connection.send_text(text)
        else:
            if payload is None:
                payload = text.encode("utf-8")
            key = getattr(connection, "frame_key", None)
            if key is None or len(payload) < key.min_size:
                if frame is None:
                    frame = text_frame(payload)
                ok = write_frame(frame)
            elif key.shared:
                if key is not last_key:
                    shared = compressed.get(key)
                    if shared is None:
                        shared = compressed[key] = compressed_text_frame(payload, key.window_bits, key.mem_level)
                    last_key, last_frame = key, shared
                ok = write_frame(last_frame)
            else:
                ok = connection.send_text(text)
        if ok:
            sent += 1
    return sent
