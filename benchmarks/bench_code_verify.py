"""Code verifier throughput: warm sandbox pool vs a fresh `python -c` per program.

Runs the 164 HumanEval canonical solutions (prompt + solution + test +
check(entry_point)) on 2 cores, both ways, in the same run:

* naive:   one fresh `python -c` subprocess per program (no sandbox at all),
           2 at a time;
* sandbox: `SandboxPool(2)`: warm fork servers (network+mount namespace,
           minimal read-only root), each program in its own PID, IPC and
           mount namespace (fresh /tmp/work and /proc) and its slot's cgroup (CPU,
           memory, pids), under an unprivileged uid with a seccomp filter and
           rlimits, tests in a separate process;
* layers:  the same pool with one isolation layer switched off at a time
           (``without_layers``), so the table shows what each layer costs.

Also reports CPU milliseconds per execution (all processes), which moves less
than wall-clock rates when other jobs share the machine, and the load average
seen during the run.

    python benchmarks/bench_code_verify.py            # 3 rounds (492 sandboxed runs)
    python benchmarks/bench_code_verify.py --quick    # 1 round, 48 naive runs
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from verifiers.code import CodeTests, SandboxPool  # noqa: E402

CORES = 2
RESULTS = ROOT / "benchmarks" / "results" / "code_verify.json"


def load_tasks() -> list[dict]:
    path = ROOT / "factory" / "data" / "benchmarks" / "humaneval.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_naive(tasks: list[dict]) -> dict:
    def one(row: dict) -> bool:
        source = (row["prompt"] + row["canonical_solution"] + "\n" + row["test"] +
                  f"\ncheck({row['entry_point']})\n")
        done = subprocess.run([sys.executable, "-c", source], capture_output=True, timeout=30)
        return done.returncode == 0

    cpu0, start = children_cpu_s(), time.perf_counter()
    with ThreadPoolExecutor(CORES) as pool:
        ok = list(pool.map(one, tasks))
    wall = time.perf_counter() - start
    return {"executions": len(tasks), "passed": sum(ok), "seconds": wall, "exec_per_s": len(tasks) / wall,
            "cpu_ms_per_exec": (children_cpu_s() - cpu0) * 1000 / len(tasks)}


def run_in_process(tasks: list[dict]) -> dict:
    """Floor: the programs' and tests' own work, exec'd in this process (no isolation, 1 core)."""
    cpu0, start = time.process_time(), time.perf_counter()
    for row in tasks:
        exec(row["prompt"] + row["canonical_solution"] + "\n" + row["test"] + f"\ncheck({row['entry_point']})\n", {})
    wall = time.perf_counter() - start
    return {"executions": len(tasks), "passed": len(tasks), "seconds": wall, "exec_per_s": len(tasks) / wall,
            "cpu_ms_per_exec": (time.process_time() - cpu0) * 1000 / len(tasks)}


def run_sandbox(tasks: list[dict], rounds: int, pin: bool = True, without: tuple[str, ...] = ()) -> dict:
    items = [(row["prompt"] + row["canonical_solution"], CodeTests.from_dict(row)) for row in tasks] * rounds
    cpu0, start = children_cpu_s(), time.perf_counter()
    with SandboxPool(CORES, pin_workers=pin, without_layers=without) as pool:
        ready = time.perf_counter()
        pool.run_batch(items[:CORES * 4])  # warm-up, not timed
        timed_start = time.perf_counter()
        verdicts = pool.run_batch(items)
        wall = time.perf_counter() - timed_start
        isolation = pool.info.get("isolation")
    # Workers are reaped on close, so their CPU (and their children's) is counted here.
    cpu_ms = (children_cpu_s() - cpu0) * 1000 / (len(items) + CORES * 4)
    return {"executions": len(items), "passed": sum(v.passed for v in verdicts), "seconds": wall,
            "exec_per_s": len(items) / wall, "cpu_ms_per_exec": cpu_ms, "startup_s": ready - start,
            "isolation": isolation, "layers": pool.info.get("layers", {})}


LAYERS = {"cgroup": "per-slot cgroup (CPU, memory, pids)", "pidns": "PID namespace per program",
          "program_ns": "IPC+mount ns, fresh /tmp/work, /proc", "seccomp": "seccomp keyring filter"}


def run_layers(tasks: list[dict], rounds: int) -> dict:
    """The full sandbox and, for each optional layer, the sandbox without it (interleaved twice, best kept)."""
    runs: dict[str, list[dict]] = {"full": []}
    for _ in range(2):
        runs["full"].append(run_sandbox(tasks, rounds))
        for layer in LAYERS:
            runs.setdefault(layer, []).append(run_sandbox(tasks, rounds, without=(layer,)))
    return {name: min(results, key=lambda r: r["cpu_ms_per_exec"]) for name, results in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 round; naive baseline on 48 programs")
    args = parser.parse_args()
    os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:CORES]))
    tasks = load_tasks()
    load_before = os.getloadavg()[0]
    naive = run_naive(tasks[:48] if args.quick else tasks)
    sandbox = run_sandbox(tasks, 1 if args.quick else 3)
    layers = run_layers(tasks, 1 if args.quick else 2)
    floor = run_in_process(tasks)
    load_after = os.getloadavg()[0]
    result = {
        "benchmark": "code_verify", "cores": CORES, "quick": args.quick, "python": sys.version.split()[0],
        "loadavg_1m": [load_before, load_after], "naive": naive, "sandbox": sandbox, "in_process": floor,
        "layers": layers,
        "speedup": sandbox["exec_per_s"] / naive["exec_per_s"],
        "cpu_speedup": naive["cpu_ms_per_exec"] / sandbox["cpu_ms_per_exec"],
    }
    print(f"HumanEval canonical solutions, {CORES} cores, load average {load_before:.1f} -> {load_after:.1f}")
    print(f"{'method':<34}{'runs':>6}{'passed':>8}{'exec/s':>9}{'CPU ms/exec':>13}")
    print(f"{'naive fresh python -c (no sandbox)':<34}{naive['executions']:>6}{naive['passed']:>8}"
          f"{naive['exec_per_s']:>9.1f}{naive['cpu_ms_per_exec']:>13.2f}")
    print(f"{'sandbox pool (' + str(sandbox['isolation']) + ')':<34}{sandbox['executions']:>6}"
          f"{sandbox['passed']:>8}{sandbox['exec_per_s']:>9.1f}{sandbox['cpu_ms_per_exec']:>13.2f}")
    print(f"{'in-process exec, 1 core (floor)':<34}{floor['executions']:>6}{floor['passed']:>8}"
          f"{floor['exec_per_s']:>9.1f}{floor['cpu_ms_per_exec']:>13.2f}")
    full = layers["full"]["cpu_ms_per_exec"]
    print(f"\ncost of each isolation layer (pool without it vs the full sandbox, best of 2 runs of "
          f"{layers['full']['executions']}):")
    print(f"{'layer':<40}{'exec/s without':>16}{'CPU ms/exec without':>21}{'layer costs ms':>16}")
    print(f"{'(full sandbox)':<40}{layers['full']['exec_per_s']:>16.1f}{full:>21.2f}{'':>16}")
    for layer, label in LAYERS.items():
        row = layers[layer]
        print(f"{label:<40}{row['exec_per_s']:>16.1f}{row['cpu_ms_per_exec']:>21.2f}"
              f"{full - row['cpu_ms_per_exec']:>16.2f}")
    print(f"layers on: {json.dumps(sandbox['layers'])}")
    print(f"speed-up: {result['speedup']:.1f}x wall clock, {result['cpu_speedup']:.1f}x CPU per execution; "
          f"pool start-up {sandbox['startup_s']:.2f}s (not timed)")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
