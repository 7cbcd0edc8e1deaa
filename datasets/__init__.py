"""Datasets: each yields :class:`bench.datasets.base.Sample` objects (CUB, PASCAL3D+ car, synthetic)."""
