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

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "factory" / "data"
HUMANEVAL = [json.loads(line) for line in (DATA / "benchmarks" / "humaneval.jsonl").read_text().splitlines()]
PROMPTS = [json.loads(line) for line in (DATA / "prompts" / "code.jsonl").read_text().splitlines()]
WORKERS = 2


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


def sandbox_processes(pool: SandboxPool, programs_only: bool = True) -> list[psutil.Process]:
    """Processes under the pool's uids: even offsets run programs (must not
    outlive their job), odd ones the long-lived test servers."""
    base = pool.config["base_uid"]
    found = []
    for proc in psutil.process_iter(["uids"]):
        uids = proc.info["uids"]
        if uids is not None and base <= uids.real < base + 2 * pool.size:
            if not programs_only or (uids.real - base) % 2 == 0:
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
    assert not sandbox_processes(pool)
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
        import gc, re, sys
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
    assert not sandbox_processes(pool)


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
    assert not sandbox_processes(pool)
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
                     "assert read('/etc/shadow') == 'FileNotFoundError'",
                     "assert [p for p in listing('/proc') if p.isdigit()] == ['1']",
                     "assert listing('/run') in ([], 'PermissionError')"], entry_point="ids")  # host sockets
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
    verdict = pool.run_tests(program, asserts(["assert f(0)[0] == [-1] * 6", "assert f(0)[1] == 'ok'",
                                               "assert f(0)[2] == '/tmp/work'", "assert f(0)[2] == 'elsewhere'"]))
    assert verdict.passed_cases == 3 and verdict.status == "failed", verdict
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
    servers = [p for p in sandbox_processes(pool, programs_only=False) if p.info["uids"].real % 2 == 1]
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
def test_modules_the_zygote_does_not_preload_and_site_builtins_work_inside_the_sandbox(pool):
    # The zygote preloads only what programs commonly import; the rest (threading
    # among them) must still import from the sandbox's read-only root.
    program = src("""
        import dataclasses, datetime, fractions, hashlib, inspect, queue, statistics, threading
        @dataclasses.dataclass
        class Point:
            x: int
        def f(n):
            results = queue.Queue()
            worker = threading.Thread(target=lambda: results.put(Point(n).x * 2))
            worker.start()
            worker.join()
            return (results.get(), str(fractions.Fraction(n, 4)), statistics.mean([n, n + 2]),
                    hashlib.md5(b'x').hexdigest()[:4], datetime.date(2024, 1, n).day, inspect.isfunction(f))
        """)
    verdict = pool.run_tests(program, asserts(["assert f(2) == (4, '1/2', 3, '9dd4', 2, True)"]))
    assert verdict.passed, verdict
    # It runs without site (python -S), yet programs get what site gives them:
    # exit()/quit()/help in builtins and the venv's packages on sys.path.
    stdio = pool.run_tests("import numpy\nprint(numpy.int64(6) * 7)\nexit(0)\nprint('after exit')\n",
                           CodeTests.stdio([("", "42\n")]))
    assert stdio.passed, stdio
    assert pool.run_tests("import builtins\ndef f():\n    return callable(builtins.quit) and callable(help)\n",
                          asserts(["assert f() is True"])).passed
    # ... and the sys.argv of `python -c`, not the zygote's own arguments.
    assert pool.run_tests("import sys\ndef f():\n    return sys.argv\n", asserts(["assert f() == ['-c']"])).passed


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


@needs_sandbox
def test_pool_survives_its_zygote_dying():
    tests = asserts(["assert f(1) == 1"])
    good = "def f(x):\n    return x\n"
    with SandboxPool(1) as one:
        assert one.run_tests(good, tests).passed
        worker = psutil.Process(one.workers[0].proc.pid)
        zygotes = [p for p in worker.children() if "verifiers.code.zygote" in " ".join(p.cmdline())]
        assert len(zygotes) == 1  # the process that forks every program of the slot
        zygotes[0].kill()
        for _ in range(500):  # dead once it is a zombie (the worker reaps it later)
            try:
                if zygotes[0].status() == psutil.STATUS_ZOMBIE:
                    break
            except psutil.NoSuchProcess:
                break
            time.sleep(0.01)
        verdicts = one.run_batch([(good, tests)] * 3)
        # The job that found it dead is an error at worst; the pool then replaces the worker.
        assert all(v.passed or (v.status == "error" and "died" in v.detail) for v in verdicts), verdicts
        assert verdicts[-1].passed and one.run_tests(good, tests).passed


# --------------------------------------------------------------------------- issue 18: one test per class
# Each test is an attack a reward-hacking policy could write; the sandbox must contain it.

def _humaneval(task: int) -> dict:
    return next(row for row in HUMANEVAL if row["task_id"] == f"HumanEval/{task}")


@needs_sandbox
def test_class1_test_names_come_from_trusted_code_not_the_program(pool):
    # The tests call helpers the prompt defines: a program redefining them (and a
    # matching wrong answer) must not pass.
    forged_helpers = {
        32: "def poly(xs, x):\n    return 0\ndef find_zero(xs):\n    return 12345.0\n",
        38: "def encode_cyclic(s):\n    return s\ndef decode_cyclic(s):\n    return s\n",
        50: "def encode_shift(s):\n    return s\ndef decode_shift(s):\n    return s\n",
    }
    for task, program in forged_helpers.items():
        row = _humaneval(task)
        verdict = pool.run_tests(program, CodeTests.from_dict(row))
        assert verdict.status == "failed", (task, verdict)
        assert pool.run_tests(row["prompt"] + row["canonical_solution"], CodeTests.from_dict(row)).passed
    # MBPP's declared imports are kept and run on the trusted side.
    fake_math = "class _Yes:\n    def isclose(self, *a, **k):\n        return True\nmath = _Yes()\ndef f(x):\n    return 0\n"
    mbpp = {"test_list": ["assert math.isclose(f(1), 2.0)"], "test_imports": ["import math"], "entry_point": "f"}
    assert "import math" in CodeTests.from_dict(mbpp).setup
    assert pool.run_tests(fake_math, CodeTests.from_dict(mbpp)).status == "failed"
    assert pool.run_tests("def f(x):\n    return 2.0\n", CodeTests.from_dict(mbpp)).passed
    # Undeclared, a module name the tests use is still never a program object.
    undeclared = asserts(["assert math.isclose(f(1), 2.0)"])
    assert not pool.run_tests(fake_math, undeclared).passed
    assert pool.run_tests("import math\ndef f(x):\n    return 2.0\n", undeclared).passed
    # Nor is any name the program supplies a namespace the tests can be made to trust.
    fake_namespaces = ("class math:\n    isclose = staticmethod(lambda *a, **k: True)\n",
                       "class _N:\n    def allclose(self, *a):\n        return True\nnp = _N()\n")
    for fake in fake_namespaces:
        for line in ("assert math.isclose(f(1), 2.0)", "assert np.allclose(f(1), 2.0)"):
            verdict = pool.run_tests(fake + "def f(x):\n    return 0\n", asserts([line]))
            assert verdict.status == "failed", (fake, line, verdict)
    # Setup-defined helpers, and names the tests never use, stay the test side's.
    setup_tests = asserts(["assert f(2) == expected(2)"], setup="def expected(x):\n    return x * x\n")
    assert not pool.run_tests("def expected(x):\n    return 0\ndef f(x):\n    return 0\n", setup_tests).passed
    assert pool.run_tests("def f(x):\n    return x * x\n", setup_tests).passed


WIRE_FORGERIES = {
    "__builtins__ in the greeting": src("""
        import sys
        wire = sys.modules['verifiers.code.wire']
        real = wire.write_frame
        def forged(fd, message):
            if isinstance(message, dict) and message.get('ok') is True:
                message['names']['__builtins__'] = {'d': []}
            real(fd, message)
        wire.write_frame = forged
        def f(x):
            return 'wrong'
        """),
    "builtin name in the greeting": src("""
        import sys
        wire = sys.modules['verifiers.code.wire']
        real = wire.write_frame
        def forged(fd, message):
            if isinstance(message, dict) and message.get('ok') is True:
                message['names']['all'] = message['names']['f']
            real(fd, message)
        wire.write_frame = forged
        def f(x):
            return True
        """),
    "stop message answers every call": src("""
        import sys
        sys.modules['verifiers.code.harness']._answer = lambda *args: {'stop': True}
        def f(x):
            return False
        """),
    "extra keys in a reply": src("""
        import sys
        harness = sys.modules['verifiers.code.harness']
        real = harness._answer
        harness._answer = lambda *args: {**real(*args), 'stop': True}
        def f(x):
            return False
        """),
    "garbage value tree": src("""
        import sys
        sys.modules['verifiers.code.harness']._answer = lambda *args: {'v': {'x': 1}}
        def f(x):
            return False
        """),
}
WIRE_TESTS = asserts(["assert all(map(f, [1, 2, 3]))", "assert not any(not f(x) for x in [1, 2])",
                      "assert all(f(x) for x in [1])"])


@needs_sandbox
@pytest.mark.parametrize("name", sorted(WIRE_FORGERIES))
def test_class2_program_rewriting_its_end_of_the_wire_is_a_violation(pool, name):
    verdict = pool.run_tests(WIRE_FORGERIES[name], WIRE_TESTS)
    assert verdict.status == "violation" and verdict.passed_cases == 0, verdict
    assert pool.run_tests("def f(x):\n    return True\n", WIRE_TESTS).passed


@needs_sandbox
def test_class2_stop_iteration_from_a_call_is_an_error_not_the_end_of_a_loop(pool):
    # Raised for real, or forged as the reply to a call: in the program's
    # protocol it is an exception of the call, never the end of map()/any().
    raised = "def f(x):\n    raise StopIteration\n"
    forged = "import sys\nsys.modules['verifiers.code.harness']._answer = lambda *a: {'exc': 'StopIteration', 'msg': ''}\n" \
             "def f(x):\n    return False\n"
    for program in (raised, forged):
        verdict = pool.run_tests(program, WIRE_TESTS)
        assert verdict.status == "failed" and verdict.passed_cases == 0, verdict


@needs_sandbox
def test_class3_and_8_the_sandbox_sees_only_the_interpreter(pool, secret_store):
    program = src(f"""
        import os, sys
        def exists(path):
            return os.path.exists(path)
        def package_dir():
            module = sys.modules.get('verifiers')
            return [os.path.exists(p) and os.listdir(p) for p in getattr(module, '__path__', [])]
        def can_write(path):  # raw libc: the kernel must refuse, not the audit hook
            import ctypes
            return ctypes.CDLL(None).open(path.encode(), os.O_WRONLY | os.O_CREAT, 0o644) >= 0
        def pid():
            return os.getpid()
        def processes():
            return sorted(p for p in os.listdir('/proc') if p.isdigit())
        """)
    tests = asserts([f"assert not exists({str(DATA / 'benchmarks' / 'humaneval.jsonl')!r})",
                     f"assert not exists({str(ROOT)!r} + '/pyproject.toml')",
                     "assert not exists('/work/shared/data')",
                     f"assert not exists({secret_store!r})",
                     "assert package_dir() in ([], [False])",
                     "assert not exists('/sys/fs/cgroup') and not exists('/sys')",
                     "assert not exists('/home') and not exists('/etc/passwd')",
                     "assert not can_write('/usr/lib/x') and not can_write(sys.prefix + '/x')",
                     "assert processes() == ['1']",
                     "assert pid() == 1"], entry_point="exists", setup="import sys")
    verdict = pool.run_tests(program, tests)
    assert verdict.passed, verdict
    assert "pidns" in pool.info["isolation"]
    # A directory inside what the sandbox must see (the interpreter's prefix) can be masked too.
    inside = os.path.dirname(pytest.__file__)
    with SandboxPool(1, hide_paths=[inside]) as masking:
        listing = src(f"""
            import os
            def f(path):
                return sorted(os.listdir(path))
            """)
        assert masking.run_tests(listing, asserts([f"assert f({inside!r}) == []", "assert 'os.py' in f(os.__file__[:-6])"],
                                                  setup="import os")).passed


MEMORY_SNOOPS = {
    # Walk every frame above the program and every object gc knows: the worker's
    # job (tests, expected outputs) would be there had the program been forked from it.
    "frames and gc": src("""
        import gc, re, sys
        def f(x):
            seen = []
            frame = sys._getframe()
            while frame is not None:
                seen.extend(frame.f_locals.values())
                frame = frame.f_back
            seen.extend(gc.get_objects())
            found = set()
            for value in seen:
                items = [value] if isinstance(value, (str, bytes)) else \
                    list(value.values()) if isinstance(value, dict) else []
                for item in items:
                    if isinstance(item, bytes):
                        item = item.decode('latin-1')
                    if isinstance(item, str):
                        found.update(re.findall('SECRET-[A-Z]+-[0-9]+', item))
            return sorted(found)
        """),
    # Read raw memory (freed heap included) for what earlier jobs left behind.
    "raw heap": src("""
        import ctypes, re
        def f(x):
            found = set()
            for line in open('/proc/self/maps'):
                parts = line.split()
                if 'rw' not in parts[1] or (len(parts) > 5 and parts[5].startswith('/')):
                    continue
                low, high = (int(a, 16) for a in parts[0].split('-'))
                if high - low > 256 << 20:
                    continue
                try:
                    data = ctypes.string_at(low, high - low)
                except Exception:
                    continue
                found.update(m.decode() for m in re.findall(rb'SECRET-[A-Z]+-[0-9]+', data))
            return sorted(found)
        """),
}


@needs_sandbox
@pytest.mark.parametrize("name", sorted(MEMORY_SNOOPS))
def test_class3_no_answer_key_in_the_programs_memory(name):
    earlier = [("def f(x):\n    return 0\n", asserts(["assert f(1) == 'SECRET-EARLIER-1234'"])),
               ("print(0)\n", CodeTests.stdio([("", "SECRET-STDOUT-77")])),
               ("def f(x):\n    return 'SECRET-PROGRAM-55'\n", asserts(["assert f(1) == 0"]))]
    stdio_walk = src("""
        import sys
        frame = sys._getframe()
        while frame is not None:
            for value in list(frame.f_locals.values()):
                if isinstance(value, str) and 'SECRET-' in value:
                    print(value)
            frame = frame.f_back
        """)
    with SandboxPool(1) as one:
        one.run_batch(earlier)
        snoop = one.run_tests(MEMORY_SNOOPS[name], asserts(["assert f(1) == []",
                                                            "assert f(1) == ['SECRET-ANSWER-8419']"]))
        assert snoop.passed_cases == 1 and snoop.status == "failed", snoop
        stdio = one.run_tests(stdio_walk, CodeTests.stdio([("", "SECRET-STDIO-42")]))
        assert stdio.status == "failed", stdio


@needs_sandbox
def test_class4_nothing_a_program_leaves_reaches_the_next():
    leave = src("""
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        os.chdir('/tmp/work')
        for _ in range(1100):          # deeper than shutil.rmtree's recursion
            os.mkdir('d')
            os.chdir('d')
        with open('/tmp/work/fill', 'wb') as f:
            try:
                for _ in range(15):
                    f.write(b'x' * (1 << 20))
            except OSError:
                pass
        shm = libc.shmget(0x1818, 4096, 0o1000 | 0o666)      # IPC_CREAT
        key = libc.syscall(248, b'user', b'leftover', b'secret', 6, -4)  # add_key to @u
        def f(x):
            return shm, key
        """)
    find = src("""
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        def f(x):
            with open('fresh', 'wb') as out:
                out.write(b'y' * (8 << 20))
            found = libc.syscall(250, 10, -4, b'user', b'leftover', 0)  # KEYCTL_SEARCH @u
            return sorted(os.listdir('.')), libc.shmget(0x1818, 0, 0), found
        """)
    with SandboxPool(1) as one:
        left = one.run_tests(leave, asserts(["assert f(0)[0] >= 0", "assert f(0)[1] == -1"]))
        assert left.passed, left   # the SysV segment exists in its own IPC namespace; the keyring is refused
        for _ in range(2):
            later = one.run_tests(find, asserts(["assert f(0) == (['fresh'], -1, -1)"]))
            assert later.passed, later
    with SandboxPool(1, unsafe_no_sandbox=True) as unsafe:  # no tmpfs there: the cleanup must cope
        deep = leave.replace("'/tmp/work'", "os.getcwd()").replace("/tmp/work/fill", "fill")
        assert unsafe.run_tests(deep, asserts(["assert True"])).passed
        assert unsafe.run_tests("import os\ndef f(x):\n    return os.listdir('.')\n",
                                asserts(["assert f(0) == []"])).passed


@needs_sandbox
def test_class5_pools_own_their_uids_and_programs_their_pid_namespaces(pool):
    victim = "import time\ntime.sleep(2)\ndef f(x):\n    return x\n"
    killer = src("""
        import os, signal
        for target in [-1] + [int(p) for p in os.listdir('/proc') if p.isdigit()]:
            try:
                os.kill(target, signal.SIGKILL)
            except OSError:
                pass
        def f(x):
            return x
        """)
    tests = asserts(["assert f(1) == 1"])
    with SandboxPool(1) as other, ThreadPoolExecutor(1) as background:
        assert other.config["base_uid"] != pool.config["base_uid"]
        ours = set(range(pool.config["base_uid"], pool.config["base_uid"] + 2 * pool.size))
        assert ours.isdisjoint(range(other.config["base_uid"], other.config["base_uid"] + 2 * other.size))
        waiting = background.submit(pool.run_tests, victim, tests, timeout_s=10.0)
        time.sleep(0.5)
        for _ in range(3):
            other.run_tests(killer, tests)
        with SandboxPool(1):  # starting a third pool must not disturb it either
            pass
        assert waiting.result(timeout=60).passed


@needs_sandbox
def test_class6_a_cpu_hog_cannot_take_the_other_slots_cpu(pool):
    hog = src("""
        import os
        os.sched_setaffinity(0, range(os.cpu_count()))
        for _ in range(60):
            try:
                if os.fork() == 0:
                    os.setsid()
                    os.sched_setaffinity(0, range(os.cpu_count()))
                    while True:
                        pass
            except OSError:
                break
        def f(x):
            while True:
                pass
        """)
    honest = "def f(n):\n    return sum(i * i for i in range(n))\n"
    tests = asserts([f"assert f(200_000) == {sum(i * i for i in range(200_000))}"] * 3)
    verdicts = pool.run_batch([(hog, asserts(["assert f(1)"])), (honest, tests)], timeout_s=2.0)
    assert verdicts[0].status == "timeout" and verdicts[1].passed, verdicts
    if "cgroup" not in pool.info["isolation"]:
        return
    # However many processes spin, the sandbox as a whole gets at most one CPU.
    burst = src("""
        import os, time
        def f(x):
            start = time.monotonic()
            children = []
            for _ in range(8):
                pid = os.fork()
                if pid == 0:
                    os.sched_setaffinity(0, range(os.cpu_count()))
                    while time.monotonic() - start < 1.5:
                        pass
                    os._exit(0)
                children.append(pid)
            for pid in children:
                os.waitpid(pid, 0)
            times = os.times()
            return (times.children_user + times.children_system) / (time.monotonic() - start)
        """)
    share = pool.run_tests(burst, asserts(["assert f(0) <= 1.25", "assert f(0) < 0"]), timeout_s=5.0)
    assert share.passed_cases == 1 and share.status == "failed", share
    cpu_dirs = [p for p in pool.info["cgroup_paths"] if Path(p, "cpu.cfs_quota_us").exists() or Path(p, "cpu.max").exists()]
    quotas = [Path(p, "cpu.cfs_quota_us").read_text().strip() for p in cpu_dirs if Path(p, "cpu.cfs_quota_us").exists()]
    quotas += [Path(p, "cpu.max").read_text().split()[0] for p in cpu_dirs if Path(p, "cpu.max").exists()]
    assert quotas == ["100000"]


@needs_sandbox
def test_class7_memory_and_processes_are_limited_per_sandbox(pool):
    forks = src("""
        import os
        children = []
        for _ in range(6):
            pid = os.fork()
            if pid == 0:
                block = b'x' * (300 << 20)
                import time
                time.sleep(5)
                os._exit(0)
            children.append(pid)
        for pid in children:
            os.waitpid(pid, 0)
        def f(x):
            return x
        """)
    verdict = pool.run_tests(forks, asserts(["assert f(1) == 1"]), memory_mb=512, timeout_s=10.0)
    if "cgroup" in pool.info["isolation"]:
        assert verdict.status == "memory" and "512 MB" in verdict.detail, verdict
    else:
        assert not verdict.passed
    spawn = src("""
        import os, time
        def f(x):
            started = 0
            for _ in range(200):
                try:
                    if os.fork() == 0:
                        time.sleep(30)
                        os._exit(0)
                    started += 1
                except OSError:
                    break
            return started
        """)
    counted = pool.run_tests(spawn, asserts(["assert f(0) < 64", "assert False"]))
    assert counted.passed_cases == 1, counted


@needs_sandbox
def test_class9_program_strings_are_stored_as_valid_utf8(pool, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from factory.verify import verify_code_file

    raising = "def f(x):\n    raise ValueError('\\ud800 lone')\n"
    printing = "print('\\udcff', flush=True)\nraise SystemExit(3)\n"
    verdicts = pool.run_batch([(raising, asserts(["assert f(1) == 1"])), (printing, STDIO_SUM)])
    for verdict in verdicts:
        assert not verdict.passed
        verdict.detail.encode("utf-8")  # no lone surrogate left
        pq.write_table(pa.table({"reason": [verdict.to_verdict().reason]}), tmp_path / "v.parquet")
    assert "\\ud800" in verdicts[0].detail
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"response": f"```python\n{raising}```",
                                "tests": {"kind": "asserts", "asserts": ["assert f(1) == 1"], "entry_point": "f"}}) + "\n")
    summary = verify_code_file(rows, workers=1)
    written = Path(summary["verdicts"]).read_text(encoding="utf-8")
    assert "ValueError" in written and "\\\\ud800" in written


@needs_sandbox
def test_layers_that_are_off_are_reported_and_the_rest_still_holds():
    with SandboxPool(1, without_layers=("cgroup", "pidns")) as degraded:
        layers = degraded.info["layers"]
        assert layers["cgroup"].startswith("off") and layers["pidns"].startswith("off")
        assert "cgroup" not in degraded.info["isolation"] and "uid" in degraded.info["isolation"]
        tests = asserts(["assert f(1) == 2"])
        assert degraded.run_tests("def f(x):\n    return x + 1\n", tests).passed
        spin = degraded.run_tests("while True:\n    pass\n", tests, timeout_s=0.5)
        assert spin.status == "timeout" and "wall" not in spin.detail and "CPU" not in spin.detail
        assert not degraded.run_tests(HACKS["__eq__ always True"], HACK_TESTS).passed
        assert not sandbox_processes(degraded)
    with pytest.raises(ValueError, match="^without_layers: expected"):
        SandboxPool(1, without_layers=("network",))
