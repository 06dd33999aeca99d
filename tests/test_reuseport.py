"""
Tests for L{wsheart.reuseport}: the C{reuseport:} endpoint string, its
errors, and its discovery as a Twisted endpoint plugin (no sockets here:
tests/test_integration_reuseport.py listens for real).
"""

from __future__ import annotations

import socket

from twisted.internet import endpoints
from twisted.internet.interfaces import IStreamServerEndpointStringParser
from twisted.internet.testing import MemoryReactor
from twisted.plugin import getPlugins
from twisted.trial import unittest

from wsheart.reuseport import DEFAULT_BACKLOG, ReusePortEndpoint, ReusePortParser
from wsheart.tap import with_backlog


class ParserTests(unittest.TestCase):
    def test_endpoint_strings(self) -> None:
        """
        reuseport:PORT with optional interface= and backlog= builds the
        endpoint through Twisted's own serverFromString.
        """
        reactor = MemoryReactor()
        endpoint = endpoints.serverFromString(reactor, "reuseport:8080:interface=127.0.0.1:backlog=4096")
        self.assertIsInstance(endpoint, ReusePortEndpoint)
        self.assertEqual((endpoint.port, endpoint.interface, endpoint.backlog, endpoint.family), (8080, "127.0.0.1", 4096, socket.AF_INET))
        six = endpoints.serverFromString(reactor, r"reuseport:443:interface=\:\:1")
        self.assertEqual((six.port, six.family), (443, socket.AF_INET6))
        default = endpoints.serverFromString(reactor, "reuseport:80")
        self.assertEqual((default.interface, default.backlog), ("", DEFAULT_BACKLOG))

    def test_bad_strings(self) -> None:
        """
        Bad ports, backlogs, interfaces and options are ValueErrors that
        say what a reuseport: string looks like.
        """
        for description in [
            "reuseport:",
            "reuseport:http",
            "reuseport:70000",
            "reuseport:80:backlog=0",
            "reuseport:80:backlog=x",
            "reuseport:80:interface=example.org",
            "reuseport:80:ssl=yes",
            "reuseport:80:81",
        ]:
            with self.assertRaises(ValueError, msg=description) as e:
                endpoints.serverFromString(MemoryReactor(), description)
            self.assertIn("reuseport", str(e.exception))

    def test_plugin_is_discovered(self) -> None:
        """
        The drop-in in twisted/plugins makes the prefix known to Twisted.
        """
        prefixes = [p.prefix for p in getPlugins(IStreamServerEndpointStringParser)]
        self.assertIn("reuseport", prefixes)
        self.assertIsInstance(ReusePortParser(), ReusePortParser)

    def test_backlog_added_by_the_daemon(self) -> None:
        """
        twistd wsheart's --backlog reaches reuseport: endpoints like tcp:.
        """
        self.assertEqual(with_backlog("reuseport:8080", 4096), "reuseport:8080:backlog=4096")
        self.assertEqual(with_backlog("reuseport:8080:backlog=7", 4096), "reuseport:8080:backlog=7")
