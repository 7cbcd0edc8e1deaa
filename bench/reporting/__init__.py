"""Reports from run directories: statistics, comparisons, what variants changed, provenance, figures.

Modules: :mod:`~bench.reporting.runs` (run identity and labels), :mod:`~bench.reporting.frames` (the
per-instance frame and corpus values), :mod:`~bench.reporting.stats` (bootstrap CIs, paired tests),
:mod:`~bench.reporting.variants` (config changes), :mod:`~bench.reporting.provenance` (hardware and load),
:mod:`~bench.reporting.tables` (CSV/JSON/Markdown/LaTeX), :mod:`~bench.reporting.figures`,
:mod:`~bench.reporting.diff` (``bench diff``), :mod:`~bench.reporting.build` (``bench report``).
"""
from bench.reporting.build import ReportOptions, build_report, compute, print_report

__all__ = ["ReportOptions", "build_report", "compute", "print_report"]
