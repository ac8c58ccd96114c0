"""The worker: one warm process per slot that runs jobs, each in fresh sandboxes.

Started by ``SandboxPool`` as ``python -I -c ...``; speaks length-prefixed JSON
on stdin/stdout. It starts its slot's *zygote* (see ``zygote``), moves into
the sandbox's network and mount namespaces, and has the zygote join them.
Per job

* for function tests: the zygote forks a *program* process; the worker hands
  the job's tests to the long-lived *test* process (its own uid), wires the
  two by two pipes (see ``harness``) and reads per-case reports from the test
  process only;
* for stdin/stdout tests: the zygote forks one program process per case, fed
  its input and read (with a size cap) by the worker, which compares the
  output itself.

Each program gets a PID, IPC and mount namespace of its own (fresh ``/proc``
and ``/tmp/work``), and joins its slot's cgroup (see ``isolation``). After
every job the program is killed (the first process of a PID namespace: the
kernel kills the rest) and reaped with every leftover child (the zygote is a
child subreaper), and the worker reads the job's CPU time and OOM kills from
the cgroup. Nothing of the program survives it: its ``/tmp/work`` and IPC
objects go with its namespaces.
"""

from __future__ import annotations

import errno
import fcntl
import gc
import json
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from . import harness, wire
from .confine import PROCESS_LIMIT, Limits, detach, drop_privileges
from .isolation import SandboxUnavailable, SlotCgroup, create_slot_cgroup, isolate_worker, kill_cgroup_members
from .zygote import FUNCTION, PROBE, STDIO, encode_spec, read_reply, request_end, request_spawn

log = logging.getLogger(__name__)

OUTPUT_LIMIT = 8 << 20
DETAIL_CHARS = 600
TEST_SIDE_MEMORY_MB = 2048
TEST_SERVER_JOBS = 1000
# With a cgroup, a timeout is CPU time; the wall clock only catches programs
# that sleep or block, and allows for a machine busy with other work.
WALL_FACTOR, WALL_SLACK_S = 2.0, 1.0
VIOLATION_BYTES = 4096


@dataclass
class WorkerState:
    scratch: str
    program_uid: int | None
    test_uid: int | None
    runs: int = 0
    test_server: "TestServer | None" = None
    cgroup: SlotCgroup | None = None
    pidns: bool = False  # each program in a PID namespace of its own
    namespaces: bool = False
    program_ns: bool = True  # IPC + mount namespace, fresh /tmp/work and /proc per program
    seccomp: bool = True
    zygote: "ZygoteHandle | None" = None
    null_fd: int = -1


class Budget:
    """A job's time: CPU seconds of its cgroup where there is one, else the wall clock."""

    def __init__(self, timeout_s: float, cgroup: SlotCgroup | None) -> None:
        self.timeout_s, self.cgroup = timeout_s, cgroup
        self.started = time.monotonic()
        self.cpu0 = cgroup.cpu_s() if cgroup is not None else 0.0
        self.wall_s = timeout_s * WALL_FACTOR + WALL_SLACK_S if cgroup is not None else timeout_s

    def remaining(self) -> float:
        """Seconds that surely remain (<= 0: out of time). The cgroup is capped at
        one CPU, so its CPU time cannot run out sooner than this."""
        wall_left = self.started + self.wall_s - time.monotonic()
        if self.cgroup is None:
            return wall_left
        return min(wall_left, self.timeout_s - (self.cgroup.cpu_s() - self.cpu0))

    def describe(self) -> str:
        """What ran out, for the verdict's detail."""
        if self.cgroup is None:
            return f"no result within {self.timeout_s:g}s"
        used = self.cgroup.cpu_s() - self.cpu0
        if used >= self.timeout_s:
            return f"no result within {self.timeout_s:g}s of CPU time"
        return (f"no result within {self.wall_s:g}s of wall-clock time "
                f"({used:.2f}s of the {self.timeout_s:g}s CPU limit used)")


def main() -> None:
    config = json.loads(sys.argv[1])
    out_fd = os.dup(1)
    os.dup2(2, 1)  # stray prints must not corrupt the protocol stream
    try:
        state, info = _start(config)
    except (SandboxUnavailable, OSError) as exc:
        wire.write_frame(out_fd, {"ready": False, "error": str(exc)})
        return
    wire.write_frame(out_fd, {"ready": True, **info})
    while True:
        job = wire.read_frame(0)
        if job is None:
            break
        started = time.monotonic()
        try:
            verdict = run_job(job, state)
        except ZygoteDied as exc:  # killed from outside; we exit below and the pool replaces us
            verdict = _verdict("error", 0, 0, f"sandbox error: {exc}")
        except Exception as exc:  # a bug here must not take the worker down
            log.exception("job failed")
            verdict = _verdict("error", 0, 0, f"sandbox error: {exc}")
        verdict["duration_s"] = round(time.monotonic() - started, 6)
        wire.write_frame(out_fd, {"id": job.get("id"), "verdict": verdict})
        if state.zygote is not None and not state.zygote.alive():
            log.warning("the zygote died; this worker exits so that the pool replaces it")
            break
    # Reap our helpers, so that their CPU time (and their children's) adds up to ours.
    if state.test_server is not None:
        state.test_server.close()
    if state.zygote is not None:
        state.zygote.close()
    if config.get("unsafe"):
        _remove_tree(state.scratch)


def _start(config: dict[str, Any]) -> tuple[WorkerState, dict[str, Any]]:
    if config.get("pin"):
        # The program and test processes ping-pong over pipes; on one core a
        # wake-up needs no cross-CPU interrupt (measured ~15% less CPU per job).
        cores = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cores[int(config["slot"]) % len(cores)]})
    detach()
    # Started before we leave the host's view: it imports from the checkout, then joins us.
    zygote = ZygoteHandle()
    try:
        state, info = _isolate(config, zygote)
    except BaseException:
        zygote.close()
        raise
    state.null_fd = os.open(os.devnull, os.O_RDWR)
    gc.freeze()  # fewer copy-on-write faults in the forked test process
    return state, info


def _isolate(config: dict[str, Any], zygote: ZygoteHandle) -> tuple[WorkerState, dict[str, Any]]:
    if config.get("unsafe"):
        state = WorkerState(tempfile.mkdtemp(prefix="factory-code-"), None, None, zygote=zygote)
        zygote.join({"unsafe": True, "uid": None, "program_ns": False, "pidns": False, "seccomp": False})
        return state, {"isolation": "none"}
    base = int(config["base_uid"]) + 2 * int(config["slot"])
    state = WorkerState("/tmp", base, base + 1, namespaces=True, zygote=zygote)
    layers: dict[str, str] = {}
    # "without": layers switched off only to measure what each costs (benchmarks).
    without = set(config.get("without") or ())
    state.program_ns, state.seccomp = "program_ns" not in without, "seccomp" not in without
    state.cgroup, layers["cgroup"] = _optional(
        "cgroup", lambda: create_slot_cgroup(f"factory-code-{config['base_uid']}-{config['slot']}"),
        "cgroup" in without)
    if state.cgroup is not None:
        kill_cgroup_members(state.cgroup.paths)  # a crashed predecessor's leftovers
        layers["cgroup"] = f"v{state.cgroup.version}: 1 CPU, memory_mb, {PROCESS_LIMIT} pids"
    try:
        view = isolate_worker(config.get("hidden") or [])
        joined = zygote.join({"unsafe": False, "uid": state.program_uid, "program_ns": state.program_ns,
                              "pidns": "pidns" not in without, "seccomp": state.seccomp,
                              "worker_pid": os.getpid()},
                             state.cgroup.procs_fds if state.cgroup is not None else [])
    except BaseException:
        if state.cgroup is not None:  # still reachable: /sys is only gone after isolation
            state.cgroup.remove()
        raise
    layers["pidns"] = joined["pidns"] if "pidns" not in without else "off: disabled"
    state.pidns = layers["pidns"] == "on"
    layers.update({"netns": "on", "mountns": "on", "root": "minimal, read-only", "uid": f"{base}/{base + 1}",
                   "program_ns": "on: IPC+mount namespace, fresh /tmp/work" if state.program_ns else "off: disabled",
                   "seccomp": "on: keyring refused" if state.seccomp else "off: disabled"})
    # Leftovers of a predecessor in this slot that crashed (grandchildren do
    # not get its parent-death signal) would count against RLIMIT_NPROC.
    _kill_uids([state.program_uid, state.test_uid])
    _probe(state)
    names = ["netns", "mountns", "root", "uid"] + [k for k in ("program_ns", "seccomp", "pidns", "cgroup")
                                                    if layers[k].startswith(("on", "v"))]
    return state, {"isolation": "+".join(names), "uids": [base, base + 1], "layers": layers,
                   "cgroup_paths": state.cgroup.paths if state.cgroup is not None else [], **view}


def _optional(what: str, build: Callable[[], Any], disabled: bool = False) -> tuple[Any, str]:
    """A layer the sandbox can do without: (layer, "on") or (None, "off: reason");
    the pool logs the reason once."""
    if disabled:
        return None, "off: disabled"
    try:
        return build(), "on"
    except OSError as exc:
        return None, f"off: no {what} here ({exc})"


def _probe(state: WorkerState) -> None:
    """One sandboxed child, forked as programs are, checks that the isolation actually holds."""
    null = os.open(os.devnull, os.O_RDWR)
    try:
        pid = state.zygote.spawn(PROBE, 256, 4.0, None, [null, null, null])
    finally:
        os.close(null)
    code = os.waitstatus_to_exitcode(state.zygote.end(pid, kill=False))
    if code != 0:
        raise SandboxUnavailable(f"sandbox self-check failed (code {code}): could not drop to uid "
                                 f"{state.program_uid}, the network is reachable or the host is visible")


def _verdict(status: str, passed_cases: int, total: int, detail: str = "") -> dict[str, Any]:
    detail = detail.strip()
    if len(detail) > DETAIL_CHARS:
        detail = detail[:DETAIL_CHARS] + "…"
    return {"passed": status == "passed", "status": status, "passed_cases": passed_cases,
            "total_cases": total, "detail": detail}


def run_job(job: dict[str, Any], state: WorkerState) -> dict[str, Any]:
    tests = job["tests"]
    timeout_s, memory_mb = float(job["timeout_s"]), int(job["memory_mb"])
    if tests["kind"] == "stdio":
        return _run_stdio(job["program"], tests, timeout_s, memory_mb, state)
    return _run_functions(job["program"], tests, timeout_s, memory_mb, state)


# --------------------------------------------------------------------------- processes

def _unsafe_workdir(state: WorkerState) -> str:
    """Without a sandbox: a directory of the worker's scratch (with one, /tmp is the program's own tmpfs)."""
    state.runs += 1
    path = os.path.join(state.scratch, f"run-{os.getpid()}-{state.runs}")
    os.mkdir(path, 0o700)
    return path


def _remove_tree(path: str) -> None:
    """Remove ``path`` whatever its depth (``shutil.rmtree`` recurses: RecursionError)."""
    try:
        shutil.rmtree(path)
    except (OSError, RecursionError):
        subprocess.run(["rm", "-rf", "--", path], check=False, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _fork(body: Callable[[], int], stdio: tuple[int, int, int], keep: list[int]) -> int:
    """Fork a child (the test process) whose fds are exactly ``stdio`` as 0-2 and ``keep`` as 3, 4, ..."""
    pid = os.fork()
    if pid:
        return pid
    code = 70
    try:
        sources = [fcntl.fcntl(fd, fcntl.F_DUPFD, 1000) for fd in (*stdio, *keep)]
        for target, fd in enumerate(sources):
            os.dup2(fd, target)
        os.closerange(len(sources), 1 << 16)
        code = body()
    finally:
        os._exit(code)


_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
# Without ``site`` (-S): ~1 MB less mapped in every program's parent (the venv's
# .pth hooks import pathlib, zipimport, ...); it gets our sys.path instead, and
# ``zygote.main`` adds the builtins ``site`` adds (exit, quit, help, ...).
_ZYGOTE_BOOT = ("import sys; sys.path[:] = [{root!r}] + sys.argv[2:]; "
                "from verifiers.code.zygote import main; main()")


class ZygoteDied(OSError):
    """The worker's zygote is gone (killed from outside); the pool replaces the worker."""


class ZygoteHandle:
    """The worker's end of its zygote (see ``zygote``): it forks every program.

    Started as a fresh interpreter, so that what it has mapped (and every
    program's fork pays for) is only what programs need, and it never held
    anything of the worker's: no job, test or verdict. Programs see the
    worker's ``sys.path`` and the builtins ``site`` defines.
    """

    def __init__(self) -> None:
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _ZYGOTE_BOOT.format(root=_PACKAGE_ROOT), str(theirs.fileno()),
                 *sys.path],
                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, close_fds=True)
        finally:
            theirs.close()

    def join(self, config: dict[str, Any], fds: list[int] = ()) -> dict[str, Any]:
        """Have it join our namespaces and confine itself; its report (``pidns``)."""
        socket.send_fds(self.sock, [json.dumps(config).encode()], list(fds))
        reply = self.sock.recv(1 << 16)
        info = json.loads(reply) if reply else {"ready": False, "error": "the zygote exited during start-up"}
        if not info.get("ready"):
            raise SandboxUnavailable(str(info.get("error")))
        return info

    def spawn(self, mode: int, memory_mb: int, timeout_s: float, workdir: str | None, fds: list[int]) -> int:
        """Fork a program whose descriptors are ``fds`` (0, 1, 2, ...); its pid."""
        return self._ask(request_spawn(mode, memory_mb, timeout_s, workdir), fds)

    def end(self, pid: int, kill: bool = True) -> int:
        """Kill (unless ``kill`` is false) and reap a program; its wait status."""
        return self._ask(request_end(pid, kill))

    def _ask(self, request: bytes, fds: list[int] = ()) -> int:
        try:
            if fds:
                socket.send_fds(self.sock, [request], list(fds))
            else:
                self.sock.send(request)
            reply = self.sock.recv(4096)
        except (BrokenPipeError, ConnectionResetError):
            reply = b""
        if not reply:
            raise ZygoteDied(errno.EPIPE, "the zygote died")
        return read_reply(reply)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        self.sock.close()  # EOF: it returns
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _spawn(state: WorkerState, mode: int, program: str, tests: dict[str, Any], memory_mb: int,
           timeout_s: float, workdir: str | None, stdio: tuple[int, int, int], keep: list[int]) -> int:
    """Have the zygote fork a program; the program (and the only parts of its tests it
    may see) reaches the child in a memfd that the zygote never reads."""
    spec = os.memfd_create("program", os.MFD_CLOEXEC)
    try:
        view = memoryview(encode_spec(program, tests.get("prompt") or "", tests.get("entry_point")))
        while view:
            view = view[os.write(spec, view):]
        return state.zygote.spawn(mode, memory_mb, timeout_s, workdir, [*stdio, *keep, spec])
    finally:
        os.close(spec)


def _end_program(pid: int, state: WorkerState) -> int:
    """Kill the program and whatever it started, reap them; the program's wait status.

    The zygote reaps the program only on ``end``, so until then its pid (and
    process group) are its own: signalling them here cannot reach another process.
    """
    for kill in (os.killpg, os.kill):
        try:
            kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    _reap_strays(state)
    return state.zygote.end(pid)


def _reap_strays(state: WorkerState) -> None:
    """In a PID namespace nothing outlives the program (the kernel kills the
    namespace with its init); without one, kill the program's uid. The zygote
    (a subreaper) reaps the orphans."""
    if not state.pidns and state.program_uid is not None:
        _kill_uids([state.program_uid])


def _kill_uids(uids: list[int | None]) -> None:
    """SIGKILL every process of each uid (``kill(-1)`` sent as that uid)."""
    for uid in uids:
        if uid is None:
            continue
        pid = os.fork()
        if pid == 0:
            try:
                os.setresuid(uid, uid, uid)
                os.kill(-1, signal.SIGKILL)
            finally:
                os._exit(0)
        os.waitpid(pid, 0)


def _violation_pipe() -> tuple[int, int]:
    """Where the program's policy hook records what it refused (read after the job)."""
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    os.set_blocking(write_end, False)  # a flood of records must not block the program
    return read_end, write_end


def _read_violation(fd: int) -> str:
    try:
        data = os.read(fd, VIOLATION_BYTES)
    except (BlockingIOError, OSError):
        data = b""
    finally:
        os.close(fd)
    lines = data.decode("utf-8", "replace").strip().splitlines()
    return lines[0] if lines else ""


def _memory_verdict(state: WorkerState, oom0: int, memory_mb: int) -> str:
    """Why the cgroup's OOM killer acted during the job, or ""."""
    if state.cgroup is None or state.cgroup.oom_kills() <= oom0:
        return ""
    return f"the program's processes together exceeded {memory_mb} MB (killed by the memory cgroup)"


def _start_job(state: WorkerState, memory_mb: int) -> int:
    """Set the cgroup's memory limit for this job; returns its OOM kill count so far."""
    if state.cgroup is None:
        return 0
    state.cgroup.set_memory(memory_mb)
    return state.cgroup.oom_kills()


# --------------------------------------------------------------------------- function tests

class TestServer:
    """The long-lived test-side process (own uid), handed each job's pipe ends.

    Forking it once instead of per job halves the forks on the hot path. It is
    replaced after a timeout, a crash, or ``TEST_SERVER_JOBS`` jobs.
    """

    def __init__(self, state: WorkerState) -> None:
        self.control, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.reports, report_w = os.pipe()
        null = os.open(os.devnull, os.O_RDWR)
        uid = state.test_uid

        def serve() -> int:
            # No CPU rlimit: it lives across jobs; the worker's wall clock bounds each one.
            drop_privileges(uid, "/", Limits(TEST_SIDE_MEMORY_MB, cpu_s=0))
            _serve_tests(control_fd=3, report_fd=4)
            return 0

        self.pid = _fork(serve, (null, null, null), [theirs.fileno(), report_w])
        for fd in (report_w, null):
            os.close(fd)
        theirs.close()
        self.jobs = 0
        self.buffer = bytearray()

    def submit(self, job: int, tests: dict[str, Any], wfd: int, rfd: int) -> None:
        payload = wire.dumps({"job": job, "tests": tests})
        socket.send_fds(self.control, [len(payload).to_bytes(4, "big")], [wfd, rfd])
        self.control.sendall(payload)
        self.jobs += 1

    def collect(self, job: int, budget: Budget) -> tuple[list[dict[str, Any]], bool, bool]:
        """This job's frames until ``done``; (frames, timed_out, broken)."""
        poller = select.poll()
        poller.register(self.reports, select.POLLIN)
        frames: list[dict[str, Any]] = []
        while True:
            while len(self.buffer) >= 4:
                size = int.from_bytes(self.buffer[:4], "big")
                if size > 1 << 20 or len(self.buffer) < 4 + size and len(self.buffer) > (1 << 20) + 4:
                    return frames, False, True
                if len(self.buffer) < 4 + size:
                    break
                try:
                    frame = wire.loads(bytes(self.buffer[4:4 + size]))
                except ValueError:
                    return frames, False, True
                del self.buffer[:4 + size]
                if frame.get("job") != job:
                    continue
                if frame.get("done") is True:
                    return frames, False, False
                frames.append(frame)
            remaining = budget.remaining()
            if remaining <= 0:
                return frames, True, False
            if not poller.poll(remaining * 1000 + 1):
                continue
            chunk = os.read(self.reports, 1 << 16)
            if not chunk:
                return frames, False, True
            self.buffer += chunk

    def close(self) -> None:
        if self.pid > 0:
            for kill in (os.killpg, os.kill):
                try:
                    kill(self.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            try:
                os.waitpid(self.pid, 0)
            except ChildProcessError:
                pass
        self.control.close()
        os.close(self.reports)


def _serve_tests(control_fd: int, report_fd: int) -> None:
    """The test server's loop: one job (tests + two pipe ends) at a time."""
    control = socket.socket(fileno=control_fd)
    while True:
        header, fds, _flags, _addr = socket.recv_fds(control, 4, 2)
        if not header:
            return
        size = int.from_bytes(header, "big")
        payload = bytearray()
        while len(payload) < size:
            chunk = control.recv(size - len(payload))
            if not chunk:
                return
            payload += chunk
        message = wire.loads(bytes(payload))
        wfd, rfd = fds
        try:
            harness.run_test_side(message["tests"], wfd=wfd, rfd=rfd, report_fd=report_fd, job=message["job"])
        finally:
            os.close(wfd)
            os.close(rfd)


def _run_functions(program: str, tests: dict[str, Any], timeout_s: float, memory_mb: int,
                   state: WorkerState) -> dict[str, Any]:
    total = 1 if tests["kind"] == "humaneval" else len(tests["asserts"])
    if state.test_server is None or state.test_server.pid < 0:
        if state.test_server is not None:
            state.test_server.close()
        state.test_server = TestServer(state)
    server = state.test_server
    workdir = None if state.namespaces else _unsafe_workdir(state)
    t2p_r, t2p_w = os.pipe()
    p2t_r, p2t_w = os.pipe()
    viol_r, viol_w = _violation_pipe()
    oom0 = _start_job(state, memory_mb)
    budget = Budget(timeout_s, state.cgroup)
    null = state.null_fd
    try:
        program_pid = _spawn(state, FUNCTION, program, tests, memory_mb, timeout_s, workdir,
                             (null, null, null), [t2p_r, p2t_w, viol_w])
    except OSError:
        for fd in (t2p_r, p2t_w, viol_w, t2p_w, p2t_r, viol_r):
            os.close(fd)
        raise
    for fd in (t2p_r, p2t_w, viol_w):  # only the two processes may hold the pipe ends (EOF = death)
        os.close(fd)
    state.runs += 1
    job = state.runs
    try:
        try:
            try:
                server.submit(job, tests, t2p_w, p2t_r)
            except OSError:  # the idle test server is gone: start another, once
                server.close()
                server = state.test_server = TestServer(state)
                server.submit(job, tests, t2p_w, p2t_r)
        finally:
            os.close(t2p_w)
            os.close(p2t_r)
        frames, timed_out, broken = server.collect(job, budget)
    except OSError:
        frames, timed_out, broken = [], False, True
    finally:
        # Whatever happened: the zygote waits for this program's death before its next fork.
        _end_program(program_pid, state)
    why_timeout = budget.describe() if timed_out else ""
    if timed_out or broken or server.jobs >= TEST_SERVER_JOBS:
        server.close()
        state.test_server = None
    violation, memory = _read_violation(viol_r), _memory_verdict(state, oom0, memory_mb)
    if workdir is not None:
        _remove_tree(workdir)
    return _function_verdict(frames, total, why_timeout, broken, violation, memory)


def _function_verdict(frames: list[dict[str, Any]], total: int, timed_out: str, broken: bool,
                      violation: str, memory: str) -> dict[str, Any]:
    cases = [f for f in frames if "case" in f]
    passed = sum(1 for f in cases if f.get("ok") is True)
    failing = next((f for f in cases if f.get("ok") is not True), None)
    load = next((f for f in frames if "load_error" in f), None)
    done = not broken
    protocol = next((f for f in cases if f.get("kind") == "violation"), None)
    if violation or protocol is not None:
        return _verdict("violation", passed, total, violation or str(protocol.get("detail", "")))
    if memory:
        return _verdict("memory", passed, total, memory)
    if timed_out:
        return _verdict("timeout", passed, total, timed_out)
    if load is not None and load["load_error"] == "violation":
        return _verdict("violation", 0, total, str(load.get("detail", "")))
    if load is not None:
        status = "memory" if load["load_error"] == "MemoryError" else "error"
        return _verdict(status, 0, total, f"program did not load: {load.get('detail', '')}")
    if broken or not done:
        return _verdict("error", passed, total, "the test process died")
    if failing is None and passed == total and len(cases) == total:
        return _verdict("passed", passed, total)
    if failing is None:
        return _verdict("error", passed, total, f"only {len(cases)} of {total} cases ran")
    status = {"memory": "memory", "died": "error"}.get(str(failing.get("kind")), "failed")
    return _verdict(status, passed, total, str(failing.get("detail", "")))


# --------------------------------------------------------------------------- stdin/stdout tests

def _run_stdio(program: str, tests: dict[str, Any], timeout_s: float, memory_mb: int,
               state: WorkerState) -> dict[str, Any]:
    cases = tests["cases"]
    total, passed = len(cases), 0
    for index, case in enumerate(cases):
        status, detail = _run_stdio_case(program, str(case["input"]), str(case["output"]),
                                         timeout_s, memory_mb, state)
        if status != "passed":
            return _verdict(status, passed, total, f"case {index}: {detail}")
        passed += 1
    return _verdict("passed", passed, total)


def _run_stdio_case(program: str, stdin_text: str, expected: str, timeout_s: float, memory_mb: int,
                    state: WorkerState) -> tuple[str, str]:
    workdir = None if state.namespaces else _unsafe_workdir(state)
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    viol_r, viol_w = _violation_pipe()
    oom0 = _start_job(state, memory_mb)
    budget = Budget(timeout_s, state.cgroup)
    try:
        pid = _spawn(state, STDIO, program, {}, memory_mb, timeout_s, workdir, (in_r, out_w, err_w), [viol_w])
    except OSError:
        for fd in (in_r, out_w, err_w, viol_w, in_w, out_r, err_r, viol_r):
            os.close(fd)
        raise
    for fd in (in_r, out_w, err_w, viol_w):
        os.close(fd)
    pidfd = os.pidfd_open(pid)
    try:
        outcome = _pump(pidfd, stdin_text.encode(), in_w, out_r, err_r, budget)
    finally:
        os.close(pidfd)
        outcome_status = _end_program(pid, state)
    out, err = _drain(out_r, outcome["out"]), _drain(err_r, outcome["err"])
    violation, memory = _read_violation(viol_r), _memory_verdict(state, oom0, memory_mb)
    if workdir is not None:
        _remove_tree(workdir)
    if violation:
        return "violation", violation
    if memory:
        return "memory", memory
    if outcome["timeout"]:
        return "timeout", budget.describe().replace("no result", "no exit")
    if outcome["flood"]:
        return "error", f"output exceeded {OUTPUT_LIMIT >> 20} MiB"
    err_text = err.decode("utf-8", "replace")
    code = os.waitstatus_to_exitcode(outcome_status)
    if code != 0:
        kind = "memory" if "MemoryError" in err_text else "error"
        why = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        return kind, f"{why}: {err_text[-DETAIL_CHARS:]}"
    text = out.decode("utf-8", "replace")
    if text.split() != expected.split():
        return "failed", f"expected {expected.strip()[:200]!r}, got {text.strip()[:200]!r}"
    return "passed", ""


def _pump(pidfd: int, stdin_data: bytes, in_w: int, out_r: int, err_r: int,
          budget: Budget) -> dict[str, Any]:
    """Feed stdin and collect stdout/stderr until the program exits, floods or times out."""
    sinks = {out_r: bytearray(), err_r: bytearray()}
    poller = select.poll()
    for fd in (out_r, err_r, pidfd):
        poller.register(fd, select.POLLIN)
    pending = memoryview(stdin_data)
    if pending:
        os.set_blocking(in_w, False)
        poller.register(in_w, select.POLLOUT)
    else:
        os.close(in_w)
        in_w = -1
    result: dict[str, Any] = {"timeout": False, "flood": False, "out": sinks[out_r], "err": sinks[err_r]}
    try:
        while True:
            remaining = budget.remaining()
            if remaining <= 0:
                result["timeout"] = True
                return result
            for fd, _event in poller.poll(remaining * 1000 + 1):
                if fd == pidfd:
                    return result
                if fd == in_w:
                    try:
                        pending = pending[os.write(in_w, pending[:1 << 16]):]
                    except BlockingIOError:
                        continue
                    except BrokenPipeError:  # the program stopped reading: fine
                        pending = pending[:0]
                    if not pending:
                        poller.unregister(in_w)
                        os.close(in_w)
                        in_w = -1
                    continue
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    poller.unregister(fd)
                    continue
                sinks[fd] += chunk
                if len(sinks[fd]) > OUTPUT_LIMIT:
                    result["flood"] = True
                    return result
    finally:
        if in_w >= 0:
            os.close(in_w)


def _drain(fd: int, collected: bytearray) -> bytes:
    """What is left in a pipe whose writers are all dead (bounded by the cap)."""
    os.set_blocking(fd, False)
    try:
        while len(collected) <= OUTPUT_LIMIT:
            try:
                chunk = os.read(fd, 1 << 16)
            except BlockingIOError:
                break
            if not chunk:
                break
            collected += chunk
    finally:
        os.close(fd)
    return bytes(collected)


if __name__ == "__main__":
    main()
