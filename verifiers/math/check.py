"""``verify(gold, response)``: extraction, clean-up, then the cheapest comparison that decides.

1. find the final answer (:mod:`verifiers.math.extract`, linear in the response);
2. normalize both sides; identical canonical strings are equal (no parsing);
3. read both shapes and compare values (:mod:`verifiers.math.compare`), which
   asks sympy only for LaTeX the fast parser refuses.

Reason codes (the text before ``": "``): ``equal_string``, ``equal_value``,
``equal_symbolic``, ``choice``, ``text``, ``not_equal``, ``no_answer``,
``empty_answer``, ``unparsable``, ``unparsable_gold``, ``too_complex``,
``undecided``, ``error`` (a bug or bad input: ``verify`` never raises);
:func:`verify_batch` adds ``timeout`` and ``worker_error``. ``rule`` on the
verdict names the extraction rule that found the answer.

Policies: ``strict`` (the default; only an explicit answer form counts, as in
R1-style rejection sampling where the format is part of the reward) and
``lenient`` (adds the last-number / last-math-span fallback of free-form graders).

Answer sets: when the gold is a set or list of several values and the last
``\\boxed{}`` alone does not match, the last boxes of the final section taken
together are compared as the set (rule ``boxed_set``).

Decimal comma vs thousands separator, decided from the digits: a comma followed
by exactly three digits groups thousands (``1,000`` and ``12,345,678``); a single
comma followed by one, two, or four and more digits is a decimal comma (``1,22``
is 1.22, ``3,14159`` is 3.14159); ``1.234,5`` is 1234.5. The decimal-comma reading
is tried for an answer compared with a single number, and for a gold only when
the answer is a number with a decimal point (a gold ``1,2`` is otherwise the list
1, 2). A leading ``0,`` is never thousands (``0,111`` is 0.111).

Pure functions: safe to call from any thread. Work is bounded by input size,
not by a clock; use :func:`verifiers.math.verify_batch` for a hard timeout.
"""

from __future__ import annotations

import logging
import re
from functools import lru_cache

from verifiers.math import compare, structure
from verifiers.math.extract import boxed_answers, final_section_start, find_answer, lenient_answer
from verifiers.math.normalize import Normalized, canonical, normalize
from verifiers.math.structure import Answer
from verifiers.math.verdict import MathVerdict

logger = logging.getLogger(__name__)

POLICIES = ("strict", "lenient")
_COMMA_NUMBER = re.compile(r"([-+]?\d+),(\d+)")
_DOTTED_THOUSANDS_DECIMAL_COMMA = re.compile(r"([-+]?\d{1,3}(?:\.\d{3})+),(\d+)")
_DECIMAL_POINT_NUMBER = re.compile(r"[-+]?\d*\.\d+")

# Gold answers repeat (several samples per prompt): reading one is cached.
GOLD_CACHE_SIZE = 8192

_REASON_FOR_HOW = {
    "unparsable": "unparsable",
    "too_complex": "too_complex",
    "undecided": "undecided",
}


def verify(gold: str, response: str, *, policy: str = "strict") -> MathVerdict:
    """Whether ``response`` reaches the reference answer ``gold``.

    ``correct`` is True/False when decided, None when no answer was found or
    the answers could not be compared (see the module docstring for reasons).
    Never raises: bad input or an internal failure is ``code == "error"``.
    """
    if not isinstance(gold, str) or not isinstance(response, str):
        return MathVerdict(None, None, f"error: gold, response: expected str, got "
                                       f"{type(gold).__name__}, {type(response).__name__}")
    if policy not in POLICIES:
        return MathVerdict(None, None, f"error: policy: expected one of {', '.join(POLICIES)}, got {policy!r}")
    rule = None
    try:
        found = find_answer(response, policy)
        if found is None:
            return MathVerdict(None, None, "no_answer")
        rule = found.source
        if not found.answer:
            return MathVerdict(False, "", f"empty_answer: empty {found.source}", rule)
        verdict = _with_rule(compare_answers(gold, found.answer), rule)
        if verdict.correct is not True and rule == "boxed":
            return _boxed_set(gold, response) or verdict
        if verdict.correct is not True and rule == "final_line" and policy == "lenient":
            # The final line is the weakest strict rule; a lenient grader reads its number.
            fallback = lenient_answer(response)
            if fallback is not None and fallback.answer and fallback.answer != found.answer:
                return _with_rule(compare_answers(gold, fallback.answer), fallback.source)
        return verdict
    except Exception as error:  # a bug must become a verdict, never a crash of the caller
        logger.debug("math verify failed on gold %r", gold[:200], exc_info=True)
        return MathVerdict(None, None, f"error: {type(error).__name__}: {str(error)[:200]}", rule)


def _with_rule(verdict: MathVerdict, rule: str) -> MathVerdict:
    return MathVerdict(verdict.correct, verdict.extracted, verdict.reason, rule)


def _boxed_set(gold: str, response: str) -> MathVerdict | None:
    """Several ``\\boxed{}`` answers that together are the gold set (rule ``boxed_set``)."""
    _, gold_shape = _read_gold(gold)
    size = _set_size(gold_shape)
    if size < 2:
        return None
    boxes = boxed_answers(response, final_section_start(response), len(response), limit=size)
    if len(boxes) != size or not all(boxes):
        return None
    verdict = compare_answers(gold, ", ".join(boxes))
    return _with_rule(verdict, "boxed_set") if verdict.correct else None


def _set_size(shape: Answer | None) -> int:
    if isinstance(shape, structure.Seq) and not shape.ordered:
        return len(shape.items)
    if isinstance(shape, structure.IntervalUnion):
        return len(shape.parts)
    return 0


def compare_answers(gold: str, extracted: str) -> MathVerdict:
    """Compare an already extracted answer with the gold answer."""
    gold_normalized, gold_shape = _read_gold(gold)
    if gold_shape is None:
        return MathVerdict(None, extracted, "unparsable_gold")
    answer_normalized = normalize(extracted)
    if answer_normalized.canonical == gold_normalized.canonical:
        # "25" for "25\%" counts: the question asked for a percentage.
        return MathVerdict(True, extracted, "equal_string")
    if isinstance(gold_shape, structure.Expr):
        answer_normalized = _decimal_comma(answer_normalized)
    answer_shape = _read_answer(answer_normalized, gold_shape)
    if answer_shape is None:
        return MathVerdict(None, extracted, "unparsable: answer is empty or too long")
    decision = compare.equivalent(gold_shape, answer_shape, gold_normalized.percent, answer_normalized.percent)
    if decision.equal is not True and _DECIMAL_POINT_NUMBER.fullmatch(answer_normalized.text):
        # A gold written with a decimal comma ("1,22") against an answer with a decimal point.
        gold_reading = decimal_comma_reading(gold_normalized.text)
        if gold_reading is not None:
            return compare_answers(gold_reading, extracted)
    if decision.equal is None:
        return MathVerdict(None, extracted, _REASON_FOR_HOW.get(decision.how, decision.how))
    return MathVerdict(decision.equal, extracted, decision.how)


def decimal_comma_reading(text: str) -> str | None:
    """``text`` with its comma read as a decimal comma, or None when the digits say it is
    not one (see the module docstring): ``1,22`` → ``1.22``, ``0,111`` → ``0.111``,
    ``1.234,5`` → ``1234.5``; ``1,000`` → None."""
    match = _COMMA_NUMBER.fullmatch(text)
    if match is not None:
        whole, fraction = match.groups()
        if len(fraction) == 3 and whole.lstrip("+-") != "0":
            return None  # thousands
        return f"{whole}.{fraction}"
    match = _DOTTED_THOUSANDS_DECIMAL_COMMA.fullmatch(text)
    if match is not None:
        return f"{match.group(1).replace('.', '')}.{match.group(2)}"
    return None


def _decimal_comma(answer: Normalized) -> Normalized:
    reading = decimal_comma_reading(answer.text)
    if reading is None:
        return answer
    return Normalized(reading, canonical(reading), answer.percent)


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
