"""
Raw Twisted + Autobahn broadcast server for bench/fanout.py: a client that
sends "sub" is a subscriber; any other text message from a client is sent
to every subscriber, prepared once (Autobahn's prepareMessage and
sendPreparedMessage, the library's own broadcast idiom).

    python bench/peers/autobahn_broadcast.py --port 9000

--deflate accepts permessage-deflate with Autobahn's defaults (context
takeover both ways); sendPreparedMessage then compresses for each
subscriber (a prepared message is only shared on connections without
compression).
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


class Broadcast(WebSocketServerProtocol):
    def onMessage(self, payload, isBinary):
        if payload == b"sub":
            self.factory.subscribers.add(self)
            self.sendMessage(b"subscribed")
            return
        prepared = self.factory.prepareMessage(payload, isBinary)
        for subscriber in self.factory.subscribers:
            subscriber.sendPreparedMessage(prepared)

    def onClose(self, wasClean, code, reason):
        self.factory.subscribers.discard(self)


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--deflate", action="store_true", help="accept permessage-deflate (Autobahn's defaults)")
    a = p.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    factory = WebSocketServerFactory(f"ws://127.0.0.1:{a.port}")
    factory.protocol = Broadcast
    factory.subscribers = set()
    if a.deflate:
        factory.setProtocolOptions(perMessageCompressionAccept=accept_deflate)
    reactor.listenTCP(a.port, factory, backlog=4096, interface="127.0.0.1")
    print(f"autobahn broadcast listening on 127.0.0.1:{a.port}", file=sys.stderr, flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
