"""The training task: launch the trainer as its own process, register the model.

Lightning's DDP re-executes the command line of the process that starts it,
so training never runs inside the orchestrator: this task writes a manifest
and a config, starts ``python -m sonufy_model.training``, waits, and records
the result in DuckDB. The flow keeps the DuckDB file; the trainer reads only
the manifest and the shards. The trainer reports its steps on its stdout
(``--progress-every-s``); this task draws them as a bar in a terminal and logs
a line at least every 10 s to the flow run (``tasks.progress.TrainingProgress``).
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Iterable

import yaml
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from sonufy_model.config import Paths
from sonufy_model.encoding import fit_vector_space, load_encoder
from sonufy_model.fusion import fusion_path
from sonufy_model.store import Store
from sonufy_model.training import (
    PROGRESS_PREFIX,
    RESULT_NAME,
    TrainConfig,
    model_registration,
    new_model_version,
    run_key,
    unregistered_run,
)
from tasks.progress import TrainingProgress

# How often the trainer reports its step: the terminal's bar moves this often.
PROGRESS_EVERY_S = 1.0


@task(cache_policy=NO_CACHE, task_run_name="train[{set_id}]")
def train_model(store: Store, paths: Paths, set_id: str, options: dict, promote: bool = True) -> str:
    """Train a model version on every checked spectrogram of ``set_id``; register it.

    With ``promote`` the new version is asked to become current: it does
    once every track is encoded with it (``flows.stages.encode_pending``).
    """
    logger = get_run_logger()
    manifest = store.spectrogram_manifest(set_id)
    if manifest.height < 2:
        raise ValueError(
            f"training needs at least 2 tracks with spectrograms in set {set_id}, found {manifest.height}"
        )
    # Resolved against its preset, so that the models table says what was trained.
    resolved = TrainConfig.from_dict({"manifest": "", "output_dir": "", **options}).to_dict()
    key = run_key(set_id, resolved, manifest.write_csv())
    # A rerun after a killed build or train resumes the run it left: same
    # set, config and spectrograms, same folder, its last checkpoint.
    run_dir = unregistered_run(store, paths.models, key)
    if run_dir is None:
        run_dir = paths.models / new_model_version(key)
        run_dir.mkdir(parents=True)
    else:
        logger.info("resuming the unfinished training run in %s", run_dir)
    version = run_dir.name
    manifest_path = run_dir / "manifest.parquet"
    manifest.write_parquet(manifest_path)
    config = {**resolved, "manifest": str(manifest_path), "output_dir": str(run_dir)}
    config_path = run_dir / "train.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=True))
    result_path = run_dir / RESULT_NAME

    if not result_path.exists():  # else it finished and only its registration was lost
        command = [sys.executable, "-m", "sonufy_model.training", "--config", str(config_path),
                   "--result-json", str(result_path), "--progress-every-s", str(PROGRESS_EVERY_S)]
        logger.info("training %s on %d tracks: %s", version, manifest.height, " ".join(command))
        tail: deque[str] = deque(maxlen=40)
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as process:
            assert process.stdout is not None
            follow_trainer(process.stdout, TrainingProgress(logger), logger, tail)
        if process.returncode != 0 or not result_path.exists():
            raise RuntimeError(
                f"training process exited with {process.returncode}; last output:\n" + "\n".join(tail)
            )
    result = json.loads(result_path.read_text())
    standardiser, fusion = fit_vector_space(load_encoder(result["checkpoint_path"]), manifest, config["texture"])
    if fusion is not None:  # beside the checkpoint, before the version that needs it is registered
        fusion.save(fusion_path(result["checkpoint_path"]))
    store.register_model(model_registration(version, set_id, config, result, standardiser), promote=promote)
    logger.info(
        "model %s (%s): %d epochs in %.0f s, validation %s %.4f",
        version, config["preset"], result["epochs"],
        result["seconds"], result.get("monitor", "val_mse"), result.get("val_score", result["val_mse"]),
    )
    return version


def follow_trainer(output: Iterable[str], progress: TrainingProgress, logger, tail: deque[str]) -> None:
    """Read the trainer's output to its end: its progress lines into
    ``progress``, which logs at least every 10 s even while the trainer is
    quiet; epoch lines, a resume and errors to ``logger``; every other line
    into ``tail`` (shown if the trainer fails)."""
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        try:
            for line in output:
                lines.put(line)
        finally:
            lines.put(None)

    threading.Thread(target=read, name="trainer-output", daemon=True).start()
    while True:
        try:
            line = lines.get(timeout=max(progress.log_due_in(), 0.05))
        except queue.Empty:
            progress.tick()
            continue
        if line is None:
            return
        line = line.rstrip()
        if line.startswith(PROGRESS_PREFIX):
            try:
                state = json.loads(line[len(PROGRESS_PREFIX):])
            except json.JSONDecodeError:
                state = None
            if isinstance(state, dict):
                progress.update(state)
                continue
        tail.append(line)
        if line.startswith(("epoch ", "Resuming")) or "Error" in line:
            logger.info("trainer: %s", line[-300:])
