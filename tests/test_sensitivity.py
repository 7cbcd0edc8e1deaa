"""`bench sensitivity` (supplement Fig. 1): outputs, monotonicity on the demo generator, strict JSON, resume
after SIGKILL, refusal of other settings, bad input. Tiny settings: 3 shapes, 64 px."""
from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
from harness_utils import bench

from bench.errors import UserError
from bench.studies import sensitivity as study

ETAS = (1e-3, 1e-2, 1e-1, 3e-1)
TINY = ["--shapes", "3", "--resolution", "64", "--quiet"]


def _strict_json(path):
    def refuse(token):
        raise ValueError(f"non-strict JSON token {token}")

    return json.loads(path.read_text(), parse_constant=refuse)


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("sensitivity") / "study"
    bench("sensitivity", "--etas", ",".join(map(str, ETAS)), "--out", out, *TINY, check=True)
    return out


def test_outputs_one_row_per_eta_and_loss_with_spread(tiny_study):
    rows = _rows(tiny_study / "sensitivity.csv")
    assert len(rows) == len(ETAS) * len(study.LOSSES)
    assert {(float(r["eta"]), r["loss"]) for r in rows} == {(e, loss) for e in ETAS for loss in study.LOSSES}
    for r in rows:
        assert int(r["n_shapes"]) == 3 and int(r["n_nonfinite"]) == 0
        q25, median, q75 = float(r["q25"]), float(r["median"]), float(r["q75"])
        assert q25 <= median <= q75 and float(r["std"]) >= 0 and float(r["mean"]) >= 0
    points = _rows(tiny_study / "points.csv")
    assert len(points) == 3 * len(ETAS)
    assert {(int(p["shape"]), float(p["eta"])) for p in points} == {(s, e) for s in range(3) for e in ETAS}
    for name in study.OUTPUTS:
        assert (tiny_study / name).stat().st_size > 0, name


def test_3d_distance_and_chamfer_mask_change_grow_with_eta(tiny_study):
    rows = _rows(tiny_study / "sensitivity.csv")

    def means(loss, key="mean"):
        return [float(r[key]) for r in sorted((r for r in rows if r["loss"] == loss), key=lambda r: float(r["eta"]))]

    d3 = means("iou", "mean_chamfer_3d")
    assert all(a < b for a, b in zip(d3, d3[1:])) and d3[0] > 0, d3
    assert all(v > 0 for v in means("chamfer_mask"))  # L_CM(O', M) itself has a floor > 0
    change = means("chamfer_mask_change")
    assert change[0] > 0 and all(a < b for a, b in zip(change, change[1:])), change


def test_summary_is_strict_json_with_a_slope_and_r2_per_loss(tiny_study):
    summary = _strict_json(tiny_study / "summary.json")
    assert set(summary["slopes"]) == set(study.LOSSES)
    for loss, fits in summary["slopes"].items():
        assert set(fits) == {"all", "small", "large"}
        for fit in fits.values():
            assert {"slope", "r2", "n_used", "n_zero_points"} <= set(fit)
    for loss in ("chamfer_mask", "chamfer_mask_change", "iou", "l1"):
        fit = summary["slopes"][loss]["all"]
        assert isinstance(fit["slope"], float) and 0 <= fit["r2"] <= 1, (loss, fit)
    assert summary["settings"]["checkpoint"] == "demo" and summary["definitions"]["chamfer_3d"]
    slopes = _rows(tiny_study / "slopes.csv")
    assert len(slopes) == 3 * len(study.LOSSES)


def test_sigkill_then_resume_keeps_finished_etas(tmp_path):
    out = tmp_path / "killed"
    etas = ",".join(f"{e:.3g}" for e in (10.0 ** (-4 + 3 * i / 11) for i in range(12)))
    args = ["sensitivity", "--etas", etas, "--out", str(out), *TINY]
    proc = subprocess.Popen([sys.executable, "-m", "bench.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "etas" / "eta_00.json").exists():
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = sorted((out / "etas").glob("eta_*.json"))
    assert 1 <= len(done) < 12, "the kill should land mid-study"
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in done}
    assert not (out / "summary.json").exists()

    bench(*args, check=True)
    after = sorted((out / "etas").glob("eta_*.json"))
    assert len(after) == 12
    for p in done:
        assert (p.stat().st_mtime_ns, p.read_bytes()) == before[p.name], f"{p.name} was recomputed"
    assert len(_rows(out / "points.csv")) == 3 * 12
    assert len(_rows(out / "sensitivity.csv")) == 12 * len(study.LOSSES)
    _strict_json(out / "summary.json")
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]

    # other settings into the same folder: refused in one line, nothing touched
    stamp = (out / "study.json").read_bytes()
    proc = bench("sensitivity", "--etas", etas, "--out", out, "--shapes", "4", "--resolution", "64", "--quiet")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "other settings" in lines[0] and "shapes" in lines[0], proc.stderr
    assert (out / "study.json").read_bytes() == stamp


@pytest.mark.parametrize("args, needle", [
    (["--shapes", "0"], "--shapes"),
    (["--etas", "0,1e-3"], "--etas"),
    (["--etas", "1e-3,-1e-2"], "--etas"),
    (["--etas", "1e-3,abc"], "--etas"),
    (["--camera", "sideways"], "--camera"),
    (["--resolution", "30"], "--resolution"),
    (["--resolution", "12"], "--resolution"),
    (["--checkpoint", "/nonexistent/gen.pth"], "/nonexistent/gen.pth"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(args, needle, tmp_path):
    out = tmp_path / "s"
    proc = bench("sensitivity", "--out", out, "--quiet", *args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr and needle in lines[0], proc.stderr
    assert not out.exists()


def test_unreadable_checkpoint_exits_2_and_writes_nothing(tmp_path):
    bad = tmp_path / "gen.pth"
    bad.write_bytes(b"not a checkpoint")
    out = tmp_path / "s"
    proc = bench("sensitivity", "--checkpoint", bad, "--out", out, "--quiet", "--shapes", "1")
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "gen.pth" in proc.stderr, proc.stderr
    assert not out.exists()


# ------------------------------------------------------------------ pure functions, in process


def test_parse_etas_sorts_and_refuses_bad_values():
    assert study.parse_etas("1e-2, 1e-6,1e-4") == (1e-6, 1e-4, 1e-2)
    for text in ("", "1e-3,1e-3", "nan", "inf", "0"):
        with pytest.raises(UserError):
            study.parse_etas(text)
    assert len(study.DEFAULT_ETAS) == 11 and math.isclose(study.DEFAULT_ETAS[0], 1e-6)
    assert math.isclose(study.DEFAULT_ETAS[-1], 1e-1)


def test_fit_loglog_skips_and_counts_zeros():
    x = [1e-12, 1e-10, 1e-8, 1e-6]
    fit = study.fit_loglog(x, [0.0, 0.0, 1e-4, 1e-3])
    assert fit["n_used"] == 2 and fit["n_zero_points"] == 2 and math.isclose(fit["slope"], 0.5)
    fit = study.fit_loglog(x, [v ** 0.5 for v in x])
    assert math.isclose(fit["slope"], 0.5) and math.isclose(fit["r2"], 1.0)
    assert study.fit_loglog(x, [0.0] * 4)["slope"] is None


def test_mesh_maps_is_the_generators_mesh_map():
    import copy

    import torch

    from bench.methods.meshinversion.generator import load_generator

    gen = load_generator("demo")
    z, c, cams = study.draw_shapes([0, 5], 0, gen.n_classes)
    assert cams.shape == (2, 7) and z.shape == (2, 64) and int(c.max()) < gen.n_classes
    gen64 = copy.deepcopy(gen).double()
    with torch.no_grad():
        for g, zz in ((gen, z), (gen64, z.double())):
            assert torch.equal(study.mesh_maps(g, zz, c), g(zz, c)[1])
    # shape s is the same whatever else is drawn; directions are unit and differ per eta
    assert torch.equal(study.draw_shapes([5], 0, gen.n_classes)[0][0], z[1])
    d1, d2 = study.unit_directions([0], 0, 1e-3), study.unit_directions([0], 0, 1e-2)
    assert math.isclose(float(d1.norm()), 1.0) and not torch.equal(d1, d2)
