"""Recipe validation: every kind of bad input is one line naming file, line and key; exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from factory.errors import RecipeError
from factory.recipe import GenerateRecipe, MixRecipe, StudentRecipe, load_recipe, recipe_hash
from tests.conftest import REPO, run_cli

VALID = """\
kind: generate
name: tiny
sources:
  - name: arith
    path: prompts.jsonl
    fields: {id: id, prompt: problem, reference: answer}
teacher:
  role: r1_zero
  backend: transformers
  model: tiny-r1
sampling:
  n: 2
  max_new_tokens: 16
filters:
  - step: format
  - step: language
    min_share: 0.9
output: {dataset: tiny}
"""


@pytest.fixture
def recipe_dir(tmp_path: Path) -> Path:
    rows = [{"id": f"p{i}", "problem": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(3)]
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path


def write(recipe_dir: Path, text: str) -> Path:
    path = recipe_dir / "r.yaml"
    path.write_text(text)
    return path


def error_of(path: Path, overrides: list[str] | None = None) -> str:
    with pytest.raises(RecipeError) as info:
        load_recipe(str(path), overrides)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_valid_recipe_loads_and_hash_is_stable(recipe_dir: Path) -> None:
    path = write(recipe_dir, VALID)
    recipe = load_recipe(str(path))
    assert isinstance(recipe, GenerateRecipe)
    assert recipe.teacher.role == "r1_zero" and recipe.sampling.n == 2
    assert recipe_hash(recipe) == recipe_hash(load_recipe(str(path)))
    # Throughput knobs do not change what is generated; sampling does.
    assert recipe_hash(load_recipe(str(path), ["teacher.transformers.batch_size=4"])) == recipe_hash(recipe)
    assert recipe_hash(load_recipe(str(path), ["sampling.n=3"])) != recipe_hash(recipe)


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("  n: 2\n", "  n: 2\n  colour: blue\n", ["r.yaml:13:", "sampling.colour", "unknown key"]),
        ("  n: 2\n", "  n: many\n", ["r.yaml:12:", "sampling.n", "integer"]),
        ("  role: r1_zero\n", "  role: r2\n", ["r.yaml:8:", "teacher.role", "r1_zero"]),
        ("    path: prompts.jsonl\n", "    path: nowhere.jsonl\n", ["r.yaml:5:", "sources[0].path", "file not found"]),
        ("output: {dataset: tiny}\n", "", ["output", "missing required key"]),
        ("  - step: format\n", "  - step: sparkle\n", ["filters[0]", "unknown filter 'sparkle'"]),
        ("    min_share: 0.9\n", "    min_share: 1.5\n", ["filters[1]", "min_share"]),
        ("  backend: transformers\n", "  backend: carrier-pigeon\n", ["teacher.backend"]),
        ("sampling:\n", "sampling: [\n", ["invalid YAML"]),
    ],
)
def test_bad_recipe_is_one_line_naming_the_key(recipe_dir: Path, old: str, new: str, expected: list[str]) -> None:
    assert old in VALID
    message = error_of(write(recipe_dir, VALID.replace(old, new, 1)))
    for fragment in expected:
        assert fragment in message, (fragment, message)


def test_bad_override_names_the_override(recipe_dir: Path) -> None:
    path = write(recipe_dir, VALID)
    assert error_of(path, ["sampling.temperature=9"]).startswith("override 'sampling.temperature=9': sampling.temperature:")
    assert error_of(path, ["sampling={n: many}"]).startswith("override 'sampling={n: many}': sampling.n:")
    assert error_of(path, ["sampling.colour=blue"]).startswith("override 'sampling.colour=blue': sampling.colour: unknown key")
    assert error_of(path, ["sources.0.path=nowhere.jsonl"]).startswith("override 'sources.0.path=nowhere.jsonl': sources[0].path: file not found")
    assert error_of(path, ["filters.1.min_share=1.5"]).startswith("override 'filters.1.min_share=1.5': filters[1].min_share")
    assert "KEY.PATH=VALUE" in error_of(path, ["sampling.n"])
    # An override that is fine leaves other errors pointing at the file's line.
    broken = write(recipe_dir, VALID.replace("  n: 2\n", "  n: many\n", 1))
    assert "r.yaml:12: sampling.n" in error_of(broken, ["sampling.temperature=0.5"])


def test_unknown_recipe_name_lists_the_known_ones() -> None:
    with pytest.raises(RecipeError, match="cold_start"):
        load_recipe("no_such_recipe")


def test_shipped_recipes_are_valid() -> None:
    for name in ("cold_start", "reasoning", "non_reasoning"):
        assert isinstance(load_recipe(name), GenerateRecipe)
    assert isinstance(load_recipe("sft_mix"), MixRecipe)
    for student in ("qwen", "llama"):
        assert isinstance(load_recipe(student, subdir="students"), StudentRecipe)
    roles = {load_recipe(n).teacher.role for n in ("cold_start", "reasoning", "non_reasoning")}
    assert roles == {"r1_zero", "rl_1", "v3"}


def test_cli_bad_recipe_exit_code_2_without_traceback(recipe_dir: Path, tmp_path: Path) -> None:
    path = write(recipe_dir, VALID.replace("  role: r1_zero\n", "  role: teacher_of_doom\n"))
    proc = run_cli("generate", "--recipe", str(path), home=tmp_path / "home", check=False)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "teacher.role" in lines[0] and str(path) in lines[0]
    assert not (tmp_path / "home" / "runs").exists()  # nothing written for a rejected recipe


def test_empty_prompt_file_is_one_line(recipe_dir: Path, tmp_path: Path) -> None:
    (recipe_dir / "prompts.jsonl").write_text("")
    proc = run_cli("generate", "--recipe", str(write(recipe_dir, VALID)), home=tmp_path / "home", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "no rows" in proc.stderr and "prompts.jsonl" in proc.stderr


def test_missing_prompt_field_names_row_and_field(recipe_dir: Path, tmp_path: Path) -> None:
    (recipe_dir / "prompts.jsonl").write_text(json.dumps({"id": "a", "question": "hi"}) + "\n")
    proc = run_cli("generate", "--recipe", str(write(recipe_dir, VALID)), home=tmp_path / "home", check=False)
    assert proc.returncode == 2
    assert "row 1" in proc.stderr and "'problem'" in proc.stderr


def test_repo_layout() -> None:
    for name in ("pyproject.toml", "factory", "recipes", "verifiers", "cli.py", "tests", "data_cards", "benchmarks"):
        assert (REPO / name).exists(), name


@pytest.mark.parametrize(("step", "setting", "expected"), [
    ("correctness", "code_timeout_s: 0", "code_timeout_s: expected seconds in (0, 600]"),
    ("correctness", "memory_mb: 8", "memory_mb: expected an integer >= 64"),
    ("correctness", "workers: 0", "workers: expected an integer >= 1"),
    ("correctness", "unsafe_no_sandbox: maybe", "unsafe_no_sandbox: expected true or false"),
    ("correctness", "colour: blue", "colour: unknown setting for step 'correctness'"),
    ("judge", "max_new_tokens: lots", "max_new_tokens: expected an integer >= 1"),
    ("judge", "min_score: true", "min_score: expected a number in [0, 10]"),
    ("judge", "applies_to: some", "applies_to: expected 'unverified' or 'all'"),
])
def test_bad_step_settings_are_one_line(recipe_dir: Path, step: str, setting: str, expected: str) -> None:
    path = write(recipe_dir, VALID.replace("output:", f"  - {{step: {step}, {setting}}}\noutput:", 1))
    message = error_of(path)
    assert "filters[2]." in message and expected in message, message
