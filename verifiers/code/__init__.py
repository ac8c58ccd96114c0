"""Code verifier: run untrusted programs against tests in a sandbox, fast.

    from verifiers.code import CodeTests, run_tests, run_batch, extract_code
    tests = CodeTests.from_asserts(["assert add(1, 2) == 3"], entry_point="add")
    run_tests("def add(a, b):\\n    return a + b", tests).passed   # True

See ``harness`` for why reward hacks cannot pass, ``isolation`` and ``confine``
for the sandbox, ``worker`` for the fork server and ``zygote`` for the process
that forks each program.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .isolation import SandboxUnavailable
    from .pool import SandboxPool, run_batch, run_tests
    from .spec import STATUSES, CodeTests, CodeVerdict, extract_code

__all__ = ["CodeTests", "CodeVerdict", "SandboxPool", "SandboxUnavailable", "STATUSES", "extract_code",
           "run_batch", "run_tests"]

# Imported on first use: the zygote imports ``verifiers.code.zygote``, and what
# the pool needs (subprocess, logging, ...) would otherwise be mapped in the
# parent of every program, where each fork pays for it.
_HOME = {"SandboxUnavailable": "isolation", "SandboxPool": "pool", "run_batch": "pool", "run_tests": "pool",
         "STATUSES": "spec", "CodeTests": "spec", "CodeVerdict": "spec", "extract_code": "spec"}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
