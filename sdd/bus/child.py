"""The D-Bus bridge process: `python -P -m sdd.bus.child --fd N --bus SPEC`, started by the daemon (process.py).

It runs `BusBridge` on a hub of its own and feeds that hub from the socket it was given: hub event frames
(`{"event", "data"}`, the socket API's own frames), property values (`{"props": ...}`, the values the bridge
serves and compares for PropertiesChanged) and a final `{"stop": seconds}`. It reports its connection on
the same socket (`{"report": ...}`) whenever that changes, the first time after its first connection
attempt. SIGINT and SIGTERM are ignored: the daemon decides when the bridge stops, after its last words; the
end of the socket (the daemon gone) stops it too.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket
import sys
from typing import Any

import msgpack
from sdd_client import protocol

from sdd import hub as hub_events
from sdd.hub import EventHub
from sdd.logging import setup_logging

from .bridge import BusBridge

log = logging.getLogger("sdd.bus")

MAX_DEPTH = 8  # (the first message's check; see _decode)
READ_CHUNK = 256 * 1024
# The bridge's queue here. One read can bring several of the daemon's batches (up to 1,024 events each) when
# this process fell behind; the reads pause while half of it is taken, so the socket pushes back on the
# daemon, whose own queue then drops with a `lagged` count, as it would for a bridge inside the daemon.
QUEUE = 16_384
_unpackb = msgpack.unpackb


def _decode(payload: bytes) -> dict[str, Any]:
    """One frame from the daemon. Its only writer is the daemon, over a socketpair nobody else holds, so the
    API's checks for hostile clients (its size and nesting limits, `protocol.decode`) are not repeated here;
    msgpack's own limits still bound every item by the frame's length, and what is not a map ends the bridge
    (a ValueError), not the daemon."""
    message = _unpackb(payload, raw=False, strict_map_key=True, max_ext_len=0)
    if type(message) is not dict:
        raise ValueError(f"a frame from the daemon is not a map but {type(message).__name__}")
    return message


async def serve(fd: int, bus_spec: str) -> int:
    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    hub = EventHub()
    props: dict[str, Any] = {}
    bridge: BusBridge | None = None
    started = False

    def report() -> None:
        if bridge is None or writer.is_closing():
            return
        writer.write(protocol.encode({"report": {**bridge.info(), "sent_signals": bridge.sent_signals,
                                                 "first_attempt": started}}))

    bridge = BusBridge(hub, lambda: props, bus_spec, on_change=report, queue_size=QUEUE)
    drain_timeout, stopping = 1.0, False
    try:
        first = await protocol.read_message(reader, max_depth=MAX_DEPTH)  # the values to serve from the start
        if first is None:
            return 0
        if isinstance(first.get("props"), dict):
            props.update(first["props"])
        await bridge.start()
        started = True
        report()
        frames = protocol.FrameBuffer()
        # One read takes a whole batch of frames (the daemon writes a batch at a time).
        while not stopping and (chunk := await reader.read(READ_CHUNK)):
            frames.feed(chunk)
            while (payload := frames.payload()) is not None:
                message = _decode(payload)
                name = message.get("event")
                if name is not None:
                    data = message.get("data")
                    if isinstance(name, str) and isinstance(data, dict):
                        hub.publish(name, data)
                elif isinstance(message.get("props"), dict):
                    props.clear()
                    props.update(message["props"])
                    hub.publish(hub_events.STATUS_CHANGED, {})  # (schedules the coalesced PropertiesChanged check)
                elif "stop" in message:
                    drain_timeout, stopping = float(message["stop"]), True
                    break
            while bridge.queued > QUEUE // 2:
                await asyncio.sleep(0.001)
    except (ConnectionError, protocol.ProtocolError, ValueError, TypeError) as exc:
        log.error("D-Bus: the bridge process cannot read the daemon's socket: %s", exc)
    finally:
        await bridge.stop(drain_timeout)
        report()
        try:
            await asyncio.wait_for(writer.drain(), 1.0)
        except (ConnectionError, TimeoutError):
            pass
        writer.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sdd.bus.child", description=__doc__)
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--bus", required=True)
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--log-target", default="auto")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    setup_logging(args.log_level, args.log_target)
    return asyncio.run(serve(args.fd, args.bus))


if __name__ == "__main__":
    sys.exit(main())
