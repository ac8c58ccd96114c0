"""Benchmark decontamination: word n-gram overlap and exact problem match.

:class:`BenchmarkIndex` holds the word n-grams (default n = 13, the GPT-3 convention) of
every benchmark item's text fields (problem, solution, HumanEval prompt and canonical
solution, …) and the exact keys of its problem fields. A text is contaminated when

* its normalised text equals a benchmark problem (kind ``"exact"``), or
* it shares at least one word n-gram with a benchmark item (kind ``"ngram"``).
  Benchmark fields shorter than n words (but at least ``min_words``) count as one
  n-gram of their own length, so a short MATH problem pasted into a prompt is still
  found; shorter ones are caught by the exact match only.

As in GPT-3's decontamination, n is the cap, not the only length: each benchmark field
(e.g. MATH-500 ``problem``) uses n-grams of its 5th-percentile length in words, clamped
to ``[min_n, n]`` (``per_field_n=True``, the default). With n = 13 and min_n = 8 that
gives MATH-500 problems 9-grams (many are a formula and a dozen words, so one edited
word leaves no intact 13-gram) and keeps 13 for GSM8K, AIME, AMC and HumanEval prompts.

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
_MAX_BITMAP_BITS = 24    # 16 MiB of bools: ~2% false hits at 300K n-grams, all re-checked exactly
_MIN_BITMAP_BITS = 16    # lengths with few entries (short whole fields): a 64 KiB table stays in cache
_BITMAP_SLACK_BITS = 6   # ~1.5% of a length's table set: false hits stay rare
_FIELD_PERCENTILE = 5    # GPT-3: n per task = the 5th-percentile example length, capped at 13
_CHECK_BATCH = 2_000


@dataclass(frozen=True, slots=True)
class Contamination:
    """Why a text is considered leaked.

    benchmark: benchmark name (file stem, e.g. ``"gsm8k_test"``).
    item_id:   the benchmark item's id.
    kind:      "exact" (normalised text equals a benchmark problem) or "ngram".
    ngram:     the matched words (the whole problem for "exact").
    n:         length of the matched n-gram (the field's n, or a short field's own length).
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
                 exact: dict[tuple[int, int], int], field_n: dict[tuple[str, str], int] | None = None) -> None:
        order = np.argsort(ngram_hashes_, kind="stable")
        self.n = n
        self.field_n = dict(field_n or {})
        self._entries = entries
        self._words = words
        self._hashes = ngram_hashes_[order]
        self._entry = ngram_entry[order]
        self._pos = ngram_pos[order]
        self._len = ngram_len[order]
        self._lengths = sorted({int(x) for x in np.unique(ngram_len)})   # field n's, plus short whole fields
        self._exact = exact
        # Pre-filter per length, sized to its entries (short lengths have few: they stay in cache).
        self._bitmaps: dict[int, tuple[np.ndarray, np.uint64]] = {}
        for length in self._lengths:
            hashes = self._hashes[self._len == length]
            bits = int(np.clip(int(len(hashes)).bit_length() + _BITMAP_SLACK_BITS, _MIN_BITMAP_BITS,
                               _MAX_BITMAP_BITS))
            bitmap = np.zeros(1 << bits, bool)
            shift = np.uint64(64 - bits)
            bitmap[hashes >> shift] = True
            self._bitmaps[length] = (bitmap, shift)

    # -------------------------------------------------------------- building
    @classmethod
    def from_files(cls, paths: Sequence[Path | str], *, n: int = 13,
                   text_fields: Sequence[str] = DEFAULT_TEXT_FIELDS,
                   exact_fields: Sequence[str] = DEFAULT_EXACT_FIELDS, min_words: int = 5,
                   per_field_n: bool = True, min_n: int = 8) -> BenchmarkIndex:
        """Index JSONL/Parquet benchmark files; the benchmark name is each file's stem.

        ``n`` is the n-gram length, or with ``per_field_n`` its cap: each (benchmark, field)
        then uses its 5th-percentile length in words, clamped to ``[min(min_n, n), n]``.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n: expected an integer >= 1, got {n!r}")
        if isinstance(min_n, bool) or not isinstance(min_n, int) or min_n < 1:
            raise ValueError(f"min_n: expected an integer >= 1, got {min_n!r}")
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
        return cls._build(n, entries, texts, exact_texts, min_words, min(min_n, n) if per_field_n else n)

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
               min_words: int, min_n: int) -> BenchmarkIndex:
        word_lists = _word_lists(texts)
        lengths = np.array([len(w) for w in word_lists], np.int64)
        field_n = _field_ngram_lengths(entries, lengths, n, min_n)
        entry_n = np.array([field_n[(e.benchmark, e.field)] for e in entries], np.int64)
        parts_h, parts_e = [], []
        for length in sorted(set(entry_n.tolist())):
            members = np.flatnonzero(entry_n == length)
            units, offsets = tokenize_batch([texts[i] for i in members]).words()
            # Raw polynomial values: the check's rolling pass then needs no mixing step per length.
            hashes, local = ngram_hashes(units, offsets, length, whole_if_shorter=True, min_len=min_words,
                                         mix=False)
            parts_h.append(hashes)
            parts_e.append(members[local])
        hashes = np.concatenate(parts_h) if parts_h else np.zeros(0, np.uint64)
        entry = np.concatenate(parts_e) if parts_e else np.zeros(0, np.int64)
        by_entry = np.argsort(entry, kind="stable")      # _positions_in_doc needs entries in order
        hashes, entry = hashes[by_entry], entry[by_entry]
        pos = _positions_in_doc(entry)
        ngram_len = np.minimum(lengths[entry], entry_n[entry])
        exact: dict[tuple[int, int], int] = {}
        if exact_texts:
            keys = _exact_keys(tokenize_batch([t for _, t in exact_texts]))
            for (entry_index, _), key in zip(exact_texts, keys):
                exact.setdefault((int(key[0]), int(key[1])), entry_index)
        log.info("benchmark index: %d fields, %d n-grams (n=%s), %d exact keys", len(entries), len(hashes),
                 sorted(set(field_n.values())), len(exact))
        return cls(n, entries, word_lists, hashes, entry, pos, ngram_len, exact, field_n)

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
        longest = max(self._lengths, default=0)
        # One rolling pass up to the longest indexed length; each indexed length is checked on
        # the way. Positions whose window runs past the document end hold garbage; they are
        # dropped only for the rare bitmap candidates, which keeps every full-array step to one gather.
        with np.errstate(over="ignore"):
            for length in range(1, min(longest, total) + 1):
                if length > 1:
                    h[: total - length + 1] *= _NGRAM_MULT
                    h[: total - length + 1] += units[length - 1:]
                if length not in self._bitmaps:
                    continue
                bitmap, shift = self._bitmaps[length]
                starts = np.flatnonzero(bitmap[h[: total - length + 1] >> shift])
                starts = starts[remaining[starts] >= length]
                values = h[starts]
                at = np.searchsorted(self._hashes, values)
                at_ok = at < len(self._hashes)
                match = np.zeros(len(values), bool)
                match[at_ok] = self._hashes[at[at_ok]] == values[at_ok]
                # A hash must match an entry of this length, not one of another length by chance.
                match[match] &= self._len[at[match]] == length
                hit_docs.append(doc_of[starts[match]])
                hit_idx.append(at[match])
        if not hit_docs:
            return []
        docs = np.concatenate(hit_docs)
        idx = np.concatenate(hit_idx)
        if not len(docs):
            return []
        # Report the benchmark field with the most matching n-grams (ties: the longer n-gram,
        # then index order): a text can share a few generic 9-grams with one benchmark and
        # whole passages with another.
        entry = self._entry[idx]
        pairs, pair_first, pair_counts = np.unique(np.stack([docs, entry]), axis=1, return_index=True,
                                                   return_counts=True)
        pair_idx = idx[pair_first]
        order = np.lexsort((pair_idx, -self._len[pair_idx], -pair_counts, pairs[0]))
        pair_docs, pair_idx = pairs[0][order], pair_idx[order]
        uniq, first = np.unique(pair_docs, return_index=True)
        totals = np.bincount(np.searchsorted(uniq, docs), minlength=len(uniq))
        return list(zip(uniq.tolist(), pair_idx[first].tolist(), totals.tolist()))


def _field_ngram_lengths(entries: list[_Entry], lengths: np.ndarray, n: int, min_n: int
                         ) -> dict[tuple[str, str], int]:
    """n per (benchmark, field): its 5th-percentile length in words, clamped to [min_n, n]."""
    groups: dict[tuple[str, str], list[int]] = {}
    for i, entry in enumerate(entries):
        groups.setdefault((entry.benchmark, entry.field), []).append(i)
    if min_n >= n:
        return {key: n for key in groups}
    return {key: int(np.clip(int(np.percentile(lengths[idx], _FIELD_PERCENTILE)), min_n, n))
            for key, idx in groups.items()}


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
