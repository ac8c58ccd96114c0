"""Where the factory keeps its things: FACTORY_HOME, models, runs, recipes."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent
DATA_DIR = PACKAGE_DIR / "data"
BENCHMARKS_DIR = DATA_DIR / "benchmarks"
PROMPTS_DIR = DATA_DIR / "prompts"


def factory_home() -> Path:
    """FACTORY_HOME, defaulting to ./.factory so a demo never writes outside the cwd."""
    return Path(os.environ.get("FACTORY_HOME", ".factory")).expanduser().resolve()


def models_dir() -> Path:
    return factory_home() / "models"


def runs_dir() -> Path:
    return factory_home() / "runs"


def recipes_dirs() -> list[Path]:
    """Recipe search path: ./recipes first (a user's own), then the shipped ones."""
    dirs = [Path.cwd() / "recipes", REPO_DIR / "recipes"]
    unique: list[Path] = []
    for d in dirs:
        if d.is_dir() and d.resolve() not in unique:
            unique.append(d.resolve())
    return unique
