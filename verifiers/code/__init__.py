"""Code verifier: run untrusted programs against tests in a sandbox, fast.

    from verifiers.code import CodeTests, run_tests, run_batch, extract_code
    tests = CodeTests.from_asserts(["assert add(1, 2) == 3"], entry_point="add")
    run_tests("def add(a, b):\\n    return a + b", tests).passed   # True

See ``harness`` for why reward hacks cannot pass, ``isolation`` for the
sandbox and ``worker`` for the fork server.
"""

from .isolation import SandboxUnavailable
from .pool import SandboxPool, run_batch, run_tests
from .spec import STATUSES, CodeTests, CodeVerdict, extract_code

__all__ = ["CodeTests", "CodeVerdict", "SandboxPool", "SandboxUnavailable", "STATUSES", "extract_code",
           "run_batch", "run_tests"]
