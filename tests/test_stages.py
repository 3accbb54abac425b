"""What the flows share (flows/stages.py): the run record around a flow's stages."""

from __future__ import annotations

import json

import pytest

from flows.stages import add_counts, recorded_run
from sonufy_model.store import Store


def _runs(store: Store) -> dict:
    with store.connect() as con:
        rows = con.execute("SELECT run_id, flow, status, counts, finished_at IS NOT NULL FROM runs").fetchall()
    return {run_id: (flow, status, json.loads(counts) if counts else None, finished)
            for run_id, flow, status, counts, finished in rows}


def test_recorded_run_records_completed_failed_and_interrupted_runs_with_their_counts(tmp_path):
    store = Store(tmp_path / "s.duckdb")
    with recorded_run(store, "ok", "build", {"source": "standin"}) as counts:
        assert _runs(store)["ok"] == ("build", "running", None, False)
        add_counts(counts, {"stored": 2})
        add_counts(counts, {"stored": 3, "quarantined": 1})
    with pytest.raises(ValueError, match="broken"):
        with recorded_run(store, "bad", "nightly", {}) as counts:
            counts["fetched"] = 4
            raise ValueError("broken")
    with pytest.raises(KeyboardInterrupt):
        with recorded_run(store, "stopped", "train", {}) as counts:
            raise KeyboardInterrupt
    assert _runs(store) == {
        "ok": ("build", "completed", {"stored": 5, "quarantined": 1}, True),
        "bad": ("nightly", "failed", {"fetched": 4}, True),
        "stopped": ("train", "failed", {}, True),
    }
