"""`factory filter` at R1 scale: wall time, samples/s and peak RSS of the whole process tree, per step.

    python benchmarks/bench_pipeline.py                       # N = 100K and 400K, local and ray
    python benchmarks/bench_pipeline.py --n 20000 --executors local --baseline-n 5000   # quick
    python benchmarks/bench_pipeline.py --n 20000 --executors local --baseline-n 0 --memory-gb 0.5  # dedup spills

For each N: write N synthetic R1-shaped traces (~5K characters, the samples of
benchmarks/bench_filter.py: a quarter broken on purpose, plus wrong answers, exact copies
and benchmark leaks), import them with the replay teacher (`factory generate`), then run
`factory filter` (the CLI, in a subprocess, as a user runs it) with format, language,
readability, correctness, decontam, dedup and selection (each in the per-step table, with
the MB a whole-run step spilled to Parquet when its state outgrew its share of memory_gb). Peak RSS is the largest sum of
RSS over the CLI process and all its descendants, sampled every 0.2 s (on Ray, shared
object-store pages are counted in every process that maps them, so it is an upper bound).

Baseline, same run: the in-memory engine this one replaced (tests/legacy_filter.py) on the
first `--baseline-n` samples. Writes benchmarks/results/pipeline.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_filter import make_sample

RESULTS = REPO / "benchmarks" / "results" / "pipeline.json"
RULE_STEPS = ("format", "language", "readability")
FILTERS = ("[{step: format}, {step: language}, {step: readability}, {step: correctness}, {step: decontam}, "
           "{step: dedup, threshold: 0.6, ngram: 2}, {step: selection, k: 1, policy: shortest}]")


def write_traces(path: Path, n: int, seed: int = 0) -> None:
    """Four samples per prompt; math references right for ~65% of boxed answers; 3% exact copies; 0.5% leaked prompts."""
    rng = random.Random(seed)
    leaked = [json.loads(line)["problem"] for line in
              (REPO / "factory" / "data" / "benchmarks" / "gsm8k_test.jsonl").read_text().splitlines()[:500]]
    previous: dict[str, Any] | None = None
    with open(path, "w") as out:
        for i in range(n):
            if i % 4 == 0:
                problem = rng.choice(leaked) if rng.random() < 0.005 else f"Problem {i // 4}: {rng.randint(2, 10**6)} items, solve it."
            if previous is not None and i % 4 and rng.random() < 0.03:
                out.write(json.dumps({**previous, "problem": problem}) + "\n")
                continue
            sample = make_sample(rng)
            text = sample["text"]
            boxed = text.rsplit("\\boxed{", 1)
            answer = boxed[1].split("}", 1)[0] if len(boxed) == 2 else str(rng.randint(2, 999))
            reference = answer if rng.random() < 0.65 else str(int(answer) + 1) if answer.isdigit() else answer
            previous = {"problem": problem, "generation": text, "answer": reference, "finish_reason": sample["finish_reason"]}
            out.write(json.dumps(previous) + "\n")


def recipe(directory: Path, name: str, memory_gb: float = 4.0, *, legacy: bool = False) -> Path:
    """The replay recipe; `legacy`: selection as a `selection:` block, which the engine before this one reads."""
    path = directory / f"{name}.yaml"
    filters = FILTERS.replace(", {step: selection, k: 1, policy: shortest}", "") if legacy else FILTERS
    tail = "selection: {k: 1, policy: shortest}\n" if legacy else f"memory_gb: {memory_gb}\n"
    path.write_text(
        f"kind: generate\nname: {name}\nteacher:\n  role: rl_1\n  backend: replay\n  model: synthetic-r1\n"
        "  replay:\n    path: traces.jsonl\n    fields: {prompt: problem, generation: generation, reference: answer}\n"
        f"filters: {filters}\n{tail}output: {{dataset: {name}}}\n")
    return path


class TreeRSS:
    """Peak of the summed RSS of a process and its descendants."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                procs = [self.root, *self.root.children(recursive=True)]
                total = 0
                for p in procs:
                    try:
                        total += p.memory_info().rss
                    except psutil.Error:
                        pass
                self.peak = max(self.peak, total)
            except psutil.Error:
                pass
            time.sleep(0.2)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def run_measured(args: list[str], home: Path) -> tuple[float, int]:
    env = {**os.environ, "FACTORY_HOME": str(home), "PYTHONPATH": str(REPO)}
    started = time.perf_counter()
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    rss = TreeRSS(proc.pid)
    _, err = proc.communicate()
    peak = rss.stop()
    if proc.returncode:
        raise SystemExit(f"{' '.join(args)} failed:\n{err[-2000:]}")
    return time.perf_counter() - started, peak


def bench_n(n: int, work: Path, executors: list[str], workers: int, memory_gb: float) -> list[dict[str, Any]]:
    directory = work / f"n{n}"
    directory.mkdir(parents=True, exist_ok=True)
    home = directory / "home"
    write_traces(directory / "traces.jsonl", n)
    name = "bench"
    started = time.perf_counter()
    run_measured([sys.executable, "-m", "cli", "generate", "--recipe", str(recipe(directory, name, memory_gb)), "--quiet"], home)
    imported_s = time.perf_counter() - started
    (directory / "traces.jsonl").unlink()
    run_dir = home / "runs" / name
    rows = []
    for executor in executors:
        target = run_dir if executor == executors[-1] else directory / f"copy-{executor}" / name
        if target != run_dir:
            shutil.copytree(run_dir, target)
        wall, peak = run_measured([sys.executable, "-m", "cli", "filter", "--run", str(target), "--quiet",
                                   "--executor", executor, "--workers", str(workers)], home)
        report = json.loads((target / "filter_report.json").read_text())
        rows.append(_row(n, executor, workers, wall, peak, report, imported_s))
        print(_format(rows[-1]), flush=True)
    return rows


def baseline(n: int, work: Path) -> dict[str, Any]:
    """The in-memory engine (before this one) on the same kind of run."""
    directory = work / f"baseline{n}"
    directory.mkdir(parents=True, exist_ok=True)
    home = directory / "home"
    write_traces(directory / "traces.jsonl", n)
    run_measured([sys.executable, "-m", "cli", "generate", "--recipe", str(recipe(directory, "base", legacy=True)), "--quiet"], home)
    code = f"from tests import legacy_filter; legacy_filter.run_filter({str(home / 'runs' / 'base')!r}, progress=False)"
    wall, peak = run_measured([sys.executable, "-c", code], home)
    row = {"n": n, "executor": "in-memory engine (before)", "workers": 1, "wall_s": round(wall, 1),
           "samples_per_s": round(n / wall), "peak_rss_gb": round(peak / 2**30, 2)}
    print(_format(row), flush=True)
    return row


def _row(n: int, executor: str, workers: int, wall: float, peak: int, report: dict[str, Any], imported_s: float) -> dict[str, Any]:
    steps = {s["step"]: s for s in [*report["steps"], *([report["selection"]] if report.get("selection") else [])]}
    rule_s = sum(steps[s]["seconds"] for s in RULE_STEPS if s in steps)
    return {
        "n": n, "executor": executor, "workers": workers, "wall_s": round(wall, 1), "samples_per_s": round(n / wall),
        "peak_rss_gb": round(peak / 2**30, 2), "rule_steps_samples_per_s": round(n / rule_s) if rule_s else None,
        "selected": report["selected"], "import_s": round(imported_s, 1),
        "steps": {name: {"in": s["candidates"], "passed": s["passed"], "seconds": s["seconds"],
                         "samples_per_s": round(s["candidates"] / s["seconds"]) if s["seconds"] else None,
                         "spilled_mb": round(s.get("spilled_bytes", 0) / 1e6, 1)}
                  for name, s in steps.items()},
    }


def _format(row: dict[str, Any]) -> str:
    line = (f"N={row['n']:>9,} {row['executor']:<26} wall {row['wall_s']:>7.1f}s  {row['samples_per_s']:>6,}/s  "
            f"peak RSS {row['peak_rss_gb']:.2f} GB")
    if row.get("rule_steps_samples_per_s"):
        line += f"  rule steps {row['rule_steps_samples_per_s']:,}/s"
    for name, s in row.get("steps", {}).items():
        line += f"\n    {name:<12} in {s['in']:>9,}  passed {s['passed']:>9,}  {s['seconds']:>7.1f}s  {s['samples_per_s'] or 0:>7,}/s"
        if s.get("spilled_mb"):
            line += f"  spilled {s['spilled_mb']:,.1f} MB to Parquet"
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[100_000, 400_000])
    parser.add_argument("--executors", nargs="+", default=["ray", "local"], choices=["local", "ray"])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--baseline-n", type=int, default=25_000, help="0 = no baseline")
    parser.add_argument("--memory-gb", type=float, default=4.0,
                        help="the recipe's memory_gb (a small one makes dedup spill its state to Parquet)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/factory-bench-pipeline"))
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    load = os.getloadavg()
    print(f"{os.cpu_count()} cores, load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} at start", flush=True)
    rows = [baseline(args.baseline_n, args.work)] if args.baseline_n else []
    for n in args.n:
        rows.extend(bench_n(n, args.work, args.executors, args.workers, args.memory_gb))
    result = {"cores": os.cpu_count(), "load_at_start": load, "load_at_end": os.getloadavg(), "rows": rows,
              "filters": FILTERS, "memory_gb": args.memory_gb, "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    runs = previous.get("runs", []) + [result]
    RESULTS.write_text(json.dumps({"runs": runs}, indent=2))
    shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    main()
