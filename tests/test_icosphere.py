"""The CMR/UMR mesh template: meshzoo icosphere order, symmetric re-orderings, UV samplers."""
from __future__ import annotations

import json

import numpy as np
import pytest

from bench.render.icosphere import iso_sphere, make_symmetric, symmetric_icosphere, uv_sampler


@pytest.fixture(scope="module")
def golden(fixtures_dir):
    return dict(np.load(fixtures_dir / "icosphere_symmetric_fixtures.npz"))


@pytest.fixture(scope="module")
def golden_meta(fixtures_dir):
    return json.loads((fixtures_dir / "icosphere_symmetric_fixtures.json").read_text())


def test_iso_sphere_matches_meshzoo_order(golden, golden_meta):
    v, f = iso_sphere(3)
    raw = golden_meta["icosphere_raw"]
    assert list(v.shape) == raw["verts_shape"] and list(f.shape) == raw["faces_shape"]
    assert f.dtype == np.dtype(raw["faces_dtype"])
    np.testing.assert_array_equal(f, golden["ico_faces"])
    np.testing.assert_array_equal(v, golden["ico_verts"])  # bit-exact
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-12)


@pytest.mark.parametrize("axis,prefix", [(0, "cmr_axis0"), (1, "umr_axis1")])
def test_symmetric_order_and_counts(golden, golden_meta, axis, prefix):
    sym = symmetric_icosphere(axis)
    counts = ("num_indept", "num_sym", "num_indept_faces", "num_sym_faces")
    assert {k: getattr(sym, k) for k in counts} == {k: golden_meta[prefix][k] for k in counts}
    np.testing.assert_array_equal(sym.vertices, golden[f"{prefix}_verts"])
    np.testing.assert_array_equal(sym.faces, golden[f"{prefix}_faces"])
    # left vertices mirror right ones; left faces mirror right faces entry by entry
    ni, ns = sym.num_indept, sym.num_sym
    flip = np.ones(3)
    flip[axis] = -1
    np.testing.assert_array_equal(sym.vertices[ni + ns:], sym.vertices[ni:ni + ns] * flip)
    assert np.all(sym.vertices[:ni, axis] == 0)
    nf, nsf = sym.num_indept_faces, sym.num_sym_faces
    mirror = sym.mirror_vertex_index()
    np.testing.assert_array_equal(sym.faces[nf + nsf:], mirror[sym.faces[nf:nf + nsf]])


@pytest.mark.parametrize("axis,prefix", [(0, "cmr_axis0"), (1, "umr_axis1")])
def test_uv_sampler_matches_fixture(golden, golden_meta, axis, prefix):
    shape = golden_meta[prefix]["uv_sampler_shape"]
    uv = uv_sampler(symmetric_icosphere(axis), tex_size=shape[1])
    assert list(uv.shape) == shape and uv.dtype == np.float32
    np.testing.assert_array_equal(uv, golden[f"{prefix}_uv_sampler"])


def test_make_symmetric_rejects_asymmetric_mesh():
    v, f = iso_sphere(1)
    v = v.copy()
    v[0, 0] += 1e-3
    with pytest.raises(ValueError):
        make_symmetric(v, f, axis=0)
