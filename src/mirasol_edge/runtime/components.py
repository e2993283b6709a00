"""The I/O contract of the five components: one small spec each, in the manner of optimum's
export configs. Export, the build, calibration, every backend and the stream read it here.

Names (state travels as ``past.X`` in, ``present.X`` out)::

  chunk_encoder  video [B,F,H,W,3] u8 (as decoded), mel [B,T,n_mels] f32, past.memory [B,M,Dc]
                 -> latents [B,m,Dc], present.memory
  ar_step        latents [B,m,Dc], past.pos [B] i64, past.{i}.key/.value [B,H,W*m,dh], past.context [B,W*m,Dar]
                 -> outputs [B,m,Dar], present.pos, present.{i}.key/.value, present.context
  text_prefill   tokens [1,prompt_len] i64, context [1,W*m,Dar], pos [1] i64
                 -> logits [1,V], present.{i}.key/.value [1,Ht,prompt_len,dt],
                    cross.{i}.key/.value [1,Ht,1+W*m,dt], cross_bias [1,1,1,1+W*m]
  text_decode    token [1,1] i64, past.{i}.key/.value [1,Ht,past_len,dt], cross.*, cross_bias
                 -> logits [1,V], present.{i}.key/.value [1,Ht,past_len+1,dt]
  text_score     tokens, positions, segments [score_rows,score_len] i64, score_at, score_tokens
                 [score_rows,score_tokens] i64, row_stream [score_rows] i64, context [B,W*m,Dar], pos [B] i64
                 -> score_logprobs [score_rows,score_tokens]: log p(score_tokens | the row's tokens up to
                    score_at). Every watch due on a push is one row: its prompt once (segment 0), then each
                    candidate's answer (segment c+1, positions continuing the prompt's, seeing only the
                    prompt and itself), all in one call; the cross-attention keys/values are made once per
                    stream of the push group

A stream's state is named ``memory``, ``pos``, ``kv.{i}.key``/``kv.{i}.value`` and ``context``;
``state_input``/``state_output`` give the tensor names it travels under.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .config import MirasolConfig

COMPONENTS = ("chunk_encoder", "ar_step", "text_prefill", "text_decode", "text_score")
PROMPT_LEN, PAST_LEN = "prompt_len", "past_len"  # the named dynamic axes of asking
SCORE_ROWS, SCORE_LEN, SCORE_TOKENS = "score_rows", "score_len", "score_tokens"  # and of watching
MAX_SCORE_ROWS = 256  # watches in one text_score call; more are run in several
MAX_CANDIDATES = 8  # answers of one closed-set watch: they share its row


def state_input(state: str) -> str:
    """State ``kv.3.key`` travels into a graph as ``past.3.key``; ``memory`` as ``past.memory``."""
    return "past." + state.removeprefix("kv.")


def state_output(state: str) -> str:
    return "present." + state.removeprefix("kv.")


def kv_names(prefix: str, depth: int) -> list[str]:
    return [f"{prefix}.{i}.{part}" for i in range(depth) for part in ("key", "value")]


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of a graph: the contract's, the manifest's record of a built one, an opened one's."""

    name: str
    dtype: str  # numpy name: float32, int64
    shape: tuple[int | str, ...]  # a str is a named dynamic axis

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)

    def example(self, rng: np.random.Generator, dims: dict[str, int]) -> np.ndarray:
        shape = tuple(dims[d] if isinstance(d, str) else d for d in self.shape)
        if self.dtype == "int64":
            return np.zeros(shape, np.int64)
        if self.dtype == "uint8":
            return rng.integers(0, 256, shape, dtype=np.uint8)
        return rng.standard_normal(shape).astype(self.dtype)


@dataclass(frozen=True)
class ComponentContract:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    # named dynamic axis -> (min, max): the engines' optimization profiles come from these
    dynamic: dict[str, tuple[int, int]] = field(default_factory=dict)
    # stream state carried by this component: state name -> (input, output)
    state: dict[str, tuple[str, str]] = field(default_factory=dict)
    # inputs that read the stream's state without changing it: input -> state name
    from_state: dict[str, str] = field(default_factory=dict)
    # inputs fed by the text step before (the prefill, then each decode step): input -> its output
    from_previous: dict[str, str] = field(default_factory=dict)

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def dummy_inputs(self, seed: int = 0) -> dict[str, np.ndarray]:
        """Inputs of the right names, dtypes and shapes (dynamic axes at their maximum)."""
        rng = np.random.default_rng(seed)
        dims = {d: hi for d, (_, hi) in self.dynamic.items()}
        return {t.name: t.example(rng, dims) for t in self.inputs}


def _t(name: str, shape: tuple, dtype: str = "float32") -> TensorSpec:
    return TensorSpec(name, dtype, tuple(shape))


def state_shapes(cfg: MirasolConfig, batch: int = 1) -> dict[str, tuple[tuple[int, ...], str]]:
    """A stream's state: name -> (shape, dtype), in the order the AR step takes it."""
    ring = cfg.window_chunks * cfg.latents_per_chunk
    shapes: dict[str, tuple[tuple[int, ...], str]] = {"pos": ((batch,), "int64")}
    if cfg.combiner == "ttm":
        shapes["memory"] = ((batch, cfg.ttm_memory_size, cfg.combiner_width), "float32")
    for i in range(cfg.ar_depth):
        for part in ("key", "value"):
            shapes[f"kv.{i}.{part}"] = ((batch, cfg.ar_heads, ring, cfg.ar_width // cfg.ar_heads), "float32")
    shapes["context"] = ((batch, ring, cfg.ar_width), "float32")
    return shapes


def text_bounds(max_question_tokens: int, max_answer_tokens: int) -> dict[str, tuple[int, int]]:
    """The text lengths' (min, max): a prompt is ``[BOS] question [SEP]``; a decode step's past is
    the prompt and the answer so far (the last of ``max_answer_tokens`` is never fed back); a scored
    row is a prompt and up to ``MAX_CANDIDATES`` answers of at most ``max_answer_tokens - 1`` tokens,
    each scored with its ``EOS``."""
    prompt, answer = max_question_tokens + 2, max_answer_tokens - 1
    return {PROMPT_LEN: (2, prompt), PAST_LEN: (2, prompt + answer),
            SCORE_LEN: (2, prompt + MAX_CANDIDATES * answer), SCORE_TOKENS: (2, MAX_CANDIDATES * (answer + 1))}


def contracts(cfg: MirasolConfig, batch: int = 1, max_question_tokens: int | None = None,
              max_answer_tokens: int | None = None) -> dict[str, ComponentContract]:
    """The five components' contracts for a model of ``cfg`` serving ``batch`` streams at once;
    the text lengths are the build's (its recipe may ask for less than the model allows), and
    from them come both the graphs' dynamic axes and the engines' optimization profiles."""
    b, m, ring = batch, cfg.latents_per_chunk, cfg.window_chunks * cfg.latents_per_chunk
    bounds = text_bounds(max_question_tokens or cfg.max_question_tokens, max_answer_tokens or cfg.max_answer_tokens)
    state = state_shapes(cfg, batch)

    def carried(names: list[str]) -> tuple[list[TensorSpec], list[TensorSpec], dict]:
        ins = [_t(state_input(n), state[n][0], state[n][1]) for n in names]
        outs = [_t(state_output(n), state[n][0], state[n][1]) for n in names]
        return ins, outs, {n: (state_input(n), state_output(n)) for n in names}

    enc_in = [_t("video", (b, cfg.frames_per_chunk, cfg.image_size, cfg.image_size, 3), "uint8")]
    if cfg.use_audio:
        enc_in.append(_t("mel", (b, cfg.mel_frames_per_chunk, cfg.n_mels)))
    mem_in, mem_out, mem_state = carried(["memory"] if "memory" in state else [])
    encoder = ComponentContract("chunk_encoder", (*enc_in, *mem_in),
                                (_t("latents", (b, m, cfg.combiner_width)), *mem_out), state=mem_state)

    ar_names = [n for n in state if n != "memory"]
    ar_in, ar_out, ar_state = carried(ar_names)
    ar = ComponentContract("ar_step", (_t("latents", (b, m, cfg.combiner_width)), *ar_in),
                           (_t("outputs", (b, m, cfg.ar_width)), *ar_out), state=ar_state)

    th, dt, depth = cfg.text_heads, cfg.text_width // cfg.text_heads, cfg.text_depth
    cross = [_t(n, (1, th, 1 + ring, dt)) for n in kv_names("cross", depth)]
    bias = _t("cross_bias", (1, 1, 1, 1 + ring))
    logits = _t("logits", (1, cfg.vocab_size))
    prefill = ComponentContract(
        "text_prefill",
        (_t("tokens", (1, PROMPT_LEN), "int64"), _t("context", (1, ring, cfg.ar_width)), _t("pos", (1,), "int64")),
        (logits, *[_t(n, (1, th, PROMPT_LEN, dt)) for n in kv_names("present", depth)], *cross, bias),
        {PROMPT_LEN: bounds[PROMPT_LEN]}, from_state={"context": "context", "pos": "pos"})
    decode = ComponentContract(
        "text_decode",
        (_t("token", (1, 1), "int64"), *[_t(n, (1, th, PAST_LEN, dt)) for n in kv_names("past", depth)], *cross, bias),
        (logits, *[_t(n, (1, th, PAST_LEN + "+1", dt)) for n in kv_names("present", depth)]),
        {PAST_LEN: bounds[PAST_LEN]},
        from_previous={**dict(zip(kv_names("past", depth), kv_names("present", depth))),
                       **{n: n for n in kv_names("cross", depth)}, "cross_bias": "cross_bias"})
    # The watches of a whole push group at once, against the group's new state as the AR step left it.
    score = ComponentContract(
        "text_score",
        (*[_t(n, (SCORE_ROWS, SCORE_LEN), "int64") for n in ("tokens", "positions", "segments")],
         *[_t(n, (SCORE_ROWS, SCORE_TOKENS), "int64") for n in ("score_at", "score_tokens")],
         _t("row_stream", (SCORE_ROWS,), "int64"), _t("context", (b, ring, cfg.ar_width)), _t("pos", (b,), "int64")),
        (_t("score_logprobs", (SCORE_ROWS, SCORE_TOKENS)),),
        {SCORE_ROWS: (1, MAX_SCORE_ROWS), SCORE_LEN: bounds[SCORE_LEN], SCORE_TOKENS: bounds[SCORE_TOKENS]},
        from_state={"context": "context", "pos": "pos"})
    return {c.name: c for c in (encoder, ar, prefill, decode, score)}
