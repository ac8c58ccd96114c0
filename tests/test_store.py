"""The store: atomic shards under SIGKILL, stable ids, and readers that need no conversion."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pyarrow.parquet as pq

from factory.store import RunStore, make_sample_id, visible_shards
from tests.conftest import REPO

WRITER = r"""
import sys, datetime as dt
from pathlib import Path
from factory.store import RunStore
store = RunStore(Path(sys.argv[1]))
rows_per_shard = int(sys.argv[2])
for shard in range(10_000):
    rows = [{"sample_id": f"{shard}-{i}", "run": "r", "prompt_id": f"p{i}", "sample_index": 0,
             "text": "x" * 2000, "created_at": dt.datetime.now(dt.timezone.utc)} for i in range(rows_per_shard)]
    store.append_samples(rows)
    print(shard, flush=True)
"""


def test_sigkill_mid_shard_leaves_no_partial_shard(tmp_path: Path) -> None:
    rng = random.Random(7)
    store_dir = tmp_path / "run"
    rows_per_shard = 20_000
    for _ in range(4):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(store_dir), str(rows_per_shard)],
                                stdout=subprocess.PIPE, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
        proc.stdout.readline()  # at least one shard done: the next one is mid-write soon after
        time.sleep(rng.uniform(0.05, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    shards = visible_shards(store_dir / "samples")
    assert len(shards) >= 4
    for shard in shards:
        assert pq.read_metadata(shard).num_rows == rows_per_shard
    leftovers = [p for p in (store_dir / "samples").iterdir() if p not in shards]
    assert all(p.name.startswith(".") and not p.name.endswith(".parquet") for p in leftovers)
    # A reader globbing the directory sees only complete shards.
    total = duckdb.sql(f"SELECT count(*) FROM read_parquet('{store_dir}/samples/*.parquet')").fetchall()[0][0]
    assert total == rows_per_shard * len(shards)
    # A new writer continues after the existing shards without clobbering any.
    RunStore(store_dir).append_samples([{"sample_id": "late", "run": "r"}])
    assert len(visible_shards(store_dir / "samples")) == len(shards) + 1


def test_sample_id_is_stable_and_distinct() -> None:
    a = make_sample_id("recipehash", "gsm8k/1", 0)
    assert a == make_sample_id("recipehash", "gsm8k/1", 0)
    assert len({a, make_sample_id("recipehash", "gsm8k/1", 1), make_sample_id("recipehash", "gsm8k/2", 0),
                make_sample_id("otherhash", "gsm8k/1", 0)}) == 4


def test_store_loads_with_datasets_and_duckdb(tmp_path: Path) -> None:
    import datasets

    store = RunStore(tmp_path / "run")
    store.append_samples([{"sample_id": f"s{i}", "run": "run", "task_type": "math", "completion_tokens": i} for i in range(5)])
    store.append_samples([{"sample_id": f"t{i}", "run": "run", "task_type": "code", "completion_tokens": i} for i in range(3)])
    files = [str(p) for p in store.sample_shards()]
    ds = datasets.load_dataset("parquet", data_files=files, split="train")
    assert len(ds) == 8 and set(ds["task_type"]) == {"math", "code"}
    count = duckdb.sql(f"SELECT count(*) FROM read_parquet('{tmp_path}/run/samples/*.parquet') WHERE task_type='code'").fetchall()[0][0]
    assert count == 3
    store.append_verdicts("format", [{"sample_id": "s1", "step": "format", "passed": False, "code": "missing_think"}])
    assert store.latest_verdicts("format")["s1"]["code"] == "missing_think"
