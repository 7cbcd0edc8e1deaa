"""Method specs on the command line: ``NAME`` or ``NAME@VARIANT`` (a named config variant).

``--methods ours,ours@tight --set ours@tight.xy_threshold=0.1`` runs the registered method
``ours`` twice; records and reports use the full spec as the method name. ``bench sweep`` names its
variants by what they set: ``ours@eps_s=0.99``, ``ours@eps_s=0.99+xy_k=2`` (a grid point).
"""
from __future__ import annotations

import re

from bench import registry
from bench.errors import UserError

_SPEC = re.compile(r"^[A-Za-z0-9_\-]+(@[A-Za-z0-9_\-.=+]+)?$")


def parse_methods(text: str) -> list[str]:
    specs = [s.strip() for s in text.split(",") if s.strip()]
    if not specs:
        raise UserError("--methods is empty; name at least one method (see `bench ls methods`)")
    for spec in specs:
        if not _SPEC.match(spec):
            raise UserError(f"bad method spec {spec!r}: use NAME or NAME@VARIANT (letters, digits, - _ . = +)")
        registry.get("methods", base_name(spec))
    if len(set(specs)) != len(specs):
        raise UserError(f"--methods names a method twice: {text}")
    return specs


def valid_spec(spec: str) -> bool:
    return bool(_SPEC.match(spec))


def base_name(spec: str) -> str:
    return spec.split("@", 1)[0]
