"""`factory export` throughput and memory: the CLI command on synthetic runs of two sizes, vs a plain copy.

    python benchmarks/bench_export.py            # runs of 10K and 80K samples
    python benchmarks/bench_export.py --quick    # 2K and 16K

For each size a run is written through the store (R1-shaped samples, 2-4K characters, half of them
selected), then timed, each in a fresh process:
* `factory export --run R --out DIR` (the command: streaming shards, DuckDB statistics, plots, card);
* baseline: the least an export has to do: pyarrow reads every sample shard, keeps the selected
  rows and writes one Parquet file (no card, no subsets, no sharding).
Peak RSS of each process shows whether memory grows with the run (it should not for the export:
rows are streamed shard by shard; the baseline holds the whole table).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS = REPO / "benchmarks" / "results" / "export.json"

BASELINE = """
import sys, pyarrow as pa, pyarrow.compute as pc, pyarrow.parquet as pq
from pathlib import Path
run = Path(sys.argv[1])
verdicts = pa.concat_tables([pq.read_table(p) for p in sorted((run / "verdicts" / "selection").glob("part-*.parquet"))])
keep = verdicts.filter(verdicts.column("passed")).column("sample_id")
tables = [pq.read_table(p) for p in sorted((run / "samples").glob("part-*.parquet"))]
table = pa.concat_tables(tables)
pq.write_table(table.filter(pc.is_in(table.column("sample_id"), value_set=keep)), sys.argv[2], compression="zstd")
"""


def make_run(home: Path, samples: int, seed: int = 0) -> None:
    from factory.store import RunStore, make_sample_id, utc_now, write_json_atomically

    rng = random.Random(seed)
    store = RunStore.for_dataset("bench", home / "runs")
    store.root.mkdir(parents=True, exist_ok=True)
    write_json_atomically({"kind": "generate", "run": "bench", "recipe_name": "bench", "recipe_file": "bench.yaml",
                           "recipe_hash": "b" * 16, "recipe": {"sources": [{"license": "mit"}]}, "overrides": [], "seed": 0,
                           "teacher": {"role": "r1_zero", "backend": "openai", "model": "some-r1"},
                           "counts": {"samples": samples}, "created_at": utc_now().isoformat()}, store.manifest_path)
    words = "let me compute the sum then check each step again carefully wait so the answer is".split()
    for start in range(0, samples, 10_000):
        rows, verdicts = [], []
        for i in range(start, min(start + 10_000, samples)):
            reasoning = " ".join(rng.choice(words) for _ in range(rng.randint(350, 700)))
            sid = make_sample_id("b" * 16, f"p/{i // 4}", i % 4)
            rows.append({"sample_id": sid, "run": "bench", "recipe": "bench", "recipe_hash": "b" * 16, "prompt_id": f"p/{i // 4}",
                         "sample_index": i % 4, "source": "synthetic", "task_type": rng.choice(["math", "code", "general"]),
                         "language": "en", "prompt": f"Problem {i}: what is {i} + {i}?",
                         "prompt_messages": [{"role": "user", "content": f"Problem {i}: what is {i} + {i}?"}],
                         "teacher_role": "r1_zero", "backend": "openai", "model": "some-r1", "text": f"<think>{reasoning}</think> {2 * i}",
                         "reasoning": reasoning, "answer": f"\\boxed{{{2 * i}}}", "finish_reason": "stop",
                         "completion_tokens": len(reasoning) // 4, "created_at": utc_now()})
            verdicts.append({"sample_id": sid, "step": "selection", "passed": i % 2 == 0, "created_at": utc_now()})
        store.append_samples(rows)
        store.append_verdicts("selection", verdicts)


def measure(samples: int, workdir: Path) -> dict[str, float]:
    home = workdir / f"home{samples}"
    make_run(home, samples)
    env = {**os.environ, "FACTORY_HOME": str(home), "PYTHONPATH": str(REPO)}
    # RUSAGE_CHILDREN is a maximum over all children so far: measure each in its own helper process.
    probe = ("import resource, subprocess, sys, time; t=time.perf_counter(); "
             "subprocess.run(sys.argv[1:], check=True, capture_output=True); "
             "print(time.perf_counter()-t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)")
    results = {}
    for name, cmd in (("export", [sys.executable, "-m", "cli", "export", "--run", "bench", "--out", str(workdir / f"out{samples}")]),
                      ("baseline", [sys.executable, "-c", BASELINE, str(home / "runs" / "bench"), str(workdir / f"base{samples}.parquet")])):
        out = subprocess.run([sys.executable, "-c", probe, *cmd], env=env, capture_output=True, text=True, cwd=REPO)
        if out.returncode != 0:
            raise SystemExit(f"{name} failed:\n{out.stderr[-3000:]}")
        seconds, rss = map(float, out.stdout.split())
        results[f"{name}_s"] = seconds
        results[f"{name}_rss_mib"] = rss
    size = sum(p.stat().st_size for p in (home / "runs" / "bench" / "samples").glob("*.parquet"))
    results.update(samples=samples, selected=samples // 2, run_mib=size / 2**20,
                   export_rows_per_s=(samples // 2) / results["export_s"], ratio_vs_baseline=results["export_s"] / results["baseline_s"])
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    sizes = (2_000, 16_000) if args.quick else (10_000, 80_000)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(n, Path(tmp)) for n in sizes]
    print(f"{'samples':>8} {'run MiB':>8} {'export s':>9} {'rows/s':>8} {'RSS MiB':>8} {'baseline s':>11} {'base RSS':>9} {'x base':>7}")
    for r in rows:
        print(f"{r['samples']:>8} {r['run_mib']:>8.1f} {r['export_s']:>9.1f} {r['export_rows_per_s']:>8.0f} {r['export_rss_mib']:>8.0f} "
              f"{r['baseline_s']:>11.1f} {r['baseline_rss_mib']:>9.0f} {r['ratio_vs_baseline']:>7.2f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"sizes": rows, "host_note": "2 shared cores; wall-clock includes process start-up"}, indent=2))
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
