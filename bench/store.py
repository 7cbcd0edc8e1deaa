"""The run directory: manifest, one record per (method, instance), artifacts, corpus metrics.

Layout (``RUN`` = e.g. ``results/<run>``)::

    RUN/manifest.json                      protocol fingerprint (see bench.manifest)
    RUN/records/<method>/<instance>.json   one JSON record per (method, instance); its existence = done
    RUN/artifacts/<method>/<instance>.pt   the Reconstruction + its input (torch.save dict, see below)
    RUN/renders/<method>/<instance>.png    input view: input | render | overlay, for people
    RUN/metrics/<name>.json                corpus-level metrics written by ``bench eval``
    RUN/fid/<method>/<kind>/...            renders for FID (written once, reused)
    RUN/logs/                              per-worker logs
    RUN/report/                            tables and plots written by ``bench report``

Every file is written atomically (temp file in the same folder + ``os.replace``), so a killed
worker leaves either the old state or the new file, never a partial one. The artifact is written
before the record, so a record always points at a complete artifact.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

RECORD_VERSION = 1


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file and rename (atomic on POSIX)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any, sort_keys: bool = True) -> None:
    text = json.dumps(obj, indent=2, sort_keys=sort_keys, default=_json_default) + "\n"
    atomic_write_bytes(path, text.encode())


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

    def __init__(self, root: str | Path):
        self.root = Path(root)

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
    def log_dir(self) -> Path:
        return self.root / "logs"

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    def exists(self) -> bool:
        return self.manifest_path.is_file()

    # manifest ----------------------------------------------------------------------------------
    def read_manifest(self) -> dict:
        from bench.errors import UserError

        if not self.manifest_path.is_file():
            raise UserError(f"{self.root} is not a run directory (no manifest.json); "
                            "pass a folder written by `bench run`")
        return json.loads(self.manifest_path.read_text())

    def write_manifest(self, manifest: dict) -> None:
        atomic_write_json(self.manifest_path, manifest, sort_keys=False)  # keeps the --methods order

    # records -----------------------------------------------------------------------------------
    def read_record(self, method: str, instance: str) -> dict | None:
        path = self.record_path(method, instance)
        if not path.is_file():
            return None
        return json.loads(path.read_text())

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
            recs = [json.loads(p.read_text()) for p in folder.glob("*.json")] if folder.is_dir() else []
            yield from sorted(recs, key=lambda r: (r.get("index", 0), r["instance"]))

    def records(self, method: str | None = None) -> list[dict]:
        return list(self.iter_records(method))

    def record_status(self, method: str, instance: str) -> str | None:
        """``"ok"``, ``"failed"`` or None (no record yet)."""
        rec = self.read_record(method, instance)
        return None if rec is None else rec.get("status")

    def _record_head(self, method: str, instance: str, index: int, runtime: dict) -> dict:
        prev = self.read_record(method, instance)
        return {"method": method, "instance": instance, "index": index,
                "attempt": (prev or {}).get("attempt", 0) + 1, "runtime": runtime}

    def write_failure(self, method: str, instance: str, index: int, error: str, runtime: dict) -> None:
        """The record of an instance that failed (loading, reconstruction or non-finite output)."""
        self.write_record({**self._record_head(method, instance, index, runtime), "status": "failed",
                           "error": error, "metrics": {}, "timings": {}})

    def write_result(self, method: str, sample, recon, metrics: dict, runtime: dict,
                     default_batch_size: int = 1) -> dict:
        """Store one reconstruction: artifact, input-view PNG, then the record (which marks it done)."""
        artifact = self.save_artifact(method, sample.id, artifact_payload(method, sample, recon))
        render = self.render_path(method, sample.id)
        atomic_write_bytes(render, input_view_png(sample, recon))
        info = dict(recon.info)
        record = {
            **self._record_head(method, sample.id, sample.index, runtime),
            "status": "ok",
            "error": None,
            "metrics": metrics,
            "timings": dict(recon.timings),
            "timings_batch": info.pop("batch_timings", None),
            "batch_size": int(info.pop("batch_size", default_batch_size)),
            "class_id": sample.class_id,
            "mask_source": sample.mask_source,
            "camera_source": sample.camera_source,
            "camera_init": [round(float(x), 7) for x in sample.camera],
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
        import torch

        return torch.load(self.artifact_path(method, instance), map_location=device, weights_only=True)

    # corpus metrics ----------------------------------------------------------------------------
    def write_metrics(self, name: str, values: dict) -> None:
        atomic_write_json(self.metrics_path(name), values)

    def read_metrics(self) -> dict[str, dict]:
        folder = self.root / "metrics"
        if not folder.is_dir():
            return {}
        return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}


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
