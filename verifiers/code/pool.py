"""``SandboxPool``: warm fork-server workers; ``run_tests`` and ``run_batch``."""

from __future__ import annotations

import json
import logging
import os
import selectors
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any, Iterable, Sequence

from . import wire
from .isolation import UID_BASE, SandboxUnavailable, allocate_uid_range
from .spec import CodeTests, CodeVerdict, extract_code
from .worker import WALL_FACTOR, WALL_SLACK_S

log = logging.getLogger(__name__)

DEFAULT_BASE_UID = UID_BASE  # the first of the ranges pools allocate
# The worker enforces each job's timeout; this margin only catches a wedged worker.
WATCHDOG_MARGIN_S = 30.0
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
_WORKER_BOOT = ("import sys; sys.path.insert(0, {root!r}); "
                "from verifiers.code.worker import main; main()")
_WORKER_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1",
               "OPENBLAS_NUM_THREADS": "1"}

Item = tuple[str | None, CodeTests] | dict[str, Any]


class _Worker:
    def __init__(self, slot: int, config: dict[str, Any]) -> None:
        self.slot = slot
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-c", _WORKER_BOOT.format(root=_PACKAGE_ROOT), json.dumps(config)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=_WORKER_ENV, close_fds=True)
        self.job: int | None = None
        self.deadline = 0.0

    @property
    def out_fd(self) -> int:
        return self.proc.stdout.fileno()

    def ready(self) -> dict[str, Any]:
        hello = wire.read_frame(self.out_fd)
        if not isinstance(hello, dict):
            raise SandboxUnavailable(f"code sandbox worker exited during start-up (code {self.proc.wait()})")
        if not hello.get("ready"):
            raise SandboxUnavailable(str(hello.get("error")))
        return hello

    def send(self, index: int, job: dict[str, Any], watchdog_s: float) -> None:
        self.job, self.deadline = index, time.monotonic() + watchdog_s
        wire.write_frame(self.proc.stdin.fileno(), {"id": index, **job})

    def close(self) -> None:
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class SandboxPool:
    """Warm sandbox workers; use as a context manager and call ``run_tests``/``run_batch``.

    workers: fork-server processes (default: usable CPU cores). Each runs one
        program at a time under its own pair of uids (``base_uid + 2*slot``, +1).
    hide_paths: directories to mask even where they lie inside what the
        sandbox sees (the interpreter's prefixes); nothing else of the host is
        visible anyway (see ``isolation``).
    unsafe_no_sandbox: run without namespaces or uid switch (rlimits, process
        groups, temp dirs and the split test/program processes remain). Only
        for machines where the sandbox cannot be set up and the code is trusted.
    base_uid: first uid of the pool's range; default: a free range is
        allocated (a lock file per range), so concurrent pools never share uids.
    pin_workers: pin worker i (and its sandboxes) to the i-th usable core.
    without_layers: isolation layers to switch off ("cgroup", "pidns",
        "program_ns", "seccomp"), only to measure what each costs; never for
        untrusted code.

    ``info`` (after ``start``) says which isolation layers are on and why any is off.
    """

    def __init__(self, workers: int | None = None, *, hide_paths: Sequence[str] = (),
                 unsafe_no_sandbox: bool = False, base_uid: int | None = None,
                 pin_workers: bool = True, without_layers: Sequence[str] = ()) -> None:
        workers = workers if workers is not None else len(os.sched_getaffinity(0))
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers: expected an integer >= 1, got {workers!r}")
        if base_uid is not None and (isinstance(base_uid, bool) or not isinstance(base_uid, int)
                                     or not 1000 <= base_uid < 2**31 - 2 * workers):
            raise ValueError(f"base_uid: expected an integer in [1000, 2**31), got {base_uid!r}")
        self.size = workers
        self.base_uid = base_uid
        unknown = set(without_layers) - {"cgroup", "pidns", "program_ns", "seccomp"}
        if unknown:
            raise ValueError(f"without_layers: expected cgroup/pidns/program_ns/seccomp, got {sorted(unknown)!r}")
        self.config = {"unsafe": bool(unsafe_no_sandbox), "base_uid": base_uid, "pin": bool(pin_workers),
                       "without": sorted(without_layers),
                       "hidden": [os.path.realpath(p) for p in hide_paths]}
        self.workers: list[_Worker] = []
        self.info: dict[str, Any] = {}
        self._uid_lock: int | None = None
        self._cgroups: set[str] = set()

    def __enter__(self) -> SandboxPool:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> SandboxPool:
        if self.workers:
            return self
        try:
            if self.base_uid is None and not self.config["unsafe"] and os.geteuid() == 0:
                self.config["base_uid"], self._uid_lock = allocate_uid_range(2 * self.size)
            self.workers = [_Worker(i, {**self.config, "slot": i}) for i in range(self.size)]
            for worker in self.workers:
                self._ready(worker)
        except BaseException:
            self.close()
            raise
        return self

    def _ready(self, worker: _Worker) -> None:
        first = not self.info
        self.info = worker.ready()
        self._cgroups.update(self.info.get("cgroup_paths", ()))
        for layer, state in self.info.get("layers", {}).items():
            if first and state.startswith("off:") and state != "off: disabled":
                log.warning("code sandbox: layer %s is %s; continuing without it", layer, state)

    def close(self) -> None:
        for worker in self.workers:
            worker.close()
        self.workers = []
        for path in sorted(self._cgroups):  # empty once the workers are gone
            try:
                os.rmdir(path)
            except OSError as exc:
                log.debug("cgroup %s not removed: %s", path, exc)
        self._cgroups.clear()
        if self._uid_lock is not None:
            os.close(self._uid_lock)  # the uid range is free again
            self._uid_lock = None
            self.config["base_uid"] = self.base_uid

    def _restart(self, worker: _Worker) -> _Worker:
        worker.proc.kill()
        worker.close()
        fresh = _Worker(worker.slot, {**self.config, "slot": worker.slot})
        self._ready(fresh)
        self.workers[worker.slot] = fresh
        return fresh

    def run_tests(self, program: str, tests: CodeTests, *, timeout_s: float = 5.0,
                  memory_mb: int = 512) -> CodeVerdict:
        return self.run_batch([(program, tests)], timeout_s=timeout_s, memory_mb=memory_mb)[0]

    def run_batch(self, items: Iterable[Item], *, timeout_s: float = 5.0,
                  memory_mb: int = 512) -> list[CodeVerdict]:
        """Verdicts in input order; items are ``(program, tests)`` pairs or dicts."""
        _check_limits(timeout_s, memory_mb)
        jobs: list[dict[str, Any] | CodeVerdict] = [_job(item, timeout_s, memory_mb) for item in items]
        results: list[CodeVerdict | None] = [j if isinstance(j, CodeVerdict) else None for j in jobs]
        queue = deque(i for i, j in enumerate(jobs) if not isinstance(j, CodeVerdict))
        if not queue:
            return [r for r in results if r is not None]
        self.start()
        with selectors.DefaultSelector() as selector:
            for worker in self.workers:
                selector.register(worker.out_fd, selectors.EVENT_READ, worker)
            busy: set[int] = set()

            def replace(worker: _Worker) -> _Worker:
                selector.unregister(worker.out_fd)
                fresh = self._restart(worker)
                selector.register(fresh.out_fd, selectors.EVENT_READ, fresh)
                return fresh

            def feed(worker: _Worker) -> None:
                if not queue:
                    return
                index = queue.popleft()
                try:
                    worker.send(index, jobs[index], _watchdog(jobs[index]))
                except OSError:  # it died while idle
                    worker = replace(worker)
                    worker.send(index, jobs[index], _watchdog(jobs[index]))
                busy.add(worker.slot)

            def fail(worker: _Worker, why: str) -> _Worker:
                if worker.slot in busy:
                    results[worker.job] = _crashed(jobs[worker.job], why)
                    busy.discard(worker.slot)
                return replace(worker)

            for worker in self.workers:
                feed(worker)
            while busy:
                for key, _ in selector.select(timeout=1.0):
                    worker = key.data
                    try:
                        reply = wire.read_frame(worker.out_fd)
                    except (wire.ProtocolError, OSError):
                        reply = None
                    if reply is None or reply.get("id") != worker.job or worker.slot not in busy:
                        worker = fail(worker, "sandbox worker died")
                    else:
                        results[worker.job] = CodeVerdict.from_dict(reply["verdict"])
                        busy.discard(worker.slot)
                    feed(worker)
                now = time.monotonic()
                for worker in list(self.workers):
                    if worker.slot in busy and now > worker.deadline:
                        log.warning("code sandbox worker %d wedged; restarting it", worker.slot)
                        feed(fail(worker, "sandbox worker wedged"))
        return [r for r in results if r is not None]


def _check_limits(timeout_s: float, memory_mb: int) -> None:
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not 0 < timeout_s <= 3600:
        raise ValueError(f"timeout_s: expected seconds in (0, 3600], got {timeout_s!r}")
    if isinstance(memory_mb, bool) or not isinstance(memory_mb, int) or not 64 <= memory_mb <= 1 << 20:
        raise ValueError(f"memory_mb: expected an integer >= 64, got {memory_mb!r}")


def _watchdog(job: dict[str, Any]) -> float:
    cases = len(job["tests"].get("cases", ())) or 1
    # A job's own limit is CPU time, with the wall clock at WALL_FACTOR times it.
    return (job["timeout_s"] * WALL_FACTOR + WALL_SLACK_S) * cases + WATCHDOG_MARGIN_S


def _crashed(job: dict[str, Any], why: str) -> CodeVerdict:
    return CodeVerdict(False, "error", 0, CodeTests.from_dict(job["tests"]).total_cases, why)


def _job(item: Item, timeout_s: float, memory_mb: int) -> dict[str, Any] | CodeVerdict:
    """A worker job, or the verdict right away when there is no code to run."""
    if isinstance(item, dict):
        tests = item["tests"] if "tests" in item else item
        tests = tests if isinstance(tests, CodeTests) else CodeTests.from_dict(tests, entry_point=item.get("entry_point"))
        program = item.get("program", item.get("code", item.get("completion")))
        if program is None and "response" in item:
            program = extract_code(item["response"])
        timeout_s = float(item.get("timeout_s", timeout_s))
        memory_mb = int(item.get("memory_mb", memory_mb))
        _check_limits(timeout_s, memory_mb)
    else:
        program, tests = item
        tests = tests if isinstance(tests, CodeTests) else CodeTests.from_dict(tests)
    tests.validate()
    if not isinstance(program, str) or not program.strip():
        return CodeVerdict(False, "error", 0, tests.total_cases, "no code found")
    return {"program": program, "tests": tests.to_dict(), "timeout_s": timeout_s, "memory_mb": memory_mb}


def run_tests(program: str, tests: CodeTests, *, timeout_s: float = 5.0, memory_mb: int = 512,
              unsafe_no_sandbox: bool = False, pool: SandboxPool | None = None) -> CodeVerdict:
    """Run one program against its tests in a fresh sandbox (pass ``pool`` to reuse warm workers)."""
    if pool is not None:
        return pool.run_tests(program, tests, timeout_s=timeout_s, memory_mb=memory_mb)
    with SandboxPool(1, unsafe_no_sandbox=unsafe_no_sandbox) as fresh:
        return fresh.run_tests(program, tests, timeout_s=timeout_s, memory_mb=memory_mb)


def run_batch(items: Iterable[Item], workers: int | None = None, *, timeout_s: float = 5.0,
              memory_mb: int = 512, unsafe_no_sandbox: bool = False, hide_paths: Sequence[str] = (),
              pool: SandboxPool | None = None) -> list[CodeVerdict]:
    """Verdicts for ``(program, tests)`` pairs or dicts (``program``/``code``/``completion``
    or ``response`` for ``extract_code``, plus ``tests`` or the test fields themselves,
    optional ``entry_point``, ``timeout_s``, ``memory_mb``), in input order."""
    items = list(items)
    if pool is not None:
        return pool.run_batch(items, timeout_s=timeout_s, memory_mb=memory_mb)
    size = min(workers or len(os.sched_getaffinity(0)), max(1, len(items)))
    with SandboxPool(size, hide_paths=hide_paths, unsafe_no_sandbox=unsafe_no_sandbox) as fresh:
        return fresh.run_batch(items, timeout_s=timeout_s, memory_mb=memory_mb)
