"""`factory demo`: the whole pipeline on tiny local models, on a CPU, in a few minutes."""

from __future__ import annotations

import logging
import time

from rich.console import Console
from rich.table import Table
from rich.text import Text

from factory.output import rows_table

log = logging.getLogger(__name__)

DEMO_SQL = (
    "SELECT v.step, count(*) AS decided, count(*) FILTER (WHERE v.passed) AS passed, "
    "count(*) FILTER (WHERE v.passed IS NULL) AS unverifiable, any_value(v.code) FILTER (WHERE NOT v.passed) AS example_reject "
    "FROM verdicts v JOIN samples s USING (sample_id) WHERE s.run = 'cold_start' GROUP BY v.step ORDER BY decided DESC"
)


def run_demo(console: Console, *, prompts: int = 64, distill_steps: int = 30, progress: bool = True) -> dict[str, float]:
    """generate → filter → mix → distill → sql → card; prints per-stage counts and returns stage timings."""
    from factory.cards import write_card
    from factory.distill import run_distill
    from factory.filter import run_filter
    from factory.generate import run_generate
    from factory.mix import run_mix
    from factory.models import ensure_model
    from factory.paths import factory_home
    from factory.recipe import load_recipe
    from factory.sql import run_sql

    timings: dict[str, float] = {}
    summary_console = console
    console = console if progress else Console(quiet=True)  # -q: the summary table only
    stage = _Stage(console, timings)
    console.print(Text.assemble(("factory demo", "bold"), f" — FACTORY_HOME={factory_home()}"))
    with stage("models"):
        for name in ("tiny-r1", "tiny-qwen"):
            ensure_model(name, progress=progress)
        console.print("tiny models ready (tiny-r1 teacher, tiny-qwen student)")
    overrides = [f"sources.0.limit={prompts}", f"sources.1.limit={max(prompts // 4, 1)}", "sampling.n=2"]
    with stage("generate"):
        gen = run_generate("cold_start", overrides, progress=progress)
        console.print(f"generate: {gen.generated} new samples ({gen.already_present} already present) "
                      f"for {gen.prompts} prompts, {gen.tokens_per_s:.0f} tokens/s")
    with stage("filter"):
        report = run_filter("cold_start", progress=progress)
        funnel = " → ".join([f"generated {report.generated}"] + [f"{s.step} {s.passed}" for s in report.steps] + [f"selected {report.selected}"])
        console.print(f"filter: {funnel}")
    with stage("mix"):
        # Only the run the demo made, all of it: sft_mix's other components (and its paper-scale quota)
        # would each warn about runs and samples the demo never meant to make.
        mixed = run_mix("sft_mix", ["scale=1.0", f"components=[{{run: cold_start, quota: {report.selected}}}]"])
        console.print(f"mix: {mixed.samples} training samples in {mixed.path}")
    with stage("distill"):
        # A tiny random-init student needs a far larger step than a real 1.5B one to move in 30 steps.
        student = load_recipe("qwen", ["learning_rate=2e-3", "warmup_ratio=0.1"], subdir="students")
        distilled = run_distill(student, data="sft_mix", max_steps=distill_steps, progress=progress)
        first = distilled.loss_curve[0]["loss"] if distilled.loss_curve else float("nan")
        console.print(f"distill: {distill_steps} steps, loss {first:.2f} → {distilled.final_loss or float('nan'):.2f}, model in {distilled.output_dir}")
    with stage("sql"):
        result = run_sql(DEMO_SQL)
        console.print(rows_table('factory sql "SELECT step, count(*) … FROM verdicts JOIN samples …"', result.columns, result.rows))
    with stage("card"):
        card = write_card("cold_start")
        console.print(f"card: {card}")
    summary = Table(title="demo: per-stage counts and time")
    for col in ("stage", "count", "seconds"):
        summary.add_column(col)
    counts = {"generate": gen.generated + gen.already_present, "filter": report.selected, "mix": mixed.samples,
              "distill": distill_steps, "sql": len(result.rows)}
    for name, seconds in timings.items():
        summary.add_row(name, str(counts.get(name, "")), f"{seconds:.1f}")
    summary_console.print(summary)
    if not progress:  # otherwise the card stage already said where it is
        summary_console.print(f"card: {card}")
    return timings


class _Stage:
    def __init__(self, console: Console, timings: dict[str, float]) -> None:
        self.console = console
        self.timings = timings

    def __call__(self, name: str) -> "_Stage":
        self.name = name
        return self

    def __enter__(self) -> None:
        self.started = time.monotonic()
        self.console.rule(Text(self.name, style="bold"))

    def __exit__(self, *exc: object) -> None:
        self.timings[self.name] = time.monotonic() - self.started
