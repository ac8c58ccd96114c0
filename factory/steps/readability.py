"""`readability`: no walls of text, code blocks in math, loops or overlong chains (verifiers.readability)."""

from __future__ import annotations

import pyarrow as pa

from factory.steps.base import (
    FilterStep,
    StepVerdict,
    from_verifier,
    params_from_config,
    rows_of,
)
from verifiers.readability import (
    ReadabilityConfig,
    check_readability,
    validate_readability_params,
)


class ReadabilityStep(FilterStep):
    name = "readability"
    columns = ("reasoning", "answer", "task_type", "completion_tokens")
    # task_type is each sample's own, not a setting.
    Params = params_from_config(ReadabilityConfig, validate_readability_params, "readability", exclude=("task_type",))

    def filter(self, batch: pa.Table) -> list[StepVerdict]:
        settings = self.params.model_dump()
        return [
            from_verifier(check_readability(r["reasoning"] or "", r["answer"] or "", task_type=r["task_type"],
                                            num_tokens=r["completion_tokens"], **settings))
            for r in rows_of(batch, self.columns)
        ]
