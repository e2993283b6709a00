"""Percentiles of latency samples, as mirasol-bench and mirasol-run report them."""

from __future__ import annotations

import numpy as np

STAGES = ("decode", "encode", "ar_step", "prefill", "decode_token")  # the stages mirasol-bench times


def stats(values: list[float]) -> dict | None:
    if not values:
        return None
    a = np.asarray(values, dtype=np.float64)
    return {"n": len(a), "p50": round(float(np.percentile(a, 50)), 4), "p90": round(float(np.percentile(a, 90)), 4),
            "p99": round(float(np.percentile(a, 99)), 4), "max": round(float(a.max()), 4),
            "mean": round(float(a.mean()), 4)}
