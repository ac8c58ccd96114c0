"""One writer per run: a second generate/filter/import fails at once naming the holder; a dead holder's lock is stale."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from factory.errors import StoreError
from factory.store import RunStore
from tests.conftest import REPO, run_cli
from tests.store_builders import make_run, tree_digest

HOLDER = r"""
import sys, time
from pathlib import Path
from factory.store import RunStore
with RunStore(Path(sys.argv[1])).lock(sys.argv[2]):
    print("locked", flush=True)
    time.sleep(120)
"""

REPLAY = ("kind: generate\nname: toy\nteacher:\n  role: rl_1\n  backend: replay\n  model: m\n  replay:\n    path: traces.jsonl\n"
          "    fields: {prompt_id: id, prompt: problem, generation: generation}\n    default_task_type: math\n"
          "output: {dataset: toy}\n")


def _hold(run_dir: Path, command: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir), command], stdout=subprocess.PIPE, text=True,
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout.readline().strip() == "locked"
    return proc


@pytest.mark.parametrize("argv", [
    ["filter", "--run", "toy", "--quiet"],
    ["generate", "--recipe", "{recipe}", "--quiet"],  # a replay import into the held run
])
def test_second_writer_fails_at_once_naming_the_holder(tmp_path: Path, argv: list[str]) -> None:
    home = tmp_path / "home"
    store = make_run(home)
    (tmp_path / "traces.jsonl").write_text(json.dumps({"id": "x", "problem": "Say hi.", "generation": "hi"}) + "\n")
    (tmp_path / "toy.yaml").write_text(REPLAY)
    holder = _hold(store.root, "generate")
    try:
        before = tree_digest(store.root)
        started = time.monotonic()
        proc = run_cli(*[a.format(recipe=tmp_path / "toy.yaml") for a in argv], home=home, check=False, cwd=tmp_path)
        assert time.monotonic() - started < 60  # refused, not queued behind the holder
        assert proc.returncode == 2
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        assert f"pid {holder.pid} on host {socket.gethostname()}" in lines[0] and "factory generate" in lines[0]
        assert tree_digest(store.root) == before
    finally:
        holder.kill()
        holder.wait()


def test_lock_of_a_killed_holder_is_taken_over(tmp_path: Path) -> None:
    store = make_run(tmp_path / "home")
    holder = _hold(store.root, "filter")
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    recorded = json.loads(store.lock_path.read_text())
    assert recorded["pid"] == holder.pid  # the dead holder's record is still there: stale
    with store.lock("filter"):
        assert json.loads(store.lock_path.read_text())["pid"] == os.getpid()
        with pytest.raises(StoreError, match=f"pid {os.getpid()}"):
            with RunStore(store.root).lock("generate"):
                pass
    assert store.lock_path.read_text() == ""  # released: nobody holds it
    assert not (store.root / store.lock_path.name).exists()  # the lock lives beside the run, not in it


def test_lock_on_a_read_only_home_is_one_line(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root writes through read-only permissions; see test_bad_inputs for a read-only mount")
    home = tmp_path / "home"
    store = make_run(home)
    (home / "runs").chmod(0o555)
    try:
        with pytest.raises(StoreError, match="lock file.*writable"):
            with store.lock("filter"):
                pass
    finally:
        (home / "runs").chmod(0o755)


OPENAI_RECIPE = """\
kind: generate
name: twice
sources:
  - {{name: q, path: prompts.jsonl, fields: {{id: id, prompt: problem, reference: answer}}, task_type: math}}
teacher:
  role: r1_zero
  backend: openai
  model: fault-model
  openai: {{endpoints: ["{url}"], concurrency: 2, max_retries: 0, timeout_s: 20}}
sampling: {{n: 2, max_new_tokens: 16}}
generation: {{flush_every: 4, flush_seconds: 1}}
output: {{dataset: twice}}
"""


def test_two_generate_processes_on_one_run_write_each_sample_once(tmp_path: Path) -> None:
    """The issue's reproduction: two `factory generate` on one recipe and home. Now the second is refused."""
    sys.path.insert(0, str(Path(__file__).parent))
    from fault_server import FaultConfig, FaultServer

    home = tmp_path / "home"
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"id": i, "problem": f"What is {i} + 1?", "answer": str(i + 1)}) + "\n"
                                                    for i in range(12)))
    with FaultServer(FaultConfig(latency_s=0.4)) as server:
        (tmp_path / "twice.yaml").write_text(OPENAI_RECIPE.format(url=server.url))
        env = {**os.environ, "FACTORY_HOME": str(home), "PYTHONPATH": str(REPO)}
        first = subprocess.Popen([sys.executable, "-m", "cli", "generate", "--recipe", "twice.yaml", "--quiet"], cwd=tmp_path,
                                 env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        lock = home / "runs" / ".twice.lock"
        deadline = time.monotonic() + 60
        while not (lock.exists() and str(first.pid) in lock.read_text()):
            assert time.monotonic() < deadline and first.poll() is None, first.communicate()
            time.sleep(0.05)
        second = run_cli("generate", "--recipe", "twice.yaml", "--quiet", home=home, check=False, cwd=tmp_path)
        out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert second.returncode == 2 and len(second.stderr.strip().splitlines()) == 1
    assert f"pid {first.pid}" in second.stderr and "run 'twice'" in second.stderr
    row = json.loads(run_cli("sql", "SELECT count(*) AS n, count(DISTINCT sample_id) AS ids FROM samples", "--format", "json",
                             home=home).stdout)[0]
    assert pq.read_table(home / "runs" / "twice" / "samples").num_rows == row["n"] == row["ids"] == 24
