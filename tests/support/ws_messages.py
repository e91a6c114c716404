"""A websockets server for tests/integrity.rs: answers every client message with the
messages of MESSAGES, in order, each its own frame (and write). Some are shaped like
HTTP responses, some like other websocket frames, some are binary.

usage: ws_messages.py PORT
"""
import asyncio
import sys

import websockets

MESSAGES = [
    "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"\x82\x03abc",
    b"\x88\x02\x03\xe9",
    "pong",
    b"\x82\x03\x62ab",
]


async def handler(ws):
    try:
        async for _ in ws:
            for message in MESSAGES:
                await ws.send(message)
    except websockets.ConnectionClosed:
        pass


async def main(port):
    async with websockets.serve(
        handler, "127.0.0.1", port, ping_interval=None, compression=None
    ):
        print("listening", flush=True)
        await asyncio.Future()


asyncio.run(main(int(sys.argv[1])))
