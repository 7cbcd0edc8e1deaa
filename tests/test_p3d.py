"""PASCAL3D+ car loader on a fake CMR p3d root written with scipy.io.savemat (baselines spec §6.5).

Expected crops and cameras are computed here from the known numbers (hand-derived crop boxes,
numpy slicing, torch bilinear resize, scipy rotations), not with the loader's own helpers.
"""
from __future__ import annotations

import numpy as np
import pytest
import scipy.io
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image
from scipy.spatial.transform import Rotation

from bench.datasets.base import FailedSample, Sample, collate_samples
from bench.datasets.cmr_mat import quaternion_from_matrix, read_annotations, read_sfm
from bench.datasets.p3d import P3DConfig, P3DDataset
from bench.errors import UserError

FIELDS = ("rel_path", "bbox", "parts", "mask", "width", "height", "voc_image_id", "voc_rec_id",
          "cad_index", "is_train")
ROT0 = Rotation.from_euler("xyz", [10, -35, 20], degrees=True).as_matrix()  # trace > 0: w > 0 branch
ROT1 = Rotation.from_rotvec(np.deg2rad(150) * np.array([0.9, 0.3, 0.3]) / np.linalg.norm([0.9, 0.3, 0.3])
                            ).as_matrix()  # trace < 0, R[0,0] largest: x > 0 branch

# (rel_path, W, H, grayscale, bbox 1-based, expected square crop box 0-based, sfm scale, trans, rot)
ENTRIES = [
    # bbox0 (40,30,139,89): w 100, h 60 -> pad 5/3 -> (35,27,144,92) -> side 110, dy = 22 -> (35,5,144,114)
    ("car_pascal\\2008_000028.jpg", 180, 120, False, (41, 31, 140, 90), (35, 5, 144, 114), 50.0, (92.0, 61.0), ROT0),
    # bbox0 (10,20,94,119): w 85, h 100 -> pad 4.25/5 -> round (6,15,98,124) -> w 93, side 110,
    # dx = round(8.5) = 8 (half to even) -> (-2,15,107,124): 2 white columns left, 8 right
    ("car_imagenet\\n02814533_4600.JPEG", 100, 140, True, (11, 21, 95, 120), (-2, 15, 107, 124), 42.0, (50.0, 70.0),
     ROT1),
]
NKP = 12


def _struct_array(dicts, names):
    arr = np.empty((1, len(dicts)), dtype=[(n, object) for n in names])
    for j, d in enumerate(dicts):
        for n in names:
            arr[0, j][n] = d[n]
    return arr


def _image(w, h, gray, seed):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * 255) // w, (yy * 255) // h, (xx + yy) % 256], axis=2)
    arr = np.clip(base + rng.integers(-20, 20, (h, w, 3)), 0, 255).astype(np.uint8)
    return arr[:, :, 0] if gray else arr


def _parts(bbox, seed):
    rng = np.random.default_rng(seed)
    x1, y1, x2, y2 = bbox
    parts = np.zeros((3, NKP))
    parts[0] = rng.integers(x1, x2 + 1, NKP)
    parts[1] = rng.integers(y1, y2 + 1, NKP)
    parts[2] = 1.0
    invisible = [2, 7, 11]
    parts[:, invisible] = 0.0
    return parts


def make_fake_p3d(root, entries=ENTRIES, split="val"):
    """Write a CMR-format PASCAL3D+ car root; return the per-entry data used to build it."""
    images_dir = root / "PASCAL3D+_release1.1" / "Images"
    (root / "data").mkdir(parents=True)
    (root / "sfm").mkdir()
    anns, sfms, raw = [], [], []
    for k, (rel, w, h, gray, bbox, _, scale, trans, rot) in enumerate(entries):
        path = images_dir / rel.replace("\\", "/")
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_image(w, h, gray, k)).save(path, format="JPEG", quality=95)
        mask = np.zeros((h, w), np.uint8)
        mask[bbox[1] + 2:bbox[3] - 3, bbox[0]:bbox[2] - 1] = 1  # 1-based bbox: rows y1+1..y2-4 (0-based)
        parts = _parts(bbox, k)
        anns.append({"rel_path": rel, "bbox": dict(zip(("x1", "y1", "x2", "y2"), map(float, bbox))),
                     "parts": parts, "mask": mask, "width": float(w), "height": float(h),
                     "voc_image_id": rel.split("\\")[1].split(".")[0], "voc_rec_id": 1.0,
                     "cad_index": 3.0, "is_train": 0.0})
        sfms.append({"rot": rot, "scale": scale, "trans": np.array(trans, float).reshape(2, 1),
                     "err_sfm_reproj": 0.001})
        raw.append({"mask": mask, "parts": parts, "path": path})
    scipy.io.savemat(root / "data" / f"car_{split}.mat", {"images": _struct_array(anns, FIELDS)})
    scipy.io.savemat(root / "sfm" / f"car_{split}.mat", {
        "sfm_anno": _struct_array(sfms, ("rot", "scale", "trans", "err_sfm_reproj")),
        "S": np.zeros((3, NKP)), "conv_tri": np.ones((4, 3))})
    names = np.empty((NKP,), dtype=object)
    names[:] = [f"kp{i}" for i in range(NKP)]
    scipy.io.savemat(root / "data" / "car_kps.mat", {"kp_names": names,
                                                       "kp_perm_inds": np.arange(1, NKP + 1, dtype=float)[:, None]})
    return raw


@pytest.fixture()
def p3d_root(tmp_path):
    root = tmp_path / "p3d"
    raw = make_fake_p3d(root)
    return root, raw


def _expected(entry, raw):
    """Independent re-derivation of the official crop / camera for one entry (float64)."""
    rel, w, h, gray, bbox, box, scale, trans, rot = entry
    x1, y1, x2, y2 = box
    side = x2 - x1 + 1
    assert side == y2 - y1 + 1
    photo = np.asarray(Image.open(raw["path"]).convert("RGB"), dtype=np.float64) / 255.0
    img = np.ones((side, side, 3))
    msk = np.zeros((side, side))
    sx0, sx1, sy0, sy1 = max(0, x1), min(w, x2 + 1), max(0, y1), min(h, y2 + 1)
    img[sy0 - y1:sy1 - y1, sx0 - x1:sx1 - x1] = photo[sy0:sy1, sx0:sx1]
    msk[sy0 - y1:sy1 - y1, sx0 - x1:sx1 - x1] = raw["mask"][sy0:sy1, sx0:sx1]

    def up(a):  # bilinear, half-pixel centres, edge clamp (= cv2.INTER_LINEAR)
        t = torch.from_numpy(np.ascontiguousarray(a)).reshape(1, -1, side, side)
        return F.interpolate(t, size=(256, 256), mode="bilinear", align_corners=False)[0].numpy()

    img_r = up(img.transpose(2, 0, 1))
    msk_r = (up(msk)[0] > 0.95).astype(np.float64)
    r = 256.0 / side
    q = Rotation.from_matrix(rot).as_quat(scalar_first=True)
    pose = np.array([scale * r * 2 / 256, 2 * (trans[0] - x1) * r / 256 - 1, 2 * (trans[1] - y1) * r / 256 - 1, *q])
    p = raw["parts"]
    vis = p[2] > 0
    kp = np.zeros((NKP, 3))
    kp[vis, 0] = 2 * (p[0, vis] - 1 - x1) * r / 256 - 1
    kp[vis, 1] = 2 * (p[1, vis] - 1 - y1) * r / 256 - 1
    kp[vis, 2] = 1.0
    return img_r, msk_r, pose, kp


def _same_rotation(q, want):
    return min(np.abs(q - want).max(), np.abs(q + want).max())


@pytest.mark.parametrize("i", [0, 1])
def test_crops_and_poses(p3d_root, i):
    root, raw = p3d_root
    ds = P3DDataset(P3DConfig(data_root=str(root)))
    assert len(ds) == len(ENTRIES)
    img, msk, pose, kp = _expected(ENTRIES[i], raw[i])
    out = ds.load_float64(i)
    assert list(out["crop_bbox"]) == list(ENTRIES[i][5])
    np.testing.assert_allclose(out["img"], img, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(out["mask"], msk)
    np.testing.assert_allclose(out["kp"], kp, rtol=0, atol=1e-12)
    np.testing.assert_allclose(out["sfm_pose"][:3], pose[:3], rtol=0, atol=1e-12)
    assert _same_rotation(out["sfm_pose"][3:], pose[3:]) < 1e-12

    s = ds[i]
    assert isinstance(s, Sample), getattr(s, "error", s)
    assert s.image.shape == (3, 256, 256) and s.mask.shape == (256, 256) and s.keypoints.shape == (NKP, 3)
    np.testing.assert_allclose(s.image.double().numpy(), img, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(s.mask.numpy(), msk)
    np.testing.assert_allclose(s.camera.double().numpy(), out["sfm_pose"], rtol=0, atol=1e-6)
    assert (s.camera_source, s.mask_source, s.class_id) == ("sfm", "gt", 0)
    assert s.meta["rel_path"] == ENTRIES[i][0].replace("\\", "/")
    assert s.meta["img_path"] == str(raw[i]["path"].resolve())
    assert s.meta["voc_image_id"] == ENTRIES[i][0].split("\\")[1].split(".")[0]


def test_white_padding_and_gohlke_sign(p3d_root):
    root, _ = p3d_root
    out = P3DDataset(P3DConfig(data_root=str(root))).load_float64(1)
    # entry 1's square box starts 2 px left of the photo: the leftmost resized columns are pure white
    assert np.all(out["img"][:, :, :3] == 1.0)
    assert np.all(out["mask"][:, :3] == 0.0)
    # trace(ROT1) < 0 and ROT1[0,0] is the largest diagonal element: Gohlke's branch makes x positive
    q = out["sfm_pose"][3:]
    assert np.trace(ROT1) < 0 and q[1] > 0


def test_quaternion_from_matrix_random():
    rots = Rotation.random(500, random_state=3)
    for rot in rots:
        q = quaternion_from_matrix(rot.as_matrix())
        assert _same_rotation(q, rot.as_quat(scalar_first=True)) < 1e-12
        if np.trace(rot.as_matrix()) > 0:
            assert q[0] > 0


def test_single_entry_files_are_not_squeezed_away(tmp_path):
    entry = ENTRIES[0]
    root = tmp_path / "one"
    make_fake_p3d(root, entries=[entry])
    anns = read_annotations(root / "data" / "car_val.mat", keep_mask=True)
    sfm = read_sfm(root / "sfm" / "car_val.mat")
    assert len(anns) == len(sfm) == 1
    assert anns[0]["parts"].shape == (3, NKP) and anns[0]["mask"].shape == (entry[2], entry[1])
    assert sfm[0]["trans"].shape == (2,) and sfm[0]["rot"].shape == (3, 3)
    ds = P3DDataset(P3DConfig(data_root=str(root)))
    assert len(ds) == 1 and isinstance(ds[0], Sample)


def test_cachedir_layout_and_anno_root(tmp_path):
    root = tmp_path / "r"
    make_fake_p3d(root)
    (root / "cachedir").mkdir()
    (root / "data").rename(root / "cachedir" / "data")
    (root / "sfm").rename(root / "cachedir" / "sfm")
    with pytest.raises(UserError):
        P3DDataset(P3DConfig(data_root=str(root)))
    ds = P3DDataset(P3DConfig(data_root=str(root), anno_root=str(root / "cachedir")))
    assert len(ds) == 2 and isinstance(ds[0], Sample)


def test_predicted_masks(p3d_root):
    root, raw = p3d_root
    (root / "predicted_mask").mkdir()
    for k, r in enumerate(raw):
        np.save(root / "predicted_mask" / f"{k}.npy", np.ones_like(r["mask"], dtype=np.float32))
    np.save(root / "predicted_mask" / "1.npy", np.ones((5, 5), np.float32))
    ds = P3DDataset(P3DConfig(data_root=str(root), mask="predicted"))
    s0, s1 = ds[0], ds[1]
    assert isinstance(s0, Sample) and s0.mask_source == "predicted" and s0.mask.sum() > 0
    assert isinstance(s1, FailedSample) and "5x5" in s1.error


def test_errors(p3d_root, tmp_path):
    root, raw = p3d_root
    with pytest.raises(UserError, match="does not exist"):
        P3DDataset(P3DConfig(data_root=str(tmp_path / "missing")))
    with pytest.raises(UserError, match="camera"):
        P3DConfig(camera="cmr-pred")
    (root / "sfm" / "car_val.mat").unlink()
    with pytest.raises(UserError) as err:
        P3DDataset(P3DConfig(data_root=str(root)))
    assert "sfm/car_val.mat" in str(err.value) and "\n" not in str(err.value)


def test_missing_image_and_dataloader(p3d_root):
    root, raw = p3d_root
    ds = P3DDataset(P3DConfig(data_root=str(root)))
    info = ds.describe()
    assert info["num_instances"] == 2 and info["camera_source"] == "sfm" and info["split"] == "val"
    batches = list(torch.utils.data.DataLoader(ds, batch_size=1, num_workers=2, collate_fn=collate_samples))
    assert [b[0].index for b in batches] == [0, 1]
    raw[0]["path"].unlink()
    failed = ds[0]
    assert isinstance(failed, FailedSample) and "image file not found" in failed.error


def test_data_check_cli(p3d_root):
    from bench.cli import main

    root, _ = p3d_root
    res = CliRunner().invoke(main, ["data", "check", "--dataset", "p3d", "--data-root", str(root)])
    assert res.exit_code == 0, res.output
    assert "car_val.mat" in res.output and res.output.splitlines()[-1] == "instances: 2"
    assert "car_pascal/" in res.output and "car_imagenet/" in res.output
