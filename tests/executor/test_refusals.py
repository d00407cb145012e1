"""Hostile requests sent straight to the executor's socket: each refused with a reason, nothing touched;
and the positive controls that show the same requests, honest, do what they say."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import psutil
import pytest
from sdd_client.protocol import HEADER

from ..actions.procs import NOBODY, SYSTEM_PYTHON, Procs, as_user, needs_other_user
from .conftest import Box

EVIL = b"MZ pretend malware " * 100


def evil(box: Box, name: str = "evil.exe") -> Path:
    path = box.root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(EVIL)
    return path


def error(msg: dict) -> tuple[str, str]:
    assert "error" in msg, msg
    return msg["error"]["code"], msg["error"]["message"]


@needs_other_user
async def test_a_connection_from_another_uid_is_refused_before_any_request(box: Box) -> None:
    code = ("import socket, struct, sys\n"
            "s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
            "n = struct.unpack('>I', s.recv(4, socket.MSG_WAITALL))[0]; body = s.recv(n, socket.MSG_WAITALL)\n"
            "print(body); print(repr(s.recv(1)))\n")
    child = await asyncio.create_subprocess_exec(*as_user([SYSTEM_PYTHON, "-c", code, str(box.socket)], NOBODY),
                                                 stdout=asyncio.subprocess.PIPE)
    data, _ = await asyncio.wait_for(child.communicate(), 30)
    assert child.returncode == 0
    out = data.decode()
    assert "forbidden" in out and f"uid {NOBODY} may not use the executor" in out
    assert out.rstrip().endswith("b''")  # and the connection is closed


async def test_an_oversized_frame_is_refused_and_the_connection_closed(box: Box) -> None:
    raw = await box.connect()
    raw.writer.write(HEADER.pack(10 * 1024 * 1024))
    code, message = error(await raw.recv())
    assert code == "bad_frame" and "exceeds" in message
    assert await raw.recv() is None
    await raw.close()


@pytest.mark.parametrize("message, reason", [
    ({"op": "quarantine", "args": {"path": "/x"}}, "id must be a positive integer"),
    ({"id": True, "op": "quarantine", "args": {"path": "/x"}}, "id must be a positive integer"),
    ({"id": 1, "op": "format_disk", "args": {}}, "unknown op"),
    ({"id": 1, "op": "quarantine", "args": {"path": "/x"}, "sudo": True}, "unknown message field"),
    ({"id": 1, "op": "quarantine", "args": {"path": "/x", "vault": "/etc"}}, "unknown field(s): vault"),
    ({"id": 1, "op": "quarantine", "args": {}}, "quarantine.path: required"),
    ({"id": 1, "op": "quarantine", "args": {"path": 7}}, "expected str, got int"),
    ({"id": 1, "op": "quarantine", "args": {"path": "/x\0y"}}, "NUL"),
    ({"id": 1, "op": "quarantine", "args": {"path": "/" + "a" * 5000}}, "longer than 4096"),
    ({"id": 1, "op": "quarantine", "args": {"path": "/x", "hints": ["../../etc"]}}, "quarantine ids"),
    ({"id": 1, "op": "kill", "args": {"pid": "1"}}, "expected int, got str"),
    ({"id": 1, "op": "kill", "args": {"pid": True}}, "got bool"),
    ({"id": 1, "op": "kill", "args": {"pid": 2**40}}, "out of range"),
    ({"id": 1, "op": "kill", "args": {"pid": 5, "start_time": float("nan")}}, "out of range"),
    ({"id": 1, "op": "restore", "args": {"quarantine_id": "../../etc/passwd"}}, "32 hexadecimal digits"),
    ({"id": 1, "op": "restore", "args": {"quarantine_id": "0" * 32, "on_conflict": "clobber"}}, "one of"),
    ({"id": 1, "op": "restore", "args": {"quarantine_id": "0" * 32, "force": 1}}, "expected bool"),
    ({"id": 1, "op": "delete", "args": ["/x"]}, "args must be a map"),
])
async def test_a_malformed_request_is_refused_with_its_reason(box: Box, message: dict, reason: str) -> None:
    raw = await box.connect()
    raw.send(message)
    code, text = error(await raw.recv())
    assert code == "invalid_params" and reason in text
    # The connection stays usable: a well-formed request after it is answered.
    code, text = error(await raw.call("lookup", path=str(box.root / "nothing")))
    assert code == "not_found" and "nothing from" in text
    await raw.close()
    assert os.listdir(box.root) == []


@pytest.mark.parametrize("op", ["quarantine", "delete"])
@pytest.mark.parametrize("where, reason", [
    ("outside", "outside the allowed roots"), ("relative", "absolute path"), ("dotdot", "'..'")])
async def test_a_path_outside_the_roots_is_refused(box: Box, op: str, where: str, reason: str) -> None:
    victim = box.outside / "victim"
    victim.write_bytes(b"keep me")
    path = {"outside": str(victim), "relative": "root/evil.exe",
            "dotdot": f"{box.root}/../outside/victim"}[where]
    raw = await box.connect()
    code, text = error(await raw.call(op, path=path))
    await raw.close()
    assert code in ("forbidden", "invalid_params") and reason in text
    assert victim.read_bytes() == b"keep me"


@pytest.mark.parametrize("op", ["quarantine", "delete"])
async def test_a_symlink_in_the_path_is_refused_and_its_target_left_alone(box: Box, op: str) -> None:
    (box.outside / "evil.exe").write_bytes(b"victim")
    os.symlink(box.outside, box.root / "link")
    os.symlink(box.outside / "evil.exe", box.root / "file-link")
    raw = await box.connect()
    for path in (box.root / "link" / "evil.exe", box.root / "file-link"):
        code, text = error(await raw.call(op, path=str(path)))
        assert code == "forbidden" and "symbolic link" in text
    await raw.close()
    assert (box.outside / "evil.exe").read_bytes() == b"victim"
    assert not box.vault.exists() or not [n for n in os.listdir(box.vault) if n.endswith(".bin")]


async def test_a_refusal_by_the_daemon_at_ready_changes_nothing(box: Box) -> None:
    path = evil(box)
    raw = await box.connect()
    msg = await raw.call("quarantine", go=False, path=str(path))
    await raw.close()
    assert msg.get("aborted") is True
    assert path.read_bytes() == EVIL


async def test_quarantine_restore_and_delete_do_what_they_say(box: Box) -> None:
    path = evil(box)
    raw = await box.connect()
    done = await raw.call("quarantine", path=str(path), detection_id="d1")
    meta = done["result"]["meta"]
    assert not path.exists() and (box.vault / f"{meta['quarantine_id']}.bin").exists()
    again = await raw.call("quarantine", path=str(path))
    assert again["result"]["already"] is True  # idempotent: a retry after a crash doubles nothing
    found = await raw.call("lookup", path=str(path))
    assert found["result"]["quarantine_id"] == meta["quarantine_id"] and "bin" not in str(found["result"])
    restored = await raw.call("restore", quarantine_id=meta["quarantine_id"])
    assert restored["result"]["already"] is False and path.read_bytes() == EVIL
    deleted = await raw.call("delete", path=str(path))
    assert deleted["result"]["deleted"] is True and not path.exists()
    assert (await raw.call("delete", path=str(path)))["result"]["already_absent"] is True
    await raw.close()


# -- kill ----------------------------------------------------------------------------------------------


def start_time(pid: int) -> float:
    return psutil.Process(pid).create_time()


def sleeper(box: Box, procs: Procs) -> tuple[int, Path]:
    exe = box.root / "sleeper"
    exe.write_bytes(Path("/bin/sleep").read_bytes())
    os.chmod(exe, 0o755)
    p = procs.run([str(exe), "300"], exe=exe)
    return p.pid, exe


async def test_kill_refuses_a_pid_whose_start_time_is_wrong(box: Box, procs: Procs) -> None:
    pid, exe = sleeper(box, procs)
    raw = await box.connect()
    code, text = error(await raw.call("kill", pid=pid, start_time=start_time(pid) - 100, file_path=str(exe)))
    await raw.close()
    assert code == "conflict" and "different process" in text
    assert procs.started[0].poll() is None


async def test_kill_refuses_a_thread_id(box: Box) -> None:
    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    try:
        tid = t.native_id
        assert tid is not None
        raw = await box.connect()
        code, text = error(await raw.call("kill", pid=tid, start_time=start_time(os.getpid()), trust=True))
        await raw.close()
    finally:
        stop.set()
        t.join()
    assert code == "forbidden" and "is a thread of sdd itself" in text


async def test_kill_refuses_the_daemon_its_peer_and_pid_1(box: Box) -> None:
    raw = await box.connect()
    # The peer (this test process stands for the daemon): known from SO_PEERCRED, not from the request.
    code, text = error(await raw.call("kill", pid=os.getpid(), start_time=start_time(os.getpid()), trust=True))
    assert code == "forbidden" and "sdd itself" in text
    code, text = error(await raw.call("kill", pid=1, start_time=start_time(1), trust=True))
    assert code == "forbidden" and "pid 1" in text
    parent = os.getppid()
    code, text = error(await raw.call("kill", pid=parent, start_time=start_time(parent), trust=True))
    assert code == "forbidden" and "ancestor of sdd" in text
    await raw.close()


async def test_kill_refuses_a_process_not_linked_to_the_file(box: Box, procs: Procs) -> None:
    pid, _ = sleeper(box, procs)
    other = evil(box)
    raw = await box.connect()
    code, text = error(await raw.call("kill", pid=pid, file_path=str(other)))
    code2, text2 = error(await raw.call("kill", pid=pid))
    await raw.close()
    assert code == "forbidden" and "neither executes, holds open nor maps" in text
    assert code2 == "forbidden" and "nothing links" in text2
    assert procs.started[0].poll() is None


async def test_kill_stops_the_linked_process(box: Box, procs: Procs) -> None:
    pid, exe = sleeper(box, procs)
    raw = await box.connect()
    msg = await raw.call("kill", pid=pid, file_path=str(exe), grace=5.0)
    await raw.close()
    assert msg["result"]["terminated"] == [pid]
    procs.started[0].wait(30)


async def test_kill_dry_run_signals_nothing(box: Box, procs: Procs) -> None:
    pid, exe = sleeper(box, procs)
    raw = await box.connect()
    msg = await raw.call("kill", pid=pid, file_path=str(exe), dry_run=True)
    await raw.close()
    assert msg["result"]["dry_run"] is True and msg["result"]["terminated"] == []
    assert procs.started[0].poll() is None


# -- run_script --------------------------------------------------------------------------------------------


def script(box: Box, name: str = "hello.sh", body: str = 'echo "{\\"argv\\": \\"$1\\", \\"key\\": \\"$SDD_RUN_ID\\"}"') -> Path:
    path = box.scripts / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    os.chmod(path, 0o755)
    return path


@pytest.mark.parametrize("where, reason", [
    ("outside", "is not inside scripts_dir"), ("dotdot", "is not inside scripts_dir"),
    ("missing", "no script")])
async def test_run_script_refuses_what_is_not_in_scripts_dir(box: Box, where: str, reason: str) -> None:
    target = {"outside": "/bin/sh", "dotdot": f"{box.scripts}/../../bin/sh", "missing": "nope.sh"}[where]
    raw = await box.connect()
    code, text = error(await raw.call("run_script", script=target, args=["-c", "touch /tmp/pwned"]))
    await raw.close()
    assert code in ("forbidden", "not_found") and reason in text


async def test_run_script_refuses_a_script_someone_else_may_change(box: Box) -> None:
    path = script(box, "shared.sh")
    os.chmod(path, 0o777)
    raw = await box.connect()
    code, text = error(await raw.call("run_script", script=str(path)))
    await raw.close()
    assert code == "forbidden" and "writable by group or others" in text


@pytest.mark.parametrize("env", [{"LD_PRELOAD": "/tmp/evil.so"}, {"SDD_ANYTHING": "x"}, {"BASH_ENV": "/tmp/x"},
                                 {"bad name": "x"}])
async def test_run_script_refuses_loader_and_interpreter_variables(box: Box, env: dict) -> None:
    path = script(box)
    raw = await box.connect()
    code, text = error(await raw.call("run_script", script=str(path), env=env))
    await raw.close()
    assert code == "invalid_params" and "may not be set" in text


async def test_run_script_runs_the_checked_script_with_its_argv(box: Box) -> None:
    path = script(box)
    raw = await box.connect()
    msg = await raw.call("run_script", script=str(path), args=["a b; rm -rf /"], env={"SDD_RUN_ID": "r1"})
    await raw.close()
    result = msg["result"]
    assert result["returncode"] == 0 and result["script"] == str(path)
    assert b'"argv": "a b; rm -rf /"' in result["stdout_head"] and b'"key": "r1"' in result["stdout_head"]


# -- scan --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("args, code, reason", [
    ({"path": "/etc"}, "forbidden", "outside the allowed roots"),
    ({"path": "relative"}, "invalid_params", "absolute path"),
    ({"path": "/x", "engine": "sh"}, "invalid_params", "one of clamav, yara"),
    ({"path": "/x", "timeout": -1}, "invalid_params", "out of range"),
    ({"path": "/x", "max_file_size": "big"}, "invalid_params", "expected int"),
])
async def test_scan_refuses_paths_outside_the_roots_and_bad_fields(box: Box, args: dict, code: str,
                                                                   reason: str) -> None:
    raw = await box.connect()
    got, text = error(await raw.call("scan", **args))
    await raw.close()
    assert got == code and reason in text


async def test_scan_does_not_follow_a_symlinked_root(box: Box) -> None:
    os.symlink(box.outside, box.root / "link")
    raw = await box.connect()
    code, text = error(await raw.call("scan", path=str(box.root / "link")))
    await raw.close()
    assert code == "forbidden" and "symbolic link" in text
