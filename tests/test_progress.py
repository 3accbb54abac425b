"""Progress of the batch loops: logged to the flow run, drawn as bars in a terminal."""

from __future__ import annotations

import io
import logging

from prefect import flow
from rich.console import Console

from tasks import progress
from tasks.progress import StageProgress, terminal_bars


@flow
def _three_batches(total: int, batch: int) -> int:
    stage = StageProgress("encode", total)
    for start in range(0, total, batch):
        stage.advance(min(batch, total - start))
    return stage.done


def test_a_stage_logs_at_most_every_interval_and_once_at_the_end(prefect_api, caplog, monkeypatch):
    monkeypatch.setattr(progress, "LOG_EVERY_S", 3600.0)
    with caplog.at_level(logging.INFO):
        assert _three_batches(300, 100) == 300
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("encode:")]
    assert len(lines) == 1 and lines[0].startswith("encode: 300 of 300 tracks (100%")

    caplog.clear()
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.0)
    with caplog.at_level(logging.INFO):
        _three_batches(300, 100)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("encode:")]
    assert [line.split(" (")[0] for line in lines] == [
        "encode: 100 of 300 tracks", "encode: 200 of 300 tracks", "encode: 300 of 300 tracks"
    ]


def test_bars_are_drawn_in_a_terminal_and_not_elsewhere(prefect_api):
    screen = io.StringIO()
    with terminal_bars(Console(file=screen, force_terminal=True, width=100)):
        _three_batches(30, 10)
    assert "encode" in screen.getvalue() and "30/30" in screen.getvalue()

    piped = io.StringIO()
    with terminal_bars(Console(file=piped, force_terminal=False)):
        _three_batches(30, 10)
    assert piped.getvalue() == ""
