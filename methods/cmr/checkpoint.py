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

from bench.errors import UserError

#: how many key names an error message lists per category
MAX_LISTED = 5


def _short(keys: list[str]) -> str:
    shown = ", ".join(keys[:MAX_LISTED])
    more = f", ... (+{len(keys) - MAX_LISTED} more)" if len(keys) > MAX_LISTED else ""
    return f"[{shown}{more}]"


def _torch_load(path: Path, what: str):
    """``torch.load(weights_only=True)`` (``encoding='latin1'`` for Python-2 pickles); one-line errors."""
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except UnicodeDecodeError:
            return torch.load(path, map_location="cpu", weights_only=True, encoding="latin1")
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        raise UserError(f"{what} file {path} could not be read as a PyTorch state dict "
                        f"({type(exc).__name__}: {first_line})") from None


def _unwrap(obj):
    """The state dict inside a ``{"state_dict"|"model"|"net": {...}}`` wrapper, else ``obj``."""
    if isinstance(obj, dict):
        for wrapper in ("state_dict", "model", "net"):
            if wrapper in obj and isinstance(obj[wrapper], dict):
                return obj[wrapper]
    return obj


def require_string_keys(state: dict, source: str) -> None:
    """Raise a one-line `UserError` unless every key of ``state`` is a parameter name (a str)."""
    bad = next((k for k in state if not isinstance(k, str)), None)
    if bad is not None:
        raise UserError(f"{source} is not a state dict: key {bad!r} ({type(bad).__name__}) is not a "
                        f"parameter name (expected a mapping of str names to tensors)")


def read_state_dict(path: str | Path, what: str = "checkpoint") -> "OrderedDict[str, torch.Tensor]":
    """Read a state dict (bare, or under ``state_dict`` / ``model``; a ``module.`` prefix is removed).

    Raises:
        UserError: missing / unreadable file, no tensors in it, or keys that are not strings.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} file {path} not found; pass an existing file")
    obj = _unwrap(_torch_load(path, what))
    if not isinstance(obj, dict) or not any(torch.is_tensor(v) for v in obj.values()):
        raise UserError(f"{what} file {path} holds no state dict (a mapping of parameter names to tensors)")
    state = OrderedDict((k, v) for k, v in obj.items() if torch.is_tensor(v))
    require_string_keys(state, f"{what} file {path}")
    if state and all(k.startswith("module.") for k in state):
        state = OrderedDict((k[len("module."):], v) for k, v in state.items())
    return state


def check_and_load(net: nn.Module, state: dict, source: str, model_name: str) -> None:
    """Compare keys and shapes, then ``load_state_dict(strict=True)``.

    Missing ``*.num_batches_tracked`` entries (PyTorch 0.3 files) are filled in with 0. Floating
    tensors are cast to the parameter's dtype.

    Raises:
        UserError: one line naming missing / unexpected / wrongly shaped keys, or non-string keys.
    """
    require_string_keys(state, source)
    own = net.state_dict()
    state = OrderedDict(state)
    for key, value in own.items():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros_like(value)
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shape = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
             if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys {_short(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys {_short(unexpected)}")
        if shape:
            parts.append(f"{len(shape)} keys with wrong shape (file vs model) {_short(shape)}")
        raise UserError(f"{source} is not a {model_name} checkpoint: " + "; ".join(parts)
                        + f" (expected {len(own)} keys as in the released {model_name} file)")
    cast = OrderedDict()
    for k, v in state.items():
        target = own[k]
        cast[k] = v.to(target.dtype) if (v.is_floating_point() and target.is_floating_point()) else v
    net.load_state_dict(cast, strict=True)


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
