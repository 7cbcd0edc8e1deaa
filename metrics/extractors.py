"""Feature extractors for FID/KID, run through torch-fidelity.

Two Inception-v3 extractors are registered with torch-fidelity under distinct names (its feature
cache key does not include the weights file, so two networks must never share a name):

==========================  ===============================  ============================================
``--fid-extractor``          torch-fidelity name              network, preprocessing, weights file
==========================  ===============================  ============================================
``standard``                 ``inception-v3-compat``          TF-ported FID Inception (torch-fidelity's own):
                                                              TF1-style bilinear resize to 299,
                                                              ``(x - 128) / 128``;
                                                              ``weights-inception-2015-12-05-6726825d.pth``
``torchvision-inception``    ``torchvision-inception``        torchvision ImageNet Inception-v3 blocks up to
                                                              the 2048-d average pool, as MeshInversion's /
                                                              ConvMesh's ``inception.py``: uint8 / 255,
                                                              ``F.interpolate(299, bilinear,
                                                              align_corners=False)``, then ``2x - 1``;
                                                              ``inception_v3_google-0cc3c7bd.pth``
==========================  ===============================  ============================================

The paper's FID_1/FID_10/FID_12 were computed with the second one; the first is the standard FID
every other paper (and torch-fidelity, pytorch-fid, clean-fid legacy-tf) reports.

Weights are never downloaded: a file given by path (``--fid-weights``) or already in the torch hub
cache (``$TORCH_HOME/hub/checkpoints/<file>``), found by :mod:`bench.weights`; otherwise a
:class:`bench.errors.UserError` says which file is missing and where it was looked for. Weight files
are read with ``torch.load(weights_only=True)`` through :mod:`bench.checkpoints` (torch-fidelity's own
``torch.load(weights_only=False)`` runs under :func:`bench.checkpoints.forced_weights_only`); a truncated,
foreign or code-carrying file is a one-line error, and so are keys or shapes that do not fit the network.

Images reach every extractor as ``uint8`` (B,3,H,W) tensors; the caller quantises them the way
the protocol says (see :mod:`bench.metrics.fid`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch_fidelity import FeatureExtractorBase, register_feature_extractor
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from bench import weights
from bench.checkpoints import (forced_weights_only, load_file, load_into, load_state_dict_error,
                               read_state_dict)
from bench.devices import parse_device
from bench.errors import UserError
from bench.manifest import sha256_file

#: torch-fidelity registry name of the torchvision (paper-parity) extractor.
TORCHVISION_INCEPTION = "torchvision-inception"


@dataclass(frozen=True)
class ExtractorSpec:
    """A user-facing extractor choice.

    Attributes:
        name: CLI name (``--fid-extractor``).
        fidelity_name: the name registered in torch-fidelity.
        weights_file: file name looked up in the torch hub cache (``None``: no weights needed).
        description: one line for docs and the metrics JSON.
    """

    name: str
    fidelity_name: str
    weights_file: str | None
    description: str


EXTRACTORS: dict[str, ExtractorSpec] = {
    "standard": ExtractorSpec(
        "standard", "inception-v3-compat", "weights-inception-2015-12-05-6726825d.pth",
        "standard FID Inception-v3 (TF-ported weights, torch-fidelity inception-v3-compat)"),
    "torchvision-inception": ExtractorSpec(
        "torchvision-inception", TORCHVISION_INCEPTION, "inception_v3_google-0cc3c7bd.pth",
        "torchvision ImageNet Inception-v3, bilinear resize to 299 and 2x-1 (MeshInversion/ConvMesh inception.py)"),
}


class TorchvisionInceptionV3(FeatureExtractorBase):
    """torchvision Inception-v3 up to the 2048-d average pool (the pre-2019 pytorch-fid wrapper
    that MeshInversion's ``lib/utils/inception.py`` uses, output block 3).

    Input: uint8 (B,3,H,W). Steps: ``x / 255`` -> bilinear resize to 299x299
    (``align_corners=False``) -> ``2x - 1`` -> Conv2d_1a ... Mixed_7c -> global average pool.
    The model's own ``forward`` (and its ``transform_input``) is bypassed, as upstream.

    Args:
        name: registry name (must match the registration).
        features_list: requested features; only ``"2048"`` is provided.
        feature_extractor_weights_path: a torchvision ``inception_v3`` state dict file
            (``inception_v3_google-0cc3c7bd.pth``: all keys incl. ``AuxLogits`` and ``fc``). Required;
            nothing is downloaded.
    """

    INPUT_IMAGE_SIZE = 299

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        import torchvision

        if feature_extractor_weights_path is None:
            raise UserError(f"the {name} feature extractor needs a weights file "
                            f"({EXTRACTORS['torchvision-inception'].weights_file}); pass --fid-weights PATH")
        net = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False)
        state = load_weights_file(feature_extractor_weights_path)
        load_into(net, state, f"FID weights file {feature_extractor_weights_path}", "torchvision inception_v3",
                  hint=f"expected torchvision's {EXTRACTORS['torchvision-inception'].weights_file}")
        self.blocks = torch.nn.Sequential(
            net.Conv2d_1a_3x3, net.Conv2d_2a_3x3, net.Conv2d_2b_3x3, torch.nn.MaxPool2d(3, 2),
            net.Conv2d_3b_1x1, net.Conv2d_4a_3x3, torch.nn.MaxPool2d(3, 2),
            net.Mixed_5b, net.Mixed_5c, net.Mixed_5d, net.Mixed_6a,
            net.Mixed_6b, net.Mixed_6c, net.Mixed_6d, net.Mixed_6e,
            net.Mixed_7a, net.Mixed_7b, net.Mixed_7c, torch.nn.AdaptiveAvgPool2d((1, 1)),
        )
        self.requires_grad_(False)
        self.eval()

    def forward(self, x):
        if not (torch.is_tensor(x) and x.dtype == torch.uint8 and x.dim() == 4 and x.shape[1] == 3):
            raise ValueError(f"expected a uint8 (B,3,H,W) tensor, got {getattr(x, 'dtype', type(x))} "
                             f"{tuple(getattr(x, 'shape', ()))}")
        x = x.float() / 255.0
        x = F.interpolate(x, size=(self.INPUT_IMAGE_SIZE, self.INPUT_IMAGE_SIZE), mode="bilinear",
                          align_corners=False)
        x = 2 * x - 1
        return (torch.flatten(self.blocks(x), 1),)

    @staticmethod
    def get_provided_features_list():
        return ("2048",)

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return {"fid": "2048", "kid": "2048", "prc": "2048"}[metric]

    @staticmethod
    def can_be_compiled():
        return True

    @staticmethod
    def get_dummy_input_for_compile():
        return (torch.rand([1, 3, 4, 4]) * 255).to(torch.uint8)


def register() -> None:
    """Register meshbench's extractors with torch-fidelity (idempotent)."""
    if TORCHVISION_INCEPTION not in FEATURE_EXTRACTORS_REGISTRY:
        register_feature_extractor(TORCHVISION_INCEPTION, TorchvisionInceptionV3)


register()


def resolve_extractor(name: str) -> tuple[str, ExtractorSpec | None]:
    """``(torch-fidelity name, spec)`` of a CLI extractor name; any extractor registered with
    torch-fidelity under its own name is accepted too (spec ``None``)."""
    if name in EXTRACTORS:
        return EXTRACTORS[name].fidelity_name, EXTRACTORS[name]
    for spec in EXTRACTORS.values():
        if spec.fidelity_name == name:
            return name, spec
    if name in FEATURE_EXTRACTORS_REGISTRY:
        return name, None
    raise UserError(f"unknown FID feature extractor {name!r}; use one of {', '.join(EXTRACTORS)} "
                    "(or a name registered with torch_fidelity.register_feature_extractor)")


def resolve_weights(name: str, weights_path: str | os.PathLike | None = None) -> Path | None:
    """The weights file for extractor ``name``: ``weights_path`` if given, else its file in the hub cache
    (through :func:`bench.weights.resolve_weights`, the one resolver).

    Raises:
        UserError: the file does not exist (the message names the file and where it was looked for).
    """
    fidelity_name, spec = resolve_extractor(name)
    path = weights.resolve_weights(weights_path, hub_files=(spec.weights_file,) if spec and spec.weights_file else (),
                                   option="--fid-weights")
    if path is not None or (spec is not None and spec.weights_file is None):
        return path
    if spec is None:
        if FEATURE_EXTRACTORS_REGISTRY[fidelity_name].__module__.startswith("torch_fidelity."):
            # torch-fidelity's other built-ins would download their weights
            raise UserError(f"feature extractor {name!r} needs its weights file given with --fid-weights PATH "
                            "(nothing is downloaded)")
        return None
    raise weights.missing_weights_error(f"FID weights for --fid-extractor {spec.name}",
                                        spec.weights_file, "--fid-weights")


_WEIGHTS_HINT = "copy the file again (is it complete?) or pass another --fid-weights PATH"


def load_weights_file(path: str | os.PathLike) -> dict:
    """The state dict in an FID weights file, read with ``torch.load(weights_only=True)`` on CPU
    (:mod:`bench.checkpoints`); a truncated, foreign or code-carrying file is a one-line `UserError`."""
    return read_state_dict(path, "FID weights file", wrappers=("state_dict",), hint=_WEIGHTS_HINT)


class FeatureExtractor:
    """A loaded torch-fidelity feature extractor (created once, used for every image set).

    Args:
        name: ``standard`` | ``torchvision-inception`` | any torch-fidelity registered name.
        weights_path: weights file; ``None`` = the hub cache file of ``name`` (never downloaded).
        device: ``"cpu"`` or ``"cuda"``.
        batch_size: images per forward pass.
        feature: feature layer (default: the extractor's default for FID, ``"2048"`` for Inception).
    """

    def __init__(self, name: str = "standard", weights_path=None, device: str = "cpu", batch_size: int = 40,
                 feature: str | None = None):
        from torch_fidelity.utils import create_feature_extractor

        self.name = name
        self.fidelity_name, self.spec = resolve_extractor(name)
        self.weights_path = resolve_weights(name, weights_path)
        self.device = parse_device(device)
        self.cuda = torch.device(self.device).type == "cuda"
        if self.cuda and torch.device(device).index is not None:
            torch.cuda.set_device(torch.device(device))  # torch-fidelity moves the network with .cuda()
        self.batch_size = int(batch_size)
        cls = FEATURE_EXTRACTORS_REGISTRY[self.fidelity_name]
        self.feature = feature or cls.get_default_feature_layer_for_metric("fid")
        kwargs = {"verbose": False}
        if self.weights_path is not None:
            kwargs["feature_extractor_weights_path"] = str(self.weights_path)
            if cls is not TorchvisionInceptionV3:  # which loads it safely itself; torch-fidelity does not
                if self.spec is not None:  # one-line errors for unreadable / unsafe / foreign files
                    load_weights_file(self.weights_path)
                else:  # a third-party extractor's own format: only readable and safe
                    load_file(self.weights_path, "FID weights file", hint=_WEIGHTS_HINT)
        # torch-fidelity's own extractors call torch.load(weights_only=False): forced weights-only here
        with forced_weights_only():
            try:
                self.module = create_feature_extractor(self.fidelity_name, [self.feature], cuda=self.cuda,
                                                       **kwargs)
            except RuntimeError as err:
                if self.weights_path is None or "state_dict" not in str(err):
                    raise
                raise load_state_dict_error(err, f"FID weights file {self.weights_path}",
                                            f"{self.fidelity_name} extractor", hint=_WEIGHTS_HINT) from None

    @cached_property
    def weights_sha256(self) -> str | None:
        """sha256 of the weights file (hashed once; part of the feature cache key and the metrics JSON)."""
        return sha256_file(self.weights_path) if self.weights_path is not None else None

    def describe(self) -> dict:
        return {
            "extractor": self.name,
            "torch_fidelity_extractor": self.fidelity_name,
            "description": self.spec.description if self.spec else "custom torch-fidelity extractor",
            "feature_layer": self.feature,
            "weights": str(self.weights_path) if self.weights_path else None,
            "weights_sha256": self.weights_sha256,
        }

    def features(self, dataset, progress: Callable[[int], None] | None = None, chunk: int | None = None):
        """Features of a dataset of uint8 (3,H,W) tensors -> (N, D) float32 CPU tensor.

        The images go through torch-fidelity's own extraction loop
        (``torch_fidelity.utils.get_featuresdict_from_dataset``) in chunks of ``chunk`` images
        (default 4 batches), calling ``progress(n_done_in_chunk)`` after each chunk.
        """
        from torch.utils.data import Subset
        from torch_fidelity.utils import get_featuresdict_from_dataset

        n = len(dataset)
        if n == 0:
            return torch.zeros(0, 0)
        chunk = chunk or 4 * self.batch_size
        parts = []
        for start in range(0, n, chunk):
            subset = Subset(dataset, range(start, min(n, start + chunk)))
            feats = get_featuresdict_from_dataset(subset, self.module, self.batch_size, self.cuda,
                                                  save_cpu_ram=not self.cuda, verbose=False)
            parts.append(feats[self.feature].float().cpu())
            if progress is not None:
                progress(len(subset))
        return torch.cat(parts, 0)
