"""
A process of many WebSocket peers for the heartbeat's integration tests:
each opens a connection to 127.0.0.1:PORT and answers every ping with its
pong at once, except the first FROZEN ones, which answer nothing (a peer
that died without a word); the CHATTY ones after those also send 200 text
messages "work" in one write right after each pong (a burst of load for a
handler that works on them, read by the server in one go, just after it
sent a round of pings).  Prints
"ready N" when all are open, then runs until its standard input closes or
LIMIT seconds pass; prints "closed I CODE" for each connection the server
closes.  With DELAY, every answer (a pong, and the chatty ones' burst after
it) leaves DELAY seconds after its ping came, as over a network: pongs are
always in flight somewhere, so some land while the server is busy.

    python tests/pingpeers.py PORT COUNT FROZEN CHATTY LIMIT [DELAY]

Its own minimal client on asyncio (masked frames, no extensions), so that
it stays fast at hundreds of connections and never depends on wsheart.
"""

from __future__ import annotations

import asyncio
import base64
import os
import sys


async def peer(
    index: int, port: int, frozen: bool, chatty: bool, opened: asyncio.Event, counter: list[int], total: int, delay: float
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        print(f"refused {index}", flush=True)
        return
    counter[0] += 1
    if counter[0] == total:
        opened.set()
    mask = os.urandom(4)
    burst = (bytes((0x81, 0x80 | 4)) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(b"work"))) * 200
    try:
        while True:
            first, second = await reader.readexactly(2)
            length = second & 0x7F
            if length == 126:
                length = int.from_bytes(await reader.readexactly(2), "big")
            elif length == 127:
                length = int.from_bytes(await reader.readexactly(8), "big")
            payload = await reader.readexactly(length)
            opcode = first & 0x0F
            if opcode == 0x9 and not frozen:
                mask = os.urandom(4)
                masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
                answer = bytes((0x8A, 0x80 | len(payload))) + mask + masked
                if chatty and opened.is_set():
                    answer += burst
                if delay:
                    asyncio.get_running_loop().call_later(delay, send_unless_closed, writer, answer)
                else:
                    writer.write(answer)
            elif opcode == 0x8:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                print(f"closed {index} {code}", flush=True)
                writer.close()
                return
    except (asyncio.IncompleteReadError, ConnectionError):
        print(f"closed {index} 1006", flush=True)


def send_unless_closed(writer: asyncio.StreamWriter, data: bytes) -> None:
    if not writer.is_closing():
        writer.write(data)


async def main() -> None:
    port, count, frozen, chatty = (int(a) for a in sys.argv[1:5])
    limit = float(sys.argv[5])
    delay = float(sys.argv[6]) if len(sys.argv) > 6 else 0.0
    opened = asyncio.Event()
    counter = [0]
    tasks = [
        asyncio.ensure_future(peer(i, port, i < frozen, frozen <= i < frozen + chatty, opened, counter, count, delay))
        for i in range(count)
    ]
    await asyncio.wait_for(opened.wait(), timeout=limit)
    print(f"ready {count}", flush=True)
    loop = asyncio.get_running_loop()
    stdin_closed = loop.run_in_executor(None, sys.stdin.read)
    await asyncio.wait([asyncio.ensure_future(asyncio.wait_for(stdin_closed, timeout=limit))], timeout=limit)
    for task in tasks:
        task.cancel()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except (asyncio.TimeoutError, KeyboardInterrupt):
        pass
    os._exit(0)
