"""`language`: the reasoning (and answer) in the prompt's language (verifiers.language)."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from factory.steps.base import (
    FilterStep,
    StepVerdict,
    from_verifier,
    params_from_config,
    rows_of,
)
from verifiers.language import (
    LanguageConfig,
    check_language_consistency,
    validate_language_params,
)


def _with_target(settings: dict[str, Any]) -> dict[str, Any]:
    # No target in the recipe: each sample is judged against its own prompt's language.
    return settings if settings.get("target") is not None else {**settings, "target": "en"}


class LanguageStep(FilterStep):
    name = "language"
    columns = ("reasoning", "answer", "language")
    Params = params_from_config(LanguageConfig, validate_language_params, "language",
                                extra={"target": (str | None, None)}, rewrite=_with_target)

    def filter(self, batch: pa.Table) -> list[StepVerdict]:
        settings = self.params.model_dump()
        target = settings.pop("target")
        return [
            from_verifier(check_language_consistency(r["reasoning"] or "", r["answer"] or "",
                                                     target=target or r["language"] or "en", **settings))
            for r in rows_of(batch, self.columns)
        ]
