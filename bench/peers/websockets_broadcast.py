"""
Python `websockets` broadcast server for bench/fanout.py: a client that
sends "sub" is a subscriber; any other message is sent to every subscriber
with websockets.broadcast (the library's own fan-out helper).

    python bench/peers/websockets_broadcast.py --port 9000
"""

import argparse
import asyncio
import resource
import sys

from websockets.asyncio.server import broadcast, serve
from websockets.exceptions import ConnectionClosed

SUBSCRIBERS = set()


async def handler(ws):
    try:
        async for message in ws:
            if message == "sub":
                SUBSCRIBERS.add(ws)
                await ws.send("subscribed")
            else:
                broadcast(SUBSCRIBERS, message)
    except ConnectionClosed:
        pass
    finally:
        SUBSCRIBERS.discard(ws)


async def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--compression", choices=("deflate", "none"), default="none",
                   help="permessage-deflate: websockets' default ('deflate': window 12 bits, memLevel 5, context takeover) or off")
    a = p.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    async with serve(handler, "127.0.0.1", a.port, ping_interval=None, backlog=4096, max_queue=None,
                     compression=None if a.compression == "none" else "deflate"):
        print(f"websockets broadcast listening on 127.0.0.1:{a.port}", file=sys.stderr, flush=True)
        await asyncio.get_running_loop().create_future()


if __name__ == "__main__":
    asyncio.run(main())
