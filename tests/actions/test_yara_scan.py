"""run_scan with `engine: yara`: real rules compiled by yara-python from a root-owned directory, matched on
what the walk opened, cross-checked with Debian's `yara` command line on the same files — hostile names
(newlines, a name that looks like yara output, bytes that are not UTF-8), symlinks, FIFOs, growing and
oversized files, slow rules and rule files that may not be trusted."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from sdd.engine import ActionError, Forbidden, InvalidParams, NotFound
from sdd.executor import yara_scan
from tests.support.trusted import trusted_dir

from .conftest import Env

yara = pytest.importorskip("yara", reason="yara-python is not installed (make venv installs the yara extra)")
needs_yara_cli = pytest.mark.skipif(shutil.which("yara") is None, reason="Debian's yara is not installed")

RULES = {
    "droppers.yar": 'rule Dropper : malware linux { meta: severity = "critical" strings: $a = "SDD-DROPPER" '
                    'condition: $a }\n'
                    'rule DropperTwice { strings: $a = "SDD-DROPPER" condition: #a >= 2 }\n',
    "webshell.yara": 'rule PhpShell { strings: $e = "eval($_POST" condition: $e }\n',
}

# Quadratic in the file's size: minutes on a few MiB, so only a timeout ends it.
SLOW = ('rule Slow { condition: for all i in (0..filesize - 1) : '
        '(for all j in (0..filesize - 1) : (uint8(i) == uint8(j))) }\n')


def rules_dir(files: dict[str, str] | None = None) -> Path:
    d = trusted_dir("yara")
    for name, text in (RULES if files is None else files).items():
        (d / name).write_text(text)
        os.chmod(d / name, 0o644)
    return d


@pytest.fixture
def yenv(env: Env) -> Env:
    env.configure(yara_rules=rules_dir())
    return env


@pytest.fixture(autouse=True)
def _user_mode_unless_root(env: Env) -> None:
    """Not root, no directory is root's to make: the tests run as user mode does (the user's own rules)."""
    if os.geteuid() != 0:
        configure = env.configure
        env.configure = lambda **kw: configure(**{"user_mode": True, **kw})  # type: ignore[method-assign]
        env.configure()


def tree(root: Path) -> dict[str, Path]:
    """A tree with infected files under awkward names, clean files, and things never to be read."""
    base = root / "scan"
    (base / "sub dir").mkdir(parents=True)
    files = {
        "plain": base / "a.exe",
        "twice": base / "sub dir" / "twice.bin",
        "newline": base / "new\nline.exe",
        "lookalike": base / "x\nPhpShell clean.txt",   # reads like a second yara output line
        "shell": base / "up.php",
    }
    for key, path in files.items():
        path.write_bytes(b"..SDD-DROPPER..SDD-DROPPER.." if key == "twice" else
                         b"<?php eval($_POST['x']); ?>" if key == "shell" else b"..SDD-DROPPER..")
    (base / "clean.txt").write_text("fine")
    (base / "sub dir" / "empty").write_bytes(b"")
    return {**files, "base": base}


async def test_yara_findings_name_each_file_exactly(yenv: Env) -> None:
    t = tree(yenv.root)
    os.symlink(t["plain"], t["base"] / "link.exe")       # never followed, never scanned
    os.mkfifo(t["base"] / "pipe")                        # never opened
    res = await yenv.call("run_scan", path=str(t["base"]), engine="yara")
    assert res["engine"] == "yara" and res["scanner"].startswith("yara-python ") and res["exit_code"] is None
    found = {f["file"]: f for f in res["findings"]}
    assert set(found) == {str(t[k]) for k in ("plain", "twice", "newline", "lookalike", "shell")}
    assert res["threats_found"] == 5 and not res["clean"] and res["complete"]
    assert found[str(t["plain"])] == {"file": str(t["plain"]), "signature": "Dropper", "namespace": "droppers",
                                      "rules": ["droppers:Dropper"], "tags": ["malware", "linux"]}
    assert found[str(t["twice"])]["rules"] == ["droppers:Dropper", "droppers:DropperTwice"]
    assert found[str(t["shell"])]["signature"] == "PhpShell" and found[str(t["shell"])]["namespace"] == "webshell"
    assert res["summary"] == {"scanned_files": 7, "infected_files": 5, "errors": 0, "skipped_symlinks": 1,
                              "skipped_special": 1, "skipped_large": 0}
    assert res["rules"]["files"] == ["droppers.yar", "webshell.yara"]
    assert (t["base"] / "clean.txt").read_text() == "fine" and t["plain"].exists()   # a scan touches nothing


@needs_yara_cli
async def test_yara_agrees_with_debians_yara_on_the_same_files(yenv: Env) -> None:
    t = tree(yenv.root)
    bad_bytes = t["base"] / os.fsdecode(b"caf\xe9.exe")
    bad_bytes.write_bytes(b"SDD-DROPPER")
    res = await yenv.call("run_scan", path=str(t["base"]), engine="yara")
    ours = {(f["file"], r) for f in res["findings"] for r in f["rules"]}
    ours |= {(eval_escaped(f["file_escaped"]), r) for f in res["findings_undecodable"] for r in f["rules"]}
    cli = cli_matches(yenv.config.yara_rules, t["base"])
    assert ours == cli and len(cli) == 7


def cli_matches(rules: Path, base: Path) -> set[tuple[str, str]]:
    """(file, NS:RULE) as Debian's yara finds them, each file scanned alone so that a name holding a newline
    cannot be misread (`yara -e` prints `NS:RULE PATH`, PATH raw)."""
    sources = [f"{yara_scan.namespace_of(n)}:{rules / n}" for n in sorted(os.listdir(rules))]
    cli: set[tuple[str, str]] = set()
    for path in walk_files(base):
        r = subprocess.run(["yara", "-e", "-N", *sources, os.fsencode(path)], capture_output=True, timeout=60,
                           check=True)
        cli |= {(path, rule) for rule in _lines(r.stdout, os.fsencode(path))}
    return cli


def _lines(out: bytes, path: bytes) -> list[str]:
    """The rule names of yara's output for one file: each match is `RULE PATH\\n`, PATH raw."""
    rules = []
    rest = out
    while rest:
        rule, sep, tail = rest.partition(b" " + path + b"\n")
        assert sep, f"unexpected yara output {out!r}"
        rules.append(rule.decode())
        rest = tail
    return rules


def walk_files(base: Path) -> list[str]:
    out = []
    for dirpath, _, names in os.walk(base):
        for n in names:
            full = os.path.join(dirpath, n)
            if os.path.isfile(full) and not os.path.islink(full):
                out.append(full)
    return out


def eval_escaped(text: str) -> str:
    # `file_escaped` is ascii() of the str: a quoted literal whose only escapes are \xNN, \udcNN, \n, \\, \'.
    assert text[0] == text[-1] == "'"
    return text[1:-1].encode("ascii").decode("unicode_escape")


async def test_a_file_that_is_not_utf8_is_counted_and_listed_escaped(yenv: Env) -> None:
    base = yenv.root / "s"
    base.mkdir()
    (base / os.fsdecode(b"caf\xe9.exe")).write_bytes(b"SDD-DROPPER")
    res = await yenv.call("run_scan", path=str(base), engine="yara")
    assert res["threats_found"] == 1 and res["findings"] == []
    [item] = res["findings_undecodable"]
    assert item["signature"] == "Dropper" and "\\udce9" in item["file_escaped"]


async def test_a_single_file_and_a_clean_tree(yenv: Env) -> None:
    t = tree(yenv.root)
    res = await yenv.call("run_scan", path=str(t["shell"]), engine="yara", scan_type="file")
    assert [f["file"] for f in res["findings"]] == [str(t["shell"])]
    clean = yenv.root / "clean"
    clean.mkdir()
    (clean / "ok.txt").write_text("nothing here")
    res = await yenv.call("run_scan", path=str(clean), engine="yara")
    assert res["clean"] and res["threats_found"] == 0 and res["summary"]["scanned_files"] == 1


async def test_files_over_max_file_size_are_skipped_and_counted(yenv: Env) -> None:
    base = yenv.root / "big"
    base.mkdir()
    (base / "large.bin").write_bytes(b"SDD-DROPPER" + b"\0" * 5000)
    (base / "small.bin").write_bytes(b"SDD-DROPPER")
    res = await yenv.call("run_scan", path=str(base), engine="yara", max_file_size=1000)
    assert [f["file"] for f in res["findings"]] == [str(base / "small.bin")]
    assert res["summary"]["skipped_large"] == 1 and res["max_file_size"] == 1000
    with pytest.raises(InvalidParams, match="max_file_size"):
        await yenv.call("run_scan", path=str(base), engine="yara", max_file_size=0)
    with pytest.raises(InvalidParams, match="applies to engine: yara"):
        await yenv.call("run_scan", path=str(base), max_file_size=1000)


def test_reading_stops_at_the_limit_even_when_the_file_grows(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"a" * 10)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert yara_scan.read_whole(fd, 10) == b"a" * 10
        with open(path, "ab") as f:
            f.write(b"b")     # grew after the size was looked at: more than the limit is never held
        assert yara_scan.read_whole(fd, 10) is None
    finally:
        os.close(fd)


async def test_outside_the_allowed_roots_is_refused(yenv: Env) -> None:
    (yenv.outside / "x").write_bytes(b"SDD-DROPPER")
    with pytest.raises(Forbidden, match="outside the allowed roots"):
        await yenv.call("run_scan", path=str(yenv.outside), engine="yara")


async def test_the_walk_never_leaves_the_tree_through_a_symlinked_directory(yenv: Env) -> None:
    (yenv.outside / "x.exe").write_bytes(b"SDD-DROPPER")
    base = yenv.root / "s"
    base.mkdir()
    os.symlink(yenv.outside, base / "escape")
    res = await yenv.call("run_scan", path=str(base), engine="yara")
    assert res["threats_found"] == 0 and res["summary"]["skipped_symlinks"] == 1


async def test_rules_are_compiled_once_per_change(yenv: Env) -> None:
    t = tree(yenv.root)
    first = yara_scan.compiled_rules(yenv.config.yara_rules, user_mode=False)
    assert yara_scan.compiled_rules(yenv.config.yara_rules, user_mode=False) is first
    rule = yenv.config.yara_rules / "webshell.yara"
    rule.write_text('rule PhpShell2 { strings: $e = "eval($_POST" condition: $e }\n')
    second = yara_scan.compiled_rules(yenv.config.yara_rules, user_mode=False)
    assert second is not first and second.sha256 != first.sha256
    res = await yenv.call("run_scan", path=str(t["shell"]), engine="yara")
    assert res["findings"][0]["signature"] == "PhpShell2" and res["rules"]["sha256"] == second.sha256


@pytest.mark.skipif(os.geteuid() != 0, reason="the root-owned rule applies to root in system mode")
async def test_rules_a_user_could_change_are_refused(env: Env, tmp_path: Path) -> None:
    (env.root / "x").write_bytes(b"SDD-DROPPER")
    loose = tmp_path / "rules"        # under the world-writable /tmp
    loose.mkdir()
    (loose / "r.yar").write_text(RULES["droppers.yar"])
    env.configure(yara_rules=loose)
    with pytest.raises(Forbidden, match="YARA rules directory is refused"):
        await env.call("run_scan", path=str(env.root), engine="yara")
    good = rules_dir()
    os.chmod(good / "droppers.yar", 0o666)
    env.configure(yara_rules=good)
    with pytest.raises(Forbidden, match="droppers.yar is owned by uid 0 with mode 0666"):
        await env.call("run_scan", path=str(env.root), engine="yara")
    os.chmod(good / "droppers.yar", 0o644)
    os.chown(good / "droppers.yar", 65534, 65534)
    with pytest.raises(Forbidden, match="owned by uid 65534"):
        await env.call("run_scan", path=str(env.root), engine="yara")
    os.chown(good / "droppers.yar", 0, 0)
    os.symlink(good / "droppers.yar", good / "linked.yar")
    with pytest.raises(Forbidden, match="linked.yar is a symbolic link"):
        await env.call("run_scan", path=str(env.root), engine="yara")
    os.unlink(good / "linked.yar")
    res = await env.call("run_scan", path=str(env.root), engine="yara")   # the positive control
    assert res["threats_found"] == 1


async def test_bad_rules_fail_the_step_clearly(env: Env) -> None:
    (env.root / "x").write_bytes(b"data")
    env.configure(yara_rules=rules_dir({"broken.yar": "rule Broken { condition: nosuchthing }\n"}))
    with pytest.raises(ActionError, match=r"do not compile: .*undefined identifier \"nosuchthing\"") as e:
        await env.call("run_scan", path=str(env.root), engine="yara")
    assert not e.value.retryable
    env.configure(yara_rules=rules_dir({"inc.yar": 'include "/etc/passwd"\n'}))
    with pytest.raises(ActionError, match="includes are disabled"):
        await env.call("run_scan", path=str(env.root), engine="yara")
    env.configure(yara_rules=rules_dir({"README": "not a rule file"}))
    with pytest.raises(NotFound, match=r"no YARA rule files \(\*.yar, \*.yara\)"):
        await env.call("run_scan", path=str(env.root), engine="yara")
    d = rules_dir({})
    (d / "latin1.yar").write_bytes(b'rule R { strings: $a = "caf\xe9" condition: $a }\n')
    env.configure(yara_rules=d)
    with pytest.raises(ActionError, match="latin1.yar is not UTF-8"):
        await env.call("run_scan", path=str(env.root), engine="yara")
    env.configure(yara_rules=trusted_dir("yara") / "missing")
    with pytest.raises(NotFound, match="does not exist"):
        await env.call("run_scan", path=str(env.root), engine="yara")


async def test_a_slow_match_is_cut_off_per_file_and_reported(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    base = env.root / "s"
    base.mkdir()
    (base / "slow.bin").write_bytes(b"a" * (4 << 20))
    (base / "fast.bin").write_bytes(b"SDD-DROPPER")
    env.configure(yara_rules=rules_dir({"slow.yar": SLOW, "droppers.yar": RULES["droppers.yar"]}))
    monkeypatch.setattr(yara_scan, "FILE_TIMEOUT", 1)
    start = time.monotonic()
    res = await env.call("run_scan", path=str(base), engine="yara")
    assert time.monotonic() - start < 30
    assert [f["file"] for f in res["findings"]] == [str(base / "fast.bin")]
    assert not res["complete"] and res["errors"] == [{"file": str(base / "slow.bin"),
                                                      "error": "YARA: the match took longer than 1 s; not decided"}]


async def test_matches_per_file_are_bounded(env: Env) -> None:
    many = "".join(f'rule R{i} {{ strings: $a = "SDD" condition: $a }}\n' for i in range(200))
    env.configure(yara_rules=rules_dir({"many.yar": many}))
    (env.root / "x").write_bytes(b"SDD")
    res = await env.call("run_scan", path=str(env.root), engine="yara")
    [finding] = res["findings"]
    assert len(finding["rules"]) == yara_scan.MAX_RULES_PER_FILE and finding["signature"] == "R0"


async def test_the_step_timeout_stops_the_walk(env: Env) -> None:
    env.configure(yara_rules=rules_dir({"slow.yar": SLOW}))
    base = env.root / "many"
    base.mkdir()
    for i in range(5):
        (base / f"f{i}").write_bytes(b"a" * (4 << 20))   # each would take FILE_TIMEOUT (60 s) to give up
    start = time.monotonic()
    res = await env.step("run_scan", {"path": str(base), "engine": "yara", "timeout": 1.0}, max_retries=0)
    step = res.step_results["s"]
    assert step.status.value == "failed" and "timed out after 1 s" in (step.error or "")
    assert time.monotonic() - start < 15   # the match in hand is cut at what the step had left


async def test_yara_missing_is_a_clear_error(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_yara(name: str, *args: object, **kw: object) -> object:
        if name == "yara":
            raise ImportError("No module named 'yara'")
        return real_import(name, *args, **kw)  # type: ignore[arg-type]

    env.configure(yara_rules=rules_dir())
    monkeypatch.setattr(builtins, "__import__", no_yara)
    with pytest.raises(ActionError, match="python3-yara"):
        await env.call("run_scan", path=str(env.root), engine="yara")


def test_check_config_refuses_a_rules_directory_others_can_change(tmp_path: Path) -> None:
    from sdd.config import parse_config
    from sdd.daemon.loading import yara_rules_problems

    if os.geteuid() != 0:
        pytest.skip("the root-owned rule applies to root")
    loose = tmp_path / "yara"
    loose.mkdir()
    config = parse_config({"actions": {"yara_rules": str(loose)}})
    [problem] = yara_rules_problems(config)
    assert "actions.yara_rules refused" in problem and "writable by everyone" in problem
    assert yara_rules_problems(parse_config({"actions": {"yara_rules": str(rules_dir())}})) == []
    assert yara_rules_problems(parse_config({"actions": {"yara_rules": str(tmp_path / "absent")}})) == []
