"""`bench profile` for methods without per-stage profiling: timed through `reconstruct` on synthetic samples."""
from __future__ import annotations

import json
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from bench.config import option
from bench.errors import UserError
from bench.methods.base import Method, Reconstruction
from harness_utils import bench


def rows(stdout: str) -> dict[str, list[str]]:
    """The table's rows by stage name (the first word of a line that has a share column)."""
    return {ln.split()[0]: ln.split() for ln in stdout.splitlines() if ln.rstrip().endswith("%")}


def test_cmr_tto_profile_prints_a_reconstruct_row():
    proc = bench("profile", "--method", "cmr-tto", "--profile", "fast", "--repeat", 1,
                 "--set", "cmr-tto.iterations=2", "--set", "cmr-tto.render_size=64", "--set", "cmr-tto.warmup_passes=0",
                 "--set", "synthetic.image_size=64", check=True)
    first = proc.stdout.splitlines()[0]
    assert first.startswith("cmr-tto (fast), batch 1, cpu, 1 timed reconstruct call(s), synthetic images 64px"), first
    table = rows(proc.stdout)
    assert [ln.split()[0] for ln in proc.stdout.splitlines()].count("reconstruct") == 1
    assert table["reconstruct"][-1] == "100.0%"
    assert {"encode", "optimize", "render"} <= set(table)  # the stages the reconstruction reports
    assert "per instance:" in proc.stdout


# ----------------------------------------------------------------------------- in process, a fake method
@dataclass
class FakeConfig:
    mode: str = option("ok", help="ok | failed | raise | short")


class FakeMethod(Method):
    name = "fake"
    Config = FakeConfig
    calls = 0

    def reconstruct(self, samples):
        type(self).calls += 1
        mode = self.config.mode
        if mode == "raise":
            raise RuntimeError("boom")
        if mode == "failed":
            return [Reconstruction.failed(s.id, "boom") for s in samples]
        out = [Reconstruction(sample_id=s.id, timings={"total": 0.002, "optimize": 0.001, "render": 0.001},
                              info={"batch_size": len(samples)}) for s in samples]
        return out[:1] if mode == "short" else out


@pytest.fixture
def fake(monkeypatch):
    import bench.commands.profile as profile_cmd
    from bench import registry

    FakeMethod.calls = 0
    monkeypatch.setattr(registry, "load", lambda kind, name: FakeMethod)
    monkeypatch.setattr(profile_cmd, "synthetic_samples",
                        lambda n, profile, overrides: [SimpleNamespace(id=f"{i:05d}", image=_image()) for i in range(n)])
    return lambda *args: CliRunner().invoke(profile_cmd.profile, ["--method", "fake", *map(str, args)])


def _image():
    import torch

    return torch.zeros(3, 16, 16)


def test_interface_profile_table_and_json(fake):
    result = fake("--repeat", 3, "--batch-size", 2)
    assert result.exit_code == 0, result.output
    table = rows(result.output)
    assert set(table) == {"optimize", "render", "reconstruct"}  # "total" is the reconstruct row's business
    assert FakeMethod.calls == 4  # one untimed warm-up call, then --repeat timed ones
    doc = json.loads(fake("--repeat", 2, "--json").output)
    assert doc["mode"] == "reconstruct" and doc["image_size"] == 16 and doc["config"] == {"mode": "ok"}
    assert set(doc["seconds"]) == {"optimize", "render", "reconstruct"}
    assert all(len(v) == 2 for v in doc["seconds"].values())
    assert doc["seconds"]["optimize"] == [pytest.approx(0.001)] * 2  # summed over a batch of 1


@pytest.mark.parametrize("mode, message", [
    ("failed", "fake failed on synthetic sample 00000 while profiling: boom"),
    ("raise", "fake.reconstruct raised while profiling: RuntimeError: boom"),
    ("short", "fake.reconstruct returned 1 reconstruction(s) for 2 sample(s) while profiling; it must return one "
              "per sample"),
])
def test_a_failing_reconstruction_is_one_user_error(fake, mode, message):
    result = fake("--batch-size", 2, "--set", f"fake.mode={mode}")
    assert isinstance(result.exception, UserError) and str(result.exception) == message


def test_set_may_name_the_method_and_synthetic_only(fake):
    result = fake("--set", "cub.n=2")
    assert isinstance(result.exception, UserError)
    assert str(result.exception) == "--set names cub, but only --method fake and its synthetic samples can be set here"
