"""Mixing: curated runs → one SFT training set, to quotas, stratified, seeded.

The paper's mix is ~600K reasoning + ~200K non-reasoning samples; a mix
recipe states those quotas at paper scale and a `scale` for small runs. Within
each component, samples are drawn proportionally across strata (task type,
source, teacher role) so a small mix keeps the shape of a large one.

Memory: the draw works on compact rows (id, strata, a 16-byte key of prompt + response);
text is read back from the run shards only for the drawn samples, a window of rows at a
time, so a mix of any size is written with bounded memory. With ``dedup_exact`` (default)
a sample whose prompt and response equal one already in the mix is dropped, counted per
component in the report.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from factory.errors import FactoryError, RecipeError, StoreError
from factory.filter import read_accepted_ids
from factory.paths import factory_home, runs_dir, runs_location
from factory.recipe import MixRecipe, find_recipe, load_recipe, recipe_hash
from factory.store import RunStore, utc_now, write_json_atomically

log = logging.getLogger(__name__)

MIX_MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string()), ("reasoning_content", pa.string())])
MIX_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("run", pa.string()),
        ("source", pa.string()),
        ("task_type", pa.string()),
        ("teacher_role", pa.string()),
        ("prompt_id", pa.string()),
        ("messages", pa.list_(MIX_MESSAGE)),
    ]
)
COLUMNS = ["sample_id", "run", "source", "task_type", "teacher_role", "prompt_id", "prompt_messages", "reasoning", "answer"]
KEY_COLUMNS = ["sample_id", "run", "source", "task_type", "teacher_role", "prompt_id"]
WINDOW_ROWS = 50_000  # drawn samples whose text is held at once while writing


@dataclass
class ComponentReport:
    run: str
    quota: int
    available: int
    taken: int
    by_stratum: dict[str, int] = field(default_factory=dict)
    duplicates_dropped: int = 0


@dataclass
class MixReport:
    dataset: str
    path: str
    samples: int
    components: list[ComponentReport]
    duplicates_dropped: int = 0


def datasets_dir() -> Path:
    return factory_home() / "datasets"


def run_mix(recipe_name: str = "sft_mix", overrides: list[str] | None = None) -> MixReport:
    """Build the training set a mix recipe describes. The single entry point of this stage."""
    recipe = load_recipe(recipe_name, overrides)
    if not isinstance(recipe, MixRecipe):
        raise RecipeError(f"{recipe_name}: kind '{recipe.kind}' is not a mix recipe")
    rng = random.Random(recipe.seed)
    rows: list[dict[str, Any]] = []
    reports = []
    seen: set[bytes] = set()
    for component in recipe.components:
        quota = max(0, round(component.quota * recipe.scale))
        candidates = _component_rows(component.run, component.task_types, curated=component.curated)
        dropped = 0
        if recipe.dedup_exact:
            kept = [r for r in candidates if r["key"] not in seen]
            dropped = len(candidates) - len(kept)
            seen.update(r["key"] for r in kept)
            candidates = kept
            if dropped:
                log.info("mix %s: run '%s': %d exact prompt+response duplicates dropped", recipe.name, component.run, dropped)
        taken, strata = _stratified_take(candidates, quota, recipe.stratify_by, rng)
        if len(taken) < quota:
            log.warning("mix %s: run '%s' has %d curated samples for a quota of %d; taking all", recipe.name, component.run, len(candidates), quota)
        reports.append(ComponentReport(component.run, quota, len(candidates), len(taken), strata, dropped))
        rows.extend(taken)
    if not rows:
        raise FactoryError(f"mix '{recipe.name}': no curated samples in {', '.join(c.run for c in recipe.components)}; "
                           "run `factory filter --run RUN` first (or check the filters reject less)")
    rng.shuffle(rows)
    out = datasets_dir() / recipe.output.dataset
    _write_mix(rows, out / "data" / "part-00000.parquet")
    duplicates = sum(c.duplicates_dropped for c in reports)
    manifest = {
        "kind": "mix", "dataset": recipe.output.dataset, "recipe_name": recipe.name, "recipe_file": str(find_recipe(recipe_name)),
        "recipe_hash": recipe_hash(recipe), "recipe": recipe.model_dump(mode="json"), "seed": recipe.seed, "samples": len(rows),
        "duplicates_dropped": duplicates, "components": [asdict(c) for c in reports], "created_at": utc_now().isoformat(),
    }
    write_json_atomically(manifest, out / "manifest.json")
    return MixReport(recipe.output.dataset, str(out), len(rows), reports, duplicates)


def _component_rows(run: str, task_types: list[str] | None, *, curated: bool = True) -> list[dict[str, Any]]:
    """The run's curated samples (every sample with `curated=False`) as compact rows: ids, strata and the exact key, no text."""
    if not isinstance(runs_location(), Path):
        raise StoreError(f"factory mix: reads runs on local disk only, and the store is {runs_location()}; "
                         "copy the runs to a local --store first")
    store = RunStore(runs_dir() / run)
    if not store.exists():
        log.warning("mix component run '%s': not found in %s; skipped (generate and filter it to include it)", run, runs_dir())
        return []
    accepted: pa.Array | None = None
    if curated:
        accepted_ids = read_accepted_ids(store)
        if not accepted_ids and not store.verdict_steps():
            raise FactoryError(f"mix component run '{run}': not filtered yet; run `factory filter --run {run}`")
        accepted = pa.array(accepted_ids, pa.string())
    rows: list[dict[str, Any]] = []
    for shard in store.sample_shards():
        for batch in pq.ParquetFile(shard).iter_batches(batch_size=2048, columns=COLUMNS):
            table = pa.Table.from_batches([batch])
            if accepted is not None:
                table = table.filter(pc.is_in(table.column("sample_id"), value_set=accepted))
            if task_types:
                table = table.filter(pc.is_in(table.column("task_type"), value_set=pa.array(task_types, pa.string())))
            for row in table.to_pylist():
                compact = {k: row[k] for k in KEY_COLUMNS}
                compact["key"] = _exact_key(_training_row(row)["messages"])
                compact["shard"] = str(shard)
                rows.append(compact)
    return sorted(rows, key=lambda r: r["sample_id"])


def _exact_key(messages: list[dict[str, Any]]) -> bytes:
    """16 bytes identifying a training pair's exact text (prompt turns, reasoning, answer)."""
    digest = hashlib.blake2b(digest_size=16)
    for m in messages:
        for part in (m["role"], m["content"], m["reasoning_content"]):
            digest.update((part or "").encode())
            digest.update(b"\x1f")
    return digest.digest()


def _write_mix(rows: list[dict[str, Any]], target: Path) -> None:
    """The drawn samples in their shuffled order, text read back a window at a time."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp"
    with pq.ParquetWriter(tmp, MIX_SCHEMA, compression="zstd") as writer:
        for start in range(0, len(rows), WINDOW_ROWS):
            window = rows[start:start + WINDOW_ROWS]
            wanted: dict[str, set[str]] = defaultdict(set)
            for r in window:
                wanted[r["shard"]].add(r["sample_id"])
            found: dict[str, dict[str, Any]] = {}
            for shard, ids in wanted.items():
                value_set = pa.array(sorted(ids), pa.string())
                for batch in pq.ParquetFile(shard).iter_batches(batch_size=2048, columns=COLUMNS):
                    table = pa.Table.from_batches([batch])
                    for row in table.filter(pc.is_in(table.column("sample_id"), value_set=value_set)).to_pylist():
                        found[(shard, row["sample_id"])] = _training_row(row)
            writer.write_table(pa.Table.from_pylist([found[(r["shard"], r["sample_id"])] for r in window], schema=MIX_SCHEMA))
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, target)


def _stratified_take(rows: list[dict[str, Any]], quota: int, keys: list[str], rng: random.Random) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Proportional allocation over strata (largest remainder), seeded draws within each."""
    if quota >= len(rows):
        strata_counts: dict[str, int] = defaultdict(int)
        for r in rows:
            strata_counts[_stratum(r, keys)] += 1
        return list(rows), dict(strata_counts)
    strata: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        strata[_stratum(r, keys)].append(r)
    total = len(rows)
    exact = {k: quota * len(v) / total for k, v in strata.items()}
    alloc = {k: int(x) for k, x in exact.items()}
    leftover = quota - sum(alloc.values())
    for k in sorted(exact, key=lambda k: (-(exact[k] - alloc[k]), k))[:leftover]:
        alloc[k] += 1
    taken: list[dict[str, Any]] = []
    for k in sorted(strata):
        taken.extend(rng.sample(strata[k], alloc[k]))
    return taken, {k: alloc[k] for k in sorted(alloc)}


def _stratum(row: dict[str, Any], keys: list[str]) -> str:
    return "/".join(str(row.get(k)) for k in keys) or "all"


def _training_row(row: dict[str, Any]) -> dict[str, Any]:
    # The SFT pair is (question, response): few-shot turns of the generation prompt are not trained on.
    prompt = row["prompt_messages"] or []
    system = [m for m in prompt[:1] if m["role"] == "system"]
    user = [m for m in prompt if m["role"] == "user"][-1:]
    messages = [{"role": m["role"], "content": m["content"], "reasoning_content": ""} for m in system + user]
    messages.append({"role": "assistant", "content": row["answer"] or "", "reasoning_content": row["reasoning"] or ""})
    return {
        "sample_id": row["sample_id"], "run": row["run"], "source": row["source"], "task_type": row["task_type"],
        "teacher_role": row["teacher_role"], "prompt_id": row["prompt_id"], "messages": messages,
    }
