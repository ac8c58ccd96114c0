"""Dataset cards: a Hub-style README (YAML metadata + body) and PNG plots for a run or a mix.

Everything a card says is read from the same DuckDB views `factory sql` queries, so a card never
disagrees with a query. A card names no path of the machine that wrote it: recipes are named by
name (shipped) or by file name, models by their name.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

import duckdb
import yaml

from factory import plots
from factory.errors import FactoryError
from factory.paths import factory_home
from factory.recipe import RecipeError, find_recipe
from factory.store import RunStore, open_run, utc_now

log = logging.getLogger(__name__)

PLOTS_DIR = "plots"
SIZE_CATEGORIES = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                   (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B")]
LANGUAGE_CODE = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]+)?$")

# What each exported column means: the card's lineage section and the viewer's labels.
RUN_COLUMNS = {
    "sample_id": "stable id = hash(recipe hash, prompt id, sample index); the key of every verdict",
    "prompt_id": "the prompt's id in its source (`source/id`)",
    "sample_index": "which of the n samples drawn for the prompt",
    "source": "the recipe's name for the prompt source",
    "task_type": "math, code, logic, general, writing, qa, translation or self_cognition",
    "language": "the source's language",
    "prompt": "the question as the source states it",
    "messages": "chat turns for SFT: system/user prompt, then the assistant's answer with its `reasoning_content`",
    "reasoning": "the teacher's chain of thought (the text inside the think block)",
    "answer": "the teacher's final answer / summary after the reasoning",
    "text": "the teacher's raw output, unparsed",
    "reference": "the source's reference answer, when it has one",
    "run": "the factory run (curation job) the sample comes from",
    "recipe_hash": "hash of every recipe setting that changes what is generated",
    "teacher_role": "r1_zero, rl_1 or v3: which kind of teacher wrote the sample",
    "model": "the teacher model",
    "temperature": "sampling temperature", "top_p": "nucleus sampling cut-off",
    "max_new_tokens": "generation budget", "seed": "sampling seed",
    "finish_reason": "stop = ended on its own, length = hit max_new_tokens",
    "prompt_tokens": "prompt length in teacher tokens", "completion_tokens": "output length in teacher tokens",
    "created_at": "when the sample was generated (UTC)",
}
MIX_COLUMNS = {k: RUN_COLUMNS[k] for k in ("sample_id", "run", "source", "task_type", "teacher_role", "prompt_id", "messages")}


@dataclass
class Card:
    """A card's parts: metadata for the YAML block, the Markdown body, the plots it embeds."""

    name: str
    kind: str  # "run" | "mix"
    license: str
    languages: list[str]
    task_types: list[str]
    rows: int
    body: str
    plots: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- entry points
def write_card(run: str | None = None, mix: str | None = None, out_dir: Path | None = None) -> Path:
    """`factory card`: `<out_dir or $FACTORY_HOME/cards>/<name>/README.md` with its plots; returns the README path."""
    name, _ = _resolve(run, mix)
    target = (out_dir or factory_home() / "cards") / name
    card = build_card(run=run, mix=mix, target=target)
    return save_card(card, target, configs=None)


def build_card(*, run: str | None, mix: str | None, target: Path, con: duckdb.DuckDBPyConnection | None = None) -> Card:
    """Gather the statistics of a run or mix, draw its plots under `target/plots/`, render the body."""
    from factory.sql import connect

    con = con or connect()
    name, store = _resolve(run, mix)
    if store is not None:
        return _run_card(con, store, target)
    return _mix_card(con, name, target)


def save_card(card: Card, target: Path, configs: list[dict[str, Any]] | None) -> Path:
    """README.md = YAML metadata (the Hub's dataset-card fields) + body."""
    metadata: dict[str, Any] = {
        "license": card.license,
        "language": card.languages or None,
        "task_categories": ["text-generation"],
        "size_categories": [size_category(card.rows)],
        "pretty_name": card.name,
        "tags": ["synthetic", "reasoning", "chain-of-thought", "distillation", "factory", *sorted(set(card.task_types))],
    }
    if configs:
        metadata["configs"] = configs
    metadata = {k: v for k, v in metadata.items() if v is not None}
    front = yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True)
    target.mkdir(parents=True, exist_ok=True)
    path = target / "README.md"
    path.write_text(f"---\n{front}---\n\n{card.body}", encoding="utf-8")
    return path


def size_category(rows: int) -> str:
    for bound, label in SIZE_CATEGORIES:
        if rows < bound:
            return label
    return "n>1T"


def public_name(value: str | None) -> str:
    """A model or file as a reader should see it: a local path becomes its last part."""
    if not value:
        return ""
    path = PurePath(value)
    return path.name if path.is_absolute() or value.startswith(("~", "./", "../")) else value


def md(value: Any) -> str:
    """A table cell from data: pipes and newlines would break the Markdown table, backticks its code spans."""
    text = "" if value is None else str(value)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("`", "'").replace("\r", " ").replace("\n", " ")


def _resolve(run: str | None, mix: str | None) -> tuple[str, RunStore | None]:
    if run and mix:
        raise FactoryError("--run and --mix: give one of them")
    if mix:
        from factory.mix import datasets_dir

        if not (datasets_dir() / mix / "manifest.json").exists():
            known = sorted(p.parent.name for p in datasets_dir().glob("*/manifest.json"))
            raise FactoryError(f"--mix {mix}: no such mix in {datasets_dir()} (known: {', '.join(known) or 'none yet'})")
        return mix, None
    store = open_run(run, local_only="card")
    return store.name, store


# ---------------------------------------------------------------- run cards
def _run_card(con: duckdb.DuckDBPyConnection, store: RunStore, target: Path) -> Card:
    manifest = store.read_manifest()
    recipe = manifest.get("recipe") or {}
    name = store.name
    con.execute("CREATE OR REPLACE TEMP TABLE _sel AS SELECT sample_id FROM verdicts WHERE run = ? AND step = 'selection' AND passed", [name])
    con.execute("CREATE OR REPLACE TEMP TABLE _rej AS SELECT DISTINCT sample_id FROM verdicts "
                "WHERE run = ? AND step <> 'selection' AND passed = false", [name])
    generated = _scalar(con, "SELECT count(*) FROM samples WHERE run = ?", [name])
    selected = _scalar(con, "SELECT count(*) FROM _sel")
    by_teacher = con.execute(
        "SELECT coalesce(s.model, '') AS model, s.teacher_role, s.task_type, count(*) AS generated, "
        "count(*) FILTER (WHERE r.sample_id IS NULL) AS passed_filters, count(sel.sample_id) AS selected "
        "FROM samples s LEFT JOIN _rej r USING (sample_id) LEFT JOIN _sel sel USING (sample_id) "
        "WHERE s.run = ? GROUP BY ALL ORDER BY ALL", [name]).fetchall()
    reasons = con.execute(
        "SELECT coalesce(s.model, '') AS model, v.step, coalesce(v.code, '') AS code, count(*) AS n "
        "FROM verdicts v JOIN samples s ON s.sample_id = v.sample_id AND s.run = v.run "
        "WHERE v.run = ? AND v.step <> 'selection' AND v.passed = false GROUP BY ALL ORDER BY n DESC, 1, 2, 3", [name]).fetchall()
    per_prompt = con.execute(
        "SELECT ok, count(*) FROM (SELECT count(*) FILTER (WHERE r.sample_id IS NULL) AS ok FROM samples s "
        "LEFT JOIN _rej r USING (sample_id) WHERE s.run = ? GROUP BY s.prompt_id) GROUP BY ok ORDER BY ok", [name]).fetchall()
    lengths = _length_histogram(con, "SELECT coalesce(length(s.reasoning), 0) AS x, sel.sample_id IS NOT NULL AS kept FROM samples s "
                                     "LEFT JOIN _sel sel USING (sample_id) WHERE s.run = ?", [name])
    languages = con.execute(
        "SELECT coalesce(s.language, 'unknown'), count(*), count(sel.sample_id) FROM samples s LEFT JOIN _sel sel USING (sample_id) "
        "WHERE s.run = ? GROUP BY ALL ORDER BY 2 DESC", [name]).fetchall()
    decontam = con.execute(
        "SELECT coalesce(json_extract_string(detail, '$.benchmark'), '?') AS benchmark, count(*) FROM verdicts "
        "WHERE run = ? AND step = 'decontam' AND passed = false GROUP BY ALL ORDER BY 2 DESC", [name]).fetchall()
    decontam_checked = _scalar(con, "SELECT count(*) FROM verdicts WHERE run = ? AND step = 'decontam'", [name])
    report = _filter_report(store)
    funnel = _funnel_rows(report, generated, selected)

    plot_dir = target / PLOTS_DIR
    drawn = [
        plots.funnel([(step, passed) for step, _, passed, _, _ in funnel], plot_dir / "funnel.png"),
        plots.yield_per_prompt(dict(per_prompt), plot_dir / "yield_per_prompt.png"),
        plots.lengths(*lengths, plot_dir / "lengths.png", label="reasoning length (characters)"),
        plots.grouped_bars([lang for lang, _, _ in languages], {"generated": [g for _, g, _ in languages], "selected": [s for _, _, s in languages]},
                           plot_dir / "languages.png", title="language mix"),
    ]
    if reasons:
        teachers = sorted({public_name(m) or "?" for m, _, _, _ in reasons})
        totals: dict[str, int] = {}
        for _, step, code, n in reasons:
            totals[f"{step}/{code}"] = totals.get(f"{step}/{code}", 0) + n
        shown = set(sorted(totals, key=lambda k: (-totals[k], k))[:9])  # more colours than that cannot be told apart
        stacks: dict[str, list[int]] = {}
        for model, step, code, n in reasons:
            key = f"{step}/{code}" if f"{step}/{code}" in shown else "other"
            stacks.setdefault(key, [0] * len(teachers))[teachers.index(public_name(model) or "?")] += n
        drawn.append(plots.stacked_bars(teachers, stacks, plot_dir / "rejections_by_teacher.png", title="rejection reasons by teacher"))

    license_ = _run_license(recipe)
    langs = sorted({lang for lang, _, _ in languages if LANGUAGE_CODE.match(lang)})
    task_types = sorted({t for _, _, t, _, _, _ in by_teacher})
    teacher = manifest.get("teacher") or {}
    lines = [
        f"# {name}",
        "",
        f"{selected} curated samples from the factory run `{name}`: {recipe.get('description') or 'no description'}",
        "",
        "## Recipe and teachers",
        "",
        f"Recipe `{manifest.get('recipe_name')}` (hash `{manifest.get('recipe_hash')}`, seed {manifest.get('seed')}); "
        f"teacher role `{teacher.get('role')}` on backend `{teacher.get('backend')}` with model `{public_name(teacher.get('model'))}`.",
        f"Sampling: {_sampling(recipe) if teacher.get('backend') != 'replay' else 'imported traces (replay)'}. "
        f"Selection: {_selection(recipe)}. Licence: `{license_}`.",
        f"Run created {manifest.get('created_at')}; card written {utc_now().isoformat(timespec='seconds')}.",
        "",
        "Reproduce:",
        "",
        "```",
        f"factory generate --recipe {recipe_argument(manifest.get('recipe_file'))} {' '.join(manifest.get('overrides') or [])}".rstrip(),
        f"factory filter --run {name}",
        f"factory export --run {name} --out {name}",
        "```",
        "",
        "## Filter funnel",
        "",
        "| step | in | passed | rejected | unverifiable |",
        "|---|---:|---:|---:|---:|",
        *[f"| {md(step)} | {_n(cand)} | {_n(passed)} | {_n(rej)} | {_n(unv)} |" for step, cand, passed, rej, unv in funnel],
        "",
        "![filter funnel](plots/funnel.png)",
        "",
        "## Yield per teacher and task type",
        "",
        "| teacher | role | task type | generated | passed every filter | selected | yield |",
        "|---|---|---|---:|---:|---:|---:|",
        *[f"| {md(public_name(m))} | {md(role)} | {md(t)} | {g} | {p} | {s} | {s / g:.1%} |" for m, role, t, g, p, s in by_teacher if g],
        "",
        "![yield per prompt](plots/yield_per_prompt.png)",
        "",
        "## Rejection reasons",
        "",
        "| teacher | step | reason | samples |",
        "|---|---|---|---:|",
        *([f"| {md(public_name(m))} | {md(step)} | {md(code)} | {n} |" for m, step, code, n in reasons[:30]] or ["| | | none | 0 |"]),
        "",
        *(["![rejection reasons by teacher](plots/rejections_by_teacher.png)", ""] if reasons else []),
        "## Lengths and languages",
        "",
        "![reasoning length, generated vs selected](plots/lengths.png)",
        "",
        "| language | generated | selected |",
        "|---|---:|---:|",
        *[f"| {md(lang)} | {g} | {s} |" for lang, g, s in languages],
        "",
        "![language mix](plots/languages.png)",
        "",
        "## Decontamination",
        "",
        _decontam_text(recipe, decontam, decontam_checked),
        "",
        "## Columns (lineage)",
        "",
        "| column | meaning |",
        "|---|---|",
        *[f"| `{col}` | {md(text)} |" for col, text in RUN_COLUMNS.items()],
        "",
        "Each sample's verdicts (every filter step, with its reason) stay in the factory store, keyed by `sample_id`:",
        f"`factory sql \"SELECT step, passed, code, reason FROM verdicts WHERE sample_id = '...'\"` or `factory view --run {name}`.",
        "",
        _limitations(),
        "",
        "Package versions: " + ", ".join(f"{k} {v}" for k, v in (manifest.get("versions") or {}).items()),
        "",
    ]
    return Card(name, "run", license_, langs, task_types, selected, "\n".join(lines), drawn)


def _funnel_rows(report: dict[str, Any] | None, generated: int, selected: int) -> list[tuple[str, Any, Any, Any, Any]]:
    rows: list[tuple[str, Any, Any, Any, Any]] = [("generated", None, generated, None, None)]
    for s in (report or {}).get("steps", []):
        rows.append((s.get("step"), s.get("candidates"), s.get("passed"), s.get("rejected"), s.get("unverifiable")))
    rows.append(("selected", None, selected, None, None))
    return rows


def _decontam_text(recipe: dict[str, Any], hits: list[tuple[str, int]], checked: int) -> str:
    step = next((f for f in recipe.get("filters") or [] if f.get("step") == "decontam"), None)
    if step is None:
        return "This run's recipe has no `decontam` step: samples were **not** checked against benchmarks."
    extra = [PurePath(p).name for p in step.get("benchmarks") or []]
    bench = "GSM8K test, MATH-500, AIME24, AMC23 and HumanEval (shipped copies)" + (f", plus {', '.join(extra)}" if extra else "")
    fields = ", ".join(step.get("fields") or ["prompt", "text"])
    removed = sum(n for _, n in hits)
    lines = [f"{checked} samples were checked against {bench} by word n-gram overlap "
             f"(n = {step.get('n', 13)}, capped per benchmark field; fields: {fields}); {removed} were removed."]
    if hits:
        lines += ["", "| benchmark | hits removed |", "|---|---:|", *[f"| {md(b)} | {n} |" for b, n in hits]]
    return "\n".join(lines)


def _limitations() -> str:
    return "\n".join([
        "## Known limitations",
        "",
        "- Teacher outputs are synthetic: a verified final answer does not make every reasoning step right.",
        "- Correctness is checked by rule verifiers (math answers, code tests) where a task has them; other task types",
        "  rely on the format/language/readability filters and, when the recipe has one, an LLM judge.",
        "- Decontamination catches verbatim and lightly edited n-gram overlap, not paraphrases.",
        "- The teacher model's licence and terms of use apply to its outputs in addition to the licence above.",
    ])


def _sampling(recipe: dict[str, Any]) -> str:
    s = recipe.get("sampling") or {}
    return ", ".join(f"{k} {s[k]}" for k in ("n", "temperature", "top_p", "max_new_tokens") if k in s) or "defaults"


def _selection(recipe: dict[str, Any]) -> str:
    s = recipe.get("selection") or {}
    return f"k = {s.get('k', 1)} per prompt, {s.get('policy', 'shortest')}"


def _run_license(recipe: dict[str, Any]) -> str:
    if recipe.get("license"):
        return str(recipe["license"])
    licenses = {s.get("license") for s in recipe.get("sources") or []}
    if len(licenses) == 1 and None not in licenses:
        return str(licenses.pop())
    return "other" if licenses - {None} else "unknown"


def _filter_report(store: RunStore) -> dict[str, Any] | None:
    path = store.root / "filter_report.json"
    return json.loads(path.read_text()) if path.exists() else None


# ---------------------------------------------------------------- mix cards
def _mix_card(con: duckdb.DuckDBPyConnection, name: str, target: Path) -> Card:
    from factory.mix import datasets_dir
    from factory.paths import runs_dir

    manifest = json.loads((datasets_dir() / name / "manifest.json").read_text())
    recipe = manifest.get("recipe") or {}
    composition = con.execute(
        "SELECT run, task_type, coalesce(source, '') AS source, count(*) FROM mixes WHERE dataset = ? GROUP BY ALL ORDER BY ALL", [name]).fetchall()
    rows = sum(n for *_, n in composition)
    joined = "FROM mixes m LEFT JOIN samples s ON s.sample_id = m.sample_id AND s.run = m.run WHERE m.dataset = ?"
    languages = dict(con.execute(f"SELECT coalesce(s.language, 'unknown'), count(*) {joined} GROUP BY ALL ORDER BY 2 DESC", [name]).fetchall())
    lengths = _length_histogram(con, f"SELECT coalesce(length(s.reasoning), 0) AS x, true AS kept {joined}", [name])
    runs = sorted({r for r, *_ in composition})
    task_types = sorted({t for _, t, _, _ in composition})
    plot_dir = target / PLOTS_DIR
    drawn = [
        plots.grouped_bars(runs, {t: [sum(n for r, tt, _, n in composition if r == run and tt == t) for run in runs] for t in task_types},
                           plot_dir / "composition.png", title="samples per run and task type"),
        plots.lengths(lengths[0], lengths[1], [0] * len(lengths[1]), plot_dir / "lengths.png", label="reasoning length (characters)",
                      names=("mixed", "")),
        plots.grouped_bars(list(languages), {"samples": list(languages.values())}, plot_dir / "languages.png", title="language mix"),
    ]
    run_licenses = set()
    funnels = []
    for comp in manifest.get("components") or []:
        store = RunStore(runs_dir() / comp["run"])
        if store.exists():
            run_manifest = store.read_manifest()
            run_licenses.add(_run_license(run_manifest.get("recipe") or {}))
            report = _filter_report(store)
            steps = " → ".join(f"{s['step']} {s['passed']}" for s in (report or {}).get("steps", []))
            funnels.append(f"- `{comp['run']}` (recipe `{run_manifest.get('recipe_name')}`, teacher "
                           f"`{public_name((run_manifest.get('teacher') or {}).get('model'))}`): "
                           f"generated {(run_manifest.get('counts') or {}).get('samples', '?')} → {steps or 'not filtered'} → "
                           f"selected {(report or {}).get('selected', '?')}")
    license_ = str(recipe.get("license") or (run_licenses.pop() if len(run_licenses) == 1 else "other" if run_licenses else "unknown"))
    lines = [
        f"# {name}",
        "",
        f"A training mix of {rows} samples from {len(runs)} curated factory run(s): {recipe.get('description') or 'no description'}",
        "",
        "## Recipe",
        "",
        f"Mix recipe `{manifest.get('recipe_name')}` (hash `{manifest.get('recipe_hash')}`, seed {manifest.get('seed')}, "
        f"scale {recipe.get('scale')}), stratified by {', '.join(recipe.get('stratify_by') or [])}. Licence: `{license_}`.",
        "",
        "```",
        f"factory mix --recipe {recipe_argument(manifest.get('recipe_file'))}",
        f"factory export --mix {name} --out {name}",
        "```",
        "",
        "| run | quota | curated | taken |",
        "|---|---:|---:|---:|",
        *[f"| {md(c['run'])} | {c['quota']} | {c['available']} | {c['taken']} |" for c in manifest.get("components") or []],
        "",
        "## Composition",
        "",
        "| run | task type | source | samples |",
        "|---|---|---|---:|",
        *[f"| {md(r)} | {md(t)} | {md(s)} | {n} |" for r, t, s, n in composition],
        "",
        "![composition](plots/composition.png)",
        "",
        "## Component runs (filter funnels)",
        "",
        *(funnels or ["- none found in this store"]),
        "",
        "Each run has its own card: `factory card --run RUN`.",
        "",
        "## Lengths and languages",
        "",
        "![lengths](plots/lengths.png)",
        "",
        "![language mix](plots/languages.png)",
        "",
        "## Columns (lineage)",
        "",
        "| column | meaning |",
        "|---|---|",
        *[f"| `{col}` | {md(text)} |" for col, text in MIX_COLUMNS.items()],
        "",
        _limitations(),
        "",
    ]
    langs = sorted(lang for lang in languages if LANGUAGE_CODE.match(lang))
    return Card(name, "mix", license_, langs, task_types, rows, "\n".join(lines), drawn)


# ---------------------------------------------------------------- helpers
def recipe_argument(recipe_file: str | None) -> str:
    """The recipe as a reader should type it: its name when `--recipe NAME` finds this very file (a shipped
    recipe), else its file name (a path relative to the recipe's directory): never a path of this machine."""
    if not recipe_file:
        return "RECIPE"
    path = Path(recipe_file)
    try:
        if find_recipe(path.stem) == path.resolve():
            return path.stem
    except RecipeError:
        pass
    return path.name


def _length_histogram(con: duckdb.DuckDBPyConnection, rows_query: str, params: list[Any], bins: int = 30) -> tuple[list[float], list[int], list[int]]:
    """Bin edges and counts (all rows, kept rows) computed in DuckDB: memory does not grow with the run."""
    low, high = con.execute(f"SELECT min(x), max(x) FROM ({rows_query})", params).fetchone()
    low, high = float(low or 0), float(high or 0)
    width = (high - low) / bins if high > low else 1.0
    edges = [low + i * width for i in range(bins + 1)]
    counts = con.execute(
        f"SELECT least(CAST(floor((x - ?) / ?) AS INTEGER), {bins - 1}) AS b, count(*), count(*) FILTER (WHERE kept) "
        f"FROM ({rows_query}) GROUP BY b", [low, width, *params]).fetchall()
    everything, kept = [0] * bins, [0] * bins
    for b, n, k in counts:
        everything[b], kept[b] = n, k
    return edges, everything, kept


def _scalar(con: duckdb.DuckDBPyConnection, query: str, params: list[Any] | None = None) -> int:
    return int(con.execute(query, params or []).fetchone()[0])


def _n(value: Any) -> str:
    return "" if value is None else str(value)
