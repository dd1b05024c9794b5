"""FP32 vs INT8 ONNX throughput, side by side on the same faces, as the serving side runs them.

INT8 is not faster everywhere: on a CPU without VNNI, or for a small model such as MobileFaceNet whose time
goes to depthwise convolutions and the quantize/dequantize nodes around them, it can be slower than FP32. So
the quantize stage measures both before it names the variant to serve. Calls alternate between the two models
(one call each per round) so that a machine slowing down or speeding up during the measurement affects both
alike; the median call time gives the throughput.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

from components.evaluation.embedders import OnnxEmbedder, to_input


def _batch(faces: np.ndarray, size: int) -> np.ndarray:
    reps = -(-size // len(faces))
    return to_input(np.concatenate([faces] * reps)[:size])


def compare_throughput(models: dict[str, Path], faces: np.ndarray, batches: tuple[int, ...], threads: int,
                       min_seconds: float = 1.0, min_rounds: int = 5) -> dict[str, dict[str, float]]:
    """Images/s of each model at each batch size: ``{"32": {"fp32": ..., "int8": ...}, ...}``.

    ``threads`` is ONNX Runtime's intra-op thread count (0: its default, every core, as Triton runs it).
    Each batch size runs at least ``min_rounds`` rounds and until every model has run ``min_seconds``.
    """
    sessions = {name: OnnxEmbedder(path, threads=threads).session for name, path in models.items()}
    out: dict[str, dict[str, float]] = {}
    for size in batches:
        x = _batch(faces, size)
        feeds = {name: {s.get_inputs()[0].name: x} for name, s in sessions.items()}
        for name, session in sessions.items():  # warm-up: allocations, kernel selection
            session.run(None, feeds[name])
        times: dict[str, list[float]] = {name: [] for name in sessions}
        while min(len(t) for t in times.values()) < min_rounds or min(sum(t) for t in times.values()) < min_seconds:
            for name, session in sessions.items():
                start = time.perf_counter()
                session.run(None, feeds[name])
                times[name].append(time.perf_counter() - start)
        out[str(size)] = {name: round(size / statistics.median(t), 1) for name, t in times.items()}
    return out
