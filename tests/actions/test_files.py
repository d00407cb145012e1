"""quarantine_file, restore_file and delete_file on real files, including hostile paths and races."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest

from sdd.actions import Vault
from sdd.config import RateLimit
from sdd.engine import Conflict, Forbidden, InvalidParams, NotFound
from sdd.executor import errors as executor_errors
from sdd.executor import restoring
from sdd.executor.safepath import open_parent, open_regular, unlink_same

from .conftest import Env, snapshot

CONTENT = b"MZ\x90\x00 pretend-malware " + bytes(range(256)) * 5000  # ~1.3 MB, crosses chunk boundaries


def make(env: Env, name: str = "evil.exe", data: bytes = CONTENT) -> Path:
    path = env.root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chown(path, 1234, 2345)
    os.chmod(path, 0o754)
    os.utime(path, ns=(1_600_000_000_123_456_789, 1_700_000_000_987_654_321))
    return path


async def test_quarantine_moves_file_into_neutralised_vault_and_restore_is_byte_identical(env: Env) -> None:
    path = make(env)
    res = await env.call("quarantine_file", file_path=str(path))
    assert not path.exists()
    assert res["sha256"] == hashlib.sha256(CONTENT).hexdigest()
    assert res["original_path"] == str(path)
    qid = res["quarantine_id"]
    assert stat.S_IMODE(env.vault.stat().st_mode) == 0o700
    blob = env.vault / f"{qid}.bin"
    assert stat.S_IMODE(blob.stat().st_mode) == 0o600
    assert CONTENT[:64] not in blob.read_bytes()  # neutralised: the bytes are not there as is
    meta = json.loads((env.vault / f"{qid}.json").read_text())
    assert (meta["uid"], meta["gid"], meta["mode"], meta["size"]) == (1234, 2345, 0o754, len(CONTENT))

    back = await env.call("restore_file", quarantine_id=qid)
    assert back["restored_path"] == str(path)
    assert path.read_bytes() == CONTENT
    st = path.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (
        1234, 2345, 0o754, 1_700_000_000_987_654_321)
    assert [n for n in os.listdir(env.root) if n.startswith(".sdd-restore")] == []


async def test_same_file_quarantined_twice_gets_the_same_id(env: Env) -> None:
    path = make(env)
    first = await env.call("quarantine_file", file_path=str(path))
    await env.call("restore_file", file_path=str(path))
    second = await env.call("quarantine_file", file_path=str(path))
    assert second["quarantine_id"] == first["quarantine_id"]
    assert len(env.vault_items()) == 2  # one blob, one metadata file


async def test_quarantine_rerun_after_success_returns_same_result(env: Env) -> None:
    path = make(env)
    first = await env.call("quarantine_file", file_path=str(path))
    again = await env.call("quarantine_file", file_path=str(path))
    assert again["quarantine_id"] == first["quarantine_id"]
    assert again["already_quarantined"] is True


async def test_quarantine_rerun_after_crash_before_unlink_ends_in_one_item(env: Env) -> None:
    # A crash after the vault copy but before the unlink leaves the original in place: put it back.
    path = make(env)
    first = await env.call("quarantine_file", file_path=str(path))
    make(env)
    again = await env.call("quarantine_file", file_path=str(path))
    assert again["quarantine_id"] == first["quarantine_id"] and not again["already_quarantined"]
    assert not path.exists()
    assert len(env.vault_items()) == 2


async def test_restore_works_from_the_vault_alone(env: Env) -> None:
    path = make(env)
    qid = (await env.call("quarantine_file", file_path=str(path)))["quarantine_id"]
    env.configure()  # fresh services: nothing in memory, no store
    await env.call("restore_file", quarantine_id=qid)
    assert path.read_bytes() == CONTENT


async def test_restore_never_clobbers_an_existing_file(env: Env) -> None:
    path = make(env)
    qid = (await env.call("quarantine_file", file_path=str(path)))["quarantine_id"]
    path.write_bytes(b"new legit file")
    with pytest.raises(Conflict, match="already exists"):
        await env.call("restore_file", quarantine_id=qid)
    assert path.read_bytes() == b"new legit file"
    res = await env.call("restore_file", quarantine_id=qid, on_conflict="rename")
    assert res["restored_path"] != str(path)
    assert Path(res["restored_path"]).read_bytes() == CONTENT
    assert path.read_bytes() == b"new legit file"


async def test_restore_is_idempotent(env: Env) -> None:
    path = make(env)
    qid = (await env.call("quarantine_file", file_path=str(path)))["quarantine_id"]
    await env.call("restore_file", quarantine_id=qid)
    again = await env.call("restore_file", quarantine_id=qid)
    assert again["already_restored"] is True
    assert path.read_bytes() == CONTENT


@pytest.mark.parametrize("params, error", [
    ({"quarantine_id": "../../etc/passwd"}, InvalidParams), ({"quarantine_id": "0" * 32}, NotFound),
    ({"quarantine_id": 5}, InvalidParams), ({}, InvalidParams), ({"file_path": "x"}, InvalidParams),
    ({"quarantine_id": "0" * 32, "on_conflict": "clobber"}, InvalidParams),
    ({"quarantine_id": "0" * 32, "force": "yes"}, InvalidParams)])
async def test_restore_refuses_bad_parameters(env: Env, params: dict, error: type) -> None:
    before = snapshot(env.tmp)
    with pytest.raises(error):
        await env.call("restore_file", **params)
    assert snapshot(env.tmp) == before


async def test_restore_refuses_symlinked_parent_and_leaves_it_alone(env: Env) -> None:
    path = make(env, "sub/evil.exe")
    qid = (await env.call("quarantine_file", file_path=str(path)))["quarantine_id"]
    os.rmdir(env.root / "sub")
    os.symlink(env.outside, env.root / "sub")  # an attacker redirects the restore
    with pytest.raises(Forbidden, match="symbolic link"):
        await env.call("restore_file", quarantine_id=qid)
    assert os.listdir(env.outside) == []


def _bad_path_cases(env: Env) -> dict[str, tuple[object, type, str]]:
    target = make(env, "target.exe")
    (env.root / "dir").mkdir()
    os.symlink(target, env.root / "link.exe")
    os.symlink(env.root / "dir", env.root / "linkdir")
    (env.root / "dir" / "inner.exe").write_bytes(b"x")
    os.mkfifo(env.root / "fifo")
    os.mknod(env.root / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    (env.outside / "x.exe").write_bytes(b"x")
    return {
        "missing": (None, InvalidParams, "is required"),
        "wrong type": (42, InvalidParams, "expected a string"),
        "relative": ("root/target.exe", InvalidParams, "absolute"),
        "dotdot": (f"{env.root}/dir/../target.exe", InvalidParams, r"'\.\.'"),
        "nul": (f"{env.root}/a\x00b", InvalidParams, "NUL"),
        "outside roots": (str(env.outside / "x.exe"), Forbidden, "outside the allowed roots"),
        "root itself": (str(env.root), Forbidden, "outside the allowed roots"),
        "final symlink": (str(env.root / "link.exe"), Forbidden, "symbolic link"),
        "symlink component": (str(env.root / "linkdir" / "inner.exe"), Forbidden, "symbolic link"),
        "fifo": (str(env.root / "fifo"), Forbidden, "FIFO"),
        "device": (str(env.root / "null"), Forbidden, "character device"),
        "directory": (str(env.root / "dir"), Forbidden, "directory"),
        "absent": (str(env.root / "nope.exe"), NotFound, "does not exist"),
    }


@pytest.mark.parametrize("action", ["quarantine_file", "delete_file"])
@pytest.mark.parametrize("case", ["missing", "wrong type", "relative", "dotdot", "nul", "outside roots",
                                  "root itself", "final symlink", "symlink component", "fifo", "device",
                                  "directory", "absent"])
async def test_file_actions_refuse_bad_paths_and_change_nothing(env: Env, action: str, case: str) -> None:
    value, error, message = _bad_path_cases(env)[case]
    before = snapshot(env.tmp)
    params = {} if value is None else {"file_path": value}
    if action == "delete_file" and case == "absent":
        assert (await env.call(action, **params))["already_absent"] is True
    else:
        with pytest.raises(error, match=message):
            await env.call(action, **params)
    assert snapshot(env.tmp) == before


async def test_unknown_parameter_is_refused(env: Env) -> None:
    path = make(env)
    with pytest.raises(InvalidParams, match="unknown parameter"):
        await env.call("quarantine_file", file_path=str(path), overwrite=True)
    assert path.exists()


async def test_pinned_parent_is_not_redirected_by_a_symlink_swapped_in(env: Env) -> None:
    # The race of CVE-2020-3350: the directory is replaced by a symlink after the check.
    path = make(env, "d/evil.exe")
    (env.outside / "evil.exe").write_bytes(b"victim")
    with open_parent(str(path)) as parent:
        fd, st = open_regular(parent, "test")
        os.rename(env.root / "d", env.root / "d-moved")
        os.symlink(env.outside, env.root / "d")
        unlink_same(parent, st, "test")
        os.close(fd)
    assert (env.outside / "evil.exe").read_bytes() == b"victim"
    assert not (env.root / "d-moved" / "evil.exe").exists()


async def test_file_replaced_during_operation_is_left_in_place(env: Env) -> None:
    path = make(env)
    with open_parent(str(path)) as parent:
        fd, st = open_regular(parent, "test")
        os.rename(path, env.root / "old")
        path.write_bytes(b"someone else's file")
        with pytest.raises(executor_errors.Conflict, match="replaced"):
            unlink_same(parent, st, "test")
        os.close(fd)
    assert path.read_bytes() == b"someone else's file"


async def test_quarantine_over_its_rate_limit_waits_and_its_timeout_leaves_the_file(env: Env) -> None:
    env.configure(rate_limits={"quarantine_file": RateLimit(1, 3600.0)})
    a, b = make(env, "a.exe", b"a"), make(env, "b.exe", b"b")
    await env.call("quarantine_file", file_path=str(a))
    result = await env.step("quarantine_file", {"file_path": str(b)}, timeout=0.2)
    assert result.status == "failed" and "timed out" in (result.error or "")
    assert b.read_bytes() == b"b"
    status = env.services.guards.status()
    assert status["rate_limits"]["quarantine_file"]["available"] == 0 and status["waiting"] == {}


async def test_delete_file_deletes_and_says_irreversible(env: Env) -> None:
    path = make(env)
    res = await env.call("delete_file", file_path=str(path))
    assert res["deleted"] and res["irreversible"] and not path.exists()
    assert res["sha256"] == hashlib.sha256(CONTENT).hexdigest()
    again = await env.call("delete_file", file_path=str(path))
    assert again["already_absent"] is True


async def test_dry_run_plan_marks_delete_irreversible_and_touches_nothing(env: Env) -> None:
    path = make(env)
    from sdd.engine import Workflow
    wf = Workflow.from_dict({"workflow_id": "t", "steps": [
        {"step_id": "del", "action": "delete_file", "params": {"file_path": str(path)}}]})
    result = await env.engine().execute_workflow(wf, dry_run=True)
    assert result.step_results["del"].result["irreversible"] is True
    assert path.exists()


async def test_quarantine_as_engine_step_rolls_back_by_restoring(env: Env) -> None:
    from sdd.engine import RunStatus, Workflow
    path = make(env)
    wf = Workflow.from_dict({"workflow_id": "t", "rollback_on_failure": True, "steps": [
        {"step_id": "q", "action": "quarantine_file", "params": {"file_path": str(path)},
         "rollback_action": "restore_file"},
        {"step_id": "boom", "action": "delete_file", "params": {"file_path": "relative"}}]})
    result = await env.engine().execute_workflow(wf)
    assert result.status is RunStatus.ROLLED_BACK
    assert path.read_bytes() == CONTENT
    assert Vault(env.vault).items()[0]["state"] == "restored"


async def test_store_indexes_quarantine_and_restore(env: Env, tmp_path: Path) -> None:
    from sdd.store import Store
    store = Store.open(tmp_path / "sdd.db")
    try:
        env.configure(store=store)
        path = make(env)
        qid = (await env.call("quarantine_file", file_path=str(path)))["quarantine_id"]
        row = store.get_quarantine(qid)
        assert row is not None and row["original_path"] == str(path)
        again = await env.call("quarantine_file", file_path=str(path))  # re-run: found via the index
        assert again["already_quarantined"] and again["quarantine_id"] == qid
        await env.call("restore_file", file_path=str(path))
        assert store.get_quarantine(qid)["restored_at"] is not None
    finally:
        store.close()


async def test_restore_rerun_after_crash_between_link_and_metadata_is_done(env: Env) -> None:
    path = make(env)
    qid = (await env.call("quarantine_file", file_path=str(path)))["quarantine_id"]
    path.write_bytes(CONTENT)  # the file is back but the vault still says "quarantined"
    res = await env.call("restore_file", quarantine_id=qid)
    assert res["already_restored"] is True and res["restored_path"] == str(path)
    assert Vault(env.vault).read_meta(qid)["state"] == "restored"
    assert sorted(os.listdir(env.root)) == ["evil.exe"]


async def test_symlink_swapped_in_mid_quarantine_does_not_redirect_it(env: Env,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # Provoke the race: right after the walk pinned the parent, the attacker swaps the directory for a
    # symlink to a victim directory holding a file of the same name.
    import sdd.executor.vault as vault_module
    path = make(env, "d/evil.exe")
    (env.outside / "evil.exe").write_bytes(b"victim")
    real_open_regular = vault_module.open_regular

    def swap_then_open(parent, what):  # type: ignore[no-untyped-def]
        os.rename(env.root / "d", env.root / "d-moved")
        os.symlink(env.outside, env.root / "d")
        return real_open_regular(parent, what)

    monkeypatch.setattr(vault_module, "open_regular", swap_then_open)
    res = await env.call("quarantine_file", file_path=str(path))
    assert res["sha256"] == hashlib.sha256(CONTENT).hexdigest()  # the real file, not the victim
    assert (env.outside / "evil.exe").read_bytes() == b"victim"
    assert not (env.root / "d-moved" / "evil.exe").exists()


async def test_symlink_swapped_in_mid_restore_does_not_redirect_it(env: Env,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    path = make(env, "d/evil.exe")
    qid = (await env.call("quarantine_file", file_path=str(path)))["quarantine_id"]
    real_write = restoring.write_restored

    def swap_then_write(vault, parent, target, qid_, meta, *rest):  # type: ignore[no-untyped-def]
        os.rename(env.root / "d", env.root / "d-moved")
        os.symlink(env.outside, env.root / "d")
        return real_write(vault, parent, target, qid_, meta, *rest)

    monkeypatch.setattr(restoring, "write_restored", swap_then_write)
    await env.call("restore_file", quarantine_id=qid)
    assert os.listdir(env.outside) == []
    assert (env.root / "d-moved" / "evil.exe").read_bytes() == CONTENT


async def test_refused_paths_do_not_use_up_the_rate_limit(env: Env) -> None:
    env.configure(rate_limits={"quarantine_file": RateLimit(1, 3600.0), "delete_file": RateLimit(1, 3600.0)})
    os.mkfifo(env.root / "fifo")
    for action in ("quarantine_file", "delete_file"):
        for _ in range(3):
            with pytest.raises(Forbidden):
                await env.call(action, file_path=str(env.root / "fifo"))
    path = make(env)
    await env.call("quarantine_file", file_path=str(path))
    make(env, "other.exe")
    await env.call("delete_file", file_path=str(env.root / "other.exe"))


async def test_plan_marks_delete_irreversible_and_quarantine_with_rollback_not(env: Env) -> None:
    from sdd.engine import Workflow
    path = make(env)
    wf = Workflow.from_dict({"workflow_id": "t", "steps": [
        {"step_id": "q", "action": "quarantine_file", "params": {"file_path": str(path)},
         "rollback_action": "restore_file"},
        {"step_id": "del", "action": "delete_file", "params": {"file_path": str(path)}}]})
    plan = {p["step_id"]: p for p in env.engine().plan(wf)}
    assert plan["del"]["irreversible"] is True and plan["q"]["irreversible"] is False
    assert path.read_bytes() == CONTENT


async def test_quarantine_sweeps_temporary_files_left_by_a_crash(env: Env) -> None:
    env.vault.mkdir(mode=0o700)
    stale, fresh = env.vault / ".tmp-deadbeef.bin", env.vault / ".tmp-cafebabe.bin"
    stale.write_bytes(b"half a blob")
    fresh.write_bytes(b"another call is writing this")
    os.utime(stale, (0, 0))
    await env.call("quarantine_file", file_path=str(make(env)))
    assert not stale.exists() and fresh.exists()


async def test_resumed_run_reruns_quarantine_in_flight_and_gets_the_same_result(env: Env) -> None:
    # A crash after the unlink but before the outcome was recorded: the step is found "running".
    from sdd.engine import PriorStep, RunStatus, Workflow
    path = make(env)
    wf = Workflow.from_dict({"workflow_id": "t", "steps": [
        {"step_id": "q", "action": "quarantine_file", "params": {"file_path": str(path)}}]})
    first = await env.engine().execute_workflow(wf, run_id="r1")
    resumed = await env.engine().execute_workflow(wf, run_id="r1", prior={"q": PriorStep("running", attempts=1)})
    assert resumed.status is RunStatus.COMPLETED
    a, b = first.step_results["q"].result, resumed.step_results["q"].result
    assert a["quarantine_id"] == b["quarantine_id"] and b["already_quarantined"] is True
    assert len(env.vault_items()) == 2
