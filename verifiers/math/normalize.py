"""String-level clean-up of answers, shared by the fast and the symbolic path.

:func:`normalize` turns an extracted answer (or a gold answer) into tidy LaTeX
that still means the same thing: unicode mapped to LaTeX, delimiters, sizing
and spacing commands gone, ``\\dfrac`` read as ``\\frac``, units and degree
signs dropped, thousands separators removed, a percent sign recorded as a flag.
Its ``canonical`` form also drops insignificant spaces, so two answers written
the same way compare equal as strings without any parsing (the fastest path).
Everything here is a handful of regex substitutions over a short string.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from verifiers.math.extract import clean_extracted

# Unicode a model may emit instead of LaTeX; mapped before anything else looks at
# the text. Superscripts and vulgar fractions become plain LaTeX.
_UNICODE = str.maketrans(
    {
        "\u2212": "-",  # minus sign
        "\u2013": "-",  # en dash
        "\u2014": "-",  # em dash
        "\u2012": "-",
        "\ufe63": "-",
        "\uff0d": "-",
        "\u00d7": "\\times ",
        "\u22c5": "\\cdot ",
        "\u00b7": "\\cdot ",
        "\u2219": "\\cdot ",
        "\u00f7": "/",
        "\u2215": "/",
        "\u2044": "/",
        "\u03c0": "\\pi ",
        "\u221e": "\\infty ",
        "\u00b0": "^\\circ ",
        "\u2264": "\\le ",
        "\u2265": "\\ge ",
        "\u2260": "\\neq ",
        "\u00b1": "\\pm ",
        "\u2213": "\\mp ",
        "\u221a": "\\sqrt",
        "\u222a": "\\cup ",
        "\u2229": "\\cap ",
        "\u2205": "\\emptyset ",
        "\u2208": "\\in ",
        "\u00a0": " ",
        "\u2009": " ",
        "\u202f": " ",
        "\u2002": " ",
        "\u2003": " ",
        "\u200b": "",
        "\u00b2": "^2",
        "\u00b3": "^3",
        "\u00b9": "^1",
        "\u00bd": "(1/2)",
        "\u00bc": "(1/4)",
        "\u00be": "(3/4)",
        "\uff08": "(",
        "\uff09": ")",
        "\uff0c": ",",
        "\u3001": ",",
        "\u2018": "'",
        "\u2019": "'",
        "\u201c": '"',
        "\u201d": '"',
    }
)

_LATEX_REWRITES = (
    (re.compile(r"\\[dtc]frac(?![a-zA-Z])"), r"\\frac"),
    (re.compile(r"\\[dt]binom(?![a-zA-Z])"), r"\\binom"),
    # Degrees carry no value of their own: 90^\circ is 90.
    (re.compile(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ(?![a-zA-Z])|\\circ(?![a-zA-Z])|\\degree(?![a-zA-Z])"), ""),
    (re.compile(r"\\\$|\$"), ""),
    (re.compile(r"\\displaystyle(?![a-zA-Z])|\\left\.|\\right\.|\\!"), ""),
    (re.compile(r"\\(?:left|right|bigg|Bigg|big|Big)[lr]?(?![a-zA-Z])"), ""),
    (re.compile(r"\\(?:le|leq|leqslant)(?![a-zA-Z])"), r"\\le "),
    (re.compile(r"\\(?:ge|geq|geqslant)(?![a-zA-Z])"), r"\\ge "),
    (re.compile(r"\\(?:neq|ne)(?![a-zA-Z])|!="), r"\\neq "),
    # ASCII relations: ">=" must not be read as an equation with the left side "x >".
    (re.compile(r">="), r"\\ge "),
    (re.compile(r"<="), r"\\le "),
    (re.compile(r"\\lt(?![a-zA-Z])"), "<"),
    (re.compile(r"\\gt(?![a-zA-Z])"), ">"),
    (re.compile(r"\\(?:lbrace)(?![a-zA-Z])"), r"\\{"),
    (re.compile(r"\\(?:rbrace)(?![a-zA-Z])"), r"\\}"),
)

# Thousands separators MATH writes inside numbers: 10,\!080 and 10{,}080.
_LATEX_THOUSANDS = re.compile(r"(?<=\d)(?:,\\!\s*|\{,\}\s*)(?=\d{3}(?!\d))")
# Not after a backslash: "\\\\ " is a matrix row break, not a space.
_SPACING = re.compile(r"(?<!\\)\\[,;: ]|\\q?quad(?![a-zA-Z])|~")
_RUNS_OF_SPACE = re.compile(r"\s+")
# A space matters only between two alphanumerics (``2 3``, ``\cot x``).
_INSIGNIFICANT_SPACE = re.compile(r" (?![0-9A-Za-z])|(?<![0-9A-Za-z]) ")
_PERCENT = re.compile(r"\s*(?:\\%|%|\\text\{\s*(?:percent|pct)\.?\s*\}|\s+(?:percent|pct)\.?)\s*$")
_TEXT_COMMAND = re.compile(r"\\(?:text|textrm|textnormal|mbox|mathrm|textbf|mathbf|textit|emph|textsf)\s*\{([^{}]*)\}")
_UNIT_POWER = r"(?:\s*\^\s*(?:\{\s*[23]\s*\}|[23]))?"
# Possessive throughout: with plain quantifiers a word can split into any letters and the
# spaces between two groups, which backtracks exponentially on a long line of prose.
_TRAILING_WORDS = re.compile(r"(?<=[\d}\s)])\s*+((?:[A-Za-z]++\.?+\s*+(?:\^\s*+\{?+[23]\}?+\s*+)?+)++)$")
_CONNECTIVES = re.compile(r"\\text\{\s*(?:and|or|,)\s*\}|\s+(?:and|or)\s+")
# A leading group of 0 is never thousands: "0,111" is a decimal comma (verifiers.math.check).
_TOP_LEVEL_THOUSANDS = re.compile(r"[-+]?[1-9]\d{0,2}(?:,\d{3})+(?:\.\d+)?")
_SPACED_THOUSANDS = re.compile(r"[-+]?\d{1,3}(?: \d{3})+(?:\.\d+)?")


# Unit words dropped after a quantity ("12 cm", "30 degrees", "5\text{ dollars}").
UNIT_WORDS = frozenset(
    """
    cm mm km m m2 cm2 meter meters metre metres centimeter centimeters millimeter millimeters
    kilometer kilometers inch inches in ft feet foot yd yard yards mile miles mi
    sq square cubic units unit
    deg degree degrees radian radians rad
    dollar dollars cent cents usd
    sec secs second seconds s min mins minute minutes hr hrs hour hours h day days week weeks
    month months year years
    kg g gram grams mg lb lbs pound pounds oz ounce ounces ton tons
    ml liter liters litre litres gallon gallons l
    mph kph km/h
    percent people person students apples cookies eggs pages marbles
    """.split()
)


@dataclass(frozen=True, slots=True)
class Normalized:
    """An answer after clean-up.

    text:      tidy LaTeX of the value (no units, no percent sign).
    canonical: ``text`` with insignificant spacing removed, for string equality.
    percent:   whether the answer was written as a percentage.
    """

    text: str
    canonical: str
    percent: bool


def normalize(answer: str) -> Normalized:
    """Clean an answer for comparison; see the module docstring for what changes."""
    text = clean_answer(_LATEX_THOUSANDS.sub("", answer))
    text = _SPACING.sub(" ", text)
    text = _CONNECTIVES.sub(", ", text)
    percent = False
    match = _PERCENT.search(text)
    if match is not None and match.start() > 0:
        text = text[: match.start()]
        percent = True
    text = _strip_units(text)
    text = _unwrap_text_commands(text)
    text = _RUNS_OF_SPACE.sub(" ", text).strip()
    text = clean_extracted(text)
    if _TOP_LEVEL_THOUSANDS.fullmatch(text):
        text = text.replace(",", "")
    elif _SPACED_THOUSANDS.fullmatch(text):
        text = text.replace(" ", "")
    return Normalized(text, canonical(text), percent)


def clean_answer(answer: str) -> str:
    """Tidy LaTeX with the same meaning: no delimiters, unicode mapped, no ``\\left``."""
    text = answer if answer.isascii() else answer.translate(_UNICODE)
    text = clean_extracted(text)
    for pattern, replacement in _LATEX_REWRITES:
        text = pattern.sub(replacement, text)
    return clean_extracted(text)


def canonical(cleaned: str) -> str:
    """A cleaned answer with spacing removed and percent signs unified."""
    text = _SPACING.sub(" ", cleaned).replace("\\%", "%")
    text = _RUNS_OF_SPACE.sub(" ", text).strip()
    return _INSIGNIFICANT_SPACE.sub("", text)


def text_key(text: str) -> str:
    """A word answer reduced to lowercase letters and digits (``\\text{East}`` → ``east``)."""
    return "".join(char for char in _unwrap_text_commands(text).lower() if char.isalnum())


def _is_units(words: str) -> bool:
    tokens = [token.strip(".") for token in re.split(r"[\s^{}]+", words.lower()) if token.strip(".")]
    tokens = [token for token in tokens if not token.isdigit()]
    return bool(tokens) and all(token in UNIT_WORDS for token in tokens)


def _strip_units(text: str) -> str:
    """Drop ``\\text{ cm}^2`` and trailing unit words after a quantity."""
    def drop_unit(match: re.Match[str]) -> str:
        return "" if _is_units(match.group(1)) else match.group(0)

    stripped = re.sub(_TEXT_COMMAND.pattern + _UNIT_POWER, drop_unit, text).strip()
    if stripped and stripped != text:
        text = stripped
    trailing = _TRAILING_WORDS.search(text)
    if trailing is not None and trailing.start() > 0 and _is_units(trailing.group(1)):
        text = text[: trailing.start()].rstrip()
    return text


def _unwrap_text_commands(text: str) -> str:
    """``\\text{Evelyn}`` → ``Evelyn``; innermost first, so nesting unwraps too."""
    for _ in range(4):
        unwrapped = _TEXT_COMMAND.sub(lambda m: m.group(1), text)
        if unwrapped == text:
            break
        text = unwrapped
    return text
