"""Small factories shared by tests and benchmarks."""
from __future__ import annotations

from pathlib import Path


def manifest_state_dict(path: Path, *, drop_counters: bool = False, uv_batch: int | None = None,
                        fill: bool = True) -> dict:
    """A state dict with every key and shape of a CMR/UMR manifest; values (k % 97)/97, distinct per key.

    ``drop_counters`` leaves out ``num_batches_tracked`` (a PyTorch 0.3 file); ``uv_batch`` resizes
    UMR's batch-sized ``uv_sampler`` buffer.
    """
    import json

    import torch

    shapes = json.loads(Path(path).read_text())["state_dict"]
    out = {}
    for i, (key, shape) in enumerate(shapes.items()):
        if key.endswith("num_batches_tracked"):
            if not drop_counters:
                out[key] = torch.tensor(7, dtype=torch.int64)
            continue
        if key == "uv_sampler" and uv_batch is not None:
            shape = [uv_batch] + shape[1:]
        out[key] = torch.full(shape, (i % 97) / 97.0) if fill else torch.zeros(shape)
    return out
