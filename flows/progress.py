"""Progress of the flows' batch loops (fetch, spectrograms, encode).

Every loop logs "stage: done of total" to its flow run (what the Prefect UI
shows) at most every ``LOG_EVERY_S`` seconds and once at the end, so that a
100,000-track night does not write 1,000 lines. A ``sonufy`` command run in a
terminal also draws a progress bar per stage on stderr (:func:`terminal_bars`).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

from prefect import get_run_logger

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
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = console or Console(stderr=True)
    if not console.is_terminal or _bars is not None:
        yield
        return
    with Progress(
        TextColumn("{task.description:>12}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=console,
    ) as bars:
        _bars = bars
        try:
            yield
        finally:
            _bars = None


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
