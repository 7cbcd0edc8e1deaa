"""CMR inference network (Kanazawa et al. 2018) and the building blocks UMR shares with it.

Re-implemented from ``shared/spec/baselines.md`` §1 so that ``load_state_dict(strict=True)`` accepts
the released ``pred_net_500.pth`` (key names follow the original module tree; see
``fixtures/cmr_state_dict_manifest.json``).

Shapes (B = batch, nz = 200):

* ``Encoder``: image (B,3,256,256), ImageNet-normalised -> latent (B,200).
* ``TexturePredictorUV``: latent -> texture flow (B,1280,6,6,2) in [-1,1] (grid_sample (x, y)
  coordinates into the input crop); :func:`sample_texture` turns it into colours (B,1280,6,6,3).
* ``CodePredictor``: latent -> vertex offsets (B,337,3) and camera (B,7) ``[s, tx, ty, q]``.
* ``CMRMeshNet``: the whole thing with the mesh template (non-persistent buffers ``faces``,
  ``uv_sampler``, ``sphere_vertices``).

Models expose one interface used by the TTO loop (:mod:`bench.methods.cmr.tto`):
``encode(image01) -> dict(latent, camera, ...)``, ``decode_shape(latent, state) -> (B,V,3)`` (the
model's own object frame), ``texture_flow(latent) -> (B,F,T,T,2)``, ``faces`` (F,3).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from bench.render.icosphere import SymmetricMesh, symmetric_icosphere, uv_sampler

#: ImageNet statistics used for the encoder input.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Encoder input resolution of the released models.
IMG_SIZE = 256
NZ_FEAT = 200
TEX_SIZE = 6


def fc_block(nc_in: int, nc_out: int, batch_norm: bool = True) -> nn.Sequential:
    """[Linear, BN1d, LeakyReLU(0.2)] or, without BN, [Linear, LeakyReLU(0.1)] (CMR ``nb.fc``)."""
    if batch_norm:
        return nn.Sequential(nn.Linear(nc_in, nc_out), nn.BatchNorm1d(nc_out), nn.LeakyReLU(0.2, inplace=True))
    return nn.Sequential(nn.Linear(nc_in, nc_out), nn.LeakyReLU(0.1, inplace=True))


def fc_stack(nc_in: int, nc_out: int, nlayers: int, batch_norm: bool = True) -> nn.Sequential:
    """``nlayers`` fc blocks (keys ``{i}.0.*`` linear, ``{i}.1.*`` BN)."""
    return nn.Sequential(*[fc_block(nc_in if i == 0 else nc_out, nc_out, batch_norm) for i in range(nlayers)])


class ResNetConv(nn.Module):
    """torchvision ResNet-18 up to ``layer4`` (its unused ``fc`` stays, for the checkpoint keys)."""

    def __init__(self):
        super().__init__()
        self.resnet = torchvision.models.resnet18(weights=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.resnet
        x = r.maxpool(r.relu(r.bn1(r.conv1(x))))
        return r.layer4(r.layer3(r.layer2(r.layer1(x))))


class Encoder(nn.Module):
    """ResNet-18 trunk -> conv 4×4/2 (512->256) -> 2 fc blocks -> 200-d latent (post-activation)."""

    def __init__(self, img_size: int = IMG_SIZE, nz_feat: int = NZ_FEAT):
        super().__init__()
        self.resnet_conv = ResNetConv()
        self.enc_conv1 = nn.Sequential(nn.Conv2d(512, 256, kernel_size=4, stride=2, padding=1, bias=True),
                                       nn.BatchNorm2d(256), nn.LeakyReLU(0.2, inplace=True))
        self.enc_fc = fc_stack(256 * (img_size // 64) ** 2, nz_feat, 2)

    def forward(self, img_normalised: torch.Tensor) -> torch.Tensor:
        feat = self.enc_conv1(self.resnet_conv(img_normalised))
        return self.enc_fc(feat.reshape(feat.shape[0], -1))


def _upconv(c_in: int, c_out: int, align_corners: bool) -> nn.Sequential:
    """[Upsample ×2 bilinear, ReflectionPad2d(1), Conv3×3 (no pad), LeakyReLU(0.2)]."""
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=align_corners),
                         nn.ReflectionPad2d(1), nn.Conv2d(c_in, c_out, 3, padding=0, bias=True),
                         nn.LeakyReLU(0.2, inplace=True))


def _conv_bn(c: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=True), nn.BatchNorm2d(c), nn.LeakyReLU(0.2, inplace=True))


class TexturePredictorUV(nn.Module):
    """Latent -> texture flow per face (CMR ``TexturePredictorUV`` with ``predict_flow=True``).

    Args:
        num_faces: F' faces whose flow is predicted (656); the last ``num_sym_faces`` are copied.
        num_sym_faces: 624.
        upsample_align_corners: CMR (torch 0.3) True, UMR (torch 1.1) False.
        grid_align_corners: True for both.
    """

    def __init__(self, nz_feat: int = NZ_FEAT, num_faces: int = 656, num_sym_faces: int = 624,
                 tex_size: int = TEX_SIZE, n_upconv: int = 5, nc_init: int = 256,
                 upsample_align_corners: bool = True, grid_align_corners: bool = True):
        super().__init__()
        img_h = int(2 ** np.floor(np.log2(np.sqrt(num_faces) * tex_size)))
        img_w = 2 * img_h
        self.feat_h, self.feat_w = img_h // 2 ** n_upconv, img_w // 2 ** n_upconv
        self.nc_init, self.num_faces, self.num_sym_faces, self.tex_size = nc_init, num_faces, num_sym_faces, tex_size
        self.grid_align_corners = grid_align_corners
        self.enc = fc_stack(nz_feat, nc_init * self.feat_h * self.feat_w, 2)
        layers: list[nn.Module] = []
        c = nc_init
        for _ in range(n_upconv):
            layers += [_upconv(c, c // 2, upsample_align_corners), _conv_bn(c // 2)]
            c //= 2
        layers.append(nn.Conv2d(c, 2, 3, padding=1, bias=True))
        self.decoder = nn.Sequential(*layers)

    def uv_image(self, latent: torch.Tensor) -> torch.Tensor:
        """(B,200) -> (B,2,128,256) flow image in [-1,1]."""
        x = self.enc(latent).reshape(latent.shape[0], self.nc_init, self.feat_h, self.feat_w)
        return torch.tanh(self.decoder(x))

    def forward(self, latent: torch.Tensor, sampler: torch.Tensor) -> torch.Tensor:
        """Flow per face.

        Args:
            latent: (B,200).
            sampler: (F',T*T,2) UV sampler (shared by the batch).
        Returns:
            (B, F'+num_sym_faces, T, T, 2) flow, faces ordered [indept, right, left].
        """
        B, T = latent.shape[0], self.tex_size
        uvimg = self.uv_image(latent)
        grid = sampler.to(uvimg.dtype).unsqueeze(0).expand(B, *sampler.shape)
        flow = F.grid_sample(uvimg, grid, mode="bilinear", padding_mode="zeros",
                             align_corners=self.grid_align_corners)          # (B,2,F',T*T)
        flow = flow.permute(0, 2, 3, 1).reshape(B, self.num_faces, T, T, 2)
        return torch.cat([flow, flow[:, -self.num_sym_faces:]], dim=1)


def sample_texture(image01: torch.Tensor, flow: torch.Tensor, align_corners: bool = True) -> torch.Tensor:
    """Colours of the texture flow: bilinear samples of the [0,1] input crop.

    Args:
        image01: (B,3,H,W) in [0,1].
        flow: (B,F,T,T,2) grid_sample coordinates.
    Returns:
        (B,F,T,T,3) in [0,1].
    """
    B, nF, T = flow.shape[0], flow.shape[1], flow.shape[2]
    tex = F.grid_sample(image01.to(flow.dtype), flow.reshape(B, nF, T * T, 2), mode="bilinear",
                        padding_mode="zeros", align_corners=align_corners)      # (B,3,F,T*T)
    return tex.permute(0, 2, 3, 1).reshape(B, nF, T, T, 3)


class PredLayer(nn.Module):
    """A head with its Linear under ``pred_layer`` (checkpoint key layout)."""

    def __init__(self, nz: int, nout: int):
        super().__init__()
        self.pred_layer = nn.Linear(nz, nout)


def scale_from_logit(out: torch.Tensor) -> torch.Tensor:
    """s = relu(out + 1) + 1e-12."""
    return F.relu(out + 1.0) + 1e-12


class CodePredictor(nn.Module):
    """CMR heads on the latent: shape offsets and the camera (scale, translation, unit quaternion)."""

    def __init__(self, nz_feat: int = NZ_FEAT, num_verts: int = 337):
        super().__init__()
        self.quat_predictor = PredLayer(nz_feat, 4)
        self.shape_predictor = PredLayer(nz_feat, num_verts * 3)
        self.scale_predictor = PredLayer(nz_feat, 1)
        self.trans_predictor = PredLayer(nz_feat, 2)

    def shape(self, latent: torch.Tensor) -> torch.Tensor:
        return self.shape_predictor.pred_layer(latent).reshape(latent.shape[0], -1, 3)

    def camera(self, latent: torch.Tensor) -> torch.Tensor:
        """(B,7) ``[s, tx, ty, qw, qx, qy, qz]``."""
        s = scale_from_logit(self.scale_predictor.pred_layer(latent))
        t = self.trans_predictor.pred_layer(latent)
        q = F.normalize(self.quat_predictor.pred_layer(latent), dim=1)
        return torch.cat([s, t, q], dim=1)


def normalise_imagenet(image01: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN, dtype=image01.dtype, device=image01.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=image01.dtype, device=image01.device).view(1, 3, 1, 1)
    return (image01 - mean) / std


def encoder_input(image01: torch.Tensor, size: int = IMG_SIZE) -> torch.Tensor:
    """Resize (bilinear) to the encoder's 256×256 if needed, then ImageNet-normalise."""
    if image01.shape[-2:] != (size, size):
        image01 = F.interpolate(image01, size=(size, size), mode="bilinear", align_corners=False)
    return normalise_imagenet(image01)


class TemplateMixin:
    """Mesh-template buffers and the symmetrisation shared by CMR and UMR."""

    template: SymmetricMesh
    flip: torch.Tensor

    def _init_template(self, axis: int) -> None:
        self.template = symmetric_icosphere(axis)
        t = self.template
        self.register_buffer("faces", torch.from_numpy(t.faces.copy()), persistent=False)
        self.register_buffer("sphere_vertices", torch.from_numpy(t.vertices.astype(np.float32)), persistent=False)
        flip = torch.ones(3)
        flip[axis] = -1.0
        self.register_buffer("flip", flip, persistent=False)

    def symmetrize(self, v: torch.Tensor) -> torch.Tensor:
        """(B,337,3) -> (B,642,3): append the mirror images of the last num_sym vertices."""
        return torch.cat([v, v[:, -self.template.num_sym:] * self.flip], dim=1)


class CMRMeshNet(TemplateMixin, nn.Module):
    """CMR's MeshNet at inference (bird model: 15 keypoints, mirror axis x).

    State dict keys: ``mean_v`` (337,3), ``vert2kp`` (15,642), ``encoder.*``, ``code_predictor.*``,
    ``texture_predictor.*`` (214 with ``num_batches_tracked``, 184 without).
    """

    #: rotation (w,x,y,z) from this model's object frame to the shared frame: CMR's frame is it.
    frame_quaternion = (1.0, 0.0, 0.0, 0.0)
    axis = 0

    def __init__(self, num_kps: int = 15, nz_feat: int = NZ_FEAT):
        super().__init__()
        self._init_template(self.axis)
        t = self.template
        self.mean_v = nn.Parameter(torch.from_numpy(t.vertices[:t.num_free].astype(np.float32)))
        self.vert2kp = nn.Parameter(torch.zeros(num_kps, len(t.vertices)))
        self.encoder = Encoder(IMG_SIZE, nz_feat)
        self.code_predictor = CodePredictor(nz_feat, t.num_free)
        self.texture_predictor = TexturePredictorUV(nz_feat, t.num_sampled_faces, t.num_sym_faces, TEX_SIZE,
                                                    upsample_align_corners=True, grid_align_corners=True)
        sampler = torch.from_numpy(uv_sampler(t, TEX_SIZE)).reshape(t.num_sampled_faces, TEX_SIZE ** 2, 2)
        self.register_buffer("uv_sampler", sampler, persistent=False)
        #: align_corners of the image-texture grid_sample (torch 0.3 behaviour).
        self.texture_align_corners = True

    # --- the interface used by the methods and the TTO loop ------------------------------------
    def encode(self, image01: torch.Tensor, **_) -> dict:
        """One encoder pass: ``latent`` (B,200) and the camera head's ``camera`` (B,7)."""
        latent = self.encoder(encoder_input(image01))
        return {"latent": latent, "camera": self.code_predictor.camera(latent)}

    def decode_shape(self, latent: torch.Tensor, state: dict | None = None) -> torch.Tensor:
        """V = mean + sym(δ): (B,642,3) in CMR's object frame."""
        delta = self.code_predictor.shape(latent)
        return self.symmetrize(self.mean_v.unsqueeze(0) + delta)

    def texture_flow(self, latent: torch.Tensor) -> torch.Tensor:
        """(B,1280,6,6,2)."""
        return self.texture_predictor(latent, self.uv_sampler)

    def mean_shape(self) -> torch.Tensor:
        return self.symmetrize(self.mean_v.unsqueeze(0))[0]


@torch.no_grad()
def adjust_untrained_heads_(net: nn.Module) -> None:
    """Make randomly initialised heads predict something renderable.

    Untrained stand-in weights are torch's default initialisation drawn under a fixed seed (see
    :func:`build_seeded`); then the shape heads are scaled down (near-sphere mean shape), the quaternion
    heads get bias (1,0,0,0) (near-identity rotation) and the scale heads a bias giving s ≈ 0.6.
    """
    for name, m in net.named_modules():
        if name.endswith("shape_predictor"):
            m.pred_layer.weight.mul_(0.02)
            m.pred_layer.bias.zero_()
        elif name.endswith("quat_predictor"):
            m.pred_layer.weight.mul_(0.01)
            m.pred_layer.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))
        elif name.endswith("scale_predictor"):
            m.pred_layer.weight.mul_(0.01)
            m.pred_layer.bias.fill_(-0.4)
        elif name.endswith("trans_predictor"):
            m.pred_layer.weight.mul_(0.01)
            m.pred_layer.bias.zero_()


def build_seeded(factory, seed: int | None):
    """Instantiate ``factory()``; with a ``seed``, under a forked global RNG seeded with it (the
    caller's RNG state is left untouched) and with :func:`adjust_untrained_heads_` applied."""
    if seed is None:
        return factory()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        net = factory()
    adjust_untrained_heads_(net)
    return net
