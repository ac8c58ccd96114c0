"""The store on S3 vs on local disk: `factory generate` (replay import), `factory filter` and `factory sql`.

    python benchmarks/bench_object_store.py                   # N = 20,000
    python benchmarks/bench_object_store.py --n 5000 100000 --executors local ray

For each N: write N synthetic R1-shaped traces (benchmarks/bench_pipeline.py), then run the CLI
commands (subprocesses, as a user runs them) once with `--store DIR` on local disk (the baseline,
same run) and once with `--store s3://…` on an S3-compatible server on 127.0.0.1 (moto, an
in-memory Python server: its own CPU cost is in the S3 column, so the ratio is an upper bound of
what a real object store costs). Reports wall time, samples/s and the S3/disk ratio per command.
Writes benchmarks/results/object_store.json. Needs the dev extra (moto[server], boto3).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_pipeline import recipe, run_measured, write_traces

RESULTS = REPO / "benchmarks" / "results" / "object_store.json"


def commands(recipe_path: Path, executor: str, workers: int) -> list[tuple[str, list[str]]]:
    cli = [sys.executable, "-m", "cli"]
    return [
        ("generate (import)", [*cli, "generate", "--recipe", str(recipe_path), "--quiet"]),
        (f"filter ({executor})", [*cli, "filter", "--run", "bench", "--quiet", "--workers", str(workers),
                                  "--executor", executor]),
        ("sql count", [*cli, "sql", "SELECT count(*) FROM samples JOIN verdicts USING (sample_id)"]),
    ]


def bench_n(n: int, work: Path, endpoint: str, executors: list[str], workers: int) -> list[dict[str, Any]]:
    import boto3

    directory = work / f"n{n}"
    directory.mkdir(parents=True, exist_ok=True)
    write_traces(directory / "traces.jsonl", n)
    recipe_path = recipe(directory, "bench")
    rows = []
    for executor in executors:
        bucket = f"bench-{uuid.uuid4().hex[:10]}"
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
        stores = {"disk": str(directory / f"runs-{executor}"), "s3": f"s3://{bucket}/runs"}
        for label, args in commands(recipe_path, executor, workers):
            wall = {}
            for where, store in stores.items():
                os.environ["FACTORY_STORE"] = store
                wall[where], _ = run_measured(args, directory / "home")
            rows.append({"n": n, "command": label, "disk_s": round(wall["disk"], 2), "s3_s": round(wall["s3"], 2),
                         "disk_per_s": round(n / wall["disk"]), "s3_per_s": round(n / wall["s3"]),
                         "s3_over_disk": round(wall["s3"] / wall["disk"], 2)})
            print(f"{n:>9,}  {label:<20} disk {wall['disk']:7.1f} s ({n / wall['disk']:>8,.0f}/s)   "
                  f"s3 {wall['s3']:7.1f} s ({n / wall['s3']:>8,.0f}/s)   s3/disk {wall['s3'] / wall['disk']:.2f}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[20_000])
    parser.add_argument("--executors", nargs="+", default=["local"], choices=["local", "ray"])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--work", type=Path, default=Path("/tmp/factory-bench-object-store"))
    args = parser.parse_args()
    from moto.server import ThreadedMotoServer

    for key, value in {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        os.environ.setdefault(key, value)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{server.get_host_and_port()[1]}"
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    shutil.rmtree(args.work, ignore_errors=True)
    load = os.getloadavg()
    print(f"{os.cpu_count()} cores, load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} at start", flush=True)
    try:
        rows = [row for n in args.n for row in bench_n(n, args.work, endpoint, args.executors, args.workers)]
    finally:
        server.stop()
        shutil.rmtree(args.work, ignore_errors=True)
    result = {"cores": os.cpu_count(), "load_at_start": load, "load_at_end": os.getloadavg(), "rows": rows,
              "server": "moto (in-memory, 127.0.0.1)", "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    RESULTS.write_text(json.dumps({"runs": previous.get("runs", []) + [result]}, indent=2))


if __name__ == "__main__":
    main()
