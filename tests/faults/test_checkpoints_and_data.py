"""Bad weight, checkpoint and dataset files through the real CLI: exit 2, one line, nothing run or changed.

Every case runs ``bench`` (click's CliRunner in this process, one case in a subprocess) and checks:
exit status 2, exactly one non-empty line on stderr (``error: ...`` naming the file), no traceback;
where a run directory exists, that what it already held is unchanged; for crafted pickles, that their
payload did not run (the marker file it would create is absent).
"""
from __future__ import annotations

import builtins
import hashlib
import os
import pickle
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from bench.cli import main
from conftest import fixtures_path

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_RUN = ["--dataset", "synthetic", "--profile", "fast", "--set", "synthetic.n=1",
            "--set", "synthetic.image_size=32", "--quiet"]
TINY_OURS = ["--set", "ours.render_size=32", "--set", "ours.select_num=2", "--set", "ours.iterations=[1,1,1,1]",
             "--set", "ours.chamfer_resolution=512"]
# torchvision AlexNet ``features`` conv shapes (what the CMR/UMR perceptual term loads)
ALEXNET = {0: (64, 3, 11, 11), 3: (192, 64, 5, 5), 6: (384, 192, 3, 3), 8: (256, 384, 3, 3), 10: (256, 256, 3, 3)}


class Payload:
    """Unpickling this runs ``exec`` on code that creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.exec, (f"open({self.marker!r}, 'w').close()",)


# ------------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Bad files of every kind (and a fake AlexNet file so cmr-tto gets as far as its checkpoint)."""
    d = tmp_path_factory.mktemp("badfiles")
    out = {"marker": d / "PAYLOAD_RAN"}
    out["intkeys"] = d / "intkeys.pt"
    torch.save({1: torch.zeros(3)}, out["intkeys"])
    out["list"] = d / "list.pt"
    torch.save([torch.zeros(3)], out["list"])
    out["tensor"] = d / "tensor.pt"
    torch.save(torch.zeros(3), out["tensor"])
    out["wrongkeys"] = d / "wrongkeys.pt"
    torch.save({"a.weight": torch.zeros(2, 2)}, out["wrongkeys"])
    whole = d / "whole.pt"
    torch.save({"w": torch.zeros(64)}, whole)
    out["truncated"] = d / "truncated.pt"
    out["truncated"].write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    out["evil_torch"] = d / "evil_torch.pt"  # torch.save format (zip) with a code-running object inside
    torch.save({"w": torch.zeros(2), "x": Payload(out["marker"])}, out["evil_torch"])
    out["evil_pickle"] = d / "evil_pickle.pt"  # a plain pickle (as a legacy .pth would be)
    with open(out["evil_pickle"], "wb") as fh:
        pickle.dump({"w": Payload(out["marker"])}, fh, protocol=2)
    out["binary"] = d / "binary.bin"
    out["binary"].write_bytes(bytes(range(256)) * 4)
    state = {}
    for i, shape in ALEXNET.items():
        state[f"features.{i}.weight"], state[f"features.{i}.bias"] = torch.zeros(shape), torch.zeros(shape[0])
    out["alexnet"] = d / "alexnet.pth"
    torch.save(state, out["alexnet"])
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A finished tiny run (untrained CMR, 1 synthetic instance)."""
    out = tmp_path_factory.mktemp("run") / "run"
    res = CliRunner().invoke(main, ["run", "--methods", "cmr", *TINY_RUN, "--set", "cmr.warmup_passes=0",
                                    "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture()
def cub_root(tmp_path) -> Path:
    """A writable copy of the fake official datasets/cub folder."""
    src = fixtures_path() / "fake_cub_root" / "datasets" / "cub"
    if not src.is_dir():
        pytest.fail(f"fixture folder {src} not found; set MESHBENCH_FIXTURES to the shared/fixtures folder")
    dst = tmp_path / "cub"
    shutil.copytree(src, dst)
    for folder, _dirs, names in os.walk(dst):
        for p in [folder, *(os.path.join(folder, n) for n in names)]:
            os.chmod(p, os.stat(p).st_mode | stat.S_IWUSR)
    return dst


# ------------------------------------------------------------------------------------------------
# helpers


def _tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


#: bookkeeping a refused `bench run` may touch: the lock holder note, and the manifest when only `setup` finds
#: the fault (keys that fit no network); the corrected command is then still accepted (no records yet)
_VOLATILE = {".lock", "manifest.json", "logs/manifest.json"}


def _kept(before: dict[str, str], after: dict[str, str]) -> None:
    """Every file written before is unchanged and no result file was added (bookkeeping aside)."""
    changed = sorted(k for k in before if k not in _VOLATILE and after.get(k) != before[k])
    added = sorted(k for k in set(after) - set(before) if k.split("/")[0] in ("records", "artifacts", "renders"))
    assert not changed and not added, (changed, added)


def _one_line_exit_2(res, *must_contain: str) -> str:
    """The CLI result: exit 2 (a UserError), one non-empty stderr line naming what it must, no traceback."""
    assert isinstance(res.exception, SystemExit) and res.exit_code == 2, (res.exit_code, res.output, res.exception)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "Traceback" not in res.output and "Traceback" not in res.stderr
    for text in must_contain:
        assert text in lines[0], (text, lines[0])
    return lines[0]


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _no_payload(files) -> None:
    assert not files["marker"].exists(), "the crafted pickle's code ran"


# ------------------------------------------------------------------------------------------------
# checkpoints: bench sample (generator), bench run (generator, VGG, CMR, AlexNet, UMR), bench eval (FID)

SAMPLE_CASES = {
    "intkeys": "key 1 (int) is not a parameter name",
    "list": "holds a list",
    "tensor": "holds a Tensor",
    "wrongkeys": "missing keys: emb_class.weight",
    "truncated": "truncated",
    "evil_torch": "nothing in the file was run",
    "evil_pickle": "nothing in the file was run",
    "binary": "not a PyTorch weights file",
}


@pytest.mark.parametrize("kind", SAMPLE_CASES)
def test_sample_bad_generator_checkpoint(files, tmp_path, kind):
    res = _invoke("sample", "--checkpoint", files[kind], "--out", tmp_path / "out", "--n", "1", "--size", "16",
                  "--views", "0")
    _one_line_exit_2(res, files[kind].name, SAMPLE_CASES[kind])
    assert not (tmp_path / "out").exists()
    _no_payload(files)


def test_sample_shape_mismatch_names_key_and_shapes(files, tmp_path):
    from bench.methods.meshinversion.generator import load_generator

    state = load_generator("demo").state_dict()
    state["conv_mesh.bias"] = torch.zeros(4)
    path = tmp_path / "shape.pt"
    torch.save(state, path)
    res = _invoke("sample", "--checkpoint", path, "--out", tmp_path / "out", "--n", "1")
    _one_line_exit_2(res, "shape.pt", "shape mismatch: conv_mesh.bias: file (4,) vs model (3,)")


RUN_CASES = [  # (method, option, file kind, text the line must hold)
    ("ours", "checkpoint", "intkeys", "key 1 (int)"),
    ("ours", "checkpoint", "evil_pickle", "nothing in the file was run"),
    ("ours", "vgg_weights", "intkeys", "key 1 (int)"),
    ("ours", "vgg_weights", "evil_torch", "nothing in the file was run"),
    ("ours", "vgg_weights", "truncated", "truncated"),
    ("ours", "vgg_weights", "wrongkeys", "missing keys: features.0.weight"),
    ("cmr-tto", "checkpoint", "intkeys", "key 1 (int)"),
    ("cmr-tto", "checkpoint", "list", "holds a list"),
    ("cmr-tto", "checkpoint", "truncated", "truncated"),
    ("cmr-tto", "checkpoint", "evil_torch", "nothing in the file was run"),
    ("cmr-tto", "checkpoint", "evil_pickle", "nothing in the file was run"),
    ("cmr-tto", "checkpoint", "wrongkeys", "unexpected keys: a.weight"),
    ("cmr-tto", "perceptual_weights", "evil_pickle", "nothing in the file was run"),
    ("umr-tto", "checkpoint", "evil_torch", "nothing in the file was run"),
]


@pytest.mark.parametrize("case", range(len(RUN_CASES)),
                         ids=[f"{m}.{o}={k}" for m, o, k, _ in RUN_CASES])
def test_run_bad_weights_keep_the_run_dir(files, run_dir, case):
    method, option, kind, text = RUN_CASES[case]
    spec = f"{method}@f{case}"  # a new variant in the finished run directory
    extra = []
    if method == "ours":
        extra = [a.replace("ours.", f"{spec}.") for a in TINY_OURS]
    elif option != "perceptual_weights":
        extra = ["--set", f"{spec}.perceptual_weights={files['alexnet']}"]
    before = _tree_hashes(run_dir)
    res = _invoke("run", "--methods", spec, *TINY_RUN, "--out", run_dir, *extra,
                  "--set", f"{spec}.{option}={files[kind]}")
    _one_line_exit_2(res, str(files[kind].name), text)
    _kept(before, _tree_hashes(run_dir))
    _no_payload(files)


def test_refused_run_leaves_the_manifest_unchanged(files, run_dir):
    before = (run_dir / "manifest.json").read_bytes()
    res = _invoke("run", "--methods", "cmr@manifest", *TINY_RUN, "--out", run_dir,
                  "--set", f"cmr@manifest.checkpoint={files['intkeys']}")
    _one_line_exit_2(res, "intkeys.pt")
    assert (run_dir / "manifest.json").read_bytes() == before


EVAL_CASES = [  # (extractor, file kind, text)
    ("standard", "truncated", "truncated"),
    ("standard", "evil_torch", "nothing in the file was run"),
    ("standard", "intkeys", "key 1 (int)"),
    ("standard", "wrongkeys", "missing keys: Conv2d_1a_3x3.conv.weight"),
    ("torchvision-inception", "evil_pickle", "nothing in the file was run"),
    ("torchvision-inception", "tensor", "holds a Tensor"),
    ("torchvision-inception", "wrongkeys", "unexpected keys: a.weight"),
]


@pytest.mark.parametrize("extractor,kind,text", EVAL_CASES)
def test_eval_bad_fid_weights(files, run_dir, extractor, kind, text):
    before = _tree_hashes(run_dir)
    res = _invoke("eval", run_dir, "--metrics", "fid1", "--fid-extractor", extractor, "--fid-weights", files[kind],
                  "--quiet")
    _one_line_exit_2(res, str(files[kind]), text)
    assert _tree_hashes(run_dir) == before
    _no_payload(files)


def test_real_cli_process_prints_one_line(files, tmp_path):
    """The same through a real ``python -m bench.cli`` process: stderr is exactly one line."""
    proc = subprocess.run([sys.executable, "-m", "bench.cli", "sample", "--checkpoint", str(files["evil_torch"]),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "evil_torch.pt" in lines[0] and "Traceback" not in proc.stderr, proc.stderr
    _no_payload(files)


# ------------------------------------------------------------------------------------------------
# datasets: bench data check and bench run on a damaged CUB / PASCAL3D+ root


def _damage(root: Path, rel: str, data: bytes) -> Path:
    path = root / rel
    path.write_bytes(data)
    return path


CUB_CASES = {  # name: (file, bytes, text the line must hold)
    "images_txt_binary": ("CUB_200_2011/images.txt", b"\xff\xfe\x80garbage\x9f\n", "is not a text file"),
    "labels_txt_nul": ("CUB_200_2011/image_class_labels.txt", b"1 1\n\x00\x00\x00", "is not a text file"),
    "images_txt_malformed": ("CUB_200_2011/images.txt", b"1 001.x/a.png\njunk\n", "images.txt:2: expected"),
    "labels_not_int": ("CUB_200_2011/image_class_labels.txt", b"1 1\n2 bird\n", "must be an integer in 1..200"),
    "anno_mat_binary": ("cache/data/test_cub_cleaned.mat", bytes(range(256)) * 8, "cannot read"),
    "sfm_mat_truncated": ("cache/sfm/anno_test.mat", None, "cannot read"),
}


def _case_bytes(root: Path, rel: str, data: bytes | None) -> bytes:
    return data if data is not None else (root / rel).read_bytes()[:200]


@pytest.mark.parametrize("name", CUB_CASES)
def test_data_check_reports_bad_cub_file(cub_root, name):
    rel, data, text = CUB_CASES[name]
    path = _damage(cub_root, rel, _case_bytes(cub_root, rel, data))
    res = _invoke("data", "check", "--dataset", "cub", "--data-root", cub_root)
    _one_line_exit_2(res, str(path), text)
    assert any(ln.startswith("UNREADABLE") and str(path) in ln for ln in res.stdout.splitlines()), res.stdout


@pytest.mark.parametrize("name", ["images_txt_binary", "labels_txt_nul", "anno_mat_binary"])
def test_run_on_bad_cub_file(cub_root, tmp_path, name):
    rel, data, text = CUB_CASES[name]
    path = _damage(cub_root, rel, _case_bytes(cub_root, rel, data))
    res = _invoke("run", "--methods", "cmr", "--dataset", "cub", "--data-root", cub_root, "--limit", "1",
                  "--profile", "fast", "--quiet", "--out", tmp_path / "run")
    _one_line_exit_2(res, str(path), text)
    assert not (tmp_path / "run" / "records").exists()


@pytest.mark.parametrize("kind", ["evil_torch", "evil_pickle", "truncated", "list"])
def test_bad_cmr_cameras_file(cub_root, files, kind):
    path = cub_root / "cache" / "cmr_pred_cam.pth"
    shutil.copyfile(files[kind], path)
    res = _invoke("data", "check", "--dataset", "cub", "--data-root", cub_root)
    _one_line_exit_2(res, str(path))
    _no_payload(files)


def test_pickle_disguised_as_mat_is_refused(cub_root, files):
    path = cub_root / "cache" / "data" / "test_cub_cleaned.mat"
    shutil.copyfile(files["evil_pickle"], path)
    res = _invoke("data", "check", "--dataset", "cub", "--data-root", cub_root)
    _one_line_exit_2(res, str(path), "cannot read")
    _no_payload(files)


def test_good_cub_root_still_passes(cub_root):
    res = _invoke("data", "check", "--dataset", "cub", "--data-root", cub_root)
    assert res.exit_code == 0, res.output
    assert "UNREADABLE" not in res.output and not res.stderr.strip()
    for name in ("images.txt", "image_class_labels.txt", "cmr_pred_cam.pth"):
        assert any(ln.startswith("ok") and name in ln and "entries" in ln for ln in res.stdout.splitlines()), name


def test_data_check_reports_bad_p3d_mat(tmp_path, files):
    root = tmp_path / "p3d"
    (root / "PASCAL3D+_release1.1" / "Images").mkdir(parents=True)
    (root / "data").mkdir()
    (root / "sfm").mkdir()
    anno = _damage(root, "data/car_val.mat", b"\xff\xd8\xff" + bytes(range(256)) * 4)
    shutil.copyfile(files["evil_pickle"], root / "sfm" / "car_val.mat")
    res = _invoke("data", "check", "--dataset", "p3d", "--data-root", root)
    line = _one_line_exit_2(res, str(anno), "cannot read", "+1 more unreadable")
    assert "car_val.mat" in line
    _no_payload(files)
