"""UV-sphere template: tables and outputs against the official MeshTemplate (shared fixtures)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.render.obj import read_obj
from bench.render.uvsphere import OBJ_PATH, UVSphereTemplate, uvsphere_template

ATOL = 1e-5

# fixture key -> template attribute
TABLES = {
    "vertices": "vertices",
    "faces": "faces",
    "uvs": "uvs",
    "face_textures": "face_uv_index",
    "ff": "ff",
    "topo_map": "topo_map",
    "nonneg_topo_map": "nonneg_topo_map",
    "nonneg_indices": "nonneg_indices",
    "neg_indices": "neg_indices",
    "pos_indices": "pos_indices",
    "symmetry_mask": "symmetry_mask",
    "tangent_map": "tangent_map",
    "nonneg_tangent_map": "nonneg_tangent_map",
}


@pytest.fixture(scope="module")
def tables(fixtures_dir):
    return np.load(fixtures_dir / "mesh_template_uvsphere16.npz")


@pytest.fixture(scope="module")
def outputs(fixtures_dir):
    return np.load(fixtures_dir / "mesh_template_outputs_perturbed.npz")


@pytest.fixture(scope="module")
def template():
    return uvsphere_template("cpu")


def test_shipped_obj_is_the_official_one(fixtures_dir):
    assert OBJ_PATH.read_bytes() == (fixtures_dir / "uvsphere_16rings.obj").read_bytes()


@pytest.mark.parametrize("key", sorted(TABLES))
def test_tables_equal_official(template, tables, key):
    ours = getattr(template, TABLES[key]).numpy()
    ref = tables[key]
    assert ours.shape == ref.shape
    if np.issubdtype(ref.dtype, np.integer):
        assert ours.dtype == np.int64
        np.testing.assert_array_equal(ours, ref)
    else:
        np.testing.assert_allclose(ours, ref, rtol=0, atol=ATOL)


def test_derived_tables(template, tables):
    v, f, t = (tables[k].shape[0] for k in ("vertices", "faces", "uvs"))
    assert template.face_uvs.shape == (f, 3, 2)
    np.testing.assert_array_equal(template.face_uvs.numpy(), tables["uvs"][tables["face_textures"]])
    north, south = template.poles.tolist()
    assert tables["vertices"][north, 1] == tables["vertices"][:, 1].max()
    assert tables["vertices"][south, 1] == tables["vertices"][:, 1].min()
    zero = template.zero_indices.numpy()
    assert len(zero) + 2 * len(tables["neg_indices"]) == v
    np.testing.assert_array_equal(tables["nonneg_indices"][-len(zero):], zero)
    assert (tables["ff"] >= 0).all() and (tables["ff"] != np.arange(f)[:, None]).all()
    assert t == template.uvs.shape[0]


@pytest.mark.parametrize("width", [512, 32])
def test_adjusted_uvs(template, tables, width):
    np.testing.assert_allclose(template.adjusted_uvs(width).numpy(), tables[f"adjusted_uvs_for_{width}"],
                               rtol=0, atol=1e-6)


def test_vertex_positions(template, outputs):
    mesh_map = torch.from_numpy(outputs["mesh_map"])
    local = template.vertex_deltas_local(mesh_map)
    np.testing.assert_allclose(local.numpy(), outputs["vertex_deltas_local_nonneg"], rtol=0, atol=ATOL)
    pos = template.vertex_positions(mesh_map)
    assert pos.shape == outputs["vertex_positions"].shape
    np.testing.assert_allclose(pos.numpy(), outputs["vertex_positions"], rtol=0, atol=ATOL)


def test_vertex_positions_are_mirror_symmetric(template, outputs):
    pos = template.vertex_positions(torch.from_numpy(outputs["mesh_map"]))
    neg, posi = template.neg_indices, template.pos_indices
    np.testing.assert_allclose(pos[:, neg].numpy() * [-1, 1, 1], pos[:, posi].numpy(), atol=5e-6)  # .obj has 6 decimals
    assert pos[:, template.zero_indices, 0].abs().max() == 0


def test_zero_map_gives_template(template, outputs):
    ref = outputs["vertex_positions_initA"]
    zero_map = torch.zeros(ref.shape[0], 3, *outputs["mesh_map"].shape[-2:])
    np.testing.assert_allclose(template.vertex_positions(zero_map).numpy(), ref, rtol=0, atol=ATOL)


def test_vertex_colors(template, outputs, fixtures_dir):
    texture = torch.from_numpy(np.load(fixtures_dir / "gen512_perturbed_io.npz")["texture"])
    colors = template.vertex_colors(texture)
    assert colors.shape == outputs["vertex_colors"].shape
    np.testing.assert_allclose(colors.numpy(), outputs["vertex_colors"], rtol=0, atol=ATOL)


def test_face_normals_and_flat_loss(template, outputs):
    verts = torch.from_numpy(outputs["vertex_positions"])
    normals = template.face_normals(verts)
    np.testing.assert_allclose(normals.numpy(), outputs["face_normals"], rtol=0, atol=ATOL)
    loss = template.flat_loss(verts)
    assert loss.ndim == 0
    np.testing.assert_allclose(loss.item(), float(outputs["loss_flat"]), rtol=1e-5)
    np.testing.assert_allclose(template.flat_loss(verts, normals).item(), loss.item(), rtol=1e-6)


def test_undeformed_sphere_normals_point_outward(template):
    verts = template.vertices[None]
    normals = template.face_normals(verts)
    centroids = verts[:, template.faces].mean(dim=2)
    assert ((normals * centroids).sum(-1) > 0).all()


def test_flat_loss_is_differentiable(template, outputs):
    mesh_map = torch.from_numpy(outputs["mesh_map"][:1]).clone().requires_grad_(True)
    template.flat_loss(template.vertex_positions(mesh_map)).backward()
    assert torch.isfinite(mesh_map.grad).all() and mesh_map.grad.abs().sum() > 0


def test_obj_roundtrip_counts(template):
    v, t, f, ft = read_obj(OBJ_PATH)
    assert (len(v), len(t), len(f)) == (template.num_vertices, template.uvs.shape[0], template.num_faces)


def test_cache_and_to(template):
    assert uvsphere_template("cpu") is template
    moved = UVSphereTemplate().to(torch.float64)
    assert moved.vertices.dtype == torch.float64 and moved.faces.dtype == torch.int64
