"""Exact and near-duplicate detection (normalised hash + MinHash/LSH) for large sample sets.

Three layers, each usable on its own:

* **Text → tokens** (:func:`tokenize_batch`): NFKC, casefold, then words (runs of letters,
  digits and ``_``; each CJK character is a word of its own) and punctuation/symbol
  characters as separate tokens, runs of the same punctuation character collapsed.
  Every token is hashed once (xxh3-64); the heavy lifting runs in Arrow's C++ kernels
  and numpy, never in a per-token Python loop.
* **Tokens → keys** (:func:`sketch_batch`): the exact key (a 128-bit hash of the token
  sequence, so ``"2 + 3"`` and ``"2+3 "`` match but ``2+3`` and ``2-3`` do not) and a
  MinHash signature over word (or character) n-gram shingles. Signatures are
  bit-for-bit those of ``datasketch.MinHash(num_perm, seed)`` (default ``affine32``
  scheme) fed the same shingles with ``hashfunc=shingle_hash32``, computed for a whole
  batch at once in numpy (``a*h+b`` in uint32, per-document ``minimum.reduceat``).
* **Keys → verdicts** (:class:`Deduplicator`): exact groups, LSH banding over the
  signatures (band hash → bucket; colliding pairs are verified by their estimated
  Jaccard), union-find clusters, and a deterministic keeper per cluster: the lowest
  ``rank`` (the caller passes e.g. ``(not passed_verifiers, len(text), sample_id)``),
  then the lowest id. Items of a ``reference`` set (already curated data) always win
  and are never reported; whatever they absorb is dropped as ``"reference"``.

:func:`deduplicate` ties the three together for an in-memory list, computing
signatures in worker processes for large inputs.
"""

from __future__ import annotations

import json
import logging
import os
import unicodedata
import uuid
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import xxhash

__all__ = [
    "DedupItem", "DedupParams", "DedupVerdict", "Deduplicator", "Sketch", "TokenBatch",
    "deduplicate", "exact_key", "lsh_bands", "minhash_permutations", "ngram_hashes", "pair_thresholds",
    "normalize_text", "shingle_hash32", "sketch_batch", "sketch_tokens", "tokenize_batch",
]

log = logging.getLogger(__name__)

DedupKind = Literal["unique", "exact", "near", "reference"]
ShingleKind = Literal["word", "char"]

# Measured with benchmarks/bench_dedup.py (verifiers/README.md, "Near duplicates"): word
# bigrams at 0.3 find 20%-word-edited copies of 100-200-word GSM8K documents (unigrams at 0.7
# found 0%) and every planted copy of the 4k-character R1 corpus, at precision >= 0.99 on both.
DEFAULT_WORD_NGRAM = 2
DEFAULT_CHAR_NGRAM = 5
DEFAULT_THRESHOLD = 0.3
# Short texts share a larger share of their shingles by chance ("The answer is 5." vs "... 7."),
# so a pair whose shorter text has fewer than SHORT_TEXT_SHINGLES shingles must reach a higher
# estimated Jaccard: threshold * sqrt(SHORT_TEXT_SHINGLES / n), capped at SHORT_TEXT_MAX_THRESHOLD.
SHORT_TEXT_SHINGLES = 100
SHORT_TEXT_MAX_THRESHOLD = 0.9
SKETCH_BATCH = 2_000   # documents per worker task: big enough to amortise numpy/Arrow calls

# Punctuation/symbols and CJK characters become tokens of their own (RE2 syntax).
_SPLIT_PATTERN = r"([^\pL\pN_\s]|[\p{Han}\p{Hiragana}\p{Katakana}])"
_PUNCT_TOKEN = r"^[^\pL\pN_]$"
# Arrow's Unicode whitespace (utf8_split_whitespace's set: ASCII \t-\r, \x1c-\x1f, space, U+0085, Z*).
_WHITESPACE = r"[\s\x{0B}\x{1C}-\x{1F}\x{85}\p{Z}]+"

_M64 = 0xFFFFFFFFFFFFFFFF
# Odd multipliers of the polynomial hashes; any odd constants work, these are fixed forever
# because exact keys and shingle hashes are stored across runs.
_NGRAM_MULT = np.uint64(0x9E3779B97F4A7C15)
_KEY_MULT_LO = np.uint64(0xC2B2AE3D27D4EB4F)
_KEY_MULT_HI = np.uint64(0x165667B19E3779F9)
_EMPTY_SIG = np.uint32(0xFFFFFFFF)


# ------------------------------------------------------------------------ hashing helpers

def _fmix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser: an avalanching bijection (polynomial hashes have weak low bits)."""
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xFF51AFD7ED558CCD)
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xC4CEB9FE1A85EC53)
    return h ^ (h >> np.uint64(33))


def _fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finaliser, as datasketch's affine32 scheme applies it to every input hash."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def _py_fmix64(h: int) -> int:
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & _M64
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) & _M64
    return h ^ (h >> 33)


def token_hash(token: str) -> int:
    """The 64-bit hash of one token (what :func:`tokenize_batch` stores)."""
    return xxhash.xxh3_64_intdigest(token.encode("utf-8"))


def _py_ngram_hash(unit_hashes: Sequence[int], mix: bool = True) -> int:
    h = 0
    for u in unit_hashes:
        h = (h * int(_NGRAM_MULT) + u) & _M64
    return _py_fmix64(h) if mix else h


def shingle_hash32(shingle: bytes | str) -> int:
    """Reference 32-bit hash of one word shingle (words joined by single spaces).

    Pass it as ``hashfunc`` to ``datasketch.MinHash`` and update with the same shingles to
    get exactly the signatures :func:`sketch_batch` computes in bulk.
    """
    text = shingle.decode("utf-8") if isinstance(shingle, bytes) else shingle
    return _py_ngram_hash([token_hash(w) for w in text.split(" ")]) >> 32


# ------------------------------------------------------------------------ tokenisation

@dataclass(frozen=True)
class TokenBatch:
    """Tokens of a batch of documents, concatenated.

    token_hashes: uint64 xxh3 hash of every token, documents back to back.
    is_word:      True for word tokens, False for punctuation/symbol tokens.
    offsets:      int64, length n_docs + 1; document i is ``[offsets[i], offsets[i+1])``.
    """

    token_hashes: np.ndarray
    is_word: np.ndarray
    offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def words(self) -> tuple[np.ndarray, np.ndarray]:
        """Word tokens only (hashes, offsets): the units of word shingles and n-grams."""
        offsets = _offsets_from_counts(_segment_counts(self.is_word, self.offsets))
        return self.token_hashes[self.is_word], offsets

    @staticmethod
    def concat_per_doc(parts: Sequence[TokenBatch]) -> TokenBatch:
        """Document i of the result = document i of parts[0], then of parts[1], … (multi-field text)."""
        if len(parts) == 1:
            return parts[0]
        n_docs = len(parts[0])
        lengths = np.stack([np.diff(p.offsets) for p in parts], axis=1)          # (docs, parts)
        offsets = _offsets_from_counts(lengths.sum(axis=1))
        # Each part's tokens go to the slot that follows the earlier parts of the same document.
        hashes = np.empty(int(offsets[-1]), np.uint64)
        is_word = np.empty(int(offsets[-1]), bool)
        before = np.concatenate([np.zeros((n_docs, 1), np.int64), np.cumsum(lengths, axis=1)[:, :-1]], axis=1)
        for k, part in enumerate(parts):
            doc_of_token = np.repeat(np.arange(n_docs), lengths[:, k])
            pos = np.arange(len(part.token_hashes)) - np.repeat(part.offsets[:-1], lengths[:, k])
            dest = offsets[doc_of_token] + before[doc_of_token, k] + pos
            hashes[dest] = part.token_hashes
            is_word[dest] = part.is_word
        return TokenBatch(hashes, is_word, offsets)


def _segment_counts(mask: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Number of True entries of ``mask`` in each segment of ``offsets``."""
    cum = np.concatenate([[0], np.cumsum(mask, dtype=np.int64)])
    return cum[offsets[1:]] - cum[offsets[:-1]]


def _offsets_from_counts(counts: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).astype(np.int64)


def _casefolded(texts: Iterable[str | None]) -> list[str]:
    return [unicodedata.normalize("NFKC", t).casefold() if t else "" for t in texts]


def _token_lists(texts: Iterable[str | None]) -> pa.ListArray:
    spaced = pc.replace_substring_regex(pa.array(_casefolded(texts), pa.large_string()),
                                        _SPLIT_PATTERN, r" \1 ")
    # Not pc.utf8_split_whitespace: in pyarrow 26 it sometimes leaves the whitespace at the very
    # end of the array's data unsplit (the last text of a batch got a token ". " instead of "."
    # now and then, so its keys depended on the batch it was in). The same Unicode whitespace
    # set as that kernel, by RE2; the empty tokens at either end are dropped by the callers.
    return pc.split_pattern_regex(spaced, _WHITESPACE)


def tokenize_batch(texts: Sequence[str | None]) -> TokenBatch:
    """Normalise and tokenise many documents at once (None counts as empty text)."""
    lists = _token_lists(texts)
    flat = pc.list_flatten(lists)
    lengths = pc.list_value_length(lists).to_numpy(zero_copy_only=False).astype(np.int64)
    encoded = flat.dictionary_encode()
    dictionary = encoded.dictionary
    dict_hashes = np.fromiter((token_hash(t) for t in dictionary.to_pylist()), np.uint64, len(dictionary))
    dict_punct = pc.match_substring_regex(dictionary, _PUNCT_TOKEN).to_numpy(zero_copy_only=False)
    dict_empty = (pc.binary_length(dictionary).to_numpy(zero_copy_only=False) == 0)
    ids = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    offsets = _offsets_from_counts(lengths)

    # Collapse runs of the same punctuation character ("?!!" == "?!") and drop empty tokens.
    doc_start = np.zeros(len(ids), bool)
    doc_start[offsets[:-1][lengths > 0]] = True
    repeat = np.zeros(len(ids), bool)
    repeat[1:] = ids[1:] == ids[:-1]
    drop = dict_empty[ids] | (dict_punct[ids] & repeat & ~doc_start)
    keep = ~drop
    return TokenBatch(dict_hashes[ids[keep]], ~dict_punct[ids[keep]], _offsets_from_counts(_segment_counts(keep, offsets)))


def normalize_text(text: str) -> str:
    """NFKC + casefold; words and punctuation separated by single spaces, punctuation runs collapsed.

    Punctuation is kept (``2+3`` and ``2-3`` are different problems), only its spacing and
    repetition are normalised: ``"What is 2 + 3?!!"`` → ``"what is 2 + 3 ? !"``.
    """
    tokens = [t for t in _token_lists([text])[0].as_py() if t]
    out: list[str] = []
    for tok in tokens:
        is_punct = len(tok) == 1 and not (tok.isalnum() or tok == "_")
        if is_punct and out and out[-1] == tok:
            continue
        out.append(tok)
    return " ".join(out)


def _exact_keys(batch: TokenBatch) -> np.ndarray:
    """(n_docs, 2) uint64: two position-weighted polynomial sums of the token hashes, mixed."""
    n = len(batch)
    lengths = np.diff(batch.offsets)
    keys = np.zeros((n, 2), np.uint64)
    if len(batch.token_hashes):
        pos = np.arange(len(batch.token_hashes), dtype=np.int64) - np.repeat(batch.offsets[:-1], lengths)
        max_len = int(lengths.max())
        with np.errstate(over="ignore"):
            for col, mult in enumerate((_KEY_MULT_LO, _KEY_MULT_HI)):
                powers = np.cumprod(np.full(max_len, mult, np.uint64), dtype=np.uint64)
                weighted = batch.token_hashes * powers[pos]
                nonempty = lengths > 0
                keys[nonempty, col] = np.add.reduceat(weighted, batch.offsets[:-1][nonempty])
    with np.errstate(over="ignore"):
        keys[:, 0] = _fmix64(keys[:, 0] + lengths.astype(np.uint64))
        keys[:, 1] = _fmix64(keys[:, 1] ^ lengths.astype(np.uint64))
    return keys


def _key_hex(key: np.ndarray) -> str:
    return f"{int(key[1]):016x}{int(key[0]):016x}"


def exact_key(text: str) -> str:
    """Hex digest of the normalised text (equal iff :func:`normalize_text` outputs are equal)."""
    return _key_hex(_exact_keys(tokenize_batch([text]))[0])


def exact_keys(texts: Sequence[str | None]) -> list[str]:
    """:func:`exact_key` for many texts in one vectorised pass."""
    return [_key_hex(k) for k in _exact_keys(tokenize_batch(texts))]


# ------------------------------------------------------------------------ shingles and MinHash

def ngram_hashes(units: np.ndarray, offsets: np.ndarray, n: int, *, whole_if_shorter: bool = True,
                 min_len: int = 1, mix: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Mixed 64-bit hashes of every contiguous n-gram of ``units`` within each document.

    A document with ``min_len <= len < n`` units contributes one hash of its whole sequence
    when ``whole_if_shorter`` (the usual convention for short texts). Returns
    ``(hashes, doc_index)`` in document order. ``mix=False`` returns the raw polynomial
    values (the rolling pass of :class:`verifiers.decontam.BenchmarkIndex` compares those).
    """
    finish = _fmix64 if mix else (lambda x: x)
    lengths = np.diff(offsets)
    total = len(units)
    h = units.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        for j in range(1, n):
            h[: total - j] = h[: total - j] * _NGRAM_MULT + units[j:]
    pos = np.arange(total, dtype=np.int64) - np.repeat(offsets[:-1], lengths)
    doc = np.repeat(np.arange(len(lengths)), lengths)
    valid = pos <= (np.repeat(lengths, lengths) - n)
    hashes, docs = h[valid], doc[valid]
    if whole_if_shorter:
        short = np.flatnonzero((lengths >= min_len) & (lengths < n) & (lengths > 0))
        if len(short):
            extra = np.fromiter((_py_ngram_hash(units[offsets[d]:offsets[d + 1]].tolist(), mix) for d in short),
                                np.uint64, len(short))
            hashes = np.concatenate([finish(hashes), extra])
            docs = np.concatenate([docs, short])
            order = np.argsort(docs, kind="stable")
            return hashes[order], docs[order]
    return finish(hashes), docs


def _char_units(texts: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray]:
    """Code points of each normalised text with punctuation dropped and spaces collapsed."""
    words_only = pc.utf8_trim_whitespace(pc.replace_substring_regex(
        pa.array(_casefolded(texts), pa.large_string()), r"[^\pL\pN_]+", " "))
    strings = words_only.to_pylist()
    lengths = np.fromiter((len(s) for s in strings), np.int64, len(strings))
    code_points = np.frombuffer("".join(strings).encode("utf-32-le"), np.uint32).astype(np.uint64)
    return _fmix64(code_points + np.uint64(0x51ED27)), _offsets_from_counts(lengths)


def minhash_permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's affine32 permutation parameters (a, b), uint32, taken from datasketch itself."""
    from datasketch import MinHash

    perms = MinHash(num_perm=num_perm, seed=seed, scheme="affine32").permutations
    return np.asarray(perms[0], np.uint32), np.asarray(perms[1], np.uint32)


def _signatures(hv32: np.ndarray, doc_index: np.ndarray, n_docs: int, a: np.ndarray, b: np.ndarray,
                chunk_shingles: int = 16_384) -> np.ndarray:
    """(n_docs, num_perm) uint32 MinHash signatures; documents without shingles stay all-0xFFFFFFFF."""
    sigs = np.full((len(a), n_docs), _EMPTY_SIG, np.uint32)       # permutation-major: contiguous reduceat
    x = _fmix32(hv32)
    counts = np.bincount(doc_index, minlength=n_docs)
    starts = _offsets_from_counts(counts)
    docs_with = np.flatnonzero(counts)
    # Chunks of whole documents, about chunk_shingles wide, so the (perm × shingle) block stays in cache.
    lo = 0
    while lo < len(docs_with):
        begin = starts[docs_with[lo]]
        hi = int(np.searchsorted(starts[docs_with], begin + chunk_shingles, side="right"))
        hi = max(hi, lo + 1)
        chunk_docs = docs_with[lo:hi]
        end = starts[chunk_docs[-1] + 1]
        with np.errstate(over="ignore"):
            block = a[:, None] * x[None, begin:end]
            block += b[:, None]
        sigs[:, chunk_docs] = np.minimum.reduceat(block, starts[chunk_docs] - begin, axis=1)
        lo = hi
    return np.ascontiguousarray(sigs.T)


# ------------------------------------------------------------------------ parameters

@dataclass(frozen=True)
class DedupParams:
    """How duplicates are found (all of it is recorded with a run's verdicts).

    near:      also look for near-duplicates (MinHash + LSH), not only exact ones.
    num_perm:  MinHash permutations; more = tighter Jaccard estimate, linear cost.
    threshold: Jaccard similarity (estimated) at or above which two texts are near-duplicates;
               pairs of short texts must reach more (:func:`pair_thresholds`).
    shingle:   "word" (word n-grams) or "char" (character n-grams of the word text).
    ngram:     shingle length; None = the measured default of the shingle kind.
    seed:      permutation seed (datasketch's ``seed``); signatures change with it.
    short_text_shingles: pairs whose shorter text has fewer shingles than this must reach a
               higher Jaccard (:func:`pair_thresholds`); 0 = the same threshold for every pair.
    """

    near: bool = True
    num_perm: int = 128
    threshold: float = DEFAULT_THRESHOLD
    shingle: ShingleKind = "word"
    ngram: int | None = None
    seed: int = 1
    short_text_shingles: int = SHORT_TEXT_SHINGLES

    def validate(self) -> DedupParams:
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)) \
                or not 0 < self.threshold <= 1:
            raise ValueError(f"threshold: expected a number in (0, 1], got {self.threshold!r}")
        if isinstance(self.num_perm, bool) or not isinstance(self.num_perm, int) or self.num_perm < 16:
            raise ValueError(f"num_perm: expected an integer >= 16, got {self.num_perm!r}")
        if self.shingle not in ("word", "char"):
            raise ValueError(f"shingle: expected 'word' or 'char', got {self.shingle!r}")
        if self.ngram is not None and (isinstance(self.ngram, bool) or not isinstance(self.ngram, int)
                                       or self.ngram < 1):
            raise ValueError(f"ngram: expected an integer >= 1, got {self.ngram!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed: expected a non-negative integer, got {self.seed!r}")
        if isinstance(self.short_text_shingles, bool) or not isinstance(self.short_text_shingles, int) \
                or self.short_text_shingles < 0:
            raise ValueError(f"short_text_shingles: expected a non-negative integer, got {self.short_text_shingles!r}")
        return self

    @property
    def shingle_size(self) -> int:
        if self.ngram is not None:
            return self.ngram
        return DEFAULT_WORD_NGRAM if self.shingle == "word" else DEFAULT_CHAR_NGRAM


@dataclass(frozen=True)
class Sketch:
    """What deduplication needs to know about a batch of texts (small: ~530 bytes a text at 128 perms).

    exact_keys:  (n, 2) uint64, see :func:`exact_key`.
    signatures:  (n, num_perm) uint32 MinHash signatures (empty when ``near`` is off).
    shingles:    int64 number of shingle positions per text (0 = too short to compare).
    """

    exact_keys: np.ndarray
    signatures: np.ndarray
    shingles: np.ndarray


def sketch_tokens(batch: TokenBatch, params: DedupParams, *, texts: Sequence[str | None] | None = None,
                  perms: tuple[np.ndarray, np.ndarray] | None = None) -> Sketch:
    """Exact keys and signatures of an already tokenised batch (char shingles need ``texts``)."""
    n_docs = len(batch)
    keys = _exact_keys(batch)
    if not params.near:
        return Sketch(keys, np.zeros((n_docs, 0), np.uint32), np.zeros(n_docs, np.int64))
    if params.shingle == "word":
        units, offsets = batch.words()
    else:
        if texts is None:
            raise ValueError("texts: expected the raw texts for char shingles, got None")
        units, offsets = _char_units(texts)
    hashes, doc_index = ngram_hashes(units, offsets, params.shingle_size)
    a, b = perms if perms is not None else minhash_permutations(params.num_perm, params.seed)
    hv32 = (hashes >> np.uint64(32)).astype(np.uint32)
    sigs = _signatures(hv32, doc_index, n_docs, a, b)
    return Sketch(keys, sigs, np.bincount(doc_index, minlength=n_docs).astype(np.int64))


def sketch_batch(texts: Sequence[str | None], params: DedupParams = DedupParams()) -> Sketch:
    """Exact keys and MinHash signatures of a batch of texts (one vectorised pass)."""
    params.validate()
    return sketch_tokens(tokenize_batch(texts), params, texts=texts)


# ------------------------------------------------------------------------ LSH and clusters

def _fp_fn_probabilities(threshold: float, bands: int, rows: int) -> tuple[float, float]:
    """Areas under the LSH S-curve below/above the threshold (as datasketch's _optimal_param)."""
    lo = np.linspace(0.0, threshold, 201)
    hi = np.linspace(threshold, 1.0, 201)
    p_lo = 1 - (1 - lo ** rows) ** bands
    p_hi = 1 - (1 - hi ** rows) ** bands
    return float(np.trapezoid(p_lo, lo)), float(np.trapezoid(1 - p_hi, hi))


def lsh_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) minimising false positives + false negatives, like datasketch.MinHashLSH."""
    best, best_err = (1, num_perm), float("inf")
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            fp, fn = _fp_fn_probabilities(threshold, bands, rows)
            if fp + fn < best_err:
                best, best_err = (bands, rows), fp + fn
    return best


def _band_keys(sigs: np.ndarray, rows: int, band: int) -> np.ndarray:
    cols = sigs[:, band * rows:(band + 1) * rows].astype(np.uint64)
    mults = _fmix64(np.arange(1, rows + 1, dtype=np.uint64) * np.uint64(0x2545F4914F6CDD1D)) | np.uint64(1)
    with np.errstate(over="ignore"):
        return _fmix64((cols * mults[None, :]).sum(axis=1, dtype=np.uint64))


def _candidate_pairs(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(k, 2) int64 pairs that share at least one band bucket: each member paired with its
    bucket's first member and with its predecessor (cheap, covers every bucket connectedly).

    Not every pair of a bucket is compared, so which pairs are depends on the row order within
    a bucket (stable sort): callers pass rows in an order that is a function of their content."""
    found = [_bucket_pairs(_band_keys(sigs, rows, band)) for band in range(bands)]
    return _unique_pairs(found)


def _bucket_pairs(keys: np.ndarray) -> np.ndarray:
    """The pairs of one band: rows with equal ``keys``, each with its bucket's first and its predecessor."""
    order = np.argsort(keys, kind="stable")
    sk = keys[order]
    same = np.flatnonzero(sk[1:] == sk[:-1]) + 1          # positions continuing a bucket
    if not len(same):
        return np.zeros((0, 2), np.int64)
    new_bucket = np.ones(len(sk), bool)
    new_bucket[same] = False
    bucket_first = np.maximum.accumulate(np.where(new_bucket, np.arange(len(sk)), 0))
    return np.concatenate([np.stack([order[bucket_first[same]], order[same]], axis=1),
                           np.stack([order[same - 1], order[same]], axis=1)])


def _unique_pairs(found: Sequence[np.ndarray]) -> np.ndarray:
    found = [f for f in found if len(f)]
    if not found:
        return np.zeros((0, 2), np.int64)
    pairs = np.sort(np.concatenate(found), axis=1)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    return np.unique(pairs, axis=0)


def pair_thresholds(threshold: float, shorter_shingles: np.ndarray,
                    short_text_shingles: int = SHORT_TEXT_SHINGLES) -> np.ndarray:
    """The Jaccard a pair must reach, given the shingle count of its shorter text.

    ``threshold`` for texts of ``short_text_shingles`` shingles and more; higher for
    shorter texts (``threshold * sqrt(short_text_shingles / n)``, at most
    :data:`SHORT_TEXT_MAX_THRESHOLD` or ``threshold`` if that is higher), because chance
    overlap grows as texts get shorter. LSH candidates are drawn at ``threshold``.
    """
    n = np.maximum(shorter_shingles.astype(np.float64), 1.0)
    scaled = threshold * np.sqrt(max(short_text_shingles, 0) / n)
    return np.maximum(threshold, np.minimum(scaled, max(threshold, SHORT_TEXT_MAX_THRESHOLD)))


def _jaccard_estimates(sigs: np.ndarray, pairs: np.ndarray, chunk: int = 65_536) -> np.ndarray:
    out = np.empty(len(pairs), np.float64)
    for s in range(0, len(pairs), chunk):
        p = pairs[s:s + chunk]
        out[s:s + chunk] = (sigs[p[:, 0]] == sigs[p[:, 1]]).mean(axis=1)
    return out


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = np.arange(n, dtype=np.int64)

    def find(self, x: int) -> int:
        parent = self.parent
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return int(root)

    def union(self, x: int, y: int) -> None:
        rx, ry = self.find(x), self.find(y)
        if rx != ry:
            self.parent[max(rx, ry)] = min(rx, ry)

    def roots(self) -> np.ndarray:
        return np.fromiter((self.find(i) for i in range(len(self.parent))), np.int64, len(self.parent))


# ------------------------------------------------------------------------ public types

@dataclass(frozen=True, slots=True)
class DedupItem:
    """One text to deduplicate. Lower ``rank`` = better to keep (compared as tuples)."""

    id: str
    text: str
    rank: tuple = ()


@dataclass(frozen=True, slots=True)
class DedupVerdict:
    """Outcome for one item.

    kept:         False for every duplicate that lost to a better member of its cluster.
    kind:         "unique" (kept), "exact" (same normalised text as the keeper), "near"
                  (MinHash cluster), "reference" (duplicates already-curated data).
    cluster_id:   id of the cluster's keeper (a reference item's id for "reference"), so
                  ``GROUP BY cluster_id`` shows what was dropped for what; own id when alone.
    duplicate_of: the keeper's id for dropped items, else None.
    similarity:   estimated Jaccard with the keeper (1.0 for exact), None for kept items.
    cluster_size: members of the cluster in this call, reference items included.
    """

    id: str
    kept: bool
    kind: DedupKind
    cluster_id: str
    duplicate_of: str | None
    similarity: float | None
    cluster_size: int = 1


@dataclass
class Deduplicator:
    """Streaming deduplication: ``add`` sketches batch by batch, then ``resolve`` once.

    Memory is what the sketches take (~530 bytes a text at 128 permutations plus its id
    and rank); texts are never kept. With ``spill_dir`` and ``max_state_bytes``, state over
    that budget goes to a Parquet file in ``spill_dir`` (signatures, LSH band keys and ranks:
    ~830 bytes a text at 128 permutations) and memory keeps ~40 bytes a text (exact key,
    shingle count, reference flag, cluster arrays) plus the ids as Arrow strings. Resolving
    then reads one band-key column at a time and the signatures of candidate pairs in
    batches sized by the budget. The verdicts are the same either way.
    """

    params: DedupParams = field(default_factory=DedupParams)
    spill_dir: str | os.PathLike[str] | None = None
    max_state_bytes: int | None = None
    _ids: list[str] = field(default_factory=list, init=False)
    _ranks: list[tuple] = field(default_factory=list, init=False)
    _reference: list[np.ndarray] = field(default_factory=list, init=False)
    _keys: list[np.ndarray] = field(default_factory=list, init=False)
    _sigs: list[np.ndarray] = field(default_factory=list, init=False)
    _shingles: list[np.ndarray] = field(default_factory=list, init=False)
    _state_bytes: int = field(default=0, init=False)
    _spill: _StateSpill | None = field(default=None, init=False)
    _id_chunks: list[pa.Array] = field(default_factory=list, init=False)   # ids once spilled
    spilled_bytes: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.params.validate()

    def add(self, ids: Sequence[str], sketch: Sketch, ranks: Sequence[tuple] | None = None, *,
            reference: bool = False) -> None:
        if len(ids) != len(sketch.exact_keys):
            raise ValueError(f"ids: expected {len(sketch.exact_keys)} ids for the sketch, got {len(ids)}")
        ranks = list(ranks) if ranks is not None else [()] * len(ids)
        self._reference.append(np.full(len(ids), reference))
        self._keys.append(sketch.exact_keys)
        self._shingles.append(sketch.shingles)
        if self._spill is not None:
            self._id_chunks.append(pa.array([str(i) for i in ids], pa.string()))
            self._spill.append(sketch.signatures, ranks)
            return
        self._ids.extend(str(i) for i in ids)
        self._ranks.extend(ranks)
        self._sigs.append(sketch.signatures)
        self._state_bytes += (sketch.signatures.nbytes + sketch.exact_keys.nbytes + sketch.shingles.nbytes
                              + _ITEM_OVERHEAD * len(ids))
        if self.spill_dir is not None and self.max_state_bytes is not None \
                and self._state_bytes > self.max_state_bytes:
            self._start_spill()

    def __len__(self) -> int:
        return sum(len(k) for k in self._keys)

    @property
    def spilled(self) -> bool:
        return self._spill is not None

    def _start_spill(self) -> None:
        """Move signatures and ranks to Parquet; from here on `add` writes them there."""
        assert self.spill_dir is not None
        bands, rows = lsh_bands(self.params.threshold, self.params.num_perm) if self.params.near else (0, 0)
        self._spill = _StateSpill(Path(self.spill_dir), self.params.num_perm if self.params.near else 0, bands, rows)
        log.info("dedup state %.1f MB over its budget of %.1f MB: spilling signatures, band keys and ranks to %s",
                 self._state_bytes / 1e6, (self.max_state_bytes or 0) / 1e6, self._spill.path)
        start = 0
        for sigs in self._sigs:
            self._spill.append(sigs, self._ranks[start:start + len(sigs)])
            start += len(sigs)
        self._id_chunks = [pa.array(self._ids, pa.string())]
        self._ids, self._ranks, self._sigs = [], [], []

    def resolve(self) -> list[DedupVerdict]:
        """Verdicts for every non-reference item, in the order they were added."""
        return list(self.iter_resolve())

    def iter_resolve(self) -> Iterator[DedupVerdict]:
        """:meth:`resolve` one verdict at a time (a spilled run never holds them all).

        Finishes the spill file first, so that ``spilled_bytes`` is known before the first verdict."""
        if self._spill is not None:
            self.spilled_bytes = self._spill.close()
        return self._resolved()

    def _resolved(self) -> Iterator[DedupVerdict]:
        n = len(self)
        if n == 0:
            return
        is_ref = np.concatenate(self._reference)
        keys = np.concatenate(self._keys)
        uf = _UnionFind(n)
        exact_rep = self._merge_exact(keys, uf)
        if self._spill is None:
            sigs = np.concatenate(self._sigs) if self.params.near else None
            if sigs is not None:
                self._merge_near(sigs, np.concatenate(self._shingles), exact_rep, uf)
            yield from self._verdicts(uf.roots(), is_ref, keys, sigs)
            return
        try:
            if self.params.near:
                self._merge_near_spilled(np.concatenate(self._shingles), exact_rep, uf)
            yield from self._verdicts_spilled(uf.roots(), is_ref, keys)
        finally:
            self._spill.remove()

    def _merge_exact(self, keys: np.ndarray, uf: _UnionFind) -> np.ndarray:
        """Union items with equal exact keys; returns the indices of one item per key, in key order.

        Key order, not arrival order: :func:`_candidate_pairs` pairs bucket members by their
        position, so the representatives must come in an order that depends only on the texts
        (otherwise the clusters, keepers and exact/near kinds change with chunking and worker order).
        """
        _, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
        inverse = inverse.reshape(-1)
        rep_of = first[inverse]
        for i in np.flatnonzero(rep_of != np.arange(len(keys))):
            uf.union(int(i), int(rep_of[i]))
        return first

    def _merge_near(self, sigs: np.ndarray, shingles: np.ndarray, reps: np.ndarray, uf: _UnionFind) -> None:
        reps = reps[shingles[reps] > 0]        # texts without a shingle have no signature to compare
        if len(reps) < 2:
            return
        bands, rows = lsh_bands(self.params.threshold, self.params.num_perm)
        rep_sigs = sigs[reps]
        pairs = _candidate_pairs(rep_sigs, bands, rows)
        if not len(pairs):
            return
        rep_shingles = shingles[reps]
        shorter = np.minimum(rep_shingles[pairs[:, 0]], rep_shingles[pairs[:, 1]])
        similar = _jaccard_estimates(rep_sigs, pairs) >= pair_thresholds(self.params.threshold, shorter,
                                                                         self.params.short_text_shingles)
        log.debug("LSH: %d bands x %d rows, %d candidate pairs, %d verified", bands, rows, len(pairs),
                  int(similar.sum()))
        for i, j in reps[pairs[similar]]:
            uf.union(int(i), int(j))

    def _verdicts(self, roots: np.ndarray, is_ref: np.ndarray, keys: np.ndarray,
                  sigs: np.ndarray | None) -> list[DedupVerdict]:
        members: dict[int, list[int]] = {}
        for i, r in enumerate(roots.tolist()):
            members.setdefault(r, []).append(i)
        verdicts: list[DedupVerdict | None] = [None] * len(roots)
        for group in members.values():
            # Reference items first, then the caller's rank, then id, then arrival order.
            keeper = min(group, key=lambda i: (not is_ref[i], self._ranks[i], self._ids[i], i))
            keeper_id = self._ids[keeper]
            ref_cluster = bool(is_ref[keeper])
            for i in group:
                if is_ref[i]:
                    continue
                if i == keeper:
                    verdicts[i] = DedupVerdict(keeper_id, True, "unique", keeper_id, None, None, len(group))
                    continue
                same_text = bool((keys[i] == keys[keeper]).all())
                kind: DedupKind = "reference" if ref_cluster else ("exact" if same_text else "near")
                if same_text:
                    similarity = 1.0
                elif sigs is not None:
                    similarity = float((sigs[i] == sigs[keeper]).mean())
                else:
                    similarity = None
                verdicts[i] = DedupVerdict(self._ids[i], False, kind, keeper_id, keeper_id, similarity, len(group))
        return [v for v in verdicts if v is not None]


    def _pair_batch(self) -> int:
        """Candidate pairs whose signatures are read at once: a quarter of the state budget."""
        return max(16, (self.max_state_bytes or 0) // (8 * max(self.params.num_perm, 1) * 4))

    def _merge_near_spilled(self, shingles: np.ndarray, reps: np.ndarray, uf: _UnionFind) -> None:
        """:meth:`_merge_near` over the spill: one band-key column at a time, signatures by batch of pairs."""
        assert self._spill is not None
        reps = reps[shingles[reps] > 0]
        if len(reps) < 2:
            return
        pairs = np.zeros((0, 2), np.int64)
        for band in range(self._spill.bands):
            pairs = _unique_pairs([pairs, _bucket_pairs(self._spill.column(f"b{band}")[reps])])
        if not len(pairs):
            return
        rep_shingles = shingles[reps]
        need = pair_thresholds(self.params.threshold, np.minimum(rep_shingles[pairs[:, 0]], rep_shingles[pairs[:, 1]]),
                               self.params.short_text_shingles)
        similar = np.zeros(len(pairs), bool)
        step = self._pair_batch()
        for s in range(0, len(pairs), step):
            similar[s:s + step] = self._spill.jaccard(reps[pairs[s:s + step]]) >= need[s:s + step]
        log.debug("LSH (spilled): %d candidate pairs, %d verified", len(pairs), int(similar.sum()))
        for i, j in reps[pairs[similar]]:
            uf.union(int(i), int(j))

    def _verdicts_spilled(self, roots: np.ndarray, is_ref: np.ndarray, keys: np.ndarray) -> Iterator[DedupVerdict]:
        """:meth:`_verdicts` reading ranks and signatures of clustered items only."""
        assert self._spill is not None
        n = len(roots)
        sizes = np.bincount(roots, minlength=n)[roots]
        clustered = np.flatnonzero(sizes > 1)
        ids = pa.chunked_array(self._id_chunks, pa.string())
        clustered_ids = ids.take(pa.array(clustered)).to_pylist()
        ranks = [_as_tuple(json.loads(r)) for r in self._spill.take("rank", clustered).to_pylist()]
        members: dict[int, list[int]] = {}
        for k, root in enumerate(roots[clustered].tolist()):
            members.setdefault(root, []).append(k)
        keeper_of = np.arange(n)
        for group in members.values():
            best = min(group, key=lambda k: (not is_ref[clustered[k]], ranks[k], clustered_ids[k], int(clustered[k])))
            keeper_of[clustered[group]] = clustered[best]
        id_of = dict(zip(clustered.tolist(), clustered_ids))
        near = clustered[(keeper_of[clustered] != clustered) & (keys[clustered] != keys[keeper_of[clustered]]).any(axis=1)]
        similarity: dict[int, float] = {}
        if self.params.near and len(near):
            step = self._pair_batch()
            for s in range(0, len(near), step):
                part = near[s:s + step]
                found = self._spill.jaccard(np.stack([part, keeper_of[part]], axis=1))
                similarity.update(zip(part.tolist(), found.tolist()))
        i = 0
        for chunk in ids.chunks:
            for sid in chunk.to_pylist():
                if not is_ref[i]:
                    keeper = int(keeper_of[i])
                    if keeper == i:
                        yield DedupVerdict(sid, True, "unique", sid, None, None, int(sizes[i]))
                    else:
                        keeper_id = id_of[keeper]
                        same_text = bool((keys[i] == keys[keeper]).all())
                        kind: DedupKind = "reference" if is_ref[keeper] else ("exact" if same_text else "near")
                        value = 1.0 if same_text else similarity.get(i)
                        yield DedupVerdict(sid, False, kind, keeper_id, keeper_id, value, int(sizes[i]))
                i += 1


_ITEM_OVERHEAD = 200   # bytes an item's id and rank take as Python objects (what spilling them saves)


def _as_tuple(value: Any) -> Any:
    """A rank read back from JSON: lists become the tuples they were."""
    return tuple(_as_tuple(v) for v in value) if isinstance(value, list) else value


class _StateSpill:
    """A Deduplicator's signatures, LSH band keys and ranks in one Parquet file, a row group per ``add``."""

    def __init__(self, directory: Path, num_perm: int, bands: int, rows: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"dedup-state-{os.getpid()}-{uuid.uuid4().hex[:8]}.parquet"
        self.num_perm, self.bands, self.rows = num_perm, bands, rows
        fields = [pa.field("rank", pa.string())]
        if num_perm:
            fields.append(pa.field("sig", pa.binary(4 * num_perm)))
        fields += [pa.field(f"b{b}", pa.uint64()) for b in range(bands)]
        self.schema = pa.schema(fields)
        # Signatures and band keys are random bits: compressing them costs time and saves nothing.
        self._writer: pq.ParquetWriter | None = pq.ParquetWriter(self.path, self.schema, compression="none")
        self._starts = [0]
        self._file: pq.ParquetFile | None = None

    def append(self, sigs: np.ndarray, ranks: Sequence[tuple]) -> None:
        assert self._writer is not None
        if not len(ranks):
            return  # no empty row groups: row group g holds items _starts[g] to _starts[g + 1]
        columns: dict[str, Any] = {"rank": pa.array([json.dumps(r, default=str) for r in ranks], pa.string())}
        if self.num_perm:
            sigs = np.ascontiguousarray(sigs, np.uint32)
            columns["sig"] = pa.FixedSizeBinaryArray.from_buffers(pa.binary(4 * self.num_perm), len(sigs),
                                                                  [None, pa.py_buffer(sigs.tobytes())])
            for band in range(self.bands):
                columns[f"b{band}"] = _band_keys(sigs, self.rows, band)
        self._writer.write_table(pa.table(columns, schema=self.schema), row_group_size=max(len(ranks), 1))
        self._starts.append(self._starts[-1] + len(ranks))

    def close(self) -> int:
        """Finish writing; returns the file's size in bytes."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            self._file = pq.ParquetFile(self.path)
        return self.path.stat().st_size

    def remove(self) -> None:
        self._file = None
        self.path.unlink(missing_ok=True)

    def column(self, name: str) -> np.ndarray:
        """One band-key column of every item."""
        assert self._file is not None
        return self._file.read(columns=[name]).column(0).to_numpy()

    def take(self, name: str, positions: np.ndarray) -> pa.Array:
        """Column ``name`` at the sorted item ``positions``, reading only the row groups that hold them."""
        assert self._file is not None
        starts = np.asarray(self._starts)
        groups = np.searchsorted(starts, positions, side="right") - 1
        parts = []
        for group in np.unique(groups):
            wanted = positions[groups == group] - starts[group]
            column = self._file.read_row_group(int(group), columns=[name]).column(0)
            parts.append(column.take(pa.array(wanted)))
        return pa.concat_arrays([c for p in parts for c in p.chunks]) if parts else pa.array([], self.schema.field(name).type)

    def jaccard(self, pairs: np.ndarray) -> np.ndarray:
        """Estimated Jaccard of each (i, j) item pair from their spilled signatures."""
        wanted = np.unique(pairs.ravel())
        column = self.take("sig", wanted)
        sigs = np.frombuffer(column.buffers()[1], np.uint32)[
            column.offset * self.num_perm:(column.offset + len(column)) * self.num_perm].reshape(-1, self.num_perm)
        a, b = np.searchsorted(wanted, pairs[:, 0]), np.searchsorted(wanted, pairs[:, 1])
        return (sigs[a] == sigs[b]).mean(axis=1)


# ------------------------------------------------------------------------ one-call API

def _sketch_task(args: tuple[list[str | None], DedupParams]) -> Sketch:
    texts, params = args
    return sketch_batch(texts, params)


def resolve_workers(workers: int | None, n_batches: int) -> int:
    """Worker processes to use: None = all cores, never more than there are batches."""
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 0):
        raise ValueError(f"workers: expected a non-negative integer or None, got {workers!r}")
    wanted = (os.cpu_count() or 1) if workers is None else workers
    return max(1, min(wanted, n_batches))


def sketch_texts(texts: Sequence[str | None], params: DedupParams, *, workers: int | None = None,
                 batch_size: int = SKETCH_BATCH) -> Iterable[Sketch]:
    """Sketches of ``texts`` batch by batch, in order; several processes when it pays."""
    batches = [(list(texts[s:s + batch_size]), params) for s in range(0, len(texts), batch_size)]
    n_workers = resolve_workers(workers, len(batches))
    if n_workers <= 1:
        yield from map(_sketch_task, batches)
        return
    with ProcessPoolExecutor(n_workers, mp_context=get_context("spawn")) as pool:
        yield from pool.map(_sketch_task, batches)


def deduplicate(items: Sequence[DedupItem], *, near: bool = True, num_perm: int = 128,
                threshold: float = DEFAULT_THRESHOLD, shingle: str = "word", ngram: int | None = None,
                seed: int = 1, workers: int | None = None, reference: Sequence[DedupItem] = (),
                short_text_shingles: int = SHORT_TEXT_SHINGLES) -> list[DedupVerdict]:
    """Exact + near-duplicate verdicts for ``items`` (same order), against each other and ``reference``.

    ``ngram=None`` uses the measured default of the shingle kind (word: 2, char: 5).
    Bad parameters raise ``ValueError("<param>: expected …, got …")``.
    """
    params = DedupParams(near, num_perm, threshold, shingle, ngram, seed,  # type: ignore[arg-type]
                         short_text_shingles).validate()
    ids = [it.id for it in items]
    if len(set(ids)) != len(ids):
        raise ValueError("items: expected unique ids, got duplicates")
    dedup = Deduplicator(params)
    for source, is_ref in ((reference, True), (items, False)):
        start = 0
        for sketch in sketch_texts([it.text for it in source], params, workers=workers):
            chunk = source[start:start + len(sketch.exact_keys)]
            dedup.add([it.id for it in chunk], sketch, [tuple(it.rank) for it in chunk], reference=is_ref)
            start += len(chunk)
    return dedup.resolve()


def verdict_rows(verdicts: Iterable[DedupVerdict]) -> list[dict[str, Any]]:
    """Verdicts as plain dicts (one per row) for Arrow/JSON writers."""
    return [{"id": v.id, "kept": v.kept, "kind": v.kind, "cluster_id": v.cluster_id,
             "duplicate_of": v.duplicate_of, "similarity": v.similarity, "cluster_size": v.cluster_size}
            for v in verdicts]
