"""`decontam`: drop samples whose prompt or response overlaps a benchmark (GPT-3 style n-grams)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
from pydantic import field_validator

from factory.steps.base import FilterStep, Flag, StepParams, StepVerdict


class DecontamParams(StepParams):
    n: int = 13                     # n-gram cap per benchmark field (its 5th-percentile length when shorter)
    min_n: int = 8                  # floor of that per-field length
    per_field_n: Flag = True
    fields: tuple[Literal["prompt", "text", "answer"], ...] = ("prompt", "text")
    benchmarks: tuple[str, ...] = ()  # extra benchmark files besides the shipped ones

    @field_validator("n", "min_n", mode="before")
    @classmethod
    def _size(cls, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int) or not 4 <= value <= 64:
            raise ValueError(f"expected an integer n-gram size in [4, 64], got {value!r}")
        return value


    @field_validator("fields", mode="before")
    @classmethod
    def _fields(cls, value: Any) -> Any:
        if not isinstance(value, (list, tuple)) or not set(value) <= {"prompt", "text", "answer"}:
            raise ValueError(f"expected a list from prompt, text, answer; got {value!r}")
        return value

    @field_validator("benchmarks", mode="after")
    @classmethod
    def _files(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for path in value:
            if not Path(path).exists():
                raise ValueError(f"file not found: {path}")
        return value


@functools.lru_cache(maxsize=4)
def _benchmark_index(n: int, min_n: int, per_field_n: bool, extra: tuple[str, ...]) -> Any:
    # Built once per process (a few seconds for the shipped benchmarks), not once per batch.
    from factory.paths import BENCHMARKS_DIR
    from verifiers.decontam import BenchmarkIndex

    files = sorted(BENCHMARKS_DIR.glob("*.jsonl")) + [Path(p) for p in extra]
    return BenchmarkIndex.from_files(files, n=n, min_n=min_n, per_field_n=per_field_n)


class DecontamStep(FilterStep):
    name = "decontam"
    work_factor = 32.0  # tokens, n-gram hashes and their indexes: measured ~27x the text
    Params = DecontamParams

    def input_columns(self) -> list[str]:
        return list(self.params.fields)

    def filter(self, batch: pa.Table) -> list[StepVerdict]:
        p = self.params
        index = _benchmark_index(p.n, p.min_n, p.per_field_n, p.benchmarks)
        hits: list[tuple[str, Any] | None] = [None] * batch.num_rows
        for name in p.fields:
            values = batch.column(name).to_pylist()
            todo = [i for i, h in enumerate(hits) if h is None]
            # workers=1: this already runs on one of the engine's workers (a pool per chunk cost 20x).
            for i, hit in zip(todo, index.check_batch([values[i] or "" for i in todo], workers=1)):
                if hit is not None:
                    hits[i] = (name, hit)
        return [StepVerdict(True) if found is None else _contaminated(*found) for found in hits]


def _contaminated(field: str, hit: Any) -> StepVerdict:
    detail = {k: getattr(hit, k, None) for k in ("benchmark", "item_id", "ngram", "kind", "n")}
    return StepVerdict(False, "contaminated", f"contaminated: {detail['benchmark']} {detail['kind']} "
                       f"match in {field}: {str(detail['ngram'])[:80]!r}", detail=detail)
