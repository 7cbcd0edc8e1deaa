"""The distances: FID from statistics and KID from features, through torch-fidelity's own functions."""
from __future__ import annotations

import torch

from bench.errors import UserError
from bench.metrics.reference import as_float64, statistics_from_features


def fid_from_statistics(stats1: dict, stats2: dict) -> float:
    """Fréchet distance of two ``{"mu", "sigma"}`` statistics (torch-fidelity's ``fid_statistics_to_metric``)."""
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric

    a, b = as_float64(stats1), as_float64(stats2)
    if a["mu"].shape != b["mu"].shape:
        raise UserError(f"feature dimensions differ: {a['mu'].shape[0]} vs reference {b['mu'].shape[0]} "
                        "(reference statistics made with another extractor?)")
    return float(fid_statistics_to_metric(a, b, verbose=False)[KEY_METRIC_FID])


def fid_from_features(fake, real) -> float:
    """FID of two (N,D) feature sets (torch-fidelity statistics and distance)."""
    return fid_from_statistics(statistics_from_features(fake), statistics_from_features(real))


def kid_from_features(fake, real, subsets: int = 100, max_subset_size: int = 1000, seed: int = 2020) -> dict:
    """KID (torch-fidelity ``kid_features_to_metric``) with subset size ``min(n_fake, n_real, max)``.

    Returns:
        ``{"kid_mean", "kid_std", "kid_subset_size", "kid_subsets"}``.
    """
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric

    size = int(min(len(fake), len(real), max_subset_size))
    if size < 2:
        raise ValueError("KID needs at least 2 samples on each side")
    out = kid_features_to_metric(torch.as_tensor(fake).float(), torch.as_tensor(real).float(), kid_subsets=subsets,
                                 kid_subset_size=size, rng_seed=seed, verbose=False)
    return {"kid_mean": out[KEY_METRIC_KID_MEAN], "kid_std": out[KEY_METRIC_KID_STD], "kid_subset_size": size,
            "kid_subsets": subsets}


def kid_or_none(fake, real, options) -> dict:
    """`kid_from_features` with the `EvalOptions` KID settings; ``None`` values below 2 samples a side."""
    if min(len(fake), len(real)) < 2:
        return {"kid_mean": None, "kid_std": None}
    return kid_from_features(fake, real, options.kid_subsets, options.kid_subset_size, options.seed)
