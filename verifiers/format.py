"""Is the sample shaped like an R1 answer? The ``<think>`` format check.

Two styles are understood (``style=``):

* ``"think"``: ``<think>reasoning</think>answer`` — exactly one well-formed
  block (optionally preceded by whitespace) followed by a non-empty answer.
* ``"readable"``: the cold-start pattern of the R1 paper,
  ``|special_token|<reasoning_process>|special_token|<summary>`` (the token is
  configurable), or a ``<think>`` block followed by a non-empty summary. Which
  layout is used is decided by whether the text contains the summary token.

Truncated generations are rejected as ``truncated``: the server said so
(``finish_reason`` in ``truncated_finish_reasons``, "length" by default), or
the finish reason is unknown and the reasoning block is never closed, i.e.
there is no final answer. When the server says the model stopped on its own,
an unclosed block is the model's mistake and gets ``missing_close_think``.

Servers that return ``reasoning_content`` separately are re-assembled into
``<think>{reasoning}</think>{answer}`` by the caller; this module sees text.

Reason codes: ``truncated``, ``missing_think``, ``missing_open_think``,
``missing_close_think``, ``nested_think``, ``duplicate_think``,
``text_before_think``, ``missing_summary_token``, ``duplicate_summary_token``,
``empty_reasoning``, ``empty_answer``; ``check_boxed_answer`` adds ``missing_boxed``.

Every check here is a handful of ``str.count``/``str.find`` scans in C; no
regex runs over the whole text.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from .verdict import Verdict, check_known_options, check_range, fail, ok

__all__ = ["FormatConfig", "FormatResult", "check_think_format", "parse_think_format",
           "split_reasoning", "validate_format_params", "check_boxed_answer", "FORMAT_REASON_CODES"]

FormatStyle = Literal["think", "readable"]
STYLES: tuple[str, ...] = ("think", "readable")
FORMAT_REASON_CODES: tuple[str, ...] = (
    "truncated", "missing_think", "missing_open_think", "missing_close_think", "nested_think",
    "duplicate_think", "text_before_think", "missing_summary_token", "duplicate_summary_token",
    "empty_reasoning", "empty_answer", "missing_boxed",
)


@dataclass(frozen=True)
class FormatConfig:
    """How a well-formed sample looks. Field names are the keyword options of
    ``check_think_format``; defaults are the defaults there.

    style:         "think" (``<think>…</think>answer``) or "readable" (the
                   cold-start ``TOKEN reasoning TOKEN summary``, or a think block + summary).
    summary_token: the delimiter of the readable layout (the paper's ``|special_token|``).
    require_answer: reject an empty answer/summary after the reasoning (``empty_answer``).
    open_tag, close_tag: the reasoning delimiters of the think layout.
    allow_missing_open: accept ``reasoning</think>answer`` — for chat templates
                   (e.g. DeepSeek-R1-0528) that put ``<think>`` in the prompt,
                   so the completion starts inside the block.
    allow_text_before_think: accept non-whitespace before the opening delimiter.
    min_reasoning_chars: fewer non-blank characters of reasoning → ``empty_reasoning``;
                   0 allows ``<think></think>answer`` (R1 gives no CoT for "hello").
    min_answer_chars: with ``require_answer``, fewer stripped answer characters → ``empty_answer``.
    truncated_finish_reasons: finish reasons meaning the generation hit its token
                   limit ("length" for OpenAI-compatible servers, "max_tokens" for
                   Anthropic-style ones).
    """

    style: FormatStyle = "think"
    summary_token: str = "|special_token|"
    require_answer: bool = True
    open_tag: str = "<think>"
    close_tag: str = "</think>"
    allow_missing_open: bool = False
    allow_text_before_think: bool = False
    min_reasoning_chars: int = 1
    min_answer_chars: int = 1
    truncated_finish_reasons: tuple[str, ...] = ("length", "max_tokens")

    def validate(self) -> FormatConfig:
        if self.style not in STYLES:
            raise ValueError(f"style: expected one of {STYLES}, got {self.style!r}")
        for name in ("summary_token", "open_tag", "close_tag"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{name}: expected a non-blank string, got {value!r}")
        # Delimiters are found by counting substrings, so none may contain another.
        tags = (("open_tag", self.open_tag), ("close_tag", self.close_tag), ("summary_token", self.summary_token))
        for i, (name_a, a) in enumerate(tags):
            for name_b, b in tags[i + 1:]:
                if a in b or b in a:
                    raise ValueError(f"{name_b}: expected a delimiter that neither contains nor is "
                                     f"contained in {name_a} {a!r}, got {b!r}")
        for name in ("require_answer", "allow_missing_open", "allow_text_before_think"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}: expected true or false, got {getattr(self, name)!r}")
        check_range("min_reasoning_chars", self.min_reasoning_chars, 0, integer=True)
        check_range("min_answer_chars", self.min_answer_chars, 0, integer=True)
        reasons = self.truncated_finish_reasons
        if not isinstance(reasons, tuple) or not all(isinstance(r, str) for r in reasons):
            raise ValueError(f"truncated_finish_reasons: expected a list of strings, got {reasons!r}")
        return self


def validate_format_params(**params: Any) -> FormatConfig:
    """The validated config for these keyword options of ``check_think_format``.

    Raises ``ValueError("<param>: expected …, got …")`` for an unknown option or a bad value.
    """
    check_known_options(params, FormatConfig, "format")
    reasons = params.get("truncated_finish_reasons")
    if isinstance(reasons, list):  # YAML gives lists; the config keeps a hashable tuple
        params["truncated_finish_reasons"] = tuple(reasons)
    return FormatConfig(**params).validate()


@functools.lru_cache(maxsize=64)
def _config(style: str, summary_token: str, require_answer: bool, options: tuple[tuple[str, Any], ...]
            ) -> FormatConfig:
    # One validation per distinct option set, not per sample.
    return validate_format_params(style=style, summary_token=summary_token,
                                  require_answer=require_answer, **dict(options))


class FormatResult(NamedTuple):
    """The verdict plus the parts it found: ``reasoning``/``answer`` are stripped strings
    when the structure could be parsed (even if the verdict is a failure such as
    ``empty_answer``), else None."""

    verdict: Verdict
    reasoning: str | None
    answer: str | None


def parse_think_format(text: str, *, finish_reason: str | None = None, style: str = "think",
                       summary_token: str = "|special_token|", require_answer: bool = True,
                       **options: Any) -> FormatResult:
    """``check_think_format`` that also returns the reasoning and answer it split,
    so later checks need not split the text again."""
    cfg = _config(style, summary_token, require_answer,
                  tuple(sorted(_hashable(options).items())) if options else ())
    return _parse(text, finish_reason, cfg)


def check_think_format(text: str, *, finish_reason: str | None = None, style: str = "think",
                       summary_token: str = "|special_token|", require_answer: bool = True,
                       **options: Any) -> Verdict:
    """Accept exactly one well-formed reasoning block followed by a non-empty answer.

    ``finish_reason`` is the server's ("stop", "length", …); None when unknown.
    Further keyword options are the fields of ``FormatConfig`` (``open_tag``,
    ``allow_missing_open``, ``min_answer_chars``, …). Bad options raise ValueError.
    """
    return parse_think_format(text, finish_reason=finish_reason, style=style, summary_token=summary_token,
                              require_answer=require_answer, **options).verdict


def split_reasoning(text: str, *, style: str = "think", summary_token: str = "|special_token|",
                    **options: Any) -> tuple[str, str] | None:
    """``(reasoning, answer)``, both stripped, when ``text`` has exactly one well-formed
    reasoning block; None when the structure is broken. Empty parts are not judged here."""
    cfg = _config(style, summary_token, False, tuple(sorted(_hashable(options).items())) if options else ())
    parts = _split(text, cfg, "stop")
    return parts if isinstance(parts, tuple) else None


def check_boxed_answer(answer: str) -> Verdict:
    """Math answers must state their result in a non-empty ``\\boxed{…}`` (or ``\\fbox{…}``),
    as the R1 prompts ask; else ``missing_boxed``. Pass the answer part only, so a box
    inside the reasoning does not count."""
    if _BOXED.search(answer) is None:
        return fail("missing_boxed", "no non-empty \\boxed{…} in the answer")
    return ok()


_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{\s*[^\s}]")


def _hashable(options: dict[str, Any]) -> dict[str, Any]:
    reasons = options.get("truncated_finish_reasons")
    if isinstance(reasons, list):
        return {**options, "truncated_finish_reasons": tuple(reasons)}
    return options


def _parse(text: str, finish_reason: str | None, cfg: FormatConfig) -> FormatResult:
    if finish_reason is not None and finish_reason in cfg.truncated_finish_reasons:
        parts = _split(text, cfg, "stop")
        reasoning, answer = parts if isinstance(parts, tuple) else (None, None)
        return FormatResult(fail("truncated", f"finish_reason={finish_reason!r}"), reasoning, answer)
    parts = _split(text, cfg, finish_reason)
    if isinstance(parts, Verdict):
        return FormatResult(parts, None, None)
    reasoning, answer = parts
    return FormatResult(_judge_parts(reasoning, answer, cfg), reasoning, answer)


def _judge_parts(reasoning: str, answer: str, cfg: FormatConfig) -> Verdict:
    if len(reasoning) < cfg.min_reasoning_chars:
        return fail("empty_reasoning", f"{len(reasoning)} chars < {cfg.min_reasoning_chars}")
    if cfg.require_answer and len(answer) < cfg.min_answer_chars:
        part = "summary" if cfg.style == "readable" else "answer"
        return fail("empty_answer", f"{len(answer)} chars of {part} after the reasoning "
                                    f"< {cfg.min_answer_chars}")
    return ok()


def _split(text: str, cfg: FormatConfig, finish_reason: str | None) -> tuple[str, str] | Verdict:
    if cfg.style == "readable" and cfg.summary_token in text:
        return _split_readable(text, cfg, finish_reason)
    parts = _split_think(text, cfg, finish_reason)
    if cfg.style == "readable" and isinstance(parts, Verdict) and parts.code == "missing_think":
        return fail("missing_think", f"neither {cfg.summary_token}…{cfg.summary_token} nor "
                                     f"{cfg.open_tag}…{cfg.close_tag} around the reasoning")
    return parts


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
    if not cfg.allow_text_before_think and i > 0 and not text[:i].isspace():
        return fail("text_before_think", f"{len(text[:i].strip())} chars before {o}")
    return text[i + len(o):j].strip(), text[j + len(c):].strip()


def _split_readable(text: str, cfg: FormatConfig, finish_reason: str | None) -> tuple[str, str] | Verdict:
    tok = cfg.summary_token
    n = text.count(tok)
    if n == 1:
        return _unclosed(f"reasoning after {tok}", finish_reason, "missing_summary_token")
    if n > 2:
        return fail("duplicate_summary_token", f"{n} {tok} delimiters; expected 2")
    i = text.find(tok)
    j = text.find(tok, i + len(tok))
    if not cfg.allow_text_before_think and i > 0 and not text[:i].isspace():
        return fail("text_before_think", f"{len(text[:i].strip())} chars before the first {tok}")
    return text[i + len(tok):j].strip(), text[j + len(tok):].strip()
