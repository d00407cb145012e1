"""The Debian packages, for real: build them (`packaging/build-deb.sh`, lintian included), install them
with `dpkg -i` on this machine, check what they put in place, run the installed daemon on Debian's own
Python libraries, and purge them again. Slow (a package build), so `make test-slow` runs it.

It needs root and the Debian tool-chain (tests/system-deps.sh), and it refuses to run where sdd is already
installed or has left state behind: purging at the end would destroy it.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .units import REPO, tmpfiles_entries

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

PACKAGES = ("sdd", "sdd-client")
SYSTEM_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root"}
LEFTOVERS = (Path("/etc/sdd"), Path("/var/lib/sdd"), Path("/var/spool/sdd"), Path("/usr/share/sdd"),
             Path("/usr/bin/sdd"), Path("/usr/bin/sddctl"))
GROUPS = ("sdd", "sdd-submit")


def _run(argv: list[str], timeout: float = 300, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=False, capture_output=True, text=True, timeout=timeout, env=SYSTEM_ENV,
                          **kw)


def _installed(package: str) -> bool:
    result = _run(["dpkg-query", "-W", "-f=${db:Status-Status}", package])
    return result.returncode == 0 and result.stdout.strip() not in ("", "not-installed", "config-files")


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root to install packages with dpkg -i"
    for tool in ("dpkg-buildpackage", "dh", "pybuild", "dpkg", "apt-get"):
        if shutil.which(tool, path=SYSTEM_ENV["PATH"]) is None:
            return f"{tool} is not installed (see tests/system-deps.sh)"
    for package in PACKAGES:
        if _installed(package):
            return f"package {package} is already installed here; not touching it"
    left = [str(p) for p in LEFTOVERS if os.path.lexists(p)]
    if left:
        return f"sdd state already exists here ({', '.join(left)}); purging would destroy it"
    return None


@pytest.fixture(scope="module")
def debs() -> Iterator[dict[str, Path]]:
    reason = _why_not()
    if reason:
        pytest.skip(reason)
    out = Path(tempfile.mkdtemp(prefix="sdd-debs-"))
    try:
        result = _run(["bash", str(REPO / "packaging" / "build-deb.sh"), str(out)], timeout=600)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        found = {p.name.split("_")[0]: p for p in out.glob("*.deb")}
        assert set(found) == set(PACKAGES), found
        # build-deb.sh fails on lintian errors; warnings are kept for whoever wants to read them.
        assert (out / "lintian.txt").exists()
        yield found
    finally:
        shutil.rmtree(out, ignore_errors=True)


def _dependencies(debs: dict[str, Path]) -> list[str]:
    """Names from the packages' Depends that are not installed yet (and are not our own packages)."""
    names = set()
    for deb in debs.values():
        depends = _run(["dpkg-deb", "-f", str(deb), "Depends"]).stdout
        for item in depends.split(","):
            name = item.split("|")[0].split("(")[0].split(":")[0].strip()
            if name and name not in PACKAGES and not _installed(name):
                names.add(name)
    return sorted(names)


@pytest.fixture(scope="module")
def installed(debs: dict[str, Path]) -> Iterator[dict[str, Path]]:
    missing = _dependencies(debs)
    if missing:
        got = _run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing], timeout=600)
        if got.returncode != 0:
            pytest.skip(f"cannot install the dependencies {missing} with apt-get: {got.stderr[-500:]}")
    groups_before = {g for g in GROUPS if _group_exists(g)}
    try:
        result = _run(["dpkg", "-i", str(debs["sdd-client"]), str(debs["sdd"])])
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        yield debs
    finally:
        purged = _run(["dpkg", "--purge", *PACKAGES])
        # Debian leaves system groups behind on purge; a test leaves the machine as it found it.
        for group in GROUPS:
            if group not in groups_before and _group_exists(group):
                _run(["groupdel", group])
        assert purged.returncode == 0, purged.stdout + purged.stderr


def test_installed_files_are_in_place(installed: dict[str, Path]) -> None:
    for path in ("/usr/bin/sdd", "/usr/bin/sddctl", "/usr/bin/sdd-notifier", "/usr/bin/sdd-ingest",
                 "/usr/libexec/sdd/sdd-virusevent"):
        assert os.access(path, os.X_OK), path
    for path in ("/lib/systemd/system/sdd.service", "/lib/systemd/system/sdd.socket",
                 "/lib/systemd/system/sdd-executor.service", "/lib/systemd/system/sdd-executor.socket",
                 "/usr/lib/sysusers.d/sdd.conf", "/usr/lib/tmpfiles.d/sdd.conf", "/etc/sdd/sdd.toml",
                 "/usr/share/doc/sdd/security.md", "/usr/share/doc/sdd/operations.md"):
        assert Path(path).is_file(), path
    assert "/etc/sdd/sdd.toml" in Path("/var/lib/dpkg/info/sdd.conffiles").read_text().split()
    for template in sorted((REPO / "templates").glob("*.yaml")):
        assert (Path("/usr/share/sdd/templates") / template.name).read_bytes() == template.read_bytes()
    for policy in sorted((REPO / "packaging" / "dbus").glob("*.conf")):
        assert (Path("/usr/share/dbus-1/system.d") / policy.name).read_bytes() == policy.read_bytes()
    if (REPO / "systemd" / "sdd-notifier.service").exists():
        assert Path("/usr/lib/systemd/user/sdd-notifier.service").is_file()
    for page in sorted((REPO / "docs" / "man").glob("*.[18]")):
        assert Path(f"/usr/share/man/man{page.suffix[1:]}/{page.name}.gz").is_file(), page.name


def test_groups_and_spool_are_created_with_their_modes(installed: dict[str, Path]) -> None:
    gids = {name: grp.getgrnam(name).gr_gid for name in GROUPS}
    account = pwd.getpwnam("sdd")  # the daemon's user (sysusers.d, or the postinst's adduser)
    assert account.pw_uid != 0 and account.pw_shell.endswith("nologin")
    for entry in tmpfiles_entries():
        st = os.lstat(entry.path)
        assert st.st_mode & 0o7777 == entry.mode, entry.path
        assert st.st_uid == (0 if entry.user == "root" else account.pw_uid), entry.path
        assert st.st_gid == (0 if entry.group == "root" else gids[entry.group]), entry.path
    try:
        pwd.getpwnam("clamav")
    except KeyError:
        return
    assert "clamav" in grp.getgrnam("sdd-submit").gr_mem
    assert "clamav" not in grp.getgrnam("sdd").gr_mem


def test_installed_units_verify_without_warnings(installed: dict[str, Path]) -> None:
    analyze = shutil.which("systemd-analyze", path=SYSTEM_ENV["PATH"])
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # The installed units name the installed programs: nothing is rewritten here. The man pages in
    # Documentation= are checked too when the package ships them and man is there to look.
    shipped_man = Path("/usr/share/man/man8/sdd.8.gz").exists() and Path("/usr/share/man/man1/sddctl.1.gz").exists()
    man = "--man=yes" if shipped_man and shutil.which("man", path=SYSTEM_ENV["PATH"]) else "--man=no"
    result = _run([analyze, "verify", man, *(f"/lib/systemd/system/{u}" for u in (
        "sdd.service", "sdd.socket", "sdd-executor.service", "sdd-executor.socket"))])
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_installed_check_config_and_sddctl_work(installed: dict[str, Path]) -> None:
    result = _run(["/usr/bin/sdd", "check-config"])
    assert result.returncode == 0, result.stdout + result.stderr
    result = _run(["/usr/bin/sddctl", "--help"])
    assert result.returncode == 0 and "submit" in result.stdout, result.stdout + result.stderr


def test_installed_daemon_runs_as_shipped_and_takes_a_clamav_submission(installed: dict[str, Path]) -> None:
    """`/usr/bin/sdd --config /etc/sdd/sdd.toml` — the unit's ExecStart, on Debian's python3 and python3-*
    libraries and the shipped conffile, spool and templates — gets ready; clamd's VirusEvent command run as
    `clamav` (as the package set it up) submits a detection; the shipped critical_threat_response
    workflow quarantines the file — through the root executor, the daemon running as `sdd` — and SIGTERM
    stops both cleanly."""
    work = Path(tempfile.mkdtemp(prefix="sdd-deb-run-", dir="/tmp"))
    try:
        work.chmod(0o755)
        victim = work / "invoice.exe"
        victim.write_bytes(b"pretend malware\n" * 10)
        notify = work / "notify.sock"
        log_file = work / "daemon.log"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        listener.bind(str(notify))
        os.chmod(notify, 0o666)  # READY=1 comes from the daemon, which runs as sdd
        listener.settimeout(0.5)
        with open(log_file, "wb") as log:
            proc = subprocess.Popen(["/usr/bin/sdd", "--config", "/etc/sdd/sdd.toml"],
                                    env={**SYSTEM_ENV, "NOTIFY_SOCKET": str(notify)},
                                    stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            messages: list[str] = []
            while not any("READY=1" in m.splitlines() for m in messages):
                assert proc.poll() is None, log_file.read_text()
                assert time.monotonic() < deadline, "no READY=1:\n" + log_file.read_text()
                try:
                    messages.append(listener.recv(65536).decode())
                except TimeoutError:
                    pass
            status = _run(["/usr/bin/sddctl", "status", "--json"], timeout=60)
            assert status.returncode == 0, status.stdout + status.stderr
            assert json.loads(status.stdout)["state"] == "running"
            # Started as root outside systemd: the daemon runs as sdd, only the executor side as root.
            kids = {int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()}
            uids = {pid: int(Path(f"/proc/{pid}/status").read_text().split("Uid:")[1].split()[0]) for pid in kids}
            assert sorted(uids.values()) == sorted([0, pwd.getpwnam("sdd").pw_uid]), uids

            # clamd's VirusEvent: `sddctl submit --clamav` with only the two variables, as user clamav.
            event = {"CLAM_VIRUSEVENT_FILENAME": str(victim), "CLAM_VIRUSEVENT_VIRUSNAME": "Test.Sample"}
            as_clamav = ([shutil.which("setpriv", path=SYSTEM_ENV["PATH"]) or "setpriv", "--reuid=clamav",
                          "--regid=clamav", "--init-groups"] if _user_exists("clamav") else [])
            submit = subprocess.run([*as_clamav, "/usr/bin/sddctl", "submit", "--clamav"], env=event,
                                    capture_output=True, text=True, timeout=60, check=False)
            assert submit.returncode == 0, submit.stdout + submit.stderr

            deadline = time.monotonic() + 180  # the template's mail step retries when no MTA listens
            while True:
                history = _run(["/usr/bin/sddctl", "history", "--json"], timeout=60)
                assert history.returncode == 0, history.stdout + history.stderr
                runs = json.loads(history.stdout)["items"]
                if runs and runs[0]["status"] not in ("pending", "running"):
                    break
                assert proc.poll() is None, log_file.read_text()
                assert time.monotonic() < deadline, "no finished run:\n" + log_file.read_text()
                time.sleep(0.2)  # poll interval of a deadline-bounded wait
            assert (runs[0]["workflow_id"], runs[0]["status"]) == ("critical_threat_response", "completed"), (
                runs[0], log_file.read_text())
            assert not victim.exists()
            vault = json.loads(_run(["/usr/bin/sddctl", "quarantine", "list", "--json"]).stdout)["items"]
            assert [i["original_path"] for i in vault] == [str(victim)]
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            listener.close()
        assert proc.returncode == 0, log_file.read_text()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def test_purge_removes_everything(installed: dict[str, Path]) -> None:
    """Runs last in this module (pytest keeps file order): purges, then the fixture's purge is a no-op."""
    result = _run(["dpkg", "--purge", *PACKAGES])
    assert result.returncode == 0, result.stdout + result.stderr
    for package in PACKAGES:
        assert not _installed(package), package
    for path in LEFTOVERS + (Path("/lib/systemd/system/sdd.service"),
                             Path("/etc/systemd/system/multi-user.target.wants/sdd.service"),
                             Path("/etc/systemd/system/sockets.target.wants/sdd.socket")):
        assert not os.path.lexists(path), path
