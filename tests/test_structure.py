"""The project's structure holds: every module ships in the wheel, a third-party method plugs in
through an entry point without touching the project, and config tables drive `bench config` and
docs/config.md."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from harness_utils import bench, load_records

REPO = Path(__file__).resolve().parents[1]
TINY_DATA = ["--profile", "fast", "--quiet", "--set", "synthetic.n=3", "--set", "synthetic.image_size=64"]
MAPPING = {"bench": "bench", "methods": "bench/methods", "metrics": "bench/metrics", "datasets": "bench/datasets"}


def source_modules() -> set[str]:
    """Every .py file of the source tree, as its path inside the installed ``bench`` package."""
    out = set()
    for folder, target in MAPPING.items():
        for path in (REPO / folder).rglob("*.py"):
            if "__pycache__" not in path.parts:
                out.add(f"{target}/{path.relative_to(REPO / folder).as_posix()}")
    return out


def test_wheel_holds_every_source_module(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path), str(REPO)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    wheel = next(tmp_path.glob("meshbench-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = sorted(source_modules() - names)
    assert not missing, f"modules missing from the wheel: {missing}"
    assert "bench/render/data/uvsphere_16rings.obj" in names
    assert "bench/reporting/data/paper.yaml" in names  # `bench report --reference paper`


TOY = '''
from dataclasses import dataclass

from bench.config import option, require
from bench.methods.base import Method, Reconstruction


@dataclass
class ToyConfig:
    shrink: float = option(0.0, help="fraction of mask pixels dropped from the right edge")

    def __post_init__(self):
        require(0.0 <= self.shrink < 1.0, "shrink", "must be in [0, 1)", self.shrink)


class ToyMethod(Method):
    """Returns the input as its own reconstruction (an oracle for the harness, not a method)."""

    summary = "toy oracle: echoes the input mask and image"
    Config = ToyConfig

    def reconstruct(self, samples):
        out = []
        for s in samples:
            mask = s.mask.clone()
            cols = int(mask.shape[-1] * self.config.shrink)
            if cols:
                mask[..., -cols:] = 0
            out.append(Reconstruction(sample_id=s.id, camera=s.camera.clone(), image=s.image.clone(), mask=mask,
                                      timings={"total": 1e-3, "optimize": 0.0}, losses=[0.0]))
        return out
'''


@pytest.fixture(scope="module")
def toy_plugin(tmp_path_factory):
    """A package outside the project that registers method ``toy`` through the entry-point group."""
    root = tmp_path_factory.mktemp("plugin")
    (root / "toy_meshbench").mkdir()
    (root / "toy_meshbench" / "__init__.py").write_text(textwrap.dedent(TOY))
    info = root / "toy_meshbench-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-meshbench\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[meshbench.methods]\ntoy = toy_meshbench:ToyMethod\n")
    return {"PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}


def test_entry_point_method_lists_runs_and_reports(toy_plugin, tmp_path):
    listed = bench("ls", "methods", env=toy_plugin, check=True).stdout
    assert "toy oracle: echoes the input mask and image [toy-meshbench]" in listed
    out = tmp_path / "run"
    bench("run", "--methods", "toy,toy@half", "--set", "toy@half.shrink=0.5", "--out", out, *TINY_DATA,
          env=toy_plugin, check=True)
    recs = load_records(out)
    assert {m for m, _ in recs} == {"toy", "toy@half"} and len(recs) == 6
    assert all(r["status"] == "ok" for r in recs.values())
    assert all(r["metrics"]["iou"] == pytest.approx(1.0) for (m, _), r in recs.items() if m == "toy")
    assert all(r["metrics"]["iou"] < 1.0 for (m, _), r in recs.items() if m == "toy@half")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["methods"]["toy"]["class"] == "toy_meshbench:ToyMethod"
    report = bench("report", out, "--out", tmp_path / "rep", env=toy_plugin, check=True).stdout
    assert "toy@half" in report
    table = json.loads((tmp_path / "rep" / "table.json").read_text())
    rows = {row["method"]: row for row in table}
    assert rows["toy"]["iou_mean"] == pytest.approx(1.0) and rows["toy@half"]["iou_mean"] < 1.0
    bad = bench("run", "--methods", "toy", "--set", "toy.shrink=2", "--out", tmp_path / "bad", *TINY_DATA, env=toy_plugin)
    assert bad.returncode == 2 and bad.stderr.strip() == "error: toy.shrink must be in [0, 1), got 2.0"
    assert not (tmp_path / "bad").exists()


def test_bench_config_prints_fields_with_profile_values_and_help():
    proc = bench("config", "ours", "--profile", "fast", "--format", "json", check=True)
    fields = {row["name"]: row for row in json.loads(proc.stdout)["fields"]}
    assert fields["select_num"]["default"] == 500 and fields["select_num"]["value"] == 16
    assert all(row["help"] for row in fields.values()), [n for n, r in fields.items() if not r["help"]]
    for name in ("cmr-tto", "umr-tto", "synthetic", "cub", "p3d"):
        rows = json.loads(bench("config", name, "--format", "json", check=True).stdout)["fields"]
        assert rows and all(row["help"] for row in rows), (name, [r["name"] for r in rows if not r["help"]])
    assert bench("config", "nosuch").returncode == 2


def test_docs_config_md_is_generated_from_the_config_tables():
    generated = bench("config", "--all", "--format", "markdown", check=True).stdout
    assert (REPO / "docs" / "config.md").read_text() == generated, \
        "docs/config.md is stale: regenerate it with `bench config --all --format markdown > docs/config.md`"
