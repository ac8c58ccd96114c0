"""The zygote: a small, pre-imported, pre-confined process that forks every program of a slot.

A fork costs in proportion to what the parent has mapped, and every setting
the parent already has is one the child need not make. So the worker starts
the zygote as a fresh ``python -I`` (not a fork of itself) that imports only
the standard-library modules programs commonly use, the program side of
``harness`` and ``confine``. It then

* joins the worker's network and mount namespaces (the minimal read-only root
  of ``isolation.isolate_worker``), leaves its session, becomes a child
  subreaper;
* confines itself once with what fork passes on unchanged (``confine_inherited``):
  no supplementary groups, ``no_new_privs``, the keyring seccomp filter, the
  file-size/open-files/core/process rlimits, ``HOME``/``TMPDIR``.

Per program it unshares a PID namespace and forks; the child joins the slot's
cgroup, takes its file descriptors, unshares its IPC and mount namespaces
with a fresh ``/tmp/work`` and ``/proc``, sets its memory and CPU rlimits,
process group and uid (``confine_program``), and runs the program.

It never reads a job: the worker hands it file descriptors and a memfd holding
the program, which only the forked child reads, so a program searching its own
memory (frames, ``gc``, the raw heap) finds nothing of any job but its own.

Protocol with the worker (SOCK_SEQPACKET, one reply per request): ``join``
(JSON, with the cgroup's ``cgroup.procs`` descriptors) → JSON; ``spawn``
(``_SPAWN`` + descriptors) → pid, after which the zygote waits, idle, until
the program has died (the worker kills it); ``end`` (``_END``: kill what is
left of the program's group unless it is a probe, reap it and any orphans)
→ wait status.
"""

from __future__ import annotations

import builtins
import errno
import fcntl
import gc
import importlib
import json
import os
import signal
import socket
import struct
import sys
from typing import Any

from . import harness
from .confine import (CLONE_NEWNET, CLONE_NEWNS, CLONE_NEWPID, PR_SET_PDEATHSIG, WORKDIR, confine_inherited,
                      confine_program, detach, enter_program_namespaces, prctl, program_mounts, setns, unshare)

# Imported once here so that programs do not pay for them: what programs
# commonly import. Every module here is mapped in every program's parent, and
# a fork and an exit cost in proportion (measured: dropping hashlib, datetime,
# dataclasses, inspect, ast, statistics, fractions and textwrap from this list
# saved ~0.3 CPU ms per program, ~10%); a program that imports something else
# pays that import in its own process, as it would in a fresh interpreter. Not
# "threading"/"queue" either: threading's fork hook would run in every child.
PREIMPORTS = ("math", "cmath", "re", "string", "collections", "collections.abc", "itertools", "functools",
              "operator", "heapq", "bisect", "array", "typing", "random", "decimal", "copy", "json", "time",
              "enum", "abc", "numbers", "unicodedata", "struct", "contextlib", "io", "types", "sys", "os")
FUNCTION, STDIO, PROBE = 0, 1, 2
# op, mode, memory_mb, timeout_s; an unsafe run's working directory follows as UTF-8.
_SPAWN = struct.Struct(">cBId")
_END = struct.Struct(">ci?")      # op, pid, kill first
_REPLY = struct.Struct(">i")      # pid or wait status; -errno and a reason on failure
_SPEC = struct.Struct(">III")     # lengths of program, prompt, entry point (UTF-8)
_MAX_FDS = 16
# Where a child finds the violation pipe: function mode (stdio, two test pipes,
# violations, spec) and stdin/stdout mode (stdio, violations, spec).
_FUNCTION_VIOLATION_FD, _STDIO_VIOLATION_FD = 5, 3


class Zygote:
    """A slot's zygote: what it knows of the sandbox and what it built once for every child."""

    def __init__(self, uid: int | None, namespaces: bool, program_ns: bool, cgroup_fds: list[int]) -> None:
        self.uid, self.namespaces, self.program_ns, self.cgroup_fds = uid, namespaces, program_ns, cgroup_fds
        self.pidns_fd: int | None = None  # our own PID namespace, to return to after each fork
        # Built once, before any fork: each child would otherwise build its own.
        self.builtins = dict(builtins.__dict__)
        self.hooks: dict[int, Any] = {}  # violation fd -> audit hook (sandboxed runs)
        self.mounts: list[tuple] = []  # what each program mounts in its own mount namespace

    # ------------------------------------------------------------------ setup

    @classmethod
    def join(cls, config: dict[str, Any], cgroup_fds: list[int]) -> tuple[Zygote, dict[str, Any]]:
        """Enter the worker's namespaces and confine this process once (see the module doc)."""
        namespaces = not config["unsafe"]
        zygote = cls(config["uid"], namespaces, namespaces and config["program_ns"], cgroup_fds)
        pidns = "off: disabled"
        if namespaces and config["pidns"]:
            try:
                zygote.pidns_fd = _own_pid_namespace()
                pidns = "on"
            except OSError as exc:
                pidns = f"off: no PID namespace here ({exc})"
        if namespaces:
            _enter_namespaces_of(int(config["worker_pid"]))
        detach()
        confine_inherited(zygote.uid, config["seccomp"])
        if namespaces:
            zygote.mounts = program_mounts(zygote.uid, fresh_proc=zygote.pidns_fd is not None)
            home = WORKDIR if zygote.program_ns else "/tmp"
            os.environ["HOME"] = os.environ["TMPDIR"] = home
            zygote.hooks = {fd: harness.policy_hook(home, fd)
                            for fd in (_FUNCTION_VIOLATION_FD, _STDIO_VIOLATION_FD)}
        return zygote, {"ready": True, "pidns": pidns}

    # ------------------------------------------------------------------ the loop

    def serve(self, sock: socket.socket) -> None:
        while True:
            message, fds, _flags, _addr = socket.recv_fds(sock, 4096, _MAX_FDS)
            if not message:
                return
            pid = -1
            try:
                if message[:1] == b"s":
                    reply = self._spawn(message, fds)
                    pid = _REPLY.unpack_from(reply)[0]
                elif message[:1] == b"e":
                    reply = self._end(message)
                else:
                    reply = _failure(errno.EINVAL, "unknown request")
            except OSError as exc:  # unshare/setns refused, a malformed request: say so, keep serving
                reply = _failure(exc.errno or errno.EINVAL, str(exc))
            finally:
                for fd in fds:
                    os.close(fd)
            sock.send(reply)
            if pid > 0:
                # Touch nothing while the program runs: every page we write now
                # would be copied (it is shared with the child); once it is dead,
                # writing one only takes a fault. Not reaped yet (WNOWAIT): until
                # "end", its pid and process group cannot be reused, so the
                # worker may signal them.
                os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)

    def _spawn(self, message: bytes, fds: list[int]) -> bytes:
        _op, mode, memory_mb, timeout_s = _SPAWN.unpack_from(message)
        workdir = message[_SPAWN.size:].decode() or None
        if self.pidns_fd is not None:
            unshare(CLONE_NEWPID)  # the next child is pid 1 of a namespace of its own
        try:
            pid = os.fork()
        except OSError as exc:
            self._back_to_own_pidns()
            return _failure(exc.errno or errno.EAGAIN, str(exc))
        if pid == 0:
            code = 70
            try:
                code = self._child(mode, memory_mb, timeout_s, workdir, fds)
            finally:
                os._exit(code)
        self._back_to_own_pidns()
        return _REPLY.pack(pid)

    def _back_to_own_pidns(self) -> None:
        if self.pidns_fd is not None:
            setns(self.pidns_fd, CLONE_NEWPID)

    def _end(self, message: bytes) -> bytes:
        """Kill what is left of the program's group (without a PID namespace its
        children may outlive it) and the program, and reap it; it is not reaped
        before, so its pid cannot have been reused by then."""
        _op, pid, kill = _END.unpack_from(message)
        if kill:
            for send in (os.killpg, os.kill):
                try:
                    send(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        try:
            status = os.waitpid(pid, 0)[1]
        except ChildProcessError:
            status = 0
        if self.pidns_fd is None:  # in a PID namespace, orphans die with it instead of coming to us
            _reap_orphans()
        return _REPLY.pack(status)

    # ------------------------------------------------------------------ in the forked child

    def _child(self, mode: int, memory_mb: int, timeout_s: float, workdir: str | None, fds: list[int]) -> int:
        """A program: its cgroup (before anything else runs), its descriptors as
        0, 1, 2, ... (the last one the spec memfd), its sandbox, then the program."""
        for fd in self.cgroup_fds:
            os.write(fd, b"0")
        _place_fds(fds)
        if mode == PROBE:
            self._confine(memory_mb, timeout_s, workdir)
            return _probe(self)
        program, prompt, entry_point = _read_spec(len(fds) - 1)
        home = self._confine(memory_mb, timeout_s, workdir)
        if mode == FUNCTION:
            self._audit(home, _FUNCTION_VIOLATION_FD)
            harness.serve_program(program, {"prompt": prompt, "entry_point": entry_point}, rfd=3, wfd=4,
                                  pristine=self.builtins)
            return 0
        self._audit(home, _STDIO_VIOLATION_FD)
        sys.stdin = open(0, "r", encoding="utf-8", errors="replace", closefd=False)
        sys.stdout = open(1, "w", encoding="utf-8", errors="replace", closefd=False)
        sys.stderr = open(2, "w", encoding="utf-8", errors="replace", closefd=False)
        return harness.run_script(program)

    def _audit(self, home: str, violation_fd: int) -> None:
        hook = self.hooks.get(violation_fd)
        sys.addaudithook(hook if hook is not None else harness.policy_hook(home, violation_fd))

    def _confine(self, memory_mb: int, timeout_s: float, workdir: str | None) -> str:
        """The per-program sandbox; returns the program's working directory."""
        if self.program_ns:
            enter_program_namespaces(self.mounts)
            home = WORKDIR
        elif self.namespaces:
            home = "/tmp"  # the IPC+mount layer switched off (only to measure what it costs)
        else:
            home = workdir or os.getcwd()
            os.environ["HOME"] = os.environ["TMPDIR"] = home
        confine_program(self.uid, home, memory_mb, timeout_s + 1)
        return home


def _failure(code: int, why: str) -> bytes:
    return _REPLY.pack(-code) + why.encode("utf-8", "replace")[:1000]


def _own_pid_namespace() -> int:
    """A handle on our PID namespace, after one real round of unshare + fork, so
    that a kernel that refuses says so here, not at a program's fork."""
    own = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    try:
        unshare(CLONE_NEWPID)
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        setns(own, CLONE_NEWPID)
        os.waitpid(pid, 0)
    except OSError:
        os.close(own)
        raise
    return own


def _enter_namespaces_of(pid: int) -> None:
    """Join ``pid``'s network and mount namespaces; our root becomes its root."""
    for kind, flag in (("net", CLONE_NEWNET), ("mnt", CLONE_NEWNS)):
        fd = os.open(f"/proc/{pid}/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            setns(fd, flag)
        finally:
            os.close(fd)
    os.chdir("/")


def _place_fds(fds: list[int]) -> None:
    """Make ``fds`` this process's 0, 1, 2, ... and close every other descriptor."""
    # Sources above every target (the zygote keeps its low descriptors taken),
    # so that no dup2 below overwrites a source; else move them up first.
    moved = fds
    if min(fds, default=len(fds)) < len(fds):
        moved = [fcntl.fcntl(fd, fcntl.F_DUPFD, len(fds)) for fd in fds]
    for target, fd in enumerate(moved):
        os.dup2(fd, target)
    os.closerange(len(moved), 1 << 16)


def _site_builtins() -> None:
    """What ``site`` puts in builtins (``exit``, ``quit``, ``help``, ``copyright``,
    ...), for programs; the zygote runs without ``site`` (python -S)."""
    import site
    site.setquit()
    site.setcopyright()
    site.sethelper()


def _take_low_fds() -> None:
    """Fill descriptors below ``_MAX_FDS`` (with /dev/null), so that every descriptor
    a job brings lands above the numbers the child moves them to."""
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    while null < _MAX_FDS:
        null = os.dup(null)
    os.close(null)


def _read_spec(fd: int) -> tuple[str, str, str | None]:
    size = os.fstat(fd).st_size
    data = b""
    while len(data) < size:
        chunk = os.pread(fd, size - len(data), len(data))
        if not chunk:
            break
        data += chunk
    os.close(fd)
    lengths = _SPEC.unpack_from(data)
    parts, offset = [], _SPEC.size
    for length in lengths:
        parts.append(data[offset:offset + length].decode("utf-8", "surrogatepass"))
        offset += length
    return parts[0], parts[1], parts[2] or None


def encode_spec(program: str, prompt: str, entry_point: str | None) -> bytes:
    """What ``_read_spec`` reads: the program and the only parts of its tests it may see."""
    parts = [s.encode("utf-8", "surrogatepass") for s in (program, prompt or "", entry_point or "")]
    return _SPEC.pack(*map(len, parts)) + b"".join(parts)


def _reap_orphans() -> None:
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                return
        except ChildProcessError:
            return


def _probe(zygote: Zygote) -> int:
    """Exit codes of the start-up self-check (0: the isolation holds)."""
    if os.geteuid() == 0:
        return 5
    if os.path.exists("/sys/fs") or os.path.exists("/home"):
        return 6
    alone = os.getpid() == 1 and [p for p in os.listdir("/proc") if p.isdigit()] == ["1"]
    if zygote.pidns_fd is not None and zygote.program_ns and not alone:
        return 7
    with socket.socket() as probe:
        probe.settimeout(1)
        try:
            probe.connect(("127.0.0.1", 9))
            return 3
        except OSError as exc:  # loopback down in a fresh namespace: unreachable
            return 0 if exc.errno == errno.ENETUNREACH else 4


# --------------------------------------------------------------------------- the worker's side

def request_spawn(mode: int, memory_mb: int, timeout_s: float, workdir: str | None) -> bytes:
    return _SPAWN.pack(b"s", mode, memory_mb, timeout_s) + (workdir or "").encode()


def request_end(pid: int, kill: bool = True) -> bytes:
    return _END.pack(b"e", pid, kill)


def read_reply(reply: bytes) -> int:
    """The pid or wait status of a reply; raises OSError for a failure (or a dead zygote)."""
    if len(reply) < _REPLY.size:
        raise OSError(errno.EPIPE, "the zygote died")
    (value,) = _REPLY.unpack_from(reply)
    if value < 0:
        raise OSError(-value, reply[_REPLY.size:].decode("utf-8", "replace"))
    return value


def main() -> None:
    """``python -I -c ... <socket fd>``, started by the worker."""
    sock = socket.socket(fileno=int(sys.argv[1]))
    del sys.argv[1:]  # programs see what `python -c` gives them, not our descriptor and paths
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # the worker is our parent
    _take_low_fds()
    _site_builtins()
    for name in PREIMPORTS:
        importlib.import_module(name)
    message, fds, _flags, _addr = socket.recv_fds(sock, 1 << 16, _MAX_FDS)
    if not message:
        return
    try:
        zygote, info = Zygote.join(json.loads(message), fds)
    except OSError as exc:
        sock.send(json.dumps({"ready": False, "error": f"the zygote could not join the sandbox: {exc}"}).encode())
        return
    sock.send(json.dumps(info).encode())
    gc.freeze()  # fewer copy-on-write faults in forked children
    zygote.serve(sock)
