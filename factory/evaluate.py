"""Student evaluation: k samples per benchmark problem, scored by the verifiers, pass@1 and pass@k.

The R1 protocol: sample k responses per problem (temperature 0.6, top-p 0.95), report pass@1
averaged over the k samples, and pass@k with the unbiased estimator of Chen et al. (2021).
Generation goes through the same teacher backends as `factory generate` (transformers, vllm,
or an OpenAI-compatible server), so a student is evaluated exactly as a teacher would be served.

Per-problem results land in ``$FACTORY_HOME/evals/<model>-<bench>/results.parquet`` (the `evals`
view of ``factory sql``) with a ``summary.json`` beside them, both written atomically.
"""

from __future__ import annotations

import json
import logging
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from factory.errors import FactoryError, UsageError
from factory.models import R1_SYSTEM_PROMPT
from factory.paths import BENCHMARKS_DIR, factory_home
from factory.progress import RateProgress
from verifiers.scoring import DEFAULT_CODE_TIMEOUT_S, Score, read_tests, score_code_batch, score_math_batch

log = logging.getLogger(__name__)

BenchKind = Literal["math", "code"]

MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
CODE_INSTRUCTION = (
    "Complete the following Python function. Think it through, then give the complete function "
    "(signature included) in one ```python code block."
)


# ---------------------------------------------------------------- benchmarks
@dataclass(frozen=True)
class BenchSpec:
    file: str
    kind: BenchKind
    id_field: str = "id"
    problem_field: str = "problem"
    answer_field: str | None = "answer"


BENCHES: dict[str, BenchSpec] = {
    "math500": BenchSpec("math500.jsonl", "math"),
    "gsm8k": BenchSpec("gsm8k_test.jsonl", "math"),
    "aime24": BenchSpec("aime24.jsonl", "math"),
    "amc23": BenchSpec("amc23.jsonl", "math"),
    "humaneval": BenchSpec("humaneval.jsonl", "code", id_field="task_id", problem_field="prompt", answer_field=None),
}


@dataclass(frozen=True)
class Problem:
    id: str
    problem: str
    gold: str | None  # math reference answer; None for code
    row: dict[str, Any]  # the benchmark row (code tests live here)


def load_bench(bench: str, limit: int | None = None) -> tuple[str, BenchSpec, list[Problem]]:
    """A shipped benchmark by name, or a JSONL file of math problems (id, problem, answer)."""
    if bench in BENCHES:
        spec, path, name = BENCHES[bench], BENCHMARKS_DIR / BENCHES[bench].file, bench
    else:
        path = Path(bench).expanduser()
        if path.suffix != ".jsonl" or not path.is_file():
            raise FactoryError(f"--bench '{bench}': expected one of {', '.join(BENCHES)} or a .jsonl file of math problems")
        spec, name = BenchSpec(str(path), "math"), path.stem
    if limit is not None and limit < 1:
        raise UsageError(f"--limit: expected a number of problems >= 1, got {limit}")
    from factory.sources import read_jsonl

    problems = []
    for number, row in enumerate(read_jsonl(path), 1):
        missing = [f for f in (spec.problem_field, spec.answer_field) if f and f not in row]
        if missing:
            raise FactoryError(f"{path}:{number}: missing field(s) {', '.join(missing)}")
        gold = str(row[spec.answer_field]) if spec.answer_field else None
        problems.append(Problem(str(row.get(spec.id_field, number)), row[spec.problem_field], gold, row))
        if limit is not None and len(problems) >= limit:
            break
    if not problems:
        raise FactoryError(f"--bench '{bench}': no problems in {path}")
    return name, spec, problems


def prompt_messages(problem: Problem, kind: BenchKind, system_prompt: str | None = R1_SYSTEM_PROMPT) -> list[dict[str, str]]:
    """R1-format system prompt (unless None) plus the problem and the benchmark's answer instruction."""
    if kind == "code":
        user = f"{CODE_INSTRUCTION}\n\n```python\n{problem.problem}```"
    else:
        user = f"{problem.problem}\n\n{MATH_INSTRUCTION}"
    return ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [{"role": "user", "content": user}]


# ---------------------------------------------------------------- metrics
def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: 1 - C(n-c, k) / C(n, k)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k: expected 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    product = 1.0
    for i in range(n - c + 1, n + 1):
        product *= 1.0 - k / i
    return 1.0 - product


def reported_ks(k: int) -> list[int]:
    """pass@1, pass@2, pass@4, … up to and including pass@k."""
    ks, value = [], 1
    while value < k:
        ks.append(value)
        value *= 2
    return ks + [k]


# ---------------------------------------------------------------- scoring
# One scoring path (verifiers.scoring): the filter and `factory verify` call the
# same functions, so a sample gets the same verdict here as there.


def score_math(golds: list[str], responses: list[str], *, policy: str = "strict") -> list[Score]:
    """verifiers.scoring in worker processes (a hard timeout per item); undecided counts as wrong."""
    return score_math_batch(responses, golds, policy=policy)


def score_code(rows: list[dict[str, Any]], responses: list[str], *, timeout_s: float = DEFAULT_CODE_TIMEOUT_S) -> list[Score]:
    """Each response's program (see verifiers.scoring.find_program) run against the problem's tests in the sandbox."""
    from verifiers.code import SandboxUnavailable

    try:
        return score_code_batch(responses, [read_tests(row) for row in rows], timeout_s=timeout_s)
    except SandboxUnavailable as exc:
        raise FactoryError(f"--bench humaneval: the code sandbox is unavailable here ({exc})") from None


# ---------------------------------------------------------------- report
@dataclass
class EvalReport:
    model: str  # the name in the results dir
    model_path: str
    bench: str
    k: int
    problems: int
    samples: int
    pass_at_1: float
    pass_at_k: dict[str, float]
    unscored: int  # samples the verifier could not decide (no answer, unparsable), counted as wrong
    truncated: int  # samples that hit max_new_tokens
    mean_completion_tokens: float
    seconds: float
    settings: dict[str, Any]
    results_path: str
    summary_path: str
    baseline: EvalReport | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["baseline"] = self.baseline.to_dict() if self.baseline else None
        return data

    def table(self) -> list[dict[str, Any]]:
        """One row per model, side by side with the baseline when there is one."""
        reports = [self] + ([self.baseline] if self.baseline else [])
        return [
            {"model": r.model, "bench": r.bench, "problems": r.problems, "k": r.k, "pass@1": round(r.pass_at_1, 4),
             **{f"pass@{key}": round(value, 4) for key, value in r.pass_at_k.items() if key != "1"},
             "unscored": r.unscored, "truncated": r.truncated}
            for r in reports
        ]


def model_display_name(model: str) -> str:
    """A filesystem-safe short name: the dir name of a local model, `org--name` for hub ids."""
    path = Path(model).expanduser()
    if path.exists():
        return path.resolve().name
    return model.strip("/").replace("/", "--")


def sample_seed(seed: int, problem_id: str, index: int) -> int:
    """A fixed seed per (run seed, problem, sample): the same problem gets the same draws in any subset."""
    return (seed * 1_000_003 + zlib.crc32(problem_id.encode()) * 31 + index) % (2**31 - 1)


# ---------------------------------------------------------------- the run
def run_eval(
    model: str,
    bench: str,
    *,
    k: int = 4,
    temperature: float = 0.6,
    top_p: float = 0.95,
    max_new_tokens: int = 2048,
    limit: int | None = None,
    seed: int = 0,
    baseline: str | None = None,
    backend: str = "transformers",
    batch_size: int = 16,
    output_name: str | None = None,
    system_prompt: str | None = R1_SYSTEM_PROMPT,
    endpoints: list[str] | None = None,
    progress: bool = False,
) -> EvalReport:
    """Evaluate `model` (and `baseline`, if given) on `bench`; results are also written to the store.

    `system_prompt=None` asks without one, for models trained on prompts without it."""
    if k < 1:
        raise UsageError(f"-k: expected samples per problem >= 1, got {k}")
    if max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens: expected an integer >= 1, got {max_new_tokens}")
    bench_name, spec, problems = load_bench(bench, limit)
    settings = {"k": k, "temperature": temperature, "top_p": top_p, "max_new_tokens": max_new_tokens, "limit": limit, "seed": seed, "backend": backend,
                "endpoints": endpoints, "system_prompt": system_prompt}
    report = _evaluate_one(model, bench_name, spec, problems, settings, batch_size, output_name, progress=progress)
    if baseline is not None:
        name = model_display_name(baseline)
        if name == report.model:
            name += "-baseline"
        report.baseline = _evaluate_one(baseline, bench_name, spec, problems, settings, batch_size, name, progress=progress)
    return report


def _evaluate_one(model: str, bench: str, spec: BenchSpec, problems: list[Problem], settings: dict[str, Any], batch_size: int, output_name: str | None,
                  *, progress: bool = False) -> EvalReport:
    from factory.recipe import TeacherConfig
    from factory.teachers import GenerationRequest, build_teacher

    k = settings["k"]
    name = output_name or model_display_name(model)
    options: dict[str, Any] = {"role": "rl_1", "backend": settings["backend"], "model": model, "transformers": {"batch_size": batch_size}}
    if settings.get("endpoints"):
        options["openai"] = {"endpoints": settings["endpoints"]}
    try:
        config = TeacherConfig.model_validate(options)
    except ValidationError as exc:
        error = exc.errors()[0]
        raise FactoryError(f"--backend/--endpoint: {'.'.join(map(str, error['loc']))}: {error['msg']}") from None
    teacher = build_teacher(config)
    requests = [
        GenerationRequest(
            key=f"{p.id}#{j}",
            group=p.id,
            messages=prompt_messages(p, spec.kind, settings["system_prompt"]),
            temperature=settings["temperature"],
            top_p=settings["top_p"],
            max_new_tokens=settings["max_new_tokens"],
            seed=sample_seed(settings["seed"], p.id, j),
        )
        for p in problems
        for j in range(k)
    ]
    started = time.perf_counter()
    try:
        teacher.check()
        completions = _complete(teacher, requests, label=f"eval {name} · {bench}", progress=progress)
    finally:
        teacher.close()
    failed = [c for c in completions if c.finish_reason == "error"]
    if len(failed) == len(completions):
        raise FactoryError(f"--model '{model}': every generation failed ({failed[0].error})")
    texts = [c.text if c.finish_reason != "error" else "" for c in completions]
    if spec.kind == "math":
        scores = score_math([p.gold for p in problems for _ in range(k)], texts)
    else:
        scores = score_code([p.row for p in problems for _ in range(k)], texts)
    seconds = time.perf_counter() - started

    rows = _result_rows(name, model, bench, problems, completions, scores, settings)
    out_dir = factory_home() / "evals" / f"{name}-{bench}"
    results_path, summary_path = out_dir / "results.parquet", out_dir / "summary.json"
    ks = reported_ks(k)
    report = EvalReport(
        model=name,
        model_path=str(getattr(teacher, "model_path", None) or model),
        bench=bench,
        k=k,
        problems=len(problems),
        samples=len(completions),
        pass_at_1=sum(r["pass_at_1"] for r in rows) / len(rows),
        pass_at_k={str(kk): sum(pass_at_k(k, r["n_correct"], kk) for r in rows) / len(rows) for kk in ks},
        unscored=sum(1 for s in scores if s.correct is not True and s.status in _UNSCORED),
        truncated=sum(1 for c in completions if c.finish_reason == "length"),
        mean_completion_tokens=sum(c.completion_tokens for c in completions) / len(completions),
        seconds=seconds,
        settings=settings,
        results_path=str(results_path),
        summary_path=str(summary_path),
        extra={"generation_errors": len(failed)},
    )
    _write_results(rows, report, results_path, summary_path)
    log.info("%s on %s: pass@1 %.4f over %d problems x %d samples", name, bench, report.pass_at_1, len(problems), k)
    return report


def _complete(teacher: Any, requests: list[Any], *, label: str, progress: bool) -> list[Any]:
    """Every completion in request order, with one progress display (samples/s, tokens/s) while they come in."""
    import asyncio

    async def collect() -> list[Any]:
        done = []
        with RateProgress(label, total=len(requests), enabled=progress) as bar:
            async for completion in teacher.astream(requests):
                done.append(completion)
                bar.update(1, tokens=completion.completion_tokens or 0)
        return done

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        order = {r.key: i for i, r in enumerate(requests)}
        return sorted(asyncio.run(collect()), key=lambda c: order[c.key])
    return teacher.generate(requests)  # inside someone's event loop (a notebook): no display


_UNSCORED = {"no_answer", "unparsable", "unparsable_gold", "too_complex", "undecided", "timeout", "worker_error", "no_code",
             "error"}


def _result_rows(name, model, bench, problems, completions, scores, settings) -> list[dict[str, Any]]:
    k = settings["k"]
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    rows = []
    for i, problem in enumerate(problems):
        mine = completions[i * k : (i + 1) * k]
        marks = scores[i * k : (i + 1) * k]
        n_correct = sum(s.correct is True for s in marks)
        rows.append(
            {
                "model": name,
                "model_ref": model,
                "bench": bench,
                "problem_id": problem.id,
                "problem": problem.problem,
                "gold": problem.gold,
                "k": k,
                "n_correct": n_correct,
                "pass_at_1": n_correct / k,
                "pass_at_k": pass_at_k(k, n_correct, k),
                "correct": [s.correct is True for s in marks],
                "status": [s.status for s in marks],
                "rule": [s.rule for s in marks],
                "extracted": [s.extracted if s.extracted is None else s.extracted[:2000] for s in marks],
                "responses": [c.text for c in mine],
                "finish_reasons": [c.finish_reason for c in mine],
                "completion_tokens": [c.completion_tokens for c in mine],
                "seeds": [sample_seed(settings["seed"], problem.id, j) for j in range(k)],
                "temperature": settings["temperature"],
                "top_p": settings["top_p"],
                "max_new_tokens": settings["max_new_tokens"],
                "seed": settings["seed"],
                "created_at": created,
            }
        )
    return rows


def _write_results(rows: list[dict[str, Any]], report: EvalReport, results_path: Path, summary_path: Path) -> None:
    import pyarrow as pa

    from factory.store import write_json_atomically, write_parquet_atomically

    write_parquet_atomically(pa.Table.from_pylist(rows), results_path)
    summary = report.to_dict()
    summary.pop("baseline", None)
    write_json_atomically(summary, summary_path)
