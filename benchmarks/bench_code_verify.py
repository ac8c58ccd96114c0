"""Code verifier throughput: warm sandbox pool vs a fresh `python -c` per program.

Runs the 164 HumanEval canonical solutions (prompt + solution + test +
check(entry_point)) on 2 cores, both ways, in the same run:

* naive:   one fresh `python -c <program + tests>` subprocess per program (no
           sandbox at all, the interpreter's default flags), 2 at a time;
* sandbox: `SandboxPool(2)`, what `factory verify code` and the filter run:
           warm workers (network+mount namespace, minimal read-only root),
           each program forked by its slot's zygote into its own PID, IPC and
           mount namespace (fresh /tmp/work and /proc) and its slot's cgroup
           (CPU, memory, pids), under an unprivileged uid with a seccomp filter
           and rlimits, tests in a separate process;
* layers:  the same pool with one isolation layer switched off at a time
           (``without_layers``), so the table shows what each layer costs;
* floor:   where the sandbox's own cost per program comes from: a bare fork +
           exit of a process the zygote's size, and a trivial program with a
           one-call test through the whole pool.

CPU milliseconds per execution count every process involved (this one, its
threads and children, the pool's workers, zygotes, test processes and
programs) during the timed part; they move less than wall-clock rates when
other jobs share the machine. The pool's start-up is reported apart (it is
paid once per pool, not per program). The load average is printed too.

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
TICK = os.sysconf("SC_CLK_TCK")


def load_tasks() -> list[dict]:
    path = ROOT / "factory" / "data" / "benchmarks" / "humaneval.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def own_and_children_cpu_s() -> float:
    """CPU seconds of this process (all threads) and of its reaped children."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of a live process, its live descendants and everything they reaped."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = sum(int(x) for x in fields[11:15])  # utime, stime, cutime, cstime
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:  # exited meanwhile: its time is in its parent's cutime
        return 0.0
    return ticks / TICK + sum(tree_cpu_s(int(child)) for child in children)


def pool_cpu_s(pool: SandboxPool) -> float:
    return own_and_children_cpu_s() + sum(tree_cpu_s(worker.proc.pid) for worker in pool.workers)


def run_naive(tasks: list[dict]) -> dict:
    def one(row: dict) -> bool:
        source = (row["prompt"] + row["canonical_solution"] + "\n" + row["test"] +
                  f"\ncheck({row['entry_point']})\n")
        done = subprocess.run([sys.executable, "-c", source], capture_output=True, timeout=30)
        return done.returncode == 0

    cpu0, start = own_and_children_cpu_s(), time.perf_counter()
    with ThreadPoolExecutor(CORES) as pool:
        ok = list(pool.map(one, tasks))
    wall = time.perf_counter() - start
    return {"executions": len(tasks), "passed": sum(ok), "seconds": wall, "exec_per_s": len(tasks) / wall,
            "cpu_ms_per_exec": (own_and_children_cpu_s() - cpu0) * 1000 / len(tasks)}


def run_in_process(tasks: list[dict]) -> dict:
    """Floor: the programs' and tests' own work, exec'd in this process (no isolation, 1 core)."""
    cpu0, start = time.process_time(), time.perf_counter()
    for row in tasks:
        exec(row["prompt"] + row["canonical_solution"] + "\n" + row["test"] + f"\ncheck({row['entry_point']})\n", {})
    wall = time.perf_counter() - start
    return {"executions": len(tasks), "passed": len(tasks), "seconds": wall, "exec_per_s": len(tasks) / wall,
            "cpu_ms_per_exec": (time.process_time() - cpu0) * 1000 / len(tasks)}


def run_pool(items: list, without: tuple[str, ...] = (), pin: bool = True) -> dict:
    """The timed batch through a started, warmed-up pool; start-up measured apart."""
    cpu0, start = own_and_children_cpu_s(), time.perf_counter()
    with SandboxPool(CORES, pin_workers=pin, without_layers=without) as pool:
        pool.run_batch(items[:CORES * 4])  # warm-up, not timed
        ready, timed_cpu0 = time.perf_counter(), pool_cpu_s(pool)
        timed_start = time.perf_counter()
        verdicts = pool.run_batch(items)
        wall = time.perf_counter() - timed_start
        cpu_ms = (pool_cpu_s(pool) - timed_cpu0) * 1000 / len(items)
        isolation, layers = pool.info.get("isolation"), pool.info.get("layers", {})
    return {"executions": len(items), "passed": sum(v.passed for v in verdicts), "seconds": wall,
            "exec_per_s": len(items) / wall, "cpu_ms_per_exec": cpu_ms, "startup_s": ready - start,
            "startup_cpu_s": timed_cpu0 - cpu0, "isolation": isolation, "layers": layers}


def humaneval_items(tasks: list[dict], rounds: int) -> list:
    return [(row["prompt"] + row["canonical_solution"], CodeTests.from_dict(row)) for row in tasks] * rounds


LAYERS = {"cgroup": "per-slot cgroup (CPU, memory, pids)", "pidns": "PID namespace per program",
          "program_ns": "IPC+mount ns, fresh /tmp/work, /proc", "seccomp": "seccomp keyring filter"}


def run_layers(tasks: list[dict], rounds: int) -> dict:
    """The full sandbox and, for each optional layer, the sandbox without it (interleaved twice, best kept)."""
    items = humaneval_items(tasks, rounds)
    runs: dict[str, list[dict]] = {"full": []}
    for _ in range(2):
        runs["full"].append(run_pool(items))
        for layer in LAYERS:
            runs.setdefault(layer, []).append(run_pool(items, without=(layer,)))
    return {name: min(results, key=lambda r: r["cpu_ms_per_exec"]) for name, results in runs.items()}


_FORK_FLOOR = """
import gc, importlib, os, resource, sys
os.sched_setaffinity(0, {int(sys.argv[3])})
sys.path.insert(0, sys.argv[1])
from verifiers.code import zygote
for name in zygote.PREIMPORTS:
    importlib.import_module(name)
gc.freeze()
n = int(sys.argv[2])
cpu = lambda: sum(getattr(resource.getrusage(w), f) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
                  for f in ("ru_utime", "ru_stime"))
start = cpu()
for _ in range(n):
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
print((cpu() - start) * 1000 / n)
"""


def run_floor() -> dict:
    """Where the sandbox's own cost per program comes from."""
    core = min(os.sched_getaffinity(0))
    # Like the zygote: python -I -S, its preimports, gc.freeze(); nothing run in the child.
    fork = subprocess.run([sys.executable, "-I", "-S", "-c", _FORK_FLOOR, str(ROOT), "2000", str(core)],
                          capture_output=True, text=True, check=True)
    trivial = CodeTests.humaneval("def check(candidate):\n    assert candidate(1) == 1\n", "f")
    pool = run_pool([("def f(x):\n    return x\n", trivial)] * 600)
    return {"fork_exit_ms": float(fork.stdout.strip()), "trivial": pool}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 round; naive baseline on 48 programs")
    args = parser.parse_args()
    os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:CORES]))
    tasks = load_tasks()
    load_before = os.getloadavg()[0]
    naive = run_naive(tasks[:48] if args.quick else tasks)
    sandbox = run_pool(humaneval_items(tasks, 1 if args.quick else 3))
    layers = run_layers(tasks, 1 if args.quick else 2)
    floor = run_in_process(tasks)
    where = run_floor()
    load_after = os.getloadavg()[0]
    result = {
        "benchmark": "code_verify", "cores": CORES, "quick": args.quick, "python": sys.version.split()[0],
        "loadavg_1m": [load_before, load_after], "naive": naive, "sandbox": sandbox, "in_process": floor,
        "layers": layers, "sandbox_floor": where,
        "speedup": sandbox["exec_per_s"] / naive["exec_per_s"],
        "cpu_speedup": naive["cpu_ms_per_exec"] / sandbox["cpu_ms_per_exec"],
    }
    print(f"HumanEval canonical solutions, {CORES} cores, load average {load_before:.1f} -> {load_after:.1f}")
    print(f"{'method':<44}{'runs':>6}{'passed':>8}{'exec/s':>9}{'CPU ms/exec':>13}")
    rows = [("naive fresh python -c (no sandbox)", naive),
            ("sandbox pool (all layers)", sandbox),
            ("in-process exec, 1 core (floor)", floor)]
    for label, row in rows:
        print(f"{label:<44}{row['executions']:>6}{row['passed']:>8}{row['exec_per_s']:>9.1f}"
              f"{row['cpu_ms_per_exec']:>13.2f}")
    print(f"sandbox layers on: {sandbox['isolation']}")
    full = layers["full"]["cpu_ms_per_exec"]
    print(f"\ncost of each isolation layer (pool without it vs the full sandbox, best of 2 runs of "
          f"{layers['full']['executions']}):")
    print(f"{'layer':<40}{'exec/s without':>16}{'CPU ms/exec without':>21}{'layer costs ms':>16}")
    print(f"{'(full sandbox)':<40}{layers['full']['exec_per_s']:>16.1f}{full:>21.2f}{'':>16}")
    for layer, label in LAYERS.items():
        row = layers[layer]
        print(f"{label:<40}{row['exec_per_s']:>16.1f}{row['cpu_ms_per_exec']:>21.2f}"
              f"{full - row['cpu_ms_per_exec']:>16.2f}")
    trivial = where["trivial"]
    print("\nwhere the sandbox's own cost lies (CPU ms per program):")
    print(f"  fork + exit of a process the zygote's size, nothing run:   {where['fork_exit_ms']:.2f}")
    print(f"  trivial program + one-call test through the whole pool:     {trivial['cpu_ms_per_exec']:.2f}"
          f"  ({trivial['exec_per_s']:.0f} exec/s)")
    print(f"  HumanEval programs and tests, in process (floor above):     {floor['cpu_ms_per_exec']:.2f}")
    print(f"speed-up: {result['speedup']:.1f}x wall clock, {result['cpu_speedup']:.1f}x CPU per execution; "
          f"pool start-up {sandbox['startup_s']:.2f}s, {sandbox['startup_cpu_s'] * 1000:.0f} CPU ms with the "
          f"warm-up (not timed)")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
