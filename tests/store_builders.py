"""Small real stores for tests that need a run on disk but no teacher."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import pyarrow.parquet as pq

from factory.store import RunStore


def tree_digest(root: Path) -> dict[str, str]:
    """path → sha256 of every file under root: 'unchanged store' means equal digests."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def make_run(home: Path, name: str = "toy", samples: int = 6) -> RunStore:
    """A run of `samples` math samples (one per prompt) with a manifest, as `factory generate` leaves it."""
    store = RunStore(home / "runs" / name)
    now = dt.datetime.now(dt.timezone.utc)
    rows = [{"sample_id": f"{name}-{i:04d}", "run": name, "recipe": name, "recipe_hash": "h", "prompt_id": f"p{i}",
             "sample_index": 0, "source": "toy", "task_type": "math", "language": "en", "prompt": f"Compute {i} + 1.",
             "reference": str(i + 1), "text": f"<think>\n{i} plus 1 is {i + 1}.\n</think>\n\n\\boxed{{{i + 1}}}",
             "reasoning": f"{i} plus 1 is {i + 1}.", "answer": f"\\boxed{{{i + 1}}}", "finish_reason": "stop",
             "completion_tokens": 12, "created_at": now} for i in range(samples)]
    store.append_samples(rows)
    store.write_manifest({"kind": "generate", "run": name, "recipe_name": name, "recipe_hash": "h",
                          "recipe": {"filters": [{"step": "format"}, {"step": "correctness"}], "selection": {"k": 1}},
                          "created_at": now.isoformat(), "counts": {"samples": samples}})
    return store


def duplicate_first_shard(store: RunStore) -> Path:
    """What two unlocked writers left behind: every sample written twice, in a second shard."""
    first = store.sample_shards()[0]
    copy = first.with_name("part-000999-dupl0000.parquet")
    pq.write_table(pq.read_table(first), copy)
    return copy
