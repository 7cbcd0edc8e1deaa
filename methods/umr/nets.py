"""UMR inference network (Li et al. 2020, the released stage-2 ``cub_mesh.py`` model).

Re-implemented from ``shared/spec/baselines.md`` §2 so that ``load_state_dict(strict=True)`` accepts
the released checkpoint (keys in ``fixtures/umr_state_dict_manifest.json``). Differences from CMR:

* mirror axis y (the icosphere is re-ordered with ``make_symmetric(axis=1)``);
* ``mean_v`` (337,3) is a buffer; ``uv_sampler`` is a buffer of shape (N,656,36,2) whose first
  dimension is the training batch per GPU, so it is resized from the checkpoint before loading
  (:meth:`UMRMeshNet.resize_uv_sampler_`) and row 0 is used;
* a VAE head: ``encoder.mean_fc`` / ``logvar_fc`` (200 -> 350); the shape head reads μ (default,
  deterministic) or a sample μ + exp(½·logvar)·ε;
* the texture flow and the camera read the 200-d ``img_feat`` (the latent that TTO optimises);
* 8 camera hypotheses with probabilities (softmax over per-hypothesis logits); the camera is the
  argmax (default) or a multinomial sample (what the original code does) drawn from each
  instance's own seed;
* ``align_corners``: Upsample False (torch 1.1 default), grid_sample True.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.methods.cmr.nets import (IMG_SIZE, NZ_FEAT, TEX_SIZE, Encoder, PredLayer, TemplateMixin,
                                    TexturePredictorUV, encoder_input, fc_stack, scale_from_logit)
from bench.render.icosphere import uv_sampler

Z_DIM = 350
NUM_HYPOTHESES = 8


class UMREncoder(Encoder):
    """CMR encoder plus the VAE heads ``mean_fc`` / ``logvar_fc`` = [Linear, LeakyReLU(0.01), Linear]."""

    def __init__(self, img_size: int = IMG_SIZE, nz_feat: int = NZ_FEAT, z_dim: int = Z_DIM):
        super().__init__(img_size, nz_feat)
        self.mean_fc = nn.Sequential(nn.Linear(nz_feat, nz_feat), nn.LeakyReLU(), nn.Linear(nz_feat, z_dim))
        self.logvar_fc = nn.Sequential(nn.Linear(nz_feat, nz_feat), nn.LeakyReLU(), nn.Linear(nz_feat, z_dim))


class CameraHypothesis(nn.Module):
    """One hypothesis: 2 fc blocks (BN) then quaternion, probability logit, scale and translation."""

    def __init__(self, nz: int = NZ_FEAT):
        super().__init__()
        self.fc_layer = fc_stack(nz, nz, 2)
        self.quat_predictor = PredLayer(nz, 4)
        self.prob_predictor = nn.Linear(nz, 1)
        self.scale_predictor = PredLayer(nz, 1)
        self.trans_predictor = PredLayer(nz, 2)

    def forward(self, feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,nz) -> camera (B,7) ``[s, tx, ty, q]``, logit (B,)."""
        h = self.fc_layer(feat)
        q = F.normalize(self.quat_predictor.pred_layer(h), dim=1)
        s = scale_from_logit(self.scale_predictor.pred_layer(h))
        t = self.trans_predictor.pred_layer(h)
        return torch.cat([s, t, q], dim=1), self.prob_predictor(h)[:, 0]


class MultiCamPredictor(nn.Module):
    """UMR's camera multiplex. Unused-in-forward members (``cam_biases``, the top-level
    scale/trans/prob/quat predictors) exist only so that the checkpoint loads strictly."""

    def __init__(self, nz: int = NZ_FEAT, num_cams: int = NUM_HYPOTHESES):
        super().__init__()
        self.register_buffer("cam_biases", torch.zeros(num_cams, 4))
        self.fc = fc_stack(nz, nz, 2, batch_norm=False)
        self.scale_predictor = PredLayer(nz, 1)
        self.trans_predictor = PredLayer(nz, 2)
        self.prob_predictor = nn.Linear(nz, num_cams)
        self.camera_predictor = nn.ModuleList([CameraHypothesis(nz) for _ in range(num_cams)])
        self.quat_predictor = PredLayer(nz, 4)

    def forward(self, img_feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,200) -> hypotheses (B,K,7), probabilities (B,K)."""
        feat = self.fc(img_feat)
        cams, logits = zip(*[head(feat) for head in self.camera_predictor])
        return torch.stack(cams, dim=1), torch.softmax(torch.stack(logits, dim=1), dim=1)


def instance_generators(seeds, batch_size: int) -> list[torch.Generator]:
    """One CPU generator per instance, seeded with its own seed (``None`` -> 0 for every row).

    The methods pass ``bench.seeds.sample_seed(sample)`` per sample, so an instance's draws do not
    depend on the batch it is in.
    """
    seeds = [0] * batch_size if seeds is None else [int(x) for x in seeds]
    if len(seeds) != batch_size:
        raise ValueError(f"need one seed per instance: {batch_size} instances, {len(seeds)} seeds")
    return [torch.Generator(device="cpu").manual_seed(x) for x in seeds]


def choose_hypothesis(probs: torch.Tensor, mode: str = "argmax", seeds=None,
                      generators: list[torch.Generator] | None = None) -> torch.Tensor:
    """Index (B,) of the camera hypothesis: ``argmax`` or a ``sample`` (multinomial, one draw per
    instance from its own seed or generator)."""
    if mode == "argmax":
        return probs.argmax(dim=1)
    if mode == "sample":
        gens = generators if generators is not None else instance_generators(seeds, probs.shape[0])
        p = probs.detach().float().cpu()
        picks = [torch.multinomial(p[b], 1, generator=g) for b, g in enumerate(gens)]
        return torch.cat(picks).to(probs.device)
    raise ValueError(f"unknown UMR hypothesis mode {mode!r}; use 'argmax' or 'sample'")


class UMRMeshNet(TemplateMixin, nn.Module):
    """UMR's MeshNet at inference (CUB model, mirror axis y). 405 state-dict keys."""

    #: default rotation (w,x,y,z) from UMR's frame (symmetric about y = 0) to the shared frame
    #: (symmetric about x = 0): +90° about z, mapping UMR's +y to -x and UMR's +x to +y (up).
    frame_quaternion = (float(np.cos(np.pi / 4)), 0.0, 0.0, float(np.sin(np.pi / 4)))
    axis = 1

    def __init__(self, uv_sampler_batch: int = 16, nz_feat: int = NZ_FEAT, z_dim: int = Z_DIM,
                 num_cams: int = NUM_HYPOTHESES):
        super().__init__()
        self._init_template(self.axis)
        t = self.template
        self.register_buffer("mean_v", torch.from_numpy(t.vertices[:t.num_free].astype(np.float32)))
        sampler = torch.from_numpy(uv_sampler(t, TEX_SIZE)).reshape(1, t.num_sampled_faces, TEX_SIZE ** 2, 2)
        #: our own sampler, kept to check the checkpoint's (a self-test, spec §2.2)
        self.register_buffer("own_uv_sampler", sampler[0].clone(), persistent=False)
        self.register_buffer("uv_sampler", sampler.repeat(uv_sampler_batch, 1, 1, 1))
        self.encoder = UMREncoder(IMG_SIZE, nz_feat, z_dim)
        self.shape_predictor = PredLayer(z_dim, t.num_free * 3)
        self.cam_predictor = MultiCamPredictor(nz_feat, num_cams)
        self.texture_predictor = TexturePredictorUV(nz_feat, t.num_sampled_faces, t.num_sym_faces, TEX_SIZE,
                                                    upsample_align_corners=False, grid_align_corners=True)
        self.texture_align_corners = True
        #: options set by the method (see ``UMRConfig``)
        self.hypothesis = "argmax"
        self.shape_code = "mean"

    def resize_uv_sampler_(self, n: int) -> None:
        """Give the ``uv_sampler`` buffer the checkpoint's first dimension before a strict load."""
        self.uv_sampler = self.uv_sampler[:1].repeat(int(n), 1, 1, 1).contiguous()

    # --- the interface used by the methods and the TTO loop ------------------------------------
    def encode(self, image01: torch.Tensor, seeds=None, **_) -> dict:
        """One encoder pass.

        Args:
            image01: (B,3,H,W) in [0,1].
            seeds: one int per instance (``bench.seeds.sample_seed``), or None (0 for every row):
                instance b's VAE noise and sampled hypothesis come from a generator seeded with
                ``seeds[b]`` (the noise is drawn first, so it does not depend on the probabilities).
        Returns:
            ``latent`` (B,200) (= img_feat), ``camera`` (B,7) (the chosen hypothesis),
            ``hypotheses`` (B,8,7), ``probs`` (B,8), ``hypothesis`` (B,), ``eps`` (B,350) (the VAE
            noise used when ``shape_code == 'sample'``).
        """
        latent = self.encoder(encoder_input(image01))
        hyps, probs = self.cam_predictor(latent)
        generators = instance_generators(seeds, latent.shape[0])
        z_dim = self.shape_predictor.pred_layer.in_features
        eps = torch.stack([torch.randn(z_dim, generator=g) for g in generators])
        idx = choose_hypothesis(probs, self.hypothesis, generators=generators)
        camera = hyps[torch.arange(len(idx), device=idx.device), idx]
        return {"latent": latent, "camera": camera, "hypotheses": hyps, "probs": probs, "hypothesis": idx,
                "eps": eps.to(device=latent.device, dtype=latent.dtype)}

    def shape_code_of(self, latent: torch.Tensor, eps: torch.Tensor | None = None) -> torch.Tensor:
        mu = self.encoder.mean_fc(latent)
        if self.shape_code == "mean":
            return mu
        if self.shape_code == "sample":
            if eps is None:
                raise ValueError("shape_code 'sample' needs the VAE noise eps from encode()")
            return mu + torch.exp(0.5 * self.encoder.logvar_fc(latent)) * eps
        raise ValueError(f"unknown UMR shape code {self.shape_code!r}; use 'mean' or 'sample'")

    def decode_shape(self, latent: torch.Tensor, state: dict | None = None) -> torch.Tensor:
        """V = mean_v + sym(shape(μ or sample)): (B,642,3) in UMR's object frame."""
        code = self.shape_code_of(latent, (state or {}).get("eps"))
        delta = self.shape_predictor.pred_layer(code).reshape(latent.shape[0], -1, 3)
        return self.symmetrize(self.mean_v.unsqueeze(0) + delta)

    def texture_flow(self, latent: torch.Tensor) -> torch.Tensor:
        return self.texture_predictor(latent, self.uv_sampler[0])

    def mean_shape(self) -> torch.Tensor:
        return self.symmetrize(self.mean_v.unsqueeze(0))[0]
