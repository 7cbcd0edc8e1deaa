"""The one parser of ``--device`` values (``cpu``, ``cuda``, ``cuda:K``)."""
from __future__ import annotations

import re

from bench.errors import UserError

_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")


def parse_device(text: str, *, require_visible: bool = True, option: str = "--device") -> str:
    """Normalised device string; `UserError` for a malformed value or (``require_visible``) a CUDA
    device this process cannot see."""
    value = str(text).strip().lower()
    if not _DEVICE.match(value):
        raise UserError(f"{option} must be cpu, cuda or cuda:K, got {text!r}")
    if value.startswith("cuda") and require_visible:
        import torch

        if not torch.cuda.is_available():
            raise UserError(f"{option} {value} but no CUDA device is visible; use {option} cpu")
        index = int(value.split(":")[1]) if ":" in value else 0
        if index >= torch.cuda.device_count():
            raise UserError(f"{option} {value}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    return value
