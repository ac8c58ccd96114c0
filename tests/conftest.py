"""Shared fixtures: tiny models built once per checkout, an isolated FACTORY_HOME per test."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Models are built once (about a minute) and reused by every test and test session.
MODELS_HOME = Path(os.environ.get("FACTORY_TEST_MODELS_HOME", REPO / ".factory")).resolve()


@pytest.fixture(scope="session")
def tiny_models_dir() -> Path:
    env = {**os.environ, "FACTORY_HOME": str(MODELS_HOME)}
    # In a subprocess: the build's file lock and environment stay out of the test process.
    subprocess.run(
        [sys.executable, "-c", "from factory.models import ensure_model; ensure_model('tiny-r1')"],
        check=True, env=env, cwd=REPO,
    )
    return MODELS_HOME / "models"


@pytest.fixture
def factory_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_models_dir: Path) -> Path:
    """A fresh FACTORY_HOME whose models/ points at the shared tiny models; cwd is the temp dir."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "models").symlink_to(tiny_models_dir, target_is_directory=True)
    monkeypatch.setenv("FACTORY_HOME", str(home))
    monkeypatch.chdir(tmp_path)
    return home


def run_cli(*args: str, home: Path, timeout: float = 600, check: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The real `factory` CLI in a subprocess (as a user runs it)."""
    env = {**os.environ, "FACTORY_HOME": str(home), "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "cli", *args], capture_output=True, text=True, env=env, timeout=timeout, cwd=cwd or REPO,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"factory {' '.join(args)} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc
