"""The synthetic catalog and its audio: deterministic, Spotify-shaped, and audibly different per style."""

from __future__ import annotations

import collections
import datetime
import io
import itertools
import re

import numpy as np
import pytest
import soundfile

from sonufy_demo import synth

TODAY = datetime.date(2026, 3, 15)
SR = synth.SAMPLE_RATE


@pytest.fixture(scope="module")
def catalog() -> list[synth.CatalogTrack]:
    return synth.build_catalog(40, seed=0, today=TODAY)


@pytest.fixture(scope="module")
def clips(catalog) -> dict[int, np.ndarray]:
    return {track.index: synth.render_clip(track) for track in catalog}


def test_catalog_is_deterministic():
    assert synth.build_catalog(120, seed=3, today=TODAY) == synth.build_catalog(120, seed=3, today=TODAY)
    assert synth.build_catalog(120, seed=3, today=TODAY) != synth.build_catalog(120, seed=4, today=TODAY)


def test_every_style_is_present(catalog):
    assert len(synth.STYLES) >= 10
    assert len(set(synth.STYLES)) == len(synth.STYLES)
    assert {track.style for track in catalog} == set(synth.STYLES)
    smallest = synth.build_catalog(len(synth.STYLES), today=TODAY)
    assert {track.style for track in smallest} == set(synth.STYLES)


def test_identifiers_are_unique_and_well_formed(catalog):
    big = synth.build_catalog(3000, seed=1, today=TODAY)
    for tracks in (catalog, big):
        for name in ("track_id", "isrc", "deezer_id"):
            values = [getattr(track, name) for track in tracks]
            assert len(set(values)) == len(values), name
    for track in catalog:
        assert re.fullmatch(r"[0-9A-Za-z]{22}", track.track_id)
        assert re.fullmatch(r"[0-9A-Za-z]{22}", track.artist_id)
        assert re.fullmatch(r"[0-9A-Za-z]{22}", track.album_id)
        assert re.fullmatch(r"QZSN[0-9A-Z]\d{7}", track.isrc)
        assert track.isrc[5:7] == track.release_date[2:4]


def test_metadata_ranges(catalog):
    for track in catalog:
        assert 150_000 <= track.duration_ms <= 330_000
        assert 0 <= track.popularity <= 100
        assert track.title and track.artist and track.album
        assert datetime.date(1970, 1, 1) <= datetime.date.fromisoformat(track.release_date) <= TODAY


def test_artists_and_albums(catalog):
    assert len({track.artist_id for track in catalog}) == 2 * len(synth.STYLES)  # 40 tracks / 6 < 24
    assert len({track.artist_id for track in synth.build_catalog(600, today=TODAY)}) == 100
    assert len({track.artist_id for track in synth.build_catalog(7, today=TODAY)}) == 7

    names = {}
    for track in catalog:
        assert names.setdefault(track.artist, track.artist_id) == track.artist_id, "artist names are unique"

    big = synth.build_catalog(600, today=TODAY)
    albums = collections.defaultdict(list)
    for track in big:
        albums[track.album_id].append(track)
    albums_per_artist = collections.Counter(tracks[0].artist_id for tracks in albums.values())
    assert set(albums_per_artist.values()) <= {1, 2, 3}
    for tracks in albums.values():
        assert len({(t.artist_id, t.album, t.release_date, t.style) for t in tracks}) == 1
        assert sorted(t.track_number for t in tracks) == list(range(1, len(tracks) + 1))


def test_some_albums_are_new_releases(catalog):
    for tracks in (catalog, synth.build_catalog(2000, seed=5, today=TODAY)):
        new = {t.album_id for t in tracks if synth.is_new_release(t.release_date, TODAY)}
        old = {t.album_id for t in tracks} - new
        assert new
        assert len(new) < len(old)
        for track in tracks:
            if track.album_id in old:
                assert datetime.date.fromisoformat(track.release_date).year <= TODAY.year - 1


def test_clip_is_deterministic(catalog):
    track = catalog[3]
    np.testing.assert_array_equal(synth.render_clip(track), synth.render_clip(track))
    assert synth.preview_mp3(track) == synth.preview_mp3(track)


def test_clips_are_normalised_mono_float(clips):
    for clip in clips.values():
        assert clip.dtype == np.float32
        assert clip.shape == (int(synth.PREVIEW_SECONDS * SR),)
        assert np.all(np.isfinite(clip))
        assert 0.85 <= np.max(np.abs(clip)) <= 0.91
        assert np.sqrt(np.mean(clip**2)) > 0.02, "never silent"


def test_mp3_decodes_to_thirty_seconds_like_a_deezer_preview(catalog):
    data = synth.preview_mp3(catalog[0])
    samples, rate = soundfile.read(io.BytesIO(data))
    assert rate == 44100
    assert samples.ndim == 2 and samples.shape[1] == 2
    # 128 kbps CBR: about 16 kB a second.
    assert 0.9 * 16_000 * 30 <= len(data) <= 1.1 * 16_000 * 30.5
    assert 29.0 <= len(samples) / rate <= 31.0
    assert np.max(np.abs(samples)) > 0.5


def _band_profile(clip: np.ndarray, n_fft: int = 2048, hop: int = 1024, n_bands: int = 40) -> np.ndarray:
    """Mean log energy in mel-spaced bands (dB below the loudest band-frame, floored at -80, divided by 10)."""
    frames = np.lib.stride_tricks.sliding_window_view(clip, n_fft)[::hop] * np.hanning(n_fft)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    mel_edges = np.linspace(2595 * np.log10(1 + 30 / 700), 2595 * np.log10(1 + 8000 / 700), n_bands + 1)
    edges_hz = 700 * (10 ** (mel_edges / 2595) - 1)
    bands = np.add.reduceat(power, np.searchsorted(np.fft.rfftfreq(n_fft, 1 / SR), edges_hz)[:-1], axis=1)
    peak = bands.max()
    return np.log10(np.maximum(bands, peak * 1e-8) / peak).mean(axis=0)


def test_styles_differ_more_than_tracks_of_one_artist(catalog, clips):
    profiles = {index: _band_profile(clip) for index, clip in clips.items()}
    by_style = collections.defaultdict(list)
    for track in catalog:
        by_style[track.style].append(track)
    for style, tracks in by_style.items():
        same_artist = [
            np.linalg.norm(profiles[a.index] - profiles[b.index])
            for a, b in itertools.combinations(tracks, 2)
            if a.artist_id == b.artist_id
        ]
        other_styles = [
            np.linalg.norm(profiles[a.index] - profiles[b.index])
            for a in tracks
            for b in catalog
            if b.style != style
        ]
        assert same_artist, f"{style}: the 40-track catalog has an artist with two tracks in every style"
        assert max(same_artist) < min(other_styles), style


def test_preview_cache_renders_once(tmp_path, catalog, monkeypatch):
    cache = synth.PreviewCache(tmp_path / "previews")
    track = catalog[1]
    first = cache.get(track)
    assert first == synth.preview_mp3(track)
    [cached] = (tmp_path / "previews").iterdir()
    assert track.track_id in cached.name and synth.SYNTH_VERSION in cached.name

    def render_again(_track):
        raise AssertionError("a cached preview was rendered again")

    monkeypatch.setattr(synth, "preview_mp3", render_again)
    assert synth.PreviewCache(tmp_path / "previews").get(track) == first
    assert [path.name for path in (tmp_path / "previews").iterdir()] == [cached.name], "no temp files left"
