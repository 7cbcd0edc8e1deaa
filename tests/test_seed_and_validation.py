"""`--seed` changes every instance's randomness reproducibly; bad options exit 2 before anything is
written; a run can be driven from a YAML/TOML file with the command line winning."""
from __future__ import annotations

import json

import pytest

from harness_utils import TINY, bench, load_records, stable

ONE_THREAD = {"OMP_NUM_THREADS": "1"}
TINY_CMR = ["--set", "cmr-tto.iterations=2", "--set", "cmr-tto.render_size=64"]
METHODS = "ours,cmr-tto"


@pytest.fixture(scope="module")
def seeded_runs(tmp_path_factory):
    """``ours`` and ``cmr-tto`` on 2 synthetic instances: seed 0 twice and seed 7."""
    root = tmp_path_factory.mktemp("seeds")
    runs = {}
    for name, seed in (("a0", 0), ("b0", 0), ("c7", 7)):
        bench("run", "--methods", METHODS, "--seed", seed, "--limit", 2, "--out", root / name, *TINY, *TINY_CMR,
              env=ONE_THREAD, check=True)
        runs[name] = load_records(root / name)
    return runs


def test_same_seed_same_records_other_seed_other_records(seeded_runs):
    a, b, c = seeded_runs["a0"], seeded_runs["b0"], seeded_runs["c7"]
    assert a.keys() == b.keys() == c.keys() and len(a) == 4
    for key in a:
        assert a[key]["status"] == "ok", a[key].get("error")
        assert stable(a[key]) == stable(b[key]), key
    for method in METHODS.split(","):
        for instance in ("00000", "00001"):
            ra, rc = a[(method, instance)], c[(method, instance)]
            assert ra["camera_init"] != rc["camera_init"], "synthetic scenes must follow the run seed"
            assert ra["metrics"]["iou"] != rc["metrics"]["iou"] and ra["losses"] != rc["losses"], (method, instance)


def test_run_seed_feeds_the_method_when_the_scenes_are_fixed(tmp_path):
    """With the dataset's own seed set, the inputs stay and only the method's own draws change."""
    fixed = ["--set", "synthetic.seed=3", "--limit", 1]
    recs = {}
    for seed in (0, 7):
        bench("run", "--methods", "ours", "--seed", seed, "--out", tmp_path / f"s{seed}", *TINY, *fixed,
              env=ONE_THREAD, check=True)
        recs[seed] = load_records(tmp_path / f"s{seed}")[("ours", "00000")]
    assert recs[0]["camera_init"] == recs[7]["camera_init"]
    assert recs[0]["losses"] != recs[7]["losses"]


BAD_SETS = [
    (["--set", "ours.select_num=0"], "ours.select_num must be >= 1"),
    (["--set", "ours.iterations=[1,1]"], "ours."),
    (["--set", "ours.render_size=abc"], "ours.render_size expects an integer"),
    (["--set", "ours.nosuch=1"], "unknown option ours.nosuch"),
    (["--methods", "cmr-tto", "--set", "cmr-tto.camera_init=bogus"], "cmr-tto.camera_init"),
    (["--methods", "cmr-tto", "--set", "cmr-tto.iterations=-1"], "cmr-tto.iterations"),
    (["--methods", "umr-tto", "--set", "umr-tto.render_size=0"], "umr-tto.render_size"),
    (["--methods", "cmr", "--set", "cmr.warmup_passes=-1"], "cmr.warmup_passes must be >= 0"),
    (["--methods", "umr", "--set", "umr.hypothesis=best"], "umr.hypothesis must be"),
    (["--set", "synthetic.n=0"], "synthetic.n must be >= 1"),
    (["--set", "synthetic.noise_scale=-1"], "synthetic.noise_scale"),
    (["--device", "gpu"], "--device must be cpu, cuda or cuda:K"),
    (["--seed", "x"], "Invalid value for '--seed'"),
]


@pytest.mark.parametrize("args,needle", BAD_SETS, ids=[a[-1] for a, _ in BAD_SETS])
def test_bad_option_exits_2_with_one_line_before_writing(args, needle, tmp_path):
    methods = [] if "--methods" in args else ["--methods", "ours"]
    out = tmp_path / "results" / "run"
    proc = bench("run", *methods, "--out", out, "--quiet", *args)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert needle in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1 or lines[0].startswith("Usage:"), proc.stderr
    assert not (tmp_path / "results").exists(), "nothing may be written for a bad option"


@pytest.mark.parametrize("args,needle", [(["--set", "cub.mask=bogus"], "cub.mask"),
                                         (["--set", "cub.padding_frac=-1"], "cub.padding_frac")])
def test_bad_file_dataset_option_exits_2_before_writing(args, needle, fixtures_dir, tmp_path):
    root = fixtures_dir / "fake_cub_root"
    proc = bench("run", "--methods", "ours", "--dataset", "cub", "--data-root", root, "--out", tmp_path / "r" / "run",
                 "--quiet", *args)
    assert proc.returncode == 2 and needle in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "r").exists()


@pytest.mark.parametrize("suffix", [".yaml", ".toml"])
def test_run_from_config_file_equals_set_and_cli_wins(suffix, tmp_path):
    if suffix == ".yaml":
        text = ("methods: [ours]\nprofile: fast\nlimit: 1\nquiet: true\nset:\n  ours: {render_size: 64, select_num: 2, "
                "iterations: [1, 1, 1, 1], chamfer_resolution: 512}\n  synthetic: {n: 3, image_size: 64}\n")
    else:
        text = ('methods = "ours"\nprofile = "fast"\nlimit = 1\nquiet = true\n[set.ours]\nrender_size = 64\n'
                'select_num = 2\niterations = [1, 1, 1, 1]\nchamfer_resolution = 512\n'
                '[set.synthetic]\nn = 3\nimage_size = 64\n')
    cfg = tmp_path / f"exp{suffix}"
    cfg.write_text(text)
    bench("run", "--config", cfg, "--out", tmp_path / "file", "--set", "ours.select_num=3", env=ONE_THREAD, check=True)
    bench("run", "--methods", "ours", "--limit", 1, "--out", tmp_path / "cli", *TINY, "--set", "ours.select_num=3",
          env=ONE_THREAD, check=True)
    from_file, from_cli = load_records(tmp_path / "file"), load_records(tmp_path / "cli")
    assert from_file.keys() == from_cli.keys() and len(from_file) == 1
    assert all(stable(from_file[k]) == stable(from_cli[k]) for k in from_file)
    manifest = json.loads((tmp_path / "file" / "manifest.json").read_text())
    assert manifest["methods"]["ours"]["config"]["select_num"] == 3  # the command line won
    assert manifest["run_config"]["path"] == str(cfg.resolve()) and len(manifest["run_config"]["sha256"]) == 64


def test_bad_config_file_exits_2(tmp_path):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("methods: ours\nbogus_key: 1\n")
    proc = bench("run", "--config", cfg, "--out", tmp_path / "out")
    assert proc.returncode == 2 and "unknown key 'bogus_key'" in proc.stderr and not (tmp_path / "out").exists()
