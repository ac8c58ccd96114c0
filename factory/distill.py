"""Distillation: supervised fine-tuning of a student on the curated reasoning mix.

Reads top to bottom like a training script:

1. ``load_sft_dataset`` — the training rows (a mix dataset, or Parquet/JSONL files);
2. ``encode_samples``   — chat template with the ``<think>`` reasoning, labels only on assistant tokens;
3. ``apply_overlong``   — samples longer than ``max_seq_len`` are counted, then dropped or truncated;
4. ``pack_samples``     — best-fit-decreasing packing (TRL's ``pack_dataset``), sample lengths kept;
5. ``build_trainer``    — TRL's ``SFTTrainer`` on the pre-tokenised packs with ``PackedCollator``,
   which resets position ids at every sample so samples never attend across boundaries;
6. ``run_distill``      — train with checkpoints every ``save_steps``, resume after a kill, save the
   final model dir (model + tokenizer + ``training_manifest.json``).

Why a collator of our own: TRL's padding-free mode flattens a whole batch into one row, which is
what FlashAttention's varlen kernels want, but under SDPA/eager (CPU, or GPUs without
flash-attn) that row's attention is quadratic in ``batch_size * max_seq_len``. Keeping one pack
per row with per-sample position ids gives the same isolation (transformers builds a
block-diagonal causal mask from the position ids) at ``batch_size`` times less attention work.
With flash-attn the flat layout is used instead.

The attention that keeps packed samples apart is chosen by ``choose_attention`` (recipe
``attention: auto | flash | flex | sdpa | eager``) and logged at start: SDPA with a dense
block-diagonal mask cannot use its flash kernel, so on a GPU FlexAttention (a block-sparse document
mask built from the position ids, shipped with PyTorch) or flash-attn's varlen kernels are used.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from factory.errors import FactoryError
from factory.models import resolve_model
from factory.paths import factory_home
from factory.progress import training_progress
from factory.recipe import StudentRecipe

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
MANIFEST_NAME = "training_manifest.json"
CHECKPOINTS_DIR = "checkpoints"
RUN_FINGERPRINT_NAME = "run.json"
DATA_SUFFIXES = (".parquet", ".jsonl")


# ---------------------------------------------------------------- report
@dataclass
class DistillReport:
    """What a distillation run did; also written as the final dir's ``training_manifest.json``."""

    student: str
    base_model: str
    data: str
    data_path: str
    output_dir: str
    samples_in: int
    samples_trained: int
    dropped_overlong: int
    truncated_overlong: int
    dropped_no_assistant: int
    max_seq_len: int
    packing: bool
    attention: str  # the attention implementation that ran (see choose_attention)
    kernels: str  # "liger" or "none"
    sequences: int  # packs (or single samples without packing) per epoch
    tokens: int  # tokens per epoch, after drop/truncate
    assistant_tokens: int  # tokens with a loss, per epoch
    epochs: float
    steps: int
    non_pad_share: float  # real tokens / positions the model computed
    tokens_per_s: float  # real tokens per second of training (all processes)
    train_seconds: float
    final_loss: float | None
    loss_curve: list[dict[str, float]] = field(default_factory=list)
    resumed_from: str | None = None
    recipe: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------- 1. data
@dataclass(frozen=True)
class DataSource:
    name: str  # short name for the output dir: the dataset name or the file stem
    path: Path
    files: tuple[Path, ...]


def resolve_data(spec: str) -> DataSource:
    """A dataset name under $FACTORY_HOME/datasets, or a Parquet/JSONL file, or a dir of them."""
    path = Path(spec).expanduser()
    if not path.exists():
        candidate = factory_home() / "datasets" / spec
        if not candidate.exists():
            known = sorted(p.name for p in (factory_home() / "datasets").glob("*") if p.is_dir())
            hint = f"; known datasets: {', '.join(known)}" if known else f"; no datasets under {factory_home() / 'datasets'} (run `factory mix` first)"
            raise FactoryError(f"data '{spec}': not a file, a directory or a dataset name{hint}")
        path = candidate
    path = path.resolve()
    if path.is_file():
        if path.suffix not in DATA_SUFFIXES:
            raise FactoryError(f"data '{spec}': expected a .parquet or .jsonl file, got '{path.suffix}'")
        return DataSource(path.stem, path, (path,))
    search_root = path / "data" if (path / "data").is_dir() else path
    files = tuple(sorted(p for p in search_root.rglob("*") if p.is_file() and p.suffix in DATA_SUFFIXES and not p.name.startswith(".")))
    if not files:
        raise FactoryError(f"data '{spec}': no .parquet or .jsonl files under {search_root}")
    return DataSource(path.name, path, files)


def load_sft_dataset(source: DataSource):
    """The source's ``messages`` column as a memory-mapped `datasets.Dataset` (800K long traces fit on disk, not in RAM)."""
    from datasets import concatenate_datasets, load_dataset

    by_builder = {
        "parquet": [str(f) for f in source.files if f.suffix == ".parquet"],
        "json": [str(f) for f in source.files if f.suffix == ".jsonl"],
    }
    parts = []
    for builder, files in by_builder.items():
        if not files:
            continue
        try:
            part = load_dataset(builder, data_files=files, split="train", cache_dir=str(factory_home() / "cache" / "datasets"))
        except Exception as exc:  # datasets wraps arrow/json errors in several types; all mean "unreadable"
            raise FactoryError(f"data '{source.path}': cannot read {builder} files: {str(exc).splitlines()[0][:300]}") from None
        if len(part) and "messages" not in part.column_names:
            raise FactoryError(f"data '{source.path}': no 'messages' column (columns: {', '.join(part.column_names)})")
        if len(part):
            parts.append(part.select_columns(["messages"]))
    if not parts:
        raise FactoryError(f"data '{source.path}': the dataset is empty (0 samples)")
    return concatenate_datasets(parts) if len(parts) > 1 else parts[0]


def data_fingerprint(source: DataSource) -> str:
    """Content hash of the training files (xxh3 reads GBs per second), so a resume sees the same data."""
    import xxhash

    digest = xxhash.xxh3_128()
    for file in source.files:
        digest.update(file.name.encode())
        with open(file, "rb") as handle:
            while chunk := handle.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------- 2. tokenise with assistant-only labels
def clean_messages(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Chat turns as the template wants them; an empty ``reasoning_content`` is dropped, not rendered."""
    cleaned = []
    for message in messages:
        turn = {"role": message["role"], "content": message.get("content") or ""}
        if message.get("reasoning_content"):
            turn["reasoning_content"] = message["reasoning_content"]
        cleaned.append(turn)
    return cleaned


def encode_conversation(tokenizer, messages: list[dict[str, Any]]) -> tuple[list[int], list[int]]:
    """(input_ids, labels): labels copy the ids inside the template's ``{% generation %}`` blocks, else -100."""
    encoded = tokenizer.apply_chat_template(
        clean_messages(messages), tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids = list(encoded["input_ids"])
    mask = encoded["assistant_masks"]
    labels = [tok if keep else IGNORE_INDEX for tok, keep in zip(ids, mask)]
    return ids, labels


_GENERATION_TAG = re.compile(r"{%-?\s*generation\s*-?%}")


def check_template(tokenizer) -> None:
    """Assistant-only loss needs generation marks; without them every label would be -100."""
    if not _GENERATION_TAG.search(tokenizer.chat_template or ""):
        raise FactoryError(
            "student tokenizer: chat template has no {% generation %} marks, so assistant tokens cannot be found "
            "(wrap the assistant turn in {% generation %}…{% endgeneration %})"
        )


def encode_samples(dataset, tokenizer, *, num_proc: int | None = None):
    """Per sample: ``input_ids``, ``labels``, ``length`` and ``targets`` (tokens with a loss).

    Accepts a `datasets.Dataset` or an Arrow table with a ``messages`` column.
    """
    from datasets import Dataset

    if not isinstance(dataset, Dataset):
        dataset = Dataset(dataset)

    def encode(batch: dict[str, list]) -> dict[str, list]:
        out: dict[str, list] = {"input_ids": [], "labels": [], "length": [], "targets": []}
        for messages in batch["messages"]:
            ids, labels = encode_conversation(tokenizer, messages)
            out["input_ids"].append(ids)
            out["labels"].append(labels)
            out["length"].append(len(ids))
            out["targets"].append(sum(1 for label in labels if label != IGNORE_INDEX))
        return out

    procs = num_proc if num_proc is not None else (min(8, os.cpu_count() or 1) if len(dataset) >= 20_000 else None)
    return dataset.map(encode, batched=True, batch_size=256, remove_columns=dataset.column_names, num_proc=procs, desc="tokenizing")


# ---------------------------------------------------------------- 3. over-long samples and empty targets
@dataclass(frozen=True)
class Selection:
    kept: Any  # datasets.Dataset
    dropped_overlong: int
    truncated_overlong: int
    dropped_no_assistant: int


def apply_overlong(encoded, max_seq_len: int, policy: str) -> Selection:
    """Count samples longer than max_seq_len, then drop or truncate them; drop samples with nothing to learn."""
    import numpy as np

    overlong = np.asarray(encoded["length"]) > max_seq_len
    n_overlong = int(overlong.sum())
    if policy == "drop":
        kept = encoded.select(np.flatnonzero(~overlong)) if n_overlong else encoded
    elif n_overlong:
        def truncate(example: dict[str, Any]) -> dict[str, Any]:
            if example["length"] <= max_seq_len:
                return example
            labels = example["labels"][:max_seq_len]
            return {
                "input_ids": example["input_ids"][:max_seq_len],
                "labels": labels,
                "length": max_seq_len,
                "targets": sum(1 for label in labels if label != IGNORE_INDEX),
            }

        kept = encoded.map(truncate, desc="truncating")
    else:
        kept = encoded
    has_target = np.asarray(kept["targets"]) > 0
    no_target = int((~has_target).sum())
    if no_target:
        kept = kept.select(np.flatnonzero(has_target))
    return Selection(
        kept=kept,
        dropped_overlong=n_overlong if policy == "drop" else 0,
        truncated_overlong=n_overlong if policy == "truncate" else 0,
        dropped_no_assistant=no_target,
    )


# ---------------------------------------------------------------- 4. packing
def pack_samples(samples, max_seq_len: int, *, packing: bool):
    """Best-fit-decreasing packs of whole samples (never cut: over-long ones were handled above)."""
    columns = samples.select_columns(["input_ids", "labels"])
    if packing:
        from trl.data_utils import pack_dataset

        columns = pack_dataset(columns, max_seq_len, strategy="bfd")
    else:
        columns = columns.map(lambda ex: {"seq_lengths": [len(ex["input_ids"])]}, desc="lengths")
    # The sampler groups sequences of similar length into a batch, so rows pad to almost nothing.
    return columns.map(lambda ex: {"length": len(ex["input_ids"])}, desc="lengths")


@dataclass
class PackedCollator:
    """Batches of packs with position ids that restart at every sample.

    ``flat=False``: one pack per row, right-padded; no attention mask, so transformers derives a
    block-diagonal causal mask from the position ids (works with SDPA and eager attention).
    ``flat=True``: every pack of the batch in one row (padding-free), with ``cu_seq_lens`` for
    FlashAttention's varlen kernels.
    Each batch also carries ``real_tokens`` (an int, popped by the trainer before the forward pass)
    so the non-pad share is measured on what the model actually computed.
    """

    pad_token_id: int
    flat: bool = False

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        rows_ids = [list(ex["input_ids"]) for ex in examples]
        rows_labels = [list(ex["labels"]) for ex in examples]
        rows_pos = [_positions(ex["seq_lengths"]) for ex in examples]
        real = sum(len(r) for r in rows_ids)
        if self.flat:
            rows_ids = [sum(rows_ids, [])]
            rows_labels = [sum(rows_labels, [])]
            rows_pos = [sum(rows_pos, [])]
        width = max(len(r) for r in rows_ids)
        input_ids = torch.full((len(rows_ids), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows_ids), width), IGNORE_INDEX, dtype=torch.long)
        # Padding gets its own run of positions 0..n, i.e. its own segment that no sample attends to.
        position_ids = torch.zeros((len(rows_ids), width), dtype=torch.long)
        for row, (ids, labs, pos) in enumerate(zip(rows_ids, rows_labels, rows_pos)):
            n = len(ids)
            input_ids[row, :n] = torch.tensor(ids)
            labels[row, :n] = torch.tensor(labs)
            position_ids[row, :n] = torch.tensor(pos)
            position_ids[row, n:] = torch.arange(width - n)
        # The first token of a sample is never a target of the previous sample's last token.
        labels[position_ids == 0] = IGNORE_INDEX
        batch: dict[str, Any] = {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}
        if self.flat:
            starts = (position_ids[0] == 0).nonzero().flatten()
            cu = torch.cat([starts, torch.tensor([width])]).to(torch.int32)
            batch["cu_seq_lens_q"] = batch["cu_seq_lens_k"] = cu
            batch["max_length_q"] = batch["max_length_k"] = int(cu.diff().max())
        # A plain int: it stays on the host when the batch moves to the GPU, so counting it never syncs.
        batch["real_tokens"] = real
        return batch


def _positions(seq_lengths: list[int]) -> list[int]:
    positions: list[int] = []
    for n in seq_lengths:
        positions.extend(range(n))
    return positions


# ---------------------------------------------------------------- 5. the trainer
def _trainer_class():
    """SFTTrainer that counts real vs computed tokens and logs them, so they survive a resume."""
    from trl import SFTTrainer

    class DistillTrainer(SFTTrainer):
        real_tokens: int = 0
        computed_tokens: int = 0

        def _get_train_sampler(self, train_dataset=None):
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            return EpochSeededLengthSampler(
                list(dataset["length"]),
                batch_size=self.args.train_batch_size * self.args.gradient_accumulation_steps,
                seed=self.args.data_seed if self.args.data_seed is not None else self.args.seed,
            )

        def training_step(self, model, inputs, num_items_in_batch=None):
            real = inputs.pop("real_tokens", None)
            if real is not None:
                self.real_tokens += int(real)
                self.computed_tokens += inputs["input_ids"].numel()  # shape only: no device sync
            return super().training_step(model, inputs, num_items_in_batch)

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            if "loss" in logs:
                logs["real_tokens"] = self.real_tokens
                logs["computed_tokens"] = self.computed_tokens
            super().log(logs, start_time)

    return DistillTrainer


class EpochSeededLengthSampler:
    """Length-grouped order (transformers' ``get_length_grouped_indices``) drawn from seed + epoch.

    transformers' own LengthGroupedSampler draws from the global RNG, so a resumed run would see a
    different order; seeding per epoch makes the order a pure function of (seed, epoch), which is
    what makes `--resume` land on the same batches. Trainer calls ``set_epoch`` every epoch.
    """

    def __init__(self, lengths: list[int], *, batch_size: int, seed: int) -> None:
        self.lengths = lengths
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        import torch
        from transformers.trainer_pt_utils import get_length_grouped_indices

        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))


# ---------------------------------------------------------------- attention, kernels, version shims
ATTENTION_IMPLEMENTATIONS = {"flash": "flash_attention_2", "flex": "flex_attention", "sdpa": "sdpa", "eager": "eager"}


@dataclass(frozen=True)
class AttentionChoice:
    name: str  # flash | flex | sdpa | eager
    implementation: str  # transformers' attn_implementation
    reason: str


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _flex_available() -> bool:
    try:
        from torch.nn.attention.flex_attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def choose_attention(requested: str, *, cuda: bool) -> AttentionChoice:
    """The attention that isolates packed samples: the recipe's choice, or the fastest that works here.

    auto: flash-attn's varlen kernels (padding-free) on CUDA when installed, else FlexAttention's
    block-sparse document mask on CUDA, else SDPA (on CPU flex compiles for minutes and runs no faster).
    """
    if requested == "auto":
        if cuda and _installed("flash_attn"):
            return AttentionChoice("flash", ATTENTION_IMPLEMENTATIONS["flash"], "auto: CUDA with flash-attn installed")
        if cuda and _flex_available():
            return AttentionChoice("flex", ATTENTION_IMPLEMENTATIONS["flex"], "auto: CUDA without flash-attn")
        return AttentionChoice("sdpa", "sdpa", "auto: no CUDA" if not cuda else "auto: no FlexAttention in this torch")
    if requested == "flash" and not (cuda and _installed("flash_attn")):
        raise FactoryError("attention: flash needs a CUDA GPU and the flash-attn package (pip install flash-attn); use flex or sdpa")
    if requested == "flex" and not _flex_available():
        raise FactoryError("attention: flex needs torch>=2.5 (torch.nn.attention.flex_attention); use sdpa")
    return AttentionChoice(requested, ATTENTION_IMPLEMENTATIONS[requested], "set in the recipe")


def choose_kernels(requested: str, *, cuda: bool) -> str:
    """"liger" when asked (it must be installed), or on auto when on CUDA with liger-kernel installed."""
    if requested == "liger":
        if not _installed("liger_kernel"):
            raise FactoryError("kernels: liger needs the liger-kernel package (pip install liger-kernel); use kernels: none")
        return "liger"
    if requested == "auto" and cuda and _installed("liger_kernel"):
        return "liger"
    return "none"


def log_steps(recipe: StudentRecipe, *, cuda: bool) -> int:
    """Logging reads the loss back to the host; on a GPU that sync every step stalls the queue."""
    if recipe.log_every != "auto":
        return int(recipe.log_every)
    return 10 if cuda else 1


def _checkpointing_flag(config_cls, enabled: bool) -> dict[str, bool]:
    """transformers >= 5.20 calls it ``activation_checkpointing`` (the old name is a deprecated alias);
    5.16-5.19 know only ``gradient_checkpointing``. Pass it explicitly: some TRL versions default it to True."""
    from dataclasses import fields

    names = {f.name for f in fields(config_cls)}
    return {"activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing": enabled}


def _precision_flags(precision: str) -> dict[str, bool]:
    import torch

    if precision == "auto":
        use_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return {"bf16": use_bf16, "fp16": False}
    if precision == "fp16" and not torch.cuda.is_available():
        raise FactoryError("precision: fp16 needs a CUDA GPU; use fp32 or bf16 on CPU")
    return {"bf16": precision == "bf16", "fp16": precision == "fp16"}


def build_trainer(
    recipe: StudentRecipe,
    model,
    tokenizer,
    train_dataset,
    checkpoints_dir: Path,
    *,
    max_steps: int | None,
    progress: bool,
    callbacks: list | None = None,
    use_liger: bool = False,
):
    """TRL's SFTTrainer on pre-tokenised packs; the schedule, optimizer and checkpoints are its own."""
    import torch
    from trl import SFTConfig

    attn = getattr(model.config, "_attn_implementation", "sdpa") or "sdpa"
    flat = "flash" in attn
    cuda = torch.cuda.is_available()
    config = SFTConfig(
        output_dir=str(checkpoints_dir),
        num_train_epochs=recipe.epochs,
        max_steps=max_steps if max_steps is not None else -1,
        per_device_train_batch_size=recipe.batch_size,
        gradient_accumulation_steps=recipe.grad_accum,
        learning_rate=recipe.learning_rate,
        lr_scheduler_type=recipe.lr_scheduler,
        warmup_steps=recipe.warmup_ratio,  # a float < 1 is a ratio of the total steps
        weight_decay=0.0,
        seed=recipe.seed,
        data_seed=recipe.seed,
        logging_steps=log_steps(recipe, cuda=cuda),
        save_strategy="steps",
        save_steps=recipe.save_steps,
        save_total_limit=2,  # the newest may be half-written when killed; keep one complete before it
        report_to="none",
        disable_tqdm=True,  # one rich display (factory.progress.training_progress) instead of tqdm + log dicts
        dataloader_num_workers=0,
        dataloader_pin_memory=cuda,
        use_liger_kernel=use_liger,
        torch_compile=recipe.compile,
        remove_unused_columns=False,
        dataset_kwargs={"skip_prepare_dataset": True},  # tokenised, masked and packed above
        max_length=None,
        packing=False,  # already packed; TRL would re-pack and force its flattened collator
        padding_free=False,
        **_precision_flags(recipe.precision),
        **_checkpointing_flag(SFTConfig, recipe.gradient_checkpointing),
    )
    peft_config = None
    if recipe.lora is not None:
        from peft import LoraConfig as PeftLoraConfig

        peft_config = PeftLoraConfig(
            r=recipe.lora.r,
            lora_alpha=recipe.lora.alpha,
            lora_dropout=recipe.lora.dropout,
            target_modules=recipe.lora.target_modules,
            task_type="CAUSAL_LM",
        )
    trainer_cls = _trainer_class()
    trainer = trainer_cls(
        model=model,
        args=config,
        train_dataset=train_dataset,
        processing_class=tokenizer,
        data_collator=PackedCollator(pad_token_id=tokenizer.pad_token_id, flat=flat),
        peft_config=peft_config,
        callbacks=[*(callbacks or []), training_progress(enabled=progress)],
    )
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # it prints every log dict when tqdm is off
    return trainer


# ---------------------------------------------------------------- checkpoints
def last_complete_checkpoint(checkpoints_dir: Path) -> Path | None:
    """The newest checkpoint whose trainer state was fully written (a kill can cut a save short)."""
    if not checkpoints_dir.is_dir():
        return None
    candidates = []
    for path in checkpoints_dir.glob("checkpoint-*"):
        suffix = path.name.removeprefix("checkpoint-")
        if path.is_dir() and suffix.isdigit():
            candidates.append((int(suffix), path))
    for step, path in sorted(candidates, reverse=True):
        try:
            state = json.loads((path / "trainer_state.json").read_text())
        except (OSError, json.JSONDecodeError):
            log.warning("checkpoint %s is incomplete (killed while saving); skipping it", path)
            continue
        if state.get("global_step") == step:
            return path
    return None


def _fingerprint(recipe: StudentRecipe, source: DataSource, max_steps: int | None) -> dict[str, Any]:
    return {
        "recipe": recipe.model_dump(mode="json", exclude={"description", "save_steps"}),
        "data": str(source.path),
        "data_fingerprint": data_fingerprint(source),
        "max_steps": max_steps,
    }


def _prepare_checkpoints(checkpoints_dir: Path, fingerprint: dict[str, Any], resume: bool) -> None:
    """Keep checkpoints of the same recipe and data for a resume; otherwise start a clean directory."""
    marker = checkpoints_dir / RUN_FINGERPRINT_NAME
    if resume and marker.exists():
        previous = json.loads(marker.read_text())
        if previous != fingerprint:
            changed = sorted(k for k in fingerprint if previous.get(k) != fingerprint[k])
            raise FactoryError(
                f"--resume: {checkpoints_dir} was written for a different run (changed: {', '.join(changed)}); "
                "drop --resume to start over"
            )
        if last_complete_checkpoint(checkpoints_dir) is None:
            log.info("no complete checkpoint in %s; starting from scratch", checkpoints_dir)
        return
    if checkpoints_dir.exists():
        log.info("starting fresh: removing old checkpoints in %s", checkpoints_dir)
        shutil.rmtree(checkpoints_dir)
    checkpoints_dir.mkdir(parents=True)
    _write_json_atomic(marker, fingerprint)


def _prepare_checkpoints_on_main(checkpoints_dir: Path, fingerprint: dict[str, Any], resume: bool) -> Path | None:
    """Under `accelerate launch` only the main process touches the directory; the others wait."""
    from accelerate import PartialState

    state = PartialState()
    error: FactoryError | None = None
    if state.is_main_process:
        try:
            _prepare_checkpoints(checkpoints_dir, fingerprint, resume)
        except FactoryError as exc:
            error = exc
    state.wait_for_everyone()
    if error is not None:
        raise error
    if not resume:
        return None
    return last_complete_checkpoint(checkpoints_dir) if (checkpoints_dir / RUN_FINGERPRINT_NAME).exists() else None


# ---------------------------------------------------------------- 6. the run
def default_output_dir(recipe: StudentRecipe, data_name: str) -> Path:
    return factory_home() / "students" / f"{recipe.name}-{data_name}"


def run_distill(
    recipe: StudentRecipe,
    *,
    data: str | None = None,
    output_dir: Path | None = None,
    resume: bool = False,
    max_steps: int | None = None,
    progress: bool = True,
    callbacks: list | None = None,
) -> DistillReport:
    """SFT the recipe's student on the data; returns (and saves in the model dir) the report."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if not isinstance(recipe, StudentRecipe):
        raise FactoryError(f"recipe '{getattr(recipe, 'name', recipe)}': expected kind: student")
    source = resolve_data(data or recipe.data)
    out_dir = Path(output_dir).expanduser().resolve() if output_dir else default_output_dir(recipe, source.name)
    steps_cap = max_steps if max_steps is not None else recipe.max_steps
    model_path = resolve_model(recipe.model)

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    check_template(tokenizer)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token

    rows = load_sft_dataset(source)
    encoded = encode_samples(rows, tokenizer)
    selection = apply_overlong(encoded, recipe.max_seq_len, recipe.overlong)
    _report_selection(selection, len(rows), recipe, source)
    packs = pack_samples(selection.kept, recipe.max_seq_len, packing=recipe.packing)
    tokens = int(sum(selection.kept["length"]))
    assistant_tokens = int(sum(selection.kept["targets"]))
    log.info("%d samples, %d tokens (%d with loss) in %d sequences of <= %d", len(selection.kept), tokens, assistant_tokens, len(packs), recipe.max_seq_len)

    checkpoints_dir = out_dir / CHECKPOINTS_DIR
    resume_from = _prepare_checkpoints_on_main(checkpoints_dir, _fingerprint(recipe, source, steps_cap), resume)

    cuda = torch.cuda.is_available()
    attention = choose_attention(recipe.attention, cuda=cuda)
    kernels = choose_kernels(recipe.kernels, cuda=cuda)
    log.info("attention: %s (%s); kernels: %s; compile: %s", attention.name, attention.reason, kernels, recipe.compile)
    torch.manual_seed(recipe.seed)
    # fp32 master weights: the Trainer's bf16 autocast computes in bf16 and keeps Adam's updates exact.
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32, attn_implementation=attention.implementation)
    if not progress:
        hf_logging.set_verbosity_error()
    trainer = build_trainer(
        recipe, model, tokenizer, packs, checkpoints_dir,
        max_steps=steps_cap, progress=progress, callbacks=callbacks, use_liger=kernels == "liger",
    )
    real_before, computed_before = _token_counts(resume_from)
    trainer.real_tokens, trainer.computed_tokens = real_before, computed_before

    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    seconds = time.perf_counter() - started

    history = trainer.state.log_history
    curve = [{"step": int(h["step"]), "loss": float(h["loss"])} for h in history if "loss" in h and "step" in h]
    report = DistillReport(
        student=recipe.name,
        base_model=model_path,
        data=source.name,
        data_path=str(source.path),
        output_dir=str(out_dir),
        samples_in=len(rows),
        samples_trained=len(selection.kept),
        dropped_overlong=selection.dropped_overlong,
        truncated_overlong=selection.truncated_overlong,
        dropped_no_assistant=selection.dropped_no_assistant,
        max_seq_len=recipe.max_seq_len,
        packing=recipe.packing,
        attention=attention.name,
        kernels=kernels,
        sequences=len(packs),
        tokens=tokens,
        assistant_tokens=assistant_tokens,
        epochs=recipe.epochs,
        steps=int(trainer.state.global_step),
        non_pad_share=trainer.real_tokens / trainer.computed_tokens if trainer.computed_tokens else 0.0,
        # Counted on this process; data-parallel ranks see equal shares of similar batches.
        tokens_per_s=(trainer.real_tokens - real_before) * trainer.accelerator.num_processes / seconds if seconds > 0 else 0.0,
        train_seconds=seconds,
        final_loss=curve[-1]["loss"] if curve else None,
        loss_curve=curve,
        resumed_from=str(resume_from) if resume_from else None,
        recipe=recipe.model_dump(mode="json"),
    )
    save_final_model(trainer, tokenizer, out_dir, report)
    return report


def _report_selection(selection: Selection, total: int, recipe: StudentRecipe, source: DataSource) -> None:
    """Never silent about what was not trained on; an empty result is a user error."""
    if selection.dropped_overlong or selection.truncated_overlong:
        n = selection.dropped_overlong or selection.truncated_overlong
        verb = "dropped" if selection.dropped_overlong else "truncated"
        log.warning("%d of %d samples are longer than max_seq_len=%d and were %s (overlong: %s)", n, total, recipe.max_seq_len, verb, recipe.overlong)
    if selection.dropped_no_assistant:
        log.warning("%d of %d samples have no assistant tokens to learn from and were dropped", selection.dropped_no_assistant, total)
    if len(selection.kept) == 0:
        if selection.dropped_overlong == total:
            raise FactoryError(
                f"data '{source.name}': all {total} samples are longer than max_seq_len={recipe.max_seq_len}; "
                "raise max_seq_len or set overlong: truncate"
            )
        raise FactoryError(f"data '{source.name}': none of {total} samples has an assistant turn to train on")


def _token_counts(checkpoint: Path | None) -> tuple[int, int]:
    """Real and computed token counts up to a checkpoint, from its logged history."""
    if checkpoint is None:
        return 0, 0
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    for entry in reversed(state.get("log_history", [])):
        if "real_tokens" in entry:
            return int(entry["real_tokens"]), int(entry["computed_tokens"])
    return 0, 0


def save_final_model(trainer, tokenizer, out_dir: Path, report: DistillReport) -> None:
    """Model + tokenizer + manifest into `out_dir`; files land by rename and the manifest last.

    Every process calls this: `trainer.save_model` gathers sharded (FSDP / ZeRO-3) weights
    collectively and writes on the main process only.
    """
    staging = out_dir / ".final-staging"
    is_main = trainer.accelerator.is_main_process
    if is_main:
        shutil.rmtree(staging, ignore_errors=True)
        (out_dir / MANIFEST_NAME).unlink(missing_ok=True)  # no manifest = not a finished model
    trainer.accelerator.wait_for_everyone()
    if hasattr(trainer.model, "merge_and_unload"):
        # LoRA: ship a plain model that loads without peft (DDP / single process; not under ZeRO-3).
        if is_main:
            trainer.model.merge_and_unload().save_pretrained(staging)
    else:
        trainer.save_model(str(staging))
    if is_main:
        try:
            tokenizer.save_pretrained(staging)
            for item in staging.iterdir():
                if item.name != "training_args.bin":
                    os.replace(item, out_dir / item.name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        _write_json_atomic(out_dir / MANIFEST_NAME, report.to_dict())
        log.info("saved student to %s", out_dir)
    trainer.accelerator.wait_for_everyone()


def _write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    os.replace(tmp, path)



# ---------------------------------------------------------------- a tiny training set for smoke runs
def demo_sft_rows(count: int, *, seed: int = 0, system_share: float = 0.5) -> list[dict[str, Any]]:
    """Arithmetic conversations in the `factory mix` row format, with R1-style reasoning."""
    import random

    from factory.models import R1_SYSTEM_PROMPT, arithmetic_problem

    rng = random.Random(seed)
    rows = []
    for i in range(count):
        problem, value, computation = arithmetic_problem(rng)
        a, op, b = computation.split(" ")[:3]
        reasoning = f"We need {a} {op} {b}.\n{computation}.\nWait, let me check: {computation}. Yes."
        messages = []
        if rng.random() < system_share:
            messages.append({"role": "system", "content": R1_SYSTEM_PROMPT, "reasoning_content": ""})
        messages.append({"role": "user", "content": problem + " Put the final answer in \\boxed{}.", "reasoning_content": ""})
        messages.append({"role": "assistant", "content": f"The answer is \\boxed{{{value}}}.", "reasoning_content": reasoning})
        rows.append(
            {
                "sample_id": f"demo-{seed}-{i}",
                "run": "demo",
                "source": "arith",
                "task_type": "math",
                "prompt_id": f"arith-{seed}-{i}",
                "messages": messages,
            }
        )
    return rows


def write_demo_dataset(directory: Path, count: int, *, seed: int = 0, system_share: float = 0.5) -> Path:
    """A dataset dir laid out like `factory mix` output: data/part-00000.parquet + manifest.json."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = demo_sft_rows(count, seed=seed, system_share=system_share)
    (directory / "data").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), directory / "data" / "part-00000.parquet")
    _write_json_atomic(directory / "manifest.json", {"name": directory.name, "samples": count, "seed": seed, "kind": "demo"})
    return directory
