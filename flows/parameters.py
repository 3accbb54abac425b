"""The types of the flows' parameters: what Prefect checks a run's parameters
against before the run starts, and what its UI draws a form from.

Prefect makes each flow's parameter schema from its signature
(``flow.parameters``): a ``Literal`` is a choice, an ``Annotated`` string
with a pattern a text field that only takes what the flow can run, and
:class:`TrainingOptions` a form with one field per training setting. The
descriptions come from the flows' docstrings (their ``Args:`` sections).
Every value a flow could run before is still accepted, with the same effect;
a value it could not run (an unknown training key, a source that is neither
``standin``, ``spotify`` nor ``folder:PATH``) is now refused before the run
starts instead of during it.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, create_model, model_validator

from sonufy_model.evaluate import BUILTIN_LABELS
from sonufy_model.presets import PRESET_NAMES
from sonufy_model.train_config import PATH_KEYS, TrainConfig

#: Where a run's catalog and audio come from (see flows/sources.py).
Source = Annotated[str, Field(pattern=r"^(standin|spotify|folder:.+)$")]

#: Where a file's 30 s excerpts are taken from (sonufy_model.audio.PLACEMENTS).
Placement = Literal["middle", "spread"]

#: A preview source (sonufy_model.preview_sources.preview_sources).
PreviewSourceName = Literal["spotify", "deezer", "folder"]

#: A label that ``sonufy evaluate`` scores by (sonufy_model.evaluate.label_spec):
#: a built-in one, ``folder`` or ``folder:N``, or ``csv:PATH:COLUMN``.
Label = Annotated[str, Field(pattern=rf"^({'|'.join(BUILTIN_LABELS)}|folder(:0*[1-9][0-9]*)?|csv:.+:.+)$")]

#: What the form says of the training settings most often changed.
TRAINING_DESCRIPTIONS = {
    "preset": "The starting point: a named set of model and training settings; the keys set here override it.",
    "max_time_s": "Time box in seconds: training stops after the current step, then validates and checkpoints.",
    "max_epochs": "At most this many epochs.",
    "batch_size": "The global batch, shared by every device (crop pairs for the invariance objective).",
    "crops_per_track": "Random crops (pairs for invariance) per track per epoch.",
    "val_fraction": "Share of the tracks held out for validation.",
    "seed": "The run's random seed.",
    "accelerator": "Lightning accelerator, e.g. auto, cpu or gpu.",
    "devices": "Devices per node: auto, a count, or a list such as '0,1'.",
    "strategy": "Lightning strategy: auto, or ddp for several devices.",
    "precision": "Lightning precision, e.g. 32-true or bf16-mixed.",
    "num_nodes": "Machines to train on.",
    "num_workers": "DataLoader workers per process.",
    "limit_train_batches": "Passed to the Trainer as is: an int counts batches, a float is a fraction of an epoch.",
    "early_stopping_patience": "Validations without progress before training stops.",
    "latent_dim": "Length of a track's vector.",
    "filters": "The encoder's filters (channels), block by block.",
    "learning_rate": "The optimiser's learning rate.",
    "objective": "reconstruction (the seed's autoencoder) or invariance (two crops of a track find each other).",
    "temperature": "Temperature of the NT-Xent loss (invariance and contrastive).",
    "encode_tiles": "Tiles per spectrogram averaged into a track's vector.",
}


class _GivenOptions(BaseModel):
    """Settings that are checked for their types, then passed on as given.

    Only the keys given count (:meth:`given`), with the values given: the
    training run's key hashes its config as written (a ``max_time_s`` of 1800,
    not 1800.0), so that a rerun finds the run it resumes.
    """

    model_config = ConfigDict(extra="forbid")
    _given: dict[str, Any] = PrivateAttr(default_factory=dict)

    @model_validator(mode="wrap")
    @classmethod
    def _keep_given(cls, data: Any, handler):
        options = handler(data)
        if isinstance(data, dict):
            options._given = dict(data)
        return options

    def given(self) -> dict[str, Any]:
        """The keys given, each with its value as given."""
        return {name: self._given.get(name, getattr(self, name)) for name in self.model_fields_set}


def _training_fields() -> dict[str, Any]:
    """One optional field per TrainConfig field the config may set, of its type."""
    hints = typing.get_type_hints(TrainConfig)
    fields = {}
    for field in dataclasses.fields(TrainConfig):
        if field.name in PATH_KEYS:  # set by the train flow for each model version
            continue
        kind = Literal[PRESET_NAMES] if field.name == "preset" else hints[field.name]
        fields[field.name] = (kind | None, Field(None, description=TRAINING_DESCRIPTIONS.get(field.name)))
    return fields


#: Training settings on top of the preset: any field of
#: :class:`sonufy_model.training.TrainConfig` but the run's paths (the train
#: flow sets ``manifest`` and ``output_dir``), each optional; an unknown key is
#: refused. The YAML of ``sonufy train --config`` has the same keys.
TrainingOptions = create_model(
    "TrainingOptions",
    __base__=_GivenOptions,
    __doc__="Training settings on top of the preset (TrainConfig fields); only the keys given count.",
    __module__=__name__,
    **_training_fields(),
)
