"""MeshInversion inverter and method: config/profiles, batching, failures, weights policy, outputs.

Uses the untrained demo generator (texture 128) at small resolutions so the whole file runs in
well under a minute on a laptop CPU. The official-parity check is ``test_e2e_trace.py``.
"""
from __future__ import annotations

import math
import time

import pytest
import torch

from bench.config import build_config
from bench.errors import UserError
from bench.methods.base import Reconstruction
from bench.methods.meshinversion.config import PROFILES, InversionConfig
from bench.methods.meshinversion.method import MeshInversionMethod
from bench.methods.meshinversion.render import render
from bench.datasets.base import Sample
from bench.seeds import sample_seed
from bench.render.camera import canonical_quaternion, quat_mul

SMALL = {"render_size": "64", "select_num": "4", "init_batch_size": "3", "iterations": "[2,1,1,1]",
         "chamfer_resolution": "512", "warmup_passes": "0"}


def make_method(profile="fast", small=True, **overrides) -> MeshInversionMethod:
    """The method with ``profile``, shrunk to SMALL settings unless ``small`` is False."""
    sets = {**(SMALL if small else {}), **{k: str(v) for k, v in overrides.items()}}
    cfg = build_config(InversionConfig, profile, PROFILES, sets)
    method = MeshInversionMethod(cfg)
    method.setup("cpu")
    return method


def _axis_angle(axis, degrees):
    axis = torch.nn.functional.normalize(torch.tensor(axis, dtype=torch.float32), dim=0)
    half = math.radians(degrees) / 2
    return torch.cat([torch.tensor([math.cos(half)]), math.sin(half) * axis])


def make_samples(method: MeshInversionMethod, n: int, size: int, seed: int = 0, perturb: bool = True):
    """Targets rendered from the method's generator at known cameras; initial cameras perturbed
    (scale x1.15, translation +0.08, a 20 degree rotation) unless ``perturb`` is False."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        z = torch.randn(1, 64, generator=gen)
        cls = int(torch.randint(0, 200, (), generator=gen))
        azimuth = float(torch.rand((), generator=gen)) * 360
        q = quat_mul(_axis_angle([0, 1, 0], azimuth)[None], canonical_quaternion()[None])[0]
        cam = torch.cat([torch.tensor([0.6, 0.02, -0.03]), q])
        with torch.no_grad():
            tex, mm = method.generator(z, torch.tensor([cls]))
            r = render(method.template, tex, mm, cam[None, :1], cam[None, 1:3], cam[None, 3:], size)
        mask = (r.mask[0, 0] > 0.5).float()
        image = ((r.image[0] / 2 + 0.5) * mask + (1 - mask)).clamp(0, 1)
        init = cam.clone()
        if perturb:
            init[0] *= 1.15
            init[1:3] += torch.tensor([0.08, -0.08])
            init[3:] = quat_mul(_axis_angle([1, 1, 0], 20)[None], cam[None, 3:])[0]
        out.append(Sample(id=f"s{seed}-{i}", index=i, image=image, mask=mask, mask_source="render",
                          camera=init, camera_source="gt+noise", class_id=cls,
                          gt={"latent": z[0], "camera": cam}))
    return out


@pytest.fixture(scope="module")
def small():
    return make_method()


# ------------------------------------------------------------------------------------ config
def test_profiles_and_paper_defaults():
    paper = build_config(InversionConfig, "paper", PROFILES)
    assert paper.select_num == 500 and paper.iterations == [50, 50, 50, 50]
    assert paper.z_lrs == [1e-1, 5e-2, 1e-2, 5e-3] and paper.pose_lrs == [1e-2, 5e-3, 1e-3, 5e-4]
    assert paper.betas == (0.0, 0.99) and paper.lr_warmup_steps == 0 and paper.render_size == 256
    assert paper.chamfer_resolution == 8192 and paper.feat_loss_weight == 0.04
    assert (paper.mask_loss_weight, paper.pixel_loss_weight, paper.nll_loss_weight) == (10.0, 1.0, 0.05)
    assert paper.checkpoint is None and paper.carry_optimizer_state is False
    fast = build_config(InversionConfig, "fast", PROFILES)
    assert (fast.render_size, fast.chamfer_resolution, fast.select_num) == (128, 2048, 16)
    over = build_config(InversionConfig, "fast", PROFILES, {"iterations": "[1,2,3,4]", "betas": "[0.1,0.9]"})
    assert over.iterations == [1, 2, 3, 4] and over.betas == (0.1, 0.9)
    with pytest.raises(UserError, match="one value per"):
        build_config(InversionConfig, "paper", PROFILES, {"iterations": "[5,5]"})
    with pytest.raises(UserError):
        build_config(InversionConfig, "nope", PROFILES)


def test_learning_rate_schedule():
    cfg = InversionConfig(iterations=[2, 1, 1], z_lrs=[1.0, 0.5, 0.25], pose_lrs=[0.1, 0.05, 0.025])
    assert [cfg.learning_rates(s) for s in range(4)] == [(1.0, 0.1), (1.0, 0.1), (0.5, 0.05), (0.25, 0.025)]
    warm = InversionConfig(lr_warmup_steps=4)
    assert warm.learning_rates(0) == pytest.approx((0.1 / 4, 0.01 / 4))  # official 1-based counter
    assert warm.learning_rates(3) == pytest.approx((0.1, 0.01))


# ------------------------------------------------------------------------------------ batching
def test_batch_equals_separate_runs(small):
    samples = make_samples(small, 4, 64, seed=1)
    batched = small.reconstruct(samples)
    single = [small.reconstruct([s])[0] for s in samples]
    for a, b in zip(batched, single):
        assert a.status == b.status == "ok"
        assert a.info["chosen_candidate"] == b.info["chosen_candidate"]
        assert len(a.losses) == len(b.losses) == 5
        assert a.losses[-1] == pytest.approx(b.losses[-1], rel=1e-5)
        assert torch.allclose(a.latent, b.latent, atol=1e-5)
        assert torch.allclose(a.camera, b.camera, atol=1e-5)
        assert a.info["batch_size"] == 4 and b.info["batch_size"] == 1


def test_reconstruction_fields(small):
    s = make_samples(small, 1, 64, seed=2)[0]
    (rec,) = small.reconstruct([s])
    assert isinstance(rec, Reconstruction) and rec.status == "ok" and rec.sample_id == s.id
    mesh = rec.mesh
    assert mesh.vertices.shape == (482, 3) and mesh.faces.shape == (960, 3)
    assert mesh.face_uvs.shape == (960, 3, 2) and mesh.texture.shape == (3, 128, 128)
    assert float(mesh.texture.abs().max()) <= 1
    assert torch.isfinite(mesh.vertices).all()
    assert rec.camera.shape == (7,) and rec.latent.shape == (64,)
    assert rec.image.shape == (3, 64, 64) and rec.mask.shape == (64, 64)
    assert 0 <= float(rec.image.min()) and float(rec.image.max()) <= 1
    # background = 0 in [-1, 1], i.e. 0.5 here
    assert torch.all(rec.image[:, rec.mask < 0.5] == 0.5)
    assert set(rec.timings) == {"total", "init", "optimize"} and all(v > 0 for v in rec.timings.values())
    info = rec.info
    for key in ("iou_init", "iou_final", "chosen_candidate", "feature_term", "labels"):
        assert key in info
    assert info["feature_term"] == "random vgg19 (no weights file)"
    assert "untrained" in info["labels"] and "random vgg19" in info["labels"]
    assert 0 <= info["chosen_candidate"] < 4
    # the returned render is the final latent/camera's
    with torch.no_grad():
        tex, mm = small.generator(rec.latent[None], torch.tensor([s.class_id]))
        r = render(small.template, tex, mm, rec.camera[None, :1], rec.camera[None, 1:3], rec.camera[None, 3:], 64)
    assert torch.equal(r.mask[0, 0], rec.mask)
    inter = (rec.mask * s.mask).sum() / (rec.mask + s.mask - rec.mask * s.mask).sum()
    assert info["iou_final"] == pytest.approx(float(inter), abs=1e-6)
    desc = small.describe()
    assert desc["feature_term"] == info["feature_term"] and desc["labels"] == info["labels"]
    assert desc["config"]["select_num"] == 4


def test_resized_sample_returns_sample_size(small):
    s = make_samples(small, 1, 96, seed=3, perturb=False)[0]
    (rec,) = small.reconstruct([s])
    assert rec.status == "ok", rec.error
    assert rec.image.shape == (3, 96, 96) and rec.mask.shape == (96, 96)
    assert rec.info["fit_size"] == 64
    assert rec.info["iou_final"] > 0.5


# ------------------------------------------------------------------------------------ failures
def test_nan_instance_fails_alone(small, monkeypatch):
    samples = make_samples(small, 3, 64, seed=4)
    inv = small.inverter
    original = inv._losses
    calls = {"n": 0}

    def poisoned(out, z, target, rows, generators, with_prior=True):
        total, terms = original(out, z, target, rows, generators, with_prior)
        calls["n"] += 1
        if with_prior and len(rows) == 3 and calls["n"] >= 2:  # optimisation steps: row 1 goes NaN
            total = total.clone()
            total[1] = float("nan")
        return total, terms

    monkeypatch.setattr(inv, "_losses", poisoned)
    recs = small.reconstruct(samples)
    monkeypatch.undo()
    assert [r.status for r in recs] == ["ok", "failed", "ok"]
    assert "non-finite loss" in recs[1].error
    reference = small.reconstruct([samples[0], samples[2]])
    for got, ref in zip([recs[0], recs[2]], reference):
        assert got.losses[-1] == pytest.approx(ref.losses[-1], rel=1e-5)


def test_bad_sample_fails_alone(small):
    good, bad = make_samples(small, 2, 64, seed=5)
    bad.mask = bad.mask[:10]
    recs = small.reconstruct([good, bad])
    assert recs[0].status == "ok" and recs[1].status == "failed"


# ------------------------------------------------------------------------------------ options
def test_stale_outputs_are_one_step_behind(small):
    method = make_method(stale_outputs="true", iterations="[1,0,0,0]")
    s = make_samples(method, 1, 64, seed=6)[0]
    (rec,) = method.reconstruct([s])
    # with a single step, the official outputs are those of the initial latent and camera
    assert rec.info["outputs"].startswith("last forward")
    assert not torch.equal(rec.camera, s.camera)
    with torch.no_grad():
        seed = sample_seed(s)
        z0 = torch.randn(4, 64, generator=torch.Generator().manual_seed(seed))[rec.info["chosen_candidate"]]
        tex, mm = method.generator(z0[None], torch.tensor([s.class_id]))
        cam = s.camera
        r = render(method.template, tex, mm, cam[None, :1], cam[None, 1:3], cam[None, 3:], 64)
    assert torch.equal(r.mask[0, 0], rec.mask)
    assert rec.info["iou_final"] == pytest.approx(rec.info["iou_init"], abs=1e-6)


def test_carry_optimizer_state(small):
    method = make_method(carry_optimizer_state="true")
    a, b = make_samples(method, 2, 64, seed=7)
    method.reconstruct([a])
    steps = method.config.total_steps
    assert float(method.inverter._carried["z"][0]["step"]) == steps
    method.reconstruct([b])
    assert float(method.inverter._carried["z"][0]["step"]) == 2 * steps
    fresh = small.reconstruct([b])[0]
    carried = make_method(carry_optimizer_state="true")
    carried.reconstruct([a])
    second = carried.reconstruct([b])[0]
    assert second.losses[0] == pytest.approx(fresh.losses[0], rel=1e-9)  # same start
    assert second.losses[-1] != fresh.losses[-1]  # different Adam state -> different path


# ------------------------------------------------------------------------------------ weights
def test_weights_policy(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    ckpt = tmp_path / "checkpoint_latest.pth"
    demo = MeshInversionMethod(InversionConfig(feat_loss=False, warmup_passes=0))
    demo.setup("cpu")
    assert demo.feature_term == "off" and "no feature loss" in demo.labels()
    torch.save({"generator_running_avg": demo.generator.state_dict()}, ckpt)
    real = MeshInversionMethod(InversionConfig(checkpoint=str(ckpt), warmup_passes=0))
    with pytest.raises(UserError, match="vgg19-dcbb9e9d.pth") as err:
        real.setup("cpu")
    assert str(tmp_path / "torch_home") in str(err.value) and "feat_loss=false" in str(err.value)
    real = MeshInversionMethod(InversionConfig(checkpoint=str(ckpt), feat_loss=False, warmup_passes=0))
    real.setup("cpu")
    assert real.labels() == ["no feature loss"]
    assert real.describe()["weights"]["checkpoint"]["sha256"]
    missing = MeshInversionMethod(InversionConfig(vgg_weights=str(tmp_path / "nope.pth"), warmup_passes=0))
    with pytest.raises(UserError, match="nope.pth"):
        missing.setup("cpu")


# ------------------------------------------------------------------------------------ quality
def test_fast_profile_improves_iou():
    """Synthetic-style targets (demo-generator renders at known cameras), initial cameras
    perturbed: the fast profile must raise the IoU clearly."""
    method = make_method("fast", small=False)
    samples = make_samples(method, 2, method.config.render_size, seed=0)
    start = time.perf_counter()
    recs = method.reconstruct(samples)
    per_instance = (time.perf_counter() - start) / len(samples)
    init = [r.info["iou_init"] for r in recs]
    final = [r.info["iou_final"] for r in recs]
    print(f"fast profile: IoU {init} -> {final}, {per_instance:.1f} s/instance")
    assert all(r.status == "ok" for r in recs)
    assert all(f > i + 0.03 for i, f in zip(init, final)), (init, final)
    assert sum(final) / len(final) > sum(init) / len(init) + 0.08, (init, final)
