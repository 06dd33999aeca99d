"""
permessage-deflate (RFC 7692), opt-in, shaped for a server that holds tens
of thousands of connections.

What wsheart negotiates (C{--deflate}; Autobahn does the compressing):

- **No context takeover on the server's side, by default.**  Each message
  the server sends is compressed on its own, so the server keeps no
  compressor between messages (a zlib compressor at the defaults is about
  256 KiB) and a channel message compressed once serves every subscriber
  whose window size is the same: the frame is still built once per
  publish, once per parameter set.  The response says
  C{server_no_context_takeover}, so clients free their window too.
- **No context takeover asked of clients, by default**: the server keeps
  no decompressor between a client's messages either (about 40 KiB each
  at a 32 KiB window).  C{--deflate-client-context-takeover} lets clients
  keep their context (better ratios on streams of similar messages; the
  server then holds a decompressor per connection that has sent a
  compressed message, its window capped by C{--deflate-client-window-bits}
  when the client lets the server choose).
- **zlib state only where compressed messages flow**: Autobahn creates a
  compressor or decompressor at the first compressed message, and
  L{LeanDeflate} drops it after each message when that direction takes no
  context over.  An idle connection holds none.
- **Small messages go uncompressed** (below C{--deflate-min-size} bytes):
  a short chat line gains a few bytes at the cost of a compressor's set-up.
- **The decompressed size is bounded while inflating** by
  C{--max-message-size} (Autobahn inflates with a cap on the output): a
  small frame that would inflate to a gigabyte is closed with 1009 having
  held at most the limit.

Pure policy and frame building; no reactor.
"""

from __future__ import annotations

import inspect
import zlib
from dataclasses import dataclass
from typing import Any, Optional

from autobahn.websocket.compress import (
    PerMessageDeflate,
    PerMessageDeflateOffer,
    PerMessageDeflateOfferAccept,
    PerMessageDeflateResponse,
    PerMessageDeflateResponseAccept,
)

WINDOW_BITS = range(9, 16)
MEM_LEVELS = range(1, 10)


@dataclass(frozen=True)
class DeflateSettings:
    """
    @ivar min_size: messages shorter than this many bytes are sent
        uncompressed.
    @ivar window_bits: the window of what this side sends (2**bits bytes);
        the peer may ask for less.
    @ivar peer_window_bits: on a server, the largest window it lets a
        client compress with, when the client lets it choose (C{15}: no cap).
    @ivar mem_level: zlib's memory level for this side's compressor (1-9).
    @ivar context_takeover: whether this side's compressor keeps its
        context between messages (a server: no, by default, so that channel
        frames are shared and no compressor is held).
    @ivar peer_context_takeover: whether the peer may keep its context (a
        server: no, by default, so that no decompressor is held).
    """

    min_size: int = 256
    window_bits: int = 15
    peer_window_bits: int = 15
    mem_level: int = 8
    context_takeover: bool = False
    peer_context_takeover: bool = False

    def __post_init__(self) -> None:
        for name in ("window_bits", "peer_window_bits"):
            if getattr(self, name) not in WINDOW_BITS:
                raise ValueError(f"deflate {name.replace('_', ' ')} must be 9-15, got {getattr(self, name)}")
        if self.mem_level not in MEM_LEVELS:
            raise ValueError(f"deflate memory level must be 1-9, got {self.mem_level}")
        if self.min_size < 0:
            raise ValueError(f"deflate minimum size must not be negative, got {self.min_size}")


class LeanDeflate(PerMessageDeflate):
    """
    Autobahn's permessage-deflate that drops its zlib objects after each
    message in a direction without context takeover (Autobahn keeps the
    last one, a compressor's 256 KiB included, for the connection's life).
    """

    def _own_no_takeover(self) -> bool:
        return bool(self.server_no_context_takeover if self._is_server else self.client_no_context_takeover)

    def _peer_no_takeover(self) -> bool:
        return bool(self.client_no_context_takeover if self._is_server else self.server_no_context_takeover)

    def end_compress_message(self) -> bytes:
        data: bytes = super().end_compress_message()
        if self._own_no_takeover():
            self._compressor = None
        return data

    def end_decompress_message(self) -> None:
        try:
            super().end_decompress_message()
        except zlib.error:
            # Autobahn before 26.10.1 feeds the stripped sync-flush tail to
            # a decompressor it stopped at the message size limit (the
            # connection is already being closed with 1009), and lets
            # zlib's error out of the frame parser.  Such a stream cannot
            # go on: drop it.
            self._decompressor = None
            return
        if self._peer_no_takeover():
            self._decompressor = None

    # The protocol this extension belongs to (set by make_lean), for the
    # size check below.
    owner: Any = None

    if "max_output_len" not in inspect.signature(PerMessageDeflate.decompress_message_data).parameters:
        # Autobahn before 26.10.1 checks a message's size on its compressed
        # frames only, and inflates each frame up to exactly the limit,
        # passing a bomb on truncated.  Here the inflated size of the whole
        # message is counted, and one byte past the limit fails the
        # connection with 1009 as the newer Autobahn does, without
        # inflating more than that.
        _inflated = 0

        def start_decompress_message(self) -> None:
            super().start_decompress_message()
            self._inflated = 0

        # max_output_len: the newer Autobahn's parameter, which the older
        # one (the only one this runs on) never passes.
        def decompress_message_data(self, data: bytes, max_output_len: Optional[int] = None) -> bytes:
            decompressor = self._decompressor
            assert decompressor is not None
            limit = self.max_message_size
            if limit is None:
                return decompressor.decompress(data)
            if self._inflated > limit:
                return b""  # already failing; inflate nothing more
            out: bytes = decompressor.decompress(data, limit - self._inflated + 1)
            self._inflated += len(out)
            if self._inflated > limit and self.owner is not None:
                self.owner._max_message_size_exceeded(
                    self._inflated, limit, f"inflated WebSocket message exceeds payload limit of {limit} octets"
                )
                return b""
            return out

    def holds_zlib_state(self) -> bool:
        return self._compressor is not None or self._decompressor is not None


def make_lean(pmce: Any, owner: Any = None) -> None:
    """
    Turn the permessage-deflate object Autobahn negotiated into a
    L{LeanDeflate} (same state, same class layout).
    """
    if type(pmce) is PerMessageDeflate:
        pmce.__class__ = LeanDeflate
    if isinstance(pmce, LeanDeflate):
        pmce.owner = owner


class _Accept(PerMessageDeflateOfferAccept):
    """
    The server's answer to an offer; says C{server_no_context_takeover}
    also when the client did not ask (RFC 7692 7.1.1.1 allows it), so the
    client can free its window after each message.
    """

    def get_extension_string(self) -> str:
        text: str = super().get_extension_string()
        if self.no_context_takeover and "server_no_context_takeover" not in text:
            name, _, rest = text.partition(";")
            text = f"{name}; server_no_context_takeover" + (f";{rest}" if rest else "")
        return text


def server_accept(settings: DeflateSettings, max_message_size: int) -> Any:
    """
    Autobahn's C{perMessageCompressionAccept}: accept the first
    permessage-deflate offer on wsheart's terms; None (no compression) if
    there is none.
    """

    def accept(offers: list[Any]) -> Optional[PerMessageDeflateOfferAccept]:
        for offer in offers:
            if not isinstance(offer, PerMessageDeflateOffer):
                continue
            window = settings.window_bits
            if offer.request_max_window_bits:
                window = min(window, offer.request_max_window_bits)
            peer_window = 0
            if offer.accept_max_window_bits and settings.peer_window_bits < 15:
                peer_window = settings.peer_window_bits
            return _Accept(
                offer,
                request_no_context_takeover=not settings.peer_context_takeover and offer.accept_no_context_takeover,
                request_max_window_bits=peer_window,
                # A client that asked for no context takeover gets it.
                no_context_takeover=(not settings.context_takeover) or offer.request_no_context_takeover,
                window_bits=window,
                mem_level=settings.mem_level,
                max_message_size=max_message_size or None,
            )
        return None

    return accept


def client_offers(settings: DeflateSettings) -> list[PerMessageDeflateOffer]:
    """
    What a wsheart client offers: permessage-deflate, letting the server
    choose both directions' windows and context takeover.
    """
    return [
        PerMessageDeflateOffer(
            accept_no_context_takeover=True,
            accept_max_window_bits=True,
            request_no_context_takeover=False,
            request_max_window_bits=settings.peer_window_bits if settings.peer_window_bits < 15 else 0,
        )
    ]


def client_accept(settings: DeflateSettings, max_message_size: int) -> Any:
    """
    Autobahn's client C{perMessageCompressionAccept}: take the server's
    permessage-deflate answer, inflating at most C{max_message_size}.
    """

    def accept(response: Any) -> Optional[PerMessageDeflateResponseAccept]:
        if not isinstance(response, PerMessageDeflateResponse):
            return None
        window = settings.window_bits
        if response.client_max_window_bits:
            window = min(window, response.client_max_window_bits)
        return PerMessageDeflateResponseAccept(
            response,
            no_context_takeover=None if settings.context_takeover else True,
            window_bits=window,
            mem_level=settings.mem_level,
            max_message_size=max_message_size or None,
        )

    return accept


def may_compress(size: int, settings: "DeflateSettings", limit: int) -> bool:
    """
    Whether a message of C{size} bytes is to be compressed: not under the
    minimum size, and not when deflate's worst case (incompressible data
    grows a little: zlib's deflateBound) could pass the message limit,
    where Autobahn would raise rather than send.
    """
    if size < settings.min_size:
        return False
    return limit <= 0 or compressed_bound(size) <= limit


def compressed_bound(size: int) -> int:
    """
    The most C{size} bytes can become deflated (zlib's deflateBound, with
    room for the flush): incompressible data grows a little.  0 stays 0 (no
    limit).
    """
    if size <= 0:
        return size
    return size + (size >> 12) + (size >> 14) + 64


@dataclass(frozen=True)
class FrameKey:
    """
    How a server connection takes a channel's ready frame: L{shared}, one
    compressed frame serves every connection with the same key (no context
    takeover: the bytes depend only on the window and memory level);
    otherwise the connection compresses with its own context.  Messages
    under C{min_size} go as the plain frame.
    """

    window_bits: int
    mem_level: int
    min_size: int
    shared: bool
