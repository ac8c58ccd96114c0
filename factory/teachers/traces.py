"""Other people's traces: the row shapes of public reasoning datasets and their thinking conventions.

A row becomes one or more ``Trace``s (prompt turns + the assistant's text, its reasoning when a
column or message field holds it separately, and per-element labels). Shapes:

  * ``sharegpt``:  ``conversations: [{from: human|user|gpt|assistant|system, value}]`` (+ ``system``)
                   — Bespoke-Stratos, OpenThoughts, Sky-T1, LIMO;
  * ``messages``:  OpenAI chat ``[{role, content[, reasoning_content]}]`` — API logs, NuminaMath;
  * ``prompt_completion``: TRL's ``prompt`` / ``completion`` (strings or message lists);
  * ``alpaca``:    ``instruction`` [+ ``input``] → ``output``;
  * ``openr1``:    a prompt column and a *list* of generations (OpenR1-Math ``generations``),
                   one trace per element; parallel lists of the same length
                   (``correctness_math_verify``, ``finish_reasons``, …) become per-trace labels;
  * ``columns``:   any prompt + generation (+ reasoning) columns named in ``fields``.

Thinking conventions (``normalise_thinking``): ``<think>…</think>``, OpenThoughts'
``<|begin_of_thought|>…<|end_of_thought|>`` + ``<|begin_of_solution|>…<|end_of_solution|>``,
R1-distill's missing opening ``<think>`` (the chat template emitted it), a separate reasoning
field, custom tags, or none. Each is rewritten to the store's one form, ``<think>\\n…\\n</think>\\n\\n
answer`` with ``reasoning`` and ``answer`` split out, so the format step and the SFT rows see one
convention; a block that is never closed stays unclosed, so the format step still rejects it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from factory.errors import RecipeError
from factory.recipe import ReplayFields

OPEN, CLOSE = "<think>", "</think>"
BEGIN_THOUGHT, END_THOUGHT = "<|begin_of_thought|>", "<|end_of_thought|>"
BEGIN_SOLUTION, END_SOLUTION = "<|begin_of_solution|>", "<|end_of_solution|>"

SHAPES = ("sharegpt", "messages", "prompt_completion", "alpaca", "openr1", "columns")
CONVENTIONS = ("think", "thought_solution", "missing_open", "field", "tags", "none")

# Role spellings of ShareGPT-style dumps → chat roles.
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "model": "assistant",
          "chatgpt": "assistant", "bot": "assistant", "system": "system", "tool": "tool", "function": "tool",
          "observation": "tool", "function_call": "assistant"}
_CHAT_COLUMNS = ("conversations", "messages", "conversation", "chat")
_REASONING_KEYS = ("reasoning_content", "reasoning", "thinking")
_REFERENCE_COLUMNS = ("answer", "reference", "ground_truth", "final_answer", "gold")


@dataclass(slots=True)
class Trace:
    """One sample as the source wrote it, before the thinking convention is normalised."""

    prompt_messages: list[dict[str, str]]
    completion: str
    reasoning: str | None = None
    labels: dict[str, Any] | None = None


@dataclass(slots=True)
class Thinking:
    """A completion in the store's form: canonical text, its reasoning and answer, and the convention it came in."""

    text: str
    reasoning: str | None
    answer: str
    convention: str
    closed: bool  # False: a reasoning block opened and never closed (no final answer)


# ---------------------------------------------------------------- shapes
def detect_shape(row: dict[str, Any], fields: ReplayFields) -> str | None:
    """The known shape a row has, or None. Checked from the most specific to the most generic."""
    generation = fields.generation or "generation"
    for column in (generation, "generations"):
        if isinstance(row.get(column), list) and _prompt_column(row, fields) is not None:
            return "openr1"
    chat = _chat_column(row, fields)
    if chat is not None:
        turns = row[chat]
        first = next((t for t in turns if isinstance(t, dict)), {}) if isinstance(turns, list) else {}
        return "sharegpt" if "from" in first or "value" in first else "messages"
    if "prompt" in row and "completion" in row:
        return "prompt_completion"
    if "instruction" in row and "output" in row:
        return "alpaca"
    if _prompt_column(row, fields) is not None and row.get(generation) is not None:
        return "columns"
    return None


def unrecognised(row: dict[str, Any], where: str) -> RecipeError:
    """The one line for a row no importer understands: the columns it has and what would work."""
    columns = ", ".join(sorted(map(str, row))[:20]) or "none"
    return RecipeError(
        f"{where}: format auto: unrecognised trace shape; columns seen: {columns}; expected conversations (ShareGPT), "
        "messages (OpenAI), prompt+completion, instruction+output (Alpaca), a prompt column + generation(s), "
        "or set teacher.replay.format: columns with teacher.replay.fields.prompt/generation"
    )


def traces_of(row: dict[str, Any], shape: str, fields: ReplayFields, where: str) -> Iterator[Trace]:
    """The traces of one row in a given shape; a row that does not fit is a one-line RecipeError."""
    if shape in ("sharegpt", "messages"):
        chat = _chat_column(row, fields)
        if chat is None:
            raise RecipeError(f"{where}: format {shape}: expected a '{fields.messages or 'conversations'}' list of turns; "
                              f"row has: {_columns(row)}")
        yield _from_chat(row[chat], where, chat, system=_system(row, fields))
    elif shape == "prompt_completion":
        yield _from_prompt_completion(row, where)
    elif shape == "alpaca":
        yield _from_alpaca(row, where)
    else:  # openr1, columns
        yield from _from_columns(row, fields, where)


def _columns(row: dict[str, Any]) -> str:
    return ", ".join(sorted(map(str, row))[:20]) or "none"


def _chat_column(row: dict[str, Any], fields: ReplayFields) -> str | None:
    for column in ((fields.messages,) if fields.messages else ()) + _CHAT_COLUMNS:
        value = row.get(column)
        if isinstance(value, list) and value or isinstance(value, str) and value.startswith("["):
            return column
    return None


def _prompt_column(row: dict[str, Any], fields: ReplayFields) -> str | None:
    for column in ((fields.prompt,) if fields.prompt else ()) + ("problem", "question", "prompt", "query"):
        if isinstance(row.get(column), str) and row[column].strip():
            return column
    return None


def _system(row: dict[str, Any], fields: ReplayFields) -> str | None:
    value = row.get(fields.system or "system")
    return value if isinstance(value, str) and value.strip() else None


def _text(content: Any) -> str:
    """Message content as text: OpenAI content parts ``[{type: text, text}]`` are joined."""
    if content is None:
        return ""
    if isinstance(content, list):
        return "".join(str(p.get("text") or "") if isinstance(p, dict) else str(p) for p in content)
    return str(content)


def _from_chat(value: Any, where: str, column: str, *, system: str | None = None) -> Trace:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise RecipeError(f"{where}: field '{column}': expected a list of turns, got text that is not JSON") from None
    if not isinstance(value, list) or not value or not all(isinstance(m, dict) for m in value):
        raise RecipeError(f"{where}: field '{column}': expected a non-empty list of {{role, content}} or {{from, value}} turns")
    turns: list[dict[str, str]] = []
    for message in value:
        speaker = str(message.get("role") or message.get("from") or "").lower()
        role = _ROLES.get(speaker)
        if role is None:
            raise RecipeError(f"{where}: field '{column}': unknown speaker {speaker!r}; expected one of {', '.join(sorted(_ROLES))}")
        content = message["content"] if "content" in message else message.get("value", message.get("text"))
        turns.append({"role": role, "content": _text(content)})
    last = max((i for i, m in enumerate(turns) if m["role"] == "assistant"), default=None)
    if last is None or not any(m["role"] == "user" for m in turns[:last]):
        raise RecipeError(f"{where}: field '{column}': expected a user turn followed by an assistant turn")
    prompt = turns[:last]
    if system and prompt[0]["role"] != "system":
        prompt = [{"role": "system", "content": system}, *prompt]
    reasoning = next((value[last][k] for k in _REASONING_KEYS if isinstance(value[last].get(k), str)), None)
    return Trace(prompt, turns[last]["content"], reasoning)


def _from_prompt_completion(row: dict[str, Any], where: str) -> Trace:
    prompt, completion = row.get("prompt"), row.get("completion")
    if isinstance(prompt, list):  # TRL conversational: message lists on both sides
        chat = list(prompt) + (completion if isinstance(completion, list) else [{"role": "assistant", "content": completion}])
        return _from_chat(chat, where, "prompt+completion")
    if not isinstance(prompt, str) or not prompt.strip() or completion is None:
        raise RecipeError(f"{where}: format prompt_completion: expected non-empty 'prompt' and 'completion'; row has: {_columns(row)}")
    reasoning = row.get("reasoning") if isinstance(row.get("reasoning"), str) else None
    return Trace([{"role": "user", "content": prompt}], _text(completion), reasoning)


def _from_alpaca(row: dict[str, Any], where: str) -> Trace:
    instruction, extra, output = row.get("instruction"), row.get("input"), row.get("output")
    if not isinstance(instruction, str) or not instruction.strip() or output is None:
        raise RecipeError(f"{where}: format alpaca: expected non-empty 'instruction' and 'output'; row has: {_columns(row)}")
    prompt = f"{instruction}\n\n{extra}" if isinstance(extra, str) and extra.strip() else instruction
    messages = [{"role": "system", "content": row["system"]}] if isinstance(row.get("system"), str) and row["system"] else []
    return Trace([*messages, {"role": "user", "content": prompt}], _text(output))


def _from_columns(row: dict[str, Any], fields: ReplayFields, where: str) -> Iterator[Trace]:
    prompt_column = _prompt_column(row, fields)
    generation_column = next((c for c in (fields.generation, "generations") if c and row.get(c) is not None), None)
    if prompt_column is None or generation_column is None:
        raise RecipeError(f"{where}: expected fields '{fields.prompt}'+'{fields.generation}' (teacher.replay.fields); "
                          f"row has: {_columns(row)}")
    system = _system(row, fields)
    prompt = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": str(row[prompt_column])}]
    generations = row[generation_column]
    reasoning = row.get(fields.reasoning) if fields.reasoning else None
    if not isinstance(generations, list):
        if isinstance(reasoning, list):  # several thinking segments for one answer (s1K's thinking_trajectories)
            reasoning = "\n\n".join(str(part) for part in reasoning if part)
        yield Trace(prompt, _text(generations), reasoning if isinstance(reasoning, str) else None)
        return
    labels = _parallel_labels(row, generation_column, len(generations), fields)
    for position, generation in enumerate(generations):
        element_reasoning = reasoning[position] if isinstance(reasoning, list) and position < len(reasoning) else None
        yield Trace(prompt, _text(generation), element_reasoning if isinstance(element_reasoning, str) else None,
                    {name: values[position] for name, values in labels.items()} or None)


def _parallel_labels(row: dict[str, Any], generation_column: str, size: int, fields: ReplayFields) -> dict[str, list[Any]]:
    """Columns that say something per generation: lists of scalars as long as the generations list."""
    names = fields.labels if fields.labels is not None else [
        k for k, v in row.items() if k not in (generation_column, fields.reasoning) and isinstance(v, list)
        and len(v) == size and all(x is None or isinstance(x, (bool, int, float, str)) for x in v)
    ]
    return {name: row[name] for name in names if isinstance(row.get(name), list) and len(row[name]) == size}


def reference_of(row: dict[str, Any], fields: ReplayFields) -> str | None:
    """The gold answer: the mapped column, else the first of the usual names holding a scalar."""
    for column in ((fields.reference,) if fields.reference else _REFERENCE_COLUMNS):
        value = row.get(column)
        if value is not None and isinstance(value, (str, int, float)) and str(value).strip():
            return str(value)
    return None


# ---------------------------------------------------------------- thinking conventions
def normalise_thinking(completion: str, reasoning: str | None = None, *, convention: str = "auto",
                       tags: tuple[str, str] | None = None) -> Thinking:
    """The completion in the store's ``<think>`` form, whatever convention it was written in.

    ``convention`` forces one (``think``, ``thought_solution``, ``missing_open``, ``tags``,
    ``none``); ``auto`` recognises them from the text. A non-empty separate ``reasoning`` wins.
    """
    if reasoning is not None and reasoning.strip():
        answer = normalise_thinking(completion, convention=convention, tags=tags).answer
        return Thinking(_canonical(reasoning.strip(), answer), reasoning.strip(), answer, "field", True)
    found = _convention(completion, convention, tags)
    if found == "none":  # declared or found: the whole completion is the answer
        return Thinking(completion, None, completion.strip(), "none", True)
    text = _to_think_tags(completion, found, tags)
    return _split(text, found)


def _convention(text: str, convention: str, tags: tuple[str, str] | None) -> str:
    if convention != "auto":
        return convention
    if tags is not None and (tags[0] in text or tags[1] in text):
        return "tags"
    if BEGIN_THOUGHT in text or END_THOUGHT in text:
        return "thought_solution"
    if OPEN in text:
        return "think"
    if CLOSE in text:
        return "missing_open"
    return "none"


def _to_think_tags(text: str, convention: str, tags: tuple[str, str] | None) -> str:
    if convention == "thought_solution":
        text = text.replace(BEGIN_THOUGHT, OPEN).replace(END_THOUGHT, CLOSE)
        return text.replace(BEGIN_SOLUTION, "").replace(END_SOLUTION, "")
    if convention == "tags" and tags is not None:
        return text.replace(tags[0], OPEN).replace(tags[1], CLOSE)
    if convention == "missing_open" and OPEN not in text and CLOSE in text:
        return OPEN + "\n" + text
    return text


def _split(text: str, convention: str) -> Thinking:
    n_open, n_close = text.count(OPEN), text.count(CLOSE)
    if n_open == 0 and n_close == 0:
        return Thinking(text, None, text.strip(), "none" if convention in ("think", "missing_open") else convention, True)
    i, j = text.find(OPEN), text.find(CLOSE)
    if n_close == 0:  # opened, never closed: the reasoning ran to the end, there is no answer
        return Thinking(text, text[i + len(OPEN):].strip(), "", convention, False)
    if n_open == 1 and n_close == 1 and i < j and (i == 0 or text[:i].isspace()):
        reasoning, answer = text[i + len(OPEN):j].strip(), text[j + len(CLOSE):].strip()
        return Thinking(_canonical(reasoning, answer), reasoning, answer, convention, True)
    # Malformed (duplicate, nested, text before the block): kept as written so the format step
    # rejects it with the exact reason; the split is the loose one, for inspection only.
    start = i + len(OPEN) if i != -1 and i < j else 0
    last = text.rfind(CLOSE)
    return Thinking(text, text[start:j].strip(), text[last + len(CLOSE):].strip(), convention, True)


def _canonical(reasoning: str, answer: str) -> str:
    return f"{OPEN}\n{reasoning}\n{CLOSE}\n\n{answer}"
