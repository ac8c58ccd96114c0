"""A 50 MB prompt line becomes an error sample, detected by length before tokenizing; memory stays bounded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

RECIPE = """\
kind: generate
name: huge
sources:
  - {name: q, path: prompts.jsonl, fields: {id: id, prompt: problem}, task_type: general}
teacher: {role: v3, backend: transformers, model: tiny-qwen, transformers: {batch_size: 4}}
sampling: {n: 2, max_new_tokens: 4, temperature: 0.0}
output: {dataset: huge}
"""

# Runs the real CLI as a child and reports the child's peak RSS (ru_maxrss of waited-for children, in KiB).
MEASURE = r"""
import resource, subprocess, sys
proc = subprocess.run(sys.argv[1:], capture_output=True, text=True)
sys.stderr.write(proc.stderr)
print(proc.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def test_fifty_megabyte_prompt_is_an_error_sample_not_an_oom(tmp_path: Path, tiny_models_dir: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "models").symlink_to(tiny_models_dir, target_is_directory=True)
    huge = "Count the words: " + "lorem ipsum dolor sit amet " * (50_000_000 // 27)
    with open(tmp_path / "prompts.jsonl", "w") as f:
        f.write(json.dumps({"id": "a", "problem": "Say hi."}) + "\n")
        f.write(json.dumps({"id": "huge", "problem": huge}) + "\n")
        f.write(json.dumps({"id": "b", "problem": "Say bye."}) + "\n")
    del huge
    assert (tmp_path / "prompts.jsonl").stat().st_size > 50_000_000
    (tmp_path / "huge.yaml").write_text(RECIPE)
    env = {**os.environ, "FACTORY_HOME": str(home), "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", MEASURE, sys.executable, "-m", "cli", "generate", "--recipe", "huge.yaml", "--quiet"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    returncode, peak_kib = map(int, proc.stdout.split())
    assert returncode == 0, proc.stderr
    # Before the fix: tens of GB (the OOM killer). A 50 MB line is held a few times over, never tokenized.
    print(f"peak RSS {peak_kib / 1024:.0f} MiB")
    assert peak_kib < 2_000_000, f"peak RSS {peak_kib / 1024:.0f} MiB"
    errors = [json.loads(line) for line in (home / "runs" / "huge" / "errors.jsonl").read_text().splitlines()]
    assert {e["prompt_id"] for e in errors} == {"q/huge"} and len(errors) == 2
    assert all("characters" in e["error"] and "context" in e["error"] and "not tokenized" in e["error"] for e in errors)
    import pyarrow.parquet as pq

    samples = pq.read_table(home / "runs" / "huge" / "samples", columns=["prompt_id"]).column("prompt_id").to_pylist()
    assert sorted(samples) == ["q/a", "q/a", "q/b", "q/b"]
