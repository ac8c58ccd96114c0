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


# pyarrow's S3/GCS filesystems raise OSError("When listing objects under key … in bucket …: AWS Error …") without errno.
REMOTE_STORE_ERROR = re.compile(r"AWS Error|When (?:listing|reading|getting|creating|uploading|completing|deleting|"
                                r"initiating|opening|resolving)[^:]* (?:bucket|key|region)")


def environment_error(exc: OSError) -> FactoryError | None:
    """A FactoryError naming the file and what to do for disk-full / read-only / permission errors, or for an
    unreachable or refusing object store; None for others."""
    if exc.errno is None and REMOTE_STORE_ERROR.search(str(exc)):
        return FactoryError(f"store: {str(exc).strip().splitlines()[0]}; check the --store URI (bucket), its credentials "
                            "(AWS_* variables or profile) and endpoint (AWS_ENDPOINT_URL)")
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
