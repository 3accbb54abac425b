"""Where a flow's submitted tasks run: threads here, or a Dask cluster."""

from __future__ import annotations

RUNNERS = ("threads", "dask")


def task_runner(runner: str = "threads", dask_address: str | None = None, dask_workers: int = 2):
    """A Prefect task runner.

    "dask" with an address (tcp://scheduler:8786) uses that cluster; without
    one it starts a local cluster of ``dask_workers`` processes for the run.
    Tasks that write DuckDB are called directly in the flow, so they stay in
    the flow's process whichever runner is chosen: only the pure work (fetch,
    convert, check, write shards) moves to the cluster, which must then see
    the data directory at the same path (a shared file system).
    """
    if runner == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner()
    if runner == "dask":
        from prefect_dask import DaskTaskRunner

        if dask_address:
            return DaskTaskRunner(address=dask_address)
        return DaskTaskRunner(
            cluster_kwargs={"n_workers": dask_workers, "threads_per_worker": 1, "processes": True}
        )
    raise ValueError(f"--runner {runner!r}: expected one of {', '.join(RUNNERS)}")
