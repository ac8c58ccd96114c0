"""One scoring function per task type, shared by every caller.

The filter's correctness step, ``factory eval`` and ``factory verify`` all score
through these functions, so a sample gets the same verdict wherever it is
scored (the nanochat / open-r1 pattern: one reward, reused by training and
evaluation)::

    from verifiers.scoring import score_math, score_code
    score_math("Final answer: **18**", "18").correct            # True
    score_code("```python\\ndef f(): return 1\\n```", tests).correct

Inputs are the assistant turn as the model wrote it (``<think>…</think>answer``);
each function finds the answer or program itself.

* math: :func:`verifiers.math.verify` under a ``policy`` (``strict`` by default:
  only an explicit answer form counts; ``lenient`` adds the last-number fallback).
  The batch form runs in worker processes with a hard per-item timeout.
* code: the program is the last fenced python block of the final section (rule
  ``fenced``); without one, the whole final section when it compiles as Python
  (rule ``raw``, so a file of bare programs scores as users expect); otherwise
  ``no_code``. It runs against its tests in the sandbox of :mod:`verifiers.code`.

A :class:`Score` is ``correct`` True/False, or None when the verifier could not
decide (no answer, unparsable, timeout); ``status`` is a stable code for counting.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from verifiers.math import DEFAULT_TIMEOUT_S as DEFAULT_MATH_TIMEOUT_S
from verifiers.math import POLICIES, MathVerdict, verify, verify_batch

__all__ = [
    "DEFAULT_CODE_MEMORY_MB", "DEFAULT_CODE_TIMEOUT_S", "DEFAULT_MATH_TIMEOUT_S", "POLICIES", "Score",
    "find_program", "read_tests", "score_code", "score_code_batch", "score_math", "score_math_batch",
]

DEFAULT_CODE_TIMEOUT_S = 5.0
DEFAULT_CODE_MEMORY_MB = 512
THINK_CLOSE = "</think>"
# A bare "program" longer than this is not tried with ast.parse (it is prose or a dump).
MAX_RAW_PROGRAM_CHARS = 200_000


@dataclass(frozen=True, slots=True)
class Score:
    """The verdict of one sample.

    correct:   True/False when decided; None when the verifier could not decide.
    status:    stable code: ``correct`` or the math reason code (``not_equal``,
               ``no_answer``, ...); for code the sandbox status (``passed``,
               ``failed``, ``timeout``, ...) or ``no_code``.
    reason:    the full reason (code plus detail).
    extracted: the answer or program that was scored, None when none was found.
    rule:      how it was found (math: ``boxed``, ``answer_is``, ...; code: ``fenced``/``raw``).
    score:     1.0 / 0.0, or the share of test cases passed for code.
    """

    correct: bool | None
    status: str
    reason: str
    extracted: str | None = None
    rule: str | None = None
    score: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------- math

def _from_math(verdict: MathVerdict) -> Score:
    status = "correct" if verdict.correct else verdict.code
    return Score(verdict.correct, status, verdict.reason, verdict.extracted, verdict.rule,
                 1.0 if verdict.correct else 0.0)


def score_math(response: str, gold: str, *, policy: str = "strict") -> Score:
    """Score one math response against its reference answer, in this process (never raises)."""
    return _from_math(verify(gold, response, policy=policy))


def score_math_batch(responses: Sequence[str], golds: Sequence[str], *, policy: str = "strict",
                     timeout_s: float = DEFAULT_MATH_TIMEOUT_S, workers: int | None = None) -> list[Score]:
    """:func:`score_math` for many samples on worker processes, with a hard per-item timeout."""
    if len(responses) != len(golds):
        raise ValueError(f"responses, golds: expected the same length, got {len(responses)} and {len(golds)}")
    pairs = [(gold, response or "") for gold, response in zip(golds, responses)]
    return [_from_math(v) for v in verify_batch(pairs, workers=workers, timeout_s=timeout_s, policy=policy)]


# ------------------------------------------------------------------------------- code

def find_program(response: str, prompt: str = "") -> tuple[str | None, str | None]:
    """``(program, rule)``: the last fenced python block (``fenced``), else the bare final
    section when it compiles as Python, alone or as the continuation of a HumanEval
    ``prompt`` (``raw``), else ``(None, None)``."""
    from verifiers.code import extract_code

    if not isinstance(response, str):
        return None, None
    fenced = extract_code(response)
    if fenced is not None and fenced.strip():
        return fenced, "fenced"
    final = response.rsplit(THINK_CLOSE, 1)[-1]
    if not final.strip() or len(final) > MAX_RAW_PROGRAM_CHARS or "```" in final:
        return None, None
    # Alone (a whole program), or as the body that continues the prompt (its first
    # line keeps its indentation).
    candidates = [final.strip()] + ([final.lstrip("\r\n").rstrip()] if prompt else [])
    for attempt, program in enumerate(candidates):
        if attempt and not program[:1].isspace():
            continue  # a continuation of the prompt is an indented function body
        try:
            tree = ast.parse(prompt + program if attempt else program)
            compile(tree, "<program>", "exec", dont_inherit=True)  # "return" outside a function fails here
        except (SyntaxError, ValueError):
            continue
        if not attempt and all(isinstance(node, ast.Expr) for node in tree.body):
            continue  # a lone expression ("42", "hello") is an answer, not a program
        return program, "raw"
    return None, None


def read_tests(tests: Any, row: dict[str, Any] | None = None):
    """A :class:`verifiers.code.CodeTests` from what datasets store: a CodeTests, a dict
    (factory, HumanEval, MBPP, stdio, APPS rows), its JSON text, or HumanEval test code
    as a string. ``entry_point``/``prompt`` missing from the tests are taken from ``row``.
    Raises ValueError naming what was wrong."""
    from verifiers.code import CodeTests

    if isinstance(tests, CodeTests):
        return tests
    if isinstance(tests, str):
        try:
            tests = json.loads(tests)
        except json.JSONDecodeError:
            tests = {"kind": "humaneval", "test": tests}
    if isinstance(tests, dict) and row:
        tests = {**{k: row[k] for k in ("entry_point", "prompt") if k in row and k not in tests}, **tests}
    try:
        return CodeTests.from_dict(tests)
    except (TypeError, KeyError) as error:
        raise ValueError(str(error)) from None


def _no_code() -> Score:
    return Score(False, "no_code", "no_code: no fenced python block and the answer is not a Python program")


def _from_code(verdict: Any, program: str, rule: str) -> Score:
    share = verdict.passed_cases / verdict.total_cases if verdict.total_cases else (1.0 if verdict.passed else 0.0)
    reason = verdict.status if verdict.passed else (
        f"{verdict.status}: {verdict.passed_cases}/{verdict.total_cases} cases; {(verdict.detail or '')[:200]}")
    return Score(bool(verdict.passed), verdict.status, reason, program, rule, share,
                 {"passed_cases": verdict.passed_cases, "total_cases": verdict.total_cases})


def score_code_batch(responses: Sequence[str], tests: Sequence[Any], *, timeout_s: float = DEFAULT_CODE_TIMEOUT_S,
                     memory_mb: int = DEFAULT_CODE_MEMORY_MB, workers: int | None = None,
                     unsafe_no_sandbox: bool = False) -> list[Score]:
    """Score many code responses against their tests (:func:`read_tests` forms) in the sandbox.

    Raises :class:`verifiers.code.SandboxUnavailable` when there is no sandbox and
    ``unsafe_no_sandbox`` is False, ValueError for malformed tests.
    """
    from verifiers.code import run_batch

    if len(responses) != len(tests):
        raise ValueError(f"responses, tests: expected the same length, got {len(responses)} and {len(tests)}")
    scores: list[Score | None] = [None] * len(responses)
    items, where, rules = [], [], []
    for index, (response, test) in enumerate(zip(responses, tests)):
        parsed = read_tests(test)
        program, rule = find_program(response or "", parsed.prompt or "")
        if program is None:
            scores[index] = _no_code()
            continue
        items.append((program, parsed))
        where.append(index)
        rules.append(rule)
    if items:
        verdicts = run_batch(items, workers=workers, timeout_s=timeout_s, memory_mb=memory_mb,
                             unsafe_no_sandbox=unsafe_no_sandbox)
        for index, (program, _), rule, verdict in zip(where, items, rules, verdicts):
            scores[index] = _from_code(verdict, program, rule)
    return scores  # type: ignore[return-value]


def score_code(response: str, tests: Any, *, timeout_s: float = DEFAULT_CODE_TIMEOUT_S,
               memory_mb: int = DEFAULT_CODE_MEMORY_MB, unsafe_no_sandbox: bool = False) -> Score:
    """Score one code response against its tests (see :func:`score_code_batch`)."""
    return score_code_batch([response], [tests], timeout_s=timeout_s, memory_mb=memory_mb, workers=1,
                            unsafe_no_sandbox=unsafe_no_sandbox)[0]
