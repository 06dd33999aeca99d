from twisted.application.service import ServiceMaker

wsheart = ServiceMaker(
    "wsheart",
    "wsheart.tap",
    "WebSocket daemon with ping/pong heartbeats and dead-peer detection",
    "wsheart",
)
