"""``bench data check`` through click's CliRunner."""
from __future__ import annotations

import shutil
import subprocess
import sys

from click.testing import CliRunner

from bench.cli import main


def _run(*args):
    return CliRunner().invoke(main, ["data", "check", *args])


def _n_instances(fixtures_dir) -> int:
    """Instances of the fake CUB: the official loader outputs stored next to it."""
    import numpy as np

    with np.load(fixtures_dir / "fake_cub_expected_samples.npz") as data:
        return sum(k.endswith("_img") for k in data.files)


def test_check_fake_cub_root(fixtures_dir):
    root = fixtures_dir / "fake_cub_root"
    res = _run("--dataset", "cub", "--data-root", str(root))
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    for rel in ("CUB_200_2011/images/", "CUB_200_2011/images.txt", "CUB_200_2011/image_class_labels.txt",
                "cache/data/test_cub_cleaned.mat", "cache/sfm/anno_test.mat", "cache/cmr_pred_cam.pth",
                "predicted_mask/"):
        row = [ln for ln in lines if ln.split()[-1:] and rel in ln]
        assert row and row[0].startswith("ok"), (rel, res.output)
    n = _n_instances(fixtures_dir)
    assert f"{n}/{n} instance images found" in res.output and f"{n}/{n} masks found" in res.output
    assert lines[-1] == f"instances: {n}"


def test_check_partial_root_exits_1(fixtures_dir, tmp_path):
    root = tmp_path / "cub"
    shutil.copytree(fixtures_dir / "fake_cub_root" / "datasets" / "cub", root)
    (root / "cache" / "sfm" / "anno_test.mat").unlink()
    res = _run("--dataset", "cub", "--data-root", str(root))
    assert res.exit_code == 1
    missing = [ln for ln in res.output.splitlines() if ln.startswith("MISSING")]
    assert len(missing) == 1 and "anno_test.mat" in missing[0]
    assert f"instances: {_n_instances(fixtures_dir)}" in res.output


def test_check_empty_dir_exit_2_one_line(tmp_path):
    for dataset in ("cub", "p3d"):
        res = _run("--dataset", dataset, "--data-root", str(tmp_path))
        assert res.exit_code == 2, res.output
        assert len(res.output.strip().splitlines()) == 1 and res.output.startswith("error: ")
        assert "expected layout" in res.output


def test_check_missing_root_exit_2(tmp_path):
    res = _run("--dataset", "cub", "--data-root", str(tmp_path / "missing"))
    assert res.exit_code == 2
    assert len(res.output.strip().splitlines()) == 1 and "does not exist" in res.output


def test_help_imports_no_torch():
    code = ("import sys\nfrom click.testing import CliRunner\nfrom bench.cli import main\n"
            "r = CliRunner().invoke(main, ['data', 'check', '--help'])\n"
            "assert r.exit_code == 0 and '--data-root' in r.output, r.output\n"
            "assert 'torch' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True)
