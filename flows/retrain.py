"""The retrain flow: a new model version, promoted only if it is not worse.

train (own process, see flows/train.py) → encode every track with the
candidate → ``sonufy evaluate`` on the candidate and on the current version →
promote if the candidate's score is not below the current one's (minus
``tolerance``) → the switch. Queries answer from the current version until
the switch, one UPDATE once every track has a vector in the new one. A
candidate that is not promoted stays registered (table ``models``, its
evaluation in ``evaluations``) and its vectors are deleted.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from flows.build import _add, encode_model, encode_pending
from flows.train import ENCODE_BATCH, training_options
from sonufy_model.audio import MelParams
from sonufy_model.config import Paths
from sonufy_model.store import Store
from tasks.reporting import evaluate_version, latent_score, publish_evaluation
from tasks.training import train_model

FLOW = "retrain"


@flow(name="retrain", log_prints=True)
def retrain(
    db: str = "sonufy.duckdb",
    config: dict | None = None,
    data_dir: str | None = None,
    labels: list[str] | None = None,
    k: int = 10,
    tolerance: float = 0.0,
) -> dict:
    """Train a candidate on the current data; make it current only if its
    mean latent precision@k (``sonufy evaluate``, ``labels``, default genre
    and artist) is at least the current version's minus ``tolerance``."""
    logger = get_run_logger()
    options = training_options(config)  # a bad config fails here, before any work
    labels = list(labels or ["genre", "artist"])
    paths = Paths.for_db(db, data_dir)
    if not paths.db.exists():
        raise FileNotFoundError(f"{paths.db}: no such DuckDB file; run `sonufy build` first")
    store = Store(paths.db)
    with store.exclusive(FLOW) as busy:
        if busy:
            logger.warning("another retrain is running (%s): this one does nothing", busy)
            return {"skipped": busy}
        run_id = str(flow_run.id) if flow_run.id else "local"
        current = store.current_model()
        set_id = current.set_id if current is not None else MelParams().set_id
        store.start_run(run_id, FLOW, {"config": options, "labels": labels, "k": k, "tolerance": tolerance})
        counts: dict = {}
        try:
            version = train_model(store, paths, set_id, options, promote=False)
            _add(counts, encode_model(store, store.model(version), run_id, ENCODE_BATCH))
            candidate = evaluate_version(store, version, labels, k)
            baseline = evaluate_version(store, current.model_version, labels, k) if current else None
            promoted, reason = should_promote(latent_score(candidate), latent_score(baseline), tolerance, k)
            publish_evaluation(candidate, baseline, promoted, reason)
            if promoted:
                store.request_promotion(version)
                _add(counts, encode_pending(store, run_id, tracks_per_batch=ENCODE_BATCH))
            else:
                store.forget_model_embeddings(version)
        except BaseException:
            store.finish_run(run_id, "failed", counts)
            raise
        counts.update(candidate=version, promoted=promoted)
        store.finish_run(run_id, "completed", counts)
    logger.info("candidate %s %s: %s", version, "promoted" if promoted else "not promoted", reason)
    return {
        "candidate": version,
        "promoted": promoted,
        "reason": reason,
        "candidate_score": latent_score(candidate),
        "current_score": latent_score(baseline),
        "current": store.current_model().model_version,
    }


def should_promote(candidate: float | None, current: float | None, tolerance: float, k: int) -> tuple[bool, str]:
    """Whether a candidate with mean latent precision@k ``candidate`` replaces one with ``current``."""
    if current is None:
        return candidate is not None, "no current version to compare with"
    if candidate is None:
        return False, "the candidate could not be scored"
    verdict = "not worse" if candidate >= current - tolerance else "worse"
    return verdict == "not worse", (
        f"mean latent precision@{k} {candidate:.4f} vs {current:.4f} (tolerance {tolerance:g}): {verdict}"
    )
