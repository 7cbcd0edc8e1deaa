"""``bench sweep``: config fields of a method over lists of values, each combination a variant of the
method in one run directory, so sharding, resume, retries, ``bench eval`` and ``bench report`` work
unchanged (the supplement's Tab. 2 is ``--param eps_s=0.999,0.99,0.98,0.95,0.9``).

A parameter is ``[METHOD.]FIELD=V1,V2,...``; without ``METHOD.`` it belongs to ``--method``. The
parameters of one method form a grid (every combination), each combination one variant named by what it
sets: ``ours@eps_s=0.99``, ``ours@eps_s=0.99+xy_k=2``. Values are typed and range-checked by the method's
config table, exactly as ``--set`` would; a list value is written in brackets (``iterations=[5,5],[9,9]``).

What a sweep varied is recorded in the run manifest (``sweeps``), which the report reads to lay out the
sweep table: one row per value, the swept fields first (:mod:`bench.reporting.sweep`).
"""
from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from typing import Any

from bench.errors import UserError


@dataclass(frozen=True)
class Param:
    """One swept field: ``method`` (registered name), ``field`` and its typed ``values`` (in order)."""

    method: str
    field: str
    values: tuple


def split_values(text: str) -> list[str]:
    """``"0.9,0.99"`` -> ``["0.9", "0.99"]``; commas inside brackets stay (``"[1,2],[3,4]"``)."""
    out, depth, part = [], 0, []
    for ch in text:
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        if ch == "," and depth == 0:
            out.append("".join(part))
            part = []
        else:
            part.append(ch)
    out.append("".join(part))
    return [p.strip() for p in out]


def parse_param(text: str, default_method: str | None, profile: str | None,
                base_overrides: dict[str, dict] | None = None) -> Param:
    """A ``--param`` value as a :class:`Param`, each value checked by the method's config table on top
    of the profile and the method's ``--set`` values (``base_overrides``: ``{method: {field: value}}``)."""
    from bench import registry
    from bench.config import build_config

    key, sep, values = text.partition("=")
    owner, dot, field = key.strip().rpartition(".")
    method = owner if dot else default_method
    if not sep or not field:
        raise UserError(f"--param expects [METHOD.]FIELD=V1,V2,... (e.g. eps_s=0.99,0.95), got {text!r}")
    if method is None:
        raise UserError(f"--param {text}: name the method (--method ours, or METHOD.{field}=...)")
    cls = registry.load("methods", method)
    raw = split_values(values)
    if not all(raw):
        raise UserError(f"--param {text}: an empty value; give comma-separated values, e.g. {field}=0.99,0.95")
    typed = []
    for value in raw:
        over = {**(base_overrides or {}).get(method, {}), field: value}
        config = build_config(cls.Config, profile, getattr(cls, "profiles", {}), over, method)
        typed.append(getattr(config, field))
    if len({json.dumps(v, default=str) for v in typed}) != len(typed):
        raise UserError(f"--param {text}: a value is given twice")
    return Param(method, field, tuple(typed))


def value_text(value: Any) -> str:
    """A value as it appears in a variant name: ``0.99``, ``true``, ``5-5-5-5`` (lists)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "-".join(value_text(v) for v in value)
    return str(value)


def expand(params: list[Param]) -> dict[str, dict[str, Any]]:
    """``{variant spec: {field: value}}``: per method the grid of its parameters, in the order given."""
    from bench.methods_spec import valid_spec

    by_method: dict[str, list[Param]] = {}
    for p in params:
        if any(q.field == p.field for q in by_method.get(p.method, [])):
            raise UserError(f"--param {p.method}.{p.field} is given twice; list all its values in one --param")
        by_method.setdefault(p.method, []).append(p)
    out: dict[str, dict[str, Any]] = {}
    for method, group in by_method.items():
        for combo in itertools.product(*(p.values for p in group)):
            assignment = {p.field: v for p, v in zip(group, combo)}
            spec = f"{method}@" + "+".join(f"{f}={value_text(v)}" for f, v in assignment.items())
            if not valid_spec(spec):
                raise UserError(f"sweep value {spec!r} cannot name a variant (letters, digits, - _ . = + only); "
                                "sweep a simpler value")
            out[spec] = assignment
    return out


def describe(params: list[Param], variants: dict[str, dict[str, Any]]) -> dict:
    """The manifest's record of a sweep: ``{"params": [{"method", "field", "values"}], "variants":
    {spec: {field: value}}}`` (plain JSON values)."""
    from bench.config import plain_value

    return {"params": [{"method": p.method, "field": p.field, "values": plain_value(list(p.values))} for p in params],
            "variants": {spec: plain_value(a) for spec, a in variants.items()}}
