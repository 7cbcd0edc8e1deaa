"""Helpers for the harness tests: run the real CLI in a subprocess with tiny settings."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

# Tiny but real settings: a 4-step inversion of the untrained demo generator at 64 px ...
TINY_OURS = ["--profile", "fast", "--set", "ours.render_size=64", "--set", "ours.select_num=2",
             "--set", "ours.iterations=[1,1,1,1]", "--set", "ours.chamfer_resolution=512", "--quiet"]
# ... on 3 synthetic instances at 64 px.
TINY = TINY_OURS + ["--set", "synthetic.n=3", "--set", "synthetic.image_size=64"]

VOLATILE = ("timings", "timings_batch", "runtime", "attempt")


def bench(*args, cwd=None, env=None, timeout=600, check=False) -> subprocess.CompletedProcess:
    """Run ``python -m bench.cli ARGS`` and capture its output."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "bench.cli", *map(str, args)], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"bench {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def load_records(run: Path) -> dict[tuple[str, str], dict]:
    out = {}
    for path in sorted((run / "records").glob("*/*.json")):
        rec = json.loads(path.read_text())
        out[(rec["method"], rec["instance"])] = rec
    return out


def stable(rec: dict) -> dict:
    """A record without the fields that legitimately differ between runs (clock times, host, pid)."""
    return {k: v for k, v in rec.items() if k not in VOLATILE}
