"""The OpenAI-compatible teacher against real servers on 127.0.0.1.

* a real model server: `transformers serve` on the tiny R1 teacher (it ignores `n`
  and returns `<think>` text as `reasoning_content`);
* the fault-injecting server (tests/fault_server.py) for 429 / 500 / timeouts /
  dropped connections / failover, which a real server cannot be made to do on cue.

Plus the vLLM backend's error when vllm is not installed (no GPU here).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from factory.errors import TeacherError
from factory.paths import REPO_DIR
from factory.recipe import OpenAIOptions, Prices, TeacherConfig, VLLMOptions
from factory.teachers import GenerationRequest, build_teacher
from factory.teachers.openai_backend import OpenAITeacher, _parse_retry_after

sys.path.insert(0, str(Path(__file__).parent))
from fault_server import FaultConfig, FaultServer, free_port  # noqa: E402

pytestmark = pytest.mark.timeout(180)

SERVER_START_TIMEOUT_S = 150.0
ARITHMETIC = ["What is 12 + 7?", "Compute 31 - 9.", "Calculate 6 * 7.", "Find the sum of 23 and 18."]
BOXED = " Put the final answer in \\boxed{}."


# ---------------------------------------------------------------- helpers
def make_teacher(url: str | list[str], model: str = "fault-model", **options: object) -> OpenAITeacher:
    endpoints = url if isinstance(url, list) else [url]
    defaults: dict[str, object] = {"concurrency": 4, "timeout_s": 5.0, "max_retries": 3, "backoff_base_s": 0.02, "backoff_max_s": 0.2}
    defaults.update(options)
    config = TeacherConfig(role="r1_zero", backend="openai", model=model, openai=OpenAIOptions(endpoints=endpoints, **defaults))
    teacher = build_teacher(config)
    assert isinstance(teacher, OpenAITeacher)
    return teacher


def request(key: str, content: str, *, group: str | None = None, seed: int = 0, temperature: float = 0.6, max_new_tokens: int = 48) -> GenerationRequest:
    return GenerationRequest(
        key=key,
        group=group or key,
        messages=[{"role": "user", "content": content}],
        temperature=temperature,
        top_p=0.95,
        max_new_tokens=max_new_tokens,
        seed=seed,
    )


def closed_port_url() -> str:
    return f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there


@pytest.fixture(scope="module")
def fault_server() -> Iterator[FaultServer]:
    with FaultServer(FaultConfig()) as server:
        yield server


@pytest.fixture()
def fault(fault_server: FaultServer) -> FaultServer:
    fault_server.reset()
    return fault_server


# ---------------------------------------------------------------- the real server
@pytest.fixture(scope="session")
def tiny_model_dir(tiny_models_dir: Path) -> str:
    return str(tiny_models_dir / "tiny-r1")  # built once per checkout by conftest


@pytest.fixture(scope="session")
def tiny_server(tiny_model_dir: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`transformers serve` pinned to the tiny teacher on a free loopback port; yields its /v1 URL.

    Without --continuous-batching: on this CPU its paged-cache start-up costs 20–40 s
    on the first request, and nothing here needs server-side batching.
    """
    cli = Path(sys.executable).parent / "transformers"
    port = free_port()
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(
            [str(cli), "serve", tiny_model_dir, "--host", "127.0.0.1", "--port", str(port), "--no-continuous-batching", "--device", "cpu"],
            stdout=log_file, stderr=subprocess.STDOUT, env=env,
        )
    try:
        _wait_healthy(proc, port, log_path)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


def _wait_healthy(proc: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"transformers serve exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.25)
    pytest.fail(f"transformers serve did not become healthy in {SERVER_START_TIMEOUT_S:.0f}s:\n{log_path.read_text()[-3000:]}")


def test_real_server_generates_with_usage_reasoning_and_separate_requests_for_n(tiny_server: str, tiny_model_dir: str) -> None:
    teacher = make_teacher(tiny_server, model=tiny_model_dir, timeout_s=120.0, max_retries=1)
    teacher.check()
    # Two prompts x n=2: `transformers serve` ignores `n`, so auto mode must notice and
    # serve the missing sample of each prompt by a separate request.
    reqs = [
        request(f"p{p}-s{s}", ARITHMETIC[p] + BOXED, group=f"p{p}", seed=100 * p + s, temperature=0.0, max_new_tokens=80)
        for p in range(2)
        for s in range(2)
    ]
    completions = teacher.generate(reqs)

    assert [c.key for c in completions] == [r.key for r in reqs]
    for c in completions:
        assert c.error is None, c.error
        assert c.finish_reason in ("stop", "length")
        assert c.prompt_tokens > 0 and c.completion_tokens > 0
        assert c.endpoint == tiny_server
    with_reasoning = [c for c in completions if c.reasoning]
    assert with_reasoning, [c.text for c in completions]  # greedy on a format-taught prompt thinks first
    for c in with_reasoning:
        assert c.text.startswith("<think>") and "</think>" in c.text
        assert "<think>" not in c.answer and "</think>" not in c.answer
        assert c.reasoning in c.text and c.answer in c.text
    assert teacher.stats.extra["n_supported"] is False
    assert teacher.stats.extra["http_calls"] == 4  # per prompt: one call with n=2 that got 1 choice, then one more
    assert teacher.stats.completed == 4 and teacher.stats.errors == 0
    assert teacher.stats.prompt_tokens > 0 and teacher.stats.completion_tokens >= sum(c.completion_tokens for c in completions)


def test_real_server_wrong_model_fails_check_and_errors_per_request(tiny_server: str) -> None:
    teacher = make_teacher(tiny_server, model="no-such-model")
    with pytest.raises(TeacherError) as info:
        teacher.check()
    message = str(info.value)
    assert "no-such-model" in message and "not served" in message and "\n" not in message
    # Without check(), the stream still does not raise: a 400 is not retried and comes back as an error.
    [completion] = teacher.generate([request("k", "What is 1 + 1?")])
    assert completion.finish_reason == "error" and completion.attempts == 1
    assert "HTTP 400" in (completion.error or "") and "no-such-model" in (completion.error or "")


# ---------------------------------------------------------------- faults
def test_retries_429_500_timeout_and_dropped_connections(fault: FaultServer) -> None:
    fault.config.hang_s = 5.0
    teacher = make_teacher(fault.url, timeout_s=0.5, max_retries=3)
    reqs = [
        request("rate", "a [[faults:429:1,500]]"),  # 429 with Retry-After: 1, then 500, then ok
        request("hang", "b [[faults:hang]]"),  # the first attempt outlives the timeout
        request("drop", "c [[faults:drop]]"),  # connection cut mid-body
        request("reset", "d [[faults:reset]]"),  # connection closed before any answer
        request("fine", "e"),
    ]
    by_key = {c.key: c for c in teacher.generate(reqs)}

    assert all(c.finish_reason == "stop" and c.error is None for c in by_key.values())
    assert {k: c.attempts for k, c in by_key.items()} == {"rate": 3, "hang": 2, "drop": 2, "reset": 2, "fine": 1}
    assert by_key["rate"].latency_s >= 1.0  # waited at least the server's Retry-After
    assert teacher.stats.retries == 5 and teacher.stats.completed == 5 and teacher.stats.errors == 0
    assert fault.state.answered == 5


def test_exhausted_retries_yield_error_completions_not_exceptions(fault: FaultServer) -> None:
    fault.config.fault_all = "503"
    teacher = make_teacher(fault.url, max_retries=2)
    completions = teacher.generate([request(f"k{i}", f"q{i}") for i in range(3)])

    assert [c.finish_reason for c in completions] == ["error"] * 3
    for c in completions:
        assert c.attempts == 3 and "HTTP 503" in (c.error or "") and "gave up after 3 attempts" in (c.error or "")
        assert c.text == "" and c.answer == ""
    assert fault.state.requests == 9
    assert teacher.stats.errors == 3 and teacher.stats.retries == 6 and teacher.stats.completed == 0


def test_concurrency_limit_is_respected_and_every_key_comes_back_once(fault: FaultServer) -> None:
    fault.config.latency_s = 0.02
    teacher = make_teacher(fault.url, concurrency=8)
    keys = [f"k{i}" for i in range(120)]
    completions = teacher.generate(request(k, f"question {k}", seed=i) for i, k in enumerate(keys))

    assert sorted(c.key for c in completions) == sorted(keys)
    assert fault.state.answered == 120
    assert 1 < fault.state.max_in_flight <= 8
    assert fault.state.last_body is not None and "seed" in fault.state.last_body


# ---------------------------------------------------------------- n > 1
def _group(n: int, group: str = "g") -> list[GenerationRequest]:
    return [request(f"{group}-{i}", "Same prompt", group=group, seed=i) for i in range(n)]


def test_n_is_batched_into_one_call_when_the_server_honours_it(fault: FaultServer) -> None:
    teacher = make_teacher(fault.url, use_n="auto")
    completions = teacher.generate(_group(4))

    assert dict(fault.state.n_seen) == {4: 1}
    assert [c.key for c in completions] == [f"g-{i}" for i in range(4)]
    assert len({c.reasoning for c in completions}) == 4  # four distinct choices, one per key
    assert teacher.stats.extra["n_supported"] is True
    assert sum(c.completion_tokens for c in completions) == teacher.stats.completion_tokens


def test_servers_ignoring_n_are_detected_and_served_by_separate_requests(fault: FaultServer) -> None:
    fault.config.support_n = False
    teacher = make_teacher(fault.url, use_n="auto", concurrency=1)
    completions = teacher.generate(_group(4, "a") + _group(3, "b"))

    assert [c.finish_reason for c in completions] == ["stop"] * 7
    assert len({c.key for c in completions}) == 7
    # The first group probes with n=4 and gets 1 choice; everything after goes one by one.
    assert dict(fault.state.n_seen) == {4: 1, 1: 6}
    assert teacher.stats.extra["n_supported"] is False


def test_use_n_never_sends_one_request_per_sample(fault: FaultServer) -> None:
    teacher = make_teacher(fault.url, use_n="never")
    teacher.generate(_group(3))
    assert dict(fault.state.n_seen) == {1: 3}


# ---------------------------------------------------------------- keys, endpoints, accounting
def test_missing_api_key_env_var_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FACTORY_TEST_MISSING_KEY", raising=False)
    with pytest.raises(TeacherError) as info:
        make_teacher("http://127.0.0.1:9/v1", api_key_env="FACTORY_TEST_MISSING_KEY")
    assert "FACTORY_TEST_MISSING_KEY" in str(info.value) and "\n" not in str(info.value)


def test_api_key_is_sent_and_never_leaks_into_errors(fault: FaultServer, monkeypatch: pytest.MonkeyPatch) -> None:
    fault.config.api_key = "sk-right-0123456789"
    monkeypatch.setenv("FACTORY_TEST_KEY", "sk-wrong-9876543210")
    wrong = make_teacher(fault.url, api_key_env="FACTORY_TEST_KEY")
    with pytest.raises(TeacherError) as info:
        wrong.check()
    assert "FACTORY_TEST_KEY" in str(info.value) and "sk-wrong" not in str(info.value)
    [failed] = wrong.generate([request("k", "q")])
    assert failed.finish_reason == "error" and "HTTP 401" in (failed.error or "")
    assert "sk-wrong-9876543210" not in (failed.error or "")  # the server echoed it; the client redacts it
    assert "sk-wrong" not in repr(wrong) and "sk-wrong" not in json.dumps(wrong.stats.extra)

    monkeypatch.setenv("FACTORY_TEST_KEY", "sk-right-0123456789")
    right = make_teacher(fault.url, api_key_env="FACTORY_TEST_KEY")
    right.check()
    [ok] = right.generate([request("k", "q")])
    assert ok.finish_reason == "stop"


def test_unreachable_endpoint_fails_check_with_one_line() -> None:
    url = closed_port_url()
    with pytest.raises(TeacherError) as info:
        make_teacher(url).check()
    assert url in str(info.value) and "unreachable" in str(info.value) and "\n" not in str(info.value)


def test_all_endpoints_down_gives_errors_without_raising() -> None:
    urls = [closed_port_url(), closed_port_url()]
    teacher = make_teacher(urls, max_retries=2)
    completions = teacher.generate([request(f"k{i}", "q") for i in range(4)])
    assert [c.finish_reason for c in completions] == ["error"] * 4
    assert all("connection to http://127.0.0.1:" in (c.error or "") and c.attempts == 3 for c in completions)
    endpoint_calls = {url: s["calls"] for url, s in teacher.stats.extra["endpoints"].items()}
    assert set(endpoint_calls) == set(urls) and all(calls > 0 for calls in endpoint_calls.values())


def test_failover_moves_traffic_off_a_failing_endpoint() -> None:
    with FaultServer(FaultConfig()) as good, FaultServer(FaultConfig(fault_all="500")) as bad:
        teacher = make_teacher([bad.url, good.url], concurrency=4, max_retries=4)
        teacher.failover_after = 2
        teacher.cooldown_s = 60.0
        completions = teacher.generate([request(f"k{i}", f"q{i}") for i in range(40)])

        assert all(c.finish_reason == "stop" and c.endpoint == good.url for c in completions)
        assert good.state.answered == 40
        # Once cooled down, the bad endpoint gets nothing more: at most the calls already in flight.
        assert bad.state.requests <= teacher.failover_after + teacher.concurrency
        assert teacher.stats.extra["endpoints"][bad.url]["cooldowns"] == 1


def test_round_robin_spreads_requests_over_endpoints() -> None:
    with FaultServer(FaultConfig()) as one, FaultServer(FaultConfig()) as two:
        teacher = make_teacher([one.url, two.url], concurrency=2)
        teacher.balance = "round_robin"
        teacher.generate([request(f"k{i}", f"q{i}") for i in range(20)])
        assert one.state.answered == 10 and two.state.answered == 10


def test_reasoning_is_separated_whatever_field_the_server_uses(fault: FaultServer) -> None:
    for field in ("reasoning_content", "reasoning", "inline"):
        fault.reset(reasoning_field=field)
        [c] = make_teacher(fault.url).generate([request("k", "What is 2 + 2?")])
        assert c.reasoning is not None and c.reasoning.startswith("Let me think about"), field
        assert c.answer == "The answer is \\boxed{0}.", field
        assert c.text.startswith("<think>") and c.text.endswith(c.answer), field


def test_cost_follows_usage_and_prices(fault: FaultServer) -> None:
    teacher = make_teacher(fault.url, prices=Prices(prompt_per_1m=2.0, completion_per_1m=8.0))
    teacher.generate([request(f"k{i}", f"question number {i}") for i in range(5)])
    stats = teacher.stats
    assert stats.prompt_tokens > 0 and stats.completion_tokens > 0
    assert stats.cost_usd == pytest.approx((stats.prompt_tokens * 2.0 + stats.completion_tokens * 8.0) / 1e6)


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    assert _parse_retry_after("3") == 3.0
    assert _parse_retry_after(None) is None and _parse_retry_after("soon") is None
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 25 <= (_parse_retry_after(date) or 0) <= 31


def test_stream_closed_early_cancels_outstanding_requests(fault: FaultServer) -> None:
    fault.config.latency_s = 0.3
    teacher = make_teacher(fault.url, concurrency=4)

    async def first_only() -> str:
        stream = teacher.astream(request(f"k{i}", f"q{i}") for i in range(50))
        first = await stream.__anext__()
        await stream.aclose()
        return first.key

    assert asyncio.run(first_only()).startswith("k")
    assert fault.state.requests <= 8  # nothing beyond the first window was sent


def test_a_failing_request_iterable_is_raised_not_swallowed(fault: FaultServer) -> None:
    def requests() -> Iterator[GenerationRequest]:
        yield request("k0", "q0")
        raise ValueError("prompt file is corrupt at line 2")

    teacher = make_teacher(fault.url)

    async def drain() -> list[str]:
        return [c.key async for c in teacher.astream(requests())]  # astream, not generate: it would list() first

    with pytest.raises(ValueError, match="corrupt at line 2"):
        asyncio.run(drain())


# ---------------------------------------------------------------- vLLM
def test_vllm_missing_gives_install_hint() -> None:
    try:
        import vllm  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("vllm is installed here")
    teacher = build_teacher(TeacherConfig(role="r1_zero", backend="vllm", model="tiny-r1", vllm=VLLMOptions()))
    with pytest.raises(TeacherError, match=r"vllm is not installed: pip install -e \.\[gpu\]"):
        teacher.check()
    with pytest.raises(TeacherError, match="vllm is not installed"):
        teacher.generate([request("k", "q")])



# ---------------------------------------------------------------- through the pipeline
def _openai_recipe(directory: Path, url: str, model: str) -> Path:
    prompts = [{"id": f"q{i}", "problem": ARITHMETIC[i % len(ARITHMETIC)], "answer": None} for i in range(3)]
    (directory / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))
    path = directory / "served.yaml"
    path.write_text(
        "kind: generate\nname: served\n"
        "sources:\n  - {name: arith, path: prompts.jsonl, fields: {id: id, prompt: problem}, task_type: qa}\n"
        f"teacher:\n  role: rl_1\n  backend: openai\n  model: {model}\n"
        f"  openai: {{endpoints: ['{url}'], concurrency: 4, timeout_s: 120, max_retries: 1}}\n"
        "template: {user: '{prompt} Put the final answer in \\boxed{{}}.'}\n"
        "sampling: {n: 2, temperature: 0.7, max_new_tokens: 64}\n"
        "filters:\n  - step: format\n    style: optional\n  - step: correctness\n  - step: judge\n"
        f"    teacher: {{backend: openai, model: {model}, openai: {{endpoints: ['{url}'], timeout_s: 120, max_retries: 1}}}}\n"
        "    max_new_tokens: 32\n"
        "output: {dataset: served}\n"
    )
    return path


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FACTORY_HOME": str(home), "PYTHONPATH": str(REPO_DIR)}
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True, env=env, cwd=REPO_DIR, timeout=170)


def test_generate_and_judge_through_a_real_server(tiny_server: str, tiny_model_dir: str, tmp_path: Path) -> None:
    recipe = _openai_recipe(tmp_path, tiny_server, tiny_model_dir)
    home = tmp_path / "home"
    proc = _cli(home, "generate", "--recipe", str(recipe), "--quiet")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(_cli(home, "sql", "SELECT backend, endpoint, completion_tokens, prompt_id FROM samples", "--format", "json").stdout)
    assert len(rows) == 6 and {r["backend"] for r in rows} == {"openai"} and {r["endpoint"] for r in rows} == {tiny_server}
    assert all(r["completion_tokens"] > 0 for r in rows)
    assert _cli(home, "filter", "--run", "served", "--quiet").returncode == 0
    verdicts = json.loads(_cli(home, "sql", "SELECT step, passed, code FROM verdicts", "--format", "json").stdout)
    unverifiable = [v for v in verdicts if v["step"] == "correctness"]
    judged = [v for v in verdicts if v["step"] == "judge"]
    assert all(v["passed"] is None for v in unverifiable)  # QA prompts without a reference: no rule applies
    assert len(judged) == len(unverifiable)  # each went to the served v3 judge
    assert all(v["passed"] is not None or v["code"] in ("unparsable_judge_output", "judge_error") for v in judged)


def test_unreachable_endpoint_writes_nothing(tmp_path: Path) -> None:
    recipe = _openai_recipe(tmp_path, closed_port_url(), "some-model")
    home = tmp_path / "home"
    proc = _cli(home, "generate", "--recipe", str(recipe), "--quiet")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len([line for line in proc.stderr.splitlines() if line.strip()]) == 1
    assert not (home / "runs" / "served").exists()
