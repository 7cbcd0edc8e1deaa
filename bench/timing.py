"""The one clock of the project: wall time with CUDA synchronised before it is read.

Every per-instance timing (``Reconstruction.timings``), ``bench profile`` and the benchmarks read
time through :class:`Stopwatch` / :func:`synchronize`, so a GPU's queued kernels are always
counted in the stage that launched them.
"""
from __future__ import annotations

import time
from contextlib import contextmanager


def synchronize(device) -> None:
    """Wait for queued CUDA work on ``device`` (no-op on CPU or a CPU-only torch)."""
    dev = getattr(device, "type", str(device))
    if str(dev).startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)


class Stopwatch:
    """Accumulates CUDA-synchronised wall seconds per named stage.

    >>> sw = Stopwatch("cpu")
    >>> with sw("optimize"):
    ...     pass
    >>> sorted(sw.seconds)
    ['optimize']
    """

    def __init__(self, device="cpu"):
        self.device = device
        self.seconds: dict[str, float] = {}
        self.laps: dict[str, list[float]] = {}

    @contextmanager
    def __call__(self, stage: str):
        synchronize(self.device)
        start = time.perf_counter()
        try:
            yield
        finally:
            synchronize(self.device)
            elapsed = time.perf_counter() - start
            self.seconds[stage] = self.seconds.get(stage, 0.0) + elapsed
            self.laps.setdefault(stage, []).append(elapsed)



def per_instance(batch_seconds: dict[str, float], batch_size: int) -> dict[str, float]:
    """The per-instance timing contract: each stage's batch seconds divided by the batch size
    (the whole batch's seconds go to ``Reconstruction.info["batch_timings"]``)."""
    return {stage: seconds / max(1, int(batch_size)) for stage, seconds in batch_seconds.items()}
