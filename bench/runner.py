"""Run methods over (a shard of) a dataset into a run directory, one atomic record per instance.

Completion is "the record exists": a rerun skips finished instances, so a crash or a killed worker
loses only the instances in flight. A failing instance is recorded as failed and the run goes on.
"""
from __future__ import annotations

import logging
import math
import os
import socket
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from bench import registry
from bench.config import build_config
from bench.errors import UserError
from bench.methods_spec import base_name
from bench.store import RunDir

log = logging.getLogger("bench.run")

INSTANCE_METRICS = ("iou",)


@dataclass
class RunOptions:
    """Everything `bench run` was asked; the same object drives every worker."""

    methods: list[str]
    dataset: str = "synthetic"
    out: Path = Path("results/run")
    dataset_overrides: dict[str, str] = field(default_factory=dict)
    method_overrides: dict[str, dict[str, str]] = field(default_factory=dict)
    profile: str = "paper"
    device: str = "cpu"
    batch_size: int = 1
    limit: int | None = None
    seed: int = 0
    retries: int = 0
    num_workers: int | None = None


def instance_seed(seed: int, index: int) -> int:
    """Per-instance RNG seed: depends only on the run seed and the dataset index (shard-invariant)."""
    return (seed * 1_000_003 + index * 7919 + 12345) % (2**31 - 1)


# ---------------------------------------------------------------------------------------------
# building components


def build_dataset(opts: RunOptions):
    cls = registry.load("datasets", opts.dataset)
    cfg = build_config(cls.Config, opts.profile, getattr(cls, "profiles", {}), opts.dataset_overrides, opts.dataset)
    return cls(cfg)


def build_method(spec: str, opts: RunOptions):
    """Instantiate method ``spec`` (``NAME`` or ``NAME@VARIANT``) with profile and ``--set`` overrides.

    Overrides of ``NAME`` apply to every variant of it; ``NAME@VARIANT`` overrides apply on top.
    """
    base = base_name(spec)
    cls = registry.load("methods", base)
    overrides = dict(opts.method_overrides.get(base, {}))
    if spec != base:
        overrides.update(opts.method_overrides.get(spec, {}))
    cfg = build_config(cls.Config, opts.profile, getattr(cls, "profiles", {}), overrides, spec)
    method = cls(cfg)
    method.name = spec
    return method


def check_overrides(opts: RunOptions) -> None:
    """Every ``--set OWNER.key`` must name the dataset or one of the methods (dataset overrides are
    already split off, so only the method owners need checking)."""
    owners = {opts.dataset, *opts.methods, *(base_name(m) for m in opts.methods)}
    for owner in opts.method_overrides:
        if owner not in owners:
            raise UserError(f"--set {owner}.…: {owner!r} is neither the dataset nor a method of this run "
                            f"({', '.join(sorted(owners))})")


def shard_indices(n: int, limit: int | None, shard: int, num_shards: int) -> list[int]:
    """Dataset indices of one shard: ``index % num_shards == shard`` over the first ``limit`` items."""
    total = n if limit is None else min(n, limit)
    return [i for i in range(total) if i % num_shards == shard]


# ---------------------------------------------------------------------------------------------
# one worker


class Worker:
    """Runs every method of a run on one shard; writes artifacts, renders and records."""

    def __init__(self, opts: RunOptions, shard: int = 0, num_shards: int = 1, progress: bool = True):
        self.opts, self.shard, self.num_shards, self.progress = opts, shard, num_shards, progress
        self.run = RunDir(opts.out)
        self.metrics = [registry.load("metrics", name)() for name in INSTANCE_METRICS]

    def clean_stale_temp_files(self, method: str, ids: set[str]) -> None:
        """Remove temp files a killed worker left for instances of this shard (never another shard's)."""
        for folder in (self.run.root / "records" / method, self.run.root / "artifacts" / method,
                       self.run.root / "renders" / method):
            if folder.is_dir():
                for tmp in folder.glob(".*.tmp"):
                    target = tmp.name[1:-len(".tmp")].rsplit(".", 1)[0]  # ".<id>.<ext>.<random>.tmp"
                    if Path(target).stem in ids:
                        tmp.unlink(missing_ok=True)

    def todo(self, method: str, dataset, retry: bool = False) -> list[int]:
        """Indices of this shard still to do: without a record, or (``retry``) with a failed record."""
        out = []
        for i in shard_indices(len(dataset), self.opts.limit, self.shard, self.num_shards):
            rec = self.run.read_record(method, dataset.instance_id(i))
            if (rec is None and not retry) or (retry and rec is not None and rec["status"] != "ok"):
                out.append(i)
        return out

    def run_all(self) -> dict[str, dict[str, int]]:
        """Run every method over the shard; returns ``{method: {"ok": n, "failed": m}}`` for this pass."""
        import torch

        dataset = build_dataset(self.opts)
        summary = {}
        for spec in self.opts.methods:
            method = build_method(spec, self.opts)
            summary[spec] = {"ok": 0, "failed": 0}
            ready = False
            ids = {dataset.instance_id(i) for i in shard_indices(len(dataset), self.opts.limit, self.shard,
                                                                  self.num_shards)}
            self.clean_stale_temp_files(spec, ids)
            for attempt in range(1 + self.opts.retries):  # pass 0: new instances; then retries of failures
                todo = self.todo(spec, dataset, retry=attempt > 0)
                if not todo:
                    continue
                if not ready:
                    method.setup(self.opts.device)
                    ready = True
                counts = self.run_method(method, dataset, todo)
                for k in counts:
                    summary[spec][k] += counts[k]
            del method
            if self.opts.device.startswith("cuda"):
                torch.cuda.empty_cache()
        return summary

    def loader(self, dataset, indices):
        import torch

        from bench.datasets.base import collate_samples

        workers = self.opts.num_workers
        if workers is None:
            workers = getattr(dataset, "default_num_workers", 0)
        return torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, indices), batch_size=self.opts.batch_size,
                                           shuffle=False, num_workers=workers, collate_fn=collate_samples)

    def run_method(self, method, dataset, indices) -> dict[str, int]:
        from bench.progress import progress_bar

        counts = {"ok": 0, "failed": 0}
        warmed = False
        with progress_bar(enabled=self.progress) as bar:
            task = bar.add_task(f"{method.name} on {dataset.name}", total=len(indices))
            for batch in self.loader(dataset, indices):
                from bench.datasets.base import FailedSample

                failed = [s for s in batch if isinstance(s, FailedSample)]
                samples = [s for s in batch if not isinstance(s, FailedSample)]
                for s in failed:
                    self.write_failure(method, s.id, s.index, f"loading failed: {s.error}")
                    counts["failed"] += 1
                if samples:
                    for s in samples:
                        s.meta["seed"] = instance_seed(self.opts.seed, s.index)
                    if not warmed:
                        self.warmup(method, samples)
                        warmed = True
                    for sample, recon in zip(samples, self.reconstruct(method, samples)):
                        ok = self.write_result(method, sample, recon)
                        counts["ok" if ok else "failed"] += 1
                bar.advance(task, len(batch))
        return counts

    def warmup(self, method, samples) -> None:
        """Untimed warm-up (lazy initialisation, cuDNN autotuning) before the first timed batch."""
        hook = getattr(method, "warmup", None)
        if hook is None:
            return
        try:
            hook(samples[:1])
        except Exception as exc:  # noqa: BLE001 - a warm-up failure shows again in the real call
            log.warning("warm-up of %s failed: %s", method.name, exc)

    def reconstruct(self, method, samples):
        """Call the method on a batch; on an exception retry one by one so one bad instance
        cannot take the batch down; exceptions of a single instance become failed records."""
        import torch

        from bench.methods.base import Reconstruction

        torch.manual_seed(samples[0].meta["seed"])
        try:
            return method.reconstruct(samples)
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001
            if self.opts.device.startswith("cuda"):
                torch.cuda.empty_cache()
            if len(samples) == 1:
                log.error("%s failed on %s:\n%s", method.name, samples[0].id, traceback.format_exc())
                return [Reconstruction.failed(samples[0].id, f"{type(exc).__name__}: {exc}")]
            return [r for s in samples for r in self.reconstruct(method, [s])]

    # writing -----------------------------------------------------------------------------------

    def runtime(self) -> dict:
        return {"shard": self.shard, "num_shards": self.num_shards, "host": socket.gethostname(), "pid": os.getpid(),
                "finished": time.time(), "device": self.opts.device}

    def base_record(self, method, instance: str, index: int) -> dict:
        prev = self.run.read_record(method.name, instance)
        return {"method": method.name, "instance": instance, "index": index,
                "attempt": (prev or {}).get("attempt", 0) + 1, "runtime": self.runtime()}

    def write_failure(self, method, instance: str, index: int, error: str) -> None:
        log.warning("%s %s failed: %s", method.name, instance, error)
        self.run.write_record({**self.base_record(method, instance, index), "status": "failed", "error": error,
                               "metrics": {}, "timings": {}})

    def write_result(self, method, sample, recon) -> bool:
        """Store one reconstruction (artifact, render, record); returns whether it succeeded."""
        if recon.status == "ok":
            problem = _non_finite(recon)
            if problem:
                recon.status, recon.error = "failed", problem
        if recon.status != "ok":
            self.write_failure(method, sample.id, sample.index, recon.error or "failed")
            return False
        metrics = {}
        for metric in self.metrics:
            metrics.update(metric.instance(sample, recon))
        if isinstance(recon.info.get("iou_init"), (int, float)):
            metrics["iou_init"] = float(recon.info["iou_init"])  # IoU at the initial camera, as the method saw it
        artifact = self.run.save_artifact(method.name, sample.id, artifact_payload(method.name, sample, recon))
        render = self.run.render_path(method.name, sample.id)
        save_input_view_png(render, sample, recon)
        record = {
            **self.base_record(method, sample.id, sample.index),
            "status": "ok",
            "error": None,
            "metrics": metrics,
            "timings": dict(recon.timings),
            "timings_batch": recon.info.pop("batch_timings", None),
            "batch_size": int(recon.info.pop("batch_size", self.opts.batch_size)),
            "class_id": sample.class_id,
            "mask_source": sample.mask_source,
            "camera_source": sample.camera_source,
            "camera_init": [round(float(x), 7) for x in sample.camera],
            "camera": [round(float(x), 7) for x in recon.camera] if recon.camera is not None else None,
            "losses": [float(x) for x in recon.losses],
            "info": recon.info,
            "labels": list(recon.info.get("labels", [])),
            "artifact": str(artifact.relative_to(self.run.root)),
            "render": str(render.relative_to(self.run.root)),
        }
        self.run.write_record(record)
        log.info("%s %s ok %s", method.name, sample.id, {k: round(v, 4) for k, v in metrics.items()})
        return True


def _non_finite(recon) -> str | None:
    import torch

    if any(not math.isfinite(float(x)) for x in recon.losses):
        return "non-finite loss during optimisation (NaN/inf); instance skipped"
    for name in ("camera", "image", "mask", "latent"):
        t = getattr(recon, name)
        if t is not None and not torch.isfinite(t).all():
            return f"non-finite values in the reconstruction's {name}"
    return None


def artifact_payload(method: str, sample, recon) -> dict:
    """The dict stored per (method, instance); see :mod:`bench.store`."""
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


def save_input_view_png(path: Path, sample, recon) -> None:
    """input | render | overlay (render mask edges in red over the input) as one PNG, atomically."""
    import io

    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image

    from bench.store import atomic_write_bytes

    inp = sample.image.detach().float().cpu().clamp(0, 1)
    h, w = inp.shape[-2:]
    img = recon.image.detach().float().cpu().clamp(0, 1)
    msk = recon.mask.detach().float().cpu()
    if img.shape[-2:] != (h, w):
        img = F.interpolate(img[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        msk = F.interpolate(msk[None, None], size=(h, w), mode="nearest")[0, 0]
    render = img * msk + (1 - msk)
    overlay = inp.clone()
    edge = (msk > 0.5).float()
    edge = (F.max_pool2d(edge[None, None], 3, 1, 1)[0, 0] - edge).clamp(0, 1)
    overlay = overlay * (1 - edge) + torch.tensor([1.0, 0, 0])[:, None, None] * edge
    strip = torch.cat([inp, render, overlay], dim=2)
    arr = (strip.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
