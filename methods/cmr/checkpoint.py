"""Strict loading of the released CMR / UMR checkpoints, with one-line errors.

* CMR's ``pred_net_500.pth`` is a bare state dict written by PyTorch 0.3 under Python 2 (legacy
  format, no ``num_batches_tracked``); it is read with ``weights_only=True`` (``encoding='latin1'``
  as a fallback) and the missing BatchNorm counters are filled in with 0.
* UMR's ``pred_net_latest.pth`` carries a ``uv_sampler`` buffer whose first dimension is the
  training batch size: the model's buffer is resized to it first (``resize_uv_sampler_``).

A file whose keys or shapes do not match raises `bench.errors.UserError` with one line naming the
mismatched keys (lists truncated).
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from bench.checkpoints import load_into, require_string_keys
from bench.checkpoints import read_state_dict as _read_state_dict

__all__ = ["read_state_dict", "check_and_load", "load_state", "load_checkpoint", "require_string_keys"]

#: wrappers a training script may have put the state dict under
WRAPPERS = ("state_dict", "model", "net")


def _hint(what: str) -> str:
    return f"pass the released {what} file (a torch.save'd state dict)"


def read_state_dict(path: str | Path, what: str = "checkpoint") -> "OrderedDict[str, torch.Tensor]":
    """Read a state dict (bare, or under ``state_dict`` / ``model`` / ``net``; a ``module.`` prefix is
    removed) with ``torch.load(weights_only=True)`` (``encoding='latin1'`` retried for Python-2 pickles),
    through :func:`bench.checkpoints.read_state_dict`.

    Raises:
        UserError: missing / unreadable file, a pickled object that is not data, no tensors in it,
            or keys that are not strings.
    """
    return _read_state_dict(path, f"{what} file", wrappers=WRAPPERS, hint=_hint(what))


def check_and_load(net: nn.Module, state: dict, source: str, model_name: str) -> None:
    """Compare keys and shapes, then ``load_state_dict(strict=True)``.

    Missing ``*.num_batches_tracked`` entries (PyTorch 0.3 files) are filled in with 0. Floating
    tensors are cast to the parameter's dtype.

    Raises:
        UserError: one line naming missing / unexpected / wrongly shaped keys, or non-string keys.
    """
    load_into(net, state, source, f"{model_name} network", fill_counters=True,
              hint=f"expected {len(net.state_dict())} keys as in the released {model_name} file")


def load_state(net: nn.Module, state: dict, source: str, model_name: str) -> dict:
    """Load an in-memory state dict strictly into ``net``; returns facts for the record.

    For models with ``resize_uv_sampler_`` (UMR) the buffer is sized from the state dict first.
    """
    require_string_keys(state, source)
    info: dict = {"keys": len(state),
                  "had_num_batches_tracked": any(k.endswith("num_batches_tracked") for k in state)}
    sampler = state.get("uv_sampler")
    if hasattr(net, "resize_uv_sampler_") and torch.is_tensor(sampler) and sampler.dim() == 4:
        net.resize_uv_sampler_(sampler.shape[0])
        info["uv_sampler_batch"] = int(sampler.shape[0])
    check_and_load(net, state, source, model_name)
    return info


def load_checkpoint(net: nn.Module, path: str | Path, model_name: str) -> dict:
    """Read ``path`` (see :func:`read_state_dict`) and :func:`load_state` it into ``net``."""
    state = read_state_dict(path, what=f"{model_name} checkpoint")
    return load_state(net, state, str(path), model_name)
