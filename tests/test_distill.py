"""Distillation on the tiny students: masks, packing isolation, loss, resume after SIGKILL, saved model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from factory.distill import (
    IGNORE_INDEX,
    choose_attention,
    choose_kernels,
    log_steps,
    MANIFEST_NAME,
    PackedCollator,
    apply_overlong,
    encode_conversation,
    encode_samples,
    demo_sft_rows,
    last_complete_checkpoint,
    load_sft_dataset,
    pack_samples,
    resolve_data,
    run_distill,
    write_demo_dataset,
)
from factory.errors import FactoryError, RecipeError
from factory.models import resolve_model
from factory.recipe import load_recipe

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(300)

# Small enough for a shared 2-core CPU: 2 rows of <= 200 tokens per step.
TINY = ["max_seq_len=200", "batch_size=2", "learning_rate=3e-3", "warmup_ratio=0.0", "save_steps=4"]


@pytest.fixture(scope="module", autouse=True)
def factory_home(tmp_path_factory, tiny_models_dir):
    """A private store (dataset caches land there) over the session's tiny models (built once)."""
    previous = os.environ.get("FACTORY_HOME")
    home = tmp_path_factory.mktemp("home")
    (home / "models").symlink_to(tiny_models_dir)
    os.environ["FACTORY_HOME"] = str(home)
    yield home
    if previous is None:
        os.environ.pop("FACTORY_HOME", None)
    else:
        os.environ["FACTORY_HOME"] = previous


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model("tiny-qwen"))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_demo_dataset(tmp_path_factory.mktemp("data") / "arith_sft", 160, seed=3, system_share=0.2)


def student(*overrides: str):
    return load_recipe("qwen", [*TINY, *overrides], subdir="students")


def conversation(system: str | None = "Be brief.") -> list[dict[str, str]]:
    turns = [{"role": "system", "content": system, "reasoning_content": ""}] if system else []
    return turns + [
        {"role": "user", "content": "What is 7 + 5?", "reasoning_content": ""},
        {"role": "assistant", "content": "The answer is \\boxed{12}.", "reasoning_content": "7 + 5 = 12."},
    ]


# ---------------------------------------------------------------- labels and packing
def test_labels_are_the_assistant_turn_only(tokenizer):
    ids, labels = encode_conversation(tokenizer, conversation())
    trained = [tok for tok in labels if tok != IGNORE_INDEX]
    assert tokenizer.decode(trained) == "<think>\n7 + 5 = 12.\n</think>\n\nThe answer is \\boxed{12}.<|im_end|>"
    # Everything before the assistant's first token is masked: system, user and the assistant header.
    first = next(i for i, tok in enumerate(labels) if tok != IGNORE_INDEX)
    assert "Be brief." in tokenizer.decode(ids[:first]) and "What is 7 + 5?" in tokenizer.decode(ids[:first])
    assert tokenizer.decode(ids[:first]).endswith("<|im_start|>assistant\n")
    assert all(tok == IGNORE_INDEX for tok in labels[:first])
    # The trained span is contiguous and copies the input ids.
    last = max(i for i, tok in enumerate(labels) if tok != IGNORE_INDEX)
    assert labels[first : last + 1] == ids[first : last + 1]


def test_packed_batch_resets_positions_and_masks_boundaries(tokenizer):
    rows = [{"messages": conversation()}, {"messages": conversation(None)}, {"messages": conversation("Think step by step.")}]
    encoded = encode_samples(pa.Table.from_pylist(rows), tokenizer)
    lengths = encoded["length"]
    packs = pack_samples(encoded, sum(lengths[:2]), packing=True)
    assert sorted(len(s) for s in packs["seq_lengths"]) == [1, 2]  # two samples share a pack, one is alone
    batch = PackedCollator(pad_token_id=tokenizer.pad_token_id)([packs[i] for i in range(len(packs))])
    width = batch["input_ids"].shape[1]
    for row, pack in enumerate(packs):
        start = 0
        for n in pack["seq_lengths"]:
            assert batch["position_ids"][row, start : start + n].tolist() == list(range(n))
            assert batch["labels"][row, start].item() == IGNORE_INDEX
            start += n
        assert (batch["input_ids"][row, start:] == tokenizer.pad_token_id).all()
        assert (batch["labels"][row, start:] == IGNORE_INDEX).all()
    assert batch["real_tokens"] == sum(lengths) and "attention_mask" not in batch
    assert width == max(len(p) for p in packs["input_ids"])


# Every attention that runs on CPU. flex runs its eager reference here, in a subprocess with dynamo
# off (compiling it on CPU takes minutes), on the same block-sparse document mask the GPU kernel gets.
CPU_ATTENTIONS = ["sdpa", "eager", "flex"]


@pytest.mark.parametrize("attention", CPU_ATTENTIONS)
def test_a_sample_has_the_same_loss_alone_and_packed(attention, tiny_models_dir):
    if attention == "flex":
        env = {**os.environ, "PYTHONPATH": str(REPO), "TORCHDYNAMO_DISABLE": "1", "FACTORY_HOME": str(tiny_models_dir.parent)}
        code = "import json; from tests.test_distill import packed_vs_alone; print(json.dumps(packed_vs_alone('flex')))"
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=240, cwd=REPO)
        assert proc.returncode == 0, proc.stderr[-2000:]
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    else:
        result = packed_vs_alone(attention)
    assert result["implementation"] == choose_attention(attention, cuda=False).implementation
    assert result["max_logit_diff"] < 1e-4
    for alone, packed in result["losses"]:
        assert packed == pytest.approx(alone, rel=1e-5)


def packed_vs_alone(attention: str) -> dict:
    """Two conversations packed in one row vs each alone: the largest logit difference and each one's loss."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("tiny-qwen"))
    choice = choose_attention(attention, cuda=False)
    model = AutoModelForCausalLM.from_pretrained(
        resolve_model("tiny-qwen"), dtype=torch.float32, attn_implementation=choice.implementation
    ).eval()
    a, labels_a = encode_conversation(tokenizer, conversation())
    b, labels_b = encode_conversation(tokenizer, conversation("Answer in French."))
    batch = PackedCollator(pad_token_id=tokenizer.pad_token_id)(
        [{"input_ids": a + b, "labels": labels_a + labels_b, "seq_lengths": [len(a), len(b)]}]
    )
    with torch.no_grad():
        # use_cache=False as in SFTTrainer.compute_loss: with a cache, transformers skips packed-mask detection.
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        alone_a = model(input_ids=torch.tensor([a]), use_cache=False).logits[0]
        alone_b = model(input_ids=torch.tensor([b]), use_cache=False).logits[0]
    pairs = ((alone_a, packed[: len(a)], labels_a), (alone_b, packed[len(a) :], labels_b))
    return {
        "implementation": model.config._attn_implementation,
        "max_logit_diff": max((p - q).abs().max().item() for q, p, _ in pairs),
        "losses": [[next_token_loss(q, labels), next_token_loss(p, labels)] for q, p, labels in pairs],
    }


def next_token_loss(logits: torch.Tensor, labels: list[int]) -> float:
    return torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(labels[1:]), ignore_index=IGNORE_INDEX).item()


def test_attention_is_chosen_for_the_hardware_and_overridable():
    assert choose_attention("auto", cuda=False).name == "sdpa"
    assert choose_attention("eager", cuda=False).implementation == "eager"
    assert choose_attention("flex", cuda=False).implementation == "flex_attention"
    with pytest.raises(FactoryError, match="attention: flash needs a CUDA GPU"):
        choose_attention("flash", cuda=False)
    assert choose_kernels("auto", cuda=False) == "none" and choose_kernels("none", cuda=True) == "none"
    assert student("attention=flex", "log_every=5").attention == "flex"
    with pytest.raises(RecipeError, match="attention"):
        student("attention=flash3")
    assert log_steps(student(), cuda=True) == 10 and log_steps(student(), cuda=False) == 1


def test_overlong_samples_are_counted_then_dropped_or_truncated(tokenizer):
    encoded = encode_samples(pa.Table.from_pylist([{"messages": conversation()} for _ in range(3)] + [{"messages": conversation(None)}]), tokenizer)
    limit = min(encoded["length"]) + 1  # only the system-less sample fits
    dropped = apply_overlong(encoded, limit, "drop")
    assert (dropped.dropped_overlong, dropped.truncated_overlong, len(dropped.kept)) == (3, 0, 1)
    truncated = apply_overlong(encoded, limit, "truncate")
    assert (truncated.dropped_overlong, truncated.truncated_overlong, len(truncated.kept)) == (0, 3, 4)
    assert max(truncated.kept["length"]) == limit and all(len(ids) <= limit for ids in truncated.kept["input_ids"])


# ---------------------------------------------------------------- bad input
def test_bad_input_is_one_clear_line(tmp_path, dataset):
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.Table.from_pylist(demo_sft_rows(1)).slice(0, 0), empty)
    with pytest.raises(FactoryError, match="empty"):
        run_distill(student(), data=str(empty), output_dir=tmp_path / "o1", progress=False)
    with pytest.raises(FactoryError, match="all 160 samples are longer than max_seq_len=16"):
        run_distill(student("max_seq_len=16"), data=str(dataset), output_dir=tmp_path / "o2", progress=False)
    with pytest.raises(FactoryError, match="not a tiny model"):
        run_distill(student("model=no-such-student"), data=str(dataset), output_dir=tmp_path / "o3", progress=False)
    with pytest.raises(FactoryError, match="not a file, a directory or a dataset name"):
        resolve_data("no_such_mix")
    no_messages = tmp_path / "bad.jsonl"
    no_messages.write_text(json.dumps({"prompt": "hi"}) + "\n")
    with pytest.raises(FactoryError, match="no 'messages' column"):
        load_sft_dataset(resolve_data(str(no_messages)))


# ---------------------------------------------------------------- training
def test_loss_goes_down_and_the_student_loads_and_generates(tmp_path, dataset):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "qwen-arith"
    report = run_distill(student(), data=str(dataset), output_dir=out, max_steps=24, progress=False)
    losses = [point["loss"] for point in report.loss_curve]
    assert report.steps == 24 and len(losses) == 24
    assert sum(losses[-4:]) / 4 < 0.6 * sum(losses[:4]) / 4, losses
    assert report.samples_trained == 160 and report.dropped_overlong == 0
    assert report.sequences < report.samples_trained  # packing put several samples in one sequence
    assert report.non_pad_share >= 0.9 and report.tokens_per_s > 0

    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["data_path"] == str(dataset) and manifest["samples_trained"] == 160
    assert manifest["tokens"] == report.tokens and manifest["loss_curve"] == report.loss_curve
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is 3 + 4?"}], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    generated = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    new_tokens = generated[0, prompt["input_ids"].shape[1] :]
    assert len(new_tokens) == 12 or new_tokens[-1].item() == tok.eos_token_id

    # The saved weights are the trained ones: held-out reasoning is likelier under the student than the base.
    held_out = demo_sft_rows(8, seed=99, system_share=0.0)
    base = AutoModelForCausalLM.from_pretrained(resolve_model("tiny-qwen"))
    assert assistant_nll(model, tok, held_out) < 0.7 * assistant_nll(base, tok, held_out)


def assistant_nll(model, tok, rows) -> float:
    losses = []
    for row in rows:
        ids, labels = encode_conversation(tok, row["messages"])
        with torch.no_grad():
            losses.append(model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss.item())
    return sum(losses) / len(losses)


CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from transformers import TrainerCallback
    from factory.distill import run_distill
    from factory.recipe import load_recipe

    data, out, marker, kill_at = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])

    class Hang(TrainerCallback):
        # Stops mid-run, after a checkpoint and before the next, and waits to be killed.
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == kill_at:
                marker.write_text("ready")
                time.sleep(600)

    recipe = load_recipe("qwen", sys.argv[5:], subdir="students")
    run_distill(recipe, data=data, output_dir=out, max_steps=10, progress=False, callbacks=[Hang()])
    """
)


def test_resume_after_sigkill_equals_an_uninterrupted_run(tmp_path, dataset):
    from safetensors.torch import load_file

    killed = tmp_path / "killed"
    marker = tmp_path / "ready"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(dataset), str(killed), str(marker), "6", *TINY],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 240
        while not marker.exists():
            if child.poll() is not None:
                pytest.fail(f"child exited early: {child.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail("child never reached step 6")
            time.sleep(0.2)
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
    assert not (killed / MANIFEST_NAME).exists()
    assert last_complete_checkpoint(killed / "checkpoints").name == "checkpoint-4"

    resumed = run_distill(student(), data=str(dataset), output_dir=killed, resume=True, max_steps=10, progress=False)
    straight = run_distill(student(), data=str(dataset), output_dir=tmp_path / "straight", max_steps=10, progress=False)

    assert resumed.resumed_from and resumed.resumed_from.endswith("checkpoint-4")
    assert resumed.steps == straight.steps == 10
    assert [p["step"] for p in resumed.loss_curve] == list(range(1, 11))
    for a, b in zip(resumed.loss_curve, straight.loss_curve):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6)
    weights_resumed = load_file(killed / "model.safetensors")
    weights_straight = load_file(tmp_path / "straight" / "model.safetensors")
    assert weights_resumed.keys() == weights_straight.keys()
    for name in weights_straight:
        torch.testing.assert_close(weights_resumed[name], weights_straight[name], atol=1e-6, rtol=1e-5)
    assert resumed.non_pad_share == pytest.approx(straight.non_pad_share)


def test_resume_refuses_a_changed_recipe(tmp_path, dataset):
    out = tmp_path / "run"
    run_distill(student(), data=str(dataset), output_dir=out, max_steps=2, progress=False)
    with pytest.raises(FactoryError, match="changed: recipe"):
        run_distill(student("learning_rate=1e-3"), data=str(dataset), output_dir=out, resume=True, max_steps=2, progress=False)


def test_lora_student_is_merged_into_a_plain_model(tmp_path, dataset):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "lora"
    report = run_distill(student("lora={r: 4, alpha: 8}"), data=str(dataset), output_dir=out, max_steps=2, progress=False)
    assert report.steps == 2
    assert not (out / "adapter_config.json").exists()
    base = AutoModelForCausalLM.from_pretrained(resolve_model("tiny-qwen"))
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert set(merged.state_dict()) == set(base.state_dict())
    changed = [n for n, w in merged.state_dict().items() if not torch.equal(w, base.state_dict()[n])]
    assert changed and all("proj" in n for n in changed)  # only LoRA-targeted linears moved


def test_checkpointing_attention_and_log_every_reach_the_trainer(tmp_path, dataset):
    # gradient_checkpointing is spelled differently across the supported transformers versions.
    recipe = student("gradient_checkpointing=true", "attention=eager", "log_every=2")
    report = run_distill(recipe, data=str(dataset), output_dir=tmp_path / "ckpt", max_steps=4, progress=False)
    assert report.steps == 4 and report.attention == "eager" and report.kernels == "none"
    assert [p["step"] for p in report.loss_curve] == [2, 4]
