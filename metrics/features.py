"""Feature cache of the FID image sets: every PNG goes through the extractor once per extractor.

Key: :class:`FeatureKey` = (torch-fidelity extractor name, feature layer, weights sha256, image
folder ``(method, kind)``). FID_10 and FID_12 read the same ``views12`` folder (FID_10 a subset of
its files) and KID reuses the FID features, so one extraction serves all three; another extractor,
layer or weights file is another key, so stale features are never reused. Within a key, each PNG's
feature is stored with its size/mtime stamp and recomputed when the file changes.

On disk: ``RUN/fid/<method>/<kind>/features-<fingerprint>.pt`` (fingerprint = short hash of the
extractor part of the key; the file also stores the full key and is ignored when it does not match).
"""
from __future__ import annotations

import hashlib
import io
import os
from dataclasses import asdict, dataclass

import torch

from bench.metrics.base import EvalContext
from bench.metrics.images import ImageSet, PngDataset
from bench.store import atomic_write_bytes


@dataclass(frozen=True)
class FeatureKey:
    """What a cached feature depends on besides the image file itself."""

    extractor: str
    layer: str
    weights_sha256: str | None
    method: str
    kind: str

    @property
    def fingerprint(self) -> str:
        """Short id of (extractor, layer, weights): the cache file name within the image folder."""
        return hashlib.sha256(f"{self.extractor}|{self.layer}|{self.weights_sha256}".encode()).hexdigest()[:16]


class FeatureCache:
    """Features of the run's FID image sets, in memory and on disk; the extractor is loaded on first use."""

    def __init__(self, ctx: EvalContext):
        self.ctx, self.run, self.opts = ctx, ctx.run, ctx.options
        self._extractor = None
        self._memory: dict[FeatureKey, dict[str, tuple[str, torch.Tensor]]] = {}

    @property
    def extractor(self):
        """The `FeatureExtractor` of ``--fid-extractor`` / ``--fid-weights`` (loaded once)."""
        if self._extractor is None:
            from bench.metrics.extractors import FeatureExtractor

            self._extractor = FeatureExtractor(self.opts.fid_extractor, self.opts.fid_weights, self.opts.device,
                                               self.opts.batch_size)
        return self._extractor

    def key(self, images: ImageSet) -> FeatureKey:
        fe = self.extractor
        return FeatureKey(fe.fidelity_name, fe.feature, fe.weights_sha256, images.method, images.kind)

    def features(self, images: ImageSet) -> torch.Tensor:
        """(N,D) features of ``images`` (same order); only new or changed files go through the extractor."""
        if not len(images):
            return torch.zeros(0, 0)
        key = self.key(images)
        stamps = {}
        for p in images:
            st = os.stat(p)
            stamps[p.name] = f"{st.st_size}|{st.st_mtime_ns}"
        mem = self._memory.get(key)
        if mem is None:
            mem = self._memory[key] = self._load(key)
        todo = list({p.name: p for p in images if mem.get(p.name, (None,))[0] != stamps[p.name]}.values())
        if todo:
            tick = self.ctx.ticker(f"{images.method}: {images.kind} features", len(todo))
            feats = self.extractor.features(PngDataset(todo), progress=tick)
            for p, f in zip(todo, feats):
                mem[p.name] = (stamps[p.name], f.clone())
            self._save(key, mem)
        return torch.stack([mem[p.name][1] for p in images])

    def _load(self, key: FeatureKey) -> dict[str, tuple[str, torch.Tensor]]:
        path = self.run.fid_features_path(key.method, key.kind, key.fingerprint)
        if not path.is_file():
            return {}
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            if blob.get("key") != asdict(key):
                return {}
            return {n: (s, f) for n, s, f in zip(blob["names"], blob["stamps"], blob["features"])}
        except Exception:  # noqa: BLE001 - a damaged or foreign cache file is recomputed
            return {}

    def _save(self, key: FeatureKey, mem: dict[str, tuple[str, torch.Tensor]]) -> None:
        names = sorted(mem)
        buf = io.BytesIO()
        torch.save({"key": asdict(key), "names": names, "stamps": [mem[n][0] for n in names],
                    "features": torch.stack([mem[n][1] for n in names]), "extractor": self.extractor.describe()}, buf)
        atomic_write_bytes(self.run.fid_features_path(key.method, key.kind, key.fingerprint), buf.getvalue())
