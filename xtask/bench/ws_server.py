"""A websockets echo server for `cargo xtask bench --only busy`: answers every message
with "pong". SO_REUSEPORT, so a successor can bind the same port; no graceful stop of
its own (SIGTERM ends the process and the kernel cuts its connections).

usage: ws_server.py PORT
"""
import asyncio
import sys

import websockets


async def handler(ws):
    try:
        async for _ in ws:
            await ws.send("pong")
    except websockets.ConnectionClosed:
        pass


async def main(port):
    async with websockets.serve(
        handler, "127.0.0.1", port, ping_interval=None, reuse_port=True
    ):
        print("listening", flush=True)
        await asyncio.Future()


asyncio.run(main(int(sys.argv[1])))
