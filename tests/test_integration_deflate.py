"""
Integration tests of permessage-deflate over real loopback sockets: the
websockets library (which offers deflate by default) against a wsheart
server with C{deflate}, for echo, the text ping and a channel; and
wsheart's own client service offering it.
"""

from __future__ import annotations

import json
from typing import Any

import websockets.sync.client
from twisted.internet import reactor, threads
from twisted.trial import unittest

from wsheart import client as wclient
from wsheart.channels import Broker, ChannelSettings, serve
from wsheart.deflate import DeflateSettings
from wsheart.heartbeat import HeartbeatSettings
from wsheart.hub import Hub
from wsheart.metrics import ServerMetrics
from wsheart.protocol import ServerFactory

from .loopback import async_test, listen, wait_until


class DeflateInteropTests(unittest.TestCase):
    timeout = 30

    async def server(self) -> tuple[ServerFactory, Broker, str]:
        hub = Hub(reactor)
        metrics = ServerMetrics()
        broker = Broker(reactor, ChannelSettings())
        factory = ServerFactory(
            hub=hub,
            clock=reactor,
            metrics=metrics,
            subprotocols=serve(broker, hub, metrics),
            deflate=DeflateSettings(),
        )
        port = (await listen(self, factory)).getHost().port
        return factory, broker, f"ws://127.0.0.1:{port}/"

    @async_test
    async def test_websockets_library_echo_ping_and_channel(self) -> None:
        """
        The websockets library negotiates permessage-deflate with the
        server's terms (no context takeover either way); a 64 KiB JSON
        document echoes intact, the text ping gets its pong, and a channel
        message reaches a wsheart.v1 subscriber.
        """
        factory, broker, url = await self.server()
        document = json.dumps({"rows": [{"id": i, "name": f"user {i}", "online": i % 3 == 0} for i in range(1400)]})
        self.assertGreater(len(document), 64 * 1024)

        def talk() -> dict[str, Any]:
            out: dict[str, Any] = {}
            with websockets.sync.client.connect(url, proxy=None, open_timeout=5, max_size=None) as ws:
                out["extensions"] = [e.name for e in ws.protocol.extensions]
                out["params"] = ws.response.headers.get("Sec-WebSocket-Extensions")
                ws.send(document)
                out["echo"] = ws.recv(timeout=5)
                ws.send("ping")
                out["pong"] = ws.recv(timeout=5)
            with websockets.sync.client.connect(url, proxy=None, open_timeout=5, subprotocols=["wsheart.v1"]) as ws:
                ws.send(json.dumps({"op": "subscribe", "channel": "chat.room"}))
                out["subscribed"] = json.loads(ws.recv(timeout=5))["op"]
                reactor.callFromThread(broker.publish, "chat.room", "x" * 2000)
                out["message"] = json.loads(ws.recv(timeout=5))
            return out

        out = await threads.deferToThread(talk)
        self.assertEqual(out["extensions"], ["permessage-deflate"])
        self.assertIn("server_no_context_takeover", out["params"])
        self.assertIn("client_no_context_takeover", out["params"])
        self.assertEqual(out["echo"], document)
        self.assertEqual(out["pong"], "pong")
        self.assertEqual(out["subscribed"], "subscribed")
        self.assertEqual((out["message"]["op"], out["message"]["data"]), ("message", "x" * 2000))

    @async_test
    async def test_wsheart_client_service_with_deflate(self) -> None:
        """
        ReconnectingClientService(deflate=...) negotiates it and echoes a
        large message through the server's compression.
        """
        factory, _, url = await self.server()
        received: list[Any] = []

        class Listener(wclient.ClientListener):
            def client_message(self, client: Any, message: Any) -> None:
                received.append(message)

        service = wclient.ReconnectingClientService(
            url, Listener(), reactor=reactor, heartbeat=HeartbeatSettings(5, 2, 2), deflate=DeflateSettings()
        )
        service.startService()
        self.addCleanup(service.stopService)
        await wait_until(self, lambda: service.state == wclient.OPEN)
        text = "deflate me " * 1000
        self.assertTrue(service.send(text))
        await wait_until(self, lambda: received == [text])
        [info] = list(factory.hub)
        server_protocol: Any = info.connection
        self.assertIsNotNone(server_protocol._perMessageCompress)
        self.assertLess(server_protocol.trafficStats.incomingOctetsWebSocketLevel, len(text) / 10)
