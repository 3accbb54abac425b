"""Progress of the flows' batch loops (fetch, spectrograms, encode) and of training.

Every loop logs "stage: done of total" to its flow run (what the Prefect UI
shows) at most every ``LOG_EVERY_S`` seconds and once at the end, so that a
100,000-track night does not write 1,000 lines. A ``sonufy`` command run in a
terminal also draws a progress bar per stage on stderr (:func:`terminal_bars`).
Training, which runs in a process of its own, reports its steps on that
process's stdout; :class:`TrainingProgress` turns them into a bar and a log
line at least every ``LOG_EVERY_S`` seconds.

It lives in ``tasks/`` because the training task draws and logs the trainer's
progress itself, and tasks do not import flows; the flows import it from here.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from typing import Any, Iterator

from prefect import get_run_logger
from rich.progress import ProgressColumn, TimeRemainingColumn
from rich.text import Text

LOG_EVERY_S = 10.0

# The rich Progress that draws bars while a `sonufy` command runs in a
# terminal; None elsewhere (deployments, workers, tests).
_bars = None


@contextmanager
def terminal_bars(console=None) -> Iterator[None]:
    """Draw a bar per stage on ``console`` (default: stderr) while inside,
    if it is a terminal; otherwise do nothing."""
    global _bars
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    console = console or Console(stderr=True)
    if not console.is_terminal or _bars is not None:
        yield
        return
    with Progress(
        TextColumn("{task.description:>12}"), BarColumn(), MofNCompleteColumn(), _TimeLeftColumn(), _NoteColumn(),
        console=console,
    ) as bars:
        _bars = bars
        try:
            yield
        finally:
            _bars = None


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours:d}:{minutes:02d}:{seconds:02d}"


class _TimeLeftColumn(TimeRemainingColumn):
    """Rich's estimate of the time left, or the task's own (field ``left_s``) where it has one."""

    def render(self, task: Any) -> Text:
        left = task.fields.get("left_s")
        if left is None or task.finished:
            return super().render(task)
        return Text(_clock(left), style="progress.remaining")


class _NoteColumn(ProgressColumn):
    """The task's field ``note`` (training: its loss and epoch), if any."""

    def render(self, task: Any) -> Text:
        return Text(task.fields.get("note", ""))


class StageProgress:
    """Progress of one stage over ``total`` items (tracks)."""

    def __init__(self, stage: str, total: int, unit: str = "tracks"):
        self.stage, self.total, self.unit = stage, total, unit
        self.done = 0
        self._started = self._logged = time.monotonic()
        self._bar = _bars.add_task(stage, total=total) if _bars is not None and total else None

    def advance(self, items: int) -> None:
        self.done += items
        if self._bar is not None and _bars is not None:
            _bars.advance(self._bar, items)
        now = time.monotonic()
        if self.done >= self.total or now - self._logged >= LOG_EVERY_S:
            self._logged = now
            rate = self.done / max(now - self._started, 1e-9)
            get_run_logger().info(
                "%s: %d of %d %s (%.0f%%, %.1f %s/s)",
                self.stage, self.done, self.total, self.unit, 100 * self.done / max(self.total, 1), rate, self.unit,
            )


class TrainingProgress:
    """The trainer's progress (:class:`sonufy_model.training.StepReport`'s
    states), drawn as a bar in a terminal (steps, time left, loss, epoch) and
    logged at least every ``LOG_EVERY_S`` seconds: on a state when the last
    line is that old, and on :meth:`tick` (call it when no state came for a
    while: setting up, or a slow step) with how long the trainer has been quiet.
    """

    def __init__(self, logger: logging.Logger | logging.LoggerAdapter | None = None):
        self.state: dict[str, Any] | None = None
        self._logger = logger or get_run_logger()
        self._started = self._logged = self._heard = time.monotonic()
        self._bar = _bars.add_task("train", total=None, note="starting") if _bars is not None else None

    def update(self, state: dict[str, Any]) -> None:
        self.state, self._heard = state, time.monotonic()
        if self._bar is not None and _bars is not None:
            done = state["phase"] == "done"
            _bars.update(
                self._bar, completed=state["step"], total=state["step"] if done else state["total"],
                left_s=state["left_s"], note=self._note(),
            )
        if state["phase"] == "done" or self.log_due_in() <= 0:
            self.log()

    def log_due_in(self) -> float:
        """Seconds until a line is due."""
        return LOG_EVERY_S - (time.monotonic() - self._logged)

    def tick(self) -> None:
        """Log a line if one is due."""
        if self.log_due_in() <= 0:
            self.log()

    def log(self) -> None:
        self._logged = now = time.monotonic()
        self._logger.info("train: %s", self.describe(now))

    def _note(self) -> str:
        state = self.state or {}
        parts = [] if state.get("loss") is None else [f"loss {state['loss']:.4f}"]
        if state.get("max_epochs") not in (None, -1):
            parts.append(f"epoch {state['epoch']}/{state['max_epochs']}")
        if state.get("phase") == "validate":
            parts.append("validating")
        return "  ".join(parts)

    def describe(self, now: float | None = None) -> str:
        """The state in words: steps, epoch, loss, time so far and left."""
        now = time.monotonic() if now is None else now
        state = self.state
        if state is None:
            return f"starting ({now - self._started:.0f} s)"
        total = state["total"]
        if state["phase"] == "done":
            line = f"finished after {state['step']} steps"
        elif total:
            line = f"step {state['step']} of {total} ({100 * state['step'] / total:.0f}%)"
        else:
            line = f"step {state['step']}"
        if state.get("max_epochs") not in (None, -1):
            line += f", epoch {state['epoch']} of {state['max_epochs']}"
        if state.get("loss") is not None:
            line += f", loss {state['loss']:.4f}"
        line += f", {state['elapsed_s']:.0f} s"
        if state["phase"] == "validate":
            line += ", validating"
        if state["phase"] != "done" and state.get("left_s") is not None:
            line += f", about {_clock(state['left_s'])} left"
        quiet = now - self._heard
        if quiet >= LOG_EVERY_S:
            line += f" (no report for {quiet:.0f} s)"
        return line
