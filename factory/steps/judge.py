"""`judge`: the V3 role as LLM-as-judge, for samples no rule verifier could decide."""

from __future__ import annotations

from typing import Any, Literal

import pyarrow as pa
from pydantic import Field, ValidationError, field_validator

from factory.recipe import TeacherConfig
from factory.steps.base import FilterStep, StepParams, StepVerdict, rows_of


class JudgeParams(StepParams):
    teacher: dict[str, Any] = Field(default_factory=dict)   # a v3 teacher config (backend, model, …)
    applies_to: Literal["unverified", "all"] = "unverified"  # all = also re-judge rule-verified samples
    min_score: float = 6                                     # pass at or above this 0-10 score
    max_new_tokens: int = 128

    @field_validator("applies_to", mode="before")
    @classmethod
    def _applies_to(cls, value: Any) -> Any:
        if value not in ("unverified", "all"):
            raise ValueError(f"expected 'unverified' or 'all', got {value!r}")
        return value

    @field_validator("min_score", mode="before")
    @classmethod
    def _score(cls, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 10:
            raise ValueError(f"expected a number in [0, 10], got {value!r}")
        return value

    @field_validator("max_new_tokens", mode="before")
    @classmethod
    def _tokens(cls, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"expected an integer >= 1, got {value!r}")
        return value

    @field_validator("teacher", mode="after")
    @classmethod
    def _teacher(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            TeacherConfig.model_validate({"role": "v3", **value})
        except ValidationError as exc:  # pydantic's message is multi-line; keep the first error
            first = str(exc).splitlines()[1:3]
            raise ValueError(" ".join(s.strip() for s in first)) from None
        return value


class JudgeStep(FilterStep):
    name = "judge"
    Params = JudgeParams
    columns = ("prompt", "text", "reference")
    resolves_unverified = True
    in_process = True  # one teacher (a model or a server) per run, not one per worker

    def only_unverified(self) -> bool:
        return self.params.applies_to == "unverified"

    def filter(self, batch: pa.Table) -> list[StepVerdict]:
        from factory.teachers import GenerationRequest, build_teacher
        from verifiers.judge import build_judge_messages, parse_judge_output

        rows = rows_of(batch, ["sample_id", *self.columns])
        teacher = build_teacher(TeacherConfig.model_validate({"role": "v3", **self.params.teacher}))
        try:
            teacher.check()
            completions = teacher.generate([
                GenerationRequest(key=r["sample_id"], group=r["sample_id"],
                                  messages=build_judge_messages(r["prompt"] or "", r["text"] or "", r["reference"]),
                                  temperature=0.0, top_p=1.0, max_new_tokens=self.params.max_new_tokens, seed=0)
                for r in rows
            ])
        finally:
            teacher.close()
        out = []
        for completion in completions:
            if completion.finish_reason == "error":
                out.append(StepVerdict(None, "judge_error", f"judge_error: {completion.error}"))
                continue
            verdict = parse_judge_output(completion.text)
            if verdict.correct is None and verdict.score is None:
                out.append(StepVerdict(None, "unparsable_judge_output", verdict.reason, detail={"judge": completion.text[:500]}))
                continue
            passed = bool(verdict.correct) if verdict.correct is not None else verdict.score >= self.params.min_score
            if verdict.score is not None and verdict.correct is not None:
                passed = verdict.correct and verdict.score >= self.params.min_score
            out.append(StepVerdict(passed, None if passed else "judge_rejected",
                                   None if passed else f"judge_rejected: {verdict.explanation or verdict.reason}",
                                   verdict.score, {"judge": completion.text[:500]}))
        return out
