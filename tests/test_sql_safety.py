"""`factory sql` reads the store and nothing else: no writes, no files or URLs outside it, one row per sample_id."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from factory.store import RunStore
from tests.conftest import run_cli
from tests.store_builders import duplicate_first_shard, make_run, tree_digest


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    make_run(home)
    return home


def _refused(proc) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: sql"), proc.stderr
    return lines[0]


@pytest.mark.parametrize("query", [
    "EXPLAIN ANALYZE COPY (SELECT 1) TO '{cwd}/x.csv'",
    "EXPLAIN (FORMAT json) COPY (SELECT 1) TO '{cwd}/x.csv'",
    "COPY (SELECT 1) TO '{cwd}/x.csv'",
    "COPY samples TO '{samples}/part-999999-evil0000.parquet'",
    "EXPLAIN ANALYZE COPY samples TO '{samples}/part-999999-evil0000.parquet'",
    "CREATE TABLE t AS SELECT 1",
    "ATTACH '{cwd}/x.duckdb' AS x",
    "SET enable_external_access = true",
    "INSTALL httpfs",
    "SELECT 1; COPY (SELECT 1) TO '{cwd}/x.csv'",
])
def test_statements_that_write_are_refused(home: Path, tmp_path: Path, query: str) -> None:
    before = tree_digest(home)
    samples = home / "runs" / "toy" / "samples"
    proc = run_cli("sql", query.format(cwd=tmp_path, samples=samples), home=home, check=False, cwd=tmp_path)
    _refused(proc)
    assert tree_digest(home) == before
    assert not list(tmp_path.glob("x.*"))


@pytest.mark.parametrize("query", [
    "SELECT * FROM read_text('/etc/passwd')",
    "SELECT * FROM read_csv('/etc/passwd', sep=':')",
    "SELECT * FROM glob('/etc/*')",
    "SELECT * FROM read_parquet('https://example.invalid/data.parquet')",
    "SELECT * FROM read_parquet('{home}/runs/toy/manifest.json')",
])
def test_reading_outside_the_store_is_refused(home: Path, query: str) -> None:
    started = time.monotonic()
    line = _refused(run_cli("sql", query.format(home=home), home=home, check=False))
    assert "reads the store's views only" in line
    assert time.monotonic() - started < 30  # no extension download attempted


def test_explain_of_a_select_and_describe_still_work(home: Path) -> None:
    for query in ("EXPLAIN SELECT count(*) FROM samples", "EXPLAIN ANALYZE SELECT count(*) FROM samples",
                  "DESCRIBE samples", "SUMMARIZE samples", "WITH t AS (SELECT 1 AS x) SELECT * FROM t"):
        run_cli("sql", query, "--format", "json", home=home)


def test_views_show_each_sample_id_once_for_a_store_with_duplicates(home: Path) -> None:
    duplicate_first_shard(RunStore(home / "runs" / "toy"))
    raw = pq.read_table(home / "runs" / "toy" / "samples").num_rows
    assert raw == 12  # the files hold every sample twice
    row = json.loads(run_cli("sql", "SELECT count(*) AS n, count(DISTINCT sample_id) AS ids, count(DISTINCT text) AS texts "
                             "FROM samples", "--format", "json", home=home).stdout)[0]
    assert row == {"n": 6, "ids": 6, "texts": 6}
    joined = json.loads(run_cli("sql", "SELECT count(*) AS n FROM samples s JOIN samples t USING (sample_id)",
                                "--format", "json", home=home).stdout)[0]["n"]
    assert joined == 6


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".json", ".jsonl"])
def test_out_exports_a_result_file(home: Path, tmp_path: Path, suffix: str) -> None:
    out = tmp_path / f"result{suffix}"
    query = "SELECT sample_id, prompt, completion_tokens, [{'role': 'user', 'content': prompt}] AS messages FROM samples ORDER BY sample_id"
    proc = run_cli("sql", query, "--out", str(out), home=home)
    assert "6 rows written" in proc.stderr
    if suffix == ".parquet":
        rows = pq.read_table(out).to_pylist()
    elif suffix == ".csv":
        rows = list(csv.DictReader(out.open()))
        rows = [{**r, "completion_tokens": int(r["completion_tokens"]), "messages": json.loads(r["messages"])} for r in rows]
    elif suffix == ".json":
        rows = json.loads(out.read_text())
    else:
        rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["sample_id"] for r in rows] == [f"toy-{i:04d}" for i in range(6)]
    assert rows[2]["completion_tokens"] == 12 and rows[2]["messages"] == [{"role": "user", "content": "Compute 2 + 1."}]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left


def test_out_refuses_the_store_and_unknown_formats(home: Path, tmp_path: Path) -> None:
    before = tree_digest(home)
    for target, expected in [(home / "runs" / "toy" / "samples" / "part-999999-x.parquet", "inside the store"),
                             (tmp_path / "result.txt", "expected a file ending in"),
                             (tmp_path / "missing" / "result.csv", "does not exist")]:
        proc = run_cli("sql", "SELECT * FROM samples", "--out", str(target), home=home, check=False)
        assert proc.returncode == 2 and expected in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
        assert not target.exists()
    proc = run_cli("sql", "SELECT * FROM nosuchview", "--out", str(tmp_path / "r.parquet"), home=home, check=False)
    assert proc.returncode == 2 and "nosuchview" in proc.stderr and not (tmp_path / "r.parquet").exists()
    assert tree_digest(home) == before
