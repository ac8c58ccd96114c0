"""``verify(gold, response)``: extraction, clean-up, then the cheapest comparison that decides.

1. find the final answer (:mod:`verifiers.math.extract`, linear in the response);
2. normalize both sides; identical canonical strings are equal (no parsing);
3. read both shapes and compare values (:mod:`verifiers.math.compare`), which
   asks sympy only for LaTeX the fast parser refuses.

Reason codes (the text before ``": "``): ``equal_string``, ``equal_value``,
``equal_symbolic``, ``choice``, ``text``, ``not_equal``, ``no_answer``,
``empty_answer``, ``unparsable``, ``unparsable_gold``, ``too_complex``,
``undecided``; :func:`verify_batch` adds ``timeout`` and ``worker_error``.

Pure functions: safe to call from any thread. Work is bounded by input size,
not by a clock; use :func:`verifiers.math.verify_batch` for a hard timeout.
"""

from __future__ import annotations

from functools import lru_cache

from verifiers.math import compare, structure
from verifiers.math.extract import find_answer
from verifiers.math.normalize import Normalized, normalize
from verifiers.math.structure import Answer
from verifiers.math.verdict import MathVerdict

# Gold answers repeat (several samples per prompt): reading one is cached.
GOLD_CACHE_SIZE = 8192

_REASON_FOR_HOW = {
    "unparsable": "unparsable",
    "too_complex": "too_complex",
    "undecided": "undecided",
}


def verify(gold: str, response: str) -> MathVerdict:
    """Whether ``response`` reaches the reference answer ``gold``.

    ``correct`` is True/False when decided, None when no answer was found or
    the answers could not be compared (see the module docstring for reasons).
    """
    if not isinstance(gold, str) or not isinstance(response, str):
        raise TypeError(f"gold, response: expected str, got {type(gold).__name__}, {type(response).__name__}")
    found = find_answer(response)
    if found is None:
        return MathVerdict(None, None, "no_answer")
    if not found.answer:
        return MathVerdict(False, "", f"empty_answer: empty {found.source}")
    return compare_answers(gold, found.answer)


def compare_answers(gold: str, extracted: str) -> MathVerdict:
    """Compare an already extracted answer with the gold answer."""
    gold_normalized, gold_shape = _read_gold(gold)
    if gold_shape is None:
        return MathVerdict(None, extracted, "unparsable_gold")
    answer_normalized = normalize(extracted)
    if answer_normalized.canonical == gold_normalized.canonical:
        # "25" for "25\%" counts: the question asked for a percentage.
        return MathVerdict(True, extracted, "equal_string")
    answer_shape = _read_answer(answer_normalized, gold_shape)
    if answer_shape is None:
        return MathVerdict(None, extracted, "unparsable: answer is empty or too long")
    decision = compare.equivalent(gold_shape, answer_shape, gold_normalized.percent, answer_normalized.percent)
    if decision.equal is None:
        return MathVerdict(None, extracted, _REASON_FOR_HOW.get(decision.how, decision.how))
    return MathVerdict(decision.equal, extracted, decision.how)


def _read_answer(normalized: Normalized, gold_shape: Answer) -> Answer | None:
    if isinstance(gold_shape, structure.Choice):
        # A response may say "(C) 12" or "C." for choice C.
        choice = structure.read_choice(normalized.text)
        if choice is not None:
            return choice
    return structure.read(normalized)


@lru_cache(maxsize=GOLD_CACHE_SIZE)
def _read_gold(gold: str) -> tuple[Normalized, Answer | None]:
    normalized = normalize(gold)
    return normalized, structure.read(normalized)
