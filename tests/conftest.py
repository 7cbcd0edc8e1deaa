"""Shared pytest fixtures: the golden-fixture folder and small factories."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests start many torch processes on a 2-core machine; spinning OpenMP threads of one process then
# starve the others (10-100x slowdowns seen). Passive waiting keeps the suite's time predictable.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]


def fixtures_path() -> Path:
    """Folder of the official-code golden data: $MESHBENCH_FIXTURES, default <repo>/../shared/fixtures."""
    return Path(os.environ.get("MESHBENCH_FIXTURES", REPO.parent / "shared" / "fixtures")).resolve()


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    path = fixtures_path()
    if not path.is_dir():
        pytest.fail(f"fixture folder {path} not found; set MESHBENCH_FIXTURES to the shared/fixtures folder")
    return path


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op torch thread for a module of small-tensor tests (use with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
