"""Importing traces at scale: `factory generate` with a replay teacher, streaming, in a fresh process.

    python benchmarks/bench_import.py               # 100K and 1M traces
    python benchmarks/bench_import.py --sizes 20000 # a quick run

The input is a JSONL file of synthetic traces in the four commonest shapes, one quarter each:
ShareGPT ``conversations`` with ``<|begin_of_thought|>``/``<|begin_of_solution|>`` (OpenThoughts,
Stratos), OpenAI ``messages`` with ``reasoning_content``, R1-distill ``prompt``/``completion`` missing
the opening ``<think>``, and OpenR1-Math rows of 4 ``generations`` with ``correctness_math_verify``
(one row = 4 traces); a fifth of the prompts are Chinese. Traces are short (~400 characters) so
the timing is of the importer, not of disk bandwidth.

Measured in one run, per size:
* ``run_generate`` on the replay recipe (the function the CLI command calls) in a fresh
  subprocess: wall time, traces/s, traces per CPU-second (the import is one process on one
  core: this is the number a shared, loaded machine cannot distort), peak RSS of that process;
* baseline: the same file read line by line with the standard library's ``json.loads`` and
  nothing else, in the same process — the floor any JSONL importer pays.
Peak RSS that stays flat from 100K to 1M traces is what "streams" means here.

The machine's 2 cores are shared with other jobs: timings move by ±30% between runs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESULTS = Path(__file__).resolve().parent / "results" / "import.json"
REPO = Path(__file__).resolve().parents[1]

_ENGLISH = ["What is {a} plus {b}?", "Compute {a} times {b}.", "Find x if x - {a} = {b}."]
_CHINESE = ["计算 {a} 加 {b} 的结果。", "求 {a} 乘以 {b} 的值。"]


def _prompt(rng: random.Random, i: int) -> str:
    template = rng.choice(_CHINESE) if i % 5 == 0 else rng.choice(_ENGLISH)
    return template.format(a=rng.randint(1, 10**6), b=rng.randint(1, 10**6)) + f" (#{i})"


def _reasoning(rng: random.Random, chinese: bool) -> str:
    if chinese:
        return "我们先把两个数写下来，然后逐位相加，注意进位，最后检查结果。" * 3
    return "First write both numbers down, then add them digit by digit, carrying where needed. " * 3


def write_traces(path: Path, traces: int, seed: int = 0) -> int:
    """A JSONL file with `traces` traces (rows of four shapes); returns the number of rows."""
    rng = random.Random(seed)
    written = rows = 0
    with open(path, "w", encoding="utf-8") as handle:
        while written < traces:
            prompt = _prompt(rng, rows)
            chinese = rows % 5 == 0
            reasoning = _reasoning(rng, chinese)
            answer = f"\\boxed{{{rng.randint(1, 10**6)}}}"
            kind = rows % 4
            if kind == 0:
                row = {"system": "Think first.", "conversations": [
                    {"from": "user", "value": prompt},
                    {"from": "assistant", "value": f"<|begin_of_thought|>\n\n{reasoning}\n\n<|end_of_thought|>\n\n"
                                                   f"<|begin_of_solution|>\n\n{answer}\n\n<|end_of_solution|>"}]}
                count = 1
            elif kind == 1:
                row = {"messages": [{"role": "user", "content": prompt},
                                    {"role": "assistant", "content": answer, "reasoning_content": reasoning}]}
                count = 1
            elif kind == 2:
                row = {"prompt": prompt, "completion": f"{reasoning}\n</think>\n\n{answer}"}
                count = 1
            else:
                count = min(4, traces - written)
                row = {"problem": prompt, "answer": "42", "generations": [f"<think>\n{reasoning}\n</think>\n\n{answer}"] * count,
                       "correctness_math_verify": [rng.random() < 0.5 for _ in range(count)]}
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            written += count
            rows += 1
    return rows


def baseline_json_loads(path: Path) -> float:
    """Seconds to parse every line with the standard library and do nothing else."""
    started = time.perf_counter()
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            json.loads(line)
    return time.perf_counter() - started


_CHILD = """
import json, resource, sys, time
from factory.generate import run_generate
started, cpu = time.perf_counter(), time.process_time()
report = run_generate(sys.argv[1], progress=False)
seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "generated": report.generated, "planned": report.planned,
                  "shards": report.shards_written, "formats": report.extra["formats"],
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def import_in_subprocess(recipe: Path, home: Path) -> dict:
    env = {**os.environ, "FACTORY_HOME": str(home), "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(recipe)], capture_output=True, text=True, env=env, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(traces: int, workdir: Path) -> dict:
    data = workdir / f"traces-{traces}.jsonl"
    rows = write_traces(data, traces)
    recipe = workdir / f"import-{traces}.yaml"
    recipe.write_text(f"kind: generate\nname: bench_import\nteacher:\n  role: rl_1\n  backend: replay\n"
                      f"  replay:\n    path: {data}\noutput: {{dataset: bench_import_{traces}}}\n")
    result = import_in_subprocess(recipe, workdir / "home")
    assert result["generated"] == traces, result
    baseline = baseline_json_loads(data)
    size_mb = data.stat().st_size / 2**20
    data.unlink()
    return {"traces": traces, "rows": rows, "file_mb": round(size_mb, 1), "seconds": round(result["seconds"], 2),
            "traces_per_s": round(traces / result["seconds"]), "cpu_seconds": round(result["cpu_seconds"], 2),
            "traces_per_cpu_s": round(traces / result["cpu_seconds"]), "peak_rss_mb": round(result["peak_rss_mb"]),
            "shards": result["shards"], "formats": result["formats"],
            "baseline_json_loads_s": round(baseline, 2), "baseline_rows_per_s": round(rows / baseline),
            "import_vs_json_loads": round(baseline / result["seconds"], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="factory_bench_import_") as tmp:
        for traces in args.sizes:
            results.append(measure(traces, Path(tmp)))
            r = results[-1]
            print(f"{r['traces']:>9,} traces ({r['rows']:,} rows, {r['file_mb']} MB): {r['seconds']:>7.2f} s  "
                  f"{r['traces_per_s']:>8,} traces/s ({r['traces_per_cpu_s']:,} per CPU-second)  peak RSS {r['peak_rss_mb']:>5,} MB  "
                  f"| json.loads only: {r['baseline_json_loads_s']:.2f} s ({r['import_vs_json_loads']:.2f}x of import)", flush=True)
    print("\n| traces | rows | import s | traces/s | traces/CPU-s | peak RSS MB | json.loads-only s | import/json.loads time |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['traces']:,} | {r['rows']:,} | {r['seconds']} | {r['traces_per_s']:,} | {r['traces_per_cpu_s']:,} | {r['peak_rss_mb']:,} | "
              f"{r['baseline_json_loads_s']} | {r['seconds'] / r['baseline_json_loads_s']:.2f}x |")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"host_cpus": psutil.cpu_count(), "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
