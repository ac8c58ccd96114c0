"""What to run and what came out: ``CodeTests``, ``CodeVerdict``, ``extract_code``.

Three test formats are understood (``CodeTests.kind``):

* ``"humaneval"``: ``prompt`` + ``test`` source defining ``check(candidate)``,
  called with the program's ``entry_point`` function. One case.
* ``"asserts"``: MBPP style; ``setup`` source, then each line of ``asserts``
  is one case (``assert add_two(1, 2) == 3``).
* ``"stdio"``: Codeforces / LiveCodeBench style; the program runs as
  ``__main__`` once per ``(input, expected_output)`` case and its stdout is
  compared token by token (whitespace-tolerant).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from ..verdict import Verdict

__all__ = ["CodeTests", "CodeVerdict", "extract_code", "STATUSES"]

TestKind = Literal["humaneval", "asserts", "stdio"]
STATUSES = ("passed", "failed", "timeout", "error", "memory", "violation")
_PYTHON_TAGS = ("python", "py", "python3", "py3")


@dataclass(frozen=True)
class CodeTests:
    """The tests one program must pass; build with the classmethods or ``from_dict``."""

    kind: TestKind
    entry_point: str | None = None
    prompt: str = ""
    test: str = ""
    asserts: tuple[str, ...] = ()
    setup: str = ""
    cases: tuple[tuple[str, str], ...] = field(default=())

    @classmethod
    def humaneval(cls, test: str, entry_point: str, prompt: str = "") -> CodeTests:
        return cls("humaneval", entry_point=entry_point, prompt=prompt, test=test).validate()

    @classmethod
    def from_asserts(cls, asserts: list[str] | tuple[str, ...], setup: str = "",
                     entry_point: str | None = None) -> CodeTests:
        return cls("asserts", entry_point=entry_point, asserts=tuple(asserts), setup=setup).validate()

    @classmethod
    def stdio(cls, cases: list[tuple[str, str]] | tuple[tuple[str, str], ...]) -> CodeTests:
        return cls("stdio", cases=tuple((str(i), str(o)) for i, o in cases)).validate()

    @property
    def total_cases(self) -> int:
        return {"humaneval": 1, "asserts": len(self.asserts), "stdio": len(self.cases)}[self.kind]

    def validate(self) -> CodeTests:
        if self.kind not in ("humaneval", "asserts", "stdio"):
            raise ValueError(f"kind: expected 'humaneval', 'asserts' or 'stdio', got {self.kind!r}")
        if self.kind == "humaneval":
            if not self.test.strip():
                raise ValueError("test: expected source defining check(candidate), got an empty string")
            if not (self.entry_point or "").isidentifier():
                raise ValueError(f"entry_point: expected a function name, got {self.entry_point!r}")
        if self.kind == "asserts" and (not self.asserts or not all(isinstance(a, str) for a in self.asserts)):
            raise ValueError(f"asserts: expected a non-empty list of strings, got {self.asserts!r:.200}")
        if self.kind == "stdio" and not self.cases:
            raise ValueError("cases: expected at least one (input, output) pair, got none")
        return self

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "humaneval":
            return {"kind": "humaneval", "prompt": self.prompt, "test": self.test, "entry_point": self.entry_point}
        if self.kind == "asserts":
            return {"kind": "asserts", "asserts": list(self.asserts), "setup": self.setup,
                    "entry_point": self.entry_point}
        return {"kind": "stdio", "cases": [{"input": i, "output": o} for i, o in self.cases]}

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, entry_point: str | None = None) -> CodeTests:
        """Accepts ``to_dict`` output and common dataset rows.

        * factory prompt rows: ``{"tests": {"kind": "asserts", ...}, "entry_point": ...}``
          (or the inner ``tests`` dict plus ``entry_point=``);
        * HumanEval rows (``prompt``/``test``/``entry_point``);
        * MBPP rows (``test_list``, ``test_setup_code``);
        * stdio: ``{"kind": "stdio", "cases": [{"input", "output"} | [in, out]]}``,
          ``{"inputs": [...], "outputs": [...]}`` or APPS' ``{"input_output": "<json>"}``.
        """
        if not isinstance(d, dict):
            raise ValueError(f"tests: expected a dict, got {type(d).__name__}")
        entry_point = entry_point or d.get("entry_point")
        if isinstance(d.get("tests"), (dict, CodeTests)):
            inner = d["tests"]
            return inner if isinstance(inner, CodeTests) else cls.from_dict(inner, entry_point=entry_point)
        kind = d.get("kind")
        if kind is not None and kind not in ("humaneval", "asserts", "stdio"):
            raise ValueError(f"kind: expected 'humaneval', 'asserts' or 'stdio', got {kind!r}")
        if kind == "humaneval" or (kind is None and "test" in d and entry_point):
            return cls.humaneval(d.get("test", ""), entry_point or "", d.get("prompt", ""))
        if kind == "asserts" or (kind is None and ("asserts" in d or "test_list" in d)):
            asserts = d.get("asserts", d.get("test_list", []))
            setup = d.get("setup", d.get("test_setup_code", "")) or ""
            # MBPP's declared imports (``math`` in ``math.isclose``) run as trusted setup,
            # so the name is never the program's.
            imports = d.get("test_imports") or []
            if isinstance(imports, str) or not all(isinstance(i, str) for i in imports):
                raise ValueError(f"test_imports: expected a list of import statements, got {imports!r:.200}")
            setup = "\n".join([*imports, setup]) if imports else setup
            return cls.from_asserts(list(asserts), setup, entry_point)
        if kind == "stdio" or (kind is None and ("cases" in d or "inputs" in d or "input_output" in d)):
            return cls.stdio(_stdio_cases(d))
        raise ValueError(f"tests: expected a dict with kind 'humaneval'/'asserts'/'stdio' or a known "
                         f"dataset shape, got keys {sorted(d)!r}")


def _stdio_cases(d: dict[str, Any]) -> list[tuple[str, str]]:
    if "input_output" in d:
        io = d["input_output"]
        io = json.loads(io) if isinstance(io, str) else io
        if io.get("fn_name"):
            raise ValueError(f"input_output: expected stdin/stdout cases, got call-based fn_name {io['fn_name']!r}")
        return list(zip(io["inputs"], io["outputs"]))
    if "inputs" in d:
        return list(zip(d["inputs"], d["outputs"]))
    cases = []
    for case in d["cases"]:
        if isinstance(case, dict):
            cases.append((case["input"], case["output"]))
        else:
            cases.append((case[0], case[1]))
    return cases


@dataclass(frozen=True, slots=True)
class CodeVerdict:
    """Outcome of running one program against its tests.

    status: ``passed``; ``failed`` (a case's check did not hold); ``timeout``
    (wall clock); ``error`` (the program crashed, did not load, exited early,
    flooded its output, or no code was found); ``memory`` (hit the memory
    limit); ``violation`` (tried the network, a subprocess or a write outside
    its directory).
    detail: the first failing case or the tail of the error, truncated.
    """

    passed: bool
    status: str
    passed_cases: int = 0
    total_cases: int = 0
    detail: str = ""
    duration_s: float = 0.0

    def __post_init__(self) -> None:
        # The detail quotes the program (its exceptions, its output): lone
        # surrogates become escapes, so every store can encode it as UTF-8.
        object.__setattr__(self, "detail", valid_utf8(self.detail))

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "status": self.status, "passed_cases": self.passed_cases,
                "total_cases": self.total_cases, "detail": self.detail, "duration_s": self.duration_s}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CodeVerdict:
        return cls(bool(d["passed"]), str(d["status"]), int(d.get("passed_cases", 0)),
                   int(d.get("total_cases", 0)), str(d.get("detail", "")), float(d.get("duration_s", 0.0)))

    def to_verdict(self) -> Verdict:
        """As the library-wide ``Verdict`` (reason ``"<status>: <detail>"``)."""
        details = {"passed_cases": self.passed_cases, "total_cases": self.total_cases}
        if self.passed:
            return Verdict(True, None, 1.0, details)
        score = self.passed_cases / self.total_cases if self.total_cases else 0.0
        reason = f"{self.status}: {self.detail}" if self.detail else self.status
        return Verdict(False, reason, score, details)


def valid_utf8(text: str) -> str:
    """``text`` with what UTF-8 cannot encode (lone surrogates) escaped as ``\\udXXX``."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


_FENCE = re.compile(r"^[ \t]*```[ \t]*([^\n`]*)\n(.*?)^[ \t]*```[ \t]*$", re.S | re.M)


def extract_code(response: str, language: str = "python") -> str | None:
    """The last fenced block tagged ``language`` in the answer (after any ``</think>``).

    Falls back to the last untagged block; None when there is none. For
    ``language="python"`` the tags py / python3 count too.
    """
    if not isinstance(response, str):
        return None
    answer = response.rsplit("</think>", 1)[-1]
    tags = _PYTHON_TAGS if language.lower() in _PYTHON_TAGS else (language.lower(),)
    tagged, untagged = None, None
    for match in _FENCE.finditer(answer):
        info = match.group(1).strip().lower()
        tag = info.split()[0] if info else ""
        if tag in tags:
            tagged = match.group(2)
        elif not tag:
            untagged = match.group(2)
    return tagged if tagged is not None else untagged
