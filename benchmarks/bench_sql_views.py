"""Benchmark: what the once-per-sample_id `samples` view costs `factory sql`, against a plain view, in one run.

The store is built here: RUNS runs × SHARDS shards of generated-looking samples
(~1.5 kB of text each), written with RunStore.append_samples like `generate`
does. Each query goes through `factory.sql.run_sql` (the code path of
`factory sql`, connection set-up included), and the same query is timed on a
baseline connection, also built per query, whose `samples` view is a plain
read_parquet over the same files (what the view was before duplicates were
hidden). Two cases: runs whose manifests vouch for one row per id (the view
reads them as is) and the same runs with the counts removed from their
manifests, as a store from an older version may be (the view dedupes them).
Median of REPEAT runs each; ratio = view / plain.

Run:  python benchmarks/bench_sql_views.py [--quick]
Writes benchmarks/results/sql_views.json. The machine's cores are shared with
other jobs: compare the ratios, not the absolute times.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from factory.sql import run_sql  # noqa: E402
from factory.store import RunStore  # noqa: E402

QUERIES = {
    "count": "SELECT count(*) FROM samples",
    "group by task": "SELECT task_type, count(*), avg(completion_tokens) FROM samples GROUP BY ALL",
    "join verdicts": "SELECT count(*) FROM samples s JOIN verdicts v USING (sample_id) WHERE v.passed",
    "one sample's text": "SELECT text FROM samples WHERE sample_id = 'r0-s1-000007'",
}


def build_store(home: Path, runs: int, shards: int, rows: int) -> int:
    now = dt.datetime.now(dt.timezone.utc)
    filler = "Let me think step by step about this problem and check each part. " * 22
    total = 0
    for r in range(runs):
        store = RunStore(home / "runs" / f"r{r}")
        for s in range(shards):
            batch = [{"sample_id": f"r{r}-s{s}-{i:06d}", "run": f"r{r}", "prompt_id": f"p{i}", "sample_index": s,
                      "task_type": ("math", "code", "general")[i % 3], "prompt": f"Problem {i}", "text": filler + str(i),
                      "completion_tokens": 300 + i % 50, "created_at": now} for i in range(rows)]
            store.append_samples(batch)
            store.append_verdicts("format", [{"sample_id": b["sample_id"], "step": "format", "passed": i % 4 != 0,
                                              "created_at": now} for i, b in enumerate(batch)])
            total += rows
        store.write_manifest({"run": f"r{r}", "counts": {"samples": shards * rows, "unique_sample_ids": shards * rows}})
    return total


def plain_connection(home: Path) -> duckdb.DuckDBPyConnection:
    files = sorted(str(p) for p in home.glob("runs/*/samples/part-*.parquet"))
    verdicts = sorted(str(p) for p in home.glob("runs/*/verdicts/*/part-*.parquet"))
    con = duckdb.connect(":memory:")
    con.execute(f"CREATE VIEW samples AS SELECT * FROM read_parquet({files!r}, union_by_name=true)")
    con.execute(f"CREATE VIEW verdicts AS SELECT * FROM read_parquet({verdicts!r}, union_by_name=true)")
    return con


def timed(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    runs, shards, rows, repeat = (2, 4, 5_000, 3) if args.quick else (4, 10, 10_000, 5)
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        total = build_store(home, runs, shards, rows)
        results = []
        print(f"store: {total:,} samples in {runs * shards} shards")
        print(f"{'query':<20} {'runs':<8} {'view (s)':>10} {'plain (s)':>10} {'ratio':>7}")
        for case in ("counted", "uncounted"):
            if case == "uncounted":
                for manifest in home.glob("runs/*/manifest.json"):
                    manifest.write_text(json.dumps({k: v for k, v in json.loads(manifest.read_text()).items() if k != "counts"}))
            for name, query in QUERIES.items():
                assert sorted(run_sql(query, home).rows) == sorted(plain_connection(home).execute(query).fetchall()), name  # same answer
                view_s = timed(lambda: run_sql(query, home), repeat)
                plain_s = timed(lambda: plain_connection(home).execute(query).fetchall(), repeat)
                results.append({"query": name, "runs": case, "view_s": view_s, "plain_s": plain_s, "ratio": view_s / plain_s})
                print(f"{name:<20} {case:<8} {view_s:>10.3f} {plain_s:>10.3f} {view_s / plain_s:>7.2f}")
    out = Path(__file__).resolve().parent / "results" / "sql_views.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"samples": total, "shards": runs * shards, "repeat": repeat, "results": results}, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
