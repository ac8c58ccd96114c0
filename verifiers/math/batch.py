"""``verify_batch``: many verifications on worker processes with a hard per-item timeout.

The caller's thread only hands out work and reads results through pipes
(``multiprocessing.connection.wait``), so the timeout works from any thread and
needs no signals. Each worker reports every item as it finishes; the item it is
working on started when the previous result (or the chunk) arrived, which
gives a per-item deadline without extra messages. A worker past its deadline is
killed: its item becomes ``timeout``, the rest of its chunk goes back to the
queue, and a fresh worker takes its place, so one pathological input costs
``timeout_s`` on one core and never stalls the batch.

Work is sent only to idle workers, so the parent never blocks writing to a
busy pipe. Results come back in input order.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import os
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait

from verifiers.math.check import POLICIES, verify
from verifiers.math.verdict import MathVerdict

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 5.0
DEFAULT_CHUNK_SIZE = 64
# How long a new worker may take to start (import Python and this package).
WORKER_START_TIMEOUT_S = 120.0

# Workers that die before saying "ready" more often than this abort the batch.
MAX_FAILED_STARTS = 5

Check = Callable[[str, str], MathVerdict]
Task = tuple[int, str, str]


def verify_batch(
    pairs: Iterable[tuple[str, str]],
    workers: int | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    check: Check = verify,
    policy: str = "strict",
) -> list[MathVerdict]:
    """Verify ``(gold, response)`` pairs on ``workers`` processes, in input order.

    workers:    processes to use; None = the CPUs this process may run on.
    timeout_s:  wall-clock limit per item; a slower item gets
                ``MathVerdict(None, None, "timeout")`` and its worker is replaced.
    chunk_size: items sent to a worker at once (fewer messages, same timeouts).
    check:      the per-item function, ``verify`` by default; must be picklable
                (a module-level function) because workers import it by name.
    policy:     ``strict`` or ``lenient``, passed to ``verify`` (see :mod:`verifiers.math.check`).
    """
    items = [(str(gold), str(response)) for gold, response in pairs]
    workers = _resolve_workers(workers)
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not timeout_s > 0:
        raise ValueError(f"timeout_s: expected a number > 0, got {timeout_s!r}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size: expected an integer >= 1, got {chunk_size!r}")
    if policy not in POLICIES:
        raise ValueError(f"policy: expected one of {', '.join(POLICIES)}, got {policy!r}")
    if check is verify and policy != "strict":
        check = functools.partial(verify, policy=policy)
    if not items:
        return []
    pool = _Pool(min(workers, len(items)), float(timeout_s), chunk_size, check)
    return pool.run(items)


def _resolve_workers(workers: int | None) -> int:
    if workers is None:
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # not on Linux
            return max(1, os.cpu_count() or 1)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers: expected an integer >= 1 or None, got {workers!r}")
    return workers


def _worker_main(connection: Connection, check: Check) -> None:
    """Worker loop: receive chunks, send ``(index, correct, extracted, reason)`` per item."""
    connection.send("ready")
    while True:
        try:
            chunk = connection.recv()
        except EOFError:
            return
        if chunk is None:
            return
        for index, gold, response in chunk:
            try:
                verdict = check(gold, response)
                message = (index, verdict.correct, verdict.extracted, verdict.reason, verdict.rule)
            except Exception as error:  # a bug must not take the batch down
                message = (index, None, None, f"worker_error: {type(error).__name__}: {error}", None)
            connection.send(message)


@dataclass
class _Worker:
    process: multiprocessing.process.BaseProcess
    connection: Connection
    started_at: float
    ready: bool = False
    # Items sent and not yet answered, oldest first, with the time they were sent.
    outstanding: deque[tuple[Task, float]] = field(default_factory=deque)
    last_result_at: float = 0.0

    def current_deadline(self, timeout_s: float) -> float:
        if not self.ready:
            return self.started_at + WORKER_START_TIMEOUT_S
        if not self.outstanding:
            return float("inf")
        _, sent_at = self.outstanding[0]
        return max(sent_at, self.last_result_at) + timeout_s


class _Pool:
    """The state of one ``verify_batch`` call; lives only for that call."""

    def __init__(self, size: int, timeout_s: float, chunk_size: int, check: Check) -> None:
        self.size = size
        self.timeout_s = timeout_s
        self.chunk_size = chunk_size
        self.check = check
        methods = multiprocessing.get_all_start_methods()
        # Never fork: the caller may have threads, and forking those is unsafe.
        self.context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
        self.workers: list[_Worker] = []
        self.results: list[MathVerdict | None] = []
        self.pending: deque[Task] = deque()
        self.failed_starts = 0

    def run(self, items: list[tuple[str, str]]) -> list[MathVerdict]:
        self.results = [None] * len(items)
        self.pending = deque((index, gold, response) for index, (gold, response) in enumerate(items))
        remaining = len(items)
        try:
            self.workers = [self._start_worker() for _ in range(self.size)]
            while remaining:
                self._dispatch()
                remaining -= self._collect()
                remaining -= self._expire()
        finally:
            self._shutdown()
        return [verdict or MathVerdict(None, None, "worker_error: lost") for verdict in self.results]

    def _start_worker(self) -> _Worker:
        parent_end, child_end = self.context.Pipe(duplex=True)
        process = self.context.Process(target=_worker_main, args=(child_end, self.check), daemon=True)
        process.start()
        child_end.close()
        return _Worker(process, parent_end, time.monotonic())

    def _dispatch(self) -> None:
        pending = self.pending
        idle = [worker for worker in self.workers if worker.ready and not worker.outstanding]
        for worker in idle:
            if not pending:
                return
            # Smaller chunks near the end keep every worker busy until the last item.
            size = max(1, min(self.chunk_size, len(pending) // len(self.workers) or 1))
            chunk = [pending.popleft() for _ in range(min(size, len(pending)))]
            now = time.monotonic()
            worker.outstanding.extend((task, now) for task in chunk)
            worker.connection.send(chunk)

    def _collect(self) -> int:
        """Read whatever results are ready (waiting until the nearest deadline); return how many."""
        now = time.monotonic()
        nearest = min(worker.current_deadline(self.timeout_s) for worker in self.workers)
        ready = wait([worker.connection for worker in self.workers], timeout=max(0.0, nearest - now))
        done = 0
        for connection in ready:
            worker = next(w for w in self.workers if w.connection is connection)
            try:
                while connection.poll():
                    message = connection.recv()
                    done += self._record(worker, message)
            except (EOFError, OSError):
                done += self._replace(worker, "worker_error: worker died")
        return done

    def _record(self, worker: _Worker, message: object) -> int:
        worker.last_result_at = time.monotonic()
        if message == "ready":
            worker.ready = True
            return 0
        index, correct, extracted, reason, rule = message  # type: ignore[misc]
        worker.outstanding.popleft()
        self.results[index] = MathVerdict(correct, extracted, reason, rule)
        return 1

    def _expire(self) -> int:
        """Kill workers past their deadline; their current item times out, the rest is re-queued."""
        now = time.monotonic()
        done = 0
        for worker in list(self.workers):
            if now < worker.current_deadline(self.timeout_s):
                continue
            reason = "timeout" if worker.ready else "worker_error: worker did not start"
            done += self._replace(worker, reason)
        return done

    def _replace(self, worker: _Worker, reason: str) -> int:
        """Stop ``worker``, fail its current item with ``reason``, start a fresh worker."""
        if not worker.ready:
            self.failed_starts += 1
            if self.failed_starts > MAX_FAILED_STARTS:
                raise RuntimeError(f"math verify workers keep failing to start ({reason})")
        worker.process.kill()
        worker.process.join()
        worker.connection.close()
        self.workers[self.workers.index(worker)] = self._start_worker()
        if not worker.outstanding:
            return 0
        (index, _, _), _ = worker.outstanding.popleft()
        detail = f"timeout: over {self.timeout_s:g} s" if reason == "timeout" else reason
        self.results[index] = MathVerdict(None, None, detail)
        self.pending.extendleft(task for task, _ in reversed(worker.outstanding))
        logger.warning("math verify item %d: %s; worker replaced", index, detail)
        return 1

    def _shutdown(self) -> None:
        for worker in self.workers:
            try:
                worker.connection.send(None)
            except (OSError, ValueError):
                pass
        deadline = time.monotonic() + 2.0
        for worker in self.workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.connection.close()
