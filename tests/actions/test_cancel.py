"""Destructive steps cut short — by their timeout, a cancel or a shutdown — end done and recorded, or not done
with nothing left over. A 3 GiB sparse file takes seconds to copy, so a 1 s timeout always cuts it short.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

import pytest

from sdd.engine import Conflict, RunStatus, Workflow
from sdd.executor import abortable
from sdd.executor import vault as vault_module
from sdd.store import Store
from tests.support.daemon import DaemonProcess

from .conftest import Env

BIG = 3 << 30


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "sdd.db")
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def senv(env: Env, store: Store) -> Env:
    env.configure(store=store)
    return env


def sparse(path: Path, size: int = BIG) -> os.stat_result:
    with open(path, "wb") as fh:
        fh.truncate(size)
        fh.seek(size - 5)
        fh.write(b"tail!")  # one real block at the end, so the copy must get all the way there
    return os.stat(path)


class VaultWatch:
    """Samples the vault directory from another thread: how many scratch files and bytes it ever held."""

    def __init__(self, vault: Path) -> None:
        self.vault = vault
        self.most_files = 0
        self.most_bytes = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                names = os.listdir(self.vault)
            except FileNotFoundError:
                names = []
            total = 0
            for n in names:
                try:
                    total += os.stat(self.vault / n).st_blocks * 512
                except FileNotFoundError:
                    pass
            self.most_files = max(self.most_files, len(names))
            self.most_bytes = max(self.most_bytes, total)
            self.samples += 1
            self._stop.wait(0.02)  # sampling interval

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def workflow(action: str, params: dict[str, Any], **step: Any) -> Workflow:
    return Workflow.from_dict({"workflow_id": "cut", "steps": [{"step_id": "s", "action": action, "params": params,
                                                                 **step}]})


def audit_rows(store: Store, action: str) -> list[dict[str, Any]]:
    return [r for r in store.list_audit(limit=500).items if r["action"] == action]


async def test_quarantine_cut_short_by_its_timeout_leaves_the_file_and_no_vault_bytes(senv: Env, store: Store) -> None:
    big = senv.root / "big.iso"
    before = sparse(big)
    with VaultWatch(senv.vault) as watch:
        result = await senv.engine().execute_workflow(
            workflow("quarantine_file", {"file_path": str(big)}, timeout=1, max_retries=2, retry_delay=0.01))
        # Checked the moment the step has ended: had a thread kept copying, its scratch file would be here.
        assert senv.vault_items() == []
    step = result.step_results["s"]
    assert result.status is RunStatus.FAILED and step.attempts == 3 and "timed out after 1s" in (step.error or "")
    after = os.stat(big)
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)
    assert store.list_quarantine().items == [] and audit_rows(store, "quarantine_file") == []
    # Three attempts, never two at once, never more than one scratch copy of the file.
    assert watch.samples > 10 and watch.most_files <= 1 and 0 < watch.most_bytes <= BIG + (1 << 20)


async def test_quarantine_of_a_cancelled_run_leaves_nothing(senv: Env, store: Store) -> None:
    big = senv.root / "big.iso"
    sparse(big)
    engine = senv.engine()
    handle = engine.start(workflow("quarantine_file", {"file_path": str(big)}))
    deadline = time.monotonic() + 30
    while not any(n.startswith(".tmp-") for n in senv.vault_items()):  # the copy has begun
        assert time.monotonic() < deadline and not handle.done(), "the copy never started"
        await asyncio.sleep(0.01)
    handle.cancel()
    result = await handle.wait()
    assert result.status is RunStatus.CANCELLED and senv.vault_items() == []
    assert big.stat().st_size == BIG and store.list_quarantine().items == []


async def test_delete_cut_short_leaves_the_file(senv: Env, store: Store) -> None:
    big = senv.root / "big.iso"
    before = sparse(big)
    result = await senv.engine().execute_workflow(workflow("delete_file", {"file_path": str(big)}, timeout=1))
    assert result.status is RunStatus.FAILED and "timed out" in (result.error or "")
    assert big.stat().st_ino == before.st_ino and audit_rows(store, "delete_file") == []


@pytest.fixture
def held_after_commit(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[threading.Event, threading.Event,
                                                                         threading.Event]]:
    """Holds a quarantine just past its commit point (the original about to be unlinked) until released;
    `asked` is set when the step asks its work to stop (its timeout fired, or the run was cancelled)."""
    reached, release, asked = threading.Event(), threading.Event(), threading.Event()
    real_unlink, real_request = vault_module.unlink_same, abortable.Abort.request

    def held(*args: Any, **kw: Any) -> None:
        reached.set()
        assert release.wait(30)
        real_unlink(*args, **kw)

    def request(self: abortable.Abort) -> None:
        real_request(self)
        asked.set()
    monkeypatch.setattr(vault_module, "unlink_same", held)
    monkeypatch.setattr(abortable.Abort, "request", request)
    yield reached, release, asked
    release.set()


async def test_a_quarantine_past_its_commit_point_when_the_timeout_fires_completes_and_is_recorded(
        senv: Env, store: Store, held_after_commit: tuple[threading.Event, threading.Event, threading.Event]) -> None:
    reached, release, asked = held_after_commit
    path = senv.root / "evil.exe"
    path.write_bytes(b"evil" * 1000)
    task = asyncio.ensure_future(senv.engine().execute_workflow(
        workflow("quarantine_file", {"file_path": str(path)}, timeout=0.5)))
    assert await asyncio.to_thread(reached.wait, 30)
    assert await asyncio.to_thread(asked.wait, 30)  # the step's own timeout fired past the commit point
    release.set()
    result = await task
    step = result.step_results["s"]
    assert result.status is RunStatus.COMPLETED and step.status.value == "completed", result.error
    qid = step.result["quarantine_id"]
    assert not path.exists() and store.get_quarantine(qid) is not None
    [row] = audit_rows(store, "quarantine_file")
    assert row["details"]["quarantine_id"] == qid and row["details"]["completed_while_cancelled"] is True


async def test_a_quarantine_past_its_commit_point_when_the_run_is_cancelled_is_recorded_then_the_run_stops(
        senv: Env, store: Store, held_after_commit: tuple[threading.Event, threading.Event, threading.Event]) -> None:
    reached, release, asked = held_after_commit
    path = senv.root / "evil.exe"
    path.write_bytes(b"evil" * 1000)
    after = senv.root / "after.exe"
    after.write_bytes(b"must stay")
    wf = Workflow.from_dict({"workflow_id": "cut", "steps": [
        {"step_id": "s", "action": "quarantine_file", "params": {"file_path": str(path)}},
        {"step_id": "next", "action": "delete_file", "params": {"file_path": str(after)}}]})
    handle = senv.engine().start(wf)
    assert await asyncio.to_thread(reached.wait, 30)
    handle.cancel()
    assert await asyncio.to_thread(asked.wait, 30)
    release.set()
    result = await handle.wait()
    assert result.status is RunStatus.CANCELLED
    step = result.step_results["s"]
    assert step.status.value == "completed" and store.get_quarantine(step.result["quarantine_id"]) is not None
    assert not path.exists() and len(audit_rows(store, "quarantine_file")) == 1
    assert after.read_bytes() == b"must stay" and "next" not in result.step_results


# -- through the running daemon ------------------------------------------------------------------------------

CUT = """workflow_id: cut
trigger: {type: cut}
steps:
  - step_id: quarantine
    action: quarantine_file
    params: {file_path: "{{ detection.file_path }}"}
    timeout: TIMEOUT
"""


def _sddctl_json(d: DaemonProcess, *args: str) -> Any:
    out = subprocess.run([str(Path(sys.executable).parent / "sddctl"), "--socket", str(d.socket), *args, "--json"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stdout + out.stderr + d.log()
    return json.loads(out.stdout)


def test_daemon_quarantine_timing_out_after_1s_leaves_the_file_and_no_vault_data(tmp_path: Path) -> None:
    with DaemonProcess(tmp_path, workflows={"cut": CUT.replace("TIMEOUT", "1")}) as d:
        big = d.root / "big.iso"
        before = sparse(big)
        d.drop({"type": "cut", "file_path": str(big)})
        d.wait_for(lambda: d.count("SELECT count(*) FROM runs WHERE status = 'failed'") == 1, what="the failed run")
        [run_id] = [r[0] for r in d.query("SELECT run_id FROM runs")]
        shown = _sddctl_json(d, "show", run_id)
        assert "timed out after 1s" in shown["steps"][0]["error"]
        assert os.listdir(d.state / "vault") == []
        assert os.stat(big).st_ino == before.st_ino and os.stat(big).st_size == BIG
        assert _sddctl_json(d, "quarantine", "list")["items"] == []
        assert d.count("SELECT count(*) FROM audit WHERE action = 'quarantine_file'") == 0


def test_daemon_shutdown_mid_quarantine_ends_done_and_recorded_or_not_done(tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path, workflows={"cut": CUT.replace("TIMEOUT", "300")},
                      config_overrides={"engine": {"shutdown_grace": 0.2}})
    try:
        d.start()
        big = d.root / "big.iso"
        before = sparse(big)
        d.drop({"type": "cut", "file_path": str(big)})
        vault = d.state / "vault"
        d.wait_for(lambda: vault.exists() and any(n.startswith(".tmp-") for n in os.listdir(vault)),
                   what="the copy to begin")
        assert d.stop() == 0
        items = os.listdir(vault)
        rows = d.count("SELECT count(*) FROM quarantine")
        audits = d.count("SELECT count(*) FROM audit WHERE action = 'quarantine_file'")
        if big.exists():  # not done: the file untouched, nothing of it in the vault or the index
            assert os.stat(big).st_ino == before.st_ino and items == [] and rows == 0 and audits == 0
        else:             # done: in the vault, indexed and audited
            assert len(items) == 2 and rows == 1 and audits == 1
        assert d.count("SELECT count(*) FROM runs WHERE status = 'interrupted'") == 1
    finally:
        d.close()


async def test_a_file_replaced_at_the_last_moment_stays_and_the_vault_takes_nothing(
        senv: Env, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    path = senv.root / "evil.exe"
    path.write_bytes(b"evil")
    first = await senv.call("quarantine_file", file_path=str(path))
    await senv.call("restore_file", quarantine_id=first["quarantine_id"])
    real = vault_module.unlink_same

    def swapped(parent: Any, st: Any, what: str) -> None:
        os.rename(path, senv.root / "moved-away")
        path.write_bytes(b"someone else's file")  # the name now holds another file: it must not be removed
        real(parent, st, what)
    monkeypatch.setattr(vault_module, "unlink_same", swapped)
    with pytest.raises(Conflict, match="replaced"):
        await senv.call("quarantine_file", file_path=str(path))
    assert path.read_bytes() == b"someone else's file"
    # The earlier record of the same item is back as it was (restored), and nothing new was added.
    [item] = vault_module.Vault(senv.vault).items()
    assert item["quarantine_id"] == first["quarantine_id"] and item["state"] == "restored"
    assert sorted(senv.vault_items()) == sorted([f"{first['quarantine_id']}.bin", f"{first['quarantine_id']}.json"])


async def test_a_failure_to_record_after_a_cancel_does_not_make_the_stopped_run_retry(
        senv: Env, store: Store, held_after_commit: tuple[threading.Event, threading.Event, threading.Event]) -> None:
    reached, release, asked = held_after_commit
    path = senv.root / "evil.exe"
    path.write_bytes(b"evil" * 1000)
    handle = senv.engine().start(workflow("quarantine_file", {"file_path": str(path)}, max_retries=3,
                                          retry_delay=0.01))
    assert await asyncio.to_thread(reached.wait, 30)
    handle.cancel()
    assert await asyncio.to_thread(asked.wait, 30)
    store.close()  # the index cannot be written any more
    release.set()
    result = await handle.wait()
    step = result.step_results["s"]
    assert result.status is RunStatus.CANCELLED and step.status.value == "cancelled" and step.attempts == 1
    [item] = vault_module.Vault(senv.vault).items()  # done: the vault has it, and a re-run will index it
    assert item["original_path"] == str(path) and not path.exists()
