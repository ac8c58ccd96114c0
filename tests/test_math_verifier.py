"""The math verifier: a labelled table of (gold, response, expected) cases, plus
extraction, the batch pool and its timeouts.

Every case was written for this project. ``expected`` is True (must match),
False (must not match) or None (cannot be verified: no answer, or too complex).
Responses given as a bare answer are wrapped as ``... \\boxed{answer}`` by
``boxed``; extraction cases spell out the whole response.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from verifiers.math import MathVerdict, extract_answer, verify, verify_batch
from verifiers.math.extract import find_answer

BENCHMARKS = Path(__file__).resolve().parents[1] / "factory" / "data" / "benchmarks"


def boxed(answer: str) -> str:
    return f"Let me work through this carefully.\nSo the final answer is $\\boxed{{{answer}}}$."


# -- extraction: where the final answer is ---------------------------------
EXTRACTION = [
    ("42", "Thus the total is \\boxed{42}.", True),
    ("42", "Thus the total is \\fbox{42}.", True),
    ("\\frac{1}{2}", "We get \\boxed{\\frac{1}{2}}", True),
    ("\\frac{\\sqrt{3}}{2}", "so $\\boxed{\\frac{\\sqrt{3}}{2}}$", True),
    ("\\{1,2\\}", "the set is \\boxed{\\{1, 2\\}}", True),
    ("18", "She makes 9 * 2 = 18 dollars.\n#### 18", True),
    ("1000", "Total = 1,000\n#### 1,000", True),
    ("5", "#### Step 1\nAdd them up.\n#### 5", True),
    ("5", "#### Step 1\nAdd them up.\n#### 6", False),
    ("7", "Adding gives 7. So the answer is 7.", True),
    ("7", "So the answer is 8.", False),
    ("\\frac34", "The final answer is $\\frac{3}{4}$.", True),
    ("12", "Multiply.\nAnswer: 12", True),
    ("12", "Multiply.\n**Answer:** 12", True),
    ("12", "Multiply.\nFinal answer: $12$", True),
    ("12", "<think>3 times 4</think><answer>12</answer>", True),
    ("12", "<think>3 times 4</think><answer>The result is \\boxed{12}</answer>", True),
    ("12", "<answer>13</answer>", False),
    ("12", "We compute 3 * 4.\n12", True),
    ("12", "We compute 3 * 4.\n$12$", True),
    ("12", "We compute 3 * 4.\nSo 12", True),
    ("\\frac{1}{2}", "The probability is\n\\[\n\\frac{1}{2}\n\\]", True),
    ("5", "<think>first I thought \\boxed{4}</think>The answer is \\boxed{5}.", True),
    ("4", "<think>first I thought \\boxed{4}</think>The answer is \\boxed{5}.", False),
    ("4", "<think>I get \\boxed{4}, checking once more it holds.</think>", True),
    ("9", "<think>Maybe 9? The answer is 9.</think>\nAfter checking, \\boxed{8}", False),
    ("9", "<think>long reasoning</think>\n9", True),
    ("5", "First \\boxed{3}. Wait, I made an error; corrected: \\boxed{5}", True),
    ("3", "First \\boxed{3}. Wait, I made an error; corrected: \\boxed{5}", False),
    ("5", "The answer is \\boxed{}", False),
    ("5", "\\boxed{5} was my guess, but truncated here \\boxed{", True),
    ("-5", "so the answer is \\boxed{\u22125}", True),
    ("-5", "so the answer is \\boxed{\u2212 5}", True),
    ("5", "\\boxed{\\boxed{5}}", True),
    ("\\frac{3}{2}", "\\boxed{\\dfrac{3}{2}}.", True),
]

# Answers with no final answer stated: verified as None (or False), never True.
NO_ANSWER = [
    ("42", "", None),
    ("42", "   \n  ", None),
    ("42", "Let me compute: 6 * 7 = 42. Then I still need to double check whether the setup is right", None),
    ("42", "I think we should multiply six by seven and see where that leads us next", None),
]

NUMBERS = [
    ("1000", "1,000", True),
    ("1000", "1 000", True),
    ("1000000", "1,000,000", True),
    ("58,500", "58500", True),
    ("10,\\!080", "10080", True),
    ("10080", "10{,}080", True),
    ("10080", "10\\,080", True),
    ("11,\\! 111,\\! 111,\\! 100", "11111111100", True),
    ("1000", "1,001", False),
    ("0.5", "\\frac12", True),
    ("\\frac{1}{2}", "1/2", True),
    ("\\frac12", "0.50", True),
    ("\\frac{3}{4}", "0.75", True),
    ("\\frac{1}{3}", "0.333", False),
    ("\\frac{1}{3}", "0.3333333333", False),
    ("\\frac13", "\\frac{2}{6}", True),
    ("0.5", "\\frac{1}{3}", False),
    ("2.5", "2.50", True),
    ("2.5", "5/2", True),
    ("7", "7.0", True),
    ("7", "7.01", False),
    ("0.1", ".1", True),
    ("-5", "-5", True),
    ("-5", "5", False),
    ("5", "-5", False),
    ("-\\frac{35}{9}", "\\frac{-35}{9}", True),
    ("-\\frac{35}{9}", "-35/9", True),
    ("-\\frac{3}{8}", "\\frac{3}{-8}", True),
    ("-\\frac{3}{8}", "\\frac{3}{8}", False),
    ("-2", "- 2", True),
    ("-2", "\\(-2\\)", True),
    ("-2", "\uff0d2", True),
    ("0", "-0", True),
    ("18", "+18", True),
]

PERCENT_AND_UNITS = [
    ("25\\%", "25", True),
    ("25\\%", "25%", True),
    ("25", "25\\%", True),
    ("0.25", "25\\%", True),
    ("25\\%", "0.25", True),
    ("25\\%", "26\\%", False),
    ("50\\%", "5", False),
    ("12", "12 \\text{ cm}", True),
    ("12", "12 cm", True),
    ("864 \\mbox{ inches}^2", "864", True),
    ("864 \\mbox{ inches}^2", "864 \\text{ square inches}", True),
    ("5.4 \\text{ cents}", "5.4", True),
    ("5.4 \\text{ cents}", "5.40 cents", True),
    ("30^\\circ", "30", True),
    ("30", "30^{\\circ}", True),
    ("30^\\circ", "30 degrees", True),
    ("90", "90\u00b0", True),
    ("75^\\circ", "75^\\circ", True),
    ("75^\\circ", "105^\\circ", False),
    ("\\frac{270}7\\text{ degrees}", "\\frac{270}{7}", True),
    ("\\$32,\\!348", "32348", True),
    ("\\$32,\\!348", "\\$32,348", True),
    ("18", "\\$18", True),
    ("18", "18 dollars", True),
    ("18", "\\$18.00", True),
    ("15\\mbox{ cm}^2", "15 \\text{cm}^2", True),
    ("15\\mbox{ cm}^2", "15", True),
    ("12", "13 \\text{ cm}", False),
    ("4", "4 \\text{ hours}", True),
]

FRACTIONS_ROOTS_PI = [
    ("\\dfrac{17}{50}", "\\frac{17}{50}", True),
    ("\\frac{17}{50}", "\\tfrac{17}{50}", True),
    ("\\frac{17}{50}", "0.34", True),
    ("\\frac 59", "\\dfrac{5}{9}", True),
    ("\\frac9{19}", "9/19", True),
    ("\\frac{270}7", "\\frac{270}{7}", True),
    ("1\\frac{4}{5}", "\\frac95", True),
    ("1\\frac{4}{5}", "1.8", True),
    ("137 \\frac{1}{2}", "137.5", True),
    ("\\frac{3}{2}", "1\\frac{1}{2}", True),
    ("\\frac{3}{2}", "\\frac{2}{3}", False),
    ("3\\sqrt{13}", "\\sqrt{117}", True),
    ("3\\sqrt{13}", "3 \\sqrt{13}", True),
    ("2\\sqrt{5}", "\\sqrt{20}", True),
    ("2\\sqrt{5}", "2\\sqrt{6}", False),
    ("\\frac{\\sqrt{3}}{3}", "\\frac{1}{\\sqrt{3}}", True),
    ("\\frac{\\sqrt{3}}{3}", "\\frac{\\sqrt{3}}{2}", False),
    ("11\\sqrt2", "11\\sqrt{2}", True),
    ("\\sqrt{53}", "\\sqrt{52}", False),
    ("\\frac{3\\sqrt{3}}{4}", "\\frac{3}{4}\\sqrt{3}", True),
    ("2\\sqrt{2}", "2.828", False),
    ("2\\sqrt{2}", "2.8284271247461903", False),
    ("\\sqrt[3]{2}", "2^{1/3}", True),
    ("4", "\\sqrt{16}", True),
    ("-2", "\\sqrt[3]{-8}", True),
    ("1+2\\sqrt{3}", "2\\sqrt3+1", True),
    ("11 \\sqrt{5} + 11", "11(1+\\sqrt{5})", True),
    ("\\sqrt{2}+\\sqrt{3}", "\\sqrt{5+2\\sqrt{6}}", True),
    ("\\frac{\\pi}{2}", "\\pi/2", True),
    ("288 \\pi", "288\\pi", True),
    ("12\\pi", "12 \\cdot \\pi", True),
    ("12\\pi", "12 \\times \\pi", True),
    ("\\frac{20000}{\\pi}", "20000/\\pi", True),
    ("18+2\\pi", "2\\pi + 18", True),
    ("\\pi", "3.14", False),
    ("\\pi", "3.14159265358979", False),
    ("8\\pi", "8", False),
    ("-\\frac{\\pi}{6}", "-\\pi/6", True),
    ("\\frac{\\pi^2}{8}", "\\frac{1}{8}\\pi^2", True),
    ("\\frac{2}{1005}", "\\frac{4}{2010}", True),
    ("\\frac{2}{1005}", "\\frac{2}{1006}", False),
    ("\\frac{\\sqrt{21}}{5}", "\\sqrt{\\frac{21}{25}}", True),
    ("\\frac{448}{15625}", "0.028672", True),
]

SCIENTIFIC = [
    ("1.5 \\times 10^{5}", "150000", True),
    ("150000", "1.5e5", True),
    ("3 \\times 10^{-3}", "0.003", True),
    ("2\\times10^8", "2 \\cdot 10^8", True),
    ("1.5\\times10^5", "1.5 \\times 10^6", False),
    ("6.02\\times10^{23}", "6.02e23", True),
    ("6.02\\times10^{23}", "6.02E+23", True),
    ("0.00012", "1.2 \\times 10^{-4}", True),
]

SPACING = [
    ("\\frac{1}{2}", "\\frac{1}{2}\\!", True),
    ("(1,2)", "\\left( 1, 2 \\right)", True),
    ("3\\sqrt{2}", "3 \\, \\sqrt{2}", True),
    ("x+1", "x\\;+\\;1", True),
    ("\\frac{1}{2}", "\\displaystyle\\frac{1}{2}", True),
    ("\\frac{1}{2}", "\\frac {1} {2}", True),
    ("(1,2)", "\\big( 1, 2 \\big)", True),
    ("2", "\\quad 2", True),
    ("2", "~2~", True),
]

TUPLES_INTERVALS = [
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3, \\pi/2)", True),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3, \\frac{\\pi}{3})", False),
    ("(2,4)", "(4,2)", False),
    ("(1,-16,-4,43)", "(1, -16, -4, 43)", True),
    ("(1,-16,-4,43)", "(1, -16, 43, -4)", False),
    ("(15,-29)", "(15, -29)", True),
    ("(15,-29)", "(15,29)", False),
    ("(6,31,-1)", "(6,31)", False),
    ("\\left( \\frac{3}{2}, -13 \\right)", "(1.5, -13)", True),
    ("(8,-2)", "8, -2", True),
    ("(8,-2)", "[8,-2]", False),
    ("(2,\\infty)", "(2, \\infty)", True),
    ("(2,\\infty)", "(2, +\\infty)", True),
    ("(2,\\infty)", "[2,\\infty)", False),
    ("(-\\infty, 0]", "(-\\infty, 0)", False),
    ("(-\\infty, 0]", "x \\le 0", True),
    ("(-\\infty, 0]", "x \\leq 0", True),
    ("(5,\\infty)", "x > 5", True),
    ("(5,\\infty)", "x \\ge 5", False),
    ("[-2,7]", "-2 \\le x \\le 7", True),
    ("x \\in [-2,7]", "[-2, 7]", True),
    ("x \\in [-2,7]", "(-2, 7)", False),
    ("\\left(\\frac{3}{5},\\frac{8}{3}\\right]", "(0.6, 8/3]", True),
    ("\\left(\\frac{3}{5},\\frac{8}{3}\\right]", "(0.6, 8/3)", False),
    ("(3,4]", "(3,4)", False),
    ("(3,4]", "\\left(3,4\\right]", True),
    ("(-\\infty, 2) \\cup (3, \\infty)", "(3,\\infty) \\cup (-\\infty,2)", True),
    ("(-\\infty, 2) \\cup (3, \\infty)", "(-\\infty, 2] \\cup (3, \\infty)", False),
    ("(0,9) \\cup (9,36)", "(0,36)", False),
    ("(2,12) \\cup (12,102)", "(2,12)\\cup(12,102)", True),
    ("\\left[ \\frac{\\pi^2}{8}, \\frac{5 \\pi^2}{4} \\right]", "[\\pi^2/8, 5\\pi^2/4]", True),
    ("(-\\sqrt{3}, \\sqrt{3})", "(-\\sqrt3,\\sqrt3)", True),
    ("(-\\sqrt{3}, \\sqrt{3})", "[-\\sqrt3,\\sqrt3]", False),
]

SETS = [
    ("\\{1\\pm\\sqrt{5},-2\\}", "-2, 1+\\sqrt5, 1-\\sqrt5", True),
    ("\\{1\\pm\\sqrt{5},-2\\}", "\\{-2, 1+\\sqrt5\\}", False),
    ("3, 5, 7", "7, 5, 3", True),
    ("3, 5, 7", "\\{3,5,7\\}", True),
    ("3, 5, 7", "3, 5", False),
    ("3, 5, 7", "3, 5, 7, 9", False),
    ("1,-2", "-2, 1", True),
    ("1,-2", "1, 2", False),
    ("1 \\pm \\sqrt{19}", "1+\\sqrt{19}, 1-\\sqrt{19}", True),
    ("1 \\pm \\sqrt{19}", "1+\\sqrt{19}", False),
    ("1 \\pm \\sqrt{19}", "1 \\pm \\sqrt{19}", True),
    ("3 \\pm 2 \\sqrt{2}", "3-2\\sqrt2, 3+2\\sqrt2", True),
    ("-2,1", "x=-2, x=1", True),
    ("-2,1", "x = 1 \\text{ or } x = -2", True),
    ("2, 3", "2 and 3", True),
    ("2, 3", "2 \\text{ and } 3", True),
    ("\\{2\\}", "2", True),
    ("1, 1, 2", "1, 2, 2", False),
]

EQUATIONS = [
    ("5", "x=5", True),
    ("x=5", "5", True),
    ("x=5", "x = 5", True),
    ("5", "x = 6", False),
    ("y = 2x + 3", "y=2x+3", True),
    ("y = 2x + 3", "y = 3 + 2x", True),
    ("y = 2x + 3", "2x - y + 3 = 0", True),
    ("y = 2x + 3", "y = 2x + 4", False),
    ("y = 2x + 3", "2x+3", True),
    ("5x - 7y + 11z + 4 = 0", "-5x+7y-11z-4=0", True),
    ("5x - 7y + 11z + 4 = 0", "10x - 14y + 22z + 8 = 0", True),
    ("5x - 7y + 11z + 4 = 0", "5x - 7y + 11z - 4 = 0", False),
    ("y = -2x", "y=-2x", True),
    ("y=-2x", "-2x", True),
    ("y=-2x", "y=2x", False),
    ("k = 3", "3", True),
    ("3", "k = 3", True),
    ("\\theta = \\frac{\\pi}{4}", "\\frac{\\pi}{4}", True),
]

CHOICES_AND_TEXT = [
    ("\\text{(C)}", "C", True),
    ("\\text{(C)}", "(C)", True),
    ("\\text{(C)}", "\\textbf{(C)}", True),
    ("\\text{(C)}", "\\text{(C)} 12", True),
    ("\\text{(E)}", "(D)", False),
    ("\\text{(E)}", "E", True),
    ("B", "\\text{B}", True),
    ("\\text{(B)}", "A", False),
    ("\\text{Evelyn}", "Evelyn", True),
    ("\\text{Evelyn}", "\\text{evelyn}", True),
    ("\\text{Evelyn}", "Navin", False),
    ("\\text{east}", "East", True),
    ("\\text{east}", "west", False),
    ("\\text{even}", "\\text{odd}", False),
    ("\\text{even}", "\\mbox{even}", True),
    ("\\text{ellipse}", "\\textbf{ellipse}", True),
    ("\\text{ellipse}", "\\text{parabola}", False),
    ("\\text{Navin}", "\\textbf{Navin}", True),
]

MATRICES = [
    ("\\begin{pmatrix} -1 & 0 \\\\ 0 & -1 \\end{pmatrix}", "\\begin{bmatrix}-1&0\\\\0&-1\\end{bmatrix}", True),
    ("\\begin{pmatrix} -1 & 0 \\\\ 0 & -1 \\end{pmatrix}", "\\begin{pmatrix} 1 & 0 \\\\ 0 & -1 \\end{pmatrix}", False),
    ("\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}", "\\begin{pmatrix} 1 & 3 \\\\ 2 & 4 \\end{pmatrix}", False),
    ("\\begin{pmatrix} -1/3 \\\\ 2/3 \\\\ 5/3 \\end{pmatrix}",
     "\\begin{pmatrix} -\\frac13 \\\\ \\frac23 \\\\ \\frac53 \\end{pmatrix}", True),
    ("\\begin{pmatrix} -1/3 \\\\ 2/3 \\\\ 5/3 \\end{pmatrix}", "(-1/3, 2/3, 5/3)", True),
    ("\\begin{pmatrix} -1/3 \\\\ 2/3 \\\\ 5/3 \\end{pmatrix}",
     "\\begin{pmatrix} 2/3 \\\\ -1/3 \\\\ 5/3 \\end{pmatrix}", False),
    ("\\begin{pmatrix} 1/5 \\\\ -18/5 \\end{pmatrix}", "\\begin{pmatrix} 0.2 \\\\ -3.6 \\end{pmatrix}", True),
    ("\\begin{pmatrix} 1/5 \\\\ -18/5 \\end{pmatrix}", "\\begin{pmatrix} 0.2 \\\\ -3.6 \\\\ 0 \\end{pmatrix}", False),
    ("\\begin{pmatrix} -7 \\\\ 16 \\\\ 5 \\end{pmatrix}", "\\left(\\begin{array}{c} -7 \\\\ 16 \\\\ 5 \\end{array}\\right)", True),
]

EXPRESSIONS = [
    ("x^5 - x^4 + x^3 - x^2 + x - 1", "(x-1)(x^4+x^2+1)", True),
    ("x^5 - x^4 + x^3 - x^2 + x - 1", "(x-1)(x^4+x^2-1)", False),
    ("(a+5)(b+2)", "ab+2a+5b+10", True),
    ("(a+5)(b+2)", "ab+2a+5b+11", False),
    ("\\frac{11+9a}{20}", "\\frac{9a+11}{20}", True),
    ("\\frac{11+9a}{20}", "0.55+0.45a", True),
    ("6r^2-4r-24", "2(3r^2-2r-12)", True),
    ("6r^2-4r-24", "6r^2-4r+24", False),
    ("8n^2 + 4n + 1", "(2n+1)^2 + 4n^2", True),
    ("2k+2", "2(k+1)", True),
    ("2k+2", "2(n+1)", False),
    ("\\cot x", "\\frac{\\cos x}{\\sin x}", True),
    ("\\cot x", "\\tan x", False),
    ("p - q", "-(q-p)", True),
    ("p - q", "q - p", False),
    ("\\sin^2 x + \\cos^2 x", "1", True),
    ("\\frac{x^2-1}{x-1}", "x+1", True),
    ("\\log_2 8", "3", True),
    ("e^{i\\pi}", "-1", True),
    ("\\binom{5}{2}", "10", True),
    ("5!", "120", True),
    ("2^{10}", "1024", True),
    ("x^2", "x^3", False),
    ("15x - 80", "5(3x-16)", True),
    ("x^8 + x^7 + x^6 + x^5 + x^4 + x^3 + x^2 + x + 1", "\\frac{x^9-1}{x-1}", True),
    ("5r^5", "5 r^{5}", True),
    ("\\frac{1}{x}", "x^{-1}", True),
    ("e^2", "\\exp(2)", True),
    ("\\ln 2", "\\log(2)", True),
    ("|x-1|", "|1-x|", True),
    ("\\lfloor 3.7 \\rfloor", "3", True),
    ("6 - 5i", "-5i+6", True),
    ("1+2i", "1-2i", False),
    ("-2 + 7i", "7i - 2", True),
    ("\\operatorname{lcm}(4, 6)", "12", True),
    ("\\max(3, 5)", "5", True),
    ("\\gcd(12, 18)", "6", True),
    ("\\max(3, 5)", "3", False),
]

ADVERSARIAL = [
    # Numbers too large to evaluate are "could not verify", not a hang.
    ("1", boxed("2^{2^{2^{2^{2^{100}}}}}"), None),
    ("1", boxed("10^{10^{10}}"), None),
    ("1", boxed("\\sqrt{" * 200 + "2" + "}" * 200), None),
    ("1", boxed("99999999999!"), None),
    ("1", boxed("\\max(10^{10^{10}}, 1)"), None),
    ("1", boxed("9" * 5000), None),
    ("3", boxed("(" * 5000 + "3" + ")" * 5000), None),
    # Look-alikes that must not pass.
    ("12", boxed("1 2"), None),
    ("12", boxed("12x"), False),
    ("2", boxed("2^{\\circ}C"), False),
    ("1", boxed("0.99999999999"), False),
    ("100", boxed("1,00"), False),
]


def _all_cases() -> list[tuple[str, str, str, bool | None]]:
    cases = []
    wrapped = [("number", NUMBERS), ("percent_units", PERCENT_AND_UNITS), ("fractions_roots_pi", FRACTIONS_ROOTS_PI),
               ("scientific", SCIENTIFIC), ("spacing", SPACING), ("tuples_intervals", TUPLES_INTERVALS),
               ("sets", SETS), ("equations", EQUATIONS), ("choices_text", CHOICES_AND_TEXT),
               ("matrices", MATRICES), ("expressions", EXPRESSIONS)]
    for group, table in wrapped:
        cases += [(f"{group}-{i}", gold, boxed(answer), expected) for i, (gold, answer, expected) in enumerate(table)]
    for group, table in (("extraction", EXTRACTION), ("no_answer", NO_ANSWER), ("adversarial", ADVERSARIAL)):
        cases += [(f"{group}-{i}", gold, response, expected) for i, (gold, response, expected) in enumerate(table)]
    return cases


CASES = _all_cases()


def test_table_has_at_least_200_cases() -> None:
    assert len(CASES) >= 200
    assert {expected for *_, expected in CASES} == {True, False, None}


@pytest.mark.parametrize(("case_id", "gold", "response", "expected"), CASES, ids=[c[0] for c in CASES])
def test_labelled_case(case_id: str, gold: str, response: str, expected: bool | None) -> None:
    verdict = verify(gold, response)
    assert isinstance(verdict, MathVerdict)
    assert verdict.correct is expected, f"{case_id}: {verdict}"
    assert verdict.reason


def test_reasons_name_the_path() -> None:
    assert verify("5", "\\boxed{5}").reason == "equal_string"
    assert verify("0.5", "\\boxed{\\frac12}").reason == "equal_value"
    assert verify("5", "\\boxed{6}").reason == "not_equal"
    assert verify("5", "").reason == "no_answer"
    assert verify("5", "\\boxed{}").reason.startswith("empty_answer")
    assert verify("1", boxed("10^{10^{10}}")).reason == "too_complex"
    assert verify("\\max(3, 5)", "\\boxed{5}").reason == "equal_symbolic"


def test_extracted_answer_is_reported() -> None:
    verdict = verify("\\frac{1}{2}", "<think>\\boxed{3}</think> It is $\\boxed{\\dfrac{1}{2}}$.")
    assert verdict == MathVerdict(True, "\\dfrac{1}{2}", "equal_string", "boxed")


def test_extract_answer_sources() -> None:
    assert extract_answer("so \\boxed{\\frac{1}{\\sqrt{2}}}.") == "\\frac{1}{\\sqrt{2}}"
    assert extract_answer("#### 1,234") == "1,234"
    assert extract_answer("<answer> 7 </answer>") == "7"
    assert extract_answer("Thus, the answer is $x = 3$.") == "x = 3"
    assert extract_answer("\\boxed{}") is None
    assert extract_answer("") is None
    assert find_answer("\\boxed{}").source == "boxed"
    assert find_answer("stuff\n#### 5").source == "gsm8k"


def test_ten_megabyte_inputs_are_linear() -> None:
    filler = "We keep adding terms and the sum grows. " * 262_144  # ~10 MB
    assert len(filler) > 10_000_000
    assert verify("7", filler + "\\boxed{7}").correct is True
    assert verify("7", "\\boxed{7}" + filler).correct is True  # the last boxed answer counts
    assert verify("7", "\\boxed{7}" + filler + "\\boxed{8}").correct is False
    assert verify("7", filler).correct is None
    assert verify("7", "\\boxed{" * 2_000_000).correct is None
    assert verify("7", "{" * 10_000_000 + "\\boxed{7}").correct is True
    assert verify("7", "answer is " * 1_000_000).correct is not True
    assert verify("7", "1" * 10_000_000).correct is None


@pytest.mark.parametrize("response", [
    "The answer is 5 minutes minutes minutes minutes minutes minutes minutes minutes =",
    "\\boxed{5 hours per day each week for the whole year round, then !}",
    "5\n" + " ".join(["apples oranges pears"] * 60) + " 2 =",
])
def test_unit_words_after_a_number_do_not_backtrack(response: str) -> None:
    """Words after a quantity are tried as units; a regex that could split a word
    anywhere took 84 s on four of them. Bounded by a child process, not timed."""
    import subprocess
    import sys

    code = f"from verifiers.math import verify; print(verify('5', {response!r}).correct)"
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert child.returncode == 0, child.stderr
    assert child.stdout.strip() in ("True", "False", "None")


def test_gold_answers_of_math500_and_gsm8k_match_themselves() -> None:
    """Every reference answer, boxed as a response, verifies against itself and
    against the answer of another problem it differs from only when values differ."""
    for name in ("math500.jsonl", "gsm8k_test.jsonl"):
        answers = [json.loads(line)["answer"] for line in (BENCHMARKS / name).read_text().splitlines()]
        for answer in answers:
            assert verify(answer, boxed(answer)).correct is True, answer
    assert verify("18", boxed("3")).correct is False


def test_verify_turns_non_strings_into_an_error_verdict() -> None:
    verdict = verify(5, "\\boxed{5}")  # type: ignore[arg-type]
    assert verdict.correct is None and verdict.code == "error" and "expected str" in verdict.reason
    assert verify("5", None).code == "error"  # type: ignore[arg-type]
    assert verify("5", "\\boxed{5}", policy="loose").code == "error"


def test_verify_from_threads_agrees_with_serial() -> None:
    pairs = [(gold, response) for _, gold, response, _ in CASES[:120]]
    serial = [verify(gold, response) for gold, response in pairs]
    threaded: list[list[MathVerdict]] = [[] for _ in range(4)]

    def run(slot: int) -> None:
        threaded[slot] = [verify(gold, response) for gold, response in pairs]

    threads = [threading.Thread(target=run, args=(slot,)) for slot in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(result == serial for result in threaded)


# -- verify_batch ----------------------------------------------------------

def hang_on_marker(gold: str, response: str) -> MathVerdict:
    """A per-item check that never returns for responses containing HANG, as a
    stuck symbolic computation would; everything else is the real ``verify``."""
    if "HANG" in response:
        while True:
            time.sleep(1)
    return verify(gold, response)


@pytest.mark.timeout(180)
def test_verify_batch_matches_verify_in_order() -> None:
    pairs = [(gold, response) for _, gold, response, _ in CASES if len(response) < 100_000]
    batch = verify_batch(pairs, workers=2, timeout_s=30, chunk_size=7)
    assert batch == [verify(gold, response) for gold, response in pairs]


@pytest.mark.timeout(180)
def test_verify_batch_times_out_a_stuck_item_without_stalling_others() -> None:
    pairs = [("5", "\\boxed{5}")] * 10 + [("1", "HANG")] + [("0.5", "\\boxed{\\frac12}")] * 10 + [("2", "HANG")]
    # Returning at all shows both stuck workers were killed, not waited for.
    results = verify_batch(pairs, workers=2, timeout_s=1.0, chunk_size=4, check=hang_on_marker)
    assert [r.correct for r in results] == [True] * 10 + [None] + [True] * 10 + [None]
    assert results[10].reason.startswith("timeout") and results[21].reason.startswith("timeout")


@pytest.mark.timeout(180)
def test_verify_batch_timeouts_work_from_a_worker_thread() -> None:
    outcome: dict[str, list[MathVerdict]] = {}
    pairs = [("1", "HANG"), ("3", "\\boxed{3}")]

    def run() -> None:
        outcome["results"] = verify_batch(pairs, workers=1, timeout_s=0.5, check=hang_on_marker)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=120)
    assert not thread.is_alive()
    assert [r.correct for r in outcome["results"]] == [None, True]
    assert outcome["results"][0].reason.startswith("timeout")


@pytest.mark.timeout(180)
def test_verify_batch_handles_a_ten_megabyte_item() -> None:
    big = "Reasoning goes on. " * 550_000 + "\\boxed{12}"
    results = verify_batch([("12", big), ("3", "\\boxed{4}")], workers=2, timeout_s=60)
    assert [r.correct for r in results] == [True, False]


def test_verify_batch_validates_arguments() -> None:
    assert verify_batch([], workers=2) == []
    with pytest.raises(ValueError, match="workers"):
        verify_batch([("1", "1")], workers=0)
    with pytest.raises(ValueError, match="timeout_s"):
        verify_batch([("1", "1")], timeout_s=0)
    with pytest.raises(ValueError, match="chunk_size"):
        verify_batch([("1", "1")], chunk_size=0)
