"""The database file: permissions, refusal of symlinks, pragmas, versioned migrations."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import pytest

from sdd.store import SCHEMA_VERSION, SchemaError, Store, UnsafePath
from sdd.store.schema import MIGRATIONS, connect, migrate


def test_creates_private_state_dir_and_database(db_path: Path) -> None:
    s = Store.open(db_path)
    try:
        assert stat.S_IMODE(os.stat(db_path.parent).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(db_path).st_mode) == 0o600
        s.write_sync(lambda c: c.execute("CREATE TABLE IF NOT EXISTS t (x)"))
        wal = Path(str(db_path) + "-wal")
        assert wal.exists() and stat.S_IMODE(os.stat(wal).st_mode) == 0o600
    finally:
        s.close()


def test_pragmas_wal_and_foreign_keys(db_path: Path) -> None:
    s = Store.open(db_path)
    try:
        conn = s._read()
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 1000
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        s.close()


def test_refuses_symlinked_database(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.db"
    target.write_bytes(b"")
    link = tmp_path / "sdd.db"
    link.symlink_to(target)
    with pytest.raises(UnsafePath):
        Store.open(link)


def test_tightens_a_world_readable_database(db_path: Path) -> None:
    Store.open(db_path).close()
    os.chmod(db_path, 0o644)
    Store.open(db_path).close()
    assert stat.S_IMODE(os.stat(db_path).st_mode) == 0o600


def test_refuses_a_fifo_as_database(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "sdd.db")
    with pytest.raises(UnsafePath, match="not a regular file"):
        Store.open(tmp_path / "sdd.db")


def test_refuses_symlinked_state_dir(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "state").symlink_to(real)
    with pytest.raises(UnsafePath):
        Store.open(tmp_path / "state" / "sdd.db")


def test_a_file_that_is_not_a_database_is_a_clear_error(db_path: Path) -> None:
    db_path.parent.mkdir(mode=0o700)
    db_path.write_bytes(b"this is not SQLite at all" * 100)
    os.chmod(db_path, 0o600)
    with pytest.raises(SchemaError, match="not a usable sdd database"):
        Store.open(db_path)


def test_refuses_database_newer_than_code(db_path: Path) -> None:
    Store.open(db_path).close()
    conn = sqlite3.connect(db_path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    conn.close()
    with pytest.raises(SchemaError, match="newer"):
        Store.open(db_path)


def test_opening_a_version_1_database_migrates_it_and_backfills_stats(db_path: Path) -> None:
    db_path.parent.mkdir(mode=0o700)
    conn = connect(db_path, writer=True)
    assert migrate(conn, MIGRATIONS[:1]) == 1
    conn.executemany(
        "INSERT INTO runs (run_id, workflow_id, status, trigger, started_at, finished_at) VALUES (?,?,?,?,?,?)",
        [("r1", "wf", "completed", "api", 100.0, 102.0), ("r2", "wf", "failed", "api", 200.0, 206.0),
         ("r3", "wf", "running", "api", 300.0, None), ("r4", "other", "rolled_back", "api", 50.0, 51.0)])
    conn.close()

    s = Store.open(db_path)
    try:
        assert s._read().execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        stats = {st["workflow_id"]: st for st in s.run_stats()}
        wf = stats["wf"]
        assert (wf["runs"], wf["active"], wf["completed"], wf["failed"]) == (3, 1, 1, 1)
        assert wf["mean_duration"] == pytest.approx(4.0)
        assert wf["p95_duration"] == pytest.approx(6.0)
        assert wf["last_run"]["run_id"] == "r3"  # the running one started last
        assert stats["other"]["rolled_back"] == 1
        assert [r["run_id"] for r in s.list_runs().items] == ["r3", "r2", "r1", "r4"]
    finally:
        s.close()


def test_failed_migration_leaves_the_old_version(db_path: Path) -> None:
    db_path.parent.mkdir(mode=0o700)
    conn = connect(db_path, writer=True)
    migrate(conn, MIGRATIONS[:1])

    def broken(c: sqlite3.Connection) -> None:
        c.execute("CREATE TABLE half_done (x)")
        raise RuntimeError("boom")

    with pytest.raises(SchemaError, match="version 2"):
        migrate(conn, [MIGRATIONS[0], broken])
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'half_done'").fetchone()[0] == 0
    conn.close()


def test_reopening_keeps_data(db_path: Path) -> None:
    s = Store.open(db_path)
    s.write_sync(lambda c: c.execute("INSERT INTO exclusions VALUES ('path', '/srv/x', NULL, 'sdd', 1.0)"))
    s.close()
    s = Store.open(db_path)
    try:
        assert s.is_excluded(path="/srv/x/y")
    finally:
        s.close()
