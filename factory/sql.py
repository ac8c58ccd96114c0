"""Read-only DuckDB SQL over the store.

Views:
  samples       every generated sample of every run (lineage columns included)
  verdicts      the latest verdict per (sample_id, step), with its run
  verdicts_all  every verdict row ever written (recomputations included)
  runs          one row per run, from the manifests
  mixes         the rows of every mixed training set (`factory mix`)
  evals         per-problem results of `factory eval`
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from factory.errors import FactoryError
from factory.paths import factory_home
from factory.store import SAMPLE_SCHEMA, VERDICT_SCHEMA, list_runs, visible_shards

READ_ONLY_STATEMENTS = {"SELECT", "EXPLAIN"}


@dataclass
class QueryResult:
    columns: list[str]
    rows: list[tuple[Any, ...]]

    def to_dicts(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row)) for row in self.rows]


def connect(home: Path | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with the store's views; nothing is copied or converted."""
    home = home or factory_home()
    con = duckdb.connect(":memory:")
    runs = list_runs(home / "runs")
    sample_files = [str(p) for r in runs for p in r.sample_shards()]
    _parquet_view(con, "samples", sample_files, SAMPLE_SCHEMA)
    verdict_files = [str(p) for r in runs for step in r.verdict_steps() for p in visible_shards(r.verdict_dir(step))]
    if verdict_files:
        con.execute(
            "CREATE VIEW verdicts_all AS SELECT regexp_extract(filename, '/runs/([^/]+)/verdicts/', 1) AS run, * EXCLUDE (filename) "
            f"FROM read_parquet({_sql_list(verdict_files)}, filename=true, union_by_name=true)"
        )
    else:
        empty = VERDICT_SCHEMA.empty_table().add_column(0, "run", pa.array([], pa.string()))
        con.register("_verdicts_empty", empty)
        con.execute("CREATE VIEW verdicts_all AS SELECT * FROM _verdicts_empty")
    con.execute(
        "CREATE VIEW verdicts AS SELECT * FROM verdicts_all "
        "QUALIFY row_number() OVER (PARTITION BY run, sample_id, step ORDER BY created_at DESC) = 1"
    )
    con.register("_runs", _runs_table(runs))
    con.execute("CREATE VIEW runs AS SELECT * FROM _runs")
    mix_files = sorted(str(p) for p in (home / "datasets").glob("*/data/part-*.parquet"))
    _parquet_view(con, "mixes", mix_files, None, dataset_from=r"/datasets/([^/]+)/data/")
    eval_files = sorted(str(p) for p in (home / "evals").glob("*/results.parquet"))
    _parquet_view(con, "evals", eval_files, None, dataset_from=r"/evals/([^/]+)/results")
    return con


def run_sql(query: str, home: Path | None = None) -> QueryResult:
    """Run one read-only statement; anything that could write is refused with a one-line error."""
    con = connect(home)
    try:
        statements = con.extract_statements(query)
    except duckdb.Error as exc:
        raise FactoryError(f"sql: {_first_line(exc)}") from None
    if len(statements) != 1:
        raise FactoryError(f"sql: expected exactly one statement, got {len(statements)}")
    kind = statements[0].type.name
    if kind not in READ_ONLY_STATEMENTS:
        raise FactoryError(f"sql: only read-only queries (SELECT/WITH/EXPLAIN) are allowed, got {kind}")
    try:
        cursor = con.execute(query)
        rows = cursor.fetchall()
        columns = [d[0] for d in cursor.description]
    except duckdb.Error as exc:
        raise FactoryError(f"sql: {_first_line(exc)}; views: samples, verdicts, verdicts_all, runs, mixes, evals") from None
    return QueryResult(columns, rows)


def _parquet_view(con: duckdb.DuckDBPyConnection, name: str, files: list[str], schema: pa.Schema | None, dataset_from: str | None = None) -> None:
    if files:
        extra = f"regexp_extract(filename, '{dataset_from}', 1) AS dataset, * EXCLUDE (filename)" if dataset_from else "*"
        filename = ", filename=true" if dataset_from else ""
        con.execute(f"CREATE VIEW {name} AS SELECT {extra} FROM read_parquet({_sql_list(files)}, union_by_name=true{filename})")
        return
    table = schema.empty_table() if schema is not None else pa.table({"dataset": pa.array([], pa.string())})
    con.register(f"_{name}_empty", table)
    con.execute(f"CREATE VIEW {name} AS SELECT * FROM _{name}_empty")


def _runs_table(runs) -> pa.Table:
    rows = []
    for run in runs:
        manifest = run.read_manifest()
        teacher = manifest.get("teacher") or {}
        filtered = (run.root / "filter_report.json").exists()
        report = json.loads((run.root / "filter_report.json").read_text()) if filtered else {}
        rows.append({
            "run": run.name,
            "recipe": manifest.get("recipe_name"),
            "recipe_hash": manifest.get("recipe_hash"),
            "teacher_role": teacher.get("role"),
            "backend": teacher.get("backend"),
            "model": teacher.get("model"),
            "seed": manifest.get("seed"),
            "samples": (manifest.get("counts") or {}).get("samples"),
            "selected": report.get("selected"),
            "created_at": manifest.get("created_at"),
            "updated_at": manifest.get("updated_at"),
            "path": str(run.root),
        })
    schema = pa.schema([("run", pa.string()), ("recipe", pa.string()), ("recipe_hash", pa.string()), ("teacher_role", pa.string()),
                        ("backend", pa.string()), ("model", pa.string()), ("seed", pa.int64()), ("samples", pa.int64()),
                        ("selected", pa.int64()), ("created_at", pa.string()), ("updated_at", pa.string()), ("path", pa.string())])
    return pa.Table.from_pylist(rows, schema=schema)


def _sql_list(files: list[str]) -> str:
    return "[" + ", ".join("'" + f.replace("'", "''") + "'" for f in files) + "]"


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0]
