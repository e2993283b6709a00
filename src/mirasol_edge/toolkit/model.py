"""Mirasol: per-chunk encoders + Combiner, the audio-video autoregressive model, a text decoder.

Streaming state is plain data: a dict of named tensors (see ``Mirasol.init_state``)::

    pos              [B] int64         chunks seen so far
    memory           [B, M, Dc]        TTM memory (TTM Combiner only)
    kv.{i}.key       [B, H, W*m, dh]   AR ring buffer, layer i
    kv.{i}.value     [B, H, W*m, dh]
    context          [B, W*m, ar_width] ring of AR outputs the text decoder reads
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from mirasol_edge.errors import MirasolError
from mirasol_edge.runtime import components
from mirasol_edge.runtime.config import MirasolConfig
from mirasol_edge.runtime.generate import greedy

from .autoregressive import AutoregressiveModel
from .combiners import build_combiner
from .encoders import AudioEncoder, VideoEncoder
from .text import TextDecoder
from .tokenizer import ByteTokenizer, Tokenizer, prompt_ids
from .weights import load_state_dict_checked, read_config, save_model

State = dict[str, Tensor]


class ShapeError(MirasolError, ValueError):
    """An input tensor does not have the shape the config implies."""

    exit_code = 2


class ChunkEncoder(nn.Module):
    """Video encoder + audio encoder + Combiner: one chunk in, ``m`` latents out (one engine)."""

    def __init__(self, cfg: MirasolConfig) -> None:
        super().__init__()
        self.video = VideoEncoder(cfg)
        self.video_proj = nn.Linear(cfg.video_width, cfg.combiner_width)
        self.audio = AudioEncoder(cfg) if cfg.use_audio else None
        self.audio_proj = nn.Linear(cfg.audio_width, cfg.combiner_width) if cfg.use_audio else None
        self.combiner = build_combiner(cfg)

    def forward(self, video: Tensor, mel: Tensor | None, memory: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """video [B, F, H, W, 3] float in [0, 1], mel [B, T, n_mels] -> (latents [B, m, Dc], memory')."""
        tokens = self.video_proj(self.video(video))
        if self.audio is not None:
            tokens = torch.cat([tokens, self.audio_proj(self.audio(mel))], dim=1)
        return self.combiner(tokens, memory)


class Mirasol(nn.Module):
    def __init__(self, cfg: MirasolConfig, tokenizer: Tokenizer | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.tokenizer = tokenizer or ByteTokenizer()
        if self.tokenizer.vocab_size > cfg.vocab_size:
            raise ValueError(f"tokenizer has {self.tokenizer.vocab_size} tokens; config vocab_size is {cfg.vocab_size}")
        self.chunk_encoder = ChunkEncoder(cfg)
        self.ar = AutoregressiveModel(cfg)
        self.text = TextDecoder(cfg)

    # ---- state --------------------------------------------------------------------
    def init_state(self, batch: int = 1, device: torch.device | str | None = None) -> State:
        # The state's names, shapes and dtypes are the component contract's (fp32 whatever the
        # weights' precision); parts may still be on meta while a large model is built part by part.
        device = device or next((p.device for p in self.parameters() if not p.is_meta), "cpu")
        state: State = {}
        for name, (shape, dtype) in components.state_shapes(self.cfg, batch).items():
            if name == "memory":  # the TTM memory starts from learned values
                memory = self.chunk_encoder.combiner.initial_memory
                if memory.is_meta:
                    raise RuntimeError("init_state needs the chunk encoder's weights (its TTM memory); it is on meta")
                state[name] = memory.detach().to(device, torch.float32).expand(batch, -1, -1).clone()
            else:
                state[name] = torch.zeros(shape, dtype=getattr(torch, dtype), device=device)
        return state

    # ---- input checks -------------------------------------------------------------
    def _check(self, name: str, tensor: Tensor, expected: tuple[int | None, ...]) -> None:
        ok = tensor.dim() == len(expected) and all(e is None or e == s for e, s in zip(expected, tensor.shape))
        if not ok:
            shown = "[" + ", ".join("B" if e is None else str(e) for e in expected) + "]"
            raise ShapeError(
                f"{name}: expected shape {shown} for config {self.cfg.name!r}, got {list(tensor.shape)}"
            )

    def _video_float(self, video: Tensor) -> Tensor:
        dtype = next(self.parameters()).dtype
        return video.to(dtype) / 255.0 if video.dtype == torch.uint8 else video.to(dtype)

    # ---- encoding -----------------------------------------------------------------
    def encode_chunk(self, video: Tensor, mel: Tensor | None, state: State) -> tuple[Tensor, State]:
        """One chunk: video [B, F, H, W, 3], mel [B, T, n_mels] -> (latents [B, m, ar_width], new state).

        The state passed in is not modified.
        """
        cfg = self.cfg
        self._check("video chunk", video, (None, cfg.frames_per_chunk, cfg.image_size, cfg.image_size, 3))
        if cfg.use_audio:
            self._check("mel chunk", mel, (None, cfg.mel_frames_per_chunk, cfg.n_mels))
        latents, memory = self.chunk_encoder(self._video_float(video), mel, state.get("memory"))
        return self.ar_step(latents, memory, state)

    def ar_step(self, latents: Tensor, memory: Tensor | None, state: State) -> tuple[Tensor, State]:
        """The AR step on a chunk's Combiner latents (and the TTM memory it left) -> (outputs, new state)."""
        kv = components.kv_names("kv", self.cfg.ar_depth)  # kv.0.key, kv.0.value, kv.1.key, ...
        out, keys, values, context, pos = self.ar.step(latents, state["pos"], [state[n] for n in kv[0::2]],
                                                       [state[n] for n in kv[1::2]], state["context"])
        new_state: State = {"pos": pos}
        if memory is not None:
            new_state["memory"] = memory
        new_state.update(zip(kv, (t for pair in zip(keys, values) for t in pair)))
        new_state["context"] = context
        return out, new_state

    def combine_offline(self, video: Tensor, mel: Tensor | None) -> Tensor:
        """Whole clip -> Combiner latents [B, C, m, Dc]; encoders batched over chunks, TTM memory in order."""
        cfg = self.cfg
        b, frames = video.shape[:2]
        self._check("video", video, (None, frames, cfg.image_size, cfg.image_size, 3))
        if frames == 0 or frames % cfg.frames_per_chunk:
            raise ShapeError(f"video: {frames} frames is not a positive multiple of {cfg.frames_per_chunk} per chunk")
        c = frames // cfg.frames_per_chunk
        video = self._video_float(video).reshape(b * c, cfg.frames_per_chunk, *video.shape[2:])
        if cfg.use_audio:
            self._check("mel", mel, (None, c * cfg.mel_frames_per_chunk, cfg.n_mels))
            mel = mel.reshape(b * c, cfg.mel_frames_per_chunk, cfg.n_mels)
        encoder = self.chunk_encoder
        tokens = encoder.video_proj(encoder.video(video))
        if encoder.audio is not None:
            tokens = torch.cat([tokens, encoder.audio_proj(encoder.audio(mel))], dim=1)
        tokens = tokens.reshape(b, c, *tokens.shape[1:])
        if not encoder.combiner.has_memory:
            latents, _ = encoder.combiner(tokens.flatten(0, 1), None)
            return latents.reshape(b, c, *latents.shape[1:])
        memory = encoder.combiner.initial_memory.expand(b, -1, -1)
        per_chunk = []
        for i in range(c):
            latents, memory = encoder.combiner(tokens[:, i], memory)
            per_chunk.append(latents)
        return torch.stack(per_chunk, dim=1)

    def encode_offline(self, video: Tensor, audio: Tensor | None) -> Tensor:
        """Whole clip: video [B, C*F, H, W, 3], mel [B, C*T, n_mels] -> latents [B, C*m, ar_width].

        Same numbers as ``encode_chunk`` over the chunks in order (the AR model is windowed
        identically), within float rounding.
        """
        outputs = self.ar(self.combine_offline(video, audio))
        return outputs.flatten(1, 2)

    # ---- answering ----------------------------------------------------------------
    def context_of(self, source: Tensor | State) -> tuple[Tensor, Tensor, Tensor]:
        """(context [B, N, ar_width], age [B, N], valid [B, N]) from a state or from offline latents."""
        cfg = self.cfg
        m = cfg.latents_per_chunk
        if isinstance(source, dict):
            age, valid = self.ar.context_ages(source["pos"], cfg.window_chunks, m)
            return source["context"], age, valid
        b, n, _ = source.shape
        chunks = n // m
        keep = min(chunks, cfg.window_chunks)
        context = source[:, (chunks - keep) * m :]
        age = (keep - 1 - torch.arange(keep * m, device=source.device) // m).expand(b, -1)
        return context, age, torch.ones_like(age, dtype=torch.bool)

    @torch.no_grad()
    def answer(
        self, source: Tensor | State, question: str | list[str], max_new_tokens: int | None = None
    ) -> str | list[str]:
        """Greedy answer(s) from a stream state or offline latents; one question per batch item."""
        questions = [question] if isinstance(question, str) else list(question)
        context, age, valid = self.context_of(source)
        if len(questions) != context.shape[0]:
            raise ValueError(f"{len(questions)} questions for a batch of {context.shape[0]}")
        limit = min(max_new_tokens or self.cfg.max_answer_tokens, self.cfg.max_answer_tokens)
        answers = [
            self._generate(context[i : i + 1], age[i : i + 1], valid[i : i + 1], q, limit)
            for i, q in enumerate(questions)
        ]
        return answers[0] if isinstance(question, str) else answers

    def _generate(self, context: Tensor, age: Tensor, valid: Tensor, question: str, limit: int) -> str:
        tok = self.tokenizer
        memory, cross_bias = self.text.memory(context, age, valid)
        cross = self.text.cross_kv(memory)
        ids = torch.tensor([prompt_ids(tok, question, self.cfg.max_question_tokens)], device=context.device)
        logits, past = self.text(ids, cross, cross_bias)
        device = context.device

        def step(token: int):
            nonlocal past
            logits, past = self.text(torch.tensor([[token]], device=device), cross, cross_bias, past)
            return logits[0, -1].detach().float().cpu().numpy()

        out = greedy(logits[0, -1].detach().float().cpu().numpy(), step, tok.eos_id, limit)
        return tok.decode(out)

    # ---- weights ------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Weights and config in one safetensors file, written atomically."""
        save_model(self, path)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> Mirasol:
        """A checkpoint, its config read from the file and every tensor's name and shape checked."""
        model = cls(read_config(path))
        load_state_dict_checked(model, Path(path))
        return model.to(device).eval()
