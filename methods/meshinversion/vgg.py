"""VGG19 up to relu3_1 for the feature-level Chamfer texture loss (spec §d, term 3).

The network is ``torchvision.models.vgg19().features[:12]`` (conv1_1 … relu3_1, two max-pools,
256 channels at H/4 × W/4), built here layer by layer with the same module indices so that
torchvision's ``features.<i>.*`` state-dict keys load unchanged (the 120M-parameter classifier is
never built). Weights are ImageNet weights read from a file, never downloaded, found by the
project's one resolver (:func:`bench.weights.resolve_weights`):

1. an explicit ``path``;
2. else the torch hub cache, ``$TORCH_HOME/hub/checkpoints/vgg19-dcbb9e9d.pth`` (where
   ``torchvision.models.vgg19(weights=...)`` puts it);
3. else :class:`bench.errors.UserError` (:func:`bench.weights.missing_weights_error`).

Tests use :func:`vgg_from_fixture`, the random weights stored in ``loss_fixtures.npz``.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from bench.checkpoints import check_state_dict, read_state_dict, require_string_keys
from bench.errors import UserError
from bench.weights import hub_checkpoint_dir, missing_weights_error, resolve_weights

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "VGG19_FILENAME",
    "VGG19_URL",
    "VGGRelu31",
    "default_vgg19_path",
    "load_vgg19_relu3_1",
    "vgg_from_fixture",
    "vgg_preprocess",
]

VGG19_FILENAME = "vgg19-dcbb9e9d.pth"
VGG19_URL = f"https://download.pytorch.org/models/{VGG19_FILENAME}"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# torchvision vgg19 ("E") features[:12]: (index, in, out) of the convolutions; ReLU after each,
# max-pool at 4 and 9.
_CONVS = ((0, 3, 64), (2, 64, 64), (5, 64, 128), (7, 128, 128), (10, 128, 256))
_POOLS = (4, 9)
N_LAYERS = 12
_HINT = f"pass torchvision's ImageNet {VGG19_FILENAME} (a state dict with features.<i>.weight/bias)"
_KEY = re.compile(r"^(?:features\.|vgg_slice\d+\.)?(\d+)\.(weight|bias)$")


def default_vgg19_path() -> Path:
    """Where torchvision keeps the file: ``$TORCH_HOME/hub/checkpoints/vgg19-dcbb9e9d.pth``."""
    return hub_checkpoint_dir() / VGG19_FILENAME


def vgg_preprocess(image: Tensor, mask: Tensor) -> Tensor:
    """Official input transform: ``((x/2 + 0.5) − mean)/std``, then multiplied by the mask.

    image (B, 3, H, W) in [−1, 1]; mask (B, 1, H, W) (or (B, H, W)) -> (B, 3, H, W).
    Masked-out pixels are 0 in normalised space.
    """
    if mask.dim() == 3:
        mask = mask.unsqueeze(1)
    mean = torch.tensor(IMAGENET_MEAN, dtype=image.dtype, device=image.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=image.dtype, device=image.device).view(1, 3, 1, 1)
    return ((image / 2 + 0.5) - mean) / std * mask


class VGGRelu31(nn.Module):
    """Frozen VGG19 ``features[:12]``; ``forward(image, mask)`` applies :func:`vgg_preprocess`.

    image (B, 3, H, W) in [−1, 1], mask (B, 1, H, W) -> relu3_1 features (B, 256, H/4, W/4).
    Parameters have ``requires_grad=False``; gradients still flow to the image (and mask).
    """

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        convs = {i: (cin, cout) for i, cin, cout in _CONVS}
        i = 0
        while i < N_LAYERS:
            if i in convs:
                layers += [nn.Conv2d(*convs[i], kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                i += 2
            else:
                assert i in _POOLS
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                i += 1
        self.features = nn.Sequential(*layers)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "VGGRelu31":  # always eval: no dropout/BN anyway
        return super().train(False)

    def features_of(self, x: Tensor) -> Tensor:
        """Raw network on already-preprocessed input x (B, 3, H, W) -> (B, 256, H/4, W/4)."""
        return self.features(x)

    def forward(self, image: Tensor, mask: Tensor) -> Tensor:
        return self.features(vgg_preprocess(image, mask))

    def load_features_state_dict(self, state: Mapping[str, Tensor], source: str = "state dict") -> None:
        """Load conv weights from ``features.<i>.{weight,bias}`` / ``<i>.{weight,bias}`` keys.

        Also accepts the official sliced names ``vgg_slice<k>.<i>.*`` (as in loss_fixtures.npz).
        Missing keys or wrong shapes raise :class:`UserError`.
        """
        require_string_keys(state, f"VGG19 weights {source}", _HINT)
        own = {f"features.{k}": v for k, v in self.features.state_dict().items()}
        found: dict[str, Tensor] = {}
        for key, value in state.items():
            hit = _KEY.match(key)
            name = f"features.{hit[1]}.{hit[2]}" if hit else None
            if name in own:
                try:
                    found[name] = value if isinstance(value, Tensor) else torch.as_tensor(np.asarray(value))
                except (TypeError, ValueError, RuntimeError):
                    raise UserError(f"VGG19 weights {source}: {key} is a {type(value).__name__}, not a tensor; "
                                    f"{_HINT}") from None
        check_state_dict(found, own, f"VGG19 weights {source}", "VGG19 relu3_1 features", hint=_HINT,
                         allow_unexpected=True)
        self.features.load_state_dict({k[len('features.'):]: v.to(own[k].dtype) for k, v in found.items()})


def load_vgg19_relu3_1(path: str | Path | None = None, *, device: torch.device | str = "cpu",
                       option: str = "path",
                       disable_hint: str = "or turn the feature term off (LossConfig.feat_loss=False)"
                       ) -> VGGRelu31:
    """VGG19 relu3_1 with torchvision ImageNet weights read from ``path`` or the hub cache.

    Never downloads. A missing file raises a one-line :class:`UserError` saying where to put it
    (``option`` names how the caller sets the path; ``disable_hint`` ends the message).
    """
    target = resolve_weights(path, (VGG19_FILENAME,), option=option)
    if target is None:
        raise missing_weights_error(f"VGG19 ImageNet weights {default_vgg19_path()} (from {VGG19_URL})",
                                    VGG19_FILENAME, option, extra=disable_hint)
    # zip-format files are memory-mapped: the 120M classifier weights are never read
    state = read_state_dict(target, "VGG19 weights", hint=_HINT, mmap=True)
    model = VGGRelu31()
    model.load_features_state_dict(state, source=str(target))
    return model.to(device)


def vgg_from_fixture(npz: str | Path | Mapping[str, np.ndarray], *, device: torch.device | str = "cpu"
                     ) -> VGGRelu31:
    """VGG19 relu3_1 with the random weights ``vgg_slice*`` stored in ``loss_fixtures.npz``."""
    data = np.load(npz) if isinstance(npz, (str, Path)) else npz
    state = {k: torch.from_numpy(np.asarray(data[k])) for k in data.keys() if k.startswith("vgg_slice")}
    model = VGGRelu31()
    model.load_features_state_dict(state, source="loss fixture")
    return model.to(device)
