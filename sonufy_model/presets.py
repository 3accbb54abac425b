"""The model presets: named starting points for a training configuration.

Kept apart from :mod:`sonufy_model.training` so that the command line can
list them without importing torch and Lightning.
"""

from __future__ import annotations

from typing import Any

#: Named starting points for a configuration; the keys a config sets itself
#: win. "invariance" is the default model: the seed's two-branch encoder with
#: narrower convolutions and time pooling, trained to recognise two augmented
#: crops of one track among the batch's other tracks (NT-Xent), no decoder.
#: On real music (the development corpus of game soundtracks) it ranks
#: same-soundtrack and same-composer tracks well above the reference, which
#: scores below plain MFCC statistics there (docs/model.md). "reference" is the
#: seed's autoencoder as it was, selectable for comparison.
PRESETS: dict[str, dict[str, Any]] = {
    "reference": {
        "objective": "reconstruction",
        "filters": (32, 64, 128, 256),
        "time_pooling": "flatten",
        "batch_size": 32,
        "crops_per_track": 8,
        "max_epochs": 20,
        "early_stopping_patience": 5,
        "learning_rate": 1e-3,
    },
    "invariance": {
        "objective": "invariance",
        # Half the seed's channels: twice the steps in the same time box,
        # which mattered more on 2 CPU cores than width (docs/model.md).
        "filters": (16, 32, 64, 128),
        # Mean over time positions: a view's latent must not depend on where
        # in the crop an event falls.
        "time_pooling": "mean",
        # Pairs per batch: 128 views, 126 negatives for each.
        "batch_size": 64,
        # Pairs per track per epoch, one per track in each of these rounds.
        # 16 makes an epoch long enough (a library of 150 tracks: about 37
        # steps) that validating after each, on a few held-out tracks, and
        # stopping after 10 without progress does not end training while it
        # still improves: on the development corpus the first build with 4
        # stopped after 22 s (about 290 steps) at 0.243 / 0.272, and 1,200
        # to 2,500 steps scored alike (docs/model.md).
        "crops_per_track": 16,
        "max_epochs": 100,
        "early_stopping_patience": 10,
        "learning_rate": 1e-3,
        "temperature": 0.1,
        # A volume knob's worth: the spectrograms keep the level, and two
        # crops of one track must not match by its exact value.
        "gain_db": 3.0,
        # The vector fuses the encoder's with block-level texture patterns:
        # same-soundtrack precision@10 +0.03 to +0.055 on the development
        # corpus in each of three seeds; the paper's sixth pattern, spectral
        # contrast, adds +0.013 to +0.023 on same-composer (docs/model.md).
        "texture": "blocks6",
    },
}
DEFAULT_PRESET = "invariance"
PRESET_NAMES = tuple(PRESETS)
