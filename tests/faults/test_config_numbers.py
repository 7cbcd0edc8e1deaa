"""Numbers in configs (issue #11, group "Numbers"): every numeric field is checked by type and range
before anything is written.

Each refused command exits 2 with exactly one line ``error: OWNER.FIELD ... got VALUE`` on stderr (the
field, what it accepts, the value), no traceback, and writes nothing. Most cases drive the real click
command in-process (one torch import for the whole file); a few go through a subprocess as a user would.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from bench.config import (ConfigError, Range, _coerce, build_config, check_fields, field_table, number_spec,
                          option)
from bench.errors import UserError
from harness_utils import bench

NAN, INF = float("nan"), float("inf")


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------
def tree_hash(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


def cli(*args):
    """The real ``bench`` click group, in this process: (exit code, stderr lines, result)."""
    from bench.cli import main

    result = CliRunner().invoke(main, [str(a) for a in args])
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    return result.exit_code, lines, result


def assert_refused(code, lines, result, *needles):
    assert code == 2, (code, lines, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception  # no uncaught exception
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ") and "Traceback" not in result.stderr, lines
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def builtin_configs():
    """``(owner, Config class, profiles)`` of every built-in method and dataset, and bench eval's options."""
    from bench import registry
    from bench.metrics.base import EvalOptions

    out = []
    for kind in ("methods", "datasets"):
        for name, entry in registry.entries(kind).items():
            if entry.source == "built-in":
                cls = entry.load()
                out.append((name, cls.Config, getattr(cls, "profiles", {}) or {}))
    out.append(("eval", EvalOptions, {}))
    return out


CONFIGS = builtin_configs()


def numeric_fields():
    for owner, cls, _ in CONFIGS:
        for f in dataclasses.fields(cls):
            spec = number_spec(cls, f)
            if spec is not None:
                yield owner, cls, f, spec


NUMERIC = list(numeric_fields())


# --------------------------------------------------------------------------------------------------
# coercion of --set strings and typed (config file / Python) overrides
# --------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Toy:
    count: int = option(1, help="a count", ge=1)
    frac: float = option(0.5, help="a fraction", ge=0, lt=1)
    lrs: list[float] = option([0.1], help="rates", gt=0, min_length=1)
    pair: tuple[float, float] = option((0.0, 0.9), help="two values", ge=0, lt=1)
    maybe: int | None = option(None, help="optional class", ge=0, le=9)
    free: float = option(0.0, help="may be infinite", finite=False)

    def __post_init__(self):
        check_fields(self)


@pytest.mark.parametrize("text", ["2.7", "1e400", "Infinity", "-Infinity", "inf", "nan", "NaN", "true", "abc", ""])
def test_int_field_refuses_non_integers_and_non_finite(text):
    with pytest.raises(UserError, match=r"^toy\.count expects an integer >= 1, got "):
        build_config(Toy, overrides={"count": text}, owner="toy")


@pytest.mark.parametrize("typed", [2.7, INF, -INF, NAN, True])
def test_int_field_refuses_typed_non_integers(typed):
    with pytest.raises(UserError, match=r"^toy\.count expects an integer >= 1"):
        build_config(Toy, overrides={"count": typed}, owner="toy")


@pytest.mark.parametrize("value", ["3", "3.0", "1e1", 3, 3.0])
def test_int_field_takes_integral_numbers(value):
    cfg = build_config(Toy, overrides={"count": value}, owner="toy")
    assert cfg.count == int(float(value)) and type(cfg.count) is int


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "Infinity", "1e400", NAN, INF, -INF])
def test_float_field_refuses_nan_and_inf(value):
    with pytest.raises(UserError, match=r"^toy\.frac expects a finite number in \[0, 1\), got "):
        build_config(Toy, overrides={"frac": value}, owner="toy")


def test_float_field_that_allows_infinity():
    assert build_config(Toy, overrides={"free": "inf"}).free == INF
    assert math.isnan(build_config(Toy, overrides={"free": NAN}).free)
    assert Toy(free=-INF).free == -INF


@pytest.mark.parametrize("value", ["[nan]", "[0.1,inf]", [0.1, NAN], "[]", "[-1]", "0"])
def test_list_items_are_checked(value):
    with pytest.raises(UserError, match=r"^toy\.lrs (expects|must be) a non-empty list of finite numbers > 0"):
        build_config(Toy, overrides={"lrs": value}, owner="toy")


@pytest.mark.parametrize("value", ["[0.5]", "0.5", "[0.1,0.2,0.3]", "[0.5,1]", [0.1, NAN]])
def test_fixed_length_tuple(value):
    with pytest.raises(UserError, match=r"^toy\.pair (expects|must be) 2 finite numbers in \[0, 1\)"):
        build_config(Toy, overrides={"pair": value}, owner="toy")
    assert build_config(Toy, overrides={"pair": "[0.5, 0.25]"}).pair == (0.5, 0.25)


def test_range_messages_name_field_range_and_value():
    with pytest.raises(UserError) as err:
        build_config(Toy, overrides={"count": "0"}, owner="toy")
    assert str(err.value) == "toy.count must be >= 1, got 0"
    with pytest.raises(UserError) as err:
        build_config(Toy, overrides={"maybe": "500"}, owner="toy")
    assert str(err.value) == "toy.maybe must be in [0, 9] (or none), got 500"
    assert build_config(Toy, overrides={"maybe": ""}).maybe is None
    assert build_config(Toy, overrides={"maybe": "none"}).maybe is None


def test_direct_construction_is_checked_and_normalised():
    with pytest.raises(ConfigError, match=r"^count must be an integer >= 1, got 2.7$"):
        Toy(count=2.7)
    with pytest.raises(ConfigError, match=r"^frac must be a finite number in \[0, 1\), got nan$"):
        Toy(frac=NAN)
    toy = Toy(count=4.0, lrs=(0.5,), pair=[0, 0.5])
    assert (toy.count, toy.lrs, toy.pair) == (4, [0.5], (0.0, 0.5)) and type(toy.count) is int


def test_coerce_without_a_spec_still_refuses_non_finite():
    with pytest.raises(UserError, match="expects an integer"):
        _coerce("1e400", int, "x")
    with pytest.raises(UserError, match="expects a finite number"):
        _coerce("nan", float, "x")
    assert _coerce("3.0", int, "x") == 3


def test_range_text():
    assert Range(ge=0, lt=1).bounds() == "in [0, 1)"
    assert Range(gt=0).bounds() == "> 0"
    assert Range(ge=16, multiple_of=4).bounds() == ">= 16 and a multiple of 4"
    assert Range(ge=0, lt=2 ** 63).bounds() == "in [0, 2^63)"


# --------------------------------------------------------------------------------------------------
# the systematic pass over every built-in config
# --------------------------------------------------------------------------------------------------
#: numeric fields deliberately without a range (any integer is a valid scene seed)
UNBOUNDED = {("synthetic", "seed")}


def test_every_numeric_field_states_a_range():
    missing = [f"{owner}.{f.name}" for owner, _, f, spec in NUMERIC
               if (owner, f.name) not in UNBOUNDED and spec.range == Range()]
    assert not missing, f"numeric fields without a range: {missing}"


@pytest.mark.parametrize("owner,cls,profiles", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_defaults_and_profiles_are_valid(owner, cls, profiles):
    for profile in (None, *profiles):
        build_config(cls, profile, profiles, owner=owner)


@pytest.mark.parametrize("owner,cls,f,spec", NUMERIC, ids=[f"{o}.{f.name}" for o, _, f, _ in NUMERIC])
def test_every_numeric_field_refuses_nan(owner, cls, f, spec):
    for bad in ("nan", "[nan]" if spec.container else "inf", NAN):
        with pytest.raises(UserError) as err:
            build_config(cls, overrides={f.name: bad}, owner=owner)
        assert str(err.value).startswith(f"{owner}.{f.name} ") and "\n" not in str(err.value), err.value
    if spec.kind is int and spec.container is None:
        with pytest.raises(UserError, match=rf"^{owner}\.{f.name} expects an integer"):
            build_config(cls, overrides={f.name: "2.7"}, owner=owner)


def test_range_column_in_bench_config():
    from bench.methods.meshinversion.config import PROFILES, InversionConfig

    rows = {r["name"]: r for r in field_table(InversionConfig, PROFILES, "fast")}
    assert rows["select_num"]["range"] == ">= 1"
    assert rows["mask_loss_weight"]["range"] == ">= 0"  # inherited from LossConfig
    assert rows["betas"]["range"] == "2 values, each in [0, 1)"
    assert rows["checkpoint"]["range"] == ""


def test_inherited_loss_weights_are_checked_on_direct_construction():
    from bench.methods.meshinversion.config import InversionConfig

    with pytest.raises(ConfigError, match=r"^feat_loss_weight must be >= 0, got -0.5$"):
        InversionConfig(feat_loss_weight=-0.5)
    with pytest.raises(ConfigError, match=r"^select_num must be an integer >= 1, got inf$"):
        InversionConfig(select_num=INF)


# --------------------------------------------------------------------------------------------------
# the CLI: bench run, bench eval, bench sample refuse before writing
# --------------------------------------------------------------------------------------------------
RUN_CASES = [
    (["--set", "ours.select_num=1e400"], "ours.select_num", "'1e400'"),
    (["--set", "ours.select_num=Infinity"], "ours.select_num", "'Infinity'"),
    (["--set", "ours.select_num=2.7"], "ours.select_num", "'2.7'"),
    (["--set", "ours.iterations=[10,10,5,2.5]"], "ours.iterations", "2.5"),
    (["--set", "ours.z_lrs=[nan,0.05,0.01,0.005]"], "ours.z_lrs", "nan"),
    (["--set", "ours.pose_lrs=[-0.01,0.005,0.001,0.0005]"], "ours.pose_lrs", "-0.01"),
    (["--set", "ours.mask_loss_weight=-1"], "ours.mask_loss_weight", "-1"),
    (["--set", "ours.feat_loss_weight=nan"], "ours.feat_loss_weight", "nan"),
    (["--set", "ours.adam_eps=inf"], "ours.adam_eps", "inf"),
    (["--set", "ours.betas=[0.5]"], "ours.betas", "0.5"),
    (["--methods", "cmr-tto", "--set", "cmr-tto.latent_lr=nan"], "cmr-tto.latent_lr", "nan"),
    (["--methods", "cmr-tto", "--set", "cmr-tto.latent_lr=-0.1"], "cmr-tto.latent_lr", "-0.1"),
    (["--methods", "cmr-tto", "--set", "cmr-tto.betas=[0.5]"], "cmr-tto.betas", "[0.5]"),
    (["--methods", "cmr-tto", "--set", "cmr-tto.mask_weight=-1"], "cmr-tto.mask_weight", "-1"),
    (["--methods", "umr-tto", "--set", "umr-tto.texture_weight=-2"], "umr-tto.texture_weight", "-2"),
    (["--methods", "umr-tto", "--set", "umr-tto.pose_lrs=[inf]"], "umr-tto.pose_lrs", "inf"),
    (["--methods", "umr", "--set", "umr.frame_quaternion=[1,0,0]"], "umr.frame_quaternion", "[1.0, 0.0, 0.0]"),
    (["--set", "synthetic.image_size=0"], "synthetic.image_size", "0"),
    (["--set", "synthetic.class_id=500"], "synthetic.class_id", "500"),
    (["--set", "synthetic.noise_scale=NaN"], "synthetic.noise_scale", "NaN"),
    (["--set", "synthetic.n=2.5"], "synthetic.n", "2.5"),
]


@pytest.mark.parametrize("args,field,value", RUN_CASES, ids=[c[0][-1] for c in RUN_CASES])
def test_bench_run_refuses_bad_numbers_before_writing(args, field, value, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    methods = [] if "--methods" in args else ["--methods", "ours"]
    code, lines, result = cli("run", *methods, "--out", tmp_path / "results" / "run", "--quiet", *args)
    assert_refused(code, lines, result, f"error: {field} ", value, "got")
    assert list(tmp_path.iterdir()) == [], "nothing may be written for a bad option"


@pytest.mark.parametrize("body,field", [
    ("[set.ours]\nselect_num = 2.7\n", "ours.select_num"),
    ("[set.ours]\nadam_eps = nan\n", "ours.adam_eps"),
    ("[set.ours]\nz_lrs = [inf, 0.05, 0.01, 0.005]\n", "ours.z_lrs"),
    ("[set.synthetic]\nnoise_scale = -inf\n", "synthetic.noise_scale"),
])
def test_bench_run_config_file_typed_values(body, field, tmp_path, monkeypatch):
    cfg = tmp_path / "run.toml"
    cfg.write_text('methods = "ours"\nquiet = true\n' + body)
    monkeypatch.chdir(tmp_path)
    before = tree_hash(tmp_path)
    code, lines, result = cli("run", "--config", cfg, "--out", tmp_path / "results" / "run")
    assert_refused(code, lines, result, f"error: {field} ")
    assert tree_hash(tmp_path) == before


@pytest.fixture
def fake_run(tmp_path):
    """A run directory with a metrics file that a refused bench eval must leave as it is."""
    run = tmp_path / "run"
    (run / "metrics").mkdir(parents=True)
    (run / "manifest.json").write_text('{"version": 1}\n')
    (run / "metrics" / "shape3d.json").write_text('{"metric": "shape3d"}\n')
    return run


@pytest.mark.parametrize("args,needle", [
    (["--fscore-threshold", "-1"], "--fscore-threshold must be in (0, 1], got -1.0"),
    (["--fscore-threshold", "nan"], "--fscore-threshold must be a finite number in (0, 1], got nan"),
    (["--fscore-threshold", "inf"], "--fscore-threshold must be a finite number in (0, 1], got inf"),
    (["--kid-subsets", "0"], "--kid-subsets must be >= 1, got 0"),
    (["--seed", "-1"], "--seed must be in [0, 2^32), got -1"),
    (["--view-size", "30"], "--view-size must be >= 16 and a multiple of 4, got 30"),
])
def test_bench_eval_refuses_bad_numbers_before_writing(args, needle, fake_run):
    before = tree_hash(fake_run)
    code, lines, result = cli("eval", fake_run, "--quiet", *args)
    assert_refused(code, lines, result, needle)
    assert tree_hash(fake_run) == before


@pytest.mark.parametrize("views", ["nan,inf", "0,inf", "-inf", "nan", "0,x", ","])
def test_bench_sample_refuses_bad_views(views, tmp_path):
    out = tmp_path / "samples"
    code, lines, result = cli("sample", "--out", out, "--n", 1, "--size", 16, f"--views={views}")
    assert_refused(code, lines, result, "error: --views ", repr(views))
    assert not out.exists()


def test_bench_sample_refuses_a_seed_torch_cannot_take(tmp_path):
    out = tmp_path / "samples"
    code, lines, result = cli("sample", "--out", out, "--n", 1, "--seed", 2 ** 64)
    assert_refused(code, lines, result, "error: --seed must be an integer in [0, 2^63), got 18446744073709551616")
    assert not out.exists()


# two through a real subprocess, exactly as a user types them
@pytest.mark.parametrize("args,needle", [
    (["run", "--methods", "ours", "--set", "ours.select_num=1e400"],
     "error: ours.select_num expects an integer >= 1, got '1e400'"),
    (["sample", "--views", "nan,inf"], "error: --views expects comma-separated finite azimuths"),
], ids=["run", "sample"])
def test_subprocess_one_line_exit_2(args, needle, tmp_path):
    proc = bench(*args, "--out", tmp_path / "out", cwd=tmp_path)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith(needle), proc.stderr
    assert "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []
