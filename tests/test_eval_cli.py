"""`bench eval RUN`: metrics JSON files, protocol options, one-line errors (exit 2)."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from bench.cli import main
from test_fid import TINY, make_run, register_tiny


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("evalcli") / "run", {"perfect": 0.0, "noisy": 0.05}, n=2, size=32,
                    failed=1)


def _invoke(*args, env=None):
    return CliRunner().invoke(main, ["eval", *map(str, args)], env=env, catch_exceptions=False)


def test_eval_iou_latency(run_dir):
    res = _invoke(run_dir.root, "--metrics", "iou,latency", "--quiet")
    assert res.exit_code == 0, res.output
    iou = json.loads(run_dir.metrics_path("iou").read_text())
    assert iou["metric"] == "iou" and iou["methods"]["perfect"]["iou"] == pytest.approx(1.0)
    assert iou["methods"]["noisy"]["n_instances"] == 2 and iou["methods"]["noisy"]["n_failed"] == 1
    lat = json.loads(run_dir.metrics_path("latency").read_text())
    assert lat["methods"]["noisy"]["total"]["mean"] == pytest.approx(1.5)
    assert "iou" in res.output and str(run_dir.metrics_path("latency")) in res.output


def test_eval_fid_with_registered_extractor(run_dir):
    register_tiny()
    res = _invoke(run_dir.root, "--metrics", "fid1,fid10,fid12,kid,shape3d", "--fid-extractor", TINY,
                  "--fid10-views", "official-code", "--kid-subsets", "5", "--view-size", "64", "--quiet", "--methods", "noisy")
    assert res.exit_code == 0, res.output
    docs = {n: json.loads(run_dir.metrics_path(n).read_text()) for n in ("fid1", "fid10", "fid12", "kid", "shape3d")}
    assert set(docs["fid12"]["methods"]) == {"noisy"}
    assert docs["fid10"]["protocol"]["fid10_views"] == "official-code"
    assert docs["fid10"]["methods"]["noisy"]["n_images"] == 2 * 11
    assert docs["fid12"]["protocol"]["size"] == 64 and docs["fid12"]["protocol"]["reference"] == "dataset"
    assert docs["kid"]["methods"]["noisy"]["fid12"]["kid_subset_size"] == 24
    assert docs["shape3d"]["methods"]["noisy"]["fscore"] < 1
    assert docs["shape3d"]["protocol"]["view_size"] == 64
    assert run_dir.fid_dir("noisy", "views12-64").is_dir()


def test_missing_weights_is_one_line_exit_2(run_dir, tmp_path):
    res = CliRunner().invoke(main, ["eval", str(run_dir.root), "--metrics", "fid1", "--quiet"],
                             env={"TORCH_HOME": str(tmp_path / "th")})
    assert res.exit_code == 2
    line = res.output.strip()
    assert "\n" not in line and "weights-inception-2015-12-05-6726825d.pth" in line
    assert str(tmp_path / "th" / "hub" / "checkpoints") in line
    res = _invoke(run_dir.root, "--metrics", "fid12", "--fid-extractor", "torchvision-inception",
                  "--fid-weights", tmp_path / "no.pth")
    assert res.exit_code == 2 and str(tmp_path / "no.pth") in res.output


def test_missing_reference_is_one_line_exit_2(run_dir, tmp_path):
    register_tiny()
    res = _invoke(run_dir.root, "--metrics", "fid12", "--fid-extractor", TINY, "--fid-reference",
                  tmp_path / "precomputed_fid_299x299_testval.npz", "--quiet")
    assert res.exit_code == 2
    assert "precomputed_fid_299x299_testval.npz" in res.output and len(res.output.strip().splitlines()) == 1


def test_real_dataset_default_reference_is_convmesh_file(tmp_path):
    """torchvision-inception on a real dataset looks for ConvMesh's file under <data root>/cache/."""
    run = make_run(tmp_path / "run", {"m": 0.02}, n=2, size=32, dataset="cub", data_root=tmp_path / "cub")
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"0")
    res = _invoke(run.root, "--metrics", "fid12", "--fid-extractor", "torchvision-inception",
                  "--fid-weights", weights, "--quiet")
    assert res.exit_code == 2
    assert str(tmp_path / "cub" / "cache" / "precomputed_fid_299x299_testval.npz") in res.output


def test_bad_arguments(run_dir, tmp_path):
    assert _invoke(run_dir.root, "--metrics", "fid99").exit_code == 2
    assert _invoke(tmp_path / "not-a-run", "--metrics", "iou").exit_code == 2
    assert _invoke(run_dir.root, "--metrics", "iou", "--methods", "ghost").exit_code == 2
    assert _invoke(run_dir.root, "--fid10-views", "twelve").exit_code == 2
