"""The streaming filter engine: same verdicts as the in-memory engine it replaced, typed steps, a toy step
added through the registry, and the candidate rules read from declared step properties."""

from __future__ import annotations

import json
import logging
import random
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from factory.engine import FAIL, MISSING, PASS, UNSURE, candidate_mask
from factory.paths import BENCHMARKS_DIR
from factory.steps import STEPS, FilterStep, StepParams, StepVerdict
from factory.store import visible_shards
from tests.conftest import run_cli

STEPS_LINE = ("filters: [{step: format}, {step: language}, {step: readability}, {step: correctness}, "
              "{step: decontam}, {step: dedup, threshold: 0.6, ngram: 2}]\n")


def write_traces(directory: Path, count: int, seed: int = 17) -> Path:
    """Synthetic R1-shaped traces: right, wrong, malformed, truncated, mixed-language, leaked, duplicated."""
    rng = random.Random(seed)
    leaked = [json.loads(line)["problem"] for line in (BENCHMARKS_DIR / "gsm8k_test.jsonl").read_text().splitlines()[:20]]
    rows = []
    for i in range(count):
        if i % 4 == 0:  # four samples per prompt
            a, b = rng.randint(2, 999), rng.randint(2, 999)
            problem = f"Problem {i // 4}: what is {a} + {b}?" if rng.random() > 0.02 else rng.choice(leaked)
        value = a + b
        answer = value if rng.random() < 0.6 else value + 1
        steps = " ".join(rng.choice(["First", "Then", "Next", "So", "Check"]) + f" {rng.randint(1, 99)} carries."
                         for _ in range(rng.randint(5, 40)))
        body = f"<think>\n{steps}\n</think>\n\nSo the result is \\boxed{{{answer}}}."
        roll = rng.random()
        if roll < 0.08:
            body = body.replace("</think>", "")
        elif roll < 0.12:
            body = body.replace("carries", "进位进位进位")
        elif roll < 0.25 and i % 4:
            body = rows[-1]["generation"]  # an exact copy of the prompt's previous sample
        rows.append({"problem": problem, "generation": body, "answer": str(value)})
    path = directory / "traces.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def replay_recipe(directory: Path, name: str = "replayed", extra: str = "") -> Path:
    recipe = directory / f"{name}.yaml"
    recipe.write_text(
        f"kind: generate\nname: {name}\n"
        "teacher:\n  role: rl_1\n  backend: replay\n  model: some-r1\n"
        "  replay:\n    path: traces.jsonl\n    fields: {prompt: problem, generation: generation, reference: answer}\n"
        + STEPS_LINE + "selection: {k: 2, policy: shortest}\n" + extra + f"output: {{dataset: {name}}}\n")
    return recipe


def latest_verdicts(run_dir: Path) -> dict[tuple[str, str], tuple[bool | None, str | None]]:
    out = {}
    for step_dir in sorted((run_dir / "verdicts").iterdir()):
        for shard in visible_shards(step_dir):
            for r in pq.read_table(shard, columns=["sample_id", "step", "passed", "code"]).to_pylist():
                out[(r["sample_id"], r["step"])] = (r["passed"], r["code"])
    return out


def legacy_verdicts(run_dir: Path, tmp_path: Path) -> dict[tuple[str, str], tuple[bool | None, str | None]]:
    """The in-memory engine (tests/legacy_filter.py) on a copy of the run."""
    from tests import legacy_filter

    copy = tmp_path / "legacy" / run_dir.name
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("verdicts", "filter_report.json"))
    legacy_filter.run_filter(str(copy), progress=False)
    return latest_verdicts(copy)


@pytest.fixture
def replay_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh FACTORY_HOME for replayed runs, which need no model."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("FACTORY_HOME", str(home))
    monkeypatch.chdir(tmp_path)
    return home


@pytest.fixture
def replayed_run(replay_home: Path, tmp_path: Path) -> Path:
    write_traces(tmp_path, 3_000)
    run_cli("generate", "--recipe", str(replay_recipe(tmp_path)), "--quiet", home=replay_home)
    return replay_home / "runs" / "replayed"


def test_streaming_engine_gives_the_in_memory_engines_verdicts_on_a_replayed_run(
        replayed_run: Path, replay_home: Path, tmp_path: Path) -> None:
    expected = legacy_verdicts(replayed_run, tmp_path)
    run_cli("filter", "--run", "replayed", "--quiet", "--workers", "2", home=replay_home)
    got = latest_verdicts(replayed_run)
    assert got == expected
    codes = {code for (_, step), (_, code) in got.items()}
    # The fixture exercises every step's rejections, or the comparison proves little.
    assert {"wrong_answer", "contaminated", "duplicate_exact", "mixed_language", "over_k"} <= codes, codes
    report = json.loads((replayed_run / "filter_report.json").read_text())
    assert report["workers"] == 2 and report["generated"] == 3_000
    assert report["selected"] == sum(1 for (_, step), (p, _) in got.items() if step == "selection" and p)


@pytest.mark.parametrize("policy", ["longest", "random", "diverse"])
def test_every_selection_policy_matches_the_in_memory_engine(replay_home: Path, tmp_path: Path, policy: str) -> None:
    """Selection ranks with one Arrow sort (and reads diverse texts a batch of prompts at a time, many
    batches under a tiny memory_gb): the same verdicts as the engine that ranked Python rows."""
    write_traces(tmp_path, 400)
    recipe = replay_recipe(tmp_path, extra="memory_gb: 0.002\n")
    recipe.write_text(recipe.read_text().replace("selection: {k: 2, policy: shortest}", f"selection: {{k: 2, policy: {policy}}}"))
    run_cli("generate", "--recipe", str(recipe), "--quiet", home=replay_home)
    run_dir = replay_home / "runs" / "replayed"
    expected = legacy_verdicts(run_dir, tmp_path)
    run_cli("filter", "--run", "replayed", "--quiet", "--workers", "1", home=replay_home)
    got = latest_verdicts(run_dir)
    assert got == expected
    assert sum(1 for (_, step), (passed, _) in got.items() if step == "selection" and not passed) > 10


def test_rerun_reuses_every_verdict_and_one_worker_agrees(replayed_run: Path) -> None:
    from factory.filter import run_filter

    first = run_filter("replayed", progress=False, workers=2)
    shards = sorted(p.name for p in (replayed_run / "verdicts").rglob("*.parquet"))
    again = run_filter("replayed", progress=False, workers=1)
    assert sorted(p.name for p in (replayed_run / "verdicts").rglob("*.parquet")) == shards  # nothing rewritten
    assert all(s.computed == 0 and s.reused == s.candidates for s in again.steps)
    assert [(s.step, s.passed, s.rejected) for s in again.steps] == [(s.step, s.passed, s.rejected) for s in first.steps]
    recomputed = run_filter("replayed", progress=False, workers=1, recompute=True)
    assert [(s.step, s.passed, s.rejected) for s in recomputed.steps] == [(s.step, s.passed, s.rejected) for s in first.steps]


def test_streaming_engine_matches_on_the_demo_run(factory_home: Path, tmp_path: Path) -> None:
    """The cold-start recipe on the tiny teacher (what `factory demo` generates), filtered by both engines."""
    run_cli("generate", "--recipe", "cold_start", "--quiet", "sources.0.limit=12", "sources.1.limit=3", "sampling.n=2",
            home=factory_home)
    run_dir = factory_home / "runs" / "cold_start"
    expected = legacy_verdicts(run_dir, tmp_path)
    run_cli("filter", "--run", "cold_start", "--quiet", home=factory_home)
    assert latest_verdicts(run_dir) == expected and expected


# ---------------------------------------------------------------- adding a step
class ShoutParams(StepParams):
    max_caps_share: float = 0.5  # reject answers with more upper-case letters than this


class ShoutStep(FilterStep):
    """A toy step: rejects answers in capitals. One class and one registry line make it a filter."""

    name = "shout"
    Params = ShoutParams
    columns = ("answer",)

    def filter(self, batch: pa.Table) -> list[StepVerdict]:
        out = []
        for answer in batch.column("answer").to_pylist():
            letters = [c for c in answer or "" if c.isalpha()]
            share = sum(c.isupper() for c in letters) / max(len(letters), 1)
            out.append(StepVerdict(True, score=share) if share <= self.params.max_caps_share
                       else StepVerdict(False, "shouting", f"shouting: {share:.0%} capitals", share))
        return out


def test_a_toy_step_is_one_class_and_one_registry_line(replay_home: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from factory.errors import RecipeError
    from factory.filter import run_filter
    from factory.recipe import load_recipe

    monkeypatch.setitem(STEPS, "shout", ShoutStep)
    (tmp_path / "traces.jsonl").write_text("".join(json.dumps(t) + "\n" for t in [
        {"problem": "1+1?", "generation": "<think>one plus one</think>\nTHE ANSWER IS \\boxed{2}", "answer": "2"},
        {"problem": "2+2?", "generation": "<think>two plus two</think>\nThe answer is \\boxed{4}", "answer": "4"},
        {"problem": "3+3?", "generation": "<think>three plus three</think>\nThe answer is \\boxed{6}", "answer": "6"},
    ]))
    recipe = tmp_path / "toy.yaml"
    recipe.write_text("kind: generate\nname: toy\nteacher:\n  role: rl_1\n  backend: replay\n  model: m\n"
                      "  replay:\n    path: traces.jsonl\n    fields: {prompt: problem, generation: generation, reference: answer}\n"
                      "filters:\n  - step: format\n  - step: shout\n    max_caps_share: 0.4\n  - step: correctness\n"
                      "output: {dataset: toy}\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text(recipe.read_text().replace("max_caps_share: 0.4", "max_caps_share: loud"))
    with pytest.raises(RecipeError, match=r"bad.yaml:13: filters\[1\]\.max_caps_share: "):
        load_recipe(str(bad))
    from factory.generate import run_generate

    run_generate(str(recipe), progress=False)
    report = run_filter("toy", progress=False, workers=2)  # the pool's workers import the step by reference
    assert [(s.step, s.candidates, s.passed, s.rejected) for s in report.steps] == [
        ("format", 3, 3, 0), ("shout", 3, 2, 1), ("correctness", 2, 2, 0)]
    assert ("shout", "shouting", 1) in report.top_reasons


# ---------------------------------------------------------------- candidates from declared properties
class _Rule(FilterStep):
    name = "rule"


class _Verifier(FilterStep):
    name = "verifier"
    verifies = True


class _Resolver(FilterStep):
    name = "resolver"
    resolves_unverified = True

    def only_unverified(self) -> bool:
        return True


class _Later(FilterStep):
    name = "later"


def test_candidates_follow_declared_properties_not_names() -> None:
    steps = [_Rule(), _Verifier(), _Resolver(), _Later()]
    # sample:            0     1     2       3       4       5
    status = {"rule": np.array([PASS, FAIL, PASS, PASS, PASS, PASS], np.int8),
              "verifier": np.array([PASS, MISSING, UNSURE, UNSURE, FAIL, UNSURE], np.int8),
              "resolver": np.array([MISSING, MISSING, PASS, FAIL, MISSING, UNSURE], np.int8),
              "later": np.array([PASS, MISSING, PASS, MISSING, MISSING, MISSING], np.int8)}
    # The resolver gets only what the verifier could not verify.
    assert candidate_mask(steps[:2], status, steps[2], 6).tolist() == [False, False, True, True, False, True]
    # A later step gets what the verifier passed (the resolver was not asked) and what the resolver passed.
    assert candidate_mask(steps[:3], status, steps[3], 6).tolist() == [True, False, True, False, False, False]
    assert candidate_mask(steps, status, None, 6).tolist() == [True, False, True, False, False, False]
    # Without a resolver, unverified samples stop at the verifier.
    assert candidate_mask([steps[0], steps[1]], status, steps[3], 6).tolist() == [True, False, False, False, False, False]


def test_step_settings_are_typed_and_hash_their_validated_values() -> None:
    fmt = STEPS["format"]
    assert fmt.from_config({}).config_hash() == fmt.from_config({"style": "think", "min_answer_chars": 1}).config_hash()
    assert fmt.from_config({}).config_hash() != fmt.from_config({"min_answer_chars": 2}).config_hash()
    with pytest.raises(ValueError, match="^colour: unknown setting for step 'dedup'"):
        STEPS["dedup"].from_config({"colour": "blue"})
    with pytest.raises(ValueError, match="^threshold: "):
        STEPS["dedup"].from_config({"threshold": 1.5})


def test_selection_can_close_the_filters_list(replay_home: Path, tmp_path: Path) -> None:
    """`{step: selection, k, policy}` as the last filter is the selection's settings (counted in the
    report like a step); anywhere else, or with a bad setting, it is a recipe error at its line."""
    from factory.errors import RecipeError
    from factory.filter import run_filter
    from factory.recipe import load_recipe

    write_traces(tmp_path, 200)
    recipe = replay_recipe(tmp_path)
    recipe.write_text(recipe.read_text().replace("ngram: 2}]", "ngram: 2}, {step: selection, k: 1, policy: longest}]"))
    run_cli("generate", "--recipe", str(recipe), "--quiet", home=replay_home)
    report = run_filter("replayed", progress=False, workers=1)
    assert "selection" not in [s.step for s in report.steps]
    assert report.selection is not None and report.selection.passed == report.selected > 0
    assert report.selection.candidates == report.selection.passed + report.selection.rejected
    assert report.selected == report.prompts_with_selection  # k: 1 from the filters entry, not the block's k: 2
    bad = tmp_path / "bad.yaml"
    bad.write_text(recipe.read_text().replace("filters: [{step: format}, ", "filters: [{step: selection}, {step: format}, "))
    with pytest.raises(RecipeError, match=r"filters\[0\]\.step: selection must be the last filter"):
        load_recipe(str(bad))
    bad.write_text(recipe.read_text().replace("k: 1, policy: longest", "k: 0"))
    with pytest.raises(RecipeError, match=r"filters\[6\]\.k: "):
        load_recipe(str(bad))


# ---------------------------------------------------------------- mix
def test_mix_drops_exact_duplicates_across_runs_and_says_how_many(replay_home: Path, tmp_path: Path) -> None:
    """The same traces imported as two runs: the second run's curated samples are all duplicates."""
    write_traces(tmp_path, 400)
    for name in ("first", "second"):
        run_cli("generate", "--recipe", str(replay_recipe(tmp_path, name)), "--quiet", home=replay_home)
        run_cli("filter", "--run", name, "--quiet", home=replay_home)
    from factory.filter import read_accepted_ids
    from factory.store import RunStore

    curated = len(read_accepted_ids(RunStore(replay_home / "runs" / "first")))
    assert curated == len(read_accepted_ids(RunStore(replay_home / "runs" / "second"))) > 0
    mix = tmp_path / "mix.yaml"
    mix.write_text("kind: mix\nname: m\nseed: 3\ncomponents:\n  - {run: first, quota: 100000}\n  - {run: second, quota: 100000}\n"
                   "output: {dataset: m}\n")
    proc = run_cli("mix", "--recipe", str(mix), home=replay_home)
    assert f"dropped {curated} exact prompt+response duplicates" in proc.stdout
    data = pq.read_table(replay_home / "datasets" / "m" / "data" / "part-00000.parquet")
    assert data.num_rows == curated and set(data.column("run").to_pylist()) == {"first"}
    manifest = json.loads((replay_home / "datasets" / "m" / "manifest.json").read_text())
    assert manifest["duplicates_dropped"] == curated
    assert [c["duplicates_dropped"] for c in manifest["components"]] == [0, curated]
    pairs = [(m[-2]["content"], m[-1]["reasoning_content"], m[-1]["content"]) for m in data.column("messages").to_pylist()]
    assert len(set(pairs)) == len(pairs)
    run_cli("mix", "--recipe", str(mix), "dedup_exact=false", home=replay_home)
    assert pq.read_metadata(replay_home / "datasets" / "m" / "data" / "part-00000.parquet").num_rows == 2 * curated


def peak_tree_rss(proc: subprocess.Popen[str]) -> int:
    """Largest summed RSS of a process and its descendants, sampled every 50 ms until it exits."""
    import time

    import psutil

    root, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            total = 0
            for p in [root, *root.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            peak = max(peak, total)
        except psutil.Error:
            pass
        time.sleep(0.05)
    return peak


def test_a_run_of_long_texts_stays_under_its_memory_setting(replay_home: Path, tmp_path: Path) -> None:
    """`memory_gb: 1` on 1,500 traces of ~78K characters (~120 MB of text; every step, dedup included):
    the whole process tree of `factory filter` stays under 1 GiB (the chunks sized for the text alone,
    as before this bound, took ~1.16 GB here)."""
    import os
    import sys

    traces = write_traces(tmp_path, 1_500)
    rng = random.Random(5)
    rows = [json.loads(line) for line in traces.read_text().splitlines()]
    for row in rows:
        filler = "\n\n".join(" ".join(f"Step {rng.randint(1, 10**6)} carries the digit." for _ in range(25))
                              for _ in range(100))
        row["generation"] = row["generation"].replace("<think>\n", "<think>\n" + filler + "\n", 1)
    traces.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = replay_recipe(tmp_path)
    recipe.write_text(recipe.read_text().replace("output:", "memory_gb: 1.0\noutput:"))
    run_cli("generate", "--recipe", str(recipe), "--quiet", home=replay_home)
    env = {**os.environ, "FACTORY_HOME": str(replay_home)}
    proc = subprocess.Popen([sys.executable, "-m", "cli", "filter", "--run", "replayed", "--quiet", "--workers", "2"],
                            cwd=Path(__file__).resolve().parents[1], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    peak = peak_tree_rss(proc)
    assert proc.wait() == 0, proc.stderr.read()[-2000:] if proc.stderr else ""
    report = json.loads((replay_home / "runs" / "replayed" / "filter_report.json").read_text())
    assert {s["step"]: s["candidates"] for s in report["steps"]}["dedup"] > 500  # every step saw the long texts
    assert peak < 2**30, f"peak RSS of the process tree {peak / 2**20:.0f} MiB > memory_gb 1.0"


# ---------------------------------------------------------------- Ray
def test_ray_executor_on_a_local_cluster_gives_the_local_verdicts(replayed_run: Path, tmp_path: Path) -> None:
    ray = pytest.importorskip("ray", reason='the Ray executor is an optional extra: pip install -e ".[ray]"')
    from factory.filter import run_filter

    local_copy = tmp_path / "local-copy" / "replayed"
    shutil.copytree(replayed_run, local_copy)
    run_filter(str(local_copy), progress=False, workers=2)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        report = run_filter("replayed", progress=False, executor="ray")
        assert report.executor == "ray" and report.workers == 2
        assert latest_verdicts(replayed_run) == latest_verdicts(local_copy)
        again = run_filter("replayed", progress=False, executor="ray")  # resume: nothing left to decide
        assert all(s.computed == 0 for s in again.steps)
    finally:
        ray.shutdown()


def test_ray_dedup_against_other_runs_gives_the_local_verdicts(replay_home: Path, tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """dedup `against_runs` on Ray: the other run's selected samples are one more dataset grouped by key
    with this run's (no gather), and the verdicts equal the local executor's."""
    ray = pytest.importorskip("ray", reason='the Ray executor is an optional extra: pip install -e ".[ray]"')
    from factory.filter import run_filter

    write_traces(tmp_path, 600)
    run_cli("generate", "--recipe", str(replay_recipe(tmp_path, "first")), "--quiet", home=replay_home)
    run_cli("filter", "--run", "first", "--quiet", home=replay_home)
    # The second run replays the same traces (every selected sample of the first is in it) and more.
    write_traces(tmp_path, 900)
    second = replay_recipe(tmp_path, "second")
    second.write_text(second.read_text().replace("{step: dedup, threshold: 0.6, ngram: 2}",
                                                 "{step: dedup, threshold: 0.6, ngram: 2, against_runs: [first]}"))
    run_cli("generate", "--recipe", str(second), "--quiet", home=replay_home)
    run_dir = replay_home / "runs" / "second"
    local_copy = tmp_path / "local-copy" / "second"
    shutil.copytree(run_dir, local_copy)
    run_filter(str(local_copy), progress=False, workers=2)
    expected = latest_verdicts(local_copy)
    assert sum(1 for (_, step), (_, code) in expected.items() if code == "duplicate_reference") > 0
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with caplog.at_level(logging.INFO, logger="factory.ray_executor"):
            run_filter("second", progress=False, executor="ray")
    finally:
        ray.shutdown()
    grouped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("dedup on ray")]
    assert grouped and "from other runs" in grouped[0] and "(0 from other runs)" not in grouped[0]
    assert latest_verdicts(run_dir) == expected
    details = {tuple(r.values()) for r in pq.read_table(run_dir / "verdicts" / "dedup", columns=["sample_id", "detail"]).to_pylist()}
    local_details = {tuple(r.values()) for r in pq.read_table(local_copy / "verdicts" / "dedup", columns=["sample_id", "detail"]).to_pylist()}
    assert details == local_details  # the same keeper, kind and similarity for every sample


def test_ray_buckets_verify_the_pairs_the_local_lsh_verifies() -> None:
    """A bucket on the cluster pairs its members in exact-key order and checks the short-text threshold,
    as the local LSH does: the verified pairs are the same (big buckets of short, similar texts)."""
    from factory.ray_executor import _bucket_pairs
    from verifiers.dedup import (
        DedupParams,
        _band_keys,
        _candidate_pairs,
        _jaccard_estimates,
        lsh_bands,
        pair_thresholds,
        sketch_batch,
    )

    rng = random.Random(3)
    vocabulary = [f"w{i}" for i in range(300)]
    texts = set()
    for _ in range(30):  # short texts (higher thresholds) in clusters of copies edited more and more
        base = [rng.choice(vocabulary) for _ in range(rng.randint(10, 60))]
        for edits in range(12):
            copy = list(base)
            for _ in range(edits):
                copy[rng.randrange(len(copy))] = rng.choice(vocabulary)
            texts.add(" ".join(copy))
    texts = sorted(texts)
    params = DedupParams()
    sketch = sketch_batch(texts, params)
    keys = sketch.exact_keys
    order = np.lexsort((keys[:, 1], keys[:, 0]))          # the local representatives' (exact-key) order
    sigs, shingles = sketch.signatures[order], sketch.shingles[order]
    keep = shingles > 0
    sigs, shingles = sigs[keep], shingles[keep]
    pos = np.array(rng.sample(range(10**6), len(sigs)))  # arrival positions: not the key order
    bands, rows = lsh_bands(params.threshold, params.num_perm)
    pairs = _candidate_pairs(sigs, bands, rows)
    need = pair_thresholds(params.threshold, np.minimum(shingles[pairs[:, 0]], shingles[pairs[:, 1]]))
    local = {tuple(sorted(p)) for p in pos[pairs[_jaccard_estimates(sigs, pairs) >= need]].tolist()}
    # The same rows, shuffled, grouped by (band, bucket) as Ray's groupby hands them over.
    k = keys[order][keep]
    width = pa.binary(4 * params.num_perm)
    on_cluster: set[tuple[int, int]] = set()
    shuffled = rng.sample(range(len(pos)), len(pos))
    for band in range(bands):
        buckets = _band_keys(sigs, rows, band)
        for bucket in np.unique(buckets):
            members = [i for i in shuffled if buckets[i] == bucket]
            if len(members) < 2:
                continue
            group = pa.table({"pos": pos[members], "k0": k[members, 0], "k1": k[members, 1], "shingles": shingles[members],
                              "sig": pa.FixedSizeBinaryArray.from_buffers(width, len(members),
                                                                          [None, pa.py_buffer(sigs[members].tobytes())])})
            found = _bucket_pairs(group, params.threshold, params.short_text_shingles)
            on_cluster |= {tuple(sorted(p)) for p in zip(found.column("a").to_pylist(), found.column("b").to_pylist())}
    assert len(local) > 50 and on_cluster == local


def test_ray_filter_killed_at_random_points_resumes_to_the_same_verdicts(replay_home: Path, tmp_path: Path) -> None:
    """SIGKILL `factory filter --executor ray` mid-run, then finish: every (sample, step) decided once,
    verdicts equal to an uninterrupted local run."""
    pytest.importorskip("ray", reason='the Ray executor is an optional extra: pip install -e ".[ray]"')
    from collections import Counter

    from tests.test_generate import kill_at_random_points

    write_traces(tmp_path, 4_000)
    run_cli("generate", "--recipe", str(replay_recipe(tmp_path)), "--quiet", home=replay_home)
    run_dir = replay_home / "runs" / "replayed"
    local_copy = tmp_path / "local-copy" / "replayed"
    shutil.copytree(run_dir, local_copy)
    run_cli("filter", "--run", str(local_copy), "--quiet", home=replay_home)

    def decided() -> int:
        return sum(pq.read_metadata(p).num_rows for p in (run_dir / "verdicts").rglob("part-*.parquet")) \
            if (run_dir / "verdicts").exists() else 0

    args = ["filter", "--run", "replayed", "--quiet", "--executor", "ray", "--workers", "2"]
    kills = kill_at_random_points(args, home=replay_home, progress=decided, rng=random.Random(4), max_delay_s=2.0,
                                  attempts=2)
    assert kills >= 1 and decided() < sum(1 for _ in latest_verdicts(local_copy))
    run_cli(*args, home=replay_home)
    rows = [(r["sample_id"], r["step"]) for p in (run_dir / "verdicts").rglob("part-*.parquet")
            for r in pq.read_table(p, columns=["sample_id", "step"]).to_pylist()]
    assert max(Counter(rows).values()) == 1  # nothing decided twice
    assert latest_verdicts(run_dir) == latest_verdicts(local_copy)


def test_a_small_memory_setting_means_small_chunks_spilled_dedup_state_and_the_same_verdicts(
        replayed_run: Path, tmp_path: Path) -> None:
    from factory.engine import plan_memory
    from factory.filter import _batch_sizes, run_filter
    from factory.store import RunStore

    store = RunStore(replayed_run)
    assert _batch_sizes(plan_memory(4.0, 2, 3_000, 200 * 2**20), store)[1] == 2048
    assert _batch_sizes(plan_memory(0.002, 2, 3_000, 200 * 2**20), store)[1] == 64
    assert plan_memory(0.5, 8, 3_000, 200 * 2**20).workers < 8  # workers that would not fit are not started
    default_copy = tmp_path / "default-copy" / "replayed"
    shutil.copytree(replayed_run, default_copy)
    default = run_filter(str(default_copy), progress=False, workers=2)
    assert {s.step: s.spilled_bytes for s in default.steps}["dedup"] == 0
    small = tmp_path / "replayed.yaml"
    small.write_text(small.read_text().replace("output:", "memory_gb: 0.002\noutput:"))
    report = run_filter("replayed", recipe=str(small), progress=False, workers=2)
    assert latest_verdicts(replayed_run) == latest_verdicts(default_copy)
    assert {s.step: s.spilled_bytes for s in report.steps}["dedup"] > 0  # its state went to Parquet
    assert not (replayed_run / ".spill" / "dedup").exists()  # and the spill was cleared
    format_shards = visible_shards(replayed_run / "verdicts" / "format")
    assert len(format_shards) == -(-3_000 // 64)  # one verdict shard per 64-sample chunk
