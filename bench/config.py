"""Config dataclasses: profiles, ``--set key=value`` overrides, and their JSON form.

One dataclass per component; its fields are the only hyper-parameters, with their defaults,
so the same table drives the CLI (``--set``), the run manifest and the docs.
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any

from bench.errors import UserError, did_you_mean


#: The run-wide profiles: ``paper`` = what the released code runs, ``fast`` = CPU-friendly. A
#: component's ``profiles`` gives its field values under each; one it does not list means its defaults.
PROFILES = ("paper", "fast")


class ConfigError(UserError):
    """A config value out of range; the message starts with the field name. `build_config` prefixes
    the owner (``ours.select_num must be >= 1, got 0``)."""


def option(default=dataclasses.MISSING, help: str = "", **kwargs):  # noqa: A002 - mirrors click
    """A config field with its one-line help (read by ``bench config``, the docs and ``--help``).

    Mutable defaults (lists, dicts) become a ``default_factory`` copying them.
    """
    metadata = {**kwargs.pop("metadata", {}), "help": help}
    if isinstance(default, (list, dict, set)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=metadata, **kwargs)
    return dataclasses.field(default=default, metadata=metadata, **kwargs)


def require(ok: bool, field_name: str, expectation: str, value) -> None:
    """The one validation style of every config: raise `ConfigError` unless ``ok``.

    >>> require(3 >= 1, "select_num", "must be >= 1", 3)
    """
    if not ok:
        raise ConfigError(f"{field_name} {expectation}, got {value!r}")


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
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
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
                 overrides: dict[str, Any] | None = None, owner: str = ""):
    """Instantiate dataclass ``cls`` from defaults, then the named profile, then overrides.

    Overrides are CLI strings (parsed into the field's type) or already-typed values (from a
    ``--config`` file). The config's own ``__post_init__`` validation runs here, so every bad value
    is reported (as one line naming ``owner.field``) before a run writes anything.
    """
    values: dict[str, Any] = {}
    if profile:
        table = profiles or {}
        if profile not in table and profile not in PROFILES:
            raise UserError(f"unknown profile {profile!r} for {owner or cls.__name__}{did_you_mean(profile, table)}")
        values.update(table.get(profile, {}))
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key, raw in (overrides or {}).items():
        if key not in names:
            raise UserError(f"unknown option {owner + '.' if owner else ''}{key}{did_you_mean(key, names)}")
        label = f"{owner}.{key}" if owner else key
        values[key] = _coerce(raw if isinstance(raw, str) else json.dumps(raw), hints.get(key), label)
    try:
        return cls(**values)
    except ConfigError as err:
        raise UserError(f"{owner + '.' if owner else ''}{err}") from None
    except (TypeError, ValueError) as err:
        raise UserError(f"invalid options for {owner or cls.__name__}: {err}") from None


def type_name(hint) -> str:
    """``int``, ``float | None``, ``list[int]`` ... of a type hint, for people."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args).replace("NoneType", "None")
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(type_name(a) for a in args)}]"
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def field_table(cls, profiles: dict | None = None, profile: str | None = None) -> list[dict[str, Any]]:
    """One row per config field: name, type, default, the profile's value, one-line help."""
    hints = _hints(cls)
    chosen = (profiles or {}).get(profile or "", {})
    rows = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = None
        rows.append({"name": f.name, "type": type_name(hints.get(f.name, f.type)),
                     "default": default, "value": chosen.get(f.name, default), "help": f.metadata.get("help", "")})
    return rows


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
