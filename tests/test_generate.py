"""generate → store → filter → sql through the real CLI on the tiny local teacher; kill -9 and resume."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from factory.models import arithmetic_problem
from factory.recipe import load_recipe, recipe_hash
from factory.store import make_sample_id, visible_shards
from tests.conftest import REPO, run_cli

RECIPE = """\
kind: generate
name: tiny_gen
sources:
  - name: arith
    path: prompts.jsonl
    fields: {{id: id, prompt: problem, reference: answer}}
    task_type: math
teacher:
  role: r1_zero
  backend: transformers
  model: tiny-r1
  transformers: {{batch_size: {batch}}}
template:
  user: "{{prompt}} Put the final answer in \\\\boxed{{{{}}}}."
sampling: {{n: {n}, temperature: 0.7, top_p: 0.95, max_new_tokens: {tokens}, seed: 3}}
generation: {{flush_every: {flush}, flush_seconds: 1}}
filters:
  - step: format
  - step: correctness
selection: {{k: 1, policy: shortest}}
output: {{dataset: tiny_gen}}
"""


def make_recipe(directory: Path, *, prompts: int, n: int, tokens: int = 48, batch: int = 8, flush: int = 4) -> Path:
    rng = random.Random(11)
    rows = []
    for i in range(prompts):
        problem, value, _ = arithmetic_problem(rng)
        rows.append({"id": f"q{i}", "problem": problem, "answer": str(value)})
    (directory / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = directory / "tiny_gen.yaml"
    path.write_text(RECIPE.format(n=n, tokens=tokens, batch=batch, flush=flush))
    return path


def planned_ids(recipe_path: Path, prompts: int, n: int) -> set[str]:
    rhash = recipe_hash(load_recipe(str(recipe_path)))
    return {make_sample_id(rhash, f"arith/q{i}", j) for i in range(prompts) for j in range(n)}


def stored_ids(run_dir: Path) -> list[str]:
    ids: list[str] = []
    for shard in visible_shards(run_dir / "samples"):
        ids.extend(pq.read_table(shard, columns=["sample_id"]).column("sample_id").to_pylist())
    return ids


def kill_at_random_points(args: list[str], *, home: Path, progress: Callable[[], int], rng: random.Random,
                          max_delay_s: float, attempts: int = 3, progress_at_kills: list[int] | None = None) -> int:
    """Start the CLI `attempts` times; each time, once `progress()` moves past what earlier
    attempts left, SIGKILL it after a random delay. Returns how many runs were killed;
    `progress_at_kills` receives `progress()` right after each kill."""
    env = {**os.environ, "FACTORY_HOME": str(home), "PYTHONPATH": str(REPO)}
    kills = 0
    for _ in range(attempts):
        start = progress()
        proc = subprocess.Popen([sys.executable, "-m", "cli", *args], cwd=REPO, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None and progress() <= start:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, max_delay_s))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
            proc.wait(timeout=30)
            if progress_at_kills is not None:
                progress_at_kills.append(progress())
        proc.wait(timeout=30)
    return kills


def test_generate_filter_sql_end_to_end(factory_home: Path, tmp_path: Path) -> None:
    recipe = make_recipe(tmp_path, prompts=6, n=2)
    run_cli("generate", "--recipe", str(recipe), "--quiet", home=factory_home)
    run_dir = factory_home / "runs" / "tiny_gen"
    ids = stored_ids(run_dir)
    assert sorted(ids) == sorted(planned_ids(recipe, 6, 2))  # every (prompt, index) exactly once
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["recipe_hash"] == recipe_hash(load_recipe(str(recipe)))
    assert manifest["counts"]["samples"] == 12 and manifest["teacher"]["role"] == "r1_zero"
    assert "torch" in manifest["versions"] and manifest["shards"]
    rows = pq.read_table(visible_shards(run_dir / "samples")[0]).to_pylist()
    lineage = rows[0]
    assert lineage["teacher_role"] == "r1_zero" and lineage["backend"] == "transformers" and lineage["model"] == "tiny-r1"
    assert lineage["prompt_id"].startswith("arith/") and lineage["completion_tokens"] > 0 and lineage["temperature"] == pytest.approx(0.7)
    assert lineage["prompt_messages"][-1]["content"].endswith("\\boxed{}.")

    # Re-running the same command generates nothing new.
    again = run_cli("generate", "--recipe", str(recipe), "--quiet", home=factory_home)
    assert "12" in again.stdout and len(stored_ids(run_dir)) == 12

    run_cli("filter", "--run", "tiny_gen", "--quiet", home=factory_home)
    sql = run_cli("sql", "SELECT step, count(*) AS n FROM verdicts GROUP BY step ORDER BY step", "--format", "json", home=factory_home)
    counts = {r["step"]: r["n"] for r in json.loads(sql.stdout)}
    assert counts["format"] == 12  # every sample got a format verdict
    assert counts.get("correctness", 0) <= 12
    passed_format = json.loads(run_cli("sql", "SELECT count(*) AS n FROM verdicts WHERE step='format' AND passed",
                                       "--format", "json", home=factory_home).stdout)[0]["n"]
    assert counts.get("correctness", 0) == passed_format  # only format survivors reach the verifier

    # Filtering again is idempotent: nothing recomputed, no new verdict rows.
    before = run_cli("sql", "SELECT count(*) AS n FROM verdicts_all", "--format", "json", home=factory_home).stdout
    run_cli("filter", "--run", "tiny_gen", "--quiet", home=factory_home)
    after = run_cli("sql", "SELECT count(*) AS n FROM verdicts_all", "--format", "json", home=factory_home).stdout
    assert before == after

    # Writes are refused by `factory sql`.
    refused = run_cli("sql", "COPY (SELECT 1) TO 'x.csv'", home=factory_home, check=False)
    assert refused.returncode == 2 and "read-only" in refused.stderr


def test_changed_recipe_is_refused_unless_new_run(factory_home: Path, tmp_path: Path) -> None:
    recipe = make_recipe(tmp_path, prompts=2, n=1, tokens=16)
    run_cli("generate", "--recipe", str(recipe), "--quiet", home=factory_home)
    refused = run_cli("generate", "--recipe", str(recipe), "sampling.temperature=0.3", "--quiet", home=factory_home, check=False)
    assert refused.returncode == 2 and "different recipe" in refused.stderr and "--new-run" in refused.stderr
    run_cli("generate", "--recipe", str(recipe), "sampling.temperature=0.3", "--new-run", "--quiet", home=factory_home)
    assert len(stored_ids(factory_home / "runs" / "tiny_gen-2")) == 2
    assert len(stored_ids(factory_home / "runs" / "tiny_gen")) == 2


def test_kill9_at_random_points_then_resume_is_exactly_once(factory_home: Path, tmp_path: Path) -> None:
    prompts, n = 12, 2
    recipe = make_recipe(tmp_path, prompts=prompts, n=n, tokens=40, batch=4, flush=2)
    run_dir = factory_home / "runs" / "tiny_gen"
    kills = kill_at_random_points(["generate", "--recipe", str(recipe), "--quiet"], home=factory_home,
                                  progress=lambda: len(stored_ids(run_dir)) if run_dir.exists() else 0,
                                  rng=random.Random(5), max_delay_s=1.5)
    assert kills >= 1
    partial = stored_ids(run_dir)
    assert len(partial) == len(set(partial))  # no duplicates even mid-way
    run_cli("generate", "--recipe", str(recipe), "--quiet", home=factory_home)
    final = stored_ids(run_dir)
    assert Counter(final) == Counter(planned_ids(recipe, prompts, n))  # each exactly once, none lost
    assert not [p for p in (run_dir / "samples").iterdir() if p.suffix == ".parquet" and p not in visible_shards(run_dir / "samples")]


def test_replay_imports_traces_exactly_once(factory_home: Path, tmp_path: Path) -> None:
    traces = [
        {"messages": [{"role": "user", "content": "What is 2+2?"},
                      {"role": "assistant", "content": "<think>\n2+2=4\n</think>\n\nThe answer is \\boxed{4}."}], "answer": "4"},
        {"messages": [{"role": "user", "content": "What is 2+2?"},
                      {"role": "assistant", "content": "\\boxed{5}", "reasoning_content": "2+2=5?"}], "answer": "4"},
        {"problem": "What is 3*3?", "generation": "<think>3*3=9</think>\n\\boxed{9}", "answer": "9"},
    ]
    (tmp_path / "traces.jsonl").write_text("".join(json.dumps(t) + "\n" for t in traces))
    (tmp_path / "replay.yaml").write_text(
        "kind: generate\nname: imported\n"
        "teacher:\n  role: rl_1\n  backend: replay\n  model: some-r1\n"
        "  replay:\n    path: traces.jsonl\n    fields: {messages: messages, prompt: problem, generation: generation, reference: answer}\n"
        "filters: [{step: format}, {step: correctness}]\noutput: {dataset: imported}\n"
    )
    run_cli("generate", "--recipe", str(tmp_path / "replay.yaml"), "--quiet", home=factory_home)
    run_cli("generate", "--recipe", str(tmp_path / "replay.yaml"), "--quiet", home=factory_home)
    rows = json.loads(run_cli("sql", "SELECT prompt, sample_index, reasoning, answer, backend, reference FROM samples ORDER BY prompt, sample_index",
                              "--format", "json", home=factory_home).stdout)
    assert len(rows) == 3 and {r["backend"] for r in rows} == {"replay"}
    assert [r["sample_index"] for r in rows if r["prompt"] == "What is 2+2?"] == [0, 1]
    assert rows[1]["reasoning"] == "2+2=5?" and rows[0]["reasoning"] == "2+2=4"
    run_cli("filter", "--run", "imported", "--quiet", home=factory_home)
    verdicts = json.loads(run_cli("sql", "SELECT s.answer, v.passed FROM verdicts v JOIN samples s USING (sample_id) WHERE step='correctness'",
                                  "--format", "json", home=factory_home).stdout)
    assert {v["answer"]: v["passed"] for v in verdicts} == {"The answer is \\boxed{4}.": True, "\\boxed{5}": False, "\\boxed{9}": True}


@pytest.mark.parametrize("device, expected", [
    ("cuda:7" if __import__("torch").cuda.is_available() else "cuda", "teacher.transformers.device"),
    ("tpu-please", "expected auto, cpu, cuda, cuda:N or mps"),
])
def test_unusable_device_is_one_line_and_writes_nothing(factory_home: Path, tmp_path: Path, device: str,
                                                        expected: str) -> None:
    recipe = make_recipe(tmp_path, prompts=2, n=1)
    proc = run_cli("generate", "--recipe", str(recipe), "-q", f"teacher.transformers.device={device}",
                   home=factory_home, check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0] and "Traceback" not in proc.stderr
    assert not (factory_home / "runs" / "tiny_gen").exists()


def test_transformers_teacher_stays_inside_the_model_context(tiny_models_dir: Path, tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """Prompts that fill the context come back as errors; the rest are capped to fit."""
    import shutil

    from factory.recipe import TeacherConfig
    from factory.teachers.base import GenerationRequest
    from factory.teachers.transformers_backend import TransformersTeacher

    model_dir = tmp_path / "short-context"
    shutil.copytree(tiny_models_dir / "tiny-r1", model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    config["max_position_embeddings"] = 96
    (model_dir / "config.json").write_text(json.dumps(config))
    teacher = TransformersTeacher(TeacherConfig(role="r1_zero", backend="transformers", model=str(model_dir)))

    def request(key: str, prompt: str) -> GenerationRequest:
        return GenerationRequest(key=key, group=key, messages=[{"role": "user", "content": prompt}],
                                 temperature=0.0, top_p=1.0, max_new_tokens=500, seed=0)

    with caplog.at_level("WARNING"):
        short, long = teacher.generate([request("short", "What is 2 + 3?"), request("long", "What is 2 + 3? " * 60)])
    assert long.error is not None and "the model's context is 96" in long.error and long.finish_reason == "error"
    assert short.error is None and short.prompt_tokens + short.completion_tokens <= 96
    assert any("capped" in r.message for r in caplog.records)
    assert teacher.stats.errors == 1 and teacher.stats.completed == 2


def _replay_run(directory: Path, traces: int) -> Path:
    """A replay recipe over `traces` synthetic R1 traces: right, wrong, malformed, duplicated."""
    rng = random.Random(17)
    with open(directory / "traces.jsonl", "w") as f:
        for i in range(traces):
            problem, value, _ = arithmetic_problem(rng)
            answer = value if rng.random() < 0.6 else value + 1
            body = f"<think>\nWork on {problem} step {i % 97}.\n</think>\n\nSo the result is \\boxed{{{answer}}}."
            if rng.random() < 0.1:
                body = body.replace("</think>", "")
            f.write(json.dumps({"problem": problem, "generation": body, "answer": str(value)}) + "\n")
    recipe = directory / "replayed.yaml"
    recipe.write_text(
        "kind: generate\nname: replayed\n"
        "teacher:\n  role: rl_1\n  backend: replay\n  model: some-r1\n"
        "  replay:\n    path: traces.jsonl\n    fields: {prompt: problem, generation: generation, reference: answer}\n"
        "filters: [{step: format}, {step: language}, {step: readability}, {step: correctness}, {step: dedup}]\n"
        "selection: {k: 1, policy: shortest}\n"
        "output: {dataset: replayed}\n"
    )
    return recipe


def _verdict_rows(run_dir: Path) -> list[tuple[str, str, bool | None, str | None]]:
    rows = []
    for step_dir in sorted((run_dir / "verdicts").iterdir()):
        for shard in visible_shards(step_dir):
            table = pq.read_table(shard, columns=["sample_id", "step", "passed", "code"]).to_pylist()
            rows.extend((r["sample_id"], r["step"], r["passed"], r["code"]) for r in table)
    return rows


def test_filter_killed_at_random_points_resumes_to_the_same_verdicts(factory_home: Path, tmp_path: Path) -> None:
    """SIGKILL `factory filter` mid-run three times, then finish: every (sample, step) is decided
    exactly once and the verdicts equal those of an uninterrupted run."""
    import shutil

    recipe = _replay_run(tmp_path, traces=12_000)
    run_cli("generate", "--recipe", str(recipe), "--quiet", home=factory_home)
    run_dir = factory_home / "runs" / "replayed"
    reference_home = tmp_path / "reference-home"
    shutil.copytree(factory_home, reference_home, symlinks=True)
    run_cli("filter", "--run", "replayed", "--quiet", home=reference_home)
    expected = _verdict_rows(reference_home / "runs" / "replayed")

    at_kills: list[int] = []
    kills = kill_at_random_points(["filter", "--run", "replayed", "--quiet"], home=factory_home,
                                  progress=lambda: len(_verdict_rows(run_dir)) if (run_dir / "verdicts").exists() else 0,
                                  rng=random.Random(9), max_delay_s=1.0, progress_at_kills=at_kills)
    assert kills >= 1 and min(at_kills) < len(expected)  # a kill really stopped it short
    run_cli("filter", "--run", "replayed", "--quiet", home=factory_home)
    resumed = _verdict_rows(run_dir)
    decided = Counter((sample_id, step) for sample_id, step, _, _ in resumed)
    assert max(decided.values()) == 1  # nothing decided twice: no work redone after a written chunk
    assert sorted(resumed) == sorted(expected)
    assert len({s for s, step, _, _ in expected if step == "format"}) == 12_000
