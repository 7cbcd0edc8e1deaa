"""`bench --help` and `bench ls` stay light: they import no torch."""
from __future__ import annotations

import subprocess
import sys


def _imports_torch(args: list[str]) -> tuple[bool, str]:
    code = ("import sys; from bench.cli import main\n"
            f"try:\n    main({args!r})\nexcept SystemExit:\n    pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NOTORCH')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return out.strip().endswith("TORCH") and not out.strip().endswith("NOTORCH"), out


def test_help_imports_no_torch():
    torch_loaded, out = _imports_torch(["--help"])
    assert not torch_loaded and "run" in out


def test_ls_lists_everything_without_torch():
    torch_loaded, out = _imports_torch(["ls"])
    assert not torch_loaded
    for name in ("ours", "cmr-tto", "umr-tto", "synthetic", "cub", "p3d", "iou", "fid12"):
        assert f"  {name} " in out
