"""Audio to mel spectrogram, with the seed's parameters.

22,050 Hz mono, 30 s, n_fft 2048, hop 512, 128 Slaney mel bands up to 8 kHz,
in dB floored 80 dB below the clip's peak, scaled to [0, 1] and resized along
time to 512 frames; stored as uint8 (0..255), as the seed stored its images.

The seed measured dB relative to each clip's peak (``level="peak"``), which
throws away how loud the music is. The default is now ``level="absolute"``:
dB relative to a full-scale sine, on a fixed scale, so that a quiet, airy
track and a loud, compressed one differ in their spectrograms as they do to
a listener. On real music that level is a large part of what one soundtrack's
or composer's tracks share (docs/model.md).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

SILENCE_DBFS = -60.0
PLACEMENTS = ("middle", "spread")
# The least distance between the starts of two excerpts of a file, in clips.
MIN_EXCERPT_STEP = 0.25
LEVELS = ("absolute", "peak")
# The absolute scale, in dB relative to a full-scale sine: 0 is the quietest
# value a spectrogram keeps, 1 is 6 dB above full scale (a square wave's
# fundamental, or inter-sample overs, can exceed a sine). 120 dB fit the
# floor of a quiet track's spectrogram (80 dB below a peak at -34 dBFS) in
# uint8 steps of 0.47 dB.
ABSOLUTE_RANGE_DBFS = (-114.0, 6.0)
# Decoded by ffmpeg, when it is installed; libsndfile reads the rest.
FFMPEG_SUFFIXES = (".m4a", ".mp4", ".aac", ".alac")


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
    # A file longer than a clip (a whole song) is analysed on `excerpts`
    # clips, whose vectors are averaged: "middle" puts them side by side
    # around the middle of the song, "spread" spreads them evenly over it.
    # Previews are one clip long and analysed whole, so that a library and
    # previews are comparable. Two spread excerpts: on real music they rank
    # same-composer tracks better than the middle 30 s alone (+0.03 to +0.06
    # precision@10, paired, in each of three training seeds) and
    # same-soundtrack ones no worse, for twice the spectrograms; four cost
    # soundtrack precision and twice the storage again (docs/model.md).
    excerpts: int = 2
    placement: str = "spread"
    # "absolute": dB relative to full scale on ABSOLUTE_RANGE_DBFS; "peak":
    # dB relative to the clip's peak (the seed's), which hides loudness.
    level: str = "absolute"

    def __post_init__(self) -> None:
        if self.excerpts < 1:
            raise ValueError(f"excerpts must be at least 1, got {self.excerpts}")
        if self.placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {PLACEMENTS}, got {self.placement!r}")
        if self.level not in LEVELS:
            raise ValueError(f"level must be one of {LEVELS}, got {self.level!r}")

    @classmethod
    def from_stored(cls, params: dict) -> MelParams:
        """The parameters a store recorded for a spectrogram set.

        Sets recorded before ``level`` existed were measured relative to each
        clip's peak, so a missing ``level`` reads as "peak".
        """
        return cls(**{"level": "peak", **params})

    @property
    def set_id(self) -> str:
        fields = asdict(self)
        if fields["level"] == "peak":
            # Sets made before `level` existed keep the ids stores know them by.
            del fields["level"]
        digest = hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()
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


def excerpt_starts(total_s: float, params: MelParams) -> list[float]:
    """Start times (s) of the clips analysed in a file ``total_s`` long."""
    clip = params.clip_seconds
    if total_s <= clip:
        return [0.0]
    n = params.excerpts
    if params.placement == "spread":
        centres = [total_s * (i + 1) / (n + 1) for i in range(n)]
    else:
        centres = [total_s / 2 + (i - (n - 1) / 2) * clip for i in range(n)]
    starts = sorted(round(min(max(0.0, centre - clip / 2), total_s - clip), 3) for centre in centres)
    # An excerpt that overlaps the previous one by more than three quarters
    # adds little but its cost: a preview a few codec frames longer than a
    # clip stays one excerpt, not two of the same audio.
    kept = starts[:1]
    for start in starts[1:]:
        if start - kept[-1] >= clip * MIN_EXCERPT_STEP:
            kept.append(start)
    return kept


def load_excerpts(path: str | Path, params: MelParams) -> list[tuple[np.ndarray, float]]:
    """Decode the file's clips, each mono at the analysis rate.

    Each clip is padded with silence to exactly the clip length; the float
    beside it is the duration of real audio in it (seconds), which checks use
    to reject clips that are too short.
    """
    path = Path(path)
    if path.suffix.lower() in FFMPEG_SUFFIXES:
        return [_fit(mono, params) for mono in _ffmpeg_excerpts(path, params)]
    clips: list[tuple[np.ndarray, float]] = []
    try:
        with sf.SoundFile(str(path)) as audio:
            rate, total = audio.samplerate, audio.frames
            wanted = int(round(params.clip_seconds * rate))
            for start_s in excerpt_starts(total / rate, params):
                audio.seek(int(start_s * rate))
                samples = audio.read(frames=min(wanted, total), dtype="float32", always_2d=True)
                if samples.size == 0:
                    raise AudioDecodeError(f"{path}: contains no audio samples")
                mono = _downmix(samples)
                if rate != params.sample_rate:
                    mono = soxr.resample(mono, rate, params.sample_rate).astype(np.float32, copy=False)
                clips.append(_fit(mono, params))
    except (sf.LibsndfileError, RuntimeError, TypeError) as error:
        raise AudioDecodeError(f"{path}: {_decode_failure(path, error)}") from error
    return clips


@contextlib.contextmanager
def native_stderr_captured():
    """What C libraries write to file descriptor 2 meanwhile goes to a buffer,
    not the terminal; the lines are in the yielded list on exit and logged at
    debug level.

    libmpg123 (libsndfile's MP3 decoder) prints "Note: Illegal Audio-MPEG-
    Header ... Trying to resync..." for a damaged or non-MP3 file that our
    own error already names. For single-threaded callers such as the query
    path: whatever another thread writes to stderr meanwhile is captured too.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    lines: list[str] = []
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines.extend(sink.read().decode(errors="replace").splitlines())
            for line in lines:
                logging.getLogger(__name__).debug("decoder: %s", line)


def _decode_failure(path: Path, error: Exception) -> str:
    """What to tell about a file libsndfile could not open: its "File does not
    exist or is not a regular file (possibly a pipe?)" is what it says of an
    empty file or of bytes it does not recognise, which misleads."""
    if path.is_file() and "not a regular file" in str(error):
        if path.stat().st_size == 0:
            return "the file is empty"
        return "does not decode as audio (not an audio format this build reads, or damaged)"
    return f"does not decode as audio ({error})"


def load_excerpt(path: str | Path, params: MelParams) -> tuple[np.ndarray, float]:
    """The first clip of :func:`load_excerpts` (the only one with one excerpt)."""
    return load_excerpts(path, params)[0]


def _downmix(samples: np.ndarray) -> np.ndarray:
    """The mean of the channels. Stereo: the two columns added and halved,
    bit for bit the matrix-vector product used for more channels, three
    times faster (numpy's mean over the short axis of a (frames, channels)
    array is ten times slower still, as slow as decoding the mp3)."""
    channels = samples.shape[1]
    if channels == 1:
        return samples[:, 0]
    if channels == 2:
        mono = np.add(samples[:, 0], samples[:, 1])
        mono *= samples.dtype.type(0.5)
        return mono
    return samples @ np.full(channels, 1.0 / channels, dtype=samples.dtype)


def _fit(mono: np.ndarray, params: MelParams) -> tuple[np.ndarray, float]:
    clip = np.zeros(params.clip_samples, dtype=np.float32)
    n = min(mono.size, clip.size)
    clip[:n] = mono[:n]
    return clip, mono.size / params.sample_rate


def ffmpeg_available() -> bool:
    return shutil.which("ffmpeg") is not None


def _ffmpeg_excerpts(path: Path, params: MelParams) -> list[np.ndarray]:
    """Clips of a file libsndfile cannot read (AAC in .m4a), through ffmpeg."""
    if not ffmpeg_available():
        raise AudioDecodeError(f"{path}: decoding {path.suffix} needs ffmpeg, which is not installed")
    try:
        import mutagen

        total_s = float(mutagen.File(str(path)).info.length)
    except Exception as error:  # mutagen raises many types for broken files
        raise AudioDecodeError(f"{path}: unreadable ({error})") from error
    clips = []
    for start_s in excerpt_starts(total_s, params):
        result = subprocess.run(
            ["ffmpeg", "-nostdin", "-v", "error", "-ss", str(start_s), "-t", str(params.clip_seconds),
             "-i", str(path), "-f", "f32le", "-ac", "1", "-ar", str(params.sample_rate), "-"],
            capture_output=True, check=False,
        )
        if result.returncode != 0 or not result.stdout:
            raise AudioDecodeError(f"{path}: ffmpeg could not decode it ({result.stderr.decode()[-200:]})")
        clips.append(np.frombuffer(result.stdout, dtype=np.float32))
    return clips


# librosa's Slaney mel scale (librosa.hz_to_mel / mel_to_hz, htk=False):
# linear to 1 kHz, logarithmic above. Written out here, operation for
# operation, so that the spectrogram workers need not import librosa and
# scipy.signal (about 1.3 s a process, more than converting a nightly's new
# tracks takes); tests/test_audio.py holds them equal to librosa's, bit for bit.
_MEL_F_SP = 200.0 / 3
_MEL_MIN_LOG_HZ = 1000.0
_MEL_MIN_LOG_MEL = _MEL_MIN_LOG_HZ / _MEL_F_SP
_MEL_LOGSTEP = np.log(6.4) / 27.0


def _hz_to_mel(hz: float) -> float:
    if hz >= _MEL_MIN_LOG_HZ:
        return _MEL_MIN_LOG_MEL + np.log(hz / _MEL_MIN_LOG_HZ) / _MEL_LOGSTEP
    return hz / _MEL_F_SP


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    hz = _MEL_F_SP * mels
    log_region = mels >= _MEL_MIN_LOG_MEL
    hz[log_region] = _MEL_MIN_LOG_HZ * np.exp(_MEL_LOGSTEP * (mels[log_region] - _MEL_MIN_LOG_MEL))
    return hz


def slaney_mel_basis(sample_rate: int, n_fft: int, n_mels: int, fmax: float) -> np.ndarray:
    """float32 (n_mels, 1 + n_fft // 2): ``librosa.filters.mel(sr=..., n_fft=...,
    n_mels=..., fmax=...)`` (fmin 0, Slaney scale and area normalisation)."""
    weights = np.zeros((n_mels, 1 + n_fft // 2), dtype=np.float32)
    fft_hz = np.fft.rfftfreq(n=n_fft, d=1.0 / sample_rate)
    mel_hz = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(fmax), n_mels + 2))
    widths = np.diff(mel_hz)
    ramps = np.subtract.outer(mel_hz, fft_hz)
    for band in range(n_mels):
        lower = -ramps[band] / widths[band]
        upper = ramps[band + 2] / widths[band + 1]
        weights[band] = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_hz[2:n_mels + 2] - mel_hz[:n_mels]))[:, np.newaxis]
    return weights


def power_to_db(power: np.ndarray, ref, top_db: float, amin: float = 1e-10) -> np.ndarray:
    """``librosa.power_to_db(power, ref=ref, top_db=top_db)``: ref a number or
    a function of the array (np.max)."""
    reference = ref(power) if callable(ref) else np.abs(ref)
    db = 10.0 * np.log10(np.maximum(amin, power))
    db -= 10.0 * np.log10(np.maximum(amin, reference))
    return np.maximum(db, db.max() - top_db)


@lru_cache(maxsize=8)
def _mel_basis(sample_rate: int, n_fft: int, n_mels: int, fmax: float) -> tuple[object, int]:
    """librosa's Slaney mel filterbank as a sparse matrix, and how many FFT
    bins it uses at all.

    Bins above fmax have zero weight in every band (744 of 1025 are used at
    8 kHz), so only those below are squared and multiplied. Each bin lies in
    at most two of the triangular bands, so the filterbank is 98% zeros: as a
    sparse product it takes a fifth of the dense one's time here (0.9 ms
    against 5 ms a clip), the same sums up to float32 rounding.
    """
    import scipy.sparse

    basis = slaney_mel_basis(sample_rate, n_fft, n_mels, fmax)
    used = int(np.nonzero(basis.any(axis=0))[0].max()) + 1
    return scipy.sparse.csr_array(basis[:, :used]), used


@lru_cache(maxsize=8)
def _window(n_fft: int) -> np.ndarray:
    """The periodic Hann window (scipy.signal.get_window("hann", n_fft, fftbins=True))."""
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)


@lru_cache(maxsize=8)
def _time_resize_matrix(n_in: int, n_out: int):
    """Area-averaging weights that shrink n_in frames to n_out (n_in × n_out),
    as a sparse matrix.

    Each output frame is the mean of the input frames it covers, fractions
    included: an image resize along the time axis, done as one matrix
    product. An input frame falls in at most two output frames, so the
    sparse product takes 0.15 ms a clip against 1.8 ms dense on one thread.
    """
    import scipy.sparse

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
    return scipy.sparse.csr_array(weights)


# Each thread's buffer for the windowed frames, reused from clip to clip: a
# fresh 10 MB array a clip costs its page faults, about as much as the window.
_frames_buffer = threading.local()


def _windowed(frames: np.ndarray, window: np.ndarray) -> np.ndarray:
    """``frames * window`` in this thread's reused buffer (valid until its next call)."""
    buffer = getattr(_frames_buffer, "array", None)
    if buffer is None or buffer.shape != frames.shape:
        buffer = _frames_buffer.array = np.empty(frames.shape, dtype=np.float32)
    return np.multiply(frames, window, out=buffer)


def mel_power(clip: np.ndarray, params: MelParams) -> np.ndarray:
    """The mel power spectrogram, as librosa.feature.melspectrogram computes it.

    The same centred, zero-padded, Hann-windowed STFT as librosa.stft, done
    as one float32 real FFT over a strided view of the frames (no copies but
    the windowed frames, in a buffer reused from clip to clip), then only the
    bins the filterbank uses, multiplied by the sparse filterbank.
    """
    import scipy.fft

    n_fft, hop = params.n_fft, params.hop_length
    padded = np.pad(np.asarray(clip, dtype=np.float32), n_fft // 2)
    n_frames = 1 + (padded.size - n_fft) // hop
    frames = np.lib.stride_tricks.as_strided(
        padded, shape=(n_frames, n_fft), strides=(padded.strides[0] * hop, padded.strides[0]), writeable=False
    )
    basis, used = _mel_basis(params.sample_rate, n_fft, params.n_mels, params.fmax)
    spectrum = scipy.fft.rfft(_windowed(frames, _window(n_fft)), axis=1)[:, :used]
    # |X|² as abs then square in place: one pass over the strided bins
    # instead of two strided reads and three temporaries (1.4 ms against
    # 4.2 ms a clip).
    power = np.abs(spectrum)
    np.square(power, out=power)
    return basis @ power.T


@lru_cache(maxsize=8)
def full_scale_power(params: MelParams) -> float:
    """The mel power peak of a full-scale 1 kHz sine: 0 dB on the absolute scale."""
    t = np.arange(params.sample_rate, dtype=np.float64) / params.sample_rate
    sine = np.sin(2 * np.pi * 1000.0 * t).astype(np.float32)
    return float(mel_power(sine, params).max())


def scaled_mel(clip: np.ndarray, params: MelParams) -> np.ndarray:
    """float32 (n_mels, n_frames) in [0, 1], on the scale ``params.level`` names.

    Either way values more than ``top_db`` below the clip's peak are floored
    there. "peak": dB relative to the clip's peak, [-top_db, 0] mapped to
    [0, 1]. "absolute": dB relative to a full-scale sine, ABSOLUTE_RANGE_DBFS
    mapped to [0, 1], so that a clip played 6 dB softer sits 6 dB lower.
    """
    power = mel_power(clip, params)
    if params.level == "peak":
        db = power_to_db(power, np.max, params.top_db)
        low, high = -params.top_db, 0.0
    else:
        db = power_to_db(power, full_scale_power(params), params.top_db)
        low, high = ABSOLUTE_RANGE_DBFS
    # A fixed map to [0, 1] keeps spectrograms of different clips on one scale.
    scaled = (db - low) / (high - low)
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


def spectral_flatness(clip: np.ndarray, params: MelParams) -> float:
    """The median over frames of the spectral flatness (geometric over
    arithmetic mean of the power spectrum): near 0.6 for white noise, under
    0.3 for nearly all music."""
    import librosa

    flatness = librosa.feature.spectral_flatness(y=clip, n_fft=params.n_fft, hop_length=params.hop_length)
    return float(np.median(flatness))


def analyse(path: str | Path, params: MelParams, flatness: bool = False) -> list[tuple[np.ndarray, dict]]:
    """Each clip's spectrogram (float32 in [0, 1]) and the facts checks look at;
    with ``flatness`` also its ``spectral_flatness`` (one more STFT a clip)."""
    results = []
    for clip, duration_s in load_excerpts(path, params):
        spectrogram = scaled_mel(clip, params)
        non_finite = int(spectrogram.size - np.count_nonzero(np.isfinite(spectrogram)))
        all_nan = non_finite == spectrogram.size
        stats = {
            "n_mels": int(spectrogram.shape[0]),
            "n_frames": int(spectrogram.shape[1]),
            "min_value": float("nan") if all_nan else float(np.nanmin(spectrogram)),
            "max_value": float("nan") if all_nan else float(np.nanmax(spectrogram)),
            "non_finite": non_finite,
            "silent_share": silent_frame_share(clip, duration_s, params),
            "duration_s": float(duration_s),
        }
        if flatness:
            stats["spectral_flatness"] = spectral_flatness(clip[: max(1, int(duration_s * params.sample_rate))], params)
        results.append((spectrogram, stats))
    return results
