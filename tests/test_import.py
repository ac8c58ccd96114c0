"""Importing other people's traces: every common shape, thinking convention and prompt language.

Fixtures are written here from the public formats' documented fields (Bespoke-Stratos /
OpenThoughts ShareGPT dumps, OpenAI chat logs, TRL prompt/completion, Alpaca, OpenR1-Math),
with Chinese and English rows. Each test imports through the real replay backend into a real
store and checks the stored rows, the reasoning/answer split, the language and the verdicts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import run_cli

from factory.filter import run_filter
from factory.generate import run_generate
from factory.mix import run_mix
from factory.sources import load_prompts
from factory.store import RunStore
from factory.recipe import SourceConfig
from factory.teachers.traces import normalise_thinking
from verifiers.language import check_language_consistency, detect_language

STRATOS_SYSTEM = ("Your role as an assistant involves thoroughly exploring questions through a systematic long thinking "
                  "process before providing the final precise and accurate solutions.")


def _thought(reasoning: str, solution: str) -> str:
    return (f"<|begin_of_thought|>\n\n{reasoning}\n\n<|end_of_thought|>\n\n"
            f"<|begin_of_solution|>\n\n{solution}\n\n<|end_of_solution|>")


SHAREGPT = [
    {"system": STRATOS_SYSTEM, "conversations": [
        {"from": "user", "value": "Return your final response within \\boxed{}. What is 3 + 4?"},
        {"from": "assistant", "value": _thought("I add three and four, which gives seven.", "The answer is \\boxed{7}.")}]},
    {"system": STRATOS_SYSTEM, "conversations": [
        {"from": "human", "value": "计算五乘以六的结果，并把答案写在方框里。"},
        {"from": "gpt", "value": _thought("五乘以六等于三十，所以结果是三十。", "答案是 \\boxed{30}。")}]},
    {"system": STRATOS_SYSTEM, "conversations": [  # never closed: the format step must still reject it
        {"from": "user", "value": "What is 9 - 2?"},
        {"from": "assistant", "value": "<|begin_of_thought|>\n\nNine minus two is seven, and then I keep going"}]},
]

MESSAGES = [
    {"messages": [{"role": "system", "content": "Answer briefly."},
                  {"role": "user", "content": "What is 2 + 2?"},
                  {"role": "assistant", "content": "The answer is \\boxed{4}.",
                   "reasoning_content": "Two plus two makes four."}], "answer": "4"},
    {"messages": [{"role": "user", "content": "二加三等于多少？"},
                  # R1-distill: the chat template emitted <think>, so the completion starts inside it
                  {"role": "assistant", "content": "二加三等于五。\n</think>\n\n答案是 \\boxed{5}。"}], "answer": "5"},
    {"messages": [{"role": "user", "content": "二加四等于多少？"},
                  {"role": "assistant", "content": "Two plus four is six.\n</think>\n\n答案是 \\boxed{6}。"}], "answer": "6"},
]

PROMPT_COMPLETION = [
    {"prompt": "What is 10 / 2?", "completion": "<think>\nTen divided by two is five.\n</think>\n\n\\boxed{5}"},
    {"prompt": "十除以五等于多少？", "completion": "<think>\n十除以五等于二。\n</think>\n\n答案是 \\boxed{2}。"},
]

ALPACA = [
    {"instruction": "Translate the word to French.", "input": "cat",
     "output": "<think>\nThe French word for cat is chat.\n</think>\n\nchat"},
    {"instruction": "用一句话解释什么是质数。", "input": "",
     "output": "<think>\n质数是只能被一和它本身整除的大于一的整数。\n</think>\n\n质数是只有一和它本身两个因数的整数。"},
]

OPENR1 = [
    {"problem": "Find $x$ if $2x + 3 = 11$.", "solution": "Subtract 3, divide by 2.", "answer": "4", "problem_type": "Algebra",
     "uuid": "a1", "generations": ["<think>\nSubtract three: 2x = 8, so x = 4.\n</think>\n\nSo $x = \\boxed{4}$.",
                                   "<think>\nSubtract three: 2x = 8, so x = 5.\n</think>\n\nSo $x = \\boxed{5}$."],
     "correctness_math_verify": [True, False], "correctness_llama": [None, None], "finish_reasons": ["stop", "stop"],
     "is_reasoning_complete": [True, True], "correctness_count": 1,
     "messages": [{"role": "user", "content": "Find $x$ if $2x + 3 = 11$."}, {"role": "assistant", "content": "…"}]},
    {"problem": "求 $3y = 12$ 中 $y$ 的值。", "solution": "两边除以三。", "answer": "4", "problem_type": "Algebra", "uuid": "b2",
     "generations": ["<think>\n两边同时除以三，得到 y 等于四。\n</think>\n\n所以 $y = \\boxed{4}$。"],
     "correctness_math_verify": [True], "correctness_llama": [True], "finish_reasons": [None],
     "is_reasoning_complete": [True], "correctness_count": 1,
     "messages": [{"role": "user", "content": "求 $3y = 12$ 中 $y$ 的值。"}, {"role": "assistant", "content": "…"}]},
]


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _recipe(directory: Path, name: str, trace_file: str, extra: str = "",
            filters: str = "[{step: format}, {step: language}]") -> Path:
    recipe = directory / f"{name}.yaml"
    recipe.write_text(
        f"kind: generate\nname: {name}\n"
        "teacher:\n  role: rl_1\n  backend: replay\n  model: someone-elses-r1\n"
        f"  replay:\n    path: {trace_file}\n{extra}"
        f"filters: {filters}\noutput: {{dataset: {name}}}\n", encoding="utf-8")
    return recipe


def _import_and_filter(recipe: Path, run: str) -> tuple[list[dict[str, Any]], dict[str, dict[str, dict[str, Any]]]]:
    report = run_generate(str(recipe), progress=False)
    assert report.generated == report.planned
    run_filter(run, progress=False)
    store = RunStore.for_dataset(run)
    rows = sorted(store.read_samples().to_pylist(), key=lambda r: (r["prompt"], r["sample_index"]))
    verdicts = {step: store.latest_verdicts(step) for step in store.verdict_steps()}
    return rows, verdicts


def _passed(verdicts: dict[str, dict[str, dict[str, Any]]], step: str, row: dict[str, Any]) -> bool | None:
    verdict = verdicts[step].get(row["sample_id"])
    return None if verdict is None else verdict["passed"]


def _entries(runs: Path) -> list[str]:
    """What is in runs/ besides the writer locks that live beside each run."""
    return sorted(p.name for p in runs.iterdir() if not p.name.endswith(".lock"))


def _no_tags(*texts: str | None) -> bool:
    tags = ("<think>", "</think>", "<|begin_of_thought|>", "<|end_of_thought|>", "<|begin_of_solution|>", "<|end_of_solution|>")
    return not any(tag in (text or "") for text in texts for tag in tags)


# ---------------------------------------------------------------- shapes
def test_sharegpt_thought_solution_traces_split_and_train_without_tags(factory_home: Path, tmp_path: Path) -> None:
    _write_jsonl(tmp_path / "stratos.jsonl", SHAREGPT)
    recipe = _recipe(tmp_path, "stratos", "stratos.jsonl")
    report = run_generate(str(recipe), progress=False)
    assert report.extra["formats"] == {"sharegpt": 3}
    assert report.extra["thinking"] == {"thought_solution": 3}
    run_filter("stratos", progress=False)
    store = RunStore.for_dataset("stratos")
    rows = {r["prompt"][:8]: r for r in store.read_samples().to_pylist()}
    english, chinese, unclosed = rows["Return y"], rows["计算五乘以六的结"], rows["What is "]
    assert english["reasoning"] == "I add three and four, which gives seven." and english["answer"] == "The answer is \\boxed{7}."
    assert chinese["reasoning"] == "五乘以六等于三十，所以结果是三十。" and chinese["answer"] == "答案是 \\boxed{30}。"
    assert english["prompt_messages"][0] == {"role": "system", "content": STRATOS_SYSTEM}
    assert (english["language"], chinese["language"]) == ("en", "zh")
    assert {r["thinking"] for r in rows.values()} == {"thought_solution"}
    assert _no_tags(english["answer"], english["reasoning"], chinese["answer"])
    format_verdicts = store.latest_verdicts("format")
    assert format_verdicts[english["sample_id"]]["passed"] and format_verdicts[chinese["sample_id"]]["passed"]
    assert format_verdicts[unclosed["sample_id"]]["passed"] is False
    assert format_verdicts[unclosed["sample_id"]]["code"] == "truncated"
    language = store.latest_verdicts("language")
    assert language[chinese["sample_id"]]["passed"] and language[english["sample_id"]]["passed"]

    (tmp_path / "mix.yaml").write_text("kind: mix\nname: mix\ncomponents: [{run: stratos, quota: 10}]\noutput: {dataset: stratos_sft}\n")
    mix = run_mix(str(tmp_path / "mix.yaml"))
    assert mix.samples == 2
    training = pq.read_table(Path(mix.path) / "data" / "part-00000.parquet").to_pylist()
    for row in training:
        assistant = row["messages"][-1]
        assert assistant["role"] == "assistant" and assistant["reasoning_content"]
        assert _no_tags(assistant["content"], assistant["reasoning_content"])
    assert {r["messages"][-1]["content"] for r in training} == {"The answer is \\boxed{7}.", "答案是 \\boxed{30}。"}


def test_openai_messages_with_reasoning_content_and_r1_distill_missing_open_tag(factory_home: Path, tmp_path: Path) -> None:
    _write_jsonl(tmp_path / "api_logs.jsonl", MESSAGES)
    rows, verdicts = _import_and_filter(
        _recipe(tmp_path, "api_logs", "api_logs.jsonl", filters="[{step: format}, {step: language}, {step: correctness}]"), "api_logs")
    by_prompt = {r["prompt"]: r for r in rows}
    field_row, distill_row, switched = by_prompt["What is 2 + 2?"], by_prompt["二加三等于多少？"], by_prompt["二加四等于多少？"]
    assert (field_row["thinking"], distill_row["thinking"]) == ("field", "missing_open")
    assert field_row["reasoning"] == "Two plus two makes four." and field_row["answer"] == "The answer is \\boxed{4}."
    assert field_row["prompt_messages"][0]["role"] == "system"
    assert distill_row["reasoning"] == "二加三等于五。" and distill_row["answer"] == "答案是 \\boxed{5}。"
    assert distill_row["text"].startswith("<think>\n") and distill_row["language"] == "zh"
    assert field_row["reference"] == "4"  # the `answer` column, found without a mapping
    assert all(_passed(verdicts, "format", r) for r in rows)
    assert _passed(verdicts, "language", distill_row) and _passed(verdicts, "language", field_row)
    # A Chinese prompt reasoned about in English is what the language reward is for.
    assert _passed(verdicts, "language", switched) is False
    assert verdicts["language"][switched["sample_id"]]["code"] == "mixed_language"
    assert _passed(verdicts, "correctness", field_row) and _passed(verdicts, "correctness", distill_row)


def test_prompt_completion_and_alpaca_shapes(factory_home: Path, tmp_path: Path) -> None:
    _write_jsonl(tmp_path / "pc.jsonl", PROMPT_COMPLETION)
    _write_jsonl(tmp_path / "alpaca.jsonl", ALPACA)
    pc_rows, pc_verdicts = _import_and_filter(_recipe(tmp_path, "pc", "pc.jsonl"), "pc")
    alpaca_rows, alpaca_verdicts = _import_and_filter(
        _recipe(tmp_path, "alpaca", "alpaca.jsonl", "    default_task_type: general\n"), "alpaca")
    assert [(r["language"], r["reasoning"], r["answer"]) for r in pc_rows] == [
        ("en", "Ten divided by two is five.", "\\boxed{5}"), ("zh", "十除以五等于二。", "答案是 \\boxed{2}。")]
    assert {r["thinking"] for r in pc_rows + alpaca_rows} == {"think"}
    translate = next(r for r in alpaca_rows if r["language"] == "en")
    assert translate["prompt"] == "Translate the word to French.\n\ncat" and translate["answer"] == "chat"
    chinese = next(r for r in alpaca_rows if r["language"] == "zh")
    assert chinese["prompt"] == "用一句话解释什么是质数。" and chinese["task_type"] == "general"
    for rows, verdicts in ((pc_rows, pc_verdicts), (alpaca_rows, alpaca_verdicts)):
        assert all(_passed(verdicts, "format", r) and _passed(verdicts, "language", r) for r in rows)


@pytest.mark.parametrize("container", ["jsonl", "parquet", "datasets"])
def test_openr1_generations_become_one_sample_each_with_their_labels(factory_home: Path, tmp_path: Path, container: str) -> None:
    if container == "jsonl":
        _write_jsonl(tmp_path / "openr1", OPENR1)
    elif container == "parquet":
        (tmp_path / "openr1" / "data").mkdir(parents=True)  # a hub snapshot: data/train-*.parquet
        pq.write_table(pa.Table.from_pylist(OPENR1), tmp_path / "openr1" / "data" / "train-00000-of-00001.parquet")
    else:
        from datasets import Dataset

        Dataset.from_list(OPENR1).save_to_disk(str(tmp_path / "openr1"))
    extra = "    file_format: jsonl\n" if container == "jsonl" else ""
    rows, verdicts = _import_and_filter(
        _recipe(tmp_path, "openr1", "openr1", extra, "[{step: format}, {step: language}, {step: correctness}]"), "openr1")
    assert len(rows) == 3
    english = [r for r in rows if r["language"] == "en"]
    assert [r["sample_index"] for r in english] == [0, 1] and len({r["prompt_id"] for r in english}) == 1
    labels = [json.loads(r["source_labels"]) for r in english]
    assert [label["correctness_math_verify"] for label in labels] == [True, False]
    assert labels[0]["finish_reasons"] == "stop" and "messages" not in labels[0] and "generations" not in labels[0]
    assert [r["answer"] for r in english] == ["So $x = \\boxed{4}$.", "So $x = \\boxed{5}$."]
    assert all(r["reference"] == "4" and not r["text"].startswith("[") for r in rows)
    # The factory's own verifier agrees with the source's labels.
    for row in rows:
        assert _passed(verdicts, "correctness", row) is json.loads(row["source_labels"])["correctness_math_verify"]
    chinese = next(r for r in rows if r["language"] == "zh")
    assert chinese["reasoning"] == "两边同时除以三，得到 y 等于四。" and _passed(verdicts, "language", chinese)


def test_generic_column_mapping_with_a_separate_reasoning_column(factory_home: Path, tmp_path: Path) -> None:
    _write_jsonl(tmp_path / "custom.jsonl", [
        {"q": "What is 6 * 7?", "thoughts": "Six sevens are forty-two.", "final": "\\boxed{42}", "gold": "42", "lang": "en"},
        {"q": "六乘以七是多少？", "thoughts": "六个七相加是四十二。", "final": "答案是 \\boxed{42}。", "gold": "42", "lang": "zh"},
    ])
    extra = ("    format: columns\n"
             "    fields: {prompt: q, generation: final, reasoning: thoughts, reference: gold, language: lang}\n")
    rows, verdicts = _import_and_filter(_recipe(tmp_path, "custom", "custom.jsonl", extra), "custom")
    assert [(r["language"], r["thinking"], r["reasoning"]) for r in rows] == [
        ("en", "field", "Six sevens are forty-two."), ("zh", "field", "六个七相加是四十二。")]
    assert all(r["reference"] == "42" and _passed(verdicts, "format", r) and _passed(verdicts, "language", r) for r in rows)


def test_custom_think_tags_are_normalised(factory_home: Path, tmp_path: Path) -> None:
    _write_jsonl(tmp_path / "tagged.jsonl", [
        {"prompt": "What is 1 + 1?", "completion": "<reasoning>One and one make two.</reasoning>\\boxed{2}"}])
    rows, verdicts = _import_and_filter(
        _recipe(tmp_path, "tagged", "tagged.jsonl", "    think_tags: ['<reasoning>', '</reasoning>']\n"), "tagged")
    assert rows[0]["thinking"] == "tags" and rows[0]["reasoning"] == "One and one make two." and rows[0]["answer"] == "\\boxed{2}"
    assert _passed(verdicts, "format", rows[0])


def test_reimport_is_exactly_once(factory_home: Path, tmp_path: Path) -> None:
    _write_jsonl(tmp_path / "openr1.jsonl", OPENR1)
    recipe = _recipe(tmp_path, "twice", "openr1.jsonl")
    first = run_generate(str(recipe), progress=False)
    with open(tmp_path / "openr1.jsonl", "a", encoding="utf-8") as handle:  # the file grew
        handle.write(json.dumps(OPENR1[0] | {"generations": ["<think>\nx is 4\n</think>\n\\boxed{4}"],
                                              "correctness_math_verify": [True]}) + "\n")
    second = run_generate(str(recipe), progress=False)
    assert (first.generated, second.generated, second.already_present) == (3, 1, 3)
    rows = RunStore.for_dataset("twice").read_samples().to_pylist()
    assert len({r["sample_id"] for r in rows}) == len(rows) == 4
    # The repeated problem continues its sample indices in file order.
    assert sorted(r["sample_index"] for r in rows if r["language"] == "en") == [0, 1, 2]


# ---------------------------------------------------------------- failures leave nothing behind
def test_a_bad_line_in_the_middle_leaves_no_run_and_the_fix_is_accepted(factory_home: Path, tmp_path: Path) -> None:
    good = [{"prompt": f"What is {i} + 1?", "completion": f"<think>\n{i} plus one.\n</think>\n\n\\boxed{{{i + 1}}}"} for i in range(8)]
    lines = [json.dumps(r) for r in good]
    lines[4] = lines[4][:-5]  # a truncated line in the middle
    (tmp_path / "traces.jsonl").write_text("\n".join(lines) + "\n")
    recipe = _recipe(tmp_path, "partial", "traces.jsonl")
    proc = run_cli("generate", "--recipe", str(recipe), "--quiet", home=factory_home, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    message = proc.stderr.strip().splitlines()
    assert len(message) == 1 and "traces.jsonl:5: invalid JSON" in message[0]
    runs = factory_home / "runs"
    assert not runs.exists() or _entries(runs) == []  # no run, no manifest, no staging left
    lines[4] = json.dumps(good[4])
    (tmp_path / "traces.jsonl").write_text("\n".join(lines) + "\n")
    run_cli("generate", "--recipe", str(recipe), "--quiet", home=factory_home)
    store = RunStore.for_dataset("partial", runs)
    assert len(store.sample_ids()) == 8 and store.read_manifest()["counts"]["samples"] == 8
    assert _entries(runs) == ["partial"]


def test_a_failed_import_into_an_existing_run_adds_nothing(factory_home: Path, tmp_path: Path) -> None:
    _write_jsonl(tmp_path / "traces.jsonl", PROMPT_COMPLETION)
    recipe = _recipe(tmp_path, "grows", "traces.jsonl")
    run_generate(str(recipe), progress=False)
    store = RunStore.for_dataset("grows")
    before = (sorted(p.name for p in store.sample_shards()), store.manifest_path.read_text())
    with open(tmp_path / "traces.jsonl", "a") as handle:
        handle.write(json.dumps({"prompt": "What is 7 + 7?", "completion": "<think>\n14\n</think>\n\\boxed{14}"}) + "\n")
        handle.write(json.dumps({"colour": "blue"}) + "\n")
    proc = run_cli("generate", "--recipe", str(recipe), "--quiet", home=factory_home, check=False)
    assert proc.returncode == 2 and "row 4" in proc.stderr and "columns seen: colour" in proc.stderr
    assert (sorted(p.name for p in store.sample_shards()), store.manifest_path.read_text()) == before
    assert _entries(store.root.parent) == ["grows"]


def test_an_unrecognised_file_names_the_columns_it_saw(factory_home: Path, tmp_path: Path) -> None:
    _write_jsonl(tmp_path / "odd.jsonl", [{"title": "A", "body": "B", "score": 3}])
    proc = run_cli("generate", "--recipe", str(_recipe(tmp_path, "odd", "odd.jsonl")), "--quiet", home=factory_home, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1
    assert "unrecognised trace shape; columns seen: body, score, title" in lines[0] and "odd.jsonl: row 1" in lines[0]
    assert not (factory_home / "runs" / "odd").exists()


# ---------------------------------------------------------------- thinking conventions
@pytest.mark.parametrize("completion, reasoning, convention, expected", [
    ("<think>\nr\n</think>\n\na", None, "think", ("r", "a", True)),
    ("<|begin_of_thought|>r<|end_of_thought|><|begin_of_solution|>a<|end_of_solution|>", None, "thought_solution", ("r", "a", True)),
    ("r\n</think>\n\na", None, "missing_open", ("r", "a", True)),
    ("a", "r", "field", ("r", "a", True)),
    ("<think>\nr\n</think>\na", "separate r", "field", ("separate r", "a", True)),
    ("just an answer", None, "none", (None, "just an answer", True)),
    ("<think>\nr never closed", None, "think", ("r never closed", "", False)),
    ("<|begin_of_thought|>r never closed", None, "thought_solution", ("r never closed", "", False)),
])
def test_thinking_conventions_normalise_to_one_form(completion: str, reasoning: str | None, convention: str,
                                                    expected: tuple[str | None, str, bool]) -> None:
    from verifiers.format import check_think_format

    result = normalise_thinking(completion, reasoning)
    assert (result.reasoning, result.answer, result.closed) == expected and result.convention == convention
    verdict = check_think_format(result.text, finish_reason=None)
    assert verdict.passed is (result.closed and result.reasoning is not None)


# ---------------------------------------------------------------- languages
@pytest.mark.parametrize("prompt, language", [
    ("What is the sum of the first ten primes?", "en"),
    ("求函数 $f(x) = x^2 - 4x$ 的最小值。", "zh"),
    ("次の方程式を解きなさい：$2x + 3 = 7$", "ja"),
    ("Решите уравнение $2x + 3 = 7$ и объясните ответ.", "ru"),
    ("حل المعادلة $2x + 3 = 7$ واشرح الحل.", "ar"),
    ("用Python写一个函数，计算list的平均值 (average of a list)", "zh"),  # mixed: the question is asked in Chinese
    ("What does the Chinese word 你好 mean?", "en"),  # mixed: asked in English
    ("修复这个函数的错误：\ndef mean(values):\n    return sum(values) / len(value)\nprint(mean([1, 2, 3]))", "zh"),  # code-heavy
    ("Напишите функцию: def sort_items(items): return sorted(items, key=lambda item: item.price)", "ru"),
    ("$2 + 2 = ?$", None),
])
def test_prompt_language_is_detected_by_script_share(prompt: str, language: str | None) -> None:
    assert detect_language(prompt) == language


@pytest.mark.parametrize("prompt, reasoning, answer, passes", [
    ("求 $x^2 = 9$ 的正数解。", "因为三的平方是九，所以正数解是三。", "答案是 $\\boxed{3}$。", True),
    ("求 $x^2 = 9$ 的正数解。", "Since three squared is nine, the positive root is three.", "The answer is $\\boxed{3}$.", False),
    ("次の方程式を解きなさい：$x + 1 = 3$", "両辺から一を引くと、エックスは二になります。", "答えは $\\boxed{2}$ です。", True),
    ("Решите уравнение $x + 1 = 3$.", "Вычитаем единицу из обеих частей и получаем два.", "Ответ: $\\boxed{2}$.", True),
    ("Решите уравнение $x + 1 = 3$.", "Subtract one from both sides to get two.", "Ответ: $\\boxed{2}$.", False),
    ("حل المعادلة $x + 1 = 3$.", "نطرح واحدا من الطرفين فنحصل على اثنين.", "الجواب هو $\\boxed{2}$.", True),
    ("修复这个函数：\ndef add(a, b):\n    return a - b", "这里应该用加号而不是减号，`return a + b` 才是正确的写法。",
     "```python\ndef add(a, b):\n    return a + b\n```", True),
    ("$2 + 2 = ?$", "两个二相加得四。", "$\\boxed{4}$", True),  # no language in the prompt: any one language
    ("$2 + 2 = ?$", "两个二相加得四, so the answer is four because two and two make four.", "$\\boxed{4}$", False),
])
def test_language_step_compares_the_reasoning_with_the_prompt_language(prompt: str, reasoning: str, answer: str,
                                                                       passes: bool) -> None:
    from factory.steps.language import LanguageStep

    row = {"prompt": prompt, "reasoning": reasoning, "answer": answer, "language": detect_language(prompt) or "und"}
    assert LanguageStep.from_config({}).filter(pa.Table.from_pylist([row]))[0].passed is passes
    if passes and row["language"] != "und":
        assert check_language_consistency(reasoning, answer, target=row["language"]).passed


def test_sources_detect_each_prompt_language_unless_declared(tmp_path: Path) -> None:
    _write_jsonl(tmp_path / "prompts.jsonl", [
        {"id": 1, "prompt": "What is 2 + 2?"}, {"id": 2, "prompt": "二加二等于几？"},
        {"id": 3, "prompt": "Сколько будет два плюс два?", "lang": "ru"}])
    recipe = tmp_path / "r.yaml"
    auto = load_prompts([SourceConfig(name="s", path="prompts.jsonl")], recipe)
    assert [p.language for p in auto] == ["en", "zh", "ru"]
    declared = load_prompts([SourceConfig(name="s", path="prompts.jsonl", language="zh")], recipe)
    assert {p.language for p in declared} == {"zh"}
    column = load_prompts([SourceConfig(name="s", path="prompts.jsonl", fields={"language": "lang"})], recipe)
    assert column[2].language == "ru" and column[1].language == "zh"


def test_unknown_language_code_is_a_recipe_error_at_the_line(factory_home: Path, tmp_path: Path) -> None:
    _write_jsonl(tmp_path / "pc.jsonl", PROMPT_COMPLETION)
    recipe = _recipe(tmp_path, "badlang", "pc.jsonl", "    language: klingon\n")
    proc = run_cli("generate", "--recipe", str(recipe), "--quiet", home=factory_home, check=False)
    assert proc.returncode == 2 and "badlang.yaml:9: teacher.replay.language" in proc.stderr and "klingon" in proc.stderr


@pytest.mark.parametrize("name, shape", [("sharegpt", "sharegpt"), ("messages", "messages"), ("prompt_completion", "prompt_completion"),
                                         ("alpaca", "alpaca"), ("openr1", "openr1"), ("columns", "columns")])
def test_shipped_import_recipes_import_and_pass_format(factory_home: Path, name: str, shape: str) -> None:
    recipe = Path(__file__).resolve().parent.parent / "recipes" / "import" / f"{name}.yaml"
    report = run_generate(str(recipe), progress=False)
    assert set(report.extra["formats"]) == {shape} and report.generated == report.planned
    assert set(report.extra["languages"]) == {"en", "zh"}
    run = report.run
    filtered = run_filter(run, progress=False)
    store = RunStore.for_dataset(run)
    format_verdicts = store.latest_verdicts("format")
    assert len(format_verdicts) == report.generated and all(v["passed"] for v in format_verdicts.values()), filtered


def test_generated_text_in_other_conventions_keeps_tags_out_of_the_answer() -> None:
    from factory.teachers.base import split_think

    thought = _thought("two and two", "\\boxed{4}")
    assert split_think(thought) == (thought, "two and two", "\\boxed{4}")  # text kept as the model wrote it
    assert split_think("two and two\n</think>\n\\boxed{4}")[1:] == ("two and two", "\\boxed{4}")
    assert split_think("no reasoning at all") == ("no reasoning at all", None, "no reasoning at all")
