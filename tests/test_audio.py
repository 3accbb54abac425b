"""Audio to spectrogram: librosa's numbers, excerpts, shards, checks, workers."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import soundfile as sf

from sonufy_model import quality, spectrograms
from sonufy_model.audio import (
    ABSOLUTE_RANGE_DBFS,
    AudioDecodeError,
    MelParams,
    _window,
    analyse,
    excerpt_starts,
    full_scale_power,
    load_excerpt,
    load_excerpts,
    native_stderr_captured,
    power_to_db,
    scaled_mel,
    slaney_mel_basis,
)
from sonufy_model.evaluate import precision_at_k

# One clip per file, so that a file is one row: what most tests here count.
PARAMS = MelParams(excerpts=1)


def _tone(seconds: float, rate: int, freq: float = 440.0, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    noise = np.random.default_rng(seed).standard_normal(t.size)
    return (0.3 * np.sin(2 * np.pi * freq * t) * (1.2 + np.sin(2 * np.pi * 1.5 * t)) + 0.02 * noise).astype(np.float32)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    paths = {}
    for name, freq in (("low", 110.0), ("high", 3000.0)):
        paths[name] = root / f"{name}.mp3"
        sf.write(paths[name], _tone(30.0, 44100, freq), 44100, format="MP3")
    paths["silent"] = root / "silent.wav"
    sf.write(paths["silent"], np.zeros(30 * 22050, np.float32), 22050)
    paths["short"] = root / "short.wav"
    sf.write(paths["short"], _tone(5.0, 22050), 22050)
    paths["song"] = root / "song.wav"
    # 90 s: 30 s of 220 Hz, 30 s of 2 kHz in the middle, 30 s of 220 Hz.
    song = np.concatenate([_tone(30, 22050, 220), _tone(30, 22050, 2000), _tone(30, 22050, 220)])
    sf.write(paths["song"], song, 22050)
    paths["garbage"] = root / "garbage.mp3"
    paths["garbage"].write_bytes(b"this is not audio" * 100)
    return paths


def test_matches_librosa_melspectrogram(clips):
    import librosa

    y, sr = librosa.load(clips["high"], sr=PARAMS.sample_rate, duration=PARAMS.clip_seconds)
    reference = librosa.power_to_db(
        librosa.feature.melspectrogram(y=y, sr=sr, n_fft=2048, hop_length=512, n_mels=128, fmax=8000),
        ref=np.max, top_db=80.0,
    )
    reference = (reference + 80.0) / 80.0
    clip, duration = load_excerpt(clips["high"], PARAMS)
    ours = scaled_mel(clip, MelParams(n_frames=reference.shape[1], level="peak"))
    assert duration == pytest.approx(30.0, abs=0.1)
    assert ours.shape == reference.shape == (128, reference.shape[1])
    assert np.abs(ours - reference).max() < 0.02
    # The absolute scale is the same dB, shifted by the clip's peak and rescaled.
    absolute = scaled_mel(clip, MelParams(n_frames=reference.shape[1]))
    db_re_full_scale = librosa.power_to_db(
        librosa.feature.melspectrogram(y=y, sr=sr, n_fft=2048, hop_length=512, n_mels=128, fmax=8000),
        ref=full_scale_power(PARAMS), top_db=80.0,
    )
    low, high = ABSOLUTE_RANGE_DBFS
    assert np.abs(absolute - np.clip((db_re_full_scale - low) / (high - low), 0, 1)).max() < 0.02


@pytest.mark.parametrize("sample_rate, n_fft, n_mels, fmax", [(22050, 2048, 128, 8000.0), (22050, 2048, 128, 11025.0),
                                                              (16000, 1024, 64, 8000.0), (44100, 4096, 96, 16000.0)])
def test_the_mel_basis_window_and_db_are_librosas_bit_for_bit(sample_rate, n_fft, n_mels, fmax):
    """Written out so that the spectrogram workers need not import librosa:
    a difference in the last bit would change stored spectrograms without a
    new set id."""
    import librosa
    import scipy.signal

    assert np.array_equal(slaney_mel_basis(sample_rate, n_fft, n_mels, fmax),
                          librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmax=fmax))
    assert np.array_equal(_window(n_fft), scipy.signal.get_window("hann", n_fft, fftbins=True).astype(np.float32))
    power = (np.random.default_rng(n_mels).random((n_mels, 300)) ** 4 * 10).astype(np.float32)
    power[:, :5] = 0.0  # silence: the amin floor and the top_db clip both act
    for ref in (np.max, 3.7):
        assert np.array_equal(power_to_db(power, ref, 80.0), librosa.power_to_db(power, ref=ref, top_db=80.0))


def test_a_spectrogram_worker_imports_neither_librosa_nor_scipy_signal(clips):
    import subprocess
    import sys

    probe = (f"import sys; from sonufy_model.audio import analyse, MelParams; analyse({str(clips['high'])!r}, "
             "MelParams()); print(sorted(m for m in ('librosa', 'scipy.signal') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_stereo_is_the_mean_of_its_channels(tmp_path):
    from sonufy_model.audio import _downmix

    rng = np.random.default_rng(5)
    for channels in (2, 3):
        samples = rng.uniform(-1, 1, (10_000, channels)).astype(np.float32)
        # The same bits as the matrix-vector product that any channel count can use.
        np.testing.assert_array_equal(_downmix(samples), samples @ np.full(channels, 1 / channels, np.float32))
        np.testing.assert_allclose(_downmix(samples), samples.mean(axis=1), atol=1e-6)
    # A stereo mp3 with different channels, decoded and resampled: librosa.load's mono.
    import librosa

    path = tmp_path / "stereo.mp3"
    sf.write(path, np.stack([_tone(30.0, 44100, 440.0), _tone(30.0, 44100, 2500.0, seed=1)], axis=1), 44100,
             format="MP3")
    clip, _ = load_excerpt(path, PARAMS)
    y, _ = librosa.load(path, sr=PARAMS.sample_rate, duration=PARAMS.clip_seconds)
    n = min(y.size, clip.size)
    assert np.abs(clip[:n] - y[:n]).max() < 1e-3 and np.abs(clip[:n]).max() > 0.1


def test_absolute_level_keeps_loudness_and_peak_level_hides_it(clips):
    clip, _ = load_excerpt(clips["song"], PARAMS)
    softer = clip * np.float32(10 ** (-12 / 20))  # 12 dB down
    absolute = MelParams()
    low, high = ABSOLUTE_RANGE_DBFS
    shift = scaled_mel(clip, absolute) - scaled_mel(softer, absolute)
    # Every value above the floor moves down by 12 dB on the 120 dB scale.
    assert np.median(shift) == pytest.approx(12 / (high - low), abs=0.005)
    # A full-scale sine peaks at 0 dBFS: 114/120 of the way up.
    t = np.arange(PARAMS.clip_samples, dtype=np.float32) / PARAMS.sample_rate
    sine = np.sin(2 * np.pi * 1000 * t).astype(np.float32)
    assert scaled_mel(sine, absolute).max() == pytest.approx(-low / (high - low), abs=0.01)
    peak = MelParams(level="peak")
    assert np.abs(scaled_mel(clip, peak) - scaled_mel(softer, peak)).max() < 0.01
    with pytest.raises(ValueError, match="level"):
        MelParams(level="loud")


def test_sets_recorded_before_level_existed_keep_their_ids():
    # The seed's default set id, as stores made before the level option know it.
    legacy = {k: v for k, v in MelParams(excerpts=1, placement="middle").to_dict().items() if k != "level"}
    stored = MelParams.from_stored(legacy)
    assert stored.level == "peak" and stored.set_id == "mel-128x512-7d0b09a328"
    assert MelParams().set_id != stored.set_id
    assert MelParams.from_stored(MelParams().to_dict()) == MelParams()


def test_spectrogram_shape_range_and_seed_parameters(clips):
    [(spectrogram, stats)] = analyse(clips["low"], PARAMS)
    assert spectrogram.shape == (128, 512) and spectrogram.dtype == np.float32
    assert 0.0 <= spectrogram.min() and spectrogram.max() <= 1.0
    # 110 Hz sits in the lowest mel bands (fmax 8 kHz spreads 128 bands over 0-8 kHz).
    loudest_band = int(spectrogram.mean(axis=1).argmax())
    assert loudest_band < 10
    assert spectrogram[loudest_band].mean() > spectrogram[100:].mean() + 0.3
    assert stats["silent_share"] == 0.0 and stats["non_finite"] == 0


def test_long_files_are_analysed_on_an_excerpt_from_the_middle(clips):
    clip, duration = load_excerpt(clips["song"], PARAMS)
    assert duration == pytest.approx(30.0, abs=0.01)
    spectrum = np.abs(np.fft.rfft(clip))
    freqs = np.fft.rfftfreq(clip.size, 1 / PARAMS.sample_rate)
    assert freqs[spectrum.argmax()] == pytest.approx(2000, abs=5)


def test_by_default_a_song_is_analysed_on_two_excerpts_spread_over_it(clips):
    default = MelParams()
    # The 90 s song: 220 Hz, then 2 kHz in its middle third, then 220 Hz.
    assert excerpt_starts(90.0, default) == [15.0, 45.0]
    excerpts = load_excerpts(clips["song"], default)
    assert len(excerpts) == 2 and all(duration == pytest.approx(30.0, abs=0.01) for _, duration in excerpts)
    # Each straddles a change of the song: the first ends in 2 kHz, the second starts in it.
    first, second = (clip for clip, _ in excerpts)
    half = first.size // 2
    assert _dominant_hz(first[:half]) == pytest.approx(220, abs=5)
    assert _dominant_hz(first[half:]) == pytest.approx(2000, abs=5)
    assert _dominant_hz(second[:half]) == pytest.approx(2000, abs=5)
    assert _dominant_hz(second[half:]) == pytest.approx(220, abs=5)
    assert default.set_id != PARAMS.set_id
    # A preview a few codec frames longer than a clip is one excerpt, as is a
    # file whose excerpts would overlap by more than three quarters.
    assert excerpt_starts(30.05, default) == [0.0]
    assert excerpt_starts(35.0, default) == [0.0]
    assert excerpt_starts(40.0, default) == [0.0, 10.0]


def _dominant_hz(clip: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(clip))
    return float(np.fft.rfftfreq(clip.size, 1 / PARAMS.sample_rate)[spectrum.argmax()])


def test_several_excerpts_placed_as_configured(clips):
    # The 90 s song: 220 Hz, then 2 kHz in its middle third, then 220 Hz.
    spread = load_excerpts(clips["song"], MelParams(excerpts=3, placement="spread"))
    assert [round(_dominant_hz(clip)) for clip, _ in spread] == [220, 2000, 220]
    assert all(duration == pytest.approx(30.0, abs=0.01) for _, duration in spread)
    middle = load_excerpts(clips["song"], MelParams(excerpts=3, placement="middle"))
    assert [round(_dominant_hz(clip)) for clip, _ in middle] == [220, 2000, 220]
    assert excerpt_starts(90.0, MelParams(excerpts=3, placement="middle")) == [0.0, 30.0, 60.0]
    assert excerpt_starts(100.0, MelParams(excerpts=2, placement="spread")) == pytest.approx([18.333, 51.667])
    # A preview is one clip long: analysed whole, once, whatever the setting.
    assert len(load_excerpts(clips["low"], MelParams(excerpts=3))) == 1
    assert MelParams(excerpts=3).set_id != PARAMS.set_id
    with pytest.raises(ValueError, match="placement"):
        MelParams(placement="random")


def test_undecodable_file_names_itself(clips, tmp_path):
    with pytest.raises(AudioDecodeError, match="garbage.mp3"):
        load_excerpt(clips["garbage"], PARAMS)
    # Not libsndfile's "does not exist or is not a regular file (possibly a pipe?)" for a file that is there.
    empty = tmp_path / "empty.mp3"
    empty.touch()
    with pytest.raises(AudioDecodeError, match=r"empty.mp3: the file is empty$"):
        load_excerpt(empty, PARAMS)
    junk = tmp_path / "junk.mp3"
    junk.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(AudioDecodeError, match=r"junk.mp3: does not decode as audio \(not an audio format"):
        load_excerpt(junk, PARAMS)


def test_a_few_files_are_converted_here_unless_the_workers_already_run(clips):
    # Starting worker processes costs more than converting a nightly's few
    # new files; a pool already running (a build's) is used whatever the batch.
    files = pl.DataFrame({"track_id": list(clips), "path": [str(p) for p in clips.values()]})
    assert files.height < spectrograms.MIN_FILES_TO_START_WORKERS
    spectrograms.shutdown_pools()
    batch = spectrograms.convert(files, PARAMS, workers=3)
    assert batch.track_ids == ["low", "high", "silent", "short", "song"]
    assert not spectrograms.workers_running(3)
    spectrograms.start_workers(3)
    assert spectrograms.workers_running(3)
    assert np.array_equal(spectrograms.convert(files, PARAMS, workers=3).spectrograms, batch.spectrograms)
    spectrograms.shutdown_pools()
    assert not spectrograms.workers_running(3)


def test_convert_in_parallel_equals_serial_and_reports_bad_files(clips, tmp_path):
    files = pl.DataFrame({"track_id": list(clips), "path": [str(p) for p in clips.values()]})
    serial = spectrograms.convert(files, PARAMS, workers=1)
    spectrograms.start_workers(2)  # five files: a pool only if one runs
    parallel = spectrograms.convert(files, PARAMS, workers=2)
    assert serial.track_ids == parallel.track_ids == ["low", "high", "silent", "short", "song"]
    assert serial.excerpts == [0, 0, 0, 0, 0]
    assert np.array_equal(serial.spectrograms, parallel.spectrograms)
    assert serial.failures["track_id"].to_list() == ["garbage"]
    assert "garbage.mp3" in serial.failures["reason"][0]

    index = spectrograms.write_shard(serial, tmp_path, PARAMS.set_id)
    assert index["row"].to_list() == [0, 1, 2, 3, 4]
    assert not list(tmp_path.glob("*.tmp"))
    back = spectrograms.read_spectrograms(index.reverse())
    assert np.array_equal(back, serial.spectrograms[::-1])


def test_spectrogram_suite_names_the_tracks_and_the_expectation(clips):
    files = pl.DataFrame({"track_id": list(clips), "path": [str(p) for p in clips.values()]})
    batch = spectrograms.convert(files, PARAMS, workers=1)
    report = quality.check_spectrograms(batch.stats, PARAMS)
    reasons = dict(report.failures.iter_rows())
    assert set(reasons) == {"silent", "short"}
    assert "silent_share" in reasons["silent"] and "duration_s" in reasons["short"]
    report.raise_if_failed_share_above(0.5)  # 2 of 5: the batch goes on
    with pytest.raises(quality.DataQualityError, match="silent"):
        report.raise_if_failed_share_above(0.2)


def test_a_checked_batch_keeps_the_passing_tracks_and_every_failure_once(clips):
    files = pl.DataFrame({"track_id": list(clips), "path": [str(p) for p in clips.values()]})
    batch = spectrograms.convert(files, PARAMS, workers=1)
    report = quality.check_spectrograms(batch.stats, PARAMS)
    passing, failures = batch.checked(report.failures)
    assert passing.track_ids == ["low", "high", "song"]
    assert np.array_equal(passing.spectrograms, batch.spectrograms[[0, 1, 4]])
    assert failures["track_id"].to_list() == ["garbage", "silent", "short"], "undecodable first, then the suite's"
    # A track failing both ways is listed once, with the first reason.
    both = pl.concat([report.failures, pl.DataFrame({"track_id": ["garbage"], "reason": ["suite"]})])
    _, failures = batch.checked(both)
    assert failures.filter(pl.col("track_id") == "garbage")["reason"].to_list() == batch.failures["reason"].to_list()
    assert failures.height == 3


def test_nan_values_fail_the_suite():
    stats = pl.DataFrame(
        {"track_id": ["nan"], "excerpt": [0], "n_mels": [128], "n_frames": [512], "min_value": [float("nan")],
         "max_value": [1.0], "non_finite": [3], "silent_share": [0.0], "duration_s": [30.0]}
    )
    assert quality.check_spectrograms(stats, PARAMS).failures["track_id"].to_list() == ["nan"]


def test_precision_at_k_against_chance():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((4, 16))
    labels = np.repeat(np.arange(4), 10)
    clustered = centres[labels] + 0.1 * rng.standard_normal((40, 16))
    good = precision_at_k(clustered, labels, k=5)
    assert good["precision"] == 1.0
    assert good["chance"] == pytest.approx(9 / 39)
    noise = precision_at_k(rng.standard_normal((40, 16)), labels, k=5)
    assert noise["precision"] < 0.5
    # Excluding the own group (here: the label itself) leaves no same-label hit.
    assert precision_at_k(clustered, labels, k=5, exclude_groups=labels)["precision"] == 0.0


def test_excerpts_become_rows_and_their_vectors_are_averaged(clips):
    from sonufy_model.encoding import mean_per_track

    files = pl.DataFrame({"track_id": ["song", "low"], "path": [str(clips["song"]), str(clips["low"])]})
    batch = spectrograms.convert(files, MelParams(excerpts=3, placement="spread"), workers=1)
    assert list(zip(batch.track_ids, batch.excerpts)) == [("song", 0), ("song", 1), ("song", 2), ("low", 0)]
    assert batch.stats["excerpt"].to_list() == [0, 1, 2, 0]
    kept = batch.only({"song"})
    assert kept.track_ids == ["song"] * 3 and kept.spectrograms.shape[0] == 3

    per_clip = np.array([[1.0, 0.0], [3.0, 0.0], [5.0, 3.0], [7.0, 7.0]], dtype=np.float32)
    track_ids, means = mean_per_track(pl.Series(batch.track_ids), per_clip)
    assert track_ids.to_list() == ["song", "low"]
    assert means.tolist() == [[3.0, 1.0], [7.0, 7.0]]


def test_native_stderr_is_captured_and_given_back(capfd):
    import os

    with native_stderr_captured() as lines:
        os.write(2, b"Note: Trying to resync...\n")
    os.write(2, b"after\n")
    assert lines == ["Note: Trying to resync..."]
    assert capfd.readouterr().err == "after\n"  # fd 2 is the terminal's again, and only that reached it
