"""What each variant changed: config fields of ``NAME@VARIANT`` that differ from ``NAME``, and of one
method run with different configs in different runs.

The base of a variant is ``NAME``'s config in the same run when the run has it, else ``NAME``'s
registered config at the run's profile (what ``bench run --methods NAME --profile P`` would use).
"""
from __future__ import annotations

from bench.manifest import changed_fields, lookup
from bench.methods_spec import base_name
from bench.reporting.runs import ReportRun
from bench.reporting.stats import group_name


def profile_config(name: str, profile: str | None) -> dict | None:
    """Config dict of registered method ``name`` at ``profile`` (None if it cannot be built here)."""
    from bench import registry
    from bench.config import build_config, config_to_dict
    from bench.errors import UserError

    try:
        cls = registry.load("methods", name)
        return config_to_dict(build_config(cls.Config, profile, getattr(cls, "profiles", {}), {}, name))
    except (UserError, TypeError, ValueError):
        return None


def _changes(base: dict, config: dict) -> list[dict]:
    return [{"field": f, "base_value": lookup(base, f), "value": lookup(config, f)} for f in changed_fields(base, config)]


def config_changes(runs: list[ReportRun]) -> list[dict]:
    """Rows ``{"run", "method", "base", "field", "base_value", "value"}``: per variant the fields that differ
    from its base method, and per method found in several runs the fields that differ from its config in
    the first of them (``base`` is then ``<label>/<method>``)."""
    rows = []
    first: dict[str, tuple[str, dict]] = {}
    for run in runs:
        methods = run.manifest.get("methods") or {}
        for spec, desc in methods.items():
            config = (desc or {}).get("config") or {}
            base = base_name(spec)
            if base != spec:
                base_config = (methods.get(base) or {}).get("config") or profile_config(base, run.manifest.get("profile"))
                if base_config is not None:
                    rows += [{"run": run.label, "method": spec, "base": base, **c}
                             for c in _changes(base_config, config)]
            if spec in first:
                label, earlier = first[spec]
                rows += [{"run": run.label, "method": spec, "base": f"{label}/{spec}", **c}
                         for c in _changes(earlier, config)]
            else:
                first[spec] = (run.label, config)
    return rows


def change_lines(rows: list[dict], several: bool) -> list[str]:
    """``ours@tight: xy_threshold 0.16 → 0.1`` per (run, method), fields joined by ``; ``."""
    grouped: dict[tuple[str, str, str], list[str]] = {}
    for r in rows:
        grouped.setdefault((r["run"], r["method"], r["base"]), []).append(
            f"{r['field']} {_show(r['base_value'])} → {_show(r['value'])}")
    lines = []
    for (run, method, base), parts in grouped.items():
        who = group_name(run, method, several)
        against = "" if base == base_name(method) else f" (vs {base})"
        lines.append(f"{who}{against}: " + "; ".join(parts))
    return lines


def _show(v) -> str:
    return "none" if v is None else str(v)
