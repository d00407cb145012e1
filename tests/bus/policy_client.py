"""Run as an unprivileged user by test_policy.py: probes what the policy lets a non-root client do on the
bus, printing one JSON object per line. Imports only dbus-next (not sdd): it runs as `nobody`.

usage: python policy_client.py ADDRESS
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

from dbus_next import Message, MessageType, Variant
from dbus_next.aio import MessageBus

NAME = "org.searchanddestroy.Sdd1"
PATH = "/org/searchanddestroy/Sdd1"


def out(**kw: object) -> None:
    print(json.dumps(kw), flush=True)


def outcome(reply: Message | None) -> str:
    if reply is None:
        return "no-reply"
    if reply.message_type is MessageType.ERROR:
        return f"error:{reply.error_name}"
    return "ok"


async def main(address: str) -> int:
    bus = await MessageBus(bus_address=address).connect()
    bus._disconnect_future.add_done_callback(lambda f: f.cancelled() or f.exception())
    out(uid=os.getuid(), gid=os.getgid())

    def dbus(member: str, signature: str = "", body: list[object] | None = None) -> Message:
        return Message(
            destination="org.freedesktop.DBus",
            path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus",
            member=member,
            signature=signature,
            body=body or [],
        )

    def props(member: str, signature: str, body: list[object]) -> Message:
        return Message(
            destination=NAME,
            path=PATH,
            interface="org.freedesktop.DBus.Properties",
            member=member,
            signature=signature,
            body=body,
        )

    out(own=outcome(await bus.call(dbus("RequestName", "su", [NAME, 4]))))  # 4 = DO_NOT_QUEUE
    reply = await bus.call(props("GetAll", "s", [NAME]))
    out(getall=outcome(reply), values={k: v.value for k, v in reply.body[0].items()} if outcome(reply) == "ok" else None)
    reply = await bus.call(props("Get", "ss", [NAME, "Version"]))
    out(get=outcome(reply), version=reply.body[0].value if outcome(reply) == "ok" else None)
    out(set=outcome(await bus.call(props("Set", "ssv", [NAME, "State", Variant("s", "hacked")]))))
    out(
        introspect=outcome(
            await bus.call(
                Message(destination=NAME, path=PATH, interface="org.freedesktop.DBus.Introspectable",
                        member="Introspect")
            )
        )
    )
    out(
        other_method=outcome(
            await bus.call(Message(destination=NAME, path=PATH, interface=NAME, member="Shutdown"))
        )
    )

    got: asyncio.Future[list[object]] = asyncio.get_running_loop().create_future()

    def on_message(msg: Message) -> None:
        if msg.message_type is MessageType.SIGNAL and msg.member == "RunFinished" and not got.done():
            got.set_result(msg.body)

    bus.add_message_handler(on_message)
    await bus.call(dbus("AddMatch", "s", [f"type='signal',sender='{NAME}',interface='{NAME}'"]))
    out(ready=True)
    try:
        out(signal=await asyncio.wait_for(got, 20))
    except TimeoutError:
        out(signal=None)
    bus.disconnect()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1])))
