"""Safe reading of weight and checkpoint files, and strict loading of state dicts into modules.

The one home for "read a ``.pth`` the user gave and put it into a network". Every weights file of
the project (generator checkpoints, CMR/UMR checkpoints, VGG19, AlexNet, Inception, CUB's
``cmr_pred_cam.pth``) goes through :func:`load_file`, which calls
``torch.load(path, map_location="cpu", weights_only=True)``: tensors and plain containers are
rebuilt, nothing else is ever unpickled, so a crafted file cannot run code. Every failure is a
one-line :class:`bench.errors.UserError` naming the file and what to do:

* missing file, truncated or damaged archive, not a PyTorch file;
* a pickled object that is not data (a class or function such as ``builtins.exec``): refused, and
  the message says that nothing in it was run;
* not a state dict (a list, a tensor), keys that are not parameter names, no tensors;
* keys or shapes that do not fit the model (:func:`check_state_dict`): the first few missing /
  unexpected keys and shape mismatches ``key: file (a, b) vs model (c, d)``.

Allow-listed globals beyond tensors and containers (passed as ``allow`` by the callers that need
them, never registered process-wide): :func:`numpy_globals` — ``numpy.dtype``, the numpy dtype
classes and ``numpy.core.multiarray.scalar`` (numpy scalars in the training curves of the official
MeshInversion ``checkpoint_latest.pth``), plus ``numpy.ndarray`` and
``numpy.core.multiarray._reconstruct`` with ``arrays=True`` (arrays in CUB's ``cmr_pred_cam.pth``).
These rebuild plain numeric data only.

``encoding="latin1"`` is retried for Python-2 pickles (CMR's ``pred_net_500.pth``, PyTorch 0.3).
"""
from __future__ import annotations

import contextlib
import os
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from bench.errors import UserError

#: how many key names an error message lists per category
MAX_LISTED = 4


def short_list(items: list[str], limit: int = MAX_LISTED) -> str:
    """``a, b, c, d (+N more)``: the first ``limit`` items of a list for a one-line message."""
    shown = ", ".join(items[:limit])
    return shown + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


def _first_line(text: str, limit: int = 160) -> str:
    line = next((ln.strip() for ln in str(text).splitlines() if ln.strip()), "")
    line = re.sub(r"\x1b\[[0-9;]*m", "", line)
    return line if len(line) <= limit else line[:limit - 3] + "..."


def numpy_globals(arrays: bool = False) -> list:
    """The numpy names a weights-only load needs for pickled numpy scalars (and, with ``arrays``,
    numpy arrays): plain numeric data, no code."""
    import numpy as np

    core = getattr(np, "_core", None) or np.core  # numpy 2 / numpy 1
    names = [core.multiarray.scalar, np.dtype]
    names += [type(np.dtype(t)) for t in ("float16", "float32", "float64", "int32", "int64", "uint8", "bool")]
    if arrays:
        names += [np.ndarray, core.multiarray._reconstruct]
    return names


def _describe_load_error(err: Exception) -> str:
    """What went wrong in ``torch.load``, as a phrase (no trailing period)."""
    text = str(err)
    refused = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if refused:
        return (f"it holds a pickled {refused.group(1)!s} object, not tensor data; it was refused unread "
                f"(weights_only=True, nothing in the file was run)")
    if "Weights only load failed" in text:
        detail = re.search(r"WeightsUnpickler error: \s*(.+)", text)
        why = f" ({_first_line(detail.group(1), 80)})" if detail else ""
        return f"it is not a PyTorch weights file (damaged, or not written by torch.save){why}"
    if isinstance(err, EOFError) or "Ran out of input" in text:
        return "it is truncated (the data ends early)"
    if "PytorchStreamReader" in text or "zip archive" in text:
        return "it is truncated or damaged (its zip archive cannot be read)"
    if isinstance(err, OSError):
        return f"{err.strerror or _first_line(text)}"
    return f"{type(err).__name__}: {_first_line(text)}"


def load_file(path: str | os.PathLike, what: str, *, hint: str = "", allow: Iterable = (),
              mmap: bool = False) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with one-line errors.

    Args:
        path: the file.
        what: what the file is, for messages (``"generator checkpoint"``, ``"FID weights"``).
        hint: what the user should do, appended to every message (``"pass the released ... file"``).
        allow: extra globals to allow-list for this load only (see :func:`numpy_globals`).
        mmap: memory-map zip-format files (only the tensors used are read); ignored for legacy files.
    Returns:
        the loaded object (tensors, containers, allowed globals).
    Raises:
        UserError: missing, unreadable, truncated, not a torch file, or a pickled object that is not data.
    """
    path = Path(path)
    tail = f"; {hint}" if hint else ""
    if not path.is_file():
        raise UserError(f"{what} {path} not found{tail}")
    allow = list(allow)
    kwargs: dict = {"map_location": "cpu", "weights_only": True}
    try:
        with open(path, "rb") as fh:
            is_zip = fh.read(4) == b"PK\x03\x04"
    except OSError as err:
        raise UserError(f"cannot read {what} {path}: {_describe_load_error(err)}{tail}") from None
    if mmap and is_zip:
        kwargs["mmap"] = True
    try:
        with (torch.serialization.safe_globals(allow) if allow else contextlib.nullcontext()):
            try:
                return torch.load(path, **kwargs)
            except UnicodeDecodeError:  # a Python-2 pickle (PyTorch 0.3 era)
                return torch.load(path, encoding="latin1", **kwargs)
    except Exception as err:  # noqa: BLE001 - every unreadable file is the user's to fix
        raise UserError(f"cannot read {what} {path}: {_describe_load_error(err)}{tail}") from None


def unwrap(obj: Any, wrappers: Iterable[str] = ()) -> Any:
    """The mapping under the first of ``wrappers`` present in a dict ``obj`` (else ``obj``)."""
    if isinstance(obj, Mapping):
        for key in wrappers:
            if key in obj and isinstance(obj[key], Mapping):
                return obj[key]
    return obj


def require_string_keys(state: Mapping, source: str, hint: str = "") -> None:
    """Raise a one-line `UserError` unless every key of ``state`` is a parameter name (a str)."""
    bad = next((k for k in state if not isinstance(k, str)), None)
    if bad is not None:
        raise UserError(f"{source} is not a state dict: key {bad!r} ({type(bad).__name__}) is not a parameter "
                        f"name (expected a mapping of str names to tensors){'; ' + hint if hint else ''}")


def state_dict_from(obj: Any, source: str, *, wrappers: Iterable[str] = (), hint: str = "",
                    strip_prefix: str = "module.") -> "OrderedDict[str, torch.Tensor]":
    """The state dict inside a loaded object: unwrapped, str keys, tensor values only.

    Non-tensor entries (epoch counters, training curves) are dropped; a ``module.`` prefix on every
    key (DataParallel) is removed.

    Raises:
        UserError: not a mapping, a key that is not a str, or no tensors at all.
    """
    tail = f"; {hint}" if hint else ""
    obj = unwrap(obj, wrappers)
    if not isinstance(obj, Mapping):
        raise UserError(f"{source} is not a state dict: it holds a {type(obj).__name__}, expected a mapping "
                        f"of parameter names to tensors{tail}")
    require_string_keys(obj, source, hint)
    state = OrderedDict((k, v) for k, v in obj.items() if torch.is_tensor(v))
    if not state:
        found = short_list([str(k) for k in obj]) or "nothing"
        raise UserError(f"{source} holds no tensors (found {found}); expected a mapping of parameter names "
                        f"to tensors{tail}")
    if strip_prefix and all(k.startswith(strip_prefix) for k in state):
        state = OrderedDict((k[len(strip_prefix):], v) for k, v in state.items())
    return state


def read_state_dict(path: str | os.PathLike, what: str, *, wrappers: Iterable[str] = (), hint: str = "",
                    allow: Iterable = (), mmap: bool = False) -> "OrderedDict[str, torch.Tensor]":
    """:func:`load_file` then :func:`state_dict_from` (messages name ``what`` and the path)."""
    obj = load_file(path, what, hint=hint, allow=allow, mmap=mmap)
    return state_dict_from(obj, f"{what} {path}", wrappers=wrappers, hint=hint)


def _shape(t) -> str:
    return str(tuple(int(s) for s in t))


def mismatch_message(source: str, model_name: str, missing: list[str], unexpected: list[str],
                     shapes: list[tuple[str, tuple, tuple]], hint: str = "") -> str:
    """One line: ``SOURCE does not fit the MODEL: missing keys: ...; unexpected keys: ...;
    shape mismatch: key: file (a, b) vs model (c, d); HINT``."""
    parts = []
    if missing:
        parts.append(f"missing keys: {short_list(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {short_list(unexpected)}")
    if shapes:
        parts.append("shape mismatch: " + short_list([f"{k}: file {_shape(a)} vs model {_shape(b)}"
                                                      for k, a, b in shapes]))
    return f"{source} does not fit the {model_name}: " + "; ".join(parts) + (f"; {hint}" if hint else "")


def check_state_dict(state: Mapping[str, Any], expected: Mapping[str, Any] | nn.Module, source: str,
                     model_name: str, *, hint: str = "", allow_unexpected: bool = False) -> None:
    """Compare the keys and shapes of ``state`` with ``expected`` (a module or its state dict).

    Raises:
        UserError: one line naming the first few missing / unexpected keys and shape mismatches.
    """
    require_string_keys(state, source, hint)
    own = expected.state_dict() if isinstance(expected, nn.Module) else expected
    missing = [k for k in own if k not in state]
    unexpected = [] if allow_unexpected else [k for k in state if k not in own]
    shapes = [(k, tuple(state[k].shape), tuple(own[k].shape)) for k in own
              if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        raise UserError(mismatch_message(source, model_name, missing, unexpected, shapes, hint))


def load_into(module: nn.Module, state: Mapping[str, torch.Tensor], source: str, model_name: str, *,
              hint: str = "", fill_counters: bool = False) -> None:
    """:func:`check_state_dict`, then ``module.load_state_dict(strict=True)``.

    Floating tensors are cast to the parameter's dtype. ``fill_counters``: missing BatchNorm
    ``*.num_batches_tracked`` entries (files written before PyTorch 0.4) are filled with 0.
    """
    require_string_keys(state, source, hint)
    own = module.state_dict()
    state = OrderedDict(state)
    if fill_counters:
        for key, value in own.items():
            if key.endswith("num_batches_tracked") and key not in state:
                state[key] = torch.zeros_like(value)
    check_state_dict(state, own, source, model_name, hint=hint)
    cast = OrderedDict()
    for key, value in state.items():
        target = own[key]
        cast[key] = value.to(target.dtype) if value.is_floating_point() and target.is_floating_point() else value
    module.load_state_dict(cast, strict=True)


def load_state_dict_error(err: Exception, source: str, model_name: str, hint: str = "") -> UserError:
    """A one-line `UserError` from the ``RuntimeError`` of a ``load_state_dict`` we do not call ourselves
    (torch-fidelity's extractors): torch's multi-line report in :func:`mismatch_message`'s form."""
    text = str(err)
    missing = unexpected = []
    shapes = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("Missing key(s)"):
            missing = re.findall(r'"([^"]+)"', line)
        elif line.startswith("Unexpected key(s)"):
            unexpected = re.findall(r'"([^"]+)"', line)
        hit = re.match(r"size mismatch for (\S+?): copying a param with shape torch\.Size\(\[([^\]]*)\]\) from "
                       r"checkpoint, the shape in current model is torch\.Size\(\[([^\]]*)\]\)", line)
        if hit:
            dims = [tuple(int(d) for d in g.split(",") if d.strip()) for g in hit.groups()[1:]]
            shapes.append((hit.group(1), dims[0], dims[1]))
    if missing or unexpected or shapes:
        return UserError(mismatch_message(source, model_name, missing, unexpected, shapes, hint))
    return UserError(f"{source} does not fit the {model_name}: {_first_line(text)}" + (f"; {hint}" if hint else ""))


@contextlib.contextmanager
def forced_weights_only():
    """Make every ``torch.load`` in the block weights-only, including third-party calls that pass
    ``weights_only=False`` (torch-fidelity's extractors), via ``TORCH_FORCE_WEIGHTS_ONLY_LOAD``."""
    saved = {k: os.environ.get(k) for k in ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")}
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
