"""One scoring path: the filter's correctness step, `factory eval` and `factory verify`
give every sample the same verdict, because all three call verifiers.scoring."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from factory.evaluate import score_code as eval_score_code
from factory.evaluate import score_math as eval_score_math
from factory.steps.correctness import CorrectnessStep
from factory.verify import verify_code_file, verify_math_file
from verifiers.code import SandboxPool, SandboxUnavailable
from verifiers.scoring import find_program, read_tests, score_code, score_math, score_math_batch

pytestmark = pytest.mark.timeout(300)

# (gold, full assistant turn): every extraction rule, prose, undecidable and wrong answers.
MATH_SAMPLES = [
    ("18", "<think>3 * 6 = 18</think>\n\nThe answer is $\\boxed{18}$."),
    ("18", "<think>3 * 6</think>\nA: 18"),
    ("18", "Final answer: **18**"),
    ("18", "<think>so \\boxed{18}</think>\n\nI have finished my reasoning and I think it went rather well overall."),
    ("\\{-1, 4\\}", "The roots are \\boxed{4} and \\boxed{-1}."),
    ("(5, 8)", "Solving, \\boxed{(x, y) = (5, 8)}"),
    ("1.22", "\\boxed{1,22}"),
    ("9", "Therefore, the number of divisors of 196 is 9."),
    ("7", "\\boxed{8}"),
    ("7", ""),
    ("\\frac{dM}{dt}=\\frac{10^{5}L_{\\odot}}{0.007c^{2}M_{\\odot}^{6}}M^{6}", "\\boxed{M^6}"),
]

ADD_PROMPT = 'def add(a, b):\n    """Sum of a and b."""\n'
ADD_TESTS = {"kind": "humaneval", "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n"
             "    assert candidate(-1, 1) == 0\n", "entry_point": "add"}
CODE_SAMPLES = [
    "<think>easy</think>\n```python\ndef add(a, b):\n    return a + b\n```",
    "```python\ndef add(a, b):\n    return a - b\n```",
    "def add(a, b):\n    return a + b\n",  # a bare program, no fence
    "    return a + b\n",  # a bare HumanEval-style body continuing the prompt
    "I am not sure how to write this.",
    "42",
]


def _sandbox() -> bool:
    try:
        with SandboxPool(1):
            return True
    except SandboxUnavailable:
        return False


def _filter_rows(**columns) -> list[dict]:
    base = {"sample_id": "s", "prompt": "p", "reasoning": None, "answer": None, "reference": None, "tests": None,
            "task_type": "math", "language": "en"}
    return [{**base, **dict(zip(columns, values))} for values in zip(*columns.values())]


def _filter_verdicts(step: CorrectnessStep, rows: list[dict]) -> list[bool | None]:
    return [v.passed for v in step.score(rows)]


@pytest.mark.parametrize("policy", ["strict", "lenient"])
def test_math_verdicts_agree_across_filter_eval_and_verify(tmp_path: Path, policy: str) -> None:
    golds = [gold for gold, _ in MATH_SAMPLES]
    texts = [text for _, text in MATH_SAMPLES]
    direct = [score_math(text, gold, policy=policy) for gold, text in MATH_SAMPLES]

    step = CorrectnessStep.from_config({"policy": policy, "workers": 1})
    answers = [text.rsplit("</think>", 1)[-1].strip() for text in texts]
    filtered = _filter_verdicts(step, _filter_rows(text=texts, answer=answers, reference=golds))

    evaluated = eval_score_math(golds, texts, policy=policy)

    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps({"gold": g, "response": t}) + "\n" for g, t in MATH_SAMPLES))
    report = verify_math_file(path, workers=1, policy=policy)
    verified = [json.loads(line) for line in Path(report["verdicts"]).read_text().splitlines()]

    assert [s.correct for s in direct] == filtered == [v["correct"] for v in verified]
    assert [s.correct for s in direct] == [s.correct for s in evaluated]
    assert [s.rule for s in direct] == [v["rule"] for v in verified] == [s.rule for s in evaluated]
    # The shapes of issue 16 hold on every path.
    assert direct[1].correct and direct[2].correct and direct[4].rule == "boxed_set" and direct[6].correct
    assert direct[3].correct and direct[3].rule == "boxed"  # the final section has no answer: <think>'s box
    assert direct[8].correct is False and direct[9].status == "no_answer"
    assert direct[10].status != "error"
    assert (direct[7].correct, direct[7].rule) == ((True, "last_number") if policy == "lenient" else (None, None))


def test_code_verdicts_agree_across_filter_eval_and_verify(tmp_path: Path) -> None:
    unsafe = not _sandbox()
    tests = [{**ADD_TESTS}] * len(CODE_SAMPLES)
    rows = [{"prompt": ADD_PROMPT, **t} for t in tests]
    direct = [score_code(text, {"prompt": ADD_PROMPT, **ADD_TESTS}, unsafe_no_sandbox=unsafe) for text in CODE_SAMPLES]

    step = CorrectnessStep.from_config({"workers": 1, "unsafe_no_sandbox": unsafe})
    filter_rows = _filter_rows(text=CODE_SAMPLES, answer=CODE_SAMPLES,
                               tests=[json.dumps(r) for r in rows], task_type=["code"] * len(CODE_SAMPLES))
    filtered = step.score(filter_rows)

    path = tmp_path / "programs.jsonl"
    path.write_text("".join(json.dumps({"response": t, "tests": json.dumps(r)}) + "\n" for t, r in zip(CODE_SAMPLES, rows)))
    report = verify_code_file(path, workers=1, unsafe_no_sandbox=unsafe)
    verified = [json.loads(line) for line in Path(report["verdicts"]).read_text().splitlines()]

    assert [s.correct for s in direct] == [True, False, True, True, False, False]
    assert [s.status for s in direct][1:] == ["failed", "passed", "passed", "no_code", "no_code"]
    assert [s.rule for s in direct] == ["fenced", "fenced", "raw", "raw", None, None]
    assert [v.passed for v in filtered] == [s.correct for s in direct] == [v["passed"] for v in verified]
    assert [v["status"] for v in verified] == [s.status for s in direct]
    assert filtered[4].code == "no_code" and filtered[1].code == "code_failed"
    if not unsafe:  # factory eval has no opt-out of the sandbox
        evaluated = eval_score_code(rows, CODE_SAMPLES)
        assert [(s.correct, s.status) for s in evaluated] == [(s.correct, s.status) for s in direct]


def test_find_program_rules() -> None:
    assert find_program("```py\nx = 1\n```") == ("x = 1\n", "fenced")
    assert find_program("<think>```python\nx=1\n```</think>\nimport math\nprint(math.pi)") == (
        "import math\nprint(math.pi)", "raw")
    assert find_program("The answer is 42.") == (None, None)
    assert find_program("hello") == (None, None)
    assert find_program("    return a + b", ADD_PROMPT) == ("    return a + b", "raw")
    assert find_program("return a + b", ADD_PROMPT) == (None, None)


def test_read_tests_forms() -> None:
    from_json = read_tests(json.dumps({"kind": "asserts", "asserts": ["assert add(1, 2) == 3"], "entry_point": "add"}))
    assert from_json.entry_point == "add" and from_json.kind == "asserts"
    humaneval = read_tests("def check(candidate):\n    assert candidate(1, 2) == 3\n",
                           {"entry_point": "add", "prompt": ADD_PROMPT})
    assert humaneval.entry_point == "add" and humaneval.prompt == ADD_PROMPT
    with pytest.raises(ValueError):
        read_tests(["not", "tests"])


def test_batch_scoring_checks_lengths_and_policy() -> None:
    with pytest.raises(ValueError, match="same length"):
        score_math_batch(["a"], [])
    with pytest.raises(ValueError, match="policy"):
        score_math_batch(["\\boxed{1}"], ["1"], policy="generous")


def test_factory_verify_math_cli_takes_the_policy(tmp_path: Path) -> None:
    from tests.conftest import run_cli

    data = tmp_path / "prose.jsonl"
    data.write_text(json.dumps({"gold": "9", "response": "Therefore, the number of divisors of 196 is 9."}) + "\n")
    home = tmp_path / "home"
    home.mkdir()
    run_cli("verify", "math", str(data), "--policy", "lenient", "--workers", "1", home=home)
    verdict = json.loads((tmp_path / "prose.math_verdicts.jsonl").read_text())
    assert (verdict["correct"], verdict["rule"]) == (True, "last_number")
    run_cli("verify", "math", str(data), "--workers", "1", home=home)
    assert json.loads((tmp_path / "prose.math_verdicts.jsonl").read_text())["reason"] == "no_answer"
    bad = run_cli("verify", "math", str(data), "--policy", "generous", home=home, check=False)
    assert bad.returncode == 2 and "--policy" in bad.stderr + bad.stdout
    assert len((bad.stderr + bad.stdout).strip().splitlines()) == 1


def test_correctness_step_rejects_an_unknown_policy() -> None:
    with pytest.raises(ValueError, match="policy: expected 'strict' or 'lenient'"):
        CorrectnessStep.from_config({"policy": "generous"})
