"""Find the final answer in a model response.

Every search runs backwards from the end of the text with ``str.rfind`` (or a
bounded, anchored regex at a position ``rfind`` found), so the cost is linear in
the length of the response and independent of how the text is shaped. Nothing
here runs a regex over the whole response: a 10 MB input returns in
milliseconds.

Priority, in the final section (the text after the last ``</think>``, or the
whole response when there is none):

1. the last ``\\boxed{...}`` / ``\\fbox{...}`` (nested braces allowed);
2. the last ``<answer>...</answer>``;
3. the last GSM8K marker ``#### 42``;
4. the last "the answer is ..." / "Answer: ...";
5. the final line, when it is short enough to be an answer.

Answers inside ``<think>`` are used only when the final section has none.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

THINK_CLOSE = "</think>"
ANSWER_OPEN = "<answer>"
ANSWER_CLOSE = "</answer>"
GSM8K_MARKER = "####"

# How many ``\boxed`` occurrences to try when the last ones are unbalanced
# (a truncated response); bounded so that garbage cannot make the scan quadratic.
MAX_BOX_CANDIDATES = 8
# Longest ``\boxed{...}`` argument we will scan for its closing brace.
MAX_BOX_CHARS = 20_000
# Occurrences of "answer" to inspect before giving up on an answer statement.
MAX_ANSWER_WORD_CANDIDATES = 50
# Characters after "the answer is" that can hold the answer.
MAX_STATEMENT_CHARS = 300
# A final line longer than this is prose, not an answer.
MAX_FINAL_LINE_CHARS = 200
# Within the final section of a thinking model, a short final line counts as the
# final answer even when the reasoning holds a boxed one.
SHORT_FINAL_LINE_CHARS = 40
# Chunk size for the case-insensitive backwards search.
_SEARCH_CHUNK = 8192

_BRACE = re.compile(r"\\[{}]|[{}]")
_ANSWER_LEAD = re.compile(r"answer(?:\*\*|\s)*(?:is\b|:|=)(?:\*\*|\s|:)*", re.IGNORECASE)
_MATH_SEGMENT = re.compile(r"\$\$(.+?)\$\$|\$(.+?)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]", re.DOTALL)
_SENTENCE_END = re.compile(r"\.(?:\s|$)|\n")
_GSM8K_START = frozenset("-+$.0123456789\\")
# "So 42", "Therefore, x = 5": connectives before a final-line answer.
_LEAD_WORDS = re.compile(
    r"^(?:(?:so|thus|therefore|hence|finally|then|total|result|final answer|answer)\b[,:]?\s*)+",
    re.IGNORECASE,
)
# Words outside LaTeX commands; a final line with this many is prose.
_PROSE_WORD = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{2,}")
MIN_PROSE_WORDS = 4


@dataclass(frozen=True, slots=True)
class Extraction:
    """An answer found in a response and where it was found.

    ``answer`` is ``""`` for an empty ``\\boxed{}``: the response did state a
    final answer, and it is empty.
    """

    answer: str
    source: str


def extract_answer(response: str) -> str | None:
    """The final answer stated in ``response``, or ``None`` when there is none."""
    found = find_answer(response)
    if found is None or not found.answer:
        return None
    return found.answer


def find_answer(response: str) -> Extraction | None:
    """Like :func:`extract_answer`, but also says where the answer came from."""
    close = response.rfind(THINK_CLOSE)
    if close < 0:
        return _marked_answer(response, 0, len(response)) or _final_line(
            response, 0, len(response), MAX_FINAL_LINE_CHARS
        )
    final_start = close + len(THINK_CLOSE)
    end = len(response)
    return (
        _marked_answer(response, final_start, end)
        or _final_line(response, final_start, end, SHORT_FINAL_LINE_CHARS)
        or _marked_answer(response, 0, close)
        or _final_line(response, final_start, end, MAX_FINAL_LINE_CHARS)
    )


def _marked_answer(text: str, lo: int, hi: int) -> Extraction | None:
    """The answer behind the strongest explicit marker within ``text[lo:hi]``."""
    boxed = last_boxed(text, lo, hi)
    if boxed is not None:
        return Extraction(clean_extracted(boxed), "boxed")
    return _answer_tag(text, lo, hi) or _gsm8k_answer(text, lo, hi) or _answer_statement(text, lo, hi)


def last_boxed(text: str, lo: int = 0, hi: int | None = None) -> str | None:
    """Content of the last balanced ``\\boxed{...}``/``\\fbox{...}`` in ``text[lo:hi]``."""
    if hi is None:
        hi = len(text)
    end = hi
    for _ in range(MAX_BOX_CANDIDATES):
        boxed_at = text.rfind("\\boxed", lo, end)
        fbox_at = text.rfind("\\fbox", lo, end)
        pos = max(boxed_at, fbox_at)
        if pos < 0:
            return None
        name_len = len("\\boxed") if pos == boxed_at else len("\\fbox")
        argument = _command_argument(text, pos + name_len, hi)
        if argument is not None:
            return argument[0]
        end = pos
    return None


def _command_argument(text: str, start: int, hi: int) -> tuple[str, int] | None:
    """The argument of a LaTeX command whose name ends at ``start``, and where it ends.

    ``{...}`` with nested (unescaped) braces, or a bare token as in ``\\boxed 5``.
    ``None`` when the braces never close within :data:`MAX_BOX_CHARS`.
    """
    i = start
    while i < hi and text[i] in " \t":
        i += 1
    if i >= hi:
        return None
    if text[i] == "{":
        depth = 0
        limit = min(hi, i + MAX_BOX_CHARS)
        for match in _BRACE.finditer(text, i, limit):
            token = match.group()
            if token == "{":
                depth += 1
            elif token == "}":
                depth -= 1
                if depth == 0:
                    return text[i + 1 : match.start()], match.end()
        return None
    if text[i].isalnum() or text[i] in "-\\.":
        j = i
        limit = min(hi, i + 100)
        while j < limit and not text[j].isspace() and text[j] not in "$}":
            j += 1
        return text[i:j], j
    return None


def _answer_tag(text: str, lo: int, hi: int) -> Extraction | None:
    pos = text.rfind(ANSWER_OPEN, lo, hi)
    if pos < 0:
        return None
    start = pos + len(ANSWER_OPEN)
    close = text.find(ANSWER_CLOSE, start, hi)
    end = close if close >= 0 else hi
    boxed = last_boxed(text, start, end)
    content = boxed if boxed is not None else text[start:end]
    answer = clean_extracted(content)
    return Extraction(answer, "answer_tag") if answer or boxed is not None else None


def _gsm8k_answer(text: str, lo: int, hi: int) -> Extraction | None:
    """``#### 42``; markdown headings (``#### Step 2``) are skipped."""
    end = hi
    for _ in range(MAX_BOX_CANDIDATES):
        pos = text.rfind(GSM8K_MARKER, lo, end)
        if pos < 0:
            return None
        start = pos + len(GSM8K_MARKER)
        line_end = text.find("\n", start, hi)
        line = text[start : line_end if line_end >= 0 else hi].strip()
        if line and line[0] in _GSM8K_START:
            return Extraction(clean_extracted(line), "gsm8k")
        end = pos
    return None


def _answer_statement(text: str, lo: int, hi: int) -> Extraction | None:
    """"The (final) answer is X" / "Answer: X", the last one in ``text[lo:hi]``."""
    end = hi
    for _ in range(MAX_ANSWER_WORD_CANDIDATES):
        pos = rfind_ignore_case(text, "answer", lo, end)
        if pos < 0:
            return None
        lead = _ANSWER_LEAD.match(text, pos, min(hi, pos + 40))
        if lead is not None:
            answer = _statement_payload(text[lead.end() : min(hi, lead.end() + MAX_STATEMENT_CHARS)])
            if answer:
                return Extraction(answer, "answer_is")
        end = pos
    return None


def _statement_payload(tail: str) -> str:
    """The answer at the start of ``tail``: a math segment, else up to the sentence end."""
    stripped = tail.lstrip()
    if stripped.startswith(("$", "\\(", "\\[")):
        segment = _MATH_SEGMENT.match(stripped)
        if segment is not None:
            return clean_extracted(next(g for g in segment.groups() if g is not None))
    stop = _SENTENCE_END.search(stripped)
    return clean_extracted(stripped[: stop.start()] if stop else stripped)


def _final_line(text: str, lo: int, hi: int, max_chars: int) -> Extraction | None:
    """The last non-empty line of ``text[lo:hi]``, if short enough to be an answer."""
    hi = _end_without_trailing_space(text, lo, hi)
    if hi <= lo:
        return None
    start = text.rfind("\n", lo, hi) + 1
    start = max(start, lo)
    line = text[start:hi].strip()
    if line in ("\\]", "$$"):
        # The answer is a display-math block: take what the block holds.
        opener = "\\[" if line == "\\]" else "$$"
        block_start = text.rfind(opener, lo, max(lo, start - 1))
        if block_start < 0:
            return None
        line = text[block_start + 2 : start].strip()
    if not line or len(line) > max_chars:
        return None
    segments = [m for m in _MATH_SEGMENT.finditer(line)]
    if segments:
        last = segments[-1]
        line = next(g for g in last.groups() if g is not None)
    else:
        line = _LEAD_WORDS.sub("", line)
        if len(_PROSE_WORD.findall(line)) >= MIN_PROSE_WORDS:
            # A sentence with no math in it states no answer.
            return None
    answer = clean_extracted(line)
    return Extraction(answer, "final_line") if answer else None


def _end_without_trailing_space(text: str, lo: int, hi: int) -> int:
    """``hi`` moved back over trailing whitespace, a chunk at a time."""
    while hi > lo:
        start = max(lo, hi - _SEARCH_CHUNK)
        kept = len(text[start:hi].rstrip())
        if kept:
            return start + kept
        hi = start
    return lo


def rfind_ignore_case(text: str, needle: str, lo: int, hi: int) -> int:
    """Case-insensitive ``rfind`` of a lowercase ``needle``, scanning back in chunks."""
    end = hi
    overlap = len(needle) - 1
    while end > lo:
        start = max(lo, end - _SEARCH_CHUNK)
        found = text[start:end].lower().rfind(needle)
        if found >= 0:
            return start + found
        if start == lo:
            return -1
        end = start + overlap
    return -1


_WRAPPERS = (("$$", "$$"), ("\\[", "\\]"), ("\\(", "\\)"), ("$", "$"), ("**", "**"), ("`", "`"))


def clean_extracted(answer: str) -> str:
    """Strip what surrounds an answer: math delimiters, markdown, a final period."""
    text = answer.strip()
    changed = True
    while changed and text:
        changed = False
        for opener, closer in _WRAPPERS:
            if len(text) >= len(opener) + len(closer) and text.startswith(opener) and text.endswith(closer):
                text = text[len(opener) : len(text) - len(closer)].strip()
                changed = True
        # "!" stays: it is a factorial. "..." stays: it marks an open list.
        stripped = text.rstrip(".,;:").rstrip() if not text.endswith("...") else text
        if stripped != text:
            text = stripped
            changed = True
        unboxed = _unwrap_box(text)
        if unboxed is not None:
            text = unboxed
            changed = True
    if text.startswith("$") and text.count("$") == 1:
        text = text[1:].strip()
    if text.endswith("$") and text.count("$") == 1:
        text = text[:-1].strip()
    return text


def _unwrap_box(text: str) -> str | None:
    """The content of ``text`` when all of it is one ``\\boxed{...}``."""
    for name in ("\\boxed", "\\fbox"):
        if text.startswith(name):
            argument = _command_argument(text, len(name), len(text))
            if argument is not None and argument[1] == len(text):
                return argument[0].strip()
    return None
