"""`executor: ray`: the same filter steps on Ray Data, over the same Parquet store.

Workers read the sample shards themselves (``ray.data.read_parquet``: a local path or any
pyarrow/fsspec filesystem such as ``s3://``), project the step's columns, keep the samples
the step has still to decide and return verdict rows; the driver writes them into the
run's verdict shards chunk by chunk, exactly as the local executor does, so resume and
the no-duplicates guarantee are the same on both.

Dedup's global step is a distributed grouping, not a gather: exact keys are grouped by key,
and MinHash LSH band keys are grouped by (band, key) (Ray's shuffle), each group emitting the
candidate pairs the local LSH would (each member with its bucket's first and its predecessor)
after checking their Jaccard estimate. The driver holds only the compact result: one
representative per sample and the duplicate edges.

Needs the optional extra: ``pip install -e ".[ray]"``. ``RAY_ADDRESS`` joins a running cluster;
otherwise a local one with ``workers`` CPUs is started for the run.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from factory.engine import filter_task, sketch_task, step_args
from factory.errors import FactoryError
from factory.steps import FilterStep, StepVerdict

log = logging.getLogger(__name__)


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise FactoryError('--executor ray: Ray is not installed; pip install -e ".[ray]" (or executor: local)') from None
    return ray


class RayExecutor:
    """Runs chunks as Ray tasks and steps as Ray Data pipelines; `workers` CPUs when it starts the cluster."""

    def __init__(self, workers: int | None = None, filesystem: Any = None) -> None:
        ray = _ray()
        self.filesystem = filesystem  # the store's (e.g. S3) filesystem, which the shard paths are on; None: local
        self._started = False
        if not ray.is_initialized():
            address = os.environ.get("RAY_ADDRESS")
            ray.init(address=address, num_cpus=None if address else workers, include_dashboard=False,
                     log_to_driver=False, logging_level=logging.WARNING)
            self._started = True
        self.workers = workers or int(ray.cluster_resources().get("CPU", 1))
        from ray.data import DataContext

        context = DataContext.get_current()
        context.execution_options.preserve_order = True
        context.enable_progress_bars = False

    def map(self, fn: Callable[..., Any], args: tuple[Any, ...], items: Iterable[tuple[Any, Any]]
            ) -> Iterator[tuple[Any, Any]]:
        """(meta, payload) → (meta, fn(*args, payload)) as Ray tasks, in order, 2 per worker in flight."""
        ray = _ray()
        remote = ray.remote(fn)
        pending: list[tuple[Any, Any]] = []
        for meta, payload in items:
            pending.append((meta, remote.remote(*args, payload)))
            if len(pending) >= 2 * self.workers:
                meta0, ref = pending.pop(0)
                yield meta0, ray.get(ref)
        for meta, ref in pending:
            yield meta, ray.get(ref)

    def close(self) -> None:
        if self._started:
            _ray().shutdown()

    # ------------------------------------------------------------ per-sample steps on Ray Data
    def filter_dataset(self, step: FilterStep, paths: list[str], todo_ids: pa.Array, chunk_rows: int
                       ) -> Iterator[pa.Table]:
        """Verdict tables (sample_id + verdict columns) of the `todo_ids` samples, chunk_rows at a time."""
        ray = _ray()
        columns = list(dict.fromkeys(["sample_id", *step.input_columns()]))
        cls, params_json = step_args(step)
        dataset = ray.data.read_parquet(paths, filesystem=self.filesystem).select_columns(columns).map_batches(
            _filter_batch, batch_format="pyarrow", fn_kwargs={"cls": cls, "params_json": params_json,
                                                               "todo": ray.put(todo_ids)},
            concurrency=self.workers)
        yield from dataset.iter_batches(batch_size=chunk_rows, batch_format="pyarrow")

    # ------------------------------------------------------------ dedup: distributed grouping
    def group_duplicates(self, step: Any, paths: list[str], candidate_ids: pa.Array, lengths: np.ndarray
                         ) -> Iterator[StepVerdict]:
        """Dedup verdicts for the candidates (in their order) from LSH buckets grouped by key on the cluster.

        The `against_runs` runs' selected samples are one more dataset sketched on the workers and
        grouped with the run's by exact key and band key; they come first (positions 0..R-1), as
        in the local Deduplicator, and win their clusters."""
        from verifiers.dedup import _UnionFind, lsh_bands

        ray = _ray()
        params = step.params.dedup_params()
        cls, params_json = step_args(step)
        columns = list(dict.fromkeys(["sample_id", *step.input_columns()]))
        names: list[str] = []
        ranks: list[tuple[int, str]] = []
        datasets = []
        for run, shards, accepted in step.reference_runs():
            datasets.append(self._sketches(shards, columns, cls, params_json, accepted, len(names), local=True))
            ref_ids = accepted.to_pylist()
            names.extend(f"{run}:{sid}" for sid in ref_ids)
            ranks.extend((0, sid) for sid in ref_ids)
        n_ref = len(names)
        datasets.append(self._sketches(paths, columns, cls, params_json, candidate_ids, n_ref))
        sketches = (datasets[0].union(*datasets[1:]) if len(datasets) > 1 else datasets[0]).materialize()
        ids = candidate_ids.to_pylist()
        names.extend(ids)
        ranks.extend((int(length), sid) for length, sid in zip(lengths.tolist(), ids))
        n = len(names)
        # Exact duplicates: group by the exact key; every member points at the group's first sample.
        exact = sketches.select_columns(["pos", "k0", "k1"]).groupby(["k0", "k1"]).map_groups(
            _first_of_group, batch_format="pyarrow")
        rep = np.arange(n)
        for batch in exact.iter_batches(batch_size=65_536, batch_format="pyarrow"):
            rep[batch.column("pos").to_numpy()] = batch.column("rep").to_numpy()
        union = _UnionFind(n)
        for i in np.flatnonzero(rep != np.arange(n)):
            union.union(int(i), int(rep[i]))
        edges = 0
        if params.near:
            bands, rows = lsh_bands(params.threshold, params.num_perm)
            reps = pa.array(np.flatnonzero(rep == np.arange(n)))
            buckets = sketches.map_batches(_band_rows, batch_format="pyarrow",
                                           fn_kwargs={"bands": bands, "rows": rows, "reps": ray.put(reps)})
            pairs = buckets.groupby(["band", "bucket"]).map_groups(
                _bucket_pairs, batch_format="pyarrow",
                fn_kwargs={"threshold": params.threshold, "short_text_shingles": params.short_text_shingles})
            for batch in pairs.iter_batches(batch_size=65_536, batch_format="pyarrow"):
                for a, b in zip(batch.column("a").to_numpy(), batch.column("b").to_numpy()):
                    union.union(int(a), int(b))
                    edges += 1
        log.info("dedup on ray: %d samples (%d from other runs), %d exact duplicates, %d near pairs verified", n,
                 n_ref, int((rep != np.arange(n)).sum()), edges)
        return _dedup_verdicts(union.roots(), rep, names, ranks, n_ref, sketches)

    def _sketches(self, paths: list[str], columns: list[str], cls: type[FilterStep], params_json: str,
                  wanted: pa.Array, offset: int, *, local: bool = False) -> Any:
        """Sketch rows (pos = offset + index in `wanted`, exact key, shingles, signature) of the `wanted` samples.

        `local`: the shards are local files (`against_runs` reads local runs), whatever the run's own store is."""
        ray = _ray()
        return ray.data.read_parquet(paths, filesystem=None if local else self.filesystem).select_columns(columns).map_batches(
            _sketch_batch, batch_format="pyarrow",
            fn_kwargs={"cls": cls, "params_json": params_json, "candidates": ray.put(wanted), "offset": offset},
            concurrency=self.workers)


# ---------------------------------------------------------------- Ray Data functions (run on workers)
def _filter_batch(batch: pa.Table, cls: type[FilterStep], params_json: str, todo: Any) -> pa.Table:
    ray = _ray()
    wanted = ray.get(todo) if isinstance(todo, ray.ObjectRef) else todo
    batch = batch.filter(pc.is_in(batch.column("sample_id"), value_set=wanted))
    verdicts = filter_task(cls, params_json, batch) if batch.num_rows else []
    return pa.table({
        "sample_id": batch.column("sample_id"),
        "passed": pa.array([v[0] for v in verdicts], pa.bool_()),
        "code": pa.array([v[1] for v in verdicts], pa.string()),
        "reason": pa.array([v[2] for v in verdicts], pa.string()),
        "score": pa.array([v[3] for v in verdicts], pa.float64()),
        "detail": pa.array([json.dumps(v[4], default=str) if v[4] else None for v in verdicts], pa.string()),
    })


def _sketch_batch(batch: pa.Table, cls: type[FilterStep], params_json: str, candidates: Any, offset: int = 0
                  ) -> pa.Table:
    ray = _ray()
    wanted = ray.get(candidates) if isinstance(candidates, ray.ObjectRef) else candidates
    pos = pc.index_in(batch.column("sample_id"), value_set=wanted)
    batch = batch.filter(pc.is_valid(pos))
    pos = pos.filter(pc.is_valid(pos))
    sketch = sketch_task(cls, params_json, batch)
    sigs = np.ascontiguousarray(sketch.signatures, dtype=np.uint32)
    width = sigs.shape[1] * 4 if sigs.ndim == 2 and sigs.shape[1] else 4
    sig_array = pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), len(batch), [None, pa.py_buffer(sigs.tobytes())]) \
        if sigs.size else pa.array([b"\0" * 4] * len(batch), pa.binary(4))
    return pa.table({"pos": pc.add(pos.cast(pa.int64()), offset), "k0": sketch.exact_keys[:, 0], "k1": sketch.exact_keys[:, 1],
                     "shingles": sketch.shingles, "sig": sig_array})


def _first_of_group(group: pa.Table) -> pa.Table:
    pos = group.column("pos").to_numpy()
    return pa.table({"pos": pos, "rep": np.full(len(pos), pos.min())})


def _signatures(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    width = column.type.byte_width // 4
    data = np.frombuffer(column.buffers()[1], dtype=np.uint32)[column.offset * width:(column.offset + len(column)) * width]
    return data.reshape(len(column), width)


def _band_rows(batch: pa.Table, bands: int, rows: int, reps: Any) -> pa.Table:
    """One row per (sample, band): its bucket key in that band, for representatives with shingles."""
    from verifiers.dedup import _band_keys

    ray = _ray()
    wanted = ray.get(reps) if isinstance(reps, ray.ObjectRef) else reps
    keep = pc.and_(pc.is_in(batch.column("pos"), value_set=wanted), pc.greater(batch.column("shingles"), 0))
    batch = batch.filter(keep)
    sigs = _signatures(batch.column("sig"))
    parts = []
    for band in range(bands):
        parts.append(pa.table({"band": np.full(len(batch), band, np.int32), "bucket": _band_keys(sigs, rows, band),
                               "pos": batch.column("pos"), "k0": batch.column("k0"), "k1": batch.column("k1"),
                               "shingles": batch.column("shingles"), "sig": batch.column("sig")}))
    return pa.concat_tables(parts) if parts else batch


def _bucket_pairs(group: pa.Table, threshold: float, short_text_shingles: int) -> pa.Table:
    """The local LSH's pairs in one bucket, verified as it verifies them.

    Members in exact-key order (the local LSH's order of representatives), each paired with the
    bucket's first and with its predecessor; a pair passes at the local Jaccard threshold for the
    shingle count of its shorter text."""
    from verifiers.dedup import pair_thresholds

    empty = pa.table({"a": pa.array([], pa.int64()), "b": pa.array([], pa.int64())})
    if group.num_rows < 2:
        return empty
    order = np.lexsort((group.column("k1").to_numpy(), group.column("k0").to_numpy()))
    pos = group.column("pos").to_numpy()[order]
    shingles = group.column("shingles").to_numpy()[order]
    sigs = _signatures(group.column("sig"))[order]
    idx = np.arange(1, len(pos))
    cand = np.concatenate([np.stack([np.zeros_like(idx), idx], 1), np.stack([idx - 1, idx], 1)])
    cand = np.unique(cand, axis=0)
    need = pair_thresholds(threshold, np.minimum(shingles[cand[:, 0]], shingles[cand[:, 1]]), short_text_shingles)
    similar = (sigs[cand[:, 0]] == sigs[cand[:, 1]]).mean(axis=1) >= need
    cand = cand[similar]
    return pa.table({"a": pos[cand[:, 0]], "b": pos[cand[:, 1]]}) if len(cand) else empty


def _dedup_verdicts(roots: np.ndarray, rep: np.ndarray, names: list[str], ranks: list[tuple[int, str]], n_ref: int,
                    sketches: Any) -> Iterator[StepVerdict]:
    """Verdicts of the run's samples (positions n_ref..): the keeper of each cluster as the local
    Deduplicator picks it (other runs' samples first, then length, then id)."""
    from factory.steps.dedup import step_verdict
    from verifiers.dedup import DedupVerdict

    members: dict[int, list[int]] = {}
    for i, r in enumerate(roots.tolist()):
        members.setdefault(r, []).append(i)
    keeper_of = np.arange(len(names))
    sizes = np.ones(len(names), np.int64)
    for group in members.values():
        if len(group) > 1:
            keeper = min(group, key=lambda i: (i >= n_ref, ranks[i], names[i], i))
            keeper_of[group] = keeper
            sizes[group] = len(group)
    clustered = np.flatnonzero(sizes > 1)
    sigs: dict[int, np.ndarray] = {}
    if len(clustered):  # signatures of clustered samples only: the near similarity to their keeper
        wanted = pa.array(clustered)
        chosen = sketches.map_batches(lambda b: b.filter(pc.is_in(b["pos"], value_set=wanted)).select(["pos", "sig"]),
                                      batch_format="pyarrow")
        for batch in chosen.iter_batches(batch_size=65_536, batch_format="pyarrow"):
            for p, s in zip(batch.column("pos").to_numpy(), _signatures(batch.column("sig"))):
                sigs[int(p)] = s
    for i in range(n_ref, len(names)):
        keeper, size = int(keeper_of[i]), int(sizes[i])
        if keeper == i:
            yield step_verdict(DedupVerdict(names[i], True, "unique", names[i], None, None, size))
            continue
        same_text = rep[i] == rep[keeper]
        kind = "reference" if keeper < n_ref else "exact" if same_text else "near"
        similarity = 1.0 if same_text else float((sigs[i] == sigs[keeper]).mean())
        yield step_verdict(DedupVerdict(names[i], False, kind, names[keeper], names[keeper], similarity, size))
