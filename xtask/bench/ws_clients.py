"""A fleet of websocket clients with heartbeats for `cargo xtask bench --only busy`: each
client sends "ping" every INTERVAL seconds and waits for the answer; a closed connection
is reopened (to whichever server accepts it). Runs until SIGINT or SIGTERM (or MAX
seconds), then prints one JSON line: pings sent, answered, and lost (sent on a
connection that closed before the answer), and how the connections closed (websocket
close codes; 1006 is a bare close without a close frame).

usage: ws_clients.py PORT CLIENTS INTERVAL MAX
"""
import asyncio
import collections
import json
import signal
import sys

import websockets

PORT, CLIENTS, INTERVAL, MAX = (
    int(sys.argv[1]),
    int(sys.argv[2]),
    float(sys.argv[3]),
    float(sys.argv[4]),
)
stats = collections.Counter()
closes = collections.Counter()


async def client(i, stop):
    await asyncio.sleep(i * INTERVAL / CLIENTS)
    while not stop.is_set():
        try:
            async with websockets.connect(
                f"ws://127.0.0.1:{PORT}", ping_interval=None
            ) as ws:
                while not stop.is_set():
                    await ws.send("ping")
                    stats["sent"] += 1
                    try:
                        await ws.recv()
                    except websockets.ConnectionClosed:
                        stats["lost"] += 1
                        raise
                    stats["answered"] += 1
                    await asyncio.sleep(INTERVAL)
        except websockets.ConnectionClosed as e:
            closes[str(e.rcvd.code if e.rcvd else 1006)] += 1
        except OSError as e:
            closes[f"oserror {e.errno}"] += 1
            await asyncio.sleep(0.1)


async def main():
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.call_later(MAX, stop.set)
    await asyncio.gather(*(client(i, stop) for i in range(CLIENTS)))
    print(json.dumps({**stats, "closes": closes}), flush=True)


asyncio.run(main())
