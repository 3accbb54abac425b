"""Seeds from a local audio file and from a catalog search, encoded on the fly.

A small latent space made the way the pipeline makes it: tracks found by
searching the stand-in, previews fetched from it over HTTP, spectrograms
computed and encoded with a real (small, untrained) autoencoder checkpoint,
standardised, promoted. Queries must land exactly where the catalog's own
tracks did, and write nothing.
"""

from __future__ import annotations

import json

import lightning as L
import numpy as np
import polars as pl
import pytest
import soundfile as sf
import torch

from flows.cli import main
from sonufy_demo.standin import StandIn, StandInConfig
from sonufy_demo.synth import PreviewCache
from sonufy_model import catalog, previews, query_audio
from sonufy_model.audio import AudioDecodeError, MelParams, analyse, to_uint8
from sonufy_model.encoding import encode_spectrograms
from sonufy_model.fusion import Fusion, fusion_path
from sonufy_model.model import TimeFreqAutoencoder
from sonufy_model.standardise import Standardiser
from sonufy_model.store import LATENT_DIM, Store
from sonufy_model.texture import block_level_features

N_CATALOG, N_SPACE = 12, 8  # the stand-in's tracks; the first N_SPACE are in the latent space


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    with StandIn(StandInConfig(n_tracks=N_CATALOG, cache_dir=tmp_path_factory.mktemp("standin-cache"))) as server:
        yield server


@pytest.fixture(scope="module")
def space(standin, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("space")
    store = Store(root / "space.duckdb")
    settings = standin.service_settings()
    wanted = [track.track_id for track in standin.catalog[:N_SPACE]]
    queries = [f"isrc:{track.isrc}" for track in standin.catalog[:N_SPACE]]
    tracks, _ = catalog.parse_search_pages(catalog.fetch_search_pages(settings, queries))
    tracks = tracks.filter(pl.col("track_id").is_in(wanted))
    store.upsert_tracks(tracks)
    fetched = previews.fetch_previews(tracks.select("track_id", "isrc", "preview_url", "artist", "title"),
                                      settings, root / "previews")
    assert fetched["error"].null_count() == N_SPACE
    params = MelParams()
    store.register_spectrogram_set(params.set_id, params.to_dict())
    torch.manual_seed(0)
    model = TimeFreqAutoencoder(filters=(4, 8, 16, 32)).eval()
    checkpoint = root / "model.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                "pytorch-lightning_version": L.__version__}, checkpoint)
    spectrograms = np.stack([to_uint8(analyse(path, params)[0][0]) for path in fetched["path"]])
    raw = encode_spectrograms(model, spectrograms)
    standardiser = Standardiser.fit(raw)
    # Fused with texture patterns, as the default model is (sonufy_model.fusion).
    texture = block_level_features(spectrograms, texture="blocks6")
    fusion = Fusion.fit(standardiser.transform(raw), texture, params.n_frames, pattern_set="blocks6")
    fusion.save(fusion_path(checkpoint))
    vectors = fusion.transform(standardiser.transform(raw), texture)
    store.register_model({
        "model_version": "tiny", "set_id": params.set_id, "config": {"texture": "blocks6"},
        "checkpoint": str(checkpoint),
        "epochs": 0, "train_mse": 0.0, "val_mse": 0.0, "n_train_tracks": N_SPACE, "n_val_tracks": 0,
        "train_seconds": 0.0, "latent_mean": standardiser.mean, "latent_scale": standardiser.scale,
    })
    store.record_embeddings(pl.DataFrame({"track_id": fetched["track_id"], "model_version": "tiny"}).with_columns(
        pl.Series("raw", raw, dtype=pl.Array(pl.Float32, LATENT_DIM)),
        pl.Series("vector", vectors, dtype=pl.Array(pl.Float32, LATENT_DIM)),
    ))
    store.promote("tiny")
    return {"store": store, "settings": settings, "previews": dict(zip(fetched["track_id"], fetched["path"])),
            "vectors": dict(zip(fetched["track_id"], vectors))}


def _written(store: Store) -> dict:
    return {**store.counts(), "previews_on_disk": len(list((store.path.parent / "previews").iterdir()))}


def test_a_catalog_tracks_own_file_lands_on_its_vector(space, standin):
    first = standin.catalog[0]
    seed = query_audio.seed_from_file(space["store"], space["previews"][first.track_id])
    assert seed.kind == "file" and seed.track_id is None and seed.warning is None
    np.testing.assert_allclose(seed.vector, space["vectors"][first.track_id], rtol=1e-4, atol=1e-4)
    rows = query_audio.recommend(space["store"], seed, k=3)
    assert rows["track_id"][0] == first.track_id and rows["cosine"][0] == pytest.approx(1.0, abs=1e-4)
    assert rows.columns[:8] == ["track_id", "artist", "title", "album", "preview_url", "cosine",
                                "time_similarity", "frequency_similarity"]


def test_a_search_hit_in_the_space_answers_with_its_stored_vector(space, standin):
    third = standin.catalog[2]
    seed = query_audio.seed_from_search(space["store"], space["settings"], f"isrc:{third.isrc}")
    assert (seed.kind, seed.track_id, seed.label) == ("search", third.track_id, f"{third.artist} - {third.title}")
    np.testing.assert_allclose(seed.vector, space["vectors"][third.track_id], rtol=1e-6)
    rows = query_audio.recommend(space["store"], seed, k=N_SPACE)
    assert third.track_id not in rows["track_id"].to_list() and rows.height == N_SPACE - 1


def test_a_search_hit_outside_the_space_is_fetched_and_encoded_and_nothing_is_written(space, standin):
    outside = standin.catalog[N_SPACE + 1]
    store = space["store"]
    before = _written(store)
    seed = query_audio.seed_from_search(store, space["settings"], f'artist:"{outside.artist}" track:"{outside.title}"')
    assert (seed.kind, seed.track_id, seed.label) == ("search", None, f"{outside.artist} - {outside.title}")
    # The preview the stand-in served is the one it rendered into its cache.
    served = PreviewCache(standin.config.cache_dir).path_for(outside)
    np.testing.assert_allclose(seed.vector, query_audio.encode_file(store, served), rtol=1e-5, atol=1e-5)
    rows = query_audio.recommend(store, seed, k=4)
    assert rows.height == 4 and rows["cosine"].is_sorted(descending=True)
    assert _written(store) == before


def test_bad_queries_are_named(space, tmp_path):
    store = space["store"]
    with pytest.raises(FileNotFoundError, match="missing.mp3: no such audio file"):
        query_audio.seed_from_file(store, tmp_path / "missing.mp3")
    garbage = tmp_path / "garbage.mp3"
    garbage.write_bytes(b"this is not audio" * 100)
    with pytest.raises(AudioDecodeError, match="garbage.mp3"):
        query_audio.seed_from_file(store, garbage)
    short = tmp_path / "short.wav"
    sf.write(short, np.sin(np.linspace(0, 2000, 22050)).astype(np.float32), 22050)
    with pytest.raises(AudioDecodeError, match=r"short.wav: only 1.0 s of audio"):
        query_audio.seed_from_file(store, short)
    with pytest.raises(query_audio.QueryError, match="'isrc:ZZ0000000000': no track found"):
        query_audio.seed_from_search(store, space["settings"], "isrc:ZZ0000000000")
    with pytest.raises(query_audio.QueryError, match="no such DuckDB file"):
        query_audio.seed_from_file(Store(tmp_path / "absent.duckdb"), short)
    empty = Store(tmp_path / "empty.duckdb")
    empty.apply_schema()
    with pytest.raises(query_audio.QueryError, match="no current model"):
        query_audio.seed_from_file(empty, short)


def test_silent_files_are_refused_and_noise_is_flagged_as_the_catalog_would(space, tmp_path):
    store, rate = space["store"], 22050
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(40 * rate, dtype=np.float32), rate)
    with pytest.raises(AudioDecodeError, match=r"silent.wav: not usable as a query: it is silent or nearly"):
        query_audio.seed_from_file(store, silent)
    # A tone at -70 dBFS is near-silence: refused the same way.
    quiet = tmp_path / "quiet.wav"
    sf.write(quiet, (10 ** (-70 / 20) * np.sin(np.arange(40 * rate) * 2 * np.pi * 440 / rate)).astype(np.float32),
             rate)
    with pytest.raises(AudioDecodeError, match=r"quiet.wav: .*100% of it is quieter than -60 dBFS"):
        query_audio.seed_from_file(store, quiet)
    # White noise is encoded, with a warning that its neighbours say little.
    noise = tmp_path / "noise.wav"
    sf.write(noise, (0.3 * np.random.default_rng(0).standard_normal(40 * rate)).astype(np.float32), rate)
    seed = query_audio.seed_from_file(store, noise)
    assert seed.warning is not None and "noise.wav sounds like noise" in seed.warning
    assert seed.to_dict()["warning"] == seed.warning and np.isfinite(seed.vector).all()
    # A song that starts with 35 s of silence: its silent excerpt is left out, the rest is used.
    song = tmp_path / "late.wav"
    tone = np.sin(np.arange(60 * rate) * 2 * np.pi * 330 / rate) * (1.2 + np.sin(np.arange(60 * rate) * 0.0003))
    audio = np.concatenate([np.zeros(35 * rate), 0.2 * tone]).astype(np.float32)
    sf.write(song, audio, rate)
    late = query_audio.seed_from_file(store, song)
    assert late.warning is None
    # It is the vector of its second excerpt alone (48.333 s to 78.333 s of 95 s).
    second = tmp_path / "second.wav"
    sf.write(second, audio[int(48.333 * rate): int(48.333 * rate) + 30 * rate], rate)
    alone = query_audio.seed_from_file(store, second).vector
    cosine = late.vector @ alone / np.linalg.norm(late.vector) / np.linalg.norm(alone)
    assert cosine > 0.999


def test_recommend_command_from_a_file_or_a_search(space, standin, capsys, tmp_path):
    db = str(space["store"].path)
    first = standin.catalog[0]
    assert main(["recommend", "--db", db, "--file", space["previews"][first.track_id], "-k", "2",
                 "--hub-reduction", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["seed_kind"] == "file" and out["hub_reduction"] is True
    assert out["recommendations"][0]["track_id"] == first.track_id
    assert 0 <= out["recommendations"][0]["mutual_proximity"] <= 1
    # The command starts its own stand-in: the same demo catalog when the size is the same.
    assert main(["recommend", "--db", db, "--search", f"isrc:{first.isrc}", "--tracks", str(N_CATALOG),
                 "-k", "3"]) == 0
    table = capsys.readouterr().out
    assert f"Sounds like: {first.artist} - {first.title}" in table and "rank" in table and "preview" in table
    # The model fuses texture: its two half-similarities are the encoder's and the texture's.
    header = next(line for line in table.splitlines() if "cosine" in line)
    assert "encoder" in header and "texture" in header and "frequency" not in header
    assert main(["recommend", "--db", db, "--file", str(tmp_path / "nope.flac")]) == 2
    assert "nope.flac: no such audio file" in capsys.readouterr().err
    assert main(["recommend", "--db", db, "--search", "isrc:ZZ0000000000", "--tracks", str(N_CATALOG)]) == 2
    assert "no track found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["recommend", "--db", db, first.track_id, "--search", "x"])
    assert "not allowed with" in capsys.readouterr().err


def test_a_damaged_mp3_query_gets_our_one_line_without_the_decoders_notes(space, capfd, tmp_path):
    junk = tmp_path / "junk.mp3"
    # MPEG frame sync bytes in noise: libmpg123 starts decoding, then prints
    # "Note: Illegal Audio-MPEG-Header ... Trying to resync" on fd 2.
    junk.write_bytes(b"\xff\xfb\x90\x00" + np.random.default_rng(0).bytes(5000))
    assert main(["recommend", "--db", str(space["store"].path), "--file", str(junk)]) == 2
    err = capfd.readouterr().err
    assert "junk.mp3: does not decode as audio" in err or "junk.mp3: not usable as a query" in err \
        or "junk.mp3: only" in err
    assert "Note:" not in err and "resync" not in err
    assert len(err.strip().splitlines()) == 1


def test_the_command_warns_of_noise_and_names_a_service_that_fails_it(space, standin, capsys, tmp_path, monkeypatch):
    db, rate = str(space["store"].path), 22050
    noise = tmp_path / "noise.wav"
    sf.write(noise, (0.3 * np.random.default_rng(1).standard_normal(40 * rate)).astype(np.float32), rate)
    assert main(["recommend", "--db", db, "--file", str(noise), "-k", "2"]) == 0
    said = capsys.readouterr()
    assert "warning: " in said.err and "noise.wav sounds like noise" in said.err and "rank" in said.out
    assert main(["recommend", "--db", db, "--file", str(noise), "-k", "2", "--json"]) == 0
    assert "sounds like noise" in json.loads(capsys.readouterr().out)["seed_warning"]
    # Spotify refusing the credentials: a bad setting, named, exit 2 and no traceback.
    monkeypatch.setenv("SPOTIFY_CLIENT_ID", standin.config.client_id)
    monkeypatch.setenv("SPOTIFY_CLIENT_SECRET", "not-the-secret")
    monkeypatch.setenv("SONUFY_SPOTIFY_API_BASE", standin.spotify_api_base)
    monkeypatch.setenv("SONUFY_SPOTIFY_ACCOUNTS_BASE", standin.spotify_accounts_base)
    assert main(["recommend", "--db", db, "--search", "isrc:ZZ0000000000", "--source", "spotify"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sonufy recommend: error: Spotify's accounts service") and "SPOTIFY_CLIENT_SECRET" in err
    assert "Traceback" not in err and "not-the-secret" not in err
    # Nothing listening there: the service failed us, exit 1, the cause named.
    monkeypatch.setenv("SPOTIFY_CLIENT_SECRET", standin.config.client_secret)
    monkeypatch.setenv("SONUFY_SPOTIFY_ACCOUNTS_BASE", "http://127.0.0.1:9")
    monkeypatch.setenv("SONUFY_SPOTIFY_MAX_WAIT_S", "1")
    assert main(["recommend", "--db", db, "--search", "isrc:ZZ0000000000", "--source", "spotify"]) == 1
    assert "cannot reach http://127.0.0.1:9" in capsys.readouterr().err
