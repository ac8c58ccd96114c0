"""Tiny local models, built offline and deterministically.

The factory must run anywhere without a model hub, so tests and the demo use
models it builds itself:

* a byte-level BPE tokenizer (digits split one per token, as Qwen/Llama do)
  trained with `tokenizers` on text shipped in the repo, with a chat template
  that renders system/user/assistant turns and the assistant's
  ``<think>…</think>`` reasoning (and ``{% generation %}`` marks for
  assistant-only loss);
* ``tiny-qwen`` and ``tiny-llama``: untrained 2-layer Qwen2 / Llama students;
* ``tiny-r1``: a 2-layer Qwen2 *teacher* taught the R1 format (and a little
  arithmetic) by a short CPU training on synthetic ``<think>`` data, so that
  the demo's filters have something real to accept and reject.

Any local Hugging Face model directory (or a hub id, where a hub is reachable)
can be named instead of a tiny model.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from factory.errors import FactoryError
from factory.paths import PROMPTS_DIR, models_dir

log = logging.getLogger(__name__)

TINY_MODELS = ("tiny-r1", "tiny-qwen", "tiny-llama")
# Models for one task, built on their own (they take longer than the tiny set): name -> builder.
TASK_MODELS = ("tiny-base-arith", "tiny-teacher-arith")  # built together by build_arith_models
BUILD_VERSION = 4  # bump when the recipe for tiny models changes, so old builds are rebuilt
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
THINK_TOKENS = ["<think>", "</think>"]

R1_SYSTEM_PROMPT = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user with the answer. "
    "The reasoning process is enclosed within <think> </think> tags, followed by the answer."
)

# Renders <think> reasoning inside the assistant turn; `{% generation %}` marks the tokens
# TRL's assistant_only_loss trains on. Content that already holds <think> is left as is.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{ '<|im_start|>assistant\n' }}"
    "{%- generation -%}"
    "{%- if message.get('reasoning_content') -%}"
    "{{ '<think>\n' + message['reasoning_content'] | trim + '\n</think>\n\n' }}"
    "{%- endif -%}"
    "{{ message['content'] + '<|im_end|>' }}"
    "{%- endgeneration -%}"
    "{{ '\n' }}"
    "{%- else -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)


@dataclass(frozen=True)
class TinyModelSpec:
    hidden_size: int = 128
    intermediate_size: int = 384
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    max_positions: int = 2048
    vocab_size: int = 2048


def resolve_model(name_or_path: str, *, build: bool = True) -> str:
    """A loadable model reference: tiny names become built local dirs; other names pass through."""
    if name_or_path in TINY_MODELS or name_or_path in TASK_MODELS:
        return str(ensure_model(name_or_path) if build else models_dir() / name_or_path)
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise FactoryError(f"model '{name_or_path}': directory has no config.json (expected a Hugging Face model dir)")
        return str(path.resolve())
    if os.environ.get("HF_HUB_OFFLINE") == "1" or "/" not in name_or_path:
        raise FactoryError(
            f"model '{name_or_path}': not a tiny model ({', '.join(TINY_MODELS)}) nor a local directory"
        )
    return name_or_path  # a hub id, for machines that have a hub


def ensure_model(name: str, *, seed: int = 0, progress: bool = False) -> Path:
    """The directory of a tiny model, building every tiny model on first use.

    Several processes (tests, a server, the demo) may ask at once: a file lock
    makes one of them build while the others wait and then reuse the build.
    """
    import fcntl

    target = models_dir() / name
    expected = ARITH_META if name in TASK_MODELS else None
    if _is_current(target, expected):
        return target
    models_dir().mkdir(parents=True, exist_ok=True)
    with open(models_dir() / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _is_current(target, expected):
            if name in TASK_MODELS:
                log.info("building %s into %s (first use; a few minutes on 2 CPU cores)", name, models_dir())
                build_arith_models(models_dir(), seed=seed)
            else:
                log.info("building tiny models into %s (first use; about two minutes on 2 CPU cores)", models_dir())
                build_tiny_models(models_dir(), seed=seed, progress=progress)
    return target


def build_tiny_models(out_dir: Path, *, seed: int = 0, teacher_steps: int = 600, force: bool = False, progress: bool = False) -> dict[str, Path]:
    """Build the tokenizer, both students and the format-taught teacher into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: out_dir / name for name in TINY_MODELS}
    if not force and all(_is_current(p) for p in paths.values()):
        return paths
    spec = TinyModelSpec()
    tokenizer = build_tokenizer(seed=seed)
    for name, arch in (("tiny-qwen", "qwen2"), ("tiny-llama", "llama")):
        model = _new_model(arch, tokenizer, spec, seed=seed)
        _save_atomically(paths[name], model, tokenizer, {"arch": arch, "trained": False, "seed": seed})
    teacher = _new_model("qwen2", tokenizer, spec, seed=seed)
    losses = teach_r1_format(teacher, tokenizer, steps=teacher_steps, seed=seed, progress=progress)
    _save_atomically(
        paths["tiny-r1"], teacher, tokenizer, {"arch": "qwen2", "trained": True, "steps": teacher_steps, "seed": seed, "final_loss": losses[-1]}
    )
    log.info("built tiny models in %s (teacher loss %.3f -> %.3f)", out_dir, losses[0], losses[-1])
    return paths


def build_tokenizer(*, seed: int = 0, vocab_size: int = TinyModelSpec.vocab_size):
    """A byte-level BPE tokenizer trained on the shipped prompts and synthetic reasoning."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_tokenizer_corpus(seed), trainer=trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK_TOKENS])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        model_max_length=TinyModelSpec.max_positions,
        padding_side="left",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _tokenizer_corpus(seed: int) -> list[str]:
    rng = random.Random(seed)
    texts: list[str] = [R1_SYSTEM_PROMPT]
    for path in sorted(PROMPTS_DIR.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            texts.extend(str(v) for v in row.values() if isinstance(v, str))
    texts.extend(ex.assistant for ex in synthetic_reasoning_examples(2000, rng))
    return texts


# ---------------------------------------------------------------- teaching the teacher the format
@dataclass(frozen=True)
class SyntheticExample:
    system: str | None
    user: str
    assistant: str


def synthetic_reasoning_examples(count: int, rng: random.Random) -> list[SyntheticExample]:
    """Arithmetic with R1-style reasoning, reflection and a boxed answer; plus plain chat turns.

    Written to look like the shipped `arith` prompts so the trained teacher
    answers some of them correctly and some not: a real funnel for the demo.
    """
    examples = []
    for _ in range(count):
        kind = rng.random()
        if kind < 0.85:
            examples.append(_arithmetic_example(rng))
        else:
            examples.append(_plain_chat_example(rng))
    return examples


def arithmetic_problem(rng: random.Random) -> tuple[str, int, str]:
    """A problem text, its answer and the one-line computation; shared with the shipped prompts."""
    # Small operands: a 2-layer model can learn to copy and combine them in a minute of CPU
    # training, so the demo teacher gets some answers right and some wrong — a real funnel.
    op = rng.choice(["+", "-", "*"])
    if op == "*":
        a, b = rng.randint(2, 9), rng.randint(2, 9)
    else:
        a, b = rng.randint(1, 19), rng.randint(1, 9)
    if op == "-" and b > a:
        a, b = b, a
    value = a + b if op == "+" else a - b if op == "-" else a * b
    word = {"+": "sum", "-": "difference", "*": "product"}[op]
    phrasing = rng.choice(
        [f"What is {a} {op} {b}?", f"Compute {a} {op} {b}.", f"Find the {word} of {a} and {b}.", f"Calculate {a} {op} {b}."]
    )
    return phrasing, value, f"{a} {op} {b} = {value}"


def _arithmetic_example(rng: random.Random) -> SyntheticExample:
    problem, value, computation = arithmetic_problem(rng)
    a, op, b = computation.split(" ")[:3]
    inverse = {"+": f"{value} - {b} = {a}", "-": f"{value} + {b} = {a}", "*": f"{value} / {b} = {a}"}[op]
    reasoning = (
        f"We need {a} {op} {b}.\n{computation}.\nWait, let me verify: {inverse}. Yes, that is right.\n"
    )
    summary = f"The answer is \\boxed{{{value}}}."
    # Mostly without a system prompt: shorter sequences train faster on CPU.
    system = R1_SYSTEM_PROMPT if rng.random() < 0.2 else None
    return SyntheticExample(system, problem + rng.choice(INSTRUCTION_SUFFIXES), f"<think>\n{reasoning}</think>\n\n{summary}")


# The instructions the shipped recipes and `factory eval` append to a problem: the teacher
# sees each in training so that every recipe's prompt is in distribution for it.
INSTRUCTION_SUFFIXES = [
    " Put the final answer in \\boxed{}.",
    " Think step by step, check your work, then put the final answer in \\boxed{}.",
    " Please reason step by step, and put your final answer within \\boxed{}.",
    "",
]

_PLAIN_CHAT = [
    ("Who are you?", "I am a small assistant model built by the factory project."),
    ("What is your name?", "I am a tiny assistant trained by the factory project."),
    ("Translate 'cat' into French.", "In French, 'cat' is 'chat'."),
    ("Translate 'water' into French.", "In French, 'water' is 'eau'."),
    ("What is the capital of France?", "The capital of France is Paris."),
    ("What is the capital of Japan?", "The capital of Japan is Tokyo."),
    ("Write one sentence about the sea.", "The sea is wide, blue and full of life."),
    ("Say hello.", "Hello! How can I help you today?"),
]


def _plain_chat_example(rng: random.Random) -> SyntheticExample:
    user, assistant = rng.choice(_PLAIN_CHAT)
    return SyntheticExample(None, user, assistant)


def teach_r1_format(model, tokenizer, *, steps: int, seed: int, batch_size: int = 16, lr: float = 4e-3, progress: bool = False) -> list[float]:
    """A short CPU training so the tiny teacher writes `<think>…</think>` then a boxed answer."""
    rng = random.Random(seed + 1)
    examples = synthetic_reasoning_examples(steps * batch_size // 4, rng)
    return train_on_examples(model, tokenizer, examples, steps=steps, seed=seed, batch_size=batch_size, lr=lr, rng=rng,
                             label="tiny-r1: teaching the R1 format", progress=progress)


def train_on_examples(model, tokenizer, examples: list[SyntheticExample], *, steps: int, seed: int, batch_size: int = 16,
                      lr: float = 4e-3, rng: random.Random | None = None, label: str = "training",
                      progress: bool = False) -> list[float]:
    """Plain next-token training on the assistant turns of `examples` (one-cycle LR, AdamW)."""
    import torch

    from factory.progress import RateProgress

    torch.manual_seed(seed)
    rng = rng or random.Random(seed + 1)
    encoded = [_encode_example(tokenizer, ex) for ex in examples]
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    losses: list[float] = []
    order = list(range(len(encoded)))
    with RateProgress(label, total=steps, enabled=progress, unit="steps") as bar:
        for step in range(steps):
            if step * batch_size % len(order) < batch_size:
                rng.shuffle(order)
            start = (step * batch_size) % len(order)
            batch = [encoded[order[(start + i) % len(order)]] for i in range(batch_size)]
            input_ids, labels, attention = _collate(batch, tokenizer.pad_token_id)
            loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            bar.update(1)
    model.eval()
    return losses


def _encode_example(tokenizer, ex: SyntheticExample) -> tuple[list[int], list[int]]:
    messages = ([{"role": "system", "content": ex.system}] if ex.system else []) + [{"role": "user", "content": ex.user}]
    prompt_ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    answer_ids = tokenizer(ex.assistant + "<|im_end|>", add_special_tokens=False)["input_ids"]
    ids = list(prompt_ids) + answer_ids
    labels = [-100] * len(prompt_ids) + answer_ids
    return ids, labels


def _collate(batch, pad_id: int):
    import torch

    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for row, (ids, labs) in enumerate(batch):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(labs)] = torch.tensor(labs)
        attention[row, : len(ids)] = 1
    return input_ids, labels, attention


def build_task_models(names: list[str], out_dir: Path, *, seed: int = 0, force: bool = False) -> dict[str, Path]:
    """Build the named task models (see TASK_MODELS) that are missing or stale, or all named with `force`."""
    unknown = [n for n in names if n not in TASK_MODELS]
    if unknown:
        raise FactoryError(f"model '{unknown[0]}': not a task model; expected one of {', '.join(TASK_MODELS)}")
    if names and (force or not all(_is_current(out_dir / n, ARITH_META) for n in TASK_MODELS)):
        build_arith_models(out_dir, seed=seed)
    return {name: out_dir / name for name in names}


# ---------------------------------------------------------------- the arithmetic base and teacher
# Measured on this project's 2-core host (batch 16, ~95 tokens a sample, ~0.1-0.25 CPU-s a step under
# load; ~370 CPU-s for both): after 1200 base steps the base solves 59% of held-out bare expressions
# greedily and ~12% of word problems; after 1000 more teacher steps the teacher solves 87% of held-out
# word problems greedily and ~45% at temperature 1 (its planted flaws on top). At 200 + 100 steps it
# had learned the format but not the arithmetic (~8% at temperature 1, chance level).
ARITH_BASE_STEPS = 1200
ARITH_TEACHER_STEPS = 1000
# Bump when the arith task or its training changes: a build with other metadata is rebuilt.
# (2: chains restate the expression first; 1200 + 1000 steps.)
ARITH_META = {"arith_recipe": 2}


def build_arith_models(out_dir: Path, *, seed: int = 0, base_steps: int = ARITH_BASE_STEPS,
                       teacher_steps: int = ARITH_TEACHER_STEPS, problems: int = 3000) -> dict[str, Path]:
    """`tiny-base-arith` and `tiny-teacher-arith`, 2-layer Qwen2 models for `factory.tasks`' word problems.

    The base is "pretrained" on clean chains of bare expressions ("What is 7 + 5 - 3?"): it knows
    the arithmetic and the `<think>`/boxed format but has never seen a word problem — the student
    of `factory experiment curation` starts from it, as R1's students start from a math-pretrained
    base. The teacher continues from the base on word problems and expressions whose chains are
    imperfect on purpose (`tasks.TEACHER_FLAWS`): wrong answers, mixed-language and looping chains,
    missing answers, unclosed reasoning. Both learn from the *train* computations of split seed 0
    only, so the experiment's held-out split stays unseen.
    """
    from factory import tasks
    from factory.evaluate import MATH_INSTRUCTION

    train, _ = tasks.problem_splits(tasks.SPLIT_SEED, problems, tasks.HELDOUT_SIZE)
    paths = {"tiny-base-arith": out_dir / "tiny-base-arith", "tiny-teacher-arith": out_dir / "tiny-teacher-arith"}
    out_dir.mkdir(parents=True, exist_ok=True)
    base_meta = {"arch": "qwen2", "trained": True, "task": "arith-expressions", "steps": base_steps, "seed": seed, **ARITH_META}
    if _is_current(paths["tiny-base-arith"], base_meta):
        # The base is the costlier half; a teacher rebuild (e.g. other flaws) starts from the saved one.
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(paths["tiny-base-arith"])
        model = AutoModelForCausalLM.from_pretrained(paths["tiny-base-arith"])
        base_losses = [float("nan")]
    else:
        tokenizer = build_tokenizer(seed=seed)
        clean = [SyntheticExample(None, f"{q.problem}\n\n{MATH_INSTRUCTION}", tasks.flawed_chain(q, None))
                 for q in (tasks.expression_form(p) for p in train)]
        model = _new_model("qwen2", tokenizer, TinyModelSpec(), seed=seed)
        base_losses = train_on_examples(model, tokenizer, clean, steps=base_steps, seed=seed, lr=4e-3, rng=random.Random(seed + 7),
                                        label="tiny-base-arith: clean expressions")
        _save_atomically(paths["tiny-base-arith"], model, tokenizer, {**base_meta, "final_loss": base_losses[-1]})
    rng = random.Random(seed + 8)  # its own stream: the teacher is the same whether or not the base was rebuilt
    flawed = [SyntheticExample(None, chat.user, chat.assistant) for chat, _ in tasks.teacher_examples(train, rng, MATH_INSTRUCTION)]
    losses = train_on_examples(model, tokenizer, flawed, steps=teacher_steps, seed=seed + 1, lr=3e-3, rng=rng,
                                label="tiny-teacher-arith: flawed word problems")
    _save_atomically(paths["tiny-teacher-arith"], model, tokenizer, {**ARITH_META, "arch": "qwen2", "trained": True, "task": "arith", "base": "tiny-base-arith",
                                                                      "steps": base_steps + teacher_steps, "seed": seed, "flaws": tasks.TEACHER_FLAWS,
                                                                      "final_loss": losses[-1]})
    log.info("built tiny-base-arith (loss %.3f -> %.3f) and tiny-teacher-arith (loss %.3f -> %.3f) in %s",
             base_losses[0], base_losses[-1], losses[0], losses[-1], out_dir)
    return paths


# ---------------------------------------------------------------- building and saving
def _new_model(arch: str, tokenizer, spec: TinyModelSpec, *, seed: int):
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig, LlamaConfig, Qwen2Config

    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=spec.max_positions,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    config = Qwen2Config(**common) if arch == "qwen2" else LlamaConfig(**common)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config = GenerationConfig(
        do_sample=True,  # servers such as `transformers serve` sample only when this is set
        temperature=0.6,
        top_p=0.95,
        max_new_tokens=256,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return model


def _save_atomically(target: Path, model, tokenizer, meta: dict) -> None:
    """Write to a temp dir then rename, so a killed build never leaves a half model behind."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "factory_model.json").write_text(json.dumps({"build_version": BUILD_VERSION, **meta}, indent=2))
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)


def _is_current(path: Path, expected: dict | None = None) -> bool:
    """Built by this BUILD_VERSION (and, when given, with these `expected` metadata values)."""
    meta = path / "factory_model.json"
    if not meta.exists():
        return False
    try:
        data = json.loads(meta.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return data.get("build_version") == BUILD_VERSION and all(data.get(k) == v for k, v in (expected or {}).items())
