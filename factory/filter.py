"""Filtering: ordered steps write verdicts keyed by sample_id; selection keeps k per prompt.

A recipe's `filters:` list names the steps in order, e.g.::

    filters:
      - step: format
      - step: language
        min_share: 0.95
      - step: correctness          # math via verifiers.math, code via verifiers.code
      - step: judge                # the v3 role, for samples no rule can verify
      - step: dedup
      - step: decontam

A step only sees samples that passed every earlier step (the judge also sees
those the correctness step could not verify), so costly steps run on
survivors. Each decision is a verdict row (passed, code, reason, score) in
`verdicts/<step>/`; re-running recomputes nothing already decided with the
same step settings unless `recompute` is asked. Whole-run steps (dedup,
selection) are recomputed when their input set changes.

The steps live in factory/steps/ (one typed class each, a registry); the streaming
engine that runs them, a batch of projected columns at a time on one pool of worker
processes, is factory/engine.py; `executor: ray` runs the same on Ray
(factory/ray_executor.py). This module is the stage: recipe → steps → engine →
selection → report.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import ValidationError

from factory.engine import (
    PASS,
    EngineRun,
    Executor,
    LocalExecutor,
    MemoryPlan,
    RunIndex,
    StepCount,
    candidate_mask,
    column_bytes,
    default_workers,
    plan_memory,
    process_rss,
)
from factory.errors import FactoryError, RecipeError
from factory.recipe import GenerateRecipe, SelectionConfig, load_recipe
from factory.steps import STEPS, FilterStep, StepVerdict
from factory.store import RunStore, open_run, utc_now

log = logging.getLogger(__name__)

Row = dict[str, Any]
SELECTION_STEP = "selection"
DEFAULT_MEMORY_GB = 4.0
__all__ = [
    "STEPS",
    "FilterReport",
    "StepCount",
    "StepVerdict",
    "build_acceptor",
    "build_steps",
    "rank_for_selection",
    "read_accepted_ids",
    "run_filter",
    "validate_filter_configs",
]


# ---------------------------------------------------------------- steps from a recipe
def validate_filter_configs(filters: Sequence[dict[str, Any]]) -> Iterable[tuple[int, str]]:
    """(index, 'key: message') for every bad filter entry; the recipe loader reports the first."""
    names = ", ".join([*STEPS, SELECTION_STEP])
    for index, entry in enumerate(filters):
        if not isinstance(entry, dict) or "step" not in entry:
            yield index, f"step: expected a mapping with 'step' (one of {names})"
            continue
        name = entry["step"]
        settings = {k: v for k, v in entry.items() if k != "step"}
        if name == SELECTION_STEP:
            if index != len(filters) - 1:
                yield index, "step: selection must be the last filter (it keeps k per prompt of what the others accepted)"
            else:
                try:
                    SelectionConfig.model_validate(settings)
                except ValidationError as exc:
                    error = exc.errors()[0]
                    yield index, f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}"
            continue
        if name not in STEPS:
            yield index, f"step: unknown filter {name!r}; expected one of {names}"
            continue
        try:
            STEPS[name].from_config(settings)
        except ValueError as exc:
            yield index, str(exc)


def build_steps(filters: Sequence[dict[str, Any]]) -> list[FilterStep]:
    """The recipe's filter steps in order (a closing `{step: selection}` is the selection's settings, not a step)."""
    for index, message in validate_filter_configs(filters):
        raise RecipeError(f"filters[{index}].{message}")
    return [STEPS[f["step"]].from_config({k: v for k, v in f.items() if k != "step"})
            for f in filters if f["step"] != SELECTION_STEP]


def selection_of(filters: Sequence[dict[str, Any]], selection: SelectionConfig) -> SelectionConfig:
    """`{step: selection, k, policy}` closing the filters list, else the recipe's `selection:`."""
    last = filters[-1] if filters else {}
    if isinstance(last, dict) and last.get("step") == SELECTION_STEP:
        return SelectionConfig.model_validate({k: v for k, v in last.items() if k != "step"})
    return selection


# ---------------------------------------------------------------- the stage
@dataclass
class FilterReport:
    run: str
    generated: int
    steps: list[StepCount]
    selected: int
    prompts: int
    prompts_with_selection: int
    top_reasons: list[tuple[str, str, int]]
    yield_by_task: dict[str, dict[str, float]] = field(default_factory=dict)
    accepted_per_million_tokens: float | None = None
    executor: str = "local"
    workers: int = 1
    selection: StepCount | None = None  # the closing per-prompt selection, counted like a step


@dataclass
class _FilterConfig:
    filters: list[dict[str, Any]]
    selection: SelectionConfig
    workers: int | None = None
    executor: str = "local"
    memory_gb: float = DEFAULT_MEMORY_GB


def run_filter(
    run: str | None = None,
    *,
    recipe: str | None = None,
    only: Sequence[str] | None = None,
    recompute: bool = False,
    progress: bool = True,
    workers: int | None = None,
    executor: Literal["local", "ray"] | None = None,
) -> FilterReport:
    """Apply a run's filter steps (or those of `recipe`), then per-prompt selection. Resumable, idempotent.

    `workers` and `executor` override the recipe's (default: one process per core, local).
    """
    store = open_run(run)
    if workers is not None and (isinstance(workers, bool) or workers < 1):
        raise FactoryError(f"--workers {workers}: expected an integer >= 1")
    with store.lock("filter"):
        return _filter_run(store, recipe=recipe, only=only, recompute=recompute, progress=progress, workers=workers,
                           executor=executor)


def _filter_run(store: RunStore, *, recipe: str | None, only: Sequence[str] | None, recompute: bool, progress: bool,
                workers: int | None, executor: str | None) -> FilterReport:
    config = _filter_config(store.read_manifest(), recipe)
    steps = build_steps(config.filters)
    if only:
        unknown = [name for name in only if name not in {s.name for s in steps} | {SELECTION_STEP}]
        if unknown:
            raise FactoryError(f"--only {unknown[0]}: not a step of this run (steps: {', '.join(s.name for s in steps)}, selection)")
    name, requested = executor or config.executor, workers or config.workers
    if name == "ray":  # the cluster's size is Ray's; the plan sizes chunks and dedup state
        runner = _executor(name, requested, store)
        plan = memory_plan(store, config.memory_gb, runner.workers, fixed_workers=True)
    else:
        plan = memory_plan(store, config.memory_gb, requested or default_workers())
        runner = _executor(name, plan.workers, store)
    try:
        return _run(store, steps, plan, runner, only=only, recompute=recompute, progress=progress,
                    executor_name=executor or config.executor, selection=config.selection)
    finally:
        runner.close()


def _executor(name: str, workers: int | None, store: RunStore) -> Executor:
    if name == "ray":
        from factory.ray_executor import RayExecutor

        return RayExecutor(workers, filesystem=store.filesystem)
    if name != "local":
        raise FactoryError(f"--executor {name}: expected local or ray")
    return LocalExecutor(workers)


def _run(store: RunStore, steps: list[FilterStep], plan: MemoryPlan, executor: Executor, *,
         only: Sequence[str] | None, recompute: bool, progress: bool, executor_name: str,
         selection: SelectionConfig) -> FilterReport:
    batch_rows, chunk_rows = _batch_sizes(plan, store)
    index = RunIndex.build(store, batch_rows)
    if not len(index):
        raise FactoryError(f"run '{store.name}': no samples yet; run `factory generate` first")
    engine = EngineRun(store, index, executor, batch_rows=batch_rows, chunk_rows=chunk_rows, progress=progress,
                       plan=plan, state_bytes=plan.state_bytes)
    counts: list[StepCount] = []
    for position, step in enumerate(steps):
        candidates = candidate_mask(steps[:position], engine.status, step, len(index))
        run_it = not only or step.name in only
        counts.append(engine.apply(step, candidates, recompute=recompute and run_it, compute=run_it))
    accepted = candidate_mask(steps, engine.status, None, len(index))
    started = time.perf_counter()
    selected, computed = _select(engine, accepted, selection, recompute=recompute,
                                 compute=not only or SELECTION_STEP in only)
    report = _report(engine, steps, counts, accepted, selected)
    report.executor, report.workers = executor_name, executor.workers
    report.selection = StepCount(SELECTION_STEP, candidates=int(accepted.sum()), passed=int(selected.sum()),
                                 rejected=int(accepted.sum() - selected.sum()), computed=computed,
                                 reused=int(accepted.sum()) - computed,
                                 seconds=round(time.perf_counter() - started, 3))
    data = asdict(report)
    data["written_at"] = utc_now().isoformat()
    store.write_json("filter_report.json", data)
    return report


def memory_plan(store: RunStore, memory_gb: float, workers: int, *, fixed_workers: bool = False) -> MemoryPlan:
    """`memory_gb` shared out for this run (see engine.MemoryPlan for what it bounds)."""
    shards = store.sample_shards()
    samples = sum(store.parquet_file(s).metadata.num_rows for s in shards)
    return plan_memory(memory_gb, workers, samples, process_rss(), fixed_workers=fixed_workers)


def _batch_sizes(plan: MemoryPlan, store: RunStore) -> tuple[int, int]:
    """Rows per read batch and per chunk of the whole sample (the index build, verdict shards)."""
    chunk = plan.chunk_rows(column_bytes(store, ["sample_id", "text"]))
    return min(512, chunk), chunk


def _filter_config(manifest: dict[str, Any], recipe_name: str | None) -> _FilterConfig:
    if recipe_name:
        recipe = load_recipe(recipe_name)
        if not isinstance(recipe, GenerateRecipe):
            raise RecipeError(f"--recipe {recipe_name}: expected a generate recipe with filters")
        return _FilterConfig(recipe.filters, selection_of(recipe.filters, recipe.selection), recipe.workers,
                             recipe.executor, recipe.memory_gb)
    stored = manifest.get("recipe") or {}
    filters = stored.get("filters") or [{"step": "format"}]
    selection = selection_of(filters, SelectionConfig.model_validate(stored.get("selection") or {}))
    return _FilterConfig(filters, selection, stored.get("workers"),
                         stored.get("executor") or "local", stored.get("memory_gb") or DEFAULT_MEMORY_GB)


# ---------------------------------------------------------------- selection
def _select(engine: EngineRun, accepted: np.ndarray, selection: SelectionConfig, *, recompute: bool,
            compute: bool) -> tuple[np.ndarray, int]:
    """Keep at most k accepted samples per prompt by the recipe's policy; stored as the `selection` step.

    Returns the selected mask and how many verdicts were computed (not reused). Ranking reads only (prompt id, length, id), except the diverse
    policy, which reads the text of prompts with more accepted samples than k."""
    index = engine.index
    chash = index.fingerprint(f"{selection.k}:{selection.policy}", accepted)
    status = np.zeros(len(index), np.int8)
    if not recompute:
        engine._load(SELECTION_STEP, chash, status)
    todo = accepted & (status == 0)
    if todo.any() and compute:
        positions = np.flatnonzero(accepted)
        ranks, sizes = _ranks(engine, positions, selection)
        keep = ranks < selection.k
        verdicts = [StepVerdict(bool(k), None if k else "over_k",
                                None if k else f"over_k: rank {r + 1} of {n} by {selection.policy}", float(r))
                    for k, r, n in zip(keep.tolist(), ranks.tolist(), sizes.tolist())]
        need = todo[positions]
        ids = index.ids.take(pa.array(positions))
        for start in range(0, len(positions), engine.chunk_rows):
            part = np.flatnonzero(need[start:start + engine.chunk_rows]) + start
            if len(part):
                engine._write(SELECTION_STEP, positions[part], ids.take(pa.array(part)).to_pylist(),
                              (verdicts[i] for i in part), chash, status)
    engine.status[SELECTION_STEP] = status
    return accepted & (status == PASS), int(todo.sum()) if compute else 0


def _ranks(engine: EngineRun, positions: np.ndarray, selection: SelectionConfig) -> tuple[np.ndarray, np.ndarray]:
    """Rank of each accepted sample within its prompt (0 = best) and the prompt's accepted count.

    Shortest and longest are one Arrow sort (no Python object per sample); random and diverse
    reorder only the prompts with more than one accepted sample, diverse reading their texts a
    bounded batch of prompts at a time."""
    index = engine.index
    n = len(positions)
    table = pa.table({"prompt": index.prompt_ids.take(pa.array(positions)), "sid": index.ids.take(pa.array(positions)),
                      "length": index.text_len[positions], "at": np.arange(n)})
    order = "descending" if selection.policy == "longest" else "ascending"
    table = table.sort_by([("prompt", "ascending"), ("length", order), ("sid", "ascending")])
    at = table.column("at").to_numpy()
    starts = _group_starts(table.column("prompt"))
    opens = np.zeros(n, np.int64)
    opens[starts] = 1
    group = np.cumsum(opens) - 1
    size_of = np.diff(np.append(starts, n))
    rank_sorted = np.arange(n) - starts[group]
    if selection.policy in ("random", "diverse"):
        crowded = np.flatnonzero(size_of > 1)
        for ordered, members in _reorder_crowded(engine, table, positions, starts, size_of, crowded, selection):
            rank_sorted[members] = np.argsort(ordered)  # member k's place in the new order
    ranks = np.zeros(n, np.int64)
    sizes = np.zeros(n, np.int64)
    ranks[at] = rank_sorted
    sizes[at] = size_of[group]
    return ranks, sizes


def _group_starts(prompts: pa.ChunkedArray) -> np.ndarray:
    """Where each run of equal prompt ids starts in the sorted column (two missing ids are equal)."""
    n = len(prompts)
    if n == 0:
        return np.zeros(0, np.int64)
    a, b = prompts.slice(1), prompts.slice(0, n - 1)
    differs = pc.fill_null(pc.not_equal(a, b), True)
    both_null = pc.and_(pc.is_null(a), pc.is_null(b))
    new = pc.and_(differs, pc.invert(both_null)).to_numpy(zero_copy_only=False) if n > 1 else np.zeros(0, bool)
    return np.concatenate([[0], np.flatnonzero(new) + 1]).astype(np.int64)


def _reorder_crowded(engine: EngineRun, table: pa.Table, positions: np.ndarray, starts: np.ndarray,
                     size_of: np.ndarray, crowded: np.ndarray, selection: SelectionConfig
                     ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(new order, member rows) of each crowded prompt by rank_for_selection, in batches of prompts."""
    sids, prompts = table.column("sid"), table.column("prompt")
    lengths, at = table.column("length").to_numpy(), table.column("at").to_numpy()
    budget = max((engine.plan.in_flight_bytes if engine.plan else 2**28) // 4, 1 << 16)   # text read at once
    batch: list[int] = []
    held = 0
    read = 0
    for g in [*crowded.tolist(), None]:
        if g is not None:
            batch.append(g)
            held += int(lengths[starts[g]:starts[g] + size_of[g]].sum())
            if held < budget:
                continue
        if not batch:
            break
        rows = np.concatenate([np.arange(starts[b], starts[b] + size_of[b]) for b in batch])
        texts = _texts_of(engine, positions[at[rows]]) if selection.policy == "diverse" else {}
        read += len(texts)
        sid_list = sids.take(pa.array(rows)).to_pylist()
        where = dict(zip(rows.tolist(), sid_list))
        for b in batch:
            members = np.arange(starts[b], starts[b] + size_of[b])
            group = [{"sample_id": where[i], "text": texts.get(int(positions[at[i]])), "_i": k, "_len": int(lengths[i])}
                     for k, i in enumerate(members.tolist())]
            ordered = [r["_i"] for r in rank_for_selection(group, selection.policy, seed=prompts[int(starts[b])].as_py())]
            yield np.asarray(ordered), members
        batch, held = [], 0
    if selection.policy == "diverse":
        log.info("selection diverse: read the text of %d samples in %d crowded prompts", read, len(crowded))


def _texts_of(engine: EngineRun, wanted: np.ndarray) -> dict[int, str]:
    """Text of the samples at `wanted` positions of the run, keyed by position."""
    mask = np.zeros(len(engine.index), bool)
    mask[wanted] = True
    texts: dict[int, str] = {}
    for found, table in engine.index.batches(engine.store, ["text"], mask, engine.batch_rows):
        for position, text in zip(found.tolist(), table.column("text").to_pylist()):
            texts[position] = text or ""
    return texts


def rank_for_selection(group: list[Row], policy: str, *, seed: str) -> list[Row]:
    """Order a prompt's accepted samples, best first.

    shortest: fewest characters (the paper favours concise, readable chains);
    longest: most characters; random: a seeded shuffle; diverse: greedily the
    sample least similar (word-set Jaccard) to those already chosen.
    """
    import random

    by_length = sorted(group, key=lambda r: (_length(r), r["sample_id"]))
    if policy == "shortest":
        return by_length
    if policy == "longest":
        return sorted(group, key=lambda r: (-_length(r), r["sample_id"]))
    if policy == "random":
        ranked = sorted(group, key=lambda r: r["sample_id"])
        random.Random(seed).shuffle(ranked)
        return ranked
    words = {r["sample_id"]: set((r["text"] or "").lower().split()) for r in group}
    chosen = [by_length[0]]
    rest = by_length[1:]
    while rest:
        def max_similarity(row: Row) -> float:
            mine = words[row["sample_id"]]
            return max(len(mine & words[c["sample_id"]]) / max(len(mine | words[c["sample_id"]]), 1) for c in chosen)

        best = min(rest, key=lambda r: (max_similarity(r), _length(r), r["sample_id"]))
        chosen.append(best)
        rest.remove(best)
    return chosen


def _length(row: Row) -> int:
    return row["_len"] if "_len" in row else len(row["text"] or "")


def read_accepted_ids(store: RunStore) -> list[str]:
    """Sample ids selected by the last `factory filter` of a run (what `mix` and dedup-across-runs read)."""
    table = store.read_verdicts(SELECTION_STEP).select(["sample_id", "passed"])
    if not table.num_rows:
        return []
    table = table.append_column("row", pa.array(np.arange(table.num_rows)))
    latest = table.take(table.group_by("sample_id", use_threads=False).aggregate([("row", "max")]).column("row_max"))
    return latest.filter(pc.fill_null(latest.column("passed"), False)).column("sample_id").to_pylist()


# ---------------------------------------------------------------- adaptive generation
def build_acceptor(recipe: GenerateRecipe) -> Callable[[list[Row]], list[bool]]:
    """In-memory acceptance for adaptive sampling: the recipe's sample steps that need no model."""
    steps = [s for s in build_steps(recipe.filters) if not s.whole_run and not s.in_process]

    def accept(rows: list[Row]) -> list[bool]:
        alive = list(range(len(rows)))
        for step in steps:
            if not alive:
                break
            batch = pa.Table.from_pylist([{c: rows[i].get(c) for c in step.input_columns()} for i in alive])
            verdicts = step.filter(batch)
            alive = [i for i, v in zip(alive, verdicts) if v.passed]
        keep = set(alive)
        return [i in keep for i in range(len(rows))]

    return accept


# ---------------------------------------------------------------- reporting
def _report(engine: EngineRun, steps: list[FilterStep], counts: list[StepCount], accepted: np.ndarray,
            selected: np.ndarray) -> FilterReport:
    index = engine.index
    reasons = Counter({key: n for key, n in engine.reasons.items() if key[0] != SELECTION_STEP})
    prompts = pc.count_distinct(index.prompt_ids).as_py()
    with_selection = pc.count_distinct(index.prompt_ids.filter(pa.array(selected))).as_py() if selected.any() else 0
    tasks = index.task_types
    names = tasks.dictionary.to_pylist()
    codes = pc.fill_null(tasks.indices, -1).to_numpy(zero_copy_only=False)
    yield_by_task: dict[str, dict[str, float]] = {}
    for code, name in sorted(enumerate(names), key=lambda item: str(item[1])):
        mask = codes == code
        if mask.any():
            generated, taken = int(mask.sum()), int((mask & accepted).sum())
            yield_by_task[name] = {"generated": generated, "accepted": taken, "yield": taken / generated}
    tokens = int(index.tokens.sum())
    return FilterReport(
        run=engine.store.name, generated=len(index), steps=counts, selected=int(selected.sum()), prompts=prompts,
        prompts_with_selection=with_selection,
        top_reasons=[(s, c, n) for (s, c), n in reasons.most_common(8)],
        yield_by_task=yield_by_task,
        accepted_per_million_tokens=int(accepted.sum()) / tokens * 1e6 if tokens else None,
    )
