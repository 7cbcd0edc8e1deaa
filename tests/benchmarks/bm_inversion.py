"""pytest-benchmark: one MeshInversion optimisation iteration, stage by stage (profile ``fast``).

Run: ``pytest tests/benchmarks/bm_inversion.py --benchmark-enable -p no:cacheprovider`` (the file is
collected because it is named on the command line; without ``--benchmark-enable`` every function
runs once as a smoke test). Stages: generator forward, render, VGG relu3_1, each loss term, the
backward pass, the two Adam steps, and the whole iteration, for batches of 1 and 8 instances.
The setting is the untrained demo generator (texture 128) at 128x128 with the random VGG19, the
``fast`` profile's values; targets are renders of the same generator (no data needed). On a busy
2-core machine, ``OMP_NUM_THREADS=1`` gives steadier CPU numbers. ``bench profile`` prints the same
breakdown as a table.
"""
from __future__ import annotations

import functools

import pytest
import torch

from bench.config import build_config
from bench.methods.meshinversion import losses as L
from bench.methods.meshinversion.config import PROFILES, InversionConfig
from bench.methods.meshinversion.method import MeshInversionMethod
from bench.methods.meshinversion.render import render
from bench.render.camera import canonical_quaternion

BATCHES = [1, 8]


@functools.lru_cache(maxsize=1)
def fast_method() -> MeshInversionMethod:
    method = MeshInversionMethod(build_config(InversionConfig, "fast", PROFILES, {"warmup_passes": "1"}))
    method.setup("cpu")
    return method


@functools.lru_cache(maxsize=4)
def make_state(batch: int):
    """(method, target, z, class_ids, (scale, translation, rotation)) for ``batch`` instances."""
    method = fast_method()
    inv, size = method.inverter, method.config.render_size
    gen = torch.Generator().manual_seed(batch)
    cam = torch.cat([torch.full((batch, 1), 0.65), torch.zeros(batch, 2),
                     canonical_quaternion()[None].expand(batch, 4)], 1)
    classes = torch.randint(0, 200, (batch,), generator=gen)
    with torch.no_grad():
        _, _, out = inv.forward(torch.randn(batch, 64, generator=gen), classes, cam[:, :1], cam[:, 1:3],
                                cam[:, 3:], size)
    target = inv.prepare_target((out.image / 2 + 0.5) * out.mask + (1 - out.mask), out.mask[:, 0])
    z = torch.randn(batch, 64, generator=gen)
    pose = (cam[:, :1] * 0.95, cam[:, 1:3] + 0.02, cam[:, 3:].clone())
    return method, target, z, classes, pose


def leaves(batch):
    method, target, z, classes, pose = make_state(batch)
    return method, target, z.clone().requires_grad_(True), classes, [p.clone().requires_grad_(True) for p in pose]


def forward_all(method, target, z, classes, pose):
    """One iteration's forward pass; returns (total (B,), render output)."""
    inv = method.inverter
    _, _, out = inv.forward(z, classes, *pose, method.config.render_size)
    rows = torch.arange(z.shape[0])
    gens = [torch.Generator().manual_seed(i) for i in range(z.shape[0])]
    total, _ = inv.criterion(out.image, out.mask, out.vtx_xy, z, target, rows, gens)
    return total, out


@pytest.mark.parametrize("batch", BATCHES)
def test_generator(benchmark, batch):
    method, _, z, classes, _ = leaves(batch)
    tex, _ = benchmark(method.inverter.generate, z, classes)
    assert tex.shape[0] == batch


@pytest.mark.parametrize("batch", BATCHES)
def test_render(benchmark, batch):
    method, _, z, classes, pose = leaves(batch)
    with torch.no_grad():
        tex, mm = method.inverter.generate(z, classes)
    out = benchmark(render, method.template, tex, mm, *pose, method.config.render_size)
    assert out.image.shape[0] == batch


def _rendered(batch):
    method, target, z, classes, pose = leaves(batch)
    with torch.no_grad():
        tex, mm = method.inverter.generate(z, classes)
    out = render(method.template, tex.requires_grad_(True), mm, *pose, method.config.render_size)
    return method, target, out


@pytest.mark.parametrize("batch", BATCHES)
def test_loss_mask(benchmark, batch):
    _, target, out = _rendered(batch)
    value = benchmark(L.chamfer_mask_loss, out.vtx_xy, target.points.xy, target.points.lengths)
    assert value.shape == (batch,)


@pytest.mark.parametrize("batch", BATCHES)
def test_loss_pixel(benchmark, batch):
    method, target, out = _rendered(batch)
    lc = method.criterion.loss_config
    value = benchmark(L.pixel_texture_loss, out.image, out.mask, target.points, lc,
                      generator=torch.Generator().manual_seed(0))
    assert value.shape == (batch,)


@pytest.mark.parametrize("batch", BATCHES)
def test_vgg(benchmark, batch):
    method, _, out = _rendered(batch)
    feats = benchmark(method.criterion.vgg, out.image, out.mask)
    assert feats.shape[0] == batch


@pytest.mark.parametrize("batch", BATCHES)
def test_loss_feat(benchmark, batch):
    method, target, out = _rendered(batch)
    lc = method.criterion.loss_config
    feats = method.criterion.vgg(out.image, out.mask)
    value = benchmark(L.feat_texture_loss, feats, out.mask, target.feat_points, lc,
                      generator=torch.Generator().manual_seed(0))
    assert value.shape == (batch,)


@pytest.mark.parametrize("batch", BATCHES)
def test_backward(benchmark, batch):
    """The backward pass of the full criterion (forward rebuilt, untimed, before every round)."""

    def setup():
        method, target, z, classes, pose = leaves(batch)
        total, _ = forward_all(method, target, z, classes, pose)
        return (total.sum(),), {}

    benchmark.pedantic(lambda loss: loss.backward(), setup=setup, rounds=3, iterations=1)


@pytest.mark.parametrize("batch", BATCHES)
def test_step(benchmark, batch):
    method, target, z, classes, pose = leaves(batch)
    z_optim, pose_optim, _ = method.inverter._make_optimizers(z, *pose)
    total, _ = forward_all(method, target, z, classes, pose)
    total.sum().backward()
    benchmark(lambda: (z_optim.step(), pose_optim.step()))


@pytest.mark.parametrize("batch", BATCHES)
def test_iteration(benchmark, batch):
    """A whole optimisation step: zero grads, forward, criterion, backward, both Adam steps."""
    method, target, z, classes, pose = leaves(batch)
    z_optim, pose_optim, _ = method.inverter._make_optimizers(z, *pose)

    def iteration():
        z_optim.zero_grad()
        pose_optim.zero_grad()
        total, _ = forward_all(method, target, z, classes, pose)
        total.sum().backward()
        z_optim.step()
        pose_optim.step()
        return total

    total = benchmark.pedantic(iteration, rounds=3, iterations=1, warmup_rounds=1)
    assert torch.isfinite(total).all()
