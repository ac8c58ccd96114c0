"""A small LaTeX expression parser and evaluator: the fast value path.

Competition answers use a narrow slice of LaTeX (fractions, roots, powers,
``\\pi``, a few functions, polynomials in one or two letters). Parsing that
slice by hand and evaluating it takes microseconds, where a sympy round trip
takes milliseconds, so sympy is only asked about what this module refuses
(:class:`Unsupported`).

An expression becomes a tree of tuples (``("add", a, b)``, ``("num", q)``, ...)
that :func:`evaluate` computes at given values of its letters. Values stay
exact (:class:`fractions.Fraction`) as long as the arithmetic allows it and
become ``complex`` floats only for irrational operations, so ``0.5`` and
``\\frac12`` compare exactly and ``\\sqrt{8}`` and ``2\\sqrt2`` agree to
rounding error.

Work is bounded by the size of the input, never by a clock, which keeps the
path safe to call from any thread: exponents, factorials and literals that
would build huge numbers raise :class:`TooComplex` instead of computing.
"""

from __future__ import annotations

import cmath
import math
from fractions import Fraction
from typing import Union

Value = Union[Fraction, complex]
Node = tuple

# Exact integers are kept below this many bits; past it a power is refused.
MAX_EXACT_BITS = 4096
# Longest digit string accepted as a number literal.
MAX_LITERAL_DIGITS = 400
MAX_FACTORIAL = 300
# Parser recursion guard (nested parentheses, fractions, roots).
MAX_DEPTH = 60
# Longest expression the parser accepts; answers are short.
MAX_EXPRESSION_CHARS = 2000


class Unsupported(ValueError):
    """The text uses LaTeX this parser does not understand."""


class UnknownCommand(Unsupported):
    """A ``\\command`` this parser does not know; sympy may (``\\gcd``, ``\\det``)."""


class TooComplex(ValueError):
    """Evaluating the text would take unbounded time or memory."""


FUNCTIONS = frozenset(
    "sin cos tan cot sec csc arcsin arccos arctan sinh cosh tanh ln log exp".split()
)
GREEK = frozenset(
    """alpha beta gamma delta epsilon varepsilon zeta eta theta vartheta iota kappa
    lambda mu nu xi rho sigma tau upsilon phi varphi chi psi omega
    Gamma Delta Theta Lambda Xi Sigma Phi Psi Omega""".split()
)
# Commands that are only a multiplication or division sign.
_TIMES = frozenset(("cdot", "times", "ast"))
# Commands that carry no value: spacing and sizing that survived clean-up.
_IGNORED = frozenset(("left", "right", "big", "Big", "bigg", "Bigg", "displaystyle", "limits"))
_FONT_WRAPPERS = frozenset(("mathrm", "mathbf", "mathit", "textbf", "textit", "operatorname", "boldsymbol", "mathsf"))

PI = ("const", "pi")
E = ("const", "e")
I = ("const", "i")
INFINITY = ("const", "inf")


def parse(text: str) -> Node:
    """Parse a LaTeX expression into a tree; raises :class:`Unsupported`."""
    if len(text) > MAX_EXPRESSION_CHARS:
        raise TooComplex(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    parser = _Parser(text)
    node = parser.expression()
    parser.skip_space()
    if parser.pos != len(text):
        raise Unsupported(f"unexpected {text[parser.pos:parser.pos + 10]!r}")
    return node


class _Parser:
    """Recursive descent over characters; ``pos`` is the next unread index."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.depth = 0

    # -- low level -------------------------------------------------------
    def skip_space(self) -> None:
        text = self.text
        while self.pos < len(text):
            char = text[self.pos]
            if char in " \t\n":
                self.pos += 1
            elif char == "\\" and self.pos + 1 < len(text) and text[self.pos + 1] in ",;:! " and (
                self.pos == 0 or text[self.pos - 1] != "\\"
            ):
                self.pos += 2
            else:
                name = self.peek_command()
                if name in _IGNORED:
                    self.pos += len(name) + 1
                else:
                    return

    def peek(self) -> str:
        self.skip_space()
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def peek_command(self) -> str:
        """The name of the ``\\command`` at ``pos``, or ``""``."""
        text, pos = self.text, self.pos
        if pos >= len(text) or text[pos] != "\\":
            return ""
        end = pos + 1
        while end < len(text) and text[end].isalpha():
            end += 1
        return text[pos + 1 : end]

    def take_command(self) -> str:
        name = self.peek_command()
        self.pos += len(name) + 1
        return name

    def expect(self, char: str) -> None:
        if self.peek() != char:
            raise Unsupported(f"expected {char!r} at {self.pos}")
        self.pos += 1

    def enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise TooComplex("nesting too deep")

    # -- grammar -----------------------------------------------------------
    def expression(self) -> Node:
        self.enter()
        node = self.term()
        while True:
            char = self.peek()
            if char == "+":
                self.pos += 1
                node = ("add", node, self.term())
            elif char == "-":
                self.pos += 1
                node = ("add", node, ("neg", self.term()))
            else:
                break
        self.depth -= 1
        return node

    def term(self) -> Node:
        node = self.unary()
        while True:
            char = self.peek()
            if char == "*":
                self.pos += 1
                node = ("mul", node, self.unary())
            elif char == "/":
                self.pos += 1
                node = ("div", node, self.unary())
            elif char == "\\" and self.peek_command() in _TIMES:
                self.take_command()
                node = ("mul", node, self.unary())
            elif char == "\\" and self.peek_command() == "div":
                self.take_command()
                node = ("div", node, self.unary())
            elif self.starts_factor(char, node):
                node = ("mul", node, self.power())
            else:
                return node

    def starts_factor(self, char: str, previous: Node) -> bool:
        """Whether an implicit multiplication follows (``2x``, ``3\\sqrt2``, ``(a)(b)``)."""
        if not char:
            return False
        if char.isdigit() or char == ".":
            # "2 3" is no product; "x2" is not written either.
            return False
        if char.isalpha() or char in "({[":
            return True
        if char == "|":
            return False
        if char == "\\":
            name = self.peek_command()
            return name not in _TIMES and name not in ("div", "pm", "mp", "cup", "cap", "le", "ge",
                                                       "leq", "geq", "lt", "gt", "neq", "ne", "in",
                                                       "right", "rfloor", "rceil", "end", "text", "")
        return False

    def unary(self) -> Node:
        char = self.peek()
        if char == "-":
            self.pos += 1
            return ("neg", self.unary())
        if char == "+":
            self.pos += 1
            return self.unary()
        return self.power()

    def power(self) -> Node:
        base = self.postfix(self.atom())
        if self.peek() == "^":
            self.pos += 1
            exponent = self.script_argument()
            return self.postfix(("pow", base, exponent))
        if self.text.startswith("**", self.pos):
            self.pos += 2
            return ("pow", base, self.unary())
        return base

    def postfix(self, node: Node) -> Node:
        while self.peek() == "!":
            self.pos += 1
            node = ("fact", node)
        return node

    def script_argument(self) -> Node:
        """The argument of ``^`` or a command: ``{...}``, or one character/command."""
        char = self.peek()
        if char == "{":
            return self.group()
        if char.isdigit():
            self.pos += 1
            return ("num", Fraction(int(char)))
        if char == "-":
            self.pos += 1
            return ("neg", self.script_argument())
        return self.atom()

    def group(self) -> Node:
        self.expect("{")
        node = self.expression()
        self.expect("}")
        return node

    def atom(self) -> Node:
        char = self.peek()
        if not char:
            raise Unsupported("expression ends early")
        if char.isdigit() or char == ".":
            return self.number()
        if char == "(":
            self.pos += 1
            node = self.expression()
            self.expect(")")
            return node
        if char == "[":
            self.pos += 1
            node = self.expression()
            self.expect("]")
            return node
        if char == "{":
            return self.group()
        if char == "|":
            self.pos += 1
            node = self.expression()
            self.expect("|")
            return ("abs", node)
        if char.isalpha():
            self.pos += 1
            return self.letter(char)
        if char == "\\":
            return self.command()
        raise Unsupported(f"unexpected {char!r}")

    def number(self) -> Node:
        text, start = self.text, self.pos
        end = start
        while end < len(text) and text[end].isdigit():
            end += 1
        if end < len(text) and text[end] == "." and end + 1 < len(text) and text[end + 1].isdigit():
            end += 1
            while end < len(text) and text[end].isdigit():
                end += 1
        literal = text[start:end]
        if not literal or literal == ".":
            raise Unsupported("bad number")
        if len(literal) > MAX_LITERAL_DIGITS:
            raise TooComplex("number literal too long")
        value = Fraction(literal)
        # Scientific notation written the programming way: 1.5e-3.
        if end < len(text) and text[end] in "eE":
            exp_end = end + 1
            if exp_end < len(text) and text[exp_end] in "+-":
                exp_end += 1
            digits_start = exp_end
            while exp_end < len(text) and text[exp_end].isdigit():
                exp_end += 1
            if exp_end > digits_start:
                exponent = int(text[end + 1 : exp_end])
                if abs(exponent) > 400:
                    raise TooComplex("exponent too large")
                value *= Fraction(10) ** exponent
                end = exp_end
        self.pos = end
        node: Node = ("num", value)
        # A mixed number: 1\frac{4}{5} is 1 + 4/5, as MATH writes it.
        saved = self.pos
        self.skip_space()
        if value.denominator == 1 and "." not in literal and self.peek_command() in ("frac", "dfrac", "tfrac"):
            self.take_command()
            fraction = self.fraction()
            if _is_integer_fraction(fraction):
                return ("add", node, fraction)
            self.pos = saved
        return node

    def letter(self, char: str) -> Node:
        name = char
        if self.text.startswith("_", self.pos):
            self.pos += 1
            name += "_" + _render(self.script_argument())
        if name == "e":
            return E
        if name == "i":
            return I
        return ("sym", name)

    def fraction(self) -> Node:
        numerator = self.script_argument()
        denominator = self.script_argument()
        return ("div", numerator, denominator)

    def command(self) -> Node:
        name = self.take_command()
        if name in ("frac", "dfrac", "tfrac", "cfrac"):
            return self.fraction()
        if name in ("binom", "dbinom", "tbinom", "choose"):
            top = self.script_argument()
            return ("binom", top, self.script_argument())
        if name == "sqrt":
            index: Node = ("num", Fraction(2))
            if self.peek() == "[":
                self.pos += 1
                index = self.expression()
                self.expect("]")
            return ("root", index, self.script_argument())
        if name == "pi":
            return PI
        if name == "infty":
            return INFINITY
        if name in GREEK:
            return ("sym", name)
        if name in FUNCTIONS:
            return self.function(name)
        if name in ("lfloor", "lceil"):
            inner = self.expression()
            closer = self.take_command() if self.peek() == "\\" else ""
            if closer != ("rfloor" if name == "lfloor" else "rceil"):
                raise Unsupported(f"unclosed \\{name}")
            return ("floor" if name == "lfloor" else "ceil", inner)
        if name in ("lvert", "vert"):
            inner = self.expression()
            if self.peek() != "\\" or self.take_command() not in ("rvert", "vert"):
                raise Unsupported("unclosed \\lvert")
            return ("abs", inner)
        if name in _FONT_WRAPPERS:
            if self.peek() != "{":
                raise Unsupported(f"\\{name} without argument")
            start = self.pos + 1
            close = self.text.find("}", start)
            word = self.text[start:close].strip() if close > 0 else ""
            if word in FUNCTIONS:
                self.pos = close + 1
                return self.function(word)
            if name == "operatorname":
                raise UnknownCommand(f"\\operatorname{{{word}}}")
            return self.group()
        raise UnknownCommand(f"\\{name}")

    def function(self, name: str) -> Node:
        power: Node | None = None
        base: Node | None = None
        if name == "log" and self.peek() == "_":
            self.pos += 1
            base = self.script_argument()
        if self.peek() == "^":
            self.pos += 1
            power = self.script_argument()
        char = self.peek()
        if char == "(":
            self.pos += 1
            argument = self.expression()
            self.expect(")")
        elif char == "{":
            argument = self.group()
        else:
            argument = self.power()
        node: Node = ("log", base, argument) if name == "log" else ("func", name, argument)
        if power is not None:
            # \sin^{-1} x is arcsin, not 1/sin.
            if power == ("neg", ("num", Fraction(1))) and name in ("sin", "cos", "tan"):
                return ("func", "arc" + name, argument)
            node = ("pow", node, power)
        return node


def _is_integer_fraction(node: Node) -> bool:
    return (
        node[0] == "div"
        and node[1][0] == "num"
        and node[2][0] == "num"
        and node[1][1].denominator == 1
        and node[2][1].denominator == 1
    )


def _render(node: Node) -> str:
    """A stable name for a subscript (``x_1``, ``a_{n}``)."""
    if node[0] == "num":
        return str(node[1])
    if node[0] == "sym":
        return node[1]
    return repr(node)


# -- inspection ------------------------------------------------------------

def symbols(node: Node) -> frozenset[str]:
    """The free letters of an expression tree."""
    found: set[str] = set()
    stack = [node]
    while stack:
        item = stack.pop()
        if item[0] == "sym":
            found.add(item[1])
        else:
            stack.extend(child for child in item[1:] if isinstance(child, tuple))
    return frozenset(found)


def is_infinity(node: Node) -> int:
    """+1 for ``\\infty``/``+\\infty``, -1 for ``-\\infty``, 0 otherwise."""
    if node == INFINITY:
        return 1
    if node[0] == "neg" and node[1] == INFINITY:
        return -1
    return 0


# -- evaluation ------------------------------------------------------------

def evaluate(node: Node, env: dict[str, Value] | None = None) -> Value:
    """The value of ``node`` with letters bound by ``env``.

    Raises :class:`TooComplex` for huge numbers, ``ZeroDivisionError`` and
    ``ValueError`` for points outside the domain, :class:`Unsupported` for a
    free letter ``env`` does not bind.
    """
    kind = node[0]
    if kind == "num":
        return node[1]
    if kind == "sym":
        if env is None or node[1] not in env:
            raise Unsupported(f"free symbol {node[1]}")
        return env[node[1]]
    if kind == "const":
        return _CONSTANTS[node[1]]
    if kind == "add":
        return _add(evaluate(node[1], env), evaluate(node[2], env))
    if kind == "neg":
        return -evaluate(node[1], env)
    if kind == "mul":
        return _mul(evaluate(node[1], env), evaluate(node[2], env))
    if kind == "div":
        return _div(evaluate(node[1], env), evaluate(node[2], env))
    if kind == "pow":
        return power(evaluate(node[1], env), evaluate(node[2], env))
    if kind == "root":
        index = evaluate(node[1], env)
        if index == 0:
            raise ZeroDivisionError("zeroth root")
        return power(evaluate(node[2], env), _div(Fraction(1), index))
    if kind == "func":
        return _function(node[1], evaluate(node[2], env))
    if kind == "log":
        argument = complex(evaluate(node[2], env))
        base = complex(evaluate(node[1], env)) if node[1] is not None else None
        return _log(argument, base)
    if kind == "fact":
        return _factorial(evaluate(node[1], env))
    if kind == "binom":
        return _binomial(evaluate(node[1], env), evaluate(node[2], env))
    if kind == "abs":
        value = evaluate(node[1], env)
        return abs(value) if isinstance(value, Fraction) else complex(abs(value))
    if kind in ("floor", "ceil"):
        value = evaluate(node[1], env)
        real = value if isinstance(value, Fraction) else value.real
        return Fraction(math.floor(real) if kind == "floor" else math.ceil(real))
    raise Unsupported(kind)


_CONSTANTS: dict[str, Value] = {
    "pi": complex(math.pi),
    "e": complex(math.e),
    "i": 1j,
    "inf": complex(math.inf),
}


def _add(a: Value, b: Value) -> Value:
    return a + b


def _mul(a: Value, b: Value) -> Value:
    result = a * b
    if isinstance(result, Fraction) and _bits(result) > MAX_EXACT_BITS:
        raise TooComplex("number too large")
    return result


def _div(a: Value, b: Value) -> Value:
    if b == 0:
        raise ZeroDivisionError("division by zero")
    return a / b


def _bits(value: Fraction) -> int:
    return value.numerator.bit_length() + value.denominator.bit_length()


def power(base: Value, exponent: Value) -> Value:
    """``base ** exponent``: exact when it can be, the real root for odd roots of negatives."""
    if isinstance(exponent, Fraction):
        if isinstance(base, Fraction):
            return _rational_power(base, exponent)
        if exponent.denominator == 1 and abs(exponent) <= 10_000:
            return _checked(base ** int(exponent))
        return _checked(base ** float(exponent))
    if isinstance(base, Fraction) and base == 0:
        return Fraction(0)
    return _checked(complex(base) ** exponent)


def _rational_power(base: Fraction, exponent: Fraction) -> Value:
    numerator, denominator = exponent.numerator, exponent.denominator
    if base == 0:
        if exponent <= 0:
            raise ZeroDivisionError("0 to a non-positive power")
        return Fraction(0)
    if _bits(base) * abs(numerator) > MAX_EXACT_BITS:
        if abs(numerator) > 10**6:
            raise TooComplex("exponent too large")
        # Too big to keep exact: a float still compares fine (or overflows).
        return _real_root_power(float(base), numerator, denominator)
    raised = base ** numerator
    if denominator == 1:
        return raised
    root = _exact_root(raised, denominator)
    if root is not None:
        return root
    return _real_root_power(float(base), numerator, denominator)


def _real_root_power(base: float, numerator: int, denominator: int) -> Value:
    if base < 0 and denominator % 2 == 1:
        magnitude = (-base) ** (numerator / denominator)
        return complex(-magnitude if numerator % 2 else magnitude)
    return _checked(complex(base) ** (numerator / denominator))


def _exact_root(value: Fraction, degree: int) -> Fraction | None:
    """``value ** (1/degree)`` when it is rational (real root for odd degrees)."""
    if value < 0:
        if degree % 2 == 0:
            return None
        root = _exact_root(-value, degree)
        return -root if root is not None else None
    top = _integer_root(value.numerator, degree)
    bottom = _integer_root(value.denominator, degree)
    if top is None or bottom is None:
        return None
    return Fraction(top, bottom)


def _integer_root(value: int, degree: int) -> int | None:
    if degree == 2:
        root = math.isqrt(value)
    else:
        root = round(value ** (1.0 / degree)) if value < 2**1000 else None
        if root is None:
            return None
        for candidate in (root - 1, root, root + 1):
            if candidate >= 0 and candidate**degree == value:
                return candidate
        return None
    return root if root * root == value else None


def _checked(value: complex) -> complex:
    if cmath.isinf(value) or cmath.isnan(value):
        raise TooComplex("overflow")
    return value


def _function(name: str, value: Value) -> Value:
    if name == "exp":
        return _checked(cmath.exp(complex(value)))
    if name == "ln":
        return _log(complex(value), None)
    z = complex(value)
    if name in ("cot", "sec", "csc"):
        inner = {"cot": cmath.tan, "sec": cmath.cos, "csc": cmath.sin}[name](z)
        if abs(inner) < 1e-15:
            raise ZeroDivisionError(name)
        return 1 / inner
    function = {
        "sin": cmath.sin, "cos": cmath.cos, "tan": cmath.tan,
        "arcsin": cmath.asin, "arccos": cmath.acos, "arctan": cmath.atan,
        "sinh": cmath.sinh, "cosh": cmath.cosh, "tanh": cmath.tanh,
    }[name]
    return _checked(function(z))


def _log(argument: complex, base: complex | None) -> complex:
    if argument == 0 or base == 0 or base == 1:
        raise ValueError("log domain")
    result = cmath.log(argument)
    if base is not None:
        result /= cmath.log(base)
    return result


def _factorial(value: Value) -> Value:
    if not isinstance(value, Fraction) or value.denominator != 1 or value < 0:
        raise ValueError("factorial of a non-natural number")
    if value > MAX_FACTORIAL:
        raise TooComplex("factorial too large")
    return Fraction(math.factorial(int(value)))


def _binomial(top: Value, bottom: Value) -> Value:
    if not all(isinstance(v, Fraction) and v.denominator == 1 for v in (top, bottom)):
        raise ValueError("binomial of non-integers")
    if abs(top) > 10_000:
        raise TooComplex("binomial too large")
    if bottom < 0 or top < 0:
        raise ValueError("binomial of negative numbers")
    return Fraction(math.comb(int(top), int(bottom)))
