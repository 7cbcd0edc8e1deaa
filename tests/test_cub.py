"""CUB loader parity with the official MeshInversion data loader (fixtures/fake_cub_expected_samples.npz)."""
from __future__ import annotations

import ast
import json
import pickle
import shutil

import numpy as np
import pytest
import torch

from bench.datasets.base import FailedSample, Sample, collate_samples
from bench.datasets.cub import CUBConfig, CUBDataset
from bench.errors import UserError
from conftest import fixtures_path

ATOL = 1e-6


def _fixture_instances() -> list[int]:
    """Indices of the official loader outputs stored in the fixture set (collection time)."""
    path = fixtures_path() / "fake_cub_expected_samples.npz"
    if not path.is_file():  # the fixtures_dir fixture reports the missing folder
        return [0]
    with np.load(path) as data:
        return sorted({int(k.split("_", 1)[0][1:]) for k in data.files if k.endswith("_img")})


INSTANCES = _fixture_instances()


@pytest.fixture(scope="module")
def cub_parent(fixtures_dir):
    return fixtures_dir / "fake_cub_root"


@pytest.fixture(scope="module")
def expected(fixtures_dir):
    with np.load(fixtures_dir / "fake_cub_expected_samples.npz") as data:
        out = {k: data[k] for k in data.files}
    meta = json.loads((fixtures_dir / "fake_cub_expected_samples_meta.json").read_text())
    for key, value in meta.items():  # img_path is only in the meta file: "['./datasets/cub/...']"
        if key.endswith("_img_path"):
            out[key] = ast.literal_eval(value)[0]
    return out


@pytest.fixture(scope="module")
def dataset(cub_parent):
    return CUBDataset(CUBConfig(data_root=str(cub_parent)))


@pytest.fixture()
def cub_copy(cub_parent, tmp_path):
    """A writable copy of the official datasets/cub folder."""
    dst = tmp_path / "cub"
    shutil.copytree(cub_parent / "datasets" / "cub", dst)
    return dst


def _n_instances(expected):
    return len({k.split("_", 1)[0] for k in expected if k.endswith("_img")})


def _camera_source(expected, i) -> str:
    """The camera the official inversion used for instance i: 'sfm' if it kept the SfM pose, else
    the CMR camera (``run_inversion.py`` swaps it in when its overlay IoU > 0.7)."""
    same = np.allclose(expected[f"s{i}_pose_used_by_inversion"][0], expected[f"s{i}_sfm_pose"][0], rtol=0, atol=ATOL)
    return "sfm" if same else "cmr-pred"


def _image_file(root, expected, i):
    """Instance i's photo inside a copy ``root`` of the datasets/cub folder."""
    return root / expected[f"s{i}_img_path"][len("./datasets/cub/"):]


def test_index_and_defaults(dataset, expected):
    assert len(dataset) == _n_instances(expected) == len(INSTANCES)
    cfg = dataset.config
    assert (cfg.split, cfg.image_size, cfg.mask, cfg.camera, cfg.cmr_iou_threshold) == \
        ("test", 256, "predicted", "cmr-pred", 0.7)
    # the CMR camera is used iff its overlay IoU > 0.7 (shared set: sample 0 0.83, sample 1 0.41)
    assert dataset.camera_sources == [_camera_source(expected, i) for i in INSTANCES]


@pytest.mark.parametrize("i", INSTANCES)
def test_float64_path_matches_official(dataset, expected, i):
    out = dataset.load_float64(i)
    for key in ("img", "mask", "kp", "sfm_pose"):
        want = expected[f"s{i}_{key}"][0]
        assert out[key].shape == want.shape, key
        np.testing.assert_allclose(out[key], want, rtol=0, atol=1e-12, err_msg=key)
    np.testing.assert_allclose(out["pose"], expected[f"s{i}_pose_used_by_inversion"][0], rtol=0, atol=ATOL)
    assert out["class_id"] == int(expected[f"s{i}_class"].ravel()[0])


@pytest.mark.parametrize("i", INSTANCES)
def test_sample_matches_official(dataset, expected, i):
    s = dataset[i]
    assert isinstance(s, Sample), getattr(s, "error", s)
    assert s.index == i == int(expected[f"s{i}_idx"][0]) and s.id == f"{i:05d}"
    size = expected[f"s{i}_img"].shape[-1]
    assert s.image.shape == (3, size, size) and s.image.dtype == torch.float32
    assert s.mask.shape == (size, size) and s.mask.dtype == torch.float32
    np.testing.assert_allclose(s.image.double().numpy(), expected[f"s{i}_img"][0], rtol=0, atol=ATOL)
    np.testing.assert_array_equal(s.mask.double().numpy(), expected[f"s{i}_mask"][0])
    np.testing.assert_allclose(s.keypoints.double().numpy(), expected[f"s{i}_kp"][0], rtol=0, atol=ATOL)
    np.testing.assert_allclose(np.array(s.meta["sfm_pose"]), expected[f"s{i}_sfm_pose"][0], rtol=0, atol=ATOL)
    np.testing.assert_allclose(s.camera.double().numpy(), expected[f"s{i}_pose_used_by_inversion"][0],
                               rtol=0, atol=ATOL)
    assert s.class_id == int(expected[f"s{i}_class"].ravel()[0])
    assert s.mask_source == "predicted"
    assert s.camera_source == _camera_source(expected, i)
    official = expected[f"s{i}_img_path"]  # './datasets/cub/CUB_200_2011/images/<rel_path>'
    assert s.meta["img_path"].endswith(official[len("./datasets/cub"):])
    assert len(s.meta["bbox"]) == 4


def test_accepts_cub_folder_itself_and_sfm_camera(cub_parent, expected):
    ds = CUBDataset(CUBConfig(data_root=str(cub_parent / "datasets" / "cub"), camera="sfm"))
    s = ds[0]
    assert s.camera_source == "sfm"
    np.testing.assert_allclose(s.camera.double().numpy(), expected["s0_sfm_pose"][0], rtol=0, atol=ATOL)


def test_gt_mask(cub_parent):
    ds = CUBDataset(CUBConfig(data_root=str(cub_parent), mask="gt"))
    s = ds[len(ds) - 1]
    assert s.mask_source == "gt" and s.mask.shape == (256, 256)
    assert set(torch.unique(s.mask).tolist()) <= {0.0, 1.0}


def test_describe(dataset, expected):
    info = dataset.describe()
    for key in ("dataset", "split", "image_size", "mask_source", "camera_source", "cmr_iou_threshold",
                "num_instances", "camera_source_counts", "index_sha256", "data_root"):
        assert key in info, key
    sources = [_camera_source(expected, i) for i in INSTANCES]
    counts = {k: v for k, v in info["camera_source_counts"].items() if v}
    assert counts == {k: sources.count(k) for k in set(sources)}
    assert len(info["index_sha256"]) == 3


def test_missing_image_is_failed_sample(cub_copy, expected):
    img = _image_file(cub_copy, expected, 0)
    img.unlink()
    ds = CUBDataset(CUBConfig(data_root=str(cub_copy)))
    failed = ds[0]
    assert isinstance(failed, FailedSample) and failed.index == 0 and failed.id == "00000"
    assert "image file not found" in failed.error and img.name in failed.error
    assert all(isinstance(ds[i], Sample) for i in INSTANCES[1:])


def test_corrupt_image_is_failed_sample(cub_copy, expected):
    last = INSTANCES[-1]
    img = _image_file(cub_copy, expected, last)
    img.write_bytes(b"this is not a png" * 10)
    failed = CUBDataset(CUBConfig(data_root=str(cub_copy)))[last]
    assert isinstance(failed, FailedSample)
    assert "cannot decode image" in failed.error and img.name in failed.error


def test_wrong_size_predicted_mask_is_failed_sample(cub_copy, expected):
    from PIL import Image

    last = INSTANCES[-1]
    with Image.open(_image_file(cub_copy, expected, last)) as photo:
        width, height = photo.size
    np.save(cub_copy / "predicted_mask" / f"{last}.npy", np.ones((10, 12), np.uint8))
    failed = CUBDataset(CUBConfig(data_root=str(cub_copy)))[last]
    assert isinstance(failed, FailedSample)
    assert "predicted mask" in failed.error and "10x12" in failed.error and f"{height}x{width}" in failed.error


def test_missing_predicted_mask_is_failed_sample(cub_copy):
    (cub_copy / "predicted_mask" / "0.npy").unlink()
    failed = CUBDataset(CUBConfig(data_root=str(cub_copy)))[0]
    assert isinstance(failed, FailedSample) and "predicted mask not found" in failed.error


def test_wrong_root_is_user_error(tmp_path):
    with pytest.raises(UserError) as err:
        CUBDataset(CUBConfig(data_root=str(tmp_path / "nope")))
    assert "does not exist" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UserError) as err:
        CUBDataset(CUBConfig(data_root=str(tmp_path)))
    msg = str(err.value)
    assert "\n" not in msg
    for name in ("CUB_200_2011/images.txt", "cache/data/test_cub_cleaned.mat", "cache/sfm/anno_test.mat",
                 "predicted_mask/", "expected layout"):
        assert name in msg, name


def test_missing_index_file_is_user_error(cub_copy):
    (cub_copy / "cache" / "sfm" / "anno_test.mat").unlink()
    (cub_copy / "cache" / "cmr_pred_cam.pth").unlink()
    with pytest.raises(UserError) as err:
        CUBDataset(CUBConfig(data_root=str(cub_copy)))
    msg = str(err.value)
    assert "cache/sfm/anno_test.mat" in msg and "cache/cmr_pred_cam.pth" in msg
    assert "CUB_200_2011/images.txt" not in msg.split("expected layout")[0]


def test_camera_sfm_needs_no_cmr_cams(cub_copy):
    (cub_copy / "cache" / "cmr_pred_cam.pth").unlink()
    ds = CUBDataset(CUBConfig(data_root=str(cub_copy), camera="sfm"))
    assert ds.camera_sources == ["sfm"] * len(INSTANCES)


def test_bad_option_is_user_error():
    with pytest.raises(UserError, match="mask"):
        CUBConfig(mask="pointrend")


def test_sample_pickles_and_dataloader_workers(dataset, expected):
    s = dataset[0]
    back = pickle.loads(pickle.dumps(s))
    assert torch.equal(back.image, s.image) and back.meta == s.meta
    loader = torch.utils.data.DataLoader(dataset, batch_size=len(dataset), num_workers=2,
                                         collate_fn=collate_samples)
    batches = list(loader)
    assert len(batches) == 1 and [x.index for x in batches[0]] == INSTANCES
    assert torch.equal(batches[0][0].image, s.image)
    assert [x.camera_source for x in batches[0]] == [_camera_source(expected, i) for i in INSTANCES]


def test_cmr_cams_with_numpy_values_and_missing_entry(cub_copy, expected):
    name = _image_file(cub_copy, expected, 0).stem
    cams = {name: {
        "pred_cam": expected["s0_pose_used_by_inversion"][0].astype(np.float64),  # numpy, not a tensor
        "pred_pose_overlay_iou": np.float64(0.83)}}  # no entry for the other images
    torch.save(cams, cub_copy / "cache" / "cmr_pred_cam.pth")
    ds = CUBDataset(CUBConfig(data_root=str(cub_copy)))
    rest = INSTANCES[1:]
    assert ds.camera_sources == ["cmr-pred"] + ["sfm"] * len(rest)
    s0 = ds[0]
    np.testing.assert_allclose(s0.camera.double().numpy(), expected["s0_pose_used_by_inversion"][0], atol=ATOL)
    for i in rest:
        assert ds[i].meta["cmr_iou"] is None and ds[i].camera_source == "sfm"
    # a stricter threshold sends sample 0 back to its SfM camera
    strict = CUBDataset(CUBConfig(data_root=str(cub_copy), cmr_iou_threshold=0.9))
    assert strict.camera_sources == ["sfm"] * len(INSTANCES)


def test_registry_and_profiles(cub_parent):
    from bench import registry
    from bench.config import build_config

    cls = registry.load("datasets", "cub")
    assert cls is CUBDataset
    for profile in ("paper", "fast"):
        cfg = build_config(cls.Config, profile, cls.profiles, {"data_root": str(cub_parent), "mask": "gt"}, "cub")
        assert cfg.mask == "gt" and cfg.cmr_iou_threshold == 0.7
    with pytest.raises(UserError):
        build_config(cls.Config, None, cls.profiles, {"camera": "gt"}, "cub")
