"""Errors that the CLI turns into one line and exit code 2 (no traceback)."""

from __future__ import annotations


class FactoryError(Exception):
    """A user-facing error: bad input, bad config, unreachable service.

    The message must name the file, field or flag and what was expected,
    because the CLI prints it alone on one line.
    """

    exit_code = 2


class RecipeError(FactoryError):
    """A recipe failed validation; the message points at file:line and key path."""


class StoreError(FactoryError):
    """The store on disk is not what the command expected (missing run, changed recipe)."""


class TeacherError(FactoryError):
    """A teacher backend cannot serve: unreachable endpoint, unknown model, missing key."""
