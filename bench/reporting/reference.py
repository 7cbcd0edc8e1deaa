"""Reference rows: numbers a paper reports, shown beside measured ones and never pooled with them.

``--reference paper`` reads the MeshInversion paper's numbers (``bench/reporting/data/paper.yaml``);
``--reference FILE`` reads another file of the same schema: ``name``, ``title``, ``units`` (column →
text), ``protocols`` (key → text) and ``rows``, each with ``id``, ``method``, ``dataset``, ``source``
(``document``, ``table``, ``page``), ``protocol``, ``values`` (report column → number or null: a row the
paper has whose number was not retrieved), optional ``sweep`` (field → value, matched against ``bench
sweep`` variants) and ``status``.
"""
from __future__ import annotations

import math
from pathlib import Path

from bench.errors import UserError

BUILTIN = {"paper": Path(__file__).parent / "data" / "paper.yaml"}
ROW_KEYS = {"id", "method", "dataset", "source", "protocol", "values", "sweep", "status"}


def load_reference(name_or_path: str) -> dict:
    """The reference document ``paper`` (built in) or a YAML file, validated (one-line `UserError`)."""
    import yaml

    path = BUILTIN.get(name_or_path, Path(name_or_path))
    where = f"--reference {name_or_path}"
    if name_or_path not in BUILTIN and not path.is_file():
        raise UserError(f"{where}: no such file; use `paper` or a YAML file of reference rows "
                        "(schema: bench/reporting/data/paper.yaml)")
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"{where}: cannot read it as YAML ({first})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("rows"), list) or not doc["rows"]:
        raise UserError(f"{where}: expected a mapping with a non-empty `rows` list")
    for i, row in enumerate(doc["rows"]):
        _check_row(row, f"{where}: rows[{i}]")
    doc.setdefault("name", path.stem)
    return doc


def _check_row(row, where: str) -> None:
    if not isinstance(row, dict):
        raise UserError(f"{where} is not a mapping")
    unknown = set(row) - ROW_KEYS
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(sorted(unknown))} (allowed: {', '.join(sorted(ROW_KEYS))})")
    for key in ("id", "method", "dataset", "values"):
        if key not in row:
            raise UserError(f"{where}: missing {key!r}")
    if not isinstance(row["values"], dict) or not row["values"]:
        raise UserError(f"{where} ({row['id']}): `values` must map report columns to numbers (or null)")
    for col, v in row["values"].items():
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
            raise UserError(f"{where} ({row['id']}): {col} must be a finite number or null, got {v!r}")
    if "sweep" in row and not isinstance(row["sweep"], dict):
        raise UserError(f"{where} ({row['id']}): `sweep` must map fields to values")


def source_text(row: dict) -> str:
    """``supplement Tab. 2`` / ``paper`` (+ ``p. N`` when known)."""
    src = row.get("source") or {}
    parts = [str(src.get("document") or "?")]
    if src.get("table"):
        parts.append(str(src["table"]))
    if src.get("page"):
        parts.append(f"p. {src['page']}")
    return " ".join(parts)


def value_columns(rows: list[dict]) -> list[str]:
    """The value columns of ``rows`` in first-seen order."""
    return list(dict.fromkeys(c for r in rows for c in r["values"]))


def reference_frame(doc: dict):
    """The numeric table (``reference.csv``): one row per reference row, its values in their columns
    (NaN = not retrieved), source, protocol text and status."""
    import pandas as pd

    protocols = doc.get("protocols") or {}
    rows = []
    for r in doc["rows"]:
        row = {"reference": doc["name"], "id": r["id"], "method": r["method"], "dataset": r["dataset"],
               "source": source_text(r), **{f"sweep.{k}": v for k, v in (r.get("sweep") or {}).items()}}
        row.update({c: (float("nan") if v is None else v) for c, v in r["values"].items()})
        row["protocol"] = protocols.get(r.get("protocol"), r.get("protocol"))
        row["status"] = r.get("status", "")
        rows.append(row)
    return pd.DataFrame(rows)


def shown(value) -> str:
    """A reference value exactly as the file writes it (``161.0``, ``0.752``); ``not retrieved`` for null."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "not retrieved"
    return repr(value) if isinstance(value, float) else str(value)


def display_frame(doc: dict):
    """Strings for people: label ``[paper] METHOD``, dataset, source, each value as written, status."""
    import pandas as pd

    cols = value_columns(doc["rows"])
    rows = []
    for r in doc["rows"]:
        row = {"reference": f"[{doc['name']}] {r['method']}", "dataset": r["dataset"], "source": source_text(r)}
        sweep = r.get("sweep") or {}
        if sweep:
            row["source"] += " (" + ", ".join(f"{k}={v}" for k, v in sweep.items()) + ")"
        row.update({c: (shown(r["values"][c]) if c in r["values"] else "") for c in cols})
        row["status"] = r.get("status", "")
        rows.append(row)
    return pd.DataFrame(rows)


def sweep_matches(doc: dict, assignment: dict) -> list[dict]:
    """Reference rows whose ``sweep`` equals ``assignment`` (numbers compared with a relative 1e-9)."""
    def same(a, b) -> bool:
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
            return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
        return a == b

    out = []
    for r in doc["rows"]:
        sweep = r.get("sweep") or {}
        if sweep and set(sweep) == set(assignment) and all(same(sweep[k], assignment[k]) for k in sweep):
            out.append(r)
    return out
