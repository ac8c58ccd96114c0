"""System calls and process confinement: what runs in the zygote and in each program.

Kept apart from ``isolation`` (cgroups, uid ranges, the worker's root
filesystem) so that the zygote, which forks every program, imports little:
a fork costs in proportion to the memory the parent has mapped, and every
module imported here is mapped in every program's parent.

Python 3.11 has no ``os.unshare``/``os.setns``, so the system calls go
through ctypes.
"""

from __future__ import annotations

import ctypes
import math
import os
import resource
import signal
import struct
from typing import Any, NamedTuple

CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWPID, CLONE_NEWNET = 0x00020000, 0x08000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = (
    1, 2, 4, 8, 32, 4096, 16384, 1 << 18)
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_SECCOMP, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 22, 36, 38
SCRATCH_SIZE = "256m"
FILE_SIZE_LIMIT = 16 << 20
OPEN_FILES_LIMIT = 256
PROCESS_LIMIT = 64
WORKDIR = "/tmp/work"
MACHINE = os.uname().machine
_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
# seccomp: (audit arch, {add_key, request_key, keyctl}).
_KEYRING_SYSCALLS = {"x86_64": (0xC000003E, (248, 249, 250)), "aarch64": (0xC00000B7, (217, 218, 219))}


def _load_libc() -> ctypes.CDLL:
    """The C library: the interpreter's own symbols first (no ``ctypes.util``,
    which imports ``subprocess`` and friends into every program's parent)."""
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        libc.unshare  # noqa: B018  (a statically linked interpreter may lack it)
    except AttributeError:
        from ctypes.util import find_library
        libc = ctypes.CDLL(find_library("c"), use_errno=True)
    return libc


_libc = _load_libc()


def _function(name: str, *argtypes: Any) -> Any:
    """A libc function with its argument types declared: calls convert plain ints
    and bytes in C, without building ctypes objects in Python."""
    function = _libc[name]
    function.restype, function.argtypes = ctypes.c_int, argtypes
    return function


_unshare = _function("unshare", ctypes.c_int)
_setns = _function("setns", ctypes.c_int, ctypes.c_int)
_mount = _function("mount", ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)
_prctl = _function("prctl", ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def unshare(flags: int) -> None:
    if _unshare(flags):
        _check(-1, "unshare")


def setns(fd: int, nstype: int) -> None:
    if _setns(fd, nstype):
        _check(-1, "setns")


def _encode(text: str | None) -> bytes | None:
    return text.encode() if text is not None else None


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    if _mount(_encode(source), _encode(target), _encode(fstype), flags, _encode(data)):
        _check(-1, f"mount {target}")


def umount(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(target.encode(), ctypes.c_int(flags)), f"umount {target}")


def prctl(option: int, value: int) -> None:
    if _prctl(option, value, 0, 0, 0):
        _check(-1, f"prctl {option}")


def pivot_root(new_root: str) -> None:
    number = _PIVOT_ROOT.get(MACHINE)
    if number is None:
        raise OSError(0, f"pivot_root: unknown system call number on {MACHINE}")
    os.chdir(new_root)
    # pivot_root(".", "."): the old root ends up on top of the new one; detach it.
    _check(_libc.syscall(ctypes.c_long(number), b".", b"."), "pivot_root")
    umount(".", MNT_DETACH)
    os.chdir("/")


def detach() -> None:
    """Leave the caller's session (so no child can reach its terminal) and become
    a child subreaper (so orphans of sandboxed programs re-parent to the caller)."""
    try:
        os.setsid()
    except PermissionError:  # already a process group leader
        pass
    prctl(PR_SET_CHILD_SUBREAPER, 1)


# --------------------------------------------------------------------------- limits and filters

class Limits(NamedTuple):
    memory_mb: int
    cpu_s: float  # 0: none (a long-lived helper bounded by the worker's wall clock)


def _set_limit(which: int, value: int) -> None:
    resource.setrlimit(which, (value, value))


def _keyring_filter() -> bytes | None:
    """A seccomp BPF program: keyring system calls fail with EPERM, the rest pass."""
    arch = _KEYRING_SYSCALLS.get(MACHINE)
    if arch is None:
        return None
    audit_arch, numbers = arch
    ld_w_abs, jeq_k, jge_k, ret_k = 0x20, 0x15, 0x35, 0x06
    allow, deny = 0x7FFF0000, 0x00050000 | 1  # SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO | EPERM
    n = len(numbers)
    # Jump offsets count from the next instruction; the last one is "deny".
    insns = [(ld_w_abs, 0, 0, 4),                      # arch
             (jeq_k, 1, 0, audit_arch),
             (ret_k, 0, 0, allow),                     # another ABI: not ours to filter
             (ld_w_abs, 0, 0, 0),                      # system call number
             (jge_k, n + 1, 0, 0x40000000)]            # x32 numbers: refuse
    insns += [(jeq_k, n - i, 0, nr) for i, nr in enumerate(numbers)]
    insns += [(ret_k, 0, 0, allow), (ret_k, 0, 0, deny)]
    return b"".join(struct.pack("HBBI", *i) for i in insns)


KEYRING_FILTER = _keyring_filter()


def install_seccomp(program: bytes) -> None:
    buf = ctypes.create_string_buffer(program)
    fprog = struct.pack("HxxxxxxQ", len(program) // 8, ctypes.addressof(buf))
    arg = ctypes.create_string_buffer(fprog)
    _check(_libc.prctl(ctypes.c_int(PR_SET_SECCOMP), ctypes.c_ulong(2), ctypes.c_void_p(ctypes.addressof(arg)),
                       ctypes.c_ulong(0), ctypes.c_ulong(0)), "seccomp")


# --------------------------------------------------------------------------- confinement

def confine_inherited(uid: int | None, seccomp: bool = True) -> None:
    """The part of a program's confinement that fork passes on unchanged, set
    once in the process that forks the programs (the zygote) instead of in
    each program: no supplementary groups, ``no_new_privs``, the keyring
    filter, and the rlimits that are the same for every program. None of it
    stops the zygote's own work (it stays root: unshare, mount, setuid)."""
    _set_limit(resource.RLIMIT_FSIZE, FILE_SIZE_LIMIT)
    _set_limit(resource.RLIMIT_NOFILE, OPEN_FILES_LIMIT)
    _set_limit(resource.RLIMIT_CORE, 0)
    if uid is not None:  # counted per uid (root is exempt): only meaningful for a uid of our own
        _set_limit(resource.RLIMIT_NPROC, PROCESS_LIMIT)
        os.setgroups([])
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    if seccomp and uid is not None and KEYRING_FILTER is not None:
        install_seccomp(KEYRING_FILTER)


def program_mounts(uid: int | None, fresh_proc: bool) -> list[tuple[bytes, bytes, bytes, int, bytes | None]]:
    """What ``enter_program_namespaces`` mounts (built once, in the zygote): a fresh
    tmpfs on /tmp/work, and /proc when the program has a PID namespace of its own.
    On /tmp/work, not over /tmp: a venv under /tmp (a CI checkout) stays visible."""
    owner = f",uid={uid},gid={uid}" if uid is not None else ""
    mounts = [(b"tmpfs", WORKDIR.encode(), b"tmpfs", MS_NOSUID | MS_NODEV,
               f"mode=0700,size={SCRATCH_SIZE}{owner}".encode())]
    if fresh_proc:
        mounts.append((b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None))
    return mounts


def enter_program_namespaces(mounts: list[tuple[bytes, bytes, bytes, int, bytes | None]]) -> None:
    """In a freshly forked program (already in its cgroup and PID namespace): own
    IPC+mount namespaces with ``program_mounts``. Both go with the namespaces:
    no cleanup that can fail."""
    unshare(CLONE_NEWNS | CLONE_NEWIPC)
    for source, target, fstype, flags, data in mounts:
        if _mount(source, target, fstype, flags, data):
            _check(-1, f"mount {target.decode()}")


def confine_program(uid: int | None, workdir: str, memory_mb: int, cpu_s: float) -> None:
    """The per-program rest, after ``confine_inherited`` in its parent: own process
    group, memory and CPU rlimits, working directory, then ``uid`` for good.

    A process group, not a session: the zygote already left its terminal's
    session, and ``setsid`` costs milliseconds per call inside the namespaces.
    """
    os.setpgid(0, 0)
    _set_limit(resource.RLIMIT_AS, memory_mb << 20)
    if cpu_s > 0:
        _set_limit(resource.RLIMIT_CPU, max(1, math.ceil(cpu_s)))
    os.chdir(workdir)
    if uid is not None:
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def drop_privileges(uid: int | None, workdir: str | None, limits: Limits, seccomp: bool = True) -> str:
    """All of the above for a process forked from an unconfined parent (the
    long-lived test process): returns its working directory."""
    confine_inherited(uid, seccomp)
    workdir = workdir or os.getcwd()
    confine_program(uid, workdir, limits.memory_mb, limits.cpu_s)
    # The pool started the worker with a minimal environment (no secrets).
    os.environ["HOME"] = os.environ["TMPDIR"] = workdir
    return workdir
