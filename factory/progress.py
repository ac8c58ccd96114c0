"""A progress bar for long work: done/total, samples/s, tokens/s, errors and retries."""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class RateProgress:
    """rich progress on stderr; a no-op when disabled (tests, `--quiet`, piped output in CI)."""

    def __init__(self, label: str, *, total: int, done: int = 0, enabled: bool = True, unit: str = "samples") -> None:
        self.enabled = enabled
        self.started = time.monotonic()
        self.count = 0
        self.tokens = 0
        self.unit = unit
        self._progress: Progress | None = None
        self._pending = 0
        self._last_draw = 0.0
        if enabled:
            self._progress = Progress(
                TextColumn("{task.description}", style="bold", markup=False),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rates]}", markup=False),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=Console(file=sys.stderr),
                transient=False,
            )
            self._task = self._progress.add_task(label, total=total, completed=done, rates="")

    def __enter__(self) -> "RateProgress":
        if self._progress:
            self._progress.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._progress:
            if self._pending:
                self._progress.update(self._task, advance=self._pending)
            self._progress.stop()

    def note(self, line: str) -> None:
        """A line printed above the bar (e.g. the loss every N steps); nothing when the display is off."""
        if self._progress:
            self._progress.console.print(line, markup=False, highlight=False)

    def update(self, advance: int = 1, *, tokens: int = 0, errors: int = 0, retries: int = 0) -> None:
        self.count += advance
        self.tokens += tokens
        if not self._progress:
            return
        self._pending += advance
        now = time.monotonic()
        # Redraw at most ten times a second: at 1,000 samples/s a per-sample redraw costs more than the store.
        if now - self._last_draw < 0.1:
            return
        self._last_draw = now
        elapsed = max(now - self.started, 1e-9)
        rates = f"{self.count / elapsed:.1f} {self.unit}/s"
        if self.tokens:
            rates += f" · {self.tokens / elapsed:.0f} tok/s"
        if errors or retries:
            rates += f" · errors {errors} · retries {retries}"
        self._progress.update(self._task, advance=self._pending, rates=rates)
        self._pending = 0


def training_progress(*, enabled: bool, loss_lines: int = 10) -> Any:
    """A TRL/transformers trainer callback: one progress bar for the run and a loss line every N steps,
    N chosen so a run prints about `loss_lines` of them (instead of the trainer's dict per step)."""
    from transformers import TrainerCallback

    class TrainingProgress(TrainerCallback):
        def __init__(self) -> None:
            self.display: RateProgress | None = None
            self.every = 1

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            total = max(int(state.max_steps or 0), 1)
            self.every = max(1, round(total / max(loss_lines, 1)))
            self.display = RateProgress("distill", total=total, done=int(state.global_step),
                                        enabled=enabled and state.is_world_process_zero, unit="steps").__enter__()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self.display:
                self.display.update(1)

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
            step = int(state.global_step)
            if self.display and logs and "loss" in logs and (step % self.every == 0 or step == state.max_steps):
                parts = [f"step {step}/{state.max_steps}", f"loss {float(logs['loss']):.4f}"]
                if "learning_rate" in logs:
                    parts.append(f"lr {float(logs['learning_rate']):.2e}")
                if "grad_norm" in logs:
                    parts.append(f"grad_norm {float(logs['grad_norm']):.3g}")
                self.display.note(" · ".join(parts))

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self.display:
                self.display.__exit__(None, None, None)
                self.display = None

    return TrainingProgress()
