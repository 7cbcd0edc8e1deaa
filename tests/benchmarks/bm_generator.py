"""pytest-benchmark: generator forward (batch 1) at texture 512 (released size) and 128 (demo size).

Run: ``pytest tests/benchmarks/bm_generator.py --benchmark-enable`` (weights are random/demo: the
forward cost does not depend on their values).
"""
from __future__ import annotations

import pytest
import torch

from bench.methods.meshinversion.generator import build_demo_generator


@pytest.fixture(scope="module", params=[512, 128], ids=lambda r: f"tex{r}")
def generator(request):
    # random weights: the forward cost does not depend on their values (small calibration batch)
    model = build_demo_generator(texture_resolution=request.param, calibration_batch=2)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _inputs(batch: int = 1):
    gen = torch.Generator().manual_seed(0)
    return torch.randn(batch, 64, generator=gen), torch.randint(0, 200, (batch,), generator=gen)


def test_generator_forward(benchmark, generator):
    z, c = _inputs()
    generator(z, c)  # warm-up

    def run():
        with torch.no_grad():
            return generator(z, c)

    texture, mesh_map = benchmark(run)
    res = generator.texture_resolution
    assert texture.shape == (1, 3, res, res) and mesh_map.shape == (1, 3, 32, 32)


def test_generator_forward_backward_to_latent(benchmark, generator):
    """One inversion step's generator cost: forward + backward to z (batch 1)."""
    z, c = _inputs()

    def run():
        zz = z.clone().requires_grad_(True)
        texture, mesh_map = generator(zz, c)
        (texture.mean() + mesh_map.mean()).backward()
        return zz.grad

    grad = benchmark(run)
    assert grad.shape == z.shape
