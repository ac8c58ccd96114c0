"""The fork server: one warm, pre-imported process that forks a sandbox per job.

Started by ``SandboxPool`` as ``python -I -c ...``; speaks length-prefixed JSON
on stdin/stdout. Per job it forks

* for function tests: a *test* process and a *program* process, each under its
  own unprivileged uid, wired by two pipes (see ``harness``); the worker reads
  per-case reports from the test process only;
* for stdin/stdout tests: one program process per case, fed its input and
  read (with a size cap) by the worker, which compares the output itself.

Each program gets a PID, IPC and mount namespace of its own (fresh ``/proc``
and ``/tmp``), and joins its slot's cgroup (see ``isolation``). After every
job the worker kills the program (the first process of a PID namespace: the
kernel kills the rest), reaps every leftover child (it is a child subreaper),
and reads the job's CPU time and OOM kills from the cgroup. Nothing of the
program survives it: its ``/tmp`` and IPC objects go with its namespaces.
"""

from __future__ import annotations

import errno
import fcntl
import gc
import importlib
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
from typing import Any, Callable

from . import harness, wire
from .isolation import (PROCESS_LIMIT, Limits, PidNamespaces, SandboxUnavailable, SlotCgroup, create_slot_cgroup,
                        detach_worker, drop_privileges, enter_program_sandbox, isolate_worker, kill_cgroup_members)

log = logging.getLogger(__name__)

# Imported once here so that forked children do not pay for them.
PREIMPORTS = ("math", "cmath", "re", "string", "collections", "collections.abc", "itertools", "functools",
              "operator", "heapq", "bisect", "array", "typing", "random", "fractions", "decimal",
              "statistics", "copy", "json", "hashlib", "datetime", "time", "dataclasses", "enum", "abc",
              "numbers", "textwrap", "unicodedata", "struct", "contextlib", "io", "traceback", "types",
              "queue", "sys", "os", "ast", "inspect")
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
    pidns: PidNamespaces | None = None
    namespaces: bool = False
    program_ns: bool = True  # IPC + mount namespace, fresh /tmp/work and /proc per program
    seccomp: bool = True
    spawner: "Spawner | None" = None


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
        except Exception as exc:  # a bug here must not take the worker down
            log.exception("job failed")
            verdict = _verdict("error", 0, 0, f"sandbox error: {exc}")
        verdict["duration_s"] = round(time.monotonic() - started, 6)
        wire.write_frame(out_fd, {"id": job.get("id"), "verdict": verdict})
        if state.spawner is not None and not state.spawner.alive():
            log.warning("the spawner died; this worker exits so that the pool replaces it")
            break
    # Reap our helpers, so that their CPU time (and their children's) adds up to ours.
    if state.test_server is not None:
        state.test_server.close()
    if state.spawner is not None:
        state.spawner.close()
    if config.get("unsafe"):
        _remove_tree(state.scratch)


def _start(config: dict[str, Any]) -> tuple[WorkerState, dict[str, Any]]:
    state, info = _isolate(config)
    gc.freeze()  # fewer copy-on-write faults in forked children
    state.spawner = Spawner(state)
    return state, info


def _isolate(config: dict[str, Any]) -> tuple[WorkerState, dict[str, Any]]:
    if config.get("pin"):
        # The program and test processes ping-pong over pipes; on one core a
        # wake-up needs no cross-CPU interrupt (measured ~15% less CPU per job).
        cores = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cores[int(config["slot"]) % len(cores)]})
    for name in PREIMPORTS:
        importlib.import_module(name)
    detach_worker()
    if config.get("unsafe"):
        return WorkerState(tempfile.mkdtemp(prefix="factory-code-"), None, None), {"isolation": "none"}
    base = int(config["base_uid"]) + 2 * int(config["slot"])
    state = WorkerState("/tmp", base, base + 1, namespaces=True)
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
    state.pidns, layers["pidns"] = _optional("PID namespace", PidNamespaces, "pidns" in without)
    try:
        view = isolate_worker(config.get("hidden") or [])
    except BaseException:
        if state.cgroup is not None:  # still reachable: /sys is only gone after isolation
            state.cgroup.remove()
        raise
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
    """Fork one sandboxed child that checks the isolation actually holds."""
    def check() -> int:
        _program_sandbox(state, 256, 4.0, None)
        if os.geteuid() == 0:
            return 5
        if os.path.exists("/sys/fs") or os.path.exists("/home"):
            return 6
        alone = os.getpid() == 1 and [p for p in os.listdir("/proc") if p.isdigit()] == ["1"]
        if state.pidns is not None and state.program_ns and not alone:
            return 7
        with socket.socket() as probe:
            probe.settimeout(1)
            try:
                probe.connect(("127.0.0.1", 9))
                return 3
            except OSError as exc:  # loopback down in a fresh namespace: unreachable
                return 0 if exc.errno == errno.ENETUNREACH else 4

    pid = _fork(check, (0, 1, 2), [], state)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
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


def _fork(body: Callable[[], int], stdio: tuple[int, int, int], keep: list[int], state: WorkerState,
          program: bool = True) -> int:
    """Fork a child whose fds are exactly ``stdio`` as 0-2 and ``keep`` as 3, 4, ...

    A program child starts in a PID namespace of its own (it is its init) and
    in the slot's cgroup, joined before anything else runs.
    """
    fresh_pidns = program and state.pidns is not None
    if fresh_pidns:
        state.pidns.next_fork()
    try:
        pid = os.fork()
    except OSError:
        if fresh_pidns:
            state.pidns.after_fork()
        raise
    if pid:
        if fresh_pidns:
            state.pidns.after_fork()
        return pid
    code = 70
    try:
        if program and state.cgroup is not None:
            state.cgroup.join()
        sources = [fcntl.fcntl(fd, fcntl.F_DUPFD, 1000) for fd in (*stdio, *keep)]
        for target, fd in enumerate(sources):
            os.dup2(fd, target)
        os.closerange(len(sources), 1 << 16)
        code = body()
    finally:
        os._exit(code)


class Spawner:
    """The process that forks every program: forked from the worker before the
    first job, it never reads a job's content. The worker hands it file
    descriptors and a memfd holding the program; the forked child reads that.
    So a program searching its own memory (frames, ``gc``, raw heap) finds no
    tests, expected outputs, verdicts or other programs, of this job or any other.
    """

    def __init__(self, state: WorkerState) -> None:
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                # Not the worker's job and reply streams (EOF must reach the pool when it dies).
                _close_all_but({theirs.fileno(), 2, *_state_fds(state)})
                prctl_subreaper()
                _spawn_loop(theirs, state)
                code = 0
            finally:
                os._exit(code)
        theirs.close()
        self.pid = pid

    def _ask(self, request: dict[str, Any], fds: list[int] = ()) -> dict[str, Any]:
        socket.send_fds(self.sock, [json.dumps(request).encode()], list(fds))
        reply = self.sock.recv(1 << 16)
        if not reply:
            raise OSError(errno.EPIPE, "the spawner died")
        return json.loads(reply)

    def spawn(self, request: dict[str, Any], fds: list[int]) -> int:
        reply = self._ask({"op": "spawn", **request}, fds)
        if "pid" not in reply:
            raise OSError(errno.EAGAIN, f"spawn failed: {reply.get('error')}")
        return int(reply["pid"])

    def close(self) -> None:
        self.sock.close()  # EOF: the spawner returns
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass

    def alive(self) -> bool:
        try:
            return os.waitpid(self.pid, os.WNOHANG)[0] == 0
        except ChildProcessError:
            return False

    def reap(self, pid: int) -> int:
        """Wait for ``pid`` (already killed) and return its wait status."""
        return int(self._ask({"op": "reap", "pid": pid})["status"])


def _state_fds(state: WorkerState) -> list[int]:
    fds = []
    if state.cgroup is not None:
        fds += [*state.cgroup.procs_fds, state.cgroup.cpu_fd, state.cgroup.events_fd, *state.cgroup.memory_fds]
    if state.pidns is not None:
        fds.append(state.pidns.own)
    return fds


def _close_all_but(keep: set[int]) -> None:
    low = 0
    for fd in sorted(keep):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 16)


def prctl_subreaper() -> None:
    try:
        detach_worker()
    except OSError:
        pass


def _spawn_loop(sock: socket.socket, state: WorkerState) -> None:
    while True:
        message, fds, _flags, _addr = socket.recv_fds(sock, 1 << 16, 16)
        if not message:
            return
        request = json.loads(message)
        if request["op"] == "spawn":
            try:
                reply = {"pid": _fork(lambda: _program_main(request, state), tuple(fds[:3]), fds[3:], state)}
            except OSError as exc:
                reply = {"error": str(exc)}
            finally:
                for fd in fds:
                    os.close(fd)
        else:
            for fd in fds:
                os.close(fd)
            try:
                status = os.waitpid(int(request["pid"]), 0)[1]
            except ChildProcessError:
                status = 0
            _reap_orphans()
            reply = {"status": status}
        sock.send(json.dumps(reply).encode())


def _reap_orphans() -> None:
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                return
        except ChildProcessError:
            return


def _program_main(request: dict[str, Any], state: WorkerState) -> int:
    """The forked program: fds 0-2, then the job's pipes, the violation pipe and
    (last) the memfd with ``{"program", "prompt", "entry_point"}``."""
    spec_fd = int(request["fds"]) - 1
    with open(spec_fd, "rb") as f:
        spec = json.loads(f.read())
    home = _program_sandbox(state, int(request["memory_mb"]), float(request["timeout_s"]), request.get("workdir"))
    if request["mode"] == "function":
        harness.install_policy_hook(home, violation_fd=5)
        harness.serve_program(spec["program"], spec, rfd=3, wfd=4)
        return 0
    harness.install_policy_hook(home, violation_fd=3)
    sys.stdin = open(0, "r", encoding="utf-8", errors="replace", closefd=False)
    sys.stdout = open(1, "w", encoding="utf-8", errors="replace", closefd=False)
    sys.stderr = open(2, "w", encoding="utf-8", errors="replace", closefd=False)
    return harness.run_script(spec["program"])


def _spec_memfd(program: str, tests: dict[str, Any]) -> int:
    """The program, and the only parts of its tests it may see, in a memfd for the child."""
    fd = os.memfd_create("program", os.MFD_CLOEXEC)
    data = json.dumps({"program": program, "prompt": tests.get("prompt") or "",
                       "entry_point": tests.get("entry_point")}).encode()
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _spawn(state: WorkerState, mode: str, program: str, tests: dict[str, Any], memory_mb: int,
           timeout_s: float, workdir: str | None, stdio: tuple[int, int, int], keep: list[int]) -> int:
    spec = _spec_memfd(program, tests)
    try:
        fds = [*stdio, *keep, spec]
        return state.spawner.spawn({"mode": mode, "memory_mb": memory_mb, "timeout_s": timeout_s,
                                    "workdir": workdir, "fds": len(fds)}, fds)
    finally:
        os.close(spec)


def _program_sandbox(state: WorkerState, memory_mb: int, timeout_s: float, workdir: str | None) -> str:
    """In a forked program: its sandbox (or, unsafe, ``workdir``); returns its working directory."""
    limits = Limits(memory_mb, timeout_s + 1)
    if not state.namespaces:
        return drop_privileges(state.program_uid, workdir, limits)
    # The cgroup was joined in _fork, before the file descriptors were closed.
    if not state.program_ns:
        return drop_privileges(state.program_uid, "/tmp", limits, state.seccomp)
    return enter_program_sandbox(state.program_uid, limits, state.pidns is not None, state.seccomp)


def _kill_and_reap(pids: list[int], state: WorkerState) -> dict[int, int]:
    """SIGKILL each program's group and the program, then the strays; the spawner
    reaps them and says how they exited."""
    # Kill before reaping: a reaped pid (and so its group id) could be reused.
    for pid in pids:
        for kill in (os.killpg, os.kill):
            try:
                kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    _reap_strays(state)
    return {pid: state.spawner.reap(pid) for pid in pids}


def _reap_strays(state: WorkerState) -> None:
    """In a PID namespace nothing outlives the program (the kernel kills the
    namespace with its init); without one, kill the program's uid. The spawner
    (a subreaper) reaps the orphans."""
    if state.pidns is None and state.program_uid is not None:
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

        self.pid = _fork(serve, (null, null, null), [theirs.fileno(), report_w], state, program=False)
        for fd in (report_w, null):
            os.close(fd)
        theirs.close()
        self.jobs = 0
        self.buffer = bytearray()

    def submit(self, job: int, tests: dict[str, Any], wfd: int, rfd: int) -> None:
        payload = json.dumps({"job": job, "tests": tests}).encode()
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
                    frame = json.loads(bytes(self.buffer[4:4 + size]))
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
        message = json.loads(payload)
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
    null = os.open(os.devnull, os.O_RDWR)
    oom0 = _start_job(state, memory_mb)
    budget = Budget(timeout_s, state.cgroup)
    try:
        program_pid = _spawn(state, "function", program, tests, memory_mb, timeout_s, workdir,
                             (null, null, null), [t2p_r, p2t_w, viol_w])
    except OSError:
        for fd in (t2p_r, p2t_w, viol_w, null, t2p_w, p2t_r, viol_r):
            os.close(fd)
        raise
    for fd in (t2p_r, p2t_w, viol_w, null):  # only the two processes may hold the pipe ends (EOF = death)
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
    why_timeout = budget.describe() if timed_out else ""
    if timed_out or broken or server.jobs >= TEST_SERVER_JOBS:
        server.close()
        state.test_server = None
    _kill_and_reap([program_pid], state)
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
        pid = _spawn(state, "stdio", program, {}, memory_mb, timeout_s, workdir, (in_r, out_w, err_w), [viol_w])
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
        outcome_status = _kill_and_reap([pid], state)[pid]
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
