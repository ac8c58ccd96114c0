"""Exact and near-duplicate detection on small real-text fixtures (GSM8K test solutions)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasketch import MinHash, MinHashLSH

from factory.dedup import dedup_file
from factory.errors import FactoryError
from factory.paths import BENCHMARKS_DIR
from verifiers.dedup import (DEFAULT_THRESHOLD, SHORT_TEXT_SHINGLES, DedupItem, DedupParams, Deduplicator,
                             deduplicate, exact_key, lsh_bands, normalize_text, pair_thresholds, shingle_hash32,
                             sketch_batch, sketch_texts)


def _gsm8k_texts(count: int) -> list[str]:
    with (BENCHMARKS_DIR / "gsm8k_test.jsonl").open() as fh:
        rows = [json.loads(line) for line in fh]
    # Problem + solution: 60-200 words, different from each other like real samples.
    return [r["problem"] + "\n" + r["solution"] for r in rows[:count]]


def _edit_words(text: str, rate: float, seed: int) -> str:
    rng = random.Random(seed)
    words = text.split(" ")
    for i in rng.sample(range(len(words)), max(1, int(len(words) * rate))):
        words[i] = "zzq" + str(rng.randint(0, 10**6))
    return " ".join(words)


@pytest.fixture(scope="module")
def fixture_items() -> tuple[list[DedupItem], dict[str, str]]:
    """40 originals plus planted copies; returns the items and {copy id: original id}."""
    texts = _gsm8k_texts(40)
    items = [DedupItem(f"orig{i}", t, (0, i)) for i, t in enumerate(texts)]
    planted = {
        "exact": texts[0],
        "wscase": "  ".join(texts[1].upper().split(" ")),
        "edit5": _edit_words(texts[2], 0.05, 1),
        "edit10": _edit_words(texts[3], 0.10, 2),
    }
    originals = {"exact": "orig0", "wscase": "orig1", "edit5": "orig2", "edit10": "orig3"}
    items += [DedupItem(k, v, (1, k)) for k, v in planted.items()]
    items.append(DedupItem("nearmiss", _edit_words(texts[4], 0.45, 3), (1, "nearmiss")))
    return items, originals


def test_normalisation_ignores_case_spacing_and_punctuation_runs_but_not_operators() -> None:
    assert normalize_text("What is  2+3?!!") == "what is 2 + 3 ? !"
    assert exact_key("What is 2+3?!") == exact_key("what IS 2 + 3 ?!!!\n")
    assert exact_key("What is 2+3?") != exact_key("What is 2-3?")
    # NFKC folds full-width forms and ligatures before comparing.
    assert exact_key("Ｆｉｎｄ ｘ") == exact_key("find x") == exact_key("ﬁnd x".replace("ﬁ", "fi"))


@pytest.mark.parametrize("ngram", [1, 3])
def test_signatures_are_those_of_datasketch(ngram: int) -> None:
    text = _gsm8k_texts(1)[0]
    words = [w for w in normalize_text(text).split(" ") if w.isalnum() or "_" in w]
    sig = sketch_batch([text], DedupParams(ngram=ngram, num_perm=64, seed=5)).signatures[0]
    reference = MinHash(num_perm=64, seed=5, hashfunc=shingle_hash32)
    for i in range(len(words) - ngram + 1):
        reference.update(" ".join(words[i:i + ngram]).encode("utf-8"))
    assert np.array_equal(reference.hashvalues, sig)


def test_lsh_bands_match_datasketch() -> None:
    for threshold in (0.5, 0.7, 0.8):
        lsh = MinHashLSH(threshold=threshold, num_perm=128)
        assert lsh_bands(threshold, 128) == (lsh.b, lsh.r)


def test_planted_duplicates_are_found_and_near_miss_kept(fixture_items) -> None:
    items, originals = fixture_items
    verdicts = {v.id: v for v in deduplicate(items, workers=1)}
    assert verdicts["exact"].kind == "exact" and verdicts["wscase"].kind == "exact"
    assert verdicts["exact"].similarity == 1.0
    for copy, original in originals.items():
        assert not verdicts[copy].kept
        assert verdicts[copy].duplicate_of == original == verdicts[copy].cluster_id
        assert verdicts[original].kept and verdicts[original].cluster_id == original
    assert verdicts["edit5"].kind == verdicts["edit10"].kind == "near"
    assert 0.7 <= verdicts["edit10"].similarity < 1.0
    assert verdicts["nearmiss"].kept and verdicts["nearmiss"].kind == "unique"
    unrelated = [v for k, v in verdicts.items() if k.startswith("orig")]
    assert all(v.kept for v in unrelated)


def test_keeper_is_best_rank_then_id_regardless_of_order() -> None:
    text = _gsm8k_texts(1)[0]
    items = [DedupItem("b", text, (True, 10)), DedupItem("a", text + " ", (True, 10)),
             DedupItem("c", text.upper(), (False, 99))]
    for order in (items, items[::-1]):
        verdicts = {v.id: v for v in deduplicate(order, workers=1)}
        assert verdicts["c"].kept                                   # passed verifiers wins over shorter
        assert verdicts["a"].duplicate_of == verdicts["b"].duplicate_of == "c"
    tied = {v.id: v for v in deduplicate(items[:2], workers=1)}
    assert tied["a"].kept and tied["b"].duplicate_of == "a"        # equal rank: lowest id


def test_rerun_is_idempotent(fixture_items) -> None:
    items, _ = fixture_items
    first = deduplicate(items, workers=1)
    assert deduplicate(items, workers=1) == first
    kept = {v.id for v in first if v.kept}
    again = deduplicate([it for it in items if it.id in kept], workers=1)
    assert all(v.kept and v.kind == "unique" for v in again)


def test_reference_set_drops_items_already_curated(fixture_items) -> None:
    items, _ = fixture_items
    reference = [DedupItem("old-1", items[5].text), DedupItem("old-2", _edit_words(items[6].text, 0.05, 9))]
    verdicts = {v.id: v for v in deduplicate(items, reference=reference, workers=1)}
    assert "old-1" not in verdicts and len(verdicts) == len(items)
    assert verdicts["orig5"].kind == "reference" and verdicts["orig5"].duplicate_of == "old-1"
    assert verdicts["orig6"].kind == "reference" and verdicts["orig6"].cluster_id == "old-2"
    assert verdicts["orig7"].kept


def test_char_shingles_find_edited_copy(fixture_items) -> None:
    items, _ = fixture_items
    verdicts = {v.id: v for v in deduplicate(items, shingle="char", workers=1)}
    assert verdicts["edit5"].duplicate_of == "orig2"
    assert verdicts["nearmiss"].kept


def test_worker_processes_give_the_same_sketches() -> None:
    texts = _gsm8k_texts(60)
    params = DedupParams()
    inline = list(sketch_texts(texts, params, workers=1, batch_size=20))
    pooled = list(sketch_texts(texts, params, workers=2, batch_size=20))
    assert len(pooled) == 3
    for a, b in zip(inline, pooled):
        assert np.array_equal(a.exact_keys, b.exact_keys) and np.array_equal(a.signatures, b.signatures)


def test_streaming_deduplicator_matches_one_call(fixture_items) -> None:
    items, _ = fixture_items
    dedup = Deduplicator(DedupParams())
    for s in range(0, len(items), 7):          # uneven batches
        chunk = items[s:s + 7]
        dedup.add([it.id for it in chunk], sketch_batch([it.text for it in chunk]), [it.rank for it in chunk])
    assert dedup.resolve() == deduplicate(items, workers=1)


@pytest.mark.parametrize("kwargs, message", [
    ({"threshold": 0}, "threshold: expected a number in (0, 1], got 0"),
    ({"threshold": 1.5}, "threshold: expected a number in (0, 1], got 1.5"),
    ({"num_perm": 8}, "num_perm: expected an integer >= 16, got 8"),
    ({"shingle": "line"}, "shingle: expected 'word' or 'char', got 'line'"),
    ({"ngram": 0}, "ngram: expected an integer >= 1, got 0"),
])
def test_bad_parameters_give_one_clear_line(kwargs, message) -> None:
    with pytest.raises(ValueError) as err:
        deduplicate([DedupItem("a", "text")], **kwargs)
    assert str(err.value) == message and "\n" not in str(err.value)


def _write(path: Path, rows: list[dict]) -> None:
    if path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_dedup_file_writes_verdicts(tmp_path: Path, suffix: str) -> None:
    texts = _gsm8k_texts(30)
    rows = [{"sample_id": f"s{i}", "prompt": t.split("\n")[0], "response": t, "passed": True}
            for i, t in enumerate(texts)]
    rows.append({"sample_id": "dup", "prompt": rows[3]["prompt"], "response": _edit_words(texts[3], 0.05, 4),
                 "passed": False})
    src = tmp_path / f"samples{suffix}"
    _write(src, rows)
    out = tmp_path / "verdicts.parquet"
    report = dedup_file(src, field=["prompt", "response"], out_path=out, prefer="passed", workers=1)
    assert report["rows"] == 31 and report["kept"] == 30 and report["dedup"]["dropped"] == {"near": 1}
    table = pq.read_table(out).to_pylist()
    dup = next(r for r in table if r["id"] == "dup")
    assert dup["kept"] is False and dup["duplicate_of"] == "s3" and dup["cluster_id"] == "s3"
    # Re-running on the kept rows drops nothing.
    kept_ids = {r["id"] for r in table if r["kept"]}
    _write(tmp_path / f"kept{suffix}", [r for r in rows if r["sample_id"] in kept_ids])
    again = dedup_file(tmp_path / f"kept{suffix}", field=["prompt", "response"], out_path=tmp_path / "v2.jsonl")
    assert again["kept"] == 30 and again["dedup"]["dropped"] == {}


def test_dedup_file_against_reference_file(tmp_path: Path) -> None:
    texts = _gsm8k_texts(10)
    _write(tmp_path / "old.jsonl", [{"id": "x", "text": texts[2]}])
    _write(tmp_path / "new.jsonl", [{"id": f"n{i}", "text": t} for i, t in enumerate(texts)])
    report = dedup_file(tmp_path / "new.jsonl", out_path=tmp_path / "v.jsonl", reference=[tmp_path / "old.jsonl"],
                        threshold=None)
    assert report["dedup"]["dropped"] == {"reference": 1}
    assert report["dedup"]["params"]["threshold"] == DEFAULT_THRESHOLD  # threshold=None: the library default
    row = [json.loads(line) for line in (tmp_path / "v.jsonl").read_text().splitlines()][2]
    assert row["kind"] == "reference" and row["duplicate_of"] == "old.jsonl:x"


def test_dedup_file_errors_are_one_line(tmp_path: Path) -> None:
    _write(tmp_path / "a.jsonl", [{"id": "1", "text": "hello"}])
    with pytest.raises(FactoryError, match=r"field 'response' not found \(columns: id, text\)"):
        dedup_file(tmp_path / "a.jsonl", field="response", out_path=tmp_path / "v.parquet")
    with pytest.raises(FactoryError, match="threshold: expected a number in"):
        dedup_file(tmp_path / "a.jsonl", out_path=tmp_path / "v.parquet", threshold=2)
    report = dedup_file(tmp_path / "a.jsonl", out_path=None)
    assert report["out_path"] == str(tmp_path / "a.dedup.parquet") and (tmp_path / "a.dedup.parquet").exists()
    with pytest.raises(FactoryError, match="no such file"):
        dedup_file(tmp_path / "missing.jsonl", out_path=tmp_path / "v.parquet")


def _gsm8k_docs(count: int) -> list[str]:
    """Real GSM8K problems + solutions of 100-200 words (the package's copy of the test split)."""
    docs = []
    with (BENCHMARKS_DIR / "gsm8k_test.jsonl").open() as handle:
        for line in handle:
            row = json.loads(line)
            text = f"{row['problem']}\n{row['solution']}"
            if 100 <= len(text.split()) <= 200:
                docs.append(text)
            if len(docs) == count:
                break
    return docs


def _substitute(text: str, share: float, vocab: list[str], rng: random.Random) -> str:
    words = text.split(" ")
    for i in rng.sample(range(len(words)), round(share * len(words))):
        words[i] = rng.choice(vocab)
    return " ".join(words)


def test_lightly_edited_short_documents_are_found_with_defaults() -> None:
    docs = _gsm8k_docs(600)
    rng = random.Random(3)
    vocab = sorted({w for d in docs for w in d.split()})
    items = [DedupItem(f"d{i}", d) for i, d in enumerate(docs)]
    planted = {}
    for k, src in enumerate(rng.sample(range(len(docs)), 120)):
        share = (0.1, 0.2)[k % 2]
        items.append(DedupItem(f"c{k}", _substitute(docs[src], share, vocab, rng)))
        planted[f"c{k}"] = (f"d{src}", share)
    verdicts = {v.id: v for v in deduplicate(items, workers=1)}
    found = {share: sum(verdicts[c].cluster_id == verdicts[o].cluster_id for c, (o, s) in planted.items() if s == share)
             for share in (0.1, 0.2)}
    assert found[0.1] >= 0.95 * 60 and found[0.2] >= 0.8 * 60, found
    # Precision: of the originals, only planted sources may share a cluster with anything.
    clusters: dict[str, list[str]] = {}
    for v in verdicts.values():
        clusters.setdefault(v.cluster_id, []).append(v.id)
    wrong = sum(1 for members in clusters.values() for m in members
                if m.startswith("d") and sum(x.startswith("d") for x in members) > 1)
    assert wrong <= 4, [m for m in clusters.values() if sum(x.startswith("d") for x in m) > 1]


def test_short_texts_need_a_higher_similarity() -> None:
    thresholds = pair_thresholds(0.3, np.array([4, 25, 100, 1000]))
    assert thresholds[0] == pytest.approx(0.9) and thresholds[1] == pytest.approx(0.6)
    assert thresholds[2] == thresholds[3] == pytest.approx(0.3)
    assert pair_thresholds(0.95, np.array([1]))[0] == pytest.approx(0.95)  # never below the caller's
    # Templated one-line answers to different problems stay apart; the same line with one more word does not.
    items = [DedupItem("a", "So the final answer is 12 apples."), DedupItem("b", "So the final answer is 15 apples."),
             DedupItem("c", "So the final answer is 12 apples in total.")]
    verdicts = {v.id: v for v in deduplicate(items, workers=1)}
    assert verdicts["a"].kept and verdicts["b"].kept
    assert SHORT_TEXT_SHINGLES == 100
    # The bar can be switched off: then one threshold holds for every pair.
    assert pair_thresholds(0.3, np.array([4]), 0)[0] == pytest.approx(0.3)
    with pytest.raises(ValueError, match="short_text_shingles"):
        DedupParams(short_text_shingles=-1).validate()


def test_verdicts_do_not_depend_on_arrival_order_or_chunking() -> None:
    """Clusters of near copies (LSH buckets of 4+ members, where not every pair is compared) and
    exact copies: any order and any chunking of the same items gives the same verdicts."""
    texts = _gsm8k_texts(6)
    items: list[tuple[str, str]] = []
    for b, text in enumerate(texts):
        items.append((f"b{b}", text))
        for k in range(12):
            edited = _edit_words(text, random.Random(k).choice([0.1, 0.2, 0.3, 0.4]), 100 * b + k)
            items.append((f"b{b}e{k}", edited))
            if k % 3 == 0:
                items.append((f"b{b}e{k}x", edited.upper()))   # an exact copy of the edit
    params = DedupParams()

    def verdicts(order: list[int], chunk: int) -> dict[str, tuple]:
        dedup = Deduplicator(params)
        chosen = [items[i] for i in order]
        for s in range(0, len(chosen), chunk):
            part = chosen[s:s + chunk]
            dedup.add([i for i, _ in part], sketch_batch([t for _, t in part], params),
                      [(len(t), i) for i, t in part])
        return {v.id: (v.kept, v.kind, v.cluster_id, v.similarity, v.cluster_size) for v in dedup.resolve()}

    expected = verdicts(list(range(len(items))), len(items))
    assert {kind for _, kind, *_ in expected.values()} == {"unique", "exact", "near"}
    for seed, chunk in enumerate([3, 7, 64, 1000] * 3):
        order = list(range(len(items)))
        random.Random(seed).shuffle(order)
        assert verdicts(order, chunk) == expected, (seed, chunk)


def test_spilled_state_gives_the_in_memory_verdicts(tmp_path: Path) -> None:
    """A state budget of one byte: signatures, band keys and ranks go to Parquet from the first batch,
    pairs are verified in small batches, and the verdicts (near clusters spanning chunks, exact copies,
    reference items) equal the in-memory ones whatever the order and chunking."""
    texts = _gsm8k_texts(5)
    items: list[tuple[str, str]] = []
    for b, text in enumerate(texts):
        items.append((f"b{b}", text))
        for k in range(10):
            edited = _edit_words(text, random.Random(k).choice([0.1, 0.2, 0.3]), 100 * b + k)
            items.append((f"b{b}e{k}", edited))
            if k % 3 == 0:
                items.append((f"b{b}e{k}x", edited.upper()))
    reference = [("ref:0", texts[0]), ("ref:1", _edit_words(texts[1], 0.1, 7))]
    params = DedupParams()

    def verdicts(order: list[int], chunk: int, **spill) -> tuple[dict[str, tuple], Deduplicator]:
        dedup = Deduplicator(params, **spill)
        dedup.add([i for i, _ in reference], sketch_batch([t for _, t in reference], params), reference=True)
        chosen = [items[i] for i in order]
        for s in range(0, len(chosen), chunk):
            part = chosen[s:s + chunk]
            dedup.add([i for i, _ in part], sketch_batch([t for _, t in part], params), [(len(t), i) for i, t in part])
        got = {v.id: (v.kept, v.kind, v.cluster_id, v.similarity, v.cluster_size) for v in dedup.iter_resolve()}
        return got, dedup

    expected, memory = verdicts(list(range(len(items))), 16)
    assert not memory.spilled and memory.spilled_bytes == 0
    assert {kind for _, kind, *_ in expected.values()} == {"unique", "exact", "near", "reference"}
    for seed, chunk in enumerate([5, 16, 1000]):
        order = list(range(len(items)))
        random.Random(seed).shuffle(order)
        got, spilled = verdicts(order, chunk, spill_dir=tmp_path / "spill", max_state_bytes=1)
        assert spilled.spilled and spilled.spilled_bytes > 0
        assert got == expected, (seed, chunk)
    assert not list((tmp_path / "spill").iterdir())  # the spill file is removed once resolved
