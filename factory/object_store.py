"""Runs on an object store (S3, GCS, …) or any pyarrow/fsspec filesystem: the same layout, other guarantees.

``--store s3://bucket/prefix`` (or ``FACTORY_STORE``, or ``FACTORY_HOME=s3://…``) keeps runs there.
The filesystem comes from ``pyarrow.fs.FileSystem.from_uri`` (s3://, gs://, hdfs://; credentials
from the usual places: AWS_* variables, the AWS profile, instance roles; an S3-compatible server
via ``AWS_ENDPOINT_URL`` or ``?endpoint_override=host:port&scheme=http`` in the URI), else from
fsspec (memory://, az://, …, whatever fsspec has installed).

Object stores have no rename and no flock, so:

* **Publishing.** A shard is written once under its final, unique name
  (``samples/part-000007-1a2b3c4d.parquet``) and becomes part of the run only when its commit
  marker is written after it (``samples/_committed/part-000007-1a2b3c4d.parquet``, empty). A batch
  published at once (an import) is one marker listing its shards (``_committed/batch-<id>.json``).
  Readers see committed shards only, so a writer killed mid-shard (or mid-import) leaves objects
  nobody reads, and the resumed run writes those samples again under new names: nothing is
  duplicated or lost.
* **The run lock** is a lease object beside the run (``.<run>.lock``: host, pid, command, expiry),
  created with a conditional put (``If-None-Match: *``) and renewed with ``If-Match`` on S3 (boto3
  needed: ``pip install -e ".[s3]"``). A holder that is gone (its pid on this host, or its lease
  expired: FACTORY_LEASE_SECONDS, default 120) is taken over. If renewing fails, another writer
  took the run: this one stops at its next write. Filesystems without conditional writes (and S3
  without boto3) get an advisory lease: check, then write; two writers starting in the same
  instant could both proceed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from factory.errors import StoreError
from factory.store import (
    SAMPLE_SCHEMA,
    VERDICT_SCHEMA,
    RunStore,
    _describe_holder,
    _shard_name,
    _to_table,
    utc_now,
)

log = logging.getLogger(__name__)

COMMITTED = "_committed"
DEFAULT_LEASE_SECONDS = 120.0


def resolve_filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path on it) for a store URI: pyarrow's own filesystems first, then fsspec's."""
    try:
        return pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        pyarrow_error = str(exc).splitlines()[0]
    try:
        import fsspec
    except ImportError:
        raise StoreError(f"--store {uri}: {pyarrow_error}") from None
    try:
        fs, path = fsspec.core.url_to_fs(uri)
    except (ImportError, ValueError) as exc:
        raise StoreError(f"--store {uri}: no filesystem for it ({pyarrow_error}; fsspec: {exc})") from None
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path.rstrip("/")


@dataclass
class ObjectRunStore(RunStore):
    """A run under a URI. `root` is its path on `filesystem`; every read and write goes through that filesystem."""

    filesystem: Any = None
    uri: str = ""
    _lease: "_Lease | None" = field(default=None, repr=False, compare=False)
    _sequences: dict[str, int] = field(default_factory=dict, repr=False, compare=False)  # next number per directory

    @classmethod
    def at(cls, uri: str) -> "ObjectRunStore":
        fs, path = resolve_filesystem(uri)
        return cls(PurePosixPath(path), fs, uri.rstrip("/"))  # type: ignore[arg-type]

    # ------------------------------------------------------------ where it is
    @property
    def location(self) -> str:
        return self.uri

    def sibling(self, name: str) -> "ObjectRunStore":
        parent = _with_query(_strip_query(self.uri).rpartition("/")[0], self.uri)
        return ObjectRunStore(self.root.parent / name, self.filesystem, join_uri(parent, name))  # type: ignore[arg-type]

    def prepare(self) -> None:
        with contextlib.suppress(OSError, NotImplementedError):
            self.filesystem.create_dir(str(self.root), recursive=True)  # object stores have no directories: a no-op

    def _list(self, directory: PurePosixPath | str) -> list[pafs.FileInfo]:
        try:
            return self.filesystem.get_file_info(pafs.FileSelector(str(directory), allow_not_found=True))
        except FileNotFoundError:
            return []

    def _is_file(self, path: PurePosixPath | str) -> bool:
        return self.filesystem.get_file_info(str(path)).type == pafs.FileType.File

    def occupied(self) -> bool:
        return bool(self._list(self.root))

    def stray_content(self) -> bool:
        """Something here that a failed import of ours would not leave (uncommitted shards are ignored)."""
        if self.sample_shards():
            return True
        return any(info.base_name not in ("samples", "verdicts", "errors") for info in self._list(self.root))

    def exists(self) -> bool:
        return self._is_file(self.manifest_path)

    def manifest_mtime(self) -> float:
        info = self.filesystem.get_file_info(str(self.manifest_path))
        return info.mtime.timestamp() if info.mtime else 0.0

    # ------------------------------------------------------------ small documents
    def _read_bytes(self, path: PurePosixPath | str) -> bytes:
        with self.filesystem.open_input_stream(str(path)) as handle:
            return handle.read()

    def _write_bytes(self, path: PurePosixPath | str, data: bytes) -> None:
        with self.filesystem.open_output_stream(str(path)) as handle:  # one PUT: the object appears whole or not at all
            handle.write(data)

    def write_json(self, name: str, data: Any) -> None:
        self._check_lease()
        self._write_bytes(self.root / name, json.dumps(data, indent=2, default=str).encode())

    def read_json(self, name: str) -> Any:
        try:
            return json.loads(self._read_bytes(self.root / name))
        except FileNotFoundError:
            return None

    def read_manifest(self) -> dict[str, Any]:
        try:
            return json.loads(self._read_bytes(self.manifest_path))
        except FileNotFoundError:
            raise StoreError(f"{self.location}: no run here (no manifest.json); run `factory generate` first") from None
        except json.JSONDecodeError as exc:
            raise StoreError(f"{self.location}/manifest.json: unreadable manifest ({exc.msg} at line {exc.lineno})") from None

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        manifest = dict(manifest)
        manifest["updated_at"] = utc_now().isoformat()
        manifest["shards"] = [PurePosixPath(p).name for p in self.sample_shards()]
        self.write_json("manifest.json", manifest)

    # ------------------------------------------------------------ shards: written whole, then committed
    def committed(self, directory: PurePosixPath) -> list[str]:
        """Paths of the committed shards in `directory`, in sequence order."""
        names: set[str] = set()
        for info in self._list(directory / COMMITTED):
            if info.type != pafs.FileType.File:
                continue
            if info.base_name.startswith("part-") and info.base_name.endswith(".parquet"):
                names.add(info.base_name)
            elif info.base_name.startswith("batch-") and info.base_name.endswith(".json"):
                names.update(json.loads(self._read_bytes(info.path))["shards"])
        return [str(directory / name) for name in sorted(names)]

    def sample_shards(self) -> list[str]:  # type: ignore[override]
        return self.committed(self.samples_dir)

    def verdict_shards(self, step: str) -> list[str]:  # type: ignore[override]
        return self.committed(self.verdict_dir(step))

    def next_sequence(self, directory: PurePosixPath) -> int:  # type: ignore[override]
        # Uncommitted shards count too: a new shard never reuses a number a killed writer left. Listed once per
        # directory: this writer holds the run's lock, so it is the only one adding shards (a listing per chunk
        # would make a long filter quadratic in LIST requests).
        if str(directory) not in self._sequences:
            numbers = [int(i.base_name.split("-")[1]) for i in self._list(directory)
                       if i.base_name.startswith("part-") and i.base_name.endswith(".parquet")]
            self._sequences[str(directory)] = max(numbers, default=0) + 1
        return self._sequences[str(directory)]

    def write_shard(self, directory: PurePosixPath, table: pa.Table) -> str:
        """Write one shard under its final name, not yet committed; returns its name."""
        self._check_lease()
        name = _shard_name(self.next_sequence(directory))
        self._sequences[str(directory)] += 1
        with self.filesystem.open_output_stream(str(directory / name)) as handle:
            pq.write_table(table, handle, compression="zstd")
        return name

    def commit(self, directory: PurePosixPath, names: Sequence[str]) -> None:
        """Make shards part of the run: one marker each, or one marker listing them all (atomic for the batch)."""
        self._check_lease()
        if len(names) == 1:
            self._write_bytes(directory / COMMITTED / names[0], b"")
        elif names:
            self._write_bytes(directory / COMMITTED / f"batch-{uuid.uuid4().hex}.json",
                              json.dumps({"shards": list(names)}).encode())

    def append_samples(self, rows: Sequence[dict[str, Any]]) -> str | None:  # type: ignore[override]
        if not rows:
            return None
        name = self.write_shard(self.samples_dir, _to_table(rows, SAMPLE_SCHEMA))
        self.commit(self.samples_dir, [name])
        return str(self.samples_dir / name)

    def append_verdicts(self, step: str, rows: Sequence[dict[str, Any]]) -> str | None:  # type: ignore[override]
        if not rows:
            return None
        directory = self.verdict_dir(step)
        name = self.write_shard(directory, _to_table(rows, VERDICT_SCHEMA))
        self.commit(directory, [name])
        return str(directory / name)

    def verdict_steps(self) -> list[str]:
        return sorted(i.base_name for i in self._list(self.verdicts_dir) if i.type == pafs.FileType.Directory)

    def parquet_file(self, path: str) -> pq.ParquetFile:  # type: ignore[override]
        return pq.ParquetFile(path, filesystem=self.filesystem)

    def read_table(self, path: str, columns: Sequence[str] | None = None) -> pa.Table:  # type: ignore[override]
        return pq.read_table(path, columns=list(columns) if columns is not None else None, filesystem=self.filesystem)

    def log_errors(self, rows: Sequence[dict[str, Any]]) -> None:
        """Failed requests, one object per flush under errors/ (objects cannot be appended to)."""
        if not rows:
            return
        text = "".join(json.dumps(row, default=str) + "\n" for row in rows)
        stamp = utc_now().strftime("%Y%m%dT%H%M%S")
        self._write_bytes(self.root / "errors" / f"{stamp}-{uuid.uuid4().hex[:8]}.jsonl", text.encode())

    # ------------------------------------------------------------ the run lock: a lease object
    @property
    def lock_path(self) -> PurePosixPath:  # type: ignore[override]
        return self.root.parent / f".{self.name}.lock"

    @contextlib.contextmanager
    def lock(self, command: str) -> Iterator[None]:
        lease = _Lease(self, command)
        lease.acquire()
        self._lease = lease
        self._sequences.clear()  # numbers seen before the lock may be stale
        try:
            yield
        finally:
            self._lease = None
            lease.release()

    def _check_lease(self) -> None:
        if self._lease is not None and self._lease.lost:
            raise StoreError(f"run '{self.name}': lost its lock ({self._lease.lost}); another writer took the run over, "
                             "so this one stops here (what it committed is kept)")


def list_object_runs(base: str) -> list[RunStore]:
    fs, path = resolve_filesystem(base)
    try:
        entries = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    except FileNotFoundError:
        entries = []
    runs = []
    for info in sorted(entries, key=lambda i: i.base_name):
        if info.type == pafs.FileType.Directory and not info.base_name.startswith("."):
            store = ObjectRunStore(PurePosixPath(info.path), fs, join_uri(base, info.base_name))  # type: ignore[arg-type]
            if store.exists():
                runs.append(store)
    return runs


def join_uri(base: str, name: str) -> str:
    """`base`/`name`, keeping base's query (s3://b/runs?endpoint_override=… + x → s3://b/runs/x?endpoint_override=…)."""
    return _with_query(f"{_strip_query(base)}/{name}", base)


def _strip_query(uri: str) -> str:
    return uri.split("?", 1)[0].rstrip("/")


def _with_query(uri: str, like: str) -> str:
    """`uri` with the query (endpoint_override=…) of `like`, so that it resolves to the same filesystem."""
    return f"{uri}?{like.split('?', 1)[1]}" if "?" in like else uri


# ---------------------------------------------------------------- the lease
class _Lease:
    """The run's lock on a filesystem without flock: an object naming its holder until it expires."""

    def __init__(self, store: ObjectRunStore, command: str) -> None:
        self.store = store
        self.path = str(store.lock_path)
        self.ttl = float(os.environ.get("FACTORY_LEASE_SECONDS", DEFAULT_LEASE_SECONDS))
        self.holder = {"host": socket.gethostname(), "pid": os.getpid(), "command": command,
                       "since": utc_now().isoformat(), "token": uuid.uuid4().hex}
        self.backend = _S3Conditional.for_store(store) or _Advisory(store)
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _body(self) -> bytes:
        return json.dumps({**self.holder, "expires": time.time() + self.ttl}).encode()

    def acquire(self) -> None:
        if self.backend.create(self.path, self._body()):
            self._start_renewing()
            return
        current, tag = self.backend.read(self.path)
        if current is not None and _live(current):
            raise StoreError(f"run '{self.store.name}' is being written by {_describe_holder(current)}; "
                             "wait for it to finish (or stop it) and run this again")
        log.debug("run '%s': lease of %s has lapsed; taking it over", self.store.name, _describe_holder(current or {}))
        if not self.backend.replace(self.path, self._body(), tag):
            raise StoreError(f"run '{self.store.name}' was just taken by another writer; run this again when it is done")
        self._start_renewing()

    def _start_renewing(self) -> None:
        self._thread = threading.Thread(target=self._renew_loop, name="factory-lease", daemon=True)
        self._thread.start()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                if not self.backend.renew(self.path, self._body()):
                    self.lost = "its lease was replaced"
                    return
            except (OSError, StoreError) as exc:  # a network blip: try again at the next period, while the lease runs
                log.warning("run '%s': could not renew the lease (%s)", self.store.name, exc)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if not self.lost:
            with contextlib.suppress(OSError):
                self.backend.delete(self.path, self.holder["token"])


def _live(holder: dict[str, Any]) -> bool:
    """A holder still holds the run: its lease has not expired and, on this host, its process is alive."""
    if float(holder.get("expires") or 0) < time.time():
        return False
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
        try:
            os.kill(holder["pid"], 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
    return True


class _Advisory:
    """Check-then-write through the filesystem: correct unless two writers start in the same instant."""

    def __init__(self, store: ObjectRunStore) -> None:
        self.store = store
        log.info("run '%s': %s has no conditional writes here; the run lock is advisory",
                 store.name, store.filesystem.type_name)

    def create(self, path: str, body: bytes) -> bool:
        if self.store._is_file(path):
            return False
        self.store._write_bytes(path, body)
        return True

    def read(self, path: str) -> tuple[dict[str, Any] | None, Any]:
        try:
            return json.loads(self.store._read_bytes(path)), None
        except (FileNotFoundError, json.JSONDecodeError):
            return None, None

    def replace(self, path: str, body: bytes, tag: Any) -> bool:
        self.store._write_bytes(path, body)
        return True

    def renew(self, path: str, body: bytes) -> bool:
        current, _ = self.read(path)
        if current is None or current.get("token") != json.loads(body)["token"]:
            return False
        self.store._write_bytes(path, body)
        return True

    def delete(self, path: str, token: str) -> None:
        current, _ = self.read(path)
        if current is not None and current.get("token") == token:
            self.store.filesystem.delete_file(path)


class _S3Conditional:
    """The lease on S3 with conditional writes (If-None-Match to create, If-Match to renew/take over)."""

    def __init__(self, client: Any, bucket: str) -> None:
        self.client, self.bucket = client, bucket
        self.etag: str | None = None

    @classmethod
    def for_store(cls, store: ObjectRunStore) -> "_S3Conditional | None":
        if store.filesystem.type_name != "s3":
            return None
        try:
            import boto3
        except ImportError:
            log.warning("run '%s': boto3 is not installed (pip install -e \".[s3]\"); the run lock on S3 is advisory",
                        store.name)
            return None
        query = parse_qs(urlsplit(store.uri).query)
        endpoint = (query.get("endpoint_override") or [None])[0]
        if endpoint and "://" not in endpoint:
            endpoint = f"{(query.get('scheme') or ['https'])[0]}://{endpoint}"
        region = (query.get("region") or [None])[0] or getattr(store.filesystem, "region", None) or None
        client = boto3.client("s3", endpoint_url=endpoint, region_name=region)  # credentials: boto3's usual chain
        return cls(client, str(store.root).split("/", 1)[0])

    def _key(self, path: str) -> str:
        return path.split("/", 1)[1]

    def _put(self, path: str, body: bytes, **condition: str) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            response = self.client.put_object(Bucket=self.bucket, Key=self._key(path), Body=body, **condition)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409"):
                return False
            raise StoreError(f"s3://{self.bucket}/{self._key(path)}: cannot write the run's lease ({exc}); check the "
                             "--store URI (bucket), its credentials and endpoint") from None
        except BotoCoreError as exc:
            raise StoreError(f"s3://{self.bucket}/{self._key(path)}: cannot write the run's lease ({exc}); check the "
                             "--store URI, its credentials and endpoint (AWS_ENDPOINT_URL)") from None
        self.etag = response["ETag"]
        return True

    def create(self, path: str, body: bytes) -> bool:
        return self._put(path, body, IfNoneMatch="*")

    def read(self, path: str) -> tuple[dict[str, Any] | None, Any]:
        from botocore.exceptions import ClientError

        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(path))
        except ClientError:
            return None, None
        try:
            return json.loads(response["Body"].read()), response["ETag"]
        except json.JSONDecodeError:
            return {}, response["ETag"]

    def replace(self, path: str, body: bytes, tag: Any) -> bool:
        return self._put(path, body, IfMatch=tag) if tag else self.create(path, body)

    def renew(self, path: str, body: bytes) -> bool:
        return self._put(path, body, IfMatch=self.etag) if self.etag else False

    def delete(self, path: str, token: str) -> None:
        current, tag = self.read(path)
        if current is not None and current.get("token") == token and tag == self.etag:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(path))
