"""Export: a curated run or a mix → a folder in the Hugging Face Hub's dataset layout (and optionally the Hub).

    <out>/README.md                               card: YAML metadata (licence, configs, ...) + body
    <out>/plots/*.png                             the card's plots
    <out>/data/<task_type>/train-00000-of-00002.parquet   data, one subset per task type, sharded by size

`datasets.load_dataset(<out>)` loads every subset (config `default`), `load_dataset(<out>, "math")`
one of them. Rows are streamed shard by shard: memory does not grow with the run.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from factory.cards import build_card, public_name, save_card
from factory.errors import FactoryError
from factory.store import RunStore, open_run

log = logging.getLogger(__name__)

DEFAULT_SHARD_MB = 256
EXPORT_MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string()), ("reasoning_content", pa.string())])
RUN_READ_COLUMNS = ["sample_id", "prompt_id", "sample_index", "source", "task_type", "language", "prompt", "prompt_messages",
                    "reasoning", "answer", "text", "reference", "run", "recipe_hash", "teacher_role", "model", "temperature",
                    "top_p", "max_new_tokens", "seed", "finish_reason", "prompt_tokens", "completion_tokens", "created_at"]


@dataclass
class ExportReport:
    name: str
    kind: str
    out_dir: str
    rows: int
    shards: list[str] = field(default_factory=list)
    subsets: dict[str, int] = field(default_factory=dict)
    card: str = ""
    plots: list[str] = field(default_factory=list)
    pushed_to: str | None = None


def export_dataset(*, run: str | None = None, mix: str | None = None, out_dir: Path, push: str | None = None,
                   shard_mb: float = DEFAULT_SHARD_MB, private: bool = False) -> ExportReport:
    """Write the Hub folder for a run (its selected samples) or a mix. The single entry point of this stage."""
    if run and mix:
        raise FactoryError("--run and --mix: give one of them, not both")
    if shard_mb <= 0:
        raise FactoryError(f"--shard-mb: expected a positive size in MB, got {shard_mb}")
    out_dir = Path(out_dir)
    _check_replaceable(out_dir)
    # Build beside the target and swap in at the end: a failed export leaves the old folder as it was.
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        if mix:
            batches = _mix_batches(mix)
            name, kind = mix, "mix"
        else:
            store = open_run(run, local_only="export")
            batches = _run_batches(store)
            name, kind = store.name, "run"
        subsets, shards = _write_shards(batches, staging / "data", int(shard_mb * 1024 * 1024))
        if not shards:
            what = f"run '{name}' has no selected samples; run `factory filter --run {name}` first" if kind == "run" \
                else f"mix '{name}' has no rows"
            raise FactoryError(f"export: {what}")
        card = build_card(run=name if kind == "run" else None, mix=name if kind == "mix" else None, target=staging)
        readme = save_card(card, staging, configs=_configs(subsets))
        _publish(staging, out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    report = ExportReport(name, kind, str(out_dir), sum(subsets.values()), [str(Path("data") / s) for s in shards], subsets,
                          str(out_dir / readme.name), [f"plots/{p}" for p in card.plots])
    if push:
        report.pushed_to = push_folder(out_dir, push, private=private)
    return report


def push_folder(folder: Path, repo_id: str, *, private: bool = False) -> str:
    """Upload an exported folder as a dataset repo (needs a Hub token: `hf auth login` or HF_TOKEN)."""
    try:
        from huggingface_hub import HfApi
    except ImportError:
        raise FactoryError("--push: huggingface_hub is not installed (pip install huggingface_hub)") from None
    api = HfApi()
    try:
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="dataset",
                          commit_message="factory export")
    except Exception as exc:  # noqa: BLE001 (any failure of the upload: no token, no network, refused; the folder stays)
        raise FactoryError(f"--push {repo_id}: {str(exc).strip().splitlines()[0]} (the folder {folder} is complete; "
                           "push it again later)") from None
    return f"https://huggingface.co/datasets/{repo_id}"


# ---------------------------------------------------------------- rows
def _run_batches(store: RunStore) -> Iterator[pa.Table]:
    from factory.filter import read_accepted_ids

    selected = pa.array(sorted(read_accepted_ids(store)), pa.string())
    for batch in store.iter_sample_batches(RUN_READ_COLUMNS):
        table = pa.Table.from_batches([batch])
        table = table.filter(pc.is_in(table.column("sample_id"), value_set=selected))
        if table.num_rows:
            yield _run_rows(table)


def _run_rows(table: pa.Table) -> pa.Table:
    rows = table.to_pylist()
    for row in rows:
        prompt = row.pop("prompt_messages") or []
        # The SFT pair is (question, response): few-shot turns of the generation prompt are not exported.
        system = [m for m in prompt[:1] if m["role"] == "system"]
        user = [m for m in prompt if m["role"] == "user"][-1:] or [{"role": "user", "content": row["prompt"] or ""}]
        row["messages"] = [{"role": m["role"], "content": m["content"], "reasoning_content": ""} for m in system + user]
        row["messages"].append({"role": "assistant", "content": row["answer"] or "", "reasoning_content": row["reasoning"] or ""})
        row["model"] = public_name(row["model"])
    schema = pa.schema([f if f.name != "prompt_messages" else pa.field("messages", pa.list_(EXPORT_MESSAGE))
                        for f in table.schema])
    order = [n if n != "prompt_messages" else "messages" for n in table.column_names]
    return pa.Table.from_pylist([{k: r[k] for k in order} for r in rows], schema=schema)


def _mix_batches(name: str) -> Iterator[pa.Table]:
    from factory.mix import datasets_dir

    files = sorted((datasets_dir() / name / "data").glob("part-*.parquet"))
    if not (datasets_dir() / name / "manifest.json").exists() or not files:
        known = sorted(p.parent.name for p in datasets_dir().glob("*/manifest.json"))
        raise FactoryError(f"--mix {name}: no such mix in {datasets_dir()} (known: {', '.join(known) or 'none yet'})")
    for path in files:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
            yield pa.Table.from_batches([batch])


# ---------------------------------------------------------------- shards
class _ShardWriter:
    """Rolls to a new file once the current one holds `max_bytes` of (uncompressed) rows."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.files: list[Path] = []
        self.rows = 0
        self._writer: pq.ParquetWriter | None = None
        self._bytes = 0

    def write(self, table: pa.Table) -> None:
        # Slices of about a shard's size, so one large batch still spreads over several shards.
        per_row = max(table.nbytes / max(table.num_rows, 1), 1.0)
        step = max(1, int(self.max_bytes / per_row))
        for start in range(0, table.num_rows, step):
            self._write_slice(table.slice(start, step))

    def _write_slice(self, table: pa.Table) -> None:
        if self._writer is None or self._bytes >= self.max_bytes:
            self.close()
            self.directory.mkdir(parents=True, exist_ok=True)
            path = self.directory / f"train-{len(self.files):05d}.parquet"
            self.files.append(path)
            self._writer = pq.ParquetWriter(path, table.schema, compression="zstd")
            self._bytes = 0
        self._writer.write_table(table)
        self._bytes += table.nbytes
        self.rows += table.num_rows

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def finish(self) -> list[Path]:
        """Rename to the Hub's `train-00000-of-00003.parquet` convention now that the count is known."""
        self.close()
        named = []
        for i, path in enumerate(self.files):
            target = path.with_name(f"train-{i:05d}-of-{len(self.files):05d}.parquet")
            path.rename(target)
            named.append(target)
        return named


def _write_shards(batches: Iterator[pa.Table], data_dir: Path, max_bytes: int) -> tuple[dict[str, int], list[str]]:
    writers: dict[str, _ShardWriter] = {}
    for table in batches:
        for task in sorted(set(table.column("task_type").to_pylist())):
            part = table.filter(pc.equal(table.column("task_type"), task)) if task is not None else \
                table.filter(pc.is_null(table.column("task_type")))
            subset = _subset_name(task)
            writers.setdefault(subset, _ShardWriter(data_dir / subset, max_bytes)).write(part)
    subsets: dict[str, int] = {}
    shards: list[str] = []
    for subset in sorted(writers):
        writer = writers[subset]
        subsets[subset] = writer.rows
        shards += [str(p.relative_to(data_dir)) for p in writer.finish()]
    return subsets, shards


def _subset_name(task_type: str | None) -> str:
    name = "".join(c if c.isalnum() or c in "_-" else "_" for c in (task_type or "unknown"))
    return name if name != "default" else "default_"


def _configs(subsets: dict[str, int]) -> list[dict[str, Any]]:
    """`default` = every subset; then one config per task type (the Hub's viewer shows each)."""
    configs: list[dict[str, Any]] = [{"config_name": "default", "default": True,
                                      "data_files": [{"split": "train", "path": "data/*/train-*.parquet"}]}]
    if len(subsets) > 1:
        configs += [{"config_name": s, "data_files": [{"split": "train", "path": f"data/{s}/train-*.parquet"}]} for s in subsets]
    return configs


def _check_replaceable(out_dir: Path) -> None:
    """An existing --out is replaced whole, so it must hold nothing but an earlier export (no .git, no notes)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise FactoryError(f"--out {out_dir}: is a file; expected a directory (new, empty, or an earlier export)")
    if not out_dir.exists():
        return
    entries = {p.name for p in out_dir.iterdir()}
    if not entries:
        return
    readme = out_dir / "README.md"
    is_export = entries <= {"README.md", "data", "plots"} and readme.is_file() and "- factory\n" in readme.read_text(errors="replace")
    if not is_export:
        raise FactoryError(f"--out {out_dir}: holds other files ({', '.join(sorted(entries)[:5])}); expected a new or empty "
                           "directory or an earlier `factory export`, which is replaced whole")


def _publish(staging: Path, out_dir: Path) -> None:
    """Swap the finished folder in; an older export in the way is replaced as a whole."""
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        out_dir.rename(old)
    staging.rename(out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
