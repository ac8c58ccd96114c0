"""Prompt templates: a recipe's system/user/few-shot settings rendered into chat messages."""

from __future__ import annotations

import string
from typing import Any

from factory.errors import RecipeError
from factory.recipe import TemplateConfig
from factory.sources import PromptRecord


class _Fields(dict):
    """str.format_map mapping that names the missing placeholder instead of raising KeyError."""

    def __missing__(self, key: str) -> str:
        raise RecipeError(f"template: placeholder {{{key}}} is not a field of the prompt rows (have: {', '.join(sorted(self))})")


def render_messages(template: TemplateConfig, record: PromptRecord) -> list[dict[str, str]]:
    """[system?] + few-shot pairs + the user turn, with {prompt}, {reference} and row fields filled."""
    values = _Fields({**{k: "" if v is None else v for k, v in record.fields.items()}})
    values.update(prompt=record.prompt, reference=record.reference or "", task_type=record.task_type)
    messages: list[dict[str, str]] = []
    system = record.system or template.system
    if system:
        messages.append({"role": "system", "content": system.format_map(values)})
    for shot in template.few_shot:
        messages.append({"role": "user", "content": shot.user})
        messages.append({"role": "assistant", "content": shot.assistant})
    messages.append({"role": "user", "content": template.user.format_map(values)})
    return messages


def check_template(template: TemplateConfig) -> None:
    """Reject malformed format strings before any prompt is read."""
    for where, text in (("template.user", template.user), ("template.system", template.system or "")):
        try:
            list(string.Formatter().parse(text))
        except ValueError as exc:
            raise RecipeError(f"{where}: invalid placeholder syntax ({exc}); use {{prompt}} and double braces for literal ones") from None


def placeholders(text: str) -> list[Any]:
    return [name for _, name, _, _ in string.Formatter().parse(text) if name]
