"""The Python API (README "Python API"): load_method / load_dataset, Reconstruction.render / export /
metrics, bench.run / bench.report, with the CLI's validation and code paths."""
from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import bench
from bench.errors import InstanceError, UserError
from bench.methods.base import Reconstruction, TexturedMesh
from bench.render.obj import read_obj

REPO = Path(__file__).resolve().parents[1]
SIZE = 64
TINY = {"ours": {"render_size": SIZE, "select_num": 2, "iterations": [1, 1, 1, 1], "chamfer_resolution": 512},
        "cmr-tto": {"iterations": 2, "render_size": SIZE}}
SYNTHETIC = {"n": 2, "image_size": SIZE}


def readme_python_block() -> str:
    """The one ```python block of README.md's "Python API" section."""
    section = (REPO / "README.md").read_text().split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "README's Python API section must hold exactly one ```python block"
    return blocks[0]


def test_import_bench_is_light_and_exports_the_api():
    code = ("import sys, bench\n"
            "assert 'torch' not in sys.modules, 'import bench imported torch'\n"
            "missing = [n for n in bench.__all__ if n != 'Sample' and not hasattr(bench, n)]\n"
            "assert not missing, missing\n"
            "import bench.reporting.stats\n"  # the report code: the package bench.reporting
            "assert callable(bench.report) and bench.reporting.stats.__name__ == 'bench.reporting.stats'\n"
            "print(sorted(bench.__all__))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert {"Sample", "load_method", "load_dataset", "run", "report"} <= set(ast.literal_eval(out.stdout.strip()))


# ------------------------------------------------------------------------------------------------
# (a) the README's example, as a user runs it


def test_readme_example_runs(tmp_path):
    code = readme_python_block()
    imports = {alias.name.split(".")[0] for node in ast.walk(ast.parse(code))
               if isinstance(node, (ast.Import, ast.ImportFrom))
               for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])}
    assert imports == {"bench"}, imports
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    path, _, metrics = proc.stdout.strip().splitlines()[-1].partition(" ")
    assert path == "bird.obj"
    for name in ("bird.obj", "bird.mtl", "bird_texture.png"):
        assert (tmp_path / name).is_file() and (tmp_path / name).stat().st_size > 0, name
    metrics = ast.literal_eval(metrics)
    assert 0.0 <= metrics["iou"] <= 1.0


# ------------------------------------------------------------------------------------------------
# (b) a notebook: own image -> reconstruction -> render -> export, with ours and cmr-tto


@pytest.fixture(scope="module")
def photo():
    """An "own photo" and its mask as PIL / numpy, made from a synthetic render."""
    from PIL import Image

    demo = bench.load_dataset("synthetic", profile="fast", n=1, image_size=96)[0]
    image = Image.fromarray((demo.image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    return image, demo.mask.numpy() > 0.5, demo.class_id


@pytest.fixture(scope="module")
def sample(photo):
    image, mask, class_id = photo
    return bench.Sample.from_image(image, mask, class_id=class_id, image_size=SIZE, id="photo")


@pytest.fixture(scope="module", params=["ours", "cmr-tto"])
def recon(request, sample):
    method = bench.load_method(request.param, profile="fast", **TINY[request.param])
    out = method.reconstruct([sample])
    assert len(out) == 1 and out[0].status == "ok", out[0].error
    return request.param, out[0]


def test_notebook_render_export_metrics(recon, sample, tmp_path):
    name, rec = recon
    # at its own camera and the input size, render() is the method's own input-view render
    image, mask = rec.render(size=SIZE)
    assert image.shape == (3, SIZE, SIZE) and mask.shape == (SIZE, SIZE)
    assert torch.allclose(image, rec.image, atol=1e-5) and torch.allclose(mask, rec.mask, atol=1e-5)
    # another camera, as a plain sequence, at another size, on white
    cam = [0.5, 0.0, 0.0, *rec.camera[3:].tolist()]
    white, wmask = rec.render(cam, size=32, background=1.0)
    assert white.shape == (3, 32, 32) and 0 < float(wmask.mean()) < 1
    assert float(white.min()) >= 0 and float(white.max()) <= 1
    assert torch.all(white[:, wmask < 0.5] == 1)
    views = rec.views([0, 90], size=32)
    assert views.shape == (2, 3, 32, 32) and float(views.max()) <= 1
    path = rec.export(tmp_path / "mesh" / name)  # no suffix -> .obj, folder created
    assert path == tmp_path / "mesh" / f"{name}.obj"
    assert {p.name for p in path.parent.iterdir()} == {f"{name}.obj", f"{name}.mtl", f"{name}_texture.png"}
    metrics = rec.metrics(sample)
    assert set(metrics) >= {"iou"} and 0 <= metrics["iou"] <= 1
    from bench.metrics.iou import mask_iou

    assert metrics["iou"] == pytest.approx(float(mask_iou(sample.mask, rec.mask)))


def test_render_and_export_refuse_bad_input(recon, sample, tmp_path):
    _, rec = recon
    with pytest.raises(UserError, match="glb export is not available yet; use .obj"):
        rec.export(tmp_path / "mesh.glb")
    with pytest.raises(UserError, match="use .obj"):
        rec.export(tmp_path / "mesh.ply")
    with pytest.raises(UserError, match="camera must be 7"):
        rec.render([1.0, 0.0])
    with pytest.raises(UserError, match="size"):
        rec.render(size=0)
    other = bench.Sample.from_image(sample.image, sample.mask, id="another")
    with pytest.raises(UserError, match="not of 'another'"):
        rec.metrics(other)


def test_failed_reconstruction_says_why(sample, tmp_path):
    failed = Reconstruction.failed("photo", "the loss became NaN")
    for call in (lambda: failed.render(), lambda: failed.export(tmp_path / "x.obj"), lambda: failed.metrics(sample),
                 lambda: failed.views()):
        with pytest.raises(InstanceError, match="reconstruction of photo: it failed \\(the loss became NaN\\)"):
            call()
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------------
# (c) load_method / load_dataset: the config table of --set


def test_load_method_typed_and_string_overrides():
    typed = bench.load_method("ours", profile="fast", select_num=3, iterations=(1, 1, 1, 1), stale_outputs=False,
                              render_size=np.int64(SIZE))
    text = bench.load_method("ours", profile="fast", select_num="3", iterations="[1,1,1,1]", stale_outputs="false",
                             render_size=str(SIZE))
    for m in (typed, text):
        assert (m.config.select_num, m.config.iterations, m.config.stale_outputs, m.config.render_size) == \
            (3, [1, 1, 1, 1], False, SIZE)
        assert m.inverter is not None  # set up
    variant = bench.load_method("ours@tight", profile="fast", xy_threshold=0.1, **TINY["ours"])
    assert variant.name == "ours@tight" and variant.config.xy_threshold == 0.1
    assert variant.config.select_num == 2


@pytest.mark.parametrize("overrides, message", [
    ({"select_num": 0}, "ours.select_num must be >= 1, got 0"),
    ({"select_num": 2.5}, "ours.select_num expects an integer"),
    ({"iterations": [1, 1, 1, -1]}, "ours.iterations must be a non-empty list of integers >= 0"),
    ({"mask_loss_weight": float("nan")}, "ours.mask_loss_weight expects a finite number"),
    ({"selct_num": 3}, "unknown option ours.selct_num (did you mean 'select_num'?)"),
])
def test_load_method_refuses_bad_values(overrides, message):
    with pytest.raises(UserError) as err:
        bench.load_method("ours", profile="fast", **overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_load_method_and_bench_run_give_the_same_message(tmp_path):
    with pytest.raises(UserError) as api:
        bench.load_method("ours", select_num=0)
    with pytest.raises(UserError) as cli:
        bench.run("ours", out=tmp_path / "run", sets={"ours": {"select_num": 0}})
    assert str(api.value) == str(cli.value) == "ours.select_num must be >= 1, got 0"
    assert not (tmp_path / "run").exists()


def test_unknown_names_suggest():
    with pytest.raises(UserError, match=r"unknown method 'ourz' \(did you mean 'ours'"):
        bench.load_method("ourz")
    with pytest.raises(UserError, match="unknown profile 'fastest'"):
        bench.load_method("ours", profile="fastest")
    with pytest.raises(UserError, match=r"unknown dataset 'synthetc' \(did you mean 'synthetic'\?\)"):
        bench.load_dataset("synthetc")
    with pytest.raises(UserError, match="synthetic.n must be >= 1"):
        bench.load_dataset("synthetic", n=0)


# ------------------------------------------------------------------------------------------------
# (d) bench.run + bench.report: the CLI commands, end to end


@pytest.fixture(scope="module")
def api_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("api") / "run"
    path = bench.run(["ours"], dataset="synthetic", out=out, profile="fast",
                     sets={"ours": TINY["ours"], "synthetic": SYNTHETIC}, quiet=True)
    return path


def test_run_writes_a_run_directory(api_run):
    assert api_run.is_dir()
    manifest = json.loads((api_run / "manifest.json").read_text())
    assert manifest["methods"]["ours"]["config"]["select_num"] == 2
    assert manifest["command"][:4] == ["bench", "run", "--methods", "ours"]  # the equivalent command line
    assert "ours.iterations=[1, 1, 1, 1]" in manifest["command"]
    recs = [json.loads(p.read_text()) for p in sorted((api_run / "records" / "ours").glob("*.json"))]
    assert [r["instance"] for r in recs] == ["00000", "00001"] and all(r["status"] == "ok" for r in recs)


def test_reconstruction_metrics_equal_the_records(api_run):
    """load_dataset + load_method + Reconstruction.metrics compute what `bench run` recorded."""
    ds = bench.load_dataset("synthetic", profile="fast", **SYNTHETIC)
    method = bench.load_method("ours", profile="fast", **TINY["ours"])
    sample = ds[0]
    rec = method.reconstruct([sample])[0]
    record = json.loads((api_run / "records" / "ours" / f"{sample.id}.json").read_text())
    assert rec.metrics(sample) == pytest.approx(record["metrics"], abs=1e-6)


def test_report_of_the_run(api_run, tmp_path):
    folder = bench.report(api_run, resamples=0)
    assert folder == api_run / "report" and (folder / "table.csv").is_file()
    other = bench.report([api_run], out=tmp_path / "rep", labels={str(api_run): "mine"}, resamples=0)
    assert other == tmp_path / "rep" and "mine" in (other / "report.json").read_text()


def test_run_and_report_raise_user_errors(tmp_path):
    with pytest.raises(UserError, match="--batch-size must be >= 1"):
        bench.run("ours", out=tmp_path / "a", batch_size=0)
    with pytest.raises(UserError, match=r"bench.run: unknown option 'batchsize' \(did you mean 'batch_size'"):
        bench.run("ours", out=tmp_path / "a", batchsize=2)
    with pytest.raises(UserError, match="launcher"):
        bench.run("ours", out=tmp_path / "a", launcher="nowhere")
    with pytest.raises(UserError, match="does not exist"):
        bench.report(tmp_path / "missing")
    assert not list(tmp_path.iterdir())


def test_run_where_every_instance_fails_raises(tmp_path, monkeypatch):
    from bench.methods.meshinversion.method import MeshInversionMethod

    monkeypatch.setattr(MeshInversionMethod, "reconstruct",
                        lambda self, samples: [Reconstruction.failed(s.id, "boom") for s in samples])
    with pytest.raises(UserError, match="bench run: every instance failed"):
        bench.run("ours", out=tmp_path / "run", profile="fast", sets={"ours": TINY["ours"], "synthetic": {"n": 1}},
                  quiet=True)
    assert json.loads((tmp_path / "run" / "records" / "ours" / "00000.json").read_text())["error"] == "boom"


# ------------------------------------------------------------------------------------------------
# (e) export round trip


def test_export_round_trip(recon, tmp_path):
    from PIL import Image

    from bench.render.renderer import render_mesh

    name, rec = recon
    path = rec.export(tmp_path / f"{name}.obj")
    vertices, uvs, faces, face_uvs = read_obj(path)
    np.testing.assert_allclose(vertices, rec.mesh.vertices.numpy(), atol=1e-5)
    np.testing.assert_array_equal(faces, rec.mesh.faces.numpy())
    assert (face_uvs >= 0).all()
    assert f"map_Kd {name}_texture.png" in path.with_suffix(".mtl").read_text()
    tex = torch.from_numpy(np.array(Image.open(tmp_path / f"{name}_texture.png"))).permute(2, 0, 1).float() / 127.5 - 1
    corner_uvs = torch.from_numpy(uvs[face_uvs])  # (F,3,2)
    if rec.mesh.texture is not None:  # UV mesh: its own UVs and texture map
        np.testing.assert_allclose(corner_uvs.numpy(), rec.mesh.face_uvs.numpy(), atol=1e-6)
        assert tex.shape == rec.mesh.texture.shape
        again = TexturedMesh(torch.from_numpy(vertices), torch.from_numpy(faces), corner_uvs, tex)
        image, mask = render_mesh(again, rec.camera[None], height=SIZE, width=SIZE)
    else:  # per-face grids baked into an atlas, OBJ texel-centre convention -> the renderer's
        H, W = tex.shape[1:]
        u = (corner_uvs[..., 0] * W - 0.5) / (W - 1)
        v = 1 - ((1 - corner_uvs[..., 1]) * H - 0.5) / (H - 1)
        again = TexturedMesh(torch.from_numpy(vertices), torch.from_numpy(faces), torch.stack((u, v), -1), tex)
        image, mask = render_mesh(again, rec.camera[None], height=SIZE, width=SIZE, symmetric_padding=False)
    # the file shows what the renderer shows, up to the PNG's 8 bits
    assert float(((image[0] / 2 + 0.5) - rec.image).abs().max()) <= 0.5 / 255 + 1e-4
    assert torch.equal(mask[0, 0] > 0.5, rec.mask > 0.5)
