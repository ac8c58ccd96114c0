"""Benchmark decontamination: word n-gram overlap and exact problem match.

:class:`BenchmarkIndex` holds the word n-grams (default n = 13, the GPT-3 convention) of
every benchmark item's text fields (problem, solution, HumanEval prompt and canonical
solution, …) and the exact keys of its problem fields. A text is contaminated when

* its normalised text equals a benchmark problem (kind ``"exact"``), or
* it shares at least one word n-gram with a benchmark item (kind ``"ngram"``).
  Benchmark fields shorter than n words (but at least ``min_words``) count as one
  n-gram of their own length, so a short MATH problem pasted into a prompt is still
  found; shorter ones are caught by the exact match only.

Words are those of :func:`verifiers.dedup.tokenize_batch` (NFKC, casefold, punctuation
dropped), so case, spacing and punctuation edits do not hide a leak. Matching is done
on 64-bit n-gram hashes for whole batches with numpy (a bitmap pre-filter, then a
binary search of the few candidates); the matched n-gram's text is recovered from the
benchmark side for the report.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import pyarrow.compute as pc

from .dedup import (_PUNCT_TOKEN, TokenBatch, _exact_keys, _NGRAM_MULT, _token_lists, ngram_hashes,
                    resolve_workers, tokenize_batch)

__all__ = ["BenchmarkIndex", "Contamination", "DEFAULT_EXACT_FIELDS", "DEFAULT_TEXT_FIELDS"]

log = logging.getLogger(__name__)

ContaminationKind = Literal["exact", "ngram"]

DEFAULT_TEXT_FIELDS = ("problem", "question", "prompt", "solution", "canonical_solution")
DEFAULT_EXACT_FIELDS = ("problem", "question", "prompt")
ID_FIELDS = ("id", "task_id", "unique_id")
_BITMAP_BITS = 24        # 16 MiB of bools: ~2% false hits at 300K n-grams, all re-checked exactly
_SHORT_BITMAP_BITS = 16  # short whole fields are few: a 64 KiB table stays in cache
_CHECK_BATCH = 2_000


@dataclass(frozen=True, slots=True)
class Contamination:
    """Why a text is considered leaked.

    benchmark: benchmark name (file stem, e.g. ``"gsm8k_test"``).
    item_id:   the benchmark item's id.
    kind:      "exact" (normalised text equals a benchmark problem) or "ngram".
    ngram:     the matched words (the whole problem for "exact").
    n:         n-gram length of the index (shorter when a short benchmark field matched whole).
    matches:   how many of the text's n-grams are in the index (0 for "exact").
    """

    benchmark: str
    item_id: str
    kind: ContaminationKind
    ngram: str
    n: int
    matches: int = 0


@dataclass(frozen=True)
class _Entry:
    benchmark: str
    item_id: str
    field: str


def _read_rows(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if path.suffix in (".jsonl", ".json"):
        with path.open(encoding="utf-8") as fh:
            return [json.loads(line) for line in fh if line.strip()]
    raise ValueError(f"paths: expected .jsonl or .parquet benchmark files, got {str(path)!r}")


def _item_id(row: dict[str, Any], line: int) -> str:
    for key in ID_FIELDS:
        if row.get(key) is not None:
            return str(row[key])
    return str(line)


class BenchmarkIndex:
    """Word n-grams and exact problem keys of a set of benchmark files (immutable once built)."""

    def __init__(self, n: int, entries: list[_Entry], words: list[list[str]], ngram_hashes_: np.ndarray,
                 ngram_entry: np.ndarray, ngram_pos: np.ndarray, ngram_len: np.ndarray,
                 exact: dict[tuple[int, int], int]) -> None:
        order = np.argsort(ngram_hashes_, kind="stable")
        self.n = n
        self._entries = entries
        self._words = words
        self._hashes = ngram_hashes_[order]
        self._entry = ngram_entry[order]
        self._pos = ngram_pos[order]
        self._len = ngram_len[order]
        self._lengths = sorted({int(x) for x in np.unique(ngram_len)})   # n, plus short whole fields
        self._exact = exact
        # Pre-filters: one for full n-grams, a small one per shorter length (short whole fields).
        full = self._len == n
        self._bitmap = np.zeros(1 << _BITMAP_BITS, bool)
        self._bitmap[self._hashes[full] >> np.uint64(64 - _BITMAP_BITS)] = True
        self._short_bitmap = np.zeros(1 << _SHORT_BITMAP_BITS, bool)
        self._short_bitmap[self._hashes[~full] >> np.uint64(64 - _SHORT_BITMAP_BITS)] = True

    # -------------------------------------------------------------- building
    @classmethod
    def from_files(cls, paths: Sequence[Path | str], *, n: int = 13,
                   text_fields: Sequence[str] = DEFAULT_TEXT_FIELDS,
                   exact_fields: Sequence[str] = DEFAULT_EXACT_FIELDS, min_words: int = 5) -> BenchmarkIndex:
        """Index JSONL/Parquet benchmark files; the benchmark name is each file's stem."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n: expected an integer >= 1, got {n!r}")
        if isinstance(min_words, bool) or not isinstance(min_words, int) or min_words < 1:
            raise ValueError(f"min_words: expected an integer >= 1, got {min_words!r}")
        if not paths:
            raise ValueError("paths: expected at least one benchmark file, got none")
        entries: list[_Entry] = []
        texts: list[str] = []
        exact_texts: list[tuple[int, str]] = []
        for raw in paths:
            path = Path(raw)
            if not path.is_file():
                raise ValueError(f"paths: expected an existing benchmark file, got {str(path)!r}")
            for line, row in enumerate(_read_rows(path)):
                item_id = _item_id(row, line)
                for fname in text_fields:
                    value = row.get(fname)
                    if isinstance(value, str) and value.strip():
                        entries.append(_Entry(path.stem, item_id, fname))
                        texts.append(value)
                        if fname in exact_fields:
                            exact_texts.append((len(entries) - 1, value))
        if not entries:
            raise ValueError(f"text_fields: expected benchmark rows with one of {list(text_fields)}, found none")
        return cls._build(n, entries, texts, exact_texts, min_words)

    @classmethod
    def from_dir(cls, directory: Path | str, *, n: int = 13, **kwargs: Any) -> BenchmarkIndex:
        """Every ``*.jsonl`` / ``*.parquet`` file in ``directory`` (e.g. the shipped benchmarks)."""
        directory = Path(directory)
        files = sorted(p for p in directory.glob("*") if p.suffix in (".jsonl", ".parquet"))
        if not files:
            raise ValueError(f"directory: expected benchmark .jsonl/.parquet files in it, got {str(directory)!r}")
        return cls.from_files(files, n=n, **kwargs)

    @classmethod
    def _build(cls, n: int, entries: list[_Entry], texts: list[str], exact_texts: list[tuple[int, str]],
               min_words: int) -> BenchmarkIndex:
        word_lists = _word_lists(texts)
        batch = tokenize_batch(texts)
        units, offsets = batch.words()
        # Raw polynomial values: the check's rolling pass then needs no mixing step per length.
        hashes, entry = ngram_hashes(units, offsets, n, whole_if_shorter=True, min_len=min_words, mix=False)
        lengths = np.diff(offsets)
        pos = _positions_in_doc(entry)
        ngram_len = np.minimum(lengths[entry], n)
        exact: dict[tuple[int, int], int] = {}
        if exact_texts:
            keys = _exact_keys(tokenize_batch([t for _, t in exact_texts]))
            for (entry_index, _), key in zip(exact_texts, keys):
                exact.setdefault((int(key[0]), int(key[1])), entry_index)
        log.info("benchmark index: %d fields, %d n-grams (n=%d), %d exact keys", len(entries), len(hashes), n,
                 len(exact))
        return cls(n, entries, word_lists, hashes, entry, pos, ngram_len, exact)

    # -------------------------------------------------------------- queries
    @property
    def benchmarks(self) -> list[str]:
        return sorted({e.benchmark for e in self._entries})

    def __len__(self) -> int:
        return len(self._hashes)

    def check(self, text: str) -> Contamination | None:
        return self.check_tokens(tokenize_batch([text]))[0]

    def check_batch(self, texts: Sequence[str | None], workers: int | None = None) -> list[Contamination | None]:
        """:meth:`check` for many texts; several processes (each gets a copy of the index) when it pays."""
        batches = [list(texts[s:s + _CHECK_BATCH]) for s in range(0, len(texts), _CHECK_BATCH)]
        n_workers = resolve_workers(workers, len(batches))
        if n_workers <= 1:
            return [c for b in batches for c in self.check_tokens(tokenize_batch(b))]
        with ProcessPoolExecutor(n_workers, mp_context=get_context("spawn"), initializer=_init_worker,
                                 initargs=(self,)) as pool:
            return [c for part in pool.map(_check_task, batches) for c in part]

    def check_tokens(self, batch: TokenBatch) -> list[Contamination | None]:
        """Contamination of every document of an already tokenised batch (None = clean)."""
        n_docs = len(batch)
        found: list[Contamination | None] = [None] * n_docs
        keys = _exact_keys(batch)
        for d in range(n_docs):
            hit = self._exact.get((int(keys[d, 0]), int(keys[d, 1])))
            if hit is not None:
                entry = self._entries[hit]
                found[d] = Contamination(entry.benchmark, entry.item_id, "exact", " ".join(self._words[hit]),
                                         len(self._words[hit]))
        units, offsets = batch.words()
        for doc, idx, count in self._ngram_hits(units, offsets):
            if found[doc] is None:
                entry_i, pos, length = int(self._entry[idx]), int(self._pos[idx]), int(self._len[idx])
                entry = self._entries[entry_i]
                ngram = " ".join(self._words[entry_i][pos:pos + length])
                found[doc] = Contamination(entry.benchmark, entry.item_id, "ngram", ngram, length, count)
        return found

    def _ngram_hits(self, units: np.ndarray, offsets: np.ndarray) -> list[tuple[int, int, int]]:
        """(doc, index entry of its first matching n-gram, number of matches) for docs with a match."""
        lengths = np.diff(offsets)
        total = len(units)
        pos = np.arange(total, dtype=np.int64) - np.repeat(offsets[:-1], lengths)
        remaining = np.repeat(lengths, lengths) - pos               # words from here to the doc's end
        doc_of = np.repeat(np.arange(len(lengths)), lengths)
        hit_docs: list[np.ndarray] = []
        hit_idx: list[np.ndarray] = []
        h = units.astype(np.uint64, copy=True)
        shift = np.uint64(64 - _BITMAP_BITS)
        short_shift = np.uint64(64 - _SHORT_BITMAP_BITS)
        # One rolling pass up to n; the prefixes of lengths < n are the short benchmark fields' keys.
        # Positions whose window runs past the document end hold garbage; they are dropped only
        # for the rare bitmap candidates, which keeps every full-array step to one gather.
        with np.errstate(over="ignore"):
            for length in range(1, min(self.n, total) + 1):
                if length > 1:
                    h[: total - length + 1] *= _NGRAM_MULT
                    h[: total - length + 1] += units[length - 1:]
                if length not in self._lengths:
                    continue
                if length == self.n:
                    starts = np.flatnonzero(self._bitmap[h[: total - length + 1] >> shift])
                else:
                    starts = np.flatnonzero(self._short_bitmap[h[: total - length + 1] >> short_shift])
                starts = starts[remaining[starts] >= length]
                values = h[starts]
                at = np.searchsorted(self._hashes, values)
                at_ok = at < len(self._hashes)
                match = np.zeros(len(values), bool)
                match[at_ok] = self._hashes[at[at_ok]] == values[at_ok]
                # A short field's key must match a short field (its length), not an n-gram by chance.
                match[match] &= self._len[at[match]] == length
                hit_docs.append(doc_of[starts[match]])
                hit_idx.append(at[match])
        if not hit_docs:
            return []
        docs = np.concatenate(hit_docs)
        idx = np.concatenate(hit_idx)
        if not len(docs):
            return []
        order = np.argsort(docs, kind="stable")
        docs, idx = docs[order], idx[order]
        uniq, first, counts = np.unique(docs, return_index=True, return_counts=True)
        return list(zip(uniq.tolist(), idx[first].tolist(), counts.tolist()))


def _word_lists(texts: list[str]) -> list[list[str]]:
    """The word tokens of each text as strings, classified exactly as :func:`tokenize_batch` does."""
    lists = _token_lists(texts)
    flat = pc.list_flatten(lists)
    is_word = pc.invert(pc.match_substring_regex(flat, _PUNCT_TOKEN)).to_numpy(zero_copy_only=False)
    is_word &= pc.binary_length(flat).to_numpy(zero_copy_only=False) > 0
    tokens = flat.to_pylist()
    bounds = np.concatenate([[0], np.cumsum(pc.list_value_length(lists).to_numpy(zero_copy_only=False))])
    return [[t for t, w in zip(tokens[a:b], is_word[a:b]) if w] for a, b in zip(bounds[:-1], bounds[1:])]


def _positions_in_doc(doc_index: np.ndarray) -> np.ndarray:
    """Position of each n-gram within its document (``doc_index`` is sorted)."""
    if not len(doc_index):
        return np.zeros(0, np.int64)
    starts = np.flatnonzero(np.concatenate([[True], doc_index[1:] != doc_index[:-1]]))
    run_start = np.repeat(starts, np.diff(np.concatenate([starts, [len(doc_index)]])))
    return np.arange(len(doc_index)) - run_start


_WORKER_INDEX: list[BenchmarkIndex] = []   # per worker process, set once by the pool initializer


def _init_worker(index: BenchmarkIndex) -> None:
    _WORKER_INDEX.append(index)


def _check_task(texts: list[str | None]) -> list[Contamination | None]:
    return _WORKER_INDEX[0].check_tokens(tokenize_batch(texts))
