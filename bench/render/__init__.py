"""render: the shared 3D core (camera, DIB-R style rasteriser, texture sampling, renderers).

Public functions are re-exported lazily (PEP 562), so importing a torch-free submodule such as
``bench.render.obj`` does not import torch.

* :mod:`bench.render.camera` – quaternions, orthographic projection, FID view quaternions.
* :mod:`bench.render.rasterizer` – ``rasterize`` / ``interpolate`` / ``soft_silhouette``.
* :mod:`bench.render.texture` – UV and per-face-grid texture sampling.
* :mod:`bench.render.renderer` – ``render_uv_mesh``, ``render_mesh``, ``render_views``.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "FID12_ANGLES": "camera",
    "canonical_quaternion": "camera",
    "fid10_angles": "camera",
    "project": "camera",
    "project_novel_view": "camera",
    "qrot": "camera",
    "quat_mul": "camera",
    "split_camera": "camera",
    "view_quaternions": "camera",
    "Fragments": "rasterizer",
    "interpolate": "rasterizer",
    "rasterize": "rasterizer",
    "soft_silhouette": "rasterizer",
    "pad_texture_and_adjust_uvs": "texture",
    "sample_face_grid": "texture",
    "sample_uv_texture": "texture",
    "composite_white": "renderer",
    "render_face_textured_mesh": "renderer",
    "render_mesh": "renderer",
    "render_uv_mesh": "renderer",
    "render_views": "renderer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
