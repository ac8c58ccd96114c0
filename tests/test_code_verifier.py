"""The code verifier: real sandboxed processes, real HumanEval data, hostile programs."""

from __future__ import annotations

import json
import os
import socket
import tempfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest

from verifiers.code import (CodeTests, CodeVerdict, SandboxPool, SandboxUnavailable, extract_code, run_batch,
                            run_tests)
from verifiers.code.pool import DEFAULT_BASE_UID

DATA = Path(__file__).resolve().parents[1] / "factory" / "data"
HUMANEVAL = [json.loads(line) for line in (DATA / "benchmarks" / "humaneval.jsonl").read_text().splitlines()]
PROMPTS = [json.loads(line) for line in (DATA / "prompts" / "code.jsonl").read_text().splitlines()]
WORKERS = 2
SANDBOX_UIDS = range(DEFAULT_BASE_UID, DEFAULT_BASE_UID + 2 * WORKERS)


def _sandbox_available() -> bool:
    try:
        with SandboxPool(1):
            return True
    except SandboxUnavailable as exc:
        assert "unsafe_no_sandbox" in str(exc)  # the refusal says how to opt out
        return False


needs_sandbox = pytest.mark.skipif(not _sandbox_available(), reason="sandbox needs root + namespaces")


@pytest.fixture(scope="module")
def secret_store():
    """A world-readable 'factory store' the sandbox must hide."""
    with tempfile.TemporaryDirectory(prefix="factory-store-") as store:
        os.chmod(store, 0o755)
        secret = Path(store, "secret.txt")
        secret.write_text("TOP-SECRET")
        secret.chmod(0o644)
        yield store


@pytest.fixture(scope="module")
def pool(secret_store):
    with SandboxPool(WORKERS, hide_paths=[secret_store]) as p:
        yield p


def sandbox_processes(programs_only: bool = True) -> list[psutil.Process]:
    """Processes under the pool's uids: even offsets run programs (must not
    outlive their job), odd ones the long-lived test servers."""
    found = []
    for proc in psutil.process_iter(["uids"]):
        uids = proc.info["uids"]
        if uids is not None and uids.real in SANDBOX_UIDS:
            if not programs_only or (uids.real - DEFAULT_BASE_UID) % 2 == 0:
                found.append(proc)
    return found


def asserts(lines: list[str], entry_point: str = "f", setup: str = "") -> CodeTests:
    return CodeTests.from_asserts(lines, setup=setup, entry_point=entry_point)


def src(text: str) -> str:
    return textwrap.dedent(text).strip() + "\n"


# --------------------------------------------------------------------------- pure helpers

def test_extract_code_takes_last_python_block_after_think():
    response = ("<think>```python\nprint('draft')\n```</think>Answer:\n```python\nx = 1\n```\n"
                "and\n```py\nx = 2\n```\n```text\nnot code\n```")
    assert extract_code(response) == "x = 2\n"
    assert extract_code("```cpp\nint main(){}\n```\n```python\nx=3\n```", language="cpp") == "int main(){}\n"
    assert extract_code("```\ny = 4\n```") == "y = 4\n"
    assert extract_code("no code here") is None
    assert extract_code("<think>```python\nx=1\n```</think>no block") is None


def test_code_tests_from_dict_shapes():
    row = PROMPTS[0]
    from_row = CodeTests.from_dict(row)
    assert from_row.kind == "asserts" and from_row.entry_point == row["entry_point"]
    assert from_row.asserts == tuple(row["tests"]["asserts"])
    assert CodeTests.from_dict(row["tests"], entry_point=row["entry_point"]) == from_row
    he = CodeTests.from_dict(HUMANEVAL[0])
    assert he.kind == "humaneval" and he.entry_point == "has_close_elements" and "def check" in he.test
    mbpp = CodeTests.from_dict({"test_list": ["assert f(1) == 2"], "test_setup_code": "import math"})
    assert mbpp.asserts == ("assert f(1) == 2",) and mbpp.setup == "import math"
    apps = CodeTests.from_dict({"input_output": json.dumps({"inputs": ["1 2\n"], "outputs": ["3\n"]})})
    assert apps.kind == "stdio" and apps.cases == (("1 2\n", "3\n"),)
    pairs = CodeTests.from_dict({"kind": "stdio", "cases": [["a", "b"], {"input": "c", "output": "d"}]})
    assert pairs.cases == (("a", "b"), ("c", "d"))
    for tests in (from_row, he, mbpp, apps):
        assert CodeTests.from_dict(tests.to_dict()) == tests
    with pytest.raises(ValueError, match="^kind: expected"):
        CodeTests.from_dict({"kind": "rust"})
    with pytest.raises(ValueError, match="^asserts: expected"):
        CodeTests.from_asserts([])
    with pytest.raises(ValueError, match="^entry_point: expected"):
        CodeTests.humaneval("def check(c): pass", "not a name")
    with pytest.raises(ValueError, match="^input_output: expected"):
        CodeTests.from_dict({"input_output": {"fn_name": "f", "inputs": [], "outputs": []}})


def test_verdict_round_trip_and_library_verdict():
    verdict = CodeVerdict(False, "failed", 2, 3, "assert f(1) == 2: AssertionError")
    assert CodeVerdict.from_dict(verdict.to_dict()) == verdict
    lib = verdict.to_verdict()
    assert not lib.passed and lib.code == "failed" and lib.score == pytest.approx(2 / 3)


# --------------------------------------------------------------------------- one big mixed batch

def _wrong_return(row: dict) -> str:
    """The canonical solution, with every result nudged to a wrong value of the same kind."""
    return row["prompt"] + row["canonical_solution"] + src(f"""
        _right = {row['entry_point']}
        def _nudge(r):
            if isinstance(r, bool):
                return not r
            if isinstance(r, (int, float)):
                return r + 1
            if isinstance(r, str):
                return r + "?"
            if isinstance(r, (list, tuple)):
                return type(r)(list(r) + [None])
            return 0 if r is None else None
        def {row['entry_point']}(*args, **kwargs):
            return _nudge(_right(*args, **kwargs))
        """)


def _pass_body(row: dict) -> str:
    return row["prompt"] + "    pass\n"


STDIO_SUM = CodeTests.stdio([("1 2\n", "3\n"), ("10 20\n", "30"), ("-5 5\n", "0\n")])
SUM_PROGRAM = "a, b = map(int, input().split())\nprint(a + b)\n"


def _mixed_items() -> tuple[list, list[str]]:
    """~1,000 items and the status each must get."""
    items, expected = [], []
    for row in HUMANEVAL:
        tests = CodeTests.from_dict(row)
        items += [(row["prompt"] + row["canonical_solution"], tests), (_pass_body(row), tests),
                  (_wrong_return(row), tests)]
        expected += ["passed", "failed", "failed"]
    add = CodeTests.from_dict(PROMPTS[0])
    for i in range(500):
        kind = i % 6
        if kind == 0:
            items.append(("def add_two(a, b):\n    return a + b\n", add)); expected.append("passed")
        elif kind == 1:
            items.append(("def add_two(a, b):\n    return a - b\n", add)); expected.append("failed")
        elif kind == 2:
            items.append((SUM_PROGRAM, STDIO_SUM)); expected.append("passed")
        elif kind == 3:
            items.append(("print(int(input().split()[0]) * 2)\n", STDIO_SUM)); expected.append("failed")
        elif kind == 4:
            items.append(("def add_two(a, b):\n    return a +\n", add)); expected.append("error")
        else:
            items.append({"response": f"Sure:\n```python\ndef add_two(a, b):\n    return {i} - {i} + a + b\n```",
                          "tests": PROMPTS[0]["tests"], "entry_point": "add_two"})
            expected.append("passed")
    for i in range(12):  # these time out while the rest of the batch goes on
        program = "while True:\n    pass\n" if i % 2 else "import time\ntime.sleep(60)\n"
        items.append({"program": program, "tests": add.to_dict(), "timeout_s": 0.5}); expected.append("timeout")
    items.append({"response": "I cannot write code.", "tests": add}); expected.append("error")
    return items, expected


@pytest.fixture(scope="module")
def mixed(pool):
    items, expected = _mixed_items()
    verdicts = pool.run_batch(items, timeout_s=5.0)
    return items, expected, verdicts


@needs_sandbox
def test_humaneval_canonical_solutions_all_pass(mixed):
    _, _, verdicts = mixed
    canonical = verdicts[0:3 * len(HUMANEVAL):3]
    failures = [(row["task_id"], v.status, v.detail) for row, v in zip(HUMANEVAL, canonical) if not v.passed]
    assert len(canonical) == 164 and failures == []
    assert all(v.passed_cases == v.total_cases == 1 for v in canonical)


@needs_sandbox
def test_humaneval_pass_bodies_and_wrong_returns_fail(mixed):
    _, _, verdicts = mixed
    stubs = verdicts[1:3 * len(HUMANEVAL):3]
    wrong = verdicts[2:3 * len(HUMANEVAL):3]
    assert [row["task_id"] for row, v in zip(HUMANEVAL, stubs) if v.passed] == []
    assert [row["task_id"] for row, v in zip(HUMANEVAL, wrong) if v.passed] == []
    assert {v.status for v in stubs + wrong} <= {"failed", "error"}


@needs_sandbox
def test_mixed_batch_of_a_thousand_gets_the_right_verdicts(mixed):
    items, expected, verdicts = mixed
    assert len(items) >= 1000 and len(verdicts) == len(items)
    wrong = [(i, e, v.status, v.detail) for i, (e, v) in enumerate(zip(expected, verdicts)) if v.status != e]
    assert wrong == []
    assert sum(v.status == "timeout" for v in verdicts) == 12
    assert not sandbox_processes()


# --------------------------------------------------------------------------- formats

@needs_sandbox
def test_prompt_file_asserts_format(pool):
    row = PROMPTS[0]
    tests = CodeTests.from_dict(row)
    good = pool.run_tests("def add_two(a, b):\n    return a + b\n", tests)
    assert good.passed and good.status == "passed" and good.passed_cases == good.total_cases == 3
    half = pool.run_tests("def add_two(a, b):\n    return 3\n", tests)
    assert half.status == "failed" and half.passed_cases == 1 and "add_two(-1, 1)" in half.detail


@needs_sandbox
def test_asserts_setup_helpers_and_program_objects(pool):
    program = src("""
        class Pair:
            def __init__(self, a, b):
                self.a, self.b = a, b
        def longest(pairs):
            return max(p.b - p.a for p in pairs)
        def gen(n):
            yield from range(n)
        """)
    tests = asserts(["assert longest([Pair(1, 5), Pair(2, 3)]) == 4", "assert list(gen(3)) == [0, 1, 2]",
                     "assert sqrt(longest([Pair(0, 9)])) == 3"], entry_point="longest",
                    setup="from math import sqrt")
    assert pool.run_tests(program, tests).passed


@needs_sandbox
def test_humaneval_completion_continues_the_prompt(pool):
    row = HUMANEVAL[2]
    tests = CodeTests.from_dict(row)
    assert pool.run_tests(row["canonical_solution"], tests).passed  # body only
    full = "def truncate_number(number):\n    return number % 1.0\n"  # no prompt at all
    assert pool.run_tests(full, tests).passed


@needs_sandbox
def test_stdio_is_whitespace_tolerant_and_compared_outside(pool):
    program = "a, b = map(int, input().split())\nprint('  ', a + b, '  ')\nprint()\n"
    assert pool.run_tests(program, STDIO_SUM).passed
    wrong = pool.run_tests("print(3)\n", STDIO_SUM)
    assert wrong.status == "failed" and wrong.passed_cases == 1 and "case 1" in wrong.detail
    big = "n = int(input())\nprint(sum(map(int, input().split())))\n"
    numbers = " ".join(str(i) for i in range(200_000))
    big_case = CodeTests.stdio([(f"200000\n{numbers}\n", str(sum(range(200_000))))])
    assert pool.run_tests(big, big_case).passed  # input larger than a pipe buffer


# --------------------------------------------------------------------------- reward hacking

HACKS = {
    "sys.exit(0) at import": "import sys\nsys.exit(0)\n",
    "os._exit(0) at import": "import os\nos._exit(0)\n",
    "sys.exit(0) inside the call": "import sys\ndef f(x):\n    sys.exit(0)\n",
    "os._exit(0) inside the call": "import os\ndef f(x):\n    os._exit(0)\n",
    "SystemExit raised inside the assert": "def f(x):\n    raise SystemExit(0)\n",
    "KeyboardInterrupt inside the call": "def f(x):\n    raise KeyboardInterrupt\n",
    "__eq__ always True": src("""
        class Yes:
            def __eq__(self, other): return True
            def __ne__(self, other): return False
            def __bool__(self): return True
        def f(x):
            return Yes()
        """),
    "int subclass with __eq__": src("""
        class I(int):
            def __eq__(self, other): return True
            __hash__ = int.__hash__
        def f(x):
            return I(0)
        """),
    "str subclass with __eq__": "class S(str):\n    def __eq__(s, o): return True\ndef f(x):\n    return S('')\n",
    "monkeypatched builtins": src("""
        import builtins
        builtins.abs = lambda x: 0
        builtins.isinstance = lambda *a: True
        builtins.AssertionError = type('Nope', (BaseException,), {})
        builtins.sorted = lambda *a, **k: [1, 2, 3]
        def f(x):
            return 'wrong'
        """),
    "globals shadowing builtins": src("""
        def abs(x): return 0
        def sorted(*a, **k): return [1, 2, 3]
        def f(x):
            return 'wrong'
        """),
    "fake success marker on stdout": src("""
        print('All tests passed!')
        print('{"done": true}')
        def f(x):
            print('PASSED')
            return None
        """),
    "forged report frames on every fd": src("""
        import os, json
        def _frame(m):
            b = json.dumps(m).encode()
            return len(b).to_bytes(4, 'big') + b
        for fd in range(0, 64):
            for m in ({"case": 0, "ok": True, "kind": "", "detail": ""}, {"done": True}, {"v": 2}):
                try:
                    os.write(fd, _frame(m))
                except OSError:
                    pass
        def f(x):
            for fd in range(0, 64):
                try:
                    os.write(fd, _frame({"v": 2}))
                except OSError:
                    pass
            return 0
        """),
    "signal the parent and everyone": src("""
        import os, signal
        for pid in (os.getppid(), 1, -1):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        def f(x):
            return 0
        """),
    "stack and gc snooping": src("""
        import gc, sys
        def f(x):
            for o in gc.get_objects():
                if isinstance(o, dict) and 'expected' in o:
                    return o['expected']
            frame = sys._getframe()
            while frame.f_back:
                frame = frame.f_back
            return frame.f_locals.get('expected', 0)
        """),
}
HACK_TESTS = asserts(["assert f(1) == 2", "assert abs(f(1) - 2) < 1e-9", "assert isinstance(f(1), int) and f(1) == 2",
                      "assert sorted(f(1)) == [1, 2, 3]"])


@needs_sandbox
@pytest.mark.parametrize("name", sorted(HACKS))
def test_reward_hacks_never_pass(pool, name):
    verdict = pool.run_tests(HACKS[name], HACK_TESTS, timeout_s=3.0)
    assert not verdict.passed and verdict.status != "passed" and verdict.passed_cases == 0, verdict
    assert verdict.status in ("failed", "error", "violation"), verdict


@needs_sandbox
def test_reward_hacks_against_humaneval_check(pool):
    row = HUMANEVAL[0]
    tests = CodeTests.from_dict(row)
    for name in ("sys.exit(0) at import", "os._exit(0) inside the call", "__eq__ always True",
                 "fake success marker on stdout", "forged report frames on every fd"):
        program = HACKS[name].replace("def f(x)", f"def {row['entry_point']}(*x)")
        verdict = pool.run_tests(program, tests)
        assert not verdict.passed, (name, verdict)


@needs_sandbox
def test_stdio_exit_without_output_fails(pool):
    for program in ("import sys\nsys.exit(0)\n", "print('3')\nimport os\nos._exit(0)\n"):
        assert not pool.run_tests(program, STDIO_SUM).passed


# --------------------------------------------------------------------------- containment

@needs_sandbox
def test_wall_clock_timeout_kills_the_whole_process_group(pool):
    program = src("""
        import os, time
        for _ in range(3):
            if os.fork() == 0:
                os.setsid()  # try to leave the group too
                while True:
                    time.sleep(0.01)
        def f(x):
            time.sleep(60)
        """)
    verdict = pool.run_tests(program, asserts(["assert f(1) is None"]), timeout_s=1.0)
    assert verdict.status == "timeout"
    assert not sandbox_processes()


@needs_sandbox
def test_fork_bomb_dies_and_host_lives(pool):
    program = src("""
        import os
        while True:
            try:
                os.fork()
            except OSError:
                pass
        """)
    verdict = pool.run_tests(program, asserts(["assert f(1) == 1"]), timeout_s=1.5)
    assert verdict.status in ("timeout", "error")
    assert not sandbox_processes()
    assert pool.run_tests("def f(x):\n    return x\n", asserts(["assert f(1) == 1"])).passed


@needs_sandbox
def test_cpu_limit_and_memory_limit(pool):
    hog = pool.run_tests("x = bytearray(2 << 30)\ndef f(x):\n    return x\n", asserts(["assert f(1) == 1"]),
                         memory_mb=256)
    assert hog.status == "memory"
    call_hog = pool.run_tests("def f(x):\n    return [0] * (1 << 31)\n", asserts(["assert f(1) == 1"]),
                              memory_mb=256)
    assert call_hog.status == "memory"
    stdio_hog = pool.run_tests("x = ' ' * (1 << 32)\n", STDIO_SUM, memory_mb=256)
    assert stdio_hog.status == "memory"


@needs_sandbox
def test_file_size_limit(pool):
    program = src("""
        import os
        def f(x):
            with open('big', 'wb') as out:
                for _ in range(64):
                    out.write(b'x' * (1 << 20))
            return os.path.getsize('big')
        """)
    verdict = pool.run_tests(program, asserts(["assert f(1) == 64 << 20"]))
    assert verdict.status == "failed" and "File too large" in verdict.detail


@needs_sandbox
def test_no_network_even_through_raw_libc(pool):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(5)
        listener.settimeout(0.5)
        port = listener.getsockname()[1]
        program = src(f"""
            import ctypes, socket, struct
            libc = ctypes.CDLL(None, use_errno=True)
            def f(x):
                fd = libc.socket(socket.AF_INET, socket.SOCK_STREAM, 0)
                addr = struct.pack('<H', socket.AF_INET) + struct.pack('>H', {port}) + bytes([127, 0, 0, 1]) + bytes(8)
                rc = libc.connect(fd, ctypes.c_char_p(addr), len(addr))
                return rc, ctypes.get_errno()
            """)
        # Raw libc calls skip Python's audit hooks: the kernel itself must refuse.
        raw = pool.run_tests(program, asserts(["assert f(1) == (0, 0)", "assert f(1) == (-1, errno.ENETUNREACH)"],
                                              setup="import errno"))
        audited = pool.run_tests(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), 1)\n",
                                 asserts(["assert True"]))
        with pytest.raises(socket.timeout):
            listener.accept()
    assert raw.status == "failed" and raw.passed_cases == 1 and "(0, 0)" in raw.detail
    assert audited.status == "violation" and "network" in audited.detail


@needs_sandbox
def test_unprivileged_and_cannot_read_store_or_home(pool, secret_store):
    program = src(f"""
        import os
        def ids():
            return os.getuid(), os.geteuid(), os.getgid()
        def read(path):
            try:
                with open(path) as f:
                    return f.read()
            except OSError as e:
                return type(e).__name__
        def listing(path):
            try:
                return sorted(os.listdir(path))
            except OSError as e:
                return type(e).__name__
        """)
    tests = asserts([f"assert 0 not in ids()",
                     f"assert read({secret_store + '/secret.txt'!r}) != 'TOP-SECRET'",
                     "assert listing('/root') in (['.pyenv'], 'PermissionError')",
                     "assert read('/etc/shadow') == 'PermissionError'",
                     "assert read('/proc/1/environ') == 'PermissionError'",
                     "assert listing('/run') == []"], entry_point="ids")  # host unix sockets live there
    verdict = pool.run_tests(program, tests)
    assert verdict.passed, verdict


@needs_sandbox
def test_writes_only_inside_its_own_directory_which_is_removed(pool, tmp_path):
    host_dir = tmp_path / "writable"
    host_dir.mkdir()
    host_dir.chmod(0o777)  # even a world-writable host directory is out of reach
    target = host_dir / "pwned"
    program = src(f"""
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        def raw_create(path):  # bypasses Python's audit hooks
            return libc.open(path.encode(), os.O_WRONLY | os.O_CREAT, 0o644)
        attempts = [raw_create(p) for p in ({str(target)!r}, '/tmp/pwned', '/var/tmp/pwned', '/dev/shm/pwned',
                                             '/pwned', '/usr/pwned')]
        with open('mine.txt', 'w') as f:
            f.write('ok')
        def f(x):
            return attempts, open('mine.txt').read(), os.getcwd()
        """)
    with SandboxPool(1) as one:
        worker_pid = one.workers[0].proc.pid
        verdict = one.run_tests(program, asserts(["assert f(0)[0] == [-1] * 6", "assert f(0)[1] == 'ok'",
                                                  "assert f(0)[2] == 'unknown'"]))
        assert verdict.passed_cases == 2 and verdict.status == "failed"
        # Read the directory name back through a program that reports it in its output.
        probe = one.run_tests("import os\nprint(os.getcwd())\n", CodeTests.stdio([("", "?")]))
        run_dir = probe.detail.split("got ")[-1].strip("'")
        assert run_dir.startswith("/tmp/run-")
        assert not os.path.exists(f"/proc/{worker_pid}/root{run_dir}")  # removed (seen inside its mounts)
        assert os.path.isdir(f"/proc/{worker_pid}/root/tmp")
    assert not target.exists() and not Path("/tmp/pwned").exists() and not Path("/pwned").exists()


@needs_sandbox
def test_write_attempt_outside_is_a_violation(pool):
    verdict = pool.run_tests("open('/tmp/x', 'w').write('x')\n", asserts(["assert True"]))
    assert verdict.status == "violation" and "/tmp/x" in verdict.detail


@needs_sandbox
def test_output_floods_recursion_and_missing_stdin_end(pool):
    flood = pool.run_tests("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n", STDIO_SUM)
    assert flood.status == "error" and "output exceeded" in flood.detail
    quiet_flood = pool.run_tests("def f(x):\n    while True:\n        print('x' * 65536)\n",
                                 asserts(["assert f(1) == 1"]), timeout_s=1.0)
    assert quiet_flood.status == "timeout"
    deep = pool.run_tests("import sys\nsys.setrecursionlimit(10**8)\ndef f(n):\n    return f(n + 1) + 1\n",
                          asserts(["assert f(0) == 1"]), timeout_s=2.0)
    assert deep.status in ("error", "memory", "timeout") and not deep.passed
    c_stack = pool.run_tests("import sys\nsys.setrecursionlimit(10**8)\nx = []\nfor _ in range(10**6):\n"
                             "    x = [x]\ns = repr(x)\n", asserts(["assert True"]), timeout_s=2.0)
    assert c_stack.status in ("error", "memory", "timeout") and not c_stack.passed
    rec = pool.run_tests("def f(n):\n    return f(n + 1) + 1\n", asserts(["assert f(0) == 1"]))
    assert rec.status == "failed" and "RecursionError" in rec.detail
    no_stdin = pool.run_tests("x = input()\ndef f(v):\n    return v\n", asserts(["assert f(1) == 1"]))
    assert no_stdin.status == "error" and "EOFError" in no_stdin.detail
    stdio_eof = pool.run_tests("print(input())\nprint(input())\n", CodeTests.stdio([("only one line\n", "x")]))
    assert stdio_eof.status == "error" and "EOFError" in stdio_eof.detail


# --------------------------------------------------------------------------- entry points

@needs_sandbox
def test_run_tests_and_run_batch_functions():
    tests = CodeTests.from_dict(PROMPTS[0])
    assert run_tests("def add_two(a, b):\n    return a + b\n", tests).passed
    verdicts = run_batch([("def add_two(a, b):\n    return a + b\n", tests),
                          {"code": "def add_two(a, b):\n    return 0\n", "tests": PROMPTS[0]["tests"],
                           "entry_point": "add_two"}], workers=2)
    assert [v.status for v in verdicts] == ["passed", "failed"]


def test_unsafe_mode_still_catches_reward_hacks():
    with SandboxPool(1, unsafe_no_sandbox=True) as unsafe:
        assert unsafe.info["isolation"] == "none"
        assert unsafe.run_tests("def f(x):\n    return x + 1\n", asserts(["assert f(1) == 2"])).passed
        for name in ("os._exit(0) inside the call", "__eq__ always True", "monkeypatched builtins"):
            assert not unsafe.run_tests(HACKS[name], HACK_TESTS).passed, name
        assert unsafe.run_tests("while True:\n    pass\n", asserts(["assert True"]), timeout_s=0.5).status == "timeout"


def test_bad_configuration_raises_value_error():
    with pytest.raises(ValueError, match="^workers: expected"):
        SandboxPool(0)
    with pytest.raises(ValueError, match="^timeout_s: expected"):
        run_batch([("x = 1", asserts(["assert True"]))], timeout_s=-1, unsafe_no_sandbox=True)


@needs_sandbox
def test_pool_recovers_when_its_test_server_is_killed(pool):
    tests = asserts(["assert f(2) == 4"])
    assert pool.run_tests("def f(x):\n    return x * 2\n", tests).passed
    servers = [p for p in sandbox_processes(programs_only=False) if p.info["uids"].real % 2 != DEFAULT_BASE_UID % 2]
    assert servers  # the long-lived test side, under its own uid
    for proc in servers:
        proc.kill()
    for proc in servers:  # dead once it is a zombie (its parent, the worker, reaps it later)
        for _ in range(500):
            try:
                if proc.status() == psutil.STATUS_ZOMBIE:
                    break
            except psutil.NoSuchProcess:
                break
            time.sleep(0.01)
    assert [pool.run_tests("def f(x):\n    return x * 2\n", tests).passed for _ in range(4)] == [True] * 4


@needs_sandbox
def test_numpy_results_compare_as_plain_data(pool):
    program = src("""
        import numpy as np
        def f(n):
            return np.arange(n) * 2, np.float64(n) / 2, np.int64(n)
        """)
    verdict = pool.run_tests(program, asserts(["assert f(3) == ([0, 2, 4], 1.5, 3)"]))
    assert verdict.passed, verdict


@needs_sandbox
def test_pool_survives_a_worker_dying_idle_or_mid_job():
    tests = asserts(["assert f(1) == 1"])
    good = "def f(x):\n    return x\n"
    slow = "import time\ntime.sleep(3)\ndef f(x):\n    return x\n"
    with SandboxPool(1) as one:
        assert one.run_tests(good, tests).passed
        one.workers[0].proc.kill()  # dies while idle
        one.workers[0].proc.wait()
        assert [v.passed for v in one.run_batch([(good, tests)] * 2)] == [True, True]
        doomed = one.workers[0].proc
        with ThreadPoolExecutor(1) as background:
            batch = background.submit(one.run_batch, [(slow, tests), (good, tests)], timeout_s=10.0)
            time.sleep(1.0)
            doomed.kill()  # dies mid-job
            verdicts = batch.result(timeout=60)
    assert verdicts[0].status == "error" and "worker died" in verdicts[0].detail
    assert verdicts[1].passed
