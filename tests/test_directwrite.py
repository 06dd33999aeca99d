"""
Tests for L{wsheart.directwrite} without a network: a transport that is
not plain TCP gets an ordinary write.  What the direct path pins about the
installed Twisted's buffering needs real sockets and is tested in
L{tests.test_integration_directwrite}.
"""

from __future__ import annotations

from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from wsheart.directwrite import write_small


class DirectWriteTests(unittest.TestCase):
    def test_other_transports_use_write(self) -> None:
        """
        A transport that is not plain TCP gets an ordinary C{write}.
        """
        transport = StringTransport()
        write_small(transport, b"\x89\x00")
        self.assertEqual(transport.value(), b"\x89\x00")
