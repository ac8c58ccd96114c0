"""Read a normalized answer into its shape: a value, a tuple, a set, an interval...

Shapes decide *how* two answers are compared (in order or not, brackets or
not); :mod:`verifiers.math.compare` decides whether they are equal. Reading is
pure string work over the top level of the answer (commas, ``=``, ``\\cup``,
brackets), so it costs microseconds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Union

from verifiers.math import latex
from verifiers.math.normalize import Normalized, text_key

# Longest answer we try to read; longer "answers" are prose or garbage.
MAX_ANSWER_CHARS = 2000


@dataclass(frozen=True, slots=True)
class Expr:
    """One mathematical value. ``node`` is None when the fast parser refused it
    (``error`` says why); the symbolic path then works from ``text``."""

    text: str
    node: tuple | None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Seq:
    """Several values between brackets, or a bare comma list (``opener == ""``).

    ``(1,2)`` is a tuple or an open interval, ``[a,b)`` an interval, ``\\{…\\}``
    a set, ``1, 2`` an unordered list of solutions.
    """

    items: tuple["Answer", ...]
    opener: str
    closer: str

    @property
    def ordered(self) -> bool:
        return self.opener in ("(", "[")


@dataclass(frozen=True, slots=True)
class IntervalUnion:
    """A union of intervals (``(0,9) \\cup (9,36)``); the order of parts is free."""

    parts: tuple["Answer", ...]


@dataclass(frozen=True, slots=True)
class Matrix:
    rows: tuple[tuple["Answer", ...], ...]


@dataclass(frozen=True, slots=True)
class Equation:
    lhs: Expr
    rhs: "Answer"


@dataclass(frozen=True, slots=True)
class Text:
    """A word answer (``\\text{Evelyn}``, ``east``); compared by :func:`text_key`."""

    key: str


@dataclass(frozen=True, slots=True)
class Choice:
    """A multiple-choice letter, ``(C)``."""

    letter: str


Answer = Union[Expr, Seq, IntervalUnion, Matrix, Equation, Text, Choice]

_CHOICE = re.compile(r"\(?([A-E])\)?|\(([a-e])\)")
_CHOICE_PREFIX = re.compile(r"\(?([A-E])(?:\)|(?=[\s.:]|$))")
_WORDS = re.compile(r"[A-Za-z][A-Za-z '\-]*")
_MATRIX = re.compile(
    r"\\begin\{([pbBvV]?matrix|array)\}(?:\{[^{}]*\})?(.*)\\end\{\1\}", re.DOTALL
)
_BASE_NUMBER = re.compile(r"([0-9A-Za-z]+)_\{?(\d+)\}?")
_MEMBERSHIP = re.compile(r"^[A-Za-z]\s*\\in\s*")
_RELATIONS = ("\\le", "\\ge", "<", ">")
_OPENERS = {"(": ")", "[": "]", "{": "}"}


def read(normalized: Normalized) -> Answer | None:
    """The shape of a normalized answer, or None when it is empty or too long."""
    text = normalized.text
    if not text or len(text) > MAX_ANSWER_CHARS:
        return None
    return read_text(text)


def read_text(text: str) -> Answer:
    text = text.strip()
    if not text:
        # An empty part ("a \\cup", "1,,2") is malformed, not a value.
        return Expr(text, None, "syntax: empty part")
    choice = _CHOICE.fullmatch(text)
    if choice is not None:
        return Choice((choice.group(1) or choice.group(2)).upper())
    based = _BASE_NUMBER.fullmatch(text)
    if based is not None:
        # 52_8 is a numeral in base 8: its digits are the answer, not its value.
        return Text(f"{based.group(1).lower()}_{based.group(2)}")
    matrix = _MATRIX.fullmatch(text)
    if matrix is not None:
        return _read_matrix(matrix.group(2))
    text = _MEMBERSHIP.sub("", text)
    parts = split_top(text, "\\cup")
    if len(parts) > 1:
        return IntervalUnion(tuple(read_text(part) for part in parts))
    bracketed = _read_bracketed(text)
    if bracketed is not None:
        return bracketed
    items = split_top(text, ",", ";")
    if len(items) > 1:
        return Seq(tuple(_flatten(read_text(item) for item in items if item.strip())), "", "")
    sides = split_top(text, "=")
    if len(sides) > 1 and all(side.strip() for side in sides):
        return Equation(_read_expr(sides[0]), read_text(sides[-1]))
    relation = _read_relation(text)
    if relation is not None:
        return relation
    if _WORDS.fullmatch(text) and any(len(word) >= 3 for word in re.findall(r"[A-Za-z]+", text)):
        return Text(text_key(text))
    plus_minus = _expand_plus_minus(text)
    if plus_minus is not None:
        return Seq(tuple(_read_expr(variant) for variant in plus_minus), "", "")
    return _read_expr(text)


def read_choice(text: str) -> Choice | None:
    """The choice letter a response starts with (``C``, ``(C) 12``, ``C.``)."""
    match = _CHOICE_PREFIX.match(text.strip())
    return Choice(match.group(1)) if match is not None else None


def _read_expr(text: str) -> Expr:
    text = text.strip()
    try:
        return Expr(text, latex.parse(text))
    except latex.TooComplex as error:
        return Expr(text, None, f"too_complex: {error}")
    except latex.UnknownCommand as error:
        return Expr(text, None, f"unknown_command: {error}")
    except (latex.Unsupported, ValueError) as error:
        return Expr(text, None, f"syntax: {error}")


def _read_bracketed(text: str) -> Answer | None:
    """``(a, b)``, ``[a, b)``, ``\\{a, b\\}`` spanning the whole text, else None."""
    if text.startswith("\\{") and text.endswith("\\}"):
        opener, inner, closer = "{", text[2:-2], "}"
        if _close_of(text, 1) != len(text) - 1:
            return None
    elif text[:1] in "([" and text[-1:] in ")]":
        if _close_of(text, 0) != len(text) - 1:
            return None
        opener, inner, closer = text[0], text[1:-1], text[-1]
    else:
        return None
    items = split_top(inner, ",", ";")
    if opener != "{" and len(items) == 1:
        return read_text(inner) if opener + closer in ("()", "[]") else None
    read_items = tuple(read_text(item) for item in items if item.strip())
    if opener == "{":
        read_items = tuple(_flatten(read_items))
    return Seq(read_items, opener, closer)


def _close_of(text: str, start: int) -> int:
    """Index of the bracket closing the one at ``start`` (any bracket kind), -1 if none."""
    depth = 0
    for index in range(start, len(text)):
        char = text[index]
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
            if depth == 0:
                return index
    return -1


def split_top(text: str, *separators: str) -> list[str]:
    """Split ``text`` at ``separators`` outside all brackets and ``\\begin…\\end``."""
    parts: list[str] = []
    depth = 0
    start = 0
    index = 0
    length = len(text)
    while index < length:
        char = text[index]
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif depth == 0:
            for separator in separators:
                if text.startswith(separator, index) and not _inside_command(text, index, separator):
                    parts.append(text[start:index])
                    index += len(separator)
                    start = index
                    break
            else:
                index += 1
                continue
            continue
        index += 1
    parts.append(text[start:])
    return parts


def _inside_command(text: str, index: int, separator: str) -> bool:
    """``\\cup`` must not match inside ``\\cupcake``; ``=`` must not be part of ``\\le=``."""
    if separator[0] == "\\":
        end = index + len(separator)
        return end < len(text) and text[end].isalpha()
    return False


def _flatten(items) -> list[Answer]:
    """Sets of ``\\pm`` pairs join their parent set: ``\\{1\\pm\\sqrt5, -2\\}`` has 3 items."""
    flat: list[Answer] = []
    for item in items:
        if isinstance(item, Seq) and item.opener == "":
            flat.extend(item.items)
        else:
            flat.append(item)
    return flat


def _expand_plus_minus(text: str) -> list[str] | None:
    if "\\pm" not in text and "\\mp" not in text:
        return None
    variants = [text]
    for _ in range(2):
        expanded = []
        for variant in variants:
            match = re.search(r"\\(pm|mp)(?![a-zA-Z])", variant)
            if match is None:
                expanded.append(variant)
                continue
            first, second = ("+", "-") if match.group(1) == "pm" else ("-", "+")
            expanded.append(variant[: match.start()] + first + variant[match.end() :])
            expanded.append(variant[: match.start()] + second + variant[match.end() :])
        variants = expanded
    return variants


def _read_matrix(body: str) -> Answer:
    rows = [row for row in re.split(r"\\\\", body) if row.strip()]
    return Matrix(tuple(tuple(read_text(cell) for cell in row.split("&")) for row in rows))


def _read_relation(text: str) -> Answer | None:
    """``x > 3`` → ``(3, \\infty)``; ``-2 \\le x \\le 7`` → ``[-2, 7]``."""
    parts: list[str] = []
    operators: list[str] = []
    rest = text
    while True:
        found = [(rest.find(op), op) for op in _RELATIONS if rest.find(op) >= 0]
        if not found:
            parts.append(rest)
            break
        position, operator = min(found)
        if operator in ("<", ">") and rest.startswith("=", position + 1):
            operator += "="
        parts.append(rest[:position])
        operators.append(operator)
        rest = rest[position + len(operator) :]
    if not operators or len(operators) > 2:
        return None
    parts = [part.strip() for part in parts]
    if not all(parts):
        return None
    lower_inf, upper_inf = "-\\infty", "\\infty"
    if len(operators) == 1:
        left, right = parts
        operator = operators[0]
        if re.fullmatch(r"[A-Za-z]", right):
            left, right, operator = right, left, _flip(operator)
        if not re.fullmatch(r"[A-Za-z]", left):
            return None
        if operator in ("<", "<=", "\\le"):
            return Seq((_read_expr(lower_inf), _read_expr(right)), "(", "]" if operator != "<" else ")")
        return Seq((_read_expr(right), _read_expr(upper_inf)), "[" if operator != ">" else "(", ")")
    low, variable, high = parts
    if not re.fullmatch(r"[A-Za-z]", variable):
        return None
    if all(op in ("<", "<=", "\\le") for op in operators):
        opener = "(" if operators[0] == "<" else "["
        closer = ")" if operators[1] == "<" else "]"
        return Seq((_read_expr(low), _read_expr(high)), opener, closer)
    if all(op in (">", ">=", "\\ge") for op in operators):
        opener = "(" if operators[1] == ">" else "["
        closer = ")" if operators[0] == ">" else "]"
        return Seq((_read_expr(high), _read_expr(low)), opener, closer)
    return None


def _flip(operator: str) -> str:
    return {"<": ">", ">": "<", "<=": ">=", ">=": "<=", "\\le": "\\ge", "\\ge": "\\le"}[operator]
