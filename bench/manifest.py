"""The run manifest: the protocol fingerprint every number in a run was made under."""
from __future__ import annotations

import hashlib
import os
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


def cpu_model() -> str | None:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else what :mod:`platform` says)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask; ``os.cpu_count()`` where there is none)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def load_average() -> float | None:
    """The 1-minute load average (None where the OS has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):  # pragma: no cover - not Unix
        return None


def gpu_driver() -> str | None:
    """NVIDIA driver version from ``nvidia-smi`` (None without one)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.stdout.strip().splitlines()
    return lines[0].strip() if out.returncode == 0 and lines else None


def hardware(device: str) -> dict:
    """What timings depend on: CPU model and cores (all and usable), GPU name and driver, torch/CUDA."""
    hw = {"cpu": cpu_model(), "cores": os.cpu_count(), "usable_cores": usable_cores(), "gpu": None,
          "gpu_driver": None, "torch": None, "cuda": None}
    try:
        import torch

        hw["torch"], hw["cuda"] = torch.__version__, torch.version.cuda
        if device.startswith("cuda") and torch.cuda.is_available():
            index = torch.device(device).index or 0
            hw["gpu"], hw["gpu_driver"] = torch.cuda.get_device_name(index), gpu_driver()
    except ImportError:  # pragma: no cover
        pass
    return hw


def environment(device: str) -> dict:
    env = {"python": sys.version.split()[0], "platform": platform.platform(), "device": device,
           "packages": package_versions(), "git": git_hash(), "hardware": hardware(device)}
    try:
        import torch

        if device.startswith("cuda") and torch.cuda.is_available():
            env["gpu"] = env["hardware"]["gpu"]
            env["cuda"] = torch.version.cuda
        env["torch_threads"] = torch.get_num_threads()
    except ImportError:  # pragma: no cover
        pass
    return env


def new_run_id(created: str, command: list[str]) -> str:
    """A run's identity: its creation time (UTC, to the second) and 6 hex digits of a hash of the time,
    host, process, command and a random salt, e.g. ``20261202T035111-3fa2c1``. Copies of a run
    directory share it; two runs never do."""
    salt = f"{created}|{platform.node()}|{os.getpid()}|{command}|{os.urandom(8).hex()}"
    return f"{_stamp(created)}-{hashlib.sha256(salt.encode()).hexdigest()[:6]}"


def _stamp(created: str) -> str:
    """``2026-12-02T03:51:11+00:00`` as ``20261202T035111``."""
    return created.replace("-", "").replace(":", "").split("+")[0]


def run_id_of(manifest: dict) -> str:
    """The manifest's ``run_id``; for a run made before ids existed, one derived from its creation
    time and command (stable across reads)."""
    if manifest.get("run_id"):
        return str(manifest["run_id"])
    created = str(manifest.get("created", ""))
    digest = hashlib.sha256(f"{created}|{manifest.get('command')}".encode()).hexdigest()[:6]
    return f"{_stamp(created) or 'unknown'}-{digest}"


def new_manifest(*, dataset: dict, methods: dict, metrics: dict, device: str, seed: int, profile: str,
                 limit: int | None, command: list[str], run_config: dict | None = None,
                 sweep: dict | None = None) -> dict:
    """The manifest of one ``bench run`` invocation (``run_config``: the ``--config`` file, if any;
    ``sweep``: what ``bench sweep`` varied, kept in the list ``sweeps``)."""
    extra = {"run_config": {k: v for k, v in run_config.items() if k != "sets"}} if run_config else {}
    if sweep:
        extra["sweeps"] = [sweep]
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return {
        "run_id": new_run_id(created, command),
        "created": created,
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
        a, b = lookup(old, name), lookup(new, name)
        parts.append(f"{prefix}{name} {a!r} → {b!r}")
    return "; ".join(parts)


def lookup(d: dict, dotted: str):
    """The value at dotted name ``dotted`` of a nested dict (None where a part is missing)."""
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
      records yet (``has_records(name)`` False: an earlier command was rejected before doing work);
    * ``sweeps`` (what each ``bench sweep`` into the run varied) accumulate, each once.
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
    merged["run_id"] = run_id_of(old)
    merged["methods"] = {**old.get("methods", {}), **new["methods"]}
    merged["metrics"] = {**old.get("metrics", {}), **new.get("metrics", {})}
    merged["limit"] = _limit(old.get("limit"), new.get("limit"))
    sweeps = list(old.get("sweeps", []))
    merged_sweeps = sweeps + [s for s in new.get("sweeps", []) if s not in sweeps]  # a rerun's sweep once
    if merged_sweeps:
        merged["sweeps"] = merged_sweeps
    counts = [d.get("instances") for d in (old.get("dataset", {}), new.get("dataset", {}))]
    if all(isinstance(c, int) for c in counts):
        merged["dataset"] = {**old["dataset"], "instances": max(counts)}
    merged.setdefault("resumed", []).append({"created": new["created"], "command": new["command"],
                                              "limit": new.get("limit"), "environment": new["environment"]})
    return merged
