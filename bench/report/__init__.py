"""Reports from run directories: statistics, comparisons, what variants changed, provenance, figures.

Modules: :mod:`~bench.report.runs` (run identity and labels), :mod:`~bench.report.frames` (the
per-instance frame and corpus values), :mod:`~bench.report.stats` (bootstrap CIs, paired tests),
:mod:`~bench.report.variants` (config changes), :mod:`~bench.report.provenance` (hardware and load),
:mod:`~bench.report.tables` (CSV/JSON/Markdown/LaTeX), :mod:`~bench.report.figures`,
:mod:`~bench.report.diff` (``bench diff``), :mod:`~bench.report.build` (``bench report``).
"""
from bench.report.build import ReportOptions, build_report, compute, print_report

__all__ = ["ReportOptions", "build_report", "compute", "print_report"]
