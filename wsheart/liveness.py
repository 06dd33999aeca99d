"""
What the server and the client protocols share: the heartbeat wired to
ping and pong frames, the timers that bound the opening and closing
handshakes on the injected clock, the fast pong path, and Autobahn's
settings common to both sides.

Autobahn's own timers (opening handshake, closing handshake, auto-ping) are
switched off: they run on the global reactor, which tests cannot drive.
wsheart runs its own on the injected clock, so every timeout is proven
with L{twisted.internet.task.Clock}.
"""

from __future__ import annotations

import pprint
from typing import TYPE_CHECKING, Any, Optional

from autobahn.util import encode_truncate
from autobahn.websocket import protocol as _autobahn_protocol
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure

from wsheart import closecodes
from wsheart.heartbeat import Heartbeat, HeartbeatSettings

class _LazyPformat:
    """
    C{pprint.pformat} deferred until the text is needed.

    Autobahn's C{_connectionMade} pretty-prints every protocol option into
    a debug log line for each new connection - about half a millisecond,
    even with debug logging off, because the argument is built before the
    logger decides.  This object formats the same text when (and only when)
    the line is emitted.
    """

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value

    def __str__(self) -> str:
        return pprint.pformat(self.value)

    __repr__ = __str__


setattr(_autobahn_protocol, "pformat", _LazyPformat)



if TYPE_CHECKING:
    # The Autobahn side this is mixed into (a server or a client protocol),
    # for the type checker: its state, buffers and methods used here.
    from autobahn.twisted.websocket import WebSocketAdapterProtocol
    from autobahn.websocket.protocol import WebSocketProtocol

    # Autobahn's two bases disagree on the types of "peer" and
    # "_transport_details" (an Autobahn typing slip); the real classes
    # combine them just the same.
    class _Side(WebSocketAdapterProtocol, WebSocketProtocol):  # type: ignore[misc]
        logOctets: bool  # set by setProtocolOptions
        maxMessagePayloadSize: int

else:
    _Side = object


class Liveness(_Side):
    """
    What server and client protocols share: the heartbeat, text of the
    close reason, and the timers that bound the opening and closing
    handshakes.  Mixed in before the Autobahn protocol class.
    """

    logger = Logger()

    # Set by _start_liveness (server) or the client factory.
    clock: IReactorTime
    transport: Any
    heartbeat: Optional[Heartbeat] = None
    _handshake_timer: Optional[IDelayedCall] = None
    _close_timer: Optional[IDelayedCall] = None
    # Server side, with --auth: closes at the token's expiry, or when no
    # token came in time.
    _auth_timer: Optional[IDelayedCall] = None
    _connection_gone = False
    close_timeout: float = 1.0

    def _no_nagle(self) -> None:
        """
        Turn Nagle's algorithm off: a small frame (a message, a pong) leaves
        at once instead of waiting for the previous segment's ACK, which a
        peer's delayed ACK holds back for up to 40 ms.  Autobahn means to
        do this in its connectionMade but reads C{tcpNoDelay} before it has
        copied it from the factory, and its bare except hides the failure.
        """
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is None:
            return
        try:
            set_no_delay(True)
        except OSError:  # not a TCP socket (a Unix socket: EINVAL, EOPNOTSUPP)
            pass

    def _arm_handshake_timer(self, timeout: float) -> None:
        if timeout > 0:
            self._handshake_timer = self.clock.callLater(timeout, self._handshake_timed_out)

    def _handshake_timed_out(self) -> None:
        self._handshake_timer = None
        if self.state == self.STATE_CONNECTING:
            self.wasNotCleanReason = "opening handshake timeout"
            self.wasOpenHandshakeTimeout = True
            self.dropConnection(abort=True)

    def _start_heartbeat(self, settings: HeartbeatSettings, first_delay: float) -> None:
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None
        self.heartbeat = Heartbeat(
            self.clock,
            settings,
            send_ping=self._send_heartbeat_ping,
            on_dead=self._heartbeat_dead,
            on_miss=self._heartbeat_missed,
            scheduler=getattr(self.factory, "timers", None),
            after_reads=self.factory.after_reads,
            meter=getattr(self.factory, "cadence", None),
        )
        self.heartbeat.start(first_delay)

    def _send_heartbeat_ping(self, payload: bytes) -> None:
        if not self._peer_mid_frame():
            self.sendPing(payload)

    def _peer_mid_frame(self) -> bool:
        """
        Whether the peer is part-way through sending a frame (its header or
        payload partly read).  A heartbeat ping due then is not sent: the
        peer's bytes already count as life (a miss needs a silent window),
        and a peer that writes its pong the moment a ping arrives, even
        inside a frame it is sending in pieces, corrupts that frame
        (Autobahn|Testsuite's cases 6.4.3 and 6.4.4 then end in 1007).
        """
        return self.state == self.STATE_OPEN and (
            bool(self.data) or getattr(self, "current_frame", None) is not None
        )

    def _heartbeat_missed(self, heartbeat: Heartbeat) -> None:
        """
        Hook: a ping went unanswered (the peer is not dead yet).
        """

    def _heartbeat_dead(self, heartbeat: Heartbeat) -> None:
        # A dead peer has not answered for max_missed pings: waiting for it
        # to answer a close frame is pointless.  Send the close (so a peer
        # that was only slow learns why), then close TCP once it is flushed;
        # the close timer still aborts if even the flush stalls.
        self.close(closecodes.INTERNAL_ERROR, closecodes.HEARTBEAT_TIMEOUT_REASON)
        if self.transport is not None:
            self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        heartbeat = self.heartbeat
        if heartbeat is not None:
            # (A pong taken here is life as well: pong_received says so.)
            if len(data) in (14, 18) and data[0] == 0x8A and self._pong_fast_path(data):
                return
            # Any inbound bytes are life: a busy link is not a dead link
            # (a large frame on a slow link arrives over many reads).
            heartbeat.traffic_received()
            data = self._fast_messages(data)
            if not data:
                return
        # Straight to Autobahn's parser: its Twisted adapter formats a debug
        # line on every read, even with debug logging off.
        self._dataReceived(data)

    def _fast_messages(self, data: bytes) -> bytes:
        """
        Hook: take the ordinary messages at the start of C{data} without
        Autobahn's general parser; return what is left for it.
        """
        return data

    def _pong_fast_path(self, data: bytes) -> bool:
        """
        A read that is exactly one pong frame with a heartbeat-sized
        payload, between frames: match it here instead of running
        Autobahn's general frame parser.  Anything else goes the long way.
        """
        # _peer_mid_frame, inlined: this runs for every pong.
        if self.state != self.STATE_OPEN or self.data or getattr(self, "current_frame", None) is not None:
            return False
        if self.factory.isServer:
            if data[1] != 0x8C or len(data) != 18:  # clients must mask
                return False
            mask = int.from_bytes(data[2:6] * 3, "big")
            payload = (int.from_bytes(data[6:], "big") ^ mask).to_bytes(12, "big")
        else:
            if data[1] != 0x0C or len(data) != 14:  # servers must not mask
                return False
            payload = data[2:]
        self.onPong(payload)
        return True

    def sendData(self, data: bytes, sync: bool = False, chopsize: Optional[int] = None) -> None:
        # The common case straight to the transport: Autobahn's version
        # formats a debug line for every write, even with debug logging off.
        if sync or chopsize or self.send_queue or self.logOctets:
            super().sendData(data, sync, chopsize)
        else:
            self.transport.write(data)

    def onPong(self, payload: bytes) -> None:
        if self.heartbeat is not None:
            self.heartbeat.pong_received(payload)

    def close(self, code: int, reason: str) -> None:
        """
        Start the closing handshake with any valid code (Autobahn's
        C{sendClose} refuses 1011-1013); the TCP connection is dropped if
        the peer has not finished the handshake after C{close_timeout}.
        """
        if self.state == self.STATE_CONNECTING:
            self.dropConnection(abort=True)
            return
        self.sendCloseFrame(code=code, reasonUtf8=encode_truncate(reason, 123))

    def sendCloseFrame(self, code=None, reasonUtf8=None, isReply=False):
        super().sendCloseFrame(code=code, reasonUtf8=reasonUtf8, isReply=isReply)
        # Whoever started it, a closing handshake must end in bounded time.
        if self._close_timer is None and self.state == self.STATE_CLOSING:
            self._close_timer = self.clock.callLater(self.close_timeout, self._close_timed_out)

    def _close_timed_out(self) -> None:
        self._close_timer = None
        if self._connection_gone:
            return
        if self.state != self.STATE_CLOSED:
            self.wasClean = False
            self.wasNotCleanReason = "closing handshake timeout"
            self.wasCloseHandshakeTimeout = True
            self.dropConnection(abort=True)
        else:
            # Autobahn already asked for a graceful close (after answering
            # the peer's close), but the socket lingers - e.g. output queued
            # for a peer that stopped reading.  Cut it.
            self.transport.abortConnection()

    def _stop_timers(self) -> None:
        for name in ("_handshake_timer", "_close_timer", "_auth_timer"):
            call = getattr(self, name)
            if call is not None:
                if call.active():
                    call.cancel()
                setattr(self, name, None)
        if self.heartbeat is not None:
            self.heartbeat.stop()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._connection_gone = True
        try:
            super().connectionLost(reason)
        finally:
            self._stop_timers()


def autobahn_options(max_message_size: int) -> dict[str, Any]:
    """
    Autobahn settings common to both sides.
    """
    return dict(
        maxMessagePayloadSize=max_message_size,
        maxFramePayloadSize=max_message_size,
        # Protocol errors get a close frame with a code (1007, 1009, ...),
        # not a silent drop, so the peer learns what it did wrong.
        failByDrop=False,
        # wsheart's own clock-driven timers replace these.
        openHandshakeTimeout=0,
        closeHandshakeTimeout=0,
        autoPingInterval=0,
        autoPingTimeout=0,
    )
