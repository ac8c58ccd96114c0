"""File-level dedup and decontamination for any JSONL/Parquet dataset (behind `factory dedup` /
`factory decontaminate`).

One streaming pass over the file: the main process reads record batches (Parquet
``iter_batches`` or JSONL lines) and hands them to worker processes, which tokenise each
field once and return only small arrays (exact keys, MinHash signatures, benchmark hits).
At most ``2 × workers`` batches are in flight, so memory is the sketches (~530 bytes a row
at 128 permutations), not the text. Clusters are resolved at the end
(:class:`verifiers.dedup.Deduplicator`) and one verdict row per input row is written to
``out_path`` (``.parquet`` or ``.jsonl``).
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter, deque
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Iterator, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from factory.errors import FactoryError
from factory.paths import BENCHMARKS_DIR
from verifiers.decontam import BenchmarkIndex, Contamination
from verifiers.dedup import (DedupParams, Deduplicator, Sketch, TokenBatch, resolve_workers, sketch_tokens,
                             tokenize_batch)

__all__ = ["dedup_file", "decontaminate_file", "dedup_decontaminate_file", "read_batches"]

log = logging.getLogger(__name__)

ID_CANDIDATES = ("sample_id", "id")
BATCH_ROWS = 2_000


# ------------------------------------------------------------------ reading

def _inputs(path: Path | str | Sequence[Path | str]) -> list[Path]:
    """One file, a directory of shards (sorted), or a list of shards."""
    if isinstance(path, (str, Path)):
        path = Path(path)
        if path.is_dir():
            shards = sorted(p for p in path.iterdir() if p.suffix in (".parquet", ".jsonl"))
            if not shards:
                raise FactoryError(f"{path}: no .parquet or .jsonl files in this directory")
            return shards
        return [path]
    return [Path(p) for p in path]


def _check_input(path: Path) -> None:
    if not path.is_file():
        raise FactoryError(f"{path}: no such file")
    if path.suffix not in (".parquet", ".jsonl"):
        raise FactoryError(f"{path}: expected a .parquet or .jsonl file, got {path.suffix or 'no suffix'!r}")
    if path.suffix == ".parquet":
        from factory.sources import open_parquet

        open_parquet(path)  # not Parquet: one line now, not a traceback from a worker later


def _columns(path: Path) -> list[str]:
    if path.suffix == ".parquet":
        return list(pq.ParquetFile(path).schema_arrow.names)
    from factory.sources import read_jsonl

    return list(next(iter(read_jsonl(path, 1)), {}))


def read_batches(path: Path, columns: Sequence[str], batch_rows: int = BATCH_ROWS) -> Iterator[dict[str, list]]:
    """Column-wise batches of ``columns`` (missing JSONL keys read as None)."""
    if path.suffix == ".parquet":
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=list(columns)):
            yield {c: batch.column(c).to_pylist() for c in columns}
        return
    from factory.sources import read_jsonl

    rows: list[dict[str, Any]] = []
    for row in read_jsonl(path):
        rows.append(row)
        if len(rows) == batch_rows:
            yield {c: [r.get(c) for r in rows] for c in columns}
            rows = []
    if rows:
        yield {c: [r.get(c) for r in rows] for c in columns}


def _id_field(path: Path, id_field: str | None, available: Sequence[str]) -> str | None:
    if id_field is not None:
        if id_field not in available:
            raise FactoryError(f"{path}: id field {id_field!r} not found (columns: {', '.join(available)})")
        return id_field
    return next((c for c in ID_CANDIDATES if c in available), None)


def _as_fields(value: str | Sequence[str], name: str) -> list[str]:
    fields = [value] if isinstance(value, str) else list(value)
    if not fields or not all(isinstance(f, str) and f for f in fields):
        raise FactoryError(f"{name}: expected a field name or a list of field names, got {value!r}")
    return fields


# ------------------------------------------------------------------ worker side

_WORKER_STATE: dict[str, Any] = {}   # per worker process, filled once by the pool initializer


def _init_worker(params: DedupParams | None, index: BenchmarkIndex | None) -> None:
    _WORKER_STATE.update(params=params, index=index)


def _load(source: tuple[str, Any, Any], columns: list[str]) -> dict[str, list]:
    """A batch's columns: already read (JSONL) or one Parquet row group, read here in the worker."""
    kind, a, b = source
    if kind == "rows":
        return a
    table = pq.ParquetFile(a).read_row_group(b, columns=columns)
    return {c: table.column(c).to_pylist() for c in columns}


def _scan_batch(source: tuple[str, Any, Any], columns: list[str], dedup_fields: list[str],
                decontam_fields: list[str], id_field: str | None, prefer: str | None
                ) -> tuple[list[str] | None, list[tuple], Sketch | None, list[tuple[str, Contamination] | None]]:
    """Worker: tokenise each field once, sketch the dedup text, check the decontam fields.

    Returns (ids or None for row numbers, ranks, sketch, leaks); all small next to the text.
    """
    params: DedupParams | None = _WORKER_STATE["params"]
    index: BenchmarkIndex | None = _WORKER_STATE["index"]
    texts = _load(source, columns)
    n_rows = len(texts[columns[0]])
    tokens: dict[str, TokenBatch] = {f: tokenize_batch(texts[f]) for f in {*dedup_fields, *decontam_fields}}
    ids = [str(v) for v in texts[id_field]] if id_field else None
    sketch = None
    ranks: list[tuple] = []
    if params is not None:
        joined = ["\n".join(t or "" for t in parts) for parts in zip(*(texts[f] for f in dedup_fields))] \
            if params.shingle == "char" else None
        sketch = sketch_tokens(TokenBatch.concat_per_doc([tokens[f] for f in dedup_fields]), params, texts=joined)
        lengths = [sum(len(texts[f][i] or "") for f in dedup_fields) for i in range(n_rows)]
        preferred = texts[prefer] if prefer else [True] * n_rows
        ranks = [(not bool(p), length) for p, length in zip(preferred, lengths)]
    leaks: list[tuple[str, Contamination] | None] = [None] * n_rows
    if index is not None:
        for f in decontam_fields:
            for i, hit in enumerate(index.check_tokens(tokens[f])):
                if hit is not None and leaks[i] is None:
                    leaks[i] = (f, hit)
    return ids, ranks, sketch, leaks


def _sources(paths: list[Path], columns: list[str], batch_rows: int) -> Iterator[tuple[str, Any, Any]]:
    """Parquet: one task per row group (workers read it); JSONL: batches read here."""
    for path in paths:
        meta = pq.ParquetFile(path).metadata if path.suffix == ".parquet" else None
        small_groups = meta is not None and all(meta.row_group(i).num_rows <= 4 * batch_rows
                                                for i in range(meta.num_row_groups))
        if small_groups:
            for rg in range(meta.num_row_groups):
                yield ("parquet", str(path), rg)
        else:   # JSONL, or row groups too big to hand to a worker whole
            for batch in read_batches(path, columns, batch_rows):
                yield ("rows", batch, None)


class _Scanner:
    """Runs :func:`_scan_batch` over batches in-process or in a bounded process pool, in order."""

    def __init__(self, workers: int | None, params: DedupParams | None, index: BenchmarkIndex | None,
                 expected_batches: int) -> None:
        self.n_workers = resolve_workers(workers, max(expected_batches, 1))
        self.init_args = (params, index)

    def run(self, sources: Iterator[tuple[str, Any, Any]], *args: Any) -> Iterator[tuple]:
        if self.n_workers <= 1:
            _init_worker(*self.init_args)
            for source in sources:
                yield _scan_batch(source, *args)
            return
        pending: deque[Future] = deque()
        with ProcessPoolExecutor(self.n_workers, mp_context=get_context("spawn"), initializer=_init_worker,
                                 initargs=self.init_args) as pool:
            for source in sources:
                pending.append(pool.submit(_scan_batch, source, *args))
                if len(pending) >= 2 * self.n_workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()


def _estimate_batches(path: Path, batch_rows: int) -> int:
    if path.suffix == ".parquet":
        meta = pq.ParquetFile(path).metadata
        return max(meta.num_row_groups, -(-meta.num_rows // (4 * batch_rows)))
    return max(1, path.stat().st_size // (batch_rows * 2_000))


# ------------------------------------------------------------------ writing

def _write_rows(rows: list[dict[str, Any]], out_path: Path) -> None:
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if out_path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows) if rows else pa.table({"id": pa.array([], pa.string())}),
                       out_path)
    elif out_path.suffix == ".jsonl":
        with out_path.open("w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    else:
        raise FactoryError(f"{out_path}: expected an output path ending in .parquet or .jsonl")


def _decontam_columns(leak: tuple[str, Contamination] | None) -> dict[str, Any]:
    if leak is None:
        return {"contaminated": False, "decontam_field": None, "benchmark": None, "benchmark_item": None,
                "decontam_kind": None, "ngram": None, "ngram_n": None, "ngram_matches": None}
    field, c = leak
    return {"contaminated": True, "decontam_field": field, "benchmark": c.benchmark, "benchmark_item": c.item_id,
            "decontam_kind": c.kind, "ngram": c.ngram, "ngram_n": c.n, "ngram_matches": c.matches}


# ------------------------------------------------------------------ entry points

def _default_out(paths: list[Path], given: Path | str | Sequence[Path | str], suffix: str) -> Path:
    """Verdicts next to the input: samples.jsonl → samples.dedup.parquet (a shard dir → dir.dedup.parquet)."""
    base = Path(given) if isinstance(given, (str, Path)) else paths[0]
    return base.with_name(f"{base.stem if base.is_file() else base.name}.{suffix}.parquet")


def dedup_decontaminate_file(path: Path | str | Sequence[Path | str], *, out_path: Path | str | None = None,
                             field: str | Sequence[str] | None = "text",
                             decontam_fields: str | Sequence[str] | None = None, n: int = 13,
                             benchmarks: Sequence[Path | str] | None = None, id_field: str | None = None,
                             prefer: str | None = None, reference: Sequence[Path | str] = (),
                             workers: int | None = None, batch_rows: int = BATCH_ROWS,
                             **params: Any) -> dict[str, Any]:
    """Dedup (``field`` not None) and/or decontaminate (``decontam_fields`` not None) in one pass.

    out_path:        verdict file (.parquet/.jsonl); None = ``<input>.<dedup|decontam>.parquet``.
    path:            a JSONL/Parquet file, a directory of shards, or a list of shards (same columns).
    field:           text field(s) deduplicated; several are joined (prompt + response).
    decontam_fields: fields checked against the benchmarks, each on its own.
    n, benchmarks:   n-gram length and benchmark files (None = the shipped ones).
    id_field:        row id column (default: sample_id, then id, else the row number).
    prefer:          optional boolean column; True rows win their cluster (e.g. "passed"),
                     then the shortest text, then the lowest id.
    reference:       files already curated (same ``field``): rows duplicating them are dropped.
    params:          :class:`verifiers.dedup.DedupParams` fields (near, num_perm, threshold, …);
                     None values mean the library default.
    """
    started = time.perf_counter()
    paths = _inputs(path)
    if not paths:
        raise FactoryError("path: expected at least one input file, got none")
    suffix = "dedup" if decontam_fields is None else ("decontam" if field is None else "dedup_decontam")
    out_path = Path(out_path) if out_path is not None else _default_out(paths, path, suffix)
    params = {k: v for k, v in params.items() if v is not None}     # None = the library default (CLI)
    for p in paths:
        _check_input(p)
    path = paths[0]
    available = _columns(path)
    dedup_fields = _as_fields(field, "field") if field is not None else []
    check_fields = _as_fields(decontam_fields, "decontam_fields") if decontam_fields is not None else []
    for f in [*dedup_fields, *check_fields, *([prefer] if prefer else [])]:
        if f not in available:
            raise FactoryError(f"{path}: field {f!r} not found (columns: {', '.join(available)})")
    idf = _id_field(path, id_field, available)
    try:
        dparams = DedupParams(**params).validate() if dedup_fields else None
        index = None
        if check_fields:
            files = [Path(b) for b in benchmarks] if benchmarks else None
            index = BenchmarkIndex.from_files(files, n=n) if files else BenchmarkIndex.from_dir(BENCHMARKS_DIR, n=n)
    except (TypeError, ValueError) as err:
        raise FactoryError(str(err)) from None

    dedup = Deduplicator(dparams) if dparams else None
    if dedup is not None:
        for ref in reference:
            _add_reference(Path(ref), dedup, dedup_fields, workers, batch_rows)

    columns = list(dict.fromkeys([*dedup_fields, *check_fields, *([idf] if idf else []), *([prefer] if prefer else [])]))
    ids: list[str] = []
    leaks: list[tuple[str, Contamination] | None] = []
    scanner = _Scanner(workers, dparams, index, sum(_estimate_batches(p, batch_rows) for p in paths))
    for batch_ids, ranks, sketch, batch_leaks in scanner.run(_sources(paths, columns, batch_rows), columns,
                                                             dedup_fields, check_fields, idf, prefer):
        start = len(ids)
        if batch_ids is None:
            batch_ids = [str(start + i) for i in range(len(batch_leaks))]
        ids.extend(batch_ids)
        leaks.extend(batch_leaks)
        if dedup is not None and sketch is not None:
            dedup.add(batch_ids, sketch, [(*r, i) for r, i in zip(ranks, batch_ids)])
    if len(set(ids)) != len(ids):
        raise FactoryError(f"{path}: ids in {idf!r} are not unique; pass id_field or drop duplicated ids")

    verdicts = dedup.resolve() if dedup is not None else []
    rows: list[dict[str, Any]] = []
    for i, row_id in enumerate(ids):
        row: dict[str, Any] = {"id": row_id}
        kept = True
        if dedup is not None:
            v = verdicts[i]
            kept = v.kept
            row.update(kind=v.kind, cluster_id=v.cluster_id, duplicate_of=v.duplicate_of, similarity=v.similarity,
                       cluster_size=v.cluster_size)
        if index is not None:
            row.update(_decontam_columns(leaks[i]))
            kept = kept and leaks[i] is None
        row["kept"] = kept
        rows.append(row)
    _write_rows(rows, out_path)
    return _report(paths, out_path, rows, dparams, index, started)


def _add_reference(path: Path, dedup: Deduplicator, fields: list[str], workers: int | None,
                   batch_rows: int) -> None:
    _check_input(path)
    available = _columns(path)
    missing = [f for f in fields if f not in available]
    if missing:
        raise FactoryError(f"{path}: reference file lacks field {missing[0]!r}")
    idf = _id_field(path, None, available)
    columns = list(dict.fromkeys([*fields, *([idf] if idf else [])]))
    scanner = _Scanner(workers, dedup.params, None, _estimate_batches(path, batch_rows))
    count = 0
    for batch_ids, _, sketch, leaks in scanner.run(_sources([path], columns, batch_rows), columns, fields, [],
                                                   idf, None):
        n_rows = len(leaks)
        ref_ids = [f"{path.name}:{batch_ids[i] if batch_ids else count + i}" for i in range(n_rows)]
        dedup.add(ref_ids, sketch, reference=True)
        count += n_rows


def _report(paths: list[Path], out_path: Path, rows: list[dict[str, Any]], params: DedupParams | None,
            index: BenchmarkIndex | None, started: float) -> dict[str, Any]:
    report: dict[str, Any] = {"input": [str(p) for p in paths] if len(paths) > 1 else str(paths[0]), "out_path": str(out_path), "rows": len(rows),
                              "kept": sum(r["kept"] for r in rows)}
    if params is not None:
        report["dedup"] = {"params": asdict(params) | {"ngram": params.shingle_size},
                           "dropped": dict(Counter(r["kind"] for r in rows if r["kind"] != "unique"))}
    if index is not None:
        report["decontam"] = {"n": index.n, "benchmarks": index.benchmarks,
                              "contaminated": dict(Counter(r["benchmark"] for r in rows if r["contaminated"]))}
    report["seconds"] = round(time.perf_counter() - started, 3)
    return report


def dedup_file(path: Path | str | Sequence[Path | str], *, field: str | Sequence[str] = "text",
               out_path: Path | str | None = None,
               **params: Any) -> dict[str, Any]:
    """Exact + near-duplicate verdicts for every row of a JSONL/Parquet file (see the module doc).

    Verdict columns: id, kind, cluster_id, duplicate_of, similarity, cluster_size, kept.
    """
    return dedup_decontaminate_file(path, out_path=out_path, field=field, decontam_fields=None, **params)


def decontaminate_file(path: Path | str | Sequence[Path | str], *,
                       fields: str | Sequence[str] = ("prompt", "response"), n: int = 13,
                       benchmarks: Sequence[Path | str] | None = None, out_path: Path | str | None = None,
                       **kwargs: Any) -> dict[str, Any]:
    """Benchmark-leak verdicts for every row: each of ``fields`` is checked against every benchmark.

    Verdict columns: id, contaminated, decontam_field, benchmark, benchmark_item,
    decontam_kind ("exact"/"ngram"), ngram, ngram_n, ngram_matches, kept.
    """
    return dedup_decontaminate_file(path, out_path=out_path, field=None, decontam_fields=fields, n=n,
                                    benchmarks=benchmarks, **kwargs)
