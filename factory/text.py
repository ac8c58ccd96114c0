"""Text that came from a model or a program, made safe to store and print.

A lone UTF-16 surrogate (``"\\ud800"``) is a valid Python str but not
encodable as UTF-8: it arrives from JSON escapes a server sent, from bytes
decoded with ``surrogateescape`` (file names, subprocess output) or from an
exception message quoting either. Parquet, JSON files and the terminal all
need UTF-8, so such code points are written as the escape text ``\\ud800``:
visible, lossless to a reader, and never an error.
"""

from __future__ import annotations

from typing import Any


def escape_surrogates(text: str) -> str:
    """`text` with every lone surrogate replaced by its backslash escape; other text unchanged (same object)."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def escape_surrogates_in(value: Any) -> Any:
    """escape_surrogates on every str inside dicts, lists and tuples (keys included)."""
    if isinstance(value, str):
        return escape_surrogates(value)
    if isinstance(value, dict):
        return {escape_surrogates_in(k): escape_surrogates_in(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(escape_surrogates_in(v) for v in value)
    return value
