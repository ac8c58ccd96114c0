"""Read-only DuckDB SQL over the store.

Views:
  samples       every generated sample of every run (lineage columns included)
  verdicts      the latest verdict per (sample_id, step), with its run
  verdicts_all  every verdict row ever written (recomputations included)
  runs          one row per run, from the manifests
  mixes         the rows of every mixed training set (`factory mix`)
  evals         per-problem results of `factory eval`

The connection cannot write or reach outside the store: after the views are
made, DuckDB is told to read only the store's own files (`allowed_paths`),
external access, extension installs and autoloading are off, and the
configuration is locked so no statement can turn them back on. Only a SELECT
(or an EXPLAIN of one) is run; results leave through `export_sql`, which the
CLI's `--out` calls, never through SQL.

Runs on an object store (`--store s3://…`) are read by pyarrow (datasets over the
committed shards, registered with DuckDB), not by DuckDB's httpfs: the connection
itself still reaches nothing outside the local files it is allowed.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from factory.errors import FactoryError
from factory.paths import factory_home, runs_location
from factory.store import SAMPLE_SCHEMA, VERDICT_SCHEMA, RunStore, list_runs

VIEWS = "samples, verdicts, verdicts_all, runs, mixes, evals"
EXPORT_FORMATS = (".parquet", ".csv", ".json", ".jsonl")
EXPLAIN_OPTIONS = ("ANALYZE", "ANALYSE")


@dataclass
class QueryResult:
    columns: list[str]
    rows: list[tuple[Any, ...]]

    def to_dicts(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row)) for row in self.rows]


def connect(home: Path | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with the store's views; nothing is copied or converted."""
    home = home or factory_home()
    # No extension is fetched or loaded behind the user's back (read_parquet('https://…') must not install httpfs).
    con = duckdb.connect(":memory:", config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    runs = list_runs(runs_location(home))
    remote = [r for r in runs if r.filesystem is not None]
    runs = [r for r in runs if r.filesystem is None]
    sample_files = [str(p) for r in runs for p in r.sample_shards()]
    verdict_files = [str(p) for r in runs for step in r.verdict_steps() for p in r.verdict_shards(step)]
    if remote:  # a store on S3 &c.: its runs, read through pyarrow
        _object_store_views(con, remote)
        runs = remote
    else:
        _samples_view(con, runs)
    if not remote and verdict_files:
        con.execute(
            "CREATE VIEW verdicts_all AS SELECT regexp_extract(filename, '/([^/]+)/verdicts/[^/]+/[^/]+$', 1) AS run, * EXCLUDE (filename) "
            f"FROM read_parquet({_sql_list(verdict_files)}, filename=true, union_by_name=true)"
        )
    elif not remote:
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
    _lock_down(con, sample_files + verdict_files + mix_files + eval_files)
    return con


def _object_store_views(con: duckdb.DuckDBPyConnection, runs: list[RunStore]) -> None:
    """samples and verdicts_all over runs on an object store: pyarrow datasets of their committed shards."""
    import pyarrow.dataset as ds

    samples, verdicts = [], []
    for number, run in enumerate(runs):
        name = run.name.replace("'", "''")
        shards = run.sample_shards()
        if shards:
            con.register(f"_samples_{number}", ds.dataset(shards, schema=SAMPLE_SCHEMA, format="parquet",
                                                          filesystem=run.filesystem))
            scan = f"SELECT * FROM _samples_{number}"
            if not _holds_each_id_once(run, shards):
                scan += " QUALIFY row_number() OVER (PARTITION BY sample_id ORDER BY created_at) = 1"
            samples.append(f"({scan})")
        shards = [s for step in run.verdict_steps() for s in run.verdict_shards(step)]
        if shards:
            con.register(f"_verdicts_{number}", ds.dataset(shards, schema=VERDICT_SCHEMA, format="parquet",
                                                           filesystem=run.filesystem))
            verdicts.append(f"SELECT '{name}' AS run, * FROM _verdicts_{number}")
    if samples:
        con.execute("CREATE VIEW samples AS " + " UNION ALL BY NAME ".join(samples))
    else:
        _parquet_view(con, "samples", [], SAMPLE_SCHEMA)
    if verdicts:
        con.execute("CREATE VIEW verdicts_all AS " + " UNION ALL ".join(verdicts))
    else:
        con.register("_verdicts_empty", VERDICT_SCHEMA.empty_table().add_column(0, "run", pa.array([], pa.string())))
        con.execute("CREATE VIEW verdicts_all AS SELECT * FROM _verdicts_empty")


def _lock_down(con: duckdb.DuckDBPyConnection, store_files: list[str]) -> None:
    """From here on the connection reads the store's files and nothing else, and writes nothing."""
    if store_files:
        con.execute("SET allowed_paths = ?", [store_files])
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")


def _samples_view(con: duckdb.DuckDBPyConnection, runs: list[RunStore]) -> None:
    """One row per sample_id, even if a run (e.g. written by two writers before runs were locked) holds it twice.

    Hiding duplicates costs a pass over every sample_id, so it is paid only
    for runs that may hold them: a run whose shards hold exactly as many rows
    (Parquet footers) as its manifest counted distinct ids is read as is. In a
    run that may hold duplicates the first written copy is kept (a window
    partitioned by sample_id, so a filter on sample_id still prunes early).
    """
    clean, suspect = [], []
    for run in runs:
        shards = [str(p) for p in run.sample_shards()]
        (clean if _holds_each_id_once(run, shards) else suspect).extend(shards)
    if not clean and not suspect:
        _parquet_view(con, "samples", [], SAMPLE_SCHEMA)
        return
    parts = []
    if clean:
        parts.append(f"SELECT * FROM read_parquet({_sql_list(clean)}, union_by_name=true)")
    if suspect:
        scan = f"read_parquet({_sql_list(suspect)}, union_by_name=true, filename=true, file_row_number=true)"
        parts.append(f"(SELECT * EXCLUDE (filename, file_row_number) FROM {scan} "
                     "QUALIFY row_number() OVER (PARTITION BY sample_id ORDER BY created_at, filename, file_row_number) = 1)")
    con.execute("CREATE VIEW samples AS " + " UNION ALL BY NAME ".join(parts))


def _holds_each_id_once(run: RunStore, shards: list[str]) -> bool:
    import pyarrow.parquet as pq

    try:
        counts = run.read_manifest().get("counts") or {}
        rows = sum(pq.read_metadata(shard, filesystem=run.filesystem).num_rows for shard in shards)
    except (FactoryError, OSError, pa.ArrowException):
        return False
    distinct = counts.get("unique_sample_ids", counts.get("samples"))  # replay imports count distinct ids as samples
    return isinstance(distinct, int) and distinct == rows


def run_sql(query: str, home: Path | None = None) -> QueryResult:
    """Run one read-only statement; anything that could write is refused with a one-line error."""
    con = connect(home)
    check_read_only(con, query)
    try:
        cursor = con.execute(query)
        rows = cursor.fetchall()
        columns = [d[0] for d in cursor.description]
    except duckdb.Error as exc:
        raise FactoryError(f"sql: {_first_line(exc)}; views: {VIEWS}") from None
    return QueryResult(columns, rows)


def export_sql(query: str, out: Path, home: Path | None = None, batch_rows: int = 65536) -> int:
    """Write the result of one read-only query to `out` (.parquet, .csv, .json or .jsonl); returns the row count.

    The file is written by pyarrow here, batch by batch, under a temporary
    name and renamed when complete: an error leaves no partial file.
    """
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in EXPORT_FORMATS:
        raise FactoryError(f"--out {out}: expected a file ending in {', '.join(EXPORT_FORMATS)}")
    home = (home or factory_home()).resolve()
    target = out.expanduser().resolve()
    if target.is_relative_to(home / "runs"):
        raise FactoryError(f"--out {out}: inside the store ({home / 'runs'}); the store is written only by generate and filter")
    if target.is_dir():
        raise FactoryError(f"--out {out}: is a directory; expected a file path")
    if not target.parent.is_dir():
        raise FactoryError(f"--out {out}: directory {target.parent} does not exist")
    con = connect(home)
    check_read_only(con, query)
    tmp = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        try:
            reader = con.sql(query).to_arrow_reader(batch_rows)
            rows = _write_batches(reader, tmp, suffix)
        except duckdb.Error as exc:
            raise FactoryError(f"sql: {_first_line(exc)}; views: {VIEWS}") from None
        except pa.ArrowException as exc:
            raise FactoryError(f"--out {out}: cannot write this result as {suffix} ({_first_line(exc)})") from None
        except OSError as exc:
            raise FactoryError(f"--out {out}: cannot write ({exc.strerror or exc})") from None
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return rows


def _write_batches(reader: pa.RecordBatchReader, path: Path, suffix: str) -> int:
    rows = 0
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        with pq.ParquetWriter(path, reader.schema, compression="zstd") as writer:
            for batch in reader:
                writer.write_batch(batch)
                rows += batch.num_rows
        return rows
    if suffix == ".csv":
        import pyarrow.csv as pcsv

        schema = pa.schema([pa.field(f.name, pa.string()) if pa.types.is_nested(f.type) else f for f in reader.schema])
        with pcsv.CSVWriter(path, schema) as writer:
            for batch in reader:
                writer.write_batch(_nested_as_json(batch, schema))
                rows += batch.num_rows
        return rows
    with open(path, "w", encoding="utf-8") as handle:
        # .json: one array (what `--format json` prints); .jsonl: one object per line.
        opening, separator, closing = ("[", ",\n", "]\n") if suffix == ".json" else ("", "\n", "\n")
        handle.write(opening)
        for batch in reader:
            for row in batch.to_pylist():
                if rows:
                    handle.write(separator)
                handle.write(json.dumps(row, default=str, ensure_ascii=False))
                rows += 1
        handle.write(closing if rows or suffix == ".json" else "")
    return rows


def _nested_as_json(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """CSV has no lists or structs: such cells become JSON text (as `--format json` writes them)."""
    columns = [
        pa.array([None if v is None else json.dumps(v, default=str, ensure_ascii=False) for v in column.to_pylist()], pa.string())
        if pa.types.is_nested(column.type) else column
        for column in batch.columns
    ]
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def check_read_only(con: duckdb.DuckDBPyConnection, query: str) -> None:
    """Exactly one statement, and it reads: SELECT (WITH, FROM, SHOW, DESCRIBE, SUMMARIZE), or EXPLAIN of one.

    Decided by DuckDB's parser, not by the first word: `EXPLAIN ANALYZE COPY …`
    runs the COPY, so an EXPLAIN is checked by what it explains.
    """
    try:
        statements = con.extract_statements(query)
    except duckdb.Error as exc:
        raise FactoryError(f"sql: {_first_line(exc)}") from None
    if len(statements) != 1:
        raise FactoryError(f"sql: expected exactly one statement, got {len(statements)}")
    kind = statements[0].type
    if kind == duckdb.StatementType.EXPLAIN:
        check_read_only(con, _explained(query))
    elif kind != duckdb.StatementType.SELECT:
        raise FactoryError(f"sql: only read-only queries (SELECT/WITH/EXPLAIN SELECT) are allowed, got {kind.name}; "
                           "use --out FILE to export a result")


def _explained(query: str) -> str:
    """The statement an EXPLAIN [ANALYZE] [(options)] runs, found with DuckDB's tokenizer."""
    tokens = duckdb.tokenize(query)
    index = 1  # token 0 is EXPLAIN
    while index < len(tokens) and _token_text(query, tokens, index).upper() in EXPLAIN_OPTIONS:
        index += 1
    if index < len(tokens) and _token_text(query, tokens, index) == "(":
        depth = 0
        while index < len(tokens):
            text = _token_text(query, tokens, index)
            depth += text.count("(") - text.count(")")
            index += 1
            if depth <= 0:
                break
    return query[tokens[index][0]:] if index < len(tokens) else ""


def _token_text(query: str, tokens: list[tuple[int, Any]], index: int) -> str:
    end = tokens[index + 1][0] if index + 1 < len(tokens) else len(query)
    return query[tokens[index][0]:end].strip()


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
        report = run.read_json("filter_report.json") or {}
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
            "path": run.location,
        })
    schema = pa.schema([("run", pa.string()), ("recipe", pa.string()), ("recipe_hash", pa.string()), ("teacher_role", pa.string()),
                        ("backend", pa.string()), ("model", pa.string()), ("seed", pa.int64()), ("samples", pa.int64()),
                        ("selected", pa.int64()), ("created_at", pa.string()), ("updated_at", pa.string()), ("path", pa.string())])
    return pa.Table.from_pylist(rows, schema=schema)


def _sql_list(files: list[str]) -> str:
    return "[" + ", ".join("'" + f.replace("'", "''") + "'" for f in files) + "]"


def _first_line(exc: Exception) -> str:
    line = str(exc).strip().splitlines()[0]
    if isinstance(exc, duckdb.PermissionException):
        return f"{line} (`factory sql` reads the store's views only, not other files or URLs)"
    return line
