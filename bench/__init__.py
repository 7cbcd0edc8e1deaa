"""meshbench: evaluation harness for single-view 3D reconstruction by GAN inversion.

Importing ``bench`` imports no torch; heavy modules load on first use.
"""
from __future__ import annotations

__version__ = "0.1.0"


def load_generator(path, device="cpu", texture_resolution=None):
    """Load the ConvMesh/MeshInversion generator: an official checkpoint file, a bare state dict,
    or ``"demo"`` for the untrained demo generator. See
    :func:`bench.methods.meshinversion.generator.load_generator`."""
    from bench.methods.meshinversion.generator import load_generator as _load

    return _load(path, device=device, texture_resolution=texture_resolution)
