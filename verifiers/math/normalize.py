"""String-level clean-up of answers, shared by the fast and the symbolic path.

``clean_answer`` turns an extracted answer (or a gold answer) into tidy LaTeX
that still means the same thing; ``canonical`` goes further, removing spacing,
so that two answers written the same way compare equal as strings without any
parsing.
"""

from __future__ import annotations

import re

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
    (re.compile(r"\\displaystyle(?![a-zA-Z])|\\left\.|\\right\."), ""),
    (re.compile(r"\\(?:left|right|bigg|Bigg|big|Big)[lr]?(?![a-zA-Z])"), ""),
)

_SPACING = re.compile(r"\\[,;:! ]|\\q?quad(?![a-zA-Z])|~")
_RUNS_OF_SPACE = re.compile(r"\s+")
# A space matters only between two alphanumerics (``2 3``, ``\cot x``).
_INSIGNIFICANT_SPACE = re.compile(r" (?![0-9A-Za-z])|(?<![0-9A-Za-z]) ")


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


# Unit words dropped after a quantity ("12 cm", "30 degrees", "5\text{ dollars}").
UNIT_WORDS = frozenset(
    """
    cm mm km m2 cm2 meter meters metre metres centimeter centimeters millimeter millimeters
    kilometer kilometers inch inches ft feet foot yd yard yards mile miles mi
    sq square cubic units unit
    deg degree degrees radian radians rad
    dollar dollars cent cents usd
    sec secs second seconds min mins minute minutes hr hrs hour hours day days week weeks
    month months year years
    kg g gram grams mg lb lbs pound pounds oz ounce ounces ton tons
    ml liter liters litre litres gallon gallons l
    mph kph km/h
    percent
    """.split()
)
