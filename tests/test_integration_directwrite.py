"""
Integration tests of L{wsheart.directwrite} over real loopback TCP
connections: what they pin is the installed Twisted's buffering (the direct
path reads transport fields that are not public API), which only a real
socket exercises.  The in-memory case is in L{tests.test_directwrite}.
"""

from __future__ import annotations

import select
import socket
import struct
from typing import Any, Optional

from twisted.internet import protocol, reactor, threads
from twisted.trial import unittest

from wsheart.directwrite import write_small

from .loopback import async_test, listen, wait_until


class _Recorder(protocol.Protocol):
    lost = False

    def connectionMade(self) -> None:
        self.factory.connected.append(self)  # type: ignore[attr-defined]

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = True


class _RecorderFactory(protocol.Factory):
    protocol = _Recorder

    def __init__(self) -> None:
        self.connected: list[_Recorder] = []


class DirectWriteLoopbackTests(unittest.TestCase):
    """
    L{write_small} on Twisted TCP connections to a plain socket.
    """

    timeout = 30

    async def _connect(self, rcvbuf: Optional[int] = None) -> tuple[Any, socket.socket]:
        factory = _RecorderFactory()
        port = await listen(self, factory)
        client = socket.socket()
        self.addCleanup(client.close)
        if rcvbuf is not None:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        client.connect(("127.0.0.1", port.getHost().port))
        await wait_until(self, lambda: factory.connected)
        server: Any = factory.connected[0]
        self.addCleanup(server.transport.abortConnection)
        return server, client

    @async_test
    async def test_empty_buffer_sends_at_once(self) -> None:
        """
        With nothing queued the bytes leave in the call itself: nothing is
        buffered and the socket is not registered for writing.
        """
        server, client = await self._connect()
        write_small(server.transport, b"\x89\x04ping")
        self.assertEqual(server.transport._tempDataLen, 0)
        self.assertNotIn(server.transport, reactor.getWriters())
        client.settimeout(5)
        self.assertEqual(client.recv(100), b"\x89\x04ping")

    @async_test
    async def test_queued_data_keeps_its_order(self) -> None:
        """
        Behind data Twisted still holds (queued, and partly sent with the
        rest in its buffer), the small write goes through the queue: the
        peer reads everything once and in order.
        """
        server, client = await self._connect(rcvbuf=4096)
        big = bytes(range(256)) * 16384  # 4 MiB, far more than the socket buffers hold
        server.transport.write(big)
        write_small(server.transport, b"first")
        # The reactor sends what fits; the rest stays in Twisted's buffer.
        await wait_until(self, lambda: 0 < server.transport.offset < len(server.transport.dataBuffer))
        self.assertTrue(server.transport.dataBuffer or server.transport._tempDataLen)
        write_small(server.transport, b"second")
        expected = big + b"firstsecond"

        def read_all() -> bytes:
            client.settimeout(10)
            chunks, total = [], 0
            while total < len(expected):
                chunk = client.recv(1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
            return b"".join(chunks)

        received = await threads.deferToThread(read_all)
        self.assertEqual(len(received), len(expected))
        self.assertTrue(received == expected, "stream reordered or corrupted")

    @async_test
    async def test_broken_connection_is_found_by_twisted(self) -> None:
        """
        A send to a reset connection raises nothing: the bytes are queued
        and Twisted's own write path finds the error and loses the
        connection.
        """
        server, client = await self._connect()
        # Twisted must not read the reset first (it would lose the
        # connection before write_small runs, and nothing would be tested):
        # the socket stays out of the reactor until the write.
        server.transport.stopReading()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()  # RST
        hangup = select.poll()
        hangup.register(server.transport.fileno(), select.POLLIN)
        await wait_until(self, lambda: any(events & (select.POLLERR | select.POLLHUP) for _, events in hangup.poll(0)))
        self.assertFalse(server.lost)
        for _ in range(3):
            write_small(server.transport, b"\x89\x04ping")
        self.assertEqual(server.transport._tempDataLen, 3 * 6, "the bytes were not queued")
        await wait_until(self, lambda: server.lost, timeout=5)
