"""Calibration data from real media and explicit quantization (int8, fp8, int4 weight-only)."""

from .pipeline import Quantizer

__all__ = ["Quantizer"]
