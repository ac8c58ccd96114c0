"""Benchmark: verifiers.math against HF math-verify, side by side in one run.

Two sets, both built here from the reference answers of MATH-500 and GSM8K
(factory/data/benchmarks/, the copies of ../shared/data):

* variants: each gold answer rewritten in forms that must match (``\\dfrac``,
  ``a/b``, exact decimals, thousands separators, ``\\$``, units, ``x = …``,
  spacing, reordered sets and unions, ...) and perturbed in ways that must not
  (off-by-one in the last number, sign, reciprocal, swapped tuple, flipped
  interval bracket, dropped list item, another choice letter or word). Every
  variant is wrapped as a short response ending in ``\\boxed{…}``. Labels hold
  by construction; see ``rewrites`` and ``perturbations``.
* long CoT: ~4k-character ``<think>`` responses (the problem's solution padded
  with other solutions' reasoning, their boxes removed) ending in
  ``\\boxed{variant}``, for throughput.
* real_like: the gold answer and one perturbation stated the way other models'
  outputs state them (``A: 18``, ``Final answer: **18**``, Minerva's "The final
  answer is $x$. I hope it is correct.", ``\\(..\\)``/``$$..$$`` blocks, prose,
  several boxes, ``(x, y) = (..)``, decimal commas) after the problem's own
  solution text with its boxes removed; see ``build_real_like``.

verifiers.math runs with ``policy="strict"`` (the default) and ``"lenient"``.

For each verifier: agreement with the labels, false positives, false
negatives (an undecided ``None`` counts as "not correct") and verifications per
second on one core (single process, sequential). math-verify is called as in
open-r1: ``verify(parse(f"\\\\boxed{{{gold}}}"), parse(response))`` with its
default settings; both verifiers keep one parsed gold per distinct gold answer.

Run:  python benchmarks/bench_math_verify.py [--quick]
Writes benchmarks/results/math_verify.json. Numbers are noisy: the machine's
cores are shared with other jobs.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import re
import sys
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from verifiers.math import verify, verify_batch  # noqa: E402
from verifiers.math.check import _read_gold  # noqa: E402  (cleared so each set pays for its gold parses)

DATA = ROOT / "factory" / "data" / "benchmarks"
RESULTS = ROOT / "benchmarks" / "results" / "math_verify.json"
LONG_COT_CHARS = 3800


@dataclass(frozen=True)
class Case:
    gold: str
    response: str
    label: bool
    kind: str
    source: str


# -- building the labelled variants -----------------------------------------

_INT = re.compile(r"-?\d+")
_SIMPLE_FRACTION = re.compile(r"(-?)\\[dt]?frac\{(\d+)\}\{(\d+)\}")
_COEFF_SQRT = re.compile(r"(\d+)\s*\\sqrt\{(\d+)\}")
_TEXT = re.compile(r"\\text\{([^{}]*)\}")
_CHOICE = re.compile(r"\\text\{\(([A-E])\)\}")
_DEGREES = re.compile(r"(\d+)\^\\circ")
_THOUSANDS = re.compile(r"(\\\$)?-?\d{1,3}(?:,(?:\\!)?\s*\d{3})+")
_MIXED = re.compile(r"(\d+)\s*\\frac\{(\d+)\}\{(\d+)\}")
_INFINITE_INTERVAL = re.compile(r"\(([^,]+),\s*\\infty\)|\(-\\infty,\s*([^,]+)\)")
_PLUS_MINUS = re.compile(r"([^,]+?)\s*\\pm\s*([^,]+)")


def _top_level_commas(text: str) -> bool:
    depth = 0
    for char in text:
        depth += char in "([{"
        depth -= char in ")]}"
        if char == "," and depth == 0:
            return True
    return False


def _is_number(text: str) -> bool:
    return bool(_INT.fullmatch(text) or _SIMPLE_FRACTION.fullmatch(text))


def _decimal(value: Fraction) -> str | None:
    """The exact decimal of a fraction when it terminates."""
    denominator = value.denominator
    for prime in (2, 5):
        while denominator % prime == 0:
            denominator //= prime
    if denominator != 1:
        return None
    text = f"{float(value):.10f}".rstrip("0").rstrip(".")
    return text if Fraction(text) == value else None


def rewrites(gold: str) -> list[tuple[str, str]]:
    """Forms of ``gold`` that state the same answer: (variant, kind)."""
    out: list[tuple[str, str]] = [(gold, "identity")]
    fraction = _SIMPLE_FRACTION.fullmatch(gold)
    if "\\frac" in gold:
        out.append((gold.replace("\\frac", "\\dfrac"), "dfrac"))
    if fraction:
        sign, top, bottom = fraction.groups()
        value = Fraction(int(top), int(bottom)) * (-1 if sign else 1)
        out.append((f"{sign}{top}/{bottom}", "slash_fraction"))
        decimal = _decimal(value)
        if decimal is not None:
            out.append((decimal, "exact_decimal"))
        out.append((f"\\frac{{{sign}{top}}}{{{bottom}}}", "sign_in_numerator") if sign else (f"\\frac {{{top}}} {{{bottom}}}", "spaced_fraction"))
    if _INT.fullmatch(gold):
        number = int(gold)
        if abs(number) >= 1000:
            out.append((f"{number:,}", "thousands_commas"))
            out.append((f"{number:,}".replace(",", "{,}"), "latex_thousands"))
        out.append((f"{number}.0", "integer_decimal"))
        out.append((f"\\${number}" if number >= 0 else gold, "dollar_sign"))
        out.append((f"{number} \\text{{ units}}", "unit_text"))
        out.append((f"x = {number}", "equation"))
        if number < 0:
            out.append(("\u2212" + str(-number), "unicode_minus"))
        if number and number % 1000 == 0:
            mantissa = Fraction(number, 1000)
            out.append((f"{_decimal(mantissa)} \\times 10^{{3}}", "scientific"))
    elif fraction:
        out.append((f"x = {gold}", "equation"))
    sqrt = _COEFF_SQRT.fullmatch(gold)
    if sqrt:
        coefficient, radicand = int(sqrt.group(1)), int(sqrt.group(2))
        out.append((f"\\sqrt{{{coefficient * coefficient * radicand}}}", "merged_sqrt"))
    if _TEXT.fullmatch(gold) and not _CHOICE.fullmatch(gold):
        out.append((_TEXT.fullmatch(gold).group(1), "text_unwrapped"))  # type: ignore[union-attr]
    choice = _CHOICE.fullmatch(gold)
    if choice:
        out.append((choice.group(1), "choice_letter"))
        out.append((f"({choice.group(1)})", "choice_parens"))
    if _DEGREES.fullmatch(gold):
        out.append((_DEGREES.fullmatch(gold).group(1), "no_degree_sign"))  # type: ignore[union-attr]
        out.append((_DEGREES.fullmatch(gold).group(1) + " degrees", "degree_word"))  # type: ignore[union-attr]
    if "\\begin{pmatrix}" in gold:
        out.append((gold.replace("pmatrix", "bmatrix"), "bmatrix"))
    if " \\cup " in gold:
        parts = gold.split(" \\cup ")
        out.append((" \\cup ".join(reversed(parts)), "reordered_union"))
    if _THOUSANDS.fullmatch(gold):
        out.append((re.sub(r"[^\d-]", "", gold), "thousands_plain"))
    mixed = _MIXED.fullmatch(gold)
    if mixed:
        value = int(mixed.group(1)) + Fraction(int(mixed.group(2)), int(mixed.group(3)))
        decimal = _decimal(value)
        out.append((decimal if decimal else f"\\frac{{{value.numerator}}}{{{value.denominator}}}", "mixed_number_value"))
    if fraction:
        sign, top, bottom = fraction.groups()
        out.append((f"{sign}\\frac{{{2 * int(top)}}}{{{2 * int(bottom)}}}", "unreduced_fraction"))
    if _DEGREES.fullmatch(gold):
        out.append((_DEGREES.fullmatch(gold).group(1) + "\u00b0", "degree_unicode"))  # type: ignore[union-attr]
    infinite = _INFINITE_INTERVAL.fullmatch(gold)
    if infinite:
        out.append((f"x > {infinite.group(1)}" if infinite.group(1) else f"x < {infinite.group(2)}", "inequality"))
    plus_minus = _PLUS_MINUS.fullmatch(gold)
    if plus_minus:
        left, right = plus_minus.group(1).strip(), plus_minus.group(2).strip()
        out.append((f"{left} + {right}, {left} - {right}", "plus_minus_expanded"))
    if gold.startswith("x \\in "):
        out.append((gold[len("x \\in ") :], "membership_dropped"))
    if _top_level_commas(gold) and gold[:1] not in "([\\" and not _THOUSANDS.fullmatch(gold):
        items = [item.strip() for item in gold.split(",")]
        out.append((", ".join(reversed(items)), "reordered_list"))
    if gold.startswith("(") and gold.endswith(")") and _top_level_commas(gold[1:-1]):
        out.append(("\\left(" + gold[1:-1].replace(",", ",\\,") + "\\right)", "latex_spacing"))
    if "\\frac{\\pi}{" in gold:
        out.append((re.sub(r"\\frac\{\\pi\}\{(\d+)\}", r"\\pi/\1", gold), "pi_slash"))
    if re.fullmatch(r"[^+\-,()=]+ \+ [^+\-,()=]+", gold):
        left, right = gold.split(" + ")
        out.append((f"{right} + {left}", "commuted_sum"))
    return out


def perturbations(gold: str, other_texts: list[str]) -> list[tuple[str, str]]:
    """Forms of ``gold`` that state a different answer: (variant, kind)."""
    out: list[tuple[str, str]] = []
    numbers = list(re.finditer(r"\d+", gold))
    if numbers and "\\text" not in gold and "\\mbox" not in gold:
        last = numbers[-1]
        bumped = str(int(last.group()) + 1).zfill(len(last.group()))
        out.append((gold[: last.start()] + bumped + gold[last.end() :], "off_by_one"))
    if _is_number(gold) and gold not in ("0", "-0"):
        out.append((gold[1:] if gold.startswith("-") else "-" + gold, "negated"))
    fraction = _SIMPLE_FRACTION.fullmatch(gold)
    if fraction and fraction.group(2) != fraction.group(3):
        sign, top, bottom = fraction.groups()
        out.append((f"{sign}\\frac{{{bottom}}}{{{top}}}", "reciprocal"))
    if _INT.fullmatch(gold) and len(gold.lstrip("-")) >= 2 and gold.lstrip("-")[::-1] != gold.lstrip("-"):
        digits = gold.lstrip("-")
        reversed_digits = digits[::-1].lstrip("0") or "0"
        if reversed_digits != digits:
            out.append((("-" if gold.startswith("-") else "") + reversed_digits, "reversed_digits"))
    if gold.startswith("(") and gold.endswith(")") and _top_level_commas(gold[1:-1]) and "\\cup" not in gold:
        items = _split_items(gold[1:-1])
        if len(items) >= 2 and items[0].strip() != items[1].strip() and "infty" not in gold:
            items[0], items[1] = items[1], items[0]
            out.append(("(" + ",".join(items) + ")", "swapped_tuple"))
    interval = re.fullmatch(r"(\\left)?([(\[])(.*)", gold)
    if interval and _top_level_commas(gold) and "\\cup" not in gold and not gold.startswith(("(-\\infty", "[-\\infty")):
        flipped = "[" if interval.group(2) == "(" else "("
        out.append(((interval.group(1) or "") + flipped + interval.group(3), "flipped_bracket"))
    if _top_level_commas(gold) and gold[:1] not in "([" and not _THOUSANDS.fullmatch(gold):
        items = _split_items(gold)
        if len(items) >= 2:
            out.append((",".join(items[:-1]), "dropped_item"))
    choice = _CHOICE.fullmatch(gold)
    if choice:
        letter = "ABCDE"[("ABCDE".index(choice.group(1)) + 1) % 5]
        out.append((f"\\text{{({letter})}}", "other_choice"))
    text = _TEXT.fullmatch(gold)
    if text and not choice:
        others = [other for other in other_texts if other.lower() != text.group(1).lower()]
        if others:
            out.append((f"\\text{{{others[len(gold) % len(others)]}}}", "other_word"))
    return out


def _split_items(text: str) -> list[str]:
    items, depth, start = [], 0, 0
    for index, char in enumerate(text):
        depth += char in "([{"
        depth -= char in ")]}"
        if char == "," and depth == 0:
            items.append(text[start:index])
            start = index + 1
    items.append(text[start:])
    return items


def short_response(answer: str) -> str:
    return f"Putting the pieces together, the final answer is $\\boxed{{{answer}}}$."


def load_golds(quick: bool) -> list[tuple[str, str, str]]:
    """(source, gold answer, solution text) from MATH-500 and GSM8K test."""
    golds = []
    for name, source in (("math500.jsonl", "math500"), ("gsm8k_test.jsonl", "gsm8k")):
        rows = [json.loads(line) for line in (DATA / name).read_text().splitlines()]
        if quick:
            rows = rows[:120]
        golds += [(source, row["answer"], row["solution"]) for row in rows]
    return golds


def build_cases(golds: list[tuple[str, str, str]]) -> list[Case]:
    words = sorted({m.group(1) for _, gold, _ in golds if (m := _TEXT.fullmatch(gold)) and not _CHOICE.fullmatch(gold)})
    cases = []
    for source, gold, _ in golds:
        seen = set()
        for variant, kind in rewrites(gold):
            if variant not in seen:
                seen.add(variant)
                cases.append(Case(gold, short_response(variant), True, kind, source))
        for variant, kind in perturbations(gold, words):
            if variant not in seen:
                seen.add(variant)
                cases.append(Case(gold, short_response(variant), False, kind, source))
    return cases


def build_long_cot(cases: list[Case], golds: list[tuple[str, str, str]], count: int, seed: int) -> list[Case]:
    """~4k-char ``<think>`` responses ending in the boxed variant of a labelled case."""
    rng = random.Random(seed)
    solutions = [re.sub(r"\\boxed\{((?:[^{}]|\{[^{}]*\})*)\}", r"\1", solution) for _, _, solution in golds]
    picked = rng.sample(cases, min(count, len(cases)))
    out = []
    for case in picked:
        reasoning = []
        length = 0
        while length < LONG_COT_CHARS:
            chunk = rng.choice(solutions)
            reasoning.append(chunk)
            length += len(chunk) + 2
        body = "\n\n".join(reasoning)[:LONG_COT_CHARS]
        answer = case.response[case.response.index("$\\boxed") :]
        response = f"<think>\n{body}\n</think>\n\nSo the final answer is {answer}"
        out.append(Case(case.gold, response, case.label, case.kind, case.source))
    return out


# -- real-output-like responses ---------------------------------------------
#
# How models other than ours state a final answer (seen in public R1/Qwen/Llama/Minerva
# outputs): answer lines, markdown, display math, prose, several boxes, equations, decimal
# commas. Each form wraps a matching variant (label True) or a perturbed one (label False)
# after ~1k characters of the problem's own solution with its boxes removed, so that the
# reasoning holds distractor numbers.

def _answer_forms(answer: str, gold: str) -> list[tuple[str, str]]:
    """(final part of a response, form) stating ``answer`` the way real outputs do."""
    forms = [
        (f"A: {answer}", "answer_line_A"),
        (f"**Final Answer:** {answer}", "final_answer_bold_label"),
        (f"Final answer: **{answer}**", "final_answer_bold_value"),
        (f"The final answer is ${answer}$. I hope it is correct.", "minerva"),
        (f"**Answer:** \\({answer}\\)", "answer_paren_math"),
        (f"Therefore, the answer is:\n\\[\n\\boxed{{{answer}}}\n\\]", "display_boxed"),
        (f"### Final Answer\n$$\n{answer}\n$$", "heading_display"),
    ]
    if _INT.fullmatch(answer) or re.fullmatch(r"-?\d+\.\d+", answer):
        forms.append((f"Therefore, the total comes to {answer}.", "prose_last_number"))
        forms.append((f"So she has {answer} apples left.", "prose_units"))
    if re.fullmatch(r"-?\d+\.\d{1,2}", answer):
        forms.append((f"\\boxed{{{answer.replace('.', ',')}}}", "decimal_comma"))
    items = _split_items(answer) if _top_level_commas(answer) and answer[:1] not in "([\\" else []
    if len(items) >= 2:
        forms.append((" and ".join(f"$\\boxed{{{item.strip()}}}$" for item in items), "several_boxes"))
    if answer.startswith("(") and answer.endswith(")") and _top_level_commas(answer[1:-1]) and "infty" not in gold:
        names = ", ".join("xyzwuv"[: len(_split_items(answer[1:-1]))])
        forms.append((f"\\boxed{{({names}) = {answer}}}", "tuple_equation"))
    return forms


def _unboxed(text: str) -> str:
    """``text`` with every ``\\boxed{...}`` replaced by its content (nested braces allowed)."""
    while (start := text.find("\\boxed{")) >= 0:
        depth, index = 0, start + len("\\boxed")
        for index in range(index, len(text)):
            depth += text[index] == "{"
            depth -= text[index] == "}"
            if depth == 0:
                break
        text = text[:start] + text[start + len("\\boxed{") : index] + text[index + 1 :]
    return text


def build_real_like(golds: list[tuple[str, str, str]], seed: int) -> list[Case]:
    rng = random.Random(seed)
    words = sorted({m.group(1) for _, gold, _ in golds if (m := _TEXT.fullmatch(gold)) and not _CHOICE.fullmatch(gold)})
    cases = []
    for source, gold, solution in golds:
        reasoning = _unboxed(solution)[-1000:].replace("####", "")
        bad = [variant for variant, _ in perturbations(gold, words)]
        for answer, label in [(gold, True)] + ([(rng.choice(bad), False)] if bad else []):
            for ending, form in _answer_forms(answer, gold):
                cases.append(Case(gold, f"{reasoning}\n\n{ending}", label, form, source))
    return cases


# -- running ----------------------------------------------------------------

def run_ours(cases: list[Case], policy: str = "strict") -> tuple[list[bool | None], float]:
    started = time.perf_counter()
    results = [verify(case.gold, case.response, policy=policy).correct for case in cases]
    return results, time.perf_counter() - started


def run_math_verify(cases: list[Case]) -> tuple[list[bool | None], float]:
    from math_verify import parse
    from math_verify import verify as hf_verify

    gold_cache: dict[str, object] = {}
    results: list[bool | None] = []
    started = time.perf_counter()
    for case in cases:
        gold = gold_cache.get(case.gold)
        if gold is None:
            gold = gold_cache[case.gold] = parse(f"\\boxed{{{case.gold}}}")
        try:
            results.append(bool(hf_verify(gold, parse(case.response))))
        except Exception:  # math-verify raises on some inputs; count as not verified
            results.append(False)
    return results, time.perf_counter() - started


def score(cases: list[Case], results: list[bool | None], seconds: float) -> dict:
    tp = sum(1 for c, r in zip(cases, results) if c.label and r is True)
    tn = sum(1 for c, r in zip(cases, results) if not c.label and r is not True)
    fp = sum(1 for c, r in zip(cases, results) if not c.label and r is True)
    fn = sum(1 for c, r in zip(cases, results) if c.label and r is not True)
    undecided = sum(1 for r in results if r is None)
    return {
        "n": len(cases), "agree": tp + tn, "accuracy": (tp + tn) / len(cases), "false_positives": fp,
        "false_negatives": fn, "undecided": undecided, "seconds": seconds, "per_s": len(cases) / seconds,
    }


def disagreements(cases: list[Case], results: list[bool | None], limit: int = 12) -> list[dict]:
    wrong = [
        {"kind": c.kind, "gold": c.gold, "answer": c.response[-120:], "label": c.label, "got": r}
        for c, r in zip(cases, results) if (r is True) != c.label
    ]
    return wrong[:limit]


def _count_kinds(cases: list[Case]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for case in cases:
        key = f"{'match' if case.label else 'differ'}:{case.kind}"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="120 golds per dataset, 300 long responses")
    parser.add_argument("--long", type=int, default=2000, help="long CoT responses to time")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)

    golds = load_golds(args.quick)
    cases = build_cases(golds)
    long_cases = build_long_cot(cases, golds, 300 if args.quick else args.long, args.seed)
    report: dict = {"sets": {}, "disagreements": {}}
    rows = []
    real_cases = build_real_like(golds, args.seed)
    for set_name, set_cases in (("variants", cases), ("long_cot", long_cases), ("real_like", real_cases)):
        _read_gold.cache_clear()
        ours, ours_s = run_ours(set_cases)
        _read_gold.cache_clear()
        lenient, lenient_s = run_ours(set_cases, "lenient")
        theirs, theirs_s = run_math_verify(set_cases)
        ours_score, theirs_score = score(set_cases, ours, ours_s), score(set_cases, theirs, theirs_s)
        lenient_score = score(set_cases, lenient, lenient_s)
        report["sets"][set_name] = {"verifiers.math": ours_score, "verifiers.math (lenient)": lenient_score,
                                    "math-verify": theirs_score,
                                    "speedup": ours_score["per_s"] / theirs_score["per_s"]}
        report["disagreements"][set_name] = {"verifiers.math": disagreements(set_cases, ours),
                                             "verifiers.math (lenient)": disagreements(set_cases, lenient),
                                             "math-verify": disagreements(set_cases, theirs)}
        for name, result in (("verifiers.math", ours_score), ("verifiers.math (lenient)", lenient_score),
                             ("math-verify", theirs_score)):
            rows.append((set_name, name, result))
        if set_name == "long_cot":
            started = time.perf_counter()
            batch = verify_batch([(c.gold, c.response) for c in set_cases], workers=2)
            batch_s = time.perf_counter() - started
            batch_score = score(set_cases, [v.correct for v in batch], batch_s)
            report["sets"][set_name]["verify_batch_2_workers"] = batch_score
            rows.append((set_name, "verify_batch (2 workers)", batch_score))

    print(f"{'set':<9} {'verifier':<25} {'n':>6} {'agree':>7} {'FP':>5} {'FN':>5} {'None':>5} {'verif/s':>9}")
    for set_name, name, result in rows:
        print(f"{set_name:<9} {name:<25} {result['n']:>6} {result['accuracy']:>7.2%} {result['false_positives']:>5} "
              f"{result['false_negatives']:>5} {result['undecided']:>5} {result['per_s']:>9.0f}")
    for set_name, entry in report["sets"].items():
        print(f"{set_name}: verifiers.math is {entry['speedup']:.1f}x math-verify (one core, same run)")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    report["config"] = {"quick": args.quick, "golds": len(golds), "seed": args.seed,
                        "cases_by_kind": _count_kinds(cases), "real_like_by_form": _count_kinds(real_cases)}
    RESULTS.write_text(json.dumps(report, indent=2))
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
