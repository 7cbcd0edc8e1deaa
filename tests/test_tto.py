"""Test-time optimisation of CMR / UMR: it lowers its objective, leaves the network untouched, and
a batch equals its instances run one by one."""
from __future__ import annotations

import pytest
import torch

from bench.errors import UserError
from bench.methods.cmr.nets import CMRMeshNet, build_seeded
from bench.methods.cmr.perceptual import ALEXNET_FILES, RANDOM_LABEL, build_perceptual
from bench.methods.cmr.rendering import pose, render_textured
from bench.methods.cmr.tto import TTOSettings, prepare, run_tto, stage_of
from bench.methods.umr.nets import UMRMeshNet
from bench.render.icosphere import symmetric_icosphere

SIZE = 48


pytestmark = pytest.mark.usefixtures("one_thread")


def synthetic_targets(n: int, size: int = SIZE, seed: int = 0):
    """Images (n,3,S,S) in [0,1] on white and masks (n,S,S): textured ellipsoids, random poses."""
    g = torch.Generator().manual_seed(seed)
    t = symmetric_icosphere(0)
    verts = torch.from_numpy(t.vertices).float() * torch.tensor([0.8, 0.6, 1.0])
    faces = torch.from_numpy(t.faces)
    cams = torch.cat([0.55 + 0.1 * torch.rand(n, 1, generator=g), 0.1 * torch.randn(n, 2, generator=g),
                      torch.tensor([[1.0, 0.0, 0.0, 0.0]]) + 0.3 * torch.randn(n, 4, generator=g)], dim=1)
    tex = torch.rand(n, 1280, 1, 1, 3, generator=g).expand(n, 1280, 6, 6, 3)
    img, mask, _ = render_textured(pose(verts.expand(n, -1, -1), cams, True), faces, tex, (size, size),
                                   background=1.0)
    return img, mask


@pytest.fixture(scope="module")
def cmr_net():
    return build_seeded(CMRMeshNet, 0).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def perceptual():
    return build_perceptual(None, allow_random=True, seed=0)


@pytest.fixture(scope="module")
def targets():
    return synthetic_targets(2)


def _run(net, perc, img, mask, st, dtype=torch.float32, loss="cmr"):
    net, perc = net.to(dtype), perc.to(dtype)
    img, mask = img.to(dtype), mask.to(dtype)
    with torch.no_grad():
        enc = net.encode(img, seed=0)
    data = prepare(img, mask, st.render_size, state=enc)
    return run_tto(net, perc, data, enc["latent"], enc["camera"], st, loss=loss)


def test_cmr_tto_lowers_objective_and_freezes_weights(cmr_net, perceptual, targets):
    img, mask = targets
    before = {k: v.clone() for k, v in cmr_net.state_dict().items()}
    st = TTOSettings(iterations=4, render_size=32, mask_weight=2.0, texture_weight=0.5,
                     pose_lrs=(1e-2, 5e-3, 1e-3, 5e-4))
    res = _run(cmr_net, perceptual, img, mask, st)
    losses = res["losses"]
    assert losses.shape == (4, 2) and torch.isfinite(losses).all()
    assert (losses[-1] < losses[0]).all(), losses
    after = cmr_net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(p.requires_grad for p in cmr_net.parameters())
    assert res["latent"].shape == (2, 200) and res["camera"].shape == (2, 7)
    torch.testing.assert_close(res["camera"][:, 3:].norm(dim=1), torch.ones(2))


@pytest.mark.parametrize("dtype,iterations,atol", [(torch.float32, 3, 1e-6), (torch.float64, 2, 1e-12)])
def test_batched_equals_per_instance(cmr_net, perceptual, targets, dtype, iterations, atol):
    """B instances optimised together = B separate runs (float32: up to rounding, since batched
    kernels sum in another order; float64: to ~1e-15)."""
    img, mask = targets
    st = TTOSettings(iterations=iterations, render_size=32)
    try:
        both = _run(cmr_net, perceptual, img, mask, st, dtype)
        one = [_run(cmr_net, perceptual, img[i:i + 1], mask[i:i + 1], st, dtype) for i in range(2)]
    finally:
        cmr_net.float()
        perceptual.float()
    for key in ("latent", "camera"):
        torch.testing.assert_close(both[key], torch.cat([o[key] for o in one]), rtol=1e-5, atol=atol)
    torch.testing.assert_close(both["losses"], torch.cat([o["losses"] for o in one], dim=1), rtol=1e-5, atol=atol)


def test_umr_tto_lowers_objective(perceptual, targets):
    net = build_seeded(UMRMeshNet, 0).eval().requires_grad_(False)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    img, mask = targets
    st = TTOSettings(iterations=4, render_size=32, mask_weight=2.5, texture_weight=3.0)
    res = _run(net, perceptual, img[:1], mask[:1], st, loss="umr")
    assert res["losses"][-1, 0] < res["losses"][0, 0]
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_stage_schedule():
    assert [sum(stage_of(i, 200, 4) == k for i in range(200)) for k in range(4)] == [50, 50, 50, 50]
    assert [sum(stage_of(i, 20, 4) == k for i in range(20)) for k in range(4)] == [5, 5, 5, 5]
    assert stage_of(0, 3, 4) == 0 and stage_of(2, 3, 4) == 2


def test_perceptual_weights_sources(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # hub cache: tmp_path/hub/checkpoints
    with pytest.raises(UserError) as err:
        build_perceptual(None, allow_random=False, owner="cmr-tto")
    assert ALEXNET_FILES[0] in str(err.value) and str(tmp_path / "hub") in str(err.value)
    rnd = build_perceptual(None, allow_random=True, seed=3)
    assert rnd.source == "random(seed=3)"
    # a torchvision AlexNet file placed in the hub cache is found and loaded (never downloaded)
    alex = torchvision.models.alexnet(weights=None)
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(alex.state_dict(), tmp_path / "hub" / "checkpoints" / ALEXNET_FILES[0])
    perc = build_perceptual(None, allow_random=False)
    assert perc.source.endswith(ALEXNET_FILES[0])
    torch.testing.assert_close(getattr(perc.lpips.net.slice3, "6").weight, alex.features[6].weight)
    x, y = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    d = perc(x, y)
    assert d.shape == (2,) and (d > 0).all()
    torch.testing.assert_close(perc(x, x), torch.zeros(2), atol=1e-6, rtol=0)
    # uncalibrated distance: Σ_layers (1 − mean_hw cos) = ½·LPIPS(lpips=False)
    torch.testing.assert_close(d, 0.5 * perc.lpips(x, y, normalize=True).flatten())


def test_cmr_tto_method_record(tmp_path, monkeypatch):
    from bench.config import build_config
    from bench.datasets.base import Sample
    from bench.methods.cmr.method import CMRTTOMethod

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_home"))
    cfg = build_config(CMRTTOMethod.Config, "fast", CMRTTOMethod.profiles,
                       {"iterations": "2", "render_size": "32", "warmup_passes": "0"})
    assert cfg.pose_lrs == [1e-2, 5e-3, 1e-3, 5e-4] and cfg.betas == [0.0, 0.99] and cfg.latent_lr == 5e-3
    method = CMRTTOMethod(cfg)
    assert method.describe()["labels"] == ["untrained", RANDOM_LABEL]
    method.setup("cpu")
    img, mask = synthetic_targets(1, size=32, seed=1)
    sample = Sample(id="x", index=0, image=img[0], mask=mask[0], mask_source="render",
                    camera=torch.tensor([.6, 0, 0, 1, 0, 0, 0.]), camera_source="gt", class_id=0)
    (rec,) = method.reconstruct([sample])
    assert rec.status == "ok", rec.error
    assert len(rec.losses) == 2 and rec.timings["optimize"] > 0 and rec.timings["total"] >= rec.timings["optimize"]
    assert rec.info["labels"] == ["untrained", RANDOM_LABEL]
    assert rec.image.shape == (3, 32, 32) and rec.mask.shape == (32, 32)
    assert CMRTTOMethod.profiles["fast"]["iterations"] == 20 and CMRTTOMethod.Config().iterations == 200


def test_trained_checkpoint_without_alexnet_is_a_user_error(tmp_path, monkeypatch):
    from bench.config import build_config
    from bench.methods.cmr.method import CMRTTOMethod

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_home"))
    cfg = build_config(CMRTTOMethod.Config, None, None, {"checkpoint": str(tmp_path / "pred_net_500.pth")})
    with pytest.raises(UserError, match=ALEXNET_FILES[0]) as err:
        CMRTTOMethod(cfg).setup("cpu")
    assert "perceptual_weights" in str(err.value) and "\n" not in str(err.value)
