"""``bench run --config FILE``: a run described in YAML or TOML.

The file holds the options of ``bench run`` under their long names (``methods``, ``dataset``,
``profile``, ``limit``, ``seed``, ``batch_size`` ...) and config fields under ``set`` — the same
values ``--set OWNER.KEY=VALUE`` takes::

    methods: [ours, cmr-tto]
    dataset: synthetic
    profile: fast
    set:
      ours: {select_num: 8}
      synthetic: {n: 4}

What the command line gives wins: an option given there replaces the file's, a ``--set`` key
replaces the same key of the file's ``set``. The file's path, sha256 and values are recorded in the
run manifest.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.errors import UserError, did_you_mean


def read_run_config(path: str | Path) -> dict[str, Any]:
    """The mapping in a ``.yaml``/``.yml``/``.toml`` file (or a one-line `UserError`)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise UserError(f"--config {path}: cannot read it ({err.strerror or err})") from None
    try:
        if path.suffix.lower() == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            raise UserError(f"--config {path}: use a .yaml, .yml or .toml file")
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - a parse error is the user's to fix
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"--config {path} is not valid {path.suffix[1:].upper()}: {first}") from None
    if not isinstance(data, dict):
        raise UserError(f"--config {path} must hold a mapping of bench run options, got {type(data).__name__}")
    return data


def split_run_config(data: dict[str, Any], option_names: set[str], source: str
                     ) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """``(option defaults, {owner: {field: value}})`` of a run-config mapping; unknown keys are errors."""
    options, sets = {}, {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name == "set":
            if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
                raise UserError(f"--config {source}: 'set' must map OWNER to {{KEY: VALUE}} (e.g. set: {{ours: "
                                "{select_num: 8}}})")
            sets = {str(owner): {str(k): v for k, v in fields.items()} for owner, fields in value.items()}
        elif name in option_names:
            if name == "methods" and isinstance(value, list):
                value = ",".join(map(str, value))
            options[name] = value
        else:
            raise UserError(f"--config {source}: unknown key {key!r}{did_you_mean(name, option_names | {'set'})}")
    return options, sets


def merge_sets(file_sets: dict[str, dict[str, Any]], cli_sets: dict[str, dict[str, Any]]) -> dict[str, dict]:
    """File ``set`` values overridden key by key by the command line's ``--set``."""
    out = {owner: dict(fields) for owner, fields in file_sets.items()}
    for owner, fields in cli_sets.items():
        out.setdefault(owner, {}).update(fields)
    return out
