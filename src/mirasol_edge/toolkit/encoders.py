"""Per-chunk encoders: a spatio-temporal video ViT and an audio ViT over log-mel patches."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mirasol_edge.runtime.config import MirasolConfig

from .layers import Encoder

# ImageNet-style normalisation for RGB in [0, 1].
VIDEO_MEAN, VIDEO_STD = 0.45, 0.225
# Log-mel in dB (power, ref 1.0, floor -100 dB) lands roughly in [-100, 30].
MEL_DB_CENTER, MEL_DB_SCALE = -40.0, 40.0


class VideoEncoder(nn.Module):
    """ViT over tubelets of ``tubelet_frames x patch_size x patch_size`` pixels.

    ``video`` [B, F, H, W, 3] float in [0, 1] -> tokens [B, video_tokens, video_width].
    """

    def __init__(self, cfg: MirasolConfig) -> None:
        super().__init__()
        self.cfg = cfg
        t, p = cfg.tubelet_frames, cfg.patch_size
        self.embed = nn.Linear(t * p * p * 3, cfg.video_width)
        self.position = nn.Parameter(torch.randn(1, cfg.video_tokens, cfg.video_width) * 0.02)
        self.encoder = Encoder(cfg.video_width, cfg.video_depth, cfg.video_heads, cfg.mlp_ratio)

    def tubelets(self, video: Tensor) -> Tensor:
        """[B, F, H, W, 3] -> [B, N, t*p*p*3], tubelets in (time, row, column) order."""
        b, f, h, w, c = video.shape
        t, p = self.cfg.tubelet_frames, self.cfg.patch_size
        x = video.reshape(b, f // t, t, h // p, p, w // p, p, c)
        x = x.permute(0, 1, 3, 5, 2, 4, 6, 7)
        return x.reshape(b, (f // t) * (h // p) * (w // p), t * p * p * c)

    def forward(self, video: Tensor) -> Tensor:
        x = (self.tubelets(video) - VIDEO_MEAN) / VIDEO_STD
        return self.encoder(self.embed(x) + self.position)


class AudioEncoder(nn.Module):
    """ViT over ``audio_patch_time x audio_patch_mels`` patches of the chunk's log-mel.

    ``mel`` [B, T, n_mels] dB -> tokens [B, audio_tokens, audio_width].
    """

    def __init__(self, cfg: MirasolConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Linear(cfg.audio_patch_time * cfg.audio_patch_mels, cfg.audio_width)
        self.position = nn.Parameter(torch.randn(1, cfg.audio_tokens, cfg.audio_width) * 0.02)
        self.encoder = Encoder(cfg.audio_width, cfg.audio_depth, cfg.audio_heads, cfg.mlp_ratio)

    def patches(self, mel: Tensor) -> Tensor:
        b, t, n = mel.shape
        pt, pm = self.cfg.audio_patch_time, self.cfg.audio_patch_mels
        x = mel.reshape(b, t // pt, pt, n // pm, pm).permute(0, 1, 3, 2, 4)
        return x.reshape(b, (t // pt) * (n // pm), pt * pm)

    def forward(self, mel: Tensor) -> Tensor:
        x = (self.patches(mel) - MEL_DB_CENTER) / MEL_DB_SCALE
        return self.encoder(self.embed(x) + self.position)
