"""Are two read answers the same? Shapes first, then values.

Values are compared by evaluation (:mod:`verifiers.math.latex`): exactly when
both sides are rational, to 1e-10 relative when an irrational operation is
involved, and at several fixed points when the answer has letters (two
expressions that agree at four unrelated rational points are taken as the same
polynomial or rational function). A decimal is the exact rational it writes:
``0.5`` equals ``\\frac12`` but ``1.414`` is not ``\\sqrt2``, because a
competition answer must be exact.

Only when the fast parser refuses one side does :mod:`verifiers.math.symbolic`
ask sympy.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable

from verifiers.math import latex, symbolic
from verifiers.math.structure import Answer, Choice, Equation, Expr, Matrix, Seq, Text, IntervalUnion

# Relative tolerance for values that went through floating point.
RELATIVE_TOLERANCE = 1e-10
# A rational matched against a float value must be "nice": a long decimal that
# happens to agree with sqrt(2) to ten digits is an approximation, not the answer.
MAX_APPROXIMATED_DENOMINATOR = 10**6
# Rational points at which expressions with letters are compared; unrelated,
# non-special values so that distinct answers almost never agree at all of them.
SAMPLE_POINTS = (Fraction(7, 3), Fraction(-5, 11), Fraction(13, 17), Fraction(29, 5))
SYMBOL_SHIFT = Fraction(3, 13)
MIN_GOOD_POINTS = 2


@dataclass(frozen=True, slots=True)
class Decision:
    """``equal`` is None when the comparison could not be decided; ``how`` names the path."""

    equal: bool | None
    how: str


EQUAL = Decision(True, "equal_value")
NOT_EQUAL = Decision(False, "not_equal")


def equivalent(gold: Answer, answer: Answer, gold_percent: bool = False, answer_percent: bool = False) -> Decision:
    """Whether ``answer`` states the same thing as ``gold``."""
    if isinstance(gold, Expr) and isinstance(answer, Expr):
        return _expr_percent(gold, answer, gold_percent, answer_percent)
    return _same(gold, answer)


def _same(gold: Answer, answer: Answer) -> Decision:
    if isinstance(gold, Choice):
        return Decision(isinstance(answer, Choice) and answer.letter == gold.letter, "choice")
    if isinstance(gold, Text) or isinstance(answer, Text):
        return Decision(_text(gold) == _text(answer), "text")
    if isinstance(answer, Equation) and not isinstance(gold, Equation):
        # "x = 5", "(x, y) = (5, 8)", and a worked chain "3! \\times 5! = 720": the last
        # right-hand side is the value stated. Not "x^2 - 4 = 0" for 0: that is an equation.
        if _is_variable(answer.lhs) or _is_constant(answer.lhs):
            return _same(gold, answer.rhs)
        return NOT_EQUAL
    if isinstance(gold, Equation):
        return _equation(gold, answer)
    if isinstance(gold, Expr):
        if isinstance(answer, Expr):
            return _expr(gold, answer)
        if isinstance(answer, Seq) and len(answer.items) == 1 and answer.opener in ("{", ""):
            return _same(gold, answer.items[0])
        return NOT_EQUAL
    if isinstance(gold, Seq):
        return _sequence(gold, answer)
    if isinstance(gold, Matrix):
        return _matrix(gold, answer)
    if isinstance(gold, IntervalUnion):
        if isinstance(answer, IntervalUnion):
            return _unordered(gold.parts, answer.parts)
        return NOT_EQUAL
    return NOT_EQUAL


def _text(answer: Answer) -> str | None:
    if isinstance(answer, Text):
        return answer.key
    if isinstance(answer, Expr):
        return "".join(char for char in answer.text.lower() if char.isalnum())
    if isinstance(answer, Choice):
        return answer.letter.lower()
    return None


# A left side that names a tuple of unknowns: "(x, y)", "(a,b,c)", "(x_1, \\theta)".
_NAME = r"(?:[A-Za-z]|\\[a-zA-Z]+)(?:_\{?\w+\}?)?'*"
_NAME_TUPLE = re.compile(r"[(\[]\s*%s(?:\s*,\s*%s)+\s*[)\]]" % (_NAME, _NAME))


def _is_variable(expr: Expr) -> bool:
    """``x``, ``y_1``, ``\\theta``, ``f(x)``, ``(x, y)``: a left side that only names the answer."""
    node = expr.node
    if node is None:
        return _NAME_TUPLE.fullmatch(expr.text.strip()) is not None
    if node[0] == "sym":
        return True
    return node[0] == "mul" and node[1][0] == "sym" and node[2][0] == "sym"


def _is_constant(expr: Expr) -> bool:
    """A left side with no letters: the start of a worked chain such as ``3! \\times 5! = 720``."""
    return expr.node is not None and not latex.symbols(expr.node)


def _equation(gold: Equation, answer: Answer) -> Decision:
    if isinstance(answer, Equation):
        if (
            isinstance(gold.rhs, Expr) and isinstance(answer.rhs, Expr)
            and gold.lhs.node is not None and answer.lhs.node is not None
            and gold.rhs.node is not None and answer.rhs.node is not None
        ):
            if gold.lhs.node == answer.lhs.node and _is_variable(gold.lhs):
                return _same(gold.rhs, answer.rhs)
            return _proportional(_difference(gold), _difference(answer))
        if gold.lhs.node == answer.lhs.node:
            return _same(gold.rhs, answer.rhs)
        return NOT_EQUAL
    if _is_variable(gold.lhs) and not (isinstance(answer, Expr) and answer.node == gold.lhs.node):
        return _same(gold.rhs, answer)
    return NOT_EQUAL


def _difference(equation: Equation) -> tuple:
    return ("add", equation.lhs.node, ("neg", equation.rhs.node))  # type: ignore[union-attr]


def _sequence(gold: Seq, answer: Answer) -> Decision:
    if isinstance(answer, Matrix):
        return _matrix_as_vector(answer, gold)
    if not isinstance(answer, Seq):
        if len(gold.items) == 1 and not gold.ordered:
            return _same(gold.items[0], answer)
        return NOT_EQUAL
    if len(gold.items) != len(answer.items):
        return NOT_EQUAL
    if gold.ordered:
        if answer.opener == "":
            # "1, 2" for the point (1, 2): accepted in order; never for an interval.
            if (gold.opener, gold.closer) != ("(", ")"):
                return NOT_EQUAL
        elif not _brackets_match(gold, answer):
            return NOT_EQUAL
        return _in_order(gold.items, answer.items)
    if answer.ordered and answer.opener + answer.closer != "()":
        return NOT_EQUAL
    return _unordered(gold.items, answer.items)


def _brackets_match(gold: Seq, answer: Seq) -> bool:
    """Brackets must agree, except beside an infinite endpoint where they carry no meaning."""
    if not answer.ordered:
        return False
    if gold.opener != answer.opener and not _is_infinite(gold.items[0]):
        return False
    if gold.closer != answer.closer and not _is_infinite(gold.items[-1]):
        return False
    return True


def _is_infinite(item: Answer) -> bool:
    return isinstance(item, Expr) and item.node is not None and latex.is_infinity(item.node) != 0


def _in_order(gold: tuple[Answer, ...], answer: tuple[Answer, ...]) -> Decision:
    for gold_item, answer_item in zip(gold, answer):
        decision = _same(gold_item, answer_item)
        if decision.equal is not True:
            return decision
    return EQUAL


def _unordered(gold: tuple[Answer, ...], answer: tuple[Answer, ...]) -> Decision:
    """Match every gold item to a distinct answer item (greedy; items are few)."""
    if len(gold) != len(answer):
        return NOT_EQUAL
    unused = list(answer)
    undecided = False
    for gold_item in gold:
        for index, answer_item in enumerate(unused):
            decision = _same(gold_item, answer_item)
            if decision.equal:
                del unused[index]
                break
            undecided = undecided or decision.equal is None
        else:
            return Decision(None, "undecided") if undecided else NOT_EQUAL
    return EQUAL


def _matrix(gold: Matrix, answer: Answer) -> Decision:
    if isinstance(answer, Matrix):
        if len(gold.rows) != len(answer.rows) or any(
            len(g) != len(a) for g, a in zip(gold.rows, answer.rows)
        ):
            return NOT_EQUAL
        return _in_order(
            tuple(cell for row in gold.rows for cell in row),
            tuple(cell for row in answer.rows for cell in row),
        )
    if isinstance(answer, Seq):
        return _matrix_as_vector(gold, answer)
    return NOT_EQUAL


def _matrix_as_vector(matrix: Matrix, sequence: Seq) -> Decision:
    """A column or row vector written as a tuple ``(1, 2, 3)``."""
    if sequence.opener not in ("(", "") or not (
        len(matrix.rows) == 1 or all(len(row) == 1 for row in matrix.rows)
    ):
        return NOT_EQUAL
    cells = tuple(cell for row in matrix.rows for cell in row)
    if len(cells) != len(sequence.items):
        return NOT_EQUAL
    return _in_order(cells, sequence.items)


# -- values ---------------------------------------------------------------

def _expr_percent(gold: Expr, answer: Expr, gold_percent: bool, answer_percent: bool) -> Decision:
    decision = _expr(gold, answer)
    if decision.equal or gold_percent == answer_percent:
        return decision
    # 25% may be written 0.25 and the other way round.
    scaled_gold = _scaled(gold, Fraction(1, 100) if gold_percent else Fraction(100))
    if scaled_gold is None:
        return decision
    return _expr(scaled_gold, answer)


def _scaled(expr: Expr, factor: Fraction) -> Expr | None:
    if expr.node is None:
        return None
    return Expr(expr.text, ("mul", expr.node, ("num", factor)))


def _expr(gold: Expr, answer: Expr) -> Decision:
    if gold.node is None or answer.node is None:
        errors = (gold.error or "", answer.error or "")
        if any(error.startswith("too_complex") for error in errors):
            return Decision(None, "too_complex")
        if any(error.startswith("syntax") for error in errors):
            # Malformed text is no answer; sympy would guess ("1 2" -> 3).
            return Decision(None, "unparsable")
        equal = symbolic.equal(gold.text, answer.text)
        return Decision(equal, "equal_symbolic" if equal else ("not_equal" if equal is False else "unparsable"))
    try:
        return _values(gold.node, answer.node)
    except latex.TooComplex:
        return Decision(None, "too_complex")
    except latex.Unsupported:
        return Decision(None, "unparsable")


def _values(gold: tuple, answer: tuple) -> Decision:
    names = latex.symbols(gold) | latex.symbols(answer)
    if not names:
        try:
            gold_value = latex.evaluate(gold)
        except latex.TooComplex:
            raise
        except (ZeroDivisionError, ValueError, OverflowError):
            return Decision(None, "unparsable")
        try:
            answer_value = latex.evaluate(answer)
        except latex.TooComplex:
            raise
        except (ZeroDivisionError, ValueError, OverflowError):
            return NOT_EQUAL
        return EQUAL if _close(gold_value, answer_value) else NOT_EQUAL
    # Letters on either side: \sin^2 x + \cos^2 x is the constant 1.
    return _sampled(gold, answer, sorted(names), _close_at_point)


def _proportional(gold: tuple, answer: tuple) -> Decision:
    """Equations are the same when ``lhs - rhs`` sides are proportional (``2x=4`` ~ ``x-2=0``)."""
    names = sorted(latex.symbols(gold))
    if set(names) != latex.symbols(answer) or not names:
        return NOT_EQUAL
    ratios: list[complex] = []

    def same_ratio(gold_value: latex.Value, answer_value: latex.Value) -> bool:
        if answer_value == 0:
            return gold_value == 0 or abs(complex(gold_value)) < 1e-12
        ratio = complex(gold_value / answer_value)  # type: ignore[operator]
        if ratio == 0:
            return False
        ratios.append(ratio)
        return _close(ratios[0], ratio)

    try:
        return _sampled(gold, answer, names, same_ratio)
    except latex.TooComplex:
        return Decision(None, "too_complex")


def _sampled(gold: tuple, answer: tuple, names: list[str],
             agree: Callable[[latex.Value, latex.Value], bool]) -> Decision:
    good = 0
    for point_index, point in enumerate(SAMPLE_POINTS):
        env = {name: point + SYMBOL_SHIFT * (index + point_index) * (index % 2 * 2 - 1)
               for index, name in enumerate(names)}
        try:
            gold_value = latex.evaluate(gold, env)
            answer_value = latex.evaluate(answer, env)
        except latex.TooComplex:
            float_env = {name: complex(value) for name, value in env.items()}
            try:
                gold_value = latex.evaluate(gold, float_env)
                answer_value = latex.evaluate(answer, float_env)
            except (ZeroDivisionError, ValueError, OverflowError, latex.TooComplex):
                continue
        except (ZeroDivisionError, ValueError, OverflowError):
            continue
        if not agree(gold_value, answer_value):
            return NOT_EQUAL
        good += 1
    return EQUAL if good >= MIN_GOOD_POINTS else Decision(None, "undecided")


def _close(a: latex.Value, b: latex.Value) -> bool:
    if isinstance(a, Fraction) and isinstance(b, Fraction):
        return a == b
    a_inf, b_inf = _infinite_sign(a), _infinite_sign(b)
    if a_inf or b_inf:
        return a_inf == b_inf
    if isinstance(a, Fraction) or isinstance(b, Fraction):
        exact = a if isinstance(a, Fraction) else b
        if exact.denominator > MAX_APPROXIMATED_DENOMINATOR:  # type: ignore[union-attr]
            return False
    a_c, b_c = complex(a), complex(b)
    scale = max(1.0, abs(a_c), abs(b_c))
    return abs(a_c - b_c) <= RELATIVE_TOLERANCE * scale


def _close_at_point(a: latex.Value, b: latex.Value) -> bool:
    """Like :func:`_close`, without the approximation rule: at a sample point a
    polynomial's exact value may have any denominator."""
    if isinstance(a, Fraction) and isinstance(b, Fraction):
        return a == b
    a_c, b_c = complex(a), complex(b)
    return abs(a_c - b_c) <= RELATIVE_TOLERANCE * max(1.0, abs(a_c), abs(b_c))


def _infinite_sign(value: latex.Value) -> int:
    if isinstance(value, complex) and math.isinf(value.real):
        return 1 if value.real > 0 else -1
    return 0
