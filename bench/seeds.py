"""Per-instance seeds: everything random about one instance derives from (run seed, dataset index).

``bench run --seed S`` gives every sample ``sample.meta["seed"] = instance_seed(S, sample.index)``;
methods draw their candidates and subsamples from it and the synthetic dataset its scenes, so the
same seed gives the same records whatever the sharding, batching or order, and another seed gives
other, equally reproducible records.
"""
from __future__ import annotations

import hashlib

DEFAULT_RUN_SEED = 0


def instance_seed(run_seed: int, index: int) -> int:
    """A stable 63-bit seed from the run seed and the instance's dataset index."""
    digest = hashlib.sha256(f"{int(run_seed)}:{int(index)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def sample_seed(sample) -> int:
    """The seed the runner gave ``sample`` (``meta["seed"]``); outside a run: the default run seed's."""
    meta = getattr(sample, "meta", None) or {}
    if "seed" in meta:
        return int(meta["seed"])
    return instance_seed(DEFAULT_RUN_SEED, int(getattr(sample, "index", 0)))
