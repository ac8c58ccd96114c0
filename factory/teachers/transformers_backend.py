"""The embedded default teacher: Hugging Face transformers, batched, left-padded, on CPU or GPU."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

from factory.errors import TeacherError
from factory.recipe import TeacherConfig
from factory.teachers.base import Completion, GenerationRequest, Teacher, batches_by_settings, split_think

log = logging.getLogger(__name__)


def resolve_device(requested: str) -> str:
    """The torch device for ``teacher.transformers.device`` (auto, cpu, cuda, cuda:N, mps),
    or a one-line TeacherError when this machine cannot provide it."""
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except (RuntimeError, ValueError):
        raise TeacherError(f"teacher.transformers.device: expected auto, cpu, cuda, cuda:N or mps, "
                           f"got {requested!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise TeacherError(f"teacher.transformers.device: {requested!r} asked for, but this torch "
                               f"({torch.__version__}) sees no CUDA GPU; use auto or cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise TeacherError(f"teacher.transformers.device: {requested!r} asked for, but only "
                               f"{torch.cuda.device_count()} CUDA device(s) are visible")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise TeacherError(f"teacher.transformers.device: {requested!r} asked for, but MPS is not available")
    return requested


class TransformersTeacher(Teacher):
    """Runs `model.generate` over batches of requests that share sampling settings.

    Generation runs in a worker thread so the engine's event loop keeps
    flushing shards and updating progress while the model computes.
    """

    backend = "transformers"

    def __init__(self, config: TeacherConfig) -> None:
        super().__init__(config.role, config.model)
        self.options = config.transformers
        self._model = None
        self._tokenizer = None
        self._warned_context = False
        self.model_path: str | None = None

    # ---------------------------------------------------------------- loading
    def check(self) -> None:
        self._load()

    def _load(self) -> None:
        if self._model is not None:
            return
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from factory.models import resolve_model

        device = resolve_device(self.options.device)
        self.model_path = resolve_model(self.model)
        dtype = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[self.options.dtype]
        try:
            tokenizer = AutoTokenizer.from_pretrained(self.model_path)
            model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=dtype)
        except (OSError, ValueError) as exc:
            raise TeacherError(f"teacher.model '{self.model}': cannot load ({str(exc).splitlines()[0]})") from None
        if tokenizer.chat_template is None:
            raise TeacherError(f"teacher.model '{self.model}': tokenizer has no chat template; expected a chat model")
        tokenizer.padding_side = "left"
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self._tokenizer = tokenizer
        # Characters one token can stand for, at most: bounds a prompt's tokens from below by its length.
        self._max_token_chars = max((len(token) for token in tokenizer.get_vocab()), default=1) or 1
        self._model = model.to(device).eval()
        self._device = device

    def close(self) -> None:
        self._model = None
        self._tokenizer = None

    # ---------------------------------------------------------------- generation
    async def astream(self, requests: Iterable[GenerationRequest]) -> AsyncIterator[Completion]:
        self._load()
        for batch in self._batches(requests):
            self.stats.requests += len(batch)
            completions = await asyncio.to_thread(self._generate_batch, batch)
            for completion in completions:
                self.stats.completed += 1
                self.stats.errors += completion.error is not None
                self.stats.prompt_tokens += completion.prompt_tokens
                self.stats.completion_tokens += completion.completion_tokens
                yield completion

    def _batches(self, requests: Iterable[GenerationRequest]) -> Iterable[list[GenerationRequest]]:
        return batches_by_settings(requests, self.options.batch_size)

    def _context_limit(self) -> int | None:
        """Positions the model was built for; generating past them only yields noise."""
        limit = getattr(self._model.config, "max_position_embeddings", None)
        return int(limit) if isinstance(limit, int) and limit > 0 else None

    def _generate_batch(self, batch: list[GenerationRequest]) -> list[Completion]:
        tokenizer = self._tokenizer
        started = time.perf_counter()
        limit = self._context_limit()
        if limit is not None:
            overlong = self._overlong_before_tokenizing(batch, limit)
            if overlong:
                return self._drop_overlong(batch, overlong)
        encoded = tokenizer.apply_chat_template(
            [r.messages for r in batch], add_generation_prompt=True, return_tensors="pt", padding=True, return_dict=True
        )
        lengths = [int(n) for n in encoded["attention_mask"].sum(dim=1).tolist()]
        if limit is not None and max(lengths) >= limit:
            return self._drop_overlong(batch, {r.key: (n, f"prompt has {n} tokens; the model's context is {limit}")
                                               for r, n in zip(batch, lengths) if n >= limit})
        return self._generate_encoded(batch, encoded.to(self._device), lengths, limit, started)

    def _overlong_before_tokenizing(self, batch: list[GenerationRequest], limit: int) -> dict[str, tuple[int, str]]:
        """key → (prompt tokens, error) for prompts that cannot fit, found without tokenizing them in a padded batch.

        No token is longer than the longest vocabulary entry, so a prompt of
        more than limit × that many characters cannot fit and is never
        tokenized (a 50 MB line would take gigabytes). A prompt long enough
        that it might not fit (a token can also be a single byte) is
        tokenized alone, unpadded, so one such prompt never widens a batch.
        """
        overlong: dict[str, tuple[int, str]] = {}
        for request in batch:
            chars = sum(len(m.get("content") or "") for m in request.messages)
            if chars >= limit * self._max_token_chars:
                overlong[request.key] = (0, f"prompt has {chars} characters, more than the model's context of {limit} tokens "
                                            f"can hold (at most {self._max_token_chars} characters per token); not tokenized")
            elif 4 * chars >= limit // 2:  # UTF-8 takes up to 4 bytes a character, and a byte-level token may be one byte
                n = len(self._tokenizer.apply_chat_template(request.messages, add_generation_prompt=True, return_dict=True)["input_ids"])
                if n >= limit:
                    overlong[request.key] = (n, f"prompt has {n} tokens; the model's context is {limit}")
        return overlong

    def _drop_overlong(self, batch: list[GenerationRequest], overlong: dict[str, tuple[int, str]]) -> list[Completion]:
        """Error completions for prompts that fill the context; the others are generated as usual."""
        fits = [r for r in batch if r.key not in overlong]
        generated = iter(self._generate_batch(fits) if fits else [])
        return [
            next(generated) if r.key not in overlong else Completion(
                key=r.key, text="", reasoning=None, answer="", finish_reason="error", prompt_tokens=overlong[r.key][0],
                endpoint="local", error=overlong[r.key][1])
            for r in batch
        ]

    def _generate_encoded(self, batch: list[GenerationRequest], encoded: Any, lengths: list[int],
                          limit: int | None, started: float) -> list[Completion]:
        import torch

        tokenizer, model = self._tokenizer, self._model
        first = batch[0]
        prompt_width = encoded["input_ids"].shape[1]
        max_new_tokens = first.max_new_tokens
        if limit is not None and prompt_width + max_new_tokens > limit:
            max_new_tokens = limit - prompt_width
            if not self._warned_context:
                self._warned_context = True
                log.warning("max_new_tokens %d capped to %d: the model's context is %d positions and the prompts "
                            "take %d; those samples end with finish_reason=length",
                            first.max_new_tokens, max_new_tokens, limit, prompt_width)
        torch.manual_seed(first.seed)  # the batch's first request seeds it: same batches, same samples
        sampling = first.temperature > 0
        with torch.inference_mode():
            output = model.generate(
                **encoded,
                max_new_tokens=max_new_tokens,
                do_sample=sampling,
                temperature=first.temperature if sampling else None,
                top_p=first.top_p if sampling else None,
                top_k=0 if sampling else None,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        latency = (time.perf_counter() - started) / len(batch)
        return [
            self._completion(request, output[row, prompt_width:].tolist(), lengths[row], latency)
            for row, request in enumerate(batch)
        ]

    def _completion(self, request: GenerationRequest, new_ids: list[int], prompt_tokens: int, latency: float) -> Completion:
        tokenizer = self._tokenizer
        eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
        finish = "length"
        if eos in new_ids:
            new_ids = new_ids[: new_ids.index(eos)]
            finish = "stop"
        while new_ids and new_ids[-1] == pad:
            new_ids.pop()
        raw = tokenizer.decode(new_ids, skip_special_tokens=True)
        text, reasoning, answer = split_think(raw)
        return Completion(
            key=request.key,
            text=text,
            reasoning=reasoning,
            answer=answer,
            finish_reason=finish,
            prompt_tokens=prompt_tokens,
            completion_tokens=len(new_ids) + (1 if finish == "stop" else 0),
            latency_s=latency,
            endpoint="local",
        )
