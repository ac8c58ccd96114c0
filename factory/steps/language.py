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
    detect_language,
    is_known_target,
    validate_language_params,
)


def _with_target(settings: dict[str, Any]) -> dict[str, Any]:
    # No target in the recipe: each sample is judged against its own prompt's language.
    return settings if settings.get("target") is not None else {**settings, "target": "en"}


class LanguageStep(FilterStep):
    name = "language"
    columns = ("reasoning", "answer", "language", "prompt")
    Params = params_from_config(LanguageConfig, validate_language_params, "language",
                                extra={"target": (str | None, None)}, rewrite=_with_target)

    def filter(self, batch: pa.Table) -> list[StepVerdict]:
        settings = self.params.model_dump()
        target = settings.pop("target")
        return [
            from_verifier(check_language_consistency(r["reasoning"] or "", r["answer"] or "",
                                                     target=target or row_language(r), **settings))
            for r in rows_of(batch, self.columns)
        ]


def row_language(row: dict[str, Any]) -> str:
    """The language a sample's reasoning must be in: its prompt's (stored, else detected by script);
    a prompt with no letters ("2 + 2 = ?") leaves the reasoning free to pick one, but only one."""
    stored = row["language"]
    if stored and is_known_target(stored):
        return stored
    return detect_language(row["prompt"] or "") or detect_language(row["reasoning"] or "") or "en"
