"""Readability: length limits, code blocks where none belong, walls of text, runaway repetition.

R1's distillation data drops chains of thought with "long paragraphs and code
blocks" and the degenerate outputs RL models produce when they fall into a
loop. Each part (reasoning, answer) is judged on its own, so an answer that
restates a line of the reasoning is not repetition.

Checks, in this order (the first failure is reported; the reasoning is judged
before the answer):

* ``too_long``: reasoning + answer longer than ``max_chars`` characters.
* ``too_many_tokens``: more than ``max_tokens`` tokens. Pass the real count as
  ``num_tokens`` (e.g. the server's ``completion_tokens``); without it the count
  is estimated as UTF-8 bytes / 4, which is close for both English (~4 chars a
  token) and Chinese (3 bytes a character, ~1 token per 1–1.5 characters).
* ``code_block``: a fenced block (```` ``` ````) in a task that is not a code task.
* ``repeated_lines``: among lines of at least ``min_line_chars`` characters
  (shorter ones such as ``\\]`` or "Wait," repeat naturally), the share that
  repeat an earlier line exceeds ``max_repeated_line_ratio``; judged from
  ``min_lines`` such lines on.
* ``repeated_ngrams``: the share of word ``ngram``-grams that repeat an earlier
  one (``1 - distinct/total``) exceeds ``max_repeated_ngram_ratio``; judged from
  ``min_ngram_words`` words on. Every CJK character (U+3000–U+9FFF: CJK
  punctuation, kana, Han) counts as a word, so Chinese loops are caught too.
* ``long_paragraph``: a paragraph (text between blank lines) longer than
  ``max_paragraph_chars``.

Default thresholds: loops score above 0.8 on both ratios; real reference text
(MATH500, GSM8K solutions) stays below 0.45 on lines (a diagram drawn twice)
and 0.25 on 10-grams.

``score`` of a pass is the larger repeated-n-gram ratio of the two parts (a
histogram of it is the quickest way to tune the threshold).

Lines are C-level string work (``splitlines``, ``set``); n-grams are hashed with
numpy over the UTF-8 bytes (see ``repeated_ngram_ratio``); no per-character or
per-word Python loop.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from .verdict import Verdict, check_known_options, check_range, fail, ok

__all__ = ["ReadabilityConfig", "check_readability", "validate_readability_params", "repetition_stats",
           "repeated_ngram_ratio",
           "READABILITY_REASON_CODES"]

READABILITY_REASON_CODES: tuple[str, ...] = (
    "too_long", "too_many_tokens", "code_block", "long_paragraph", "repeated_lines", "repeated_ngrams",
)

BYTES_PER_TOKEN = 4.0


@dataclass(frozen=True)
class ReadabilityConfig:
    """Thresholds of ``check_readability``; field names are its keyword options.

    task_type:       the prompt's task type; decides whether code blocks are allowed.
    max_paragraph_chars: longest paragraph allowed, in characters.
    allow_code_blocks: True/False; None → allowed only when ``task_type`` is in ``code_task_types``.
    code_task_types: task types whose answers are code.
    max_repeated_line_ratio: in [0, 1]; see the module docstring.
    min_line_chars:  shorter (stripped) lines are not counted for line repetition.
    min_lines:       fewer counted lines → line repetition not judged.
    max_repeated_ngram_ratio: in [0, 1]; 1 disables the check.
    ngram:           words per n-gram.
    min_ngram_words: fewer words → n-gram repetition not judged.
    max_chars:       length limit of reasoning + answer in characters; None = no limit.
    max_tokens:      length limit in tokens (see ``num_tokens``); None = no limit.
    """

    task_type: str = "math"
    max_paragraph_chars: int = 3000
    allow_code_blocks: bool | None = None
    code_task_types: tuple[str, ...] = ("code",)
    max_repeated_line_ratio: float = 0.5
    min_line_chars: int = 16
    min_lines: int = 8
    max_repeated_ngram_ratio: float = 0.3
    ngram: int = 10
    min_ngram_words: int = 50
    max_chars: int | None = None
    max_tokens: int | None = None

    def validate(self) -> ReadabilityConfig:
        if not isinstance(self.task_type, str) or not self.task_type:
            raise ValueError(f"task_type: expected a task type name, got {self.task_type!r}")
        if self.allow_code_blocks is not None and not isinstance(self.allow_code_blocks, bool):
            raise ValueError(f"allow_code_blocks: expected true, false or null, got {self.allow_code_blocks!r}")
        if not isinstance(self.code_task_types, tuple) or not all(isinstance(t, str) for t in self.code_task_types):
            raise ValueError(f"code_task_types: expected a list of task type names, got {self.code_task_types!r}")
        check_range("max_paragraph_chars", self.max_paragraph_chars, 1, integer=True)
        check_range("max_repeated_line_ratio", self.max_repeated_line_ratio, 0.0, 1.0)
        check_range("min_line_chars", self.min_line_chars, 1, integer=True)
        check_range("min_lines", self.min_lines, 2, integer=True)
        check_range("max_repeated_ngram_ratio", self.max_repeated_ngram_ratio, 0.0, 1.0)
        check_range("ngram", self.ngram, 1, 100, integer=True)
        check_range("min_ngram_words", self.min_ngram_words, self.ngram + 1, integer=True)
        check_range("max_chars", self.max_chars, 1, integer=True, allow_none=True)
        check_range("max_tokens", self.max_tokens, 1, integer=True, allow_none=True)
        return self

    @property
    def code_allowed(self) -> bool:
        if self.allow_code_blocks is None:
            return self.task_type in self.code_task_types
        return self.allow_code_blocks


def validate_readability_params(**params: Any) -> ReadabilityConfig:
    """The validated config for these keyword options of ``check_readability``.

    Raises ``ValueError("<param>: expected …, got …")`` for an unknown option or a bad value.
    """
    check_known_options(params, ReadabilityConfig, "readability")
    if isinstance(params.get("code_task_types"), list):  # YAML gives lists; keep it hashable
        params["code_task_types"] = tuple(params["code_task_types"])
    return ReadabilityConfig(**params).validate()


@functools.lru_cache(maxsize=128)
def _config(task_type: str, options: tuple[tuple[str, Any], ...]) -> ReadabilityConfig:
    # One validation per distinct option set, not per sample.
    return validate_readability_params(task_type=task_type, **dict(options))


def check_readability(reasoning: str, answer: str, *, task_type: str = "math", num_tokens: int | None = None,
                      **options: Any) -> Verdict:
    """Reject overlong samples, code blocks in non-code tasks, walls of text and loops.

    ``num_tokens`` is the sample's real token count when known (only used with
    ``max_tokens``). Further keyword options are the fields of ``ReadabilityConfig``
    (``max_paragraph_chars``, ``allow_code_blocks``, ``max_repeated_line_ratio``,
    ``max_repeated_ngram_ratio``, ``ngram``, ``max_chars``, ``max_tokens``, …).
    Bad options raise ValueError.
    """
    if options:
        if isinstance(options.get("code_task_types"), list):
            options["code_task_types"] = tuple(options["code_task_types"])
        cfg = _config(task_type, tuple(sorted(options.items())))
    else:
        cfg = _config(task_type, ())
    verdict = _check_length(reasoning, answer, cfg, num_tokens)
    if verdict is not None:
        return verdict
    if not cfg.code_allowed and ("```" in reasoning or "```" in answer):
        where = "reasoning" if "```" in reasoning else "answer"
        return fail("code_block", f"fenced code block in the {where} of a {cfg.task_type!r} task")
    worst = 0.0
    for part, text in (("reasoning", reasoning), ("answer", answer)):
        # Repetition first: a loop usually also makes a long paragraph, and "repeated" says more.
        line_ratio, ngram_ratio = repetition_stats(text, ngram=cfg.ngram, min_line_chars=cfg.min_line_chars,
                                                   min_lines=cfg.min_lines, min_ngram_words=cfg.min_ngram_words)
        if line_ratio > cfg.max_repeated_line_ratio:
            return fail("repeated_lines", f"{line_ratio:.2f} of the {part}'s lines repeat an earlier line "
                                          f"(> {cfg.max_repeated_line_ratio:.2f})", score=ngram_ratio,
                        details={"part": part, "repeated_line_ratio": line_ratio})
        if ngram_ratio > cfg.max_repeated_ngram_ratio:
            return fail("repeated_ngrams", f"{ngram_ratio:.2f} of the {part}'s {cfg.ngram}-grams repeat "
                                           f"(> {cfg.max_repeated_ngram_ratio:.2f})", score=ngram_ratio,
                        details={"part": part, "repeated_ngram_ratio": ngram_ratio})
        verdict = _check_paragraphs(part, text, cfg)
        if verdict is not None:
            return verdict
        worst = max(worst, ngram_ratio)
    return ok(score=worst)


def _check_length(reasoning: str, answer: str, cfg: ReadabilityConfig, num_tokens: int | None) -> Verdict | None:
    if cfg.max_chars is not None:
        n_chars = len(reasoning) + len(answer)
        if n_chars > cfg.max_chars:
            return fail("too_long", f"{n_chars} chars > {cfg.max_chars}")
    if cfg.max_tokens is not None:
        if num_tokens is None:
            n_bytes = len(reasoning.encode("utf-8", "surrogatepass")) + len(answer.encode("utf-8", "surrogatepass"))
            num_tokens = int(n_bytes / BYTES_PER_TOKEN)
            how = "estimated"
        else:
            how = "counted"
        if num_tokens > cfg.max_tokens:
            return fail("too_many_tokens", f"{num_tokens} tokens ({how}) > {cfg.max_tokens}")
    return None


def _check_paragraphs(part: str, text: str, cfg: ReadabilityConfig) -> Verdict | None:
    if len(text) <= cfg.max_paragraph_chars:
        return None
    longest = max(map(len, _PARAGRAPH_BREAK.split(text)))
    if longest > cfg.max_paragraph_chars:
        return fail("long_paragraph", f"a {longest}-char paragraph in the {part} (> {cfg.max_paragraph_chars})",
                    score=float(longest))
    return None


def repetition_stats(text: str, *, ngram: int = 10, min_line_chars: int = 16, min_lines: int = 8,
                     min_ngram_words: int = 50) -> tuple[float, float]:
    """``(repeated_line_ratio, repeated_ngram_ratio)`` of ``text``; 0.0 for a statistic
    with too little text to judge. See the module docstring for the definitions."""
    lines = [s for s in map(str.strip, text.splitlines()) if len(s) >= min_line_chars]
    line_ratio = 1.0 - len(set(lines)) / len(lines) if len(lines) >= min_lines else 0.0
    return line_ratio, repeated_ngram_ratio(text, ngram=ngram, min_words=min_ngram_words)


def repeated_ngram_ratio(text: str, *, ngram: int = 10, min_words: int = 50) -> float:
    """``1 - distinct/total`` over the word ``ngram``-grams of ``text`` (0.0 below ``min_words``).

    Words are whitespace-separated runs, except that every CJK character (U+3000–U+9FFF:
    CJK punctuation, kana, Han) is a word of its own; how much whitespace separates two
    words does not matter. Short ASCII texts use plain ``split``/``set``; longer ones are
    hashed with numpy over the UTF-8 bytes: a polynomial prefix hash (mod 2**64) gives
    every n-gram's hash in O(1), so the cost is a few vector passes plus one sort of the
    n-gram hashes — no Python object per word. Both give the same number.
    """
    if text.isascii() and len(text) < _SMALL_TEXT_CHARS:
        words = text.split()
        if len(words) < min_words:
            return 0.0
        grams = list(zip(*(words[i:] for i in range(ngram))))  # n-gram tuples, built in C
        return 1.0 - len(set(grams)) / len(grams)
    # The trailing space makes the last word end like every other: with one space.
    data = np.frombuffer((text + " ").encode("utf-8", "surrogatepass"), dtype=np.uint8)
    if data.size < min_words:  # every word takes at least one byte
        return 0.0
    space = data <= 0x20
    word = ~space
    prev_space = np.empty_like(space)
    prev_space[0] = True
    prev_space[1:] = space[:-1]
    if text.isascii():
        start_mask = word & prev_space
    else:
        lead = (data >= 0xE3) & (data <= 0xE9)  # first byte of U+3000–U+9FFF
        cjk = lead.copy()
        cjk[1:] |= lead[:-1]
        cjk[2:] |= lead[:-2]
        after_cjk = np.empty_like(cjk)
        after_cjk[0] = False
        after_cjk[1:] = cjk[:-1]
        start_mask = word & (lead | ((prev_space | after_cjk) & ~cjk))
    # Collapse every whitespace run to one space, so n-grams compare words, not layout.
    keep = word | ~prev_space
    data = np.where(space, np.uint8(0x20), data)[keep]
    starts = np.nonzero(start_mask[keep])[0]
    n_words = starts.size
    if n_words < min_words:
        return 0.0
    powers, inverse_powers = _powers(data.size)
    prefix = np.zeros(data.size + 1, dtype=np.uint64)
    np.cumsum(data * powers[:data.size], out=prefix[1:])
    bounds = np.empty(n_words + 1, dtype=np.intp)
    bounds[:n_words] = starts
    bounds[n_words] = data.size
    lo, hi = bounds[:-ngram], bounds[ngram:]
    # (prefix[hi] - prefix[lo]) / P**lo is the hash of bytes lo..hi-1, wherever they are.
    hashes = (prefix[hi] - prefix[lo]) * inverse_powers[lo]
    hashes.sort()
    distinct = 1 + int(np.count_nonzero(hashes[1:] != hashes[:-1]))
    return 1.0 - distinct / hashes.size


# Below this many characters the Python path is cheaper than numpy's per-call overhead.
_SMALL_TEXT_CHARS = 1500
_HASH_BASE = 1_000_003  # odd, so invertible mod 2**64


@functools.lru_cache(maxsize=8)
def _power_tables(size: int) -> tuple[np.ndarray, np.ndarray]:
    base = np.full(size, _HASH_BASE, dtype=np.uint64)
    inverse = np.full(size, pow(_HASH_BASE, -1, 2**64), dtype=np.uint64)
    base[0] = inverse[0] = 1
    # uint64 products wrap mod 2**64, which is the ring the hash lives in.
    tables = np.cumprod(base), np.cumprod(inverse)
    for table in tables:
        table.flags.writeable = False
    return tables


def _powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    # Sizes round up to a power of two, so a process builds only a few tables.
    return _power_tables(1 << max(14, n.bit_length()))


_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")
