"""`format`: one well-formed reasoning block and a non-empty answer (verifiers.format)."""

from __future__ import annotations

from typing import Any, Literal

import pyarrow as pa

from factory.steps.base import (
    FilterStep,
    StepVerdict,
    from_verifier,
    params_from_config,
    rows_of,
)
from verifiers.format import FormatConfig, check_think_format, validate_format_params


def _as_verifier_style(settings: dict[str, Any]) -> dict[str, Any]:
    # "optional" is the think layout where a missing block is allowed (non-reasoning data).
    return {**settings, "style": "think"} if settings.get("style") == "optional" else settings


class FormatStep(FilterStep):
    """`<think>` format. style: think | readable (R1 cold start) | optional (non-reasoning: CoT allowed, not required)."""

    name = "format"
    columns = ("text", "finish_reason")
    Params = params_from_config(FormatConfig, validate_format_params, "format",
                                extra={"style": (Literal["think", "readable", "optional"], "think")},
                                rewrite=_as_verifier_style)

    def filter(self, batch: pa.Table) -> list[StepVerdict]:
        settings = _as_verifier_style(self.params.model_dump())
        optional = self.params.style == "optional"
        out = []
        for row in rows_of(batch, self.columns):
            text = row["text"] or ""
            if optional and "<think>" not in text and "</think>" not in text:
                out.append(_plain_answer(text, row["finish_reason"]))
                continue
            out.append(from_verifier(check_think_format(text, finish_reason=row["finish_reason"], **settings)))
        return out


def _plain_answer(text: str, finish_reason: str | None) -> StepVerdict:
    if finish_reason == "length":
        return StepVerdict(False, "truncated", "truncated: hit max_new_tokens")
    if not text.strip():
        return StepVerdict(False, "empty_answer", "empty_answer")
    return StepVerdict(True)
