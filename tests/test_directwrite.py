"""
Tests for L{wsheart.directwrite}: over real loopback TCP connections,
because what they pin is the installed Twisted's buffering (the direct
path reads fields that are not public API).
"""

from __future__ import annotations

import socket
import struct
from typing import Any, Optional

from twisted.internet import protocol, reactor, threads
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from wsheart.directwrite import write_small

from .loopback import async_test, listen, sleep, wait_until


class _Recorder(protocol.Protocol):
    lost = False

    def connectionMade(self) -> None:
        self.factory.connected.append(self)  # type: ignore[attr-defined]

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = True


class DirectWriteTests(unittest.TestCase):
    def test_other_transports_use_write(self) -> None:
        """
        A transport that is not plain TCP gets an ordinary C{write}.
        """
        transport = StringTransport()
        write_small(transport, b"\x89\x00")
        self.assertEqual(transport.value(), b"\x89\x00")

    async def _connect(self, rcvbuf: Optional[int] = None) -> tuple[Any, socket.socket]:
        factory = protocol.Factory.forProtocol(_Recorder)
        factory.connected = []  # type: ignore[attr-defined]
        port = await listen(self, factory)
        client = socket.socket()
        self.addCleanup(client.close)
        if rcvbuf is not None:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        client.connect(("127.0.0.1", port.getHost().port))
        await wait_until(self, lambda: factory.connected)
        server = factory.connected[0]
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
        await sleep(0.2)  # the reactor sends what fits; the rest stays buffered
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
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()  # RST
        await sleep(0.05)
        for _ in range(3):
            write_small(server.transport, b"\x89\x04ping")
        await wait_until(self, lambda: server.lost, timeout=5)
