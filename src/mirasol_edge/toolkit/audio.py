"""The model's reference log-mel, in torch (see ``mirasol_edge.runtime.decode.mel`` for the definition)."""

from __future__ import annotations

import torch
from torch import Tensor

from mirasol_edge.runtime.config import MirasolConfig
from mirasol_edge.runtime.decode.mel import FLOOR, mel_filterbank


def log_mel(audio: Tensor, cfg: MirasolConfig) -> Tensor:
    """Mono samples [B, S] at ``cfg.sample_rate`` -> log-mel dB [B, S // hop_length, n_mels]."""
    frames = audio.shape[-1] // cfg.hop_length
    window = torch.hann_window(cfg.n_fft, periodic=True, dtype=audio.dtype, device=audio.device)
    spec = torch.stft(audio, cfg.n_fft, cfg.hop_length, window=window, center=True, pad_mode="reflect",
                      return_complex=True)
    power = spec.abs().pow(2)[..., :frames]  # [B, n_fft//2+1, T]
    bank = torch.from_numpy(mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels)).to(audio)
    mel = (bank @ power).transpose(1, 2)
    return 10.0 * torch.log10(mel.clamp_min(FLOOR))
