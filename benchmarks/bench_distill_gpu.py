"""Distiller on a GPU: `factory distill` vs TRL vs a plain training loop, on a Qwen2.5-1.5B-shaped student.

The student is built from a config with random weights (no download): 28 layers, hidden 1536,
12 heads (2 KV), MLP 8960, the project's small tokenizer. The data are long-tail R1-length
conversations (a few hundred to ~`max_len` tokens). Rows, all with bf16 autocast, loss on assistant
tokens only, the same batch size and number of optimizer steps:

* ``factory``     — ``factory.distill.run_distill`` (BFD packs; the attention `choose_attention` picks:
                    flash-attn varlen if installed, else FlexAttention's document mask);
* ``trl-plain``   — TRL ``SFTTrainer``, no packing (rows padded to the batch's longest);
* ``trl-bfd``     — TRL ``SFTTrainer``, BFD packing = its padding-free path;
* ``plain-loop``  — the reference: the same model, a hand-written AdamW loop on full
                    ``batch x max_len`` rows of one causal sequence each, SDPA, no checkpointing
                    (what the hardware gives this model; no packing isolation to pay for).

Printed per packing length (8K and 32K by default): real tokens/s, non-pad share, peak memory,
6N-MFU (6 x parameters x tokens/s over the GPU's bf16 dense peak) and the ratios to plain-loop and
trl-bfd in the same run. 32K runs with gradient checkpointing (``--checkpointing`` for all).

    python benchmarks/bench_distill_gpu.py                 # one GPU: 8K and 32K
    python benchmarks/bench_distill_gpu.py --small         # CPU smoke: a 2-layer student, 512 tokens
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
os.environ.setdefault("FACTORY_HOME", str(REPO / ".factory"))

from bench_distill import counting_trainer_class

from factory.output import quiet_dependencies

quiet_dependencies()  # before transformers/datasets load: a benchmark prints its table, not their bars

from factory.distill import _checkpointing_flag, demo_sft_rows, run_distill
from factory.models import resolve_model
from factory.recipe import load_recipe

RESULTS = REPO / "benchmarks" / "results" / "distill_gpu.json"
# Dense bf16 peak (no sparsity), FLOP/s, by a substring of torch.cuda.get_device_name().
BF16_PEAK = {"H200": 989e12, "H100": 989e12, "GH200": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12, "L4": 121e12, "B200": 2250e12}
QWEN_1_5B = {"num_hidden_layers": 28, "hidden_size": 1536, "intermediate_size": 8960, "num_attention_heads": 12,
             "num_key_value_heads": 2, "max_position_embeddings": 32768, "rope_theta": 1e6, "tie_word_embeddings": True}
SMALL = {"num_hidden_layers": 2, "hidden_size": 128, "intermediate_size": 256, "num_attention_heads": 4,
         "num_key_value_heads": 2, "max_position_embeddings": 4096, "tie_word_embeddings": True}


# ---------------------------------------------------------------- student and data
def build_student(directory: Path, shape: dict[str, Any]) -> tuple[Path, int]:
    """A random-init Qwen2 with the given shape and tiny-qwen's tokenizer, saved to `directory`."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("tiny-qwen"))
    config = Qwen2Config(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, **shape)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory, sum(p.numel() for p in model.parameters())


def long_tail_rows(count: int, max_len: int, seed: int) -> list[dict]:
    """R1-like length spread: most traces short, a long tail up to about `max_len` tokens."""
    rng = random.Random(seed)
    rows = demo_sft_rows(count, seed=seed, system_share=0.5)
    for row in rows:
        assistant = row["messages"][-1]
        line = assistant["reasoning_content"].splitlines()[1]
        # ~12 tokens per check line; lognormal lengths, capped so a sample fits a pack
        checks = min(int(rng.lognormvariate(3.5, 1.0)), max(1, (max_len - 120) // 14))
        assistant["reasoning_content"] += "".join(f"\nLet me check again ({i + 1}): {line}" for i in range(checks))
    return rows


def write_rows(rows: list[dict], path: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


# ---------------------------------------------------------------- the four trainers
def _peak_memory_gb() -> float:
    import resource

    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB → GiB; process lifetime peak on CPU


def _reset_peak() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def run_factory(model_dir: Path, data: Path, out: Path, *, steps: int, batch: int, max_len: int, checkpointing: bool, bf16: bool) -> dict:
    recipe = load_recipe("qwen", [
        f"model={model_dir}", f"max_seq_len={max_len}", f"batch_size={batch}", "learning_rate=1e-4", f"save_steps={steps + 1}",
        "warmup_ratio=0.0", f"gradient_checkpointing={str(checkpointing).lower()}", f"precision={'bf16' if bf16 else 'fp32'}",
    ], subdir="students")
    _reset_peak()
    report = run_distill(recipe, data=str(data), output_dir=out, max_steps=steps, progress=False)
    return {"tokens_per_s": report.tokens_per_s, "non_pad_share": report.non_pad_share, "seconds": report.train_seconds,
            "peak_gb": _peak_memory_gb(), "attention": report.attention, "kernels": report.kernels, "final_loss": report.final_loss}


def run_trl(model_dir: Path, data: Path, out: Path, *, steps: int, batch: int, max_len: int, checkpointing: bool, bf16: bool,
            packing: bool, attention: str) -> dict:
    import pyarrow.parquet as pq
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTConfig

    CountingSFTTrainer = counting_trainer_class()

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = pq.read_table(data).select(["messages"]).to_pylist()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation=attention)
    config = SFTConfig(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=batch, learning_rate=1e-4, lr_scheduler_type="cosine",
        assistant_only_loss=True, packing=packing, packing_strategy="bfd", padding_free=packing, max_length=max_len,
        bf16=bf16, save_strategy="no", report_to="none", logging_steps=10, disable_tqdm=True,
        dataloader_pin_memory=torch.cuda.is_available(), seed=0, **_checkpointing_flag(SFTConfig, checkpointing),
    )
    trainer = CountingSFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    trainer.remove_callback(PrinterCallback)
    _reset_peak()
    started = time.perf_counter()
    trainer.train()
    _sync()
    seconds = time.perf_counter() - started
    return {"tokens_per_s": trainer.real / seconds, "non_pad_share": trainer.real / trainer.computed, "seconds": seconds,
            "peak_gb": _peak_memory_gb(), "attention": attention}


def run_plain_loop(model_dir: Path, *, steps: int, batch: int, max_len: int, bf16: bool) -> dict:
    """The hardware reference: full causal rows, SDPA, AdamW, bf16 autocast, nothing else."""
    import torch
    from transformers import AutoModelForCausalLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa").to(device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda")
    vocab = model.config.vocab_size
    generator = torch.Generator(device=device).manual_seed(0)
    batches = [torch.randint(0, vocab, (batch, max_len), device=device, generator=generator) for _ in range(2)]

    def step(ids: torch.Tensor) -> None:
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step(batches[0])  # warm-up: allocator, kernels, optimizer state
    _sync()
    _reset_peak()
    started = time.perf_counter()
    for i in range(steps):
        step(batches[i % 2])
    _sync()
    seconds = time.perf_counter() - started
    return {"tokens_per_s": steps * batch * max_len / seconds, "non_pad_share": 1.0, "seconds": seconds,
            "peak_gb": _peak_memory_gb(), "attention": "sdpa (causal, unpacked)"}


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def bf16_peak_flops(override_tflops: float | None) -> float | None:
    import torch

    if override_tflops:
        return override_tflops * 1e12
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((flops for key, flops in BF16_PEAK.items() if key in name), None)


# ---------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="CPU smoke run: a 2-layer student, 512 tokens, 3 steps")
    parser.add_argument("--max-len", type=int, nargs="+", help="packing lengths (default 8192 32768; --small: 512)")
    parser.add_argument("--steps", type=int, help="optimizer steps per trainer (default 12; --small: 3)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--checkpointing", action="store_true", help="gradient checkpointing at every length (always on >= 16K)")
    parser.add_argument("--only", nargs="+", choices=["factory", "trl-plain", "trl-bfd", "plain-loop"], help="run only these rows")
    parser.add_argument("--peak-tflops", type=float, help="bf16 dense peak of this GPU, if not in the built-in table")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import torch
    from transformers.utils import logging as hf_logging

    from factory.distill import choose_attention

    hf_logging.set_verbosity_error()
    cuda = torch.cuda.is_available()
    if not cuda and not args.small:
        parser.error("no CUDA GPU here: use --small for the CPU smoke run")
    lengths = args.max_len or ([512] if args.small else [8192, 32768])
    steps = args.steps or (3 if args.small else 12)
    bf16 = cuda and torch.cuda.is_bf16_supported()
    peak = bf16_peak_flops(args.peak_tflops)
    names = args.only or ["factory", "trl-plain", "trl-bfd", "plain-loop"]
    factory_attention = choose_attention("auto", cuda=cuda)
    # TRL's padding-free path is only isolated with flash attention; give it the best this box has.
    trl_attention = "flash_attention_2" if factory_attention.name == "flash" else "sdpa"
    device = torch.cuda.get_device_name() if cuda else "CPU"
    results: dict[str, Any] = {"benchmark": "distill_gpu", "device": device, "bf16_peak_flops": peak, "small": args.small,
                               "steps": steps, "batch": args.batch, "factory_attention": factory_attention.name, "lengths": {}}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, params = build_student(Path(tmp) / "student", SMALL if args.small else QWEN_1_5B)
        results["parameters"] = params
        print(f"{device}: Qwen2-shaped student, {params / 1e9:.2f}B parameters; {steps} steps x batch {args.batch}; "
              f"factory attention: {factory_attention.name} ({factory_attention.reason})", flush=True)
        for max_len in lengths:
            checkpointing = args.checkpointing or max_len >= 16384
            samples = max(64, steps * args.batch * max_len // 300)
            data = write_rows(long_tail_rows(samples, max_len, seed=0), Path(tmp) / f"sft-{max_len}.parquet")
            rows: dict[str, dict] = {}
            common = {"steps": steps, "batch": args.batch, "max_len": max_len, "bf16": bf16}
            for name in names:
                try:
                    if name == "factory":
                        rows[name] = run_factory(model_dir, data, Path(tmp) / f"f-{max_len}", checkpointing=checkpointing, **common)
                    elif name.startswith("trl"):
                        rows[name] = run_trl(model_dir, data, Path(tmp) / f"{name}-{max_len}", checkpointing=checkpointing,
                                             packing=name == "trl-bfd", attention=trl_attention, **common)
                    else:
                        rows[name] = run_plain_loop(model_dir, **common)
                except torch.OutOfMemoryError:
                    rows[name] = {"error": "out of memory"}
                    torch.cuda.empty_cache()
            _print_table(max_len, checkpointing, rows, params, peak)
            results["lengths"][str(max_len)] = {"checkpointing": checkpointing, "samples": samples, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


def _print_table(max_len: int, checkpointing: bool, rows: dict[str, dict], params: int, peak: float | None) -> None:
    reference = rows.get("plain-loop", {}).get("tokens_per_s")
    padding_free = rows.get("trl-bfd", {}).get("tokens_per_s")
    print(f"\npacking length {max_len}{' (gradient checkpointing)' if checkpointing else ''}")
    print(f"{'trainer':<11} {'tokens/s':>10} {'non-pad':>8} {'peak GB':>8} {'6N-MFU':>7} {'vs loop':>8} {'vs trl-bfd':>10}  attention")
    for name, row in rows.items():
        if "error" in row:
            print(f"{name:<11} {row['error']}")
            continue
        tps = row["tokens_per_s"]
        row["mfu_6n"] = 6 * params * tps / peak if peak else None
        mfu = f"{row['mfu_6n']:.1%}" if row["mfu_6n"] is not None else "-"
        vs_loop = f"{tps / reference:.2f}x" if reference else "-"
        vs_bfd = f"{tps / padding_free:.2f}x" if padding_free else "-"
        print(f"{name:<11} {tps:>10.0f} {row['non_pad_share']:>7.1%} {row['peak_gb']:>8.1f} {mfu:>7} {vs_loop:>8} {vs_bfd:>10}  {row['attention']}")


if __name__ == "__main__":
    main()
