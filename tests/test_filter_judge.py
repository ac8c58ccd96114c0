"""The shipped `reasoning` filters keep what a rule verified: the judge is asked only about the rest."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import run_cli


def _replay_run(tmp_path: Path, home: Path) -> None:
    traces = []
    for i, (a, b) in enumerate([(11, 8), (17, 7), (9, 3), (9, 2)]):
        total = a + b if i < 3 else a + b + 1  # the last one is wrong
        traces.append({"id": f"p{i}", "problem": f"Compute {a} + {b}.", "answer": str(a + b),
                       "generation": f"<think>\nI add {a} and {b}. {a} plus {b} is {total}.\n</think>\n\nThe sum is \\boxed{{{total}}}."})
    (tmp_path / "traces.jsonl").write_text("".join(json.dumps(t) + "\n" for t in traces))
    (tmp_path / "verified.yaml").write_text(
        "kind: generate\nname: verified\nteacher:\n  role: rl_1\n  backend: replay\n  model: some-r1\n"
        "  replay:\n    path: traces.jsonl\n"
        "    fields: {prompt_id: id, prompt: problem, generation: generation, reference: answer}\n"
        "    default_task_type: math\noutput: {dataset: verified}\n")
    run_cli("generate", "--recipe", str(tmp_path / "verified.yaml"), "--quiet", home=home)


def test_reasoning_recipe_selects_rule_verified_samples(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _replay_run(tmp_path, home)
    # The shipped recipe's steps: format, language, readability, correctness, judge, decontam, dedup.
    run_cli("filter", "--run", "verified", "--recipe", "reasoning", "--quiet", home=home)
    rows = json.loads(run_cli("sql", "SELECT step, count(*) FILTER (WHERE passed) AS passed, count(*) AS n FROM verdicts "
                              "GROUP BY step", "--format", "json", home=home).stdout)
    by_step = {r["step"]: r for r in rows}
    assert by_step["correctness"] == {"step": "correctness", "passed": 3, "n": 4}
    assert "judge" not in by_step  # every sample was decided by a rule: the judge model is never asked
    assert by_step["decontam"]["n"] == 3 and by_step["dedup"]["n"] == 3
    assert by_step["selection"]["passed"] == 3  # k=1 per prompt, one verified sample each
    report = json.loads((home / "runs" / "verified" / "filter_report.json").read_text())
    assert report["selected"] == 3 and report["yield_by_task"]["math"]["accepted"] == 3
