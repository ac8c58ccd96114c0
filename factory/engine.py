"""The streaming filter engine: a run's steps over Arrow batches, one worker process per core.

Memory does not grow with the text of a run. The engine keeps, per sample, only a
compact index (id, prompt id, task type, token count, text length: ~100 bytes) and one
status byte per step; text is read from the Parquet shards one row group batch at a time,
only the columns a step declares, only for the samples the step has still to decide.
Whole-run steps (dedup) keep their compact state (exact keys, MinHash signatures) and
log its size. Verdicts are written one shard per chunk as chunks complete, in order,
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
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from factory.progress import RateProgress
from factory.steps import FilterStep, StepVerdict
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


@dataclass
class EngineRun:
    """One `factory filter` run: the store, its index, every step's status, the executor."""

    store: RunStore
    index: RunIndex
    executor: Executor
    batch_rows: int = 512
    chunk_rows: int = CHUNK
    progress: bool = True
    status: dict[str, np.ndarray] = field(default_factory=dict)
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
            for table in self.executor.filter_dataset(step, shards, self.index.ids.filter(pa.array(todo)), self.chunk_rows):
                if table.num_rows:
                    verdicts = (StepVerdict(p, c, r, s, json.loads(d) if d else None) for p, c, r, s, d in zip(
                        *(table.column(k).to_pylist() for k in ("passed", "code", "reason", "score", "detail"))))
                    self._write(step.name, self.index.positions(table.column("sample_id")),
                                table.column("sample_id").to_pylist(), verdicts, chash, status)
                    bar.update(table.num_rows)
            return
        columns = list(dict.fromkeys(["sample_id", *step.input_columns()]))
        chunks = rechunk(self.index.batches(self.store, columns, todo, self.batch_rows), self.chunk_rows)
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
        if step.lsh_grouping and not step.has_reference() and hasattr(self.executor, "group_duplicates"):
            ids = self.index.ids.take(pa.array(positions))
            decided = self.executor.group_duplicates(step, [str(p) for p in self.store.sample_shards()], ids,
                                                     self.index.text_len[positions])
            self._write_decided(step, positions, ids.to_pylist(), decided, todo, chash, status, bar)
            return
        columns = list(dict.fromkeys(["sample_id", *step.input_columns()]))
        args = step_args(step)
        reference = list(self.executor.map(sketch_task, args, ((ids, t) for ids, t in step.reference_batches())))
        parts = self.index.batches(self.store, columns, candidates, self.batch_rows)
        sketches = [s for _, s in self.executor.map(sketch_task, args, ((None, t) for _, t in rechunk(parts, self.chunk_rows)))]
        state = sum(getattr(a, "nbytes", 0) for s in sketches for a in vars(s).values() if isinstance(a, np.ndarray))
        log.info("filter %s: whole-run state of %d samples is %.1f MB in memory (ids, lengths, sketches; no text)",
                 step.name, len(positions), state / 1e6)
        ids = self.index.ids.take(pa.array(positions)).to_pylist()
        decided = step.decide(ids, self.index.text_len[positions].tolist(), sketches, reference)
        self._write_decided(step, positions, ids, decided, todo, chash, status, bar)

    def _write_decided(self, step: FilterStep, positions: np.ndarray, ids: list[str], decided: Iterable[StepVerdict],
                       todo: np.ndarray, chash: str, status: np.ndarray, bar: RateProgress) -> None:
        """A whole-run step's verdicts, in chunks, written only for samples not already decided."""
        verdicts = iter(decided)
        need = todo[positions]
        for start in range(0, len(positions), self.chunk_rows):
            batch = [next(verdicts) for _ in range(min(self.chunk_rows, len(positions) - start))]
            keep = need[start:start + len(batch)]
            if keep.any():
                chosen = np.flatnonzero(keep)
                self._write(step.name, positions[start:start + len(batch)][chosen], [ids[start + i] for i in chosen],
                            (batch[i] for i in chosen), chash, status)
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
