"""pytest-benchmark: one point of ``bench sensitivity`` (100 shapes, one η) on the CPU.

Run: ``pytest tests/benchmarks/bm_sensitivity.py --benchmark-enable -p no:cacheprovider`` (add
``--benchmark-only`` to run nothing else; pyproject's ``addopts`` holds ``--benchmark-disable``, so
``--benchmark-only`` alone is refused). Without ``--benchmark-enable`` the test is skipped, so the
test suite (which collects ``bm_*.py``) does not pay for it.

A point = the perturbed latents' mesh maps (float64, mesh head only), render of their silhouettes at
256 px, the three mask losses and the 3D vertex Chamfer against the unperturbed shapes, which the
fixture computes once (as a study does once per process). Setting: the untrained demo generator,
canonical camera, batches of 25 shapes, η = 1e-3 (the cost does not depend on η). On a busy 2-core
machine ``OMP_NUM_THREADS=1`` gives steadier numbers.
"""
from __future__ import annotations

import pytest

from bench.methods.meshinversion.generator import load_generator
from bench.studies.sensitivity import SensitivityStudy, Settings

SHAPES = 100
RESOLUTION = 256
ETA = 1e-3


def _enabled(config) -> bool:
    """pytest-benchmark's own rule: enabled unless --benchmark-disable without --benchmark-enable."""
    return not (config.getoption("benchmark_disable") and not config.getoption("benchmark_enable"))


@pytest.fixture(scope="module")
def prepared(request, tmp_path_factory):
    if not _enabled(request.config):
        pytest.skip("a 100-shape point takes tens of seconds: run with --benchmark-enable")
    settings = Settings(shapes=SHAPES, etas=(ETA,), resolution=RESOLUTION)
    runner = SensitivityStudy(settings, load_generator("demo"), tmp_path_factory.mktemp("bm") / "study",
                              batch_size=25)
    runner.base()  # the unperturbed shapes: once per study, not part of a point
    return runner


def test_sensitivity_point_100_shapes(prepared, benchmark):
    rows = benchmark.pedantic(prepared.compute_point, args=(ETA,), rounds=3, iterations=1, warmup_rounds=0)
    assert len(rows) == SHAPES and all(r["chamfer_3d"] > 0 for r in rows)
