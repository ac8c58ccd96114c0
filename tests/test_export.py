"""`factory export` and `factory card`: a Hub dataset folder that `datasets` loads and whose card metadata parses."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import run_cli


def replay_run(tmp_path: Path, home: Path, *, name: str = "traces", per_task: int = 6, extra_filters: str = "") -> Path:
    """A curated run without any model: traces from two teachers (one named by a local path), math and logic tasks."""
    rows = []
    for i in range(per_task):
        for task in ("math", "logic"):
            right = i % 3 != 0  # every third answer is wrong: rejected by correctness
            answer = i + 2 if right else i + 3
            rows.append({
                "id": f"{task}-{i}", "kind": task, "answer": str(i + 2),
                "problem": f"What is {i} plus two? ({task} item {i}, asked about widget number {i * 7})",
                "generation": f"<think>\nWe add {i} and 2 carefully for {task} item {i}; step {i * 11}.\n</think>\n\n"
                              f"The result is \\boxed{{{answer}}}.",
                "teacher": str(tmp_path / "models" / "teacher-a") if i % 2 else "teacher-b",
            })
    (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = tmp_path / f"{name}.yaml"
    recipe.write_text(
        f"kind: generate\nname: {name}\ndescription: replayed arithmetic traces\nlicense: apache-2.0\n"
        "teacher:\n  role: rl_1\n  backend: replay\n  model: some-r1\n"
        f"  replay:\n    path: {name}.jsonl\n"
        "    fields: {prompt_id: id, prompt: problem, generation: generation, reference: answer, task_type: kind, model: teacher}\n"
        "filters:\n  - step: format\n  - step: correctness\n  - step: decontam\n" + extra_filters +
        f"output: {{dataset: {name}}}\n"
    )
    run_cli("generate", "--recipe", str(recipe), "--quiet", home=home)
    run_cli("filter", "--run", name, "--quiet", home=home)
    return recipe


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A FACTORY_HOME for tests that need no model."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("FACTORY_HOME", str(home))
    monkeypatch.setenv("COLUMNS", "200")
    return home


def _selected(home: Path, run: str) -> list[str]:
    rows = json.loads(run_cli("sql", f"SELECT sample_id FROM verdicts WHERE run = '{run}' AND step = 'selection' AND passed",
                              "--format", "json", home=home).stdout)
    return sorted(r["sample_id"] for r in rows)


def test_export_run_loads_with_datasets_and_card_metadata_parses(home: Path, tmp_path: Path) -> None:
    import datasets
    from huggingface_hub import DatasetCard

    replay_run(tmp_path, home)
    selected = _selected(home, "traces")
    assert selected  # the fixture is meant to select something
    out = tmp_path / "exported"
    proc = run_cli("export", "--run", "traces", "--out", str(out), home=home)
    assert "load_dataset" in proc.stdout

    loaded = datasets.load_dataset(str(out), split="train", cache_dir=str(tmp_path / "hf_cache"))
    assert sorted(loaded["sample_id"]) == selected
    assert set(loaded["task_type"]) == {"math", "logic"}
    assert loaded[0]["messages"][-1]["role"] == "assistant" and loaded[0]["messages"][-1]["reasoning_content"]
    math_only = datasets.load_dataset(str(out), "math", split="train", cache_dir=str(tmp_path / "hf_cache"))
    assert set(math_only["task_type"]) == {"math"} and 0 < len(math_only) < len(loaded)

    card = DatasetCard.load(out / "README.md")
    meta = card.data.to_dict()
    assert meta["license"] == "apache-2.0"  # from the recipe
    assert meta["language"] == ["en"] and meta["task_categories"] == ["text-generation"]
    assert meta["size_categories"] == ["n<1K"]
    assert {"default", "math", "logic"} == {c["config_name"] for c in meta["configs"]}
    assert "logic" in meta["tags"] and "synthetic" in meta["tags"]
    for heading in ("## Recipe and teachers", "## Filter funnel", "## Yield per teacher and task type", "## Rejection reasons",
                    "## Decontamination", "## Columns (lineage)", "## Known limitations"):
        assert heading in card.text
    assert "wrong_answer" in card.text  # the reason every third trace was rejected
    assert "teacher-a" in card.text and "teacher-b" in card.text
    for png in ("funnel", "yield_per_prompt", "lengths", "languages", "rejections_by_teacher"):
        assert (out / "plots" / f"{png}.png").stat().st_size > 1000
        assert f"(plots/{png}.png)" in card.text
    assert "factory generate --recipe traces.yaml" in card.text  # by file name, relative to the recipe's directory

    # No path of this machine anywhere: not in the card, not in the data (the teacher was named by a local path).
    for path in out.rglob("*"):
        if path.is_file():
            assert str(tmp_path).encode() not in path.read_bytes(), path
    assert set(loaded["model"]) <= {"teacher-a", "teacher-b"}


def test_export_shards_by_size_and_replaces_an_old_export(home: Path, tmp_path: Path) -> None:
    import datasets

    replay_run(tmp_path, home, per_task=30)
    out = tmp_path / "exported"
    run_cli("export", "--run", "traces", "--out", str(out), "--shard-mb", "0.0001", home=home)
    shards = sorted(p.relative_to(out).as_posix() for p in (out / "data").rglob("*.parquet"))
    math_shards = [s for s in shards if s.startswith("data/math/")]
    assert len(math_shards) > 1
    assert math_shards[-1].endswith(f"-of-{len(math_shards):05d}.parquet")
    rows = sum(pq.ParquetFile(out / s).metadata.num_rows for s in shards)
    assert rows == len(_selected(home, "traces")) == datasets.load_dataset(str(out), split="train", cache_dir=str(tmp_path / "hf_cache")).num_rows
    # A second export replaces the folder whole: no shard of the first one is left behind.
    run_cli("export", "--run", "traces", "--out", str(out), home=home)
    assert len(list((out / "data" / "math").glob("*.parquet"))) == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".exported")]


def test_export_bad_input_is_one_line(home: Path, tmp_path: Path) -> None:
    replay_run(tmp_path, home)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    (tmp_path / "repo" / ".git").mkdir(parents=True)  # a clone with a README is not an export to replace
    (tmp_path / "repo" / "README.md").write_text("# my project\n")
    for args, expected in ((["--run", "nope", "--out", str(tmp_path / "x")], "--run nope"),
                           (["--mix", "nope", "--out", str(tmp_path / "x")], "--mix nope"),
                           (["--run", "traces", "--out", str(tmp_path / "busy")], "--out"),
                           (["--run", "traces", "--out", str(tmp_path / "repo")], "holds other files"),
                           (["--run", "traces", "--mix", "m", "--out", str(tmp_path / "x")], "one of them")):
        proc = run_cli("export", *args, home=home, check=False)
        assert proc.returncode == 2, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and expected in proc.stderr
    assert not (tmp_path / "x").exists()
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    assert (tmp_path / "repo" / "README.md").read_text() == "# my project\n" and (tmp_path / "repo" / ".git").is_dir()


def test_export_mix_and_mix_card(home: Path, tmp_path: Path) -> None:
    import datasets
    from huggingface_hub import DatasetCard

    replay_run(tmp_path, home)
    (tmp_path / "mix.yaml").write_text("kind: mix\nname: m\nseed: 1\ndescription: one run\ncomponents:\n"
                                       "  - {run: traces, quota: 100}\noutput: {dataset: m}\n")
    run_cli("mix", "--recipe", str(tmp_path / "mix.yaml"), home=home)
    out = tmp_path / "m_hf"
    run_cli("export", "--mix", "m", "--out", str(out), home=home)
    loaded = datasets.load_dataset(str(out), split="train", cache_dir=str(tmp_path / "hf_cache"))
    assert sorted(loaded["sample_id"]) == _selected(home, "traces")
    meta = DatasetCard.load(out / "README.md").data.to_dict()
    assert meta["license"] == "apache-2.0"  # inherited from the component run's recipe
    proc = run_cli("card", "--mix", "m", home=home, cwd=tmp_path)
    card = home / "cards" / "m" / "README.md"
    assert str(card) in proc.stdout.replace("\n", "")
    assert "## Composition" in card.read_text() and (home / "cards" / "m" / "plots" / "composition.png").exists()


def test_card_goes_to_factory_home_not_the_current_directory(home: Path, tmp_path: Path) -> None:
    replay_run(tmp_path, home)
    work = tmp_path / "work"
    work.mkdir()
    run_cli("card", "--run", "traces", home=home, cwd=work)
    assert not list(work.iterdir())
    text = (home / "cards" / "traces" / "README.md").read_text()
    assert text.startswith("---\n") and "license: apache-2.0" in text
    assert "configs" not in text  # a card alone points at no data files
