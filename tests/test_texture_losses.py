"""The texture-loss variants of the supplement's ablation (Fig. 2; ``ours.texture_loss``): each term
against a direct computation, the contextual loss against a dense loop over the paper's formula (value
and gradient), batching, the Chamfer default unchanged, and each variant's inversion lowering its own
objective on synthetic data."""
from __future__ import annotations

import math

import pytest
import torch

import bench
from bench.errors import UserError
from bench.methods.meshinversion import texture_terms
from bench.methods.meshinversion.losses import (PointSet, TEXTURE_LOSSES, LossConfig, criterion, feature_points,
                                                prepare_targets)


def _dense_contextual(x, y, h=0.5, eps=1e-5):
    """Mechrez et al. 2018, eq. 1-4, written out with loops (float64)."""
    mu = [sum(y[j][c] for j in range(len(y))) / len(y) for c in range(len(y[0]))]

    def unit(v):
        v = [a - m for a, m in zip(v, mu)]
        n = math.sqrt(sum(a * a for a in v))
        return [a / n for a in v]

    xs, ys = [unit(v) for v in x], [unit(v) for v in y]
    d = [[1 - sum(a * b for a, b in zip(xi, yj)) for yj in ys] for xi in xs]
    cx = []
    for i in range(len(xs)):
        dmin = min(d[i])
        w = [math.exp((1 - d[i][j] / (dmin + eps)) / h) for j in range(len(ys))]
        total = sum(w)
        cx.append([wj / total for wj in w])
    return -math.log(sum(max(cx[i][j] for i in range(len(xs))) for j in range(len(ys))) / len(ys))


def test_contextual_loss_is_the_papers_formula_value_and_gradient():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 5, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(6, 5, generator=g, dtype=torch.float64)
    for h, eps in ((0.5, 1e-5), (0.1, 1e-3)):
        value = texture_terms.contextual_one(x, y, h, eps)
        assert value.item() == pytest.approx(_dense_contextual(x.tolist(), y.tolist(), h, eps), rel=1e-12)
    # gradient against central finite differences of the dense formula
    (grad,) = torch.autograd.grad(texture_terms.contextual_one(x, y), x)
    step = 1e-6
    for i, c in ((0, 0), (3, 2), (6, 4)):
        plus, minus = x.detach().clone(), x.detach().clone()
        plus[i, c] += step
        minus[i, c] -= step
        fd = (_dense_contextual(plus.tolist(), y.tolist()) - _dense_contextual(minus.tolist(), y.tolist())) / (2 * step)
        assert float(grad[i, c]) == pytest.approx(fd, rel=1e-5, abs=1e-9)
    assert torch.autograd.gradcheck(lambda a: texture_terms.contextual_one(a, y), (x,))
    # identical sets: every target point is some prediction's best match with CX_ij close to 1 -> loss near 0
    assert float(texture_terms.contextual_one(y, y, 0.1)) < 0.05


def test_l1_and_perceptual_against_direct_sums():
    g = torch.Generator().manual_seed(1)
    pred, target = torch.rand(2, 3, 8, 8, generator=g) * 2 - 1, torch.rand(2, 3, 8, 8, generator=g) * 2 - 1
    mask = torch.zeros(2, 1, 8, 8)
    mask[0, :, 2:6, 1:5] = 1
    mask[1, :, :3, :] = 1
    got = texture_terms.l1_texture_loss(pred, target, mask)
    for b in range(2):
        sel = mask[b, 0].bool()
        want = (pred[b][:, sel] - target[b][:, sel]).abs().double().mean()
        assert float(got[b]) == pytest.approx(float(want), rel=1e-12)
    fp, ft = torch.randn(2, 16, 4, 4, generator=g), torch.randn(2, 16, 4, 4, generator=g)
    cells = texture_terms.grid_mask(mask, (4, 4), 0.5)
    assert torch.equal(cells[0, 0], (torch.nn.functional.avg_pool2d(mask, 2)[0, 0] >= 0.5).double())
    got = texture_terms.perceptual_loss(fp, ft, cells)
    for b in range(2):
        d = []
        for i in range(4):
            for j in range(4):
                if cells[b, 0, i, j]:
                    p, t = fp[b, :, i, j].double(), ft[b, :, i, j].double()
                    d.append(float(((p / p.norm() - t / t.norm()) ** 2).sum()))
        assert float(got[b]) == pytest.approx(sum(d) / len(d), rel=1e-12)


def test_batched_contextual_equals_each_instance_alone():
    g = torch.Generator().manual_seed(2)
    feats, masks = torch.randn(2, 8, 6, 6, generator=g), torch.zeros(2, 1, 24, 24)
    masks[0, :, 4:20, 4:16] = 1
    masks[1, :, 8:12, :] = 1
    pred = feature_points(feats, masks)
    target = feature_points(torch.randn(2, 8, 6, 6, generator=g), masks.flip(-1))
    assert pred.lengths[0] != pred.lengths[1]
    batch = texture_terms.contextual_loss(pred, target)
    for b in range(2):
        alone = texture_terms.contextual_loss(PointSet(*[t[b:b + 1] for t in (pred.xy, pred.values)],
                                                       pred.lengths[b:b + 1]),
                                              PointSet(target.xy[b:b + 1], target.values[b:b + 1],
                                                       target.lengths[b:b + 1]))
        assert float(batch[b]) == float(alone[0])


def test_criterion_terms_per_variant_and_chamfer_unchanged():
    from bench.methods.meshinversion.vgg import VGGRelu31

    g = torch.Generator().manual_seed(3)
    vgg = VGGRelu31()
    image, mask = torch.rand(1, 3, 32, 32, generator=g) * 2 - 1, torch.zeros(1, 1, 32, 32)
    mask[..., 8:24, 6:26] = 1
    pred = (torch.rand(1, 3, 32, 32, generator=g) * 2 - 1) * mask
    vtx, z = torch.rand(1, 50, 2, generator=g) * 2 - 1, torch.randn(1, 64, generator=g)
    terms = {}
    for variant in TEXTURE_LOSSES:
        cfg = LossConfig(texture_loss=variant, chamfer_resolution=None)
        targets = prepare_targets(image, mask, cfg, vgg)
        total, t = criterion(pred, mask, targets, vtx_xy=vtx, z=z, config=cfg, vgg=vgg)
        terms[variant] = t
        names = {k for k in t if k != "iou"}
        assert names == {"mask", "nll"} | {n for n in (cfg.pixel_term, cfg.feature_term) if n}, variant
        weights = {"mask": 10.0, "nll": 0.05, cfg.pixel_term: 1.0, cfg.feature_term: 0.04}
        assert float(total) == pytest.approx(sum(weights[k] * float(v) for k, v in t.items() if k != "iou"))
    for name in ("mask", "pixel", "feat", "nll"):  # one-term variants: the same values as the default
        for variant in ("pixel-chamfer", "feature-chamfer"):
            if name in terms[variant]:
                assert torch.equal(terms[variant][name], terms["chamfer"][name])
    # no VGG needed without a feature-level term
    for variant in ("l1", "pixel-chamfer"):
        cfg = LossConfig(texture_loss=variant)
        assert cfg.feature_term is None and prepare_targets(image, mask, cfg, None).features is None


@pytest.mark.parametrize("variant", TEXTURE_LOSSES)
def test_each_variant_lowers_its_own_objective(variant):
    sample = bench.load_dataset("synthetic", profile="fast", n=1, image_size=64)[0]
    method = bench.load_method("ours", profile="fast", texture_loss=variant, render_size=64, select_num=2,
                               iterations=[4, 4, 4, 4], chamfer_resolution=512)
    recon = method.reconstruct([sample])[0]
    assert recon.status == "ok"
    assert len(recon.losses) == 16 and recon.losses[-1] < recon.losses[0], recon.losses


def test_bad_texture_loss_is_one_line():
    with pytest.raises(UserError, match=r"ours\.texture_loss must be one of chamfer, pixel-chamfer, "):
        bench.load_method("ours", profile="fast", texture_loss="foo")


def _two_instances(size=32, seed=4):
    """Two (image, mask, prediction, vertices, latent) instances with masks of different sizes."""
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(2, 3, size, size, generator=g) * 2 - 1
    mask = torch.zeros(2, 1, size, size)
    mask[0, :, 8:24, 6:26] = 1
    mask[1, :, 4:12, 10:30] = 1
    pred_mask = mask.roll(2, dims=-1)
    pred = (torch.rand(2, 3, size, size, generator=g) * 2 - 1) * pred_mask
    vtx, z = torch.rand(2, 50, 2, generator=g) * 2 - 1, torch.randn(2, 64, generator=g)
    return image, mask, pred, pred_mask, vtx, z


def test_default_is_todays_criterion_term_by_term():
    """texture_loss=chamfer (the default) is the official criterion: the same term functions, weights
    and names as before the field existed, bitwise."""
    from bench.methods.meshinversion.losses import (chamfer_mask_loss, feat_texture_loss, nll_loss,
                                                    pixel_texture_loss)
    from bench.methods.meshinversion.vgg import VGGRelu31

    image, mask, pred, pred_mask, vtx, z = _two_instances()
    vgg = VGGRelu31()
    default, named = LossConfig(chamfer_resolution=None), LossConfig(texture_loss="chamfer", chamfer_resolution=None)
    assert default == named and default.pixel_term == "pixel" and default.feature_term == "feat"
    targets = prepare_targets(image, mask, default, vgg)
    assert targets.features is None  # raw target maps are kept for `perceptual` only
    total, terms = criterion(pred, pred_mask, targets, vtx_xy=vtx, z=z, config=named, vgg=vgg)
    feats = vgg(pred, pred_mask)
    want = {"mask": chamfer_mask_loss(vtx, targets.points.xy, targets.points.lengths),
            "pixel": pixel_texture_loss(pred, pred_mask, targets.points, default),
            "feat": feat_texture_loss(feats, pred_mask, targets.feat_points, default),
            "nll": nll_loss(z)}
    assert set(terms) == set(want) | {"iou"}
    for name, value in want.items():
        assert torch.equal(terms[name], value), name
    assert torch.equal(total, 10 * want["mask"] + 1 * want["pixel"] + 0.04 * want["feat"] + 0.05 * want["nll"])


@pytest.mark.parametrize("variant", TEXTURE_LOSSES)
def test_batch_of_two_sizes_equals_each_alone(variant):
    """Every variant through the criterion: instances with different mask/feature-cell counts in one
    padded batch get the values they get alone."""
    from bench.methods.meshinversion.inverter import RowByRow
    from bench.methods.meshinversion.vgg import VGGRelu31

    image, mask, pred, pred_mask, vtx, z = _two_instances()
    vgg = RowByRow(VGGRelu31())  # convolutions row by row: the features themselves batch-invariant
    cfg = LossConfig(texture_loss=variant, chamfer_resolution=None)
    targets = prepare_targets(image, mask, cfg, vgg)
    if cfg.feature_term is not None:
        assert targets.feat_points.lengths[0] != targets.feat_points.lengths[1]
    total, terms = criterion(pred, pred_mask, targets, vtx_xy=vtx, z=z, config=cfg, vgg=vgg)
    assert total.shape == (2,)
    for b in range(2):
        one = slice(b, b + 1)
        alone_targets = prepare_targets(image[one], mask[one], cfg, vgg)
        alone, alone_terms = criterion(pred[one], pred_mask[one], alone_targets, vtx_xy=vtx[one], z=z[one],
                                       config=cfg, vgg=vgg)
        assert float(total[b]) == pytest.approx(float(alone[0]), rel=1e-12, abs=1e-12)
        for name, value in alone_terms.items():
            assert float(terms[name][b]) == pytest.approx(float(value[0]), rel=1e-12, abs=1e-12), name


def test_switches_and_vgg_policy(tmp_path, monkeypatch):
    """pixel_loss / feat_loss still switch a level off; only a feature-level variant needs VGG19: with a
    real checkpoint and no VGG file, `l1` and `pixel-chamfer` set up, `perceptual` asks for the file."""
    from bench.methods.meshinversion.config import InversionConfig
    from bench.methods.meshinversion.method import MeshInversionMethod

    assert LossConfig(texture_loss="l1", pixel_loss=False).pixel_term is None
    assert LossConfig(texture_loss="contextual", feat_loss=False).feature_term is None
    assert LossConfig(texture_loss="feature-chamfer").pixel_term is None
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    demo = MeshInversionMethod(InversionConfig(texture_loss="l1", warmup_passes=0))
    assert demo.labels() == ["untrained", "no feature loss"] and demo.describe()["feature_term"] == "off"
    demo.setup("cpu")
    assert demo.criterion.vgg is None
    ckpt = tmp_path / "checkpoint_latest.pth"
    torch.save({"generator_running_avg": demo.generator.state_dict()}, ckpt)
    for variant in ("l1", "pixel-chamfer"):
        method = MeshInversionMethod(InversionConfig(checkpoint=str(ckpt), texture_loss=variant, warmup_passes=0))
        method.setup("cpu")
        assert method.feature_term == "off" and method.describe()["config"]["texture_loss"] == variant
    needs_vgg = MeshInversionMethod(InversionConfig(checkpoint=str(ckpt), texture_loss="perceptual", warmup_passes=0))
    with pytest.raises(UserError, match="vgg19-dcbb9e9d.pth"):
        needs_vgg.setup("cpu")
