"""docs/plugins.md is a working plugin: the package it spells out, file by file, installs and its
method, dataset and metric work through the real CLI (ls, config, run, report, profile)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from harness_utils import load_records

REPO = Path(__file__).resolve().parents[1]
GUIDE = REPO / "docs" / "plugins.md"
#: a file of the example package: the comment line, then one fenced block
FILE_BLOCK = re.compile(r"^<!-- file: (\S+) -->\n```[^\n]*\n(.*?)^```$", re.MULTILINE | re.DOTALL)
TINY_OURS = ["--set", "ours.render_size=64", "--set", "ours.select_num=2", "--set", "ours.iterations=[1,1,1,1]",
             "--set", "ours.chamfer_resolution=512", "--set", "ours.feat_loss=false", "--set", "ours.warmup_passes=0"]


def guide_files() -> dict[str, str]:
    """``{relative path: text}`` of every ``<!-- file: PATH -->`` block of the guide."""
    files = {}
    for path, text in FILE_BLOCK.findall(GUIDE.read_text()):
        assert path not in files, f"{path} appears twice in {GUIDE.name}"
        assert not Path(path).is_absolute() and ".." not in Path(path).parts, path
        files[path] = text
    return files


def cli(env, *args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=timeout)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"{' '.join(proc.args[2:])} failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    """The guide's package, extracted and installed into its own folder; the environment that sees it."""
    root = tmp_path_factory.mktemp("plugin")
    for path, text in guide_files().items():
        target = root / "pkg" / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                           "-q", "--target", str(root / "site"), str(root / "pkg")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(root / "site"), os.environ.get("PYTHONPATH"))
                                                        if p)}
    return root, env


@pytest.fixture(scope="module")
def run(plugin):
    """The plugin method and MeshInversion (tiny) on 2 instances of the plugin dataset."""
    root, env = plugin
    out = root / "run"
    proc = ok(cli(env, "run", "--methods", "example-sphere,ours", "--profile", "fast", "--dataset", "example-discs",
                  "--limit", 2, "--out", out, "--quiet", *TINY_OURS))
    return out, proc


def test_guide_spells_out_the_whole_package():
    files = guide_files()
    assert set(files) == {"pyproject.toml", "meshbench_example/__init__.py", "meshbench_example/method.py",
                          "meshbench_example/dataset.py", "meshbench_example/metric.py"}
    for group in ("meshbench.methods", "meshbench.datasets", "meshbench.metrics"):
        assert f'[project.entry-points."{group}"]' in files["pyproject.toml"]


def test_ls_lists_the_plugin_entries_with_their_summaries(plugin):
    _, env = plugin
    lines = ok(cli(env, "ls")).stdout.splitlines()
    for name in ("example-sphere", "example-discs", "area-ratio"):
        line = next((ln for ln in lines if ln.split()[:1] == [name]), None)
        assert line is not None, f"{name} not listed:\n" + "\n".join(lines)
        summary = line.split(None, 1)[1].replace("[instance]", "").replace("[meshbench-example]", "").strip()
        assert summary.startswith("example plugin:"), line
        assert line.endswith("[meshbench-example]"), line
    assert not any("cannot be loaded" in ln for ln in lines)


def test_config_shows_the_plugin_fields_and_checks_their_ranges(plugin, tmp_path):
    _, env = plugin
    doc = json.loads(ok(cli(env, "config", "example-sphere", "--profile", "fast", "--format", "json")).stdout)
    fields = {row["name"]: row for row in doc["fields"]}
    assert {"fit", "padding", "depth_ratio", "texture_size", "warmup_passes"} <= set(fields)
    assert all(row["help"] for row in fields.values())
    assert fields["padding"]["range"] == "in (0, 2]" and fields["texture_size"]["value"] == 4
    bad = cli(env, "run", "--methods", "example-sphere", "--dataset", "example-discs", "--set",
              "example-sphere.padding=3", "--out", tmp_path / "bad")
    assert bad.returncode == 2 and bad.stderr.strip() == "error: example-sphere.padding must be in (0, 2], got 3.0"
    assert not (tmp_path / "bad").exists()


def test_run_records_carry_the_plugin_metric(run):
    out, proc = run
    assert "example-sphere: 2 ok, 0 failed" in proc.stderr and "ours: 2 ok, 0 failed" in proc.stderr
    recs = load_records(out)
    assert sorted(recs) == [(m, i) for m in ("example-sphere", "ours") for i in ("00000", "00001")]
    for (method, _), rec in recs.items():
        assert rec["status"] == "ok", rec.get("error")
        assert rec["metrics"]["area_ratio"] > 0 and 0 <= rec["metrics"]["iou"] <= 1
        assert (out / rec["artifact"]).is_file() and (out / rec["render"]).is_file()
        assert rec["source"]
    sphere = [rec for (m, _), rec in recs.items() if m == "example-sphere"]
    assert all(rec["metrics"]["iou"] > 0.9 and rec["labels"] == ["sphere-baseline"] for rec in sphere)
    assert all(rec["timings"]["total"] > 0 and "optimize" in rec["timings"] for rec in sphere)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dataset"]["dataset"] == "example-discs"
    assert manifest["methods"]["example-sphere"]["class"] == "meshbench_example.method:SphereMethod"
    assert "formula" in manifest["metrics"]["area-ratio"]


def test_report_shows_the_plugin_method_and_metric(plugin, run):
    root, env = plugin
    out, _ = run
    stdout = ok(cli(env, "report", out, "--out", root / "report", "--resamples", 50)).stdout
    assert "example-sphere" in stdout and "area_ratio" in stdout
    rows = {row["method"]: row for row in json.loads((root / "report" / "table.json").read_text())}
    assert set(rows) == {"example-sphere", "ours"} and rows["example-sphere"]["area_ratio_mean"] > 0


def test_profile_times_the_plugin_method_through_reconstruct(plugin):
    _, env = plugin
    lines = ok(cli(env, "profile", "--method", "example-sphere", "--repeat", 2, "--batch-size", 2,
                   "--set", "synthetic.image_size=64")).stdout.splitlines()
    assert lines[0].startswith("example-sphere (fast), batch 2") and "64px" in lines[0]
    assert len([ln for ln in lines if ln.split()[:1] == ["reconstruct"]]) == 1
    assert any(ln.split()[:1] == ["optimize"] for ln in lines)


def test_dataset_root_errors_and_per_instance_failures(plugin, tmp_path):
    _, env = plugin
    missing = cli(env, "run", "--methods", "example-sphere", "--dataset", "example-discs", "--data-root",
                  tmp_path / "nope", "--out", tmp_path / "r0")
    assert missing.returncode == 2 and missing.stderr.startswith("error: example-discs: data root ")
    assert len(missing.stderr.strip().splitlines()) == 1 and not (tmp_path / "r0").exists()
    pngs = tmp_path / "pngs"
    pngs.mkdir()
    from PIL import Image

    Image.new("RGB", (8, 8), (200, 30, 30)).save(pngs / "a.png")
    (pngs / "b.png").write_bytes(b"not a png")
    out = tmp_path / "r1"
    ok(cli(env, "run", "--methods", "example-sphere", "--dataset", "example-discs", "--data-root", pngs, "--limit", 2,
           "--profile", "fast", "--out", out, "--quiet"))
    recs = load_records(out)
    good, broken = recs[("example-sphere", "00000")], recs[("example-sphere", "00001")]
    assert good["status"] == "ok" and good["source"] == str(pngs / "a.png")
    assert broken["status"] == "failed" and broken["error"].startswith("loading failed: ")


def test_guide_python_example_runs_through_the_public_api(plugin, tmp_path):
    """The guide's ```python block (bench.load_dataset / bench.load_method on the plugin) runs as written."""
    _, env = plugin
    prose = FILE_BLOCK.sub("", GUIDE.read_text())  # the package's own files are not examples
    blocks = re.findall(r"^```python\n(.*?)^```$", prose, re.MULTILINE | re.DOTALL)
    assert len(blocks) == 1, "the guide's 'Using it' section holds one python example"
    proc = subprocess.run([sys.executable, "-c", blocks[0]], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "'ok'" in proc.stdout and "area_ratio" in proc.stdout
