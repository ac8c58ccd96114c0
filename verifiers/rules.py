"""All rule checks on a batch of samples, optionally over several processes.

The filter stage of a pipeline calls one function per chunk of records:

    from verifiers.rules import run_rule_checks, validate_rule_config
    config = {"format": {"style": "think"}, "language": {"target": "en", "min_share": 0.95},
              "readability": {"max_paragraph_chars": 3000}, "boxed": {}}
    validate_rule_config(config)                       # before the run: one clear line on a bad recipe
    verdicts = run_rule_checks(records, config)        # list of {step: Verdict}, one per record

A record is a mapping with ``text`` (the full completion) and optionally
``finish_reason``, ``task_type`` (default ``"math"``) and ``num_tokens``.

Steps run in a fixed order: ``format`` → ``language`` → ``readability`` →
``boxed``. ``format`` always runs first because it splits the text into
reasoning and answer for the others. A step missing from ``config`` does not
run; ``{}`` runs it with defaults. With ``stop_on_fail=True`` (default) the
steps after the first failure are absent from that record's dict, which is what
a funnel (generated → passed each step) counts; with ``False`` every step runs,
on a best-effort split when the format is broken (reasoning = everything before
the last closing tag, or the whole text), for rejection-reason statistics.

``boxed`` has one option, ``task_types`` (default ``["math"]``): records of
other task types skip it (no entry).

``run_rule_checks_parallel`` spreads chunks over a process pool; the records
and verdicts are pickled across, which is the whole overhead (``PASS`` is one
shared object, so a chunk of passes pickles small).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from .format import FormatConfig, check_boxed_answer, parse_think_format, validate_format_params
from .language import check_language_consistency, validate_language_params
from .readability import check_readability, validate_readability_params
from .verdict import Verdict, check_range

__all__ = ["RULE_STEPS", "DEFAULT_RULE_CONFIG", "validate_rule_config", "run_rule_checks",
           "run_rule_checks_parallel", "iter_rule_checks_parallel"]

log = logging.getLogger(__name__)

RULE_STEPS: tuple[str, ...] = ("format", "language", "readability", "boxed")
DEFAULT_RULE_CONFIG: dict[str, dict[str, Any]] = {"format": {}, "language": {}, "readability": {}, "boxed": {}}
_BOXED_OPTIONS = frozenset({"task_types"})


def validate_rule_config(config: Mapping[str, Mapping[str, Any]]) -> None:
    """Raise ``ValueError("<step>.<param>: expected …, got …")`` for an unknown step,
    an unknown option or a value out of range; return None when the config is good."""
    if not isinstance(config, Mapping):
        raise ValueError(f"config: expected a mapping of step name to options, got {config!r}")
    for step, params in config.items():
        if step not in RULE_STEPS:
            raise ValueError(f"step: expected one of {', '.join(RULE_STEPS)}, got {step!r}")
        if params is None:
            continue
        if not isinstance(params, Mapping):
            raise ValueError(f"{step}: expected a mapping of options, got {params!r}")
        try:
            _validate_step(step, dict(params))
        except ValueError as exc:
            raise ValueError(f"{step}.{exc}") from None


def _validate_step(step: str, params: dict[str, Any]) -> None:
    if step == "format":
        validate_format_params(**params)
    elif step == "language":
        validate_language_params(**params)
    elif step == "readability":
        params.pop("task_type", None)  # comes from each record
        validate_readability_params(**params)
    else:
        unknown = sorted(set(params) - _BOXED_OPTIONS)
        if unknown:
            raise ValueError(f"{unknown[0]}: expected one of the boxed options (task_types), got an unknown option")
        task_types = params.get("task_types", ["math"])
        if not isinstance(task_types, (list, tuple)) or not all(isinstance(t, str) for t in task_types):
            raise ValueError(f"task_types: expected a list of task type names, got {task_types!r}")


def run_rule_checks(records: Iterable[Mapping[str, Any]], config: Mapping[str, Mapping[str, Any] | None] | None = None,
                    *, stop_on_fail: bool = True) -> list[dict[str, Verdict]]:
    """One ``{step: Verdict}`` dict per record, in order. ``config`` None = every step with defaults."""
    plan = _Plan(DEFAULT_RULE_CONFIG if config is None else config)
    return [plan.check(record, stop_on_fail) for record in records]


def iter_rule_checks_parallel(records: Sequence[Mapping[str, Any]],
                              config: Mapping[str, Mapping[str, Any] | None] | None = None, *,
                              workers: int = 2, chunk_size: int = 1000, stop_on_fail: bool = True
                              ) -> Iterator[list[dict[str, Verdict]]]:
    """Verdict lists chunk by chunk, in order, computed by ``workers`` processes.
    ``workers=1`` runs in this process (no pickling)."""
    check_range("workers", workers, 1, integer=True)
    check_range("chunk_size", chunk_size, 1, integer=True)
    cfg = DEFAULT_RULE_CONFIG if config is None else config
    validate_rule_config(cfg)
    chunks = (records[i:i + chunk_size] for i in range(0, len(records), chunk_size))
    if workers == 1:
        for chunk in chunks:
            yield run_rule_checks(chunk, cfg, stop_on_fail=stop_on_fail)
        return
    plain_cfg = {step: dict(params or {}) for step, params in cfg.items()}
    log.debug("rule checks on %d records: %d processes, chunks of %d", len(records), workers, chunk_size)
    with ProcessPoolExecutor(max_workers=workers) as pool:
        # map keeps order and bounds nothing by itself, so submit lazily in windows.
        window = 4 * workers
        pending = []
        for chunk in chunks:
            pending.append(pool.submit(run_rule_checks, list(chunk), plain_cfg, stop_on_fail=stop_on_fail))
            if len(pending) >= window:
                yield pending.pop(0).result()
        for future in pending:
            yield future.result()


def run_rule_checks_parallel(records: Sequence[Mapping[str, Any]],
                             config: Mapping[str, Mapping[str, Any] | None] | None = None, *,
                             workers: int = 2, chunk_size: int = 1000, stop_on_fail: bool = True
                             ) -> list[dict[str, Verdict]]:
    """``run_rule_checks`` over ``workers`` processes; same result, same order."""
    out: list[dict[str, Verdict]] = []
    for verdicts in iter_rule_checks_parallel(records, config, workers=workers, chunk_size=chunk_size,
                                              stop_on_fail=stop_on_fail):
        out.extend(verdicts)
    return out


class _Plan:
    """The config resolved once per batch into plain keyword dicts."""

    def __init__(self, config: Mapping[str, Mapping[str, Any] | None]) -> None:
        validate_rule_config(config)  # once per batch; the checks then trust their options
        self.format = dict(config["format"] or {}) if "format" in config else None
        self.language = dict(config["language"] or {}) if "language" in config else None
        self.readability = dict(config["readability"] or {}) if "readability" in config else None
        boxed = dict(config["boxed"] or {}) if "boxed" in config else None
        self.boxed_task_types = frozenset(boxed.get("task_types", ["math"])) if boxed is not None else None
        if self.readability is not None:
            self.readability.pop("task_type", None)
        fmt = FormatConfig(**(self.format or {}))
        self._close_tags = (fmt.close_tag, fmt.summary_token)

    def check(self, record: Mapping[str, Any], stop_on_fail: bool) -> dict[str, Verdict]:
        text = record.get("text") or ""  # a failed generation is a sample with no text
        out: dict[str, Verdict] = {}
        reasoning, answer = None, None
        if self.format is not None:
            verdict, reasoning, answer = parse_think_format(
                text, finish_reason=record.get("finish_reason"), **self.format)
            out["format"] = verdict
            if not verdict.passed and stop_on_fail:
                return out
        if reasoning is None or answer is None:
            reasoning, answer = self._best_effort_split(text)
        task_type = record.get("task_type") or "math"
        if self.language is not None:
            out["language"] = verdict = check_language_consistency(reasoning, answer, **self.language)
            if not verdict.passed and stop_on_fail:
                return out
        if self.readability is not None:
            out["readability"] = verdict = check_readability(
                reasoning, answer, task_type=task_type, num_tokens=record.get("num_tokens"), **self.readability)
            if not verdict.passed and stop_on_fail:
                return out
        if self.boxed_task_types is not None and task_type in self.boxed_task_types:
            out["boxed"] = check_boxed_answer(answer)
        return out

    def _best_effort_split(self, text: str) -> tuple[str, str]:
        # Used only when the format is broken and the caller wants every step anyway.
        for tag in self._close_tags:
            j = text.rfind(tag)
            if j != -1:
                return text[:j], text[j + len(tag):]
        return text, ""
