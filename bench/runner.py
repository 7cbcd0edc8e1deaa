"""Run methods over (a shard of) a dataset into a run directory: scheduling and failure isolation.

Completion is "the record exists": a rerun skips finished instances, so a crash or a killed worker
loses only the instances in flight. A failing instance is recorded as failed and the run goes on
(:func:`bench.failures.isolate_failures`). What is written, and where, is the store's
(:class:`bench.store.RunDir`); the runner only decides what runs when.
"""
from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import registry
from bench.config import build_config
from bench.errors import UserError
from bench.failures import find_non_finite, isolate_failures
from bench.manifest import load_average, protocol_hash, usable_cores
from bench.methods_spec import base_name
from bench.store import RunDir

log = logging.getLogger("bench.run")


@dataclass
class RunOptions:
    """Everything `bench run` was asked; the same object drives every worker."""

    methods: list[str]
    dataset: str = "synthetic"
    out: Path = Path("results/run")
    dataset_overrides: dict[str, str] = field(default_factory=dict)
    method_overrides: dict[str, dict[str, object]] = field(default_factory=dict)
    profile: str = "paper"
    device: str = "cpu"
    batch_size: int = 1
    limit: int | None = None
    seed: int = 0
    retries: int = 0
    num_workers: int | None = None


# ---------------------------------------------------------------------------------------------
# building components


def build_dataset(opts: RunOptions):
    """The run's dataset; its samples carry ``meta["seed"]`` derived from ``opts.seed``."""
    cls = registry.load("datasets", opts.dataset)
    cfg = build_config(cls.Config, opts.profile, getattr(cls, "profiles", {}), opts.dataset_overrides, opts.dataset)
    return cls(cfg, run_seed=opts.seed)


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


def build_components(opts: RunOptions):
    """``(dataset, {spec: method})``, every config validated; built once per process."""
    check_overrides(opts)
    dataset = build_dataset(opts)
    return dataset, {spec: build_method(spec, opts) for spec in opts.methods}


def check_overrides(opts: RunOptions) -> None:
    """Every ``--set OWNER.key`` must name the dataset or one of the methods (dataset overrides are
    already split off, so only the method owners need checking)."""
    owners = {opts.dataset, *opts.methods, *(base_name(m) for m in opts.methods)}
    for owner in opts.method_overrides:
        if owner not in owners:
            raise UserError(f"--set {owner}.…: {owner!r} is neither the dataset nor a method of this run "
                            f"({', '.join(sorted(owners))})")


def load_instance_metrics() -> list:
    """One instance of every registered per-instance metric (``bench.registry.metrics("instance")``)."""
    return [entry.load()() for entry in registry.metrics("instance")]


def instance_metrics(sample, recon, metrics: list | None = None) -> dict[str, float]:
    """The per-instance metric values of one ok reconstruction, as its record stores them.

    ``metrics`` are the metric objects (default: :func:`load_instance_metrics`); each one's
    ``instance(sample, recon)`` values are merged in registry order.
    """
    out: dict[str, float] = {}
    for metric in load_instance_metrics() if metrics is None else metrics:
        out.update(metric.instance(sample, recon))
    return out


def shard_indices(n: int, limit: int | None, shard: int, num_shards: int) -> list[int]:
    """Dataset indices of one shard: ``index % num_shards == shard`` over the first ``limit`` items."""
    total = n if limit is None else min(n, limit)
    return [i for i in range(total) if i % num_shards == shard]


# ---------------------------------------------------------------------------------------------
# one worker


class Worker:
    """Runs every method of a run on one shard; the store writes what comes back.

    ``dataset`` and ``methods`` are the components the caller already built (the CLI builds them
    once to validate and describe the run); a worker process builds its own.
    """

    def __init__(self, opts: RunOptions, shard: int = 0, num_shards: int = 1, progress: bool = True,
                 dataset=None, methods: dict | None = None):
        self.opts, self.shard, self.num_shards, self.progress = opts, shard, num_shards, progress
        self.run = RunDir(opts.out)
        if dataset is None or methods is None:
            dataset, methods = build_components(opts)
        self.dataset, self.methods = dataset, methods
        self.metrics = load_instance_metrics()
        self.protocols: dict[str, str] = {}
        self.load_at_start: float | None = None  # 1-minute load average when the current batch started
        self.cores = usable_cores()

    def shard_ids(self) -> set[str]:
        return {self.dataset.instance_id(i) for i in self.indices()}

    def indices(self) -> list[int]:
        return shard_indices(len(self.dataset), self.opts.limit, self.shard, self.num_shards)

    def todo(self, method: str, retry: bool = False) -> list[int]:
        """Indices of this shard still to do: without a record, or (``retry``) with a failed record."""
        return [i for i in self.indices() if self.is_todo(method, self.dataset.instance_id(i), retry)]

    def is_todo(self, method: str, instance: str, retry: bool) -> bool:
        status = self.run.record_status(method, instance)
        return status is None if not retry else status == "failed"

    def run_all(self) -> dict[str, dict[str, int]]:
        """Run every method over the shard; returns ``{method: {"ok": n, "failed": m}}`` for this pass."""
        from bench.failures import release_cached_memory

        summary = {}
        for spec in self.opts.methods:
            method = self.methods[spec]
            self.protocols[spec] = protocol_hash(self.dataset.describe(), method.describe(), self.opts.seed,
                                                 self.opts.profile)
            summary[spec] = {"ok": 0, "failed": 0, "skipped": 0}
            ready = False
            self.run.clean_stale_temp_files(spec, self.shard_ids())
            for attempt in range(1 + self.opts.retries):  # pass 0: new instances; then retries of failures
                todo = self.todo(spec, retry=attempt > 0)
                if not todo:
                    continue
                if not ready:
                    method.setup(self.opts.device)
                    ready = True
                counts = self.run_method(method, todo, retry=attempt > 0)
                for k in counts:
                    summary[spec][k] += counts[k]
            self.methods[spec] = None  # free its weights before the next method is set up
            release_cached_memory()
        return summary

    def loader(self, indices):
        import torch

        from bench.datasets.base import collate_samples

        workers = self.opts.num_workers
        if workers is None:
            workers = getattr(self.dataset, "default_num_workers", 0)
        return torch.utils.data.DataLoader(torch.utils.data.Subset(self.dataset, indices),
                                           batch_size=self.opts.batch_size, shuffle=False, num_workers=workers,
                                           collate_fn=collate_samples)

    def run_method(self, method, indices, retry: bool = False) -> dict[str, int]:
        """Reconstruct ``indices`` with ``method``. Each instance is claimed first (`bench.locks.Claims`):
        one that another live process holds, or that got its record meanwhile, is skipped."""
        from bench.datasets.base import FailedSample
        from bench.locks import Claims
        from bench.methods.base import Reconstruction
        from bench.progress import progress_bar

        counts = {"ok": 0, "failed": 0, "skipped": 0}
        claims = Claims(self.run.root, method.name)

        def mine(sample) -> bool:
            if not claims.claim(sample.id):
                return False
            if self.is_todo(method.name, sample.id, retry):
                return True
            claims.release(sample.id)
            return False

        try:
            with progress_bar(enabled=self.progress) as bar:
                task = bar.add_task(f"{method.name} on {self.dataset.name}", total=len(indices))
                for batch in self.loader(indices):
                    self.load_at_start = load_average()
                    claimed = [s for s in batch if mine(s)]
                    counts["skipped"] += len(batch) - len(claimed)
                    samples = [s for s in claimed if not isinstance(s, FailedSample)]
                    for s in claimed:
                        if isinstance(s, FailedSample):
                            self.write_failure(method.name, s.id, s.index, f"loading failed: {s.error}")
                            claims.release(s.id)
                            counts["failed"] += 1
                    results = isolate_failures(method.reconstruct, samples,
                                               lambda s, msg: Reconstruction.failed(s.id, msg)) if samples else []
                    for sample, recon in zip(samples, results):
                        ok = self.write_result(method.name, sample, recon)
                        claims.release(sample.id)
                        counts["ok" if ok else "failed"] += 1
                    bar.advance(task, len(batch))
        finally:
            claims.release_all()
        return counts

    def runtime(self, method: str) -> dict:
        """How a record was made: shard, host, process, device, and the protocol hash of its method
        (`bench.manifest.protocol_hash`: a run directory that lost its manifest can still be checked)."""
        import torch

        return {"shard": self.shard, "num_shards": self.num_shards, "host": socket.gethostname(), "pid": os.getpid(),
                "finished": time.time(), "device": self.opts.device, "protocol": self.protocols.get(method),
                "load_at_start": self.load_at_start, "cores": self.cores, "threads": torch.get_num_threads()}

    def write_failure(self, method: str, instance: str, index: int, error: str) -> None:
        log.warning("%s %s failed: %s", method, instance, error)
        self.run.write_failure(method, instance, index, error, self.runtime(method), self.dataset.source(index))

    def write_result(self, method: str, sample, recon) -> bool:
        """Store one reconstruction (or its failure); returns whether it succeeded."""
        if recon.status == "ok":
            mesh = recon.mesh
            bad = find_non_finite({"loss": recon.losses, "camera": recon.camera, "image": recon.image,
                                   "mask": recon.mask, "latent": recon.latent,
                                   "mesh vertices": None if mesh is None else mesh.vertices,
                                   "mesh texture": None if mesh is None else mesh.texture,
                                   "mesh textures": None if mesh is None else mesh.face_textures})
            if bad:
                recon.status, recon.error = "failed", f"non-finite values (NaN/inf) in the reconstruction's {bad}"
        if recon.status != "ok":
            self.write_failure(method, sample.id, sample.index, recon.error or "failed")
            return False
        metrics = instance_metrics(sample, recon, self.metrics)
        self.run.write_result(method, sample, recon, metrics, self.runtime(method),
                              default_batch_size=self.opts.batch_size, source=self.dataset.source(sample.index))
        log.info("%s %s ok %s", method, sample.id, {k: round(v, 4) for k, v in metrics.items()})
        return True
