"""`factory experiment curation`: does a student distilled from curated data beat one from raw data?

For each seed, with the factory's own stages and nothing else:

1. generate n samples per prompt from an imperfect teacher (``tiny-teacher-arith`` by
   default) on the train split of :mod:`factory.tasks`, plus a few leaked benchmark
   problems (decontamination's work);
2. curate them with the shipped filters (``recipes/arith_curation.yaml``);
3. mix arm A = the curated samples, arm B = as many *raw* samples of the same run
   (a mix component with ``curated: false``);
4. distill both into the same base with the same steps, learning rate and seed;
5. evaluate both on the held-out split (``factory eval``: pass@1 over k samples, pass@k).

Generations: the curated student of round g is the ``rl_1`` teacher of round g+1, which
generates, is curated and distilled again; each run's recipe records its ``lineage``
(generation, parent run, parent dataset) in the store. ``ablate`` adds one arm per filter
switched off (a copy of the round-1 run re-filtered without that step).

Everything lands under ``$FACTORY_HOME/experiments/<name>/`` (report.json, README.md card
with plots) and in the ordinary store (runs, datasets, students, evals).
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from factory import tasks
from factory.errors import FactoryError
from factory.paths import BENCHMARKS_DIR, factory_home, runs_dir
from factory.store import RunStore, write_json_atomically

log = logging.getLogger(__name__)

GENERATE_RECIPE = "arith_curation"
STUDENT_RECIPE = "arith"
EVAL_BATCH = 64  # the held-out chains are short: larger batches cost a tiny model less CPU per sample


class CurationSettings(BaseModel):
    """The experiment's knobs; defaults are the README's run (1,048 s wall, ~700 CPU-s on the 2-core host at load 5-9)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(default="curation", pattern=r"^[A-Za-z0-9_.-]+$")
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    train_prompts: int = Field(default=200, ge=4)
    heldout: int = Field(default=tasks.HELDOUT_SIZE, ge=1, le=tasks.HELDOUT_SIZE)
    leaked: int = Field(default=6, ge=0, le=100)  # GSM8K test problems mixed into the prompt pool
    n: int = Field(default=4, ge=1)  # teacher samples per prompt
    max_new_tokens: int = Field(default=192, ge=8)  # teacher; a looping chain needs ~150 to show its loop
    eval_max_new_tokens: int = Field(default=96, ge=8)  # a right chain is ~30 tokens
    teacher: str = "tiny-teacher-arith"
    student_recipe: str = STUDENT_RECIPE
    generate_recipe: str = GENERATE_RECIPE
    steps: int = Field(default=300, ge=1)  # distillation steps of every arm (~4,800 samples seen, two packed a row: a 2-layer student needs them to learn to read)
    eval_k: int = Field(default=2, ge=1)
    eval_temperature: float = Field(default=0.6, ge=0)
    generations: int = Field(default=2, ge=1)
    ablate: bool = False
    workers: int = Field(default=1, ge=1)  # seeds run in parallel processes


@dataclass
class Arm:
    """One distilled student and its held-out score."""

    arm: str  # curated | raw | no-<filter>
    seed: int
    generation: int
    dataset: str
    samples: int
    student: str
    pass_at_1: float
    pass_at_k: dict[str, float]
    train_seconds: float
    trained_tokens: int


@dataclass
class Round:
    """One generation of one seed: the teacher's samples, the filter funnel, the arms."""

    seed: int
    generation: int
    run: str
    teacher: str
    generated: int
    teacher_accuracy: float  # share of generated samples the math verifier marks right
    funnel: list[dict[str, Any]]  # per step: candidates, passed, rejected
    curated: int
    teacher_tokens: int  # prompt + completion tokens spent generating
    lineage: dict[str, Any]
    arms: list[Arm] = field(default_factory=list)


@dataclass
class CurationReport:
    name: str
    settings: dict[str, Any]
    rounds: list[Round]
    references: dict[str, dict[str, Any]]  # the first teacher and the student base on the held-out split
    summary: dict[str, Any]
    wall_seconds: float
    cpu_seconds: float  # this process and its seed workers (torch threads included)
    load_average: dict[str, list[float]] = field(default_factory=dict)  # host load (1, 5, 15 min) at start and end: others' jobs stretch the wall time
    report_path: str = ""
    card_path: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------- the entry point
def run_curation(settings: CurationSettings) -> CurationReport:
    """Run the whole experiment (resumable: finished runs are reused) and write its report and card."""
    from factory.evaluate import run_eval

    wall, cpu, load_at_start = time.perf_counter(), time.process_time(), list(os.getloadavg())
    home = factory_home() / "experiments" / settings.name
    home.mkdir(parents=True, exist_ok=True)
    train_path, heldout_path = _write_splits(settings, home)
    chains = [(settings, home, train_path, heldout_path, seed) for seed in settings.seeds]
    if settings.workers > 1 and len(chains) > 1:
        # Seeds are independent chains (their own runs, datasets and students): one process each.
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=min(settings.workers, len(chains)), mp_context=multiprocessing.get_context("spawn")) as pool:
            results = list(pool.map(_seed_chain_in_worker, chains))
        per_seed = [rounds_ for rounds_, _ in results]
        worker_cpu = sum(seconds for _, seconds in results)
    else:
        per_seed = [_seed_chain(*chain) for chain in chains]
        worker_cpu = 0.0
    rounds = [r for chain in per_seed for r in chain]
    references = {}
    for role, model in (("teacher", settings.teacher), ("student base", _student_base(settings))):
        evaluated = run_eval(model, str(heldout_path), k=settings.eval_k, temperature=settings.eval_temperature,
                             max_new_tokens=settings.eval_max_new_tokens, seed=0, batch_size=EVAL_BATCH, output_name=f"{settings.name}-{role.replace(' ', '-')}",
                             system_prompt=None)
        references[role] = {"model": model, "pass_at_1": evaluated.pass_at_1, "pass_at_k": evaluated.pass_at_k}
    report = CurationReport(settings.name, settings.model_dump(mode="json"), rounds, references, summarize(rounds),
                            time.perf_counter() - wall, time.process_time() - cpu + worker_cpu,
                            {"start": load_at_start, "end": list(os.getloadavg())})
    report.report_path = str(home / "report.json")
    write_json_atomically(report.to_dict(), home / "report.json")
    report.card_path = str(write_card(report, home))
    return report


def _seed_chain(settings: CurationSettings, home: Path, train_path: Path, heldout_path: Path, seed: int) -> list[Round]:
    """Every generation of one seed: generate → curate → distill A (and B in generation 1) → eval."""
    rounds: list[Round] = []
    parent: Round | None = None
    for generation in range(1, settings.generations + 1):
        teacher = settings.teacher if parent is None else _arm(parent, "curated").student
        round_ = _generate_and_curate(settings, home, train_path, seed, generation, teacher, parent)
        for arm in ["curated", "raw"] if generation == 1 else ["curated"]:
            round_.arms.append(_train_and_eval(settings, home, heldout_path, round_, arm))
            _save_round(home, round_)
        if generation == 1 and settings.ablate:
            for step in _filter_steps(settings):
                round_.arms.append(_ablation_arm(settings, home, heldout_path, round_, step))
                _save_round(home, round_)
        rounds.append(round_)
        parent = round_
    return rounds


def _save_round(home: Path, round_: Round) -> None:
    """Each finished arm is on disk at once: a long experiment stopped midway keeps what it measured."""
    write_json_atomically(asdict(round_), home / "rounds" / f"{round_.run}.json")


def _seed_chain_in_worker(args: tuple) -> tuple[list[Round], float]:
    import torch

    logging.basicConfig(level=logging.INFO, format="%(processName)s %(message)s")
    for noisy in ("httpx", "urllib3", "datasets", "filelock", "transformers", "torch"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Several workers share the cores: one intra-op thread each avoids oversubscription.
    torch.set_num_threads(1)
    started = time.process_time()
    return _seed_chain(*args), time.process_time() - started


# ---------------------------------------------------------------- data
def _write_splits(settings: CurationSettings, home: Path) -> tuple[Path, Path]:
    """The train prompt pool (train split + leaked benchmark items) and the held-out split."""
    train, heldout = tasks.problem_splits(tasks.SPLIT_SEED, settings.train_prompts, tasks.HELDOUT_SIZE)
    heldout_path = tasks.write_jsonl(heldout[: settings.heldout], home / "data" / "heldout.jsonl")
    rows = [p.row() for p in train]
    leaked = _leaked_benchmark_rows(settings.leaked)
    # Leaked items sit among the train prompts, as scraped data would carry them.
    rng = random.Random(tasks.SPLIT_SEED)
    for row in leaked:
        rows.insert(rng.randrange(len(rows) + 1), row)
    train_path = home / "data" / "train_pool.jsonl"
    train_path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return train_path, heldout_path


def _leaked_benchmark_rows(count: int) -> list[dict[str, Any]]:
    rows = []
    with open(BENCHMARKS_DIR / "gsm8k_test.jsonl", encoding="utf-8") as handle:
        for line in handle:
            if len(rows) >= count:
                break
            item = json.loads(line)
            rows.append({"id": f"leak-{item['id']}", "problem": item["problem"], "answer": str(item["answer"]), "task_type": "math"})
    return rows


def _student_base(settings: CurationSettings) -> str:
    from factory.recipe import load_recipe

    return load_recipe(settings.student_recipe, subdir="students").model


def _filter_steps(settings: CurationSettings) -> list[str]:
    from factory.recipe import load_recipe

    return [f["step"] for f in load_recipe(settings.generate_recipe).filters]


# ---------------------------------------------------------------- generate → filter
def _generate_and_curate(settings: CurationSettings, home: Path, train_path: Path, seed: int, generation: int,
                         teacher: str, parent: Round | None) -> Round:
    from factory.filter import run_filter
    from factory.generate import run_generate

    run = f"{settings.name}-s{seed}-g{generation}"
    overrides = [
        f"sources.0.path={train_path}", f"seed={seed}", f"sampling.seed={seed}", f"sampling.n={settings.n}",
        f"sampling.max_new_tokens={settings.max_new_tokens}", f"teacher.model={teacher}",
        f"teacher.role={'r1_zero' if parent is None else 'rl_1'}", f"output.dataset={run}", f"lineage.generation={generation}",
    ]
    if parent is not None:
        overrides += [f"lineage.parent_run={parent.run}", f"lineage.parent_dataset={_dataset(parent.run, 'curated')}"]
    run_generate(settings.generate_recipe, overrides, progress=False)
    report = run_filter(run, progress=False)
    store = RunStore.for_dataset(run)
    funnel = [{"step": s.step, "candidates": s.candidates, "passed": s.passed, "rejected": s.candidates - s.passed} for s in report.steps]
    before = funnel[-1]["passed"] if funnel else report.generated
    funnel.append({"step": "selection", "candidates": before, "passed": report.selected, "rejected": before - report.selected})
    manifest = store.read_manifest()
    return Round(
        seed=seed, generation=generation, run=run, teacher=teacher, generated=report.generated,
        teacher_accuracy=_teacher_accuracy(store), funnel=funnel, curated=report.selected,
        teacher_tokens=_run_tokens(store), lineage=(manifest.get("recipe") or {}).get("lineage") or {},
    )


def _teacher_accuracy(store: RunStore) -> float:
    """Scored with the evaluator's own function, so 'correct' means the same here and in `factory eval`."""
    from factory.evaluate import score_math

    rows = [r for r in store.read_samples(["reference", "text"]).to_pylist() if r["reference"]]
    scores = score_math([r["reference"] for r in rows], [r["text"] or "" for r in rows])
    return sum(s.correct is True for s in scores) / len(scores) if scores else 0.0  # None (undecided) counts as wrong, as in eval


def _run_tokens(store: RunStore) -> int:
    """Prompt + completion tokens of every sample of the run (also right when the experiment resumed)."""
    table = store.read_samples(["prompt_tokens", "completion_tokens"]).to_pylist()
    return sum((r["prompt_tokens"] or 0) + (r["completion_tokens"] or 0) for r in table)


# ---------------------------------------------------------------- mix → distill → eval
def _dataset(run: str, arm: str) -> str:
    return f"{run}-{arm}"


def _mix(home: Path, run: str, arm: str, *, seed: int, quota: int, curated: bool) -> tuple[str, int]:
    """A mix recipe file for one arm, built by `run_mix` (the stage's own entry point)."""
    from factory.mix import run_mix

    dataset = _dataset(run, arm)
    recipe = {
        "kind": "mix", "name": dataset, "seed": seed, "scale": 1.0, "stratify_by": ["source"],
        "dedup_exact": curated,  # the raw arm keeps the teacher's duplicates: they are part of raw output
        "description": f"arm '{arm}' of the curation experiment on run {run}",
        "components": [{"run": run, "quota": quota, "curated": curated}],
        "output": {"dataset": dataset},
    }
    path = home / "recipes" / f"{dataset}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    report = run_mix(str(path))
    return dataset, report.samples


def _train_and_eval(settings: CurationSettings, home: Path, heldout_path: Path, round_: Round, arm: str,
                    source_run: str | None = None) -> Arm:
    from factory.distill import run_distill
    from factory.evaluate import run_eval
    from factory.recipe import load_recipe

    run = source_run or round_.run
    if arm == "raw":
        # The same number of samples as the curated arm, drawn from everything the teacher wrote.
        curated = _arm(round_, "curated").samples
        dataset, samples = _mix(home, run, arm, seed=round_.seed, quota=curated, curated=False)
    else:
        from factory.filter import read_accepted_ids

        accepted = len(read_accepted_ids(RunStore.for_dataset(run)))
        dataset, samples = _mix(home, run, arm, seed=round_.seed, quota=accepted, curated=True)
    student = load_recipe(settings.student_recipe, [f"seed={round_.seed}"], subdir="students")
    out_dir = home / "students" / dataset
    distilled = run_distill(student, data=dataset, output_dir=out_dir, max_steps=settings.steps, progress=False)
    evaluated = run_eval(str(out_dir), str(heldout_path), k=settings.eval_k, temperature=settings.eval_temperature,
                         max_new_tokens=settings.eval_max_new_tokens, seed=round_.seed, batch_size=EVAL_BATCH, output_name=dataset, system_prompt=None)
    log.info("%s: %d samples → pass@1 %.3f", dataset, samples, evaluated.pass_at_1)
    return Arm(arm=arm, seed=round_.seed, generation=round_.generation, dataset=dataset, samples=samples, student=str(out_dir),
               pass_at_1=evaluated.pass_at_1, pass_at_k=evaluated.pass_at_k, train_seconds=distilled.train_seconds,
               trained_tokens=int(distilled.tokens_per_s * distilled.train_seconds))


def _ablation_arm(settings: CurationSettings, home: Path, heldout_path: Path, round_: Round, step: str) -> Arm:
    """The round's samples, filtered by every step but `step`, in a copy of the run (the original keeps its verdicts)."""
    from factory.filter import run_filter

    run = f"{round_.run}-no-{step}"
    _copy_samples(round_.run, run, without_step=step)
    run_filter(run, progress=False)
    return _train_and_eval(settings, home, heldout_path, round_, f"no-{step}", source_run=run)


def _copy_samples(source: str, target: str, *, without_step: str) -> None:
    """A new run with the source's sample shards and its recipe minus one filter step; no verdicts."""
    src, dst = RunStore.for_dataset(source), RunStore.for_dataset(target)
    manifest = src.read_manifest()
    recipe = dict(manifest["recipe"])
    recipe["filters"] = [f for f in recipe.get("filters") or [] if f.get("step") != without_step]
    if dst.exists() and dst.read_manifest().get("recipe", {}).get("filters") == recipe["filters"] \
            and [p.name for p in dst.sample_shards()] == [p.name for p in src.sample_shards()]:
        return  # already copied by an earlier (interrupted) run of the experiment
    if dst.root.exists():
        shutil.rmtree(dst.root)
    dst.samples_dir.mkdir(parents=True)
    for shard in src.sample_shards():
        shutil.copy2(shard, dst.samples_dir / shard.name)
    dst.write_manifest({**manifest, "run": target, "recipe": recipe, "copied_from": source,
                        "overrides": list(manifest.get("overrides") or []) + [f"filters: without {without_step}"]})


def _arm(round_: Round, name: str) -> Arm:
    for arm in round_.arms:
        if arm.arm == name:
            return arm
    raise FactoryError(f"experiment: round {round_.run} has no arm '{name}'")


# ---------------------------------------------------------------- the verdict
def summarize(rounds: list[Round]) -> dict[str, Any]:
    """Per generation and arm: mean and range over seeds; and whether A beats B by more than the spread."""
    by: dict[tuple[int, str], list[float]] = {}
    for r in rounds:
        for arm in r.arms:
            by.setdefault((r.generation, arm.arm), []).append(arm.pass_at_1)
    arms = {f"g{g}/{a}": {"mean": statistics.fmean(v), "min": min(v), "max": max(v), "spread": max(v) - min(v),
                          "stdev": statistics.stdev(v) if len(v) > 1 else 0.0, "seeds": len(v)} for (g, a), v in sorted(by.items())}
    curated, raw = arms.get("g1/curated"), arms.get("g1/raw")
    verdict: dict[str, Any] = {}
    if curated and raw:
        gap = curated["mean"] - raw["mean"]
        spread = max(curated["spread"], raw["spread"])
        deltas = [_arm(r, "curated").pass_at_1 - _arm(r, "raw").pass_at_1 for r in rounds if r.generation == 1]
        verdict = {"gap": gap, "spread": spread, "paired_deltas": deltas, "a_beats_b_beyond_spread": gap > spread and len(deltas) > 1}
    return {"arms": arms, "curated_vs_raw": verdict}


# ---------------------------------------------------------------- tables and the card
def round_table(report: CurationReport) -> list[dict[str, Any]]:
    """One row per seed and generation: the teacher, the yield, the tokens and each arm's score."""
    rows = []
    for r in report.rounds:
        row: dict[str, Any] = {
            "seed": r.seed, "gen": r.generation, "teacher acc": round(r.teacher_accuracy, 3), "generated": r.generated,
            "curated": r.curated, "yield": round(r.curated / r.generated, 3) if r.generated else 0.0, "teacher tokens": r.teacher_tokens,
        }
        for arm in r.arms:
            if arm.arm in ("curated", "raw"):
                key = "A" if arm.arm == "curated" else "B"
                row[f"{key} n"] = arm.samples
                row[f"{key} pass@1"] = round(arm.pass_at_1, 3)
                top = max(arm.pass_at_k, key=int)
                row[f"{key} pass@{top}"] = round(arm.pass_at_k[top], 3)
        rows.append(row)
    return rows


def funnel_table(report: CurationReport, generation: int = 1) -> list[dict[str, Any]]:
    """Per filter step, summed over seeds: how many samples it saw and rejected."""
    steps: dict[str, list[int]] = {}
    for r in report.rounds:
        if r.generation != generation:
            continue
        for s in r.funnel:
            acc = steps.setdefault(s["step"], [0, 0])
            acc[0] += s["candidates"]
            acc[1] += s["rejected"]
    return [{"step": name, "candidates": c, "rejected": x, "rejected %": round(100 * x / c, 1) if c else 0.0} for name, (c, x) in steps.items()]


def ablation_table(report: CurationReport) -> list[dict[str, Any]]:
    rows: dict[str, list[Arm]] = {}
    for r in report.rounds:
        for arm in r.arms:
            if r.generation == 1:
                rows.setdefault(arm.arm, []).append(arm)
    return [{"arm": name, "seeds": len(arms), "samples (mean)": round(statistics.fmean(a.samples for a in arms), 1),
             "pass@1 (mean)": round(statistics.fmean(a.pass_at_1 for a in arms), 3),
             "pass@1 (min..max)": f"{min(a.pass_at_1 for a in arms):.3f}..{max(a.pass_at_1 for a in arms):.3f}"}
            for name, arms in rows.items()]


def markdown_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(none)\n"
    columns = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_card(report: CurationReport, home: Path) -> Path:
    """`<home>/README.md`: the question, the tables, the verdict and plots."""
    plots = _plots(report, home)
    verdict = report.summary.get("curated_vs_raw") or {}
    settings = report.settings
    lines = [
        f"# Curation experiment `{report.name}`",
        "",
        f"Teacher `{settings['teacher']}` → {settings['n']} samples per prompt on {settings['train_prompts']} train prompts "
        f"(+{settings['leaked']} leaked GSM8K test problems) → shipped filters (`recipes/{settings['generate_recipe']}.yaml`) → "
        f"student A on the curated set, student B on as many raw samples (`recipes/students/{settings['student_recipe']}.yaml`, "
        f"{settings['steps']} steps each, same seed) → `factory eval` on {settings['heldout']} held-out problems, k={settings['eval_k']}. "
        f"Seeds {settings['seeds']}.",
        "",
        f"Wall {report.wall_seconds:.0f} s, CPU {report.cpu_seconds:.0f} s (this process and its seed workers); host load average "
        f"(1/5/15 min) {_load(report.load_average.get('start'))} at start, {_load(report.load_average.get('end'))} at end.",
        "",
        "## Per seed and generation",
        "",
        markdown_table(round_table(report)),
        "Held-out pass@1 of the references: " + "; ".join(f"{role} `{ref['model']}` {ref['pass_at_1']:.3f}"
                                                         for role, ref in report.references.items()) + ".",
        "",
        "## Curated (A) vs raw (B), generation 1",
        "",
    ]
    if verdict:
        lines += [
            f"Mean gap A − B: {verdict['gap']:+.3f}; seed-to-seed spread (max range of either arm): {verdict['spread']:.3f}; "
            f"paired deltas per seed: {', '.join(f'{d:+.3f}' for d in verdict['paired_deltas'])}. "
            f"A beats B by more than the spread: **{'yes' if verdict['a_beats_b_beyond_spread'] else 'no'}**.",
            "",
        ]
    lines += ["## Arms (pass@1 over seeds)", "", markdown_table(ablation_table(report)),
              "## Filter funnel, generation 1 (summed over seeds)", "", markdown_table(funnel_table(report, 1))]
    if settings["generations"] > 1:
        lines += ["## Filter funnel, generation 2", "", markdown_table(funnel_table(report, 2))]
    lines += [f"![{p}]({p})" for p in plots]
    path = home / "README.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _load(values: list[float] | None) -> str:
    return "/".join(f"{v:.1f}" for v in values) if values else "?"


def _plots(report: CurationReport, home: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib not installed: experiment card without plots")
        return []
    rows = ablation_table(report)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for i, row in enumerate(rows):
        values = [a.pass_at_1 for r in report.rounds if r.generation == 1 for a in r.arms if a.arm == row["arm"]]
        ax.bar(i, statistics.fmean(values), color="tab:green" if row["arm"] == "curated" else "tab:gray", alpha=0.7)
        ax.scatter([i] * len(values), values, color="black", s=12, zorder=3)
    ax.set_xticks(range(len(rows)), [r["arm"] for r in rows], rotation=30, ha="right")
    ax.set_ylabel("held-out pass@1")
    ax.set_title("students by training set (dots: seeds)")
    fig.tight_layout()
    fig.savefig(home / "arms.png", dpi=110)
    plt.close(fig)
    funnel = funnel_table(report, 1)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.bar([f["step"] for f in funnel], [f["rejected"] for f in funnel], color="tab:red", alpha=0.7)
    ax.set_ylabel("samples rejected (all seeds)")
    ax.set_title("what each filter removed, generation 1")
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(home / "funnel.png", dpi=110)
    plt.close(fig)
    return ["arms.png", "funnel.png"]
