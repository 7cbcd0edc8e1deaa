"""The run directory: manifest, one record per (method, instance), artifacts, corpus metrics.

Layout (``RUN`` = e.g. ``results/<run>``)::

    RUN/manifest.json                      protocol fingerprint (see bench.manifest)
    RUN/records/<method>/<instance>.json   one JSON record per (method, instance); its existence = done
    RUN/artifacts/<method>/<instance>.pt   the Reconstruction + its input (torch.save dict, see below)
    RUN/renders/<method>/<instance>.png    input view: input | render | overlay, for people
    RUN/metrics/<name>.json                corpus-level metrics written by ``bench eval``
    RUN/fid/<method>/<kind>/...            renders for FID (written once, reused)
    RUN/logs/                              per-worker logs; logs/manifest.json: a copy of the manifest
    RUN/report/                            tables and plots written by ``bench report``
    RUN/.lock, RUN/claims/                 who is writing (see bench.locks)

Every file is written atomically (temp file in the same folder + ``os.replace``), so a killed
worker leaves either the old state or the new file, never a partial one. The artifact is written
before the record, so a record always points at a complete artifact. Files follow the umask.

Every read is validated: a damaged record (truncated, empty, not a record) is moved aside to
``records/<method>/.damaged/`` with a warning and counts as not done, so the rerun redoes it; a
damaged manifest or metric file is a one-line `UserError` pointing at ``bench repair``; a missing or
damaged artifact is an `ArtifactError` (one instance's problem).
"""
from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from bench.errors import InstanceError, UserError

RECORD_VERSION = 1
RECORD_STATUSES = ("ok", "failed")
#: What every reader of a manifest needs (bench.manifest.new_manifest writes much more).
MANIFEST_KEYS = {"dataset": dict}
#: What every reader of an artifact needs (see :func:`artifact_payload` for what is written).
ARTIFACT_KEYS = ("mesh",)


class ArtifactError(InstanceError):
    """An instance's artifact is missing or damaged: that instance's metrics fail, the others go on."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file and rename (atomic on POSIX)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; the run directory is shared by a group
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any, sort_keys: bool = True) -> None:
    """Strict JSON (NaN and infinities become null), atomically."""
    text = json.dumps(strict_json(obj), indent=2, sort_keys=sort_keys, default=_json_default,
                      allow_nan=False) + "\n"
    atomic_write_bytes(path, text.encode())


def strict_json(obj):
    """``obj`` with every non-finite float replaced by None (strict JSON parsers reject NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj


def read_json(path: Path):
    """Parsed JSON of ``path``; ValueError (with the reason) when it is empty, truncated or not UTF-8."""
    data = path.read_bytes()
    if not data.strip():
        raise ValueError("empty file")
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"not valid JSON ({err})") from None


def record_problem(rec, method: str | None = None, instance: str | None = None) -> str | None:
    """Why ``rec`` is not a usable record (None when it is)."""
    if not isinstance(rec, dict):
        return f"a JSON {type(rec).__name__}, not a record"
    for key, kind in (("method", str), ("instance", str), ("index", int), ("status", str)):
        if not isinstance(rec.get(key), kind) or isinstance(rec.get(key), bool):
            return f"no valid {key!r}"
    if rec["status"] not in RECORD_STATUSES:
        return f"unknown status {rec['status']!r}"
    if rec["status"] == "ok" and not isinstance(rec.get("metrics"), dict):
        return "no 'metrics'"
    if (method is not None and rec["method"] != method) or (instance is not None and rec["instance"] != instance):
        return f"it belongs to {rec['method']}/{rec['instance']}"
    return None


def manifest_problem(manifest) -> str | None:
    """Why ``manifest`` is not a usable manifest (None when it is)."""
    if not isinstance(manifest, dict):
        return f"a JSON {type(manifest).__name__}, not a manifest"
    for key, kind in MANIFEST_KEYS.items():
        if not isinstance(manifest.get(key), kind):
            return f"no valid {key!r}"
    if not isinstance(manifest.get("methods", {}), dict):
        return "no valid 'methods'"
    return None


def move_aside(path: Path, folder: Path) -> Path:
    """Move a damaged file into ``folder`` as ``<name>.<time>.<pid>`` (kept, never deleted)."""
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / f"{path.name}.{time.strftime('%Y%m%dT%H%M%S')}.{os.getpid()}"
    os.replace(path, dest)
    return dest


def metrics_problem(doc) -> str | None:
    """Why ``doc`` is not a usable metric file of `bench eval` (None when it is)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("methods"), dict):
        return "no 'methods' table"
    return None


def read_checked(path: Path, problem_of: Callable[[Any], str | None]) -> tuple[Any, str | None]:
    """``(parsed JSON, None)``, or ``(None, why it is unusable)``: unreadable, not JSON, or what
    ``problem_of`` (e.g. :func:`manifest_problem`, :func:`metrics_problem`) says of it."""
    try:
        doc = read_json(path)
    except (OSError, ValueError) as err:
        return None, str(err)
    problem = problem_of(doc)
    return (None, problem) if problem else (doc, None)


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _json_default(obj):
    try:
        import torch

        if torch.is_tensor(obj):
            return obj.detach().cpu().tolist()
    except ImportError:  # pragma: no cover
        pass
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


class RunDir:
    """Access to one run directory (paths, atomic writes, record iteration)."""

    def __init__(self, root: str | Path, warn: Callable[[str], None] = _warn):
        self.root = Path(root)
        self.warn = warn

    # paths -------------------------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    def record_path(self, method: str, instance: str) -> Path:
        return self.root / "records" / method / f"{instance}.json"

    def artifact_path(self, method: str, instance: str) -> Path:
        return self.root / "artifacts" / method / f"{instance}.pt"

    def render_path(self, method: str, instance: str) -> Path:
        return self.root / "renders" / method / f"{instance}.png"

    def metrics_path(self, name: str) -> Path:
        return self.root / "metrics" / f"{name}.json"

    def fid_dir(self, method: str, kind: str) -> Path:
        return self.root / "fid" / method / kind

    def fid_image_path(self, method: str, kind: str, instance: str) -> Path:
        """One FID image of an instance: ``RUN/fid/<method>/<kind>/<instance>.png``."""
        return self.fid_dir(method, kind) / f"{instance}.png"

    def fid_view_path(self, method: str, kind: str, instance: str, azimuth: int) -> Path:
        """One canonical view: ``RUN/fid/<method>/<kind>/<instance>_<azimuth, 3 digits>.png``."""
        return self.fid_dir(method, kind) / f"{instance}_{int(azimuth):03d}.png"

    def fid_features_path(self, method: str, kind: str, fingerprint: str) -> Path:
        """Cached features of one FID image folder: ``RUN/fid/<method>/<kind>/features-<fingerprint>.pt``."""
        return self.fid_dir(method, kind) / f"features-{fingerprint}.pt"

    @property
    def manifest_backup_path(self) -> Path:
        """A second copy of the manifest (``bench repair`` restores it)."""
        return self.log_dir / "manifest.json"

    def damaged_dir(self, method: str) -> Path:
        return self.root / "records" / method / ".damaged"

    @property
    def log_dir(self) -> Path:
        return self.root / "logs"

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    def exists(self) -> bool:
        return self.manifest_path.is_file()

    # manifest ----------------------------------------------------------------------------------
    def read_manifest(self) -> dict:
        """The manifest; a missing or damaged one is a one-line `UserError` saying how to repair it."""
        if not self.manifest_path.is_file():
            if self.manifest_path.exists() or (self.root / "records").is_dir():
                raise UserError(f"{self.manifest_path} is missing or not a file; `bench repair {self.root}` "
                                "restores it from its copy in logs/")
            raise UserError(f"{self.root} is not a run directory (no manifest.json); "
                            "pass a folder written by `bench run`")
        manifest, problem = read_checked(self.manifest_path, manifest_problem)
        if problem:
            raise UserError(f"{self.manifest_path} is damaged ({problem}); `bench repair {self.root}` restores it "
                            "from its copy in logs/")
        return manifest

    def write_manifest(self, manifest: dict) -> None:
        """The manifest and its copy in logs/ (keeps the --methods order)."""
        atomic_write_json(self.manifest_path, manifest, sort_keys=False)
        atomic_write_json(self.manifest_backup_path, manifest, sort_keys=False)

    # records -----------------------------------------------------------------------------------
    def read_record(self, method: str, instance: str) -> dict | None:
        """The record, or None when there is none (a damaged one is moved aside: see `_load_record`)."""
        path = self.record_path(method, instance)
        if not path.is_file():
            return None
        return self._load_record(path, method, instance)

    def _load_record(self, path: Path, method: str, instance: str | None = None) -> dict | None:
        """Parse and validate one record file; a damaged one is moved to ``.damaged/`` and None returned."""
        try:
            rec = read_json(path)
        except FileNotFoundError:
            return None  # moved aside by another reader meanwhile
        except ValueError as err:
            problem = str(err)
        else:
            problem = record_problem(rec, method, instance if instance is not None else path.stem)
            if problem is None:
                return rec
        self.quarantine_record(path, method, problem)
        return None

    def quarantine_record(self, path: Path, method: str, problem: str) -> Path | None:
        """Move a damaged record to ``records/<method>/.damaged/`` (never deleted) and warn."""
        try:
            dest = move_aside(path, self.damaged_dir(method))
        except FileNotFoundError:
            return None
        self.warn(f"damaged record {path} ({problem}) moved to {dest}; the instance counts as not done and "
                  "`bench run` with the same command redoes it")
        return dest

    def write_record(self, record: dict) -> None:
        record = {"version": RECORD_VERSION, **record}
        atomic_write_json(self.record_path(record["method"], record["instance"]), record)

    def methods(self) -> list[str]:
        folder = self.root / "records"
        return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []

    def iter_records(self, method: str | None = None) -> Iterator[dict]:
        """Records sorted by (method, dataset index)."""
        for m in [method] if method else self.methods():
            folder = self.root / "records" / m
            recs = [self._load_record(p, m) for p in folder.glob("*.json")] if folder.is_dir() else []
            yield from sorted((r for r in recs if r is not None), key=lambda r: (r["index"], r["instance"]))

    def records(self, method: str | None = None) -> list[dict]:
        return list(self.iter_records(method))

    def record_status(self, method: str, instance: str) -> str | None:
        """``"ok"``, ``"failed"`` or None (no record yet)."""
        rec = self.read_record(method, instance)
        return None if rec is None else rec.get("status")

    def _record_head(self, method: str, instance: str, index: int, runtime: dict, source: str | None) -> dict:
        prev = self.read_record(method, instance)
        return {"method": method, "instance": instance, "index": index, "source": source,
                "attempt": (prev or {}).get("attempt", 0) + 1, "runtime": runtime}

    def write_failure(self, method: str, instance: str, index: int, error: str, runtime: dict,
                      source: str | None = None) -> None:
        """The record of an instance that failed (loading, reconstruction or non-finite output);
        ``source``: the dataset's `source` of the instance (its image file)."""
        self.write_record({**self._record_head(method, instance, index, runtime, source), "status": "failed",
                           "error": error, "metrics": {}, "timings": {}})

    def write_result(self, method: str, sample, recon, metrics: dict, runtime: dict,
                     default_batch_size: int = 1, source: str | None = None) -> dict:
        """Store one reconstruction: artifact, input-view PNG, then the record (which marks it done)."""
        artifact = self.save_artifact(method, sample.id, artifact_payload(method, sample, recon))
        render = self.render_path(method, sample.id)
        atomic_write_bytes(render, input_view_png(sample, recon))
        info = dict(recon.info)
        record = {
            **self._record_head(method, sample.id, sample.index, runtime, source),
            "status": "ok",
            "error": None,
            "metrics": metrics,
            "timings": dict(recon.timings),
            "timings_batch": info.pop("batch_timings", None),
            "batch_size": int(info.pop("batch_size", default_batch_size)),
            "class_id": sample.class_id,
            "mask_source": sample.mask_source,
            # a method that searched the initial camera says so (and which one) in its info
            "camera_source": info.pop("camera_source", sample.camera_source),
            "camera_init": [round(float(x), 7) for x in info.pop("camera_init", sample.camera)],
            "camera": [round(float(x), 7) for x in recon.camera] if recon.camera is not None else None,
            "losses": [float(x) for x in recon.losses],
            "info": info,
            "labels": list(info.get("labels", [])),
            "artifact": str(artifact.relative_to(self.root)),
            "render": str(render.relative_to(self.root)),
        }
        self.write_record(record)
        return record

    def clean_stale_temp_files(self, method: str, ids: set[str]) -> None:
        """Remove temp files a killed worker left for instances in ``ids`` (never another shard's)."""
        for folder in (self.root / "records" / method, self.root / "artifacts" / method,
                       self.root / "renders" / method):
            if folder.is_dir():
                for tmp in folder.glob(".*.tmp"):
                    target = tmp.name[1:-len(".tmp")].rsplit(".", 1)[0]  # ".<id>.<ext>.<random>.tmp"
                    if Path(target).stem in ids:
                        tmp.unlink(missing_ok=True)

    # artifacts ---------------------------------------------------------------------------------
    def save_artifact(self, method: str, instance: str, payload: dict) -> Path:
        """Atomically ``torch.save`` an artifact dict (see :func:`artifact_payload`)."""
        import io

        import torch

        buf = io.BytesIO()
        torch.save(payload, buf)
        path = self.artifact_path(method, instance)
        atomic_write_bytes(path, buf.getvalue())
        return path

    def load_artifact(self, method: str, instance: str, device="cpu") -> dict:
        """The artifact dict; `ArtifactError` when it is missing, unreadable or not this instance's."""
        import pickle

        import torch

        path = self.artifact_path(method, instance)
        if not path.is_file():
            raise ArtifactError(f"artifact {path} is missing; rerun `bench run` after deleting the record "
                                f"{self.record_path(method, instance)}")
        try:
            art = torch.load(path, map_location=device, weights_only=True)
        except (RuntimeError, pickle.UnpicklingError, EOFError, OSError, ValueError) as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise ArtifactError(f"artifact {path} cannot be read ({first[:160]})") from None
        problem = artifact_problem(art, method, instance)
        if problem:
            raise ArtifactError(f"artifact {path} is not this instance's reconstruction ({problem})")
        return art

    # corpus metrics ----------------------------------------------------------------------------
    def write_metrics(self, name: str, values: dict) -> None:
        atomic_write_json(self.metrics_path(name), values)

    def read_metrics(self) -> dict[str, dict]:
        """``{name: metric file}``; a damaged file is a one-line `UserError` naming it and the repair."""
        folder = self.root / "metrics"
        if not folder.is_dir():
            return {}
        out = {}
        for path in sorted(folder.glob("*.json")):
            doc, problem = read_checked(path, metrics_problem)
            if problem:
                raise UserError(f"{path} is damaged ({problem}); `bench repair {self.root}` moves it aside, then "
                                f"`bench eval {self.root} --metrics {path.stem}` computes it again")
            out[path.stem] = doc
        return out


# ---------------------------------------------------------------------------------------------
# what a record's files hold


def artifact_payload(method: str, sample, recon) -> dict:
    """The dict stored per (method, instance) in ``artifacts/``: the reconstruction and its input."""
    cpu = lambda t: None if t is None else t.detach().float().cpu()  # noqa: E731
    mesh = None
    if recon.mesh is not None:
        mesh = {k: (v.detach().cpu() if v is not None and hasattr(v, "detach") else v)
                for k, v in recon.mesh.__dict__.items()}
    gt = None
    if sample.gt is not None:
        gt = {k: (v.detach().cpu() if hasattr(v, "detach") else v) for k, v in sample.gt.items()}
    return {
        "method": method, "instance": sample.id, "index": sample.index,
        "input_image": cpu(sample.image), "input_mask": cpu(sample.mask), "mask_source": sample.mask_source,
        "class_id": sample.class_id, "image": cpu(recon.image), "mask": cpu(recon.mask),
        "camera": cpu(recon.camera), "camera_init": cpu(sample.camera), "latent": cpu(recon.latent),
        "mesh": mesh, "gt": gt,
    }


def artifact_problem(art, method: str, instance: str) -> str | None:
    """Why ``art`` is not the artifact of (method, instance) (None when it is)."""
    if not isinstance(art, dict):
        return f"a {type(art).__name__}, not an artifact dict"
    missing = [k for k in ARTIFACT_KEYS if k not in art]
    if missing:
        return f"no {', '.join(missing)}"
    if art.get("instance", instance) != instance:
        return f"it holds instance {art['instance']!r}"
    return None


def input_view_png(sample, recon) -> bytes:
    """PNG bytes of input | render on white | overlay (render mask edges in red over the input)."""
    import io

    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image

    inp = sample.image.detach().float().cpu().clamp(0, 1)
    h, w = inp.shape[-2:]
    img = recon.image.detach().float().cpu().clamp(0, 1)
    msk = recon.mask.detach().float().cpu()
    if img.shape[-2:] != (h, w):
        img = F.interpolate(img[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        msk = F.interpolate(msk[None, None], size=(h, w), mode="nearest")[0, 0]
    render = img * msk + (1 - msk)
    edge = (msk > 0.5).float()
    edge = (F.max_pool2d(edge[None, None], 3, 1, 1)[0, 0] - edge).clamp(0, 1)
    overlay = inp * (1 - edge) + torch.tensor([1.0, 0, 0])[:, None, None] * edge
    strip = torch.cat([inp, render, overlay], dim=2)
    arr = (strip.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()
