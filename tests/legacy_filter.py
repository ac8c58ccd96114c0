"""The in-memory filter engine as it was before the streaming one (main before the merge of i17), kept only as the
reference that tests/test_filter_engine.py compares the streaming engine against. Not used by the package."""
# ruff: noqa


from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from factory.errors import FactoryError, RecipeError
from factory.progress import RateProgress
from factory.recipe import GenerateRecipe, SelectionConfig, TeacherConfig, load_recipe
from factory.store import RunStore, open_run, utc_now, write_json_atomically

log = logging.getLogger(__name__)

SAMPLE_COLUMNS = [
    "sample_id", "prompt_id", "source", "task_type", "language", "prompt", "reference", "tests",
    "text", "reasoning", "answer", "finish_reason", "completion_tokens",
]
CHUNK = 2048  # samples per verdict shard: a killed filter redoes at most one chunk per step

Row = dict[str, Any]


@dataclass(frozen=True)
class StepVerdict:
    passed: bool | None
    code: str | None = None
    reason: str | None = None
    score: float | None = None
    detail: dict[str, Any] | None = None


# ---------------------------------------------------------------- steps
class FilterStep:
    """One filter. Sample steps judge rows independently; run steps see every candidate at once."""

    name: ClassVar[str]
    whole_run: ClassVar[bool] = False
    params: dict[str, Any]

    def __init__(self, params: dict[str, Any]) -> None:
        self.params = dict(params)
        self.validate(self.params)

    @classmethod
    def validate(cls, params: dict[str, Any]) -> None:
        """Raise ValueError('<param>: expected …, got …') for bad settings."""

    def config_hash(self) -> str:
        canonical = json.dumps({"step": self.name, **self.params}, sort_keys=True, default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    def evaluate(self, rows: list[Row]) -> list[StepVerdict]:
        raise NotImplementedError


def _from_verdict(verdict: Any) -> StepVerdict:
    """verifiers.verdict.Verdict → StepVerdict."""
    return StepVerdict(verdict.passed, verdict.code, verdict.reason, verdict.score, verdict.details)


def _checked(fn: Callable[..., Any], params: dict[str, Any]) -> None:
    try:
        fn(**params)
    except TypeError as exc:
        # An unexpected keyword: name it the way the recipe spells it.
        message = str(exc)
        key = message.split("'")[1] if "'" in message else message
        raise ValueError(f"{key}: unknown setting for this step") from None


class FormatStep(FilterStep):
    """`<think>` format. style: think | readable (R1 cold start) | optional (non-reasoning: CoT allowed, not required)."""

    name = "format"

    @classmethod
    def validate(cls, params: dict[str, Any]) -> None:
        from verifiers.format import validate_format_params

        if params.get("style") == "optional":
            params = {**params, "style": "think"}
        _checked(validate_format_params, params)

    def evaluate(self, rows: list[Row]) -> list[StepVerdict]:
        from verifiers.format import check_think_format

        params = dict(self.params)
        optional = params.get("style") == "optional"
        if optional:
            params["style"] = "think"
        out = []
        for r in rows:
            text = r["text"] or ""
            if optional and "<think>" not in text and "</think>" not in text:
                if r["finish_reason"] == "length":
                    out.append(StepVerdict(False, "truncated", "truncated: hit max_new_tokens"))
                elif not text.strip():
                    out.append(StepVerdict(False, "empty_answer", "empty_answer"))
                else:
                    out.append(StepVerdict(True))
                continue
            out.append(_from_verdict(check_think_format(text, finish_reason=r["finish_reason"], **params)))
        return out


class LanguageStep(FilterStep):
    name = "language"

    @classmethod
    def validate(cls, params: dict[str, Any]) -> None:
        from verifiers.language import validate_language_params

        _checked(validate_language_params, params)

    def evaluate(self, rows: list[Row]) -> list[StepVerdict]:
        from verifiers.language import check_language_consistency

        params = dict(self.params)
        target = params.pop("target", None)
        return [
            _from_verdict(check_language_consistency(r["reasoning"] or "", r["answer"] or "", target=target or r["language"] or "en", **params))
            for r in rows
        ]


class ReadabilityStep(FilterStep):
    name = "readability"

    @classmethod
    def validate(cls, params: dict[str, Any]) -> None:
        from verifiers.readability import validate_readability_params

        if "task_type" in params:
            raise ValueError("task_type: not a setting; each sample's own task type is used")
        _checked(validate_readability_params, params)

    def evaluate(self, rows: list[Row]) -> list[StepVerdict]:
        from verifiers.readability import check_readability

        return [
            _from_verdict(check_readability(r["reasoning"] or "", r["answer"] or "", task_type=r["task_type"],
                                            num_tokens=r["completion_tokens"], **self.params))
            for r in rows
        ]


class CorrectnessStep(FilterStep):
    """Rule rewards: math answers by equivalence, code by running its tests in the sandbox."""

    name = "correctness"
    MATH_TYPES = ("math", "logic")

    @classmethod
    def validate(cls, params: dict[str, Any]) -> None:
        known = ("timeout_s", "code_timeout_s", "memory_mb", "workers", "unsafe_no_sandbox", "policy")
        unknown = set(params) - set(known)
        if unknown:
            raise ValueError(f"{sorted(unknown)[0]}: unknown setting for step 'correctness' (have {', '.join(known)})")
        for key in ("timeout_s", "code_timeout_s"):
            value = params.get(key, 1)
            if isinstance(value, bool) or not (isinstance(value, (int, float)) and 0 < value <= 600):
                raise ValueError(f"{key}: expected seconds in (0, 600], got {value!r}")
        memory_mb = params.get("memory_mb", 512)
        if isinstance(memory_mb, bool) or not isinstance(memory_mb, int) or memory_mb < 64:
            raise ValueError(f"memory_mb: expected an integer >= 64, got {memory_mb!r}")
        workers = params.get("workers")
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
            raise ValueError(f"workers: expected an integer >= 1, got {workers!r}")
        if not isinstance(params.get("unsafe_no_sandbox", False), bool):
            raise ValueError(f"unsafe_no_sandbox: expected true or false, got {params['unsafe_no_sandbox']!r}")
        if params.get("policy", "strict") not in ("strict", "lenient"):
            raise ValueError(f"policy: expected 'strict' or 'lenient', got {params['policy']!r}")

    def evaluate(self, rows: list[Row]) -> list[StepVerdict]:
        verdicts: list[StepVerdict | None] = [None] * len(rows)
        math_rows = [i for i, r in enumerate(rows) if r["task_type"] in self.MATH_TYPES and r["reference"]]
        code_rows = [i for i, r in enumerate(rows) if r["task_type"] == "code" and r["tests"]]
        if math_rows:
            for i, verdict in zip(math_rows, self._verify_math([rows[i] for i in math_rows])):
                verdicts[i] = verdict
        if code_rows:
            for i, verdict in zip(code_rows, self._verify_code([rows[i] for i in code_rows])):
                verdicts[i] = verdict
        return [v or StepVerdict(None, "unverifiable", f"unverifiable: no rule verifier for task type '{rows[i]['task_type']}' "
                                 "or no reference") for i, v in enumerate(verdicts)]

    # Scoring is verifiers.scoring's, shared with `factory eval` and `factory verify`:
    # the full assistant turn goes in, the same verdict comes out everywhere.
    def _verify_math(self, rows: list[Row]) -> list[StepVerdict]:
        from verifiers.scoring import DEFAULT_MATH_TIMEOUT_S, score_math_batch

        scores = score_math_batch([r["text"] or r["answer"] or "" for r in rows], [r["reference"] for r in rows],
                                  policy=self.params.get("policy", "strict"), workers=self.params.get("workers"),
                                  timeout_s=self.params.get("timeout_s", DEFAULT_MATH_TIMEOUT_S))
        out = []
        for score in scores:
            detail = {"extracted": score.extracted, "rule": score.rule}
            if score.correct is None:
                out.append(StepVerdict(None, "unverifiable", f"unverifiable: {score.reason}", detail=detail))
            elif score.correct:
                out.append(StepVerdict(True, None, None, 1.0, detail))
            else:
                out.append(StepVerdict(False, "wrong_answer", f"wrong_answer: got {score.extracted!r}", 0.0, detail))
        return out

    def _verify_code(self, rows: list[Row]) -> list[StepVerdict]:
        from verifiers.code import SandboxUnavailable
        from verifiers.scoring import DEFAULT_CODE_MEMORY_MB, DEFAULT_CODE_TIMEOUT_S, score_code_batch

        try:
            scores = score_code_batch([r["text"] or r["answer"] or "" for r in rows], [r["tests"] for r in rows],
                                      workers=self.params.get("workers"),
                                      timeout_s=self.params.get("code_timeout_s", DEFAULT_CODE_TIMEOUT_S),
                                      memory_mb=self.params.get("memory_mb", DEFAULT_CODE_MEMORY_MB),
                                      unsafe_no_sandbox=self.params.get("unsafe_no_sandbox", False))
        except SandboxUnavailable as exc:
            raise FactoryError(f"filter correctness: {str(exc).splitlines()[0]} (recipe: "
                               f"`unsafe_no_sandbox: true` on the correctness step)") from None
        return [StepVerdict(True, None, None, 1.0, {"rule": s.rule}) if s.correct
                else StepVerdict(False, _code_failure(s.status),
                                 f"{_code_failure(s.status)}: {s.reason.split(': ', 1)[-1]}"[:300], s.score, {"rule": s.rule})
                for s in scores]


def _code_failure(status: str) -> str:
    return status if status == "no_code" else f"code_{status}"


class JudgeStep(FilterStep):
    """The V3 role as LLM-as-judge, for samples no rule verifier can decide."""

    name = "judge"

    @classmethod
    def validate(cls, params: dict[str, Any]) -> None:
        unknown = set(params) - {"teacher", "applies_to", "min_score", "max_new_tokens"}
        if unknown:
            raise ValueError(f"{sorted(unknown)[0]}: unknown setting for step 'judge' (have teacher, applies_to, min_score, max_new_tokens)")
        if params.get("applies_to", "unverified") not in ("unverified", "all"):
            raise ValueError(f"applies_to: expected 'unverified' or 'all', got {params['applies_to']!r}")
        score = params.get("min_score", 6)
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not 0 <= score <= 10:
            raise ValueError(f"min_score: expected a number in [0, 10], got {score!r}")
        tokens = params.get("max_new_tokens", 128)
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
            raise ValueError(f"max_new_tokens: expected an integer >= 1, got {tokens!r}")
        try:
            TeacherConfig.model_validate({"role": "v3", **params.get("teacher", {})})
        except Exception as exc:  # pydantic's message is multi-line; keep the first error
            first = str(exc).splitlines()[1:3]
            raise ValueError(f"teacher: {' '.join(s.strip() for s in first)}") from None

    def evaluate(self, rows: list[Row]) -> list[StepVerdict]:
        from factory.teachers import GenerationRequest, build_teacher
        from verifiers.judge import build_judge_messages, parse_judge_output

        config = TeacherConfig.model_validate({"role": "v3", **self.params.get("teacher", {})})
        teacher = build_teacher(config)
        try:
            teacher.check()
            requests = [
                GenerationRequest(
                    key=r["sample_id"], group=r["sample_id"],
                    messages=build_judge_messages(r["prompt"] or "", r["text"] or "", r["reference"]),
                    temperature=0.0, top_p=1.0, max_new_tokens=int(self.params.get("max_new_tokens", 128)), seed=0,
                )
                for r in rows
            ]
            completions = teacher.generate(requests)
        finally:
            teacher.close()
        min_score = float(self.params.get("min_score", 6))
        out = []
        for completion in completions:
            if completion.finish_reason == "error":
                out.append(StepVerdict(None, "judge_error", f"judge_error: {completion.error}"))
                continue
            verdict = parse_judge_output(completion.text)
            if verdict.correct is None and verdict.score is None:
                out.append(StepVerdict(None, "unparsable_judge_output", verdict.reason, detail={"judge": completion.text[:500]}))
                continue
            passed = bool(verdict.correct) if verdict.correct is not None else verdict.score >= min_score
            if verdict.score is not None and verdict.correct is not None:
                passed = verdict.correct and verdict.score >= min_score
            out.append(StepVerdict(passed, None if passed else "judge_rejected", None if passed else f"judge_rejected: {verdict.explanation or verdict.reason}",
                                   verdict.score, {"judge": completion.text[:500]}))
        return out


class DecontamStep(FilterStep):
    """Drop samples whose prompt or response overlaps a benchmark (GPT-3 style 13-gram by default)."""

    name = "decontam"

    @classmethod
    def validate(cls, params: dict[str, Any]) -> None:
        unknown = set(params) - {"n", "min_n", "per_field_n", "fields", "benchmarks"}
        if unknown:
            raise ValueError(f"{sorted(unknown)[0]}: unknown setting for step 'decontam' "
                             f"(have n, min_n, per_field_n, fields, benchmarks)")
        for key, default in (("n", 13), ("min_n", 8)):
            value = params.get(key, default)
            if isinstance(value, bool) or not isinstance(value, int) or not 4 <= value <= 64:
                raise ValueError(f"{key}: expected an integer n-gram size in [4, 64], got {value!r}")
        if not isinstance(params.get("per_field_n", True), bool):
            raise ValueError(f"per_field_n: expected true or false, got {params['per_field_n']!r}")
        fields = params.get("fields", ["prompt", "text"])
        if not isinstance(fields, list) or not set(fields) <= {"prompt", "text", "answer"}:
            raise ValueError(f"fields: expected a list from prompt, text, answer; got {fields!r}")
        for path in params.get("benchmarks", []):
            if not Path(path).exists():
                raise ValueError(f"benchmarks: file not found: {path}")

    def evaluate(self, rows: list[Row]) -> list[StepVerdict]:
        index = self._index()
        fields = self.params.get("fields", ["prompt", "text"])
        hits: list[tuple[str, Any] | None] = [None] * len(rows)
        for name in fields:
            todo = [i for i, h in enumerate(hits) if h is None]
            found = index.check_batch([rows[i][name] or "" for i in todo])
            for i, hit in zip(todo, found):
                if hit is not None:
                    hits[i] = (name, hit)
        out = []
        for found in hits:
            if found is None:
                out.append(StepVerdict(True))
                continue
            name, hit = found
            detail = {k: getattr(hit, k, None) for k in ("benchmark", "item_id", "ngram", "kind", "n")}
            out.append(StepVerdict(False, "contaminated", f"contaminated: {detail['benchmark']} {detail['kind']} "
                                   f"match in {name}: {str(detail['ngram'])[:80]!r}", detail=detail))
        return out

    def _index(self):
        if not hasattr(self, "_cached_index"):
            from factory.paths import BENCHMARKS_DIR
            from verifiers.decontam import BenchmarkIndex

            files = sorted(BENCHMARKS_DIR.glob("*.jsonl")) + [Path(p) for p in self.params.get("benchmarks", [])]
            self._cached_index = BenchmarkIndex.from_files(
                files, n=self.params.get("n", 13), min_n=self.params.get("min_n", 8),
                per_field_n=self.params.get("per_field_n", True))
        return self._cached_index


class DedupStep(FilterStep):
    """Exact + MinHash near-duplicates within the run and against other curated runs."""

    name = "dedup"
    whole_run = True

    @classmethod
    def validate(cls, params: dict[str, Any]) -> None:
        from verifiers.dedup import DedupParams

        rest = {k: v for k, v in params.items() if k not in ("field", "against_runs")}
        if params.get("field", "text") not in ("text", "prompt", "both", "answer"):
            raise ValueError(f"field: expected text, prompt, answer or both, got {params['field']!r}")
        if not isinstance(params.get("against_runs", []), list):
            raise ValueError("against_runs: expected a list of run names")
        _checked(lambda **kw: DedupParams(**kw).validate(), {k: v for k, v in rest.items() if k != "workers"})

    def evaluate(self, rows: list[Row]) -> list[StepVerdict]:
        from verifiers.dedup import DedupItem, deduplicate

        params = {k: v for k, v in self.params.items() if k not in ("field", "against_runs")}
        items = [DedupItem(r["sample_id"], self._text(r), (len(r["text"] or ""), r["sample_id"])) for r in rows]
        reference = [DedupItem(f"{run}:{sid}", text, (0, sid)) for run, sid, text in self._reference_texts()]
        results = {v.id: v for v in deduplicate(items, reference=reference, **params)}
        out = []
        for row in rows:
            v = results[row["sample_id"]]
            detail = {"cluster_id": v.cluster_id, "duplicate_of": v.duplicate_of, "kind": v.kind, "similarity": v.similarity}
            if v.kept:
                out.append(StepVerdict(True, score=v.similarity, detail=detail))
            else:
                out.append(StepVerdict(False, f"duplicate_{v.kind}", f"duplicate_{v.kind}: of {v.duplicate_of}", v.similarity, detail))
        return out

    def _text(self, row: Row) -> str:
        which = self.params.get("field", "text")
        if which == "both":
            return f"{row['prompt'] or ''}\n{row['text'] or ''}"
        return row[which] or ""

    def _reference_texts(self) -> Iterable[tuple[str, str, str]]:
        from factory.paths import runs_dir

        for run in self.params.get("against_runs", []):
            store = RunStore(runs_dir() / run)
            if not store.exists():
                raise FactoryError(f"filters.dedup.against_runs: no run named '{run}' in {runs_dir()}")
            accepted = set(read_accepted_ids(store))
            table = store.read_samples(["sample_id", "prompt", "text", "answer"])
            for row in table.to_pylist():
                if row["sample_id"] in accepted:
                    yield run, row["sample_id"], self._text(row)


STEPS: dict[str, type[FilterStep]] = {
    cls.name: cls for cls in (FormatStep, LanguageStep, ReadabilityStep, CorrectnessStep, JudgeStep, DecontamStep, DedupStep)
}


def validate_filter_configs(filters: Sequence[dict[str, Any]]) -> Iterable[tuple[int, str]]:
    """(index, 'key: message') for every bad filter entry; the recipe loader reports the first."""
    for index, entry in enumerate(filters):
        if not isinstance(entry, dict) or "step" not in entry:
            yield index, f"step: expected a mapping with 'step' (one of {', '.join(STEPS)})"
            continue
        name = entry["step"]
        if name not in STEPS:
            yield index, f"step: unknown filter {name!r}; expected one of {', '.join(STEPS)}"
            continue
        try:
            STEPS[name].validate({k: v for k, v in entry.items() if k != "step"})
        except ValueError as exc:
            yield index, str(exc)


def build_steps(filters: Sequence[dict[str, Any]]) -> list[FilterStep]:
    for index, message in validate_filter_configs(filters):
        raise RecipeError(f"filters[{index}].{message}")
    return [STEPS[f["step"]]({k: v for k, v in f.items() if k != "step"}) for f in filters]


# ---------------------------------------------------------------- the stage
@dataclass
class StepCount:
    step: str
    candidates: int = 0
    passed: int = 0
    rejected: int = 0
    unverifiable: int = 0
    computed: int = 0
    reused: int = 0


@dataclass
class FilterReport:
    run: str
    generated: int
    steps: list[StepCount]
    selected: int
    prompts: int
    prompts_with_selection: int
    top_reasons: list[tuple[str, str, int]]
    yield_by_task: dict[str, dict[str, float]] = field(default_factory=dict)
    accepted_per_million_tokens: float | None = None


def run_filter(
    run: str | None = None,
    *,
    recipe: str | None = None,
    only: Sequence[str] | None = None,
    recompute: bool = False,
    progress: bool = True,
) -> FilterReport:
    """Apply a run's filter steps (or those of `recipe`), then per-prompt selection. Resumable, idempotent."""
    store = open_run(run)
    with store.lock("filter"):
        return _filter_run(store, recipe=recipe, only=only, recompute=recompute, progress=progress)


def _filter_run(store: RunStore, *, recipe: str | None, only: Sequence[str] | None, recompute: bool, progress: bool) -> FilterReport:
    manifest = store.read_manifest()
    config = _filter_config(manifest, recipe)
    steps = build_steps(config.filters)
    if only:
        unknown = [name for name in only if name not in {s.name for s in steps} | {"selection"}]
        if unknown:
            raise FactoryError(f"--only {unknown[0]}: not a step of this run (steps: {', '.join(s.name for s in steps)}, selection)")
    rows = store.read_samples(SAMPLE_COLUMNS).to_pylist()
    if not rows:
        raise FactoryError(f"run '{store.name}': no samples yet; run `factory generate` first")
    counts: list[StepCount] = []
    state: dict[str, dict[str, StepVerdict]] = {}
    for index, step in enumerate(steps):
        candidates = _candidates(rows, steps[:index], state, step)
        run_it = not only or step.name in only
        counts.append(_apply_step(store, step, candidates, state, recompute=recompute and run_it, compute=run_it, progress=progress))
    accepted = [r for r in rows if _accepted(r["sample_id"], steps, state)]
    selection = _select(store, accepted, config.selection, recompute=recompute, compute=not only or "selection" in only)
    report = _report(store, rows, steps, state, counts, selection)
    write_json_atomically(_report_json(report), store.root / "filter_report.json")
    return report


@dataclass
class _FilterConfig:
    filters: list[dict[str, Any]]
    selection: SelectionConfig


def _filter_config(manifest: dict[str, Any], recipe_name: str | None) -> _FilterConfig:
    if recipe_name:
        recipe = load_recipe(recipe_name)
        if not isinstance(recipe, GenerateRecipe):
            raise RecipeError(f"--recipe {recipe_name}: expected a generate recipe with filters")
        return _FilterConfig(recipe.filters, recipe.selection)
    stored = manifest.get("recipe") or {}
    selection = SelectionConfig.model_validate(stored.get("selection") or {})
    return _FilterConfig(stored.get("filters") or [{"step": "format"}], selection)


def _candidates(rows: list[Row], before: list[FilterStep], state: dict[str, dict[str, StepVerdict]], step: FilterStep) -> list[Row]:
    """Rows that passed every earlier step; the judge also takes what correctness could not verify."""
    out = []
    for row in rows:
        sid = row["sample_id"]
        ok = True
        unverified = False
        for prev in before:
            verdict = state[prev.name].get(sid)
            if verdict is None and _judge_not_asked(prev, sid, state):
                continue  # a rule verified it: later steps take it as the judge would have
            if verdict is None or verdict.passed is False:
                ok = False
                break
            if verdict.passed is None:
                if prev.name == "correctness" and step.name == "judge":
                    unverified = True
                else:
                    ok = False
                    break
        if not ok:
            continue
        if step.name == "judge" and step.params.get("applies_to", "unverified") == "unverified" and any(
            p.name == "correctness" for p in before
        ) and not unverified:
            continue  # verified by a rule already: the judge is not asked
        out.append(row)
    return out


def _judge_not_asked(step: FilterStep, sample_id: str, state: dict[str, dict[str, StepVerdict]]) -> bool:
    """The judge (applies_to: unverified) is not asked about a sample the correctness step verified."""
    if step.name != "judge" or step.params.get("applies_to", "unverified") != "unverified":
        return False
    verified = state.get("correctness", {}).get(sample_id)
    return verified is not None and verified.passed is True


def _accepted(sample_id: str, steps: list[FilterStep], state: dict[str, dict[str, StepVerdict]]) -> bool:
    names = [s.name for s in steps]
    for step in steps:
        verdict = state[step.name].get(sample_id)
        if verdict is None and _judge_not_asked(step, sample_id, state):
            continue  # not asked: a rule verified it
        if verdict is None or verdict.passed is False:
            return False
        if verdict.passed is None:
            judged = state.get("judge", {}).get(sample_id) if "judge" in names else None
            if not (step.name == "correctness" and judged is not None and judged.passed):
                return False
    return True


def _apply_step(
    store: RunStore, step: FilterStep, candidates: list[Row], state: dict[str, dict[str, StepVerdict]], *,
    recompute: bool, compute: bool, progress: bool,
) -> StepCount:
    chash = step.config_hash()
    if step.whole_run:
        chash = _with_input_fingerprint(chash, candidates)
    latest = store.latest_verdicts(step.name)
    done = {sid: _stored(v) for sid, v in latest.items() if v["config_hash"] == chash and not recompute}
    todo = [r for r in candidates if r["sample_id"] not in done]
    count = StepCount(step.name, candidates=len(candidates), reused=len(candidates) - len(todo))
    if todo and compute:
        log.info("filter %s: %d to compute, %d already decided", step.name, len(todo), count.reused)
        chunks = [todo] if step.whole_run else [todo[i:i + CHUNK] for i in range(0, len(todo), CHUNK)]
        with RateProgress(step.name, total=len(candidates), done=count.reused, enabled=progress) as bar:
            for chunk in chunks:
                verdicts = step.evaluate(chunk)
                store.append_verdicts(step.name, [_verdict_row(r["sample_id"], step.name, v, chash) for r, v in zip(chunk, verdicts)])
                done.update({r["sample_id"]: v for r, v in zip(chunk, verdicts)})
                bar.update(len(chunk))
        count.computed = len(todo)
    elif todo:
        log.info("filter %s: skipped (--only); %d candidates undecided", step.name, len(todo))
    state[step.name] = done
    for row in candidates:
        verdict = done.get(row["sample_id"])
        if verdict is None:
            continue
        if verdict.passed is True:
            count.passed += 1
        elif verdict.passed is False:
            count.rejected += 1
        else:
            count.unverifiable += 1
    return count


def _with_input_fingerprint(chash: str, candidates: list[Row]) -> str:
    digest = hashlib.sha256(chash.encode())
    for sid in sorted(r["sample_id"] for r in candidates):
        digest.update(sid.encode())
    return digest.hexdigest()[:12]


def _stored(row: dict[str, Any]) -> StepVerdict:
    detail = json.loads(row["detail"]) if row["detail"] else None
    return StepVerdict(row["passed"], row["code"], row["reason"], row["score"], detail)


def _verdict_row(sample_id: str, step: str, verdict: StepVerdict, chash: str) -> dict[str, Any]:
    return {
        "sample_id": sample_id, "step": step, "passed": verdict.passed, "code": verdict.code, "reason": verdict.reason,
        "score": verdict.score, "detail": json.dumps(verdict.detail, default=str) if verdict.detail else None,
        "config_hash": chash, "created_at": utc_now(),
    }


# ---------------------------------------------------------------- selection
SELECTION_STEP = "selection"


def _select(store: RunStore, accepted: list[Row], selection: SelectionConfig, *, recompute: bool, compute: bool) -> dict[str, StepVerdict]:
    """Keep at most k accepted samples per prompt by the recipe's policy; stored as the `selection` step."""
    chash = _with_input_fingerprint(f"{selection.k}:{selection.policy}", accepted)
    latest = store.latest_verdicts(SELECTION_STEP)
    ids = {r["sample_id"] for r in accepted}
    if not recompute and ids and all(sid in latest and latest[sid]["config_hash"] == chash for sid in ids):
        return {sid: _stored(latest[sid]) for sid in ids}
    if not compute:
        return {sid: _stored(latest[sid]) for sid in ids if sid in latest}
    by_prompt: dict[str, list[Row]] = defaultdict(list)
    for row in accepted:
        by_prompt[row["prompt_id"]].append(row)
    decided: dict[str, StepVerdict] = {}
    for prompt_id, group in by_prompt.items():
        ranked = rank_for_selection(group, selection.policy, seed=prompt_id)
        for position, row in enumerate(ranked):
            keep = position < selection.k
            decided[row["sample_id"]] = StepVerdict(
                keep, None if keep else "over_k", None if keep else f"over_k: rank {position + 1} of {len(group)} by {selection.policy}",
                float(position),
            )
    store.append_verdicts(SELECTION_STEP, [_verdict_row(sid, SELECTION_STEP, v, chash) for sid, v in decided.items()])
    return decided


def rank_for_selection(group: list[Row], policy: str, *, seed: str) -> list[Row]:
    """Order a prompt's accepted samples, best first.

    shortest: fewest characters (the paper favours concise, readable chains);
    longest: most characters; random: a seeded shuffle; diverse: greedily the
    sample least similar (word-set Jaccard) to those already chosen.
    """
    import random

    by_length = sorted(group, key=lambda r: (len(r["text"] or ""), r["sample_id"]))
    if policy == "shortest":
        return by_length
    if policy == "longest":
        return sorted(group, key=lambda r: (-len(r["text"] or ""), r["sample_id"]))
    if policy == "random":
        ranked = sorted(group, key=lambda r: r["sample_id"])
        random.Random(seed).shuffle(ranked)
        return ranked
    words = {r["sample_id"]: set((r["text"] or "").lower().split()) for r in group}
    chosen = [by_length[0]]
    rest = by_length[1:]
    while rest:
        def max_similarity(row: Row) -> float:
            mine = words[row["sample_id"]]
            return max(len(mine & words[c["sample_id"]]) / max(len(mine | words[c["sample_id"]]), 1) for c in chosen)

        best = min(rest, key=lambda r: (max_similarity(r), len(r["text"] or ""), r["sample_id"]))
        chosen.append(best)
        rest.remove(best)
    return chosen


def read_accepted_ids(store: RunStore) -> list[str]:
    """Sample ids selected by the last `factory filter` of a run (what `mix` and dedup-across-runs read)."""
    return [sid for sid, row in store.latest_verdicts(SELECTION_STEP).items() if row["passed"]]


# ---------------------------------------------------------------- adaptive generation
def build_acceptor(recipe: GenerateRecipe) -> Callable[[list[Row]], list[bool]]:
    """In-memory acceptance for adaptive sampling: the recipe's sample steps, minus the judge."""
    steps = [s for s in build_steps(recipe.filters) if not s.whole_run and s.name != "judge"]

    def accept(rows: list[Row]) -> list[bool]:
        alive = list(range(len(rows)))
        for step in steps:
            verdicts = step.evaluate([rows[i] for i in alive])
            alive = [i for i, v in zip(alive, verdicts) if v.passed]
        keep = set(alive)
        return [i in keep for i in range(len(rows))]

    return accept


# ---------------------------------------------------------------- reporting
def _report(store: RunStore, rows: list[Row], steps: list[FilterStep], state: dict[str, dict[str, StepVerdict]],
            counts: list[StepCount], selection: dict[str, StepVerdict]) -> FilterReport:
    reasons: Counter[tuple[str, str]] = Counter()
    for step in steps:
        for verdict in state[step.name].values():
            if verdict.passed is not True and verdict.code:
                reasons[(step.name, verdict.code)] += 1
    selected = {sid for sid, v in selection.items() if v.passed}
    prompts = {r["prompt_id"] for r in rows}
    with_selection = {r["prompt_id"] for r in rows if r["sample_id"] in selected}
    yield_by_task: dict[str, dict[str, float]] = {}
    by_task: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        by_task[row["task_type"]].append(row)
    for task, group in sorted(by_task.items()):
        accepted = sum(1 for r in group if _accepted(r["sample_id"], steps, state))
        yield_by_task[task] = {"generated": len(group), "accepted": accepted, "yield": accepted / len(group)}
    tokens = sum(r["completion_tokens"] or 0 for r in rows)
    accepted_total = sum(v["accepted"] for v in yield_by_task.values())
    return FilterReport(
        run=store.name, generated=len(rows), steps=counts, selected=len(selected), prompts=len(prompts),
        prompts_with_selection=len(with_selection),
        top_reasons=[(s, c, n) for (s, c), n in reasons.most_common(8)],
        yield_by_task=yield_by_task,
        accepted_per_million_tokens=accepted_total / tokens * 1e6 if tokens else None,
    )


def _report_json(report: FilterReport) -> dict[str, Any]:
    from dataclasses import asdict

    data = asdict(report)
    data["written_at"] = utc_now().isoformat()
    return data
