"""Math answer verification: does a response reach the reference answer?

    >>> from verifiers.math import verify
    >>> verify("\\frac{1}{2}", "... so the answer is $\\boxed{0.5}$.").correct
    True

``verify`` for one pair (pure, safe from any thread), ``verify_batch`` for many
(worker processes with a hard per-item timeout), ``extract_answer`` for the
final answer alone. See ``.helpers/README_math.md`` for what is understood.
"""

from verifiers.math.batch import DEFAULT_TIMEOUT_S, verify_batch
from verifiers.math.check import POLICIES, compare_answers, verify
from verifiers.math.extract import extract_answer, find_answer
from verifiers.math.verdict import MathVerdict

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "MathVerdict",
    "POLICIES",
    "compare_answers",
    "extract_answer",
    "find_answer",
    "verify",
    "verify_batch",
]
