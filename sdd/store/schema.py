"""The database file: where it lives, how it is opened, and the versioned schema with its migrations.

`PRAGMA user_version` holds the schema version; `MIGRATIONS[i]` takes a database from version i to i+1 and
runs inside one transaction with the version bump, so a crash mid-migration leaves the old version intact.
A database newer than this code is refused rather than guessed at.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Callable
from pathlib import Path

from . import outbox
from .errors import SchemaError, UnsafePath

# --- version 1: the tables every part of the daemon writes ------------------------------------------------
_V1 = """
CREATE TABLE detections (
    id           INTEGER PRIMARY KEY,
    external_id  TEXT UNIQUE,          -- the detection's own "id" (dedup key); NULL on duplicates
    type         TEXT NOT NULL,
    severity     TEXT,
    file_path    TEXT,
    threat_name  TEXT,
    sha256       TEXT,
    raw          TEXT NOT NULL,        -- the whole detection object, JSON
    received_at  REAL NOT NULL,
    state        TEXT NOT NULL,
    note         TEXT,
    spool_name   TEXT,                 -- with raw: replaying a spool file after a crash finds this row
    duplicate_of INTEGER,              -- no FK: purging the original must not touch its duplicates
    updated_at   REAL
);
CREATE INDEX detections_received ON detections(received_at);
CREATE INDEX detections_state ON detections(state, received_at);
CREATE INDEX detections_type ON detections(type, received_at);
CREATE INDEX detections_file_threat ON detections(file_path, threat_name, received_at);
CREATE INDEX detections_spool ON detections(spool_name);

CREATE TABLE runs (
    run_id       TEXT PRIMARY KEY,
    workflow_id  TEXT NOT NULL,
    detection_id INTEGER REFERENCES detections(id),
    status       TEXT NOT NULL,
    trigger      TEXT NOT NULL CHECK (trigger IN ('detection', 'api', 'schedule')),
    context      TEXT,
    workflow     TEXT,                 -- snapshot of the workflow as run: recovery resumes from this
    started_at   REAL NOT NULL,
    finished_at  REAL,
    error        TEXT,
    dry_run      INTEGER NOT NULL DEFAULT 0,
    uid          INTEGER,
    resumed      INTEGER NOT NULL DEFAULT 0,
    result       TEXT
);
-- One index per filter combination of list_runs, each ending in the keyset (started_at, run_id), so a page
-- is a short index range walk whatever the filters.
CREATE INDEX runs_started ON runs(started_at, run_id);
CREATE INDEX runs_workflow ON runs(workflow_id, started_at, run_id);
CREATE INDEX runs_status ON runs(status, started_at, run_id);
CREATE INDEX runs_workflow_status ON runs(workflow_id, status, started_at, run_id);
CREATE INDEX runs_detection ON runs(detection_id);

CREATE TABLE steps (
    run_id      TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    phase       TEXT NOT NULL CHECK (phase IN ('run', 'rollback')),
    step_id     TEXT NOT NULL,         -- the step path: "quarantine", "loop[3].child", ...
    parent_id   TEXT,
    step_type   TEXT,
    action      TEXT,
    status      TEXT NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    idempotent  INTEGER NOT NULL DEFAULT 0,
    started_at  REAL,
    finished_at REAL,
    params      TEXT,
    result      TEXT,
    error       TEXT,
    PRIMARY KEY (run_id, phase, step_id)
) WITHOUT ROWID;

CREATE TABLE quarantine (
    id             TEXT PRIMARY KEY,
    sha256         TEXT NOT NULL,
    size           INTEGER,
    original_path  TEXT NOT NULL,
    uid            INTEGER,
    gid            INTEGER,
    mode           INTEGER,
    mtime          REAL,
    detection_id   TEXT,               -- no FKs: vault metadata outlives history retention
    run_id         TEXT,
    threat_name    TEXT,
    quarantined_at REAL NOT NULL,
    restored_at    REAL,
    restored_to    TEXT,
    extra          TEXT
);
CREATE INDEX quarantine_sha256 ON quarantine(sha256);
CREATE INDEX quarantine_path ON quarantine(original_path);
CREATE INDEX quarantine_time ON quarantine(quarantined_at, id);
CREATE INDEX quarantine_run ON quarantine(run_id);

CREATE TABLE exclusions (
    kind       TEXT NOT NULL CHECK (kind IN ('sha256', 'path')),
    value      TEXT NOT NULL,
    reason     TEXT,
    actor      TEXT,
    created_at REAL NOT NULL,
    PRIMARY KEY (kind, value)
) WITHOUT ROWID;

CREATE TABLE false_positives (
    id           INTEGER PRIMARY KEY,
    detection_id TEXT,
    run_id       TEXT,
    sha256       TEXT,
    file_path    TEXT,
    threat_name  TEXT,
    reason       TEXT,
    actor        TEXT,
    created_at   REAL NOT NULL,
    details      TEXT
);
CREATE INDEX false_positives_sha256 ON false_positives(sha256);

CREATE TABLE audit (
    id           INTEGER PRIMARY KEY,
    time         REAL NOT NULL,
    actor        TEXT NOT NULL,        -- "uid:N", "detection:ID", "run:ID" or "sdd"
    action       TEXT NOT NULL,
    target       TEXT,
    detection_id TEXT,
    run_id       TEXT,
    outcome      TEXT NOT NULL,
    details      TEXT
);
CREATE INDEX audit_time ON audit(time);
CREATE INDEX audit_run ON audit(run_id);
"""

# --- version 2: per-workflow aggregates so runs.stats never scans the whole history -------------------------
SAMPLE_SLOTS = 256  # durations kept per workflow for the p95: a bounded, recent sample

_V2 = """
CREATE TABLE workflow_stats (
    workflow_id      TEXT PRIMARY KEY,
    finished         INTEGER NOT NULL DEFAULT 0,
    completed        INTEGER NOT NULL DEFAULT 0,
    failed           INTEGER NOT NULL DEFAULT 0,
    rolled_back      INTEGER NOT NULL DEFAULT 0,
    cancelled        INTEGER NOT NULL DEFAULT 0,
    interrupted      INTEGER NOT NULL DEFAULT 0,
    duration_sum     REAL NOT NULL DEFAULT 0,
    duration_n       INTEGER NOT NULL DEFAULT 0,
    sample_seq       INTEGER NOT NULL DEFAULT 0,
    last_run_id      TEXT,
    last_status      TEXT,
    last_started_at  REAL,
    last_finished_at REAL
) WITHOUT ROWID;
CREATE TABLE duration_samples (
    workflow_id TEXT NOT NULL,
    slot        INTEGER NOT NULL,
    duration    REAL NOT NULL,
    PRIMARY KEY (workflow_id, slot)
) WITHOUT ROWID;
"""

# Rebuild the aggregates from the runs table (migration 2 on an older sdd's history; bench fixtures).
STATS_BACKFILL = f"""
DELETE FROM workflow_stats;
DELETE FROM duration_samples;
INSERT INTO workflow_stats (workflow_id, finished, completed, failed, rolled_back, cancelled, interrupted,
                            duration_sum, duration_n, sample_seq)
SELECT workflow_id, count(*), sum(status = 'completed'), sum(status = 'failed'), sum(status = 'rolled_back'),
       sum(status = 'cancelled'), sum(status = 'interrupted'),
       total(max(finished_at - started_at, 0)), count(*), min(count(*), {SAMPLE_SLOTS})
FROM runs WHERE finished_at IS NOT NULL AND status NOT IN ('pending', 'running') AND dry_run = 0
GROUP BY workflow_id;
UPDATE workflow_stats SET (last_run_id, last_status, last_started_at, last_finished_at) = (
    SELECT run_id, status, started_at, finished_at FROM runs
    WHERE runs.workflow_id = workflow_stats.workflow_id AND finished_at IS NOT NULL
      AND status NOT IN ('pending', 'running') AND dry_run = 0
    ORDER BY finished_at DESC, run_id DESC LIMIT 1);
-- The newest k durations, oldest in slot 0 and newest in slot k-1, so the next finish (slot k mod the ring
-- size, as sample_seq = k) overwrites the oldest.
INSERT INTO duration_samples (workflow_id, slot, duration)
SELECT workflow_id, min(total, {SAMPLE_SLOTS}) - n, d FROM (
    SELECT workflow_id, max(finished_at - started_at, 0) AS d,
           row_number() OVER (PARTITION BY workflow_id ORDER BY finished_at DESC, run_id DESC) AS n,
           count(*) OVER (PARTITION BY workflow_id) AS total
    FROM runs WHERE finished_at IS NOT NULL AND status NOT IN ('pending', 'running') AND dry_run = 0)
WHERE n <= {SAMPLE_SLOTS};
"""


def _script(sql: str) -> Callable[[sqlite3.Connection], None]:
    def apply(conn: sqlite3.Connection) -> None:
        for statement in _split(sql):
            conn.execute(statement)
    return apply


def _split(sql: str) -> list[str]:
    # executescript() would COMMIT our transaction; statements here never contain ';' inside literals.
    lines = [line.split("--", 1)[0] for line in sql.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def rebuild_stats(conn: sqlite3.Connection) -> None:
    """Recompute workflow_stats and duration_samples from runs (inside the caller's transaction)."""
    _script(STATS_BACKFILL)(conn)


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_script(_V1), _script(_V2 + STATS_BACKFILL),
                                                          # version 3: the export outbox (outbox.py)
                                                          _script(outbox.SCHEMA)]
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(conn: sqlite3.Connection, migrations: list[Callable[[sqlite3.Connection], None]] | None = None) -> int:
    """Bring the database to the newest version, one transaction per step; returns the version reached."""
    steps = MIGRATIONS if migrations is None else migrations
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > len(steps):
        raise SchemaError(f"database schema version {version} is newer than this sdd understands "
                          f"({len(steps)}); refusing to touch it")
    while version < len(steps):
        conn.execute("BEGIN IMMEDIATE")
        try:
            steps[version](conn)
            conn.execute(f"PRAGMA user_version = {version + 1}")
            conn.execute("COMMIT")
        except BaseException as exc:
            conn.execute("ROLLBACK")
            raise SchemaError(f"migration to schema version {version + 1} failed: {exc}") from exc
        version += 1
    return version


def prepare_path(path: Path) -> Path:
    """Create the state directory (0700) and the database file (0600) if missing; refuse symlinks.

    The file is created here with O_EXCL|O_NOFOLLOW rather than by SQLite, so it never exists with a wider
    mode; SQLite then gives its -wal and -shm files the same mode as the database file.
    """
    path = Path(path)
    parent = path.parent
    if not parent.exists():
        os.makedirs(parent, mode=0o700, exist_ok=True)
    st = os.lstat(parent)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise UnsafePath(f"{parent}: the state directory is a symlink or not a directory")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:  # ELOOP: a symlink
            raise UnsafePath(f"{path}: the database is a symlink or cannot be opened: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePath(f"{path}: the database is not a regular file")
        if st.st_mode & 0o077 and st.st_uid == os.geteuid():
            # History names files, threats and users: not for other local users (a file from an older
            # install or a careless copy is tightened, not refused).
            os.fchmod(fd, stat.S_IMODE(st.st_mode) & 0o600)
    finally:
        os.close(fd)
    return path


def connect(path: Path, *, writer: bool) -> sqlite3.Connection:
    """Open a connection with the store's pragmas. Autocommit mode: transactions are explicit BEGINs."""
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=10.0,
                           factory=outbox.StoreConnection)
    conn.execute("PRAGMA busy_timeout = 10000")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA temp_store = MEMORY")
    if writer:
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise SchemaError(f"{path}: could not switch the database to WAL (journal_mode is {mode})")
        conn.execute("PRAGMA cache_size = -8000")
    else:
        conn.execute("PRAGMA query_only = ON")
    return conn


__all__ = ["MIGRATIONS", "SAMPLE_SLOTS", "SCHEMA_VERSION", "connect", "migrate", "prepare_path", "rebuild_stats"]
