"""Waveform augmentation for synthetic speech (numpy, soxr, torchaudio; no network).

Every function is pure given its arguments (random ones take a numpy Generator),
so a corpus is reproducible from its seed. Signals are float32 mono in [-1, 1].
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import soxr

NOISE_KINDS = ("white", "pink", "brown", "blue", "babble")
_BETA = {"white": 0.0, "pink": 1.0, "brown": 2.0, "blue": -1.0}


def db_to_amp(db: float) -> float:
    return float(10.0 ** (db / 20.0))


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


def trim_silence(x: np.ndarray, sr: int, rel_db: float = -40.0, margin_s: float = 0.03) -> np.ndarray:
    """Drop leading/trailing audio quieter than rel_db below the peak (keep a margin).

    Engines pad differently (and with exact zeros); trimming first and then
    padding ourselves keeps that from becoming a cue that tells engines apart.
    """
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if peak <= 0:
        return x
    loud = np.flatnonzero(np.abs(x) > peak * db_to_amp(rel_db))
    margin = int(margin_s * sr)
    return x[max(0, loud[0] - margin) : min(x.size, loud[-1] + 1 + margin)]


def speed_perturb(x: np.ndarray, sr: int, factor: float) -> np.ndarray:
    """Kaldi-style speed perturbation: tempo and pitch both scale by `factor`."""
    if abs(factor - 1.0) < 1e-6:
        return x
    return soxr.resample(x, sr * factor, sr, quality="HQ").astype(np.float32)


def pitch_shift(x: np.ndarray, sr: int, semitones: float) -> np.ndarray:
    """Shift pitch (and formants) keeping the duration: a phase-vocoder time
    stretch (torchaudio) followed by a soxr resampling back to the length.

    (torchaudio.functional.pitch_shift does the same but resamples with a sinc
    kernel for the exact rational ratio: seconds per call; this is milliseconds.)
    """
    if abs(semitones) < 1e-3:
        return x
    import torch
    import torchaudio.functional as F

    ratio = 2.0 ** (semitones / 12.0)
    n_fft, hop = 512, 128
    window = torch.hann_window(n_fft)
    spec = torch.stft(torch.from_numpy(np.ascontiguousarray(x)), n_fft, hop, window=window, return_complex=True)
    advance = torch.linspace(0, math.pi * hop, spec.shape[0])[..., None]
    stretched = F.phase_vocoder(spec, 1.0 / ratio, advance)  # longer by `ratio`
    y = torch.istft(stretched, n_fft, hop, window=window, length=int(round(x.size * ratio))).numpy()
    y = soxr.resample(y, sr * ratio, sr, quality="HQ").astype(np.float32)  # faster by `ratio`
    if y.size < x.size:
        y = np.pad(y, (0, x.size - y.size))
    return y[: x.size]


def vtlp(x: np.ndarray, sr: int, alpha: float, f_hi: float = 4800.0, lifter: int = 30) -> np.ndarray:
    """Vocal-tract-length perturbation on the waveform.

    Each STFT frame's spectral envelope (cepstrally smoothed log magnitude) is
    warped along frequency with the piecewise-linear map of Jaitly & Hinton
    (2013): f -> alpha f below a boundary, linear up to Nyquist above it. The
    frame is multiplied by warped/original envelope, so formants move (alpha > 1:
    up, a shorter vocal tract) while the harmonics (the pitch) stay put.
    """
    if abs(alpha - 1.0) < 1e-6:
        return x
    import torch

    n_fft, hop = 512, 128
    window = torch.hann_window(n_fft)
    spec = torch.stft(
        torch.from_numpy(np.ascontiguousarray(x)), n_fft, hop, window=window, return_complex=True
    ).numpy()  # (bins, frames)
    bins = spec.shape[0]
    log_mag = np.log(np.abs(spec) + 1e-6)
    cep = np.fft.irfft(log_mag, axis=0)  # real cepstrum, (n_fft, frames)
    cep[lifter:-lifter] = 0.0
    env = np.fft.rfft(cep, axis=0).real[:bins]
    nyq = sr / 2.0
    freqs = np.linspace(0.0, nyq, bins)
    boundary = f_hi * min(alpha, 1.0) / alpha
    warped = np.where(
        freqs <= boundary, freqs * alpha, nyq - (nyq - boundary * alpha) / (nyq - boundary) * (nyq - freqs)
    )
    source = np.interp(freqs, warped, freqs) / nyq * (bins - 1)  # warp^-1, in bins
    lo = np.clip(np.floor(source).astype(int), 0, bins - 1)
    hi = np.clip(lo + 1, 0, bins - 1)
    w = (source - lo)[:, None]
    env_w = (1 - w) * env[lo] + w * env[hi]
    gain = np.exp(np.clip(env_w - env, -12.0, 12.0))
    y = torch.istft(
        torch.from_numpy((spec * gain).astype(np.complex64)), n_fft, hop, window=window, length=x.size
    ).numpy()
    return (y * (rms(x) / (rms(y) or 1.0))).astype(np.float32)


def band_limit(x: np.ndarray, sr: int, cutoff_hz: float) -> np.ndarray:
    """Keep only what a recording at 2*cutoff_hz would have: down- and up-sample.

    flite's kal voice speaks at 8 kHz, so a test voice arrives with nothing above
    4 kHz; a model that never saw an empty upper band misreads it (docs/data.md,
    "Why the voice shift and the channel").
    """
    if cutoff_hz <= 0 or 2 * cutoff_hz >= sr:
        return x
    low = soxr.resample(x, sr, 2 * cutoff_hz, quality="HQ")
    y = soxr.resample(low, 2 * cutoff_hz, sr, quality="HQ").astype(np.float32)
    return np.pad(y, (0, max(0, x.size - y.size)))[: x.size]


def equalize(
    x: np.ndarray, sr: int, tilt_db_per_octave: float, bands: Sequence[tuple[float, float, float]] = ()
) -> np.ndarray:
    """A smooth, zero-phase random channel: a spectral tilt around 1 kHz plus
    Gaussian bumps on a log-frequency axis, each (centre Hz, gain dB, width in
    octaves). Engines differ most in their overall colour; this teaches the
    model to ignore it. The level (RMS) is kept.
    """
    if not tilt_db_per_octave and not bands:
        return x
    n = x.size
    freqs = np.fft.rfftfreq(n, 1.0 / sr)
    octaves = np.log2(np.maximum(freqs, 50.0) / 1000.0)
    gain_db = tilt_db_per_octave * octaves
    for centre, gain, width in bands:
        gain_db = gain_db + gain * np.exp(-0.5 * ((octaves - math.log2(centre / 1000.0)) / width) ** 2)
    y = np.fft.irfft(np.fft.rfft(x) * db_to_amp(1.0) ** gain_db, n)
    return (y * (rms(x) / (rms(y) or 1.0))).astype(np.float32)


def colored_noise(n: int, kind: str, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS noise with a 1/f^beta power spectrum (white, pink, brown, blue)."""
    beta = _BETA[kind]
    white = rng.standard_normal(n)
    if beta == 0.0:
        y = white
    else:
        spec = np.fft.rfft(white)
        f = np.fft.rfftfreq(n)
        f[0] = f[1] if n > 1 else 1.0
        spec *= f ** (-beta / 2.0)
        y = np.fft.irfft(spec, n)
    y = y - y.mean()
    return (y / (rms(y) or 1.0)).astype(np.float32)


def babble(
    n: int,
    bank: Sequence[np.ndarray],
    rng: np.random.Generator,
    talkers: tuple[int, int] = (3, 6),
    spread_db: float = 6.0,
) -> np.ndarray:
    """Unit-RMS babble: several other utterances, looped and offset, summed, each talker
    ``spread_db`` or less below the loudest (with few talkers, one can stand out)."""
    k = int(rng.integers(talkers[0], talkers[1] + 1))
    out = np.zeros(n, dtype=np.float64)
    for _ in range(k):
        clip = bank[int(rng.integers(len(bank)))]
        clip = clip / (rms(clip) or 1.0)
        reps = int(math.ceil((n + clip.size) / clip.size))
        looped = np.tile(clip, reps)
        start = int(rng.integers(clip.size))
        out += looped[start : start + n] * db_to_amp(float(rng.uniform(-spread_db, 0)))
    return (out / (rms(out) or 1.0)).astype(np.float32)


def synthetic_rir(sr: int, rt60: float, drr_db: float, rng: np.random.Generator) -> np.ndarray:
    """A room impulse response: a direct path, then exponentially decaying noise.

    rt60: reverberation time (s); drr_db: direct-to-reverberant energy ratio.
    """
    n = max(2, int(rt60 * sr * 1.2))
    t = np.arange(n) / sr
    tail = rng.standard_normal(n) * np.exp(-6.9078 * t / rt60)  # -60 dB at rt60
    pre = int(0.003 * sr)  # the reflections start a few ms after the direct sound
    tail[:pre] = 0.0
    tail *= db_to_amp(-drr_db) / (np.sqrt(np.sum(tail**2)) or 1.0)
    tail[0] = 1.0
    return tail.astype(np.float32)


def convolve(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Linear convolution by FFT, cut to len(x), level kept."""
    n = x.size + h.size - 1
    size = 1 << (n - 1).bit_length()
    y = np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(h, size), size)[: x.size]
    return (y * (rms(x) / (rms(y) or 1.0))).astype(np.float32)


def add_noise(x: np.ndarray, noise: np.ndarray, snr_db: float, speech_power: float) -> np.ndarray:
    """x + noise scaled so speech_power / noise power = snr_db."""
    scale = math.sqrt(speech_power / (10 ** (snr_db / 10.0))) / (rms(noise) or 1.0)
    return (x + noise[: x.size] * scale).astype(np.float32)


def pad(x: np.ndarray, sr: int, left_s: float, right_s: float) -> np.ndarray:
    return np.concatenate([np.zeros(int(left_s * sr), np.float32), x, np.zeros(int(right_s * sr), np.float32)])


def dither(x: np.ndarray, level_db: float, rng: np.random.Generator) -> np.ndarray:
    """Low-level Gaussian noise (level_db dBFS RMS) so no stretch is digital silence."""
    return (x + rng.standard_normal(x.size).astype(np.float32) * db_to_amp(level_db)).astype(np.float32)


def limit(x: np.ndarray, peak: float = 0.98) -> np.ndarray:
    m = float(np.max(np.abs(x))) if x.size else 0.0
    return x * (peak / m) if m > peak else x


def longest_zero_run(x: np.ndarray) -> int:
    """Length of the longest run of exact zeros (for checks)."""
    z = np.concatenate([[0], (np.asarray(x) == 0).astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(z))
    return int((edges[1::2] - edges[::2]).max()) if edges.size else 0
