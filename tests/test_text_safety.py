"""Text from models and programs with lone surrogates is stored and printed escaped; a UTF-8 BOM is accepted."""

from __future__ import annotations

import json
from pathlib import Path

from factory.sources import read_jsonl
from factory.store import RunStore, utc_now
from factory.text import escape_surrogates, escape_surrogates_in
from tests.conftest import run_cli

LONE = "bad \ud800 and \udcff end"


def test_escape_surrogates_keeps_valid_text_and_escapes_lone_ones() -> None:
    assert escape_surrogates("plain") == "plain"
    assert escape_surrogates("naïve 数学 🙂") == "naïve 数学 🙂"
    assert escape_surrogates(LONE) == "bad \\ud800 and \\udcff end"
    assert escape_surrogates_in({"a": [LONE, 1, None], LONE: ("x",)}) == {
        "a": ["bad \\ud800 and \\udcff end", 1, None], "bad \\ud800 and \\udcff end": ("x",)}


def test_sample_and_verdict_writes_never_fail_on_a_lone_surrogate(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run")
    store.append_samples([{"sample_id": "s", "run": "run", "text": LONE,
                           "prompt_messages": [{"role": "user", "content": LONE}], "created_at": utc_now()}])
    store.append_verdicts("correctness", [{"sample_id": "s", "step": "correctness", "passed": False, "code": "code_failed",
                                           "reason": f"code_failed: Traceback ... ValueError: {LONE}", "created_at": utc_now()}])
    sample = store.read_samples().to_pylist()[0]
    assert sample["text"] == "bad \\ud800 and \\udcff end"
    assert sample["prompt_messages"][0]["content"] == "bad \\ud800 and \\udcff end"
    assert store.latest_verdicts("correctness")["s"]["reason"].endswith("ValueError: bad \\ud800 and \\udcff end")
    store.log_errors([{"sample_id": "s", "error": LONE}])
    assert json.loads((store.root / "errors.jsonl").read_text())["error"] == LONE  # JSON escapes it losslessly


def test_model_text_with_surrogates_is_imported_filtered_and_printed(tmp_path: Path) -> None:
    home = tmp_path / "home"
    # A server's JSON may carry \ud800 escapes: json.loads turns them into lone surrogates.
    trace = '{"id": "s1", "problem": "Compute 1 + 1.", "answer": "2", "generation": "<think>\\nodd \\ud800 bytes\\n</think>\\n\\n\\\\boxed{2}"}\n'
    (tmp_path / "traces.jsonl").write_text(trace)
    (tmp_path / "r.yaml").write_text(
        "kind: generate\nname: sur\nteacher:\n  role: rl_1\n  backend: replay\n  model: m\n  replay:\n    path: traces.jsonl\n"
        "    fields: {prompt_id: id, prompt: problem, generation: generation, reference: answer}\n    default_task_type: math\n"
        "filters: [{step: format}, {step: correctness}]\noutput: {dataset: sur}\n")
    run_cli("generate", "--recipe", str(tmp_path / "r.yaml"), "--quiet", home=home)
    run_cli("filter", "--run", "sur", "--quiet", home=home)
    printed = run_cli("sql", "SELECT text FROM samples", home=home).stdout
    assert "odd \\ud800 bytes" in printed
    verdicts = json.loads(run_cli("sql", "SELECT step, passed FROM verdicts ORDER BY step", "--format", "json", home=home).stdout)
    assert verdicts == [{"step": "correctness", "passed": True}, {"step": "format", "passed": True}, {"step": "selection", "passed": True}]


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"gold": "4", "response": "\\\\boxed{4}"}\n{"gold": "caf\xc3\xa9", "response": "x"}\n')
    assert [r["gold"] for r in read_jsonl(path)] == ["4", "café"]
    proc = run_cli("verify", "math", str(path), home=tmp_path / "home")
    assert "correct" in proc.stdout
    verdicts = [json.loads(line) for line in (tmp_path / "bom.math_verdicts.jsonl").read_text().splitlines()]
    assert verdicts[0]["correct"] is True
