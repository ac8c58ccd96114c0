"""Prompt sources: JSONL, Parquet or a saved `datasets` dir, mapped to prompt records by recipe fields."""

from __future__ import annotations

import codecs
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from factory.errors import RecipeError
from factory.recipe import SourceConfig, resolve_data_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PromptRecord:
    """One prompt, ready to be templated. `prompt_id` is unique across a recipe's sources."""

    prompt_id: str
    source: str
    prompt: str
    reference: str | None
    task_type: str
    language: str
    tests: str | None = None  # JSON text: verifiers.code.CodeTests.from_dict input
    system: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)  # the whole row, for template placeholders


def load_prompts(sources: list[SourceConfig], recipe_file: Path) -> list[PromptRecord]:
    """Every prompt of every source, in a stable order; duplicate ids are an error."""
    records: list[PromptRecord] = []
    seen: set[str] = set()
    for index, source in enumerate(sources):
        path = resolve_data_path(source.path, recipe_file)
        rows = list(read_rows(path, source, where=f"{recipe_file}: sources[{index}]"))
        if not rows:
            raise RecipeError(f"{path}: sources[{index}] ({source.name}) has no rows; expected at least one prompt")
        for row_number, row in enumerate(rows):
            record = _to_record(row, row_number, source, path)
            if record.prompt_id in seen:
                raise RecipeError(f"{path}: row {row_number + 1}: field '{source.fields.id}': duplicate id {record.prompt_id!r}")
            seen.add(record.prompt_id)
            records.append(record)
    return records


def read_rows(path: Path, source: SourceConfig, *, where: str) -> Iterator[dict[str, Any]]:
    """The rows of a JSONL file, a Parquet file or dir, or a saved `datasets` dir, one at a time."""
    fmt = source.format if source.format != "auto" else _detect_format(path)
    limit = source.limit
    if fmt == "jsonl":
        yield from read_jsonl(path, limit)
    elif fmt == "parquet":
        yield from _read_parquet(path, limit)
    elif fmt == "datasets":
        yield from _read_saved_dataset(path, source.split, limit, where)
    else:
        raise RecipeError(f"{where}.format: expected jsonl, parquet or datasets, got {fmt!r} for {path}")


def _detect_format(path: Path) -> str:
    if path.is_dir():
        if any(path.rglob("*.parquet")):
            return "parquet"
        return "datasets"
    if path.suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    if path.suffix == ".parquet":
        return "parquet"
    return path.suffix.lstrip(".")


def read_jsonl(path: Path, limit: int | None = None) -> Iterator[dict[str, Any]]:
    """Objects of a UTF-8 JSONL file (a BOM is accepted); a bad line is a one-line error naming file and line."""
    count = 0
    # Bytes in, decoded per line: a bad byte is reported at its line, not somewhere in a decoder's chunk.
    with open(path, "rb") as handle:
        for line_number, raw in enumerate(handle, 1):
            if line_number == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8):]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise RecipeError(f"{path}:{line_number}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}); "
                                  "expected UTF-8 JSON lines (re-encode the file, e.g. iconv -f latin1 -t utf-8)") from None
            if not line.strip():
                continue
            try:
                row = _loads(line)
            except ValueError as exc:  # json's and orjson's JSONDecodeError
                message = getattr(exc, "msg", None) or str(exc).split(":", 1)[0]
                raise RecipeError(f"{path}:{line_number}: invalid JSON ({message}); expected one object per line") from None
            if not isinstance(row, dict):
                raise RecipeError(f"{path}:{line_number}: expected a JSON object, got {type(row).__name__}")
            yield row
            count += 1
            if limit and count >= limit:
                return


def _loads(line: str) -> Any:
    if _ORJSON_LOADS is not None:
        try:
            return _ORJSON_LOADS(line)
        except ValueError:
            pass  # orjson refuses what json accepts (lone surrogate escapes): the standard library decides
    return json.loads(line)


try:  # orjson parses 2-3x faster; the standard library reads the same files
    from orjson import loads as _ORJSON_LOADS
except ImportError:  # pragma: no cover - depends on the environment
    _ORJSON_LOADS = None


def open_parquet(path: Path) -> Any:
    """A `pyarrow.parquet.ParquetFile`, or a one-line error when the file is not Parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RecipeError(f"{path}: not a readable Parquet file ({detail}); expected Parquet (or .jsonl for JSON lines)") from None


def _read_parquet(path: Path, limit: int | None) -> Iterator[dict[str, Any]]:
    files = sorted(path.rglob("*.parquet")) if path.is_dir() else [path]
    count = 0
    for file in files:
        for batch in open_parquet(file).iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                yield row
                count += 1
                if limit and count >= limit:
                    return


def _read_saved_dataset(path: Path, split: str | None, limit: int | None, where: str) -> Iterator[dict[str, Any]]:
    from datasets import DatasetDict, load_from_disk

    try:
        data = load_from_disk(str(path))
    except FileNotFoundError as exc:
        raise RecipeError(f"{where}.path: {path} is not a saved `datasets` dir ({exc})") from None
    if isinstance(data, DatasetDict):
        if split is None or split not in data:
            raise RecipeError(f"{where}.split: expected one of {sorted(data)}, got {split!r}")
        data = data[split]
    for i, row in enumerate(data):
        if limit and i >= limit:
            return
        yield row


def _to_record(row: dict[str, Any], row_number: int, source: SourceConfig, path: Path) -> PromptRecord:
    fields = source.fields
    prompt = _required(row, fields.prompt, row_number, path)
    raw_id = row.get(fields.id) if fields.id else None
    if fields.id and fields.id not in row:
        raise RecipeError(f"{path}: row {row_number + 1}: missing field '{fields.id}' (sources.fields.id); set fields.id: null to number rows")
    local_id = str(raw_id) if raw_id is not None else str(row_number)
    reference = _optional(row, fields.reference)
    tests = tests_text(row, fields.tests)
    task_type = _optional(row, fields.task_type) or source.task_type
    language = _optional(row, fields.language) or _language(source.language, str(prompt))
    system = _optional(row, fields.system)
    return PromptRecord(
        prompt_id=f"{source.name}/{local_id}",
        source=source.name,
        prompt=str(prompt),
        reference=None if reference is None else str(reference),
        task_type=str(task_type),
        language=str(language),
        tests=tests,
        system=system,
        fields={k: v for k, v in row.items() if isinstance(v, (str, int, float, bool)) or v is None},
    )


def tests_text(row: dict[str, Any], field: str | None) -> str | None:
    """A row's code tests as the JSON text the store keeps (``CodeTests.from_dict`` input)."""
    tests = row.get(field) if field else None
    if tests is None or isinstance(tests, str):
        return tests
    # HumanEval-style tests need the entry point, which lives beside them in the row.
    if isinstance(tests, dict) and "entry_point" not in tests and "entry_point" in row:
        tests = {**tests, "entry_point": row["entry_point"]}
    return json.dumps(tests, sort_keys=True)


def _language(declared: str, prompt: str) -> str:
    """The source's declared language, or (``auto``) the prompt's, detected by script share."""
    if declared != "auto":
        return declared
    from verifiers.language import detect_language

    return detect_language(prompt) or "und"


def _required(row: dict[str, Any], name: str, row_number: int, path: Path) -> Any:
    value = row.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        keys = ", ".join(sorted(row)[:8])
        raise RecipeError(f"{path}: row {row_number + 1}: missing field '{name}' (sources.fields.prompt); row has: {keys}")
    return value


def _optional(row: dict[str, Any], name: str | None) -> str | None:
    if not name:
        return None
    value = row.get(name)
    return None if value is None else str(value)
