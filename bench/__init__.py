"""meshbench: evaluation harness for single-view 3D reconstruction by GAN inversion.

The Python API (the same code paths and validation as the CLI; see README "Python API")::

    import bench

    sample = bench.Sample.from_image(image, mask)              # own photo + mask (PIL / numpy / torch)
    method = bench.load_method("ours", profile="fast", select_num=4)
    recon = method.reconstruct([sample])[0]
    image, mask = recon.render()                                # (3,H,W) in [0,1], (H,W)
    recon.export("bird.obj")                                    # .obj + .mtl + texture .png
    recon.metrics(sample)                                       # {"iou": ..., ...}

    run_dir = bench.run("ours,cmr-tto", dataset="synthetic", profile="fast")   # `bench run`
    bench.report(run_dir)                                                      # `bench report`

Importing ``bench`` imports no torch; heavy modules load on first use. The report code itself is the
package :mod:`bench.reporting`.
"""
from __future__ import annotations

from bench.api import load_dataset, load_method, report, run

__version__ = "0.1.0"

__all__ = ["Sample", "__version__", "load_dataset", "load_generator", "load_method", "report", "run"]


def load_generator(path, device="cpu", texture_resolution=None):
    """Load the ConvMesh/MeshInversion generator: an official checkpoint file, a bare state dict,
    or ``"demo"`` for the untrained demo generator. See
    :func:`bench.methods.meshinversion.generator.load_generator`."""
    from bench.methods.meshinversion.generator import load_generator as _load

    return _load(path, device=device, texture_resolution=texture_resolution)


def __getattr__(name: str):
    """``bench.Sample`` (:class:`bench.datasets.base.Sample`), imported (with torch) on first use."""
    if name == "Sample":
        from bench.datasets.base import Sample

        return Sample
    raise AttributeError(f"module 'bench' has no attribute {name!r}")
