"""`executor: ray` for generate: the recipe's transformers/vLLM teacher as Ray actors, one per GPU.

Each actor builds the same teacher the local executor would (``build_teacher``) and keeps it
loaded; the driver splits the planned requests into the batches the local teacher forms
(transformers: consecutive requests with equal sampling settings, ``batch_size`` at a time,
each batch seeded by its first request; vLLM: chunks, each request with its own seed), hands a
batch to whichever actor is free and yields the completions as batches finish. So a sample is
the same whichever executor made it, and everything after the teacher (the append-only
shards, flushing, resume by sample_id) is the local generate's own code, unchanged.

Actors: one per GPU the cluster has (``num_gpus=1`` each, so Ray pins each to its GPU), else
``workers:`` CPU actors (default: the cluster's CPUs). ``RAY_ADDRESS`` joins a running cluster;
otherwise a local one is started for the run. Needs ``pip install -e ".[ray]"``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path
from typing import Any

from factory.errors import FactoryError, TeacherError
from factory.recipe import TeacherConfig
from factory.teachers.base import Completion, GenerationRequest, Teacher, batches_by_settings

log = logging.getLogger(__name__)

VLLM_CHUNK = 256  # requests per actor call for vLLM, which batches continuously inside the actor


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise FactoryError('--executor ray: Ray is not installed; pip install -e ".[ray]" (or executor: local)') from None
    return ray


class _TeacherActor:
    """Holds one teacher (on the GPU Ray gave this actor, or on CPU) and generates batches with it."""

    def __init__(self, config_json: str, recipe_file: str | None) -> None:
        from factory.output import quiet_dependencies
        from factory.teachers import build_teacher

        quiet_dependencies()
        config = TeacherConfig.model_validate_json(config_json)
        self.teacher = build_teacher(config, recipe_file=Path(recipe_file) if recipe_file else None)

    def check(self) -> str | None:
        """None when the teacher loaded, else its one-line error (a TeacherError crossing Ray loses its type)."""
        try:
            self.teacher.check()
        except FactoryError as exc:
            return str(exc)
        return None

    def generate(self, batch: list[GenerationRequest]) -> list[Completion]:
        return self.teacher.generate(batch)

    def gpu_ids(self) -> list[Any]:
        """The GPUs Ray gave this actor (it sets CUDA_VISIBLE_DEVICES to them, so the teacher's cuda is this one)."""
        import ray

        return list(ray.get_gpu_ids())

    def close(self) -> None:
        self.teacher.close()


class RayTeacher(Teacher):
    """A teacher whose work runs on Ray actors; to the generate engine it is any other teacher."""

    def __init__(self, config: TeacherConfig, *, workers: int | None = None, recipe_file: Path | None = None) -> None:
        if config.backend not in ("transformers", "vllm"):
            raise FactoryError(f"--executor ray: runs transformers or vllm teachers, not {config.backend!r} "
                               "(an openai teacher scales by its endpoints: list them in teacher.openai.endpoints)")
        super().__init__(config.role, config.model)
        self.backend = config.backend
        self.config = config
        self.workers = workers
        self.recipe_file = recipe_file
        self.actors: list[Any] = []
        self.gpus = 0
        self._started = False

    # ------------------------------------------------------------ actors
    def check(self) -> None:
        if self.actors:
            return
        ray = _ray()
        if not ray.is_initialized():
            address = os.environ.get("RAY_ADDRESS")
            ray.init(address=address, num_cpus=None if address else self.workers, include_dashboard=False,
                     log_to_driver=False, logging_level=logging.WARNING)
            self._started = True
        resources = ray.cluster_resources()
        self.gpus = int(resources.get("GPU", 0))
        count = self.gpus or self.workers or max(1, int(resources.get("CPU", 1)))
        actor = ray.remote(num_gpus=1, num_cpus=0)(_TeacherActor) if self.gpus else ray.remote(num_cpus=1)(_TeacherActor)
        config_json = self.config.model_dump_json()
        recipe_file = str(self.recipe_file) if self.recipe_file else None
        self.actors = [actor.remote(config_json, recipe_file) for _ in range(count)]
        log.info("teacher %s on ray: %d actor(s), %s", self.model, count, "one per GPU" if self.gpus else "on CPU")
        errors = [e for e in ray.get([a.check.remote() for a in self.actors]) if e]
        if errors:
            self.close()
            raise TeacherError(errors[0])
        self.stats.extra["ray_actors"] = count
        self.stats.extra["ray_gpus"] = self.gpus

    def close(self) -> None:
        ray = _ray()
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
        if self._started:
            ray.shutdown()
            self._started = False

    # ------------------------------------------------------------ generation
    def batches(self, requests: Iterable[GenerationRequest]) -> Iterator[list[GenerationRequest]]:
        """The batches the local teacher would form, so that each sample comes out the same."""
        size = self.config.transformers.batch_size if self.backend == "transformers" else VLLM_CHUNK
        return batches_by_settings(requests, size)

    async def astream(self, requests: Iterable[GenerationRequest]) -> AsyncIterator[Completion]:
        self.check()
        pending = self.batches(requests)
        idle = list(self.actors)
        running: dict[asyncio.Future, Any] = {}
        try:
            while True:
                while idle:
                    batch = next(pending, None)
                    if batch is None:
                        break
                    actor = idle.pop()
                    self.stats.requests += len(batch)
                    running[asyncio.ensure_future(_awaitable(actor.generate.remote(batch)))] = actor
                if not running:
                    return
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for future in done:
                    idle.append(running.pop(future))
                    for completion in future.result():
                        self.stats.completed += 1
                        self.stats.errors += completion.error is not None
                        self.stats.prompt_tokens += completion.prompt_tokens
                        self.stats.completion_tokens += completion.completion_tokens
                        yield completion
        finally:
            for future in running:  # stopped early (Ctrl-C): what the actors still compute is dropped
                future.cancel()


async def _awaitable(ref: Any) -> Any:
    return await ref
