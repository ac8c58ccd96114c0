"""Replay/import: existing traces enter the store as if generated, with lineage backend=replay.

Two shapes are understood, mapped by `teacher.replay.fields`:
  * `messages` (OpenThoughts / chat style): a list of {role, content[, reasoning_content]};
    the last assistant turn is the sample, the turns before it are the prompt;
  * `problem` / `generation` columns (OpenR1-Math style), optionally with a separate
    `reasoning` column; `<think>` text inside the generation is split out.
A prompt's repeated traces become sample indices 0, 1, … in file order, so an
import is exactly-once and resumable like any generation.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

from factory.errors import RecipeError
from factory.recipe import GenerateRecipe, ReplayOptions, SourceConfig, resolve_data_path
from factory.sources import _read_rows, tests_text
from factory.store import RunStore, make_sample_id, utc_now
from factory.teachers.base import split_think

log = logging.getLogger(__name__)


def import_traces(recipe: GenerateRecipe, recipe_file: Path, store: RunStore, rhash: str, *, progress: bool = True):
    """Read the traces a replay recipe names and append the ones not yet in the run."""
    from factory.generate import GenerateReport

    options = recipe.teacher.replay
    assert options is not None
    path = resolve_data_path(options.path, recipe_file)
    pseudo_source = SourceConfig(name="replay", path=str(path), format=options.format)
    existing = store.sample_ids()
    seen_per_prompt: Counter[str] = Counter()
    rows: list[dict[str, Any]] = []
    total = skipped = 0
    generated = shards = 0
    for line_number, raw in enumerate(_read_rows(path, pseudo_source, where=f"{recipe_file}: teacher.replay"), 1):
        total += 1
        row = _trace_to_row(raw, line_number, options, recipe, path, rhash, store.name, seen_per_prompt)
        if row["sample_id"] in existing:
            skipped += 1
            continue
        rows.append(row)
        if len(rows) >= recipe.generation.flush_every:
            store.append_samples(rows)
            generated += len(rows)
            shards += 1
            rows = []
    if total == 0:
        raise RecipeError(f"{path}: teacher.replay.path has no traces; expected at least one row")
    if rows:
        store.append_samples(rows)
        generated += len(rows)
        shards += 1
    log.info("replay: %d traces read, %d imported, %d already present", total, generated, skipped)
    manifest = store.read_manifest()
    manifest["counts"] = {"samples": len(store.sample_ids()), "prompts": len(seen_per_prompt)}
    manifest.setdefault("sessions", []).append({"finished_at": utc_now().isoformat(), "imported": generated, "skipped": skipped})
    store.write_manifest(manifest)
    return GenerateReport(
        run=store.name, run_dir=str(store.root), prompts=len(seen_per_prompt), planned=total, already_present=skipped,
        generated=generated, errors=0, retries=0, prompt_tokens=0, completion_tokens=0, seconds=0.0, shards_written=shards,
    )


def _trace_to_row(
    raw: dict[str, Any], line_number: int, options: ReplayOptions, recipe: GenerateRecipe, path: Path, rhash: str,
    run: str, seen_per_prompt: Counter[str],
) -> dict[str, Any]:
    fields = options.fields
    where = f"{path}: row {line_number}"
    if fields.messages and fields.messages in raw:
        prompt_messages, text, reasoning = _from_messages(raw[fields.messages], where, fields.messages)
    else:
        prompt_text = raw.get(fields.prompt or "")
        generation = raw.get(fields.generation or "")
        if not prompt_text or generation is None:
            have = ", ".join(sorted(raw)[:10])
            raise RecipeError(
                f"{where}: expected fields '{fields.messages or 'messages'}' or '{fields.prompt}'+'{fields.generation}' "
                f"(teacher.replay.fields); row has: {have}"
            )
        prompt_messages = [{"role": "user", "content": str(prompt_text)}]
        text = str(generation)
        reasoning = raw.get(fields.reasoning) if fields.reasoning else None
    full, reasoning, answer = split_think(text, reasoning)
    prompt = prompt_messages[-1]["content"]
    prompt_id = str(raw[fields.prompt_id]) if fields.prompt_id and raw.get(fields.prompt_id) is not None else _text_id(prompt)
    prompt_id = f"replay/{prompt_id}"
    index = seen_per_prompt[prompt_id]
    seen_per_prompt[prompt_id] += 1
    task_type = (raw.get(fields.task_type) if fields.task_type else None) or options.default_task_type
    return {
        "sample_id": make_sample_id(rhash, prompt_id, index),
        "run": run,
        "recipe": recipe.name,
        "recipe_hash": rhash,
        "prompt_id": prompt_id,
        "sample_index": index,
        "source": path.name,
        "task_type": str(task_type),
        "language": "en",
        "prompt": prompt,
        "prompt_messages": prompt_messages,
        "reference": None if not fields.reference or raw.get(fields.reference) is None else str(raw[fields.reference]),
        "tests": tests_text(raw, fields.tests),
        "teacher_role": recipe.teacher.role,
        "backend": "replay",
        "model": str(raw.get(fields.model)) if fields.model and raw.get(fields.model) else recipe.teacher.model,
        "temperature": None,
        "top_p": None,
        "max_new_tokens": None,
        "seed": None,
        "text": full,
        "reasoning": reasoning,
        "answer": answer,
        "finish_reason": "stop" if answer else "length",
        "prompt_tokens": None,
        "completion_tokens": None,
        "latency_s": None,
        "attempts": 1,
        "endpoint": None,
        "created_at": utc_now(),
    }


def _from_messages(value: Any, where: str, name: str) -> tuple[list[dict[str, str]], str, str | None]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise RecipeError(f"{where}: field '{name}' is not a list of messages") from None
    if not isinstance(value, list) or not value:
        raise RecipeError(f"{where}: field '{name}': expected a non-empty list of {{role, content}} messages")
    turns = [{"role": str(m.get("role", "")), "content": str(m.get("content") or "")} for m in value if isinstance(m, dict)]
    last_assistant = max((i for i, m in enumerate(turns) if m["role"] == "assistant"), default=None)
    if last_assistant is None or last_assistant == 0:
        raise RecipeError(f"{where}: field '{name}': expected a user turn followed by an assistant turn")
    reasoning = value[last_assistant].get("reasoning_content") if isinstance(value[last_assistant], dict) else None
    return turns[:last_assistant], turns[last_assistant]["content"], reasoning


def _text_id(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]
