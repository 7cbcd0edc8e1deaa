"""`bench eval-generator` (supplement Tab. 1): ConvMesh's truncation, the pseudo-ground-truth format, the
images each FID compares, resume after SIGKILL, one-line errors."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from bench.cli import main
from bench.datasets.pseudogt import check_folder, load_pseudogt, write_pseudogt
from bench.errors import UserError
from bench.studies.generator_fid import truncated_normal

TESTS = Path(__file__).parent
SYN = ["--set", "synthetic.n=4", "--set", "synthetic.image_size=64"]


def test_truncation_is_the_standard_normal_truncated_to_sigma():
    from scipy import stats

    z = truncated_normal((20000,), 0.25, torch.Generator().manual_seed(3))
    assert z.abs().max() <= 0.25
    ks = stats.kstest(z.numpy(), stats.truncnorm(-0.25, 0.25).cdf)
    assert ks.pvalue > 1e-3, ks  # rejection sampling per entry = the truncated normal
    wide = truncated_normal((20000,), 3.0, torch.Generator().manual_seed(3))
    assert stats.kstest(wide.numpy(), stats.truncnorm(-3, 3).cdf).pvalue > 1e-3


def test_pseudogt_round_trip_and_checks(tmp_path):
    tex, mesh = torch.rand(3, 16, 16) * 2 - 1, torch.randn(3, 32, 32)
    write_pseudogt(tmp_path, 0, torch.rand(4, 8, 8), tex, torch.ones(1, 16, 16), mesh)
    write_pseudogt(tmp_path, 1, np.zeros((4, 8, 8)), tex.numpy(), np.ones((1, 16, 16)), mesh.numpy())  # numpy too
    got = load_pseudogt(tmp_path, 0)
    assert torch.equal(got["texture"], tex) and torch.equal(got["mesh"], mesh)
    assert torch.equal(load_pseudogt(tmp_path, 1)["texture"], tex)
    assert check_folder(tmp_path, 2) == tmp_path
    with pytest.raises(UserError, match="2 .npz files for 3 images"):
        check_folder(tmp_path, 3)
    (tmp_path / "1.npz").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="not a ConvMesh pseudo-ground-truth file"):
        load_pseudogt(tmp_path, 1)


def _pseudogt_from_ground_truth(folder: Path, n: int = 4) -> None:
    """ConvMesh-format files holding each synthetic instance's own mesh map and texture."""
    from bench.runner import RunOptions, build_dataset

    ds = build_dataset(RunOptions(methods=[], dataset_overrides={"n": "4", "image_size": "64"}))
    for i in range(n):
        s = ds.load(i)
        write_pseudogt(folder, i, torch.cat([s.image * 2 - 1, s.mask[None]]), s.gt["texture"],
                       torch.ones(1, *s.gt["texture"].shape[1:]), s.gt["mesh_map"])


def _invoke(*args):
    from test_fid import register_tiny

    return CliRunner().invoke(main, ["eval-generator", "--fid-extractor", register_tiny(), "--kid-subset-size", "2",
                                     "--quiet", *map(str, args)], catch_exceptions=False)


def test_full_texture_and_mesh_fid_of_the_right_images(tmp_path):
    from bench.methods.meshinversion.generator import load_generator
    from bench.metrics.images import read_png
    from bench.render.uvsphere import uvsphere_template
    from bench.runner import RunOptions, build_dataset
    from bench.seeds import instance_seed
    from bench.studies.generator_fid import render_instance

    pgt, out = tmp_path / "pseudogt_128x128", tmp_path / "study"
    _pseudogt_from_ground_truth(pgt)
    res = _invoke(*SYN, "--pseudogt", pgt, "--out", out, "--reference", "paper")
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "generator_fid.json").read_text())
    values = doc["values"]
    for kind in ("full", "texture", "mesh"):
        assert math.isfinite(values[f"fid_{kind}"]) and values[f"fid_{kind}"] >= 0
        assert len(list((out / "images" / kind).glob("*.png"))) == 4
    assert doc["protocol"]["truncation_sigma"] == 0.25 and "ConvMesh" in doc["protocol"]["truncation"]
    assert "[paper] ConvMesh generator (baseline)" in res.output and "not retrieved" in res.output
    # each image is what the protocol says: instance 2's class, camera and seeded truncated latent
    ds = build_dataset(RunOptions(methods=[], dataset_overrides={"n": "4", "image_size": "64"}))
    sample = ds.load(2)
    z = truncated_normal((64,), 0.25, torch.Generator().manual_seed(instance_seed(0, 2)))
    want = render_instance(load_generator("demo"), uvsphere_template("cpu"), sample, z, load_pseudogt(pgt, 2), "cpu")
    for kind in ("real", "full", "texture", "mesh"):
        got = read_png(out / "images" / kind / f"{sample.id}.png").permute(1, 2, 0)
        assert torch.equal(got, want[kind]), kind
    mask = sample.mask.bool()
    real = want["real"].float() / 255
    assert torch.allclose(real[~mask], torch.full_like(real[~mask], 0.5), atol=1 / 255)  # grey background
    # the pseudo-GT texture on the generated mesh differs from the generated texture on it
    assert not torch.equal(want["mesh"], want["full"])


def test_resume_after_sigkill_and_refusals(tmp_path):
    out = tmp_path / "study"
    code = ("import sys; sys.path.insert(0, %r); from test_fid import register_tiny; register_tiny(); "
            "from bench.cli import main; main()" % str(TESTS))
    args = ["eval-generator", "--fid-extractor", "meshbench-test-tiny", "--kid-subset-size", "2", "--quiet",
            "--set", "synthetic.n=12", "--set", "synthetic.image_size=64", "--out", str(out)]
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and len(list((out / "images" / "full").glob("*.png"))) < 2:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {p: p.stat().st_mtime_ns for p in (out / "images").rglob("*.png")}
    assert 2 <= len([p for p in before if p.parent.name == "full"]) < 12, "the kill should land mid-study"
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    for path, mtime in before.items():
        assert path.stat().st_mtime_ns == mtime, path  # finished images were not redone
    assert len(list((out / "images" / "full").glob("*.png"))) == 12
    assert json.loads((out / "generator_fid.json").read_text())["n"] == 12
    # another truncation into the same folder, a bad sigma, a pseudo-GT folder of the wrong size: one line, exit 2
    for extra, needle in [(["--truncation", "0.5", "--out", out], "other settings"),
                          (["--truncation", "0", "--out", tmp_path / "x"], "--truncation must be > 0"),
                          (["--pseudogt", tmp_path / "none", "--out", tmp_path / "y"], "no such folder")]:
        res = _invoke("--set", "synthetic.n=12", "--set", "synthetic.image_size=64", *extra)
        assert res.exit_code == 2 and res.output.count("\n") == 1 and needle in res.output, res.output
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
