"""The CMR/UMR mesh template: meshzoo icosphere order, symmetric re-orderings, UV samplers."""
from __future__ import annotations

import numpy as np
import pytest

from bench.render.icosphere import iso_sphere, make_symmetric, symmetric_icosphere, uv_sampler


@pytest.fixture(scope="module")
def golden(fixtures_dir):
    return dict(np.load(fixtures_dir / "icosphere_symmetric_fixtures.npz"))


def test_iso_sphere_matches_meshzoo_order(golden):
    v, f = iso_sphere(3)
    assert v.shape == (642, 3) and f.shape == (1280, 3) and f.dtype == np.int64
    np.testing.assert_array_equal(f, golden["ico_faces"])
    np.testing.assert_array_equal(v, golden["ico_verts"])  # bit-exact
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-12)


@pytest.mark.parametrize("axis,prefix", [(0, "cmr_axis0"), (1, "umr_axis1")])
def test_symmetric_order_and_counts(golden, axis, prefix):
    sym = symmetric_icosphere(axis)
    assert (sym.num_indept, sym.num_sym, sym.num_indept_faces, sym.num_sym_faces) == (32, 305, 32, 624)
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
def test_uv_sampler_matches_fixture(golden, axis, prefix):
    uv = uv_sampler(symmetric_icosphere(axis), tex_size=6)
    assert uv.shape == (656, 6, 6, 2) and uv.dtype == np.float32
    np.testing.assert_array_equal(uv, golden[f"{prefix}_uv_sampler"])


def test_make_symmetric_rejects_asymmetric_mesh():
    v, f = iso_sphere(1)
    v = v.copy()
    v[0, 0] += 1e-3
    with pytest.raises(ValueError):
        make_symmetric(v, f, axis=0)
