"""Labelled accept/reject fixtures for the rule filters in verifiers/ (format, language,
readability, boxed) and the batched runner in verifiers.rules.

Hand-written fixtures pin each reason code; the reference data shipped in
factory/data/benchmarks (MATH500 and GSM8K solutions, HumanEval code) are real text
that a good filter must accept.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from verifiers.format import (FORMAT_REASON_CODES, check_boxed_answer, check_think_format, parse_think_format,
                              split_reasoning, validate_format_params)
from verifiers.language import check_language_consistency, dominant_script, script_units, validate_language_params
from verifiers.readability import (READABILITY_REASON_CODES, check_readability, repeated_ngram_ratio,
                                   repetition_stats, validate_readability_params)
from verifiers.rules import run_rule_checks, run_rule_checks_parallel, validate_rule_config
from verifiers.verdict import Verdict

BENCHMARKS = Path(__file__).resolve().parents[1] / "factory" / "data" / "benchmarks"


def load_jsonl(name: str) -> list[dict]:
    with open(BENCHMARKS / name, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def r1_sample(reasoning: str, answer: str) -> str:
    return f"<think>\n{reasoning}\n</think>\n\n{answer}"


GOOD_MATH = r1_sample(
    "We need $x$ with $2x + 3 = 11$. Subtract 3: $2x = 8$, so $x = 4$.\n\nWait, let me check: 2·4 + 3 = 11. Yes.",
    "Solving $2x + 3 = 11$ gives $x = 4$.\n\n**Answer:** $\\boxed{4}$")

CHINESE_REASONING = ("我们需要求出满足方程 $2x + 3 = 11$ 的 $x$。两边同时减去 3，得到 $2x = 8$，所以 $x = 4$。"
                     "\n\n等等，我再验证一下：2 乘以 4 再加 3 等于 11，没有问题。")
MIXED_REASONING = ("We need $x$ with $2x + 3 = 11$. 两边同时减去 3，得到 $2x = 8$。所以答案是 4，"
                   "我再验证一下：2 乘以 4 再加 3 等于 11。 So x = 4.")


# ------------------------------------------------------------------ format
FORMAT_CASES = [
    # (label, text, options, expected code or None for accept)
    ("well formed", GOOD_MATH, {}, None),
    ("leading whitespace", "\n  " + GOOD_MATH, {}, None),
    ("no think block", "The answer is 4.", {}, "missing_think"),
    ("missing </think>, server stopped", "<think>reasoning and then the answer is 4", {"finish_reason": "stop"},
     "missing_close_think"),
    ("missing </think>, finish unknown = cut off", "<think>reasoning that never ends", {}, "truncated"),
    ("hit max_new_tokens", GOOD_MATH, {"finish_reason": "length"}, "truncated"),
    ("anthropic-style limit", GOOD_MATH, {"finish_reason": "max_tokens"}, "truncated"),
    ("cut off mid-answer", GOOD_MATH[:-10], {"finish_reason": "length"}, "truncated"),
    ("nested think", "<think>a <think>b</think> c</think> answer", {}, "nested_think"),
    ("two blocks", "<think>a</think> b <think>c</think> d", {}, "duplicate_think"),
    ("text before think", "Sure! <think>a</think> b", {}, "text_before_think"),
    ("text before think allowed", "Sure! <think>a</think> b", {"allow_text_before_think": True}, None),
    ("close before open", "</think>a<think>b", {}, "missing_open_think"),
    ("no open tag", "reasoning</think>answer", {}, "missing_open_think"),
    ("no open tag, template opened it", "reasoning</think>answer", {"allow_missing_open": True}, None),
    ("empty answer", "<think>long reasoning</think>\n\n  ", {}, "empty_answer"),
    ("empty answer allowed", "<think>long reasoning</think>\n\n  ", {"require_answer": False}, None),
    ("empty reasoning", "<think>\n</think>Hello! How can I help?", {}, "empty_reasoning"),
    ("no CoT for a greeting", "<think>\n</think>Hello! How can I help?", {"min_reasoning_chars": 0}, None),
    ("readable pattern", "|special_token|Let me compute 2+2 = 4.|special_token|The sum is 4.",
     {"style": "readable"}, None),
    ("readable as think + summary", GOOD_MATH, {"style": "readable"}, None),
    ("readable, custom token", "<|sep|>Reasoning here.<|sep|>Summary here.",
     {"style": "readable", "summary_token": "<|sep|>"}, None),
    ("readable, summary missing", "|special_token|Reasoning here.|special_token|   ", {"style": "readable"},
     "empty_answer"),
    ("readable, one token, cut off", "|special_token|Reasoning that goes on and on", {"style": "readable"},
     "truncated"),
    ("readable, one token, stopped", "|special_token|Reasoning", {"style": "readable", "finish_reason": "stop"},
     "missing_summary_token"),
    ("readable, three tokens", "|special_token|a|special_token|b|special_token|c", {"style": "readable"},
     "duplicate_summary_token"),
    ("readable, no structure", "Just an answer.", {"style": "readable"}, "missing_think"),
    ("readable, cut off by the server", "|special_token|a|special_token|b",
     {"style": "readable", "finish_reason": "length"}, "truncated"),
]


@pytest.mark.parametrize("label,text,options,expected", FORMAT_CASES, ids=[c[0] for c in FORMAT_CASES])
def test_format_fixtures(label: str, text: str, options: dict, expected: str | None) -> None:
    verdict = check_think_format(text, **options)
    assert isinstance(verdict, Verdict)
    assert verdict.passed is (expected is None), verdict.reason
    assert verdict.code == expected
    if expected is not None:
        assert expected in FORMAT_REASON_CODES


def test_parse_think_format_returns_the_parts() -> None:
    result = parse_think_format(GOOD_MATH)
    assert result.verdict.passed
    assert result.reasoning.startswith("We need $x$") and result.reasoning.endswith("Yes.")
    assert result.answer.endswith("$\\boxed{4}$")
    readable = parse_think_format("|special_token| r |special_token| s ", style="readable")
    assert (readable.reasoning, readable.answer) == ("r", "s")
    broken = parse_think_format("no structure")
    assert broken.reasoning is None and broken.answer is None
    # Cut off by the server, but the parts are still there for statistics.
    cut = parse_think_format(GOOD_MATH, finish_reason="length")
    assert cut.verdict.code == "truncated" and cut.answer is not None


def test_split_reasoning() -> None:
    assert split_reasoning("<think> a </think> b") == ("a", "b")
    assert split_reasoning("<think> a </think>") == ("a", "")
    assert split_reasoning("<think> a") is None
    assert split_reasoning("|special_token|a|special_token|b", style="readable") == ("a", "b")


@pytest.mark.parametrize("answer,passed", [
    ("So the answer is $\\boxed{4}$.", True),
    ("\\boxed{\\frac{1}{2}}", True),
    ("\\fbox{7}", True),
    ("The answer is 4.", False),
    ("\\boxed{}", False),
    ("\\boxed{ }", False),
])
def test_boxed_answer(answer: str, passed: bool) -> None:
    verdict = check_boxed_answer(answer)
    assert verdict.passed is passed
    assert verdict.code == (None if passed else "missing_boxed")


@pytest.mark.parametrize("params,param_name", [
    ({"style": "fancy"}, "style"),
    ({"min_answer_chars": -1}, "min_answer_chars"),
    ({"min_reasoning_chars": 1.5}, "min_reasoning_chars"),
    ({"summary_token": "  "}, "summary_token"),
    ({"open_tag": "<t>", "close_tag": "</t>x<t>"}, "close_tag"),
    ({"require_answer": "yes"}, "require_answer"),
    ({"truncated_finish_reasons": "length"}, "truncated_finish_reasons"),
    ({"max_think_blocks": 2}, "max_think_blocks"),
])
def test_format_params_are_validated(params: dict, param_name: str) -> None:
    with pytest.raises(ValueError) as info:
        validate_format_params(**params)
    message = str(info.value)
    assert message.startswith(f"{param_name}: expected") and "\n" not in message
    with pytest.raises(ValueError):  # the check itself refuses the same options
        check_think_format(GOOD_MATH, **params)


def test_format_params_accept_yaml_lists() -> None:
    cfg = validate_format_params(style="readable", truncated_finish_reasons=["length"])
    assert cfg.truncated_finish_reasons == ("length",)
    assert check_think_format(GOOD_MATH, truncated_finish_reasons=["length"], finish_reason="max_tokens").passed


# ------------------------------------------------------------------ language
LANGUAGE_CASES = [
    ("english with latex, code and a url",
     "Let $f(x) = \\frac{x^2}{2}$. Using `numpy.sum` and https://example.org/x we get \\(f(2) = 2\\).",
     "So $f(2) = 2$.", {}, None),
    ("english with unicode math symbols", "The angle θ is 30°, so 2π·r ≈ 6.28 and x ≤ y × z.", "θ = 30°", {}, None),
    ("english with one chinese word", "The term 勾股 means the Pythagorean relation; we apply it to the right "
     "triangle with legs three and four, which gives a hypotenuse of length five. To be careful, I square both "
     "legs, nine and sixteen, add them to get twenty-five, and take the square root, which is five again. "
     "The area is half the product of the legs, six, and the perimeter is twelve.", "5", {}, None),
    ("chinese reasoning, chinese target", CHINESE_REASONING, "所以 $x = 4$。", {"target": "zh"}, None),
    ("chinese with variable names", "设 a 和 b 为正整数，且 a + b = 10，求 ab 的最大值。在三角形 ABC 中，sin A 的值是多少？",
     "最大值是 25。", {"target": "zh"}, None),
    ("chinese with english sentences", "设 a 和 b 为正整数。We need to maximize the product under this constraint, "
     "so consider the symmetric choice first and compare it with the others. 所以最大值是 25。", "最大值是 25。",
     {"target": "zh"}, "mixed_language"),
    ("japanese", "まず、方程式を解きます。両辺から3を引くと、2x = 8 になります。", "答えは4です。", {"target": "ja"},
     None),
    ("russian", "Сначала решим уравнение: вычтем три из обеих частей.", "Ответ: четыре.", {"target": "ru"}, None),
    ("numbers only", "2 + 2 = 4; 4 * 3 = 12.", "\\boxed{12}", {}, None),
    ("mixed chinese and english", MIXED_REASONING, "x = 4", {}, "mixed_language"),
    ("chinese reasoning, english target", CHINESE_REASONING, "x = 4", {}, "mixed_language"),
    ("english reasoning, chinese target", "We subtract three from both sides and get two x equals eight.",
     "答案是 4", {"target": "zh"}, "mixed_language"),
    ("answer switches language", "We subtract three from both sides, so x is four.", "答案是四，因为二乘以四加三等于十一。",
     {}, "answer_language"),
    ("answer switch allowed for translation", "The user wants this sentence in Chinese.", "我喜欢数学。",
     {"check_answer": False}, None),
    ("answer in another target", "The user wants this sentence in Chinese.", "我喜欢数学。",
     {"answer_target": "zh"}, None),
    ("looser threshold", MIXED_REASONING, "x = 4", {"min_share": 0.1}, None),
]


@pytest.mark.parametrize("label,reasoning,answer,options,expected", LANGUAGE_CASES,
                         ids=[c[0] for c in LANGUAGE_CASES])
def test_language_fixtures(label: str, reasoning: str, answer: str, options: dict, expected: str | None) -> None:
    verdict = check_language_consistency(reasoning, answer, **options)
    assert verdict.passed is (expected is None), verdict.reason
    assert verdict.code == expected


def test_language_score_is_the_lowest_share() -> None:
    assert check_language_consistency("Plain English reasoning.", "Plain answer.").score == 1.0
    assert check_language_consistency("2 + 2 = 4", "4").score is None  # nothing to judge
    mixed = check_language_consistency(MIXED_REASONING, "x = 4")
    counts = mixed.details["units"]
    assert mixed.score == pytest.approx(counts["latin"] / (counts["latin"] + counts["han"]))
    assert 0.0 < mixed.score < 0.95
    # Each Han character is a unit, each Latin word is one.
    assert script_units("two words 两个字") == {"latin": 2, "han": 3}


def test_script_units_ignore_math_and_code() -> None:
    assert script_units("$\\alpha + \\beta$ `for i in range(3)` ```python\nprint('x')\n``` \\(y\\)") == {}
    assert script_units("The value of θ") == {"latin": 3}  # an isolated Greek letter is a symbol
    assert script_units("Θεωρία") == {"greek": 1}  # a Greek word is a word
    assert script_units("设 a 为正数，求 ab 与 sin", strip_latin_short=True) == {"han": 6}
    assert script_units("设 a 为正数，求 ab 与 sin", strip_latin_short=False) == {"han": 6, "latin": 3}
    assert dominant_script("这是一段比较长的中文文本 with a few English words") == "han"
    assert dominant_script("123") is None


def test_english_reference_solutions_pass_language() -> None:
    texts = [r["solution"] for r in load_jsonl("math500.jsonl")] + \
            [r["solution"] for r in load_jsonl("gsm8k_test.jsonl")]
    failures = [t[:80] for t in texts if not check_language_consistency(t, "").passed]
    assert failures == []
    as_chinese = sum(not check_language_consistency(t, "", target="zh").passed for t in texts)
    assert as_chinese > 0.95 * len(texts)  # and the same texts are not Chinese


@pytest.mark.parametrize("params,param_name", [
    ({"target": "klingon"}, "target"),
    ({"target": 3}, "target"),
    ({"answer_target": "xx"}, "answer_target"),
    ({"min_share": 1.5}, "min_share"),
    ({"min_share": "high"}, "min_share"),
    ({"answer_min_share": -0.1}, "answer_min_share"),
    ({"min_units": -1}, "min_units"),
    ({"check_answer": "no"}, "check_answer"),
    ({"threshold": 0.9}, "threshold"),
])
def test_language_params_are_validated(params: dict, param_name: str) -> None:
    with pytest.raises(ValueError) as info:
        validate_language_params(**params)
    message = str(info.value)
    assert message.startswith(f"{param_name}: expected") and "\n" not in message
    with pytest.raises(ValueError):
        check_language_consistency("a", "b", **params)


# ------------------------------------------------------------------ readability
def _paragraphs(n: int) -> str:
    return "\n\n".join(f"Step {i}: we multiply {i} by {i + 1} to get {i * (i + 1)}, then add it to the running "
                       f"total, which becomes {sum(j * (j + 1) for j in range(i + 1))}." for i in range(n))


LOOP = "Wait, let me recompute the sum of the first ten terms to make sure it is right."
READABILITY_CASES = [
    ("normal reasoning", _paragraphs(40), "The total is 13200.", {}, None),
    ("natural short repeats", "\n".join(f"Wait,\nHmm.\n\\]\nSo {i} + {i} = {2 * i} and then we continue."
                                          for i in range(10)), "4", {}, None),
    ("wall of text", " ".join(f"Sentence {i} keeps going without a break." for i in range(120)), "ok",
     {}, "long_paragraph"),
    ("wall of text, higher limit", " ".join(f"Sentence {i} keeps going without a break." for i in range(120)),
     "ok", {"max_paragraph_chars": 10_000}, None),
    ("line loop", _paragraphs(5) + "\n" + "\n".join([LOOP] * 40), "4", {}, "repeated_lines"),
    ("loop inside one paragraph", _paragraphs(5) + "\n\n" + " ".join([LOOP] * 30), "4",
     {"max_paragraph_chars": 100_000}, "repeated_ngrams"),
    ("chinese loop without spaces", CHINESE_REASONING + "\n\n" + "让我再算一遍前十项的和，确认结果正确。" * 30, "4",
     {"max_paragraph_chars": 100_000}, "repeated_ngrams"),
    ("loop in the answer", "Short reasoning.", " ".join([LOOP] * 30), {}, "repeated_ngrams"),
    ("code block in math", "Let me check with code:\n```python\nprint(2 + 2)\n```", "4", {}, "code_block"),
    ("code block in the answer of a math task", "2 + 2 = 4", "```\n4\n```", {}, "code_block"),
    ("code block in a code task", "I will loop.", "```python\ndef f(x):\n    return x\n```",
     {"task_type": "code"}, None),
    ("code blocks allowed explicitly", "Check:\n```python\nprint(4)\n```", "4", {"allow_code_blocks": True}, None),
    ("code blocks forbidden explicitly", "Plan.", "```python\nx = 1\n```",
     {"task_type": "code", "allow_code_blocks": False}, "code_block"),
    ("inline code is fine", "Use `sorted()` here.", "Done.", {}, None),
    ("too long", _paragraphs(40), "ok", {"max_chars": 1000}, "too_long"),
    ("too many tokens, counted", "short", "ok", {"max_tokens": 100, "num_tokens": 5000}, "too_many_tokens"),
    ("few tokens, counted", _paragraphs(40), "ok", {"max_tokens": 100, "num_tokens": 90}, None),
    ("too many tokens, estimated", _paragraphs(40), "ok", {"max_tokens": 500}, "too_many_tokens"),
    ("chinese token estimate", "中" * 600, "好", {"max_tokens": 400, "max_paragraph_chars": 10_000,
                                                   "max_repeated_ngram_ratio": 1.0}, "too_many_tokens"),
]


@pytest.mark.parametrize("label,reasoning,answer,options,expected", READABILITY_CASES,
                         ids=[c[0] for c in READABILITY_CASES])
def test_readability_fixtures(label: str, reasoning: str, answer: str, options: dict, expected: str | None) -> None:
    verdict = check_readability(reasoning, answer, **options)
    assert verdict.passed is (expected is None), verdict.reason
    assert verdict.code == expected
    if expected is not None:
        assert expected in READABILITY_REASON_CODES


def test_reference_solutions_are_readable() -> None:
    failures = []
    for r in load_jsonl("math500.jsonl") + load_jsonl("gsm8k_test.jsonl"):
        verdict = check_readability(r["solution"], r["answer"], task_type="math")
        if not verdict.passed:
            failures.append((r.get("id"), verdict.reason))
    for r in load_jsonl("humaneval.jsonl"):
        code = f"```python\n{r['prompt']}{r['canonical_solution']}\n```"
        verdict = check_readability("I will implement the function and test it on the examples.", code,
                                    task_type="code")
        if not verdict.passed:
            failures.append((r["task_id"], verdict.reason))
    assert failures == []


def _ngram_ratio_by_tuples(text: str, n: int) -> float:
    words = text.split()
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams)


@pytest.mark.parametrize("n", [1, 3, 10])
def test_ngram_ratio_matches_a_plain_count(n: int) -> None:
    solutions = [r["solution"] for r in load_jsonl("gsm8k_test.jsonl")]
    # Long texts (the numpy path) with real repetition across solutions, plus short ones.
    texts = ["\n\n".join(solutions[i:i + 12]) for i in range(0, 240, 12)] + solutions[:20]
    texts.append("  ".join(solutions[:3] * 4) + "\n")
    for text in texts:
        if len(text.split()) >= 50:
            assert repeated_ngram_ratio(text, ngram=n) == pytest.approx(_ngram_ratio_by_tuples(text, n)), text[:60]


def test_repetition_stats() -> None:
    assert repetition_stats("too short") == (0.0, 0.0)
    line_ratio, ngram_ratio = repetition_stats("\n".join([LOOP] * 10))
    assert line_ratio == pytest.approx(0.9)
    assert ngram_ratio > 0.8
    # Layout does not matter: the same words with different whitespace are the same n-grams.
    assert repeated_ngram_ratio(" ".join([LOOP] * 10)) == pytest.approx(repeated_ngram_ratio("\n\n".join([LOOP] * 10)))


@pytest.mark.parametrize("params,param_name", [
    ({"max_paragraph_chars": 0}, "max_paragraph_chars"),
    ({"max_paragraph_chars": "long"}, "max_paragraph_chars"),
    ({"max_repeated_line_ratio": 2}, "max_repeated_line_ratio"),
    ({"max_repeated_ngram_ratio": -0.5}, "max_repeated_ngram_ratio"),
    ({"ngram": 0}, "ngram"),
    ({"ngram": 20, "min_ngram_words": 10}, "min_ngram_words"),
    ({"max_chars": 0}, "max_chars"),
    ({"max_tokens": 1.5}, "max_tokens"),
    ({"allow_code_blocks": "sometimes"}, "allow_code_blocks"),
    ({"task_type": ""}, "task_type"),
    ({"max_paragraphs": 3}, "max_paragraphs"),
])
def test_readability_params_are_validated(params: dict, param_name: str) -> None:
    with pytest.raises(ValueError) as info:
        validate_readability_params(**params)
    message = str(info.value)
    assert message.startswith(f"{param_name}: expected") and "\n" not in message
    with pytest.raises(ValueError):
        check_readability("a", "b", **params)


# ------------------------------------------------------------------ batched runner
def _records() -> list[dict]:
    return [
        {"text": GOOD_MATH, "finish_reason": "stop", "task_type": "math"},
        {"text": GOOD_MATH.replace("\\boxed{4}", "4"), "finish_reason": "stop", "task_type": "math"},
        {"text": GOOD_MATH.replace("\\boxed{4}", "4"), "finish_reason": "stop", "task_type": "general"},
        {"text": GOOD_MATH, "finish_reason": "length", "task_type": "math"},
        {"text": r1_sample(MIXED_REASONING, "x = 4"), "task_type": "math"},
        {"text": r1_sample("\n".join([LOOP] * 40), "\\boxed{4}")},
        {"text": r1_sample("Check:\n```python\nprint(4)\n```", "```python\nprint(4)\n```"), "task_type": "code"},
    ]


def test_run_rule_checks_funnel() -> None:
    results = run_rule_checks(_records())
    codes = [{step: v.code for step, v in r.items()} for r in results]
    assert codes == [
        {"format": None, "language": None, "readability": None, "boxed": None},
        {"format": None, "language": None, "readability": None, "boxed": "missing_boxed"},
        {"format": None, "language": None, "readability": None},  # no box needed outside math
        {"format": "truncated"},  # later steps did not run
        {"format": None, "language": "mixed_language"},
        {"format": None, "language": None, "readability": "repeated_lines"},  # task_type defaults to math
        {"format": None, "language": None, "readability": None},
    ]


def test_run_rule_checks_every_step_and_subsets() -> None:
    results = run_rule_checks(_records(), stop_on_fail=False)
    assert {step: v.code for step, v in results[3].items()} == {
        "format": "truncated", "language": None, "readability": None, "boxed": None}
    only_language = run_rule_checks(_records(), {"language": {"target": "en"}})
    assert [list(r) for r in only_language] == [["language"]] * len(_records())
    assert only_language[4]["language"].code == "mixed_language"
    boxed_everywhere = run_rule_checks(_records(), {"format": {}, "boxed": {"task_types": ["math", "general"]}})
    assert boxed_everywhere[2]["boxed"].code == "missing_boxed"


def test_parallel_equals_sequential() -> None:
    records = _records() * 30
    config = {"format": {}, "language": {"min_share": 0.9}, "readability": {}, "boxed": {}}
    assert run_rule_checks_parallel(records, config, workers=2, chunk_size=16) == run_rule_checks(records, config)
    assert run_rule_checks_parallel(records, config, workers=1, chunk_size=16) == run_rule_checks(records, config)


@pytest.mark.parametrize("config,message_start", [
    ({"spelling": {}}, "step: expected"),
    ({"language": {"min_share": 1.5}}, "language.min_share: expected"),
    ({"format": {"style": "xml"}}, "format.style: expected"),
    ({"readability": {"ngram": 0}}, "readability.ngram: expected"),
    ({"boxed": {"task_types": "math"}}, "boxed.task_types: expected"),
    ({"boxed": {"strict": True}}, "boxed.strict: expected"),
    ({"language": ["en"]}, "language: expected"),
])
def test_rule_config_is_validated(config: dict, message_start: str) -> None:
    with pytest.raises(ValueError) as info:
        validate_rule_config(config)
    assert str(info.value).startswith(message_start)
    with pytest.raises(ValueError):
        run_rule_checks(_records(), config)


def test_good_rule_config_validates() -> None:
    validate_rule_config({"format": {"style": "readable", "summary_token": "<|sep|>"},
                          "language": {"target": "zh", "min_share": 0.9}, "readability": {"task_type": "code"},
                          "boxed": None})


def test_record_without_text_is_rejected_not_raised() -> None:
    results = run_rule_checks([{"text": None, "finish_reason": "stop"}, {"finish_reason": None}])
    assert [r["format"].code for r in results] == ["missing_think", "missing_think"]
