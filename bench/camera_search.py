"""Initial cameras without a camera predictor: a grid of pose hypotheses fitted to the object's mask.

A photo of one's own comes with a mask but no camera. The search lays out K hypotheses and lets the
method keep the one its own criterion likes best (like UMR's camera hypotheses):

* rotations: the canonical pose (:func:`bench.render.camera.canonical_quaternion`, 30°) turned by
  ``azimuths`` evenly spaced azimuths (0°, 360°/A, ...) times each of ``elevations_deg``, the same
  two angles the synthetic dataset draws its poses on (:func:`~bench.render.camera.turned_canonical_quaternion`);
* scale and translation per rotation: the method's reference shape (e.g. the generator's mesh at the
  starting latent) posed at that rotation is fitted to the mask's bounding box twice, once matching
  the box's width and once its height ("both scales of the mask extent"); the translation puts the
  shape's box centre on the mask's box centre.

So K = 2 · azimuths · len(elevations_deg). The dataset states the search in ``Sample.camera_search``
and gives a rough :func:`mask_fit_camera` as ``Sample.camera`` (``camera_source = "mask-fit"``) for
methods that do not search; a method that searches records ``camera_source = "search"`` and the
hypothesis it kept.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from bench.config import option

__all__ = ["CameraSearch", "SearchOptions", "camera_hypotheses", "grid_rotations", "mask_box", "mask_fit_camera",
           "search_field"]


@dataclass(frozen=True)
class CameraSearch:
    """How a method searches the initial camera of one sample.

    Attributes:
        azimuths: A, azimuths evenly spaced over 360°.
        elevations_deg: elevations in degrees (each combined with every azimuth).
        candidates: starting latents scored at every hypothesis (methods with a latent search: the
            first ``candidates`` of their own candidates); the full latent search then runs at the
            camera kept.
    """

    azimuths: int = 8
    elevations_deg: tuple[float, ...] = (0.0,)
    candidates: int = 8

    @property
    def size(self) -> int:
        """K, the number of hypotheses."""
        return 2 * self.azimuths * len(self.elevations_deg)

    def describe(self) -> dict:
        return {"azimuths": self.azimuths, "elevations_deg": list(self.elevations_deg),
                "candidates": self.candidates, "hypotheses": self.size,
                "scales": "mask box width and height"}


class SearchOptions:
    """Mixin of a dataset config that offers ``camera=search``: its ``search_azimuths``,
    ``search_elevations_deg`` and ``search_candidates`` fields (declared with :func:`search_field`, so
    that they come after the dataset's own fields in `bench config`) as a :class:`CameraSearch`."""

    search_azimuths: int
    search_elevations_deg: list[float]
    search_candidates: int

    @property
    def search(self) -> CameraSearch:
        return CameraSearch(self.search_azimuths, tuple(self.search_elevations_deg), self.search_candidates)


def search_field(name: str):
    """The config field ``search_<name>`` (``azimuths``, ``elevations_deg``, ``candidates``): its
    default, range and help, the one home of all three."""
    if name == "azimuths":
        return option(8, ge=1, help="camera=search: azimuths over 360 degrees")
    if name == "elevations_deg":
        return option([0.0], ge=-90, le=90, min_length=1,
                      help="camera=search: elevations in degrees (each with every azimuth)")
    if name == "candidates":
        return option(8, ge=1, help="camera=search: starting latents scored at every hypothesis "
                      "(K = 2 x azimuths x elevations hypotheses each)")
    raise ValueError(f"no search field {name!r}")


def mask_box(mask: torch.Tensor) -> tuple[float, float, float, float]:
    """(x0, x1, y0, y1): the mask's bounding box in normalised crop coordinates (x right, y down,
    [-1, 1]; pixel j spans [2j/W - 1, 2(j+1)/W - 1]).

    Args:
        mask: (H,W), foreground > 0.5.
    Raises:
        ValueError: the mask is empty.
    """
    rows = torch.nonzero(mask > 0.5)
    if rows.numel() == 0:
        raise ValueError("the mask is empty: no foreground pixel")
    height, width = mask.shape[-2:]
    y0, x0 = rows.min(0).values.tolist()
    y1, x1 = rows.max(0).values.tolist()
    return 2 * x0 / width - 1, 2 * (x1 + 1) / width - 1, 2 * y0 / height - 1, 2 * (y1 + 1) / height - 1


def mask_fit_camera(mask: torch.Tensor) -> torch.Tensor:
    """(7,) a rough camera from the mask alone: the canonical rotation, scale = half the longer box
    side (a shape of radius 1 fills the box), translation = the box centre."""
    from bench.render.camera import canonical_quaternion

    x0, x1, y0, y1 = mask_box(mask)
    scale = max(x1 - x0, y1 - y0) / 2
    return torch.cat([torch.tensor([scale, (x0 + x1) / 2, (y0 + y1) / 2]), canonical_quaternion()]).float()


def grid_rotations(search: CameraSearch) -> torch.Tensor:
    """(A·E, 4) the hypothesis rotations, azimuth-major within each elevation."""
    from bench.render.camera import turned_canonical_quaternion

    out = [turned_canonical_quaternion(torch.tensor(2 * math.pi * a / search.azimuths),
                                       torch.tensor(math.radians(e)))
           for e in search.elevations_deg for a in range(search.azimuths)]
    return torch.stack(out)


def camera_hypotheses(mask: torch.Tensor, vertices: torch.Tensor, search: CameraSearch) -> torch.Tensor:
    """(K,7) hypotheses ``[s, tx, ty, q]`` for one sample (K = ``search.size``), ordered rotation by
    rotation, width-fitted then height-fitted.

    Args:
        mask: (H,W) the target mask.
        vertices: (V,3) the method's reference shape in the object frame.
        search: the grid.
    Raises:
        ValueError: empty mask.
    """
    from bench.render.camera import qrot

    x0, x1, y0, y1 = mask_box(mask)
    rotations = grid_rotations(search).to(vertices.device)
    posed = qrot(rotations, vertices.float()[None].expand(rotations.shape[0], -1, -1))  # (R,V,3), y down
    low, high = posed[..., :2].min(1).values, posed[..., :2].max(1).values  # (R,2)
    extent = (high - low).clamp_min(1e-6)
    centre = (high + low) / 2
    box_centre = torch.tensor([(x0 + x1) / 2, (y0 + y1) / 2], device=vertices.device)
    out = []
    for row in range(rotations.shape[0]):
        for scale in ((x1 - x0) / extent[row, 0], (y1 - y0) / extent[row, 1]):
            translation = box_centre - scale * centre[row]
            out.append(torch.cat([scale.reshape(1), translation, rotations[row]]))
    return torch.stack(out).float()
