"""Dataset cards: a Markdown page per run with lineage, counts, the filter funnel and plots."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from factory.filter import read_accepted_ids
from factory.recipe import RecipeError, find_recipe
from factory.store import RunStore, open_run, utc_now

log = logging.getLogger(__name__)


def write_card(run: str | None, out_dir: Path) -> Path:
    """Write `<out_dir>/<run>/README.md` (+ PNG plots) and return its path."""
    store = open_run(run)
    manifest = store.read_manifest()
    table = store.read_samples(["sample_id", "task_type", "source", "completion_tokens", "finish_reason", "text"])
    rows = table.to_pylist()
    selected = set(read_accepted_ids(store))
    target = out_dir / store.name
    target.mkdir(parents=True, exist_ok=True)
    plots = _plots(rows, selected, target)
    report = _filter_report(store)
    text = _render(store, manifest, rows, selected, report, plots)
    (target / "README.md").write_text(text, encoding="utf-8")
    return target / "README.md"


def _filter_report(store: RunStore) -> dict[str, Any] | None:
    path = store.root / "filter_report.json"
    return json.loads(path.read_text()) if path.exists() else None


def _plots(rows: list[dict[str, Any]], selected: set[str], target: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib not installed: card without plots")
        return []
    lengths = [r["completion_tokens"] or 0 for r in rows]
    kept = [r["completion_tokens"] or 0 for r in rows if r["sample_id"] in selected]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    bins = 30
    ax.hist(lengths, bins=bins, alpha=0.6, label="generated")
    if kept:
        ax.hist(kept, bins=bins, alpha=0.8, label="selected")
    ax.set_xlabel("completion tokens")
    ax.set_ylabel("samples")
    ax.legend()
    fig.tight_layout()
    fig.savefig(target / "lengths.png", dpi=110)
    plt.close(fig)
    return ["lengths.png"]


def _render(store: RunStore, manifest: dict[str, Any], rows: list[dict[str, Any]], selected: set[str],
            report: dict[str, Any] | None, plots: list[str]) -> str:
    teacher = manifest.get("teacher") or {}
    versions = manifest.get("versions") or {}
    lengths = sorted(r["completion_tokens"] or 0 for r in rows)
    median = lengths[len(lengths) // 2] if lengths else 0
    by_task: dict[str, list[int]] = {}
    for r in rows:
        counts = by_task.setdefault(r["task_type"], [0, 0])
        counts[0] += 1
        counts[1] += r["sample_id"] in selected
    lines = [
        f"# Dataset card: `{store.name}`",
        "",
        f"Recipe `{manifest.get('recipe_name')}` (hash `{manifest.get('recipe_hash')}`, seed {manifest.get('seed')}), "
        f"teacher role `{teacher.get('role')}` on backend `{teacher.get('backend')}` with model `{teacher.get('model')}`.",
        f"Created {manifest.get('created_at')}; card written {utc_now().isoformat(timespec='seconds')}.",
        "",
        "## Counts",
        "",
        "| | samples |",
        "|---|---:|",
        f"| generated | {len(rows)} |",
        f"| truncated (hit max_new_tokens) | {sum(1 for r in rows if r['finish_reason'] == 'length')} |",
        f"| selected | {len(selected)} |",
        f"| median completion tokens | {median} |",
        "",
        "| task type | generated | selected |",
        "|---|---:|---:|",
        *[f"| {task} | {n} | {k} |" for task, (n, k) in sorted(by_task.items())],
        "",
    ]
    if report:
        lines += ["## Filter funnel", "", "| step | in | passed | rejected | unverifiable |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {s['step']} | {s['candidates']} | {s['passed']} | {s['rejected']} | {s['unverifiable']} |" for s in report["steps"]]
        lines += ["", "Top rejection reasons:", ""]
        lines += [f"- `{step}` / `{code}`: {n}" for step, code, n in report["top_reasons"]] or ["- none"]
        lines.append("")
    for plot in plots:
        lines += [f"![{plot}]({plot})", ""]
    lines += [
        "## Lineage and reproduction",
        "",
        "Every sample carries `sample_id` = hash(recipe, prompt id, sample index), its prompt, source, teacher and",
        "sampling settings; verdicts live in `verdicts/<step>/` keyed by `sample_id`. Reproduce with:",
        "",
        "```",
        f"factory generate --recipe {_recipe_argument(manifest.get('recipe_file'))} {' '.join(manifest.get('overrides') or [])}".rstrip(),
        f"factory filter --run {store.name}",
        "```",
        "",
        "Package versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
        "",
    ]
    return "\n".join(lines)


def _recipe_argument(recipe_file: str | None) -> str:
    """The recipe as a reader should type it: its name when `--recipe NAME` finds this very
    file (a shipped recipe, so no path of the machine that wrote the card), else its path."""
    if not recipe_file:
        return "RECIPE"
    path = Path(recipe_file)
    try:
        if find_recipe(path.stem) == path.resolve():
            return path.stem
    except RecipeError:
        pass
    return recipe_file
