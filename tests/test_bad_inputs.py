"""Every CLI command, fed bad input, says so in one line, exits 2 and leaves the store as it was.

Bad bytes (Latin-1, binary), files that are not what their name says, missing
files, wrong types, out-of-range flags, a read-only FACTORY_HOME and a full one.
The read-only and full homes are real mounts (a tmpfs remounted read-only, a
tmpfs with no space left) where this process may mount (root); elsewhere the
read-only home is a chmod 555 directory and the full home is skipped.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.store_builders import make_run, tree_digest

LATIN1 = b'{"id": "a", "problem": "caf\xe9 au lait: 2 + 2?", "answer": "4"}\n'
BINARY = b'{"id": "a", "problem": "2 + 2?"}\n\x00\xff\xfe\x89PNG\r\n\x1a\n\x00\x00'
NOT_PARQUET = b"PK\x03\x04 this is a zip, not parquet" * 10
GOOD = b'{"id": "a", "problem": "What is 2 + 2?", "answer": "4", "response": "\\\\boxed{4}", "text": "x"}\n'

RECIPE = ("kind: generate\nname: bad\nsources:\n  - {{name: q, path: {source}, fields: {{id: id, prompt: problem, reference: answer}}, "
          "task_type: math}}\nteacher: {{role: rl_1, backend: transformers, model: tiny-r1}}\noutput: {{dataset: bad}}\n")
REPLAY = ("kind: generate\nname: imported\nteacher:\n  role: rl_1\n  backend: replay\n  model: m\n  replay:\n    path: {source}\n"
          "    fields: {{prompt_id: id, prompt: problem, generation: generation}}\n    default_task_type: math\n"
          "output: {{dataset: imported}}\n")


@dataclass
class Case:
    name: str
    argv: list[str]
    expect: str  # a piece of the one error line: the file, flag or field it names
    files: dict[str, bytes] = field(default_factory=dict)  # written to the working directory first
    home: str = "normal"  # normal | read_only | full


CASES = [
    # ---- bad bytes and files that are not what they say
    Case("generate latin-1 source", ["generate", "--recipe", "r.yaml"], "src.jsonl:1: not UTF-8",
         {"src.jsonl": LATIN1, "r.yaml": RECIPE.format(source="src.jsonl").encode()}),
    Case("generate binary source", ["generate", "--recipe", "r.yaml"], "src.jsonl:2: not UTF-8",
         {"src.jsonl": BINARY, "r.yaml": RECIPE.format(source="src.jsonl").encode()}),
    Case("generate parquet that is not", ["generate", "--recipe", "r.yaml"], "src.parquet: not a readable Parquet file",
         {"src.parquet": NOT_PARQUET, "r.yaml": RECIPE.format(source="src.parquet").encode()}),
    Case("generate missing source", ["generate", "--recipe", "r.yaml"], "nope.jsonl",
         {"r.yaml": RECIPE.format(source="nope.jsonl").encode()}),
    Case("generate wrong type override", ["generate", "--recipe", "r.yaml", "sampling.n=many"], "sampling.n",
         {"src.jsonl": GOOD, "r.yaml": RECIPE.format(source="src.jsonl").encode()}),
    Case("generate replay latin-1", ["generate", "--recipe", "r.yaml"], "traces.jsonl:1: not UTF-8",
         {"traces.jsonl": LATIN1, "r.yaml": REPLAY.format(source="traces.jsonl").encode()}),
    Case("generate missing recipe", ["generate", "--recipe", "no_such_recipe"], "no_such_recipe"),
    Case("verify math latin-1", ["verify", "math", "in.jsonl"], "in.jsonl:1: not UTF-8", {"in.jsonl": LATIN1}),
    Case("verify math binary", ["verify", "math", "in.jsonl"], "in.jsonl:2: not UTF-8", {"in.jsonl": BINARY}),
    Case("verify math not parquet", ["verify", "math", "in.parquet"], "in.parquet: not a readable Parquet", {"in.parquet": NOT_PARQUET}),
    Case("verify math missing", ["verify", "math", "missing.jsonl"], "missing.jsonl"),
    Case("verify math wrong column", ["verify", "math", "in.jsonl", "--gold", "nope"], "no column 'nope'", {"in.jsonl": GOOD}),
    Case("verify code latin-1", ["verify", "code", "in.jsonl"], "in.jsonl:1: not UTF-8", {"in.jsonl": LATIN1}),
    Case("verify code not parquet", ["verify", "code", "in.parquet"], "in.parquet: not a readable Parquet", {"in.parquet": NOT_PARQUET}),
    Case("dedup latin-1", ["dedup", "in.jsonl", "--field", "problem"], "in.jsonl:1: not UTF-8", {"in.jsonl": LATIN1}),
    Case("dedup not parquet", ["dedup", "in.parquet"], "in.parquet: not a readable Parquet", {"in.parquet": NOT_PARQUET}),
    Case("dedup missing", ["dedup", "missing.jsonl"], "missing.jsonl"),
    Case("decontaminate latin-1", ["decontaminate", "in.jsonl", "--field", "problem"], "in.jsonl:1: not UTF-8", {"in.jsonl": LATIN1}),
    Case("decontaminate not parquet", ["decontaminate", "in.parquet"], "in.parquet: not a readable Parquet", {"in.parquet": NOT_PARQUET}),
    Case("eval latin-1 bench", ["eval", "--model", "tiny-r1", "--bench", "b.jsonl"], "b.jsonl:1: not UTF-8", {"b.jsonl": LATIN1}),
    Case("distill missing data", ["distill", "--data", "missing.parquet"], "missing.parquet"),
    # ---- out-of-range flags and wrong types
    Case("eval limit 0", ["eval", "--model", "tiny-r1", "--limit", "0"], "--limit"),
    Case("eval k 0", ["eval", "--model", "tiny-r1", "-k", "0"], "-k"),
    Case("eval k not a number", ["eval", "--model", "tiny-r1", "-k", "two"], "-k"),
    Case("eval unknown bench", ["eval", "--model", "tiny-r1", "--bench", "nope"], "--bench"),
    Case("dedup threshold 2", ["dedup", "in.jsonl", "--threshold", "2"], "threshold", {"in.jsonl": GOOD}),
    Case("dedup num-perm 1", ["dedup", "in.jsonl", "--num-perm", "1"], "num_perm", {"in.jsonl": GOOD}),
    Case("decontaminate n 0", ["decontaminate", "in.jsonl", "--n", "0"], "n: expected", {"in.jsonl": GOOD}),
    Case("filter unknown run", ["filter", "--run", "nope"], "--run nope"),
    Case("filter unknown step", ["filter", "--run", "toy", "--only", "nope"], "--only nope"),
    Case("sql bad format", ["sql", "SELECT 1", "--format", "xml"], "--format"),
    Case("sql unknown view", ["sql", "SELECT * FROM nope"], "nope"),
    Case("sql writes", ["sql", "COPY samples TO 'x.parquet'"], "read-only"),
    Case("mix missing recipe", ["mix", "--recipe", "no_such_mix"], "no_such_mix"),
    Case("mix wrong type override", ["mix", "scale=big"], "scale"),
    Case("demo prompts 0", ["demo", "--prompts", "0"], "--prompts"),
    Case("distill max-steps 0", ["distill", "--max-steps", "0"], "--max-steps"),
    Case("card unknown run", ["card", "--run", "nope"], "--run nope"),
    # ---- a read-only home: every writer says so in one line
    Case("generate read-only home", ["generate", "--recipe", "r.yaml"], "writable",
         {"traces.jsonl": b'{"id": "a", "problem": "p", "generation": "g"}\n', "r.yaml": REPLAY.format(source="traces.jsonl").encode()},
         home="read_only"),
    Case("filter read-only home", ["filter", "--run", "toy"], "writable", home="read_only"),
    Case("models build read-only home", ["models", "build"], "writable", home="read_only"),
    # ---- a full home: one line, completed work kept, no partial file
    Case("filter full home", ["filter", "--run", "toy", "--quiet"], "No space left on device", home="full"),
    Case("sql --out on a full disk", ["sql", "SELECT * FROM samples, range(2000)", "--out", "{home}/export.parquet"],
         "No space left on device", home="full"),
    Case("verify math --out on a full disk", ["verify", "math", "in.jsonl", "--gold", "answer", "--out", "{home}/v.jsonl"], "No space left on device",
         {"in.jsonl": GOOD * 2000}, home="full"),
]


def _can_mount() -> bool:
    return os.geteuid() == 0 and subprocess.run(["mount", "--version"], capture_output=True).returncode == 0


@pytest.fixture
def mounts() -> Iterator[list[Path]]:
    mounted: list[Path] = []
    yield mounted
    for point in reversed(mounted):
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def _home(kind: str, tmp_path: Path, mounts: list[Path]) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    if kind != "normal":
        if _can_mount():
            size = "4m" if kind == "full" else "16m"
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(home)], check=True)
            mounts.append(home)
        elif kind == "full":
            pytest.skip("a full disk needs a tmpfs mount (root)")
    make_run(home, samples=40)
    if kind == "full":
        filler = home / f"filler-{uuid.uuid4().hex}"
        with open(filler, "wb", buffering=0) as f:  # fill to the last byte; what is there stays readable
            for chunk in (65536, 4096, 512, 64, 8, 1):
                try:
                    while True:
                        f.write(b"\0" * chunk)
                except OSError:
                    pass
    if kind == "read_only":
        if mounts:
            subprocess.run(["mount", "-o", "remount,ro", str(home)], check=True)
        else:
            for path in [home, *home.rglob("*")]:
                if path.is_dir():
                    path.chmod(0o555)
    return home


def _digest(home: Path) -> dict[str, str]:
    """The store's files and contents; a writer's lock file (`runs/.<run>.lock`) is bookkeeping, not store."""
    return {k: v for k, v in tree_digest(home).items() if not (k.startswith("runs/.") and k.endswith(".lock")) and "filler-" not in k}


@pytest.mark.parametrize("case", CASES, ids=[(c.values[0] if hasattr(c, "values") else c).name for c in CASES])
def test_bad_input_is_one_line_exit_2_store_unchanged(case: Case, tmp_path: Path, mounts: list[Path]) -> None:
    home = _home(case.home, tmp_path, mounts)
    work = tmp_path / "work"
    work.mkdir()
    for name, content in case.files.items():
        (work / name).write_bytes(content)
    before = _digest(home)
    argv = [a.format(home=home) for a in case.argv]
    proc = run_cli(*argv, home=home, check=False, cwd=work, timeout=300)
    assert proc.returncode == 2, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith(("INFO", "WARNING"))]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert case.expect in " ".join(lines), proc.stderr
    assert _digest(home) == before, "the store changed"
    leftovers = [p for p in [*home.rglob("*"), *work.rglob("*")] if p.name.startswith(".") and p.name.endswith(".tmp")]
    assert not leftovers, leftovers


def test_generate_on_a_full_disk_keeps_complete_shards_and_resumes(tmp_path: Path, mounts: list[Path]) -> None:
    """OSError 28 mid-import: one line naming the directory, no partial import published (issue 14, item 3),
    and the same command finishes later."""
    import random

    import pyarrow.parquet as pq

    if not _can_mount():
        pytest.skip("a full disk needs a tmpfs mount (root)")
    home = tmp_path / "home"
    home.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(home)], check=True)
    mounts.append(home)
    rng = random.Random(0)
    work = tmp_path / "work"
    work.mkdir()
    with open(work / "traces.jsonl", "w") as f:
        for i in range(3000):  # incompressible enough to need ~1 MB of shards
            think = "".join(rng.choice("abcdefgh ") for _ in range(300))
            f.write('{"id": "s%d", "problem": "Compute %d + 1.", "generation": "<think>%s</think> \\\\boxed{%d}"}\n' % (i, i, think, i + 1))
    (work / "r.yaml").write_text(REPLAY.format(source="traces.jsonl"))
    proc = run_cli("generate", "--recipe", "r.yaml", "--quiet", home=home, check=False, cwd=work)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "/samples: No space left on device" in lines[0], proc.stderr
    # Imports are staged and published whole: no run, no partial import, no staging dir left behind.
    assert [p.name for p in (home / "runs").iterdir() if not p.name.endswith(".lock")] == []
    samples = home / "runs" / "imported" / "samples"
    subprocess.run(["mount", "-o", "remount,size=8m", str(home)], check=True)  # space freed
    run_cli("generate", "--recipe", "r.yaml", "--quiet", home=home, cwd=work)
    ids = pq.read_table(samples, columns=["sample_id"]).column("sample_id").to_pylist()
    assert len(ids) == len(set(ids)) == 3000
