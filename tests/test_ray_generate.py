"""`factory generate --executor ray`: the tiny local teacher as Ray actors on a 2-CPU local cluster makes the
same samples (ids and seeded outputs) as the local executor, exactly once, also after a SIGKILL."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from factory.store import visible_shards
from tests.conftest import run_cli
from tests.test_generate import kill_at_random_points, make_recipe, planned_ids

pytest.importorskip("ray", reason='the Ray executor is an optional extra: pip install -e ".[ray]"')

PROMPTS, N = 10, 3


def samples(run_dir: Path) -> list[tuple[str, str, str, int]]:
    rows = []
    for shard in visible_shards(run_dir / "samples"):
        table = pq.read_table(shard, columns=["sample_id", "text", "finish_reason", "completion_tokens"])
        rows.extend(tuple(r.values()) for r in table.to_pylist())
    return sorted(rows)


def test_ray_actors_make_the_local_executors_samples_exactly_once(factory_home: Path, tmp_path: Path) -> None:
    recipe = str(make_recipe(tmp_path, prompts=PROMPTS, n=N, tokens=24, batch=2, flush=2))
    run_cli("generate", "--recipe", recipe, "--quiet", home=factory_home)
    local = samples(factory_home / "runs" / "tiny_gen")
    on_ray = tmp_path / "ray-runs"
    args = ["--store", str(on_ray), "generate", "--recipe", recipe, "--quiet", "--executor", "ray", "workers=2"]
    at_kill: list[int] = []
    kills = kill_at_random_points(args, home=factory_home, rng=random.Random(5), max_delay_s=0.3, attempts=1,
                                  progress=lambda: len(samples(on_ray / "tiny_gen")) if on_ray.exists() else 0,
                                  progress_at_kills=at_kill)
    assert kills == 1 and 0 < at_kill[0] < PROMPTS * N  # killed mid-run, some shards written
    out = run_cli(*args, home=factory_home)
    got = samples(on_ray / "tiny_gen")
    assert max(Counter(r[0] for r in got).values()) == 1  # nothing generated twice
    assert {r[0] for r in got} == planned_ids(Path(recipe), PROMPTS, N)
    assert got == local  # same batches, same seeds: the same samples as the local executor
    assert all(r[1] for r in got)
    assert "tiny_gen" in out.stdout


def test_executor_ray_refuses_an_openai_teacher_with_one_line(factory_home: Path, tmp_path: Path) -> None:
    from factory.errors import FactoryError
    from factory.recipe import TeacherConfig
    from factory.teachers.ray_actors import RayTeacher

    with pytest.raises(FactoryError, match="scales by its endpoints"):
        RayTeacher(TeacherConfig(role="v3", backend="replay", replay={"path": "x.jsonl"}))
    recipe = str(make_recipe(tmp_path, prompts=1, n=1))
    bad = run_cli("generate", "--recipe", recipe, "--executor", "slurm", home=factory_home, check=False)
    assert bad.returncode == 2 and "--executor slurm: expected local or ray" in bad.stderr


def test_one_actor_per_gpu_each_on_its_own_gpu(tiny_models_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    """A cluster that declares 2 GPUs gets 2 teacher actors (num_gpus=1 each), whatever `workers` says; here the
    GPUs are Ray resources only, so the teachers run on CPU and must agree with the local teacher."""
    import ray

    from factory.recipe import TeacherConfig
    from factory.teachers import GenerationRequest, build_teacher
    from factory.teachers.ray_actors import RayTeacher

    monkeypatch.setenv("FACTORY_HOME", str(tiny_models_dir.parent))
    config = TeacherConfig(role="r1_zero", model="tiny-r1", transformers={"batch_size": 2, "device": "cpu"})
    requests = [GenerationRequest(key=f"k{i}", group=f"g{i // 2}", messages=[{"role": "user", "content": f"{i} + {i} = ?"}],
                                  temperature=0.7, top_p=0.95, max_new_tokens=12, seed=100 + i) for i in range(6)]
    local = build_teacher(config)
    expected = [(c.key, c.text) for c in local.generate(requests)]
    local.close()
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
    try:
        teacher = RayTeacher(config, workers=5)
        teacher.check()
        assert len(teacher.actors) == 2 and teacher.stats.extra["ray_gpus"] == 2
        gpus = sorted(str(g) for a in teacher.actors for g in ray.get(a.gpu_ids.remote()))
        assert gpus == ["0", "1"]
        assert [(c.key, c.text) for c in teacher.generate(requests)] == expected
        assert teacher.stats.completed == 6 and teacher.stats.completion_tokens > 0
        teacher.close()
    finally:
        ray.shutdown()
