"""Distiller throughput: `factory.distill` vs a plain TRL SFTTrainer on the same tiny model and data.

Configurations, all with loss on assistant tokens only, the same model, data, batch size,
max length, learning rate and number of optimizer steps:

* ``factory``       — this distiller: BFD packs, one pack per row, per-sample position ids,
                      length-grouped batches (``factory.distill.run_distill``);
* ``trl-plain``     — TRL ``SFTTrainer`` without packing: one sample per row, padded to the
                      longest in the batch (the baseline the issue asks for);
* ``trl-bfd``       — TRL ``SFTTrainer`` with its own BFD packing, which turns on padding-free
                      mode: the whole batch flattened into one row (built for FlashAttention).

tokens/s counts real (non-pad) tokens per second of ``trainer.train()``; non-pad share is real
tokens over the positions the model computed. Each configuration runs ``--repeats`` times,
interleaved, and the best run is reported, because the CPU is shared and noisy.

    python benchmarks/bench_distill.py            # 30 steps, batch 8, max length 512
    python benchmarks/bench_distill.py --quick    # 8 steps, batch 4, max length 256
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("FACTORY_HOME", str(REPO / ".factory"))

from factory.output import quiet_dependencies

quiet_dependencies()  # before transformers/datasets load: a benchmark prints its table, not their bars

from factory.distill import _checkpointing_flag, demo_sft_rows, run_distill
from factory.models import resolve_model
from factory.recipe import load_recipe

RESULTS = REPO / "benchmarks" / "results" / "distill.json"


def long_tail_rows(count: int, max_checks: int, seed: int) -> list[dict]:
    """Demo conversations whose reasoning repeats a check a long-tailed number of times.

    Real reasoning traces vary from a few hundred to many thousand tokens; padding cost depends
    on that spread, so the benchmark data has one too.
    """
    rng = random.Random(seed)
    rows = demo_sft_rows(count, seed=seed, system_share=0.5)
    for row in rows:
        assistant = row["messages"][-1]
        checks = min(max_checks, int(rng.expovariate(1 / 4)))
        extra = "".join(f"\nLet me check again ({i + 1}): {assistant['reasoning_content'].splitlines()[1]}" for i in range(checks))
        assistant["reasoning_content"] += extra
    return rows


def write_rows(rows: list[dict], path: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def run_factory(data: Path, out: Path, *, steps: int, batch: int, max_len: int, lr: float) -> dict:
    recipe = load_recipe(
        "qwen",
        [f"max_seq_len={max_len}", f"batch_size={batch}", f"learning_rate={lr}", f"save_steps={steps + 1}", "warmup_ratio=0.0"],
        subdir="students",
    )
    report = run_distill(recipe, data=str(data), output_dir=out, max_steps=steps, progress=False)
    return {
        "tokens_per_s": report.tokens_per_s,
        "non_pad_share": report.non_pad_share,
        "seconds": report.train_seconds,
        "real_tokens": round(report.tokens_per_s * report.train_seconds),
        "final_loss": report.final_loss,
        "dropped_overlong": report.dropped_overlong,
    }


def counting_trainer_class() -> type:
    """TRL's SFTTrainer, counting the tokens it computes and the real (non-pad) ones among them."""
    from trl import SFTTrainer

    class CountingSFTTrainer(SFTTrainer):
        real = 0
        computed = 0

        def training_step(self, model, inputs, num_items_in_batch=None):
            if "attention_mask" in inputs:
                self.real += int(inputs["attention_mask"].sum())
            else:  # padding-free: one flattened row, no padding
                self.real += int(inputs["input_ids"].numel())
            self.computed += int(inputs["input_ids"].numel())
            return super().training_step(model, inputs, num_items_in_batch)

    return CountingSFTTrainer


def run_trl(data: Path, out: Path, *, steps: int, batch: int, max_len: int, lr: float, packing: bool) -> dict:
    """A plain SFTTrainer; it only counts tokens, everything else is TRL's default path."""
    import pyarrow.parquet as pq
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTConfig

    CountingSFTTrainer = counting_trainer_class()

    model_path = resolve_model("tiny-qwen")
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    rows = pq.read_table(data).select(["messages"]).to_pylist()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    config = SFTConfig(
        output_dir=str(out),
        max_steps=steps,
        per_device_train_batch_size=batch,
        learning_rate=lr,
        lr_scheduler_type="cosine",
        assistant_only_loss=True,
        packing=packing,
        packing_strategy="bfd",
        max_length=max_len,
        bf16=False,
        save_strategy="no",
        report_to="none",
        logging_steps=1,
        disable_tqdm=True,
        dataloader_pin_memory=False,
        seed=0,
        **_checkpointing_flag(SFTConfig, False),  # spelled per transformers version
    )
    trainer = CountingSFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    trainer.remove_callback(PrinterCallback)
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {
        "tokens_per_s": trainer.real / seconds,
        "non_pad_share": trainer.real / trainer.computed,
        "seconds": seconds,
        "real_tokens": trainer.real,
        "final_loss": losses[-1] if losses else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small run: 8 steps, batch 4, max length 256")
    parser.add_argument("--repeats", type=int, default=None, help="runs per configuration (best is reported)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()

    steps, batch, max_len, samples, max_checks = (8, 4, 256, 300, 12) if args.quick else (30, 8, 512, 1200, 40)
    repeats = args.repeats or (2 if args.quick else 3)
    lr = 1e-3
    runs: dict[str, list[dict]] = {"factory": [], "trl-plain": [], "trl-bfd": []}
    with tempfile.TemporaryDirectory() as tmp:
        data = write_rows(long_tail_rows(samples, max_checks, seed=0), Path(tmp) / "bench_sft.parquet")
        for repeat in range(repeats):
            runs["factory"].append(run_factory(data, Path(tmp) / f"factory-{repeat}", steps=steps, batch=batch, max_len=max_len, lr=lr))
            runs["trl-plain"].append(run_trl(data, Path(tmp) / f"plain-{repeat}", steps=steps, batch=batch, max_len=max_len, lr=lr, packing=False))
            runs["trl-bfd"].append(run_trl(data, Path(tmp) / f"bfd-{repeat}", steps=steps, batch=batch, max_len=max_len, lr=lr, packing=True))

    best = {name: max(results, key=lambda r: r["tokens_per_s"]) for name, results in runs.items()}
    median = {name: statistics.median(r["tokens_per_s"] for r in results) for name, results in runs.items()}
    baseline = best["trl-plain"]["tokens_per_s"]
    print(f"\ndistill throughput: tiny-qwen, {samples} samples, {steps} steps x batch {batch}, max length {max_len}, best of {repeats}")
    print(f"{'config':<11} {'tokens/s':>10} {'vs trl-plain':>13} {'median tok/s':>13} {'median ratio':>13} {'non-pad':>8} {'train s':>8} {'tokens':>8} {'final loss':>10}")
    for name, r in best.items():
        print(
            f"{name:<11} {r['tokens_per_s']:>10.0f} {r['tokens_per_s'] / baseline:>12.2f}x {median[name]:>13.0f} "
            f"{median[name] / median['trl-plain']:>12.2f}x {r['non_pad_share']:>7.1%} "
            f"{r['seconds']:>8.1f} {r['real_tokens']:>8} {r['final_loss']:>10.3f}"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": "distill",
        "quick": args.quick,
        "settings": {"model": "tiny-qwen", "samples": samples, "steps": steps, "batch_size": batch, "max_len": max_len, "repeats": repeats, "lr": lr},
        "cpu_count": os.cpu_count(),
        "load_avg": os.getloadavg(),
        "best": best,
        "runs": runs,
        "ratios_vs_trl_plain": {name: r["tokens_per_s"] / baseline for name, r in best.items()},
        "median_tokens_per_s": median,
        "median_ratios_vs_trl_plain": {name: m / median["trl-plain"] for name, m in median.items()},
        "targets": {"tokens_per_s_ratio": ">= 1.0", "non_pad_share": ">= 0.95"},
    }
    RESULTS.write_text(json.dumps(payload, indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
