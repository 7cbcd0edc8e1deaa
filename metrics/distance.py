"""The distances: FID from statistics and KID from features, through torch-fidelity's own functions;
and the same FID from feature rows without a D x D square root (:func:`fid_low_rank`), which makes
its bootstrap over instances cheap (:class:`InstanceBootstrap`, ``bench eval --fid-bootstrap N``)."""
from __future__ import annotations

import numpy as np
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


# ---------------------------------------------------------------------------------------------
# FID without a D x D matrix square root, and its bootstrap confidence interval over instances

#: What ``fid_ci`` says it is (the metrics JSON and the protocol record it).
BOOTSTRAP_METHOD = "bias-shifted percentile bootstrap over instances"


def _f64(x) -> np.ndarray:
    """(N,D) features as a float64 numpy array (from a tensor or an array)."""
    a = x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)
    a = a.astype(np.float64)
    if a.ndim != 2:
        raise ValueError(f"features must be (N,D), got shape {a.shape}")
    return a


def reference_factor(sigma) -> np.ndarray:
    """A factor ``L`` (D,k) of a covariance, ``L @ L.T == sigma`` (float64, k <= D).

    ``eigh`` of the symmetrised ``sigma``; negative eigenvalues (rounding, float32 storage of a
    reference) are clipped to 0 and their columns dropped.
    """
    s = np.asarray(sigma, dtype=np.float64)
    w, v = np.linalg.eigh((s + s.T) / 2)
    keep = w > 0
    return v[:, keep] * np.sqrt(w[keep])


def _reduce_rows(xc: np.ndarray) -> np.ndarray:
    """``R`` with ``R.T @ R == xc.T @ xc`` and at most D rows (QR when xc has more rows than columns)."""
    return np.linalg.qr(xc, mode="r") if xc.shape[0] > xc.shape[1] else xc


def _nuclear_norm(a: np.ndarray) -> float:
    """Sum of the singular values of a (m,k) matrix."""
    return float(np.linalg.svd(a, compute_uv=False).sum())


def _sqrt_eig_sum(g: np.ndarray) -> float:
    """``tr sqrt(g)`` of a symmetric positive semi-definite matrix (eigenvalues clipped at 0)."""
    return float(np.sqrt(np.clip(np.linalg.eigvalsh(g), 0, None)).sum())


def _gram_nuclear_norm(a: np.ndarray) -> float:
    """Sum of the singular values of a (m,k) matrix through the eigenvalues of its smaller Gram matrix."""
    return _sqrt_eig_sum(a @ a.T if a.shape[0] <= a.shape[1] else a.T @ a)


def _fid_of_centred(diff: np.ndarray, xf: np.ndarray, side: np.ndarray, tr_ref: float | None) -> float:
    """FID from centred rows: ``diff`` (D,) the mean difference, ``xf`` (m,D) centred fake rows and
    ``side`` the other side: (n,D) centred real rows (``tr_ref`` None), or (m,k) centred ``xf @ L`` of
    a reference ``sigma = L L.T`` whose trace is ``tr_ref``."""
    m = len(xf)
    tr1 = float(np.sum(xf * xf)) / (m - 1)
    if tr_ref is None:
        tr2 = float(np.sum(side * side)) / (len(side) - 1)
        cross = _nuclear_norm(_reduce_rows(xf) @ _reduce_rows(side).T) / np.sqrt((m - 1) * (len(side) - 1))
    else:
        tr2 = tr_ref
        cross = _gram_nuclear_norm(side) / np.sqrt(m - 1)
    return float(diff @ diff + tr1 + tr2 - 2 * cross)


def fid_low_rank(fake, real=None, *, reference: dict | None = None, factor: np.ndarray | None = None) -> float:
    """FID of feature rows against feature rows or against ``{"mu", "sigma"}``, no D x D square root.

    ``FID = |mu1 - mu2|^2 + tr S1 + tr S2 - 2 tr sqrt(S1 S2)`` with, for centred rows X (n,D) and
    ``S = X.T X / (n-1)`` (torch-fidelity's unbiased ``np.cov``):

    * two feature sets: ``tr sqrt(S1 S2) = ||X1 X2.T||_* / sqrt((n1-1)(n2-1))`` (nuclear norm of an
      (n1,n2) matrix; a side with more rows than D is first reduced to its (D,D) QR factor);
    * a reference (mu, sigma): ``sigma = L L.T`` (:func:`reference_factor`) and
      ``tr sqrt(S1 sigma) = ||X1 L||_* / sqrt(n1-1)``; ``tr sigma`` is taken from ``sigma`` as given.

    Everything in float64. Equal to :func:`fid_from_features` / :func:`fid_from_statistics`
    (torch-fidelity) up to rounding (tests/test_fid_bootstrap.py).

    Args:
        fake: (n1,D) features, n1 >= 2.
        real: (n2,D) features, n2 >= 2; or None with ``reference``.
        reference: ``{"mu": (D,), "sigma": (D,D)}`` instead of ``real``.
        factor: (D,k) :func:`reference_factor` of ``reference["sigma"]`` when already computed.
    """
    x1 = _f64(fake)
    if x1.shape[0] < 2:
        raise ValueError("FID needs at least 2 feature rows")
    mu1 = x1.mean(0)
    x1 = x1 - mu1
    if (real is None) == (reference is None):
        raise ValueError("give exactly one of real features and reference statistics")
    if real is not None:
        x2 = _f64(real)
        if x2.shape[0] < 2 or x2.shape[1] != x1.shape[1]:
            raise ValueError(f"real features must be (n>=2,{x1.shape[1]}), got {x2.shape}")
        mu2 = x2.mean(0)
        return _fid_of_centred(mu1 - mu2, x1, x2 - mu2, None)
    mu2 = np.asarray(reference["mu"], dtype=np.float64)
    sigma = np.asarray(reference["sigma"], dtype=np.float64)
    if mu2.shape != mu1.shape:
        raise UserError(f"feature dimensions differ: {mu1.shape[0]} vs reference {mu2.shape[0]} "
                        "(reference statistics made with another extractor?)")
    lf = reference_factor(sigma) if factor is None else factor
    return _fid_of_centred(mu1 - mu2, x1, x1 @ lf, float(np.trace(sigma)))


class InstanceBootstrap:
    """FID of resampled instances: paired (fake, real) rows (FID_1) or rows vs a fixed reference (FID_10/12).

    Each instance owns one or more feature rows (``groups``: its index per row; FID_10/12: every view
    of the instance); a resample draws instances with replacement and takes all their rows (both
    sides of a pair together), the reference statistics stay fixed. The FID of one resample is
    :func:`fid_low_rank`'s formula; up to D rows it is computed from (n,n) Gram matrices made once
    (cost independent of D: a gather, a double centring and an (m,m) decomposition), above D from the
    gathered rows.

    Args:
        fake: (n,D) features.
        real: (n,D) features, row i paired with ``fake`` row i; or None with ``reference``.
        reference: ``{"mu": (D,), "sigma": (D,D)}`` instead of ``real``.
        groups: (n,) instance index (0..n_instances-1) of each row; default one row per instance.
    """

    def __init__(self, fake, real=None, *, reference: dict | None = None, groups=None):
        if (real is None) == (reference is None):
            raise ValueError("give exactly one of real features and reference statistics")
        self.fake = _f64(fake)
        n, d = self.fake.shape
        groups = np.arange(n) if groups is None else np.asarray(groups)
        if groups.shape != (n,) or n == 0 or groups.min() < 0:
            raise ValueError(f"groups must give an instance index >= 0 for each of the {n} rows")
        self.n_instances = int(groups.max()) + 1
        self.rows_of = [np.flatnonzero(groups == i) for i in range(self.n_instances)]
        if any(len(r) == 0 for r in self.rows_of):
            raise ValueError("every instance index 0..n_instances-1 needs at least one row")
        self.real = None if real is None else _f64(real)
        if self.real is not None and self.real.shape != self.fake.shape:
            raise ValueError(f"paired real features must be {self.fake.shape}, got {self.real.shape}")
        self.gram = n <= d  # resamples have about n rows: (n,n) Grams are the smaller problem
        fc = self.fake - self.fake.mean(0)  # any per-side shift: the double centring removes it
        if self.real is not None:
            rc = self.real - self.real.mean(0)
            self._side = rc
        else:
            self.mu_ref = np.asarray(reference["mu"], dtype=np.float64)
            self.tr_ref = float(np.trace(np.asarray(reference["sigma"], dtype=np.float64)))
            self._side = fc @ reference_factor(reference["sigma"])  # (n,k): X L up to the centring
        self._fc = fc
        if self.gram:
            self._k_fake = fc @ fc.T
            # paired: X_f X_r.T (its singular values); reference: (X L)(X L).T (its eigenvalues)
            self._k_cross = (fc if self.real is not None else self._side) @ self._side.T
            if self.real is not None:
                self._k_real = self._side @ self._side.T

    def rows(self, instances) -> np.ndarray:
        """Row indices of the drawn ``instances`` (each instance's rows, in draw order)."""
        return np.concatenate([self.rows_of[i] for i in instances])

    @staticmethod
    def _centre(k: np.ndarray) -> np.ndarray:
        """``H k H`` with ``H = I - 11.T/m`` (Gram of centred rows from the Gram of uncentred ones)."""
        return k - k.mean(0, keepdims=True) - k.mean(1, keepdims=True) + k.mean()

    def fid(self, instances) -> float:
        """FID of the rows of ``instances`` (a sequence of instance indices, repeats allowed)."""
        r = self.rows(instances)
        m = len(r)
        if m < 2:
            raise ValueError("a resample needs at least 2 rows")
        other_mu = self.real[r].mean(0) if self.real is not None else self.mu_ref
        diff = self.fake[r].mean(0) - other_mu
        if self.gram:
            ix = np.ix_(r, r)
            kf = self._k_fake[ix]
            tr1 = (np.trace(kf) - kf.sum() / m) / (m - 1)
            cross_gram = self._centre(self._k_cross[ix])
            if self.real is not None:
                kr = self._k_real[ix]
                tr2 = (np.trace(kr) - kr.sum() / m) / (m - 1)
                cross = _nuclear_norm(cross_gram) / (m - 1)
            else:
                tr2 = self.tr_ref
                cross = _sqrt_eig_sum(cross_gram) / np.sqrt(m - 1)
            return float(diff @ diff + tr1 + tr2 - 2 * cross)
        xf, side = self._fc[r], self._side[r]  # above D rows: fid_low_rank's formula on the gathered rows
        return _fid_of_centred(diff, xf - xf.mean(0), side - side.mean(0),
                               None if self.real is not None else self.tr_ref)

    def resample_fids(self, resamples: int, seed: int, tick=None) -> np.ndarray:
        """(resamples,) FIDs of seeded resamples: ``numpy.random.default_rng(seed)`` draws a
        (resamples, n_instances) table of instance indices with replacement, one row per resample."""
        draws = np.random.default_rng(seed).integers(0, self.n_instances, size=(resamples, self.n_instances))
        out = np.empty(resamples)
        for b, inst in enumerate(draws):
            out[b] = self.fid(inst)
            if tick is not None:
                tick()
        return out

    def interval(self, resamples: int, seed: int, level: float = 0.95, tick=None) -> dict:
        """Bootstrap interval of the FID over instances (a plain seeded loop and ``numpy.percentile``,
        linear interpolation; not ``scipy.stats.bootstrap``, whose 1-d sample interface does not fit
        paired or grouped rows of a matrix statistic).

        FID grows as the sample shrinks, and a resample holds only ~63 % distinct instances, so the
        resampled FIDs sit above the full-set FID (by ``bias`` = their mean minus it; 2-4 % at D = 2048,
        n = 300). The interval is their percentile interval shifted down by ``bias``: the spread of the
        FID *at this n* from the choice of instances, around the value reported. The raw percentiles
        are kept (``percentile_low`` / ``percentile_high``).

        Returns:
            ``{"low", "high", "level", "resamples", "seed", "method", "n_instances", "bias",
            "percentile_low", "percentile_high"}`` (the ``fid_ci`` of the metrics JSON).
        """
        fids = self.resample_fids(resamples, seed, tick)
        full = self.fid(np.arange(self.n_instances))
        p_low, p_high = np.percentile(fids, [50 * (1 - level), 50 * (1 + level)])
        bias = float(np.mean(fids) - full)
        return {"low": max(0.0, float(p_low - bias)), "high": float(p_high - bias), "level": level,
                "resamples": int(resamples), "seed": int(seed), "method": BOOTSTRAP_METHOD,
                "n_instances": self.n_instances, "bias": bias, "percentile_low": float(p_low),
                "percentile_high": float(p_high)}


def fid_bootstrap_ci(fake, real=None, *, reference: dict | None = None, groups=None, resamples: int, seed: int,
                     level: float = 0.95, tick=None) -> dict:
    """``fid_ci`` of one method: :meth:`InstanceBootstrap.interval` (arguments as there)."""
    return InstanceBootstrap(fake, real, reference=reference, groups=groups).interval(resamples, seed, level, tick)
