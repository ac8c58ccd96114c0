"""The answer forms real models write (issue 16): answer lines, sets, equations,
decimal commas, the strict/lenient policy, the rule on every verdict, and no raising path."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from verifiers.math import verify, verify_batch

# (gold, response, expected correct, expected rule) under the strict policy.
STRICT_CASES = [
    # answer lines, markdown, math wrappers, units and punctuation
    ("18", "Let me add them up.\nA: 18", True, "answer_line"),
    ("18", "Working...\n**A:** 18", True, "answer_line"),
    ("18", "Ans. 18", True, "answer_line"),
    ("18", "Final answer: **18**", True, "answer_is"),
    ("18", "**Final Answer:** 18.", True, "answer_is"),
    ("12", "*Final answer:* 12 cm.", True, "answer_is"),
    ("12", "Answer: _12_", True, "answer_is"),
    ("12", "The answer is \\(12\\).", True, "answer_is"),
    ("12", "The final answer is \\[12\\]", True, "answer_is"),
    ("12", "**Answer:** $$12$$", True, "answer_is"),
    ("12", "Answer: 13", False, "answer_is"),
    ("7", "A: 8", False, "answer_line"),
    ("7", "ans: 7", True, "answer_line"),
    # option A of a choice list is not an answer line
    ("C", "Options:\nA. 12\nB. 15\nC. 18\n\nThe answer is (C).", True, "answer_is"),
    # sets and tuples
    ("(3, 37, 3, 13), (3, 17, 3, 7)", "\\boxed{(3, 17, 3, 7), (3, 37, 3, 13)}", True, "boxed"),
    ("(3, 37, 3, 13), (3, 17, 3, 7)", "\\boxed{(3, 17, 3, 7), (3, 13, 3, 37)}", False, "boxed"),
    ("1, 2", "so $x = \\boxed{2}$ or $x = \\boxed{1}$", True, "boxed_set"),
    ("\\{-1, 4\\}", "The roots are \\boxed{4} and \\boxed{-1}.", True, "boxed_set"),
    ("\\{-1, 4\\}", "The roots are \\boxed{4} and \\boxed{1}.", False, "boxed"),
    ("\\{1, 2, 3\\}", "\\boxed{3, 1, 2}", True, "boxed"),
    ("\\{1, 2, 3\\}", "\\boxed{\\{2, 3, 1\\}}", True, "boxed"),
    ("(1, 2)", "\\boxed{(2, 1)}", False, "boxed"),
    ("[1, 2)", "\\boxed{[1, 2)}", True, "boxed"),
    ("[1, 2)", "\\boxed{(1, 2]}", False, "boxed"),
    ("\\pm 2021", "\\boxed{\\{-2021, 2021\\}}", True, "boxed"),
    ("\\{-2021, 2021\\}", "\\boxed{\\pm 2021}", True, "boxed"),
    ("-2021, 2021", "\\boxed{2021, -2021}", True, "boxed"),
    ("\\pm 2021", "\\boxed{2021}", False, "boxed"),
    # equations
    ("5", "\\boxed{x = 5}", True, "boxed"),
    ("(5, 8)", "\\boxed{(x, y) = (5, 8)}", True, "boxed"),
    ("(5, 8)", "\\boxed{(x, y) = (8, 5)}", False, "boxed"),
    ("x^2 + 1", "\\boxed{f(x) = x^2 + 1}", True, "boxed"),
    ("y = 2x + 1", "\\boxed{y = 1 + 2x}", True, "boxed"),
    ("y = 2x + 1", "\\boxed{2x - y + 1 = 0}", True, "boxed"),
    ("y = 2x + 1", "\\boxed{y = 2x - 1}", False, "boxed"),
    # decimal comma vs thousands separator
    ("1.22", "\\boxed{1,22}", True, "boxed"),
    ("3.14159", "\\boxed{3,14159}", True, "boxed"),
    ("1234.5", "\\boxed{1.234,5}", True, "boxed"),
    ("1000", "\\boxed{1,000}", True, "boxed"),
    ("12345678", "\\boxed{12,345,678}", True, "boxed"),
    ("1.234", "\\boxed{1,234}", False, "boxed"),  # three digits: thousands
    ("\\{1, 2\\}", "so the answer is $x = 1$ or $x = 2$.", True, "answer_is"),
    ("3, 5, 7", "The answer is $3$, $5$ and $7$.", True, "answer_is"),
    ("3", "The answer is $3$ and $x$ is odd.", True, "answer_is"),
    ("1, 22", "\\boxed{1,22}", True, "boxed"),  # the gold is a list: no decimal reading
    ("1,22", "\\boxed{1.22}", True, "boxed"),  # a gold with a decimal comma, an answer with a point
    ("0,111", "\\boxed{0.111}", True, "boxed"),  # a leading 0 is never thousands
    ("0.111", "\\boxed{0,111}", True, "boxed"),
    ("1,5", "\\boxed{1.6}", False, "boxed"),
    ("28\\%", "\\boxed{28 pct}", True, "boxed"),
    # relations written in ASCII or LaTeX
    ("x >= 5", "\\boxed{x \\geq 5}", True, "boxed"),
    ("x \\le 2", "\\boxed{x <= 2}", True, "boxed"),
    ("x < 3", "\\boxed{x \\lt 3}", True, "boxed"),
    ("x \\geq 5", "\\boxed{x <= 5}", False, "boxed"),
    ("x \\le 5", "\\boxed{5 \\geq x}", True, "boxed"),
    # a worked chain: the last side is the value
    ("720", "The answer is $3! \\times 5! = 720$.", True, "answer_is"),
    ("x = 11", "\\boxed{x = 5+5+1 = 11}", True, "boxed"),
    ("0", "\\boxed{x^2 - 4 = 0}", False, "boxed"),  # an equation, not a value
    # an answer statement that is a sentence: the value it ends on
    ("120", "The volume is $5 \\times 6 \\times 4 = 120$. Final Answer: The volume of $ABCDEFGH$ is 120. "
     "I hope it is correct.", True, "answer_is"),
    ("120", "Final Answer: The volume of the prism is 121. I hope it is correct.", False, "answer_is"),
    ("\\frac{1}{2}", "Answer: the probability is $\\frac{1}{2}$ overall for this game", True, "answer_is"),
    # a chat template's next turn after the answer
    ("[0,1)", "Final Answer: The final answer is $(0, 1)$. I hope it is correct. <|im_start|>user", False, "answer_is"),
    ("12000023", "Final Answer: The final answer is 12,000,023. I hope it is correct. <|im_start|>user", True,
     "answer_is"),
]


@pytest.mark.parametrize(("gold", "response", "correct", "rule"), STRICT_CASES)
def test_answer_forms_strict(gold: str, response: str, correct: bool, rule: str) -> None:
    verdict = verify(gold, response)
    assert (verdict.correct, verdict.rule) == (correct, rule), verdict


# A final line too long to be an answer line (strict reads short final lines).
_LONG_PROSE = "We consider every case in turn and check each of them carefully against the conditions. " * 3

# The final answer given only in prose: no answer under strict, found under lenient.
PROSE_CASES = [
    ("9", "196 = 2^2 * 7^2, so it has 3 * 3 divisors.\n\nTherefore, the number of divisors of 196 is 9.",
     True, "last_number"),
    ("9", "Therefore, the number of divisors of 196 is 8.", False, "last_number"),
    ("\\frac{1}{2}", _LONG_PROSE + " Hence the probability equals $\\frac{1}{2}$.", True, "last_math"),
    ("1.5", _LONG_PROSE + " So the ratio $a/b$ comes out to $1.5$ in the end.", True, "last_math"),
    ("1.5", _LONG_PROSE + " So the ratio $a/b$ comes out to $2.5$ in the end.", False, "last_math"),
    ("42", "After all that work, she has 42 apples left. I hope this helps!", True, "last_number"),
    ("2500", "The total cost is 2,500 dollars for the whole trip overall.", True, "last_number"),
    ("2/3", "P(A) = (1/2) * (4/3) P(A) = 2/3 Therefore, the probability that Alice wins the game is 2/3. "
     "<|im_start|>user", True, "last_number"),
]


@pytest.mark.parametrize(("gold", "response", "correct", "rule"), PROSE_CASES)
def test_prose_answers_need_the_lenient_policy(gold: str, response: str, correct: bool, rule: str) -> None:
    strict = verify(gold, response)
    assert strict.correct is None and strict.code == "no_answer" and strict.rule is None
    lenient = verify(gold, response, policy="lenient")
    assert (lenient.correct, lenient.rule) == (correct, rule), lenient


def test_lenient_reads_the_number_of_a_final_line_strict_cannot_compare() -> None:
    response = "Soucis : 2,74 $ a.."
    assert verify("2.74", response).correct is not True
    lenient = verify("2.74", response, policy="lenient")
    assert (lenient.correct, lenient.rule) == (True, "last_number")
    assert verify("2.75", response, policy="lenient").correct is False


def test_a_lowercase_variable_line_is_no_answer_line() -> None:
    assert verify("3", "Let the sides be\na: 3\nb: 4").rule != "answer_line"


def test_lenient_keeps_strict_answers_first() -> None:
    response = "The answer is \\boxed{7}. Some 12 more words follow with 99 in them."
    assert verify("7", response, policy="lenient").rule == "boxed"
    assert verify("7", response, policy="lenient").correct is True


def test_lenient_reads_only_the_final_section() -> None:
    response = "<think>it is 5</think>\n\nNothing numeric here at all."
    assert verify("5", response, policy="lenient").code == "no_answer"


def test_verify_batch_passes_the_policy() -> None:
    pairs = [(gold, response) for gold, response, _, _ in PROSE_CASES]
    strict = verify_batch(pairs, workers=1)
    lenient = verify_batch(pairs, workers=1, policy="lenient")
    assert all(v.code == "no_answer" for v in strict)
    assert lenient == [verify(g, r, policy="lenient") for g, r in pairs]
    with pytest.raises(ValueError, match="policy"):
        verify_batch(pairs, policy="loose")


def test_minerva_style_gold_does_not_raise() -> None:
    gold = "\\frac{dM}{dt}=\\frac{10^{5}L_{\\odot}}{0.007c^{2}M_{\\odot}^{6}}M^{6}"
    for answer in (gold, "\\frac{dM}{dt}=\\frac{10^5 L_\\odot M^6}{0.007 c^2 M_\\odot^6}", "M^{6}", "", "\\odot"):
        verdict = verify(gold, f"So \\boxed{{{answer}}}")
        assert verdict.code != "error", verdict


def test_empty_parts_are_not_values() -> None:
    # "a \\cup" used to index an empty string.
    assert verify("+\\log_", "\\thetay\\cup").code != "error"
    assert verify("(0, 1) \\cup", "\\boxed{(0, 1)}").code != "error"


_ATOMS = [
    "\\frac{", "}{", "}", "{", "\\sqrt", "^", "_", "x", "y", "2", "0.5", "(", ")", "[", "]", "\\{", "\\}",
    ",", "=", "\\pm", "\\boxed{", "\\cup", "\\infty", "-", "+", "\\odot", "M", "L_{", "\\text{", "cm",
    "\\left(", "\\right)", "\\begin{pmatrix}", "&", "\\\\", "\\end{pmatrix}", "<", ">", "\\le", "!", "%",
    "\\$", "$", " ", "\\mathbf", "A:", "**", "\\dfrac", "\\cdot", "^{6}", "\\theta", "\\sin", "\\log_",
    "\\pi", "1,22", "10^{5}", "\n", "</think>", "<answer>", "####", "Answer:", "\\(", "\\)", "\\[", "\\]",
    "$$", "\\operatorname{", "\\sum", "9999999", ".", "The answer is", "so", "\\begin{cases}", "\u2212",
]
_LATEX = st.lists(st.sampled_from(_ATOMS), max_size=12).map("".join)
_ANY_TEXT = st.one_of(_LATEX, st.text(max_size=60))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(gold=_ANY_TEXT, response=_ANY_TEXT, policy=st.sampled_from(["strict", "lenient"]))
def test_verify_never_raises(gold: str, response: str, policy: str) -> None:
    verdict = verify(gold, response, policy=policy)
    assert verdict.correct in (True, False, None)
    assert verdict.code != "error", verdict  # random input is no excuse for an internal failure
    boxed = verify(gold, f"The answer is $\\boxed{{{response}}}$.", policy=policy)
    assert boxed.code != "error", boxed
