"""Errors that the CLI turns into one line and exit code 2 (no traceback)."""

from __future__ import annotations

import errno
import os
import re


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


# A full or read-only disk is the environment, not a bug: one line, exit 2, completed work kept.
ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG})


def environment_error(exc: OSError) -> FactoryError | None:
    """A FactoryError naming the file and what to do for disk-full / read-only / permission errors; None for others."""
    code = exc.errno
    if code is None:  # pyarrow's file system raises OSError("... [Errno 28] No space left on device") without errno
        match = re.search(r"\[errno (\d+)\]", str(exc), re.IGNORECASE)
        code = int(match.group(1)) if match else None
    if code not in ENVIRONMENT_ERRNOS:
        return None
    where = f"{exc.filename}: " if exc.filename else ""
    what = exc.strerror or os.strerror(code)
    if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        hint = "free space (or set FACTORY_HOME elsewhere) and run the same command again; completed work is kept"
    else:
        hint = "expected a writable location (FACTORY_HOME, --out); nothing was half-written"
    return FactoryError(f"{where}{what}; {hint}")


class UsageError(FactoryError, ValueError):
    """A flag or argument out of range (`-k 0`): one line naming the flag; a ValueError for library callers."""
