"""Config dataclasses: profiles, ``--set key=value`` overrides, and their JSON form.

One dataclass per component; its fields are the only hyper-parameters, with their defaults,
so the same table drives the CLI (``--set``), the run manifest and the docs.
"""
from __future__ import annotations

import dataclasses
import json
import math
import numbers
import re
import types
import typing
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

from bench.errors import UserError, did_you_mean


#: The run-wide profiles: ``paper`` = what the released code runs, ``fast`` = CPU-friendly. A
#: component's ``profiles`` gives its field values under each; one it does not list means its defaults.
PROFILES = ("paper", "fast")


class ConfigError(UserError):
    """A config value out of range; the message starts with the field name. `build_config` prefixes
    the owner (``ours.select_num must be >= 1, got 0``)."""


def option(default=dataclasses.MISSING, help: str = "", *, ge=None, gt=None, le=None, lt=None,  # noqa: A002
           multiple_of: int | None = None, length: int | None = None, min_length: int | None = None,
           finite: bool = True, **kwargs):
    """A config field with its one-line help (read by ``bench config``, the docs and ``--help``).

    A numeric field (``int``, ``float``, optional, or a list/tuple of them) may state its range:
    ``ge``/``gt``/``le``/``lt`` bounds and ``multiple_of`` (for a list: of each item), ``length`` /
    ``min_length`` (list fields). :func:`check_fields` enforces it, together with the type: an ``int``
    field takes integers (an integral float such as ``3.0`` becomes ``3``; ``2.7``, NaN and infinities
    are refused) and a ``float`` field finite numbers (NaN / +-inf only with ``finite=False``).
    Mutable defaults (lists, dicts) become a ``default_factory`` copying them.
    """
    metadata = {**kwargs.pop("metadata", {}), "help": help}
    bounds = Range(ge=ge, gt=gt, le=le, lt=lt, multiple_of=multiple_of, length=length, min_length=min_length,
                   finite=finite)
    if bounds != Range():
        metadata["range"] = bounds
    if isinstance(default, (list, dict, set)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=metadata, **kwargs)
    return dataclasses.field(default=default, metadata=metadata, **kwargs)


def _num(x) -> str:
    """A bound for people: ``1``, ``0.5``, ``1e-08``, ``2^63``."""
    if isinstance(x, int) and x >= 2 ** 20 and x & (x - 1) == 0:
        return f"2^{x.bit_length() - 1}"
    return f"{x:g}" if isinstance(x, float) else str(x)


@dataclasses.dataclass(frozen=True)
class Range:
    """The allowed values of a numeric config field (of each item, for a list field); see :func:`option`."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    multiple_of: int | None = None
    length: int | None = None       # list fields: exactly this many items
    min_length: int | None = None   # list fields: at least this many items
    finite: bool = True             # float fields: refuse NaN and +-inf

    def contains(self, x) -> bool:
        """Whether number ``x`` lies within the bounds (NaN never does)."""
        return ((self.ge is None or x >= self.ge) and (self.gt is None or x > self.gt)
                and (self.le is None or x <= self.le) and (self.lt is None or x < self.lt)
                and (not self.multiple_of or x % self.multiple_of == 0))

    def bounds(self) -> str:
        """``>= 1``, ``> 0``, ``in [0, 1)``, ``>= 16 and a multiple of 4`` or ``''``."""
        lo = ("[", self.ge) if self.ge is not None else ("(", self.gt) if self.gt is not None else None
        hi = ("]", self.le) if self.le is not None else (")", self.lt) if self.lt is not None else None
        if lo and hi:
            text = f"in {lo[0]}{_num(lo[1])}, {_num(hi[1])}{hi[0]}"
        elif lo:
            text = f"{'>=' if lo[0] == '[' else '>'} {_num(lo[1])}"
        elif hi:
            text = f"{'<=' if hi[0] == ']' else '<'} {_num(hi[1])}"
        else:
            text = ""
        if self.multiple_of:
            text = (text + " and " if text else "") + f"a multiple of {self.multiple_of}"
        return text

    def length_ok(self, n: int) -> bool:
        return (self.length is None or n == self.length) and (self.min_length is None or n >= self.min_length)


@dataclasses.dataclass(frozen=True)
class NumberSpec:
    """What a numeric field accepts: its kind (int or float), container, optionality and :class:`Range`."""

    name: str
    kind: type                       # int or float
    container: type | None = None    # list, tuple or None (a scalar)
    optional: bool = False
    range: Range = Range()

    def expectation(self) -> str:
        """The full expected value for people: ``an integer >= 1``, ``2 finite numbers in [0, 1)`` ..."""
        r = self.range
        finite = "finite " if self.kind is float and r.finite else ""
        bounds = (" " + r.bounds()) if r.bounds() else ""
        if self.container is None:
            text = ("an integer" if self.kind is int else f"a {finite}number") + bounds
        else:
            plural = "integers" if self.kind is int else f"{finite}numbers"
            if r.length is not None:
                count = f"{r.length} {plural}"
            elif r.min_length:
                count = f"a non-empty list of {plural}" if r.min_length == 1 else \
                    f"a list of at least {r.min_length} {plural}"
            else:
                count = f"a list of {plural}"
            text = count + bounds
        return text + (" (or none)" if self.optional else "")

    def summary(self) -> str:
        """The range column of ``bench config``: ``>= 1``, ``4 values, each > 0``, ``finite`` or ``''``."""
        r = self.range
        bounds = r.bounds() or ("finite" if self.kind is float and r.finite else "")
        if self.container is None:
            return bounds
        parts = [f"{r.length} values" if r.length is not None else
                 "non-empty" if r.min_length == 1 else f">= {r.min_length} values" if r.min_length else ""]
        parts.append(f"each {bounds}" if bounds else "")
        return ", ".join(p for p in parts if p)

    def _fail(self, value, what: str | None = None):
        raise ConfigError(f"{self.name} must be {what or self.expectation()}, got {value!r}")

    def _number(self, value, whole):
        """One number of the field's kind, or a `ConfigError` naming the whole value ``whole``."""
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            self._fail(whole)
        if self.kind is int:
            if isinstance(value, numbers.Integral):
                return int(value)
            if not math.isfinite(value) or value != int(value):
                self._fail(whole)
            return int(value)
        value = float(value)
        if self.range.finite and not math.isfinite(value):
            self._fail(whole)
        return value

    def check(self, value):
        """``value`` checked and normalised (integral floats to int, ints to float, list/tuple as annotated)."""
        if value is None:
            if not self.optional:
                self._fail(value)
            return None
        if self.container is None:
            number = self._number(value, value)
            if not self.range.contains(number):
                self._fail(value, self.range.bounds() + (" (or none)" if self.optional else ""))
            return number
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            self._fail(value)
        items = [self._number(v, value) for v in value]
        if not self.range.length_ok(len(items)) or not all(self.range.contains(v) for v in items):
            self._fail(value)
        return self.container(items)


def number_spec(cls, f: dataclasses.Field, hints: dict | None = None) -> NumberSpec | None:
    """The :class:`NumberSpec` of field ``f`` of config ``cls``, or None for a non-numeric field.

    Its range is the field's ``option(ge=..., ...)``.
    """
    hint = (hints if hints is not None else _hints(cls)).get(f.name, f.type)
    optional = False
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if len(args) != 1:
            return None
        hint, optional = args[0], True
    container, fixed = None, None
    origin = typing.get_origin(hint)
    if origin in (list, tuple):
        inner = [a for a in typing.get_args(hint) if a is not Ellipsis]
        if not inner or any(a is not inner[0] for a in inner):
            return None
        if origin is tuple and Ellipsis not in typing.get_args(hint):
            fixed = len(inner)
        container, hint = origin, inner[0]
    if hint not in (int, float):
        return None
    rng = f.metadata.get("range", Range())
    if fixed is not None and rng.length is None:
        rng = dataclasses.replace(rng, length=fixed)
    return NumberSpec(f.name, hint, container, optional, rng)


def check_fields(config) -> None:
    """Check every numeric field of dataclass instance ``config`` against its type and range.

    Called first by each built-in config's ``__post_init__`` (cross-field checks follow there) and by
    :func:`build_config` for any config; normalises in place (``3.0`` -> ``3`` for an int field, a list
    to a tuple for a tuple field ...). Raises `ConfigError` (``select_num must be >= 1, got 0``).
    """
    cls = type(config)
    if not dataclasses.is_dataclass(cls):
        return
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        spec = number_spec(cls, f, hints)
        if spec is not None:
            object.__setattr__(config, f.name, spec.check(getattr(config, f.name)))


def require(ok: bool, field_name: str, expectation: str, value) -> None:
    """The one validation style of every config: raise `ConfigError` unless ``ok``.

    >>> require(3 >= 1, "select_num", "must be >= 1", 3)
    """
    if not ok:
        raise ConfigError(f"{field_name} {expectation}, got {value!r}")


def _coerce(value: str, annotation, field_name: str, spec: NumberSpec | None = None):
    """Parse a CLI string into the type of a dataclass field (bool, int, float, str, list, tuple).

    Numbers are parsed strictly: an int field takes ``3`` or ``3.0`` but refuses ``2.7``, ``1e400``,
    ``Infinity`` and ``nan``; a float field refuses NaN and infinities (unless ``spec`` allows them).
    ``spec`` (the field's :class:`NumberSpec`) words the error; ranges are checked by `check_fields`.
    """
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
        if parsed is None or text.lower() == "none" or (not text and args[0] in (int, float)):
            return None
        return _coerce(value, args[0], field_name, spec)
    if hint is bool:
        if isinstance(parsed, bool):
            return parsed
        if text.lower() in ("true", "yes", "on", "1"):
            return True
        if text.lower() in ("false", "no", "off", "0"):
            return False
        raise UserError(f"{field_name} expects true/false, got {value!r}")
    if hint in (int, float):
        number = parsed
        if isinstance(parsed, str):
            try:
                number = float(parsed) if hint is float else int(parsed)
            except ValueError:
                number = None
        finite = spec.range.finite if spec is not None and hint is float else True
        ok = isinstance(number, (int, float)) and not isinstance(number, bool) and (
            not finite or math.isfinite(number)) and (hint is float or number == int(number))
        if not ok:
            expected = spec.expectation() if spec is not None else ("an integer" if hint is int else "a finite number")
            raise UserError(f"{field_name} expects {expected}, got {value!r}")
        return hint(number)
    if origin in (list, tuple):
        items = parsed if isinstance(parsed, list) else [p for p in text.strip("[]()").split(",") if p.strip()]
        inner = (typing.get_args(hint) or (str,))[0]
        try:
            out = [_coerce(str(i) if not isinstance(i, float) else json.dumps(i), inner, field_name, spec)
                   for i in items]
        except UserError:
            if spec is None:
                raise
            raise UserError(f"{field_name} expects {spec.expectation()}, got {value!r}") from None
        return tuple(out) if origin is tuple else out
    if hint is str:
        return text
    return parsed


def _hints(cls) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - forward refs we cannot resolve: keep raw strings
        return {f.name: f.type for f in dataclasses.fields(cls)}


def plain_value(value: Any) -> Any:
    """A config value as the config table takes it: numpy / torch scalars and arrays become Python
    numbers and lists, paths become strings, tuples lists; strings and everything else stay."""
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, Mapping):
        return {k: plain_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_value(v) for v in value]
    if hasattr(value, "tolist"):  # numpy / torch scalars and arrays
        return plain_value(value.tolist())
    if hasattr(value, "__fspath__"):
        return str(value.__fspath__())
    return value


def build_config(cls, profile: str | None = None, profiles: dict | None = None,
                 overrides: dict[str, Any] | None = None, owner: str = ""):
    """Instantiate dataclass ``cls`` from defaults, then the named profile, then overrides.

    Overrides are CLI strings (parsed into the field's type) or already-typed values (from a
    ``--config`` file). The config's own ``__post_init__`` validation runs here, so every bad value
    is reported (as one line naming ``owner.field``) before a run writes anything. Numeric fields are
    checked by type and range (:func:`check_fields`) whether the value came as a string or typed.
    """
    values: dict[str, Any] = {}
    if profile:
        table = profiles or {}
        if profile not in table and profile not in PROFILES:
            raise UserError(f"unknown profile {profile!r} for {owner or cls.__name__}{did_you_mean(profile, table)}")
        values.update(table.get(profile, {}))
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key, raw in (overrides or {}).items():
        if key not in fields:
            raise UserError(f"unknown option {owner + '.' if owner else ''}{key}{did_you_mean(key, fields)}")
        label = f"{owner}.{key}" if owner else key
        raw = plain_value(raw)  # numpy / torch numbers, paths: as the values they stand for
        values[key] = _coerce(raw if isinstance(raw, str) else json.dumps(raw), hints.get(key), label,
                              number_spec(cls, fields[key], hints))
    try:
        config = cls(**values)
        check_fields(config)  # built-in configs did in __post_init__; a third party's may not
        return config
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
    """One row per config field: name, type, range (numeric fields), default, the profile's value, help."""
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
        spec = number_spec(cls, f, hints)
        rows.append({"name": f.name, "type": type_name(hints.get(f.name, f.type)),
                     "range": spec.summary() if spec is not None else "", "default": default,
                     "value": chosen.get(f.name, default), "help": f.metadata.get("help", "")})
    return rows


def parse_sets(items) -> dict[str, dict[str, str]]:
    """``["ours.eps_s=0.95", "synthetic.n=4"]`` -> ``{"ours": {"eps_s": "0.95"}, "synthetic": {"n": "4"}}``."""
    out: dict[str, dict[str, str]] = {}
    for item in items or ():
        # the shortest OWNER followed by .KEY= (KEY an identifier): owners may hold '.' and '=' (ours@eps_s=0.99)
        match = _SET_ITEM.match(item.strip())
        if match is None:
            raise UserError(f"--set expects OWNER.KEY=VALUE (e.g. ours.iterations=[5,5,5,5]), got {item!r}")
        owner, field, value = match.groups()
        out.setdefault(owner, {})[field] = value
    return out


_SET_ITEM = re.compile(r"^(.+?)\.([A-Za-z_][A-Za-z0-9_]*)=(.*)$", re.DOTALL)


def config_to_dict(config) -> dict[str, Any]:
    """JSON-ready dict of a config dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))
