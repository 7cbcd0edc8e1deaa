"""FID_1 / FID_10 / FID_12 / KID through torch-fidelity (bench.metrics.fid, extractors, reference).

Nothing here downloads: the Inception tests save random weights with the right keys, the corpus
tests use a tiny registered extractor (a random conv net).
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch_fidelity
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from bench.errors import UserError
from bench.metrics import extractors as ex
from bench.metrics.base import EvalContext, EvalOptions
from bench.metrics.distance import fid_from_features, fid_from_statistics, kid_from_features
from bench.metrics.fid import FID1Metric, FID10Metric, FID12Metric, FIDParts, KIDMetric
from bench.metrics.images import quantize_round, quantize_truncate, read_png
from bench.metrics.views import ViewRenderer, fid10_angles
from bench.metrics.reference import convmesh_covariance, load_reference_npz, statistics_from_features
from bench.store import RunDir

# ---------------------------------------------------------------------------------------------
# factories (also used by test_shape3d and test_eval_cli)

TINY = "meshbench-test-tiny"


class TinyExtractor(torch_fidelity.FeatureExtractorBase):
    """A random small conv net (fixed seed) producing 16-d features from uint8 images."""

    def __init__(self, name, features_list, **kwargs):
        super().__init__(name, features_list)
        g = torch.Generator().manual_seed(0)
        self.conv1 = torch.nn.Conv2d(3, 8, 5, stride=4)
        self.conv2 = torch.nn.Conv2d(8, 16, 3, stride=2)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)

    def forward(self, x):
        assert x.dtype == torch.uint8 and x.shape[1] == 3
        x = x.float() / 127.5 - 1
        x = torch.tanh(self.conv2(torch.relu(self.conv1(x))))
        return (x.mean((2, 3)),)

    @staticmethod
    def get_provided_features_list():
        return ("16",)

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return "16"

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 3, 8, 8, dtype=torch.uint8)


def register_tiny() -> str:
    if TINY not in FEATURE_EXTRACTORS_REGISTRY:
        torch_fidelity.register_feature_extractor(TINY, TinyExtractor)
    return TINY


def blob_mesh(seed: int, tex_res: int = 8, amplitude: float = 0.15) -> dict:
    """A UV-sphere-template mesh with a smooth random radial deformation and a random texture."""
    from bench.render.uvsphere import uvsphere_template

    tpl = uvsphere_template("cpu")
    g = torch.Generator().manual_seed(seed)
    v = tpl.vertices.clone()
    coef = torch.randn(3, generator=g)
    radial = 1 + amplitude * torch.tanh(v @ coef)
    v = v * radial[:, None] * torch.tensor([0.8, 0.6, 1.0])
    tex = torch.rand(3, tex_res, tex_res, generator=g) * 2 - 1
    return {"vertices": v.float(), "faces": tpl.faces.clone(), "texture": tex.float()}


def perturb(mesh: dict, sigma: float, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = dict(mesh)
    out["vertices"] = mesh["vertices"] + sigma * torch.randn(mesh["vertices"].shape, generator=g)
    out["texture"] = (mesh["texture"] + 4 * sigma * torch.randn(mesh["texture"].shape, generator=g)).clamp(-1, 1)
    return out


def input_view(mesh: dict, size: int, camera=None):
    """Input-view render (image in [0,1] with background 0.5, hard mask) of a mesh."""
    from bench.methods.base import TexturedMesh
    from bench.metrics.views import mesh_for_rendering
    from bench.render.renderer import render_mesh

    m = mesh_for_rendering(mesh)
    cam = camera if camera is not None else torch.tensor([0.7, 0.0, 0.0, 0.612372, 0.353553, -0.612372, 0.353553])
    with torch.no_grad():
        img, msk = render_mesh(TexturedMesh(m["vertices"], m["faces"], m["face_uvs"], m["texture"]), cam,
                               height=size, width=size)
    return img[0] / 2 + 0.5, msk[0, 0]


def make_run(root, methods: dict[str, float] | None = None, n: int = 3, size: int = 32, dataset: str = "synthetic",
             failed: int = 0, data_root=None) -> RunDir:
    """A run directory with GT meshes and, per method, reconstructions = GT perturbed by sigma.

    Args:
        methods: {method: vertex noise sigma} (0 = perfect reconstruction).
        n: instances; failed: extra failed records per method.
    """
    methods = {"perfect": 0.0, "noisy": 0.05} if methods is None else methods
    run = RunDir(root)
    run.write_manifest({"dataset": {"dataset": dataset, "instances": n, **({"data_root": str(data_root)}
                                                                            if data_root else {})},
                        "methods": {m: {"config": {}} for m in methods}, "environment": {"device": "cpu"}})
    cam = torch.tensor([0.7, 0.0, 0.0, 0.612372, 0.353553, -0.612372, 0.353553])
    for i in range(n):
        inst = f"{i:05d}"
        gt_mesh = blob_mesh(100 + i)
        z_gt = torch.randn(64, generator=torch.Generator().manual_seed(i))
        in_img, in_mask = input_view(gt_mesh, size)
        gt = {"latent": z_gt, "camera": cam, "vertices": gt_mesh["vertices"], "faces": gt_mesh["faces"],
              "texture": gt_mesh["texture"]}
        for k, (method, sigma) in enumerate(methods.items()):
            mesh = perturb(gt_mesh, sigma, seed=1000 * k + i) if sigma > 0 else dict(gt_mesh)
            img, msk = input_view(mesh, size)
            art = {"method": method, "instance": inst, "index": i, "input_image": in_img, "input_mask": in_mask,
                   "mask_source": "render", "class_id": 0, "image": img, "mask": msk, "camera": cam,
                   "camera_init": cam, "latent": z_gt + sigma * 10 * torch.randn(64), "mesh": mesh,
                   "gt": gt if dataset == "synthetic" else None}
            run.save_artifact(method, inst, art)
            iou = float((in_mask * msk).sum() / (in_mask + msk - in_mask * msk).sum())
            run.write_record({"method": method, "instance": inst, "index": i, "status": "ok",
                              "metrics": {"iou": iou}, "timings": {"total": 1.0 + i, "init": 0.25,
                                                                   "optimize": 0.75 + i},
                              "batch_size": 1, "mask_source": "render", "labels": []})
    for method in methods:
        for j in range(failed):
            run.write_record({"method": method, "instance": f"f{j:04d}", "index": n + j, "status": "failed",
                              "error": "boom", "metrics": {}, "timings": {}})
    return run


def tiny_options(**kw) -> EvalOptions:
    register_tiny()
    base = dict(fid_extractor=TINY, device="cpu", batch_size=16, kid_subsets=10, view_size=64, num_points=2000,
                progress=False)
    base.update(kw)
    return EvalOptions(**base)


# ---------------------------------------------------------------------------------------------
# statistics: the official fixture


def test_fixture_fid_full_covariance(fixtures_dir):
    from fixture_variant import frechet_distance

    d = np.load(fixtures_dir / "fid_fixture.npz")
    official = float(d["fid"])
    # the stored value is the official (scipy sqrtm) distance of the stored statistics
    assert frechet_distance(d["mu_fake"], d["sigma_fake"], d["mu_real"], d["sigma_real"]) == pytest.approx(
        official, rel=1e-6)
    fid = fid_from_features(torch.from_numpy(d["act_fake"]), torch.from_numpy(d["act_real"]))
    assert fid == pytest.approx(official, rel=1e-5)
    # the stored official statistics give the same number through torch-fidelity's distance
    fid2 = fid_from_statistics({"mu": d["mu_fake"], "sigma": d["sigma_fake"]},
                               {"mu": d["mu_real"], "sigma": d["sigma_real"]})
    assert fid2 == pytest.approx(official, rel=1e-5)
    stats = statistics_from_features(d["act_real"])
    np.testing.assert_allclose(stats["sigma"], d["sigma_real"], rtol=1e-6, atol=1e-9)


def test_fixture_fid_from_convmesh_triangle_storage(fixtures_dir, tmp_path):
    d = np.load(fixtures_dir / "fid_fixture.npz")
    tril = d["stats_s_tril_float32"]
    assert np.all(np.triu(tril, 1) == 0)  # only the lower triangle is stored
    np.testing.assert_allclose(convmesh_covariance(tril), d["sigma_real_reconstructed"], rtol=0, atol=0)
    path = tmp_path / "precomputed_fid_299x299_testval.npz"
    n_real = len(d["act_real"])
    np.savez(path, stats_m=d["mu_real"], stats_s=tril, num_images=n_real, resolution=299)
    ref = load_reference_npz(path)
    assert ref["format"] == "convmesh-tril" and ref["num_images"] == n_real
    fake = statistics_from_features(d["act_fake"])
    assert fid_from_statistics(fake, ref) == pytest.approx(float(d["fid"]), rel=1e-5)
    assert fid_from_statistics(fake, ref) == pytest.approx(float(d["fid_from_tril_stats"]), rel=1e-5)
    # loading the triangle naively (as a full covariance) gives a different, wrong number
    naive = fid_from_statistics(fake, {"mu": d["mu_real"], "sigma": tril})
    assert abs(naive - float(d["fid"])) > 1.0


def test_kid_uses_torch_fidelity_with_subset_min_n():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(30, 8, generator=g), torch.randn(20, 8, generator=g) + 0.5
    out = kid_from_features(a, b, subsets=5)
    assert out["kid_subset_size"] == 20 and out["kid_mean"] > 0
    same = kid_from_features(a, a.clone(), subsets=5)
    assert abs(same["kid_mean"]) < out["kid_mean"]


def test_quantisation():
    x = torch.tensor([0.0, 0.5, 0.999, 1.0, 1.7, -0.2])
    assert quantize_truncate(x).tolist() == [0, 127, 254, 255, 255, 0]
    assert quantize_round(x).tolist() == [0, 128, 255, 255, 255, 0]


# ---------------------------------------------------------------------------------------------
# views


def test_fid10_view_sets():
    paper = fid10_angles("paper")
    official = fid10_angles("official-code")
    assert paper == (0, 30, 60, 120, 150, 180, 210, 240, 300, 330) and len(paper) == 10
    assert official == (0, 30, 60, 90, 120, 150, 180, 210, 240, 300, 330) and len(official) == 11
    with pytest.raises(UserError):
        fid10_angles("nine")


def test_canonical_views_of_fixture_reconstruction_match_official(fixtures_dir, tmp_path):
    """The FID render path (artifact -> RunDir.fid_dir PNGs) reproduces the official 12 views."""
    from bench.render.uvsphere import uvsphere_template

    mt = np.load(fixtures_dir / "mesh_template_outputs_perturbed.npz")
    io = np.load(fixtures_dir / "gen512_perturbed_io.npz")
    ref = np.load(fixtures_dir / "render_outputs_perturbed.npz")["fid12_views_uint8_sample0"]
    tpl = uvsphere_template("cpu")
    mesh = {"vertices": torch.from_numpy(mt["vertex_positions"][0]), "faces": tpl.faces.clone(),
            "face_uvs": tpl.face_uvs.clone(), "texture": torch.from_numpy(io["texture"][0])}
    run = RunDir(tmp_path / "run")
    run.write_manifest({"dataset": {"dataset": "cub"}, "methods": {"ours": {}}})
    run.save_artifact("ours", "00000", {"mesh": mesh, "gt": None})
    run.write_record({"method": "ours", "instance": "00000", "index": 0, "status": "ok", "metrics": {},
                      "timings": {}})
    ctx = EvalContext(run, ["ours"], EvalOptions(progress=False))
    paths = ViewRenderer(ctx).view_images("ours")
    assert [p.name for p in paths] == [f"00000_{a:03d}.png" for a in range(0, 360, 30)]
    views = np.stack([read_png(p).permute(1, 2, 0).numpy() for p in paths])
    assert views.shape == ref.shape == (12, 256, 256, 3)
    close = np.abs(views.astype(int) - ref.astype(int)) <= 1
    assert close.mean() >= 0.995, close.mean()
    # FID_10 takes a subset of the same renders
    p10 = ViewRenderer(ctx).view_images("ours", fid10_angles("official-code"))
    assert [p.name for p in p10] == [f"00000_{a:03d}.png" for a in fid10_angles("official-code")]


# ---------------------------------------------------------------------------------------------
# corpus metrics end to end with a tiny registered extractor


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("fidrun") / "run"
    return make_run(root, {"perfect": 0.0, "noisy": 0.08}, n=3, size=32, failed=1)


def test_fid_corpus_end_to_end_tiny_extractor(tiny_run):
    opts = tiny_options()
    ctx = EvalContext(tiny_run, ["perfect", "noisy"], opts)
    fid1 = FID1Metric().corpus(ctx)
    fid12 = FID12Metric().corpus(ctx)
    fid10 = FID10Metric().corpus(ctx)
    kid = KIDMetric().corpus(ctx)
    for res in (fid1, fid12, fid10):
        for m in ("perfect", "noisy"):
            v = res["methods"][m]
            assert v["n_instances"] == 3 and v["n_failed"] == 1
            assert math.isfinite(v["fid"]) and v["kid_subset_size"] == v["n_images"] or res is fid1
    assert fid12["methods"]["noisy"]["n_images"] == 36 and fid10["methods"]["noisy"]["n_images"] == 30
    assert fid10["protocol"]["fid10_views"] == "paper" and fid10["protocol"]["num_views"] == 10
    assert fid12["protocol"]["reference"] == "dataset" and fid12["protocol"]["torch_fidelity_extractor"] == TINY
    # reference = the GT meshes' canonical views: a perfect reconstruction has FID ~ 0, a noisy one more
    assert abs(fid12["methods"]["perfect"]["fid"]) < 1e-3
    assert fid12["methods"]["noisy"]["fid"] > 100 * max(abs(fid12["methods"]["perfect"]["fid"]), 1e-6)
    assert fid10["methods"]["noisy"]["fid"] > abs(fid10["methods"]["perfect"]["fid"])
    assert set(kid["methods"]["noisy"]) == {"fid1", "fid10", "fid12"}
    # renders written once per run, PNGs on disk
    views = sorted(tiny_run.fid_dir("noisy", "views12-64").glob("*.png"))
    assert len(views) == 36
    assert len(list(tiny_run.fid_dir("_reference", "gt-views12-64").glob("*.png"))) == 36
    assert len(list(tiny_run.fid_dir("noisy", "fid1-input").glob("*.png"))) == 3
    # FID_1 equals torch-fidelity's own calculate_metrics on the same PNG folders
    ref = torch_fidelity.calculate_metrics(
        input1=str(tiny_run.fid_dir("noisy", "fid1-render")), input2=str(tiny_run.fid_dir("noisy", "fid1-input")),
        fid=True, feature_extractor=TINY, cuda=False, cache=False, verbose=False, save_cpu_ram=True)
    assert fid1["methods"]["noisy"]["fid"] == pytest.approx(ref["frechet_inception_distance"], rel=1e-5)
    # a second evaluation reuses the renders (no re-render) and the cached features
    mtimes = [p.stat().st_mtime_ns for p in views]
    ctx2 = EvalContext(tiny_run, ["noisy"], opts)
    again = FID12Metric().corpus(ctx2)
    assert [p.stat().st_mtime_ns for p in views] == mtimes
    assert again["methods"]["noisy"]["fid"] == pytest.approx(fid12["methods"]["noisy"]["fid"], rel=1e-9)


def test_fid10_official_code_option_uses_11_views(tiny_run):
    ctx = EvalContext(tiny_run, ["noisy"], tiny_options(fid10_views="official-code"))
    res = FID10Metric().corpus(ctx)
    assert res["protocol"]["num_views"] == 11 and 90 in res["protocol"]["views"]
    assert res["methods"]["noisy"]["n_images"] == 33


def test_fid_against_npz_reference(tiny_run, tmp_path):
    """An .npz (mu/sigma) reference: FID against it equals FID against the features it was made from."""
    opts = tiny_options()
    ctx = EvalContext(tiny_run, ["noisy"], opts)
    parts = FIDParts.of(ctx)
    gt_paths = parts.views.gt_view_images()
    assert (gt_paths.method, gt_paths.kind) == ("_reference", "gt-views12-64")
    feats = parts.features.features(gt_paths)
    stats = statistics_from_features(feats)
    np.savez(tmp_path / "ref.npz", mu=stats["mu"], sigma=stats["sigma"])
    by_dataset = FID12Metric().corpus(EvalContext(tiny_run, ["noisy"], opts))
    by_npz = FID12Metric().corpus(EvalContext(tiny_run, ["noisy"], tiny_options(fid_reference=str(tmp_path / "ref.npz"))))
    assert by_npz["methods"]["noisy"]["fid"] == pytest.approx(by_dataset["methods"]["noisy"]["fid"], rel=1e-6)
    assert by_npz["methods"]["noisy"]["kid_mean"] is None and by_npz["protocol"]["reference"] == "npz"
    # ConvMesh statistics (torchvision Inception) are refused with another extractor
    np.savez(tmp_path / "cm.npz", stats_m=stats["mu"], stats_s=np.tril(stats["sigma"]))
    with pytest.raises(UserError, match="torchvision-inception"):
        FID12Metric().corpus(EvalContext(tiny_run, ["noisy"], tiny_options(fid_reference=str(tmp_path / "cm.npz"))))


# ---------------------------------------------------------------------------------------------
# the real Inception architectures, from weight files given by path


def _images(n=1, size=64):  # Inception at 299 on CPU is slow: one image is enough
    return torch.randint(0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)


class _ListDataset(torch.utils.data.Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_torchvision_inception_from_weights_file(tmp_path):
    import torch.nn.functional as F
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False).eval()
    path = tmp_path / "inception_v3_google-0cc3c7bd.pth"
    torch.save(net.state_dict(), path)
    fe = ex.FeatureExtractor("torchvision-inception", weights_path=path, device="cpu", batch_size=1)
    assert fe.describe()["torch_fidelity_extractor"] == "torchvision-inception"
    assert fe.weights_sha256 and len(fe.weights_sha256) == 64
    imgs = _images()
    feats = fe.features(_ListDataset(list(imgs)))
    assert feats.shape == (1, 2048) and torch.isfinite(feats).all()
    # parity: torchvision's own forward up to the average pool on 2*resize(x/255)-1
    pooled = {}
    net.avgpool.register_forward_hook(lambda m, i, o: pooled.setdefault("x", o))
    x = F.interpolate(imgs.float() / 255, size=(299, 299), mode="bilinear", align_corners=False) * 2 - 1
    net.transform_input = False
    with torch.no_grad():
        net(x)
    torch.testing.assert_close(feats, pooled["x"].flatten(1), rtol=1e-4, atol=1e-4)


def test_standard_inception_from_weights_file(tmp_path, monkeypatch):
    import torch_fidelity.feature_extractor_inceptionv3 as fi

    def no_download(*a, **k):  # the test builds random weights with the right keys instead
        raise AssertionError("must not download")

    monkeypatch.setattr(fi, "load_state_dict_from_url", lambda *a, **k: None)
    monkeypatch.setattr(fi.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd, *a, **k: None)
    torch.manual_seed(0)
    template = fi.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    state = {k: v.clone() for k, v in template.state_dict().items()}
    monkeypatch.undo()
    monkeypatch.setattr(fi, "load_state_dict_from_url", no_download)
    path = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    torch.save(state, path)
    fe = ex.FeatureExtractor("standard", weights_path=path, device="cpu", batch_size=1)
    assert fe.fidelity_name == "inception-v3-compat"
    feats = fe.features(_ListDataset(list(_images())))
    assert feats.shape == (1, 2048) and torch.isfinite(feats).all()


# ---------------------------------------------------------------------------------------------
# errors: missing files say which file and where it was looked for


def test_missing_weights_messages(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    with pytest.raises(UserError) as err:
        ex.resolve_weights("standard")
    msg = str(err.value)
    assert "weights-inception-2015-12-05-6726825d.pth" in msg and str(tmp_path / "th" / "hub" / "checkpoints") in msg
    assert "\n" not in msg
    with pytest.raises(UserError) as err:
        ex.resolve_weights("torchvision-inception")
    assert "inception_v3_google-0cc3c7bd.pth" in str(err.value) and "--fid-weights" in str(err.value)
    with pytest.raises(UserError) as err:
        ex.resolve_weights("standard", tmp_path / "nope.pth")
    assert str(tmp_path / "nope.pth") in str(err.value)
    with pytest.raises(UserError, match="unknown FID feature extractor"):
        ex.resolve_extractor("inception-v4")
    with pytest.raises(UserError, match="--fid-weights"):  # torch-fidelity's vgg16 would download
        ex.resolve_weights("vgg16")
    # the hub cache is honoured when the file is there
    ck = tmp_path / "th" / "hub" / "checkpoints"
    ck.mkdir(parents=True)
    (ck / "inception_v3_google-0cc3c7bd.pth").write_bytes(b"x")
    assert ex.resolve_weights("torchvision-inception") == ck / "inception_v3_google-0cc3c7bd.pth"


def test_missing_reference_messages(tmp_path):
    from bench.metrics.reference import resolve_reference

    with pytest.raises(UserError) as err:
        load_reference_npz(tmp_path / "missing.npz", "given by --fid-reference")
    assert str(tmp_path / "missing.npz") in str(err.value) and "\n" not in str(err.value)
    manifest = {"dataset": {"dataset": "cub", "data_root": str(tmp_path / "cub")}}
    kind, path, where = resolve_reference(None, manifest, "torchvision-inception")
    assert kind == "npz" and path == tmp_path / "cub" / "cache" / "precomputed_fid_299x299_testval.npz"
    with pytest.raises(UserError) as err:
        load_reference_npz(path, where)
    assert "precomputed_fid_299x299_testval.npz" in str(err.value) and "cache" in str(err.value)
    assert resolve_reference(None, manifest, "standard")[0] == "dataset"
    assert resolve_reference(None, {"dataset": {"dataset": "synthetic"}}, "torchvision-inception")[0] == "dataset"
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="cannot read"):
        load_reference_npz(tmp_path / "bad.npz")


def test_metrics_json_written_by_evaluate(tiny_run):
    from bench.commands.eval import evaluate

    written = evaluate(tiny_run.root, ["fid1", "kid"], tiny_options(), progress=False)["written"]
    doc = json.loads(tiny_run.metrics_path("fid1").read_text())
    assert doc["metric"] == "fid1" and doc["version"] == 1 and set(doc["methods"]) == {"perfect", "noisy"}
    assert doc["protocol"]["quantisation"].startswith("round") and "environment" in doc
    assert written["kid"]["methods"]["noisy"]["fid12"]["kid_mean"] is not None


def test_canonical_views_of_face_textured_mesh():
    """CMR/UMR meshes (per-face texture grids) go through the same view renderer; white background."""
    from bench.metrics.views import render_canonical_views
    from bench.render.uvsphere import uvsphere_template

    tpl = uvsphere_template("cpu")
    mesh = {"vertices": tpl.vertices * 0.8, "faces": tpl.faces, "face_uvs": None, "texture": None,
            "face_textures": torch.zeros(tpl.num_faces, 3, 3, 3) - 1}  # black object
    views = render_canonical_views(mesh, (0, 90), size=32)
    assert views.shape == (2, 32, 32, 3) and views.dtype == torch.uint8
    assert (views[:, 0, 0] == 255).all() and (views[:, 16, 16] == 0).all()
