"""ConvMesh generator: parity with the official code, checkpoint loading, and the demo generator."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

import bench
from bench.errors import UserError
from bench.methods.meshinversion.generator import (
    DEMO_LABEL,
    MESH_RESOLUTION,
    Generator,
    build_demo_generator,
    infer_texture_resolution,
    load_generator,
)
from bench.render.uvsphere import uvsphere_template

ATOL = 1e-5  # fixtures/README.md: CPU fp32 re-implementation


# ---------------------------------------------------------------------------- factories
@pytest.fixture(scope="module")
def manifest(fixtures_dir):
    return json.loads((fixtures_dir / "generator_state_dict_manifest.json").read_text())


@pytest.fixture(scope="module")
def perturbed_path(fixtures_dir):
    return fixtures_dir / "gen512_perturbed_fp16_state_dict.pt"


@pytest.fixture(scope="module")
def perturbed_io(fixtures_dir):
    return np.load(fixtures_dir / "gen512_perturbed_io.npz")


@pytest.fixture(scope="module")
def perturbed(perturbed_path):
    return load_generator(perturbed_path)


@pytest.fixture(scope="module")
def perturbed_outputs(perturbed, perturbed_io):
    with torch.no_grad():
        return perturbed(torch.from_numpy(perturbed_io["z"]), torch.from_numpy(perturbed_io["class_ids"]))


@pytest.fixture(scope="module")
def fp16_state(perturbed_path):
    return torch.load(perturbed_path, map_location="cpu", weights_only=False)


@pytest.fixture(scope="module")
def demo():
    return load_generator("demo")


def demo_inputs(batch: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 64, generator=gen), torch.randint(0, 200, (batch,), generator=gen)


# ---------------------------------------------------------------------------- architecture
def test_state_dict_keys_match_official_manifest(manifest):
    ours = Generator(manifest["config"]["texture_resolution"]).state_dict()
    ref = [(k["key"], tuple(k["shape"]), k["dtype"]) for k in manifest["keys"]]
    assert len(ours) == manifest["num_state_dict_entries"] == len(ref)
    assert [(k, tuple(v.shape), str(v.dtype).replace("torch.", "")) for k, v in ours.items()] == ref
    assert sum(v.numel() for v in ours.values()) == manifest["total_state_dict_elements"]


def test_parameter_counts(manifest):
    g512 = Generator(manifest["config"]["texture_resolution"])
    assert sum(p.numel() for p in g512.parameters()) == manifest["total_parameters"]
    for name, count in manifest["parameters_by_top_level_module"].items():
        assert sum(p.numel() for p in getattr(g512, name).parameters()) == count, name
    g128 = Generator(128)
    note = manifest["note_texture_resolution_128"]
    assert sum(p.numel() for p in g128.parameters()) == note["total_parameters"]
    assert len(g128.state_dict()) == note["num_state_dict_entries"]
    g256 = Generator(256)
    assert sum(p.numel() for p in g256.parameters()) == manifest["note_texture_resolution_256"]["total_parameters"]
    assert [infer_texture_resolution(g.state_dict()) for g in (g128, g256, g512)] == [128, 256, 512]


# ---------------------------------------------------------------------------- parity
def test_perturbed_fp16_matches_official(perturbed, perturbed_io, perturbed_outputs):
    assert all(p.dtype == torch.float32 for p in perturbed.parameters())
    texture, mesh_map = perturbed_outputs
    assert texture.shape == perturbed_io["texture"].shape
    assert mesh_map.shape == perturbed_io["mesh_map"].shape
    np.testing.assert_allclose(texture.numpy(), perturbed_io["texture"], rtol=0, atol=ATOL)
    np.testing.assert_allclose(mesh_map.numpy(), perturbed_io["mesh_map"], rtol=0, atol=ATOL)


def test_batch_independence(perturbed, perturbed_io, perturbed_outputs):
    i = perturbed_io["z"].shape[0] - 1
    with torch.no_grad():
        tex1, mesh1 = perturbed(torch.from_numpy(perturbed_io["z"][i:i + 1]),
                                torch.from_numpy(perturbed_io["class_ids"][i:i + 1]))
    np.testing.assert_allclose(tex1[0].numpy(), perturbed_outputs[0][i].numpy(), rtol=0, atol=ATOL)
    np.testing.assert_allclose(mesh1[0].numpy(), perturbed_outputs[1][i].numpy(), rtol=0, atol=ATOL)


def test_loaded_model_is_frozen_eval_and_labelled(perturbed, perturbed_path, perturbed_io):
    assert not perturbed.training
    assert not any(p.requires_grad for p in perturbed.parameters())
    assert perturbed.label == perturbed_path.name
    assert perturbed.sha256 == hashlib.sha256(perturbed_path.read_bytes()).hexdigest()
    assert perturbed.texture_resolution == perturbed_io["texture"].shape[-1]


# ---------------------------------------------------------------------------- file formats
def test_official_checkpoint_wrapper_loads(tmp_path, fp16_state, perturbed):
    path = tmp_path / "checkpoint_latest.pth"
    torch.save({"generator_running_avg": {k: v.float() if v.is_floating_point() else v
                                          for k, v in fp16_state.items()},
                "generator": {}, "epoch": 600, "self.args": {"texture_resolution": 512}}, path)
    model = load_generator(path)
    assert model.label == "checkpoint_latest.pth"
    ref = perturbed.state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(value, ref[key]), key


@pytest.mark.parametrize("change", ["missing", "extra"])
def test_key_mismatch_is_one_line_user_error(tmp_path, fp16_state, change):
    state = dict(fp16_state)
    if change == "missing":
        key = "blk4.norm2.norm.running_var"
        del state[key]
    else:
        key = "blk9.conv1.weight_orig"
        state[key] = torch.zeros(3)
    path = tmp_path / f"{change}.pt"
    torch.save(state, path)
    with pytest.raises(UserError) as err:
        load_generator(path)
    msg = str(err.value)
    assert "\n" not in msg
    assert key in msg
    assert ("missing" if change == "missing" else "unexpected") in msg
    assert "generator_running_avg" in msg  # says what format is expected


def test_wrong_texture_resolution_names_keys(tmp_path, demo):
    path = tmp_path / "demo128.pt"
    torch.save(demo.state_dict(), path)
    assert load_generator(path).texture_resolution == 128
    with pytest.raises(UserError, match=r"missing keys: blk3a\..*more"):
        load_generator(path, texture_resolution=2 * 2 * demo.texture_resolution)


def test_shape_mismatch_is_user_error(tmp_path, demo):
    state = demo.state_dict()
    state["conv_mesh.bias"] = torch.zeros(4)
    path = tmp_path / "bad_shape.pt"
    torch.save(state, path)
    with pytest.raises(UserError, match="conv_mesh.bias"):
        load_generator(path)


def test_missing_and_unreadable_files(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(UserError, match="nope.pth"):
        load_generator(missing)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(UserError, match="garbage.pth") as err:
        load_generator(garbage)
    assert "\n" not in str(err.value)
    wrong = tmp_path / "wrong.pth"
    torch.save({"epoch": 3}, wrong)
    with pytest.raises(UserError, match="generator_running_avg"):
        load_generator(wrong)


# ---------------------------------------------------------------------------- demo generator
def test_demo_is_deterministic_and_independent_of_global_rng(demo):
    torch.manual_seed(12345)
    torch.rand(7)
    fresh = build_demo_generator()  # rebuilt from scratch, not the per-process cache
    again = bench.load_generator("demo")
    assert again is not demo
    ref = demo.state_dict()
    for other in (fresh, again):
        for key, value in other.state_dict().items():
            assert torch.equal(value, ref[key]), key
    z, c = demo_inputs(2)
    with torch.no_grad():
        a, b = demo(z, c), fresh(z, c)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_demo_spectral_norm_vectors_are_converged(demo):
    conv = demo.blk6.conv2
    w_mat = conv.weight_orig.reshape(conv.weight_orig.shape[0], -1)
    torch.testing.assert_close(conv.sigma(), torch.linalg.matrix_norm(w_mat, ord=2), rtol=1e-4, atol=0)
    torch.testing.assert_close(conv.weight_u.norm(), torch.tensor(1.0))


def test_demo_metadata(demo):
    assert demo.label == DEMO_LABEL == "untrained demo generator"
    assert demo.sha256 is None
    assert demo.texture_resolution == 128
    assert not demo.training and not any(p.requires_grad for p in demo.parameters())


def test_demo_outputs_are_not_degenerate(demo):
    z, c = demo_inputs(4, seed=1)
    with torch.no_grad():
        texture, mesh_map = demo(z, c)
    res = demo.texture_resolution
    assert texture.shape == (4, 3, res, res) and mesh_map.shape == (4, 3, MESH_RESOLUTION, MESH_RESOLUTION)
    assert torch.isfinite(texture).all() and torch.isfinite(mesh_map).all()
    assert (texture.abs() > 0.99).float().mean() < 0.01  # not saturated
    assert texture.std() > 0.1 and texture.std(dim=0).mean() > 0.05  # diverse across latents
    tpl = uvsphere_template()
    verts = tpl.vertex_positions(mesh_map)
    disp = (verts - tpl.vertices).norm(dim=-1)
    assert 0.01 < disp.mean() < 0.2 and disp.max() < 0.5  # a few percent of the unit sphere
    assert (verts[0] - verts[1]).norm(dim=-1).mean() > 0.01  # shapes vary between latents


def test_class_ids_shapes_and_gradient_to_latent(demo):
    z, c = demo_inputs(2, seed=2)
    with torch.no_grad():
        a = demo(z, c)
        b = demo(z, c[:, None])
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    z = z.clone().requires_grad_(True)
    texture, mesh_map = demo(z, c)
    (texture.mean() + mesh_map.mean()).backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_maps_are_symmetric_and_poles_constant(demo):
    z, c = demo_inputs(1, seed=3)
    with torch.no_grad():
        texture, mesh_map = demo(z, c)
    for full in (texture, mesh_map):
        width = full.shape[-1]
        # full[..., j] == full[..., (W/2 - 1 - j) mod W]: mirror about u = 0.25 (and u = 0.75)
        mirrored = torch.roll(torch.flip(full, dims=[-1]), shifts=width // 2, dims=-1)
        assert torch.equal(full, mirrored)
    for row in (mesh_map[:, :, 0], mesh_map[:, :, -1]):
        assert torch.allclose(row, row[..., :1].expand_as(row), atol=1e-7)
