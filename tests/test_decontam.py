"""Benchmark decontamination against the shipped benchmark files."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from factory.dedup import decontaminate_file, dedup_decontaminate_file
from factory.paths import BENCHMARKS_DIR, PROMPTS_DIR
from verifiers.decontam import BenchmarkIndex
from verifiers.dedup import normalize_text


def _rows(name: str) -> list[dict]:
    with (BENCHMARKS_DIR / f"{name}.jsonl").open() as fh:
        return [json.loads(line) for line in fh]


@pytest.fixture(scope="module")
def index() -> BenchmarkIndex:
    return BenchmarkIndex.from_dir(BENCHMARKS_DIR)


def _words(text: str) -> str:
    """The word sequence n-grams are taken from: normalised text without punctuation tokens."""
    return " ".join(t for t in normalize_text(text).split(" ") if len(t) > 1 or t.isalnum() or t == "_")


CLEAN = ("Okay, so I need to work out how many marbles Priya keeps after sharing them with her cousins "
         "over the summer holidays, then add the ones she finds later in the attic box.")


@pytest.mark.parametrize("name, field, id_field", [
    ("gsm8k_test", "problem", "id"), ("math500", "problem", "id"), ("aime24", "problem", "id"),
    ("amc23", "problem", "id"), ("humaneval", "prompt", "task_id")])
def test_verbatim_problem_in_a_prompt_is_found(index: BenchmarkIndex, name: str, field: str, id_field: str) -> None:
    row = next(r for r in _rows(name) if len(r[field].split()) > 20)
    hit = index.check("Solve this and explain:\n" + row[field] + "\nPut the answer in a box.")
    assert hit is not None and hit.kind == "ngram"
    assert (hit.benchmark, hit.item_id) == (name, row[id_field])
    n = index.field_n[(name, field)]
    assert hit.n == n and len(hit.ngram.split()) == n and hit.ngram in _words(row[field])


def test_each_field_uses_its_fifth_percentile_length_capped_at_n(index: BenchmarkIndex) -> None:
    # MATH-500 problems are often a formula and a few words (5th percentile: 9 words).
    assert index.field_n[("math500", "problem")] == 9
    assert index.field_n[("gsm8k_test", "problem")] == 13
    assert index.field_n[("humaneval", "canonical_solution")] == 8      # floored at min_n
    assert set(BenchmarkIndex.from_dir(BENCHMARKS_DIR, per_field_n=False).field_n.values()) == {13}
    assert set(BenchmarkIndex.from_dir(BENCHMARKS_DIR, n=8).field_n.values()) == {8}


def test_one_edited_word_in_a_short_math_problem_is_still_found(index: BenchmarkIndex) -> None:
    fixed_13 = BenchmarkIndex.from_dir(BENCHMARKS_DIR, per_field_n=False)
    edited, ids = [], []
    for row in _rows("math500"):
        words = row["problem"].split()
        if 12 <= len(_words(row["problem"]).split()) <= 24:
            words[len(words) // 2] = "zebras"
            edited.append(" ".join(words))
            ids.append(row["id"])
    missed_13 = [i for i, hit in enumerate(fixed_13.check_batch(edited, workers=1)) if hit is None]
    found_9 = index.check_batch([edited[i] for i in missed_13], workers=1)
    rescued = [(ids[i], hit) for i, hit in zip(missed_13, found_9) if hit is not None]
    assert len(missed_13) >= 20 and len(rescued) >= len(missed_13) // 2
    assert all(hit.item_id == item and hit.n == 9 for item, hit in rescued)


def test_problem_itself_matches_exactly_despite_case_and_spacing(index: BenchmarkIndex) -> None:
    row = _rows("math500")[7]
    hit = index.check("  " + row["problem"].upper().replace(" ", "   ") + " ")
    assert hit is not None and hit.kind == "exact" and hit.item_id == row["id"]


def test_lightly_edited_problem_is_found(index: BenchmarkIndex) -> None:
    row = _rows("gsm8k_test")[10]
    words = row["problem"].split()
    words[len(words) // 2] = "zebras"
    hit = index.check("Question: " + " ".join(words).lower().replace(",", " ,"))
    assert hit is not None and hit.item_id == row["id"]


def test_solution_in_a_response_is_found(index: BenchmarkIndex) -> None:
    he = _rows("humaneval")[12]
    response = "<think>\nI recall this one.\n</think>\n```python\n" + he["prompt"] + he["canonical_solution"] + "```"
    hit = index.check(response)
    assert hit is not None and hit.benchmark == "humaneval" and hit.matches > 1
    gsm = _rows("gsm8k_test")[3]
    assert index.check("<think>" + gsm["solution"] + "</think> 42").item_id == gsm["id"]


def test_short_problems_match_whole_and_tiny_ones_only_exactly(index: BenchmarkIndex) -> None:
    rows = _rows("math500")
    n = index.field_n[("math500", "problem")]
    short = next(r for r in rows if 6 <= len(_words(r["problem"]).split()) < n
                 and all(w.isalnum() for w in normalize_text(r["problem"]).split()[:1]))
    hit = index.check("Please help: " + short["problem"] + " Thanks!")
    assert hit is not None and hit.item_id == short["id"] and hit.n < n
    tiny_index = BenchmarkIndex.from_dir(BENCHMARKS_DIR, min_words=50)
    assert tiny_index.check("Please help: " + short["problem"] + " Thanks!") is None
    assert tiny_index.check(short["problem"]).kind == "exact"


def test_clean_text_is_not_flagged(index: BenchmarkIndex) -> None:
    assert index.check(CLEAN) is None
    assert index.check("") is None


def test_n8_catches_what_n13_misses() -> None:
    row = next(r for r in _rows("gsm8k_test") if 24 <= len(r["problem"].split()) <= 30)
    words = row["problem"].split()
    for i in range(6, len(words), 7):           # an edit every 7 words: no clean 13-gram survives
        words[i] = "qqq"
    edited = " ".join(words)
    assert BenchmarkIndex.from_dir(BENCHMARKS_DIR, n=13).check(edited) is None
    assert BenchmarkIndex.from_dir(BENCHMARKS_DIR, n=8).check(edited) is None
    words = row["problem"].split()
    for i in range(9, len(words), 10):          # every 10th word: 8-grams survive, 13-grams do not
        words[i] = "qqq"
    edited = " ".join(words)
    assert BenchmarkIndex.from_dir(BENCHMARKS_DIR, n=13).check(edited) is None
    hit = BenchmarkIndex.from_dir(BENCHMARKS_DIR, n=8).check(edited)
    assert hit is not None and hit.item_id == row["id"] and hit.n == 8


def test_check_batch_in_processes_matches_inline(index: BenchmarkIndex) -> None:
    with (PROMPTS_DIR / "gsm8k_train_300.jsonl").open() as fh:
        texts = [json.loads(line)["problem"] for line in fh]
    texts += ["Solve: " + r["problem"] for r in _rows("amc23")]
    inline = index.check_batch(texts, workers=1)
    assert sum(h is not None and h.benchmark == "amc23" for h in inline) == 40
    assert index.check_batch(texts * 8, workers=2) == inline * 8


def test_bad_parameters_give_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^n: expected an integer >= 1, got 0$"):
        BenchmarkIndex.from_dir(BENCHMARKS_DIR, n=0)
    with pytest.raises(ValueError, match="directory: expected benchmark"):
        BenchmarkIndex.from_dir(tmp_path)


def test_decontaminate_file_records_benchmark_and_ngram(tmp_path: Path) -> None:
    aime = _rows("aime24")[4]
    custom = tmp_path / "my_eval.jsonl"
    custom.write_text(json.dumps({"id": "q1", "question": "A wizard keeps seventeen owls in a tower and feeds "
                                  "each owl three mice on every night of the full moon."}) + "\n")
    rows = [{"id": "a", "prompt": CLEAN, "response": "fine"},
            {"id": "b", "prompt": "Solve: " + aime["problem"], "response": "ok"},
            {"id": "c", "prompt": "Hi", "response": "Recall: a wizard keeps seventeen owls in a tower and feeds "
                                                     "each owl three mice on every night."}]
    src = tmp_path / "samples.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = decontaminate_file(src, fields=["prompt", "response"], n=13, out_path=tmp_path / "v.parquet")
    assert report["decontam"]["contaminated"] == {"aime24": 1} and report["kept"] == 2
    out = {r["id"]: r for r in pq.read_table(tmp_path / "v.parquet").to_pylist()}
    assert out["b"]["benchmark_item"] == aime["id"] and out["b"]["decontam_field"] == "prompt"
    assert out["b"]["ngram"] in _words(aime["problem"]) and not out["b"]["kept"]
    # A user-supplied benchmark file replaces the shipped ones.
    report = decontaminate_file(src, fields=["prompt", "response"], benchmarks=[custom],
                                out_path=tmp_path / "v.jsonl")
    assert report["decontam"]["contaminated"] == {"my_eval": 1}
    hit = [json.loads(line) for line in (tmp_path / "v.jsonl").read_text().splitlines()][2]
    assert hit["decontam_field"] == "response" and hit["benchmark_item"] == "q1" and hit["ngram_n"] == 13


def test_dedup_and_decontam_in_one_pass(tmp_path: Path) -> None:
    gsm = _rows("gsm8k_test")[:20]
    rows = [{"sample_id": f"s{i}", "prompt": f"Task {i}: count the tiles in room {i}.", "response": r["solution"]}
            for i, r in enumerate(gsm)]
    rows.append({"sample_id": "s99", "prompt": rows[0]["prompt"], "response": gsm[0]["solution"]})
    src = tmp_path / "s.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = dedup_decontaminate_file(src, out_path=tmp_path / "v.parquet", field=["prompt", "response"],
                                      decontam_fields=["response"], workers=1)
    assert report["dedup"]["dropped"] == {"exact": 1}
    assert report["decontam"]["contaminated"] == {"gsm8k_test": 21} and report["kept"] == 0
