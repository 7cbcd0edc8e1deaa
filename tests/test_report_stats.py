"""The report's statistics and writers on data made here: CI coverage, paired tests, labels, escaping."""
from __future__ import annotations

import math
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.reporting import stats
from bench.reporting.runs import parse_labels, unique_labels
from bench.reporting.tables import escape_latex, fmt, to_latex

SPECIALS = "a#b$c{d}e~f^g\\h&i%j_k"


@pytest.mark.parametrize("draw", ["normal", "exponential"])
def test_bootstrap_ci_covers_the_true_mean_at_about_the_nominal_rate(draw):
    rng = np.random.default_rng(12345)
    trials, n, hits = 200, 50, 0
    for t in range(trials):
        x = rng.normal(0.7, 0.1, n) if draw == "normal" else rng.exponential(2.0, n)
        low, high = stats.bootstrap_ci(x, resamples=1000, seed=t)
        assert low < x.mean() < high
        hits += low <= (0.7 if draw == "normal" else 2.0) <= high
    assert hits / trials >= 0.90, f"coverage {hits / trials:.3f} of a 95% interval"
    assert hits / trials <= 0.99, f"coverage {hits / trials:.3f}: the interval is far too wide"


def test_bootstrap_ci_is_seeded_and_narrows_with_n():
    rng = np.random.default_rng(0)
    x = rng.normal(size=400)
    assert stats.bootstrap_ci(x[:40], seed=3) == stats.bootstrap_ci(x[:40], seed=3)
    assert stats.bootstrap_ci(x[:40], seed=3) != stats.bootstrap_ci(x[:40], seed=4)
    w_small = np.subtract(*stats.bootstrap_ci(x[:25])[::-1])
    w_large = np.subtract(*stats.bootstrap_ci(x)[::-1])
    assert w_large < w_small / 2.5  # ~ 1/sqrt(n): sqrt(400/25) = 4


def test_degenerate_samples():
    assert all(math.isnan(v) for v in stats.bootstrap_ci([0.5]))
    assert stats.bootstrap_ci([0.5, 0.5, 0.5]) == (0.5, 0.5)
    assert all(math.isnan(v) for v in stats.bootstrap_ci([0.1, 0.2], resamples=0))
    s = stats.summarise([1.0, float("nan"), 3.0])
    assert s["n"] == 2 and s["mean"] == 2.0 and s["median"] == 2.0


def test_paired_comparison_uses_common_instances_and_gives_scipys_wilcoxon():
    from scipy.stats import wilcoxon

    rng = np.random.default_rng(7)
    ids = [f"{i:05d}" for i in range(30)]
    a = pd.Series(rng.uniform(0.6, 0.9, 30), index=ids)
    b = pd.Series(a.to_numpy() - rng.normal(0.02, 0.03, 30), index=ids)
    b = b.drop(ids[:4])          # B did not finish four instances
    a.iloc[5] = float("nan")     # A's value of another one is missing
    res = stats.paired(a, b, resamples=500)
    common = [i for i in ids[4:] if i != ids[5]]
    ref = wilcoxon(a[common].to_numpy(), b[common].to_numpy())
    assert res["n"] == len(common) == 25
    assert res["p_value"] == pytest.approx(ref.pvalue, rel=1e-12)
    assert res["statistic"] == pytest.approx(ref.statistic)
    assert res["diff"] == pytest.approx((a[common] - b[common]).mean(), rel=1e-12)
    assert res["ci_low"] < res["diff"] < res["ci_high"]
    same = stats.paired(a, a)
    assert same["diff"] == 0 and math.isnan(same["p_value"])


def test_labels_are_unique_and_given_labels_win(tmp_path):
    a, b = tmp_path / "x" / "run", tmp_path / "y" / "run"
    assert unique_labels([a, b]) == ["x/run", "y/run"]
    assert unique_labels([a, a]) == ["run#1", "run#2"]
    assert unique_labels([a, b], {str(b): "tight"}) == ["run", "tight"]
    assert parse_labels(["r=name"]) == {"r": "name"}
    from bench.errors import UserError

    with pytest.raises(UserError, match="--label RUN=NAME"):
        parse_labels(["no-equals-sign"])


def test_numbers_for_people():
    assert fmt(float("nan")) == "–" and fmt(None) == "–"
    assert fmt(0.123456) == "0.1235"
    assert fmt(1.23456789e21) == "1.235e+21"  # never a 22-digit integer


def _unescape(text: str) -> str:
    for ch, esc in sorted({"\\": r"\textbackslash ", "~": r"\textasciitilde ", "^": r"\textasciicircum "}.items()):
        text = text.replace(esc, ch)
    for ch in "&%$#_{}":
        text = text.replace("\\" + ch, ch)
    return text


def test_latex_escaping_round_trips_every_special_character():
    df = pd.DataFrame({"run": [SPECIALS], "method": ["ours@tight"], "iou": ["0.9 [0.8, 1]"]})
    tex = to_latex(df, notes=[f"WARNING: {SPECIALS}"])
    body = [line for line in tex.splitlines() if "ours@tight" in line][0]
    cell = body.split(" & ")[0].strip()
    assert _unescape(cell) == SPECIALS
    assert escape_latex(SPECIALS) in tex
    assert "\\multicolumn{3}{l}" in tex and "\\bottomrule" in tex


def compile_latex(tex: str, folder: Path) -> subprocess.CompletedProcess:
    (folder / "table.tex").write_text(tex)
    (folder / "doc.tex").write_text("\\documentclass{article}\\usepackage[T1]{fontenc}\\usepackage{booktabs}"
                                    "\\begin{document}\\input{table.tex}\\end{document}\n")
    return subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"], cwd=folder,
                          capture_output=True, text=True, timeout=120)


def require_pdflatex():
    if shutil.which("pdflatex") is None:
        if os.environ.get("MESHBENCH_REQUIRE_LATEX"):
            pytest.fail("pdflatex not found: .ci/run installs texlive-latex-base and texlive-latex-recommended")
        pytest.skip("pdflatex not installed (apt-get install texlive-latex-base texlive-latex-recommended)")


def test_latex_with_every_special_character_compiles(tmp_path):
    require_pdflatex()
    df = pd.DataFrame({"run": [SPECIALS, "plain"], "method": ["ours", "cmr-tto"], "iou": ["0.9 [0.8, 1]", "–"]})
    proc = compile_latex(to_latex(df, notes=[f"WARNING: runs differ ({SPECIALS})"]), tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert (tmp_path / "doc.pdf").stat().st_size > 0
