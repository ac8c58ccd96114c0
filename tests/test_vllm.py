"""vLLM for real, on its CPU build: the offline `vllm` backend and vLLM's OpenAI server behind the
`openai` backend, on tiny-r1. Run in the vLLM venv (README, "Real teachers"):

    .venv-vllm/bin/python -m pytest -q -m vllm

Engine starts are the cost (~1-2 min each on 2 cores), so the tests share one server and one
killed-then-resumed offline run; every test here asserts on those.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest

vllm = pytest.importorskip("vllm", reason="vllm is not installed; the `vllm` tests run in .venv-vllm (README: Real teachers)")

from factory.models import arithmetic_problem  # noqa: E402
from factory.recipe import load_recipe, recipe_hash  # noqa: E402
from factory.store import make_sample_id, visible_shards  # noqa: E402
from tests.conftest import REPO, run_cli  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(1200)]

# CPU build: "gpu_memory_utilization" is the share of host RAM vLLM reserves (mostly KV cache).
ENGINE = {"dtype": "float32", "max_model_len": 512, "gpu_memory_utilization": 0.05}
STARTUP_S = 600  # a loaded 2-core box needs minutes to start an engine

RECIPE = """\
kind: generate
name: {name}
sources:
  - name: arith
    path: prompts.jsonl
    fields: {{id: id, prompt: problem, reference: answer}}
    task_type: math
teacher:
  role: r1_zero
  backend: {backend}
  model: tiny-r1
  vllm: {vllm}
  openai: {openai}
template:
  user: "{{prompt}} Put the final answer in \\\\boxed{{{{}}}}."
sampling: {{n: {n}, temperature: 0.7, top_p: 0.95, max_new_tokens: {tokens}, seed: 3}}
generation: {{flush_every: 8, flush_seconds: 1}}
filters:
  - step: format
  - step: judge
    applies_to: all
    max_new_tokens: 24
    teacher: {{backend: vllm, model: tiny-r1, vllm: {vllm}}}
selection: {{k: 1, policy: shortest}}
output: {{dataset: {name}}}
"""


def write_recipe(directory: Path, name: str, *, backend: str, prompts: int, overlong: int = 0, n: int = 4,
                 tokens: int = 64, openai: dict | None = None, vllm_options: dict | None = None) -> Path:
    rng = __import__("random").Random(11)
    rows = []
    for i in range(prompts):
        problem, value, _ = arithmetic_problem(rng)
        rows.append({"id": f"q{i}", "problem": problem, "answer": str(value)})
    for i in range(overlong):  # longer than max_model_len: must come back as error samples
        rows.append({"id": f"long{i}", "problem": "What is 2 + 3? " * 200, "answer": "5"})
    (directory / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = directory / f"{name}.yaml"
    path.write_text(RECIPE.format(name=name, backend=backend, n=n, tokens=tokens,
                                  vllm=json.dumps({**ENGINE, "batch_size": 8, **(vllm_options or {})}),
                                  openai=json.dumps(openai or {})))
    return path


def stored_rows(run_dir: Path, columns: list[str] | None = None) -> list[dict]:
    rows: list[dict] = []
    for shard in visible_shards(run_dir / "samples"):
        rows.extend(pq.read_table(shard, columns=columns).to_pylist())
    return rows


def planned(recipe_path: Path, prompt_ids: list[str], n: int) -> set[str]:
    rhash = recipe_hash(load_recipe(str(recipe_path)))
    return {make_sample_id(rhash, f"arith/{p}", j) for p in prompt_ids for j in range(n)}


def cli_env(home: Path) -> dict[str, str]:
    return {**os.environ, "FACTORY_HOME": str(home), "PYTHONPATH": str(REPO)}


def wait_for(condition, *, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: the process exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f}s")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def home(tmp_path_factory, tiny_models_dir: Path) -> Path:
    home = tmp_path_factory.mktemp("vllm-home")
    (home / "models").symlink_to(tiny_models_dir, target_is_directory=True)
    return home


# ---------------------------------------------------------------- offline engine
@pytest.fixture(scope="module")
def offline_run(home: Path, tmp_path_factory) -> dict:
    """`factory generate` with backend vllm: SIGKILLed once samples are stored, then resumed."""
    work = tmp_path_factory.mktemp("offline")
    recipe = write_recipe(work, "vllm_gen", backend="vllm", prompts=16, overlong=2)
    run_dir = home / "runs" / "vllm_gen"
    proc = subprocess.Popen([sys.executable, "-m", "cli", "generate", "--recipe", str(recipe), "--quiet"],
                            cwd=work, env=cli_env(home), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    engine: list[psutil.Process] = []
    engine_names: list[str] = []
    orphans: list[psutil.Process] = []
    try:
        wait_for(lambda: (run_dir / "samples").exists() and len(stored_rows(run_dir, ["sample_id"])) >= 8,
                 timeout=STARTUP_S, what="first vllm samples", proc=proc)
        engine = psutil.Process(proc.pid).children(recursive=True)  # EngineCore, its workers, the reaper
        engine_names = [" ".join(p.cmdline()) for p in engine]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        _, orphans = psutil.wait_procs(engine, timeout=30)  # the reaper ends them (SIGTERM, then SIGKILL after 5 s)
    finally:
        if proc.poll() is None:
            proc.kill()
    for orphan in orphans:
        with contextlib.suppress(psutil.Error):
            orphan.kill()
    killed_with = len(stored_rows(run_dir, ["sample_id"]))
    resumed = run_cli("generate", "--recipe", str(recipe), "--quiet", home=home, cwd=work, timeout=STARTUP_S)
    return {"recipe": recipe, "run_dir": run_dir, "work": work, "killed_with": killed_with, "resumed": resumed,
            "engine_names": engine_names, "orphans": orphans}


def test_vllm_backend_resumes_after_sigkill_exactly_once(offline_run: dict) -> None:
    run_dir, recipe = offline_run["run_dir"], offline_run["recipe"]
    ids = [r["sample_id"] for r in stored_rows(run_dir, ["sample_id"])]
    expected = planned(recipe, [f"q{i}" for i in range(16)], 4)
    assert 8 <= offline_run["killed_with"] < len(expected), "the kill landed before the run finished"
    assert Counter(ids).most_common(1)[0][1] == 1, "a sample was written twice"
    assert set(ids) == expected


def test_vllm_engine_processes_end_with_a_killed_generate(offline_run: dict) -> None:
    """vLLM's EngineCore outlives a SIGKILLed parent and keeps its (GPU) memory; the reaper ends it."""
    assert any("EngineCore" in name for name in offline_run["engine_names"]), offline_run["engine_names"]
    assert not offline_run["orphans"], f"left running: {[p.pid for p in offline_run['orphans']]}"


def test_vllm_rows_carry_sampling_think_split_and_lineage(offline_run: dict) -> None:
    run_dir = offline_run["run_dir"]
    rows = stored_rows(run_dir)
    assert {r["backend"] for r in rows} == {"vllm"} and {r["model"] for r in rows} == {"tiny-r1"}
    assert all(0 < r["completion_tokens"] <= 64 and r["prompt_tokens"] > 0 for r in rows)
    assert all(r["temperature"] == pytest.approx(0.7) and r["max_new_tokens"] == 64 for r in rows)
    by_prompt: dict[str, list[dict]] = {}
    for r in rows:
        by_prompt.setdefault(r["prompt_id"], []).append(r)
    assert all(sorted(r["sample_index"] for r in group) == [0, 1, 2, 3] for group in by_prompt.values())
    # n samples of a prompt get their own seeds, so they differ; tiny-r1 writes <think> reasoning.
    assert all(len({r["seed"] for r in group}) == 4 for group in by_prompt.values())
    assert sum(len({r["text"] for r in group}) > 1 for group in by_prompt.values()) >= 12
    closed = [r for r in rows if "</think>" in r["text"]]
    assert len(closed) >= len(rows) // 2
    assert all(r["reasoning"] and r["reasoning"] in r["text"] and "</think>" not in r["answer"] for r in closed)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["teacher"]["backend"] == "vllm" and manifest["versions"]["vllm"] == vllm.__version__


def test_vllm_prompts_over_the_context_are_error_samples(offline_run: dict) -> None:
    errors = [json.loads(line) for line in (offline_run["run_dir"] / "errors.jsonl").read_text().splitlines()]
    long_errors = [e for e in errors if e["prompt_id"].startswith("arith/long")]
    assert {e["prompt_id"] for e in long_errors} == {"arith/long0", "arith/long1"}
    assert all("maximum context length is 512" in e["error"] for e in long_errors)
    assert not {r["prompt_id"] for r in stored_rows(offline_run["run_dir"], ["prompt_id"])} & {"arith/long0", "arith/long1"}


def test_vllm_rows_match_the_transformers_backend(offline_run: dict, home: Path) -> None:
    """Same schema and the same prompt/sampling columns; only the generated text may differ."""
    work = offline_run["work"]
    recipe = write_recipe(work, "hf_gen", backend="transformers", prompts=16, overlong=0)
    run_cli("generate", "--recipe", str(recipe), "--quiet", "sources.0.limit=2", "sampling.n=2", home=home, cwd=work)
    hf = stored_rows(home / "runs" / "hf_gen")
    vl = {(r["prompt_id"], r["sample_index"]): r for r in stored_rows(offline_run["run_dir"])}
    schema_hf = pq.read_schema(visible_shards(home / "runs" / "hf_gen" / "samples")[0])
    schema_vl = pq.read_schema(visible_shards(offline_run["run_dir"] / "samples")[0])
    assert schema_hf.equals(schema_vl, check_metadata=False)
    assert len(hf) == 4
    for row in hf:
        twin = vl[(row["prompt_id"], row["sample_index"])]
        for column in ("prompt", "prompt_messages", "reference", "temperature", "top_p", "max_new_tokens", "task_type"):
            assert row[column] == twin[column], column


def test_judge_step_runs_on_vllm(offline_run: dict, home: Path) -> None:
    run_cli("filter", "--run", "vllm_gen", "--quiet", home=home, cwd=offline_run["work"], timeout=STARTUP_S)
    verdicts = []
    for shard in visible_shards(offline_run["run_dir"] / "verdicts" / "judge"):
        verdicts.extend(pq.read_table(shard).to_pylist())
    assert verdicts, "the judge wrote no verdicts"
    # tiny-r1 is no judge: its verdicts are mostly unparsable, but every one is a real vLLM reply.
    assert all(v["code"] != "judge_error" for v in verdicts)
    assert all(json.loads(v["detail"] or "{}").get("judge") for v in verdicts if v["detail"] is not None)


# ---------------------------------------------------------------- vLLM's OpenAI-compatible server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VLLMServer:
    """`python -m vllm.entrypoints.openai.api_server` on 127.0.0.1 with vLLM's R1 reasoning parser."""

    def __init__(self, model_dir: Path, port: int, log_path: Path) -> None:
        self.model_dir, self.port, self.log_path = model_dir, port, log_path
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        command = [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(self.model_dir),
            "--served-model-name", "tiny-r1", "--reasoning-parser", "deepseek_r1",
            "--host", "127.0.0.1", "--port", str(self.port), "--dtype", ENGINE["dtype"],
            "--max-model-len", str(ENGINE["max_model_len"]), "--gpu-memory-utilization", str(ENGINE["gpu_memory_utilization"]),
        ]
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(self.ready, timeout=STARTUP_S, what=f"vllm server (log: {self.log_path})", proc=self.proc)

    def ready(self) -> bool:
        import urllib.request

        try:
            with urllib.request.urlopen(f"{self.url}/models", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the API server and its engine process
            self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def server(tiny_models_dir: Path, tmp_path_factory) -> VLLMServer:
    server = VLLMServer(tiny_models_dir / "tiny-r1", free_port(), tmp_path_factory.mktemp("server") / "vllm.log")
    server.start()
    yield server
    server.kill()


def chat(server: VLLMServer, **body) -> dict:
    import urllib.request

    payload = {"model": "tiny-r1", "messages": [{"role": "user", "content": "What is 17 + 25? Put the final answer in \\boxed{}."}], **body}
    request = urllib.request.Request(f"{server.url}/chat/completions", data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.loads(response.read())


def test_vllm_server_honours_n_seed_logprobs_usage_and_reasoning(server: VLLMServer) -> None:
    body = {"n": 4, "seed": 7, "temperature": 0.8, "max_tokens": 128, "logprobs": True, "top_logprobs": 1}
    first, again = chat(server, **body), chat(server, **body)
    assert len(first["choices"]) == 4  # n in one request
    assert [c["message"] for c in first["choices"]] == [c["message"] for c in again["choices"]]  # seeded
    assert len({json.dumps(c["message"]) for c in first["choices"]}) > 1  # the n samples differ
    tokens = [len(c["logprobs"]["content"]) for c in first["choices"]]
    assert first["usage"]["completion_tokens"] == sum(tokens) and first["usage"]["prompt_tokens"] > 0
    assert all(entry["logprob"] <= 0 for c in first["choices"] for entry in c["logprobs"]["content"])
    reasoned = [c["message"] for c in first["choices"] if c["message"].get("reasoning_content") or c["message"].get("reasoning")]
    assert reasoned, "the deepseek_r1 parser returned no reasoning"
    assert all("</think>" not in (m.get("content") or "") for m in reasoned)


def test_openai_backend_on_vllm_survives_a_server_restart(server: VLLMServer, home: Path, tmp_path: Path) -> None:
    """Concurrency 64 against the real server; SIGKILL it mid-run, restart it: retries resume, exactly once."""
    openai = {"endpoints": [server.url], "concurrency": 64, "max_retries": 400, "backoff_base_s": 0.2,
              "backoff_max_s": 2.0, "cooldown_s": 0.5, "timeout_s": 300}
    recipe = write_recipe(tmp_path, "served", backend="openai", prompts=48, n=4, tokens=96, openai=openai)
    run_dir = home / "runs" / "served"
    proc = subprocess.Popen([sys.executable, "-m", "cli", "generate", "--recipe", str(recipe), "--quiet"],
                            cwd=tmp_path, env=cli_env(home), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: (run_dir / "samples").exists() and len(stored_rows(run_dir, ["sample_id"])) >= 16,
                 timeout=300, what="first served samples", proc=proc)
        server.kill()
        killed_with = len(stored_rows(run_dir, ["sample_id"]))
        server.start()
        assert proc.wait(timeout=STARTUP_S) == 0, proc.stderr.read().decode()[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    rows = stored_rows(run_dir)
    ids = [r["sample_id"] for r in rows]
    assert killed_with < 48 * 4, "the server was killed after the run had finished"
    assert Counter(ids).most_common(1)[0][1] == 1 and set(ids) == planned(recipe, [f"q{i}" for i in range(48)], 4)
    assert {r["backend"] for r in rows} == {"openai"} and all(r["endpoint"] == server.url for r in rows)
    assert any(r["attempts"] > 1 for r in rows), "no request was retried across the restart"
    assert sum(1 for r in rows if r["reasoning"]) >= len(rows) // 2  # reasoning_content from vLLM's parser
    manifest = json.loads((run_dir / "manifest.json").read_text())
    stats = manifest["sessions"][-1]["teacher_stats"]
    assert stats["retries"] > 0 and stats["extra"]["n_supported"] is True  # n=4 served in one request each
