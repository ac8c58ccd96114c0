"""`dedup`: exact and MinHash near-duplicates within the run and against other curated runs."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import model_validator

from factory.errors import FactoryError
from factory.steps.base import FilterStep, Flag, StateBudget, StepParams, StepVerdict
from verifiers.dedup import (
    DEFAULT_THRESHOLD,
    Deduplicator,
    DedupParams,
    DedupVerdict,
    Sketch,
    sketch_batch,
)


class DedupStepParams(StepParams):
    field: Literal["text", "prompt", "answer", "both"] = "text"  # both = prompt + response
    against_runs: tuple[str, ...] = ()   # curated runs whose selected samples win over this run's
    near: Flag = True                    # also MinHash near-duplicates, not only exact ones
    num_perm: int = 128
    threshold: float = DEFAULT_THRESHOLD
    shingle: Literal["word", "char"] = "word"
    ngram: int | None = None
    seed: int = 1
    workers: int | None = None           # kept for old recipes; the run's `workers:` sizes the pool

    @model_validator(mode="after")
    def _check(self) -> DedupStepParams:
        self.dedup_params()
        return self

    def dedup_params(self) -> DedupParams:
        return DedupParams(self.near, self.num_perm, self.threshold, self.shingle, self.ngram, self.seed).validate()


def step_verdict(v: DedupVerdict) -> StepVerdict:
    """A dedup verdict as the filter records it (the same on every executor)."""
    detail = {"cluster_id": v.cluster_id, "duplicate_of": v.duplicate_of, "kind": v.kind, "similarity": v.similarity}
    if v.kept:
        return StepVerdict(True, score=v.similarity, detail=detail)
    return StepVerdict(False, f"duplicate_{v.kind}", f"duplicate_{v.kind}: of {v.duplicate_of}", v.similarity, detail)


class DedupStep(FilterStep):
    name = "dedup"
    work_factor = 24.0  # tokens, n-gram hashes and their indexes: measured ~20x the text
    Params = DedupStepParams
    whole_run = True
    lsh_grouping = True

    def input_columns(self) -> list[str]:
        return ["prompt", "text"] if self.params.field == "both" else [self.params.field]

    def texts(self, batch: pa.Table) -> list[str]:
        if self.params.field == "both":
            joined = pc.binary_join_element_wise(pc.fill_null(batch.column("prompt"), ""),
                                                 pc.fill_null(batch.column("text"), ""), "\n")
            return joined.to_pylist()
        return pc.fill_null(batch.column(self.params.field), "").to_pylist()

    def sketch(self, batch: pa.Table) -> Sketch:
        return sketch_batch(self.texts(batch), self.params.dedup_params())

    def decide(self, ids: pa.Array, lengths: np.ndarray, sketches: Iterable[Sketch],
               reference: Iterable[tuple[Sequence[str], Sketch]], budget: StateBudget | None = None
               ) -> Iterator[StepVerdict]:
        dedup = Deduplicator(self.params.dedup_params(), spill_dir=budget.spill_dir if budget else None,
                             max_state_bytes=budget.max_bytes if budget else None)
        for ref_ids, sketch in reference:
            dedup.add(ref_ids, sketch, [(0, i.split(":", 1)[-1]) for i in ref_ids], reference=True)
        start = 0
        for sketch in sketches:
            n = len(sketch.exact_keys)
            chunk = ids.slice(start, n).to_pylist()
            # Keep the shortest of a cluster (then the smallest id): concise chains are preferred.
            dedup.add(chunk, sketch, [(int(length), sid) for length, sid in zip(lengths[start:start + n], chunk)])
            start += n
        verdicts = dedup.iter_resolve()
        if budget is not None:
            budget.spilled_bytes = dedup.spilled_bytes
        for v in verdicts:
            yield step_verdict(v)

    def has_reference(self) -> bool:
        return bool(self.params.against_runs)

    def reference_runs(self) -> Iterator[tuple[str, list[str], pa.Array]]:
        """(run, its sample shards, its selected sample ids in shard order) of each `against_runs` run."""
        from factory.filter import read_accepted_ids
        from factory.paths import runs_dir
        from factory.store import RunStore

        for run in self.params.against_runs:
            store = RunStore(runs_dir() / run)
            if not store.exists():
                raise FactoryError(f"filters.dedup.against_runs: no run named '{run}' in {runs_dir()}")
            accepted = pa.array(sorted(read_accepted_ids(store)), pa.string())
            ordered = [batch.column(0).filter(pc.is_in(batch.column(0), value_set=accepted))
                       for batch in store.iter_sample_batches(["sample_id"], batch_size=65_536)]
            ids = pa.concat_arrays(ordered) if ordered else pa.array([], pa.string())
            yield run, [str(p) for p in store.sample_shards()], ids

    def reference_batches(self) -> Iterable[tuple[list[str], pa.Table]]:
        from factory.paths import runs_dir
        from factory.store import RunStore

        for run, _, accepted in self.reference_runs():
            store = RunStore(runs_dir() / run)
            for batch in store.iter_sample_batches(["sample_id", *self.input_columns()], batch_size=2048):
                table = pa.Table.from_batches([batch])
                table = table.filter(pc.is_in(table.column("sample_id"), value_set=accepted))
                if table.num_rows:
                    yield [f"{run}:{sid}" for sid in table.column("sample_id").to_pylist()], table
