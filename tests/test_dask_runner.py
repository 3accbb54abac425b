"""Spectrogram batches on a Dask cluster (a LocalCluster here), through prefect-dask."""

from __future__ import annotations

import duckdb
import pytest

from flows.build import build
from flows.runners import task_runner

N_TRACKS = 24


@pytest.fixture(scope="module")
def cluster():
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as local:
        yield local


@pytest.mark.slow
def test_build_runs_its_batches_on_the_cluster(prefect_api, cluster, tmp_path):
    from distributed import Client, get_task_stream

    db = tmp_path / "dask.duckdb"
    with Client(cluster.scheduler_address) as client:
        with get_task_stream(client) as stream:
            result = build.with_options(task_runner=task_runner("dask", cluster.scheduler_address))(
                source="standin", db=str(db), demo_tracks=N_TRACKS, batch_size=8, workers=2, keep_previews=False,
                training={"max_epochs": 1, "max_time_s": 60, "batch_size": 8, "crops_per_track": 2},
            )
    ran = " ".join(str(task["key"]) for task in stream.data)
    print(ran[:500])
    assert "compute_spectrograms" in ran and "write_spectrogram_shard" in ran
    assert result["counts"]["total_embeddings"] == N_TRACKS
    con = duckdb.connect(str(db), read_only=True)
    shards = con.execute("SELECT count(DISTINCT shard) FROM spectrograms").fetchone()[0]
    kept_paths = con.execute("SELECT count(path) FROM previews").fetchone()[0]
    con.close()
    assert shards == N_TRACKS // 8
    # --drop-previews: the mp3s are gone once their spectrograms are stored.
    assert kept_paths == 0 and result["counts"]["previews_dropped"] == N_TRACKS
    assert not list((tmp_path / "dask.data" / "previews").glob("*.mp3"))
