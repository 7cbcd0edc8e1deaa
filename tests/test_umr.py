"""UMR network: strict loading with the batch-sized uv_sampler, hypotheses, VAE code, frame."""
from __future__ import annotations

import json

import numpy as np
import pytest
from factories import manifest_state_dict
import torch

from bench.errors import UserError
from bench.methods.cmr.checkpoint import load_checkpoint, load_state
from bench.methods.cmr.nets import build_seeded
from bench.methods.cmr.rendering import pose, to_shared_frame
from bench.methods.umr.nets import UMRMeshNet, choose_hypothesis



pytestmark = pytest.mark.usefixtures("one_thread")



@pytest.fixture(scope="module")
def umr_manifest(fixtures_dir):
    return fixtures_dir / "umr_state_dict_manifest.json"


@pytest.fixture(scope="module")
def net():
    return build_seeded(UMRMeshNet, 0).eval()


def test_key_layout_matches_manifest(umr_manifest, net):
    shapes = json.loads(umr_manifest.read_text())["state_dict"]
    own = net.state_dict()
    assert list(own) == list(shapes)  # 405 keys in registration order
    assert {k: list(v.shape) for k, v in own.items()} == shapes


@pytest.mark.parametrize("uv_batch", [None, 4])  # 16 as in the manifest, and another training batch
def test_strict_load_resizes_uv_sampler(umr_manifest, uv_batch):
    target = UMRMeshNet()
    saved = json.loads(umr_manifest.read_text())["state_dict"]["uv_sampler"]  # [16, 656, 36, 2]
    state = manifest_state_dict(umr_manifest, uv_batch=uv_batch)
    info = load_state(target, state, "pred_net_latest.pth", "UMR")
    assert info["uv_sampler_batch"] == (uv_batch or saved[0])
    assert list(target.uv_sampler.shape) == [uv_batch or saved[0]] + saved[1:]
    for key in ("mean_v", "cam_predictor.cam_biases", "shape_predictor.pred_layer.weight", "uv_sampler"):
        assert torch.equal(target.state_dict()[key], state[key])


def test_own_uv_sampler_matches_fixture(net, fixtures_dir):
    golden = np.load(fixtures_dir / "icosphere_symmetric_fixtures.npz")["umr_axis1_uv_sampler"]
    golden = golden.reshape(golden.shape[0], -1, golden.shape[-1])  # (F, T*T, 2)
    np.testing.assert_array_equal(net.own_uv_sampler.numpy(), golden)
    np.testing.assert_array_equal(net.uv_sampler[0].numpy(), golden)


def test_wrong_file_one_line(fixtures_dir, tmp_path):
    cmr = json.loads((fixtures_dir / "cmr_state_dict_manifest.json").read_text())["state_dict"]
    path = tmp_path / "cmr_heads.pth"
    torch.save({k: torch.zeros(v) for k, v in cmr.items() if k.startswith("code_predictor")}, path)
    with pytest.raises(UserError) as err:
        load_checkpoint(UMRMeshNet(), path, "UMR")
    msg = str(err.value)
    assert "\n" not in msg and "code_predictor.quat_predictor.pred_layer.weight" in msg and "more)" in msg


def test_hypotheses_and_vae_code(net):
    img = torch.rand(3, 3, 256, 256)
    with torch.no_grad():
        enc = net.encode(img, seeds=[0, 1, 2])
        assert enc["hypotheses"].shape == (3, 8, 7) and enc["probs"].shape == (3, 8)
        torch.testing.assert_close(enc["probs"].sum(1), torch.ones(3))
        assert torch.equal(enc["hypothesis"], enc["probs"].argmax(1))
        torch.testing.assert_close(enc["camera"], enc["hypotheses"][torch.arange(3), enc["hypothesis"]])
        a = choose_hypothesis(enc["probs"], "sample", seeds=[5, 6, 7])
        assert torch.equal(a, choose_hypothesis(enc["probs"], "sample", seeds=[5, 6, 7]))
        # per-instance draws do not depend on the batch an instance is in
        torch.testing.assert_close(net.encode(img[1:2], seeds=[1])["eps"][0], enc["eps"][1], atol=0, rtol=0)
        assert not torch.equal(enc["eps"][0], enc["eps"][1])
        v_mean = net.decode_shape(enc["latent"], enc)
        net.shape_code = "sample"
        try:
            v_s1 = net.decode_shape(enc["latent"], enc)
            v_s2 = net.decode_shape(enc["latent"], enc)
        finally:
            net.shape_code = "mean"
        assert torch.equal(v_s1, v_s2) and not torch.equal(v_s1, v_mean)
    # symmetric about y = 0 in UMR's frame
    torch.testing.assert_close(v_mean[:, 337:], v_mean[:, 32:337] * torch.tensor([1.0, -1.0, 1.0]))


def test_shared_frame_reproduces_projection(net):
    with torch.no_grad():
        enc = net.encode(torch.rand(2, 3, 256, 256))
        verts = net.decode_shape(enc["latent"], enc)
    cam = enc["camera"]
    v2, cam2 = to_shared_frame(verts, cam, net.frame_quaternion)
    torch.testing.assert_close(pose(v2, cam2, False), pose(verts, cam, False), atol=1e-5, rtol=0)
    # the shared frame is symmetric about x = 0
    torch.testing.assert_close(v2[:, 337:], v2[:, 32:337] * torch.tensor([-1.0, 1.0, 1.0]), atol=1e-6, rtol=0)


def test_umr_method_labels_and_info():
    from bench.config import build_config
    from bench.datasets.base import Sample
    from bench.methods.umr.method import UMRMethod

    method = UMRMethod(build_config(UMRMethod.Config, "fast", UMRMethod.profiles, {"warmup_passes": "0"}))
    method.setup("cpu")
    assert method.describe()["checkpoint_info"]["uv_sampler_max_abs_diff_vs_own"] == 0.0
    s = Sample(id="a", index=0, image=torch.rand(3, 48, 48), mask=torch.ones(48, 48), mask_source="gt",
               camera=torch.tensor([.6, 0, 0, 1, 0, 0, 0.]), camera_source="sfm", class_id=0)
    (r,) = method.reconstruct([s])
    assert r.status == "ok" and r.info["labels"] == ["untrained"] and r.info["hypothesis_mode"] == "argmax"
    assert len(r.info["hypothesis_probs"]) == 8 and r.mask.shape == (48, 48)
    with pytest.raises(UserError):
        UMRMethod(build_config(UMRMethod.Config, None, None, {"hypothesis": "best", "warmup_passes": "0"})).setup("cpu")


def test_sample_camera_init_round_trips_through_umr_frame():
    """camera_init='sample': the shared-frame sample camera is moved to UMR's frame for the TTO and
    back for the output; with 0 iterations it comes back unchanged."""
    from bench.config import build_config
    from bench.datasets.base import Sample
    from bench.methods.umr.method import UMRTTOMethod

    cfg = build_config(UMRTTOMethod.Config, None, None, {"iterations": "0", "render_size": "32", "warmup_passes": "0",
                                                         "camera_init": "sample"})
    method = UMRTTOMethod(cfg)
    method.setup("cpu")
    q = torch.tensor([0.9, 0.1, -0.3, 0.2])
    cam = torch.cat([torch.tensor([0.7, 0.1, -0.05]), q / q.norm()])
    s = Sample(id="a", index=0, image=torch.rand(3, 32, 32), mask=torch.ones(32, 32), mask_source="gt",
               camera=cam, camera_source="sfm", class_id=0)
    (r,) = method.reconstruct([s])
    assert r.status == "ok" and r.losses == []
    torch.testing.assert_close(r.camera, cam, atol=1e-6, rtol=0)
