from twisted.application.reactors import Reactor
from twisted.application.service import ServiceMaker

wsheart = ServiceMaker(
    "wsheart",
    "wsheart.tap",
    "WebSocket daemon with ping/pong heartbeats and dead-peer detection",
    "wsheart",
)

# `twistd --reactor wsheart`: the epoll reactor without the per-event legacy
# log context (wsheart.reactor), for daemons with many connections.
wsheart_reactor = Reactor(
    "wsheart",
    "wsheart.reactor",
    "epoll without a log context per ready descriptor (wsheart.reactor)",
)
