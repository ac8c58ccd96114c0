"""Kernel-level isolation: namespaces, a minimal root, cgroups, uids, rlimits (Linux, root).

Layers, from the outside in (``SandboxPool.info["layers"]`` says which are on):

* **uids**: each pool takes a range of unprivileged uids of its own
  (``allocate_uid_range``, a lock file per range), so two pools never share
  one and cannot signal each other's programs.
* **worker** (``isolate_worker``, once per fork server): fresh network and mount
  namespaces (loopback down), then ``pivot_root`` into a read-only tmpfs that
  holds only what the interpreter needs: ``/usr``, ``/lib*``, ``/bin``, the
  Python prefixes and their ``sys.path`` entries, bound read-only, plus a few
  ``/dev`` nodes. Not the project checkout, not its data, not ``/sys``,
  ``/home``, ``/root`` or the store. Our own packages (``verifiers``,
  ``factory``) are masked where an install put them under a bound path.
* **cgroup** (``SlotCgroup``, one per worker slot, v1 or v2, whichever the
  machine has): at most one CPU, ``memory_mb`` of memory and
  ``PROCESS_LIMIT`` processes for *all* of a program's processes together;
  the worker reads its CPU time for timeouts and its OOM kills for the
  ``memory`` verdict.
* **sandbox** (``confine``, set up by the slot's ``zygote``): each program in
  its own PID namespace (the zygote unshares it before the fork; when the
  program's first process dies the kernel kills the rest), IPC namespace
  (System V objects and POSIX queues die with it) and mount namespace with a
  fresh ``/proc`` and a fresh tmpfs on ``/tmp/work``, its cwd (freed with the
  namespace: no cleanup that can fail), rlimits, its uid; a seccomp filter
  refusing the kernel keyring (per-uid, it would outlive the program) and
  ``no_new_privs``, set once in the zygote and inherited.

System calls and what runs inside the zygote and the programs live in ``confine``.
"""

from __future__ import annotations

import fcntl
import logging
import math
import os
import signal
import sys
from dataclasses import dataclass, field
from typing import Any

from .confine import (CLONE_NEWNET, CLONE_NEWNS, MS_BIND, MS_NODEV, MS_NOSUID, MS_PRIVATE, MS_RDONLY, MS_REC,
                      MS_REMOUNT, PROCESS_LIMIT, WORKDIR, mount, pivot_root, unshare)

log = logging.getLogger(__name__)

# Above the fixed 1,000,000 that pools used before ranges were allocated, so an
# older copy running on the same host cannot share (or kill) our uids.
UID_BASE, UID_BLOCK, UID_BLOCKS = 1 << 20, 1024, 4096
UID_LOCK_DIR = "/run/lock/factory-code-uids"
# System directories the interpreter and its extension modules load from.
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
ETC_FILES = ("/etc/ld.so.cache", "/etc/localtime")
DEV_NODES = ("null", "zero", "full", "random", "urandom")
# Packages of ours that a program must not read (benchmark data ships inside).
OWN_PACKAGES = ("verifiers", "factory")


class SandboxUnavailable(RuntimeError):
    """Isolation cannot be set up here (not root, no namespaces, ...)."""


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


# --------------------------------------------------------------------------- uid ranges

def allocate_uid_range(size: int) -> tuple[int, int]:
    """``(first uid, lock fd)`` of a free block of ``size`` uids (held while the fd is open).

    A block is free when no live process holds its lock: a crashed pool's block
    is reused, and its leftovers are killed by the worker that takes it over.
    """
    blocks = max(1, math.ceil(size / UID_BLOCK))
    os.makedirs(UID_LOCK_DIR, mode=0o700, exist_ok=True)
    for start in range(0, UID_BLOCKS - blocks + 1, blocks):
        fd = os.open(os.path.join(UID_LOCK_DIR, f"{start}.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        return UID_BASE + start * UID_BLOCK, fd
    raise SandboxUnavailable(f"all {UID_BLOCKS} sandbox uid ranges are in use ({UID_LOCK_DIR})")


# --------------------------------------------------------------------------- cgroups

@dataclass
class SlotCgroup:
    """One cgroup per worker slot: a program's processes share one CPU, its memory and pids limit.

    ``version`` is 1 or 2; ``paths`` the directories created (removed by ``remove``).
    The worker keeps file descriptors, so it can drive the cgroup after
    ``/sys`` is gone from its view.
    """

    version: int
    paths: list[str]
    procs_fds: list[int] = field(default_factory=list)
    cpu_fd: int = -1
    memory_fds: list[int] = field(default_factory=list)
    events_fd: int = -1
    memory_mb: int = 0

    def join(self) -> None:
        """Move the calling process into the cgroup (in every hierarchy)."""
        for fd in self.procs_fds:
            os.write(fd, b"0")

    def set_memory(self, memory_mb: int) -> None:
        if memory_mb == self.memory_mb:
            return
        value = str(memory_mb << 20).encode()
        # v1's memory+swap limit must stay >= the memory limit: raise it first, lower it last.
        order = self.memory_fds if memory_mb < self.memory_mb else self.memory_fds[::-1]
        for fd in order:
            try:
                os.pwrite(fd, value, 0)
            except OSError as exc:  # memsw when swap accounting is off, ...
                log.debug("cgroup memory limit: %s", exc)
        self.memory_mb = memory_mb

    def cpu_s(self) -> float:
        data = os.pread(self.cpu_fd, 4096, 0)
        if self.version == 1:
            return int(data) / 1e9
        for line in data.decode().splitlines():
            key, _, value = line.partition(" ")
            if key == "usage_usec":
                return int(value) / 1e6
        return 0.0

    def oom_kills(self) -> int:
        for line in os.pread(self.events_fd, 4096, 0).decode().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def remove(self) -> None:
        for path in self.paths:
            try:
                os.rmdir(path)
            except OSError:
                pass


def _cgroup_mounts() -> tuple[dict[str, str], str | None]:
    """v1 mount point per controller, and the cgroup2 mount point."""
    v1: dict[str, str] = {}
    v2 = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fstype, _source, options = (right.split() + ["", "", ""])[:3]
            point = left.split()[4]
            if fstype == "cgroup2" and v2 is None:
                v2 = point
            elif fstype == "cgroup":
                for option in options.split(","):
                    v1.setdefault(option, point)
    return v1, v2


def _own_cgroups() -> dict[str, str]:
    """Controller (or "" for v2) → this process's cgroup path."""
    own = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for controller in controllers.split(",") if controllers else [""]:
                own[controller] = path
    return own


def create_slot_cgroup(name: str) -> SlotCgroup:
    """A CPU/memory/pids-limited cgroup named ``name``; raises OSError with the reason if impossible."""
    v1, v2 = _cgroup_mounts()
    own = _own_cgroups()
    if all(c in v1 for c in ("cpu", "cpuacct", "memory", "pids")):
        return _create_v1(name, v1, own)
    if v2 is not None:
        return _create_v2(name, v2, own.get("", "/"))
    raise OSError(0, "no cgroup v1 cpu/cpuacct/memory/pids hierarchies and no cgroup2 mount")


def _create_v1(name: str, mounts: dict[str, str], own: dict[str, str]) -> SlotCgroup:
    dirs: dict[str, str] = {}
    for controller in ("cpu", "cpuacct", "memory", "pids"):
        path = os.path.join(mounts[controller], own.get(controller, "/").lstrip("/"), name)
        os.makedirs(path, exist_ok=True)
        dirs[controller] = path
    group = SlotCgroup(1, sorted(set(dirs.values())))
    group.procs_fds = [os.open(os.path.join(p, "cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC) for p in group.paths]
    _write(dirs["cpu"], "cpu.cfs_period_us", "100000")
    _write(dirs["cpu"], "cpu.cfs_quota_us", "100000")  # one CPU, however many processes
    _write(dirs["pids"], "pids.max", str(PROCESS_LIMIT))
    group.cpu_fd = os.open(os.path.join(dirs["cpuacct"], "cpuacct.usage"), os.O_RDONLY | os.O_CLOEXEC)
    group.events_fd = os.open(os.path.join(dirs["memory"], "memory.oom_control"), os.O_RDONLY | os.O_CLOEXEC)
    group.memory_fds = [os.open(os.path.join(dirs["memory"], f), os.O_WRONLY | os.O_CLOEXEC)
                        for f in ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes")
                        if os.path.exists(os.path.join(dirs["memory"], f))]
    return group


def _create_v2(name: str, mount_point: str, own: str) -> SlotCgroup:
    parent = os.path.join(mount_point, own.lstrip("/"))
    try:
        _write(parent, "cgroup.subtree_control", "+cpu +memory +pids")
    except OSError:  # our own cgroup holds processes: try the root of the mount
        parent = mount_point
        _write(parent, "cgroup.subtree_control", "+cpu +memory +pids")
    path = os.path.join(parent, name)
    os.makedirs(path, exist_ok=True)
    group = SlotCgroup(2, [path])
    group.procs_fds = [os.open(os.path.join(path, "cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC)]
    _write(path, "cpu.max", "100000 100000")
    _write(path, "pids.max", str(PROCESS_LIMIT))
    try:
        _write(path, "memory.swap.max", "0")
    except OSError:
        pass
    group.cpu_fd = os.open(os.path.join(path, "cpu.stat"), os.O_RDONLY | os.O_CLOEXEC)
    group.events_fd = os.open(os.path.join(path, "memory.events"), os.O_RDONLY | os.O_CLOEXEC)
    group.memory_fds = [os.open(os.path.join(path, "memory.max"), os.O_WRONLY | os.O_CLOEXEC)]
    return group


def _write(directory: str, name: str, value: str) -> None:
    with open(os.path.join(directory, name), "w") as f:
        f.write(value)


def kill_cgroup_members(paths: list[str]) -> None:
    """SIGKILL whatever a crashed predecessor left in these cgroups (before reusing them)."""
    for path in paths:
        try:
            with open(os.path.join(path, "cgroup.procs")) as f:
                pids = [int(p) for p in f.read().split()]
        except OSError:
            continue
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


# --------------------------------------------------------------------------- the worker's view

def _needed_paths() -> list[str]:
    """Where the interpreter and its packages live; these stay readable."""
    prefixes = {os.path.realpath(p) for p in (sys.base_prefix, sys.prefix, sys.base_exec_prefix, sys.exec_prefix)}
    paths = set(prefixes)
    paths.update(os.path.realpath(p) for p in sys.path
                 if p and os.path.isdir(p) and any(_within(os.path.realpath(p), q) for q in prefixes))
    # Only the outermost of nested paths needs binding.
    return sorted(p for p in paths if not any(q != p and _within(p, q) for q in paths))


def _own_package_dirs() -> list[str]:
    """Where ``verifiers``/``factory`` are, imported or not (a non-editable install
    puts them, benchmark data included, inside site-packages)."""
    dirs = set()
    for name in OWN_PACKAGES:
        module = sys.modules.get(name)
        dirs.update(os.path.realpath(p) for p in getattr(module, "__path__", None) or [])
        dirs.update(os.path.realpath(os.path.join(p, name)) for p in sys.path
                    if p and os.path.isdir(os.path.join(p, name)))
    return sorted(dirs)


def _bind_readonly(source: str, target: str) -> None:
    mount(source, target, None, MS_BIND | MS_REC)
    mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


def _root_plan(hidden: list[str]) -> dict[str, Any]:
    """What the new root holds, with O_PATH handles on every bind source, taken
    before /tmp is covered (a venv in a checkout under /tmp, as on CI)."""
    dirs: list[str] = []
    links: dict[str, str] = {}
    for path in [*SYSTEM_DIRS, *_needed_paths()]:
        if os.path.islink(path) and path in SYSTEM_DIRS:
            links[path] = os.readlink(path)
        elif os.path.isdir(path) and not any(_within(path, d) for d in dirs):
            dirs = [d for d in dirs if not _within(d, path)] + [path]
    files = [p for p in ETC_FILES if os.path.isfile(p)] + [f"/dev/{n}" for n in DEV_NODES if os.path.exists(f"/dev/{n}")]
    masked = sorted({p for p in [*_own_package_dirs(), *hidden]
                     if os.path.isdir(p) and any(_within(p, d) for d in dirs)})
    handles = {p: os.open(p, os.O_PATH | os.O_CLOEXEC) for p in [*dirs, *files]}
    return {"dirs": dirs, "links": links, "files": files, "masked": masked, "handles": handles}


def _build_root(root: str, plan: dict[str, Any]) -> dict[str, Any]:
    """Fill the tmpfs at ``root`` with read-only binds of what Python needs."""
    def source(path: str) -> str:
        return f"/proc/self/fd/{plan['handles'][path]}"

    for path, target in plan["links"].items():
        os.symlink(target, root + path)
    for path in plan["dirs"]:
        os.makedirs(root + path, mode=0o755, exist_ok=True)
        _bind_readonly(source(path), root + path)
    for path in ("/etc", "/dev", "/proc", WORKDIR):
        os.makedirs(root + path, mode=0o755, exist_ok=True)
    os.chmod(root + "/tmp", 0o711)  # each program's tmpfs goes on /tmp/work; /tmp itself is not listable
    for path in plan["files"]:
        open(root + path, "w").close()
        if path.startswith("/dev/"):  # device nodes stay writable (/dev/null, ...)
            mount(source(path), root + path, None, MS_BIND)
        else:
            _bind_readonly(source(path), root + path)
    for link, target in (("/dev/fd", "/proc/self/fd"), ("/dev/stdin", "/proc/self/fd/0"),
                         ("/dev/stdout", "/proc/self/fd/1"), ("/dev/stderr", "/proc/self/fd/2"),
                         ("/dev/shm", "/tmp"), ("/var/tmp", "/tmp"), ("/run", "/tmp")):
        os.makedirs(os.path.dirname(root + link), mode=0o755, exist_ok=True)
        os.symlink(target, root + link)
    for path in plan["masked"]:  # our packages, or hide_paths, inside a bound prefix
        mount("tmpfs", root + path, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV, "size=4k")
    return {"bound": plan["dirs"], "masked": plan["masked"]}


def isolate_worker(hidden: list[str] = ()) -> dict[str, Any]:
    """Move this (single-threaded, root) process into its own net+mount namespaces and minimal root."""
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
    plan = _root_plan([os.path.realpath(p) for p in hidden])
    try:
        # The new root lives on a tmpfs mounted over /tmp (of this namespace only).
        mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=8m")
        root = "/tmp/root"
        os.mkdir(root, 0o755)
        mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m")
        view = _build_root(root, plan)
        pivot_root(root)
        mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    except OSError as exc:
        raise SandboxUnavailable(f"cannot build the sandbox's root filesystem ({exc})") from None
    finally:
        for fd in plan["handles"].values():
            os.close(fd)
    return view
