"""A small OpenAI-compatible chat server with deterministic fault injection, for tests and benchmarks.

It answers ``POST /v1/chat/completions`` and ``GET /v1/models`` like a reasoning
model server: the reply carries ``reasoning_content`` (or ``reasoning``, or
inline ``<think>`` text) and ``usage``. It never loads a model.

Faults are scripted per request so they stay deterministic under any
concurrency. Put a directive in a message's content::

    "What is 2 + 2? [[faults:429:1,500,hang,drop]]"

and the server answers the 1st attempt of that (content, seed) with a 429 and
``Retry-After: 1``, the 2nd with a 500, lets the 3rd hang for ``hang_s``,
drops the connection in the middle of the 4th response, and serves every later
attempt normally. Fault tokens: ``429``, ``429:<seconds>``, ``500``, ``502``,
``503``, ``400``, ``hang``, ``drop``, ``reset`` (close before any response),
``ok``. ``fault_all`` applies one token to every request (e.g. exhaustion).

Run it in a thread (``FaultServer``, for tests) or in its own process
(``FaultServerProcess`` or ``python tests/fault_server.py``, for benchmarks, so
the server does not share a core's event loop with the client it measures).
Runtime control: ``GET /_admin/stats``, ``POST /_admin/config`` (partial
``FaultConfig`` as JSON), ``POST /_admin/reset``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from aiohttp import web

DIRECTIVE_RE = re.compile(r"\[\[faults:([^\]]*)\]\]")


@dataclass
class FaultConfig:
    latency_s: float = 0.0  # added to every chat request before answering
    support_n: bool = True  # False: behave like `transformers serve`, one choice whatever `n` says
    model: str = "fault-model"
    api_key: str | None = None  # when set, a Bearer token is required; the 401 echoes it like a careless server
    reasoning_field: str = "reasoning_content"  # reasoning_content | reasoning | inline | none
    fault_all: str | None = None  # one fault token applied to every chat request
    hang_s: float = 30.0  # how long a "hang" sleeps before answering (after the client gave up)
    models_endpoint: bool = True  # False: GET /v1/models answers 404, like servers without it


@dataclass
class ServerState:
    config: FaultConfig = field(default_factory=FaultConfig)
    requests: int = 0  # chat requests received
    answered: int = 0  # chat requests answered 200
    in_flight: int = 0  # chat requests being handled now
    max_in_flight: int = 0  # the most handled at once: what a client's concurrency limit allows
    n_seen: Counter = field(default_factory=Counter)  # the `n` values clients asked for
    attempts: Counter = field(default_factory=Counter)  # (content, seed) -> requests seen
    last_body: dict[str, Any] | None = None

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "answered": self.answered,
            "max_in_flight": self.max_in_flight,
            "n_seen": {str(k): v for k, v in self.n_seen.items()},
            "attempts": len(self.attempts),
            "max_attempts": max(self.attempts.values(), default=0),
            "last_body": self.last_body,
            "config": asdict(self.config),
        }


STATE = web.AppKey("state", ServerState)


def build_app(config: FaultConfig | None = None) -> web.Application:
    state = ServerState(config or FaultConfig())
    app = web.Application()
    app[STATE] = state
    app.router.add_post("/v1/chat/completions", _chat)
    app.router.add_get("/v1/models", _models)
    app.router.add_get("/health", _health)
    app.router.add_get("/_admin/stats", _admin_stats)
    app.router.add_post("/_admin/config", _admin_config)
    app.router.add_post("/_admin/reset", _admin_reset)
    return app


# ---------------------------------------------------------------- handlers
async def _health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _admin_stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].snapshot())


async def _models(request: web.Request) -> web.Response:
    config: FaultConfig = request.app[STATE].config
    if not config.models_endpoint:
        return web.json_response({"detail": "Not Found"}, status=404)
    if (denied := _auth_error(request, config)) is not None:
        return denied
    return web.json_response({"object": "list", "data": [{"id": config.model, "object": "model", "owned_by": "fault"}]})


async def _chat(request: web.Request) -> web.StreamResponse:
    state: ServerState = request.app[STATE]
    state.requests += 1
    state.in_flight += 1
    state.max_in_flight = max(state.max_in_flight, state.in_flight)
    try:
        return await _answer_chat(request, state)
    finally:
        state.in_flight -= 1


async def _answer_chat(request: web.Request, state: ServerState) -> web.StreamResponse:
    config = state.config
    if (denied := _auth_error(request, config)) is not None:
        return denied
    try:
        body = await request.json()
    except json.JSONDecodeError:
        return _error(400, "invalid JSON body")
    state.last_body = body
    if body.get("model") != config.model:
        return _error(404, f"The model `{body.get('model')}` does not exist.", kind="NotFoundError")
    messages = body.get("messages") or []
    content = str(messages[-1].get("content", "")) if messages else ""
    seed = body.get("seed")
    n = int(body.get("n") or 1)
    state.n_seen[n] += 1
    key = f"{content}\x00{seed}"
    state.attempts[key] += 1
    fault = config.fault_all or _scripted_fault(content, state.attempts[key])
    if fault and fault != "ok":
        response = await _inject(request, fault, config)
        if response is not None:
            return response
    if config.latency_s > 0:
        await asyncio.sleep(config.latency_s)
    choices = n if config.support_n else 1
    state.answered += 1
    return web.json_response(_completion_body(body, messages, content, seed, choices, config))


def _scripted_fault(content: str, attempt: int) -> str | None:
    match = DIRECTIVE_RE.search(content)
    if not match:
        return None
    plan = [token.strip() for token in match.group(1).split(",") if token.strip()]
    return plan[attempt - 1] if attempt <= len(plan) else None


async def _inject(request: web.Request, fault: str, config: FaultConfig) -> web.StreamResponse | None:
    """Answer with the fault, or return None when the fault only delays a normal answer."""
    name, _, arg = fault.partition(":")
    if name == "429":
        headers = {"Retry-After": arg} if arg else {}
        return _error(429, "Rate limit reached; slow down.", kind="RateLimitError", headers=headers)
    if name in ("500", "502", "503"):
        return _error(int(name), "Internal server error (injected).", kind="InternalServerError")
    if name == "400":
        return _error(400, "This model's maximum context length is exceeded (injected).", kind="BadRequestError")
    if name == "hang":
        await asyncio.sleep(config.hang_s)
        return None
    if name == "reset":
        request.transport.close()  # type: ignore[union-attr]  # no response at all
        return web.Response(status=204)
    if name == "drop":
        # Promise a body, send half of it, then cut the connection: a mid-response drop.
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json", "Content-Length": "4096"})
        await response.prepare(request)
        await response.write(b'{"id": "chatcmpl-dropped", "choices": [')
        await asyncio.sleep(0.01)
        request.transport.close()  # type: ignore[union-attr]
        return response
    raise ValueError(f"unknown fault token {fault!r}")


def _completion_body(
    body: dict[str, Any], messages: list[dict[str, Any]], content: str, seed: Any, choices: int, config: FaultConfig
) -> dict[str, Any]:
    prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in messages) + 3 * len(messages)
    max_tokens = int(body.get("max_tokens") or body.get("max_completion_tokens") or 1 << 30)
    out = []
    completion_tokens = 0
    short = " ".join(DIRECTIVE_RE.sub("", content).split()[:6])
    for index in range(choices):
        reasoning = f"Let me think about: {short}. Sample {index} with seed {seed}."
        answer = f"The answer is \\boxed{{{index}}}."
        tokens = len(reasoning.split()) + len(answer.split())
        finish = "length" if tokens > max_tokens else "stop"
        completion_tokens += min(tokens, max_tokens)
        message: dict[str, Any] = {"role": "assistant", "content": answer}
        if config.reasoning_field in ("reasoning_content", "reasoning"):
            message[config.reasoning_field] = reasoning
        elif config.reasoning_field == "inline":
            message["content"] = f"<think>\n{reasoning}\n</think>\n\n{answer}"
        out.append({"index": index, "message": message, "finish_reason": finish})
    return {
        "id": f"chatcmpl-{time.monotonic_ns()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": config.model,
        "choices": out,
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens},
    }


def _auth_error(request: web.Request, config: FaultConfig) -> web.Response | None:
    if config.api_key is None:
        return None
    presented = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    if presented == config.api_key:
        return None
    # Echo the key back, as some servers do, so clients are tested on redacting it.
    return _error(401, f"Incorrect API key provided: {presented or '<none>'}", kind="AuthenticationError")


def _error(status: int, message: str, *, kind: str = "Error", headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": {"message": message, "type": kind, "code": status}}, status=status, headers=headers)


async def _admin_config(request: web.Request) -> web.Response:
    state: ServerState = request.app[STATE]
    updates = await request.json()
    known = {f.name for f in fields(FaultConfig)}
    unknown = set(updates) - known
    if unknown:
        return _error(400, f"unknown config keys: {sorted(unknown)}")
    for name, value in updates.items():
        setattr(state.config, name, value)
    return web.json_response(asdict(state.config))


async def _admin_reset(request: web.Request) -> web.Response:
    state: ServerState = request.app[STATE]
    state.requests = state.answered = state.max_in_flight = 0
    state.n_seen.clear()
    state.attempts.clear()
    state.last_body = None
    return web.json_response({"ok": True})


# ---------------------------------------------------------------- running it
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class FaultServer:
    """The server on 127.0.0.1 in a background thread with its own event loop.

    Use as a context manager; ``url`` is the OpenAI base URL (ending in /v1)
    and ``state`` the live counters and config.
    """

    def __init__(self, config: FaultConfig | None = None, *, port: int | None = None) -> None:
        self.app = build_app(config)
        self.port = port or free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-server", daemon=True)
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def state(self) -> ServerState:
        return self.app[STATE]

    @property
    def config(self) -> FaultConfig:
        return self.state.config

    def start(self) -> "FaultServer":
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    async def _start(self) -> None:
        # handler_cancellation: a client that gives up on a hanging request frees the handler,
        # so shutdown does not wait for `hang_s`.
        self._runner = web.AppRunner(self.app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, backlog=1024).start()

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
            self._runner = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def reset(self, **config: Any) -> None:
        """Clear the counters and set config fields (between tests sharing one server)."""
        self.state.requests = self.state.answered = self.state.max_in_flight = 0
        self.state.n_seen.clear()
        self.state.attempts.clear()
        self.state.last_body = None
        defaults = FaultConfig(model=self.config.model)
        for f in fields(FaultConfig):
            setattr(self.config, f.name, config.get(f.name, getattr(defaults, f.name)))

    def __enter__(self) -> "FaultServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class FaultServerProcess:
    """The server in a child process (benchmarks): its own interpreter, its own core."""

    def __init__(self, config: FaultConfig | None = None, *, ready_timeout_s: float = 20.0) -> None:
        self.config = config or FaultConfig()
        self.port = free_port()
        self.ready_timeout_s = ready_timeout_s
        self._proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> "FaultServerProcess":
        args = [sys.executable, __file__, "--port", str(self.port), "--config", json.dumps(asdict(self.config))]
        self._proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"fault server exited early: {self._proc.stdout.read() if self._proc.stdout else ''}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"fault server did not listen on port {self.port} within {self.ready_timeout_s}s")

    def stop(self) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout=10)
        if self._proc.stdout:
            self._proc.stdout.close()
        self._proc = None

    def __enter__(self) -> "FaultServerProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--config", default="{}", help="FaultConfig fields as JSON")
    args = parser.parse_args()
    config = FaultConfig(**json.loads(args.config))
    port = args.port or free_port()
    print(f"fault server on http://127.0.0.1:{port}/v1", flush=True)
    web.run_app(
        build_app(config), host="127.0.0.1", port=port, access_log=None, print=None,
        handler_cancellation=True, shutdown_timeout=0.5, backlog=1024,
    )


if __name__ == "__main__":
    main()
