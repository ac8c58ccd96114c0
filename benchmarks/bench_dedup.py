"""Dedup + decontamination at scale: quality on planted duplicates/leaks, speed and memory to 800K rows.

    python benchmarks/bench_dedup.py            # 100K/200K/400K/800K rows, 2 workers
    python benchmarks/bench_dedup.py --quick    # 20K/40K rows
    python benchmarks/bench_dedup.py --short-only   # only the short-document edit-level table

Short documents (issue 16): GSM8K train problems + solutions of 100-200 words with planted
copies whose words are 5/10/20/30% substituted (and exact/case copies); precision and recall
per edit level for the previous defaults (word unigrams at 0.7, the baseline) and the
current ones, in the same run. Every size of the scale run is also timed with the previous
defaults (``--no-baseline`` skips that), so the throughput ratio comes from one run.

The corpus is synthetic but R1-shaped (prompt + ``<think>`` reasoning of ~4k characters
+ a boxed answer; Zipf-distributed vocabulary, R1 boilerplate sentences, 4 responses per
prompt as hard negatives; prompts are GSM8K *train* problems). It is built once in blocks
of 10K rows and cached as Parquet shards (every size is a prefix, so planted pairs are
never cut). Per block, 8.4% of rows are planted copies of another row of the block:
exact, whitespace/case edits, 5/10/15/20% word edits (substitute/delete/insert), and
paragraph reorderings; 0.3% carry a benchmark leak: a benchmark problem pasted verbatim
into the prompt, the same lightly edited (case/spacing/punctuation + one word in 20
replaced), or a benchmark solution pasted verbatim into the response.

Measured, all in one run:
* quality grid (shingle n-gram × threshold) on the first block(s): pairwise precision and
  per-category recall of planted pairs (the basis of the documented defaults);
* decontamination recall per leak kind at n = 13 and n = 8, and unplanted rows flagged;
* ``dedup_decontaminate_file`` (exact + MinHash/LSH + decontam in one streaming pass,
  2 worker processes) at each size in a fresh subprocess: wall time, rows/s, peak RSS of
  the process tree (sampled every 0.1 s);
* baseline: datasketch's README loop (``MinHash(num_perm=128)``, ``update(s.encode('utf8'))``
  per shingle) and our vectorised ``sketch_batch`` on the same 2,000 texts in one process,
  extrapolated to 800K rows on 2 cores.

The machine's 2 cores are shared with other jobs: timings move by ±30% between runs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from factory.dedup import dedup_decontaminate_file  # noqa: E402
from factory.paths import BENCHMARKS_DIR, PROMPTS_DIR  # noqa: E402
from verifiers.decontam import BenchmarkIndex  # noqa: E402
from verifiers.dedup import DedupItem, DedupParams, Deduplicator, deduplicate, sketch_batch  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "dedup.json"
CACHE = Path(tempfile.gettempdir()) / "factory_bench_dedup"
BLOCK = 10_000
CORPUS_VERSION = 4
DUP_KINDS = ["exact", "wscase", "edit05", "edit10", "edit15", "edit20", "reorder"]
DUP_SHARE = 0.012          # per kind, of each block
LEAK_KINDS = ["verbatim_prompt", "edited_prompt", "verbatim_solution"]
LEAK_SHARE = 0.001         # per kind, of each block
BOILERPLATE = [
    "Okay, so I need to figure out this problem step by step.", "Wait, let me double-check that.",
    "Hmm, that doesn't seem right.", "Let me think about this again.", "So the answer should be correct.",
    "Alternatively, maybe there's a simpler way.", "Let me verify with the numbers.", "That makes sense.",
    "First, let me understand what the problem is asking.", "Let me write that down.", "Yes, that works.",
    "Wait, no, that's not quite it.", "I think that's the answer.", "Let me recap to make sure.",
]


# ------------------------------------------------------------------ corpus

class Corpus:
    """Deterministic R1-shaped text pieces (vocabulary, sentence pool, prompts, benchmarks)."""

    def __init__(self, seed: int = 7) -> None:
        rng = np.random.default_rng(seed)
        letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
        lengths = rng.integers(2, 10, 30_000)
        self.vocab = ["".join(rng.choice(letters, k)) for k in lengths]
        weights = 1.0 / (np.arange(len(self.vocab)) + 10.0) ** 1.05
        self.p = weights / weights.sum()
        self.sentences = self._sentences(rng, 150_000)
        self.prompts = self._prompts()
        self.benchmark_items = self._benchmark_items()

    def _sentences(self, rng: np.random.Generator, count: int) -> list[str]:
        lengths = rng.integers(6, 22, count)
        word_ids = rng.choice(len(self.vocab), int(lengths.sum()), p=self.p)   # one draw: p-sampling is costly
        bounds = np.concatenate([[0], np.cumsum(lengths)])
        math = rng.random(count) < 0.3
        number = rng.random(count) < 0.3
        ends = rng.choice([".", ".", ".", "?", ","], count)
        out = []
        for k in range(count):
            words = [self.vocab[i] for i in word_ids[bounds[k]:bounds[k + 1]]]
            if math[k]:
                words.insert(int(rng.integers(0, len(words))), f"${int(rng.integers(2, 99))}x + {int(rng.integers(1, 999))}$")
            if number[k]:
                words.insert(int(rng.integers(0, len(words))), str(int(rng.integers(0, 10_000))))
            out.append(words[0].capitalize() + " " + " ".join(words[1:]) + ends[k])
        return out

    @staticmethod
    def _prompts() -> list[str]:
        shared = Path("/work/shared/data/gsm8k_train.jsonl")
        path = shared if shared.is_file() else PROMPTS_DIR / "gsm8k_train_300.jsonl"
        with path.open() as fh:
            return [json.loads(line)["problem"] for line in fh]

    @staticmethod
    def _benchmark_items() -> list[dict[str, str]]:
        items = []
        for path in sorted(BENCHMARKS_DIR.glob("*.jsonl")):
            with path.open() as fh:
                for line in fh:
                    row = json.loads(line)
                    items.append({"benchmark": path.stem, "id": str(row.get("id", row.get("task_id"))),
                                  "problem": row.get("problem") or row.get("prompt"),
                                  "solution": row.get("solution") or row.get("canonical_solution") or ""})
        return items

    def response(self, rng: random.Random) -> str:
        target = rng.randint(3_000, 5_000)
        paragraphs, size = [], 0
        while size < target:
            para = [rng.choice(BOILERPLATE) if rng.random() < 0.15 else rng.choice(self.sentences)
                    for _ in range(rng.randint(3, 6))]
            text = " ".join(para)
            paragraphs.append(text)
            size += len(text) + 2
        answer = rng.randint(0, 9999)
        return ("<think>\n" + "\n\n".join(paragraphs) + "\n</think>\n\n" + rng.choice(self.sentences)
                + f" The answer is $\\boxed{{{answer}}}$.")


def _edit_words(text: str, rate: float, rng: random.Random, vocab: list[str]) -> str:
    out: list[str] = []
    for word in text.split(" "):
        if rng.random() >= rate:
            out.append(word)
            continue
        op = rng.randrange(3)
        if op == 0:
            out.append(rng.choice(vocab))
        elif op == 2:
            out.extend([word, rng.choice(vocab)])
    return " ".join(out)


def _ws_case(text: str, rng: random.Random) -> str:
    words = text.split(" ")
    for i in rng.sample(range(len(words)), max(1, len(words) // 10)):
        words[i] = words[i].upper() if rng.random() < 0.5 else words[i].capitalize()
    return "  ".join(words).replace("\n\n", "\n \n")


def _reorder(text: str, rng: random.Random) -> str:
    head, rest = text.split("<think>\n", 1)
    body, tail = rest.split("\n</think>", 1)
    paragraphs = body.split("\n\n")
    rng.shuffle(paragraphs)
    return head + "<think>\n" + "\n\n".join(paragraphs) + "\n</think>" + tail


def _light_edit(problem: str, rng: random.Random, vocab: list[str]) -> str:
    words = problem.split()
    for i in rng.sample(range(len(words)), max(1, len(words) // 20)):
        words[i] = rng.choice(vocab)
    text = "  ".join(words)
    return (text.lower() if rng.random() < 0.5 else text.upper()).replace(",", " ,").replace("?", " ?!")


def build_block(corpus: Corpus, block: int) -> pa.Table:
    """One self-contained block of BLOCK rows with planted duplicates and leaks."""
    rng = random.Random(1000 + block)
    base = block * BLOCK
    rows: list[dict[str, Any]] = []
    for i in range(BLOCK):
        prompt = corpus.prompts[((base + i) // 4) % len(corpus.prompts)]
        rows.append({"sample_id": f"s{base + i:07d}", "prompt": prompt, "response": corpus.response(rng),
                     "passed": rng.random() < 0.8, "family": base + i, "planted": "original",
                     "leak": None, "leak_kind": None})
    n_dup = int(BLOCK * DUP_SHARE)
    n_leak = int(BLOCK * LEAK_SHARE)
    slots = rng.sample(range(BLOCK), n_dup * len(DUP_KINDS) * 2 + n_leak * len(LEAK_KINDS))
    for k, kind in enumerate(DUP_KINDS):
        for j in range(n_dup):
            dst, src = slots[2 * (k * n_dup + j)], slots[2 * (k * n_dup + j) + 1]
            orig = rows[src]
            response = orig["response"]
            if kind == "wscase":
                response = _ws_case(response, rng)
            elif kind.startswith("edit"):
                response = _edit_words(response, int(kind[4:]) / 100, rng, corpus.vocab)
            elif kind == "reorder":
                response = _reorder(response, rng)
            rows[dst].update(prompt=orig["prompt"], response=response, family=orig["family"], planted=kind)
    leak_slots = slots[n_dup * len(DUP_KINDS) * 2:]
    for k, kind in enumerate(LEAK_KINDS):
        for j in range(n_leak):
            row = rows[leak_slots[k * n_leak + j]]
            item = rng.choice([it for it in corpus.benchmark_items if it["solution"]] if kind == "verbatim_solution"
                              else corpus.benchmark_items)
            if kind == "verbatim_prompt":
                row["prompt"] = "Solve the following problem. " + item["problem"] + "\nThink step by step."
            elif kind == "edited_prompt":
                row["prompt"] = "Problem: " + _light_edit(item["problem"], rng, corpus.vocab)
            else:
                row["response"] = row["response"].replace("\n</think>", "\n" + item["solution"] + "\n</think>")
            row.update(leak=f"{item['benchmark']}/{item['id']}", leak_kind=kind)
    return pa.Table.from_pylist(rows)


def ensure_corpus(n_rows: int) -> list[Path]:
    """Parquet shards of BLOCK rows covering the first n_rows (built once, then cached)."""
    root = CACHE / f"v{CORPUS_VERSION}"
    root.mkdir(parents=True, exist_ok=True)
    shards = [root / f"block_{b:04d}.parquet" for b in range(-(-n_rows // BLOCK))]
    missing = [s for s in shards if not s.exists()]
    if missing:
        t0 = time.perf_counter()
        corpus = Corpus()
        for shard in missing:
            table = build_block(corpus, int(shard.stem.split("_")[1]))
            pq.write_table(table, shard.with_suffix(".tmp"), row_group_size=BLOCK // 5, compression="zstd")
            shard.with_suffix(".tmp").rename(shard)
        print(f"built {len(missing)} corpus blocks in {time.perf_counter() - t0:.0f}s under {root}", flush=True)
    return shards


def ground_truth(shards: list[Path]) -> pa.Table:
    return pa.concat_tables(pq.read_table(s, columns=["sample_id", "family", "planted", "leak", "leak_kind"])
                            for s in shards)


# ------------------------------------------------------------------ quality

def pair_metrics(truth: pa.Table, cluster_of: dict[str, str]) -> dict[str, Any]:
    """Pairwise precision over same-cluster pairs; recall of planted (copy, original) pairs by kind."""
    ids = truth.column("sample_id").to_pylist()
    family = truth.column("family").to_pylist()
    planted = truth.column("planted").to_pylist()
    first_of_family = {}
    for sid, fam, kind in zip(ids, family, planted):
        if kind == "original":
            first_of_family[fam] = sid
    clusters: dict[str, list[int]] = defaultdict(list)
    for i, sid in enumerate(ids):
        clusters[cluster_of[sid]].append(i)
    same = total = 0
    near_same = near_total = 0
    for members in clusters.values():
        for a in range(len(members)):
            for b in range(a + 1, len(members)):
                i, j = members[a], members[b]
                ok = family[i] == family[j]
                total += 1
                same += ok
                if {planted[i], planted[j]} & {"edit05", "edit10", "edit15", "edit20", "reorder"} or not ok:
                    near_total += 1
                    near_same += ok
    recall: dict[str, float] = {}
    found = Counter()
    count = Counter()
    for sid, fam, kind in zip(ids, family, planted):
        if kind != "original":
            count[kind] += 1
            found[kind] += cluster_of[sid] == cluster_of[first_of_family[fam]]
    for kind in DUP_KINDS:
        recall[kind] = found[kind] / count[kind] if count[kind] else float("nan")
    near_kinds = ["edit05", "edit10", "edit15", "edit20", "reorder"]
    return {"precision": same / total if total else 1.0,
            "near_precision": near_same / near_total if near_total else 1.0,
            "recall": sum(found.values()) / max(1, sum(count.values())),
            "near_recall": sum(found[k] for k in near_kinds) / max(1, sum(count[k] for k in near_kinds)),
            "recall_by_kind": recall}


def quality_grid(shards: list[Path], ngrams: list[int], thresholds: list[float]) -> list[dict[str, Any]]:
    table = pa.concat_tables(pq.read_table(s) for s in shards)
    ids = table.column("sample_id").to_pylist()
    texts = [p + "\n" + r for p, r in zip(table.column("prompt").to_pylist(), table.column("response").to_pylist())]
    ranks = [(not p, len(t), i) for p, t, i in zip(table.column("passed").to_pylist(), texts, ids)]
    truth = table.select(["sample_id", "family", "planted"])
    out = []
    for ngram in ngrams:
        sketch = sketch_batch(texts, DedupParams(ngram=ngram))
        for threshold in thresholds:
            dedup = Deduplicator(DedupParams(ngram=ngram, threshold=threshold))
            dedup.add(ids, sketch, ranks)
            verdicts = dedup.resolve()
            metrics = pair_metrics(truth, {v.id: v.cluster_id for v in verdicts})
            out.append({"ngram": ngram, "threshold": threshold, **metrics})
            print(f"  ngram={ngram} threshold={threshold:.2f}  precision={metrics['precision']:.3f} "
                  f"near P={metrics['near_precision']:.3f} R={metrics['near_recall']:.3f}  "
                  + " ".join(f"{k}={v:.2f}" for k, v in metrics["recall_by_kind"].items()), flush=True)
    return out


def decontam_quality(shards: list[Path], n: int) -> dict[str, Any]:
    table = pa.concat_tables(pq.read_table(s, columns=["prompt", "response", "leak", "leak_kind"]) for s in shards)
    index = BenchmarkIndex.from_dir(BENCHMARKS_DIR, n=n)
    hits_p = index.check_batch(table.column("prompt").to_pylist(), workers=1)
    hits_r = index.check_batch(table.column("response").to_pylist(), workers=1)
    kinds = table.column("leak_kind").to_pylist()
    leaks = table.column("leak").to_pylist()
    found, count, correct_item = Counter(), Counter(), Counter()
    clean_flagged = 0
    for kind, leak, hp, hr in zip(kinds, leaks, hits_p, hits_r):
        hit = hp or hr
        if kind is None:
            clean_flagged += hit is not None
            continue
        count[kind] += 1
        found[kind] += hit is not None
        correct_item[kind] += hit is not None and f"{hit.benchmark}/{hit.item_id}" == leak
    return {"n": n, "recall": {k: found[k] / count[k] for k in count},
            "same_item": {k: correct_item[k] / count[k] for k in count}, "leaks": dict(count),
            "unplanted_rows_flagged": clean_flagged, "rows": len(kinds)}


# ------------------------------------------------------------------ speed

def baseline(shards: list[Path], n_docs: int, ngram: int) -> dict[str, float]:
    """datasketch's README loop vs our vectorised sketch, same texts, one process."""
    from datasketch import MinHash

    table = pq.read_table(shards[0]).slice(0, n_docs)
    texts = [p + "\n" + r for p, r in zip(table.column("prompt").to_pylist(), table.column("response").to_pylist())]
    t0 = time.process_time()
    for text in texts:
        words = text.lower().split()
        m = MinHash(num_perm=128)
        for i in range(len(words) - ngram + 1):
            m.update(" ".join(words[i:i + ngram]).encode("utf8"))
    loop = time.process_time() - t0
    t0 = time.process_time()
    for text in texts:
        words = text.lower().split()
        m = MinHash(num_perm=128)
        m.update_batch([" ".join(words[i:i + ngram]).encode("utf8") for i in range(len(words) - ngram + 1)])
    batch_loop = time.process_time() - t0
    t0 = time.process_time()
    sketch_batch(texts, DedupParams(ngram=ngram))
    ours = time.process_time() - t0
    return {"docs": n_docs, "avg_chars": sum(map(len, texts)) / n_docs,
            "datasketch_docs_per_s": n_docs / loop, "datasketch_update_batch_docs_per_s": n_docs / batch_loop,
            "ours_docs_per_s": n_docs / ours, "speedup_vs_update_batch": batch_loop / ours,
            "speedup_per_core": loop / ours,
            "datasketch_800k_2cores_min": 800_000 / (n_docs / loop) / 2 / 60}


def run_one(n_rows: int, workers: int, out_dir: Path, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """(child process) The measured pipeline: exact + MinHash/LSH + decontam over n_rows."""
    shards = ensure_corpus(n_rows)
    cpu0 = _cpu_seconds()
    t0 = time.perf_counter()
    report = dedup_decontaminate_file(shards, out_path=out_dir / f"verdicts_{n_rows}.parquet",
                                      field=["prompt", "response"], decontam_fields=["prompt", "response"],
                                      prefer="passed", workers=workers, **(params or {}))
    wall = time.perf_counter() - t0
    cpu = _cpu_seconds() - cpu0   # workers have exited and been reaped: their time is in RUSAGE_CHILDREN
    verdicts = pq.read_table(out_dir / f"verdicts_{n_rows}.parquet", columns=["id", "cluster_id"])
    metrics = pair_metrics(ground_truth(shards), dict(zip(verdicts.column("id").to_pylist(),
                                                          verdicts.column("cluster_id").to_pylist())))
    return {"rows": n_rows, "wall_s": wall, "cpu_s": cpu, "report": report, "metrics": metrics}


def _cpu_seconds() -> float:
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure(n_rows: int, workers: int, out_dir: Path, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run one size in a fresh subprocess; sample the whole process tree's RSS."""
    result_path = out_dir / f"one_{n_rows}.json"
    proc = subprocess.Popen([sys.executable, __file__, "--one", str(n_rows), "--workers", str(workers),
                             "--out-dir", str(out_dir), "--params", json.dumps(params or {})])
    peak = 0
    ps = psutil.Process(proc.pid)
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            try:
                tree = [ps, *ps.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(0.1)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    if proc.wait() != 0:
        raise SystemExit(f"size {n_rows}: child failed with exit code {proc.returncode}")
    stop.set()
    thread.join()
    result = json.loads(result_path.read_text())
    result["peak_rss_gb"] = peak / 1e9
    return result


# ------------------------------------------------------------------ short documents

SHORT_EDIT_LEVELS = (5, 10, 20, 30)
GSM8K_TRAIN = Path("/work/shared/data/gsm8k_train.jsonl")


def short_corpus(n_docs: int, copies_per_level: int, seed: int = 11) -> tuple[list[str], list[str], list[int], list[str]]:
    """GSM8K problems + solutions of 100-200 words, plus planted copies with a share of their
    words substituted by other GSM8K words (5/10/20/30%) and exact/case copies.

    Returns (ids, texts, family, kind); kind is "original", "exact", "case" or "subNN".
    """
    path = GSM8K_TRAIN if GSM8K_TRAIN.is_file() else PROMPTS_DIR / "gsm8k_train_300.jsonl"
    docs = []
    with path.open() as fh:
        for line in fh:
            row = json.loads(line)
            text = f"{row['problem']}\n{row.get('solution') or ''}".strip()
            if 100 <= len(text.split()) <= 200:
                docs.append(text)
    rng = random.Random(seed)
    rng.shuffle(docs)
    docs = docs[:n_docs]
    vocab = sorted({word for doc in docs for word in doc.split()})
    ids, texts, family, kind = [], [], [], []
    for i, doc in enumerate(docs):
        ids.append(f"d{i}"), texts.append(doc), family.append(i), kind.append("original")
    sources = rng.sample(range(len(docs)), min(len(docs), copies_per_level * (len(SHORT_EDIT_LEVELS) + 2)))
    plan = [f"sub{level:02d}" for level in SHORT_EDIT_LEVELS] + ["exact", "case"]
    for k, src in enumerate(sources):
        what = plan[k % len(plan)]
        words = docs[src].split(" ")
        if what == "exact":
            copy = docs[src]
        elif what == "case":
            copy = "  ".join(w.upper() if rng.random() < 0.3 else w for w in words)
        else:
            rate = int(what[3:]) / 100
            for j in rng.sample(range(len(words)), max(1, round(rate * len(words)))):
                words[j] = rng.choice(vocab)
            copy = " ".join(words)
        ids.append(f"c{k}"), texts.append(copy), family.append(src), kind.append(what)
    return ids, texts, family, kind


def short_doc_quality(n_docs: int, copies_per_level: int, settings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Precision and per-edit-level recall of ``deduplicate`` on short GSM8K documents."""
    ids, texts, family, kind = short_corpus(n_docs, copies_per_level)
    items = [DedupItem(i, t) for i, t in zip(ids, texts)]
    out = []
    for setting in settings:
        started = time.perf_counter()
        verdicts = deduplicate(items, workers=1, **setting)
        seconds = time.perf_counter() - started
        cluster = [v.cluster_id for v in verdicts]
        members: dict[str, list[int]] = defaultdict(list)
        for i, c in enumerate(cluster):
            members[c].append(i)
        same = total = 0
        for group in members.values():
            for a in range(len(group)):
                for b in range(a + 1, len(group)):
                    total += 1
                    same += family[group[a]] == family[group[b]]
        original = {f: i for i, (f, k) in enumerate(zip(family, kind)) if k == "original"}
        found, count = Counter(), Counter()
        for i, (f, k) in enumerate(zip(family, kind)):
            if k != "original":
                count[k] += 1
                found[k] += cluster[i] == cluster[original[f]]
        row = {"setting": setting or "defaults", "docs": len(texts), "precision": same / total if total else 1.0,
               "pairs": total, "recall": {k: found[k] / count[k] for k in sorted(count)}, "seconds": seconds}
        out.append(row)
        print(f"  {str(setting or 'defaults'):<46} P={row['precision']:.3f} ({total} pairs)  "
              + " ".join(f"{k}={v:.2f}" for k, v in row["recall"].items()), flush=True)
    return out


# The defaults before issue 16 (word unigrams at 0.7): the baseline row of the short table.
PREVIOUS_DEFAULTS = {"ngram": 1, "threshold": 0.7}


def short_table(quick: bool) -> dict[str, Any]:
    """Edit-level recall and precision on short GSM8K documents, previous vs current defaults."""
    n_docs, copies = (2_000, 60) if quick else (6_000, 200)
    print(f"short documents: {n_docs} GSM8K problems + solutions of 100-200 words, {copies} planted copies "
          "per edit level (words substituted by other GSM8K words):", flush=True)
    rows = short_doc_quality(n_docs, copies, [PREVIOUS_DEFAULTS, {}, {"shingle": "char", "threshold": 0.3},
                                              {"ngram": 3, "threshold": 0.2}])
    print("\n| setting | precision | exact | case | 5% | 10% | 20% | 30% | seconds |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        name = "previous defaults (unigram, 0.7)" if row["setting"] == PREVIOUS_DEFAULTS else (
            "defaults (bigram, 0.3, short-text bar)" if row["setting"] == "defaults" else str(row["setting"]))
        r = row["recall"]
        print(f"| {name} | {row['precision']:.3f} | {r['exact']:.2f} | {r['case']:.2f} | {r['sub05']:.2f} | "
              f"{r['sub10']:.2f} | {r['sub20']:.2f} | {r['sub30']:.2f} | {row['seconds']:.1f} |")
    return {"docs": n_docs, "copies_per_level": copies, "rows": rows}


# ------------------------------------------------------------------ main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="20K/40K rows, small grid")
    ap.add_argument("--sizes", type=int, nargs="*", help="row counts to time (multiples of 10,000)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--short-only", action="store_true", help="only the short-document edit-level table")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--params", default="{}", help=argparse.SUPPRESS)
    ap.add_argument("--no-baseline", action="store_true", help="skip timing the previous defaults at each size")
    ap.add_argument("--out-dir", type=Path, default=CACHE / "out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    if args.one:
        result = run_one(args.one, args.workers, args.out_dir, json.loads(args.params))
        (args.out_dir / f"one_{args.one}.json").write_text(json.dumps(result))
        return

    out_short = short_table(args.quick)
    if args.short_only:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        RESULTS.write_text(json.dumps({**previous, "short_docs": out_short}, indent=2))
        print(f"\nwrote {RESULTS}")
        return

    sizes = args.sizes or ([20_000, 40_000] if args.quick else [100_000, 200_000, 400_000, 800_000])
    shards = ensure_corpus(max(sizes))
    defaults = DedupParams()
    out: dict[str, Any] = {"short_docs": out_short, "sizes": sizes, "workers": args.workers, "cpu_count": os.cpu_count(),
                           "defaults": {"ngram": defaults.shingle_size, "threshold": defaults.threshold,
                                        "num_perm": defaults.num_perm}}

    grid_blocks = 1 if args.quick else 2
    print(f"quality grid on {grid_blocks * BLOCK} rows (prompt + response):", flush=True)
    ngrams, thresholds = ([1, 2, 3], [0.6, 0.7, 0.8]) if args.quick else ([1, 2, 3, 5], [0.5, 0.6, 0.7, 0.8, 0.9])
    out["grid"] = quality_grid(shards[:grid_blocks], ngrams, thresholds)

    dq_blocks = shards[: max(1, min(sizes) // BLOCK)]
    out["decontam"] = [decontam_quality(dq_blocks, n) for n in (13, 8)]
    for d in out["decontam"]:
        print(f"decontam n={d['n']}: recall " + " ".join(f"{k}={v:.3f}" for k, v in d["recall"].items())
              + f"  (leaks {d['leaks']}), unplanted rows flagged {d['unplanted_rows_flagged']}/{d['rows']}")

    out["baseline"] = baseline(shards, 500 if args.quick else 2_000, defaults.shingle_size)
    b = out["baseline"]
    print(f"baseline ({b['docs']} docs, {b['avg_chars']:.0f} chars): datasketch loop {b['datasketch_docs_per_s']:.0f} "
          f"docs/s/core (update_batch {b['datasketch_update_batch_docs_per_s']:.0f}), sketch_batch {b['ours_docs_per_s']:.0f} docs/s/core ({b['speedup_per_core']:.1f}x); "
          f"datasketch over 800K on 2 cores ≈ {b['datasketch_800k_2cores_min']:.1f} min", flush=True)

    out["runs"] = []
    out["baseline_runs"] = []
    for n_rows in sizes:
        if not args.no_baseline:
            previous = measure(n_rows, args.workers, args.out_dir, PREVIOUS_DEFAULTS)
            out["baseline_runs"].append(previous)
            pm = previous["metrics"]
            print(f"{n_rows:>8,} rows, previous defaults: {previous['wall_s']:7.1f}s (CPU {previous['cpu_s']:.0f}s)  "
                  f"{n_rows / previous['wall_s']:7.0f} rows/s  P={pm['precision']:.3f} nearR={pm['near_recall']:.3f}",
                  flush=True)
        result = measure(n_rows, args.workers, args.out_dir)
        out["runs"].append(result)
        m = result["metrics"]
        print(f"{n_rows:>8,} rows: {result['wall_s']:7.1f}s (CPU {result['cpu_s']:.0f}s)  "
              f"{n_rows / result['wall_s']:7.0f} rows/s  "
              f"peak RSS {result['peak_rss_gb']:.2f} GB  P={m['precision']:.3f} nearR={m['near_recall']:.3f}",
              flush=True)

    print("\n| rows | wall (s) | CPU (s, all processes) | rows/s | peak RSS (GB) | precision | near recall | dropped (exact/near) | leaks flagged |")
    print("|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    for r in out["runs"]:
        rep = r["report"]
        dropped = rep["dedup"]["dropped"]
        print(f"| {r['rows']:,} | {r['wall_s']:.1f} | {r.get('cpu_s', float('nan')):.0f} | {r['rows'] / r['wall_s']:,.0f} | {r['peak_rss_gb']:.2f} | "
              f"{r['metrics']['precision']:.3f} | {r['metrics']['near_recall']:.3f} | "
              f"{dropped.get('exact', 0):,}/{dropped.get('near', 0):,} | "
              f"{sum(rep['decontam']['contaminated'].values()):,} |")
    for previous, current in zip(out["baseline_runs"], out["runs"]):
        print(f"{current['rows']:,} rows: current defaults at {previous['wall_s'] / current['wall_s']:.2f}x the "
              f"throughput of the previous defaults by wall time, {previous['cpu_s'] / current['cpu_s']:.2f}x by CPU "
              f"time (same run); near recall {previous['metrics']['near_recall']:.3f}"
              f" -> {current['metrics']['near_recall']:.3f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2))
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
