"""The perceptual texture distance of CMR and UMR (``shared/spec/baselines.md`` §3).

Both use the *uncalibrated* AlexNet distance of PerceptualSimilarity (``model='net'``): relu1..relu5
features of the ImageNet AlexNet, channel-normalised, d = Σ_l (1 − mean_hw Σ_c f̂₀·f̂₁). That is
``lpips.LPIPS(net='alex', lpips=False)`` × 0.5 (LPIPS sums (f̂₀ − f̂₁)² = 2 − 2cos).

Weights are never downloaded. ``lpips`` is built with ``pnet_rand=True`` (no torchvision download)
and the torchvision AlexNet state dict is loaded from, in order:

1. an explicit path (config ``perceptual_weights``);
2. the torch hub cache: ``$TORCH_HOME/hub/checkpoints/alexnet-owt-7be5be79.pth`` (or the older
   ``alexnet-owt-4df8aa71.pth``), looked up by :func:`bench.weights.resolve_weights`;
3. only when allowed (untrained baselines): seeded random AlexNet weights, labelled
   ``perceptual-random-alexnet``.

With a real checkpoint and no weights file, :func:`build_perceptual` raises the one-line
:func:`bench.weights.missing_weights_error` saying where to put the file.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from bench.errors import UserError
from bench.weights import missing_weights_error, resolve_weights

ALEXNET_FILES = ("alexnet-owt-7be5be79.pth", "alexnet-owt-4df8aa71.pth")
#: torchvision ``features`` index -> lpips slice holding it
_SLICE_OF = {0: 1, 3: 2, 6: 3, 8: 4, 10: 5}
RANDOM_LABEL = "perceptual-random-alexnet"


def find_alexnet_weights(explicit: str | None, owner: str = "cmr-tto") -> Path | None:
    """The AlexNet file to load: ``explicit`` (must exist), else the hub cache's, else None."""
    return resolve_weights(explicit, ALEXNET_FILES, option=f"{owner}.perceptual_weights")


class AlexPerceptual(nn.Module):
    """d(x, y) per image, x and y in [0,1] (B,3,H,W) -> (B,). Frozen, eval mode."""

    def __init__(self, lpips_model: nn.Module, source: str):
        super().__init__()
        self.lpips = lpips_model
        self.source = source
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return 0.5 * self.lpips(x, y, normalize=True).reshape(x.shape[0])

    def train(self, mode: bool = True):  # always eval (no dropout, nothing to train)
        return super().train(False)


def _lpips_model(seed: int) -> nn.Module:
    import lpips

    with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
        warnings.simplefilter("ignore")
        torch.manual_seed(int(seed))
        return lpips.LPIPS(net="alex", lpips=False, pnet_rand=True, verbose=False)


def load_alexnet_features(model: nn.Module, path: str | Path) -> None:
    """Copy torchvision AlexNet ``features.*`` weights from ``path`` into an lpips model."""
    from bench.methods.cmr.checkpoint import read_state_dict

    state = read_state_dict(path, what="AlexNet weights")
    own = model.net.state_dict()
    mapped = {}
    for idx, sl in _SLICE_OF.items():
        for kind in ("weight", "bias"):
            key = f"features.{idx}.{kind}"
            if key not in state:
                raise UserError(f"AlexNet weights {path} lack {key}; expected torchvision's "
                                f"alexnet state dict ({ALEXNET_FILES[0]})")
            target = f"slice{sl}.{idx}.{kind}"
            if tuple(state[key].shape) != tuple(own[target].shape):
                raise UserError(f"AlexNet weights {path}: {key} has shape {tuple(state[key].shape)}, "
                                f"expected {tuple(own[target].shape)}")
            mapped[target] = state[key].float()
    model.net.load_state_dict(mapped, strict=True)


def build_perceptual(weights: str | None, allow_random: bool, seed: int = 0,
                     owner: str = "cmr-tto") -> AlexPerceptual:
    """Build the frozen perceptual distance.

    Args:
        weights: explicit torchvision AlexNet state-dict path, or None (hub cache, then random).
        allow_random: fall back to seeded random weights when no file is found (untrained runs).
        seed: seed of the random fallback (the config's ``weights_seed``; not per-instance).
        owner: method name for the error message.
    Returns:
        `AlexPerceptual`; its ``source`` is the file used or ``"random(seed=N)"``.
    Raises:
        UserError: no weights found and random ones are not allowed, or a bad file.
    """
    path = find_alexnet_weights(weights, owner)
    if path is None and not allow_random:
        raise missing_weights_error(f"{owner}'s perceptual-loss weights (torchvision ImageNet AlexNet)",
                                    ALEXNET_FILES[0], f"--set {owner}.perceptual_weights")
    model = _lpips_model(seed)
    if path is None:
        return AlexPerceptual(model, f"random(seed={int(seed)})")
    load_alexnet_features(model, path)
    return AlexPerceptual(model, str(path))
