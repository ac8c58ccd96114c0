"""The plots of a dataset card, as PNG files: counts in, one picture out per function.

Each function takes plain counts (gathered by `factory.cards` from the DuckDB views) and writes one
PNG; a card embeds them by relative path. matplotlib runs headless (Agg) and every figure is closed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, target: Path) -> str:
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(target, dpi=100)
    _pyplot().close(fig)
    return target.name


def funnel(steps: Sequence[tuple[str, int]], target: Path) -> str:
    """One bar per stage: generated, every filter step's passed count, selected."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.4))
    names = [s for s, _ in steps]
    counts = [n for _, n in steps]
    bars = ax.bar(range(len(names)), counts, color="#4c72b0")
    ax.bar_label(bars, labels=[str(n) for n in counts], fontsize=8)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylabel("samples")
    ax.set_title("filter funnel: samples left after each step")
    return _save(fig, target)


def yield_per_prompt(prompts_by_accepted: dict[int, int], target: Path) -> str:
    """How many prompts had 0, 1, 2, ... samples pass every filter step (0 = the prompt yields nothing)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    xs = sorted(prompts_by_accepted)
    ax.bar(xs, [prompts_by_accepted[x] for x in xs], color="#55a868", width=0.85)
    ax.set_xticks(range(0, max(xs, default=0) + 1))
    ax.set_xlabel("samples per prompt that passed every filter step")
    ax.set_ylabel("prompts")
    ax.set_title("yield per prompt")
    return _save(fig, target)


def lengths(edges: Sequence[float], generated: Sequence[int], selected: Sequence[int], target: Path, *, label: str,
            names: tuple[str, str] = ("generated", "selected")) -> str:
    """Length histograms (counts per bin) on the same bins, so generated and selected compare directly."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    widths = np.diff(np.asarray(edges, dtype=float))
    ax.bar(edges[:-1], generated, width=widths, align="edge", alpha=0.55, color="#4c72b0", label=f"{names[0]} ({sum(generated)})")
    if any(selected):
        ax.bar(edges[:-1], selected, width=widths, align="edge", alpha=0.85, color="#dd8452", label=f"{names[1]} ({sum(selected)})")
    ax.set_xlabel(label)
    ax.set_ylabel("samples")
    ax.legend()
    ax.set_title(f"length: {' vs '.join(n for n in names if n)}")
    return _save(fig, target)


def grouped_bars(groups: Sequence[str], series: dict[str, Sequence[int]], target: Path, *, title: str, ylabel: str = "samples") -> str:
    """Bars per group, one colour per series (language mix: generated vs selected)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    width = 0.8 / max(len(series), 1)
    x = np.arange(len(groups))
    for i, (name, values) in enumerate(series.items()):
        ax.bar(x + i * width - 0.4 + width / 2, values, width, label=name)
    ax.set_xticks(x, groups, rotation=30 if len(groups) > 4 else 0, ha="right" if len(groups) > 4 else "center")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    return _save(fig, target)


def stacked_bars(groups: Sequence[str], stacks: dict[str, Sequence[int]], target: Path, *, title: str) -> str:
    """One bar per group split into stacks (rejection reasons by teacher)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    bottom = np.zeros(len(groups))
    for name, values in stacks.items():
        ax.bar(range(len(groups)), values, bottom=bottom, label=name)
        bottom += np.asarray(values, dtype=float)
    ax.set_xticks(range(len(groups)), groups, rotation=15 if len(groups) > 2 else 0)
    ax.set_ylabel("rejected samples")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return _save(fig, target)
