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
4. the last "the answer is ..." / "Answer: ..." / "Final answer: **...**";
5. the last answer line ``A: ...`` / ``Ans: ...``;
6. the final line, when it is short enough to be an answer.

Answers inside ``<think>`` are used only when the final section has none.
That is the ``strict`` policy: only an explicit answer form counts. The
``lenient`` policy (:func:`lenient_answer`) adds one fallback when strict finds
nothing: the last math span, else the last number, of the last sentence that
has one (looking back at most :data:`LENIENT_SENTENCES` sentences), as graders
of free-form outputs do. Every :class:`Extraction` names the rule that found it.
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
# Lenient fallback: sentences (from the end) searched for a number or math span,
# within this many final characters.
LENIENT_SENTENCES = 3
LENIENT_WINDOW_CHARS = 2000
# "A: 18" lines inspected from the end.
MAX_ANSWER_LINE_CANDIDATES = 20
# Chunk size for the case-insensitive backwards search.
_SEARCH_CHUNK = 8192

_BRACE = re.compile(r"\\[{}]|[{}]")
_ANSWER_LEAD = re.compile(r"answer[*_\s]*(?:is\b|:|=)[*_\s:]*", re.IGNORECASE)
# "### Final Answer" / "**Final Answer**" on a line of its own, the answer below it.
_HEADING_LEAD = re.compile(r"answer[*_ \t]*\n[\s*_]*", re.IGNORECASE)
# "A: 18", "**A:** 18", "> Ans. 18" at the start of a line.
# "A." alone is not enough: it starts option A of a multiple-choice list.
# Capital "A" only: "a: 3" lists a variable.
_ANSWER_LINE = re.compile(r"[ \t>*_#-]*(?:A[*_ \t]*:|(?:Ans|ANS|ans)(?:\.?[*_ \t]*:|\.))[*_ \t]*")
# Lenient fallback: a number (thousands or decimal separators, a fraction bar) ...
_NUMBER = re.compile(r"[-+]?(?:\d[\d,]*(?:\.\d+)?|\.\d+)(?:\s*/\s*\d+)?")
# Between two math segments that list one answer: ",", "and", "or", ", and".
_SEGMENT_JOINT = re.compile(r"\s*(?:,\s*(?:and|or)?|and|or)\s+(?=\$|\\\()|\s*,\s*(?=\$|\\\()")
MAX_JOINED_SEGMENTS = 12
_LIST_END = re.compile(r"[ \t]*(?:[.;!]|\n|$)")
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+|\n+")
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


def find_answer(response: str, policy: str = "strict") -> Extraction | None:
    """Like :func:`extract_answer`, but also says where (by which rule) the answer came from.

    ``policy="lenient"`` adds the last-number/last-math-span fallback (module docstring).
    """
    found = _strict_answer(response)
    if found is None and policy == "lenient":
        return lenient_answer(response)
    return found


def _strict_answer(response: str) -> Extraction | None:
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
    tagged = _answer_tag(text, lo, hi) or _gsm8k_answer(text, lo, hi)
    if tagged is not None:
        return tagged
    # "The answer is 5" early and "A: 6" at the end: the later statement is the final one.
    statement, line = _answer_statement(text, lo, hi), _answer_line(text, lo, hi)
    if statement is None or line is None:
        return (statement or line)[0] if (statement or line) else None
    return statement[0] if statement[1] > line[1] else line[0]


def final_section_start(response: str) -> int:
    """Where the final section starts: after the last ``</think>``, else 0."""
    close = response.rfind(THINK_CLOSE)
    return 0 if close < 0 else close + len(THINK_CLOSE)


def boxed_answers(text: str, lo: int = 0, hi: int | None = None, limit: int = MAX_BOX_CANDIDATES) -> list[str]:
    """Contents of the last ``limit`` balanced ``\\boxed{...}`` in ``text[lo:hi]``, in text order."""
    if hi is None:
        hi = len(text)
    found: list[str] = []
    end = hi
    for _ in range(2 * limit):
        if len(found) >= limit:
            break
        boxed_at = text.rfind("\\boxed", lo, end)
        fbox_at = text.rfind("\\fbox", lo, end)
        pos = max(boxed_at, fbox_at)
        if pos < 0:
            break
        name_len = len("\\boxed") if pos == boxed_at else len("\\fbox")
        argument = _command_argument(text, pos + name_len, hi)
        if argument is not None:
            found.append(clean_extracted(argument[0]))
        end = pos
    found.reverse()
    return found


def _answer_line(text: str, lo: int, hi: int) -> tuple[Extraction, int] | None:
    """The last line that starts ``A:`` / ``Ans:`` (markdown allowed) in ``text[lo:hi]``, and where."""
    end = hi
    for _ in range(MAX_ANSWER_LINE_CANDIDATES):
        if end <= lo:
            return None
        line_start = max(lo, text.rfind("\n", lo, end) + 1)
        lead = _ANSWER_LINE.match(text, line_start, end)
        if lead is not None:
            answer = _statement_payload(text[lead.end() : end])
            if answer:
                return Extraction(answer, "answer_line"), line_start
        end = line_start - 1
    return None


def lenient_answer(response: str) -> Extraction | None:
    """The last math span, else the last number, in the last sentence that has one."""
    hi = _end_without_trailing_space(response, 0, len(response))
    lo = max(final_section_start(response), hi - LENIENT_WINDOW_CHARS)
    window = response[lo:hi]
    spans = list(_MATH_SEGMENT.finditer(window))
    bounds, start = [], 0
    for gap in _SENTENCE_SPLIT.finditer(_mask_spans(window, spans)):
        bounds.append((start, gap.start()))
        start = gap.end()
    bounds.append((start, len(window)))
    bounds = [(a, b) for a, b in bounds if window[a:b].strip()]
    for sentence_start, sentence_end in reversed(bounds[-LENIENT_SENTENCES:]):
        inside = [m for m in spans if sentence_start <= m.start() and m.end() <= sentence_end]
        if inside:
            answer = clean_extracted(next(g for g in inside[-1].groups() if g is not None))
            if answer:
                return Extraction(answer, "last_math")
        numbers = list(_NUMBER.finditer(window, sentence_start, sentence_end))
        if numbers:
            answer = clean_extracted(numbers[-1].group())
            if answer:
                return Extraction(answer, "last_number")
    return None


def _mask_spans(window: str, spans: list[re.Match[str]]) -> str:
    """``window`` with math spans replaced by same-length filler, so that a period
    inside ``$1.5$`` does not end a sentence (offsets stay valid)."""
    if not spans:
        return window
    parts, last = [], 0
    for match in spans:
        parts.append(window[last : match.start()])
        parts.append("\x00" * (match.end() - match.start()))
        last = match.end()
    parts.append(window[last:])
    return "".join(parts)


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


def _answer_statement(text: str, lo: int, hi: int) -> tuple[Extraction, int] | None:
    """"The (final) answer is X" / "Answer: X" / a "Final Answer" heading over X: the last
    one in ``text[lo:hi]``, and where it starts."""
    end = hi
    for _ in range(MAX_ANSWER_WORD_CANDIDATES):
        pos = rfind_ignore_case(text, "answer", lo, end)
        if pos < 0:
            return None
        lead = _ANSWER_LEAD.match(text, pos, min(hi, pos + 40))
        if lead is None and text[max(lo, pos - 6) : pos].lower() == "final ":
            lead = _HEADING_LEAD.match(text, pos, min(hi, pos + 40))
        if lead is not None:
            answer = _statement_payload(text[lead.end() : min(hi, lead.end() + MAX_STATEMENT_CHARS)])
            if answer:
                return Extraction(answer, "answer_is"), pos
        end = pos
    return None


def _statement_payload(tail: str) -> str:
    """The answer at the start of ``tail``: a math segment, else up to the sentence end."""
    stripped = tail.lstrip()
    if stripped.startswith(("$", "\\(", "\\[")):
        segment = _MATH_SEGMENT.match(stripped)
        if segment is not None:
            # "$x = 1$ or $x = 2$", "$3$, $5$ and $7$": every value joined into one list.
            parts = [clean_extracted(next(g for g in segment.groups() if g is not None))]
            position = segment.end()
            while len(parts) < MAX_JOINED_SEGMENTS:
                joint = _SEGMENT_JOINT.match(stripped, position)
                following = _MATH_SEGMENT.match(stripped, joint.end()) if joint is not None else None
                if following is None:
                    break
                parts.append(clean_extracted(next(g for g in following.groups() if g is not None)))
                position = following.end()
            if len(parts) > 1 and not _LIST_END.match(stripped, position):
                parts = parts[:1]  # "$3$ and $x$ is odd": the list did not end the sentence
            return ", ".join(part for part in parts if part)
    stop = _SENTENCE_END.search(stripped)
    sentence = stripped[: stop.start()] if stop else stripped
    if len(_PROSE_WORD.findall(_MATH_SEGMENT.sub(" ", sentence))) >= MIN_PROSE_WORDS:
        # "Final Answer: The volume of $ABCD$ is 120": the value the sentence ends on.
        segments = list(_MATH_SEGMENT.finditer(sentence))
        numbers = list(_NUMBER.finditer(_MATH_SEGMENT.sub(lambda m: " " * len(m.group()), sentence)))
        last_segment_end = segments[-1].end() if segments else -1
        if numbers and numbers[-1].start() > last_segment_end:
            return clean_extracted(numbers[-1].group())
        if segments:
            return clean_extracted(next(g for g in segments[-1].groups() if g is not None))
    return clean_extracted(sentence)


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
        # Markdown emphasis left at one end ("18**" after "Final answer: **").
        # An underscore can neither start nor end LaTeX: it is emphasis too.
        unmarked = text.strip("*_").strip() if text[:1] in "*_" or text[-1:] in "*_" else text
        if unmarked != text:
            text = unmarked
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
