"""The train flow: a new model version on the current spectrogram set.

Training runs in its own process (``python -m sonufy_model.training``, see
:func:`tasks.training.train_model`), never in this one: DDP re-executes the
trainer's command line. ``config`` holds :class:`sonufy_model.training.TrainConfig`
fields, e.g. from a YAML file such as ``deployments/train.yaml``; the flow
fills in ``manifest`` and ``output_dir`` itself.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from flows.parameters import TrainingOptions
from flows.stages import ENCODE_BATCH, add_counts, encode_pending, flow_run_id, recorded_run, training_options
from flows.writer import holds_writer_lock
from sonufy_model.audio import MelParams
from sonufy_model.config import Paths
from sonufy_model.store import Store
from tasks.landscape import render_landscape, update_landscape
from tasks.search import update_search_index
from tasks.training import train_model


@flow(name="train", log_prints=True)
@holds_writer_lock("train")  # one writer per store: waits for another
def train(
    db: str = "sonufy.duckdb",
    config: TrainingOptions | None = None,
    promote: bool = True,
    data_dir: str | None = None,
) -> str:
    """Train a model version on the current spectrogram set; return its version.

    The current set is the current model's, or else that of the default
    spectrogram parameters (what ``sonufy build`` computes).

    Args:
        db: The DuckDB file of the latent space.
        config: Training settings on top of the preset (TrainConfig fields,
            as in deployments/train.yaml); the time box is 300 s unless set here.
        promote: Encode every track with the new version, then make it
            current (recommendations switch at once, never to a half-encoded
            space), and give it its search index and landscape, as a build
            does; False only registers it.
        data_dir: Where spectrograms and models are (default: the db's name
            with .data).
    """
    logger = get_run_logger()
    options = training_options(config)  # a bad config fails here, before any work
    paths = Paths.for_db(db, data_dir)
    if not paths.db.exists():
        raise FileNotFoundError(f"{paths.db}: no such DuckDB file; run `sonufy build` first")
    store = Store(paths.db)
    run_id = flow_run_id()
    current = store.current_model()
    set_id = current.set_id if current is not None else MelParams().set_id
    with recorded_run(store, run_id, "train", {"config": options, "promote": promote, "set_id": set_id}) as counts:
        # Registered and, with promote, pending: queries keep answering from
        # the current version until every track has a vector in the new one,
        # then the switch is one UPDATE.
        version = train_model(store, paths, set_id, options, promote=promote)
        counts["model_version"] = version
        if promote:
            counts.update(encode_pending(store, run_id, tracks_per_batch=ENCODE_BATCH))
            # The new version answers as the build's does: through its own
            # search index, and on its own map (the old version's serve
            # neither it nor its vectors).
            update_search_index(store)
            add_counts(counts, update_landscape(store, paths))
            render_landscape(store, paths.data_dir / "landscape")
    logger.info("model %s trained on set %s%s", version, set_id, " and made current" if promote else "")
    return version
