"""
Python `websockets` (asyncio implementation) echo server with its built-in
keepalive: a ping every --ping-interval seconds, and a peer whose pong does
not arrive within --ping-timeout is failed with 1011 (close frame, then the
TCP connection is closed after at most --close-timeout).

    python bench/peers/websockets_server.py --port 9000 --ping-interval 1 --ping-timeout 1
"""

import argparse
import asyncio
import resource
import sys

from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed


async def echo(ws):
    try:
        async for message in ws:
            await ws.send(message)
    except ConnectionClosed:
        pass  # a peer that vanished (killed load generator) is not news


async def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--compression", choices=("deflate", "none"), default="none",
                   help="permessage-deflate: websockets' default ('deflate': window 12 bits, memLevel 5, context takeover) or off")
    p.add_argument("--ping-interval", type=float, required=True)
    p.add_argument("--ping-timeout", type=float, required=True)
    p.add_argument("--close-timeout", type=float, default=1.0)
    p.add_argument("--backlog", type=int, default=4096)
    a = p.parse_args()

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    async with serve(
        echo,
        "127.0.0.1",
        a.port,
        ping_interval=a.ping_interval,
        ping_timeout=a.ping_timeout,
        close_timeout=a.close_timeout,
        backlog=a.backlog,
        compression=None if a.compression == "none" else "deflate",
    ) as server:
        print(f"websockets listening on 127.0.0.1:{a.port}", file=sys.stderr, flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
