"""The result type of a math verification."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class MathVerdict:
    """Whether a response reaches the reference answer.

    ``correct`` is ``True`` or ``False`` when the verifier could decide, and
    ``None`` when it could not (no answer found, unparsable, timed out, an
    internal ``error``), so a caller can tell "wrong" from "unknown" and drop or
    re-check the latter.
    """

    correct: bool | None
    extracted: str | None
    reason: str
    # Which extraction rule found the answer (``boxed``, ``answer_tag``, ``gsm8k``,
    # ``answer_is``, ``answer_line``, ``final_line``, ``boxed_set``; lenient only:
    # ``last_math``, ``last_number``); None when no answer was found.
    rule: str | None = None

    @property
    def code(self) -> str:
        """The stable part of ``reason`` (text before the first ``":"``), for counting."""
        return self.reason.split(":", 1)[0].strip()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
