"""The bare floor loop of field-notes.md, as a process of its own: what "close to the limit" means.

inotify on `new/` (sdd's own `NameWatch`, one thread), then per file: read it, `json.loads`, one SQLite row
(WAL, `synchronous=NORMAL`) committed on its own, and the file unlinked. No workflow, no audit trail, no
durability barrier: it does NOT fsync per commit (a power loss can lose the last commits); sdd does (its
intake's commit is flushed with an fdatasync of the WAL before the spool file goes). `python -m bench._floor SPOOL DB`
prints `ready` once the watch is armed; on SIGTERM it writes `DB.times.json` ({name: time.time() after the
commit}) and exits.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import sys
import threading
import time

from sdd.intake.inotify import NameWatch


def main(spool: str, db: str) -> int:
    new = os.path.join(spool, "new")
    conn = sqlite3.connect(db, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("CREATE TABLE IF NOT EXISTS detections (name TEXT PRIMARY KEY, type TEXT, body TEXT)")
    done: dict[str, float] = {}
    stop = threading.Event()

    def on_names(names: list[str]) -> None:
        for name in names:
            path = os.path.join(new, name)
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            except FileNotFoundError:
                continue
            try:
                body = os.read(fd, 1 << 20)
            finally:
                os.close(fd)
            detection = json.loads(body)
            conn.execute("BEGIN")
            conn.execute("INSERT OR IGNORE INTO detections VALUES (?, ?, ?)", (name, detection.get("type"), body))
            conn.execute("COMMIT")
            done[name] = time.time()
            os.unlink(path)

    watch = NameWatch(new, on_names, lambda: None, lambda exc: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("ready", flush=True)
    stop.wait()
    watch.stop()
    watch.join(5)
    with open(db + ".times.json", "w") as f:
        json.dump(done, f)
    conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
