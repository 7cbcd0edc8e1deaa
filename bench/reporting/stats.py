"""Statistics a reviewer can check: bootstrap confidence intervals and paired comparisons (scipy.stats).

* :func:`bootstrap_ci` — the 95 % (``level``) interval of a mean by ``scipy.stats.bootstrap`` over
  instances (BCa; percentile where BCa is undefined, e.g. n = 2), seeded, ``resamples`` a flag.
* :func:`summarise` — n, mean, CI, median, standard deviation of one quantity.
* :func:`paired` — two methods on the instances both finished: the mean difference (A − B) with its
  bootstrap CI and the Wilcoxon signed-rank test (``scipy.stats.wilcoxon``, two-sided).
* :func:`metric_stats` / :func:`comparisons` — the same over a report's instance frame.
"""
from __future__ import annotations

import math
import warnings
from itertools import combinations

import numpy as np

STATS_COLUMNS = ["run", "run_key", "method", "quantity", "unit", "failed", "n", "mean", "ci_low", "ci_high", "median",
                 "std"]
COMPARISON_COLUMNS = ["dataset", "quantity", "a", "b", "n", "mean_a", "mean_b", "diff", "test", "ci_low", "ci_high",
                      "statistic", "p_value"]
LEVEL = 0.95
RESAMPLES = 2000
SEED = 0


def _finite(values) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).ravel()
    return arr[np.isfinite(arr)]


def bootstrap_ci(values, resamples: int = RESAMPLES, level: float = LEVEL, seed: int = SEED) -> tuple[float, float]:
    """``(low, high)`` of the bootstrap confidence interval of the mean of ``values`` (1-D).

    NaN for fewer than 2 finite values or ``resamples == 0``; ``(v, v)`` when all values are equal."""
    from scipy import stats

    x = _finite(values)
    if len(x) < 2 or resamples <= 0:
        return math.nan, math.nan
    if np.all(x == x[0]):
        return float(x[0]), float(x[0])
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = stats.bootstrap((x,), np.mean, n_resamples=resamples, confidence_level=level, method=method,
                                  vectorized=True, rng=np.random.default_rng(seed))
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if math.isfinite(low) and math.isfinite(high):
            return low, high
    return math.nan, math.nan


def summarise(values, resamples: int = RESAMPLES, level: float = LEVEL, seed: int = SEED) -> dict:
    """``{"n", "mean", "ci_low", "ci_high", "median", "std"}`` of the finite ``values``."""
    x = _finite(values)
    low, high = bootstrap_ci(x, resamples, level, seed)
    return {"n": int(len(x)), "mean": float(x.mean()) if len(x) else math.nan, "ci_low": low, "ci_high": high,
            "median": float(np.median(x)) if len(x) else math.nan,
            "std": float(x.std(ddof=1)) if len(x) > 1 else math.nan}


def paired(a, b, resamples: int = RESAMPLES, level: float = LEVEL, seed: int = SEED) -> dict:
    """A vs B on common instances: ``a``, ``b`` are pandas Series indexed by instance id.

    Returns ``{"n", "mean_a", "mean_b", "diff", "ci_low", "ci_high", "statistic", "p_value", "test"}``
    with ``diff`` = mean(A − B) over the instances where both are finite; p is NaN below 2 pairs or when
    every difference is 0.
    """
    from scipy import stats

    both = common_pairs(a, b)
    d = (both["a"] - both["b"]).to_numpy()
    out = {"n": int(len(d)), "mean_a": float(both["a"].mean()) if len(d) else math.nan,
           "mean_b": float(both["b"].mean()) if len(d) else math.nan,
           "diff": float(d.mean()) if len(d) else math.nan, "test": "Wilcoxon signed-rank, two-sided"}
    out["ci_low"], out["ci_high"] = bootstrap_ci(d, resamples, level, seed)
    out["statistic"] = out["p_value"] = math.nan
    if len(d) >= 2 and np.any(d != 0):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = stats.wilcoxon(both["a"].to_numpy(), both["b"].to_numpy())
        out["statistic"], out["p_value"] = float(res.statistic), float(res.pvalue)
    return out


def group_values(frame, run_key: int, method: str, column: str):
    """The ok values of ``column`` of one (run, method) group: a Series indexed by instance id."""
    ok = frame[(frame.status == "ok") & (frame.run_key == run_key) & (frame.method == method)]
    return ok.set_index("instance")[column]


def common_pairs(a, b):
    """DataFrame with columns ``a`` and ``b``: the instances where both Series have a finite value."""
    both = a.to_frame("a").join(b.to_frame("b"), how="inner").astype(float)
    return both[np.isfinite(both["a"]) & np.isfinite(both["b"])]


def several_runs(frame) -> bool:
    """Whether the report's instance frame holds records of more than one run (groups are then named
    ``run/method``)."""
    return frame["run_key"].nunique() > 1


def group_name(run: str, method: str, several: bool) -> str:
    """How a (run, method) group is named in tables, comparisons and plots: the method, or
    ``run/method`` when the report holds several runs (:func:`several_runs`)."""
    return f"{run}/{method}" if several else method


def metric_stats(frame, quantities, resamples: int = RESAMPLES, level: float = LEVEL, seed: int = SEED):
    """One row per (run, method, quantity): n, failed, mean, ci_low, ci_high, median, std (DataFrame)."""
    import pandas as pd

    rows = []
    for (key, run, method), grp in frame.groupby(["run_key", "run", "method"], sort=False):
        ok = grp[grp.status == "ok"]
        failed = int(len(grp) - len(ok))
        present = [q for q in quantities if q.column in ok and ok[q.column].notna().any()]
        for q in present:
            rows.append({"run": run, "run_key": key, "method": method, "quantity": q.name, "unit": q.unit,
                         "failed": failed, **summarise(ok[q.column], resamples, level, seed)})
        if not present:
            rows.append({"run": run, "run_key": key, "method": method, "quantity": None, "unit": None,
                         "failed": failed, "n": 0})  # every instance failed: the row still shows it
    return pd.DataFrame(rows, columns=STATS_COLUMNS)


SMALL_N = 10


def small_sample_notes(stats_frame) -> list[str]:
    """A note when some interval rests on fewer than ``SMALL_N`` instances (bootstrap intervals are then
    too narrow, and a Wilcoxon p cannot go below 2/2**n: 0.25 at n = 3)."""
    small = stats_frame[(stats_frame["n"] > 0) & (stats_frame["n"] < SMALL_N)]
    if small.empty:
        return []
    lo, hi = int(small["n"].min()), int(small["n"].max())
    return [f"NOTE: {lo if lo == hi else f'{lo} to {hi}'} instances per method: bootstrap intervals from fewer than "
            f"{SMALL_N} instances are too narrow and p-values coarse; treat them as indicative"]


def _pairs(groups: list[tuple], baseline: str | None, several: bool) -> list[tuple[tuple, tuple]]:
    """(A, B) group pairs to compare: every pair, or every group against the baseline (in its run
    when the baseline method is in several runs)."""
    if baseline is None:
        return list(combinations(groups, 2))
    names = {g: group_name(g[1], g[2], several) for g in groups}
    hits = [g for g in groups if baseline in (g[2], names[g])]
    if len(hits) == 1:
        return [(g, hits[0]) for g in groups if g != hits[0]]
    by_run = {g[0]: g for g in hits}
    return [(g, by_run[g[0]]) for g in groups if g[0] in by_run and g != by_run[g[0]]]


def comparisons(frame, quantities, baseline: str | None = None, resamples: int = RESAMPLES, level: float = LEVEL,
                seed: int = SEED):
    """Paired comparisons of every pair of (run, method) groups of one dataset (or each against
    ``baseline``), per quantity, on the instances both finished (DataFrame: quantity, a, b, n, mean_a,
    mean_b, diff, ci_low, ci_high, statistic, p_value, test)."""
    import pandas as pd

    ok = frame[frame.status == "ok"]
    several = several_runs(frame)
    rows = []
    for dataset, part in ok.groupby("dataset", sort=False):
        groups = list(part.groupby(["run_key", "run", "method"], sort=False).groups)
        for ga, gb in _pairs(groups, baseline, several):
            for q in quantities:
                if q.column not in part:
                    continue
                res = paired(group_values(part, ga[0], ga[2], q.column), group_values(part, gb[0], gb[2], q.column),
                             resamples, level, seed)
                if res["n"] == 0:
                    continue
                rows.append({"dataset": dataset, "quantity": q.name, "a": group_name(ga[1], ga[2], several),
                             "b": group_name(gb[1], gb[2], several), **res})
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS)


def missing_baseline(frame, baseline: str) -> bool:
    """Whether ``--baseline`` names no (run, method) group of the report."""
    several = several_runs(frame)
    names = {m for m in frame["method"]} | {group_name(r, m, several) for r, m in zip(frame["run"], frame["method"])}
    return baseline not in names
