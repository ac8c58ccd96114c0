"""The whole path on tiny models: demo, adaptive sampling, judge, mix and cards, through real components."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq

from tests.conftest import run_cli
from tests.test_generate import make_recipe


def test_demo_runs_every_stage(factory_home: Path, tmp_path: Path) -> None:
    proc = run_cli("demo", "--prompts", "12", "--steps", "3", "--quiet", home=factory_home, cwd=tmp_path)
    for stage in ("generate", "filter", "mix", "distill", "sql", "card"):
        assert stage in proc.stdout
    # -q: the summary only; no warning about runs the demo did not make, no dependency's bars or dicts.
    assert "WARNING" not in proc.stderr and "not found" not in proc.stderr, proc.stderr
    assert "{'loss'" not in proc.stdout + proc.stderr and "it/s" not in proc.stderr
    manifest = json.loads((factory_home / "runs" / "cold_start" / "manifest.json").read_text())
    assert manifest["counts"]["samples"] == manifest["counts"]["unique_sample_ids"] > 0
    steps = json.loads(run_cli("sql", "SELECT DISTINCT step FROM verdicts ORDER BY 1", "--format", "json", home=factory_home).stdout)
    assert {"format", "selection"} <= {s["step"] for s in steps}
    mixed = json.loads(run_cli("sql", "SELECT count(*) AS n FROM mixes", "--format", "json", home=factory_home).stdout)[0]["n"]
    selected = json.loads(run_cli("sql", "SELECT count(*) AS n FROM verdicts WHERE step='selection' AND passed",
                                  "--format", "json", home=factory_home).stdout)[0]["n"]
    assert mixed == selected  # the mix takes every curated sample at demo scale
    assert not (tmp_path / "data_cards").exists()  # nothing written into the current directory
    card = (factory_home / "cards" / "cold_start" / "README.md").read_text()
    assert "factory generate --recipe cold_start " in card  # a shipped recipe by name, not by this machine's path
    students = list((factory_home / "students").glob("*/config.json"))
    assert students, "distill wrote no model"


def test_adaptive_sampling_stops_solved_prompts(factory_home: Path, tmp_path: Path) -> None:
    recipe = make_recipe(tmp_path, prompts=10, n=1, tokens=48, batch=8)
    text = recipe.read_text().replace("generation: {flush_every: 4, flush_seconds: 1}",
                                      "generation: {flush_every: 8, flush_seconds: 5, adaptive: {k: 1, max_attempts: 4, round_size: 2}}")
    recipe.write_text(text)
    proc = run_cli("generate", "--recipe", str(recipe), "--quiet", home=factory_home)
    assert "adaptive rounds" in proc.stdout
    run_cli("filter", "--run", "tiny_gen", "--quiet", home=factory_home)
    rows = json.loads(run_cli(
        "sql", "SELECT s.prompt_id, s.sample_index, coalesce(bool_and(coalesce(v.passed, false)), false) AS ok FROM samples s "
        "LEFT JOIN verdicts v ON v.sample_id = s.sample_id AND v.step IN ('format', 'correctness') "
        "GROUP BY ALL ORDER BY 1, 2", "--format", "json", home=factory_home).stdout)
    by_prompt: dict[str, list[tuple[int, bool]]] = defaultdict(list)
    for r in rows:
        by_prompt[r["prompt_id"]].append((r["sample_index"], r["ok"]))
    assert len(by_prompt) == 10
    for prompt, samples in by_prompt.items():
        indices = [i for i, _ in samples]
        assert indices == list(range(len(indices)))  # contiguous sample indices, none twice
        assert len(samples) in (2, 4)  # whole rounds, never past max_attempts
        if len(samples) == 4:
            # Sampling went on only because the first round had no accepted sample.
            assert not any(ok for i, ok in samples if i < 2), prompt


def test_judge_step_on_tiny_model_counts_unparsable(factory_home: Path, tmp_path: Path) -> None:
    traces = [{"problem": f"Say something about item {i}.", "generation": f"Item {i} is a fine item.", "answer": None} for i in range(4)]
    (tmp_path / "traces.jsonl").write_text("".join(json.dumps(t) + "\n" for t in traces))
    (tmp_path / "judged.yaml").write_text(
        "kind: generate\nname: judged\nteacher:\n  role: v3\n  backend: replay\n  replay:\n    path: traces.jsonl\n"
        "    default_task_type: writing\n"
        "filters:\n  - step: format\n    style: optional\n  - step: correctness\n  - step: judge\n"
        "    teacher: {backend: transformers, model: tiny-r1}\n    max_new_tokens: 24\n"
        "output: {dataset: judged}\n"
    )
    run_cli("generate", "--recipe", str(tmp_path / "judged.yaml"), "--quiet", home=factory_home)
    proc = run_cli("filter", "--run", "judged", "--quiet", home=factory_home)
    assert "judge" in proc.stdout
    verdicts = json.loads(run_cli("sql", "SELECT step, passed, code FROM verdicts ORDER BY step", "--format", "json", home=factory_home).stdout)
    correctness = [v for v in verdicts if v["step"] == "correctness"]
    judged = [v for v in verdicts if v["step"] == "judge"]
    assert len(correctness) == 4 and all(v["passed"] is None and v["code"] == "unverifiable" for v in correctness)
    assert len(judged) == 4  # every unverifiable sample went to the judge
    for v in judged:
        # The tiny model is no judge: what it writes is parsed or counted unparsable, never silently accepted.
        assert v["passed"] is not None or v["code"] in ("unparsable_judge_output", "judge_error")


def test_card_and_mix_manifest(factory_home: Path, tmp_path: Path) -> None:
    recipe = make_recipe(tmp_path, prompts=6, n=2, tokens=48)
    run_cli("generate", "--recipe", str(recipe), "--quiet", home=factory_home)
    run_cli("filter", "--quiet", home=factory_home)
    (tmp_path / "mix.yaml").write_text("kind: mix\nname: m\nseed: 1\nscale: 1.0\ncomponents:\n  - {run: tiny_gen, quota: 100}\noutput: {dataset: m}\n")
    selected = json.loads(run_cli("sql", "SELECT count(*) AS n FROM verdicts WHERE step='selection' AND passed",
                                  "--format", "json", home=factory_home).stdout)[0]["n"]
    mix = run_cli("mix", "--recipe", str(tmp_path / "mix.yaml"), home=factory_home, check=False)
    if selected == 0:
        assert mix.returncode == 2 and "no curated samples" in mix.stderr
    else:
        table = pq.read_table(factory_home / "datasets" / "m" / "data" / "part-00000.parquet").to_pylist()
        assert len(table) == selected
        assert table[0]["messages"][-1]["role"] == "assistant"
        manifest = json.loads((factory_home / "datasets" / "m" / "manifest.json").read_text())
        assert manifest["samples"] == selected and manifest["components"][0]["run"] == "tiny_gen"
    run_cli("card", "--run", "tiny_gen", "--out", str(tmp_path / "cards"), home=factory_home)
    card = (tmp_path / "cards" / "tiny_gen" / "README.md").read_text()
    assert "| generated |  | 12 |" in card and "Filter funnel" in card
    assert f"factory generate --recipe {recipe.name}" in card and str(tmp_path) not in card  # not shipped: its file name


def test_replayed_code_traces_run_against_their_tests(factory_home: Path, tmp_path: Path) -> None:
    """Code traces imported with their tests are verified in the sandbox, under the step's limits."""
    tests = {"kind": "asserts", "asserts": ["assert add_two(1, 2) == 3", "assert add_two(-1, 1) == 0"], "setup": ""}
    bodies = {
        "right": "def add_two(a, b):\n    return a + b",
        "wrong": "def add_two(a, b):\n    return a - b",
        "loops": "def add_two(a, b):\n    while True:\n        pass",
    }
    with open(tmp_path / "code_traces.jsonl", "w") as f:
        for name, body in bodies.items():
            generation = f"<think>\nThe {name} way.\n</think>\n\n```python\n{body}\n```"
            f.write(json.dumps({"id": name, "problem": f"Write add_two ({name}).", "generation": generation,
                                "tests": tests, "entry_point": "add_two", "kind": "code"}) + "\n")
    recipe = ("kind: generate\nname: code_replay\n"
              "teacher:\n  role: rl_1\n  backend: replay\n  model: some-r1\n"
              "  replay:\n    path: code_traces.jsonl\n"
              "    fields: {prompt_id: id, prompt: problem, generation: generation, tests: tests, task_type: kind}\n"
              "filters:\n  - step: format\n  - {step: correctness, code_timeout_s: 0.5, memory_mb: 256}\n"
              "output: {dataset: code_replay}\n")
    (tmp_path / "code_replay.yaml").write_text(recipe)
    run_cli("generate", "--recipe", str(tmp_path / "code_replay.yaml"), "--quiet", home=factory_home)
    proc = run_cli("filter", "--run", "code_replay", "--quiet", home=factory_home, check=False)
    if proc.returncode == 2 and "unsafe_no_sandbox" in proc.stderr:
        # No sandbox on this machine (not root): one line that names the opt-out, then the opt-out works.
        assert len(proc.stderr.strip().splitlines()) == 1
        (tmp_path / "unsandboxed.yaml").write_text(recipe.replace("memory_mb: 256}", "memory_mb: 256, unsafe_no_sandbox: true}"))
        proc = run_cli("filter", "--run", "code_replay", "--recipe", str(tmp_path / "unsandboxed.yaml"), "--quiet",
                       home=factory_home, check=False)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(run_cli("sql", "SELECT s.prompt_id, s.task_type, v.passed, v.code, v.reason FROM verdicts v "
                              "JOIN samples s USING (sample_id) WHERE v.step = 'correctness' ORDER BY 1",
                              "--format", "json", home=factory_home).stdout)
    by_name = {r["prompt_id"].removeprefix("replay/"): r for r in rows}
    assert {r["task_type"] for r in rows} == {"code"}
    assert by_name["right"]["passed"] is True
    assert by_name["wrong"]["passed"] is False and by_name["wrong"]["code"] == "code_failed"
    assert by_name["loops"]["code"] == "code_timeout" and "0.5s" in by_name["loops"]["reason"]
