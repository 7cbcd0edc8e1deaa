"""The report's tables: the wide numeric table (CSV/JSON, data first) and its display form (terminal,
Markdown through ``DataFrame.to_markdown``, LaTeX through ``Styler.to_latex`` with LaTeX escaping).

Display cells: ``mean [low, high]`` (the 95 % CI) for per-instance quantities, the value (and its CI
when ``bench eval --fid-bootstrap`` wrote one) for corpus metrics, ``–`` for a missing value. Numbers
have 4 significant digits; values of 10⁶ and more are written in scientific notation.
"""
from __future__ import annotations

import math

from bench.reporting.frames import is_number
from bench.store import strict_json

MISSING = "–"


def fmt(v) -> str:
    """A number for people: 4 significant digits, scientific from 1e6, ``–`` for NaN/None."""
    if v is None:
        return MISSING
    if isinstance(v, float) or (is_number(v) and not isinstance(v, int)):
        v = float(v)
        if not math.isfinite(v):
            return MISSING
        return f"{v:.4g}" if abs(v) < 1e6 else f"{v:.3e}"
    return str(v)


def fmt_ci(mean, low, high) -> str:
    if not is_number(mean) or not math.isfinite(float(mean)):
        return MISSING
    if is_number(low) and is_number(high) and math.isfinite(float(low)) and math.isfinite(float(high)):
        return f"{fmt(mean)} [{fmt(low)}, {fmt(high)}]"
    return fmt(mean)


def summary_table(stats, corpus: dict[tuple[int, str], dict[str, float]], runs, quantities):
    """The wide numeric table: one row per (run, method) with n, failed, ``<q>_mean``, ``<q>_ci_low``,
    ``<q>_ci_high``, ``<q>_median`` per quantity and the corpus columns (FID's ``<col>_ci_low/high``)."""
    import pandas as pd

    rows = []
    label = {r.key: r for r in runs}
    for (key, method), grp in stats.groupby(["run_key", "method"], sort=False):
        run = label[key]
        first = grp.iloc[0]
        row = {"run": run.label, "run_id": run.run_id, "dataset": run.dataset, "method": method,
               "n": int(grp["n"].max()), "failed": int(first["failed"])}
        for q in quantities:
            hit = grp[grp.quantity == q.name]
            if hit.empty:
                continue
            s = hit.iloc[0]
            for part in ("mean", "ci_low", "ci_high", "median"):
                row[f"{q.name}_{part}"] = s[part]
        row.update(corpus.get((key, method), {}))
        rows.append(row)
    return pd.DataFrame(rows)


def display_table(table, quantities, corpus_names: list[str], several: bool, labels: dict):
    """Strings for people: run (if several), method, n, failed, one column per quantity and corpus metric."""
    import pandas as pd

    rows = []
    for _, r in table.iterrows():
        row = {"run": r["run"]} if several else {}
        row.update({"method": r["method"], "n": str(r["n"]), "failed": str(r["failed"])})
        for q in quantities:
            if q.shown and f"{q.name}_mean" in table:
                row[q.axis_label] = fmt_ci(r.get(f"{q.name}_mean"), r.get(f"{q.name}_ci_low"), r.get(f"{q.name}_ci_high"))
        for name in corpus_names:
            if name in {q.name for q in quantities}:
                continue  # summarised from its per-instance values (with a CI) already
            row[name] = fmt_ci(r.get(name), r.get(f"{name}_ci_low"), r.get(f"{name}_ci_high"))
        row["labels"] = labels.get((r["run"], r["method"]), "")
        rows.append(row)
    return pd.DataFrame(rows)


def comparison_table(comp, quantity: str, baseline: str | None):
    """The compact "A vs B" table of one quantity: rows A, columns B (or one column: vs the baseline),
    cells ``Δ [low, high] p=…`` with Δ = mean(A − B) on the common instances (n in the cell)."""
    import pandas as pd

    part = comp[comp.quantity == quantity]
    if part.empty:
        return pd.DataFrame()
    cells: dict[str, dict[str, str]] = {}
    for _, c in part.iterrows():
        p = "" if not math.isfinite(c["p_value"]) else f" p={c['p_value']:.2g}"
        text = f"{signed(c['diff'])} [{signed(c['ci_low'])}, {signed(c['ci_high'])}]{p} n={c['n']}"
        column = f"vs {c['b']}" if baseline else c["b"]
        cells.setdefault(c["a"], {})[column] = text
    frame = pd.DataFrame.from_dict(cells, orient="index").fillna("")
    frame.index.name = f"{quantity}: A" if not baseline else quantity
    return frame.reset_index()


def signed(v) -> str:
    """A difference with its sign (``+0.01``, ``-0.02``, ``0``)."""
    return MISSING if not is_number(v) or not math.isfinite(v) else ("+" if v > 0 else "") + fmt(float(v))


def to_markdown(df) -> str:
    """GitHub Markdown through pandas (tabulate)."""
    return df.to_markdown(index=False) + "\n" if not df.empty else "(empty)\n"


LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def escape_latex(text: str) -> str:
    """``text`` with LaTeX's ten special characters escaped (for the notes under a table; cells and
    headers go through pandas' own ``escape="latex"``)."""
    return "".join(LATEX_SPECIALS.get(ch, ch) for ch in str(text))


def to_latex(df, notes: list[str] = ()) -> str:
    """A booktabs ``tabular`` through ``Styler.to_latex`` (cells and headers escaped by pandas), with
    ``notes`` (protocol warnings) as full-width rows under the bottom rule."""
    text_cols = {"run", "method", "labels"}
    spec = "".join("l" if c in text_cols else "r" for c in df.columns)
    styler = df.style.hide(axis="index").format(escape="latex").format_index(escape="latex", axis=1)
    body = styler.to_latex(column_format=spec, hrules=True)
    if notes:
        rows = "".join(f"\\multicolumn{{{len(df.columns)}}}{{l}}{{\\footnotesize {escape_latex(n)}}} \\\\\n"
                       for n in notes)
        body = body.replace("\\end{tabular}", rows + "\\end{tabular}")
    return body


def table_json(df) -> list[dict]:
    """Records of a DataFrame as strict JSON values, full precision (NaN and pandas' NA → null)."""
    import pandas as pd

    def value(v):
        v = v.item() if hasattr(v, "item") else v
        return None if v is pd.NA else v

    return strict_json([{str(k): value(v) for k, v in row.items()} for row in df.to_dict("records")])
