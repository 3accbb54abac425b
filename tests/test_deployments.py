"""prefect.yaml's deployments, and one of them run through a real Prefect server.

The server is `prefect server start` on 127.0.0.1 (its own PREFECT_HOME,
telemetry off); the deployments are served by deployments/serve.py, as
`make serve` does; the run is triggered through the API with run_deployment.
"""

from __future__ import annotations

import inspect
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _config() -> dict:
    return yaml.safe_load((ROOT / "prefect.yaml").read_text())


def test_prefect_yaml_declares_nightly_retrain_and_build_on_a_process_pool():
    from prefect.flows import load_flow_from_entrypoint

    deployments = {spec["name"]: spec for spec in _config()["deployments"]}
    assert set(deployments) == {"nightly-refresh", "retrain-weekly", "build"}
    nightly, weekly = deployments["nightly-refresh"], deployments["retrain-weekly"]
    # The nightly runs once every day, the retrain once a week.
    nightly_minute, nightly_hour, *nightly_days = nightly["schedules"][0]["cron"].split()
    weekly_minute, weekly_hour, *weekly_days = weekly["schedules"][0]["cron"].split()
    assert nightly_minute.isdigit() and nightly_hour.isdigit() and nightly_days == ["*", "*", "*"]
    assert weekly_minute.isdigit() and weekly_hour.isdigit() and weekly_days[:2] == ["*", "*"]
    assert weekly_days[2] in set("01234567")
    assert deployments["build"]["schedules"] == []
    for spec in (nightly, weekly):
        assert spec["schedules"][0]["timezone"] == "{{ $SONUFY_TIMEZONE }}"
        assert spec["concurrency_limit"]["limit"] == 1
    for name, spec in deployments.items():
        assert spec["work_pool"]["name"] == "sonufy"
        flow = load_flow_from_entrypoint(str(ROOT / spec["entrypoint"]))
        accepted = set(inspect.signature(flow.fn).parameters)
        assert set(spec["parameters"]) <= accepted, name
    # The parameter files name parameters of their flows.
    for file, spec in (("nightly.json", nightly), ("retrain.json", weekly), ("build.json", deployments["build"])):
        flow = load_flow_from_entrypoint(str(ROOT / spec["entrypoint"]))
        assert set(json.loads((ROOT / "deployments" / file).read_text())) <= set(
            inspect.signature(flow.fn).parameters), file


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(url: str, process: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"prefect server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"no healthy Prefect server at {url} after {timeout} s")


@pytest.fixture
def server(tmp_path):
    """A real `prefect server start` on a free port of 127.0.0.1, in its own PREFECT_HOME."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_API_URL": url,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port),
         "--analytics-off"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        _wait_healthy(url, process)
        yield env
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.slow
def test_a_served_nightly_deployment_runs_through_the_api(server, tmp_path, monkeypatch):
    import soundfile as sf
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from sonufy_demo.synth import build_catalog, render_clip

    music = tmp_path / "Music"
    music.mkdir()
    for number, track in enumerate(build_catalog(24)[:3], start=1):
        sf.write(music / f"{number:02d} {track.title}.flac", render_clip(track, seconds=31.0), 22050)
    db = tmp_path / "served.duckdb"
    serving = subprocess.Popen(
        [sys.executable, str(ROOT / "deployments" / "serve.py"), "--only", "nightly-refresh", "--db", str(db),
         "--timezone", "Europe/Paris"],
        env=server, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        with temporary_settings(updates={PREFECT_API_URL: server["PREFECT_API_URL"]}):
            with get_client(sync_client=True) as client:
                deadline = time.monotonic() + 90
                while True:
                    try:
                        deployment = client.read_deployment_by_name("nightly-refresh/nightly-refresh")
                        break
                    except Exception:
                        assert serving.poll() is None, serving.stdout.read()
                        assert time.monotonic() < deadline, "the deployment never appeared"
                        time.sleep(0.5)
                nightly = next(spec for spec in _config()["deployments"] if spec["name"] == "nightly-refresh")
                assert deployment.schedules[0].schedule.cron == nightly["schedules"][0]["cron"]
                assert deployment.schedules[0].schedule.timezone == "Europe/Paris"
                run = run_deployment(
                    "nightly-refresh/nightly-refresh",
                    parameters={"source": f"folder:{music}", "workers": 1},
                    timeout=240,
                )
                assert run.state.is_completed(), run.state
                artifacts = client.read_artifacts(
                    artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]))
                )
    finally:
        serving.terminate()
        serving.wait(timeout=30)
    keys = {artifact.key for artifact in artifacts}
    assert {"nightly-added", "nightly-quarantined", "nightly-quality", "nightly-timings",
            "nightly-report", "nightly-data-docs"} <= keys
    report = next(artifact for artifact in artifacts if artifact.key == "nightly-report")
    assert "| new_tracks | 3 |" in report.data
    timings = next(artifact for artifact in artifacts if artifact.key == "nightly-timings")
    assert {"discover", "fetch", "spectrograms", "encode"} <= {row["stage"] for row in json.loads(timings.data)}
