"""The `factory` command line. It only parses arguments and calls one stage entry point each."""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.logging import RichHandler
from typer.core import TyperGroup

from factory.errors import FactoryError, environment_error
from factory.output import error_line, kv_table, make_console, quiet_dependencies, rows_table
from factory.text import escape_surrogates


class OneLineUsageErrors(TyperGroup):
    """A flag of the wrong type, an unknown option or a missing argument: one line and exit 2, like other bad input."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        if not kwargs.get("standalone_mode", True) or len(args) > 3:
            return super().main(*args, **kwargs)
        try:
            result = super().main(*args, **{**kwargs, "standalone_mode": False})
        except typer.Abort:
            err.print("aborted", markup=False, highlight=False)
            sys.exit(1)
        except typer.TyperException as exc:
            if type(exc).__name__ == "NoArgsIsHelpError" or not isinstance(exc, _usage_error_class()):
                exc.show()  # help asked for by giving no arguments, or a file error: click's own words
                sys.exit(getattr(exc, "exit_code", 2))
            ctx = getattr(exc, "ctx", None)
            hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
            _print_error(FactoryError(exc.format_message().rstrip(".") + hint))
            sys.exit(2)
        sys.exit(result if isinstance(result, int) else 0)


def _usage_error_class() -> type:
    return typer.BadParameter.__mro__[1]  # typer's UsageError (its click is vendored and not re-exported)


app = typer.Typer(
    cls=OneLineUsageErrors,
    help="factory: R1-style data generation, filtering, mixing and distillation.\n\n"
    "Pipeline: sources → generate → store → filter → mix → distill → eval → cards.\n\n"
    "Start with `factory demo` (tiny local models, a few minutes on a CPU).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(help="Tiny local models for tests and the demo.", no_args_is_help=True)
experiment_app = typer.Typer(help="Experiments that measure the factory's own claims.", no_args_is_help=True)
verify_app = typer.Typer(help="Run a verifier over a JSONL/Parquet file.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(verify_app, name="verify")
app.add_typer(experiment_app, name="experiment")

# Data is printed verbatim: these consoles read no markup and no emoji codes (see factory/output.py).
out = make_console()
err = make_console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def one_line_errors(fn: F) -> F:
    """FactoryError → `error: …` on one line and exit 2; no traceback for bad input."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except FactoryError as exc:
            _print_error(exc)
            raise typer.Exit(exc.exit_code) from None
        except OSError as exc:
            error = environment_error(exc)
            if error is None:
                raise
            _print_error(error)
            raise typer.Exit(error.exit_code) from None
        except KeyboardInterrupt:
            err.print("interrupted; completed work is kept, run the same command to resume")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _version(value: bool) -> None:
    if value:
        from factory import __version__

        out.print(f"factory {__version__}")
        raise typer.Exit()


def _print_error(exc: FactoryError) -> None:
    # The message may quote data or an OS message: no markup in it, lone surrogates escaped, one line.
    message = " ".join(escape_surrogates(str(exc)).split("\n"))
    err.print(error_line(message), soft_wrap=True)


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
    store: Annotated[str | None, typer.Option("--store", help="Where the runs are: a directory or a URI such as "
                                              "s3://bucket/prefix (default: $FACTORY_STORE, else $FACTORY_HOME/runs).")] = None,
) -> None:
    if store:
        import os

        os.environ["FACTORY_STORE"] = store  # read by factory.paths.runs_location, in this process and its workers
    quiet_dependencies()
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=err, show_path=False, show_time=False)],
    )


Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress display: print only the summary.")]


# ---------------------------------------------------------------- generate
@app.command()
@one_line_errors
def generate(
    recipe: Annotated[str, typer.Option("--recipe", "-r", help="Recipe name in recipes/ or a path to a YAML file.")],
    overrides: Annotated[list[str] | None, typer.Argument(help="Dotted overrides, e.g. sampling.n=8 sources.0.limit=50.")] = None,
    new_run: Annotated[bool, typer.Option("--new-run", help="Recipe changed: start a new run beside the old one.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Recipe changed: append to the old run anyway.")] = False,
    executor: Annotated[str | None, typer.Option("--executor", help="local (default) or ray: the teacher as one Ray actor per GPU (or per worker on CPU).")] = None,
    quiet: Quiet = False,
) -> None:
    """Generate samples with a recipe's teacher; resumes exactly where a killed run stopped.

    Example: factory generate --recipe cold_start sampling.n=2 sources.0.limit=20
    """
    _apply_quiet(quiet)
    from factory.generate import run_generate

    report = run_generate(recipe, overrides, new_run=new_run, force=force, progress=not quiet,
                          executor=executor)  # type: ignore[arg-type]
    table = _kv_table(f"generate → run '{report.run}'", {
        "prompts": report.prompts,
        "samples planned": report.planned,
        "already present": report.already_present,
        "generated now": report.generated,
        "failed requests (retried on resume)": report.errors,
        "retries": report.retries,
        "completion tokens": report.completion_tokens,
        "samples/s": f"{report.samples_per_s:.1f}",
        "tokens/s": f"{report.tokens_per_s:.0f}",
        **({"cost (USD)": f"{report.cost_usd:.4f}"} if report.cost_usd else {}),
        **({f"import {key} ({'rows' if key == 'formats' else 'traces'})": ", ".join(f"{name} {count:,}" for name, count in sorted(counts.items(), key=lambda kv: -kv[1]))
            for key, counts in report.extra.items() if key in ("formats", "thinking", "languages")}),
        **({"adaptive rounds": report.adaptive_rounds, "prompts solved": report.prompts_solved,
            "accepted / 1M teacher tokens": f"{report.accepted_per_million_tokens:.0f}"} if report.adaptive_rounds else {}),
        "run dir": report.run_dir,
    })
    out.print(table)


# ---------------------------------------------------------------- filter
@app.command("filter")
@one_line_errors
def filter_(
    run: Annotated[str | None, typer.Option("--run", help="Run name (default: the most recent run).")] = None,
    recipe: Annotated[str | None, typer.Option("--recipe", help="Take filters from this recipe instead of the run's.")] = None,
    only: Annotated[list[str] | None, typer.Option("--only", help="Run only these steps (repeatable).")] = None,
    recompute: Annotated[bool, typer.Option("--recompute", help="Recompute verdicts that already exist.")] = False,
    workers: Annotated[int | None, typer.Option("--workers", help="Worker processes (default: the recipe's, else one per core).")] = None,
    executor: Annotated[str | None, typer.Option("--executor", help="local (default) or ray (pip install -e \".[ray]\").")] = None,
    quiet: Quiet = False,
) -> None:
    """Apply the run's filters (format, language, readability, correctness, judge, dedup, decontam) and select k per prompt.

    Example: factory filter --run cold_start --only format
    """
    _apply_quiet(quiet)
    from factory.filter import run_filter

    report = run_filter(run, recipe=recipe, only=only, recompute=recompute, progress=not quiet, workers=workers,
                        executor=executor)  # type: ignore[arg-type]
    columns = ("step", "in", "passed", "rejected", "unverifiable", "computed", "reused")
    rows = [("generated", report.generated, None, None, None, None, None)]
    rows += [(s.step, s.candidates, s.passed, s.rejected, s.unverifiable, s.computed, s.reused) for s in report.steps]
    rows.append(("selected", None, report.selected, None, None, None, None))
    out.print(rows_table(f"filter funnel — run '{report.run}'", columns, rows, right=columns[1:]))
    if report.top_reasons:
        out.print(rows_table("top rejection reasons", ("step", "reason", "samples"), report.top_reasons, right=("samples",)))
    out.print(f"prompts with a selected sample: {report.prompts_with_selection}/{report.prompts}")


# ---------------------------------------------------------------- mix
@app.command()
@one_line_errors
def mix(
    recipe: Annotated[str, typer.Option("--recipe", "-r", help="Mix recipe.")] = "sft_mix",
    overrides: Annotated[list[str] | None, typer.Argument(help="Dotted overrides, e.g. scale=0.001.")] = None,
) -> None:
    """Combine curated runs into the SFT training set, to quotas, stratified and seeded.

    Example: factory mix --recipe sft_mix scale=0.01
    """
    from factory.mix import run_mix

    report = run_mix(recipe, overrides)
    columns = ("run", "quota", "curated", "duplicates dropped", "taken")
    out.print(rows_table(f"mix → dataset '{report.dataset}' ({report.samples} samples)", columns,
                         [(c.run, c.quota, c.available, c.duplicates_dropped, c.taken) for c in report.components], right=columns[1:]))
    if report.duplicates_dropped:
        out.print(f"dropped {report.duplicates_dropped} exact prompt+response duplicates across runs (dedup_exact: false keeps them)")
    out.print(f"written to {report.path}")


# ---------------------------------------------------------------- distill and eval
@app.command()
@one_line_errors
def distill(
    student: Annotated[str, typer.Option("--student", "-s", help="Student config in recipes/students/ (qwen, llama) or a path.")] = "qwen",
    data: Annotated[str | None, typer.Option("--data", help="Training set: a mixed dataset name or a Parquet/JSONL path.")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Output model dir.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the last checkpoint.")] = False,
    max_steps: Annotated[int | None, typer.Option("--max-steps", min=1, help="Stop after this many optimizer steps.")] = None,
    overrides: Annotated[list[str] | None, typer.Argument(help="Dotted overrides, e.g. learning_rate=3e-4.")] = None,
    quiet: Quiet = False,
) -> None:
    """Fine-tune a student on the curated mix (assistant-only loss, packing, resumable).

    Example: factory distill --student qwen --max-steps 20
    """
    _apply_quiet(quiet)
    from factory.distill import run_distill
    from factory.recipe import StudentRecipe, load_recipe
    from factory.errors import RecipeError

    recipe = load_recipe(student, overrides, subdir="students")
    if not isinstance(recipe, StudentRecipe):
        raise RecipeError(f"--student {student}: expected a student config (kind: student)")
    report = run_distill(recipe, data=data, output_dir=output, resume=resume, max_steps=max_steps, progress=not quiet)
    summary = {k: v for k, v in _public_fields(report).items() if k not in ("recipe", "loss_curve")}
    if report.loss_curve:  # the curve itself is in the model dir's report; here, where it went
        losses = [p["loss"] for p in report.loss_curve]
        summary["loss (first → last, min)"] = f"{losses[0]:.4f} → {losses[-1]:.4f}, min {min(losses):.4f} over {len(losses)} steps"
    out.print(_kv_table(f"distill → {report.output_dir}", summary))


@app.command("eval")
@one_line_errors
def eval_(
    model: Annotated[str, typer.Option("--model", "-m", help="A model dir (e.g. a distilled student) or a tiny model name.")],
    bench: Annotated[str, typer.Option("--bench", "-b", help="math500 | gsm8k | aime24 | amc23 | humaneval")] = "gsm8k",
    k: Annotated[int, typer.Option("-k", help="Samples per problem (pass@1 is averaged over k).")] = 4,
    limit: Annotated[int | None, typer.Option("--limit", help="First N problems only.")] = None,
    baseline: Annotated[str | None, typer.Option("--baseline", help="A second model to compare side by side.")] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens")] = 2048,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    backend: Annotated[str, typer.Option("--backend", help="transformers | vllm | openai, as for teachers.")] = "transformers",
    endpoint: Annotated[list[str] | None, typer.Option("--endpoint", help="With --backend openai: server base URL (repeatable).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Prompts x samples per forward pass (transformers).")] = 16,
    quiet: Quiet = False,
) -> None:
    """Evaluate a model on a benchmark with the same verifiers: pass@1 over k samples and pass@k.

    Example: factory eval --model tiny-r1 --bench gsm8k --limit 20 -k 2
    """
    _apply_quiet(quiet)
    from factory.evaluate import run_eval

    if backend not in ("transformers", "vllm", "openai"):
        raise FactoryError(f"--backend: expected transformers, vllm or openai, got {backend!r}")
    if batch_size < 1:
        raise FactoryError(f"--batch-size: expected an integer >= 1, got {batch_size}")
    report = run_eval(model, bench, k=k, limit=limit, baseline=baseline, max_new_tokens=max_new_tokens, seed=seed,
                      backend=backend, endpoints=endpoint, batch_size=batch_size, progress=not quiet)
    rows = report.table()
    columns = list(rows[0]) if rows else []
    out.print(rows_table(f"eval {bench}", columns, [[f"{v:.4f}" if isinstance(v, float) else v for v in row.values()] for row in rows]))
    for r in [report] + ([report.baseline] if report.baseline else []):
        out.print(f"{r.model}: per-problem results in {r.results_path}, summary in {r.summary_path} (factory sql: the evals view)", soft_wrap=True)


# ---------------------------------------------------------------- inspection
@app.command()
@one_line_errors
def sql(
    query: Annotated[str, typer.Argument(help="One read-only query over views samples, verdicts, verdicts_all, runs, mixes, evals.")],
    format: Annotated[str, typer.Option("--format", "-f", help="table | csv | json")] = "table",
    out_file: Annotated[Path | None, typer.Option("--out", "-o", help="Write the result to FILE.parquet, .csv, .json or .jsonl instead.")] = None,
) -> None:
    """Query the store with DuckDB (read-only: SQL cannot write files; export with --out).

    Example: factory sql "SELECT step, passed, count(*) FROM verdicts GROUP BY ALL ORDER BY ALL"
    Example: factory sql "SELECT * FROM samples WHERE run = 'cold_start'" --out cold_start.parquet
    """
    from factory.sql import export_sql, run_sql

    if format not in ("table", "csv", "json"):
        raise FactoryError(f"--format: expected table, csv or json, got {format!r}")
    if out_file is not None:
        rows = export_sql(query, out_file)
        err.print(f"{rows} rows written to {out_file}", markup=False, highlight=False)
        return
    result = run_sql(query)
    if format == "json":
        sys.stdout.write(json.dumps(result.to_dicts(), default=str, ensure_ascii=False) + "\n")
    elif format == "csv":
        import csv

        writer = csv.writer(sys.stdout)
        writer.writerow(result.columns)
        writer.writerows(result.rows)
    else:
        out.print(rows_table(None, result.columns, result.rows, fold=True))
        out.print(f"{len(result.rows)} rows")


@app.command()
@one_line_errors
def card(
    run: Annotated[str | None, typer.Option("--run", help="Run to describe (default: most recent).")] = None,
    mix: Annotated[str | None, typer.Option("--mix", help="A mixed dataset to describe instead of a run.")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Where cards are written (default: $FACTORY_HOME/cards).")] = None,
) -> None:
    """Write a dataset card (metadata, funnel, yields, rejection reasons, plots) for a run or a mix.

    Example: factory card --run cold_start
    """
    from factory.cards import write_card

    path = write_card(run, mix, out_dir)
    out.print(f"card written to {path}", soft_wrap=True)


@app.command()
@one_line_errors
def export(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write (Hub dataset layout); replaced if it holds an export.")],
    run: Annotated[str | None, typer.Option("--run", help="Run whose selected samples to export (default: most recent).")] = None,
    mix: Annotated[str | None, typer.Option("--mix", help="A mixed dataset to export instead of a run.")] = None,
    push: Annotated[str | None, typer.Option("--push", help="Also upload to this Hub dataset repo (e.g. me/my-data).")] = None,
    private: Annotated[bool, typer.Option("--private", help="With --push: create the repo private.")] = False,
    shard_mb: Annotated[float, typer.Option("--shard-mb", help="Size of a data shard, in MB of rows.")] = 256,
) -> None:
    """Export a curated run or a mix as a Hugging Face dataset folder: data/*.parquet + a card with metadata and plots.

    Example: factory export --run cold_start --out cold_start_hf   (then: datasets.load_dataset("cold_start_hf"))
    """
    from factory.export import export_dataset

    report = export_dataset(run=run, mix=mix, out_dir=out_dir, push=push, shard_mb=shard_mb, private=private)
    out.print(rows_table(f"export {report.kind} '{report.name}'", ("subset", "rows"),
                         [*report.subsets.items(), ("all", report.rows)], right=("rows",)))
    out.print(kv_table("written", {"folder": report.out_dir, "data shards": len(report.shards), "card": report.card, "plots": ", ".join(report.plots),
                                   **({"pushed to": report.pushed_to} if report.pushed_to else {}),
                                   "load with": f"datasets.load_dataset({str(report.out_dir)!r})"}))


@app.command()
@one_line_errors
def view(
    run: Annotated[str | None, typer.Option("--run", help="Run to open first (default: most recent); the page lists every run.")] = None,
    port: Annotated[int, typer.Option("--port", help="Port on 127.0.0.1 (0 = any free port).")] = 8765,
    host: Annotated[str, typer.Option("--host", help="Address to listen on; keep 127.0.0.1 unless you mean to share the page.")] = "127.0.0.1",
) -> None:
    """Browse a run in the web browser: filter by step, verdict, reason, task type; prompt, reasoning and answer with every verdict.

    Example: factory view --run cold_start   (then open http://127.0.0.1:8765/)
    """
    from factory.view import run_view

    def ready(url: str) -> None:
        out.print(f"factory view: serving {url} (Ctrl-C to stop)")
        out.file.flush()

    try:
        run_view(run, host=host, port=port, on_ready=ready)
    except KeyboardInterrupt:
        out.print("stopped")


@app.command()
@one_line_errors
def demo(
    prompts: Annotated[int, typer.Option("--prompts", min=1, help="Arithmetic prompts to generate for.")] = 64,
    steps: Annotated[int, typer.Option("--steps", min=1, help="Distillation steps.")] = 30,
    quiet: Quiet = False,
) -> None:
    """generate → filter → mix → distill → sql on the tiny local models (a few minutes on a CPU).

    Example: FACTORY_HOME=/tmp/f factory demo
    """
    _apply_quiet(quiet)
    from factory.demo import run_demo

    run_demo(out, prompts=prompts, distill_steps=steps, progress=not quiet)


# ---------------------------------------------------------------- experiments
@experiment_app.command("curation")
@one_line_errors
def experiment_curation(
    seeds: Annotated[str, typer.Option("--seeds", help="Comma-separated seeds; the bar is judged over them.")] = "0,1,2",
    ablate: Annotated[bool, typer.Option("--ablate", help="One extra arm per filter switched off.")] = False,
    generations: Annotated[int, typer.Option("--generations", help="Rounds of teacher → student → teacher.")] = 2,
    name: Annotated[str, typer.Option("--name", help="Experiment name (its dir under $FACTORY_HOME/experiments).")] = "curation",
    overrides: Annotated[list[str] | None, typer.Argument(help="KEY=VALUE settings, e.g. steps=200 train_prompts=400 n=4.")] = None,
) -> None:
    """Curated vs raw: distill one student on filtered teacher samples and one on as many raw ones, evaluate both
    on held-out problems; then let the curated student teach the next generation.

    Example: factory experiment curation --seeds 0,1,2 --ablate
    """
    from rich.table import Table

    from factory.experiment import CurationSettings, round_table, run_curation

    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise FactoryError(f"--seeds: expected comma-separated integers, got {seeds!r}") from None
    values: dict[str, Any] = {"seeds": seed_list, "ablate": ablate, "generations": generations, "name": name}
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise FactoryError(f"setting '{item}': expected KEY=VALUE, e.g. steps=200")
        values[key.strip()] = value
    settings = _validated(CurationSettings, values)
    report = run_curation(settings)
    rows = round_table(report)
    table = Table(title=f"experiment {settings.name}: per seed and generation")
    for col in rows[0] if rows else []:
        table.add_column(str(col))
    for row in rows:
        table.add_row(*[str(v) for v in row.values()])
    out.print(table)
    verdict = report.summary.get("curated_vs_raw") or {}
    if verdict:
        out.print(f"A − B (pass@1, mean over seeds) {verdict['gap']:+.3f}; seed spread {verdict['spread']:.3f}; "
                  f"beyond spread: {verdict['a_beats_b_beyond_spread']}")
    out.print(f"card: {report.card_path}  report: {report.report_path}  ({report.wall_seconds:.0f} s wall, {report.cpu_seconds:.0f} s CPU)")


def _validated(model: Any, values: dict[str, Any]) -> Any:
    from pydantic import ValidationError

    try:
        return model.model_validate(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise FactoryError(f"setting {key}: {first['msg']} (got {first.get('input')!r})") from None


# ---------------------------------------------------------------- models
@models_app.command("build")
@one_line_errors
def models_build(
    names: Annotated[list[str] | None, typer.Argument(help="Task models to build too, e.g. tiny-teacher-arith.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if current.")] = False,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    quiet: Quiet = False,
) -> None:
    """Build the tiny tokenizer, students (tiny-qwen, tiny-llama) and format-taught teacher (tiny-r1),
    and any task model named (tiny-teacher-arith: the imperfect teacher of `factory experiment curation`).

    Example: factory models build tiny-teacher-arith
    """
    _apply_quiet(quiet)
    from factory.models import build_task_models, build_tiny_models
    from factory.paths import models_dir

    paths = build_tiny_models(models_dir(), seed=seed, force=force, progress=not quiet)
    paths.update(build_task_models(names or [], models_dir(), seed=seed, force=force))
    for name, path in paths.items():
        out.print(f"{name}: {path}")


# ---------------------------------------------------------------- standalone verifiers and dedup
@verify_app.command("math")
@one_line_errors
def verify_math(
    path: Annotated[Path, typer.Argument(help="JSONL or Parquet with gold and response columns.")],
    gold: Annotated[str, typer.Option("--gold", help="Gold answer column.")] = "gold",
    response: Annotated[str, typer.Option("--response", help="Response column.")] = "response",
    output: Annotated[Path | None, typer.Option("--out", help="Verdicts file (default: FILE.math_verdicts.jsonl).")] = None,
    workers: Annotated[int | None, typer.Option("--workers")] = None,
    policy: Annotated[str, typer.Option("--policy", help="strict: only an explicit answer form counts; "
                                        "lenient: also the last number/math span of the last sentence.")] = "strict",
) -> None:
    """Check responses against gold answers with the math verifier.

    Example: factory verify math answers.jsonl --gold answer --response completion --policy lenient
    """
    from factory.verify import verify_math_file

    report = verify_math_file(path, gold_field=gold, response_field=response, out_path=output, workers=workers,
                              policy=policy)
    out.print(_kv_table(f"verify math {path}", report))


@verify_app.command("code")
@one_line_errors
def verify_code(
    path: Annotated[Path, typer.Argument(help="JSONL or Parquet with a program/response column and tests.")],
    program: Annotated[str, typer.Option("--program", help="Program or response column (code is extracted from fences).")] = "response",
    tests: Annotated[str, typer.Option("--tests", help="Tests column (HumanEval test+entry_point, asserts, or stdin/stdout cases).")] = "tests",
    output: Annotated[Path | None, typer.Option("--out", help="Verdicts file (default: FILE.code_verdicts.jsonl).")] = None,
    workers: Annotated[int | None, typer.Option("--workers")] = None,
    timeout_s: Annotated[float, typer.Option("--timeout", help="Seconds per program.")] = 5.0,
    unsafe_no_sandbox: Annotated[bool, typer.Option("--unsafe-no-sandbox", help="Run without isolation (only if none is available).")] = False,
) -> None:
    """Run programs against their tests in the sandbox.

    Example: factory verify code humaneval_samples.jsonl --program completion --tests tests
    """
    from factory.verify import verify_code_file

    report = verify_code_file(path, program_field=program, tests_field=tests, out_path=output, workers=workers,
                              timeout_s=timeout_s, unsafe_no_sandbox=unsafe_no_sandbox)
    out.print(_kv_table(f"verify code {path}", report))


@app.command()
@one_line_errors
def dedup(
    path: Annotated[Path, typer.Argument(help="JSONL or Parquet file.")],
    field: Annotated[str, typer.Option("--field", help="Text column.")] = "text",
    threshold: Annotated[float | None, typer.Option("--threshold", help="MinHash Jaccard threshold in (0, 1] (default 0.3 on word bigrams; higher for short texts).")] = None,
    num_perm: Annotated[int | None, typer.Option("--num-perm", help="MinHash permutations, >= 16 (default 128).")] = None,
    output: Annotated[Path | None, typer.Option("--out")] = None,
) -> None:
    """Exact + MinHash near-duplicate detection on any dataset file.

    Example: factory dedup samples.jsonl --field response --threshold 0.85
    """
    from factory.dedup import dedup_file

    report = dedup_file(path, field=field, out_path=output, threshold=threshold, num_perm=num_perm)
    out.print(_kv_table(f"dedup {path}", report))


@app.command()
@one_line_errors
def decontaminate(
    path: Annotated[Path, typer.Argument(help="JSONL or Parquet file.")],
    fields: Annotated[list[str] | None, typer.Option("--field", help="Text columns to check (repeatable).")] = None,
    n: Annotated[int, typer.Option("--n", help="Word n-gram size (13 = GPT-3 convention).")] = 13,
    benchmark: Annotated[list[Path] | None, typer.Option("--benchmark", help="Extra benchmark file (repeatable).")] = None,
    output: Annotated[Path | None, typer.Option("--out")] = None,
) -> None:
    """Find benchmark leakage (GSM8K, MATH-500, AIME24, AMC23, HumanEval + your files) by n-gram overlap.

    Example: factory decontaminate prompts.jsonl --field problem --n 8
    """
    from factory.dedup import decontaminate_file

    report = decontaminate_file(path, fields=fields or ["text"], n=n, benchmarks=benchmark, out_path=output)
    out.print(_kv_table(f"decontaminate {path}", report))


# ---------------------------------------------------------------- helpers
def _kv_table(title: str, values: dict[str, Any]) -> Any:
    return kv_table(title, values)


def _apply_quiet(quiet: bool) -> None:
    """-q: the summary only, so info logs go too (warnings and errors stay)."""
    if quiet:
        logging.getLogger().setLevel(logging.WARNING)


def _public_fields(report: Any) -> dict[str, Any]:
    from dataclasses import asdict, is_dataclass

    data = asdict(report) if is_dataclass(report) else dict(report)
    return {k: v for k, v in data.items() if not k.startswith("_") and not (isinstance(v, list) and len(v) > 20)}


if __name__ == "__main__":
    app()
