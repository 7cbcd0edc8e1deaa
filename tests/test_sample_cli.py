"""``bench sample`` through click's CliRunner (demo generator, small views to stay fast)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from bench.cli import main
from bench.methods.meshinversion.generator import load_generator
from bench.render.obj import read_obj
from bench.render.uvsphere import uvsphere_template

SIZE = 48
VIEWS = "0,90,180"


@pytest.fixture(scope="module")
def sampled(tmp_path_factory):
    out = tmp_path_factory.mktemp("samples")
    result = CliRunner().invoke(main, ["sample", "--n", "2", "--seed", "3", "--out", str(out),
                                       "--size", str(SIZE), "--views", VIEWS, "--batch-size", "1"])
    assert result.exit_code == 0, result.output
    return out, result.output


def test_demo_generator_is_announced(sampled):
    _, output = sampled
    assert "untrained demo generator" in output


def test_files_and_obj_contents(sampled):
    out, _ = sampled
    meta = json.loads((out / "samples.json").read_text())
    assert meta["generator"] == "untrained demo generator" and meta["generator_sha256"] is None
    tpl = uvsphere_template()
    n_views = len(VIEWS.split(","))
    res = meta["texture_resolution"]
    assert len(meta["samples"]) == 2
    for rec in meta["samples"]:
        for key in ("obj", "mtl", "texture", "views"):
            assert (out / rec[key]).is_file(), rec[key]
        verts, uvs, faces, face_uvs = read_obj(out / rec["obj"])
        assert verts.shape == tuple(tpl.vertices.shape)
        assert uvs.shape == tuple(tpl.uvs.shape)
        np.testing.assert_array_equal(faces, tpl.faces.numpy())
        np.testing.assert_array_equal(face_uvs, tpl.face_uv_index.numpy())
        assert not np.allclose(verts, tpl.vertices.numpy(), atol=1e-3)  # deformed, not the sphere
        assert rec["texture"] in (out / rec["mtl"]).read_text()
        assert (out / rec["obj"]).read_text().startswith(f"mtllib {rec['mtl']}")
        with Image.open(out / rec["texture"]) as im:
            assert im.size == (res, res) and im.mode == "RGB"
        with Image.open(out / rec["views"]) as im:
            assert im.size == (SIZE * n_views, SIZE) and im.mode == "RGB"
            views = np.asarray(im)
        assert (views == 255).all(axis=-1).any() and (views != 255).any(axis=-1).any()  # background + object


def test_obj_matches_generator(sampled):
    out, _ = sampled
    meta = json.loads((out / "samples.json").read_text())
    rec = meta["samples"][1]
    gen = load_generator("demo")
    z = torch.tensor([rec["z"]])
    with torch.no_grad():
        _, mesh_map = gen(z, torch.tensor([rec["class_id"]]))
    verts = uvsphere_template().vertex_positions(mesh_map)[0].numpy()
    np.testing.assert_allclose(read_obj(out / rec["obj"])[0], verts, atol=2e-6)


def test_class_id_and_errors(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["sample", "--n", "1", "--class-id", "57", "--size", "16", "--views", "0",
                                  "--out", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "a" / "samples.json").read_text())["samples"][0]["class_id"] == 57

    result = runner.invoke(main, ["sample", "--checkpoint", str(tmp_path / "missing.pth"), "--out", str(tmp_path / "b")])
    assert result.exit_code == 2
    assert "missing.pth" in result.output and "Traceback" not in result.output

    result = runner.invoke(main, ["sample", "--class-id", "200", "--out", str(tmp_path / "c")])
    assert result.exit_code == 2
