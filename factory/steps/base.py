"""The contract of a filter step: typed settings, the columns it reads, a batch in, verdicts out.

A step is a small class (datatrove's filter, distilabel's typed step)::

    class Readability(FilterStep):
        name = "readability"
        columns = ("reasoning", "answer", "task_type", "completion_tokens")

        class Params(StepParams):
            max_paragraph_chars: int = 3000

        def filter(self, batch: pa.Table) -> list[StepVerdict]:
            ...

The engine (factory/engine.py) reads only declared properties, never a step's name:

whole_run            False: each sample is judged alone, so batches go to any worker in any
                     order. True: the step sees every candidate at once (dedup); it splits
                     its work into ``sketch(batch)`` on the workers and ``decide(...)``, which
                     holds compact per-sample state (ids, signatures, lengths), never text, and
                     spills it to Parquet past its ``StateBudget`` (a share of ``memory_gb``).
verifies             a None verdict means "no rule could verify this" rather than "undecided":
                     a later step that ``resolves_unverified`` may settle it.
resolves_unverified  takes the samples an earlier ``verifies`` step left unverified (the
                     judge); with ``only_unverified()`` it takes nothing else.
in_process           runs in the engine's process (holds a model or a server connection),
                     not on the worker pool.
work_factor          the step's peak memory per byte of its input columns (sizes its chunks).
lsh_grouping         a whole-run step whose state is exact keys and MinHash signatures
                     (``sketch`` returns a verifiers.dedup.Sketch, ``params.dedup_params()``
                     its settings, ``reference_runs()`` the data it compares against), so a
                     cluster executor can group it by key (LSH bands) instead of gathering it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar

import pyarrow as pa
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    ValidationError,
    create_model,
    model_validator,
)


@dataclass
class StateBudget:
    """What a whole-run step may keep in memory, where the rest goes, and how much went there."""

    max_bytes: int | None          # None: no bound
    spill_dir: Path                # a scratch folder of the run's, emptied after the step
    spilled_bytes: int = 0


@dataclass(frozen=True)
class StepVerdict:
    passed: bool | None
    code: str | None = None
    reason: str | None = None
    score: float | None = None
    detail: dict[str, Any] | None = None


def _expect_bool(value: Any) -> Any:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")  # noqa: TRY004 (pydantic reports ValueError only)
    return value


# A step setting that is true or false: YAML's `yes`, 1 or "true" are recipe errors, not coerced.
Flag = Annotated[bool, BeforeValidator(_expect_bool)]


class StepParams(BaseModel):
    """A step's settings. Unknown keys are errors; defaults live here and nowhere else."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class FilterStep:
    """One filter step; see the module docstring for the properties the engine reads."""

    name: ClassVar[str]
    Params: ClassVar[type[StepParams]] = StepParams
    columns: ClassVar[tuple[str, ...]] = ("text",)
    whole_run: ClassVar[bool] = False
    verifies: ClassVar[bool] = False
    resolves_unverified: ClassVar[bool] = False
    in_process: ClassVar[bool] = False
    lsh_grouping: ClassVar[bool] = False
    # Peak memory while the step works on a chunk, per byte of the columns it reads (measured on
    # 75K-character traces: rule steps < 8, MinHash sketches ~20, benchmark n-gram checks ~27).
    # The engine sizes the step's chunks by it so that memory_gb holds.
    work_factor: ClassVar[float] = 8.0

    def __init__(self, params: StepParams | None = None) -> None:
        self.params = params if params is not None else self.Params()

    @classmethod
    def from_config(cls, settings: dict[str, Any]) -> FilterStep:
        """Validate a recipe entry (without ``step``); raises ValueError('<key>: message')."""
        try:
            return cls(cls.Params.model_validate(settings))
        except ValidationError as exc:
            raise ValueError(first_error(exc, cls)) from None

    def input_columns(self) -> list[str]:
        """Sample columns this step reads (``sample_id`` is always there)."""
        return list(self.columns)

    def only_unverified(self) -> bool:
        return False

    def config_hash(self) -> str:
        # The validated settings: writing out a default does not invalidate stored verdicts.
        canonical = json.dumps({"step": self.name, **self.params.model_dump(mode="json")}, sort_keys=True, default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    def filter(self, batch: pa.Table) -> list[StepVerdict]:
        """One verdict per row of ``batch``, in order (per-sample steps)."""
        raise NotImplementedError

    # whole-run steps
    def sketch(self, batch: pa.Table) -> Any:
        """Compact per-row state of ``batch`` (runs on a worker)."""
        raise NotImplementedError

    def decide(self, ids: pa.Array, lengths: Sequence[int], sketches: Iterable[Any],
               reference: Iterable[tuple[Sequence[str], Any]], budget: StateBudget | None = None
               ) -> Iterable[StepVerdict]:
        """Verdicts for every candidate, in order, from the sketches of all of them (and of reference data).

        ``sketches`` and ``reference`` arrive one batch at a time: keep what ``budget`` allows in
        memory, spill the rest under ``budget.spill_dir`` and record its size in ``budget.spilled_bytes``."""
        raise NotImplementedError

    def has_reference(self) -> bool:
        """Whether `reference_batches` yields anything (data from outside the run)."""
        return False

    def reference_batches(self) -> typing.Iterable[tuple[list[str], pa.Table]]:
        """(reference ids, batch) of data a whole-run step compares against (other runs)."""
        return iter(())


def first_error(exc: ValidationError, step: type[FilterStep]) -> str:
    """pydantic's first error as the one line the recipe loader prints: '<key>: <message>'."""
    error = exc.errors()[0]
    key = ".".join(str(p) for p in error["loc"])
    if error["type"] == "extra_forbidden":
        have = ", ".join(step.Params.model_fields)
        return f"{key}: unknown setting for step '{step.name}' (have {have})"
    message = error["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
    return f"{key}: {message}" if key else message


def params_from_config(config_cls: type, validate: Callable[..., Any], name: str, *,
                       extra: dict[str, tuple[Any, Any]] | None = None, exclude: Sequence[str] = (),
                       rewrite: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> type[StepParams]:
    """A Params model with the fields of a verifier's config dataclass (one source of defaults),
    checked by the verifier's own validator so ranges and messages stay the verifier's.

    extra: fields added or replaced; exclude: config fields that are not settings of the step;
    rewrite: maps the step's settings to the verifier's keywords before its check."""
    hints = typing.get_type_hints(config_cls)
    names = [f.name for f in dataclasses.fields(config_cls) if f.name not in exclude]
    fields: dict[str, Any] = {f.name: (hints[f.name], f.default) for f in dataclasses.fields(config_cls)
                              if f.name in names and f.default is not dataclasses.MISSING}
    fields.update(extra or {})

    def _check(self: StepParams) -> StepParams:
        settings = {k: v for k, v in self.model_dump().items() if k in names}
        validate(**(rewrite(settings) if rewrite else settings))
        return self

    return create_model(f"{name.title()}Params", __base__=StepParams,
                        __validators__={"_verifier_check": model_validator(mode="after")(_check)}, **fields)


def from_verifier(verdict: Any) -> StepVerdict:
    """verifiers.verdict.Verdict → StepVerdict."""
    return StepVerdict(verdict.passed, verdict.code, verdict.reason, verdict.score, verdict.details)


def rows_of(batch: pa.Table, columns: Sequence[str]) -> list[dict[str, Any]]:
    """The named columns of a batch as Python rows (only these are materialised)."""
    return batch.select(list(columns)).to_pylist()
