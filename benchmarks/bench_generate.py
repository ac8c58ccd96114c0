"""Throughput of the OpenAI-compatible teacher against a server with a fixed latency.

A local server in its own process answers every chat request after a fixed
artificial latency (200 ms by default). By default it is a minimal asyncio
HTTP/1.1 server (a canned completion, a timer, no framework): it stands in for a
GPU server, so it should cost this machine's shared cores as little as possible.
`--server fault` uses the aiohttp fault server from tests/ instead. For each
concurrency c the ideal rate is c / latency; we measure, in the same run:

  * bare     — a minimal aiohttp client loop (c workers, one session, parse JSON):
               the baseline, i.e. what the hardware and server allow;
  * teacher  — `OpenAITeacher.astream` (semaphore, retries, balancing, usage, split_think);
  * store    — optional (`--with-store`): `factory.generate.run_generate` with the
               same teacher settings, i.e. teacher + sample ids + store + lineage + progress.

Reported: achieved req/s, % of ideal, and each layer's overhead against the bare
loop. A saturation row (latency 0) shows the client's per-request CPU cost.

    python benchmarks/bench_generate.py            # full sweep
    python benchmarks/bench_generate.py --quick    # a small run
    python benchmarks/bench_generate.py --with-store

Numbers are noisy on a shared machine: the server and the client share its cores.

`--backend vllm openai-vllm transformers` instead compares real engines side by side on the same
tiny-model recipe (tiny-r1, the arithmetic prompts), timing `run_generate` (what `factory generate`
runs) with the engine already loaded; load time is reported apart. Needs vLLM (the CPU build:
README, "Real teachers"). `transformers-ray` / `vllm-ray` run the same teacher as Ray actors (one per GPU,
else one per CPU: `--executor ray`); they need the `ray` extra:

    python benchmarks/bench_generate.py --backend transformers transformers-ray

    .venv-vllm/bin/python benchmarks/bench_generate.py --backend vllm openai-vllm transformers
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from fault_server import FaultConfig, FaultServerProcess  # noqa: E402

from factory.recipe import OpenAIOptions, TeacherConfig  # noqa: E402
from factory.teachers.base import GenerationRequest  # noqa: E402
from factory.teachers.openai_backend import OpenAITeacher  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "generate.json"
MODEL = "fault-model"


# ---------------------------------------------------------------- a server that costs almost nothing
_CHAT_BODY = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 0,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "The answer is \\boxed{4}.", "reasoning_content": "2 + 2 = 4. Let me check: 4 - 2 = 2."},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 20, "completion_tokens": 24, "total_tokens": 44},
    }
).encode()
_MODELS_BODY = json.dumps({"object": "list", "data": [{"id": MODEL, "object": "model"}]}).encode()
_CONTENT_LENGTH = re.compile(rb"content-length:[ \t]*(\d+)", re.IGNORECASE)


def _http_response(body: bytes) -> bytes:
    head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n"
    return head.encode() + body


class _LatencyProtocol(asyncio.Protocol):
    """HTTP/1.1 keep-alive: every request is answered with a canned body after `latency` seconds."""

    chat = _http_response(_CHAT_BODY)
    models = _http_response(_MODELS_BODY)

    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        loop = asyncio.get_running_loop()
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            head = self.buffer[:end]
            match = _CONTENT_LENGTH.search(head)
            total = end + 4 + (int(match.group(1)) if match else 0)
            if len(self.buffer) < total:
                return
            self.buffer = self.buffer[total:]
            response = self.models if b"/models" in head.split(b"\r\n", 1)[0] else self.chat
            loop.call_later(self.latency, self._send, response)

    def _send(self, response: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(response)


def serve_fast(port: int, latency: float) -> None:
    async def run() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _LatencyProtocol(latency), "127.0.0.1", port, backlog=2048)
        async with server:
            await server.serve_forever()

    asyncio.run(run())


class FastServerProcess:
    """`serve_fast` in a child process; `url` is its OpenAI base URL."""

    def __init__(self, latency: float) -> None:
        self.latency = latency
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> "FastServerProcess":
        args = [sys.executable, __file__, "--serve-port", str(self.port), "--latency", str(self.latency)]
        self._proc = subprocess.Popen(args)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        self.__exit__()
        raise RuntimeError(f"bench server did not listen on {self.port}")

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=10)
            self._proc = None


def start_server(kind: str, latency: float) -> FastServerProcess | FaultServerProcess:
    return FastServerProcess(latency) if kind == "fast" else FaultServerProcess(FaultConfig(latency_s=latency, model=MODEL))


# ---------------------------------------------------------------- the three clients
def _body(i: int) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"What is {i} + {i}?"}],
        "temperature": 0.6,
        "top_p": 0.95,
        "max_tokens": 64,
        "seed": i,
    }


async def bare_loop(url: str, concurrency: int, total: int) -> float:
    """Seconds for `total` requests with `concurrency` workers on one aiohttp session."""
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=0)
    next_index = iter(range(total))
    done = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal done
        for i in next_index:
            async with session.post(f"{url}/chat/completions", json=_body(i)) as response:
                data = json.loads(await response.read())
                done += len(data["choices"])

    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    if done != total:
        raise RuntimeError(f"bare loop: {done} of {total} answered")
    return elapsed


def make_teacher(url: str, concurrency: int) -> OpenAITeacher:
    options = OpenAIOptions(endpoints=[url], concurrency=concurrency, timeout_s=60.0, max_retries=3)
    return OpenAITeacher(TeacherConfig(role="r1_zero", backend="openai", model=MODEL, openai=options))


async def teacher_loop(url: str, concurrency: int, total: int) -> float:
    teacher = make_teacher(url, concurrency)
    requests = (
        GenerationRequest(
            key=f"s{i}", group=f"p{i}", messages=_body(i)["messages"], temperature=0.6, top_p=0.95, max_new_tokens=64, seed=i
        )
        for i in range(total)
    )
    started = time.perf_counter()
    done = errors = 0
    async for completion in teacher.astream(requests):
        done += 1
        errors += completion.error is not None
    elapsed = time.perf_counter() - started
    if done != total or errors:
        raise RuntimeError(f"teacher: {done} of {total} answered, {errors} errors")
    return elapsed


def store_run(url: str, concurrency: int, total: int) -> float | None:
    """Seconds `run_generate`'s engine took for `total` samples into a fresh store, or None if unavailable.

    The engine's own clock (`report.seconds`: plan, generate, flush, lineage, progress)
    leaves out one-off setup (recipe parsing, teacher.check, prompt loading), which a
    week-long run pays once.
    """
    try:
        from factory.generate import run_generate
    except ImportError:
        return None
    with tempfile.TemporaryDirectory(prefix="bench-generate-") as tmp:
        root = Path(tmp)
        with open(root / "prompts.jsonl", "w") as f:
            for i in range(total):
                f.write(json.dumps({"id": f"q{i}", "problem": f"What is {i} + {i}?", "answer": str(2 * i)}) + "\n")
        recipe = {
            "kind": "generate",
            "name": "bench_generate",
            "sources": [{"name": "bench", "path": "prompts.jsonl", "fields": {"id": "id", "prompt": "problem", "reference": "answer"}}],
            "teacher": {
                "role": "r1_zero",
                "backend": "openai",
                "model": MODEL,
                "openai": {"endpoints": [url], "concurrency": concurrency, "timeout_s": 60.0, "max_retries": 3},
            },
            "sampling": {"n": 1, "temperature": 0.6, "top_p": 0.95, "max_new_tokens": 64},
            "output": {"dataset": "bench_generate"},
        }
        recipe_path = root / "bench_generate.yaml"
        recipe_path.write_text(json.dumps(recipe))  # JSON is YAML
        previous_home = os.environ.get("FACTORY_HOME")
        os.environ["FACTORY_HOME"] = str(root / "home")
        try:
            report = run_generate(str(recipe_path), progress=True)
        finally:
            if previous_home is None:
                os.environ.pop("FACTORY_HOME", None)
            else:
                os.environ["FACTORY_HOME"] = previous_home
        if report.generated != total or report.errors:
            raise RuntimeError(f"run_generate: {report.generated} of {total} generated, {report.errors} errors")
        return report.seconds


# ---------------------------------------------------------------- the sweep
def best_of(repeats: int, measure: Any) -> tuple[float, float]:
    """(wall seconds, client CPU seconds) of the fastest of `repeats` runs.

    CPU time of this process (the server is another) is the steadier measure of the
    client's own cost on a machine whose cores are shared.
    """
    runs = []
    for _ in range(repeats):
        cpu_started, started = time.process_time(), time.perf_counter()
        measure()
        runs.append((time.perf_counter() - started, time.process_time() - cpu_started))
    return min(runs)


def sweep(url: str, latency_s: float, concurrencies: list[int], rounds: int, repeats: int, with_store: bool) -> list[dict[str, Any]]:
    rows = []
    for c in concurrencies:
        total = c * rounds
        ideal = c / latency_s
        bare_s, bare_cpu = best_of(repeats, lambda: asyncio.run(bare_loop(url, c, total)))
        teacher_s, teacher_cpu = best_of(repeats, lambda: asyncio.run(teacher_loop(url, c, total)))
        row: dict[str, Any] = {
            "concurrency": c,
            "requests": total,
            "ideal_rps": ideal,
            "bare_rps": total / bare_s,
            "teacher_rps": total / teacher_s,
            "teacher_pct_ideal": 100 * total / teacher_s / ideal,
            "bare_pct_ideal": 100 * total / bare_s / ideal,
            "teacher_overhead_pct": 100 * (teacher_s / bare_s - 1),
            "bare_cpu_us_per_req": 1e6 * bare_cpu / total,
            "teacher_cpu_us_per_req": 1e6 * teacher_cpu / total,
        }
        if with_store:
            store_s = store_run(url, c, total)
            if store_s is not None:
                row["store_rps"] = total / store_s
                row["store_overhead_pct"] = 100 * (store_s / bare_s - 1)
        rows.append(row)
        print(_format_row(row), flush=True)
    return rows


def saturation(url: str, concurrency: int, total: int, repeats: int) -> dict[str, Any]:
    bare_s, bare_cpu = best_of(repeats, lambda: asyncio.run(bare_loop(url, concurrency, total)))
    teacher_s, teacher_cpu = best_of(repeats, lambda: asyncio.run(teacher_loop(url, concurrency, total)))
    return {
        "concurrency": concurrency,
        "requests": total,
        "bare_rps": total / bare_s,
        "teacher_rps": total / teacher_s,
        "bare_cpu_us_per_req": 1e6 * bare_cpu / total,
        "teacher_cpu_us_per_req": 1e6 * teacher_cpu / total,
    }


HEADER = (
    f"{'conc':>5} {'reqs':>6} {'ideal/s':>8} {'bare/s':>8} {'teacher/s':>9} {'teacher %ideal':>14} "
    f"{'overhead vs bare':>16} {'CPU us/req bare/teacher':>23} {'store/s':>8} {'store ovh':>9}"
)


def _format_row(row: dict[str, Any]) -> str:
    store = f"{row['store_rps']:>8.1f} {row['store_overhead_pct']:>+8.1f}%" if "store_rps" in row else f"{'-':>8} {'-':>9}"
    return (
        f"{row['concurrency']:>5} {row['requests']:>6} {row['ideal_rps']:>8.1f} {row['bare_rps']:>8.1f} {row['teacher_rps']:>9.1f} "
        f"{row['teacher_pct_ideal']:>13.1f}% {row['teacher_overhead_pct']:>+15.1f}% "
        f"{row['bare_cpu_us_per_req']:>15.0f} / {row['teacher_cpu_us_per_req']:<5.0f} {store}"
    )


# ---------------------------------------------------------------- real engines side by side
ENGINE_RECIPE = """\
kind: generate
name: bench_{label}
sources:
  - {{name: arith, path: {prompts}, fields: {{id: id, prompt: problem, reference: answer}}, task_type: math}}
teacher:
  role: r1_zero
  backend: {backend}
  model: tiny-r1
  transformers: {{batch_size: 32}}
  vllm: {{dtype: float32, max_model_len: 1024, gpu_memory_utilization: 0.05, batch_size: 512}}
  openai: {{endpoints: ["{url}"], concurrency: 64}}
template: {{user: "{{prompt}} Put the final answer in \\\\boxed{{{{}}}}."}}
sampling: {{n: {n}, temperature: 0.7, top_p: 0.95, max_new_tokens: {tokens}, seed: 1}}
output: {{dataset: bench_{label}}}
"""


def _engine_home() -> Path:
    """A private FACTORY_HOME whose models/ are the shared tiny models (built once)."""
    from factory.models import ensure_model

    ensure_model("tiny-r1")
    from factory.paths import factory_home

    models = factory_home() / "models"
    home = Path(tempfile.mkdtemp(prefix="bench-generate-"))
    (home / "models").symlink_to(models, target_is_directory=True)
    os.environ["FACTORY_HOME"] = str(home)
    return home


def _start_vllm_server(model_dir: Path, port: int, log_path: Path) -> subprocess.Popen:
    import urllib.request

    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir), "--served-model-name", "tiny-r1",
               "--reasoning-parser", "deepseek_r1", "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
               "--max-model-len", "1024", "--gpu-memory-utilization", "0.05"]
    proc = subprocess.Popen(command, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"vllm server exited {proc.returncode}; see {log_path}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2):
                return proc
        except OSError:
            time.sleep(1)
    raise SystemExit(f"vllm server not up in 900 s; see {log_path}")


def compare_backends(backends: list[str], *, prompts: int, n: int, tokens: int) -> list[dict[str, Any]]:
    import random
    import signal

    from factory.generate import run_generate
    from factory.models import arithmetic_problem
    from factory.recipe import load_recipe
    from factory.teachers import build_teacher

    home = _engine_home()
    rng = random.Random(5)
    prompt_file = home / "prompts.jsonl"
    lines = []
    for i in range(prompts):
        problem, value, _ = arithmetic_problem(rng)
        lines.append(json.dumps({"id": f"q{i}", "problem": problem, "answer": str(value)}))
    prompt_file.write_text("\n".join(lines) + "\n")
    rows = []
    for label in backends:
        server = None
        port = _free_port()
        backend = {"openai-vllm": "openai", "transformers-ray": "transformers", "vllm-ray": "vllm"}.get(label, label)
        recipe_path = home / f"bench_{label}.yaml"
        recipe_path.write_text(ENGINE_RECIPE.format(label=label.replace("-", "_"), prompts=prompt_file, backend=backend,
                                                    url=f"http://127.0.0.1:{port}/v1", n=n, tokens=tokens))
        started = time.perf_counter()
        if label == "openai-vllm":
            server = _start_vllm_server(home / "models" / "tiny-r1", port, home / "vllm-server.log")
        config = load_recipe(str(recipe_path)).teacher
        if label.endswith("-ray"):  # executor: ray, one actor per GPU (or per CPU): what `--executor ray` builds
            from factory.teachers.ray_actors import RayTeacher

            teacher = RayTeacher(config, recipe_file=recipe_path)
        else:
            teacher = build_teacher(config)
        try:
            teacher.check()  # loads the model (vllm, transformers) or reaches the server (openai)
            load_s = time.perf_counter() - started
            report = run_generate(str(recipe_path), progress=False, teacher=teacher)
        finally:
            teacher.close()
            if server is not None:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
        row = {
            "backend": label, "load_s": load_s, "samples": report.generated, "errors": report.errors,
            "completion_tokens": report.completion_tokens, "seconds": report.seconds,
            "tokens_per_s": report.completion_tokens / report.seconds, "samples_per_s": report.samples_per_s,
        }
        rows.append(row)
        print(f"{label:>14} {row['load_s']:>8.1f} {row['samples']:>8} {row['seconds']:>8.1f} "
              f"{row['tokens_per_s']:>10.0f} {row['samples_per_s']:>10.2f}", flush=True)
    base = next((r for r in rows if r["backend"] == "transformers"), None)
    if base:
        for row in rows:
            row["tokens_per_s_vs_transformers"] = row["tokens_per_s"] / base["tokens_per_s"]
    return rows


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests and one repeat")
    parser.add_argument("--latency", type=float, default=0.2, help="server latency per request, seconds")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64, 256])
    parser.add_argument("--with-store", action="store_true", help="also time factory.generate.run_generate")
    parser.add_argument("--server", choices=["fast", "fault"], default="fast", help="the latency server (see above)")
    parser.add_argument("--rounds", type=int, help="requests per worker (default 20, 5 with --quick); more rounds "
                        "amortise the one-off connection set-up, as a long run does")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--serve-port", type=int, help=argparse.SUPPRESS)  # internal: be the fast server
    parser.add_argument("--backend", nargs="+", choices=["vllm", "openai-vllm", "transformers", "transformers-ray", "vllm-ray"],
                        help="compare real engines on tiny-r1 instead of the latency sweep")
    parser.add_argument("--prompts", type=int, default=32, help="--backend: prompts (x n samples)")
    parser.add_argument("--n", type=int, default=4, help="--backend: samples per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="--backend: tokens per sample")
    args = parser.parse_args()
    if args.serve_port:
        serve_fast(args.serve_port, args.latency)
        return
    if args.backend:
        print(f"tiny-r1, {args.prompts} prompts x n={args.n}, max_new_tokens {args.max_new_tokens}; run_generate timed after load")
        print(f"{'backend':>14} {'load s':>8} {'samples':>8} {'gen s':>8} {'tokens/s':>10} {'samples/s':>10}", flush=True)
        rows = compare_backends(args.backend, prompts=args.prompts, n=args.n, tokens=args.max_new_tokens)
        out = args.out if args.out != RESULTS else RESULTS.with_name("generate_backends.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"benchmark": "generate_backends", "rows": rows, "prompts": args.prompts, "n": args.n,
                                   "max_new_tokens": args.max_new_tokens, "cpus": os.cpu_count(),
                                   "note": "shared 2-core machine; numbers are noisy"}, indent=2))
        print(f"wrote {out}")
        return
    rounds, repeats, sat_total = (5, 1, 1000) if args.quick else (20, 2, 4000)
    rounds = args.rounds or rounds

    print(f"{args.server} server, latency {args.latency * 1000:.0f} ms; {rounds} rounds per concurrency; best of {repeats}", flush=True)
    with start_server(args.server, args.latency) as server:
        asyncio.run(bare_loop(server.url, 8, 32))  # warm both processes up
        if args.with_store:
            store_run(server.url, 8, 16)  # first-use imports out of the measurement
        print(HEADER, flush=True)
        rows = sweep(server.url, args.latency, args.concurrency, rounds, repeats, args.with_store)
    with start_server(args.server, 0.0) as server:
        sat = saturation(server.url, 64, sat_total, repeats)
    print(
        f"\nsaturation (latency 0, concurrency {sat['concurrency']}, {sat['requests']} requests): "
        f"bare {sat['bare_rps']:.0f} req/s, teacher {sat['teacher_rps']:.0f} req/s; client CPU "
        f"{sat['bare_cpu_us_per_req']:.0f} vs {sat['teacher_cpu_us_per_req']:.0f} µs/request"
    )
    if args.with_store and not any("store_rps" in r for r in rows):
        print("store mode skipped: factory.generate.run_generate is not available")
    result = {
        "benchmark": "generate",
        "latency_s": args.latency,
        "server": args.server,
        "quick": args.quick,
        "rounds": rounds,
        "repeats": repeats,
        "rows": rows,
        "saturation": sat,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "aiohttp": aiohttp.__version__},
        "note": "shared machine; server and client share its cores, so numbers are noisy",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
