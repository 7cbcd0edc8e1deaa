"""Config dataclasses: profiles, ``--set key=value`` overrides, and their JSON form.

One dataclass per component; its fields are the only hyper-parameters, with their defaults,
so the same table drives the CLI (``--set``), the run manifest and the docs.
"""
from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any

from bench.errors import UserError, did_you_mean


def _coerce(value: str, annotation, field_name: str):
    """Parse a CLI string into the type of a dataclass field (bool, int, float, str, list, tuple)."""
    hint = annotation if not isinstance(annotation, str) else None
    text = value.strip()
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError:
        parsed = text
    if hint is None:
        return parsed
    origin = typing.get_origin(hint)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if origin is typing.Union and len(args) == 1:
        if parsed is None or text.lower() == "none":
            return None
        return _coerce(value, args[0], field_name)
    if hint is bool:
        if isinstance(parsed, bool):
            return parsed
        if text.lower() in ("true", "yes", "on", "1"):
            return True
        if text.lower() in ("false", "no", "off", "0"):
            return False
        raise UserError(f"{field_name} expects true/false, got {value!r}")
    if hint in (int, float):
        try:
            return hint(parsed) if not isinstance(parsed, bool) else hint(int(parsed))
        except (TypeError, ValueError):
            raise UserError(f"{field_name} expects a {hint.__name__}, got {value!r}") from None
    if origin in (list, tuple):
        items = parsed if isinstance(parsed, list) else [p for p in text.strip("[]()").split(",") if p.strip()]
        inner = (typing.get_args(hint) or (str,))[0]
        out = [_coerce(str(i), inner, field_name) for i in items]
        return tuple(out) if origin is tuple else out
    if hint is str:
        return text
    return parsed


def _hints(cls) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - forward refs we cannot resolve: keep raw strings
        return {f.name: f.type for f in dataclasses.fields(cls)}


def build_config(cls, profile: str | None = None, profiles: dict | None = None,
                 overrides: dict[str, str] | None = None, owner: str = ""):
    """Instantiate dataclass ``cls`` from defaults, then the named profile, then string overrides."""
    values: dict[str, Any] = {}
    if profile:
        table = profiles or {}
        if profile not in table and profile != "paper":
            raise UserError(f"unknown profile {profile!r} for {owner or cls.__name__}{did_you_mean(profile, table)}")
        values.update(table.get(profile, {}))
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key, raw in (overrides or {}).items():
        if key not in names:
            raise UserError(f"unknown option {owner + '.' if owner else ''}{key}{did_you_mean(key, names)}")
        values[key] = _coerce(raw, hints.get(key), f"{owner}.{key}" if owner else key)
    return cls(**values)


def parse_sets(items) -> dict[str, dict[str, str]]:
    """``["ours.eps_s=0.95", "synthetic.n=4"]`` -> ``{"ours": {"eps_s": "0.95"}, "synthetic": {"n": "4"}}``."""
    out: dict[str, dict[str, str]] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        owner, dot, field = key.strip().partition(".")
        if not sep or not dot or not field:
            raise UserError(f"--set expects OWNER.KEY=VALUE (e.g. ours.iterations=[5,5,5,5]), got {item!r}")
        out.setdefault(owner, {})[field] = value
    return out


def config_to_dict(config) -> dict[str, Any]:
    """JSON-ready dict of a config dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))
