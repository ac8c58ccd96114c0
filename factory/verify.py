"""`factory verify math|code FILE`: run a verifier over any JSONL/Parquet file and write verdicts beside it."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from factory.errors import FactoryError
from factory.text import escape_surrogates_in

log = logging.getLogger(__name__)


def read_records(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSONL or Parquet file; bad files are one-line errors naming the file and line."""
    if not path.exists():
        raise FactoryError(f"{path}: file not found")
    from factory.sources import open_parquet, read_jsonl

    if path.suffix == ".parquet":
        return open_parquet(path).read().to_pylist()

    return list(read_jsonl(path))


def _require(rows: list[dict[str, Any]], path: Path, *fields: str) -> None:
    if not rows:
        raise FactoryError(f"{path}: no rows")
    for field in fields:
        if field not in rows[0]:
            raise FactoryError(f"{path}: no column '{field}' (have: {', '.join(sorted(rows[0]))}); pass the right --{_flag(field)}")


def _flag(field: str) -> str:
    return {"gold": "gold", "response": "response", "tests": "tests"}.get(field, "field")


def write_records(rows: list[dict[str, Any]], out_path: Path) -> None:
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(escape_surrogates_in(row), ensure_ascii=False, default=str) + "\n")
        tmp.replace(out_path)
    finally:
        tmp.unlink(missing_ok=True)  # a failed write (disk full) leaves no partial file


def verify_math_file(path: Path, *, gold_field: str = "gold", response_field: str = "response",
                     out_path: Path | None = None, workers: int | None = None,
                     policy: str = "strict") -> dict[str, Any]:
    """Score every row with verifiers.scoring.score_math (the filter's and eval's function)."""
    from verifiers.scoring import POLICIES, score_math_batch

    if policy not in POLICIES:
        raise FactoryError(f"--policy: expected one of {', '.join(POLICIES)}, got {policy!r}")
    rows = read_records(path)
    _require(rows, path, gold_field, response_field)
    scores = score_math_batch([str(r[response_field] or "") for r in rows], [str(r[gold_field]) for r in rows],
                              policy=policy, workers=workers)
    out_path = out_path or path.with_name(path.stem + ".math_verdicts.jsonl")
    write_records([{"index": i, "correct": s.correct, "extracted": s.extracted, "reason": s.reason, "rule": s.rule}
                   for i, s in enumerate(scores)], out_path)
    correct = sum(1 for s in scores if s.correct)
    unverifiable = sum(1 for s in scores if s.correct is None)
    return {"rows": len(rows), "policy": policy, "correct": correct, "wrong": len(rows) - correct - unverifiable,
            "unverifiable": unverifiable, "verdicts": str(out_path)}


def verify_code_file(path: Path, *, program_field: str = "response", tests_field: str = "tests", out_path: Path | None = None,
                     workers: int | None = None, timeout_s: float = 5.0, unsafe_no_sandbox: bool = False,
                     memory_mb: int = 512) -> dict[str, Any]:
    """Score every row with verifiers.scoring.score_code_batch (the filter's and eval's function)."""
    from verifiers.code import SandboxUnavailable
    from verifiers.scoring import read_tests, score_code_batch

    rows = read_records(path)
    _require(rows, path, program_field, tests_field)
    tests = []
    for number, row in enumerate(rows, 1):
        try:
            tests.append(read_tests(row[tests_field], row))
        except ValueError as exc:
            raise FactoryError(f"{path}: row {number}: column '{tests_field}': {exc}") from None
    try:
        scores = score_code_batch([str(row[program_field] or "") for row in rows], tests, workers=workers,
                                  timeout_s=timeout_s, memory_mb=memory_mb, unsafe_no_sandbox=unsafe_no_sandbox)
    except SandboxUnavailable as exc:
        raise FactoryError(str(exc).splitlines()[0]) from None
    out_path = out_path or path.with_name(path.stem + ".code_verdicts.jsonl")
    write_records([{"index": i, "passed": bool(s.correct), "status": s.status, "rule": s.rule,
                    "passed_cases": s.details.get("passed_cases", 0), "total_cases": s.details.get("total_cases", 0),
                    "detail": s.reason} for i, s in enumerate(scores)], out_path)
    statuses: dict[str, int] = {}
    for s in scores:
        statuses[s.status] = statuses.get(s.status, 0) + 1
    return {"rows": len(rows), "passed": sum(bool(s.correct) for s in scores),
            **{f"status {k}": n for k, n in sorted(statuses.items())}, "verdicts": str(out_path)}
