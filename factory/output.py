"""What the command line prints: consoles that show data verbatim, tables, and quiet dependencies.

Every value printed from data (a query result, a rejection reason, a model path, a run directory)
can hold `[...]` or `:name:` that rich would read as markup or an emoji code: `x = a[i] + b[j]`
would lose `[i]`, `a:x:b` would show an emoji and `[/INST]` would raise a MarkupError. The
consoles made here interpret neither; style is given explicitly with `Text` objects instead.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

log = logging.getLogger(__name__)


def make_console(*, stderr: bool = False) -> Console:
    """A console that prints strings as they are: no markup, no emoji codes, no auto-highlighting."""
    return Console(stderr=stderr, markup=False, emoji=False, highlight=False)


def cell(value: Any) -> Text:
    """One table cell from data, verbatim (a `Text` is never parsed for markup, whatever the console)."""
    if value is None:
        return Text("")
    if isinstance(value, (dict, list)):
        return Text(json.dumps(value, default=str, ensure_ascii=False))
    return Text(str(value))


def rows_table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]], *,
               right: Sequence[str] = (), fold: bool = False) -> Table:
    """A table of data rows; titles, headers and cells are all shown verbatim."""
    table = Table(title=Text(title) if title else None)
    for col in columns:
        table.add_column(Text(str(col)), justify="right" if col in right else "left", overflow="fold" if fold else "ellipsis")
    for row in rows:
        table.add_row(*[cell(v) for v in row])
    return table


def kv_table(title: str, values: dict[str, Any]) -> Table:
    """A two-column what/value table (command summaries)."""
    table = Table(title=Text(title), show_header=False)
    table.add_column("what")
    table.add_column("value", overflow="fold")
    for key, value in values.items():
        table.add_row(cell(key), cell(f"{value:.4g}" if isinstance(value, float) else value))
    return table


def error_line(message: str) -> Text:
    """`error: …` with the message verbatim (it often quotes the user's input)."""
    return Text.assemble(("error:", "red"), " ", message)


def quiet_dependencies() -> None:
    """Silence dependencies' own progress bars and chatter: the factory shows one progress display per stage.

    Called by the CLI (never by library code on import) so that a user embedding the library keeps
    their own settings. Environment variables cover the libraries that are not imported yet.
    """
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    for name in ("httpx", "urllib3", "datasets", "filelock", "transformers", "torch", "huggingface_hub", "accelerate",
                 "matplotlib", "PIL"):
        logging.getLogger(name).setLevel(logging.WARNING)

