"""`sdd-fleet`: the few NATS operations a fleet's centre needs, with nats-py (Debian has no `nats` CLI).

    sdd-fleet add-stream SDD 'sdd.events.>'                 # the events stream (idempotent)
    sdd-fleet add-stream SDD_DETECTIONS 'sdd.detections.>'  # the pushed-detections stream
    sdd-fleet tail SDD [--count N] [--json]                 # every host's events, from the start
    sdd-fleet push HOST '{"type": "malware", ...}'          # send one host a detection

`--server` (default `$NATS_URL`, else nats://127.0.0.1:4222) and `--creds FILE` pick the server. Exit status:
0 done, 1 failed (the reason on stderr), 2 usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from sdd_client.detection import parse_json
from sdd_client.output import safe

from .nats_link import host_token

MAX_FIELD = 4096  # characters of one field of a `tail` line


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sdd-fleet", description="NATS JetStream helpers for an sdd fleet.")
    p.add_argument("--server", default=os.environ.get("NATS_URL", "nats://127.0.0.1:4222"),
                   help="NATS server URL (default: $NATS_URL, else nats://127.0.0.1:4222)")
    p.add_argument("--creds", default="", help="a NATS .creds file")
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("add-stream", help="create (or update) a file-backed stream")
    a.add_argument("name")
    a.add_argument("subjects", nargs="+")
    a.add_argument("--duplicate-window", type=float, default=120.0,
                   help="seconds within which a repeated Nats-Msg-Id is dropped (default 120)")
    t = sub.add_parser("tail", help="print a stream's events from its first message")
    t.add_argument("stream")
    t.add_argument("--count", type=int, default=0, help="stop after N events (default: follow until Ctrl-C)")
    t.add_argument("--timeout", type=float, default=0.0, help="with --count: give up after S seconds (exit 1)")
    t.add_argument("--json", action="store_true", help="print each event as JSON, one object per line")
    u = sub.add_parser("push", help="publish one detection (the spool's JSON model) to a host's subject")
    u.add_argument("host")
    u.add_argument("detection", help="the detection as JSON")
    u.add_argument("--subject", default="sdd.detections.{host}", help="default: sdd.detections.{host}")
    return p


async def _connect(args: argparse.Namespace) -> Any:
    import nats

    options: dict[str, Any] = {"servers": [args.server], "connect_timeout": 5}
    if args.creds:
        options["user_credentials"] = args.creds
    return await nats.connect(**options)


def event_of(data: bytes) -> dict[str, Any]:
    """A stream's message as an event. Every host of the fleet publishes to the stream, and a compromised one
    publishes what it likes: what is not strict JSON holding an object (`[[[[…` raised RecursionError here)
    becomes `{"message": its first 200 characters}`."""
    try:
        event = parse_json(data.decode("utf-8"))
    except ValueError:
        event = None
    return event if isinstance(event, dict) else {"message": data[:200].decode("utf-8", "replace")}


def line(event: dict[str, Any], subject: str) -> str:
    """One human line per event: host, class and activity, status, what it says; tab-separated, each field
    printable text (another host's event cannot write escape sequences to the terminal, nor a line of its
    own), whatever its type."""
    device = event.get("device")
    host = (device.get("hostname") if isinstance(device, dict) else None) or subject.rsplit(".", 1)[-1]
    what = event.get("type_name") or f"{event.get('class_uid')}:{event.get('activity_id')}"
    fields = (host, what, event.get("status") or "", event.get("message", ""))
    return "\t".join(safe(field, MAX_FIELD) for field in fields)


async def _run(args: argparse.Namespace) -> int:
    from nats.js.api import StreamConfig

    nc = await _connect(args)
    try:
        js = nc.jetstream()
        if args.command == "add-stream":
            config = StreamConfig(name=args.name, subjects=args.subjects, duplicate_window=args.duplicate_window)
            try:
                await js.add_stream(config)
            except Exception:  # noqa: BLE001 -- it exists with another config: update it
                await js.update_stream(config)
            print(f"stream {args.name}: {' '.join(args.subjects)}")
            return 0
        if args.command == "push":
            data = json.loads(args.detection)
            if not isinstance(data, dict):
                raise ValueError("the detection must be a JSON object")
            subject = args.subject.replace("{host}", host_token(args.host))
            ack = await js.publish(subject, json.dumps(data).encode())
            print(f"pushed to {subject} (stream {ack.stream}, seq {ack.seq})")
            return 0
        return await _tail(js, args)
    finally:
        await nc.close()


async def _tail(js: Any, args: argparse.Namespace) -> int:
    from nats.js.api import DeliverPolicy

    sub = await js.subscribe(">", stream=args.stream, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
    seen = 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + args.timeout if args.timeout else None
    while not args.count or seen < args.count:
        wait = None if deadline is None else max(0.0, deadline - loop.time())
        try:
            msg = await sub.next_msg(timeout=wait if wait is not None else 3600)
        except TimeoutError:
            if deadline is not None:
                print(f"sdd-fleet: {seen} of {args.count} events within {args.timeout:g}s", file=sys.stderr)
                return 1
            continue
        seen += 1
        event = event_of(msg.data)
        # --json: one line per event, ASCII (escapes for the rest), so that no message can split or forge lines
        print(json.dumps(event, ensure_ascii=True) if args.json else line(event, msg.subject), flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return asyncio.run(_run(args))
    except KeyboardInterrupt:
        return 0
    except ImportError:
        print("sdd-fleet: needs nats-py (pip install 'sdd[fleet]')", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 -- one line, not a traceback
        print(f"sdd-fleet: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
