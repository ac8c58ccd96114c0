"""Recipes: YAML files validated into typed models, with errors that point at the line.

Three kinds of recipe share one loader:
  * ``generate`` (the default): prompt sources, a teacher role bound to a
    backend, a prompt template, sampling, filters, selection and an output run;
  * ``mix``: quotas over curated runs that build the SFT training set;
  * ``student``: a student model and its training settings for ``factory distill``.

Any key can be overridden on the command line with dotted paths, e.g.
``factory generate --recipe cold_start sampling.n=8``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from factory.errors import RecipeError
from factory.paths import recipes_dirs

TeacherRole = Literal["r1_zero", "rl_1", "v3"]
Backend = Literal["transformers", "openai", "vllm", "replay"]
TaskType = Literal["math", "code", "logic", "general", "writing", "qa", "translation", "self_cognition"]


class Strict(BaseModel):
    """Base for every recipe section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------- sources
class FieldMap(Strict):
    """Which column of a source holds what. ``None`` means the source has no such column."""

    id: str | None = "id"
    prompt: str = "prompt"
    reference: str | None = None
    task_type: str | None = None
    tests: str | None = None
    language: str | None = None  # a column holding each row's language code; else `language` below
    system: str | None = None


def _check_language(value: str) -> str:
    """``auto`` or a language code / script name the language step can judge against."""
    from verifiers.language import is_known_target

    if value != "auto" and not is_known_target(value):
        raise ValueError(f"expected auto or a language code such as en, zh, ja, ru, ar (or a script name such as han), got {value!r}")
    return value


class SourceConfig(Strict):
    name: str
    path: str  # JSONL, Parquet, or a `datasets.save_to_disk` directory; relative to the recipe file
    format: Literal["auto", "jsonl", "parquet", "datasets"] = "auto"
    split: str | None = None  # for DatasetDict directories
    fields: FieldMap = FieldMap()
    task_type: TaskType = "math"  # used when `fields.task_type` is absent
    language: str = "auto"  # auto: each prompt's language detected by script share; or a code (en, zh, ...)
    limit: int | None = Field(default=None, ge=1)  # first N rows, for small runs
    license: str | None = None  # the prompts' licence (a Hub licence id, e.g. mit); exported datasets inherit it

    _language = field_validator("language")(_check_language)


# ---------------------------------------------------------------- teacher
class Prices(Strict):
    """USD per million tokens, for cost accounting of hosted APIs."""

    prompt_per_1m: float = Field(ge=0)
    completion_per_1m: float = Field(ge=0)


class TransformersOptions(Strict):
    batch_size: int = Field(default=16, ge=1)  # prompts x samples per forward pass
    device: str = "auto"  # auto | cpu | cuda
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"


class OpenAIOptions(Strict):
    endpoints: list[str] = Field(default_factory=lambda: ["http://127.0.0.1:8000/v1"], min_length=1)
    api_key_env: str | None = None  # name of the env var holding the key; the key itself is never stored
    concurrency: int = Field(default=64, ge=1, le=4096)
    timeout_s: float = Field(default=600.0, gt=0)
    max_retries: int = Field(default=6, ge=0)
    backoff_base_s: float = Field(default=0.5, gt=0)
    backoff_max_s: float = Field(default=60.0, gt=0)
    use_n: Literal["auto", "always", "never"] = "auto"  # auto: detect servers that ignore `n`
    max_n: int = Field(default=128, ge=1)
    balance: Literal["least_in_flight", "round_robin"] = "least_in_flight"
    failover_after: int = Field(default=3, ge=1)  # consecutive failures before an endpoint cools down
    cooldown_s: float = Field(default=30.0, ge=0)
    connect_timeout_s: float = Field(default=10.0, gt=0)
    prices: Prices | None = None
    extra_body: dict[str, Any] = Field(default_factory=dict)


class VLLMOptions(Strict):
    tensor_parallel_size: int = Field(default=1, ge=1)
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    max_model_len: int | None = None
    dtype: str = "auto"
    batch_size: int = Field(default=512, ge=1)
    seed: int = 0
    engine_args: dict[str, Any] = Field(default_factory=dict)  # extra LLM(...) arguments


class ReplayFields(Strict):
    """Where a trace file keeps its parts (the generic column mapping; known shapes need none of it)."""

    prompt_id: str | None = None  # default: a hash of the prompt text, so repeated prompts group
    messages: str | None = None  # a chat column other than conversations/messages
    prompt: str | None = "problem"
    generation: str | None = "generation"  # a string, or a list: one sample per element
    reasoning: str | None = None  # a separate reasoning column (string, or a list parallel to generation)
    reference: str | None = None  # default: the first of answer, reference, ground_truth, final_answer, gold
    task_type: str | None = None
    tests: str | None = None  # code tests (HumanEval/MBPP/stdin-stdout), as for sources.fields.tests
    model: str | None = None
    system: str | None = None  # default: a `system` column, when there is one
    language: str | None = None  # a column holding each row's language code
    labels: list[str] | None = None  # per-element label columns; default: every list as long as the generations


TraceShape = Literal["auto", "sharegpt", "messages", "prompt_completion", "alpaca", "openr1", "columns"]
ThinkingConvention = Literal["auto", "think", "thought_solution", "missing_open", "tags", "none"]


class ReplayOptions(Strict):
    path: str  # JSONL, Parquet (file or dir) or a `datasets.save_to_disk` dir; relative to the recipe file
    format: TraceShape = "auto"  # auto: recognised per row, and the import reports which shapes it saw
    file_format: Literal["auto", "jsonl", "parquet", "datasets"] = "auto"
    split: str | None = None  # for DatasetDict directories
    fields: ReplayFields = ReplayFields()
    thinking: ThinkingConvention = "auto"  # how reasoning is delimited; auto recognises the known ones
    think_tags: tuple[str, str] | None = None  # custom [open, close] tags, e.g. ["<reasoning>", "</reasoning>"]
    language: str = "auto"  # auto: each prompt's language detected by script share; or a code (en, zh, ...)
    default_task_type: TaskType = "math"
    limit: int | None = Field(default=None, ge=1)  # first N rows, for small imports

    _language = field_validator("language")(_check_language)

    @model_validator(mode="before")
    @classmethod
    def _file_format_was_format(cls, data: Any) -> Any:
        # Before trace shapes existed, `format` named the file type; such recipes keep working.
        if isinstance(data, dict) and data.get("format") in ("jsonl", "parquet", "datasets") and "file_format" not in data:
            data = {**data, "file_format": data["format"], "format": "auto"}
        return data

    @field_validator("think_tags")
    @classmethod
    def _tags_differ(cls, value: tuple[str, str] | None) -> tuple[str, str] | None:
        if value is not None and (not value[0].strip() or not value[1].strip() or value[0] in value[1] or value[1] in value[0]):
            raise ValueError(f"expected two different non-blank tags [open, close], neither inside the other, got {list(value)!r}")
        return value


class TeacherConfig(Strict):
    role: TeacherRole
    backend: Backend = "transformers"
    model: str = "tiny-r1"  # a tiny local model name, a local HF dir, or a hub/served model id
    transformers: TransformersOptions = TransformersOptions()
    openai: OpenAIOptions = OpenAIOptions()
    vllm: VLLMOptions = VLLMOptions()
    replay: ReplayOptions | None = None

    @model_validator(mode="after")
    def _replay_needs_path(self) -> "TeacherConfig":
        if self.backend == "replay" and self.replay is None:
            raise ValueError("backend 'replay' needs a 'replay:' section with at least 'path'")
        return self


# ---------------------------------------------------------------- prompting and sampling
class FewShot(Strict):
    user: str
    assistant: str


class TemplateConfig(Strict):
    system: str | None = None
    user: str = "{prompt}"  # str.format with the source row's fields: {prompt}, {reference}, ...
    few_shot: list[FewShot] = Field(default_factory=list)

    @field_validator("user")
    def _user_mentions_prompt(cls, v: str) -> str:
        if "{prompt}" not in v:
            raise ValueError("must contain the placeholder {prompt}")
        return v


class SamplingConfig(Strict):
    n: int = Field(default=1, ge=1, le=1024)  # samples per prompt; more = higher yield, more cost
    temperature: float = Field(default=0.6, ge=0, le=5)
    top_p: float = Field(default=0.95, gt=0, le=1)
    max_new_tokens: int = Field(default=512, ge=1)
    seed: int = 0


class AdaptiveConfig(Strict):
    """Stop sampling a prompt once it has `k` accepted samples or after `max_attempts`."""

    k: int = Field(default=1, ge=1)
    max_attempts: int = Field(default=8, ge=1)
    round_size: int = Field(default=2, ge=1)  # samples per prompt per round between checks


class GenerationConfig(Strict):
    flush_every: int = Field(default=256, ge=1)  # samples per shard; a crash loses at most in-flight ones
    flush_seconds: float = Field(default=10.0, gt=0)
    adaptive: AdaptiveConfig | None = None


class SelectionConfig(Strict):
    k: int = Field(default=1, ge=1)  # samples kept per prompt
    policy: Literal["shortest", "longest", "random", "diverse"] = "shortest"


class OutputConfig(Strict):
    dataset: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")


class LineageConfig(Strict):
    """Where this run's teacher came from, when it is a student of an earlier run (R1's rl_1 rounds)."""

    generation: int = Field(default=1, ge=1)  # 1: the teacher is not a student of ours
    parent_run: str | None = None  # the run whose curated samples trained the teacher
    parent_dataset: str | None = None  # the mix the teacher was distilled on


class GenerateRecipe(Strict):
    kind: Literal["generate"] = "generate"
    name: str
    description: str = ""
    seed: int = 0
    target_samples: int | None = None  # the paper-scale goal this recipe is written for (documentation)
    license: str | None = None  # licence of the exported dataset (a Hub licence id); default: the sources' one
    sources: list[SourceConfig] = Field(default_factory=list)  # may be empty only for replay
    teacher: TeacherConfig
    template: TemplateConfig = TemplateConfig()
    sampling: SamplingConfig = SamplingConfig()
    generation: GenerationConfig = GenerationConfig()
    filters: list[dict[str, Any]] = Field(default_factory=lambda: [{"step": "format"}])
    selection: SelectionConfig = SelectionConfig()
    # How `factory filter` runs (not what it decides): processes, where, and its memory budget.
    workers: int | None = Field(default=None, ge=1)   # None = one process per core
    executor: Literal["local", "ray"] = "local"       # ray: the same steps on a Ray cluster (pip install -e ".[ray]")
    memory_gb: float = Field(default=4.0, gt=0)       # bound on the filter's memory (engine.MemoryPlan); dedup spills past it
    output: OutputConfig
    lineage: LineageConfig | None = None

    @model_validator(mode="after")
    def _needs_prompts(self) -> "GenerateRecipe":
        if not self.sources and self.teacher.backend != "replay":
            raise ValueError("sources: expected at least one prompt source (only a replay teacher needs none)")
        return self


# ---------------------------------------------------------------- mix
class MixComponent(Strict):
    run: str
    quota: int = Field(ge=0)  # samples at paper scale; scaled by `scale`
    task_types: list[str] | None = None
    curated: bool = True  # false: the run's raw samples, every verdict ignored (a no-curation baseline)


class MixRecipe(Strict):
    kind: Literal["mix"]
    name: str
    description: str = ""
    seed: int = 0
    scale: float = Field(default=1.0, gt=0)  # 1.0 = paper scale (600K + 200K); small runs take what exists
    license: str | None = None  # licence of the exported mix; default: the component runs' one
    stratify_by: list[Literal["task_type", "source", "teacher_role"]] = Field(default_factory=lambda: ["task_type", "source"])
    components: list[MixComponent] = Field(min_length=1)
    dedup_exact: bool = True  # drop a sample whose prompt + response is already in the mix (earlier components win)
    output: OutputConfig


# ---------------------------------------------------------------- student
class LoraConfig(Strict):
    r: int = Field(default=16, ge=1)
    alpha: int = Field(default=32, ge=1)
    dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: list[str] | str = "all-linear"


class StudentRecipe(Strict):
    kind: Literal["student"]
    name: str
    description: str = ""
    model: str = "tiny-qwen"
    data: str = "sft_mix"  # the run (usually a mix) to train on
    max_seq_len: int = Field(default=1024, ge=16)
    overlong: Literal["drop", "truncate"] = "drop"
    epochs: float = Field(default=2.0, gt=0)
    max_steps: int | None = Field(default=None, ge=1)
    learning_rate: float = Field(default=1e-4, gt=0)
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    warmup_ratio: float = Field(default=0.03, ge=0, lt=1)
    batch_size: int = Field(default=8, ge=1)
    grad_accum: int = Field(default=1, ge=1)
    packing: bool = True  # several samples per sequence, isolated by position ids
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    save_steps: int = Field(default=50, ge=1)
    gradient_checkpointing: bool = False  # recompute activations in backward: ~30% slower, long sequences fit
    # How packed samples stay isolated. auto: flash (flash-attn installed, CUDA) > flex (CUDA) > sdpa (CPU).
    # flash = padding-free varlen kernels; flex = FlexAttention with a block-sparse document mask;
    # sdpa/eager = a dense block-diagonal mask (exact everywhere, but rules out SDPA's flash kernel).
    attention: Literal["auto", "flash", "flex", "sdpa", "eager"] = "auto"
    kernels: Literal["auto", "none", "liger"] = "auto"  # liger: fused RMSNorm/SwiGLU/RoPE/linear+CE (auto: on CUDA when installed)
    compile: bool = False  # torch.compile the model: slower start, faster steps on a GPU
    log_every: Annotated[int, Field(ge=1)] | Literal["auto"] = "auto"  # steps between loss logs (each is a host sync); auto: 1 on CPU, 10 on CUDA
    seed: int = 0
    lora: LoraConfig | None = None


Recipe = GenerateRecipe | MixRecipe | StudentRecipe
_KINDS: dict[str, type[Strict]] = {"generate": GenerateRecipe, "mix": MixRecipe, "student": StudentRecipe}


# ---------------------------------------------------------------- loading
def find_recipe(name_or_path: str, *, subdir: str | None = None) -> Path:
    """A recipe by path, or by name from ./recipes then the shipped recipes/ (optionally a subdir)."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or candidate.exists():
        if not candidate.is_file():
            raise RecipeError(f"{name_or_path}: recipe file not found")
        return candidate.resolve()
    for base in recipes_dirs():
        for folder in ([base / subdir] if subdir else []) + [base]:
            for ext in (".yaml", ".yml"):
                path = folder / f"{name_or_path}{ext}"
                if path.is_file():
                    return path.resolve()
    known = sorted({p.stem for base in recipes_dirs() for p in (base / (subdir or "")).glob("*.yaml")})
    raise RecipeError(f"recipe '{name_or_path}' not found; expected a path or one of: {', '.join(known)}")


def load_recipe(name_or_path: str, overrides: list[str] | None = None, *, subdir: str | None = None) -> Recipe:
    """Load, override and validate a recipe; every failure is a one-line RecipeError."""
    path = find_recipe(name_or_path, subdir=subdir)
    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise RecipeError(f"{path}{line}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}:1: expected a mapping of recipe settings at the top level")
    for override in overrides or []:
        _apply_override(data, override, path)
    kind = data.get("kind", "generate")
    model = _KINDS.get(kind)
    if model is None:
        raise RecipeError(f"{_location(path, node, ['kind'], overrides or [])}: kind: expected one of {sorted(_KINDS)}, got {kind!r}")
    try:
        recipe = model.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(_format_validation_error(exc, path, node, overrides or [])) from None
    _check_files_exist(recipe, path, node, overrides or [])
    if isinstance(recipe, GenerateRecipe):
        _check_filters(recipe, path, node, overrides or [])
    return recipe


def recipe_dir(recipe_path: Path) -> Path:
    return recipe_path.parent


def resolve_data_path(raw: str, recipe_file: Path) -> Path:
    """Data paths are relative to the recipe file, so recipes travel with their data."""
    p = Path(raw).expanduser()
    if p.is_absolute():
        return p
    for base in (recipe_file.parent, Path.cwd()):
        if (base / p).exists():
            return (base / p).resolve()
    return (recipe_file.parent / p).resolve()


def _check_files_exist(recipe: Recipe, path: Path, node: yaml.Node | None, overrides: list[str]) -> None:
    if isinstance(recipe, GenerateRecipe):
        for i, source in enumerate(recipe.sources):
            if not resolve_data_path(source.path, path).exists():
                where = _location(path, node, ["sources", i, "path"], overrides)
                raise RecipeError(f"{where}: sources[{i}].path: file not found: {source.path}")
        if recipe.teacher.replay is not None and not resolve_data_path(recipe.teacher.replay.path, path).exists():
            where = _location(path, node, ["teacher", "replay", "path"], overrides)
            raise RecipeError(f"{where}: teacher.replay.path: file not found: {recipe.teacher.replay.path}")


def _check_filters(recipe: GenerateRecipe, path: Path, node: yaml.Node | None, overrides: list[str]) -> None:
    # Imported here: the filter registry imports verifiers, which recipe loading should not pay for.
    from factory.filter import validate_filter_configs

    for index, message in validate_filter_configs(recipe.filters):
        key = message.split(":", 1)[0]
        loc: list[str | int] = ["filters", index] + ([key] if key and " " not in key else [])
        raise RecipeError(f"{_location(path, node, loc, overrides)}: filters[{index}].{message}")


def recipe_hash(recipe: Recipe) -> str:
    """A stable hash of everything that changes what a run generates (not how fast)."""
    data = recipe.model_dump(mode="json")
    if isinstance(recipe, GenerateRecipe):
        # Throughput knobs and downstream steps do not change samples, so a run may resume across them.
        data.pop("description", None)
        data.pop("target_samples", None)
        data.pop("license", None)  # documentation: changes no sample
        for source in data.get("sources", []):
            source.pop("license", None)
        data.pop("filters", None)
        data.pop("selection", None)
        data.pop("generation", None)
        data.pop("lineage", None)  # records where the teacher came from; the teacher's own model is hashed
        for knob in ("workers", "executor", "memory_gb"):
            data.pop(knob, None)
        teacher = data["teacher"]
        for knob in ("concurrency", "timeout_s", "max_retries", "backoff_base_s", "backoff_max_s", "endpoints", "api_key_env", "prices",
                     "max_n", "balance", "failover_after", "cooldown_s", "connect_timeout_s", "use_n"):
            teacher["openai"].pop(knob, None)
        teacher["transformers"].pop("batch_size", None)
        teacher["transformers"].pop("device", None)
        teacher["vllm"].pop("batch_size", None)
        replay = teacher.get("replay") or {}
        replay_fields = replay.get("fields") or {}
        # Settings added later, at their defaults: runs imported before keep their hash.
        for key in ("tests", "system", "language", "labels"):
            if replay_fields.get(key) is None:
                replay_fields.pop(key, None)
        for key, default in (("file_format", "auto"), ("split", None), ("thinking", "auto"), ("think_tags", None),
                             ("language", "auto"), ("limit", None)):
            if key in replay and replay[key] == default:
                replay.pop(key)
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _apply_override(data: dict[str, Any], override: str, path: Path) -> None:
    if "=" not in override:
        raise RecipeError(f"override '{override}': expected KEY.PATH=VALUE, e.g. sampling.n=8")
    key, raw = override.split("=", 1)
    parts = key.strip().split(".")
    target: Any = data
    for part in parts[:-1]:
        if isinstance(target, list) and part.isdigit() and int(part) < len(target):
            target = target[int(part)]
        elif isinstance(target, dict):
            target = target.setdefault(part, {})
        else:
            raise RecipeError(f"override '{override}': '{part}' is not a section of {path.name}")
    value = yaml.safe_load(raw) if raw.strip() else ""
    last = parts[-1]
    if isinstance(target, list) and last.isdigit() and int(last) < len(target):
        target[int(last)] = value
    elif isinstance(target, dict):
        target[last] = value
    else:
        raise RecipeError(f"override '{override}': cannot set '{last}' in {path.name}")


def _line_of(node: yaml.Node | None, loc: list[str | int]) -> int:
    """The 1-based line of the deepest YAML node on `loc` that exists in the file."""
    line = (node.start_mark.line + 1) if node is not None else 1
    current = node
    for part in loc:
        if isinstance(current, yaml.MappingNode):
            match = next((v for k, v in current.value if k.value == str(part)), None)
            key_node = next((k for k, v in current.value if k.value == str(part)), None)
            if match is None:
                return line
            line = key_node.start_mark.line + 1
            current = match
        elif isinstance(current, yaml.SequenceNode) and isinstance(part, int) and part < len(current.value):
            current = current.value[part]
            line = current.start_mark.line + 1
        else:
            return line
    return line


def _format_validation_error(exc: ValidationError, path: Path, node: yaml.Node | None, overrides: list[str]) -> str:
    err = exc.errors()[0]
    loc = [p for p in err["loc"] if not (isinstance(p, str) and p in _KIND_TAGS)]
    dotted = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in loc).replace(".[", "[")
    where = _location(path, node, loc, overrides)
    kind = err["type"]
    if kind == "extra_forbidden":
        what = "unknown key"
    elif kind == "missing":
        what = "missing required key"
    else:
        what = err["msg"].removeprefix("Value error, ")
        if "input" in err and not isinstance(err["input"], (dict, list)):
            what += f" (got {err['input']!r})"
    more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where}: {dotted or '<top>'}: {what}{more}"


def _location(path: Path, node: yaml.Node | None, loc: list[str | int], overrides: list[str]) -> str:
    """Where a bad value came from: the last command-line override that set ``loc`` or a section
    holding it (the user's typing, not a line of the file), else the file and line."""
    keys = [str(p) for p in loc]
    for override in reversed(overrides):
        key = override.split("=", 1)[0].strip().split(".")
        if key == keys[: len(key)]:
            return f"override '{override}'"
    return f"{path}:{_line_of(node, loc)}"


_KIND_TAGS = {"GenerateRecipe", "MixRecipe", "StudentRecipe"}
