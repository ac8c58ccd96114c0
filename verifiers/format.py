"""Is the sample shaped like an R1 answer? The ``<think>`` format check.

Two layouts are understood (``FormatConfig.mode``):

* ``"think"``: ``<think>reasoning</think>answer`` — exactly one well-formed
  block (optionally preceded by whitespace) followed by a non-empty answer.
* ``"readable"``: the cold-start pattern of the R1 paper,
  ``|special_token|<reasoning_process>|special_token|<summary>``.

Truncated generations (``finish_reason == "length"``, or a reasoning block that
is never closed when the finish reason is unknown) are rejected as
``truncated``. Servers that return ``reasoning_content`` separately are
re-assembled into ``<think>{reasoning}</think>{answer}`` by the caller; this
module only sees text.

Reason codes: ``truncated``, ``missing_think``, ``missing_open_think``,
``missing_close_think``, ``nested_think``, ``duplicate_think``,
``text_before_think``, ``missing_summary_token``, ``duplicate_summary_token``,
``empty_reasoning``, ``empty_answer``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .verdict import Verdict, check_range, fail, ok

__all__ = ["FormatConfig", "check_think_format", "split_reasoning", "Verdict"]

FormatMode = Literal["think", "readable"]


@dataclass(frozen=True)
class FormatConfig:
    """How a well-formed sample looks.

    mode:        "think" (``<think>…</think>answer``) or "readable"
                 (``TOKEN reasoning TOKEN summary``, the cold-start format).
    open_tag, close_tag: the reasoning delimiters in "think" mode.
    summary_token: the delimiter in "readable" mode (the paper's
                 ``|special_token|``).
    allow_missing_open: accept ``reasoning</think>answer`` — for chat templates
                 (e.g. DeepSeek-R1-0528) that put ``<think>`` in the prompt,
                 so the completion starts inside the block.
    allow_text_before_think: accept non-whitespace before the opening delimiter.
    min_reasoning_chars: fewer non-blank characters of reasoning → ``empty_reasoning``;
                 0 allows ``<think></think>answer`` (R1 gives no CoT for "hello").
    min_answer_chars: fewer non-blank characters after the block → ``empty_answer``.
    truncated_finish_reasons: finish reasons that mean the generation hit its
                 token limit ("length" for OpenAI-compatible servers,
                 "max_tokens" for Anthropic-style ones).
    """

    mode: FormatMode = "think"
    open_tag: str = "<think>"
    close_tag: str = "</think>"
    summary_token: str = "|special_token|"
    allow_missing_open: bool = False
    allow_text_before_think: bool = False
    min_reasoning_chars: int = 1
    min_answer_chars: int = 1
    truncated_finish_reasons: tuple[str, ...] = ("length", "max_tokens")

    def validate(self) -> FormatConfig:
        if self.mode not in ("think", "readable"):
            raise ValueError(f"mode: expected 'think' or 'readable', got {self.mode!r}")
        for name in ("open_tag", "close_tag", "summary_token"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{name}: expected a non-blank string, got {value!r}")
        # Tags are found by counting substrings, so neither may contain the other.
        if self.open_tag in self.close_tag or self.close_tag in self.open_tag:
            raise ValueError(f"close_tag: expected a string that neither contains nor is contained in "
                             f"open_tag {self.open_tag!r}, got {self.close_tag!r}")
        check_range("min_reasoning_chars", self.min_reasoning_chars, 0, integer=True)
        check_range("min_answer_chars", self.min_answer_chars, 0, integer=True)
        if not isinstance(self.truncated_finish_reasons, tuple) or not all(
                isinstance(r, str) for r in self.truncated_finish_reasons):
            raise ValueError(f"truncated_finish_reasons: expected a tuple of strings, "
                             f"got {self.truncated_finish_reasons!r}")
        return self


DEFAULT_FORMAT = FormatConfig()


def split_reasoning(text: str, cfg: FormatConfig = DEFAULT_FORMAT) -> tuple[str, str] | None:
    """``(reasoning, answer)``, both stripped, when ``text`` has exactly one
    well-formed reasoning block in ``cfg.mode``; None when the structure is
    broken. Empty parts and finish reasons are not judged here — see
    ``check_think_format`` for that."""
    parsed = _split(text, cfg, finish_reason="stop")
    return parsed if isinstance(parsed, tuple) else None


def check_think_format(text: str, *, finish_reason: str | None = None,
                       cfg: FormatConfig = DEFAULT_FORMAT) -> Verdict:
    """Accept exactly one well-formed reasoning block followed by a non-empty answer.

    ``finish_reason`` is the server's ("stop", "length", …); None when unknown.
    """
    if finish_reason is not None and finish_reason in cfg.truncated_finish_reasons:
        return fail("truncated", f"finish_reason={finish_reason!r}")
    parsed = _split(text, cfg, finish_reason=finish_reason)
    if isinstance(parsed, Verdict):
        return parsed
    reasoning, answer = parsed
    if len(reasoning) < cfg.min_reasoning_chars:
        return fail("empty_reasoning", f"{len(reasoning)} chars < {cfg.min_reasoning_chars}")
    if len(answer) < cfg.min_answer_chars:
        part = "summary" if cfg.mode == "readable" else "answer"
        return fail("empty_answer", f"{len(answer)} chars of {part} after the reasoning "
                                    f"< {cfg.min_answer_chars}")
    return ok()


def _split(text: str, cfg: FormatConfig, *, finish_reason: str | None) -> tuple[str, str] | Verdict:
    if cfg.mode == "readable":
        return _split_readable(text, cfg, finish_reason)
    return _split_think(text, cfg, finish_reason)


def _unclosed(what: str, finish_reason: str | None, code: str) -> Verdict:
    # With no finish reason, an unclosed block and no answer is exactly what a
    # generation cut off at max_new_tokens looks like; when the server says it
    # stopped on its own, the model simply forgot to close the block.
    if finish_reason is None:
        return fail("truncated", f"{what} never closed and no final answer (finish_reason unknown)")
    return fail(code, f"{what} never closed (finish_reason={finish_reason!r})")


def _split_think(text: str, cfg: FormatConfig, finish_reason: str | None) -> tuple[str, str] | Verdict:
    o, c = cfg.open_tag, cfg.close_tag
    # str.count/find run in C; counting first makes the common case two scans.
    n_open, n_close = text.count(o), text.count(c)
    if n_open == 0 and n_close == 0:
        return fail("missing_think", f"no {o}…{c} block")
    if n_open == 0:
        if not cfg.allow_missing_open:
            return fail("missing_open_think", f"{c} without {o}")
        if n_close > 1:
            return fail("duplicate_think", f"{n_close} {c} tags")
        j = text.find(c)
        return text[:j].strip(), text[j + len(c):].strip()
    if n_close == 0:
        return _unclosed(o, finish_reason, "missing_close_think")
    i, j = text.find(o), text.find(c)
    if j < i:
        return fail("missing_open_think", f"{c} before the first {o}")
    if n_open > 1 or n_close > 1:
        second_open = text.find(o, i + len(o))
        if second_open != -1 and second_open < j:
            return fail("nested_think", f"{o} inside the reasoning block")
        return fail("duplicate_think", f"{n_open} {o} and {n_close} {c} tags; expected one block")
    if not cfg.allow_text_before_think and text[:i].strip():
        return fail("text_before_think", f"{len(text[:i].strip())} chars before {o}")
    return text[i + len(o):j].strip(), text[j + len(c):].strip()


def _split_readable(text: str, cfg: FormatConfig, finish_reason: str | None) -> tuple[str, str] | Verdict:
    tok = cfg.summary_token
    n = text.count(tok)
    if n == 0:
        return fail("missing_summary_token", f"no {tok} delimiters")
    if n == 1:
        return _unclosed(f"reasoning after {tok}", finish_reason, "missing_summary_token")
    if n > 2:
        return fail("duplicate_summary_token", f"{n} {tok} delimiters; expected 2")
    i = text.find(tok)
    j = text.find(tok, i + len(tok))
    if not cfg.allow_text_before_think and text[:i].strip():
        return fail("text_before_think", f"{len(text[:i].strip())} chars before the first {tok}")
    return text[i + len(tok):j].strip(), text[j + len(tok):].strip()
