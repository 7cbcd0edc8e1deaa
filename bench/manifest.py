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


def protocol_hash(dataset: dict, method: dict, seed: int, profile: str) -> str:
    """16 hex digits identifying what one method's records mean: the dataset's and the method's
    descriptions (config, weight hashes), the run seed and profile. Stored in every record."""
    import json

    text = json.dumps({"dataset": {k: v for k, v in dataset.items() if k != "instances"}, "method": method,
                       "seed": seed, "profile": profile}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


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


def changed_fields(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted names of the fields that differ between two (nested) dicts."""
    out = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += changed_fields(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}")
    return out


def _differences(old: dict, new: dict, keys, prefix: str = "") -> str:
    parts = []
    for name in changed_fields({k: old.get(k) for k in keys}, {k: new.get(k) for k in keys}):
        a, b = _lookup(old, name), _lookup(new, name)
        parts.append(f"{prefix}{name} {a!r} → {b!r}")
    return "; ".join(parts)


def _lookup(d: dict, dotted: str):
    for part in dotted.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return d


def _limit(a, b):
    return None if a is None or b is None else max(a, b)


def merge_manifest(old: dict | None, new: dict, run_dir, has_records=lambda method: True) -> dict:
    """Combine a rerun's manifest with the existing one; refuse to mix protocols in one run directory.

    * dataset (all but its instance count), seed and profile must agree; the error names only the
      differing fields;
    * ``limit`` may change: a larger one (or none) extends the run, a smaller one runs less and keeps
      every record already written (the manifest keeps the larger);
    * methods may be added; a method already present must have the same config, unless it has no
      records yet (``has_records(name)`` False: an earlier command was rejected before doing work).
    """
    if old is None:
        return new
    old_ds = {k: v for k, v in old.get("dataset", {}).items() if k != "instances"}
    new_ds = {k: v for k, v in new.get("dataset", {}).items() if k != "instances"}
    diff = _differences({**old, "dataset": old_ds}, {**new, "dataset": new_ds}, PROTOCOL_KEYS)
    if diff:
        raise UserError(f"{run_dir} was made under another protocol ({diff}); use another --out, or the same "
                        "settings to resume")
    for name, desc in new["methods"].items():
        prev = old.get("methods", {}).get(name)
        if prev is not None and prev.get("config") != desc.get("config") and has_records(name):
            diff = _differences(prev.get("config") or {}, desc.get("config") or {},
                                set(prev.get("config") or {}) | set(desc.get("config") or {}), f"{name}.")
            raise UserError(f"{run_dir} holds records of {name!r} made with other settings ({diff}); use another "
                            "--out, or name a variant (e.g. --methods ours@v2 --set ours@v2.KEY=VALUE)")
    merged = dict(old)
    merged["methods"] = {**old.get("methods", {}), **new["methods"]}
    merged["metrics"] = {**old.get("metrics", {}), **new.get("metrics", {})}
    merged["limit"] = _limit(old.get("limit"), new.get("limit"))
    counts = [d.get("instances") for d in (old.get("dataset", {}), new.get("dataset", {}))]
    if all(isinstance(c, int) for c in counts):
        merged["dataset"] = {**old["dataset"], "instances": max(counts)}
    merged.setdefault("resumed", []).append({"created": new["created"], "command": new["command"],
                                              "limit": new.get("limit"), "environment": new["environment"]})
    return merged
