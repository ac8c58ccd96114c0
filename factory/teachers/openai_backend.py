"""A teacher served by any OpenAI-compatible chat endpoint (vLLM, SGLang, TGI, hosted APIs).

Built on aiohttp rather than the OpenAI SDK: at concurrency 256 the SDK's
httpx transport managed ~50 req/s on this hardware where aiohttp managed
~1,000, and a week-long run is bounded by client overhead long before the
server is.

What a long run needs from the client, and where it lives:
  * a concurrency limit (a semaphore; the connection pool is sized to it);
  * a per-request timeout and retries with exponential backoff + jitter on
    429 / 5xx / timeouts / dropped connections, honouring ``Retry-After``;
  * several endpoints with least-in-flight (or round-robin) balancing, and
    failover: an endpoint failing ``failover_after`` times in a row is put on
    cooldown and traffic goes to the others;
  * ``n`` samples of one prompt in one call where the server honours ``n``,
    detected at run time (``transformers serve`` answers one choice), with
    the remainder served by separate requests;
  * usage and cost accounting into ``TeacherStats``.

A request whose retries are exhausted comes back as a Completion with
``finish_reason == "error"``; the stream never raises for one bad request, so
the engine can record the failure and retry it on resume.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import os
import random
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp

from factory.errors import TeacherError
from factory.recipe import TeacherConfig
from factory.teachers.base import Completion, GenerationRequest, Teacher, split_think

log = logging.getLogger(__name__)

T = TypeVar("T")

RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
ENDPOINT_FAILURE_STATUS = frozenset({500, 502, 503, 504})  # count towards failover; 429 does not
N_REJECTED_STATUS = frozenset({400, 422})  # how servers that refuse `n` > 1 say so
ERROR_SNIPPET_CHARS = 300

# Option defaults for fields that OpenAIOptions may not declare yet (read with getattr).
DEFAULT_BALANCE = "least_in_flight"  # least_in_flight | round_robin
DEFAULT_FAILOVER_AFTER = 3  # consecutive failures that put an endpoint on cooldown
DEFAULT_COOLDOWN_S = 30.0
DEFAULT_CONNECT_TIMEOUT_S = 10.0
DEFAULT_MAX_N = 128  # most samples asked for in one call
DEFAULT_CHECK_TIMEOUT_S = 10.0


# ---------------------------------------------------------------- small types
@dataclass
class _Endpoint:
    """One base URL and what the balancer knows about it."""

    url: str  # base URL, e.g. http://127.0.0.1:8000/v1 (no trailing slash)
    in_flight: int = 0
    consecutive_failures: int = 0
    cooldown_until: float = 0.0
    calls: int = 0
    failures: int = 0
    cooldowns: int = 0

    @property
    def chat_url(self) -> str:
        return f"{self.url}/chat/completions"

    def summary(self) -> dict[str, Any]:
        return {"calls": self.calls, "failures": self.failures, "cooldowns": self.cooldowns}


@dataclass
class _Choice:
    text: str
    reasoning: str | None
    finish_reason: str


@dataclass
class _Reply:
    """A successful call: its choices and the call's usage."""

    choices: list[_Choice]
    prompt_tokens: int
    completion_tokens: int
    endpoint: str


class _AttemptFailed(Exception):
    """One HTTP attempt failed; `retryable` says whether another attempt may succeed."""

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        status: int | None = None,
        retry_after: float | None = None,
        endpoint_failure: bool = False,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status
        self.retry_after = retry_after
        self.endpoint_failure = endpoint_failure


@dataclass
class _SourceFailed:
    """The request iterable raised; the stream re-raises it in the consumer."""

    error: Exception


@dataclass
class _Stream:
    """What the tasks of one `astream` call share; bound to that call's event loop."""

    session: aiohttp.ClientSession
    limit: asyncio.Semaphore  # HTTP calls in flight
    results: asyncio.Queue[Completion | _SourceFailed | None]  # completions; None when a worker is done
    n_probe: asyncio.Lock  # while `n` support is unknown, one call at a time finds out


@dataclass
class _Outcome:
    """A request after all its attempts: a reply, or the last error."""

    reply: _Reply | None
    error: _AttemptFailed | None
    attempts: int
    latency_s: float


# ---------------------------------------------------------------- the teacher
class OpenAITeacher(Teacher):
    """Generate through OpenAI-compatible `/chat/completions` endpoints."""

    backend = "openai"

    def __init__(self, config: TeacherConfig) -> None:
        super().__init__(config.role, config.model)
        self.options = config.openai
        opts = self.options
        self.concurrency = opts.concurrency
        self.timeout_s = opts.timeout_s
        self.max_retries = opts.max_retries
        self.backoff_base_s = opts.backoff_base_s
        self.backoff_max_s = opts.backoff_max_s
        self.use_n = opts.use_n
        self.prices = opts.prices
        self.extra_body = dict(opts.extra_body)
        self.balance = _option(opts, "balance", DEFAULT_BALANCE, ("least_in_flight", "round_robin"))
        self.failover_after = int(getattr(opts, "failover_after", DEFAULT_FAILOVER_AFTER))
        self.cooldown_s = float(getattr(opts, "cooldown_s", DEFAULT_COOLDOWN_S))
        self.connect_timeout_s = float(getattr(opts, "connect_timeout_s", DEFAULT_CONNECT_TIMEOUT_S))
        self.max_n = int(getattr(opts, "max_n", DEFAULT_MAX_N))
        self.endpoints = [_Endpoint(_normalize_url(url)) for url in opts.endpoints]
        self._api_key_env = opts.api_key_env
        self._api_key = _read_api_key(opts.api_key_env)
        self._n_supported: bool | None = {"always": True, "never": False}.get(self.use_n)
        self._rng = random.Random()
        self._rr = 0
        self.stats.extra.update(http_calls=0, n_supported=self._n_supported, endpoints={})

    def __repr__(self) -> str:  # never shows the key
        return f"OpenAITeacher(role={self.role!r}, model={self.model!r}, endpoints={[e.url for e in self.endpoints]})"

    # ------------------------------------------------------------ public API
    def check(self) -> None:
        """Every endpoint reachable, accepting the key and serving `model`; one-line TeacherError if not."""
        _run_sync(self._check_all)

    async def astream(self, requests: Iterable[GenerationRequest]) -> AsyncIterator[Completion]:
        """Serve requests with at most `concurrency` calls in flight; yield as they finish.

        `concurrency` workers pull batches from one lazy iterator, so an 800K-request
        iterable is never held in memory and no task is created per request (at
        concurrency 256 a task per request cost ~30% more client CPU than the bare loop).
        A worker sleeping in backoff holds its slot: under rate limiting that is the point.
        """
        batches = _batches(requests, self._batchable(), self.max_n)
        async with self._session() as session:
            stream = _Stream(session, asyncio.Semaphore(self.concurrency), asyncio.Queue(), asyncio.Lock())
            workers = [asyncio.create_task(self._worker(stream, batches)) for _ in range(self.concurrency)]
            running = len(workers)
            try:
                while running:
                    item = await stream.results.get()
                    if item is None:
                        running -= 1
                    elif isinstance(item, _SourceFailed):
                        raise item.error
                    else:
                        yield item
            finally:
                for worker in workers:
                    worker.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
                self._publish_endpoint_stats()

    async def _worker(self, stream: _Stream, batches: Iterator[list[GenerationRequest]]) -> None:
        """Serve batches until the shared iterator runs out; then say so with a None."""
        try:
            for batch in batches:
                await self._serve_batch(stream, batch)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the caller's request iterable failed: surface it, do not swallow it
            stream.results.put_nowait(_SourceFailed(exc))
        finally:
            stream.results.put_nowait(None)

    # ------------------------------------------------------------ batches
    def _batchable(self) -> bool:
        return self.use_n != "never"

    async def _serve_batch(self, stream: _Stream, batch: list[GenerationRequest]) -> None:
        """Serve one batch (one prompt's samples, or a single sample); never raises for a request."""
        results = stream.results
        try:
            self.stats.requests += len(batch)
            remainder = batch
            if len(batch) > 1 and self._n_supported is None:
                async with stream.n_probe:  # re-read: the probe before us may have settled it
                    if self._n_supported is not False:
                        remainder = await self._serve_with_n(stream, batch)
            elif len(batch) > 1 and self._n_supported:
                remainder = await self._serve_with_n(stream, batch)
            if len(remainder) == 1:  # the common case: no extra task
                await self._serve_single(stream, remainder[0])
            elif remainder:
                await asyncio.gather(*(self._serve_single(stream, req) for req in remainder))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug here must not kill the stream; the samples come back as errors
            log.exception("openai teacher: unexpected failure serving a batch")
            for req in batch:
                results.put_nowait(self._error_completion(req, f"internal error: {exc!r}", attempts=1, latency_s=0.0))

    async def _serve_with_n(self, stream: _Stream, batch: list[GenerationRequest]) -> list[GenerationRequest]:
        """One call with `n` = len(batch); returns the requests it did not serve."""
        results = stream.results
        outcome = await self._request(stream, batch[0], n=len(batch))
        if outcome.reply is None:
            error = outcome.error
            if self.use_n == "auto" and error is not None and error.status in N_REJECTED_STATUS:
                self._set_n_supported(False, f"the server rejected n={len(batch)} ({error})")
                return batch
            for req in batch:
                results.put_nowait(self._error_completion(req, str(error), outcome.attempts, outcome.latency_s))
            return []
        reply = outcome.reply
        served = batch[: len(reply.choices)]
        if len(reply.choices) >= len(batch):
            self._set_n_supported(True, "")
        elif self.use_n == "auto":
            self._set_n_supported(False, f"asked n={len(batch)}, got {len(reply.choices)} choice(s)")
        shares = _split_tokens(reply.completion_tokens, [c.text + (c.reasoning or "") for c in reply.choices[: len(served)]])
        for req, choice, tokens in zip(served, reply.choices, shares):
            results.put_nowait(self._completion(req, choice, reply, tokens, outcome))
        return batch[len(served):]

    async def _serve_single(self, stream: _Stream, req: GenerationRequest) -> None:
        results = stream.results
        outcome = await self._request(stream, req, n=1)
        if outcome.reply is None or not outcome.reply.choices:
            message = str(outcome.error) if outcome.error else "the server returned no choices"
            results.put_nowait(self._error_completion(req, message, outcome.attempts, outcome.latency_s))
            return
        reply = outcome.reply
        results.put_nowait(self._completion(req, reply.choices[0], reply, reply.completion_tokens, outcome))

    def _set_n_supported(self, supported: bool, why: str) -> None:
        if self.use_n != "auto" or self._n_supported is supported:
            return
        if self._n_supported is None or not supported:
            self._n_supported = supported
            self.stats.extra["n_supported"] = supported
            if not supported:
                log.info("openai teacher: %s; serving n>1 by separate requests from now on", why)

    # ------------------------------------------------------------ one request, with retries
    async def _request(self, stream: _Stream, req: GenerationRequest, *, n: int) -> _Outcome:
        body = self._body(req, n)
        started: float | None = None  # from the first send: waiting for a slot is not latency
        last_endpoint: _Endpoint | None = None
        attempt = 0
        while True:
            attempt += 1
            try:
                async with stream.limit:
                    started = started or time.monotonic()
                    endpoint = self._pick_endpoint(avoid=last_endpoint)  # with a slot: in-flight counts are current
                    reply = await self._call(stream.session, endpoint, body)
                return _Outcome(reply, None, attempt, time.monotonic() - started)
            except _AttemptFailed as failure:
                last_endpoint = endpoint
                if not failure.retryable or attempt > self.max_retries:
                    if failure.retryable:
                        failure = _AttemptFailed(f"{failure} (gave up after {attempt} attempts)", retryable=False, status=failure.status)
                    return _Outcome(None, failure, attempt, time.monotonic() - (started or time.monotonic()))
                self.stats.retries += 1
                await asyncio.sleep(self._backoff(attempt, failure.retry_after))

    def _body(self, req: GenerationRequest, n: int) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": req.messages,
            "temperature": req.temperature,
            "top_p": req.top_p,
            "max_tokens": req.max_new_tokens,
            "seed": req.seed,
        }
        if n > 1:
            body["n"] = n
        body.update(self.extra_body)
        return body

    async def _call(self, session: aiohttp.ClientSession, endpoint: _Endpoint, body: dict[str, Any]) -> _Reply:
        """One HTTP attempt against one endpoint."""
        endpoint.in_flight += 1
        endpoint.calls += 1
        self.stats.extra["http_calls"] += 1
        try:
            try:
                async with session.post(endpoint.chat_url, json=body) as response:
                    raw = await response.read()
                    status = response.status
                    retry_after = _parse_retry_after(response.headers.get("Retry-After"))
            except asyncio.TimeoutError:
                raise _AttemptFailed(f"timed out after {self.timeout_s:g}s at {endpoint.url}", retryable=True, endpoint_failure=True) from None
            except aiohttp.ClientError as exc:
                raise _AttemptFailed(
                    f"connection to {endpoint.url} failed: {self._redact(_describe(exc))}", retryable=True, endpoint_failure=True
                ) from None
            if status != 200:
                raise _AttemptFailed(
                    f"HTTP {status} from {endpoint.url}: {self._redact(_error_text(raw))}",
                    retryable=status in RETRYABLE_STATUS,
                    status=status,
                    retry_after=retry_after,
                    endpoint_failure=status in ENDPOINT_FAILURE_STATUS,
                )
            reply = _parse_reply(raw, endpoint.url)
        except _AttemptFailed as failure:
            self._record_failure(endpoint, failure)
            raise
        finally:
            endpoint.in_flight -= 1
        endpoint.consecutive_failures = 0
        endpoint.cooldown_until = 0.0
        self.stats.prompt_tokens += reply.prompt_tokens
        self.stats.completion_tokens += reply.completion_tokens
        if self.prices is not None:
            self.stats.cost_usd += (
                reply.prompt_tokens * self.prices.prompt_per_1m + reply.completion_tokens * self.prices.completion_per_1m
            ) / 1e6
        return reply

    # ------------------------------------------------------------ balancing and failover
    def _pick_endpoint(self, avoid: _Endpoint | None = None) -> _Endpoint:
        """Least in flight (ties rotate) among endpoints not on cooldown, preferring not to reuse `avoid`."""
        endpoints = self.endpoints
        if len(endpoints) == 1:
            return endpoints[0]
        now = time.monotonic()
        healthy = [e for e in endpoints if e.cooldown_until <= now]
        candidates = [e for e in healthy if e is not avoid] or healthy
        if not candidates:  # everything on cooldown: probe the one that comes back first
            return min(endpoints, key=lambda e: e.cooldown_until)
        self._rr += 1
        start = self._rr % len(candidates)
        rotated = candidates[start:] + candidates[:start]
        if self.balance == "round_robin":
            return rotated[0]
        return min(rotated, key=lambda e: e.in_flight)

    def _record_failure(self, endpoint: _Endpoint, failure: _AttemptFailed) -> None:
        endpoint.failures += 1
        if not failure.endpoint_failure:
            return
        endpoint.consecutive_failures += 1
        if endpoint.consecutive_failures >= self.failover_after and endpoint.cooldown_until <= time.monotonic():
            endpoint.cooldown_until = time.monotonic() + self.cooldown_s
            endpoint.cooldowns += 1
            endpoint.consecutive_failures = 0
            if len(self.endpoints) > 1:
                log.warning("openai teacher: %s failed %d times in a row; cooling down for %.0fs", endpoint.url, self.failover_after, self.cooldown_s)

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        """Exponential backoff with equal jitter, never shorter than the server's Retry-After."""
        ceiling = min(self.backoff_max_s, self.backoff_base_s * (2 ** (attempt - 1)))
        delay = ceiling * (0.5 + 0.5 * self._rng.random())
        return max(delay, retry_after) if retry_after is not None else delay

    def _publish_endpoint_stats(self) -> None:
        self.stats.extra["endpoints"] = {e.url: e.summary() for e in self.endpoints}

    # ------------------------------------------------------------ completions
    def _completion(self, req: GenerationRequest, choice: _Choice, reply: _Reply, completion_tokens: int, outcome: _Outcome) -> Completion:
        text, reasoning, answer = split_think(_close_think(choice.text), choice.reasoning)
        self.stats.completed += 1
        return Completion(
            key=req.key,
            text=text,
            reasoning=reasoning,
            answer=answer,
            finish_reason=choice.finish_reason,
            prompt_tokens=reply.prompt_tokens,
            completion_tokens=completion_tokens,
            latency_s=outcome.latency_s,
            attempts=outcome.attempts,
            endpoint=reply.endpoint,
        )

    def _error_completion(self, req: GenerationRequest, message: str, attempts: int, latency_s: float) -> Completion:
        self.stats.errors += 1
        return Completion(
            key=req.key, text="", reasoning=None, answer="", finish_reason="error",
            latency_s=latency_s, attempts=attempts, error=message,
        )

    # ------------------------------------------------------------ sessions, keys, checks
    def _session(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=self.concurrency, limit_per_host=0, ttl_dns_cache=300)
        timeout = aiohttp.ClientTimeout(total=self.timeout_s, sock_connect=min(self.timeout_s, self.connect_timeout_s))
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        # trust_env stays off (aiohttp's default): a stray HTTP_PROXY must not reroute loopback servers
        return aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers, raise_for_status=False)

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text

    async def _check_all(self) -> None:
        timeout_s = min(self.timeout_s, DEFAULT_CHECK_TIMEOUT_S)
        async with self._session() as session:
            for endpoint in self.endpoints:
                await self._check_endpoint(session, endpoint, timeout_s)

    async def _check_endpoint(self, session: aiohttp.ClientSession, endpoint: _Endpoint, timeout_s: float) -> None:
        where = f"teacher.openai.endpoints: {endpoint.url}"
        try:
            async with session.get(f"{endpoint.url}/models", timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
                raw = await response.read()
                status = response.status
        except asyncio.TimeoutError:
            raise TeacherError(f"{where} did not answer GET /models within {timeout_s:g}s") from None
        except aiohttp.ClientError as exc:
            raise TeacherError(f"{where} is unreachable ({self._redact(_describe(exc))})") from None
        if status in (401, 403):
            key = f"the key in ${self._api_key_env}" if self._api_key_env else "no API key (set teacher.openai.api_key_env)"
            raise TeacherError(f"{where} refused {key}: HTTP {status}")
        if status == 404:  # servers without a model list: prove the model with a one-token call
            await self._check_model_by_call(session, endpoint, timeout_s)
            return
        if status != 200:
            raise TeacherError(f"{where} answered GET /models with HTTP {status}: {self._redact(_error_text(raw))}")
        served = _served_models(raw)
        if served is not None and self.model not in served:
            listed = ", ".join(served[:10]) + (" …" if len(served) > 10 else "")
            raise TeacherError(f"teacher.model: {self.model!r} is not served by {endpoint.url} (it serves: {listed or 'nothing'})")

    async def _check_model_by_call(self, session: aiohttp.ClientSession, endpoint: _Endpoint, timeout_s: float) -> None:
        body = {"model": self.model, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}
        try:
            async with session.post(endpoint.chat_url, json=body, timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
                raw = await response.read()
                status = response.status
        except (asyncio.TimeoutError, aiohttp.ClientError) as exc:
            raise TeacherError(f"teacher.openai.endpoints: {endpoint.url} failed a test call ({self._redact(_describe(exc))})") from None
        if status != 200:
            raise TeacherError(f"teacher.model: {self.model!r} failed a test call at {endpoint.url}: HTTP {status} {self._redact(_error_text(raw))}")


# ---------------------------------------------------------------- helpers
def _option(opts: Any, name: str, default: str, allowed: tuple[str, ...]) -> str:
    value = getattr(opts, name, default)
    if value not in allowed:
        raise ValueError(f"teacher.openai.{name}: expected one of {', '.join(allowed)}, got {value!r}")
    return value


def _normalize_url(url: str) -> str:
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"teacher.openai.endpoints: expected an http(s) base URL such as http://host:8000/v1, got {url!r}")
    return url.rstrip("/")


def _read_api_key(env_name: str | None) -> str | None:
    if not env_name:
        return None
    key = os.environ.get(env_name)
    if not key:
        raise TeacherError(f"teacher.openai.api_key_env: environment variable {env_name} is not set (it should hold the API key)")
    return key


def _batches(requests: Iterable[GenerationRequest], batchable: bool, max_n: int) -> Iterator[list[GenerationRequest]]:
    """Consecutive requests of one group with identical prompt and sampling, up to `max_n` at a time.

    Lazy, so an 800K-request iterable is never held in memory.
    """
    batch: list[GenerationRequest] = []
    for req in requests:
        if batch and (not batchable or len(batch) >= max_n or not _same_call(batch[0], req)):
            yield batch
            batch = []
        batch.append(req)
    if batch:
        yield batch


def _same_call(a: GenerationRequest, b: GenerationRequest) -> bool:
    return (
        a.group == b.group
        and a.temperature == b.temperature
        and a.top_p == b.top_p
        and a.max_new_tokens == b.max_new_tokens
        and a.messages == b.messages
    )


def _parse_reply(raw: bytes, endpoint: str) -> _Reply:
    try:
        data = json.loads(raw)
        choices_raw = data["choices"]
        if len(choices_raw) > 1:
            choices_raw = sorted(choices_raw, key=lambda c: c.get("index", 0))
    except (ValueError, KeyError, TypeError, AttributeError):
        # A 200 with a broken body is a server glitch (or a proxy cutting it short): retry it.
        raise _AttemptFailed(f"unparseable response from {endpoint}: {_snippet(raw)}", retryable=True, endpoint_failure=True) from None
    choices = []
    for choice in choices_raw:
        message = choice.get("message") or {}
        reasoning = message.get("reasoning_content")
        if reasoning is None:
            reasoning = message.get("reasoning")
        finish = "length" if choice.get("finish_reason") == "length" else "stop"
        choices.append(_Choice(text=message.get("content") or "", reasoning=reasoning or None, finish_reason=finish))
    usage = data.get("usage") or {}
    return _Reply(
        choices=choices,
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
        endpoint=endpoint,
    )


def _split_tokens(total: int, texts: list[str]) -> list[int]:
    """Share one call's completion tokens among its choices by text length (sums to `total`)."""
    if not texts:
        return []
    weights = [max(len(t), 1) for t in texts]
    scale = total / sum(weights)
    shares = [int(w * scale) for w in weights]
    shares[-1] += total - sum(shares)
    return shares


def _close_think(text: str) -> str:
    """Servers whose chat template opens `<think>` in the prompt return only `…</think>answer`."""
    if "</think>" in text and "<think>" not in text:
        return "<think>\n" + text
    return text


def _parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _error_text(raw: bytes) -> str:
    """The server's error message, from OpenAI-style `{"error": {"message": …}}` or FastAPI's `detail`."""
    try:
        data = json.loads(raw)
    except ValueError:
        return _snippet(raw)
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and error.get("message"):
            return _snippet(str(error["message"]).encode())
        if isinstance(error, str):
            return _snippet(error.encode())
        if "detail" in data:
            return _snippet(str(data["detail"]).encode())
        if "message" in data:
            return _snippet(str(data["message"]).encode())
    return _snippet(raw)


def _snippet(raw: bytes) -> str:
    text = raw.decode("utf-8", "replace").replace("\n", " ").strip()
    return text if len(text) <= ERROR_SNIPPET_CHARS else text[:ERROR_SNIPPET_CHARS] + "…"


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())  # one line, whatever the library put in it
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _served_models(raw: bytes) -> list[str] | None:
    """Model ids from a /models answer, or None when the answer has no list to check against."""
    try:
        data = json.loads(raw)
        return [str(m["id"]) for m in data["data"]]
    except (ValueError, KeyError, TypeError):
        return None


def _run_sync(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion from sync code, even when called inside a running loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())  # type: ignore[arg-type]
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = asyncio.run(make())  # type: ignore[arg-type]
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["result"]
