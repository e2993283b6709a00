"""Calibration data from real media and explicit quantization."""
