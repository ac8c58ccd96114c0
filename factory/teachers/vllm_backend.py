"""A teacher run in-process by vLLM's offline engine, for a GPU box.

vllm is imported only when this backend is used, so the factory installs and
runs everywhere else without it; when it is missing, the error says how to get it.

Every sample is its own vLLM request with its own seed (``n=1``). vLLM's V1
engine fans ``n>1`` out into child requests internally anyway, so grouping
buys no compute; per-sample seeds keep each ``sample_id`` reproducible when a
run resumes with only some of a prompt's samples missing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from itertools import islice
from typing import Any

from factory.errors import TeacherError
from factory.recipe import TeacherConfig
from factory.teachers.base import Completion, GenerationRequest, Teacher, split_think
from factory.teachers.openai_backend import _close_think
from factory.teachers.reaper import start_reaper

log = logging.getLogger(__name__)

INSTALL_HINT = "vllm is not installed: pip install -e .[gpu]"
DEFAULT_BATCH_SIZE = 512  # requests handed to vLLM per call; vLLM schedules within it, we yield between them


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError as exc:
        raise TeacherError(INSTALL_HINT) from exc
    return vllm


class VLLMTeacher(Teacher):
    """Batched offline generation with `vllm.LLM.chat`."""

    backend = "vllm"

    def __init__(self, config: TeacherConfig) -> None:
        super().__init__(config.role, config.model)
        self.options = config.vllm
        self.batch_size = int(getattr(self.options, "batch_size", DEFAULT_BATCH_SIZE))
        self.seed = int(getattr(self.options, "seed", 0))
        self._llm: Any = None
        self._reaper: Any = None  # ends vLLM's engine processes if this process is killed (see reaper.py)

    def check(self) -> None:
        """vllm importable and the model loadable (loading is most of the check)."""
        self._load()

    def close(self) -> None:
        self._llm = None  # vLLM frees the GPU when the engine is garbage collected

    async def astream(self, requests: Iterable[GenerationRequest]) -> AsyncIterator[Completion]:
        self._load()  # in the caller's thread: vLLM installs signal handlers, which needs the main thread
        for chunk in _chunks(requests, self.batch_size):
            self.stats.requests += len(chunk)
            for completion in await asyncio.to_thread(self._generate_chunk, chunk):
                yield completion

    # ------------------------------------------------------------ internals
    def _load(self) -> Any:
        if self._llm is not None:
            return self._llm
        vllm = _import_vllm()
        from factory.models import resolve_model

        model = resolve_model(self.model)
        kwargs: dict[str, Any] = {
            "model": model,
            "tensor_parallel_size": self.options.tensor_parallel_size,
            "gpu_memory_utilization": self.options.gpu_memory_utilization,
            "dtype": self.options.dtype,
            "seed": self.seed,
        }
        if self.options.max_model_len is not None:
            kwargs["max_model_len"] = self.options.max_model_len
        kwargs.update(getattr(self.options, "engine_args", None) or {})
        if self._reaper is None:
            self._reaper = start_reaper()
        started = time.monotonic()
        try:
            self._llm = vllm.LLM(**kwargs)
        except Exception as exc:  # CUDA missing, model too big, bad path: one line for the CLI
            raise TeacherError(f"teacher.vllm: cannot load {model!r}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
        log.info("vllm: loaded %s in %.1fs", model, time.monotonic() - started)
        return self._llm

    def _generate_chunk(self, chunk: list[GenerationRequest]) -> list[Completion]:
        started = time.monotonic()
        try:
            outputs = self._chat(chunk)
        except Exception as exc:
            # One bad request (e.g. a prompt longer than max_model_len) fails vLLM's whole call:
            # isolate it so the others still come back.
            log.warning("vllm: a batch of %d failed (%s); retrying its requests one by one", len(chunk), exc)
            return self._generate_one_by_one(chunk)
        latency = (time.monotonic() - started) / max(len(chunk), 1)
        return [self._completion(req, out, latency) for req, out in zip(chunk, outputs)]

    def _generate_one_by_one(self, chunk: list[GenerationRequest]) -> list[Completion]:
        completions: list[Completion] = []
        failures: list[Exception] = []
        for req in chunk:
            started = time.monotonic()
            try:
                [output] = self._chat([req])
            except Exception as exc:
                if not _request_error(exc):
                    failures.append(exc)
                self.stats.errors += 1
                completions.append(
                    Completion(key=req.key, text="", reasoning=None, answer="", finish_reason="error", error=f"vllm: {type(exc).__name__}: {exc}")
                )
                continue
            completions.append(self._completion(req, output, time.monotonic() - started))
        if failures and len(failures) == len(chunk):  # nothing works and no request is to blame: the engine is broken
            raise TeacherError(f"teacher.vllm: generation failed for every request: {type(failures[0]).__name__}: {failures[0]}")
        return completions

    def _chat(self, chunk: list[GenerationRequest]) -> list[Any]:
        vllm = _import_vllm()
        params = [
            vllm.SamplingParams(n=1, temperature=r.temperature, top_p=r.top_p, max_tokens=r.max_new_tokens, seed=r.seed)
            for r in chunk
        ]
        return self._llm.chat([r.messages for r in chunk], sampling_params=params, use_tqdm=False)

    def _completion(self, req: GenerationRequest, output: Any, latency_s: float) -> Completion:
        sample = output.outputs[0]
        text, reasoning, answer = split_think(_close_think(sample.text))
        prompt_tokens = len(output.prompt_token_ids or [])
        completion_tokens = len(sample.token_ids or [])
        self.stats.completed += 1
        self.stats.prompt_tokens += prompt_tokens
        self.stats.completion_tokens += completion_tokens
        return Completion(
            key=req.key,
            text=text,
            reasoning=reasoning,
            answer=answer,
            finish_reason="length" if sample.finish_reason == "length" else "stop",
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            latency_s=latency_s,
        )


def _request_error(exc: Exception) -> bool:
    """Caused by the request (e.g. a prompt over max_model_len), not by the engine."""
    try:
        from vllm.exceptions import VLLMClientError
    except ImportError:  # older vLLM raises ValueError for invalid requests
        return isinstance(exc, ValueError)
    return isinstance(exc, (VLLMClientError, ValueError))


def _chunks(requests: Iterable[GenerationRequest], size: int) -> Iterator[list[GenerationRequest]]:
    iterator = iter(requests)
    while chunk := list(islice(iterator, size)):
        yield chunk
