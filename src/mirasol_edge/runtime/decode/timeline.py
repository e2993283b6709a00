"""Presentation stamps -> one clock, the same rules for every decoder (the assembler's ``Timeline``).

- a frame with no stamp follows the previous one by a frame period;
- a forward jump of more than ``MAX_JUMP_SECONDS`` is a broken timestamp, not a pause: held frames
  across it would be hours of chunks from a short file, so the clock is re-based over it (and the
  chunk flagged DAMAGED);
- a gap of more than ``GAP_PERIODS`` frame periods is frames lost (a corrupt stretch often decodes
  "fine": the demuxer resyncs and frames just go missing);
- the frame period is the shortest step seen: some containers (Matroska) store no rate and
  FFmpeg guesses 24.
"""

from __future__ import annotations

from .types import TruncatedMedia

GAP_PERIODS = 2.5  # variable frame rate sources stretch a period to 2x; a real loss is longer
MAX_JUMP_SECONDS = 30.0
SLACK_SECONDS = 1.0  # a video this much shorter than its container says is truncated


class Timeline:
    def __init__(self, default_period: float) -> None:
        self.default_period = default_period  # before any step is measured (the model's own period)
        self.last: float | None = None  # the last frame's time, on this clock
        self.period: float | None = None
        self.shift = 0.0  # added to stamps since a broken jump: this clock minus the source's
        self.frames = 0

    def place(self, stamp: float | None) -> tuple[float, int]:
        """A frame's time on this clock, and how many frames were lost just before it."""
        self.frames += 1
        if self.last is None:
            self.last = 0.0 if stamp is None else stamp
            return self.last, 0
        period = self.period
        time = self.last + (period or self.default_period) if stamp is None else stamp + self.shift
        step, lost = time - self.last, 0
        if step > MAX_JUMP_SECONDS:
            self.shift -= step - (period or 0.0)
            time, step, lost = self.last + (period or 0.0), period or 0.0, 1
        if step > 0:
            if period and step > GAP_PERIODS * period:
                lost += round(step / period) - 1
            self.period = min(period or step, step)
        self.last = time
        return time, lost

    def end(self, declared_period: float | None = None) -> float:
        """When the last frame stops showing: its time plus a frame period (measured, else declared)."""
        return (self.last or 0.0) + (self.period or declared_period or self.default_period)

    def check_complete(self, name: str, duration: float | None, declared_period: float | None = None) -> None:
        """A video that ends well before what its container declares was cut short (on the file's clock)."""
        if duration and self.last is not None and self.end(declared_period) - self.shift + SLACK_SECONDS < duration:
            raise TruncatedMedia(f"{name}: video ends at {self.last:.2f}s but the container says {duration:.2f}s")
