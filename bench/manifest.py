"""The run manifest: the protocol fingerprint every number in a run was made under."""
from __future__ import annotations

import hashlib
import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from bench.errors import UserError

PACKAGES = ("meshbench", "torch", "torchvision", "torch-fidelity", "numpy", "scipy", "opencv-python-headless",
            "lpips", "submitit")

# Fields that define what the numbers mean; a rerun into a run directory must agree on them.
PROTOCOL_KEYS = ("dataset", "seed", "profile")


_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def sha256_file(path) -> str:
    """Hex sha256 of a file, streamed; memoised on (resolved path, size, mtime) since weight files are
    hundreds of MB and hashed by several components of a run."""
    resolved = Path(path).resolve()
    st = resolved.stat()
    key = (str(resolved), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(resolved, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def package_versions() -> dict[str, str | None]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_hash() -> str | None:
    """Commit of the meshbench source tree (None outside a git checkout); '+dirty' when modified."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=5).stdout.strip()
        if not head:
            return None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: str) -> dict:
    env = {"python": sys.version.split()[0], "platform": platform.platform(), "device": device,
           "packages": package_versions(), "git": git_hash()}
    try:
        import torch

        if device.startswith("cuda") and torch.cuda.is_available():
            env["gpu"] = torch.cuda.get_device_name(0)
            env["cuda"] = torch.version.cuda
        env["torch_threads"] = torch.get_num_threads()
    except ImportError:  # pragma: no cover
        pass
    return env


def new_manifest(*, dataset: dict, methods: dict, metrics: dict, device: str, seed: int, profile: str,
                 limit: int | None, command: list[str], run_config: dict | None = None) -> dict:
    """The manifest of one ``bench run`` invocation (``run_config``: the ``--config`` file, if any)."""
    extra = {"run_config": {k: v for k, v in run_config.items() if k != "sets"}} if run_config else {}
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "dataset": dataset,
        "methods": methods,
        "metrics": metrics,
        "seed": seed,
        "profile": profile,
        "limit": limit,
        "environment": environment(device),
        **extra,
    }


def merge_manifest(old: dict | None, new: dict, run_dir) -> dict:
    """Combine a rerun's manifest with the existing one; refuse to mix protocols in one run directory.

    Methods may be added to an existing run; a method already present must have the same config.
    """
    if old is None:
        return new
    for key in PROTOCOL_KEYS:
        if old.get(key) != new.get(key):
            raise UserError(f"{run_dir} was made with {key}={old.get(key)!r}, this run asks {key}={new.get(key)!r}; "
                            "use another --out or the same settings to resume")
    for name, desc in new["methods"].items():
        prev = old["methods"].get(name)
        if prev is not None and prev.get("config") != desc.get("config"):
            changed = sorted(k for k in set(prev["config"]) | set(desc["config"])
                             if prev["config"].get(k) != desc["config"].get(k))
            raise UserError(f"{run_dir} holds method {name!r} with other settings ({', '.join(changed)}); "
                            "use another --out, or name a variant (e.g. --methods ours@v2 --set ours@v2.KEY=VALUE)")
    merged = dict(old)
    merged["methods"] = {**old["methods"], **new["methods"]}
    merged["metrics"] = {**old.get("metrics", {}), **new.get("metrics", {})}
    merged.setdefault("resumed", []).append({"created": new["created"], "command": new["command"],
                                              "environment": new["environment"]})
    return merged
