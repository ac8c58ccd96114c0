"""The sample store: append-only Parquet shards, verdict shards and a manifest per run.

Layout of one run (default ``$FACTORY_HOME/runs/<dataset>``)::

    manifest.json                 recipe, seed, versions, shards, counts (rewritten atomically)
    samples/part-000001-<id>.parquet   generated samples, never rewritten
    verdicts/<step>/part-*.parquet     one row per (sample_id, step) decision
    errors.jsonl                  requests that failed after all retries (retried on resume)

A shard is written under a hidden temporary name, fsynced, then renamed, so a
reader (or a resumed writer) never sees a partial shard. The directory listing,
not the manifest, is the source of truth for which shards exist: a crash
between the rename and the manifest update loses nothing.

A run may also live on an object store or any pyarrow/fsspec filesystem
(``--store s3://bucket/prefix``): `factory.object_store.ObjectRunStore` keeps this
layout there, with commit markers instead of renames and a lease object instead of
flock. Callers go through the store's methods (`parquet_file`, `read_table`,
`verdict_shards`, `write_json`, ...), never through paths, and work on either.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import hashlib
import json
import logging
import os
import socket
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from factory.errors import StoreError
from factory.paths import is_uri, runs_location
from factory.text import escape_surrogates_in

log = logging.getLogger(__name__)

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])

SAMPLE_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("run", pa.string()),
        ("recipe", pa.string()),
        ("recipe_hash", pa.string()),
        ("prompt_id", pa.string()),
        ("sample_index", pa.int32()),
        ("source", pa.string()),
        ("task_type", pa.string()),
        ("language", pa.string()),
        ("prompt", pa.string()),
        ("prompt_messages", pa.list_(MESSAGE)),
        ("reference", pa.string()),
        ("tests", pa.string()),
        ("teacher_role", pa.string()),
        ("backend", pa.string()),
        ("model", pa.string()),
        ("temperature", pa.float32()),
        ("top_p", pa.float32()),
        ("max_new_tokens", pa.int32()),
        ("seed", pa.int64()),
        ("text", pa.string()),
        ("reasoning", pa.string()),
        ("answer", pa.string()),
        ("finish_reason", pa.string()),
        ("prompt_tokens", pa.int32()),
        ("completion_tokens", pa.int32()),
        ("latency_s", pa.float32()),
        ("attempts", pa.int32()),
        ("endpoint", pa.string()),
        ("created_at", pa.timestamp("us", tz="UTC")),
        # Imports: how the source delimited its reasoning (think, thought_solution, missing_open,
        # field, tags, none), and the source's own per-sample labels as JSON text.
        ("thinking", pa.string()),
        ("source_labels", pa.string()),
    ]
)
# Columns added after stores were first written: shards without them read as nulls.
_LATER_COLUMNS = ("thinking", "source_labels")

VERDICT_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("step", pa.string()),
        ("passed", pa.bool_()),  # null = could not be decided (unverifiable)
        ("code", pa.string()),  # stable rejection code, null when passed
        ("reason", pa.string()),
        ("score", pa.float64()),
        ("detail", pa.string()),  # JSON
        ("config_hash", pa.string()),
        ("created_at", pa.timestamp("us", tz="UTC")),
    ]
)


def make_sample_id(recipe_hash: str, prompt_id: str, sample_index: int) -> str:
    """Stable id of one (recipe, prompt, sample index): the key of exactly-once generation."""
    digest = hashlib.sha256(f"{recipe_hash}\x1f{prompt_id}\x1f{sample_index}".encode()).hexdigest()
    return digest[:32]


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def write_parquet_atomically(table: pa.Table, target: Path) -> None:
    """Temp name → fsync → rename → fsync dir: the file appears complete or not at all."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "wb") as handle:
            pq.write_table(table, handle, compression="zstd")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        if exc.filename is None:  # name the shard's directory in the one-line error (e.g. a full disk)
            raise OSError(exc.errno, exc.strerror or str(exc), str(target.parent)) from exc
        raise
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(target.parent)


def write_json_atomically(data: Any, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, default=str)  # ensure_ascii: a lone surrogate is written as \udxxx
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()  # a full disk leaves the old file and no temp file behind
    _fsync_dir(target.parent)


def _to_table(rows: Sequence[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    """Rows → Arrow; text with lone surrogates (from a model or a program) is escaped rather than failing the write."""
    try:
        return pa.Table.from_pylist(list(rows), schema=schema)
    except UnicodeEncodeError:
        return pa.Table.from_pylist([escape_surrogates_in(row) for row in rows], schema=schema)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def visible_shards(directory: Path) -> list[Path]:
    """Complete shards only: temp files are hidden and do not end in .parquet."""
    if not directory.exists():
        return []
    return sorted(p for p in directory.glob("part-*.parquet") if p.is_file())


def _shard_name(sequence: int) -> str:
    return f"part-{sequence:06d}-{uuid.uuid4().hex[:8]}.parquet"


@dataclass
class RunStore:
    """One run directory. Append-only: samples and verdicts are only ever added."""

    root: Path

    @classmethod
    def for_dataset(cls, dataset: str, base: Path | str | None = None) -> "RunStore":
        base = base if base is not None else runs_location()
        if is_uri(base):
            from factory.object_store import ObjectRunStore, join_uri

            return ObjectRunStore.at(join_uri(str(base), dataset))
        return cls(Path(base) / dataset)

    @property
    def name(self) -> str:
        return self.root.name

    # ---------------------------------------------------------------- where it is (local here; see object_store)
    filesystem: Any = None  # the pyarrow filesystem shard paths are on; None: local paths

    @property
    def location(self) -> str:
        """The run's place as a user would write it (a path, or a URI for an object store)."""
        return str(self.root)

    def prepare(self) -> None:
        """Make the run's directory (a new run)."""
        self.root.mkdir(parents=True, exist_ok=True)

    def occupied(self) -> bool:
        """Anything at this run's place (a run, or a name another writer is about to use)."""
        return self.root.exists()

    def stray_content(self) -> bool:
        """Files here but no manifest: not a factory run."""
        return self.root.exists() and any(self.root.iterdir())

    def sibling(self, name: str) -> "RunStore":
        return type(self)(self.root.parent / name)

    def parquet_file(self, path: str | Path) -> pq.ParquetFile:
        return pq.ParquetFile(path)

    def read_table(self, path: str | Path, columns: Sequence[str] | None = None) -> pa.Table:
        return pq.read_table(path, columns=list(columns) if columns is not None else None)

    def write_json(self, name: str, data: Any) -> None:
        """A small document beside the run's data (filter_report.json), replaced atomically."""
        write_json_atomically(data, self.root / name)

    def read_json(self, name: str) -> Any:
        """A document written by `write_json`, or None when there is none."""
        try:
            return json.loads((self.root / name).read_text())
        except FileNotFoundError:
            return None

    def manifest_mtime(self) -> float:
        return self.manifest_path.stat().st_mtime

    @property
    def samples_dir(self) -> Path:
        return self.root / "samples"

    @property
    def verdicts_dir(self) -> Path:
        return self.root / "verdicts"

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    def exists(self) -> bool:
        return self.manifest_path.exists()

    # ---------------------------------------------------------------- writer lock
    @property
    def lock_path(self) -> Path:
        # Beside the run, not in it: a lock must not make a run directory that holds no run.
        return self.root.parent / f".{self.name}.lock"

    @contextlib.contextmanager
    def lock(self, command: str) -> Iterator[None]:
        """Hold this run's writer lock for the block; a second writer fails at once with one line naming the holder.

        The kernel's flock is the lock, so a holder that dies (kill -9, power
        cut) releases it with its process: a leftover lock file is stale by
        construction and simply taken over. The file records host, pid,
        command and start time so the refusal can say who holds the run. Not
        re-entrant: take it once, in the stage's entry point.
        """
        path = self.lock_path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreError(f"{path}: cannot create the run's lock file ({exc.strerror or exc}); "
                             f"FACTORY_HOME must be a writable directory") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StoreError(f"run '{self.name}' is being written by {_describe_holder(_read_holder(fd))}; "
                                 "wait for it to finish (or stop it) and run this again") from None
            previous = _read_holder(fd)
            if previous:
                log.debug("run '%s': lock left by %s, which is gone; taking it over", self.name, _describe_holder(previous))
            holder = {"host": socket.gethostname(), "pid": os.getpid(), "command": command, "since": utc_now().isoformat()}
            _write_holder(fd, holder)
            try:
                yield
            finally:
                with contextlib.suppress(OSError):
                    _write_holder(fd, {})
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    # ---------------------------------------------------------------- manifest
    def read_manifest(self) -> dict[str, Any]:
        try:
            return json.loads(self.manifest_path.read_text())
        except FileNotFoundError:
            raise StoreError(f"{self.location}: no run here (no manifest.json); run `factory generate` first") from None
        except json.JSONDecodeError as exc:
            raise StoreError(f"{self.manifest_path}: unreadable manifest ({exc.msg} at line {exc.lineno})") from None

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        manifest = dict(manifest)
        manifest["updated_at"] = utc_now().isoformat()
        manifest["shards"] = [p.name for p in visible_shards(self.samples_dir)]
        write_json_atomically(manifest, self.manifest_path)

    # ---------------------------------------------------------------- samples
    def sample_shards(self) -> list[Path]:
        return visible_shards(self.samples_dir)

    def next_sequence(self, directory: Path) -> int:
        shards = visible_shards(directory)
        if not shards:
            return 1
        return max(int(p.name.split("-")[1]) for p in shards) + 1

    def append_samples(self, rows: Sequence[dict[str, Any]]) -> Path | None:
        """Write one new shard of samples; returns its path (None when `rows` is empty)."""
        if not rows:
            return None
        table = _to_table(rows, SAMPLE_SCHEMA)
        target = self.samples_dir / _shard_name(self.next_sequence(self.samples_dir))
        write_parquet_atomically(table, target)
        return target

    def sample_ids(self) -> set[str]:
        return set(self.read_column("sample_id"))

    def read_column(self, column: str) -> list[Any]:
        values: list[Any] = []
        for shard in self.sample_shards():
            values.extend(_read_sample_shard(shard, [column], self.filesystem).column(column).to_pylist())
        return values

    def read_samples(self, columns: Sequence[str] | None = None) -> pa.Table:
        shards = self.sample_shards()
        if not shards:
            return SAMPLE_SCHEMA.empty_table() if columns is None else SAMPLE_SCHEMA.empty_table().select(list(columns))
        return pa.concat_tables([_read_sample_shard(s, columns, self.filesystem) for s in shards])

    def iter_sample_batches(self, columns: Sequence[str] | None = None, batch_size: int = 4096) -> Iterable[pa.RecordBatch]:
        for shard in self.sample_shards():
            wanted = list(columns) if columns else SAMPLE_SCHEMA.names
            parquet = self.parquet_file(shard)
            if set(wanted) <= set(parquet.schema_arrow.names):
                yield from parquet.iter_batches(batch_size=batch_size, columns=wanted)
            else:  # an older shard: a shard is one flush, so reading it whole stays bounded
                yield from _read_sample_shard(shard, columns, self.filesystem).to_batches(max_chunksize=batch_size)

    # ---------------------------------------------------------------- verdicts
    def verdict_dir(self, step: str) -> Path:
        return self.verdicts_dir / step

    def append_verdicts(self, step: str, rows: Sequence[dict[str, Any]]) -> Path | None:
        if not rows:
            return None
        table = _to_table(rows, VERDICT_SCHEMA)
        directory = self.verdict_dir(step)
        target = directory / _shard_name(self.next_sequence(directory))
        write_parquet_atomically(table, target)
        return target

    def verdict_shards(self, step: str) -> list[Path]:
        """A step's complete verdict shards, in sequence order (the latest last)."""
        return visible_shards(self.verdict_dir(step))

    def read_verdicts(self, step: str) -> pa.Table:
        """All verdict rows of a step, latest last (shards are sequence-ordered)."""
        shards = self.verdict_shards(step)
        if not shards:
            return VERDICT_SCHEMA.empty_table()
        return pa.concat_tables([self.read_table(s) for s in shards])

    def latest_verdicts(self, step: str) -> dict[str, dict[str, Any]]:
        """sample_id → its most recent verdict row for `step`."""
        latest: dict[str, dict[str, Any]] = {}
        for row in self.read_verdicts(step).to_pylist():
            latest[row["sample_id"]] = row
        return latest

    def verdict_steps(self) -> list[str]:
        if not self.verdicts_dir.exists():
            return []
        return sorted(p.name for p in self.verdicts_dir.iterdir() if p.is_dir())

    # ---------------------------------------------------------------- errors
    def log_errors(self, rows: Sequence[dict[str, Any]]) -> None:
        """Append failed requests to errors.jsonl; a failed append (disk full) leaves the file as it was."""
        if not rows:
            return
        text = "".join(json.dumps(row, default=str) + "\n" for row in rows)  # ASCII: surrogates are escaped
        with open(self.root / "errors.jsonl", "a", encoding="utf-8") as handle:
            size = handle.tell()
            try:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            except OSError:
                handle.truncate(size)  # no half line for a reader to trip on
                raise


def _read_holder(fd: int) -> dict[str, Any]:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 4096)
    try:
        holder = json.loads(raw) if raw.strip() else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _write_holder(fd: int, holder: dict[str, Any]) -> None:
    data = json.dumps(holder).encode() if holder else b""
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, data)
    try:
        os.fsync(fd)
    except OSError as exc:  # some filesystems cannot fsync; the holder record is informative only
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise


def _describe_holder(holder: dict[str, Any]) -> str:
    if not holder.get("pid"):
        return "another process (it has not recorded itself yet)"
    return (f"`factory {holder.get('command', '?')}` (pid {holder['pid']} on host {holder.get('host', '?')}, "
            f"since {str(holder.get('since', '?'))[:19]})")


def _read_sample_shard(shard: Path | str, columns: Sequence[str] | None, filesystem: Any = None) -> pa.Table:
    """One shard in today's schema: columns added since it was written come back as nulls."""
    wanted = list(columns) if columns else SAMPLE_SCHEMA.names
    present = set(pq.read_schema(shard, filesystem=filesystem).names)
    missing = [c for c in wanted if c not in present]
    if not missing:
        return pq.read_table(shard, columns=wanted, filesystem=filesystem)
    unknown = [c for c in missing if c not in _LATER_COLUMNS]
    if unknown:
        raise StoreError(f"{shard}: no column {unknown[0]!r}; expected a sample shard of this store")
    table = pq.read_table(shard, columns=[c for c in wanted if c in present], filesystem=filesystem)
    for column in missing:
        field = SAMPLE_SCHEMA.field(column)
        table = table.append_column(field, pa.nulls(table.num_rows, field.type))
    return table.select(wanted)


def list_runs(base: Path | str | None = None) -> list[RunStore]:
    base = base if base is not None else runs_location()
    if is_uri(base):
        from factory.object_store import list_object_runs

        return list_object_runs(str(base))
    base = Path(base)
    if not base.exists():
        return []
    # Dot-directories are imports being staged, not runs (yet).
    return [RunStore(p) for p in sorted(base.iterdir()) if not p.name.startswith(".") and (p / "manifest.json").exists()]


def open_run(name: str | None, base: Path | str | None = None, *, local_only: str | None = None) -> RunStore:
    """The run a command names (a name, a path or a URI), or the only/most recent one when none is named.

    `local_only`: the command (card, export, view), which reads runs on local disk only."""
    store = _open_run(name, base)
    if local_only and store.filesystem is not None:
        raise StoreError(f"factory {local_only}: reads runs on local disk only, and run '{store.name}' is at "
                         f"{store.location}; copy it to a local --store first")
    return store


def _open_run(name: str | None, base: Path | str | None) -> RunStore:
    base = base if base is not None else runs_location()
    if name:
        if is_uri(name):
            from factory.object_store import ObjectRunStore

            store = ObjectRunStore.at(name)
        else:
            path = Path(name)
            store = RunStore(path) if (path / "manifest.json").exists() else RunStore.for_dataset(name, base)
        if not store.exists():
            known = ", ".join(r.name for r in list_runs(base)) or "none yet"
            raise StoreError(f"--run {name}: no such run in {base} (known: {known})")
        return store
    runs = list_runs(base)
    if not runs:
        raise StoreError(f"no runs in {base}: run `factory generate --recipe cold_start` first")
    return max(runs, key=lambda r: r.manifest_mtime())
