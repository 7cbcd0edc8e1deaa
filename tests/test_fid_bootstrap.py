"""`bench eval --fid-bootstrap N`: the square-root-free FID (bench.metrics.distance.fid_low_rank), its
instance bootstrap (InstanceBootstrap) and the ``fid_ci`` written by FID_1/10/12.

The math tests use small random features (no images); the CLI test a tiny run and the tiny
registered extractor of test_fid (offline, a random conv net).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from bench.cli import main
from bench.metrics.distance import (BOOTSTRAP_METHOD, InstanceBootstrap, fid_from_features, fid_from_statistics,
                                    fid_low_rank, reference_factor)
from bench.metrics.fid import _view_groups
from bench.metrics.reference import statistics_from_features
from test_fid import TINY, make_run, register_tiny

#: low-rank FID vs torch-fidelity (eigvals of sigma1 @ sigma2): measured <= 1e-7 on these cases
REL = 1e-6
KEYS = {"low", "high", "level", "resamples", "seed", "method", "n_instances", "bias", "percentile_low",
        "percentile_high"}


def _features(n, d, seed, shift=0.0, scale=1.0):
    """(n,d) float32 features (what the extractors give), correlated columns."""
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    return ((rng.normal(size=(n, d)) * scale) @ mix + shift).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# fid_low_rank == torch-fidelity


@pytest.mark.parametrize("n1,n2,d", [(20, 30, 64), (60, 45, 256), (100, 150, 64), (40, 90, 64)])
def test_low_rank_fid_equals_torch_fidelity_features(n1, n2, d):
    """n < D (both sides rank-deficient), n > D (QR-reduced sides) and mixed."""
    fake, real = _features(n1, d, 1), _features(n2, d, 2, shift=0.3, scale=1.4)
    want = fid_from_features(torch.from_numpy(fake), torch.from_numpy(real))
    assert fid_low_rank(fake, real) == pytest.approx(want, rel=REL)
    assert fid_low_rank(torch.from_numpy(fake), torch.from_numpy(real)) == pytest.approx(want, rel=REL)


@pytest.mark.parametrize("n,n_ref,d", [(30, 500, 64), (100, 400, 64), (25, 40, 128), (50, 60, 256)])
def test_low_rank_fid_equals_torch_fidelity_reference(n, n_ref, d):
    """Against (mu, sigma): full-rank sigma, and a singular one (n_ref < D) stored as float32."""
    fake = _features(n, d, 3)
    ref = statistics_from_features(_features(n_ref, d, 4, shift=-0.2, scale=0.8))
    ref = {"mu": ref["mu"].astype(np.float32).astype(np.float64), "sigma": ref["sigma"].astype(np.float32)
           .astype(np.float64)}
    want = fid_from_statistics(statistics_from_features(fake), ref)
    assert fid_low_rank(fake, reference=ref) == pytest.approx(want, rel=REL)
    lf = reference_factor(ref["sigma"])
    assert lf.shape[0] == d and lf.shape[1] <= d
    np.testing.assert_allclose(lf @ lf.T, ref["sigma"], atol=1e-6 * np.abs(ref["sigma"]).max())
    assert fid_low_rank(fake, reference=ref, factor=lf) == pytest.approx(want, rel=REL)


def test_low_rank_fid_arguments():
    a = _features(10, 8, 0)
    with pytest.raises(ValueError):
        fid_low_rank(a)  # neither real nor reference
    with pytest.raises(ValueError):
        fid_low_rank(a[:1], a)
    assert abs(fid_low_rank(a, a)) < 1e-9


# ---------------------------------------------------------------------------------------------
# the bootstrap


def _reference(d, seed=9):
    return statistics_from_features(_features(400, d, seed, shift=0.5))


@pytest.mark.parametrize("n,d", [(40, 64), (90, 32)])  # Gram route (n <= D) and feature route (n > D)
def test_identity_resample_is_the_full_set_fid(n, d):
    fake, real = _features(n, d, 5), _features(n, d, 6, shift=0.4)
    paired = InstanceBootstrap(fake, real)
    assert paired.gram == (n <= d) and paired.n_instances == n
    full = fid_from_features(torch.from_numpy(fake), torch.from_numpy(real))
    assert paired.fid(np.arange(n)) == pytest.approx(full, rel=REL)
    # a resample is the FID of the drawn rows, real and fake of an instance together
    draw = np.random.default_rng(0).integers(0, n, n)
    assert paired.fid(draw) == pytest.approx(fid_low_rank(fake[draw], real[draw]), rel=REL)

    # views: k rows per instance (instance-major), fixed reference
    k, ref = 3, _reference(d)
    views = _features(n * k, d, 7)
    grouped = InstanceBootstrap(views, reference=ref, groups=np.repeat(np.arange(n), k))
    assert grouped.n_instances == n and grouped.gram == (n * k <= d)
    full = fid_from_statistics(statistics_from_features(views), ref)
    assert grouped.fid(np.arange(n)) == pytest.approx(full, rel=REL)
    rows = grouped.rows(draw)
    assert len(rows) == n * k and list(rows[:k]) == [draw[0] * k + j for j in range(k)]
    assert grouped.fid(draw) == pytest.approx(fid_low_rank(views[rows], reference=ref), rel=REL)


def test_small_gram_route_with_reference():
    """Grouped rows <= D: the (n,n) Gram route against a reference."""
    n, k, d = 10, 3, 64
    ref, views = _reference(d), _features(n * k, d, 8)
    grouped = InstanceBootstrap(views, reference=ref, groups=np.repeat(np.arange(n), k))
    assert grouped.gram
    assert grouped.fid(np.arange(n)) == pytest.approx(fid_low_rank(views, reference=ref), rel=REL)
    draw = [3, 3, 0, 9, 1, 1, 1, 5, 2, 7]
    assert grouped.fid(draw) == pytest.approx(fid_low_rank(views[grouped.rows(draw)], reference=ref), rel=REL)


def test_interval_is_seeded_and_covers_the_full_set_fid():
    n, d = 200, 8
    fake, real = _features(n, d, 10), _features(n, d, 11, shift=1.0)
    bs = InstanceBootstrap(fake, real)
    ci = bs.interval(200, seed=2020)
    assert set(ci) == KEYS
    assert ci["level"] == 0.95 and ci["resamples"] == 200 and ci["seed"] == 2020 and ci["n_instances"] == n
    assert ci["method"] == BOOTSTRAP_METHOD == "bias-shifted percentile bootstrap over instances"
    assert bs.interval(200, seed=2020) == ci
    other = bs.interval(200, seed=7)
    assert (other["low"], other["high"]) != (ci["low"], ci["high"])
    full = bs.fid(np.arange(n))
    assert ci["low"] <= full <= ci["high"]
    fids = bs.resample_fids(200, seed=2020)
    assert np.percentile(fids, [2.5, 97.5]).tolist() == [ci["percentile_low"], ci["percentile_high"]]
    assert ci["bias"] == pytest.approx(fids.mean() - full, rel=1e-12)
    assert (ci["low"], ci["high"]) == pytest.approx((ci["percentile_low"] - ci["bias"], ci["percentile_high"] - ci["bias"]))
    # the reference side: also seeded, and a small-D case covers the full-set FID
    ref = _reference(d)
    g = InstanceBootstrap(_features(n * 2, d, 12), reference=ref, groups=np.repeat(np.arange(n), 2))
    gci = g.interval(200, seed=2020)
    assert gci == g.interval(200, seed=2020) and gci["n_instances"] == n
    assert gci["low"] <= g.fid(np.arange(n)) <= gci["high"]


def test_interval_widens_as_n_shrinks():
    d = 8
    widths = []
    for n in (400, 100, 25):
        bs = InstanceBootstrap(_features(n, d, 20), _features(n, d, 21, shift=1.0))
        ci = bs.interval(200, seed=2020)
        widths.append(ci["high"] - ci["low"])
    assert widths[0] < widths[1] < widths[2], widths


def test_view_groups_follow_the_renderer_order():
    recs = [{"instance": "00003"}, {"instance": "00007"}]
    angles = (0, 30, 330)
    images = [Path(f"/x/{r['instance']}_{a:03d}.png") for r in recs for a in angles]
    assert _view_groups(images, recs, angles).tolist() == [0, 0, 0, 1, 1, 1]
    with pytest.raises(AssertionError):
        _view_groups(images[3:] + images[:3], recs, angles)


# ---------------------------------------------------------------------------------------------
# bench eval --fid-bootstrap N


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("fidboot") / "run", {"noisy": 0.05}, n=4, size=32)


def _invoke(*args):
    return CliRunner().invoke(main, ["eval", *map(str, args)], catch_exceptions=False)


def test_eval_writes_fid_ci(run_dir):
    register_tiny()
    res = _invoke(run_dir.root, "--metrics", "fid1,fid12", "--fid-bootstrap", 20, "--fid-extractor", TINY,
                  "--view-size", 64, "--kid-subsets", 5, "--quiet")
    assert res.exit_code == 0, res.output
    for name in ("fid1", "fid12"):
        doc = json.loads(run_dir.metrics_path(name).read_text())
        v = doc["methods"]["noisy"]
        ci = v["fid_ci"]
        assert set(ci) == KEYS
        assert math.isfinite(ci["low"]) and math.isfinite(ci["high"]) and ci["low"] <= ci["high"]
        assert ci["level"] == 0.95 and ci["resamples"] == 20 and ci["seed"] == 2020 and ci["n_instances"] == 4
        assert ci["method"] == "bias-shifted percentile bootstrap over instances"
        assert doc["protocol"]["fid_bootstrap"]["resamples"] == 20 and doc["protocol"]["fid_bootstrap"]["seed"] == 2020
    assert json.loads(run_dir.metrics_path("fid12").read_text())["methods"]["noisy"]["n_images"] == 48
    # off (the default): no fid_ci, the protocol says 0 resamples
    res = _invoke(run_dir.root, "--metrics", "fid1", "--fid-extractor", TINY, "--kid-subsets", 5, "--quiet")
    assert res.exit_code == 0, res.output
    doc = json.loads(run_dir.metrics_path("fid1").read_text())
    assert "fid_ci" not in doc["methods"]["noisy"] and doc["protocol"]["fid_bootstrap"]["resamples"] == 0


@pytest.mark.parametrize("n", [5, 1, 9, -1])
def test_too_few_resamples_is_one_line_exit_2(run_dir, n):
    res = _invoke(run_dir.root, "--metrics", "fid1", "--fid-bootstrap", n, "--quiet")
    assert res.exit_code == 2
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --fid-bootstrap must be")


def test_help_shows_the_option():
    res = CliRunner().invoke(main, ["eval", "--help"], terminal_width=200)
    assert res.exit_code == 0
    text = " ".join(res.output.split())
    assert "--fid-bootstrap INTEGER" in text and "bootstrap resamples over instances" in text
