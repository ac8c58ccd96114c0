"""Student evaluation: pass@k arithmetic, real scoring, deterministic runs on the tiny models."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from factory.errors import FactoryError
from factory.evaluate import (
    BENCHES,
    load_bench,
    pass_at_k,
    prompt_messages,
    reported_ks,
    run_eval,
    sample_seed,
    score_code,
    score_math,
)
from factory.paths import DATA_DIR

REPO = Path(__file__).resolve().parents[1]
ARITH = DATA_DIR / "prompts" / "arith.jsonl"  # id/problem/answer rows the tiny teacher was taught on
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(autouse=True)
def factory_home(tmp_path, monkeypatch, tiny_models_dir):
    """A fresh store per test over the session's tiny models (built once)."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "models").symlink_to(tiny_models_dir)
    monkeypatch.setenv("FACTORY_HOME", str(home))
    return home


def test_pass_at_k_is_the_unbiased_estimator():
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)  # 1 - C(3,2)/C(4,2)
    assert pass_at_k(4, 0, 4) == 0.0 and pass_at_k(4, 4, 1) == 1.0
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                expected = 1.0 - math.comb(n - c, k) / math.comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)
    assert reported_ks(4) == [1, 2, 4] and reported_ks(6) == [1, 2, 4, 6] and reported_ks(1) == [1]
    with pytest.raises(ValueError, match="pass_at_k"):
        pass_at_k(4, 5, 1)


def test_every_shipped_bench_loads_with_its_fields():
    for name, spec in BENCHES.items():
        bench, _, problems = load_bench(name, limit=2)
        assert bench == name and len(problems) == 2
        assert all(p.problem and p.id for p in problems)
        assert all(p.gold for p in problems) if spec.kind == "math" else all(p.gold is None for p in problems)
    code_prompt = prompt_messages(load_bench("humaneval", 1)[2][0], "code")
    assert code_prompt[0]["role"] == "system" and "<think>" in code_prompt[0]["content"]
    assert "def has_close_elements" in code_prompt[1]["content"] and "```python" in code_prompt[1]["content"]
    assert "\\boxed{}" in prompt_messages(load_bench("gsm8k", 1)[2][0], "math")[1]["content"]
    with pytest.raises(FactoryError, match="--bench 'nope'"):
        load_bench("nope")


def test_math_and_code_are_scored_by_the_verifiers():
    golds = ["18", "\\frac{1}{2}", "3"]
    responses = ["<think>16-3-4=9, 9*2=18</think>\n\nThe answer is \\boxed{18}.", "So \\boxed{0.5}.", "<think>hmm</think>\n\n\\boxed{4}"]
    assert [s.correct for s in score_math(golds, responses)] == [True, True, False]

    _, _, problems = load_bench("humaneval", limit=1)
    row = problems[0].row
    right = f"<think>compare pairs</think>\n\n```python\n{row['prompt']}{row['canonical_solution']}```"
    wrong = f"```python\n{row['prompt']}    return False\n```"
    scores = score_code([row, row, row], [right, wrong, "I don't know."])
    assert [s.correct for s in scores] == [True, False, False]
    assert [s.status for s in scores] == ["passed", "failed", "no_code"]


def test_eval_is_deterministic_and_lands_in_the_store(factory_home):
    from factory.sql import run_sql

    kwargs = dict(k=2, limit=4, max_new_tokens=48, seed=7)
    first = run_eval("tiny-r1", str(ARITH), baseline="tiny-qwen", **kwargs)
    first_rows = pq.read_table(first.results_path).to_pylist()
    second = run_eval("tiny-r1", str(ARITH), **kwargs)
    second_rows = pq.read_table(second.results_path).to_pylist()

    assert [r["responses"] for r in first_rows] == [r["responses"] for r in second_rows]
    assert [r["correct"] for r in first_rows] == [r["correct"] for r in second_rows]
    assert first.pass_at_1 == second.pass_at_1 and first.pass_at_k == second.pass_at_k
    assert first.problems == 4 and first.samples == 8 and set(first.pass_at_k) == {"1", "2"}
    assert first.pass_at_1 == pytest.approx(sum(r["n_correct"] for r in first_rows) / 8)
    # The samples differ from each other (temperature 0.6 with per-sample seeds), not copies of one draw.
    assert len({text for r in first_rows for text in r["responses"]}) > 1
    assert first_rows[0]["seeds"] == [sample_seed(7, first_rows[0]["problem_id"], j) for j in range(2)]

    # Side by side with the baseline, which was scored on the same problems.
    table = first.table()
    assert [row["model"] for row in table] == ["tiny-r1", "tiny-qwen"]
    assert first.baseline is not None and first.baseline.problems == 4
    summary = json.loads(Path(first.summary_path).read_text())
    assert summary["pass_at_1"] == first.pass_at_1 and summary["settings"]["seed"] == 7

    # Per-problem results are queryable with SQL.
    result = run_sql("SELECT model, count(*) AS problems, sum(n_correct) AS correct FROM evals GROUP BY model ORDER BY model")
    by_model = {row["model"]: row for row in result.to_dicts()}
    assert by_model["tiny-r1"]["problems"] == 4
    assert by_model["tiny-r1"]["correct"] == sum(r["n_correct"] for r in second_rows)
    assert by_model["tiny-qwen"]["problems"] == 4
    assert sorted(os.listdir(factory_home / "evals")) == ["tiny-qwen-arith", "tiny-r1-arith"]


def test_humaneval_runs_end_to_end_through_the_sandbox():
    report = run_eval("tiny-r1", "humaneval", k=1, limit=1, max_new_tokens=16)
    row = pq.read_table(report.results_path).to_pylist()[0]
    assert row["problem_id"] == "HumanEval/0" and row["gold"] is None
    assert row["status"][0] in {"passed", "failed", "error", "timeout", "no_code"}
    assert report.pass_at_1 == float(row["correct"][0])


def test_bad_arguments_are_one_line_errors():
    with pytest.raises(FactoryError, match="not a tiny model"):
        run_eval("no-such-model", "gsm8k", k=1, limit=1, max_new_tokens=4)
    with pytest.raises(ValueError, match="k: expected"):
        run_eval("tiny-r1", "gsm8k", k=0)
