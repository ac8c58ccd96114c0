"""Code that runs inside the sandbox, in two processes that do not trust each other.

* The *program* process (``serve_program``) runs the untrusted program and then
  answers calls: "call function #3 with these plain-data arguments". It never
  sees the tests' expected values and never decides anything.
* The *test* process (``run_test_side``) runs the test code with the program's
  functions replaced by ``RemoteObject`` proxies. Results come back as plain
  data rebuilt from builtin types, so ``assert candidate(x) == y`` is evaluated
  by real ``int``/``list``/... comparisons in a process the program cannot
  touch (different uid, no shared memory, no shared fds). The test process
  reports each finished case to the worker over a pipe the program does not
  hold: ``sys.exit(0)``, ``os._exit(0)``, a ``SystemExit`` raised inside an
  assert, patched builtins, printed "success" markers and ``__eq__`` overrides
  therefore cannot produce a pass.
"""

from __future__ import annotations

import builtins
import functools
import importlib
import os
import sys
import traceback
import types
from typing import Any

from . import wire

_DETAIL_CHARS = 600
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_NETWORK_EVENTS = frozenset({"socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg"})
_PROCESS_EVENTS = frozenset({"subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
                             "pty.spawn"})
_WATCHED_EVENTS = _NETWORK_EVENTS | _PROCESS_EVENTS | {"open"}


def _tail(text: str, limit: int = _DETAIL_CHARS) -> str:
    text = text.strip()
    return text if len(text) <= limit else "…" + text[-limit:]


# --------------------------------------------------------------------------- program side

def install_policy_hook(workdir: str, violation_fd: int) -> None:
    """Record (and refuse) network, subprocess and out-of-directory writes.

    The kernel enforces the real boundary (namespaces, uid, read-only mounts);
    this hook only labels attempts so the verdict can say ``violation``, on a
    pipe the worker reads after the job. The program can bypass or forge it,
    which can only make its own verdict worse.
    """
    sys.addaudithook(policy_hook(workdir, violation_fd))


def policy_hook(workdir: str, violation_fd: int) -> Any:
    """The audit hook ``install_policy_hook`` installs (built ahead of the fork by the zygote)."""
    root = os.path.realpath(workdir) + os.sep
    allowed = ("/dev/null", "/dev/stdout", "/dev/stderr")

    def record(what: str) -> None:
        try:
            os.write(violation_fd, (what[:300] + "\n").encode("utf-8", "backslashreplace"))
        except OSError:
            pass
        raise PermissionError(f"sandbox: {what}")

    def hook(event: str, args: tuple) -> None:
        if event not in _WATCHED_EVENTS:  # called for every audit event: keep the common path short
            return
        if event == "open":
            path, _mode, flags = args
            if type(path) in (str, bytes) and type(flags) is int and flags & _WRITE_FLAGS:
                full = os.path.realpath(os.fsdecode(path))
                if not (full + os.sep).startswith(root) and full not in allowed:
                    record(f"write outside the sandbox directory: {full}")
        elif event in _NETWORK_EVENTS:
            record(f"network access ({event} {args[1:]!r:.100})")
        elif event in _PROCESS_EVENTS:
            record(f"subprocess ({event})")

    return hook


def _load_program(program: str, tests: dict[str, Any], namespace: dict[str, Any]) -> None:
    prompt = tests.get("prompt") or ""
    try:
        code = compile(program, "<program>", "exec", dont_inherit=True)
    except SyntaxError:
        if not prompt:
            raise
        # A HumanEval-style completion: the body continues the prompt.
        exec(compile(prompt + program, "<program>", "exec", dont_inherit=True), namespace)
        return
    if prompt and not program.startswith(prompt):
        # Helpers the prompt defines (poly, encode_cyclic, ...) stay available
        # when the program only re-defines the entry point.
        try:
            exec(compile(prompt, "<prompt>", "exec", dont_inherit=True), namespace)
        except Exception:
            pass
    exec(code, namespace)


class _Handles:
    """Objects the test side may refer to by number."""

    def __init__(self) -> None:
        self.objects: list[Any] = []

    def ref(self, obj: Any) -> dict[str, int]:
        self.objects.append(obj)
        return {"r": len(self.objects) - 1}

    def get(self, index: int) -> Any:
        if not 0 <= index < len(self.objects):
            raise wire.ProtocolError(f"unknown handle {index}")
        return self.objects[index]


def _export(name: str, value: Any, handles: _Handles) -> Any:
    if isinstance(value, types.ModuleType) and isinstance(getattr(value, "__name__", None), str):
        return {"m": value.__name__}
    try:
        return wire.encode(value, _numpy_or_ref(handles))
    except (wire.NotPlain, RecursionError, ValueError):
        return handles.ref(value)


def _numpy_or_ref(handles: _Handles) -> Any:
    """NumPy scalars/arrays travel as their ``tolist()``; other objects as handles.

    Converting here, on the untrusted side, gives the program nothing new: it
    could send any plain data it liked anyway.
    """
    def convert(value: Any) -> Any:
        if type(value).__module__ == "numpy" and callable(getattr(value, "tolist", None)):
            plain = value.tolist()
            return wire.encode(plain, convert) if type(plain).__module__ != "numpy" else handles.ref(value)
        return handles.ref(value)
    return convert


def serve_program(program: str, tests: dict[str, Any], rfd: int, wfd: int,
                  pristine: dict[str, Any] | None = None) -> None:
    """Run the program, then answer the test side's calls until it hangs up.

    ``pristine``: a copy of ``builtins.__dict__`` as it was before the program
    (the zygote takes it once, before any fork)."""
    namespace: dict[str, Any] = {"__name__": "__solution__", "__builtins__": builtins}
    handles = _Handles()
    pristine = pristine if pristine is not None else dict(builtins.__dict__)
    try:
        _load_program(program, tests, namespace)
    except BaseException as exc:  # SystemExit at top level is a load failure too
        _restore_builtins(pristine)
        wire.write_frame(wfd, {"ok": False, "etype": type(exc).__name__,
                               "detail": _tail(traceback.format_exc())})
        return
    _restore_builtins(pristine)
    entry = tests.get("entry_point")
    names = {k: _export(k, v, handles) for k, v in list(namespace.items())
             if type(k) is str and _exportable(k, entry)}
    wire.write_frame(wfd, {"ok": True, "names": names})
    requests = wire.FrameReader(rfd)
    while True:
        request = requests.read()
        if request is None:
            return
        wire.write_frame(wfd, _answer(request, handles, pristine))


def _exportable(name: str, entry_point: str | None) -> bool:
    """Names the test side may accept: never a dunder, nor a builtin's name
    unless it is the entry point itself."""
    if name == entry_point:
        return name.isidentifier()
    return name.isidentifier() and not name.startswith("__") and name not in _BUILTIN_NAMES


def _restore_builtins(pristine: dict[str, Any]) -> None:
    """Undo the program's patches to the builtins this side's own plumbing uses,
    so that it keeps working (the verdict never depended on it: the test side
    is another process). Only those: the rest of ``builtins`` is the program's
    to change, as in any run of it, and touching every builtin would copy
    dozens of pages the program shares with the zygote."""
    current = builtins.__dict__
    for name in _PLUMBING_BUILTINS:
        original = pristine.get(name, _MISSING)
        if original is not _MISSING and current.get(name) is not original:  # identity: values may be hostile
            current[name] = original


_MISSING = object()
# What the program side's plumbing (``_answer``, ``_export``, ``wire``, ``json``) looks up in builtins.
_PLUMBING_BUILTINS = ("type", "isinstance", "issubclass", "len", "list", "tuple", "dict", "set", "frozenset",
                      "bytes", "bytearray", "str", "int", "float", "complex", "bool", "iter", "next", "getattr",
                      "hasattr", "callable", "memoryview", "repr", "id", "range", "enumerate", "super", "object",
                      "BaseException", "Exception", "StopIteration", "ValueError", "TypeError", "RecursionError",
                      "KeyError", "IndexError", "AttributeError", "OverflowError", "UnicodeDecodeError",
                      "MemoryError", "OSError", "NotImplemented")


def _answer(request: dict[str, Any], handles: _Handles, pristine: dict[str, Any]) -> dict[str, Any]:
    try:
        target = handles.get(request["r"])
        op = request["op"]
        if op == "call":
            args = wire.decode(request["a"], handles.get)
            kwargs = wire.decode(request["k"], handles.get)
            result = target(*args, **kwargs)
        elif op == "getattr":
            result = getattr(target, request["name"])
        elif op == "iter":
            result = iter(target)
        elif op == "next":
            try:
                result = next(target)
            except StopIteration:
                return {"stop": True}
        else:
            raise wire.ProtocolError(f"unknown op {op!r}")
        _restore_builtins(pristine)
        return {"v": _export("", result, handles)}
    except BaseException as exc:
        _restore_builtins(pristine)
        try:
            return {"exc": type(exc).__name__, "msg": _tail(str(exc), 300)}
        except BaseException:  # str() of a hostile exception
            return {"exc": "Exception", "msg": "unprintable exception"}


def run_script(program: str) -> int:
    """stdin/stdout mode: run the program as ``__main__``; returns the exit code."""
    namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
    code = 0
    try:
        exec(compile(program, "<program>", "exec", dont_inherit=True), namespace)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc()
        code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            code = code or 1
    return code


# --------------------------------------------------------------------------- test side

class RemoteDied(BaseException):
    """The program process is gone (exit, crash, kill). A BaseException so test
    code's ``except Exception`` cannot swallow it."""


class RemoteError(Exception):
    """The program raised an exception that has no builtin counterpart."""


class ProtocolViolation(RemoteDied):
    """The program's process sent something outside the protocol's closed schema:
    it rewrote its own end of the wire. Graded ``violation``."""


_REPLY_KEYS = {"call": ("v", "exc"), "getattr": ("v", "exc"), "iter": ("v", "exc"), "next": ("v", "exc", "stop")}


class _Connection:
    def __init__(self, wfd: int, rfd: int) -> None:
        self.wfd, self.replies = wfd, wire.FrameReader(rfd)
        self.dead: str | None = None
        self.violation: str | None = None
        self.memory = False
        self.proxies: dict[int, RemoteObject] = {}

    def handshake(self, entry_point: str | None) -> tuple[bool, dict[str, Any]]:
        """``(True, names)`` or ``(False, {"etype", "detail"})``; anything else is a violation."""
        hello = self._receive()
        if type(hello) is not dict or type(hello.get("ok")) is not bool:
            self._violate("program sent a malformed greeting")
        if hello["ok"]:
            names = hello.get("names")
            if set(hello) != {"ok", "names"} or type(names) is not dict:
                self._violate(f"program sent a greeting with keys {sorted(hello)!r:.100}")
            for name in names:
                if not _acceptable_name(name, entry_point):
                    self._violate(f"program sent the name {name!r:.60}, which would shadow the test side's own")
            return True, names
        if set(hello) != {"ok", "etype", "detail"} or not all(type(hello[k]) is str for k in ("etype", "detail")):
            self._violate(f"program sent a failure greeting with keys {sorted(hello)!r:.100}")
        return False, hello

    def _die(self, why: str) -> None:
        self.dead = self.dead or why
        raise RemoteDied(self.dead)

    def _violate(self, why: str) -> None:
        self.violation = self.violation or why
        self.dead = self.dead or why
        raise ProtocolViolation(why)

    def _receive(self) -> Any:
        try:
            reply = self.replies.read()
        except (wire.ProtocolError, OSError) as exc:
            self._violate(f"program broke the protocol: {exc}")
        if reply is None:
            self._die("program exited before the tests finished")
        return reply

    def proxy(self, index: int) -> RemoteObject:
        if index not in self.proxies:
            self.proxies[index] = RemoteObject(self, index)
        return self.proxies[index]

    def request(self, message: dict[str, Any]) -> Any:
        if self.dead:
            if self.violation:
                raise ProtocolViolation(self.violation)
            raise RemoteDied(self.dead)
        try:
            wire.write_frame(self.wfd, message)
        except OSError:
            self._die("program exited before the tests finished")
        reply = self._receive()
        op = message["op"]
        if type(reply) is not dict or len(reply) not in (1, 2):
            self._violate(f"program sent a malformed reply to {op}")
        if set(reply) == {"v"} and "v" in _REPLY_KEYS[op]:
            try:
                return wire.decode(reply["v"], self.proxy, _import_module)
            except wire.ProtocolError as exc:
                self._violate(f"program sent a bad value: {exc}")
        if set(reply) == {"stop"} and "stop" in _REPLY_KEYS[op] and reply["stop"] is True:
            raise StopIteration
        if set(reply) == {"exc", "msg"} and type(reply["exc"]) is str and type(reply["msg"]) is str:
            name, msg = reply["exc"], reply["msg"]
            if name == "MemoryError":
                self.memory = True
            cls = getattr(builtins, name, None) if name.isidentifier() else None
            if isinstance(cls, type) and issubclass(cls, Exception) and not issubclass(cls, _NEVER_REMOTE):
                raise cls(msg)
            raise RemoteError(f"{name}: {msg}")
        self._violate(f"program sent a reply that does not answer {op}: keys {sorted(reply)!r:.80}")


# Exceptions that steer the test code's control flow, not results of a call.
_NEVER_REMOTE = (StopIteration, StopAsyncIteration, GeneratorExit)


class RemoteObject:
    """A program object the test side may call, iterate or take attributes of,
    but never compare, hash or test for truth (its class is the program's).

    A *helper* (a global of the program the tests use, other than the entry
    point, e.g. a ``Pair`` class) may be called and passed around, but not used
    as a namespace: ``math.isclose(...)`` must never be the program's ``isclose``.
    """

    __slots__ = ("_conn", "_index", "_helper")

    def __init__(self, conn: _Connection, index: int, helper: str = "") -> None:
        self._conn, self._index, self._helper = conn, index, helper

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        on_other = _send_ref
        return self._conn.request({"op": "call", "r": self._index, "a": wire.encode(list(args), on_other),
                                   "k": wire.encode(kwargs, on_other)})

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        if self._helper:
            raise AttributeError(f"the tests may call the program's {self._helper!r} but not use it as a "
                                 f"namespace ({self._helper}.{name})")
        return self._conn.request({"op": "getattr", "r": self._index, "name": name})

    def __iter__(self) -> Any:
        iterator = self._conn.request({"op": "iter", "r": self._index})
        if not isinstance(iterator, RemoteObject):
            return iter(iterator)
        return _RemoteIterator(iterator)

    def _refuse(self, *_: Any) -> Any:
        raise TypeError("the program returned an object that is not plain data; it cannot be compared")

    __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = __bool__ = __hash__ = _refuse

    def __repr__(self) -> str:
        return f"<program object #{self._index}>"


class _RemoteIterator:
    def __init__(self, remote: RemoteObject) -> None:
        self.remote = remote

    def __iter__(self) -> _RemoteIterator:
        return self

    def __next__(self) -> Any:
        return self.remote._conn.request({"op": "next", "r": self.remote._index})


def _send_ref(value: Any) -> Any:
    if isinstance(value, RemoteObject):
        return {"r": value._index}
    raise wire.NotPlain(f"cannot pass a {type(value).__name__} to the program")


_BUILTIN_NAMES = frozenset(dir(builtins))


def _acceptable_name(name: Any, entry_point: str | None) -> bool:
    if type(name) is not str or not name.isidentifier():
        return False
    if name == entry_point:
        return True
    return not name.startswith("__") and name not in _BUILTIN_NAMES


# Importing these has side effects (browsers, GUIs, printing) we do not want
# in the long-lived test process.
_NO_IMPORT = frozenset({"antigravity", "this", "tkinter", "turtle", "turtledemo", "idlelib", "webbrowser"})


def _import_module(name: str) -> Any:
    """The test side's own copy of a standard-library module the program imported (by name only).

    The program chooses the name, so it must not be able to make the test side
    import arbitrary code, nor hand it one of the verifier's own modules.
    """
    top = name.partition(".")[0]
    if top not in sys.stdlib_module_names or top in _NO_IMPORT:
        return None
    if name in sys.modules:
        return sys.modules[name]
    try:
        return importlib.import_module(name)
    except Exception:
        return None


@functools.lru_cache(maxsize=512)
def _compile_test(source: str, name: str) -> Any:
    # optimize=0 keeps assert statements whatever flags the interpreter has.
    # Cached: the test server lives across jobs, and pipelines verify several
    # samples per prompt against the same tests.
    return compile(source, name, "exec", dont_inherit=True, optimize=0)


@functools.lru_cache(maxsize=512)
def _names_used(source: str, name: str) -> frozenset[str]:
    """Every name the compiled test source (and the functions it defines) looks up."""
    found: set[str] = set()
    pending = [_compile_test(source, name)]
    while pending:
        code = pending.pop()
        found.update(code.co_names)
        pending.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
    return frozenset(found)


def _classify(exc: BaseException, conn: _Connection) -> tuple[str, str]:
    if isinstance(exc, ProtocolViolation) or conn.violation:
        return "violation", str(conn.violation or exc)
    if isinstance(exc, RemoteDied) or conn.dead:
        return "died", str(conn.dead or exc)
    if isinstance(exc, MemoryError) or conn.memory:
        return "memory", f"MemoryError: {exc}"
    if isinstance(exc, AssertionError):
        return "assert", f"AssertionError{': ' + str(exc) if str(exc) else ''}"
    return "exception", f"{type(exc).__name__}: {exc}"


def run_test_side(tests: dict[str, Any], wfd: int, rfd: int, report_fd: int, job: int = 0) -> None:
    """Run each case against the program process; report every finished case, then ``done``."""
    def report(message: dict[str, Any]) -> None:
        wire.write_frame(report_fd, {**message, "job": job})

    conn = _Connection(wfd, rfd)
    try:
        _run_cases(tests, conn, report)
    finally:
        report({"done": True})


def _trusted_sources(tests: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, label) of the code the tests bring: prompt, setup / declared imports, test file."""
    sources = [(tests.get("prompt") or "", "<prompt>"), (tests.get("setup") or "", "<setup>")]
    if tests["kind"] == "humaneval":
        sources.append((tests["test"], "<test>"))
    return [(src, label) for src, label in sources if src.strip()]


def _build_env(tests: dict[str, Any], names: dict[str, Any], conn: _Connection) -> tuple[dict[str, Any], list]:
    """The test side's namespace, built from trusted code; the program supplies
    only its entry point and names the tests use that trusted code does not define.

    Returns the namespace and the errors of trusted code (reported per case).
    """
    env: dict[str, Any] = {"__name__": "__test__", "__builtins__": builtins}
    errors: list[BaseException] = []
    for source, label in _trusted_sources(tests):
        try:
            exec(_compile_test(source, label), env)
        except BaseException as exc:
            if label != "<prompt>":  # a prompt is context; setup and test code must run
                errors.append(exc)
    entry = tests.get("entry_point")
    env.pop(entry, None)  # the prompt's stub of the entry point is not an answer
    used: set[str] = set()
    for source, label in _trusted_sources(tests) + [(a, "<assert>") for a in tests.get("asserts", ())]:
        if label == "<prompt>":
            continue
        try:
            used |= _names_used(source, label)
        except SyntaxError:
            pass
    for name, tree in names.items():
        if name != entry and (name in env or name not in used):
            continue
        try:
            value = wire.decode(tree, conn.proxy, _import_module)
        except wire.ProtocolError as exc:
            conn._violate(f"program sent a bad value for {name!r}: {exc}")
        if name != entry and name in sys.stdlib_module_names and not isinstance(value, types.ModuleType):
            continue  # "math" must be the module, not whatever the program bound to it
        if name != entry and isinstance(value, RemoteObject):
            value = RemoteObject(conn, value._index, helper=name)
        env[name] = value
    return env, errors


def _run_cases(tests: dict[str, Any], conn: _Connection, report: Any) -> None:
    entry = tests.get("entry_point")
    try:
        ok, hello = conn.handshake(entry)
        if ok:
            env, errors = _build_env(tests, hello, conn)
    except RemoteDied as exc:
        kind = "violation" if isinstance(exc, ProtocolViolation) else "died"
        report({"load_error": kind, "detail": str(exc)})
        return
    if not ok:
        report({"load_error": hello["etype"], "detail": hello["detail"]})
        return
    for index, (label, run_case) in enumerate(_cases(tests, env, errors)):
        try:
            run_case()
            ok, kind, detail = not conn.dead, "died" if conn.dead else "", str(conn.dead or "")
            if conn.violation:
                ok, kind, detail = False, "violation", conn.violation
        except BaseException as exc:
            kind, detail = _classify(exc, conn)
            ok = False
        report({"case": index, "ok": ok, "kind": kind, "detail": "" if ok else _tail(f"{label}: {detail}")})
        if conn.dead:
            break


def _cases(tests: dict[str, Any], env: dict[str, Any], errors: list[BaseException]) -> Any:
    kind = tests["kind"]
    if kind == "humaneval":
        entry = tests["entry_point"]

        def check() -> None:
            if errors:
                raise errors[0]
            if entry not in env:
                raise NameError(f"the program does not define {entry!r}")
            env["check"](env[entry])
        yield f"check({entry})", check
        return
    for line in tests["asserts"]:
        def one(line: str = line) -> None:
            if errors:
                raise errors[0]
            exec(_compile_test(line, "<assert>"), env)
        yield _tail(line, 200), one
