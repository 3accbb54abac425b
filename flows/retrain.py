"""The retrain flow: a new model version, promoted only if it is not worse.

train (own process, see flows/train.py) → encode every track with the
candidate → ``sonufy evaluate`` on the candidate and on the current version
(the same query tracks) → promote unless the candidate is worse beyond the
noise: the 95% paired bootstrap interval of its latent precision@k minus the
current one's lies entirely below zero (below ``-tolerance``) → the switch. Queries answer from the current
version until
the switch, one UPDATE once every track has a vector in the new one. A
candidate that is not promoted stays registered (table ``models``, its
evaluation in ``evaluations``) and its vectors are deleted. A candidate whose
retrain was killed before the decision keeps its partial vectors until the
next retrain's start (or ``sonufy gc``) deletes them: a rerun trains a new
version rather than finishing it.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from flows.parameters import Label, TrainingOptions
from flows.stages import (
    ENCODE_BATCH,
    add_counts,
    encode_model,
    encode_pending,
    flow_run_id,
    recorded_run,
    training_options,
)
from sonufy_model.audio import MelParams
from sonufy_model.config import Paths
from sonufy_model.evaluate import latent_score, should_promote
from sonufy_model.store import Store
from tasks.reporting import evaluate_version, publish_evaluation
from tasks.training import train_model

FLOW = "retrain"


@flow(name="retrain", log_prints=True)
def retrain(
    db: str = "sonufy.duckdb",
    config: TrainingOptions | None = None,
    data_dir: str | None = None,
    labels: list[Label] | None = None,
    k: int = 10,
    tolerance: float = 0.0,
    wait_for_running_s: float = 6 * 3600.0,
) -> dict:
    """Train a candidate on the current data; make it current unless its mean
    latent precision@k (``sonufy evaluate``) is below the current version's
    beyond the noise: see :func:`sonufy_model.evaluate.should_promote`.

    Another writer on the store (a nightly still running, a build) is waited
    for up to ``wait_for_running_s``: a weekly retrain that gave up at once
    would leave the model a week older. After that it exits, doing nothing.

    Args:
        db: The DuckDB file of the latent space.
        config: Training settings on top of the preset (TrainConfig fields);
            the time box is 300 s unless set here.
        data_dir: Where spectrograms and models are (default: the db's name
            with .data).
        labels: The labels the candidate and the current version are scored
            by, as for ``sonufy evaluate --label`` (default: genre and artist).
        k: Neighbours per query track (precision@k).
        tolerance: Promote unless the paired interval of the candidate's
            precision minus the current one's lies entirely below -tolerance.
        wait_for_running_s: Seconds to wait for another writer on the store;
            then this run does nothing.
    """
    logger = get_run_logger()
    options = training_options(config)  # a bad config fails here, before any work
    labels = list(labels or ["genre", "artist"])
    paths = Paths.for_db(db, data_dir)
    if not paths.db.exists():
        raise FileNotFoundError(f"{paths.db}: no such DuckDB file; run `sonufy build` first")
    store = Store(paths.db)
    with store.writer(FLOW, wait_for_running_s, publish=True) as busy:  # readers see the switch at its end
        if busy:
            logger.warning("another writer is running on this store (%s): this retrain does nothing", busy)
            return {"skipped": busy}
        # A retrain killed before deciding on its candidate left its vectors
        # (a rerun trains a new version; nothing finishes the old one): no
        # other writer is encoding a candidate while this one holds the lock.
        for abandoned, vectors in store.forget_abandoned_candidates().items():
            logger.info("deleted the %d vectors of %s, a candidate whose retrain was killed", vectors, abandoned)
        run_id = flow_run_id()
        current = store.current_model()
        set_id = current.set_id if current is not None else MelParams().set_id
        with recorded_run(
            store, run_id, FLOW, {"config": options, "labels": labels, "k": k, "tolerance": tolerance}
        ) as counts:
            version = train_model(store, paths, set_id, options, promote=False)
            add_counts(counts, encode_model(store, store.model(version), run_id, ENCODE_BATCH))
            candidate = evaluate_version(store, version, labels, k)
            baseline = evaluate_version(store, current.model_version, labels, k) if current else None
            promoted, reason = should_promote(candidate, baseline, tolerance, k)
            publish_evaluation(candidate, baseline, promoted, reason)
            if promoted:
                store.request_promotion(version)
                add_counts(counts, encode_pending(store, run_id, tracks_per_batch=ENCODE_BATCH))
            else:
                store.forget_model_embeddings(version)
            counts.update(candidate=version, promoted=promoted)
    logger.info("candidate %s %s: %s", version, "promoted" if promoted else "not promoted", reason)
    return {
        "candidate": version,
        "promoted": promoted,
        "reason": reason,
        "candidate_score": latent_score(candidate),
        "current_score": latent_score(baseline),
        "current": store.current_model().model_version,
    }

