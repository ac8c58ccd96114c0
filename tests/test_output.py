"""What the CLI prints: data verbatim in every table (no rich markup, no emoji codes), --version."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from factory.output import kv_table, make_console, rows_table
from tests.conftest import run_cli
from tests.test_export import replay_run

TRICKY = ["x = a[i] + b[j]", "list[int]", "a:x:b", "[/INST]", "[bold]not bold[/bold]", ":thumbs_up:"]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # A home whose path itself reads as markup and an emoji code: every printed path must survive.
    home = tmp_path / "h[i]:x:"
    home.mkdir()
    monkeypatch.setenv("FACTORY_HOME", str(home))
    monkeypatch.setenv("COLUMNS", "250")
    return home


def test_sql_table_prints_values_verbatim(home: Path) -> None:
    query = "SELECT " + ", ".join(f"'{v}' AS c{i}" for i, v in enumerate(TRICKY))
    proc = run_cli("sql", query, home=home)
    for value in TRICKY:
        assert value in proc.stdout, (value, proc.stdout)
    assert "👍" not in proc.stdout and "❌" not in proc.stdout


def test_error_quoting_markup_is_one_line(home: Path) -> None:
    proc = run_cli("sql", "SELECT * FROM \"[/INST]\"", home=home, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "MarkupError" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "[/INST]" in proc.stderr


def test_paths_and_funnel_print_verbatim(home: Path, tmp_path: Path) -> None:
    replay_run(tmp_path, home)
    proc = run_cli("generate", "--recipe", str(tmp_path / "traces.yaml"), "--quiet", home=home)
    assert "h[i]:x:" in proc.stdout.replace("\n", "").replace("│", "").replace(" ", "")
    proc = run_cli("filter", "--run", "traces", "--quiet", home=home)
    assert "wrong_answer" in proc.stdout
    proc = run_cli("card", "--run", "traces", home=home)
    assert str(home / "cards" / "traces" / "README.md") in proc.stdout.replace("\n", "")


def _rendered(table) -> str:
    console: Console = make_console()
    with console.capture() as capture:
        console.print(table, width=250)
    return capture.get()


def test_tables_render_data_verbatim() -> None:
    """The helpers behind every CLI table (eval, mix, funnel reasons, summaries), markup in title, header and cell."""
    text = _rendered(rows_table("eval [i]x[/i] :x:", ["model[1]", "pass@1"], [[v, 0.5] for v in TRICKY]))
    for value in [*TRICKY, "eval [i]x[/i] :x:", "model[1]"]:
        assert value in text
    text = _rendered(kv_table("summary [b]", {v: v for v in TRICKY} | {"floats": 0.123456, "lists": ["[a]", ":x:"]}))
    for value in [*TRICKY, "summary [b]", "0.1235", json.dumps(["[a]", ":x:"])]:
        assert value in text
    # A rich console made the default way (as before) loses them: the test above can fail.
    plain = Console(width=250)
    with plain.capture() as capture:
        plain.print("x = a[i] + b[j]")
    assert "[i]" not in capture.get()


def test_version() -> None:
    from factory import __version__

    proc = run_cli("--version", home=Path("/nonexistent"))
    assert proc.stdout.strip() == f"factory {__version__}"


def test_distill_prints_a_loss_line_every_few_steps_and_q_only_the_summary(factory_home: Path, tmp_path: Path) -> None:
    """No trainer dict per step, no dependency bars: one display with a few loss lines; -q: the summary only."""
    from factory.distill import write_demo_dataset

    data = write_demo_dataset(tmp_path / "sft", 40, seed=3, system_share=0.0)
    settings = ["max_seq_len=200", "batch_size=2", "learning_rate=3e-3", "warmup_ratio=0.0", "save_steps=100"]
    loud = run_cli("distill", "--student", "qwen", "--data", str(data), "--max-steps", "20", "-o", str(tmp_path / "a"),
                   *settings, home=factory_home)
    loss_lines = [line for line in loud.stderr.splitlines() if line.startswith("step ") and " loss " in line]
    assert 2 <= len(loss_lines) <= 11 and loss_lines[-1].startswith("step 20/20"), loud.stderr
    for output in (loud.stdout, loud.stderr):
        assert "{'loss'" not in output and "'grad_norm'" not in output and "it/s]" not in output  # no trainer dicts, no tqdm
    assert "loss (first → last, min)" in loud.stdout and "loss_curve" not in loud.stdout
    quiet = run_cli("distill", "--student", "qwen", "--data", str(data), "--max-steps", "4", "-o", str(tmp_path / "b"), "-q",
                    *settings, home=factory_home)
    assert "step " not in quiet.stderr and "━" not in quiet.stderr and "it/s" not in quiet.stderr, quiet.stderr
    assert "distill →" in quiet.stdout and "loss (first → last, min)" in quiet.stdout


def test_eval_says_where_results_went_and_takes_a_backend(factory_home: Path) -> None:
    proc = run_cli("eval", "--model", "tiny-r1", "--bench", "gsm8k", "--limit", "2", "-k", "1", "--max-new-tokens", "8",
                   "--backend", "transformers", home=factory_home)
    results = factory_home / "evals" / "tiny-r1-gsm8k" / "results.parquet"
    assert results.exists() and str(results) in proc.stdout.replace("\n", "")
    assert "eval tiny-r1 · gsm8k" in proc.stderr  # its progress display
    bad = run_cli("eval", "--model", "tiny-r1", "--backend", "tensorflow", home=factory_home, check=False)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "--backend" in bad.stderr
