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
                     out_path: Path | None = None, workers: int | None = None) -> dict[str, Any]:
    from verifiers.math import verify_batch

    rows = read_records(path)
    _require(rows, path, gold_field, response_field)
    verdicts = verify_batch([(str(r[gold_field]), str(r[response_field] or "")) for r in rows], workers=workers)
    out_path = out_path or path.with_name(path.stem + ".math_verdicts.jsonl")
    write_records([{"index": i, "correct": v.correct, "extracted": v.extracted, "reason": v.reason} for i, v in enumerate(verdicts)], out_path)
    correct = sum(1 for v in verdicts if v.correct)
    unverifiable = sum(1 for v in verdicts if v.correct is None)
    return {"rows": len(rows), "correct": correct, "wrong": len(rows) - correct - unverifiable, "unverifiable": unverifiable, "verdicts": str(out_path)}


def verify_code_file(path: Path, *, program_field: str = "response", tests_field: str = "tests", out_path: Path | None = None,
                     workers: int | None = None, timeout_s: float = 5.0, unsafe_no_sandbox: bool = False) -> dict[str, Any]:
    from verifiers.code import CodeTests, SandboxUnavailable, extract_code, run_batch

    rows = read_records(path)
    _require(rows, path, program_field, tests_field)
    items = []
    for number, row in enumerate(rows, 1):
        tests = row[tests_field]
        if isinstance(tests, str):
            try:
                tests = json.loads(tests)
            except json.JSONDecodeError:
                tests = {"kind": "humaneval", "test": tests}
        if isinstance(tests, dict):
            tests = {**{k: row[k] for k in ("entry_point", "prompt") if k in row and k not in tests}, **tests}
        try:
            parsed = CodeTests.from_dict(tests)
        except (ValueError, TypeError, KeyError) as exc:
            raise FactoryError(f"{path}: row {number}: column '{tests_field}': {exc}") from None
        text = str(row[program_field] or "")
        items.append((extract_code(text) or text, parsed))
    try:
        verdicts = run_batch(items, workers=workers, timeout_s=timeout_s, unsafe_no_sandbox=unsafe_no_sandbox)
    except SandboxUnavailable as exc:
        raise FactoryError(str(exc).splitlines()[0]) from None
    out_path = out_path or path.with_name(path.stem + ".code_verdicts.jsonl")
    write_records([{"index": i, "passed": v.passed, "status": v.status, "passed_cases": v.passed_cases,
                    "total_cases": v.total_cases, "detail": v.detail} for i, v in enumerate(verdicts)], out_path)
    statuses: dict[str, int] = {}
    for v in verdicts:
        statuses[v.status] = statuses.get(v.status, 0) + 1
    return {"rows": len(rows), "passed": sum(v.passed for v in verdicts), **{f"status {k}": n for k, n in sorted(statuses.items())},
            "verdicts": str(out_path)}
