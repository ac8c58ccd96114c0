"""Kernel-level isolation: namespaces, mounts, uids and rlimits (Linux, root).

A worker calls ``isolate_worker`` once: it moves itself into fresh network and
mount namespaces (loopback down, so nothing is reachable), makes ``/``
read-only, mounts private tmpfs over ``/tmp``, ``/run`` & co, and hides home
directories and the factory's store behind empty tmpfs (binding the Python
installation back, read-only, where it lives under a hidden path). Every
sandboxed child it forks then calls ``enter_sandbox``: new session, rlimits,
an unprivileged uid of its own, ``no_new_privs``.

Python 3.11 has no ``os.unshare``, so ``unshare(2)``/``mount(2)`` go through
ctypes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import os
import resource
import signal
import sys
from dataclasses import dataclass

CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 36, 38
# Covered by private tmpfs: the shared scratch dirs, and /run, which holds
# host unix sockets (dbus, ...) that a network namespace does not cut off.
SCRATCH_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run")
SCRATCH_SIZE = "256m"
FILE_SIZE_LIMIT = 16 << 20
OPEN_FILES_LIMIT = 256
PROCESS_LIMIT = 64

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


class SandboxUnavailable(RuntimeError):
    """Isolation cannot be set up here (not root, no namespaces, ...)."""


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = (lambda s: s.encode() if s is not None else None)
    _check(_libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)),
           f"mount {target}")


def prctl(option: int, value: int) -> None:
    _check(_libc.prctl(ctypes.c_int(option), ctypes.c_ulong(value), ctypes.c_ulong(0), ctypes.c_ulong(0),
                       ctypes.c_ulong(0)), f"prctl {option}")


def default_hidden_paths() -> list[str]:
    """Home directories and the factory's store (``$FACTORY_HOME``, else ``./.factory``)."""
    paths = ["/root", "/home", os.path.expanduser("~"),
             os.path.abspath(os.environ.get("FACTORY_HOME", ".factory"))]
    return sorted({os.path.realpath(p) for p in paths if p})


def _needed_paths() -> list[str]:
    """Where the interpreter and its packages live; these stay readable."""
    prefixes = {os.path.realpath(p) for p in (sys.base_prefix, sys.prefix, sys.base_exec_prefix, sys.exec_prefix)}
    paths = set(prefixes)
    paths.update(os.path.realpath(p) for p in sys.path
                 if p and os.path.isdir(p) and any(_within(os.path.realpath(p), q) for q in prefixes))
    # Only the outermost of nested paths needs binding.
    return sorted(p for p in paths if not any(q != p and _within(p, q) for q in paths))


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def isolate_worker(hidden_paths: list[str]) -> dict[str, object]:
    """Move this (single-threaded, root) process into its own net+mount namespaces."""
    if os.geteuid() != 0:
        raise SandboxUnavailable("the code sandbox needs root (it creates network/mount namespaces and runs "
                                 "each program under its own unprivileged uid); run as root, e.g. in a "
                                 "container, or pass unsafe_no_sandbox=True / --unsafe-no-sandbox")
    try:
        unshare(CLONE_NEWNS | CLONE_NEWNET)
    except OSError as exc:
        raise SandboxUnavailable(f"cannot create network/mount namespaces ({exc}); the code sandbox needs "
                                 f"CAP_SYS_ADMIN, or pass unsafe_no_sandbox=True / --unsafe-no-sandbox") from None
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    hidden = [p for p in (os.path.realpath(h) for h in hidden_paths) if os.path.isdir(p) and p != "/"]
    needed = _needed_paths()
    scratch = [p for p in SCRATCH_DIRS if os.path.isdir(p)]
    # Bind sources must be reachable after their parents are covered: a venv under a
    # home dir, or under /tmp (a fresh clone, CI), stays importable read-only.
    covered = hidden + [os.path.realpath(p) for p in scratch]
    keep = {p: os.open(p, os.O_PATH) for p in needed if any(_within(p, h) for h in covered)}
    for path in sorted(set(hidden)):
        if any(_within(path, h) and path != h for h in hidden):
            continue  # already under another hidden path
        mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m")
    for path in scratch:
        mode = "0711" if path == "/tmp" else "0755"
        mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, f"mode={mode},size={SCRATCH_SIZE}")
    for path, fd in keep.items():
        os.makedirs(path, mode=0o755, exist_ok=True)
        mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
        mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
        os.close(fd)
    mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY)
    return {"hidden": hidden, "rebound": sorted(keep)}


def detach_worker() -> None:
    """Leave the caller's session (so no child can reach its terminal) and become
    a child subreaper (so orphans of sandboxed programs re-parent to the worker)."""
    try:
        os.setsid()
    except PermissionError:  # already a process group leader
        pass
    prctl(PR_SET_CHILD_SUBREAPER, 1)


@dataclass(frozen=True)
class Limits:
    memory_mb: int
    cpu_s: float
    file_size: int = FILE_SIZE_LIMIT
    open_files: int = OPEN_FILES_LIMIT
    processes: int = PROCESS_LIMIT


def _set_limit(which: int, value: int) -> None:
    resource.setrlimit(which, (value, value))


def enter_sandbox(uid: int | None, workdir: str, limits: Limits) -> None:
    """In a freshly forked child: own process group, rlimits, then drop to ``uid``.

    A process group, not a session: the worker already left its terminal's
    session (``detach_worker``), and ``setsid`` costs milliseconds per call
    once the worker sits in its own namespaces.
    """
    os.setpgid(0, 0)
    _set_limit(resource.RLIMIT_AS, limits.memory_mb << 20)
    if limits.cpu_s > 0:  # 0: no CPU limit (long-lived helpers bounded by the wall clock)
        _set_limit(resource.RLIMIT_CPU, max(1, math.ceil(limits.cpu_s)))
    _set_limit(resource.RLIMIT_FSIZE, limits.file_size)
    _set_limit(resource.RLIMIT_NOFILE, limits.open_files)
    _set_limit(resource.RLIMIT_CORE, 0)
    if uid is not None:  # counted per uid: only meaningful for a uid of our own
        _set_limit(resource.RLIMIT_NPROC, limits.processes)
    os.chdir(workdir)
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    # The pool already started the worker with a minimal environment (no secrets).
    os.environ["HOME"] = os.environ["TMPDIR"] = workdir
