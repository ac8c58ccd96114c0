"""The filter steps a recipe's `filters:` list can name. Adding a step: one file and one line below."""

from __future__ import annotations

from factory.steps.base import FilterStep, StateBudget, StepParams, StepVerdict
from factory.steps.correctness import CorrectnessStep
from factory.steps.decontam import DecontamStep
from factory.steps.dedup import DedupStep
from factory.steps.format import FormatStep
from factory.steps.judge import JudgeStep
from factory.steps.language import LanguageStep
from factory.steps.readability import ReadabilityStep

STEPS: dict[str, type[FilterStep]] = {
    cls.name: cls
    for cls in (
        FormatStep,
        LanguageStep,
        ReadabilityStep,
        CorrectnessStep,
        JudgeStep,
        DecontamStep,
        DedupStep,
    )
}

__all__ = ["STEPS", "FilterStep", "StateBudget", "StepParams", "StepVerdict"]
