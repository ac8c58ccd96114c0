"""A task family tiny models learn on a CPU in minutes: two-step integer word problems.

Used by the curation experiment (`factory experiment curation`) and by the
``tiny-teacher-arith`` / ``tiny-base-arith`` model builds. Problems look like short
GSM8K items ("Mia has 7 pens. She buys 5 more and gives away 3. How many pens
does Mia have now?") or bare expressions ("What is 7 + 5 - 3?"); each has an exact
integer answer and a checkable chain (``7 + 5 = 12``, ``12 - 3 = 9``).

A seeded generator draws problems; :func:`problem_splits` returns train and
held-out splits that share no problem (not even the same numbers under another
wording: the split is by the underlying computation).

The teacher's training data is imperfect on purpose, in the ways real teachers are
(:data:`TEACHER_FLAWS`): wrong answers from a systematic slip, chains that switch
language, chains that loop, reasoning with no answer after it, reasoning that never
closes ``</think>``. Sampling the trained teacher n times per prompt adds the
near-duplicates. So every shipped filter has real work.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

NAMES = [("Mia", "She"), ("Tom", "He"), ("Ana", "She"), ("Ben", "He"), ("Lea", "She"), ("Sam", "He"), ("Eva", "She"), ("Max", "He")]
ITEMS = ["apples", "pens", "cards", "books", "coins", "stamps", "shells", "marbles"]

# (wording of the problem, operation of step 1, operation of step 2). {n} name, {p} pronoun, {i} item.
WORD_TEMPLATES: list[tuple[str, str, str]] = [
    ("{n} has {a} {i}. {p} buys {b} more and gives away {c}. How many {i} does {n} have now?", "+", "-"),
    ("{n} has {a} {i}. {p} finds {b} more, then gets {c} more. How many {i} does {n} have now?", "+", "+"),
    ("{n} had {a} {i}. {p} gave {b} to a friend and then bought {c} more. How many {i} does {n} have now?", "-", "+"),
    ("{n} had {a} {i}. {p} lost {b} and then sold {c}. How many {i} does {n} have left?", "-", "-"),
]
EXPR_TEMPLATE = "What is {a} {o1} {b} {o2} {c}?"
SPLIT_SEED = 0  # the one split the teacher and every experiment share: the teacher never sees held-out computations
HELDOUT_SIZE = 120  # of the 648 computations with results in 0..9

# Share of the teacher's training chains with each flaw (the rest are clean and right).
TEACHER_FLAWS: dict[str, float] = {
    "wrong_answer": 0.30,  # a sign slip in step 2: a consistent, plausible error, as real teachers make
    "mixed_language": 0.06,  # the chain switches to Chinese
    "loop": 0.06,  # the chain repeats its check line
    "no_answer": 0.06,  # the reasoning closes and no answer follows
    "unclosed_think": 0.04,  # reasoning never closes </think>
}


@dataclass(frozen=True)
class ArithProblem:
    id: str
    problem: str
    answer: int
    steps: tuple[str, str]  # "7 + 5 = 12", "12 - 3 = 9"
    key: tuple[int, int, int, str, str]  # the computation: splits are disjoint on this

    def row(self) -> dict[str, object]:
        return {"id": self.id, "problem": self.problem, "answer": str(self.answer), "task_type": "math"}


def _apply(x: int, op: str, y: int) -> int:
    return x + y if op == "+" else x - y


def draw_problem(rng: random.Random, max_value: int = 9) -> ArithProblem:
    """One problem with operands 1..9 and every intermediate result in 0..max_value.

    At ``max_value=9`` every number is one token, which a 2-layer model learns in
    minutes; larger values make a harder task of the same kind.
    """
    while True:
        if rng.random() < 0.75:
            text, o1, o2 = rng.choice(WORD_TEMPLATES)
            name, pronoun = rng.choice(NAMES)
            item = rng.choice(ITEMS)
        else:
            text, o1, o2 = EXPR_TEMPLATE, rng.choice("+-"), rng.choice("+-")
            name = pronoun = item = ""
        a, b, c = rng.randint(2, 9), rng.randint(1, 9), rng.randint(1, 9)
        first = _apply(a, o1, b)
        final = _apply(first, o2, c)
        if not (0 <= first <= max_value and 0 <= final <= max_value):
            continue
        problem = text.format(n=name, p=pronoun, i=item, a=a, b=b, c=c, o1=o1, o2=o2)
        return ArithProblem("", problem, final, (f"{a} {o1} {b} = {first}", f"{first} {o2} {c} = {final}"), (a, b, c, o1, o2))


def problem_splits(seed: int, train: int, heldout: int, max_value: int = 9) -> tuple[list[ArithProblem], list[ArithProblem]]:
    """Train and held-out problems, disjoint by computation; ids are stable for a seed.

    The held-out split takes its computations first, so growing `train` never changes it.
    """
    rng = random.Random(seed)
    seen_keys: set[tuple] = set()
    seen_text: set[str] = set()
    splits: list[list[ArithProblem]] = [[], []]
    held_keys: set[tuple] = set()
    for index, (size, prefix) in enumerate(((heldout, "heldout"), (train, "train"))):
        attempts = 0
        while len(splits[index]) < size:
            attempts += 1
            if attempts > 200 * (size + 10):
                raise ValueError(f"problem_splits: cannot draw {size} distinct {prefix} problems (the task has too few)")
            p = draw_problem(rng, max_value)
            if p.problem in seen_text or (index == 1 and p.key in held_keys):
                continue
            if index == 0 and p.key in seen_keys:
                continue
            seen_keys.add(p.key)
            seen_text.add(p.problem)
            if index == 0:
                held_keys.add(p.key)
            splits[index].append(ArithProblem(f"{prefix}-{seed}-{len(splits[index]):05d}", p.problem, p.answer, p.steps, p.key))
    return splits[1], splits[0]


def expression_form(p: ArithProblem) -> ArithProblem:
    """The bare computation of a problem ("What is 7 + 5 - 3?"): what the student base is pretrained on."""
    a, b, c, o1, o2 = p.key
    return ArithProblem(p.id, EXPR_TEMPLATE.format(a=a, b=b, c=c, o1=o1, o2=o2), p.answer, p.steps, p.key)


def write_jsonl(problems: list[ArithProblem], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for p in problems:
            handle.write(json.dumps(p.row()) + "\n")
    return path


# ---------------------------------------------------------------- the teacher's chains
def clean_chain(p: ArithProblem) -> tuple[str, str]:
    """(reasoning, answer) of a right, well-formed solution.

    The chain first restates the problem as its bare expression, then computes it one
    single-digit fact a line: reading the words and doing the arithmetic are separate steps,
    and the arithmetic lines look the same as in a bare expression's chain.
    """
    return "\n".join([f"{expression(p)}."] + [f"{s}." for s in p.steps]), f"The answer is \\boxed{{{p.answer}}}."


def expression(p: ArithProblem) -> str:
    """"7 + 5 - 3": the computation a problem asks for."""
    a, b, c, o1, o2 = p.key
    return f"{a} {o1} {b} {o2} {c}"


def flawed_chain(p: ArithProblem, flaw: str | None) -> str:
    """A full assistant text (``<think>…</think>`` then the answer) with one flaw, or none."""
    reasoning, answer = clean_chain(p)
    if flaw == "wrong_answer":
        a, b, c, o1, o2 = p.key
        first = _apply(a, o1, b)
        slipped = "-" if o2 == "+" else "+"
        wrong = _apply(first, slipped, c)
        if wrong < 0:  # keep the slip plausible: no negative counts
            wrong = first + c + 1
        reasoning = f"{expression(p)}.\n{p.steps[0]}.\n{first} {slipped} {c} = {wrong}."
        answer = f"The answer is \\boxed{{{wrong}}}."
    elif flaw == "mixed_language":
        first, final = p.steps
        reasoning = f"首先计算 {first}。\n然后计算 {final}。\n所以答案是 {p.answer}。"
    elif flaw == "loop":
        check = f"Wait, let me check {p.steps[1]} once more."
        reasoning = reasoning + "\n" + "\n".join([check] * 8)
    elif flaw == "no_answer":
        return f"<think>\n{reasoning}\n</think>"
    elif flaw == "unclosed_think":
        return f"<think>\n{reasoning}\n{answer}"
    return f"<think>\n{reasoning}\n</think>\n\n{answer}"


def pick_flaw(rng: random.Random, flaws: dict[str, float] = TEACHER_FLAWS) -> str | None:
    draw = rng.random()
    for flaw, share in flaws.items():
        if draw < share:
            return flaw
        draw -= share
    return None


@dataclass(frozen=True)
class Chat:
    user: str
    assistant: str


def teacher_examples(problems: list[ArithProblem], rng: random.Random, instruction: str) -> list[tuple[Chat, str | None]]:
    """One imperfect chain per problem, with the flaw it carries."""
    out = []
    for p in problems:
        flaw = pick_flaw(rng)
        out.append((Chat(f"{p.problem}\n\n{instruction}", flawed_chain(p, flaw)), flaw))
    return out


def describe(problem: ArithProblem) -> dict[str, object]:
    return asdict(problem)
