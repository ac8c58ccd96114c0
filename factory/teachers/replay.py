"""Replay/import: existing traces enter the store as if generated, with lineage backend=replay.

Row shapes and thinking conventions are read by ``factory.teachers.traces`` (ShareGPT, OpenAI
messages, prompt/completion, Alpaca, OpenR1's list of generations, any mapped columns; ``<think>``,
``<|begin_of_thought|>``, R1-distill's missing ``<think>``, a separate reasoning field). A prompt's
repeated traces become sample indices 0, 1, … in file order, so an import is exactly-once and
resumable like any generation.

An import streams: rows are read, converted and written in bounded shards, never held as a list.
The shards go to a staging directory beside the runs (``runs/.import-<run>-…``) and are published
only when the whole input has been read: a bad row anywhere leaves no run, no manifest and no
partial import behind, and the corrected recipe is then accepted as a first import.
On an object store (no rename) the shards are written into the run uncommitted and published by
one commit marker listing them all (factory/object_store.py): readers see all of them or none.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa

from factory.errors import RecipeError, StoreError
from factory.recipe import GenerateRecipe, ReplayOptions, SourceConfig, resolve_data_path
from factory.sources import read_rows, tests_text
from factory.store import MESSAGE, SAMPLE_SCHEMA, RunStore, make_sample_id, utc_now, visible_shards, write_parquet_atomically
from factory.text import escape_surrogates_in
from factory.teachers.traces import detect_shape, normalise_thinking, reference_of, traces_of, unrecognised

log = logging.getLogger(__name__)

# A staged shard is written when it holds this many traces or this much text, whichever comes
# first: few large shards for a million short traces, bounded memory for long R1 traces.
SHARD_ROWS = 50_000
SHARD_BYTES = 64 << 20
STAGING_PREFIX = ".import-"


def import_traces(recipe: GenerateRecipe, recipe_file: Path, rhash: str, overrides: list[str], *, held: contextlib.ExitStack,
                  new_run: bool = False, force: bool = False, progress: bool = True, locked: RunStore | None = None):
    """Read the traces a replay recipe names and publish the ones not yet in the run.

    The caller holds the run's writer lock; a --new-run run's lock is taken into `held`.
    """
    from factory.generate import GenerateReport, target_store

    options = recipe.teacher.replay
    assert options is not None
    path = resolve_data_path(options.path, recipe_file)
    store, mode = target_store(recipe, rhash, new_run=new_run, force=force, held=held, locked=locked)
    existing = store.sample_ids() if mode != "new" else set()
    started = time.monotonic()
    if store.filesystem is not None:  # an object store: uncommitted shards in the run, one commit at the end
        staged: list[str] = []
        writer = _StagedImport(recipe, options, path, rhash, store,
                               lambda table, _: staged.append(store.write_shard(store.samples_dir, table)), existing=existing)
        writer.run(recipe_file)
        _publish_committed(writer, recipe, recipe_file, rhash, overrides, store, staged, mode)
    else:
        _remove_stale_staging(store)
        staging = RunStore(store.root.parent / f"{STAGING_PREFIX}{store.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            writer = _StagedImport(recipe, options, path, rhash, store, _stage_into(staging), existing=existing)
            writer.run(recipe_file)
            _publish(writer, recipe, recipe_file, rhash, overrides, store, staging, mode)
        finally:
            if staging.root.exists():  # failed, or published by moving the shards out
                shutil.rmtree(staging.root, ignore_errors=True)
    seconds = time.monotonic() - started
    log.info("replay: format %s; thinking %s", _counts(writer.shapes), _counts(writer.conventions))
    report = GenerateReport(
        run=store.name, run_dir=store.location, prompts=len(writer.seen_per_prompt), planned=writer.total,
        already_present=writer.skipped, generated=writer.generated, errors=0, retries=0, prompt_tokens=0,
        completion_tokens=0, seconds=seconds, shards_written=writer.shards,
    )
    report.extra.update(formats=dict(writer.shapes), thinking=dict(writer.conventions), languages=dict(writer.languages))
    return report


class _StagedImport:
    """Streams a trace file into staged shards; counts what it saw."""

    def __init__(self, recipe: GenerateRecipe, options: ReplayOptions, path: Path, rhash: str, store: RunStore,
                 stage: Callable[[pa.Table, int], None], *, existing: set[str]) -> None:
        self.recipe, self.options, self.path, self.rhash = recipe, options, path, rhash
        self.run_name = store.name
        self.stage = stage  # writes one staged shard (table, its number), unpublished
        self.existing = existing
        self.seen_per_prompt: Counter[str] = Counter()
        self.shapes: Counter[str] = Counter()
        self.conventions: Counter[str] = Counter()
        self.languages: Counter[str] = Counter()
        self.total = self.skipped = self.generated = self.shards = 0
        self.buffer = _Columns()

    def run(self, recipe_file: Path) -> None:
        options = self.options
        source = SourceConfig(name="replay", path=str(self.path), format=options.file_format, split=options.split,
                              limit=options.limit)
        rows = read_rows(self.path, source, where=f"{recipe_file}: teacher.replay")
        for row_number, raw in enumerate(rows, 1):
            self._add_row(raw, row_number)
            if self.buffer.rows >= SHARD_ROWS or self.buffer.text_bytes >= SHARD_BYTES:
                self._flush()
        if self.total == 0:
            raise RecipeError(f"{self.path}: teacher.replay.path has no traces; expected at least one row")
        self._flush()
        log.info("replay: %d traces read, %d staged, %d already present", self.total, self.generated, self.skipped)

    def _add_row(self, raw: dict[str, Any], row_number: int) -> None:
        options, fields = self.options, self.options.fields
        where = f"{self.path}: row {row_number}"
        shape = options.format if options.format != "auto" else detect_shape(raw, fields)
        if shape is None:
            raise unrecognised(raw, where)
        if shape not in self.shapes:
            log.debug("replay: %s: format %s (columns: %s)", where, shape, ", ".join(sorted(map(str, raw))[:12]))
        self.shapes[shape] += 1
        row_language = raw.get(fields.language) if fields.language else None
        reference = reference_of(raw, fields)
        tests = tests_text(raw, fields.tests)
        task_type = str((raw.get(fields.task_type) if fields.task_type else None) or options.default_task_type)
        model = str(raw[fields.model]) if fields.model and raw.get(fields.model) else self.recipe.teacher.model
        explicit_id = raw.get(fields.prompt_id) if fields.prompt_id else None
        last_prompt, language = None, "und"
        for trace in traces_of(raw, shape, fields, where):
            self.total += 1
            prompt = next((m["content"] for m in reversed(trace.prompt_messages) if m["role"] == "user"), "")
            prompt_id = "replay/" + (str(explicit_id) if explicit_id is not None else _text_id(prompt))
            index = self.seen_per_prompt[prompt_id]
            self.seen_per_prompt[prompt_id] += 1
            sample_id = make_sample_id(self.rhash, prompt_id, index)
            if sample_id in self.existing:
                self.skipped += 1
                continue
            thinking = normalise_thinking(trace.completion, trace.reasoning, convention=options.thinking,
                                          tags=options.think_tags)
            if prompt != last_prompt:  # OpenR1 rows: one prompt, many traces
                language, last_prompt = self._language(row_language, prompt), prompt
            self.conventions[thinking.convention] += 1
            self.languages[language] += 1
            labels = trace.labels or None
            self.buffer.add(  # in _Columns.NAMES order
                sample_id, prompt_id, index, task_type, language, prompt, trace.prompt_messages, reference, tests, model,
                thinking.text, thinking.reasoning, thinking.answer, _finish_reason(thinking.closed, labels),
                thinking.convention, _labels_json(labels),
            )

    def _language(self, row_language: Any, prompt: str) -> str:
        from verifiers.language import detect_language

        if isinstance(row_language, str) and row_language.strip():
            return row_language.strip()
        if self.options.language != "auto":
            return self.options.language
        return detect_language(prompt) or "und"

    def _flush(self) -> None:
        if not self.buffer.rows:
            return
        table = self.buffer.table(run=self.run_name, recipe=self.recipe, rhash=self.rhash, source=self.path.name)
        self.shards += 1
        self.stage(table, self.shards)
        self.generated += table.num_rows
        self.buffer = _Columns()


class _Columns:
    """Per-column lists of the varying sample fields; constant lineage columns are filled at flush."""

    NAMES = ("sample_id", "prompt_id", "sample_index", "task_type", "language", "prompt", "prompt_messages", "reference",
             "tests", "model", "text", "reasoning", "answer", "finish_reason", "thinking", "source_labels")

    def __init__(self) -> None:
        self.columns: dict[str, list[Any]] = {name: [] for name in self.NAMES}
        self.lists = list(self.columns.values())
        self.rows = 0
        self.text_bytes = 0

    def add(self, *values: Any) -> None:
        """One sample's values, in the order of ``NAMES``."""
        for column, value in zip(self.lists, values):
            column.append(value)
        self.rows += 1
        self.text_bytes += len(values[10]) + len(values[5])  # text + prompt

    def table(self, *, run: str, recipe: GenerateRecipe, rhash: str, source: str) -> pa.Table:
        n = self.rows
        # created_at as epoch microseconds: converting a tz-aware datetime makes pyarrow import pandas.
        now_us = int(utc_now().timestamp() * 1_000_000)
        constant = {"run": run, "recipe": recipe.name, "recipe_hash": rhash, "source": source,
                    "teacher_role": recipe.teacher.role, "backend": "replay", "attempts": 1, "created_at": now_us}
        arrays = []
        for field in SAMPLE_SCHEMA:
            if field.name in self.columns:
                values = self.columns[field.name]
                type_ = pa.list_(MESSAGE) if field.name == "prompt_messages" else field.type
                try:
                    arrays.append(pa.array(values, type=type_))
                except (pa.ArrowException, UnicodeEncodeError):  # lone surrogates from JSON escapes: stored escaped
                    arrays.append(pa.array(escape_surrogates_in(values), type=type_))
            elif field.name == "created_at":
                arrays.append(pa.array([now_us] * n, type=pa.int64()).cast(field.type))
            elif field.name in constant:
                arrays.append(pa.repeat(pa.scalar(constant[field.name], type=field.type), n))
            else:  # sampling settings, token counts, latency: unknown for someone else's traces
                arrays.append(pa.nulls(n, field.type))
        return pa.Table.from_arrays(arrays, schema=SAMPLE_SCHEMA)


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{name} ({count:,})" for name, count in counter.most_common()) or "none"


def _finish_reason(closed: bool, labels: dict[str, Any] | None) -> str | None:
    # The source's own finish reason when it kept one (OpenR1's `finish_reasons`); an unclosed
    # reasoning block with none is unknown, which the format step reads as truncated.
    for key in ("finish_reasons", "finish_reason"):
        value = (labels or {}).get(key)
        if isinstance(value, str) and value:
            return value
    return "stop" if closed else None


def _labels_json(labels: dict[str, Any] | None) -> str | None:
    if not labels:
        return None
    import json

    return json.dumps(labels, sort_keys=True, ensure_ascii=False, default=str)


def _publish(writer: _StagedImport, recipe: GenerateRecipe, recipe_file: Path, rhash: str, overrides: list[str],
             store: RunStore, staging: RunStore, mode: str) -> None:
    """Make the staged import visible: a new run appears by one rename; an existing one gains its shards."""
    from factory.generate import new_manifest, updated_manifest

    session = {"finished_at": utc_now().isoformat(), "imported": writer.generated, "skipped": writer.skipped,
               "formats": dict(writer.shapes), "thinking": dict(writer.conventions)}
    if mode == "new":
        manifest = new_manifest(recipe, rhash, recipe_file, overrides, store.name)
        manifest["counts"] = {"samples": writer.generated, "prompts": len(writer.seen_per_prompt)}
        manifest["sessions"].append(session)
        staging.root.mkdir(parents=True, exist_ok=True)
        staging.write_manifest(manifest)
        try:
            os.rename(staging.root, store.root)  # an empty leftover dir is replaced; anything else refuses
        except OSError as exc:
            raise StoreError(f"{store.root}: could not publish the import ({exc.strerror}); another writer created "
                             "this run meanwhile: re-run the import to add what is missing") from None
        return
    sequence = store.next_sequence(store.samples_dir)
    store.samples_dir.mkdir(parents=True, exist_ok=True)
    for offset, shard in enumerate(visible_shards(staging.samples_dir)):
        # Each shard is complete on its own: a crash between two moves leaves a resumable import.
        os.replace(shard, store.samples_dir / f"part-{sequence + offset:06d}-{uuid.uuid4().hex[:8]}.parquet")
    manifest = updated_manifest(store.read_manifest(), recipe, rhash, overrides, forced=mode == "force")
    manifest["counts"] = {"samples": len(writer.existing) + writer.generated, "prompts": len(writer.seen_per_prompt)}
    manifest.setdefault("sessions", []).append(session)
    store.write_manifest(manifest)


def _stage_into(staging: RunStore) -> Callable[[pa.Table, int], None]:
    def stage(table: pa.Table, number: int) -> None:
        write_parquet_atomically(table, staging.samples_dir / f"part-{number:06d}-{uuid.uuid4().hex[:8]}.parquet")

    return stage


def _publish_committed(writer: _StagedImport, recipe: GenerateRecipe, recipe_file: Path, rhash: str,
                       overrides: list[str], store: RunStore, staged: list[str], mode: str) -> None:
    """Object store: the run's manifest (a new run's, still counting no samples), then one commit of every staged
    shard, then the counts. A crash before the commit leaves the run as it was; after it, complete."""
    from factory.generate import new_manifest, updated_manifest

    session = {"finished_at": utc_now().isoformat(), "imported": writer.generated, "skipped": writer.skipped,
               "formats": dict(writer.shapes), "thinking": dict(writer.conventions)}
    if mode == "new":
        manifest = new_manifest(recipe, rhash, recipe_file, overrides, store.name)
        manifest["counts"] = {"samples": 0, "prompts": 0}
        store.write_manifest(manifest)
    manifest = updated_manifest(store.read_manifest(), recipe, rhash, overrides, forced=mode == "force")
    store.commit(store.samples_dir, staged)
    manifest["counts"] = {"samples": len(writer.existing) + writer.generated, "prompts": len(writer.seen_per_prompt)}
    manifest.setdefault("sessions", []).append(session)
    store.write_manifest(manifest)


def _remove_stale_staging(store: RunStore) -> None:
    """Staging dirs of imports into this run whose process is gone (killed mid-import)."""
    if not store.root.parent.exists():
        return
    for leftover in store.root.parent.glob(f"{STAGING_PREFIX}{store.name}-*"):
        match = _STAGING_NAME.fullmatch(leftover.name)
        if match and match["run"] == store.name and not _alive(int(match["pid"])):
            shutil.rmtree(leftover, ignore_errors=True)


_STAGING_NAME = re.compile(re.escape(STAGING_PREFIX) + r"(?P<run>.+)-(?P<pid>\d+)-[0-9a-f]{8}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _text_id(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
