"""Where the factory keeps its things: FACTORY_HOME, models, runs, recipes."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent
DATA_DIR = PACKAGE_DIR / "data"
BENCHMARKS_DIR = DATA_DIR / "benchmarks"
PROMPTS_DIR = DATA_DIR / "prompts"


def is_uri(location: str | Path) -> bool:
    """A filesystem URI other than a local file: s3://bucket/prefix, gs://…, memory://… (file:// is a path)."""
    text = str(location)
    return "://" in text and not text.startswith("file://")


def local_path(location: str | Path) -> Path:
    text = str(location)
    return Path(text[len("file://"):] if text.startswith("file://") else text).expanduser().resolve()


def factory_home() -> Path:
    """FACTORY_HOME, defaulting to ./.factory so a demo never writes outside the cwd.

    FACTORY_HOME may be a URI (s3://bucket/prefix): then only the runs live there (see
    `runs_location`); models, mixes and evals, which their tools read as local files, stay in ./.factory."""
    home = os.environ.get("FACTORY_HOME", ".factory")
    return local_path(".factory" if is_uri(home) else home)


def runs_location(home: Path | None = None) -> Path | str:
    """Where the runs are: FACTORY_STORE (`--store`), else FACTORY_HOME/runs; a local Path or a URI."""
    store = os.environ.get("FACTORY_STORE")
    if store:
        return store.rstrip("/") if is_uri(store) else local_path(store)
    env_home = os.environ.get("FACTORY_HOME", "")
    if home is None and is_uri(env_home):
        return env_home.rstrip("/") + "/runs"
    return (home or factory_home()) / "runs"


def models_dir() -> Path:
    return factory_home() / "models"


def runs_dir() -> Path:
    """The local runs directory (`runs_location` when that is local; stages that read only local runs use it)."""
    location = runs_location()
    return location if isinstance(location, Path) else factory_home() / "runs"


def recipes_dirs() -> list[Path]:
    """Recipe search path: ./recipes first (a user's own), then the shipped ones."""
    dirs = [Path.cwd() / "recipes", REPO_DIR / "recipes"]
    unique: list[Path] = []
    for d in dirs:
        if d.is_dir() and d.resolve() not in unique:
            unique.append(d.resolve())
    return unique
