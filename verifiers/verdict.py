"""The one result type every rule check returns.

A check never raises on bad *data*: it returns a failed ``Verdict`` whose
``reason`` starts with a short, stable, machine-friendly code (``truncated``,
``mixed_language``, ...), optionally followed by ``": "`` and a human detail.
Filter stages count rejections by ``verdict.code`` and show ``reason`` to people.
Bad *configuration* is different: it raises ``ValueError`` from ``validate()``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping


@dataclass(frozen=True, slots=True)
class Verdict:
    """Outcome of one check on one sample.

    passed:  whether the sample survives this check.
    reason:  None when passed; else ``"<code>"`` or ``"<code>: <detail>"``.
    score:   an optional number the check measured (e.g. the target-language
             share), useful for histograms and for tuning thresholds.
    details: optional extra measurements; treat as read-only.
    """

    passed: bool
    reason: str | None = None
    score: float | None = None
    details: dict[str, Any] | None = None

    @property
    def code(self) -> str | None:
        """The stable part of ``reason`` (text before the first ``": "``), None when passed."""
        return reason_code(self.reason)

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-ready columns for a store: passed, code, reason, score (details dropped:
        they are for people debugging one sample, not for tables)."""
        return {"passed": self.passed, "code": self.code, "reason": self.reason, "score": self.score}


def reason_code(reason: str | None) -> str | None:
    """``"mixed_language: reasoning …"`` → ``"mixed_language"``; None stays None."""
    if reason is None:
        return None
    return reason.split(":", 1)[0].strip()


def fail(code: str, detail: str | None = None, *, score: float | None = None,
         details: dict[str, Any] | None = None) -> Verdict:
    """A rejection with reason ``code`` or ``"code: detail"``."""
    return Verdict(False, f"{code}: {detail}" if detail else code, score, details)


def ok(score: float | None = None, details: dict[str, Any] | None = None) -> Verdict:
    """An acceptance; reuses one shared object when there is nothing to report."""
    if score is None and details is None:
        return PASS
    return Verdict(True, None, score, details)


# Shared immutable acceptance: cheap to create and pickles once per batch.
PASS = Verdict(True)


def check_known_options(params: Mapping[str, Any], config_cls: type, what: str) -> None:
    """Raise ``ValueError("<option>: expected one of the <what> options (…)")`` for the
    first option that is not a field of the dataclass ``config_cls``."""
    known = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(f"{unknown[0]}: expected one of the {what} options "
                         f"({', '.join(sorted(known))}), got an unknown option")


def check_range(name: str, value: float | int | None, lo: float, hi: float | None = None, *,
                 allow_none: bool = False, integer: bool = False) -> None:
    """Config validation helper shared by the check modules.

    Raises ``ValueError("<name>: expected …, got …")`` unless lo <= value (<= hi).
    """
    if value is None:
        if allow_none:
            return
        raise ValueError(f"{name}: expected a number, got None")
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        kind = "an integer" if integer else "a number"
        raise ValueError(f"{name}: expected {kind}, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        bound = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ValueError(f"{name}: expected {bound}, got {value!r}")
