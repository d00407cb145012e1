"""kill_process on real processes (some as another user): only a process linked to the detected file, never
by its name, never a thread, never sdd or its ancestors; TERM then KILL, trees, pid reuse."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from sdd.actions import Vault
from sdd.config import ConfigError, RateLimit, parse_config
from sdd.engine import Conflict, Forbidden, InvalidParams, NotFound, RunStatus, Workflow

from .conftest import Env
from .procs import NOBODY, SYSTEM_PYTHON, Procs, gone, holder_code, needs_other_user, wait_until

SLEEP = os.path.realpath(shutil.which("sleep") or "/bin/sleep")


@pytest.fixture
def kenv(env: Env, area: Path) -> Env:
    env.configure(allowed_roots=(env.root, area))
    return env


def malware(area: Path, name: str = "sshd") -> Path:
    """The detected file: an executable (a copy of sleep) that calls itself `name`."""
    path = area / name
    shutil.copy(SLEEP, path)
    os.chmod(path, 0o755)
    return path


def start_time(pid: int) -> float:
    return psutil.Process(pid).create_time()


async def wait_dead(pid: int) -> bool:
    deadline = time.monotonic() + 10
    while not gone(pid):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)  # orphans are reaped by init: poll with a deadline
    return True


# -- the process running the detected file is killed, whatever it calls itself --------------------------------

@needs_other_user
async def test_a_process_named_sshd_running_the_detected_file_is_killed(kenv: Env, area: Path, procs: Procs) -> None:
    bad = malware(area, "sshd")
    p = procs.run([str(bad), "300"], user=NOBODY, exe=bad)
    assert psutil.Process(p.pid).name() == "sshd" and "/usr/sbin/sshd" in kenv.config.protected_processes
    res = await kenv.call("kill_process", file_path=str(bad))
    assert res["terminated"] == [p.pid] and p.wait(timeout=10) == -signal.SIGTERM
    assert res["processes"] == [{"pid": p.pid, "start_time": res["processes"][0]["start_time"], "exe": str(bad),
                                 "uid": NOBODY, "linked": ["executes", "mapped"]}]
    assert res["evidence"]["source"] == "file"


@needs_other_user
async def test_file_path_kills_every_holder_and_leaves_the_rest(kenv: Env, area: Path, procs: Procs) -> None:
    bad = malware(area)
    runs = procs.run([str(bad), "300"], user=NOBODY, exe=bad)
    opens = procs.python(holder_code(bad, "open"), user=NOBODY)
    maps = procs.python(holder_code(bad, "map"), user=NOBODY)
    clean = procs.run([SLEEP, "300"], user=NOBODY, exe=Path(SLEEP))
    res = await kenv.call("kill_process", file_path=str(bad))
    linked = {p["pid"]: p["linked"] for p in res["processes"]}
    assert linked == {runs.pid: ["executes", "mapped"], opens.pid: ["open"], maps.pid: ["mapped"]}
    assert sorted(res["terminated"]) == sorted([runs.pid, opens.pid, maps.pid])
    for p in (runs, opens, maps):
        assert p.wait(timeout=10) == -signal.SIGTERM
    assert clean.poll() is None


async def test_file_path_with_no_holder_does_nothing(kenv: Env, area: Path) -> None:
    bad = malware(area)
    kenv.configure(allowed_roots=(area,), rate_limits={"kill_process": RateLimit(1, 3600.0)})
    for _ in range(2):  # the rate limit counts signals sent, not lookups
        res = await kenv.call("kill_process", file_path=str(bad))
        assert res["processes"] == [] and res["terminated"] == [] and not res["already_gone"]


@needs_other_user
async def test_process_id_linked_to_the_file_is_killed_and_term_escalates(kenv: Env, area: Path,
                                                                           procs: Procs) -> None:
    bad = malware(area)
    p = procs.python(holder_code(bad), user=NOBODY, ignore_term=True)
    res = await kenv.call("kill_process", process_id=str(p.pid), file_path=str(bad), timeout=0.2)
    assert res["killed"] == [p.pid] and p.wait(timeout=10) == -signal.SIGKILL


@needs_other_user
async def test_the_detections_file_path_is_the_evidence_for_its_process_id(kenv: Env, area: Path,
                                                                           procs: Procs) -> None:
    bad = malware(area)
    p = procs.run([str(bad), "300"], user=NOBODY, exe=bad)
    result = await kenv.step("kill_process", {"process_id": "{{ detection.process_id }}"},
                             detection={"process_id": p.pid, "file_path": str(bad)})
    assert result.status is RunStatus.COMPLETED, result.error
    assert p.wait(timeout=10) == -signal.SIGTERM


# -- a claimed pid with no link is refused -------------------------------------------------------------------

@needs_other_user
async def test_a_clean_process_given_as_process_id_is_refused_even_with_its_start_time(
        kenv: Env, area: Path, procs: Procs) -> None:
    bad = malware(area)
    clean = procs.run([SLEEP, "300"], user=NOBODY, exe=Path(SLEEP))
    with pytest.raises(Forbidden, match=f"pid {clean.pid} .* neither executes, holds open nor maps {bad}"):
        await kenv.call("kill_process", process_id=clean.pid, process_start_time=start_time(clean.pid),
                        file_path=str(bad))
    result = await kenv.step("kill_process", {"process_id": "{{ detection.process_id }}"},
                             detection={"process_id": clean.pid, "process_start_time": start_time(clean.pid),
                                        "file_path": str(bad)})
    assert result.status is RunStatus.FAILED and "trust_process_id" in (result.error or "")
    assert clean.poll() is None


async def test_a_process_id_without_any_file_is_refused(kenv: Env, procs: Procs) -> None:
    clean = procs.run([SLEEP, "300"], exe=Path(SLEEP))
    with pytest.raises(Forbidden, match="nothing links pid"):
        await kenv.call("kill_process", process_id=clean.pid, process_start_time=start_time(clean.pid))
    assert clean.poll() is None


async def test_evidence_outside_the_allowed_roots_is_refused(kenv: Env, procs: Procs) -> None:
    p = procs.run([SLEEP, "300"], exe=Path(SLEEP))
    with pytest.raises(Forbidden, match="outside the allowed roots"):
        await kenv.call("kill_process", file_path=SLEEP)  # would be every sleep on the host
    with pytest.raises(Forbidden, match="outside the allowed roots"):
        await kenv.call("kill_process", process_id=p.pid, file_path=SLEEP)
    assert p.poll() is None


async def test_evidence_that_is_a_symlink_or_missing_is_refused(kenv: Env, area: Path) -> None:
    os.symlink(SLEEP, area / "link")
    with pytest.raises(Forbidden, match="symbolic link"):
        await kenv.call("kill_process", file_path=str(area / "link"))
    with pytest.raises(NotFound, match="no process can be linked"):
        await kenv.call("kill_process", file_path=str(area / "missing"))


# -- trust_process_id: the producer's word, with its start time ------------------------------------------

async def test_trust_process_id_needs_and_checks_the_start_time(kenv: Env, procs: Procs) -> None:
    p = procs.run([SLEEP, "300"], exe=Path(SLEEP))
    with pytest.raises(InvalidParams, match="process_start_time"):
        await kenv.call("kill_process", process_id=p.pid, trust_process_id=True)
    with pytest.raises(Conflict, match="reused"):
        await kenv.call("kill_process", process_id=p.pid, trust_process_id=True,
                        process_start_time=start_time(p.pid) - 30)
    assert p.poll() is None
    res = await kenv.call("kill_process", process_id=p.pid, trust_process_id=True,
                          process_start_time=start_time(p.pid))
    assert res["terminated"] == [p.pid] and res["processes"][0]["linked"] == ["trusted"]
    assert p.wait(timeout=10) == -signal.SIGTERM


# -- never signalled ---------------------------------------------------------------------------------------

def _thread_id() -> tuple[int, threading.Event, threading.Thread]:
    stop = threading.Event()
    ready = threading.Event()
    tid: list[int] = []

    def body() -> None:
        tid.append(threading.get_native_id())
        ready.set()
        stop.wait(60)
    t = threading.Thread(target=body)
    t.start()
    ready.wait(10)
    return tid[0], stop, t


async def test_a_thread_of_sdd_itself_is_refused(kenv: Env) -> None:
    tid, stop, t = _thread_id()
    try:
        assert tid != os.getpid()
        with pytest.raises(Forbidden, match=f"{tid} is a thread of sdd itself, not a process"):
            await kenv.call("kill_process", process_id=tid, trust_process_id=True,
                            process_start_time=start_time(os.getpid()))
        assert t.is_alive()
    finally:
        stop.set()
        t.join()


async def test_a_thread_of_another_process_is_refused(kenv: Env, procs: Procs) -> None:
    p = procs.python("import threading, time, sys\n"
                     "t = threading.Thread(target=time.sleep, args=(300,), daemon=True); t.start()\n"
                     "print('ready', flush=True)\ntime.sleep(300)\n")
    tids = [int(t) for t in os.listdir(f"/proc/{p.pid}/task") if int(t) != p.pid]
    with pytest.raises(Forbidden, match=f"{tids[0]} is a thread of process {p.pid}"):
        await kenv.call("kill_process", process_id=tids[0], trust_process_id=True,
                        process_start_time=start_time(p.pid))
    assert p.poll() is None


@pytest.mark.parametrize("who, message", [("init", "pid 1"), ("self", "sdd itself"), ("parent", "ancestor of sdd"),
                                          ("kthreadd", "kernel thread")])
async def test_refuses_init_sdd_its_ancestors_and_kernel_threads(kenv: Env, who: str, message: str) -> None:
    pid = {"init": 1, "self": os.getpid(), "parent": os.getppid(), "kthreadd": 2}[who]
    if who == "kthreadd" and not os.path.exists("/proc/2"):
        pytest.skip("no kthreadd visible in this pid namespace")
    with pytest.raises(Forbidden, match=message):
        await kenv.call("kill_process", process_id=pid, trust_process_id=True, process_start_time=start_time(pid))


# -- protection is by what the process runs, and as whom --------------------------------------------------

@needs_other_user
async def test_protected_executable_running_as_root_is_refused_and_as_a_user_is_not(
        kenv: Env, area: Path, procs: Procs) -> None:
    bad = malware(area)
    real = os.path.realpath(SYSTEM_PYTHON)
    kenv.configure(allowed_roots=(area,), protected_processes=(SYSTEM_PYTHON,))  # a symlink: resolved
    as_root = procs.python(holder_code(bad))
    as_nobody = procs.python(holder_code(bad), user=NOBODY)
    with pytest.raises(Forbidden, match=f"runs {real} as uid 0, a protected executable"):
        await kenv.call("kill_process", process_id=as_root.pid, file_path=str(bad))
    res = await kenv.call("kill_process", file_path=str(bad))
    assert res["terminated"] == [as_nobody.pid]
    assert [s["pid"] for s in res["skipped"]] == [as_root.pid]
    assert as_nobody.wait(timeout=10) == -signal.SIGTERM and as_root.poll() is None


async def test_a_copy_of_a_protected_program_in_a_writable_directory_is_not_protected(
        kenv: Env, area: Path, procs: Procs) -> None:
    bad = malware(area)
    writable = area / "bin"
    writable.mkdir()
    os.chmod(writable, 0o777)
    copy = writable / "python3"
    shutil.copy(os.path.realpath(SYSTEM_PYTHON), copy)
    kenv.configure(allowed_roots=(area,), protected_processes=(str(copy),))
    p = procs.run([str(copy), "-c", holder_code(bad)])
    assert p.stdout is not None and p.stdout.readline() == "ready\n"
    res = await kenv.call("kill_process", file_path=str(bad))
    assert res["terminated"] == [p.pid] and p.wait(timeout=10) == -signal.SIGTERM


async def test_protected_names_no_longer_mean_anything(kenv: Env, area: Path, procs: Procs) -> None:
    bad = malware(area, "systemd-journald")
    kenv.configure(allowed_roots=(area,), protected_processes=("/usr/lib/systemd/systemd-journald",))
    p = procs.run([str(bad), "300"], exe=bad)
    res = await kenv.call("kill_process", process_id=p.pid, file_path=str(bad))
    assert res["terminated"] == [p.pid] and p.wait(timeout=10) == -signal.SIGTERM


# -- trees -------------------------------------------------------------------------------------------------

async def test_include_children_kills_the_tree(kenv: Env, area: Path, procs: Procs) -> None:
    bad = malware(area)
    code = holder_code(bad, extra=(
        "import subprocess\n"
        "kids = [subprocess.Popen(['sleep', '300']) for _ in range(2)]\n"
        "print(' '.join(str(k.pid) for k in kids), flush=True)"))
    p = procs.run([SYSTEM_PYTHON, "-c", code])
    assert p.stdout is not None
    kids = [int(x) for x in p.stdout.readline().split()]
    assert p.stdout.readline() == "ready\n"
    res = await kenv.call("kill_process", process_id=p.pid, file_path=str(bad), include_children=True)
    assert sorted(res["terminated"]) == sorted([p.pid, *kids])
    p.wait(timeout=10)
    assert all([await wait_dead(k) for k in kids])


async def test_include_children_never_stops_a_protected_child(kenv: Env, area: Path, procs: Procs) -> None:
    bad = malware(area)
    conts = area / "conts"
    child = ("import signal, sys, time\n"
             f"signal.signal(signal.SIGCONT, lambda *a: open({str(conts)!r}, 'a').write('cont\\n'))\n"
             "print('ready', flush=True)\ntime.sleep(300)\n")
    code = holder_code(bad, extra=(
        "import subprocess\n"
        f"kid = subprocess.Popen([{SYSTEM_PYTHON!r}, '-c', {child!r}], stdout=subprocess.PIPE, text=True)\n"
        "assert kid.stdout.readline() == 'ready\\n'\n"
        "print(kid.pid, flush=True)"))
    kenv.configure(allowed_roots=(area,), protected_processes=(SYSTEM_PYTHON,))
    p = procs.run([sys.executable, "-c", code])  # the parent is not protected (pyenv's python), the child is
    assert p.stdout is not None
    kid = int(p.stdout.readline())
    assert p.stdout.readline() == "ready\n"
    res = await kenv.call("kill_process", process_id=p.pid, file_path=str(bad), include_children=True)
    assert res["terminated"] == [p.pid] and [s["pid"] for s in res["skipped"]] == [kid]
    assert p.wait(timeout=10) == -signal.SIGTERM
    # Never stopped, so never continued: its SIGCONT handler never ran; and it runs on.
    assert psutil.Process(kid).status() != psutil.STATUS_STOPPED and not conts.exists()
    os.kill(kid, signal.SIGKILL)


# -- after the quarantine: the vault's record of the inode -------------------------------------------------

@needs_other_user
async def test_after_quarantine_the_vault_record_links_the_process(kenv: Env, area: Path, procs: Procs) -> None:
    bad = malware(area)
    p = procs.run([str(bad), "300"], user=NOBODY, exe=bad)
    q = await kenv.call("quarantine_file", file_path=str(bad))
    assert not bad.exists() and (q["dev"], q["ino"]) == (os.stat(f"/proc/{p.pid}/exe").st_dev,
                                                         os.stat(f"/proc/{p.pid}/exe").st_ino)
    res = await kenv.call("kill_process", file_path=str(bad))
    assert res["evidence"]["source"] == "vault" and res["terminated"] == [p.pid]
    assert p.wait(timeout=10) == -signal.SIGTERM
    [item] = Vault(kenv.vault).items()
    assert item["ino"] == q["ino"]


async def test_a_new_file_at_the_quarantined_path_does_not_replace_this_runs_record(
        kenv: Env, area: Path, procs: Procs) -> None:
    bad = malware(area)
    p = procs.run([str(bad), "300"], exe=bad)
    decoy = area / "decoy"
    decoy.write_bytes(b"someone else's file")
    holder = procs.python(holder_code(decoy))

    async def swap(**_: object) -> dict:
        os.replace(decoy, bad)  # between the steps, another file (and its reader) takes the name
        return {}
    engine = kenv.engine()
    engine.register_action("swap", swap)
    wf = Workflow.from_dict({"workflow_id": "t", "steps": [
        {"step_id": "q", "action": "quarantine_file", "params": {"file_path": str(bad)}},
        {"step_id": "s", "action": "swap"},
        {"step_id": "k", "action": "kill_process", "params": {"file_path": str(bad)}}]})
    result = await engine.execute_workflow(wf)
    assert result.status is RunStatus.COMPLETED, result.error
    kill = result.step_results["k"].result
    assert kill["evidence"]["source"] == "vault" and kill["terminated"] == [p.pid]
    assert p.wait(timeout=10) == -signal.SIGTERM and holder.poll() is None


# -- pid reuse, parameters, rate limit ---------------------------------------------------------------------

async def test_reused_pid_is_refused_and_process_survives(kenv: Env, area: Path, procs: Procs) -> None:
    bad = malware(area)
    p = procs.run([str(bad), "300"], exe=bad)
    with pytest.raises(Conflict, match="reused"):
        await kenv.call("kill_process", process_id=p.pid, process_start_time=start_time(p.pid) - 30,
                        file_path=str(bad))
    assert p.poll() is None


async def test_start_time_from_first_look_is_kept_across_attempts(kenv: Env, area: Path, procs: Procs) -> None:
    bad = malware(area)
    p = procs.run([str(bad), "300"], exe=bad)
    # A step that first saw this pid at another start time (its process died, the pid was reused).
    kenv.services.first_seen("run:step", p.pid, start_time(p.pid) - 30)
    from sdd.engine.registry import _current_step
    token = _current_step.set(("run", "wf", "step", 2, "run:step", {}, False, "run", None))
    try:
        with pytest.raises(Conflict):
            await kenv.call("kill_process", process_id=p.pid, file_path=str(bad))
    finally:
        _current_step.reset(token)
    assert p.poll() is None


async def test_already_gone_counts_as_done(kenv: Env, area: Path, procs: Procs) -> None:
    bad = malware(area)
    p = procs.run([str(bad), "300"], exe=bad)
    started = start_time(p.pid)
    p.kill()
    p.wait()
    res = await kenv.call("kill_process", process_id=p.pid, process_start_time=started, file_path=str(bad))
    assert res["already_gone"] is True


@pytest.mark.parametrize("value", ["abc", "12; rm -rf /", True, -5, 0, 1.5, [1], None, "1e3"])
async def test_refuses_non_numeric_pids(kenv: Env, value: object) -> None:
    params = {} if value is None else {"process_id": value}
    with pytest.raises(InvalidParams, match="process_id"):
        await kenv.call("kill_process", **params)


async def test_kill_over_its_rate_limit_waits_and_is_bounded_by_the_step_timeout(kenv: Env, area: Path, procs: Procs) -> None:
    kenv.configure(allowed_roots=(area,), rate_limits={"kill_process": RateLimit(1, 3600.0)})
    a, b = malware(area, "a"), malware(area, "b")
    pa = procs.run([str(a), "300"], exe=a)
    pb = procs.run([str(b), "300"], exe=b)
    await kenv.call("kill_process", file_path=str(a))
    result = await kenv.step("kill_process", {"file_path": str(b)}, timeout=0.3)  # waits for a slot, times out
    assert result.status == "failed" and "timed out" in (result.error or "")
    assert pa.wait(timeout=10) == -signal.SIGTERM and pb.poll() is None


def _respawn_at(pid: int, argv: list[str], attempts: int = 50) -> subprocess.Popen | None:
    """A new process with exactly `pid`, by setting the kernel's last-allocated pid (as CRIU does)."""
    for _ in range(attempts):
        try:
            with open("/proc/sys/kernel/ns_last_pid", "w") as fh:
                fh.write(str(pid - 1))
        except OSError:
            return None
        p = subprocess.Popen(argv)
        if p.pid == pid:
            return p
        p.kill()  # another process on the machine took the pid first: try again
        p.wait()
    return None


async def test_genuinely_reused_pid_is_refused(kenv: Env, area: Path, procs: Procs) -> None:
    bad = malware(area)
    old = procs.run([str(bad), "300"], exe=bad)
    detection = {"process_id": old.pid, "process_start_time": start_time(old.pid), "file_path": str(bad)}
    # The successor must start at least a clock tick later, or the two are indistinguishable by design.
    t0 = time.monotonic()
    wait_until(lambda: time.monotonic() > t0 + 0.05, "a few clock ticks")
    old.kill()
    old.wait()
    new = _respawn_at(detection["process_id"], [str(bad), "300"])
    if new is None:
        pytest.skip("cannot steer pid allocation here (/proc/sys/kernel/ns_last_pid needs root)")
    try:
        if abs(start_time(new.pid) - detection["process_start_time"]) < 0.01:
            pytest.skip("the new process started in the same clock tick: indistinguishable by design")
        result = await kenv.step("kill_process", {"process_id": "{{ detection.process_id }}"}, detection=detection)
        assert result.status is RunStatus.FAILED and "reused" in (result.error or "")
        assert new.poll() is None  # the innocent process now holding the pid lives on, running the same file
    finally:
        new.kill()
        new.wait()


def test_protected_processes_are_executable_paths_never_names() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"actions": {"protected_processes": ["sshd", "/usr/sbin/sshd"]}})
    assert any("actions.protected_processes" in e and "absolute" in e for e in info.value.errors)
    config = parse_config({"actions": {"protected_processes": ["/usr/sbin//sshd"]}})
    assert config.actions.protected_processes == ("/usr/sbin/sshd",)
    assert all(p.startswith("/") for p in parse_config({}).actions.protected_processes)
