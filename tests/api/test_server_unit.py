"""The API server's own behaviour (socket file, framing, limits, streaming) with a stand-in daemon.

Methods and authorisation end to end are tested against the real daemon in the other test files.
"""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import struct

import pytest
from sdd_client import protocol
from sdd_client.client import AsyncClient
from sdd_client.errors import ApiError

from sdd.api import AlreadyRunning, ApiServer, SocketError
from sdd.hub import socket_frame

from .fakes import fake_daemon


@pytest.fixture
async def server(tmp_path):
    daemon = fake_daemon(tmp_path)
    srv = ApiServer(daemon)
    await srv.start()
    yield srv
    await srv.close()


async def _raw(path):
    return await asyncio.open_unix_connection(str(path))


async def _reply(reader):
    return await asyncio.wait_for(protocol.read_message(reader, max_depth=protocol.REPLY_MAX_DEPTH), 10)


async def test_socket_has_configured_mode_and_is_removed_on_close(tmp_path):
    daemon = fake_daemon(tmp_path, socket_mode="0640")
    srv = ApiServer(daemon)
    await srv.start()
    path = daemon.config.paths.socket
    st = os.lstat(path)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".sdd-bind-")]
    await srv.close()
    assert not path.exists()


async def test_socket_gets_the_configured_group(tmp_path):
    daemon = fake_daemon(tmp_path, socket_group="users")
    srv = ApiServer(daemon)
    await srv.start()
    try:
        import grp
        assert os.lstat(daemon.config.paths.socket).st_gid == grp.getgrnam("users").gr_gid
    finally:
        await srv.close()


async def test_stale_socket_is_replaced(tmp_path):
    daemon = fake_daemon(tmp_path)
    path = daemon.config.paths.socket
    path.parent.mkdir(parents=True)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # bound, never listening: connect() is refused
    srv = ApiServer(daemon)
    await srv.start()
    try:
        async with AsyncClient(path) as client:
            assert await client.call("ping") == {"pong": True}
    finally:
        await srv.close()


async def test_second_server_on_a_live_socket_refuses_to_start(server, tmp_path):
    other = ApiServer(fake_daemon(tmp_path))
    with pytest.raises(AlreadyRunning):
        await other.start()
    async with AsyncClient(server.config.paths.socket) as client:
        assert await client.call("ping") == {"pong": True}


async def test_live_daemon_without_lock_file_is_detected_by_ping(server, tmp_path):
    from sdd.api import listener
    assert listener.answers_ping(server.config.paths.socket)


async def test_a_regular_file_at_the_socket_path_is_not_replaced(tmp_path):
    daemon = fake_daemon(tmp_path)
    path = daemon.config.paths.socket
    path.parent.mkdir(parents=True)
    path.write_text("precious")
    with pytest.raises(SocketError, match="not a socket"):
        await ApiServer(daemon).start()
    assert path.read_text() == "precious"


async def test_inherited_listening_socket_is_used_instead_of_binding(tmp_path):
    daemon = fake_daemon(tmp_path)
    path = tmp_path / "activated.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(16)
    srv = ApiServer(daemon, listen_fd=sock.detach())
    await srv.start()
    try:
        async with AsyncClient(path) as client:
            assert await client.call("ping") == {"pong": True}
        assert not daemon.config.paths.socket.exists()
    finally:
        await srv.close()


@pytest.mark.parametrize("frame, code", [
    (struct.pack(">I", 0xFFFFFFFF), "bad_frame"),
    (struct.pack(">I", protocol.MAX_FRAME + 1), "bad_frame"),
    (struct.pack(">I", 0), "bad_frame"),
    (struct.pack(">I", 3) + b"\x93\x01\x02\x03", "bad_frame"),  # an array, not a map (and one byte too many)
    (struct.pack(">I", 2) + b"\x92\x01", "bad_frame"),
    (protocol.encode({"id": 1, "method": "x", "params": {"a": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}}),
     "bad_frame"),
    (protocol.encode({"id": 5, "method": "no.such.method"}), "unknown_method"),
    (protocol.encode({"id": 5, "method": 12}), "bad_frame"),
])
async def test_malformed_frame_gets_an_error_reply_then_the_connection_closes(server, frame, code):
    reader, writer = await _raw(server.config.paths.socket)
    writer.write(frame)
    await writer.drain()
    reply = await _reply(reader)
    assert reply["error"]["code"] == code
    assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the server
    writer.close()
    async with AsyncClient(server.config.paths.socket) as client:
        assert (await client.call("status"))["state"] == "running"


async def test_truncated_frame_closes_the_connection_and_others_carry_on(server):
    path = server.config.paths.socket
    async with AsyncClient(path) as bystander:
        reader, writer = await _raw(path)
        writer.write(protocol.encode({"id": 1, "method": "ping"})[:-2])
        writer.write_eof()
        reply = await _reply(reader)
        assert reply is None or reply["error"]["code"] == "bad_frame"
        writer.close()
        assert await bystander.call("ping") == {"pong": True}


async def test_pipelined_requests_are_answered_in_order(server):
    reader, writer = await _raw(server.config.paths.socket)
    writer.write(b"".join(protocol.encode(protocol.request(i, "ping")) for i in range(1, 21)))
    await writer.drain()
    ids = [(await _reply(reader))["id"] for _ in range(20)]
    assert ids == list(range(1, 21))
    writer.close()


async def test_unknown_params_are_refused_naming_the_field(server):
    async with AsyncClient(server.config.paths.socket) as client:
        with pytest.raises(ApiError) as err:
            await client.call("status", verbose=True)
    assert err.value.code == "invalid_params" and "verbose" in err.value.message


async def test_refused_state_changing_call_is_audited_with_the_caller_uid(tmp_path):
    daemon = fake_daemon(tmp_path)
    srv = ApiServer(daemon)
    await srv.start()
    try:
        async with AsyncClient(daemon.config.paths.socket) as client:
            assert (await client.call("reload"))["ok"] is True
            with pytest.raises(ApiError) as err:
                await client.call("runs.cancel", run_id="nope")
            assert err.value.code == "not_found"
    finally:
        await srv.close()
    assert [(a["action"], a["actor"], a["outcome"], a["target"]) for a in daemon.store.audits] == [
        ("api.runs.cancel", f"uid:{os.getuid()}", "refused:not_found", "nope")]


async def test_idle_connection_is_closed_but_subscriber_is_not(tmp_path):
    daemon = fake_daemon(tmp_path, idle_timeout=0.2)
    srv = ApiServer(daemon)
    await srv.start()
    try:
        path = daemon.config.paths.socket
        idle_reader, idle_writer = await _raw(path)
        sub_reader, sub_writer = await _raw(path)
        sub_writer.write(protocol.encode(protocol.request(1, "subscribe")))
        assert (await _reply(sub_reader))["result"] == {"subscribed": True}
        assert await asyncio.wait_for(idle_reader.read(), 10) == b""  # the idle one was closed
        daemon.hub.publish("run.started", {"run_id": "r1"})
        assert await _reply(sub_reader) == {"event": "run.started", "data": {"run_id": "r1"}}
        idle_writer.close()
        sub_writer.close()
    finally:
        await srv.close()


async def test_connections_over_the_cap_get_busy(tmp_path):
    daemon = fake_daemon(tmp_path, max_connections=2)
    srv = ApiServer(daemon)
    srv.unlimited_uids = frozenset()  # whoever runs the tests is held to the cap, root too
    await srv.start()
    try:
        path = daemon.config.paths.socket
        async with AsyncClient(path) as a, AsyncClient(path) as b:
            assert await a.call("ping") == await b.call("ping") == {"pong": True}
            with pytest.raises(ApiError) as err:
                async with AsyncClient(path) as c:
                    await c.call("ping")
            assert err.value.code == "busy"
        async with AsyncClient(path) as c:  # room again once the others left
            for _ in range(100):
                try:
                    assert await c.call("ping") == {"pong": True}
                    break
                except ApiError:
                    await c.close()
                    await asyncio.sleep(0.01)
    finally:
        await srv.close()


async def _open(path, n):
    clients = []
    for _ in range(n):
        c = AsyncClient(path)
        await c.connect()
        assert await c.call("ping") == {"pong": True}
        clients.append(c)
    return clients


async def test_one_user_cannot_take_every_connection(tmp_path):
    """A local user's runaway clients get `busy` at api.max_connections_per_uid, leaving room for others."""
    daemon = fake_daemon(tmp_path, max_connections=10, max_connections_per_uid=3)
    srv = ApiServer(daemon)
    srv.unlimited_uids = frozenset()
    await srv.start()
    path = daemon.config.paths.socket
    clients = await _open(path, 3)
    try:
        with pytest.raises(ApiError) as err:
            async with AsyncClient(path) as extra:
                await extra.call("ping")
        assert err.value.code == "busy"
        assert f"too many connections from uid {os.geteuid()} (api.max_connections_per_uid = 3)" in str(err.value)
        assert srv.connection_count == 3
        await clients.pop().close()
        for _ in range(200):  # the server notices the close on its own time
            if srv.connection_count == 2:
                break
            await asyncio.sleep(0.01)
        clients += await _open(path, 1)  # room again for this user
    finally:
        for c in clients:
            await c.close()
        await srv.close()


async def test_root_gets_in_beyond_the_caps(tmp_path):
    """However many connections others hold, an unlimited uid (root) has a reserve of its own."""
    from sdd.api.server import RESERVED_FOR_ROOT

    daemon = fake_daemon(tmp_path, max_connections=2, max_connections_per_uid=1)
    srv = ApiServer(daemon)
    srv.unlimited_uids = frozenset({os.geteuid()})
    await srv.start()
    path = daemon.config.paths.socket
    clients = await _open(path, 2 + RESERVED_FOR_ROOT)  # past both the per-uid and the total cap
    try:
        with pytest.raises(ApiError) as err:
            async with AsyncClient(path) as extra:
                await extra.call("ping")
        assert err.value.code == "busy" and "api.max_connections = 2" in str(err.value)
    finally:
        for c in clients:
            await c.close()
        await srv.close()


async def test_slow_subscriber_gets_lagged_and_never_blocks_publishing(server):
    daemon = server.daemon
    reader, writer = await _raw(server.config.paths.socket)
    writer.write(protocol.encode(protocol.request(1, "subscribe", {"queue": 10})))
    assert (await _reply(reader))["result"] == {"subscribed": True}
    for i in range(50_000):  # the client reads nothing meanwhile; publish never waits
        daemon.hub.publish("step.finished", {"run_id": "r", "step_id": str(i), "pad": "x" * 100})
    events = []
    while True:
        message = await _reply(reader)
        events.append(message["event"])
        if message["event"] == "lagged":
            assert message["data"]["missed"] > 0
            break
    assert "lagged" in events
    writer.close()


async def test_subscribe_can_filter_event_names(server):
    async with AsyncClient(server.config.paths.socket) as client:
        stream = await client.subscribe(["run.finished"]).open()
        first = asyncio.ensure_future(stream.__anext__())
        server.daemon.hub.publish("run.started", {"run_id": "a"})
        server.daemon.hub.publish("run.finished", {"run_id": "a", "status": "completed"})
        event = await asyncio.wait_for(first, 10)
        assert event.name == "run.finished" and event.data["status"] == "completed"
        await stream.aclose()


async def _subscribed(server, params=None):
    reader, writer = await _raw(server.config.paths.socket)
    writer.write(protocol.encode(protocol.request(1, "subscribe", params or {})))
    assert (await _reply(reader))["result"] == {"subscribed": True}
    return reader, writer


async def test_two_subscribers_receive_identical_bytes_encoded_once_per_event(server):
    hub = server.daemon.hub
    calls = []

    def encoder(name, data):
        calls.append(name)
        return socket_frame(name, data)

    hub.encoder = encoder
    (ra, wa), (rb, wb) = await _subscribed(server), await _subscribed(server)
    expected = b"".join(socket_frame("step.finished", {"run_id": "r", "step_id": str(i)}) for i in range(200))
    for i in range(200):
        hub.publish("step.finished", {"run_id": "r", "step_id": str(i)})
    got_a = await asyncio.wait_for(ra.readexactly(len(expected)), 10)
    got_b = await asyncio.wait_for(rb.readexactly(len(expected)), 10)
    assert got_a == got_b == expected
    assert len(calls) == 200  # once per event, not once per subscriber
    wa.close()
    wb.close()


async def test_a_filtered_subscriber_costs_nothing_for_the_kinds_it_did_not_ask_for(server):
    hub = server.daemon.hub
    reader, writer = await _subscribed(server, {"events": ["run.finished"]})
    (sub,) = hub._subscribers
    for i in range(1000):
        hub.publish("step.finished", {"run_id": "r", "step_id": str(i)})
    assert sub.offered == 0 and not hub.wants("step.finished")
    hub.publish("run.finished", {"run_id": "r", "status": "completed"})
    message = await _reply(reader)
    assert message == {"event": "run.finished", "data": {"run_id": "r", "status": "completed"}}
    assert sub.offered == 1
    writer.close()


async def test_socket_directory_writable_by_others_is_refused(tmp_path):
    daemon = fake_daemon(tmp_path)
    parent = daemon.config.paths.socket.parent
    parent.mkdir()
    os.chmod(parent, 0o777)
    with pytest.raises(SocketError, match="writable by others"):
        await ApiServer(daemon).start()


async def test_socket_directory_that_is_a_symlink_is_refused(tmp_path):
    daemon = fake_daemon(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    daemon.config.paths.socket.parent.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(SocketError, match="not a directory"):
        await ApiServer(daemon).start()


async def test_client_that_never_reads_replies_is_closed(tmp_path):
    daemon = fake_daemon(tmp_path, idle_timeout=0.3)
    srv = ApiServer(daemon)
    await srv.start()
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(str(daemon.config.paths.socket))
        sock.setblocking(False)
        frame = protocol.encode(protocol.request(1, "status"))
        loop = asyncio.get_running_loop()
        try:  # pipeline requests without ever reading; the server must give up on us
            deadline = loop.time() + 60
            while loop.time() < deadline:
                try:
                    sock.send(frame)
                except BlockingIOError:
                    await asyncio.sleep(0.05)
        except (BrokenPipeError, ConnectionResetError):
            pass
        else:
            pytest.fail("the server kept a connection that never reads its replies")
        finally:
            sock.close()
        async with AsyncClient(daemon.config.paths.socket) as client:
            assert await client.call("ping") == {"pong": True}
    finally:
        await srv.close()


async def test_async_client_reconnects_after_the_idle_timeout(tmp_path):
    daemon = fake_daemon(tmp_path, idle_timeout=0.2)
    srv = ApiServer(daemon)
    await srv.start()
    try:
        async with AsyncClient(daemon.config.paths.socket) as client:
            assert await client.call("ping") == {"pong": True}
            for _ in range(500):  # wait until the server has dropped the idle connection
                if srv.connection_count == 0 and client._reader.at_eof():
                    break
                await asyncio.sleep(0.01)
            assert client._reader.at_eof()
            assert await client.call("ping") == {"pong": True}
    finally:
        await srv.close()
