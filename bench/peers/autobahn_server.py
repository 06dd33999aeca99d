"""
Raw Twisted + Autobahn echo server with Autobahn's own heartbeat (autoPing):
the baseline wsheart is compared with.  Every ratio in results.json is
relative to this peer.

    python bench/peers/autobahn_server.py --port 9000 --ping-interval 1 --ping-timeout 1

Autobahn pings every --ping-interval seconds after the previous pong and,
if no pong arrives within --ping-timeout, drops the TCP connection (RST).
A silent peer is therefore dropped within interval + timeout.

--deflate accepts a client's permessage-deflate offer with Autobahn's
defaults (PerMessageDeflateOfferAccept: context takeover both ways, window
15, memory level 8); without it the offer is declined.
"""

import argparse
import resource
import sys

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.compress import PerMessageDeflateOffer, PerMessageDeflateOfferAccept
from twisted.internet import reactor


def accept_deflate(offers):
    for offer in offers:
        if isinstance(offer, PerMessageDeflateOffer):
            return PerMessageDeflateOfferAccept(offer)
    return None


class Echo(WebSocketServerProtocol):
    def onMessage(self, payload, isBinary):
        self.sendMessage(payload, isBinary)


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--ping-interval", type=float, required=True)
    p.add_argument("--ping-timeout", type=float, required=True)
    p.add_argument("--close-timeout", type=float, default=1.0)
    p.add_argument("--backlog", type=int, default=4096)
    p.add_argument("--deflate", action="store_true", help="accept permessage-deflate (Autobahn's defaults)")
    a = p.parse_args()

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    factory = WebSocketServerFactory(f"ws://127.0.0.1:{a.port}")
    factory.protocol = Echo
    factory.setProtocolOptions(
        autoPingInterval=a.ping_interval,
        autoPingTimeout=a.ping_timeout,
        closeHandshakeTimeout=a.close_timeout,
    )
    if a.deflate:
        factory.setProtocolOptions(perMessageCompressionAccept=accept_deflate)
    reactor.listenTCP(a.port, factory, backlog=a.backlog, interface="127.0.0.1")
    print(f"autobahn listening on 127.0.0.1:{a.port}", file=sys.stderr, flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
