"""`correctness`: rule rewards. Math answers by equivalence, code by running its tests in the sandbox."""

from __future__ import annotations

from typing import Any, Literal

import pyarrow as pa
from pydantic import field_validator

from factory.errors import FactoryError
from factory.steps.base import FilterStep, Flag, StepParams, StepVerdict, rows_of

Row = dict[str, Any]
MATH_TYPES = ("math", "logic")


class CorrectnessParams(StepParams):
    timeout_s: float | None = None          # per math item; None = the verifier's default
    code_timeout_s: float = 5.0             # per program run
    memory_mb: int = 512                    # per program run
    workers: int | None = None              # kept for old recipes; the run's `workers:` sizes the pool
    unsafe_no_sandbox: Flag = False         # run code without the sandbox (trusted data only)
    policy: Literal["strict", "lenient"] = "strict"  # math: lenient also reads the last number of the last sentence

    @field_validator("policy", mode="before")
    @classmethod
    def _policy(cls, value: Any) -> Any:
        if value not in ("strict", "lenient"):
            raise ValueError(f"expected 'strict' or 'lenient', got {value!r}")
        return value

    @field_validator("timeout_s", "code_timeout_s", mode="before")
    @classmethod
    def _seconds(cls, value: Any, info: Any) -> Any:
        if value is None and info.field_name == "timeout_s":
            return value
        if isinstance(value, bool) or not (isinstance(value, (int, float)) and 0 < value <= 600):
            raise ValueError(f"expected seconds in (0, 600], got {value!r}")
        return value

    @field_validator("memory_mb", mode="before")
    @classmethod
    def _memory(cls, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int) or value < 64:
            raise ValueError(f"expected an integer >= 64, got {value!r}")
        return value

    @field_validator("workers", mode="before")
    @classmethod
    def _workers(cls, value: Any) -> Any:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"expected an integer >= 1, got {value!r}")
        return value



class CorrectnessStep(FilterStep):
    """Math via verifiers.math, code via verifiers.code; other task types are unverifiable (None)."""

    name = "correctness"
    Params = CorrectnessParams
    columns = ("task_type", "reference", "tests", "answer", "text")
    verifies = True

    def filter(self, batch: pa.Table) -> list[StepVerdict]:
        return self.score(rows_of(batch, self.columns))

    def score(self, rows: list[Row]) -> list[StepVerdict]:
        """The one call that scores a batch of samples (math and code by their rule verifiers)."""
        verdicts: list[StepVerdict | None] = [None] * len(rows)
        math_rows = [i for i, r in enumerate(rows) if r["task_type"] in MATH_TYPES and r["reference"]]
        code_rows = [i for i, r in enumerate(rows) if r["task_type"] == "code" and r["tests"]]
        for indices, verify in ((math_rows, self._verify_math), (code_rows, self._verify_code)):
            if indices:
                for i, verdict in zip(indices, verify([rows[i] for i in indices])):
                    verdicts[i] = verdict
        return [v or StepVerdict(None, "unverifiable", f"unverifiable: no rule verifier for task type "
                                 f"'{rows[i]['task_type']}' or no reference") for i, v in enumerate(verdicts)]

    # Scoring is verifiers.scoring's, shared with `factory eval` and `factory verify`:
    # the full assistant turn goes in, the same verdict comes out everywhere.
    # One verifier process per engine worker: the engine already runs one worker per core.
    def _verify_math(self, rows: list[Row]) -> list[StepVerdict]:
        from verifiers.scoring import DEFAULT_MATH_TIMEOUT_S, score_math_batch

        scores = score_math_batch([r["text"] or r["answer"] or "" for r in rows], [r["reference"] for r in rows],
                                  policy=self.params.policy, workers=1,
                                  timeout_s=self.params.timeout_s or DEFAULT_MATH_TIMEOUT_S)
        out = []
        for score in scores:
            detail = {"extracted": score.extracted, "rule": score.rule}
            if score.correct is None:
                out.append(StepVerdict(None, "unverifiable", f"unverifiable: {score.reason}", detail=detail))
            elif score.correct:
                out.append(StepVerdict(True, None, None, 1.0, detail))
            else:
                out.append(StepVerdict(False, "wrong_answer", f"wrong_answer: got {score.extracted!r}", 0.0, detail))
        return out

    def _verify_code(self, rows: list[Row]) -> list[StepVerdict]:
        from verifiers.code import SandboxUnavailable
        from verifiers.scoring import score_code_batch

        try:
            scores = score_code_batch([r["text"] or r["answer"] or "" for r in rows], [r["tests"] for r in rows],
                                      workers=1, timeout_s=self.params.code_timeout_s, memory_mb=self.params.memory_mb,
                                      unsafe_no_sandbox=self.params.unsafe_no_sandbox)
        except SandboxUnavailable as exc:
            raise FactoryError(f"filter correctness: {str(exc).splitlines()[0]} (recipe: "
                               f"`unsafe_no_sandbox: true` on the correctness step)") from None
        return [StepVerdict(True, None, None, 1.0, {"rule": s.rule}) if s.correct
                else StepVerdict(False, _code_failure(s.status),
                                 f"{_code_failure(s.status)}: {s.reason.split(': ', 1)[-1]}"[:300], s.score, {"rule": s.rule})
                for s in scores]


def _code_failure(status: str) -> str:
    return status if status == "no_code" else f"code_{status}"
