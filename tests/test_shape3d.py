"""3D metrics against synthetic GT: Chamfer-L2, F-score, latent error, PSNR/SSIM (bench.metrics.shape3d)."""
from __future__ import annotations

import math

import pytest
import torch

from bench.metrics.base import EvalContext
from bench.metrics.shape3d import (Shape3DMetric, latent_error, normalize_mesh, psnr, shape_metrics, ssim,
                                   surface_moments, view_metrics)
from test_fid import blob_mesh, make_run, tiny_options


@pytest.fixture(scope="module")
def gt():
    return blob_mesh(7)


def test_identical_reconstruction_is_perfect(gt):
    out = shape_metrics(gt["vertices"], gt["faces"], gt["vertices"], gt["faces"], num_points=3000)
    assert out["chamfer_l2"] == 0.0 and out["fscore"] == 1.0
    assert out["fscore_tau"] > 0
    z = torch.randn(64)
    assert latent_error(z, z.clone()) == 0.0
    views = torch.randint(0, 256, (12, 32, 32, 3), dtype=torch.uint8)
    vm = view_metrics(views, views.clone())
    assert vm["psnr"] == 100.0 and vm["ssim"] == pytest.approx(1.0, abs=1e-12)


def test_metrics_grow_with_perturbation(gt):
    g = torch.Generator().manual_seed(3)
    noise = torch.randn(gt["vertices"].shape, generator=g)
    cds, fs = [], []
    for sigma in (0.0, 0.01, 0.04, 0.25):
        out = shape_metrics(gt["vertices"] + sigma * noise, gt["faces"], gt["vertices"], gt["faces"],
                            num_points=3000)
        cds.append(out["chamfer_l2"])
        fs.append(out["fscore"])
    assert cds == sorted(cds) and cds[0] == 0 and cds[-1] > 10 * cds[1]
    assert fs == sorted(fs, reverse=True) and fs[0] == 1.0 and fs[-1] < 0.9
    z = torch.randn(64, generator=g)
    errs = [latent_error(z + s * torch.ones(64), z) for s in (0.0, 0.1, 0.5)]
    assert errs == pytest.approx([0.0, 0.1, 0.5])
    assert latent_error(None, z) is None and latent_error(torch.zeros(8), z) is None


def test_invariant_to_scale_and_translation(gt):
    moved = gt["vertices"] * 2.5 + torch.tensor([0.3, -0.2, 0.1])
    out = shape_metrics(moved, gt["faces"], gt["vertices"], gt["faces"], num_points=3000)
    assert out["chamfer_l2"] < 1e-10 and out["fscore"] == 1.0
    # and a perturbed reconstruction scores the same wherever / however large it is
    noisy = gt["vertices"] + 0.03 * torch.randn(gt["vertices"].shape, generator=torch.Generator().manual_seed(0))
    a = shape_metrics(noisy, gt["faces"], gt["vertices"], gt["faces"], num_points=3000)
    b = shape_metrics(noisy * 0.4 - 1.0, gt["faces"], gt["vertices"], gt["faces"], num_points=3000)
    assert b["chamfer_l2"] == pytest.approx(a["chamfer_l2"], rel=1e-6) and b["fscore"] == pytest.approx(a["fscore"])


def test_normalisation_centre_and_rms_radius(gt):
    v = normalize_mesh(gt["vertices"], gt["faces"])
    centre, radius = surface_moments(v, gt["faces"])
    assert centre.abs().max() < 1e-12 and radius == pytest.approx(1.0, abs=1e-12)
    # the exact RMS radius of the (finely tessellated) sphere template is close to 1
    from bench.render.uvsphere import uvsphere_template

    tpl = uvsphere_template("cpu")
    _, r = surface_moments(tpl.vertices, tpl.faces)
    assert 0.97 < float(r) <= 1.0


def test_psnr_ssim_behaviour():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, 32, 32, generator=g)
    b = (a + 0.1 * torch.randn(a.shape, generator=g)).clamp(0, 1)
    c = (a + 0.3 * torch.randn(a.shape, generator=g)).clamp(0, 1)
    assert (psnr(a, b) > psnr(a, c)).all() and (ssim(a, b) > ssim(a, c)).all()
    assert ssim(a, a).sub(1).abs().max() < 1e-12
    mse = ((a - b) ** 2).flatten(1).mean(1)
    torch.testing.assert_close(psnr(a, b), (-10 * torch.log10(mse)).double())


def test_shape3d_corpus_from_run_dir(tmp_path):
    run = make_run(tmp_path / "run", {"perfect": 0.0, "noisy": 0.05}, n=2, size=32)
    res = Shape3DMetric().corpus(EvalContext(run, ["perfect", "noisy"], tiny_options(num_points=1500)))
    p, n = res["methods"]["perfect"], res["methods"]["noisy"]
    assert p["n_instances"] == 2 and set(p["per_instance"]) == {"00000", "00001"}
    assert p["chamfer_l2"] == 0 and p["fscore"] == 1 and p["latent_error"] == 0
    assert p["psnr"] == 100.0 and p["ssim"] == pytest.approx(1.0)
    assert n["chamfer_l2"] > 0 and n["fscore"] < 1 and n["latent_error"] > 0
    assert n["psnr"] < 100 and n["ssim"] < 1 and math.isfinite(n["psnr"])
    assert res["protocol"]["fscore_threshold"] == 0.05 and "RMS" in res["protocol"]["alignment"]


def test_shape3d_without_gt_reports_note(tmp_path):
    run = make_run(tmp_path / "run", {"m": 0.02}, n=2, size=32, dataset="cub")
    res = Shape3DMetric().corpus(EvalContext(run, ["m"], tiny_options()))
    assert res["methods"]["m"]["n_instances"] == 0 and res["methods"]["m"]["n_without_gt"] == 2
    assert "note" in res["methods"]["m"]
