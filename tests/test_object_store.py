"""Runs on S3: a real S3-compatible server (moto) on 127.0.0.1; import, filter (local and Ray executors),
resume after SIGKILL, the lease lock, commit markers and `factory sql`, compared with the same run on disk."""

from __future__ import annotations

import json
import os
import random
import socket
import time
import uuid
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest

from tests.conftest import run_cli
from tests.test_filter_engine import replay_recipe, write_traces

moto_server = pytest.importorskip("moto.server", reason='S3 tests need the dev extra (moto[server])')
boto3 = pytest.importorskip("boto3")

TRACES = 600


@pytest.fixture(scope="module")
def s3_endpoint() -> str:
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    _, port = server.get_host_and_port()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_store(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """A fresh bucket; FACTORY_STORE points at it, credentials and endpoint come from the usual AWS variables."""
    for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_ENDPOINT_URL": s3_endpoint}.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    bucket = f"factory-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("FACTORY_HOME", str(home))
    monkeypatch.setenv("FACTORY_STORE", f"s3://{bucket}/runs")
    monkeypatch.chdir(tmp_path)
    return f"s3://{bucket}/runs"


def s3_verdicts(uri: str) -> dict[tuple[str, str], tuple[bool | None, str | None]]:
    from factory.object_store import ObjectRunStore

    store = ObjectRunStore.at(uri)
    out = {}
    for step in store.verdict_steps():
        for row in store.read_verdicts(step).select(["sample_id", "step", "passed", "code"]).to_pylist():
            out[(row["sample_id"], row["step"])] = (row["passed"], row["code"])
    return out


def s3_verdict_rows(uri: str) -> list[tuple[str, str]]:
    from factory.object_store import ObjectRunStore

    store = ObjectRunStore.at(uri)
    return [(r["sample_id"], r["step"]) for step in store.verdict_steps()
            for r in store.read_verdicts(step).select(["sample_id", "step"]).to_pylist()]


def local_verdicts(run_dir: Path) -> dict[tuple[str, str], tuple[bool | None, str | None]]:
    from tests.test_filter_engine import latest_verdicts

    return latest_verdicts(run_dir)


@pytest.fixture
def imported(s3_store: str, tmp_path: Path) -> tuple[str, Path]:
    return import_both(s3_store, tmp_path, TRACES)


def import_both(s3_store: str, tmp_path: Path, traces: int) -> tuple[str, Path]:
    """The same traces imported into the S3 store and into a local one (`--store DIR`)."""
    write_traces(tmp_path, traces)
    recipe = str(replay_recipe(tmp_path))
    home = Path(os.environ["FACTORY_HOME"])
    run_cli("generate", "--recipe", recipe, "--quiet", home=home)
    local = tmp_path / "local-runs"
    run_cli("--store", str(local), "generate", "--recipe", recipe, "--quiet", home=home)
    return f"{s3_store}/replayed", local / "replayed"


def test_import_filter_and_sql_on_s3_equal_the_same_run_on_disk(imported: tuple[str, Path], tmp_path: Path) -> None:
    from factory.object_store import ObjectRunStore

    s3_run, local_run = imported
    store = ObjectRunStore.at(s3_run)
    assert store.exists() and len(store.sample_ids()) == TRACES
    assert sorted(store.sample_ids()) == sorted(ObjectRunStore.at(s3_run).read_column("sample_id"))
    assert not any(local_run.parent.glob(".import-*"))
    home = Path(os.environ["FACTORY_HOME"])
    assert not (home / "runs").exists()  # the S3 run wrote nothing on disk
    run_cli("filter", "--run", "replayed", "--quiet", "--workers", "2", home=home)
    run_cli("--store", str(local_run.parent), "filter", "--run", "replayed", "--quiet", "--workers", "2", home=home)
    got, expected = s3_verdicts(s3_run), local_verdicts(local_run)
    assert got == expected and len(got) > TRACES  # every step decided, as on disk
    assert {"duplicate_exact", "wrong_answer", "over_k"} <= {code for _, code in got.values()}
    assert max(Counter(s3_verdict_rows(s3_run)).values()) == 1
    report = store.read_json("filter_report.json")
    assert report["generated"] == TRACES and report["selected"] == json.loads((local_run / "filter_report.json").read_text())["selected"]

    def sql(query: str, *store_flag: str) -> list[dict]:
        return json.loads(run_cli(*store_flag, "sql", query, "--format", "json", home=home).stdout)

    query = "SELECT step, count(*) AS n, count(*) FILTER (WHERE passed) AS passed FROM verdicts GROUP BY ALL ORDER BY ALL"
    assert sql(query) == sql(query, "--store", str(local_run.parent))
    assert sql("SELECT count(*) AS n, count(DISTINCT sample_id) AS ids FROM samples") == [{"n": TRACES, "ids": TRACES}]
    runs = sql("SELECT run, samples, selected, path FROM runs")
    assert runs == [{"run": "replayed", "samples": TRACES, "selected": report["selected"], "path": s3_run}]
    # The connection itself still reaches no file or URL outside what it was given.
    denied = run_cli("sql", f"SELECT * FROM read_parquet('{tmp_path / 'traces.jsonl'}')", home=home, check=False)
    assert denied.returncode == 2 and "error" in denied.stderr
    card = run_cli("card", "--run", "replayed", home=home, check=False)  # not built for object stores: one line
    assert card.returncode == 2 and "reads runs on local disk only" in card.stderr and "Traceback" not in card.stderr


def test_ray_executor_on_s3_gives_the_local_executors_verdicts(imported: tuple[str, Path]) -> None:
    ray = pytest.importorskip("ray", reason='the Ray executor is an optional extra: pip install -e ".[ray]"')
    from factory.filter import run_filter

    s3_run, local_run = imported
    home = Path(os.environ["FACTORY_HOME"])
    run_cli("--store", str(local_run.parent), "filter", "--run", "replayed", "--quiet", "--workers", "2", home=home)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        report = run_filter("replayed", progress=False, executor="ray")
        assert report.executor == "ray" and report.generated == TRACES
        assert s3_verdicts(s3_run) == local_verdicts(local_run)
        again = run_filter("replayed", progress=False, executor="ray")  # resume: nothing left to decide
        assert all(s.computed == 0 for s in again.steps)
    finally:
        ray.shutdown()
    assert max(Counter(s3_verdict_rows(s3_run)).values()) == 1


def test_filter_on_s3_killed_at_random_points_resumes_to_the_same_verdicts(s3_store: str, tmp_path: Path) -> None:
    from tests.test_generate import kill_at_random_points

    s3_run, local_run = import_both(s3_store, tmp_path, 6_000)
    home = Path(os.environ["FACTORY_HOME"])
    run_cli("--store", str(local_run.parent), "filter", "--run", "replayed", "--quiet", "--workers", "2", home=home)
    args = ["filter", "--run", "replayed", "--quiet", "--workers", "2"]
    at_kills: list[int] = []
    kills = kill_at_random_points(args, home=home, progress=lambda: len(s3_verdict_rows(s3_run)),
                                  rng=random.Random(7), max_delay_s=1.0, attempts=3, progress_at_kills=at_kills)
    assert kills >= 1 and min(at_kills) < len(local_verdicts(local_run))  # a kill really stopped it short
    run_cli(*args, home=home)  # the killed writer's lease (a dead pid on this host) is taken over at once
    assert max(Counter(s3_verdict_rows(s3_run)).values()) == 1  # nothing decided twice
    assert s3_verdicts(s3_run) == local_verdicts(local_run)


def test_a_failed_import_leaves_no_run_and_uncommitted_shards_are_not_read(s3_store: str, tmp_path: Path) -> None:
    from factory.object_store import ObjectRunStore

    traces = write_traces(tmp_path, 200)
    good = traces.read_text()
    traces.write_text(good + "{not json\n")
    home = Path(os.environ["FACTORY_HOME"])
    recipe = str(replay_recipe(tmp_path))
    failed = run_cli("generate", "--recipe", recipe, "--quiet", home=home, check=False)
    assert failed.returncode == 2 and "traces.jsonl" in failed.stderr
    store = ObjectRunStore.at(f"{s3_store}/replayed")
    assert not store.exists() and store.sample_shards() == []
    # A shard written but never committed (a writer killed before its marker) is not part of the run.
    store.write_shard(store.samples_dir, pa.table({"sample_id": ["ghost"]}))
    assert store.sample_shards() == [] and store.sample_ids() == set()
    traces.write_text(good)
    run_cli("generate", "--recipe", recipe, "--quiet", home=home)  # accepted as a first import
    assert len(store.sample_ids()) == 200 and "ghost" not in store.sample_ids()
    again = run_cli("generate", "--recipe", recipe, home=home)  # exactly once: nothing new
    assert len(store.read_column("sample_id")) == 200 and again.returncode == 0
    changed = Path(recipe)
    changed.write_text(changed.read_text().replace("model: some-r1", "model: other-r1"))
    refused = run_cli("generate", "--recipe", recipe, home=home, check=False)
    assert refused.returncode == 2 and f"({s3_store}/replayed) was made by a different recipe" in refused.stderr
    run_cli("generate", "--recipe", recipe, "--new-run", "--quiet", home=home)  # beside it, on S3 too
    beside = ObjectRunStore.at(f"{s3_store}/replayed-2")
    assert beside.read_manifest()["teacher"]["model"] == "other-r1" and len(beside.sample_ids()) == 200
    assert len(store.sample_ids()) == 200


def test_the_lease_refuses_a_live_writer_and_takes_over_a_lapsed_one(imported: tuple[str, Path]) -> None:
    from factory.errors import StoreError
    from factory.object_store import ObjectRunStore

    s3_run, _ = imported
    store = ObjectRunStore.at(s3_run)
    home = Path(os.environ["FACTORY_HOME"])
    with store.lock("filter"):
        refused = run_cli("filter", "--run", "replayed", "--quiet", home=home, check=False)
        assert refused.returncode == 2 and "is being written by `factory filter`" in refused.stderr
        with pytest.raises(StoreError, match="being written"):
            with ObjectRunStore.at(s3_run).lock("generate"):
                pass
    lock_key = f"{s3_run.split('://', 1)[1].split('/', 1)[1].rsplit('/', 1)[0]}/.replayed.lock"
    bucket = s3_run.split("/")[2]
    client = boto3.client("s3")
    elsewhere = {"host": f"not-{socket.gethostname()}", "pid": 1, "command": "filter", "since": "2026-01-01T00:00:00",
                 "token": "x"}
    client.put_object(Bucket=bucket, Key=lock_key, Body=json.dumps({**elsewhere, "expires": time.time() + 600}))
    with pytest.raises(StoreError, match="being written by `factory filter` \\(pid 1 on host not-"):
        with store.lock("filter"):
            pass
    client.put_object(Bucket=bucket, Key=lock_key, Body=json.dumps({**elsewhere, "expires": time.time() - 1}))
    with store.lock("filter"):  # lapsed: taken over
        holder = json.loads(client.get_object(Bucket=bucket, Key=lock_key)["Body"].read())
        assert holder["pid"] == os.getpid()
    assert "Contents" not in client.list_objects_v2(Bucket=bucket, Prefix=lock_key)  # released


def test_a_writer_whose_lease_was_taken_stops_at_its_next_write(imported: tuple[str, Path],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from factory.errors import StoreError
    from factory.object_store import ObjectRunStore

    monkeypatch.setenv("FACTORY_LEASE_SECONDS", "0.6")
    s3_run, _ = imported
    store = ObjectRunStore.at(s3_run)
    bucket = s3_run.split("/")[2]
    lock_key = f"{s3_run.split('://', 1)[1].split('/', 1)[1].rsplit('/', 1)[0]}/.replayed.lock"
    with store.lock("filter"):
        store.append_verdicts("toy", [{"sample_id": "a", "step": "toy", "passed": True}])
        boto3.client("s3").put_object(Bucket=bucket, Key=lock_key, Body=b'{"pid": 2, "token": "other"}')
        deadline = time.monotonic() + 10
        while store._lease is not None and not store._lease.lost and time.monotonic() < deadline:
            time.sleep(0.05)
        with pytest.raises(StoreError, match="lost its lock"):
            store.append_verdicts("toy", [{"sample_id": "b", "step": "toy", "passed": True}])
    assert [r["sample_id"] for r in store.read_verdicts("toy").to_pylist()] == ["a"]


@pytest.mark.parametrize("kind", ["s3-endpoint-in-uri", "fsspec-memory"])
def test_other_store_uris_generate_filter_and_query(kind: str, s3_store: str, s3_endpoint: str, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """An S3 endpoint given in the URI (not the environment), and an fsspec-only filesystem (memory://)."""
    from factory.filter import run_filter
    from factory.generate import run_generate
    from factory.object_store import ObjectRunStore
    from factory.sql import run_sql

    if kind == "s3-endpoint-in-uri":
        monkeypatch.delenv("AWS_ENDPOINT_URL")
        base = f"{s3_store}?endpoint_override={s3_endpoint.split('://')[1]}&scheme=http"
    else:
        base = f"memory://factory-{uuid.uuid4().hex[:8]}/runs"
    monkeypatch.setenv("FACTORY_STORE", base)
    write_traces(tmp_path, 120)
    report = run_generate(str(replay_recipe(tmp_path)), progress=False)
    assert report.generated == 120 and report.run_dir.startswith(base.split("?")[0])
    filtered = run_filter("replayed", progress=False, workers=1)
    assert filtered.generated == 120 and filtered.selected > 0
    store = ObjectRunStore.at(report.run_dir)
    assert store.read_json("filter_report.json")["selected"] == filtered.selected
    counts = run_sql("SELECT count(*) FROM samples").rows, run_sql("SELECT count(*) FROM verdicts WHERE step = 'selection' AND passed").rows
    assert counts == ([(120,)], [(filtered.selected,)])
    if kind == "s3-endpoint-in-uri":  # the lease went to the same server, through boto3's conditional put
        with store.lock("filter"):
            assert type(store._lease.backend).__name__ == "_S3Conditional"


def test_an_unreachable_store_is_one_line(s3_store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as unused:  # a port nobody listens on
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    home = Path(os.environ["FACTORY_HOME"])
    for args in (["filter", "--run", "replayed"], ["sql", "SELECT count(*) FROM samples"]):
        proc = run_cli(*args, home=home, check=False, timeout=120)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert "check the --store URI" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_where_the_runs_are(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from factory.object_store import join_uri
    from factory.paths import factory_home, runs_dir, runs_location

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FACTORY_STORE", raising=False)
    monkeypatch.setenv("FACTORY_HOME", "s3://bucket/factory/")
    assert runs_location() == "s3://bucket/factory/runs"
    assert factory_home() == tmp_path / ".factory" and runs_dir() == tmp_path / ".factory" / "runs"  # models stay local
    monkeypatch.setenv("FACTORY_STORE", "file://" + str(tmp_path / "runs-here"))
    assert runs_location() == tmp_path / "runs-here" == runs_dir()  # file:// is a local path (flock, renames)
    assert join_uri("s3://b/runs?endpoint_override=h:9000&scheme=http", "x") == "s3://b/runs/x?endpoint_override=h:9000&scheme=http"


def test_the_tiny_teacher_generates_into_s3_exactly_once(s3_store: str, tiny_models_dir: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from factory.generate import run_generate
    from factory.object_store import ObjectRunStore
    from tests.test_generate import make_recipe, planned_ids

    home = Path(os.environ["FACTORY_HOME"])
    (home / "models").symlink_to(tiny_models_dir, target_is_directory=True)
    recipe = make_recipe(tmp_path, prompts=4, n=2, tokens=16, batch=4, flush=2)
    first = run_generate(str(recipe), progress=False)
    store = ObjectRunStore.at(f"{s3_store}/tiny_gen")
    shards = store.sample_shards()
    assert first.generated == 8 and first.shards_written == len(shards) >= 2  # flushed every 2 samples or second
    assert sorted(store.read_column("sample_id")) == sorted(planned_ids(recipe, 4, 2))
    again = run_generate(str(recipe), progress=False)  # resumed: everything is there
    assert again.generated == 0 and again.already_present == 8 and again.resumed
    manifest = store.read_manifest()
    assert manifest["counts"]["unique_sample_ids"] == 8 and len(manifest["sessions"]) == 2
    assert manifest["shards"] == [Path(p).name for p in shards] == [Path(p).name for p in store.sample_shards()]
