"""The curation experiment, reduced: real teacher, real filters, real distillation and eval.

What the full run measures (A vs B over 3 seeds) is in the README; here every stage must
produce rows, the teacher must be imperfect but better than chance, every filter must
reject something, and generation 2 must point at generation 1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from factory import tasks
from tests.conftest import MODELS_HOME, REPO, run_cli


@pytest.fixture(scope="session")
def arith_teacher(tiny_models_dir: Path) -> Path:
    env = {**os.environ, "FACTORY_HOME": str(MODELS_HOME)}
    subprocess.run([sys.executable, "-c", "from factory.models import ensure_model; ensure_model('tiny-teacher-arith')"],
                   check=True, env=env, cwd=REPO)
    return tiny_models_dir / "tiny-teacher-arith"


def test_splits_are_seeded_and_share_no_problem() -> None:
    train, heldout = tasks.problem_splits(0, 200, 40)
    again, heldout_again = tasks.problem_splits(0, 300, 40)
    assert [p.problem for p in heldout] == [p.problem for p in heldout_again]  # growing train never moves held-out
    assert [p.problem for p in train] == [p.problem for p in again[:200]]
    assert not {p.key for p in train} & {p.key for p in heldout}
    assert not {p.problem for p in train} & {p.problem for p in heldout}
    for p in train + heldout:
        first, final = p.steps
        assert eval(first.split("=")[0]) == int(first.split("=")[1])
        assert eval(final.split("=")[0]) == int(final.split("=")[1]) == p.answer
    assert tasks.problem_splits(1, 50, 40)[1] != heldout


def test_every_teacher_flaw_is_caught_by_its_filter() -> None:
    from verifiers.format import check_think_format
    from verifiers.language import check_language_consistency
    from verifiers.math import verify_batch
    from verifiers.readability import check_readability

    from factory.teachers.base import split_think

    problem = tasks.problem_splits(0, 1, 1)[0][0]
    for flaw in [None, *tasks.TEACHER_FLAWS]:
        text, reasoning, answer = split_think(tasks.flawed_chain(problem, flaw))
        fmt = check_think_format(text, finish_reason="stop")
        lang = check_language_consistency(reasoning or "", answer)
        read = check_readability(reasoning or "", answer)
        right = verify_batch([(str(problem.answer), answer or text)])[0].correct
        caught = {"unclosed_think": not fmt.passed, "mixed_language": not lang.passed, "loop": not read.passed,
                  "wrong_answer": right is False, "no_answer": not fmt.passed}
        if flaw is None:
            assert fmt.passed and lang.passed and read.passed and right, (text, fmt, lang, read)
        else:
            assert caught[flaw], (flaw, text)


@pytest.mark.timeout(1800)  # ~2-3 CPU-minutes; on a 2-core host shared by many jobs, several times that in wall time
def test_reduced_experiment_end_to_end(factory_home: Path, arith_teacher: Path) -> None:
    proc = run_cli("experiment", "curation", "--seeds", "0", "--generations", "2", "--name", "ci",
                   "train_prompts=40", "heldout=12", "leaked=3", "n=8", "steps=8", "eval_k=2", home=factory_home, timeout=1700)
    report = json.loads((factory_home / "experiments" / "ci" / "report.json").read_text())
    first, second = report["rounds"]
    # Every stage produced rows.
    assert first["generated"] == (40 + 3) * 8 and second["generated"] == (40 + 3) * 8
    assert first["curated"] > 0 and second["curated"] > 0
    assert {a["arm"] for a in first["arms"]} == {"curated", "raw"} and [a["arm"] for a in second["arms"]] == ["curated"]
    curated, raw = first["arms"]
    assert curated["samples"] == raw["samples"] == first["curated"]
    for arm in first["arms"] + second["arms"]:
        assert Path(arm["student"], "config.json").exists()
        assert 0.0 <= arm["pass_at_1"] <= 1.0
        results = factory_home / "evals" / f"{arm['dataset']}-heldout" / "results.parquet"
        assert results.exists()
    # Every filter step of generation 1 rejected something: the teacher's planted flaws (leaked benchmark
    # items, loops, missing/unclosed answers, Chinese chains, repeated right chains, sign slips) all occur.
    rejected = {s["step"]: s["rejected"] for s in first["funnel"]}
    assert set(rejected) == {"decontam", "readability", "format", "language", "dedup", "correctness", "selection"}
    assert all(n > 0 for step, n in rejected.items() if step != "selection"), rejected
    assert rejected["decontam"] == 3 * 8  # exactly the leaked GSM8K items, all n samples of each
    # Generation 2's teacher is generation 1's curated student, and its run records that in the store.
    assert second["teacher"] == curated["student"]
    manifest = json.loads((factory_home / "runs" / second["run"] / "manifest.json").read_text())
    assert manifest["recipe"]["lineage"] == {"generation": 2, "parent_run": first["run"], "parent_dataset": curated["dataset"]}
    assert manifest["teacher"] == {"role": "rl_1", "backend": "transformers", "model": curated["student"]}
    rows = run_cli("sql", "SELECT DISTINCT run, teacher_role, model FROM samples ORDER BY run", "--format", "json", home=factory_home)
    lineage = {r["run"]: r for r in json.loads(rows.stdout)}
    assert lineage[second["run"]]["teacher_role"] == "rl_1" and lineage[second["run"]]["model"].endswith(curated["dataset"])
    # The teacher is imperfect on purpose but knows the arithmetic: far above guessing a digit (0.1),
    # below 100% (its planted sign slips alone make ~30% of its chains wrong).
    assert 0.25 < first["teacher_accuracy"] < 0.9, first["teacher_accuracy"]
    assert 0.25 < report["references"]["teacher"]["pass_at_1"] < 0.95, report["references"]
    card = (factory_home / "experiments" / "ci" / "README.md").read_text()
    assert "| seed | gen |" in card and "curated" in card
    assert "beyond spread" in proc.stdout


def test_bad_setting_is_one_line(factory_home: Path) -> None:
    proc = run_cli("experiment", "curation", "steps=0", home=factory_home, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "steps" in proc.stderr
