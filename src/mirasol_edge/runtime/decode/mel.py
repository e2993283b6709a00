"""Log-mel spectrogram in numpy, for devices with no torch.

Matches ``mirasol_edge.toolkit.audio.log_mel`` (the model's torch reference) and DALI's
defaults: periodic Hann window, centred frames with reflect padding, power spectrum,
Slaney mel scale with area-normalised filters, dB with a -100 dB floor.
A chunk of S samples gives exactly S // hop frames.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

FLOOR = 1e-10  # -100 dB


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney: linear below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    return np.where(hz >= min_log_hz, min_log_mel + np.log(np.maximum(hz, 1e-10) / min_log_hz) / logstep, hz / f_sp)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    return np.where(mel >= min_log_mel, min_log_hz * np.exp(logstep * (mel - min_log_mel)), f_sp * mel)


@lru_cache(maxsize=8)
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    """[n_mels, n_fft // 2 + 1] float32 triangular filters from 0 Hz to Nyquist."""
    freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(sample_rate / 2), n_mels + 2))
    widths = np.diff(edges)
    ramps = edges[:, None] - freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]  # equal area per filter
    return weights.astype(np.float32)


@lru_cache(maxsize=8)
def _window(n_fft: int) -> np.ndarray:
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)


def log_mel(audio: np.ndarray, sample_rate: int, n_fft: int, hop_length: int, n_mels: int) -> np.ndarray:
    """Mono float32 samples [S] -> log-mel dB [S // hop_length, n_mels] float32."""
    audio = np.asarray(audio, dtype=np.float32)
    frames = len(audio) // hop_length
    pad = n_fft // 2
    mode = "reflect" if len(audio) > pad else "constant"
    padded = np.pad(audio, pad, mode=mode)
    starts = np.arange(frames) * hop_length
    windows = padded[starts[:, None] + np.arange(n_fft)[None, :]] * _window(n_fft)
    power = np.abs(np.fft.rfft(windows, axis=1)) ** 2  # [T, n_fft//2+1]
    mel = power.astype(np.float32) @ mel_filterbank(sample_rate, n_fft, n_mels).T
    return (10.0 * np.log10(np.maximum(mel, FLOOR))).astype(np.float32)
