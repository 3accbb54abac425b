"""Deterministic synthetic music and the catalog that describes it.

The Sonufy demo needs a music catalog and 30-second previews without touching
Spotify or Deezer. This module invents both: :func:`build_catalog` makes
Spotify-shaped metadata (ids, ISRCs, artists, albums, release dates) and
:func:`render_clip` turns any catalog entry into audio.

The audio is built so that a model trained on mel spectrograms has something
real to learn: each style has its own tempo, drum pattern, bass line, harmonic
timbre, noise texture, brightness and echo; each artist varies its style
(tempo, key, timbre, pattern mutations) and each track varies its artist
(melody, chord progression, slight tempo). Tracks of one artist therefore sound
closer to each other than to other artists of the style, and styles are far
apart.

Everything is a pure function of the catalog seed and the track's identity, so
two runs produce byte-identical catalogs and clips.
"""

from __future__ import annotations

import datetime
import hashlib
import math
import os
import random
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import lameenc
import numpy as np
import soxr

__all__ = [
    "MAX_CATALOG_TRACKS",
    "NEW_RELEASE_DAYS",
    "PREVIEW_SECONDS",
    "SAMPLE_RATE",
    "STYLES",
    "SYNTH_VERSION",
    "CatalogTrack",
    "PreviewCache",
    "build_catalog",
    "build_compilations",
    "encode_mp3",
    "build_new_releases",
    "is_new_release",
    "preview_mp3",
    "render_clip",
]

#: Bump whenever the rendered audio changes, so stale cached previews are not reused.
SYNTH_VERSION = "2"  # 2: previews are 44.1 kHz stereo 128 kbps, as Deezer serves them
SAMPLE_RATE = 22050
PREVIEW_SECONDS = 30.0
#: Spotify's ``tag:new`` covers albums released in the last two weeks.
NEW_RELEASE_DAYS = 14
#: ISRC designation codes are 5 digits; the registrant's last letter changes every
#: 100,000 tracks, which keeps ISRCs unique up to this many tracks.
MAX_CATALOG_TRACKS = 2_100_000

_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_BASE36 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_NEW_RELEASE_SHARE = 0.03
_OLDEST_RELEASE = datetime.date(1970, 1, 1)


# --------------------------------------------------------------------------- hashing


def _stable_int(*parts: object) -> int:
    """A 128-bit integer from ``parts``; unlike ``hash()`` it is the same in every process."""
    text = "\x1f".join(str(part) for part in parts)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=16).digest(), "big")


def _base62_id(*parts: object) -> str:
    """A 22-character base62 id like Spotify's (62**22 > 2**128, so no information is lost)."""
    value = _stable_int(*parts)
    chars = []
    for _ in range(22):
        value, digit = divmod(value, 62)
        chars.append(_BASE62[digit])
    return "".join(chars)


# --------------------------------------------------------------------------- styles

_MAJOR = (0, 2, 4, 5, 7, 9, 11)
_MINOR = (0, 2, 3, 5, 7, 8, 10)
_DORIAN = (0, 2, 3, 5, 7, 9, 10)
_PHRYGIAN = (0, 1, 3, 5, 7, 8, 10)
_LYDIAN = (0, 2, 4, 6, 7, 9, 11)
_SLENDRO = (0, 2, 5, 7, 9)


@dataclass(frozen=True)
class _Kit:
    """One-shot drum synthesis parameters; the three samples are rendered once per clip."""

    kick_hz: tuple[float, float]  # pitch sweep of the kick, start and end
    kick_decay: float  # seconds
    snare_hz: float  # pitch of the snare's body
    snare_noise: float  # 0 = pure tone (rim), 1 = pure noise (clap)
    snare_decay: float
    hat_decay: float
    levels: tuple[float, float, float]  # kick, snare, hat
    claps: int = 1  # >1 layers the snare into a hand clap
    noise_hold: int = 1  # >1 holds each noise value for that many samples (8-bit noise)
    square_kick: bool = False  # chiptune kicks are square waves


@dataclass(frozen=True)
class _Style:
    """Everything that makes one style recognisable.

    Patterns are 16 steps (sixteenth notes) of one bar. Drum patterns use ``x``
    (hit) and ``o`` (ghost). Bass patterns use digits (scale steps above the
    current chord's root), ``.`` to hold the previous note and ``_`` for a rest.
    Chord rhythms use ``x`` for an onset; the chord lasts until the next onset
    or ``chord_gate`` steps when that is set.
    """

    name: str
    bpm: float
    swing: float  # share of a step by which off-beat sixteenths are late
    kick: str
    snare: str
    hat: str
    kit: _Kit | None
    scale: tuple[int, ...]
    progressions: tuple[tuple[int, ...], ...]  # chord roots as scale degrees
    bars_per_chord: int
    chord_size: int  # 3 = triads, 4 = sevenths; "power" voices ignore it
    bass: str
    bass_voice: str
    bass_midi: int  # MIDI note of the bass root before the artist's key shift
    chord_voice: str
    chord_rhythm: str
    chord_midi: int
    chord_gate: int
    arpeggio: bool  # play chord tones one at a time, upwards
    lead_voice: str | None
    lead_density: float  # chance of a note per lead step
    lead_step: int  # 1 = sixteenths, 2 = eighths
    lead_midi: int
    noise: str  # "none", "crackle", "wash" or "hiss"
    noise_level: float
    cutoff_hz: float  # master low-pass; 0 leaves the mix unfiltered
    echo_steps: int  # 0 = no echo
    echo_feedback: float
    drive: float  # tanh distortion applied to chords; 0 = clean
    mix: tuple[float, float, float, float]  # drums, bass, chords, lead
    explicit_share: float


_STYLE_TABLE: tuple[_Style, ...] = (
    _Style(
        name="ambient drone", bpm=60, swing=0.0, kick="", snare="", hat="", kit=None,
        scale=_LYDIAN, progressions=((0,), (0, 3), (0, 5, 3, 4)), bars_per_chord=2, chord_size=4,
        bass="0...............", bass_voice="drone", bass_midi=36,
        chord_voice="pad", chord_rhythm="x...............", chord_midi=60, chord_gate=0, arpeggio=False,
        lead_voice="bell", lead_density=0.12, lead_step=2, lead_midi=72,
        noise="wash", noise_level=0.10, cutoff_hz=2600, echo_steps=6, echo_feedback=0.6, drive=0.0,
        mix=(0.0, 0.7, 0.8, 0.35), explicit_share=0.0,
    ),
    _Style(
        name="techno", bpm=130, swing=0.0,
        kick="x...x...x...x...", snare="....x.......x...", hat="..x...x...x...x.",
        kit=_Kit(kick_hz=(160, 45), kick_decay=0.16, snare_hz=900, snare_noise=0.95, snare_decay=0.09,
                 hat_decay=0.08, levels=(1.0, 0.35, 0.5), claps=3),
        scale=_PHRYGIAN, progressions=((0,), (0, 5), (0, 1)), bars_per_chord=2, chord_size=3,
        bass="0.00.00.0.00.00.", bass_voice="acid", bass_midi=36,
        chord_voice="stab", chord_rhythm="......x.......x.", chord_midi=60, chord_gate=1, arpeggio=False,
        lead_voice=None, lead_density=0.0, lead_step=2, lead_midi=72,
        noise="none", noise_level=0.0, cutoff_hz=9000, echo_steps=3, echo_feedback=0.45, drive=0.0,
        mix=(1.0, 0.55, 0.35, 0.0), explicit_share=0.02,
    ),
    _Style(
        name="boom bap", bpm=90, swing=0.22,
        kick="x......xx.x.....", snare="....x.......x...", hat="x.x.x.x.x.x.x.x.",
        kit=_Kit(kick_hz=(120, 50), kick_decay=0.22, snare_hz=190, snare_noise=0.7, snare_decay=0.16,
                 hat_decay=0.035, levels=(1.0, 0.9, 0.35)),
        scale=_DORIAN, progressions=((0, 3), (1, 4), (0, 5, 3, 4)), bars_per_chord=1, chord_size=4,
        bass="0......0..4.....", bass_voice="sine", bass_midi=36,
        chord_voice="ep", chord_rhythm="x.......x..x....", chord_midi=57, chord_gate=0, arpeggio=False,
        lead_voice="ep", lead_density=0.2, lead_step=2, lead_midi=69,
        noise="crackle", noise_level=0.10, cutoff_hz=3800, echo_steps=0, echo_feedback=0.0, drive=0.0,
        mix=(1.0, 0.8, 0.45, 0.3), explicit_share=0.6,
    ),
    _Style(
        name="drum and bass", bpm=174, swing=0.0,
        kick="x.........x.....", snare="....x.......x...", hat="x.xxx.x.x.xxx.x.",
        kit=_Kit(kick_hz=(180, 55), kick_decay=0.12, snare_hz=230, snare_noise=0.6, snare_decay=0.12,
                 hat_decay=0.03, levels=(1.0, 0.95, 0.4)),
        scale=_MINOR, progressions=((0,), (0, 5), (0, 3, 5, 4)), bars_per_chord=2, chord_size=3,
        bass="0.......0...4...", bass_voice="reese", bass_midi=31,
        chord_voice="pad", chord_rhythm="x...............", chord_midi=60, chord_gate=0, arpeggio=False,
        lead_voice="sine", lead_density=0.25, lead_step=2, lead_midi=74,
        noise="hiss", noise_level=0.015, cutoff_hz=11000, echo_steps=3, echo_feedback=0.3, drive=0.0,
        mix=(1.0, 0.9, 0.3, 0.25), explicit_share=0.1,
    ),
    _Style(
        name="dub reggae", bpm=74, swing=0.12,
        kick="........x.......", snare="........x.......", hat="x.x.x.x.x.x.x.x.",
        kit=_Kit(kick_hz=(110, 48), kick_decay=0.25, snare_hz=1500, snare_noise=0.25, snare_decay=0.05,
                 hat_decay=0.025, levels=(1.0, 0.7, 0.25)),
        scale=_MINOR, progressions=((0, 3), (0, 6, 5, 4), (0, 5)), bars_per_chord=1, chord_size=3,
        bass="0..0..4...2.3...", bass_voice="sine", bass_midi=33,
        chord_voice="organ", chord_rhythm="..x...x...x...x.", chord_midi=60, chord_gate=1, arpeggio=False,
        lead_voice="organ", lead_density=0.15, lead_step=2, lead_midi=72,
        noise="hiss", noise_level=0.03, cutoff_hz=3200, echo_steps=6, echo_feedback=0.6, drive=0.0,
        mix=(0.8, 1.0, 0.4, 0.25), explicit_share=0.05,
    ),
    _Style(
        name="chiptune", bpm=150, swing=0.0,
        kick="x.......x.x.....", snare="....x.......x...", hat="..x...x...x...x.",
        kit=_Kit(kick_hz=(220, 60), kick_decay=0.08, snare_hz=300, snare_noise=0.9, snare_decay=0.07,
                 hat_decay=0.02, levels=(0.9, 0.6, 0.35), noise_hold=6, square_kick=True),
        scale=_MAJOR, progressions=((0, 5, 3, 4), (0, 3, 4, 4), (5, 3, 0, 4)), bars_per_chord=1, chord_size=3,
        bass="0.0.4.0.0.0.4.0.", bass_voice="triangle", bass_midi=45,
        chord_voice="square", chord_rhythm="xxxxxxxxxxxxxxxx", chord_midi=60, chord_gate=1, arpeggio=True,
        lead_voice="pulse", lead_density=0.7, lead_step=2, lead_midi=72,
        noise="none", noise_level=0.0, cutoff_hz=0, echo_steps=0, echo_feedback=0.0, drive=0.0,
        mix=(0.7, 0.6, 0.3, 0.45), explicit_share=0.0,
    ),
    _Style(
        name="piano ballad", bpm=68, swing=0.0, kick="", snare="", hat="", kit=None,
        scale=_MAJOR, progressions=((0, 4, 5, 3), (0, 5, 3, 4), (3, 4, 0, 0)), bars_per_chord=1, chord_size=3,
        bass="0.......4.......", bass_voice="piano", bass_midi=36,
        chord_voice="piano", chord_rhythm="x.x.x.x.x.x.x.x.", chord_midi=55, chord_gate=0, arpeggio=True,
        lead_voice="piano", lead_density=0.45, lead_step=2, lead_midi=72,
        noise="none", noise_level=0.0, cutoff_hz=7000, echo_steps=3, echo_feedback=0.2, drive=0.0,
        mix=(0.0, 0.6, 0.55, 0.6), explicit_share=0.0,
    ),
    _Style(
        name="metal", bpm=170, swing=0.0,
        kick="x.x.x.x.x.x.x.x.", snare="....x.......x...", hat="x...x...x...x...",
        kit=_Kit(kick_hz=(140, 60), kick_decay=0.07, snare_hz=240, snare_noise=0.65, snare_decay=0.14,
                 hat_decay=0.35, levels=(0.9, 1.0, 0.35)),
        scale=_PHRYGIAN, progressions=((0, 0, 1, 0), (0, 5, 6, 0), (0, 3, 1, 0)), bars_per_chord=1,
        chord_size=3,
        bass="0000000000000000", bass_voice="saw", bass_midi=28,
        chord_voice="power", chord_rhythm="xxxxxxxxxxxxxxxx", chord_midi=40, chord_gate=1, arpeggio=False,
        lead_voice=None, lead_density=0.0, lead_step=2, lead_midi=76,
        noise="none", noise_level=0.0, cutoff_hz=8000, echo_steps=0, echo_feedback=0.0, drive=6.0,
        mix=(0.8, 0.5, 1.0, 0.0), explicit_share=0.4,
    ),
    _Style(
        name="bossa nova", bpm=136, swing=0.0,
        kick="x..x....x..x....", snare="x..x..x...x..x..", hat="xxxxxxxxxxxxxxxx",
        kit=_Kit(kick_hz=(90, 55), kick_decay=0.18, snare_hz=1700, snare_noise=0.1, snare_decay=0.03,
                 hat_decay=0.02, levels=(0.7, 0.4, 0.15)),
        scale=_MAJOR, progressions=((1, 4, 0, 0), (0, 5, 1, 4), (3, 6, 2, 5)), bars_per_chord=1, chord_size=4,
        bass="0.....4.0.....4.", bass_voice="pluck", bass_midi=36,
        chord_voice="pluck", chord_rhythm="x..x..x...x..x..", chord_midi=52, chord_gate=0, arpeggio=False,
        lead_voice="flute", lead_density=0.35, lead_step=2, lead_midi=72,
        noise="none", noise_level=0.0, cutoff_hz=6000, echo_steps=0, echo_feedback=0.0, drive=0.0,
        mix=(0.6, 0.7, 0.6, 0.4), explicit_share=0.0,
    ),
    _Style(
        name="house", bpm=124, swing=0.1,
        kick="x...x...x...x...", snare="....x.......x...", hat="..x...x...x...x.",
        kit=_Kit(kick_hz=(130, 50), kick_decay=0.2, snare_hz=1100, snare_noise=0.9, snare_decay=0.12,
                 hat_decay=0.05, levels=(1.0, 0.6, 0.45), claps=3),
        scale=_DORIAN, progressions=((0, 3), (0, 4, 3, 4), (1, 4)), bars_per_chord=1, chord_size=4,
        bass="0..0..0.0..0..0.", bass_voice="square", bass_midi=36,
        chord_voice="organ", chord_rhythm="..x..x....x..x..", chord_midi=60, chord_gate=2, arpeggio=False,
        lead_voice="ep", lead_density=0.2, lead_step=2, lead_midi=72,
        noise="none", noise_level=0.0, cutoff_hz=8000, echo_steps=3, echo_feedback=0.25, drive=0.0,
        mix=(1.0, 0.7, 0.5, 0.25), explicit_share=0.05,
    ),
    _Style(
        name="synthwave", bpm=100, swing=0.0,
        kick="x.......x.......", snare="....x.......x...", hat="x.x.x.x.x.x.x.x.",
        kit=_Kit(kick_hz=(150, 50), kick_decay=0.18, snare_hz=200, snare_noise=0.8, snare_decay=0.3,
                 hat_decay=0.04, levels=(1.0, 0.9, 0.3)),
        scale=_MINOR, progressions=((0, 5, 2, 6), (0, 3, 4, 4), (5, 3, 0, 4)), bars_per_chord=1, chord_size=3,
        bass="0.0.0.0.0.0.0.0.", bass_voice="saw", bass_midi=36,
        chord_voice="supersaw", chord_rhythm="x...............", chord_midi=60, chord_gate=0, arpeggio=False,
        lead_voice="saw", lead_density=0.4, lead_step=2, lead_midi=72,
        noise="none", noise_level=0.0, cutoff_hz=5000, echo_steps=3, echo_feedback=0.45, drive=0.0,
        mix=(0.9, 0.6, 0.45, 0.35), explicit_share=0.05,
    ),
    _Style(
        name="gamelan", bpm=80, swing=0.0, kick="", snare="", hat="", kit=None,
        scale=_SLENDRO, progressions=((0,), (0, 2), (0, 3, 1, 2)), bars_per_chord=1, chord_size=3,
        bass="0.......3.......", bass_voice="gong", bass_midi=36,
        chord_voice="metallophone", chord_rhythm="x.x.x.x.x.x.x.x.", chord_midi=60, chord_gate=0, arpeggio=True,
        lead_voice="metallophone", lead_density=0.8, lead_step=1, lead_midi=72,
        noise="none", noise_level=0.0, cutoff_hz=9000, echo_steps=2, echo_feedback=0.3, drive=0.0,
        mix=(0.0, 0.6, 0.55, 0.4), explicit_share=0.0,
    ),
)

_STYLE_BY_NAME = {style.name: style for style in _STYLE_TABLE}
STYLES: tuple[str, ...] = tuple(style.name for style in _STYLE_TABLE)


# --------------------------------------------------------------------------- catalog


@dataclass(frozen=True)
class CatalogTrack:
    """One track of the synthetic catalog, with every field the stand-in services expose.

    ``seed`` drives the audio of this track; it is derived from ``track_id``, which
    in turn depends on the catalog seed, the track's position and its artist, so
    equal ids always mean equal audio (the preview cache relies on this).
    """

    index: int
    track_id: str
    isrc: str
    title: str
    artist: str
    artist_id: str
    album: str
    album_id: str
    release_date: str
    track_number: int
    duration_ms: int
    explicit: bool
    popularity: int
    style: str
    deezer_id: int
    seed: int


_ONSETS = ("b", "br", "ch", "d", "dr", "f", "g", "gr", "h", "j", "k", "kl", "l", "m", "n", "p", "pr",
           "r", "s", "sh", "st", "t", "tr", "v", "w", "z")
_VOWELS = ("a", "e", "i", "o", "u", "a", "e", "o", "ai", "ea", "ou", "io")
_CODAS = ("", "", "", "", "n", "r", "l", "s", "m", "x", "nd", "rk", "st")


def _word(rng: random.Random, syllables: int) -> str:
    """A pronounceable made-up word: consonant-vowel syllables with an optional final coda."""
    word = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(syllables))
    return (word + rng.choice(_CODAS)).capitalize()


def _artist_name(rng: random.Random) -> str:
    form = rng.random()
    if form < 0.35:
        return f"{_word(rng, rng.randint(1, 2))} {_word(rng, rng.randint(2, 3))}"
    if form < 0.6:
        return _word(rng, rng.randint(2, 3))
    if form < 0.8:
        return f"The {_word(rng, 2)}s"
    if form < 0.9:
        return f"DJ {_word(rng, 2)}"
    return f"{_word(rng, 2)} & the {_word(rng, 2)}s"


def _title(rng: random.Random, max_words: int) -> str:
    return " ".join(_word(rng, rng.randint(1, 3)) for _ in range(rng.randint(1, max_words)))


def is_new_release(release_date: str | datetime.date, today: datetime.date) -> bool:
    """Whether an album counts for Spotify's ``tag:new``: released in the last 14 days up to ``today``."""
    if isinstance(release_date, str):
        release_date = datetime.date.fromisoformat(release_date)
    return today - datetime.timedelta(days=NEW_RELEASE_DAYS) < release_date <= today


def _random_old_date(rng: random.Random, today: datetime.date) -> datetime.date:
    last = datetime.date(today.year - 1, 12, 31)
    return _OLDEST_RELEASE + datetime.timedelta(days=rng.randint(0, (last - _OLDEST_RELEASE).days))


@dataclass
class _AlbumPlan:
    """An album while the catalog is being built; its release date may still be moved to make it new."""

    album_id: str
    name: str
    release_date: datetime.date


def build_catalog(
    n_tracks: int,
    seed: int = 0,
    today: datetime.date | None = None,
    tracks_per_artist: int = 6,
) -> list[CatalogTrack]:
    """Invent a catalog of ``n_tracks`` tracks, deterministic for ``(n_tracks, seed, today)``.

    There are ``max(2 * len(STYLES), ceil(n_tracks / tracks_per_artist))`` artists
    (never more than tracks), assigned to styles round-robin so every style appears
    once ``n_tracks >= len(STYLES)``; track ``i`` belongs to artist ``i % n_artists``.
    Each artist has 1-3 albums. About 3 % of albums (at least one from 20 tracks
    up) were released in the 14 days before ``today``, so ``tag:new`` finds
    something; the others date from 1970 to last year.
    """
    if not 0 <= n_tracks <= MAX_CATALOG_TRACKS:
        raise ValueError(f"n_tracks must be in 0..{MAX_CATALOG_TRACKS}, got {n_tracks}")
    if tracks_per_artist < 1:
        raise ValueError("tracks_per_artist must be at least 1")
    today = today or datetime.date.today()
    n_artists = min(n_tracks, max(2 * len(STYLES), math.ceil(n_tracks / tracks_per_artist)))
    catalog_rng = random.Random(_stable_int("catalog", seed, n_tracks))

    artists: list[tuple[str, str, int]] = []  # (artist_id, name, base popularity)
    used_names: set[str] = set()
    for artist_index in range(n_artists):
        artist_rng = random.Random(_stable_int("artist", seed, artist_index))
        name = _artist_name(artist_rng)
        while name in used_names:
            name = _artist_name(artist_rng)
        used_names.add(name)
        artists.append((_base62_id("artist", seed, artist_index), name, artist_rng.randint(5, 85)))

    album_of_track: dict[int, tuple[_AlbumPlan, int]] = {}
    albums: list[_AlbumPlan] = []
    for artist_index, (artist_id, _name, _pop) in enumerate(artists):
        indices = list(range(artist_index, n_tracks, n_artists))
        n_albums = min(len(indices), catalog_rng.randint(1, 3))
        bounds = [round(k * len(indices) / n_albums) for k in range(n_albums + 1)]
        for album_number in range(n_albums):
            chunk = indices[bounds[album_number]:bounds[album_number + 1]]
            if catalog_rng.random() < _NEW_RELEASE_SHARE:
                released = today - datetime.timedelta(days=catalog_rng.randint(0, NEW_RELEASE_DAYS - 1))
            else:
                released = _random_old_date(catalog_rng, today)
            album = _AlbumPlan(
                album_id=_base62_id("album", artist_id, album_number, n_albums),
                name=_title(catalog_rng, 2),
                release_date=released,
            )
            albums.append(album)
            for position, index in enumerate(chunk, start=1):
                album_of_track[index] = (album, position)

    if n_tracks >= 20 and not any(is_new_release(album.release_date, today) for album in albums):
        fresh = catalog_rng.choice(albums)
        fresh.release_date = today - datetime.timedelta(days=catalog_rng.randint(0, NEW_RELEASE_DAYS - 1))

    catalog = []
    for index in range(n_tracks):
        artist_index = index % n_artists
        artist_id, artist_name, base_popularity = artists[artist_index]
        style = _STYLE_TABLE[artist_index % len(_STYLE_TABLE)]
        album, track_number = album_of_track[index]
        track_id = _base62_id("track", seed, index, artist_id)
        track_seed = _stable_int("audio", track_id) % 2**63
        track_rng = random.Random(track_seed)
        registrant = "SN" + _BASE36[15 + index // 100_000]
        catalog.append(
            CatalogTrack(
                index=index,
                track_id=track_id,
                isrc=f"QZ{registrant}{album.release_date.year % 100:02d}{index % 100_000:05d}",
                title=_title(track_rng, 3),
                artist=artist_name,
                artist_id=artist_id,
                album=album.name,
                album_id=album.album_id,
                release_date=album.release_date.isoformat(),
                track_number=track_number,
                duration_ms=track_rng.randint(150_000, 330_000),
                explicit=track_rng.random() < style.explicit_share,
                popularity=max(0, min(100, base_popularity + track_rng.randint(-15, 15))),
                style=style.name,
                deezer_id=100_000_000 + (index * 7_919 + seed * 104_729) % 900_000_000,
                seed=track_seed,
            )
        )
    return catalog


#: Compilations come out this many days before ``today``: just outside ``tag:new``.
COMPILATION_AGE_DAYS = NEW_RELEASE_DAYS + 1


def build_compilations(
    catalog: list[CatalogTrack], share: float, seed: int = 0, today: datetime.date | None = None
) -> list[CatalogTrack]:
    """Re-releases of about ``share`` of ``catalog``'s tracks, on one compilation album per style.

    A re-release is the same recording on a later album (a best-of, an
    anniversary edition): a new track id, album, release date and track number,
    but the same ISRC, title, artist, duration and audio (the same ``seed``).
    Only tracks released before the compilation are picked, so the original is
    always the earlier release. ``build_catalog`` is left as it was: these come
    in addition, deterministic for ``(catalog, share, seed, today)``.
    """
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share must be in [0, 1], got {share}")
    today = today or datetime.date.today()
    released = today - datetime.timedelta(days=COMPILATION_AGE_DAYS)
    picked: dict[str, list[CatalogTrack]] = {}
    for track in catalog:
        chance = _stable_int("compilation", seed, track.isrc) % 1_000_000 / 1_000_000
        if chance < share and datetime.date.fromisoformat(track.release_date) < released:
            picked.setdefault(track.style, []).append(track)
    compilations = []
    index = len(catalog)
    for style in STYLES:
        album_id = _base62_id("compilation", seed, style)
        for track_number, original in enumerate(picked.get(style, []), start=1):
            compilations.append(
                CatalogTrack(
                    index=index,
                    track_id=_base62_id("reissue", seed, original.track_id),
                    isrc=original.isrc,
                    title=original.title,
                    artist=original.artist,
                    artist_id=original.artist_id,
                    album=f"{style.title()} Essentials",
                    album_id=album_id,
                    release_date=released.isoformat(),
                    track_number=track_number,
                    duration_ms=original.duration_ms,
                    explicit=original.explicit,
                    popularity=max(0, original.popularity - 10),
                    style=style,
                    deezer_id=original.deezer_id,
                    seed=original.seed,
                )
            )
            index += 1
    return compilations


def build_new_releases(
    n_tracks: int, first_index: int, seed: int = 0, today: datetime.date | None = None
) -> list[CatalogTrack]:
    """``n_tracks`` tracks by new artists, all released ``today``: what a catalog gains overnight.

    Deterministic for ``(n_tracks, first_index, seed, today)``. Track ids,
    ISRCs and Deezer ids never meet those of the catalog they extend (whose
    tracks and compilations take the indices below ``first_index``); Spotify's
    ``tag:new`` finds every one of them.
    """
    today = today or datetime.date.today()
    fresh = build_catalog(n_tracks, seed=_stable_int("new releases", seed) % 2**31, today=today)
    return [
        replace(
            track,
            index=first_index + number,
            isrc=f"QZNWR{today.year % 100:02d}{number % 100_000:05d}",
            release_date=today.isoformat(),
            deezer_id=100_000_000 + ((first_index + number) * 7_919 + seed * 104_729) % 900_000_000,
        )
        for number, track in enumerate(fresh)
    ]


# --------------------------------------------------------------------------- sound design


@dataclass(frozen=True)
class _Variation:
    """The concrete parameters of one track: its style, bent by its artist, bent by itself."""

    bpm: float
    key: int  # semitones added to every MIDI note of the style
    brightness: float  # scales harmonic content and filter cutoffs of the voices
    detune_cents: float
    cutoff_hz: float
    echo_feedback: float
    kick: str
    snare: str
    hat: str
    kick_pitch: float
    kick_decay: float
    progression: tuple[int, ...]
    motif: tuple[tuple[int, int, int], ...]  # (step within two bars, gate in steps, scale degree)


def _mutate(pattern: str, rng: random.Random, flips: int) -> str:
    """Toggle ``flips`` steps of a drum pattern (never the downbeat) to give an artist its own groove."""
    if not pattern:
        return pattern
    steps = list(pattern)
    for _ in range(flips):
        position = rng.randrange(1, len(steps))
        steps[position] = "o" if steps[position] == "." else "."
    return "".join(steps)


def _motif(style: _Style, rng: random.Random) -> tuple[tuple[int, int, int], ...]:
    """A two-bar melody: a random walk over the scale, repeated through the clip."""
    if style.lead_voice is None:
        return ()
    onsets = [step for step in range(0, 32, style.lead_step) if rng.random() < style.lead_density]
    if not onsets:
        onsets = [0]
    degree = rng.randint(0, len(style.scale))
    notes = []
    for position, step in enumerate(onsets):
        degree = min(2 * len(style.scale), max(0, degree + rng.choice((-2, -1, -1, 0, 1, 1, 2))))
        following = onsets[position + 1] if position + 1 < len(onsets) else 32
        notes.append((step, min(following - step, 4), degree))
    return tuple(notes)


def _variation(track: CatalogTrack, style: _Style) -> _Variation:
    artist_rng = random.Random(_stable_int("artist-sound", track.artist_id))
    track_rng = random.Random(track.seed)
    return _Variation(
        bpm=style.bpm * artist_rng.uniform(0.95, 1.05) * track_rng.uniform(0.98, 1.02),
        key=artist_rng.randint(-5, 6),
        brightness=artist_rng.uniform(0.75, 1.3),
        detune_cents=artist_rng.uniform(4.0, 14.0),
        cutoff_hz=style.cutoff_hz * artist_rng.uniform(0.8, 1.25),
        echo_feedback=style.echo_feedback * artist_rng.uniform(0.8, 1.1),
        kick=_mutate(style.kick, artist_rng, artist_rng.randint(0, 1)),
        snare=_mutate(style.snare, artist_rng, artist_rng.randint(0, 1)),
        hat=_mutate(style.hat, artist_rng, artist_rng.randint(1, 2)),
        kick_pitch=artist_rng.uniform(0.9, 1.1),
        kick_decay=artist_rng.uniform(0.8, 1.2),
        progression=track_rng.choice(style.progressions),
        motif=_motif(style, track_rng),
    )


def _midi_hz(note: float) -> float:
    return 440.0 * 2.0 ** ((note - 69) / 12)


def _degree_midi(scale: tuple[int, ...], root_midi: int, degree: int) -> int:
    octave, step = divmod(degree, len(scale))
    return root_midi + 12 * octave + scale[step]


def _time(n: int, sr: int) -> np.ndarray:
    return np.arange(n, dtype=np.float32) / np.float32(sr)


def _gate_envelope(n: int, gate: int, sr: int, attack_s: float) -> np.ndarray:
    """Linear attack, full level until ``gate``, linear release to zero at ``n``."""
    envelope = np.ones(n, dtype=np.float32)
    attack = min(n, max(1, int(attack_s * sr)))
    envelope[:attack] = np.linspace(0.0, 1.0, attack, dtype=np.float32)
    if gate < n:
        envelope[gate:] *= np.linspace(1.0, 0.0, n - gate, dtype=np.float32)
    return envelope


def _cycles(freq: float, t: np.ndarray, phase: float = 0.0) -> np.ndarray:
    """Position within the waveform's cycle, in [0, 1); ``x - floor(x)`` is much faster than ``% 1``."""
    cycles = np.float32(freq) * t + np.float32(phase)
    return cycles - np.floor(cycles)


def _saw(freq: float, t: np.ndarray, phase: float = 0.0) -> np.ndarray:
    return 2.0 * _cycles(freq, t, phase) - 1.0


def _one_pole_lowpass(x: np.ndarray, cutoff_hz: float, sr: int) -> np.ndarray:
    from scipy import signal  # here, not at the top: the stand-in serving cached previews never filters

    coefficient = 1.0 - math.exp(-2.0 * math.pi * min(cutoff_hz, 0.45 * sr) / sr)
    return signal.lfilter([coefficient], [1.0, coefficient - 1.0], x).astype(np.float32)


def _karplus_strong(freq: float, n: int, sr: int, rng: np.random.Generator, brightness: float) -> np.ndarray:
    """A plucked string: a noise burst circulating in a delay line through an averaging filter.

    The recursion y[i] = g * (y[i-P] + y[i-P-1]) / 2 only looks one period back,
    so it is computed a whole period at a time instead of sample by sample.
    """
    period = max(2, int(round(sr / freq - 0.5)))
    n_periods = -(-n // period)
    buffer = np.zeros(n_periods * period + 1, dtype=np.float32)  # buffer[i + 1] holds y[i]; buffer[0] is y[-1]
    burst = rng.uniform(-1.0, 1.0, period).astype(np.float32)
    buffer[1:period + 1] = _one_pole_lowpass(burst, 2500.0 * brightness, sr)
    gain = np.float32(0.5 * 0.996)
    for start in range(period, n_periods * period, period):
        buffer[start + 1:start + period + 1] = gain * (
            buffer[start - period + 1:start + 1] + buffer[start - period:start]
        )
    return buffer[1:n + 1]


def _note(voice: str, freq: float, gate: int, sr: int, var: _Variation, rng: np.random.Generator) -> np.ndarray:
    """One note of ``voice`` at ``freq`` held for ``gate`` samples, including its release tail."""
    bright = var.brightness
    if voice in ("sine", "drone"):
        release = 0.08 if voice == "sine" else 2.0
        n = gate + int(release * sr)
        t = _time(n, sr)
        tone = np.sin(2 * np.pi * freq * t) + 0.15 * bright * np.sin(4 * np.pi * freq * t)
        if voice == "drone":
            tone += 0.5 * np.sin(2 * np.pi * freq * 1.5 * t + 0.5 * np.sin(2 * np.pi * 0.1 * t))
        return tone * _gate_envelope(n, gate, sr, 0.005 if voice == "sine" else 1.5)
    if voice in ("pad", "supersaw", "saw", "reese"):
        n_saws, attack, release, cutoff = {
            "pad": (3, 0.6, 1.0, 1400.0),
            "supersaw": (5, 0.05, 0.3, 3500.0),
            "saw": (2, 0.01, 0.08, 2800.0),
            "reese": (2, 0.01, 0.1, 500.0),
        }[voice]
        n = gate + int(release * sr)
        t = _time(n, sr)
        spread = np.linspace(-1.0, 1.0, n_saws) if n_saws > 1 else np.zeros(1)
        tone = sum(
            _saw(freq * 2.0 ** (offset * var.detune_cents / 1200), t, phase=0.37 * k)
            for k, offset in enumerate(spread)
        ) / n_saws
        tone = _one_pole_lowpass(_one_pole_lowpass(tone, cutoff * bright, sr), cutoff * bright * 1.5, sr)
        return tone * _gate_envelope(n, gate, sr, attack)
    if voice == "power":
        # One palm-muted string of a power chord; the chord is distorted as a whole afterwards.
        n = gate + int(0.03 * sr)
        t = _time(n, sr)
        tone = (_saw(freq, t) + _saw(freq * 2.0 ** (var.detune_cents / 1200), t, phase=0.5)) * np.exp(-t / 0.15)
        return _one_pole_lowpass(tone, 2500.0 * bright, sr) * _gate_envelope(n, gate, sr, 0.002)
    if voice == "acid":
        # A saw whose upper harmonics die first: an additive stand-in for a closing filter sweep.
        n = gate + int(0.03 * sr)
        t = _time(n, sr)
        tone = sum(
            np.sin(2 * np.pi * k * freq * t) * np.exp(-t * (6.0 + 14.0 * k / bright)) / k
            for k in range(1, 10)
            if k * freq < 0.45 * sr
        )
        return tone * _gate_envelope(n, gate, sr, 0.003)
    if voice in ("square", "pulse", "triangle"):
        n = gate + int(0.01 * sr)
        phase = _cycles(freq, _time(n, sr))
        if voice == "triangle":
            tone = np.round((2.0 * np.abs(2.0 * phase - 1.0) - 1.0) * 7.5) / 7.5  # the NES's 4-bit triangle
        else:
            duty = 0.5 if voice == "square" else 0.25
            tone = np.where(phase < duty, 0.5, -0.5).astype(np.float32)
        return tone * _gate_envelope(n, gate, sr, 0.002)
    if voice == "ep":
        # Two-operator FM electric piano: the bell-like attack fades into a sine.
        n = gate + int(0.3 * sr)
        t = _time(n, sr)
        index = 1.6 * bright * np.exp(-t / 0.25)
        tone = np.sin(2 * np.pi * freq * t + index * np.sin(2 * np.pi * freq * t)) * np.exp(-t / 1.2)
        return tone * _gate_envelope(n, gate, sr, 0.003)
    if voice in ("organ", "stab"):
        ratios, amplitudes, decay = (
            ((1, 2, 3, 4, 6), (1.0, 0.6, 0.45, 0.3, 0.2), 0.4)
            if voice == "organ"
            else ((1, 2, 3, 5, 7), (1.0, 0.5, 0.5, 0.35, 0.3), 0.12)
        )
        n = gate + int(0.05 * sr)
        t = _time(n, sr)
        tone = sum(
            amplitude * bright ** k * np.sin(2 * np.pi * ratio * freq * t)
            for k, (ratio, amplitude) in enumerate(zip(ratios, amplitudes))
            if ratio * freq < 0.45 * sr
        )
        return tone * np.exp(-t / decay) * _gate_envelope(n, gate, sr, 0.004)
    if voice == "pluck":
        return _karplus_strong(freq, int(1.4 * sr), sr, rng, bright)
    if voice == "piano":
        # Struck-string partials: slightly sharp (inharmonic) and the higher, the shorter.
        n = int(1.8 * sr)
        t = _time(n, sr)
        tone = sum(
            np.sin(2 * np.pi * freq * k * math.sqrt(1 + 0.0004 * k * k) * t)
            * np.exp(-t * (0.8 + 0.9 * k) * (freq / 261.6) ** 0.3)
            * (bright ** (k - 1) / k ** 1.2)
            for k in range(1, 7)
            if k * freq < 0.45 * sr
        )
        return tone * _gate_envelope(n, n - int(0.05 * sr), sr, 0.002)
    if voice == "bell":
        n = int(2.5 * sr)
        t = _time(n, sr)
        index = 2.0 * bright * np.exp(-t / 0.4)
        return np.sin(2 * np.pi * freq * t + index * np.sin(2 * np.pi * 3.5 * freq * t)) * np.exp(-t / 0.9)
    if voice == "metallophone":
        # Gamelan keys: inharmonic partials, and a pair of keys tuned a few Hz apart (ombak, the beat).
        n = int(1.6 * sr)
        t = _time(n, sr)
        tone = sum(
            amplitude * (np.sin(2 * np.pi * ratio * freq * t) + np.sin(2 * np.pi * (ratio * freq + 4.0) * t))
            * np.exp(-t * (1.5 + 2.5 * ratio))
            for ratio, amplitude in ((1.0, 1.0), (2.76, 0.5 * bright), (5.4, 0.25 * bright))
        )
        return tone * _gate_envelope(n, n - int(0.05 * sr), sr, 0.001)
    if voice == "gong":
        n = int(4.0 * sr)
        t = _time(n, sr)
        index = 3.0 * np.exp(-t / 1.5)
        tone = np.sin(2 * np.pi * freq * t + index * np.sin(2 * np.pi * 1.41 * freq * t)) * np.exp(-t / 2.0)
        return tone * _gate_envelope(n, n - int(0.1 * sr), sr, 0.01)
    if voice == "flute":
        n = gate + int(0.1 * sr)
        t = _time(n, sr)
        vibrato = 0.004 * freq / 5.0 * np.sin(2 * np.pi * 5.0 * t)
        tone = np.sin(2 * np.pi * freq * t + 2 * np.pi * vibrato) + 0.2 * np.sin(4 * np.pi * freq * t)
        breath = _one_pole_lowpass(rng.uniform(-1, 1, n).astype(np.float32), 3000.0, sr)
        return (tone + 0.15 * bright * breath) * _gate_envelope(n, gate, sr, 0.08)
    raise ValueError(f"unknown voice {voice!r}")


def _drum_samples(kit: _Kit, var: _Variation, sr: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The kit's kick, snare and hat, each peak-normalised to its level."""

    def noise(n: int) -> np.ndarray:
        held = rng.uniform(-1.0, 1.0, -(-n // kit.noise_hold)).astype(np.float32)
        return np.repeat(held, kit.noise_hold)[:n]

    kick_decay = kit.kick_decay * var.kick_decay
    t = _time(int(kick_decay * 5 * sr), sr)
    start_hz, end_hz = (hz * var.kick_pitch for hz in kit.kick_hz)
    sweep = end_hz + (start_hz - end_hz) * np.exp(-t / 0.025)
    body = np.sin(2 * np.pi * np.cumsum(sweep) / sr)
    if kit.square_kick:
        body = np.sign(body)
    kick = body * np.exp(-t / kick_decay)
    click = int(0.003 * sr)
    kick[:click] += 0.3 * noise(click)

    t = _time(int(kit.snare_decay * 5 * sr) + 2 * int(0.011 * sr), sr)
    crack = np.diff(noise(len(t) + 1))  # differencing whitens the noise towards the highs
    tone = np.sin(2 * np.pi * kit.snare_hz * t) * np.exp(-t / (0.6 * kit.snare_decay))
    hit = ((1 - kit.snare_noise) * tone + kit.snare_noise * crack) * np.exp(-t / kit.snare_decay)
    snare = hit.copy()
    for layer in range(1, kit.claps):
        offset = layer * int(0.011 * sr)
        snare[offset:] += hit[: len(hit) - offset]

    t = _time(int(kit.hat_decay * 5 * sr), sr)
    hat = np.diff(np.diff(noise(len(t) + 2))) * np.exp(-t / kit.hat_decay)

    return {
        name: (sample / max(float(np.max(np.abs(sample))), 1e-9) * level).astype(np.float32)
        for name, sample, level in zip(("kick", "snare", "hat"), (kick, snare, hat), kit.levels)
    }


def _place(bus: np.ndarray, sample: np.ndarray, at: int, gain: float) -> None:
    """Mix ``sample`` into ``bus`` starting at sample ``at``, cut at the end of the bus."""
    stop = min(len(bus), at + len(sample))
    if stop > at:
        bus[at:stop] += np.float32(gain) * sample[: stop - at]


def _pattern_events(pattern: str, n_steps: int) -> list[tuple[int, int, str]]:
    """``(step, gate_steps, symbol)`` for every onset of a one-bar pattern repeated over ``n_steps``.

    A note lasts until the next symbol that is not ``.`` (``_`` is a rest).
    """
    events = []
    for step in range(n_steps):
        symbol = pattern[step % 16]
        if symbol in "._":
            continue
        gate = 1
        while step + gate < n_steps and pattern[(step + gate) % 16] == "." and gate < 16:
            gate += 1
        events.append((step, gate, symbol))
    return events


def _feedback_delay(x: np.ndarray, delay: int, feedback: float) -> np.ndarray:
    """y[i] = x[i] + feedback * y[i - delay], one delay-length block at a time."""
    y = x.copy()
    for start in range(delay, len(y), delay):
        stop = min(start + delay, len(y))
        y[start:stop] += np.float32(feedback) * y[start - delay:stop - delay]
    return y


def _noise_bed(kind: str, n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Vinyl crackle, a slow sea-like wash, or tape hiss, at unit scale."""
    if kind == "hiss":
        return rng.uniform(-1.0, 1.0, n).astype(np.float32) * np.float32(0.5)
    if kind == "wash":
        swell = 0.6 + 0.4 * np.sin(2 * np.pi * 0.08 * _time(n, sr) + rng.uniform(0, 2 * np.pi))
        return _one_pole_lowpass(rng.uniform(-1.0, 1.0, n).astype(np.float32), 700.0, sr) * 3.0 * swell
    if kind == "crackle":
        bed = rng.uniform(-0.08, 0.08, n).astype(np.float32)
        pops = rng.integers(0, n, size=int(n / sr * 30))
        bed[pops] += rng.choice((-1.0, 1.0), size=len(pops)) * rng.uniform(0.3, 1.0, len(pops))
        from scipy import signal

        return signal.lfilter([0.6, 0.3], [1.0, -0.3], bed).astype(np.float32)
    raise ValueError(f"unknown noise {kind!r}")


def render_clip(track: CatalogTrack, seconds: float = PREVIEW_SECONDS, sr: int = SAMPLE_RATE) -> np.ndarray:
    """The track's preview: float32 mono in [-1, 1], peak 0.9, identical on every call.

    Drums, bass, chords and lead are sequenced on a sixteenth-note grid into
    separate buses; every distinct note is synthesised once and copied to each
    of its onsets, which keeps a 30 s clip in the tens of milliseconds.
    """
    if seconds <= 0:
        raise ValueError("seconds must be positive")
    style = _STYLE_BY_NAME[track.style]
    var = _variation(track, style)
    rng = np.random.default_rng(track.seed)
    n = int(round(seconds * sr))
    step_s = 60.0 / var.bpm / 4
    n_steps = int(seconds / step_s) + 2
    steps = np.arange(n_steps + 17)
    onsets = np.round((steps + style.swing * (steps % 2)) * step_s * sr).astype(np.int64)

    def chord_root(step: int) -> int:
        return var.progression[(step // 16 // style.bars_per_chord) % len(var.progression)]

    def gate_samples(gate_steps: int) -> int:
        return int(round(gate_steps * step_s * sr))

    notes: dict[tuple[str, int, int], np.ndarray] = {}

    def note(voice: str, midi: int, gate_steps: int) -> np.ndarray:
        key = (voice, midi, gate_steps)
        if key not in notes:
            notes[key] = _note(voice, _midi_hz(midi), gate_samples(gate_steps), sr, var, rng)
        return notes[key]

    def velocity() -> float:
        return float(rng.uniform(0.85, 1.0))

    drums = np.zeros(n, dtype=np.float32)
    snare_bus = np.zeros(n, dtype=np.float32)
    if style.kit is not None:
        kit = _drum_samples(style.kit, var, sr, rng)
        for name, pattern, bus in (("kick", var.kick, drums), ("snare", var.snare, snare_bus), ("hat", var.hat, drums)):
            for step, _gate, symbol in _pattern_events(pattern, n_steps):
                _place(bus, kit[name], int(onsets[step]), velocity() * (0.45 if symbol == "o" else 1.0))

    bass = np.zeros(n, dtype=np.float32)
    bass_root = style.bass_midi + var.key
    for step, gate, symbol in _pattern_events(style.bass, n_steps):
        midi = _degree_midi(style.scale, bass_root, chord_root(step) + int(symbol))
        _place(bass, note(style.bass_voice, midi, gate), int(onsets[step]), velocity())

    chords = np.zeros(n, dtype=np.float32)
    chord_base = style.chord_midi + var.key
    chord_cache: dict[tuple[tuple[int, ...], int], np.ndarray] = {}
    for position, (step, gate, _symbol) in enumerate(_pattern_events(style.chord_rhythm, n_steps)):
        gate = style.chord_gate or gate
        root = chord_root(step)
        if style.chord_voice == "power":
            low = _degree_midi(style.scale, chord_base, root)
            pitches: tuple[int, ...] = (low, low + 7, low + 12)
        else:
            pitches = tuple(_degree_midi(style.scale, chord_base, root + 2 * k) for k in range(style.chord_size))
        if style.arpeggio:
            pitches = (pitches[position % len(pitches)],)
        key = (pitches, gate)
        if key not in chord_cache:
            voiced = sum(note(style.chord_voice, midi, gate) for midi in pitches)
            if style.drive:
                voiced = np.tanh(style.drive * voiced) / math.tanh(style.drive)
            chord_cache[key] = voiced.astype(np.float32)
        _place(chords, chord_cache[key], int(onsets[step]), velocity())

    lead = np.zeros(n, dtype=np.float32)
    if style.lead_voice is not None:
        lead_root = style.lead_midi + var.key
        for bar_pair_start in range(16, n_steps, 32):  # the melody enters after one bar
            for offset, gate, degree in var.motif:
                step = bar_pair_start + offset
                if step < n_steps:
                    midi = _degree_midi(style.scale, lead_root, degree)
                    _place(lead, note(style.lead_voice, midi, gate), int(onsets[step]), velocity())

    def normalised(bus: np.ndarray) -> np.ndarray:
        return bus / np.float32(max(float(np.max(np.abs(bus))), 1e-9))

    drum_gain, bass_gain, chord_gain, lead_gain = style.mix
    send = chord_gain * normalised(chords) + lead_gain * normalised(lead) + 0.6 * drum_gain * normalised(snare_bus)
    if style.echo_steps:
        send = _feedback_delay(send, gate_samples(style.echo_steps), var.echo_feedback)
    mix = send + drum_gain * normalised(drums) + bass_gain * normalised(bass)
    if style.noise != "none":
        mix += style.noise_level * _noise_bed(style.noise, n, sr, rng) * np.float32(np.max(np.abs(mix)))
    if var.cutoff_hz:
        from scipy import signal

        b, a = signal.butter(2, min(var.cutoff_hz, 0.45 * sr), fs=sr)
        mix = signal.lfilter(b, a, mix)
    fade_in, fade_out = min(int(0.01 * sr), n // 2), min(int(0.3 * sr), n // 2)
    mix[:fade_in] *= np.linspace(0.0, 1.0, fade_in)
    mix[n - fade_out:] *= np.linspace(1.0, 0.0, fade_out)
    return (0.9 * normalised(np.asarray(mix, dtype=np.float32))).astype(np.float32)


# --------------------------------------------------------------------------- mp3


# Deezer's 30-second previews are 128 kbps CBR mp3 at 44.1 kHz, in stereo;
# the stand-in serves the same, so decoding and resampling cost what they do
# on real previews.
PREVIEW_RATE = 44100
PREVIEW_KBPS = 128


def encode_mp3(
    samples: np.ndarray, sr: int = SAMPLE_RATE, bitrate_kbps: int = PREVIEW_KBPS, out_rate: int = PREVIEW_RATE
) -> bytes:
    """Stereo CBR mp3 at ``out_rate`` of mono float samples in [-1, 1] at ``sr``."""
    if samples.ndim != 1:
        raise ValueError("encode_mp3 expects mono samples (a 1-D array)")
    if out_rate != sr:
        samples = soxr.resample(samples, sr, out_rate)
    mono = (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2")
    pcm = np.repeat(mono, 2)  # interleaved L/R: the same signal in both channels
    encoder = lameenc.Encoder()
    encoder.set_bit_rate(bitrate_kbps)
    encoder.set_in_sample_rate(out_rate)
    encoder.set_channels(2)
    encoder.set_quality(7)
    return bytes(encoder.encode(pcm.tobytes()) + encoder.flush())


def preview_mp3(track: CatalogTrack, sr: int = SAMPLE_RATE) -> bytes:
    """The 30-second mp3 preview of ``track``."""
    return encode_mp3(render_clip(track, sr=sr), sr=sr)


class PreviewCache:
    """Rendered previews on disk, so each track is synthesised and encoded once.

    Files are written to a temporary name and renamed into place, so concurrent
    readers (other threads or processes) never see a half-written mp3.
    """

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def path_for(self, track: CatalogTrack) -> Path:
        return self.directory / f"{track.track_id}.v{SYNTH_VERSION}.mp3"

    def get(self, track: CatalogTrack) -> bytes:
        path = self.path_for(track)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            pass
        data = preview_mp3(track)
        fd, temp_name = tempfile.mkstemp(dir=self.directory, prefix=f".{track.track_id}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(temp_name, path)
        except BaseException:
            Path(temp_name).unlink(missing_ok=True)
            raise
        return data
