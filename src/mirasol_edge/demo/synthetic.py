"""A synthetic audio-video question-answering task with exact answers, as real encoded clips.

Each clip (seeded, deterministic) is ``CHUNKS`` seconds of H.264 or VP9 video with AAC or
Opus audio, written through PyAV:

- two squares, one after the other: the first (colour c1) for the first half, the second
  (colour c2) for the second half, each crossing the frame once a second in one direction
  (a conveyor: it comes in again from the same side);
- one white flash of the background, 0.5 s long, in one chunk;
- one to three beeps, all high (1600 Hz) or all low (400 Hz), each in its own chunk.

Questions need vision ("what colour is the square?", "which way does it move?"), audio
("how many beeps?", "high or low tone?"), both in time ("did the flash come before or after
the first beep?") and memory across chunks ("what colour was the first shape?", asked at
the end, about something seen chunks ago but inside the window W).

Long clips (``make_long_clip``, ``LONG_CHUNKS`` = 64 s by default, any length) are for standing
questions asked at every chunk: squares in segments of 2 to 6 chunks (the colour changes only at
a chunk boundary), flashes (each 0.25-0.75 s into its chunk) and runs of beeping chunks (one beep
0.3-0.7 s into each); ``LongClipFacts.truth(c)`` gives ``{type: answer}`` for the
``WATCH_QUESTIONS`` about chunk ``c``, the latest chunk when asked there (``ClipFacts.truth`` too).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from mirasol_edge.runtime.files import write_json_atomic

CHUNKS = 6  # seconds; the tiny preset has 1 s chunks and W = 8, so the whole clip is in the window
FPS = 8
SIZE = 64
SQUARE = 20
SAMPLE_RATE = 16000
COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 80, 230), "yellow": (230, 210, 40)}
DIRECTIONS = ("left", "right", "up", "down")
COUNTS = ("one", "two", "three")
PITCHES = {"high": 1600.0, "low": 400.0}
BACKGROUND, FLASH = 40, 235
HELDOUT_SEED = 10_000_000  # held-out clips use seeds from here on; training uses seeds below it

QUESTIONS = {
    "colour": "what colour is the square?",
    "direction": "which way does it move?",
    "beeps": "how many beeps?",
    "pitch": "high or low tone?",
    "order": "did the flash come before or after the first beep?",
    "memory": "what colour was the first shape?",
}


@dataclass(frozen=True)
class ClipFacts:
    seed: int
    colours: tuple[str, str]
    directions: tuple[str, str]
    flash_chunk: int
    beep_chunks: tuple[int, ...]
    pitch: str
    vcodec: str
    acodec: str

    def answers(self) -> dict[str, str]:
        return {
            "colour": self.colours[1],
            "direction": self.directions[1],
            "beeps": COUNTS[len(self.beep_chunks) - 1],
            "pitch": self.pitch,
            "order": "before" if self.flash_chunk < min(self.beep_chunks) else "after",
            "memory": self.colours[0],
        }

    def qa(self) -> list[dict[str, str]]:
        """[{"type", "question", "answer"}] for this clip."""
        answers = self.answers()
        return [{"type": kind, "question": QUESTIONS[kind], "answer": answers[kind]} for kind in QUESTIONS]

    def to_dict(self) -> dict:
        return {**asdict(self), "qa": self.qa()}

    def truth(self, chunk: int) -> dict[str, str]:
        """The per-moment answers (``WATCH_QUESTIONS``' types) about chunk ``chunk``."""
        return moment_truth(self.colours[0 if chunk < CHUNKS / 2 else 1], chunk == self.flash_chunk,
                            chunk in self.beep_chunks)


def sample_facts(seed: int) -> ClipFacts:
    rng = np.random.default_rng(seed)
    c1, c2 = rng.choice(list(COLOURS), size=2, replace=False)
    d1, d2 = rng.choice(DIRECTIONS, size=2)
    flash = int(rng.integers(CHUNKS))
    others = [c for c in range(CHUNKS) if c != flash]
    beeps = tuple(sorted(int(c) for c in rng.choice(others, size=int(rng.integers(1, 4)), replace=False)))
    pitch = str(rng.choice(list(PITCHES)))
    vcodec, acodec = [("libx264", "aac"), ("libvpx-vp9", "libopus")][int(rng.integers(2))]
    return ClipFacts(seed, (str(c1), str(c2)), (str(d1), str(d2)), flash, beeps, pitch, vcodec, acodec)


def _square_position(direction: str, progress: float) -> tuple[int, int]:
    """Top-left corner (x, y) of a square crossing the frame; progress in [0, 1)."""
    travel = SIZE - SQUARE
    along = int(round(progress * travel))
    middle = travel // 2
    return {"right": (along, middle), "left": (travel - along, middle),
            "down": (middle, along), "up": (middle, travel - along)}[direction]


def render_frame(facts: ClipFacts, t: float) -> np.ndarray:
    half = CHUNKS / 2
    flash = facts.flash_chunk + 0.25 <= t < facts.flash_chunk + 0.75
    img = np.full((SIZE, SIZE, 3), FLASH if flash else BACKGROUND, np.uint8)
    which = 0 if t < half else 1
    # A conveyor: the square crosses the frame once a second and comes in again from the
    # same side, so every chunk shows the motion (a slow crossing moved ~2 px between the
    # tiny preset's frames, too little for it to learn "which way").
    progress = t % 1.0
    x, y = _square_position(facts.directions[which], progress)
    img[y : y + SQUARE, x : x + SQUARE] = COLOURS[facts.colours[which]]
    return img


def render_audio(facts: ClipFacts) -> np.ndarray:
    t = np.arange(CHUNKS * SAMPLE_RATE) / SAMPLE_RATE
    audio = np.zeros_like(t, dtype=np.float32)
    for chunk in facts.beep_chunks:
        on = (t >= chunk + 0.4) & (t < chunk + 0.65)
        audio[on] = 0.5 * np.sin(2 * np.pi * PITCHES[facts.pitch] * t[on])
    return audio


def write_clip(facts: ClipFacts, path: str | Path) -> Path:
    """Encode the clip (the container follows the suffix: .mp4 or .mkv)."""
    return encode_clip(path, facts.vcodec, facts.acodec, CHUNKS, lambda t: render_frame(facts, t),
                       render_audio(facts))


def encode_clip(path: str | Path, vcodec: str, acodec: str, seconds: int, frame_at, samples: np.ndarray) -> Path:
    """Encode ``seconds`` of video (``frame_at(t)`` -> RGB frame at FPS) and mono audio at SAMPLE_RATE."""
    path = Path(path)
    with av.open(str(path), "w") as out:
        video = out.add_stream(vcodec, rate=FPS)
        video.width = video.height = SIZE
        video.pix_fmt = "yuv420p"
        video.options = {"deadline": "realtime", "cpu-used": "8"} if vcodec == "libvpx-vp9" else {
            "preset": "veryfast"}
        audio = out.add_stream(acodec, rate=48000 if acodec == "libopus" else SAMPLE_RATE)
        audio.layout = "mono"
        for i in range(seconds * FPS):
            frame = av.VideoFrame.from_ndarray(frame_at(i / FPS), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, FPS)
            for packet in video.encode(frame):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
        rate = audio.codec_context.sample_rate
        if rate != SAMPLE_RATE:  # Opus runs at 48 kHz: render at its rate
            t = np.arange(seconds * rate) / rate
            samples = np.interp(t, np.arange(len(samples)) / SAMPLE_RATE, samples).astype(np.float32)
        encode_mono_audio(out, audio, samples)
    return path


def encode_mono_audio(out: av.container.OutputContainer, stream, samples: np.ndarray) -> None:
    """Encode and mux mono float samples (at the stream's rate) in the encoder's frame size, then flush."""
    fmt, block = stream.codec_context.format.name, stream.codec_context.frame_size or 1024
    rate = stream.codec_context.sample_rate
    for start in range(0, len(samples), block):
        data = samples[start : start + block][None]
        if fmt.startswith("s16"):
            data = (data * 32767).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(data, format=fmt, layout="mono")
        frame.sample_rate, frame.pts = rate, start
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)


def make_clip(seed: int, directory: str | Path) -> tuple[Path, ClipFacts]:
    facts = sample_facts(seed)
    suffix = ".mp4" if facts.vcodec == "libx264" else ".mkv"
    return write_clip(facts, Path(directory) / f"clip-{seed}{suffix}"), facts


# ---- long clips: per-moment truth, chunk by chunk, for standing questions ("watches") ----------

LONG_CHUNKS = 64  # seconds: eight times the tiny preset's window
LONG_TRAIN_SEED = 1_000_000  # training long clips use seeds from here (below HELDOUT_SEED)
LONG_HELDOUT_SEED = HELDOUT_SEED + 500_000  # held-out long clips: apart from the held-out 6-chunk clips
YES_NO = ("yes", "no")
WATCH_QUESTIONS: dict[str, tuple[str, tuple[str, ...] | None]] = {
    "beep": ("is there a beep?", YES_NO),
    "flash": ("is the screen flashing?", YES_NO),
    **{f"square-{c}": (f"is the square {c}?", YES_NO) for c in COLOURS},
    "colour": ("what colour is the square?", None),  # open: one of COLOURS (the same text as QUESTIONS'.)
}


def moment_truth(colour: str, flash: bool, beep: bool) -> dict[str, str]:
    """{watch type: answer} for one chunk, from what that chunk holds."""
    yes = {True: "yes", False: "no"}
    return {"beep": yes[beep], "flash": yes[flash], **{f"square-{c}": yes[c == colour] for c in COLOURS},
            "colour": colour}


@dataclass(frozen=True)
class LongClipFacts:
    """A long clip, chunk by chunk: squares in segments (the colour changes only at a chunk boundary),
    flashes (each inside one chunk, 0.25-0.75 s) and runs of beeping chunks (one beep per chunk, 0.3-0.7 s)."""

    seed: int
    chunks: int
    segments: tuple[tuple[int, str, str], ...]  # (first chunk, colour, direction), in order from chunk 0
    flash_chunks: tuple[int, ...]
    beep_chunks: tuple[int, ...]
    beep_pitches: tuple[str, ...]  # one per beep chunk
    vcodec: str
    acodec: str

    def segment(self, chunk: int) -> tuple[int, str, str]:
        return [s for s in self.segments if s[0] <= chunk][-1]

    def truth(self, chunk: int) -> dict[str, str]:
        """{watch type: answer} about chunk ``chunk`` (the latest chunk when asked there)."""
        if not 0 <= chunk < self.chunks:
            raise IndexError(f"chunk {chunk} outside 0..{self.chunks - 1}")
        return moment_truth(self.segment(chunk)[1], chunk in self.flash_chunks, chunk in self.beep_chunks)

    def qa(self, chunk: int) -> list[dict[str, str]]:
        """[{"type", "question", "answer"}] of every watch question at ``chunk``."""
        truth = self.truth(chunk)
        return [{"type": k, "question": q, "answer": truth[k]} for k, (q, _) in WATCH_QUESTIONS.items()]

    def to_dict(self) -> dict:
        return asdict(self)


def sample_long_facts(seed: int, chunks: int = LONG_CHUNKS) -> LongClipFacts:
    rng = np.random.default_rng([seed, chunks, 7])
    segments, start, colour = [], 0, None
    while start < chunks:
        colour = str(rng.choice([c for c in COLOURS if c != colour]))
        segments.append((start, colour, str(rng.choice(DIRECTIONS))))
        start += int(rng.integers(2, 7))  # 2 to 6 chunks
    flashes = tuple(int(c) for c in np.nonzero(rng.random(chunks) < 0.2)[0])
    beeps, pitches, c = [], [], int(rng.integers(0, 4))
    while c < chunks:
        run, pitch = int(rng.integers(1, 5)), str(rng.choice(list(PITCHES)))
        for b in range(c, min(c + run, chunks)):
            beeps.append(b)
            pitches.append(pitch)
        c += run + int(rng.integers(1, 7))
    vcodec, acodec = [("libx264", "aac"), ("libvpx-vp9", "libopus")][int(rng.integers(2))]
    return LongClipFacts(seed, chunks, tuple(segments), flashes, tuple(beeps), tuple(pitches), vcodec, acodec)


def render_long_frame(facts: LongClipFacts, t: float) -> np.ndarray:
    chunk = int(t)
    flash = chunk in facts.flash_chunks and 0.25 <= t - chunk < 0.75
    img = np.full((SIZE, SIZE, 3), FLASH if flash else BACKGROUND, np.uint8)
    _, colour, direction = facts.segment(chunk)
    x, y = _square_position(direction, t % 1.0)
    img[y : y + SQUARE, x : x + SQUARE] = COLOURS[colour]
    return img


def render_long_audio(facts: LongClipFacts) -> np.ndarray:
    t = np.arange(facts.chunks * SAMPLE_RATE) / SAMPLE_RATE
    audio = np.zeros_like(t, dtype=np.float32)
    for chunk, pitch in zip(facts.beep_chunks, facts.beep_pitches):
        on = (t >= chunk + 0.3) & (t < chunk + 0.7)
        audio[on] = 0.5 * np.sin(2 * np.pi * PITCHES[pitch] * t[on])
    return audio


def write_long_clip(facts: LongClipFacts, path: str | Path) -> Path:
    return encode_clip(path, facts.vcodec, facts.acodec, facts.chunks, lambda t: render_long_frame(facts, t),
                       render_long_audio(facts))


def make_long_clip(seed: int, directory: str | Path, chunks: int = LONG_CHUNKS) -> tuple[Path, LongClipFacts]:
    """Write the long clip for ``seed`` (H.264+AAC .mp4 or VP9+Opus .mkv) and return it with its facts."""
    facts = sample_long_facts(seed, chunks)
    suffix = ".mp4" if facts.vcodec == "libx264" else ".mkv"
    return write_long_clip(facts, Path(directory) / f"long-{seed}-{chunks}{suffix}"), facts


SAMPLE_SEED = 20_000_005  # the committed sample: H.264 + AAC, two high beeps, flash before the first


def write_sample(directory: str | Path, seed: int = SAMPLE_SEED, name: str = "sample") -> tuple[Path, Path]:
    """A clip and its questions (``name.mp4``/``.mkv`` and ``name.json``), as committed under samples/."""

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    facts = sample_facts(seed)
    clip = write_clip(facts, directory / f"{name}{'.mp4' if facts.vcodec == 'libx264' else '.mkv'}")
    info = directory / f"{name}.json"
    write_json_atomic(info, {"clip": clip.name, "made_by": f"python -m mirasol_edge.demo.synthetic --seed {seed}",
                             **facts.to_dict()})
    return clip, info


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="write one synthetic clip and its questions")
    parser.add_argument("--seed", type=int, default=SAMPLE_SEED)
    parser.add_argument("--out", default="samples")
    parser.add_argument("--name", default="sample")
    args = parser.parse_args()
    print(*write_sample(args.out, args.seed, args.name))
