"""What every teacher backend speaks: requests in, completions out, as they finish."""

from __future__ import annotations

import asyncio
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import groupby
from typing import Any

THINK_RE = re.compile(r"<think>(.*?)</think>", re.DOTALL)


@dataclass(frozen=True)
class GenerationRequest:
    """One sample to produce. `key` is the sample_id; `group` ties the n samples of one prompt."""

    key: str
    group: str
    messages: list[dict[str, str]]
    temperature: float
    top_p: float
    max_new_tokens: int
    seed: int


@dataclass
class Completion:
    """A finished sample (or a failed one: `error` set, `finish_reason` == "error")."""

    key: str
    text: str  # the assistant turn as the model wrote it: "<think>…</think>answer"
    reasoning: str | None
    answer: str
    finish_reason: str  # "stop" | "length" | "error"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    attempts: int = 1
    endpoint: str | None = None
    error: str | None = None


@dataclass
class TeacherStats:
    """Counters the progress bar and the manifest read; updated only by the teacher's own loop."""

    requests: int = 0
    completed: int = 0
    errors: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def split_think(text: str, reasoning: str | None = None) -> tuple[str, str | None, str]:
    """(full text, reasoning, answer) from a raw completion.

    Servers that parse reasoning return it separately (`reasoning_content`);
    others leave `<think>…</think>` in the text. Either way we keep one
    canonical full text so filters see the same thing from every backend.
    """
    if reasoning is not None:
        answer = text.strip()
        return f"<think>\n{reasoning.strip()}\n</think>\n\n{answer}", reasoning.strip(), answer
    match = THINK_RE.search(text)
    if match:
        return text, match.group(1).strip(), text[match.end():].strip()
    if "<think>" in text:  # opened but never closed: reasoning ran to the end
        return text, text.split("<think>", 1)[1].strip(), ""
    # Other conventions (OpenThoughts' <|begin_of_thought|>, a template that emitted <think> in the
    # prompt): the text stays as written, but the answer never carries the reasoning or its tags.
    from factory.teachers.traces import normalise_thinking

    parsed = normalise_thinking(text)
    if parsed.reasoning is not None:
        return text, parsed.reasoning, parsed.answer
    return text, None, text.strip()


class Teacher(ABC):
    """A role bound to a backend. Subclasses implement `astream`."""

    backend: str = "base"

    def __init__(self, role: str, model: str) -> None:
        self.role = role
        self.model = model
        self.stats = TeacherStats()

    @abstractmethod
    def astream(self, requests: Iterable[GenerationRequest]) -> AsyncIterator[Completion]:
        """Yield a Completion for every request, in completion order (not request order)."""

    def check(self) -> None:
        """Fail fast with a TeacherError before anything is written (unreachable, unknown model)."""

    def close(self) -> None:
        """Release models, sessions and pools."""

    def generate(self, requests: Iterable[GenerationRequest]) -> list[Completion]:
        """Blocking helper: all completions in request order. Safe to call from any thread."""
        reqs = list(requests)

        async def collect() -> list[Completion]:
            return [c async for c in self.astream(reqs)]

        result: list[Completion] = []
        if _in_running_loop():
            # Called from inside an event loop (e.g. a notebook): run on a private loop in a thread.
            box: dict[str, Any] = {}
            thread = threading.Thread(target=lambda: box.setdefault("r", asyncio.run(collect())))
            thread.start()
            thread.join()
            result = box["r"]
        else:
            result = asyncio.run(collect())
        order = {r.key: i for i, r in enumerate(reqs)}
        return sorted(result, key=lambda c: order[c.key])


def _in_running_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def batches_by_settings(requests: Iterable[GenerationRequest], size: int) -> Iterator[list[GenerationRequest]]:
    """Consecutive requests with equal sampling settings, `size` at a time: one forward pass each.

    Order is kept, so the same requests always form the same batches (each batch is seeded from its first)."""
    for _, same in groupby(requests, key=lambda r: (r.temperature, r.top_p, r.max_new_tokens)):
        chunk: list[GenerationRequest] = []
        for request in same:
            chunk.append(request)
            if len(chunk) == size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk
