"""The streaming filter engine: a run's steps over Arrow batches, one worker process per core.

Memory does not grow with the text of a run. The engine keeps, per sample, only a
compact index (id, prompt id, task type, token count, text length: ~100 bytes) and one
status byte per step; text is read from the Parquet shards one row group batch at a time,
only the columns a step declares, only for the samples the step has still to decide.
Whole-run steps (dedup) stream their compact state (exact keys, MinHash signatures) from
the workers and keep it within a share of `memory_gb`, spilling the rest to Parquet in the
run's `.spill/` folder (logged, and counted in the report); `MemoryPlan` says what the
setting bounds. Verdicts are written one shard per chunk as chunks complete, in order,
so a killed run redoes at most the chunks in flight.

Work goes through one `Executor` (the local process pool, or Ray): the same steps, the
same chunks, the same verdict files, whatever runs them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from factory.progress import RateProgress
from factory.steps import FilterStep, StateBudget, StepVerdict
from factory.store import RunStore, utc_now

log = logging.getLogger(__name__)

CHUNK = 2048  # samples per verdict shard: a killed filter redoes at most the chunks in flight
MISSING, PASS, FAIL, UNSURE = 0, 1, 2, 3  # a step's status of one sample
INDEX_COLUMNS = ["sample_id", "prompt_id", "task_type", "completion_tokens"]


# ---------------------------------------------------------------- executors
class Executor(Protocol):
    """Runs `fn(*args, payload)` for each payload, results in input order, a bounded number in flight."""

    workers: int

    def map(self, fn: Callable[..., Any], args: tuple[Any, ...], items: Iterable[tuple[Any, Any]]
            ) -> Iterator[tuple[Any, Any]]: ...

    def close(self) -> None: ...


class LocalExecutor:
    """One process per worker (inline when there is one): the runner every step and benchmark uses."""

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers or default_workers()
        self._pool: ProcessPoolExecutor | None = None

    def map(self, fn: Callable[..., Any], args: tuple[Any, ...], items: Iterable[tuple[Any, Any]]
            ) -> Iterator[tuple[Any, Any]]:
        """(meta, payload) in → (meta, fn(*args, payload)) out, in order; meta stays in this process."""
        if self.workers == 1:
            for meta, payload in items:
                yield meta, fn(*args, payload)
            return
        if self._pool is None:
            # spawn: workers start clean (not a copy of this process's index and threads), as its children,
            # so that they die with it: a SIGKILLed filter leaves no worker behind.
            self._pool = ProcessPoolExecutor(self.workers, mp_context=get_context("spawn"),
                                             initializer=_die_with_parent, initargs=(os.getpid(),))
        pending: list[tuple[Any, Future]] = []
        for meta, payload in items:
            pending.append((meta, self._pool.submit(fn, *args, payload)))
            if len(pending) >= 2 * self.workers:
                meta0, future = pending.pop(0)
                yield meta0, future.result()
        for meta, future in pending:
            yield meta, future.result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


# ---------------------------------------------------------------- worker side
def _die_with_parent(parent: int) -> None:
    """Exit when the engine process dies, even by SIGKILL (Linux: the kernel's parent-death signal)."""
    import signal

    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the pool's own shutdown is all there is
    if os.getppid() != parent:  # it died before the signal was armed
        os._exit(1)


@functools.lru_cache(maxsize=16)
def _step(cls: type[FilterStep], params_json: str) -> FilterStep:
    # Built once per worker process (the decontam index takes seconds), not once per chunk.
    return cls(cls.Params.model_validate(json.loads(params_json)))


def filter_task(cls: type[FilterStep], params_json: str, table: pa.Table) -> list[tuple[Any, ...]]:
    """Verdicts of one chunk as plain tuples (what crosses the process boundary)."""
    return [(v.passed, v.code, v.reason, v.score, v.detail) for v in _step(cls, params_json).filter(table)]


def sketch_task(cls: type[FilterStep], params_json: str, table: pa.Table) -> Any:
    return _step(cls, params_json).sketch(table)


def step_args(step: FilterStep) -> tuple[type[FilterStep], str]:
    return type(step), json.dumps(step.params.model_dump(mode="json"), sort_keys=True)


# ---------------------------------------------------------------- the memory budget
MIN_CHUNK = 64            # rows: below this the per-chunk overhead (a verdict shard, a task) dominates
WORKER_RSS = 200 * 2**20  # a worker process before its first chunk: Python, pyarrow, numpy, a step's verifier
INDEX_ROW_BYTES = 160     # the run index and one status byte per step, per sample
CHUNK_COPIES = 4          # a chunk in flight is held ~4 times: Arrow here, pickled, unpickled, Python strings


@dataclass(frozen=True)
class MemoryPlan:
    """How `memory_gb` is shared out on the local executor, so that the process tree stays under it.

    Covered: this process as measured when the plan is made, the run index, a whole-run step's
    state (a quarter of the budget; dedup spills the rest to Parquet), the worker processes
    (fewer workers when they would not fit) and the chunks in flight (their rows set from the
    measured bytes per row of the columns each step reads, times the queue depth).
    Not covered: a single sample bigger than the chunk budget (it is still read whole), a step
    that holds a model (the judge: its server or weights are its own), a step's own child
    processes (the math and code verifiers' sandboxes), and on Ray the cluster's own processes
    and object store (Ray's settings bound those; there memory_gb sizes chunks and dedup state,
    and the driver holds each dedup candidate's id and rank).
    """

    budget: int
    workers: int
    state_bytes: int
    in_flight_bytes: int

    def chunk_rows(self, bytes_per_row: float, work_factor: float = 8.0) -> int:
        """Rows per chunk: the chunks queued (each held ~CHUNK_COPIES times) and those being worked on
        (each taking `work_factor` times its bytes) fit in the in-flight budget."""
        depth = 2 * self.workers + 2 if self.workers > 1 else 2   # queued per worker + one being assembled
        per_row = max(bytes_per_row, 1.0) * (CHUNK_COPIES * depth + work_factor * self.workers)
        return int(max(MIN_CHUNK, min(CHUNK, self.in_flight_bytes / per_row)))


def plan_memory(memory_gb: float, workers: int, samples: int, own_rss: int, *, fixed_workers: bool = False
                ) -> MemoryPlan:
    """Share `memory_gb` between the index, whole-run state, worker processes and chunks in flight.

    `fixed_workers`: the worker count is not ours to change (a Ray cluster); only chunks are sized."""
    budget = int(memory_gb * 2**30)
    state = budget // 4
    room = budget - own_rss - samples * INDEX_ROW_BYTES - state
    fit = max(1, int(room / 2 // WORKER_RSS))     # workers take at most half of what is left
    use = workers if workers <= fit or fixed_workers else max(1, fit)
    if use < workers:
        log.warning("memory_gb %.2f: %d worker processes instead of %d, so that their chunks fit", memory_gb, use, workers)
    spare = room - use * WORKER_RSS   # one worker runs inline, in this process, and grows it as much
    return MemoryPlan(budget, use, state, max(spare, budget // 16))


def column_bytes(store: RunStore, columns: Sequence[str], sample: int = 8) -> float:
    """Uncompressed bytes per row of `columns`, from the Parquet metadata of the run's first shards."""
    rows, size = 0, 0
    for shard in store.sample_shards()[:sample]:
        meta = store.parquet_file(shard).metadata
        rows += meta.num_rows
        for g in range(meta.num_row_groups):
            group = meta.row_group(g)
            for c in range(group.num_columns):
                if group.column(c).path_in_schema.split(".")[0] in columns:
                    size += group.column(c).total_uncompressed_size
    return size / rows if rows else 1.0


def process_rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


# ---------------------------------------------------------------- the run's compact index
@dataclass
class RunIndex:
    """Per-sample facts every step needs, in shard order; no text."""

    ids: pa.Array
    prompt_ids: pa.Array
    task_types: pa.Array
    tokens: np.ndarray
    text_len: np.ndarray
    groups: list[tuple[str, int, int]]  # (shard path, row group, rows), in order

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def build(cls, store: RunStore, batch_rows: int) -> RunIndex:
        ids, prompts, tasks, tokens, lengths = [], [], [], [], []
        groups: list[tuple[str, int, int]] = []
        for shard in store.sample_shards():
            parquet = store.parquet_file(shard)
            for g in range(parquet.num_row_groups):
                groups.append((str(shard), g, parquet.metadata.row_group(g).num_rows))
            for batch in parquet.iter_batches(batch_size=batch_rows, columns=[*INDEX_COLUMNS, "text"]):
                ids.append(batch.column("sample_id"))
                prompts.append(batch.column("prompt_id"))
                tasks.append(batch.column("task_type"))
                tokens.append(pc.fill_null(batch.column("completion_tokens"), 0).to_numpy())
                lengths.append(pc.utf8_length(pc.fill_null(batch.column("text"), "")).to_numpy())
        concat = (lambda parts: pa.concat_arrays(parts) if parts else pa.array([], pa.string()))
        return cls(concat(ids), concat(prompts), concat(tasks).dictionary_encode(),
                   np.concatenate(tokens) if tokens else np.zeros(0, np.int64),
                   np.concatenate(lengths).astype(np.int64) if lengths else np.zeros(0, np.int64), groups)

    def positions(self, sample_ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Index of each id in this run (-1 where it is not one of the run's samples)."""
        found = pc.index_in(sample_ids, value_set=self.ids)
        return pc.fill_null(found, -1).to_numpy(zero_copy_only=False)

    def fingerprint(self, seed: str, mask: np.ndarray) -> str:
        """Hash of `seed` and the sorted ids under `mask`: a whole-run step's input set."""
        chosen = self.ids.filter(pa.array(mask))
        ordered = chosen.take(pc.sort_indices(chosen))
        digest = hashlib.sha256(seed.encode())
        for sid in ordered.to_pylist():
            digest.update(sid.encode())
        return digest.hexdigest()[:12]

    def batches(self, store: RunStore, columns: Sequence[str], mask: np.ndarray, batch_rows: int
                ) -> Iterator[tuple[np.ndarray, pa.Table]]:
        """(positions, rows) of the samples under `mask`, `columns` only; row groups with none are not read."""
        offset = 0
        opened: tuple[str, pq.ParquetFile] | None = None  # the shard being read (row groups come in shard order)
        for path, group, rows in self.groups:
            wanted = mask[offset:offset + rows]
            if wanted.any():
                if opened is None or opened[0] != path:
                    opened = (path, store.parquet_file(path))
                parquet = opened[1]
                start = offset
                for batch in parquet.iter_batches(batch_size=batch_rows, row_groups=[group], columns=list(columns)):
                    keep = mask[start:start + batch.num_rows]
                    if keep.any():
                        yield np.flatnonzero(keep) + start, pa.Table.from_batches([batch]).filter(pa.array(keep))
                    start += batch.num_rows
            offset += rows


def rechunk(parts: Iterable[tuple[np.ndarray, pa.Table]], rows: int) -> Iterator[tuple[np.ndarray, pa.Table]]:
    """Regroup filtered batches into chunks of exactly `rows` (the last one shorter)."""
    held: list[tuple[np.ndarray, pa.Table]] = []
    count = 0
    for positions, table in parts:
        held.append((positions, table))
        count += len(positions)
        while count >= rows:
            merged_pos = np.concatenate([p for p, _ in held])
            merged = pa.concat_tables([t for _, t in held])
            yield merged_pos[:rows], merged.slice(0, rows)
            rest = merged_pos[rows:]
            held = [(rest, merged.slice(rows))] if len(rest) else []
            count = len(rest)
    if count:
        yield np.concatenate([p for p, _ in held]), pa.concat_tables([t for _, t in held])


# ---------------------------------------------------------------- which samples a step sees
def candidate_mask(before: Sequence[FilterStep], status: dict[str, np.ndarray], step: FilterStep | None, n: int
                   ) -> np.ndarray:
    """Samples that passed every earlier step.

    An earlier `verifies` step's None (could not verify) goes to a later `resolves_unverified`
    step (the judge), and counts as passed for the steps after it when that step passed it.
    A sample a resolver was not asked about (verified by a rule) is not held back by it.
    With `only_unverified()` the resolver takes only what a verifier left unverified.
    `step=None` asks which samples are accepted after all of `before`.
    """
    ok = np.ones(n, bool)
    unverified = np.zeros(n, bool)
    resolved = np.zeros(n, bool)
    verified = np.zeros(n, bool)  # passed by a `verifies` step: an only_unverified resolver was not asked
    for prev in before:
        if prev.resolves_unverified:
            resolved |= status[prev.name] == PASS
    resolver = step is not None and step.resolves_unverified
    for prev in before:
        st = status[prev.name]
        if prev.resolves_unverified:
            not_asked = (st == MISSING) & verified if prev.only_unverified() else np.zeros(n, bool)
            ok &= (st == PASS) | not_asked
            continue
        ok &= (st == PASS) | (st == UNSURE)
        if prev.verifies:
            verified |= st == PASS
        if prev.verifies and resolver:
            unverified |= st == UNSURE
        elif prev.verifies:
            ok &= (st != UNSURE) | resolved
        else:
            ok &= st != UNSURE
    if resolver and step.only_unverified() and any(p.verifies for p in before):
        ok &= unverified
    return ok


# ---------------------------------------------------------------- one step
@dataclass
class StepCount:
    step: str
    candidates: int = 0
    passed: int = 0
    rejected: int = 0
    unverifiable: int = 0
    computed: int = 0
    reused: int = 0
    seconds: float = 0.0
    spilled_bytes: int = 0  # whole-run state written to disk because it outgrew its memory budget


@dataclass
class EngineRun:
    """One `factory filter` run: the store, its index, every step's status, the executor."""

    store: RunStore
    index: RunIndex
    executor: Executor
    batch_rows: int = 512
    chunk_rows: int = CHUNK
    plan: MemoryPlan | None = None  # per-step chunk rows from the bytes of the columns it reads
    progress: bool = True
    state_bytes: int | None = None  # a whole-run step's state budget (the rest spills); None = unbounded
    status: dict[str, np.ndarray] = field(default_factory=dict)
    spilled: dict[str, int] = field(default_factory=dict)
    reasons: Counter = field(default_factory=Counter)

    def apply(self, step: FilterStep, candidates: np.ndarray, *, recompute: bool, compute: bool) -> StepCount:
        started = time.perf_counter()
        n = len(self.index)
        chash = step.config_hash()
        if step.whole_run:
            chash = self.index.fingerprint(chash, candidates)
        status = np.zeros(n, np.int8)
        if not recompute:
            self._load(step.name, chash, status)
        todo = candidates & (status == MISSING)
        count = StepCount(step.name, candidates=int(candidates.sum()), reused=int(candidates.sum() - todo.sum()))
        if todo.any() and compute:
            log.info("filter %s: %d to compute, %d already decided", step.name, int(todo.sum()), count.reused)
            with RateProgress(step.name, total=count.candidates, done=count.reused, enabled=self.progress) as bar:
                if step.whole_run:
                    self._whole_run(step, candidates, todo, chash, status, bar)
                else:
                    self._per_sample(step, todo, chash, status, bar)
            count.computed = int(todo.sum())
        elif todo.any():
            log.info("filter %s: skipped (--only); %d candidates undecided", step.name, int(todo.sum()))
        self.status[step.name] = status
        decided = status[candidates]
        count.passed = int((decided == PASS).sum())
        count.rejected = int((decided == FAIL).sum())
        count.unverifiable = int((decided == UNSURE).sum())
        count.seconds = round(time.perf_counter() - started, 3)
        count.spilled_bytes = self.spilled.get(step.name, 0)
        return count

    def _load(self, step: str, chash: str, status: np.ndarray) -> None:
        """The latest stored verdict of each sample, where it was made with these settings."""
        shards = self.store.verdict_shards(step)
        if not shards:
            return
        table = pa.concat_tables([self.store.read_table(s, ["sample_id", "passed", "code", "config_hash"]) for s in shards])
        table = table.append_column("row", pa.array(np.arange(table.num_rows)))
        latest = table.group_by("sample_id", use_threads=False).aggregate([("row", "max")]).column("row_max")
        table = table.take(latest)
        table = table.filter(pc.equal(table.column("config_hash"), chash))
        positions = self.index.positions(table.column("sample_id"))
        passed = table.column("passed")
        codes = np.where(pc.is_null(passed).to_numpy(zero_copy_only=False), UNSURE,
                         np.where(pc.fill_null(passed, False).to_numpy(zero_copy_only=False), PASS, FAIL))
        known = positions >= 0
        status[positions[known]] = codes[known]
        rejected = table.filter(pc.and_(pc.invert(pc.fill_null(passed, False)), pc.is_valid(table.column("code"))))
        for code, number in Counter(rejected.column("code").to_pylist()).items():
            self.reasons[(step, code)] += number

    def _per_sample(self, step: FilterStep, todo: np.ndarray, chash: str, status: np.ndarray, bar: RateProgress) -> None:
        if not step.in_process and hasattr(self.executor, "filter_dataset"):
            # A cluster executor reads the shards on its workers; verdicts come back in chunks.
            shards = [str(p) for p in self.store.sample_shards()]
            for table in self.executor.filter_dataset(step, shards, self.index.ids.filter(pa.array(todo)), self.rows_for(step)):
                if table.num_rows:
                    verdicts = (StepVerdict(p, c, r, s, json.loads(d) if d else None) for p, c, r, s, d in zip(
                        *(table.column(k).to_pylist() for k in ("passed", "code", "reason", "score", "detail"))))
                    self._write(step.name, self.index.positions(table.column("sample_id")),
                                table.column("sample_id").to_pylist(), verdicts, chash, status)
                    bar.update(table.num_rows)
            return
        columns = list(dict.fromkeys(["sample_id", *step.input_columns()]))
        rows = self.rows_for(step)
        chunks = rechunk(self.index.batches(self.store, columns, todo, min(self.batch_rows, rows)), rows)
        with_ids = (((positions, table.column("sample_id")), table) for positions, table in chunks)
        args = step_args(step)
        if step.in_process:
            results: Iterable[tuple[Any, Any]] = ((meta, filter_task(*args, table)) for meta, table in with_ids)
        else:
            results = self.executor.map(filter_task, args, with_ids)
        for (positions, ids), verdicts in results:
            self._write(step.name, positions, ids.to_pylist(), (StepVerdict(*v) for v in verdicts), chash, status)
            bar.update(len(positions))

    def _whole_run(self, step: FilterStep, candidates: np.ndarray, todo: np.ndarray, chash: str, status: np.ndarray,
                   bar: RateProgress) -> None:
        positions = np.flatnonzero(candidates)
        if step.lsh_grouping and hasattr(self.executor, "group_duplicates"):
            ids = self.index.ids.take(pa.array(positions))
            decided = self.executor.group_duplicates(step, [str(p) for p in self.store.sample_shards()], ids,
                                                     self.index.text_len[positions])
            self._write_decided(step, positions, ids, decided, todo, chash, status, bar)
            return
        columns = list(dict.fromkeys(["sample_id", *step.input_columns()]))
        args = step_args(step)
        budget = StateBudget(self.state_bytes, self.spill_dir(step))
        # Sketches stream from the workers into the step, which keeps or spills them: never a list of them here.
        reference = self.executor.map(sketch_task, args, ((ids, t) for ids, t in step.reference_batches()))
        rows = self.rows_for(step)
        parts = self.index.batches(self.store, columns, candidates, min(self.batch_rows, rows))
        sketches = (s for _, s in self.executor.map(sketch_task, args, ((None, t) for _, t in rechunk(parts, rows))))
        ids = self.index.ids.take(pa.array(positions))
        try:
            decided = step.decide(ids, self.index.text_len[positions], sketches, reference, budget)
            self._write_decided(step, positions, ids, decided, todo, chash, status, bar)
        finally:
            shutil.rmtree(budget.spill_dir, ignore_errors=True)
        self.spilled[step.name] = budget.spilled_bytes
        if budget.spilled_bytes:
            log.info("filter %s: whole-run state of %d samples over its %.0f MB budget: spilled %.1f MB to %s",
                     step.name, len(positions), (self.state_bytes or 0) / 1e6, budget.spilled_bytes / 1e6,
                     budget.spill_dir)
        else:
            log.info("filter %s: whole-run state of %d samples held in memory (budget %s)", step.name, len(positions),
                     f"{self.state_bytes / 1e6:.0f} MB" if self.state_bytes else "unbounded")

    def rows_for(self, step: FilterStep) -> int:
        """Rows per chunk of this step: what its columns allow within the plan (the run's chunk without one)."""
        if self.plan is None:
            return self.chunk_rows
        columns = list(dict.fromkeys(["sample_id", *step.input_columns()]))
        return self.plan.chunk_rows(column_bytes(self.store, columns), step.work_factor)

    def spill_dir(self, step: FilterStep) -> Path:
        """A scratch folder in the run for a whole-run step's spilled state (left over by a killed run: cleared).

        A run on a remote filesystem spills to local temporary storage: spilled state is read back at random."""
        root = self.store.location
        base = Path(tempfile.gettempdir()) / f"factory-spill-{self.store.name}" if "://" in root else Path(root) / ".spill"
        directory = base / step.name
        shutil.rmtree(directory, ignore_errors=True)
        return directory

    def _write_decided(self, step: FilterStep, positions: np.ndarray, ids: pa.Array, decided: Iterable[StepVerdict],
                       todo: np.ndarray, chash: str, status: np.ndarray, bar: RateProgress) -> None:
        """A whole-run step's verdicts, in chunks, written only for samples not already decided."""
        verdicts = iter(decided)
        need = todo[positions]
        for start in range(0, len(positions), self.chunk_rows):
            batch = [next(verdicts) for _ in range(min(self.chunk_rows, len(positions) - start))]
            keep = need[start:start + len(batch)]
            if keep.any():
                chosen = np.flatnonzero(keep)
                self._write(step.name, positions[start:start + len(batch)][chosen],
                            ids.take(pa.array(chosen + start)).to_pylist(), (batch[i] for i in chosen), chash, status)
            bar.update(len(batch))

    def _write(self, step: str, positions: np.ndarray, ids: list[str], verdicts: Iterable[StepVerdict], chash: str,
               status: np.ndarray) -> None:
        now = utc_now()
        rows = []
        for position, sid, v in zip(positions, ids, verdicts):
            rows.append(verdict_row(sid, step, v, chash, now))
            status[position] = PASS if v.passed is True else FAIL if v.passed is False else UNSURE
            if v.passed is not True and v.code:
                self.reasons[(step, v.code)] += 1
        self.store.append_verdicts(step, rows)


def verdict_row(sample_id: str, step: str, verdict: StepVerdict, chash: str, now: Any = None) -> dict[str, Any]:
    return {
        "sample_id": sample_id, "step": step, "passed": verdict.passed, "code": verdict.code, "reason": verdict.reason,
        "score": verdict.score, "detail": json.dumps(verdict.detail, default=str) if verdict.detail else None,
        "config_hash": chash, "created_at": now or utc_now(),
    }
