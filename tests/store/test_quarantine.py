"""Quarantine index, exclusions (with their audit records), false positives and the audit log."""

from __future__ import annotations

import pytest

from sdd.store import Store, StoreValueError

SHA = "0123456789abcdef" * 4


async def test_quarantine_records_are_found_by_hash_path_and_run(store: Store) -> None:
    q1 = await store.put_quarantine({"sha256": SHA.upper(), "original_path": "/home/a/x.exe", "size": 10,
                                     "uid": 1000, "gid": 1000, "mode": 0o644, "mtime": 1.5, "detection_id": "7",
                                     "run_id": "r1", "threat_name": "Eicar", "quarantined_at": 100.0,
                                     "blob": "vault/abc", "xattrs": {"user.a": "b"}})
    q2 = await store.put_quarantine({"id": "fixed-id", "sha256": SHA, "original_path": "/home/a/x.exe",
                                     "quarantined_at": 200.0})
    assert q2 == "fixed-id"
    rec = store.get_quarantine(q1)
    assert rec is not None
    assert (rec["sha256"], rec["uid"], rec["mode"], rec["run_id"]) == (SHA, 1000, 0o644, "r1")
    assert rec["extra"] == {"blob": "vault/abc", "xattrs": {"user.a": "b"}}
    assert [r["id"] for r in store.find_quarantine(sha256=SHA)] == [q2, q1]
    assert [r["id"] for r in store.find_quarantine(original_path="/home/a/x.exe", run_id="r1")] == [q1]
    assert await store.mark_restored(q2, restored_to="/home/a/x.exe")
    assert [r["id"] for r in store.find_quarantine(sha256=SHA)] == [q1]
    assert len(store.find_quarantine(sha256=SHA, include_restored=True)) == 2
    assert store.get_quarantine(q2)["restored_at"] is not None  # type: ignore[index]
    assert not await store.mark_restored("nope")
    assert store.counts()["quarantined"] == 1
    assert [r["id"] for r in store.list_quarantine(restored=False).items] == [q1]
    assert [r["id"] for r in store.list_quarantine(limit=1).items] == [q2]
    page = store.list_quarantine(limit=1)
    assert [r["id"] for r in store.list_quarantine(limit=1, cursor=page.cursor).items] == [q1]
    with pytest.raises(StoreValueError):
        store.find_quarantine()


@pytest.mark.parametrize("meta, field", [({"original_path": "/x"}, "sha256"),
                                         ({"sha256": "zz", "original_path": "/x"}, "sha256"),
                                         ({"sha256": SHA}, "original_path"),
                                         ({"sha256": SHA, "original_path": "/x", "uid": "root"}, "uid")])
async def test_quarantine_meta_is_validated(store: Store, meta: dict[str, object], field: str) -> None:
    with pytest.raises(StoreValueError, match=field):
        await store.put_quarantine(meta)


async def test_a_quarantine_id_cannot_be_reused_for_another_file(store: Store) -> None:
    await store.put_quarantine({"id": "q", "sha256": SHA, "original_path": "/x"})
    with pytest.raises(StoreValueError, match="already names another file"):
        await store.put_quarantine({"id": "q", "sha256": SHA, "original_path": "/y"})
    assert store.get_quarantine("q")["original_path"] == "/x"


async def test_quarantining_a_restored_file_again_makes_it_quarantined_again(store: Store) -> None:
    await store.put_quarantine({"id": "q", "sha256": SHA, "original_path": "/x", "quarantined_at": 100.0})
    await store.put_quarantine({"id": "q", "sha256": SHA, "original_path": "/x", "quarantined_at": 150.0})
    assert store.get_quarantine("q")["quarantined_at"] == 100.0  # a re-run keeps the first time
    assert await store.mark_restored("q", restored_at=200.0, restored_to="/x")
    assert store.get_quarantine("q")["restored_at"] == 200.0
    await store.put_quarantine({"id": "q", "sha256": SHA, "original_path": "/x", "quarantined_at": 300.0,
                                "detection_id": "d2"})
    again = store.get_quarantine("q")
    assert again["restored_at"] is None and again["quarantined_at"] == 300.0 and again["detection_id"] == "d2"


async def test_exclusions_cover_hashes_paths_and_subtrees(store: Store) -> None:
    assert await store.add_exclusion("sha256", SHA.upper(), "known good", actor=0)
    assert not await store.add_exclusion("sha256", SHA, "again", actor=0)
    assert await store.add_exclusion("path", "/srv/build//out/", "build output", actor="uid:1000")
    assert store.is_excluded(sha256=SHA)
    assert store.is_excluded(sha256=SHA.upper())
    assert store.is_excluded(path="/srv/build/out")
    assert store.is_excluded(path="/srv/build/out/deep/file.bin")
    assert not store.is_excluded(path="/srv/build/outside")
    assert not store.is_excluded(path="/srv/build")
    assert not store.is_excluded(path="relative/srv/build/out")
    assert not store.is_excluded(path="/srv/\udcff")
    assert not store.is_excluded()
    assert [(e["kind"], e["value"]) for e in store.list_exclusions()] == [("path", "/srv/build/out"),
                                                                          ("sha256", SHA)]
    assert await store.remove_exclusion("path", "/srv/build/out", actor=0)
    assert not await store.remove_exclusion("path", "/srv/build/out", actor=0)
    assert not store.is_excluded(path="/srv/build/out/x")
    audit = store.list_audit(limit=10).items
    assert [(a["action"], a["outcome"], a["actor"]) for a in reversed(audit)] == [
        ("exclusion.add", "ok", "uid:0"), ("exclusion.add", "exists", "uid:0"),
        ("exclusion.add", "ok", "uid:1000"), ("exclusion.remove", "ok", "uid:0"),
        ("exclusion.remove", "absent", "uid:0")]


@pytest.mark.parametrize("kind, value", [("md5", SHA), ("sha256", "abc"), ("path", "relative/x"), ("path", 5)])
async def test_bad_exclusions_are_refused(store: Store, kind: str, value: object) -> None:
    with pytest.raises(StoreValueError):
        await store.add_exclusion(kind, value)  # type: ignore[arg-type]


async def test_false_positives_and_audit_log(store: Store) -> None:
    fp = await store.log_false_positive("12", run_id="r", sha256=SHA, file_path="/x", threat_name="T",
                                        reason="vendor tool", actor=1000, details={"ticket": 5})
    assert store.list_false_positives()[0]["id"] == fp
    assert store.list_false_positives()[0]["details"] == {"ticket": 5}
    await store.audit("detection:12", "delete_file", "/home/a/x.exe", detection_id="12", run_id="r",
                      outcome="ok", details={"size": 10})
    await store.audit(0, "quarantine.restore", "q1", outcome="failed", details={"error": "exists"})
    await store.audit(None, "purge", None)
    entries = store.list_audit(limit=2)
    assert [e["actor"] for e in entries.items] == ["sdd", "uid:0"]
    more = store.list_audit(limit=2, cursor=entries.cursor)
    assert more.items[0]["details"] == {"size": 10} and more.items[0]["target"] == "/home/a/x.exe"
    assert [e["action"] for e in store.list_audit(run_id="r").items] == ["delete_file"]
    with pytest.raises(StoreValueError, match="action"):
        await store.audit(0, None, "x")  # type: ignore[arg-type]
