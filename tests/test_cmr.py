"""CMR network: strict loading of the released state-dict layout, errors, outputs, the method."""
from __future__ import annotations

import json

import pytest
from factories import manifest_state_dict
import torch

from bench.errors import UserError
from bench.methods.cmr.checkpoint import check_and_load, load_checkpoint, load_state
from bench.methods.cmr.nets import CMRMeshNet, build_seeded
from bench.methods.cmr.rendering import inward_faces, pose, render_textured
from bench.render.camera import project, split_camera



pytestmark = pytest.mark.usefixtures("one_thread")



@pytest.fixture(scope="module")
def cmr_manifest(fixtures_dir):
    return fixtures_dir / "cmr_state_dict_manifest.json"


def _n_without_counters(shapes) -> int:
    """Keys of a PyTorch 0.3 file (no BatchNorm ``num_batches_tracked``): 184 for the released CMR."""
    return sum(not k.endswith("num_batches_tracked") for k in shapes)


@pytest.fixture(scope="module")
def net():
    return build_seeded(CMRMeshNet, 0).eval()


def test_key_layout_matches_manifest(cmr_manifest, net):
    shapes = json.loads(cmr_manifest.read_text())["state_dict"]
    own = net.state_dict()
    assert list(own) == list(shapes)  # same keys, same registration order (214)
    assert {k: list(v.shape) for k, v in own.items()} == shapes
    assert sum(not k.endswith("num_batches_tracked") for k in own) == _n_without_counters(shapes)


def test_strict_load_modern_and_pytorch03_layouts(cmr_manifest):
    target = CMRMeshNet()
    state = manifest_state_dict(cmr_manifest)
    n_keys, n_old = len(state), _n_without_counters(state)
    info = load_state(target, state, "manifest", "CMR")
    assert info == {"keys": n_keys, "had_num_batches_tracked": True}
    own = target.state_dict()
    for key in ("mean_v", "texture_predictor.enc.1.0.weight", "encoder.resnet_conv.resnet.fc.bias"):
        assert torch.equal(own[key], state[key])
    del state, own
    # PyTorch 0.3 layout: no num_batches_tracked (184 keys)
    old = manifest_state_dict(cmr_manifest, drop_counters=True, fill=False)
    assert len(old) == n_old < n_keys
    info = load_state(target, old, "pred_net_500.pth", "CMR")
    assert info["keys"] == n_old and not info["had_num_batches_tracked"]
    assert float(target.mean_v.detach().abs().sum()) == 0.0
    # plain torch strict loading of a counter-less dict also works (spec §1.8)
    target.load_state_dict(old, strict=True)


def test_wrong_file_is_one_line_naming_keys(cmr_manifest, tmp_path, fixtures_dir):
    target = CMRMeshNet()
    state = manifest_state_dict(cmr_manifest, fill=False)
    state["encoder.enc_fc.0.0.weight"] = torch.zeros(3, 3)
    state["extra.weight"] = torch.zeros(1)
    del state["vert2kp"]
    with pytest.raises(UserError) as err:
        check_and_load(target, state, "x.pth", "CMR")
    msg = str(err.value)
    assert "\n" not in msg
    for key in ("vert2kp", "extra.weight", "encoder.enc_fc.0.0.weight"):
        assert key in msg
    # a UMR-layout file: many mismatches, truncated lists
    umr = manifest_state_dict(fixtures_dir / "umr_state_dict_manifest.json", fill=False)
    path = tmp_path / "umr.pth"  # a small wrong file: UMR-only keys
    torch.save({k: v for k, v in umr.items() if k.startswith(("cam_predictor", "shape_predictor", "uv_"))}, path)
    with pytest.raises(UserError) as err:
        load_checkpoint(target, path, "CMR")
    msg = str(err.value)
    assert "\n" not in msg and "more)" in msg and "missing" in msg and "unexpected" in msg
    bad = tmp_path / "garbage.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError):
        load_checkpoint(target, bad, "CMR")
    with pytest.raises(UserError, match="not found"):
        load_checkpoint(target, tmp_path / "missing.pth", "CMR")


def test_forward_shapes_and_projection(net):
    img = torch.rand(2, 3, 256, 256)
    with torch.no_grad():
        enc = net.encode(img)
        verts = net.decode_shape(enc["latent"])
        flow = net.texture_flow(enc["latent"])
    assert enc["latent"].shape == (2, 200) and verts.shape == (2, 642, 3) and flow.shape == (2, 1280, 6, 6, 2)
    cam = enc["camera"]
    torch.testing.assert_close(cam[:, 3:].norm(dim=1), torch.ones(2))
    assert (cam[:, 0] > 0).all()
    # symmetric about x = 0; left flows copy right flows
    torch.testing.assert_close(verts[:, 337:], verts[:, 32:337] * torch.tensor([-1.0, 1.0, 1.0]))
    torch.testing.assert_close(flow[:, 656:], flow[:, 32:656])
    # the camera convention: x right / y down normalised crop coordinates, t added after s·R
    s, t, q = split_camera(cam)
    posed = project(verts, s, t, q)
    manual = s[:, None] * verts  # q ~ identity for the untrained heads; compare through qrot anyway
    from bench.render.camera import qrot
    xy = qrot(q, manual)[..., :2] + t[:, None]
    torch.testing.assert_close(posed[..., :2], xy * torch.tensor([1.0, -1.0]))


def test_template_windings_and_outward_fix(net):
    inward = inward_faces(net.template.vertices, net.template.faces)
    assert 0 < inward.sum() < 1280  # the icosphere's windings are mixed, hence two-sided rendering


def test_method_outputs_in_shared_frame(tmp_path):
    from bench.config import build_config
    from bench.datasets.base import Sample
    from bench.methods.cmr.method import CMRMethod

    cfg = build_config(CMRMethod.Config, "fast", CMRMethod.profiles, {"warmup_passes": "0"})
    method = CMRMethod(cfg)
    assert "untrained" in method.describe()["labels"]
    method.setup("cpu")
    img = torch.rand(3, 64, 64)
    mask = torch.zeros(64, 64)
    mask[16:48, 16:48] = 1
    good = Sample(id="a", index=0, image=img, mask=mask, mask_source="gt", camera=torch.tensor([.6, 0, 0, 1, 0, 0, 0.]),
                  camera_source="sfm", class_id=0)
    bad = Sample(id="b", index=1, image=img, mask=torch.zeros(10, 10), mask_source="gt",
                 camera=torch.tensor([.6, 0, 0, 1, 0, 0, 0.]), camera_source="sfm", class_id=0)
    recs = method.reconstruct([good, bad])
    assert [r.status for r in recs] == ["ok", "failed"] and "mask" in recs[1].error
    r = recs[0]
    assert r.info["labels"] == ["untrained"]
    assert {"total", "optimize"} <= set(r.timings) and r.timings["optimize"] == 0.0
    assert r.image.shape == (3, 64, 64) and r.mask.shape == (64, 64) and r.latent.shape == (200,)
    mesh = r.mesh
    assert mesh.face_textures.shape == (1280, 6, 6, 3) and mesh.face_textures.abs().max() <= 1.0
    # the output mesh renders (single-sided, culled) exactly like the two-sided model render
    s, t, q = split_camera(r.camera[None])
    posed = project(mesh.vertices[None], s, t, q)
    img2, mask2, _ = render_textured(posed, mesh.faces, (mesh.face_textures[None] + 1) / 2, (64, 64), background=0.5)
    from bench.render.rasterizer import rasterize
    culled = rasterize(posed, mesh.faces, 64, 64).face_index >= 0
    assert torch.equal(culled[0].float(), r.mask)
    torch.testing.assert_close(img2[0], r.image, atol=1e-5, rtol=0)
    # outward windings: every face of the output mesh faces away from the centroid on the template
    assert not inward_faces(method.net.template.vertices[:, :] , mesh.faces.numpy()).any()


def test_ideal_texture_flow_reproduces_the_input(net):
    """Texture-flow conventions: a flow that points every 6×6 texel (α = i/5 on vertex 0, β = j/5 on
    vertex 1) at its own projection re-renders the input image (bilinear texels, smooth image)."""
    from bench.methods.cmr.nets import sample_texture

    S = 64
    verts = net.sphere_vertices[None]
    cam = torch.tensor([[0.7, 0.05, -0.1, 0.9, 0.2, -0.3, 0.1]])
    cam[:, 3:] /= cam[:, 3:].norm()
    posed = pose(verts, cam, True)
    a = torch.arange(6.0) / 5
    w = torch.stack(torch.meshgrid(a, a, indexing="ij"), -1).reshape(36, 2)
    w = torch.cat([w, 1 - w.sum(1, keepdim=True)], 1)                       # (36,3) α, β, 1-α-β
    tri = posed[0, net.faces]                                                 # (F,3,3)
    pts = torch.einsum("kc,fcd->fkd", w, tri)[..., :2] * torch.tensor([1.0, -1.0])  # back to y down
    flow = pts.reshape(1, 1280, 6, 6, 2)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, S), torch.linspace(0, 1, S), indexing="ij")
    image = torch.stack([0.5 + 0.5 * torch.sin(3 * xx + yy), xx, 0.5 + 0.5 * torch.cos(2 * yy)])[None]
    tex = sample_texture(image, flow, align_corners=False)
    rimg, rmask, _ = render_textured(posed, net.faces, tex, (S, S))
    inside = rmask[0] > 0
    assert inside.sum() > 0.3 * S * S
    err = (rimg[0] - image[0]).abs()[:, inside]
    assert err.mean() < 0.01 and err.max() < 0.06
