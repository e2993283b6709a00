"""Run side of mirasol-edge: decoding, backends and the stream (no torch needed on a device)."""
