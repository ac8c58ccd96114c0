"""The slow path: sympy, through latex2sympy2_extended, for LaTeX the fast parser refuses.

Reached for a small share of answers (unusual commands such as ``\\operatorname``
or ``\\sum``). sympy cannot be interrupted from another thread, so instead of a
clock this module bounds the *input*: short texts, no long digit strings, few
powers and radicals. Within those bounds parsing and a 30-digit numeric
evaluation finish in milliseconds; anything outside them is "undecided"
(``None``). :func:`verifiers.math.verify_batch` adds a hard per-item timeout
on top by running items in worker processes.

sympy is imported on first use, so workers that never need it start fast.
"""

from __future__ import annotations

import logging
import re
from fractions import Fraction

logger = logging.getLogger(__name__)

MAX_SYMBOLIC_CHARS = 300
# sympy evaluates integer arithmetic eagerly, so numbers, exponents and
# factorials are kept small enough that no evaluation can run away.
MAX_DIGIT_RUN = 6
MAX_POWERS = 4
MAX_RADICALS = 6
RELATIVE_TOLERANCE = 1e-12
SAMPLE_POINTS = (Fraction(7, 3), Fraction(-5, 11), Fraction(13, 17), Fraction(29, 5))

_DIGIT_RUN = re.compile(r"\d{%d,}" % (MAX_DIGIT_RUN + 1))
_HEAVY = re.compile(
    r"\\(?:int|sum|prod|lim|iint|oint)(?![a-zA-Z])"  # unbounded symbolic work
    r"|\^\s*\{[^{}]*\^"  # power towers: 10^{10^{10}}
    r"|\^\s*\{?\s*-?\d{4,}"  # exponents of 1000 and more
    r"|\d{4,}\s*!"  # factorials of 1000 and more
)


def within_bounds(text: str) -> bool:
    """Whether ``text`` is small and tame enough to hand to sympy."""
    return (
        len(text) <= MAX_SYMBOLIC_CHARS
        and _DIGIT_RUN.search(text) is None
        and text.count("^") <= MAX_POWERS
        and text.count("\\sqrt") <= MAX_RADICALS
        and text.count("!") <= 1
        and _HEAVY.search(text) is None
    )


def equal(gold: str, answer: str) -> bool | None:
    """sympy's opinion on ``gold == answer``; None when it cannot tell."""
    if not (within_bounds(gold) and within_bounds(answer)):
        return None
    gold_expr = to_sympy(gold)
    answer_expr = to_sympy(answer)
    if gold_expr is None or answer_expr is None:
        return None
    try:
        return _compare(gold_expr, answer_expr)
    except Exception as error:  # sympy raises many types on odd input
        logger.debug("sympy comparison failed for %r vs %r: %s", gold, answer, error)
        return None


def to_sympy(text: str):
    """The sympy object for ``text``, or None when latex2sympy2_extended cannot read it."""
    from latex2sympy2_extended import latex2sympy

    try:
        # doit() evaluates what latex2sympy leaves unevaluated (gcd, det); the
        # input bounds keep that cheap.
        return latex2sympy(text).doit()
    except Exception as error:  # the ANTLR parser raises many types
        logger.debug("latex2sympy failed on %r: %s", text, error)
        return None


def _compare(gold, answer) -> bool | None:
    import sympy

    if not (isinstance(gold, sympy.Expr) and isinstance(answer, sympy.Expr)):
        return True if gold == answer else None
    gold_symbols = {str(symbol) for symbol in gold.free_symbols}
    if gold_symbols != {str(symbol) for symbol in answer.free_symbols}:
        return False
    if not gold_symbols:
        return _numbers_close(gold, answer)
    names = sorted(gold.free_symbols, key=str)
    answer_by_name = {str(symbol): symbol for symbol in answer.free_symbols}
    good = 0
    for point_index, point in enumerate(SAMPLE_POINTS):
        values = [sympy.Rational(point.numerator, point.denominator) + sympy.Rational(3, 13) * (index + point_index)
                  for index in range(len(names))]
        gold_at = gold.subs(dict(zip(names, values)))
        answer_at = answer.subs({answer_by_name[str(name)]: value for name, value in zip(names, values)})
        verdict = _numbers_close(gold_at, answer_at)
        if verdict is False:
            return False
        if verdict:
            good += 1
    return True if good >= 2 else None


def _numbers_close(gold, answer) -> bool | None:
    try:
        gold_value = complex(gold.evalf(30))
        answer_value = complex(answer.evalf(30))
    except (TypeError, ValueError):
        return None
    if gold_value != gold_value or answer_value != answer_value:  # NaN
        return None
    scale = max(1.0, abs(gold_value), abs(answer_value))
    return abs(gold_value - answer_value) <= RELATIVE_TOLERANCE * scale
