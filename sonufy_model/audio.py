"""Audio to mel spectrogram, with the seed's parameters.

22,050 Hz mono, 30 s, n_fft 2048, hop 512, 128 Slaney mel bands up to 8 kHz,
power_to_db(ref=max, top_db=80), scaled to [0, 1] and resized along time to
512 frames; stored as uint8 (0..255), as the seed stored its images.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

SILENCE_DBFS = -60.0


class AudioDecodeError(ValueError):
    """A file that does not decode as audio."""


@dataclass(frozen=True)
class MelParams:
    """Everything that changes a spectrogram. A change makes a new set."""

    sample_rate: int = 22050
    clip_seconds: float = 30.0
    n_fft: int = 2048
    hop_length: int = 512
    n_mels: int = 128
    fmax: float = 8000.0
    top_db: float = 80.0
    n_frames: int = 512
    # Where a longer file (a whole song) is excerpted: previews are analysed
    # whole, songs on a clip from the middle, so that both are comparable.
    excerpt: str = "middle"

    @property
    def set_id(self) -> str:
        digest = hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()
        return f"mel-{self.n_mels}x{self.n_frames}-{digest[:10]}"

    @property
    def clip_samples(self) -> int:
        return int(round(self.sample_rate * self.clip_seconds))

    @property
    def stft_frames(self) -> int:
        # librosa centres frames, so a clip of n samples has 1 + n // hop frames.
        return 1 + self.clip_samples // self.hop_length

    def to_dict(self) -> dict:
        return asdict(self)


def load_excerpt(path: str | Path, params: MelParams) -> tuple[np.ndarray, float]:
    """Decode ``params.clip_seconds`` of mono audio at the analysis rate.

    Returns the samples, padded with silence to exactly the clip length, and
    the duration of real audio in them (seconds), which checks use to reject
    clips that are too short.
    """
    path = Path(path)
    try:
        with sf.SoundFile(str(path)) as audio:
            native_rate = audio.samplerate
            total_frames = audio.frames
            wanted = int(round(params.clip_seconds * native_rate))
            if total_frames > wanted and params.excerpt == "middle":
                audio.seek((total_frames - wanted) // 2)
            samples = audio.read(frames=min(wanted, total_frames), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as error:
        raise AudioDecodeError(f"{path}: does not decode as audio ({error})") from error
    if samples.size == 0:
        raise AudioDecodeError(f"{path}: contains no audio samples")
    mono = samples.mean(axis=1)
    if native_rate != params.sample_rate:
        mono = soxr.resample(mono, native_rate, params.sample_rate).astype(np.float32)
    duration_s = mono.size / params.sample_rate
    clip = np.zeros(params.clip_samples, dtype=np.float32)
    n = min(mono.size, clip.size)
    clip[:n] = mono[:n]
    return clip, duration_s


@lru_cache(maxsize=8)
def _mel_basis(sample_rate: int, n_fft: int, n_mels: int, fmax: float) -> np.ndarray:
    import librosa

    return librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmax=fmax)


@lru_cache(maxsize=8)
def _time_resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Area-averaging weights that shrink n_in frames to n_out (n_in × n_out).

    Each output frame is the mean of the input frames it covers, fractions
    included: an image resize along the time axis, done as one matrix product.
    """
    edges = np.linspace(0.0, n_in, n_out + 1)
    weights = np.zeros((n_in, n_out), dtype=np.float32)
    for j in range(n_out):
        lo, hi = edges[j], edges[j + 1]
        first, last = int(np.floor(lo)), int(np.ceil(hi))
        for i in range(first, min(last, n_in)):
            overlap = min(hi, i + 1) - max(lo, i)
            if overlap > 0:
                weights[i, j] = overlap
        weights[:, j] /= weights[:, j].sum()
    return weights


def mel_power(clip: np.ndarray, params: MelParams) -> np.ndarray:
    """The mel power spectrogram, as librosa.feature.melspectrogram computes it."""
    import librosa

    spectrum = np.abs(librosa.stft(clip, n_fft=params.n_fft, hop_length=params.hop_length)) ** 2
    basis = _mel_basis(params.sample_rate, params.n_fft, params.n_mels, params.fmax)
    return basis @ spectrum


def scaled_mel(clip: np.ndarray, params: MelParams) -> np.ndarray:
    """float32 (n_mels, n_frames) in [0, 1]: dB relative to the clip's peak."""
    import librosa

    db = librosa.power_to_db(mel_power(clip, params), ref=np.max, top_db=params.top_db)
    # With ref=max and top_db, dB lies in [-top_db, 0]: a fixed map to [0, 1]
    # keeps spectrograms of different clips on one scale.
    scaled = (db + params.top_db) / params.top_db
    resized = scaled.astype(np.float32) @ _time_resize_matrix(scaled.shape[1], params.n_frames)
    return np.clip(resized, 0.0, 1.0, out=resized)


def silent_frame_share(clip: np.ndarray, duration_s: float, params: MelParams) -> float:
    """Share of the real audio's frames quieter than -60 dBFS (RMS)."""
    n = max(params.hop_length, int(duration_s * params.sample_rate))
    frames = clip[: n - n % params.hop_length].reshape(-1, params.hop_length)
    rms = np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1))
    dbfs = 20.0 * np.log10(np.maximum(rms, 1e-10))
    return float(np.mean(dbfs < SILENCE_DBFS))


def to_uint8(spectrogram: np.ndarray) -> np.ndarray:
    return np.round(np.nan_to_num(spectrogram, nan=0.0) * 255.0).clip(0, 255).astype(np.uint8)


def analyse(path: str | Path, params: MelParams) -> tuple[np.ndarray, dict]:
    """A file's spectrogram (float32 in [0, 1]) and the facts checks look at."""
    clip, duration_s = load_excerpt(path, params)
    spectrogram = scaled_mel(clip, params)
    stats = {
        "n_mels": int(spectrogram.shape[0]),
        "n_frames": int(spectrogram.shape[1]),
        "min_value": float(np.nanmin(spectrogram)) if np.isfinite(spectrogram).any() else float("nan"),
        "max_value": float(np.nanmax(spectrogram)) if np.isfinite(spectrogram).any() else float("nan"),
        "non_finite": int(np.size(spectrogram) - np.count_nonzero(np.isfinite(spectrogram))),
        "silent_share": silent_frame_share(clip, duration_s, params),
        "duration_s": float(duration_s),
    }
    return spectrogram, stats
