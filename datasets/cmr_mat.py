"""Parsing of CMR-format annotation files (CUB and PASCAL3D+ ``.mat`` struct arrays, SfM poses).

The CMR / MeshInversion loaders read these files with
``scipy.io.loadmat(path, struct_as_record=False, squeeze_me=True)``; this module does the same and
turns the MATLAB structs into plain Python/numpy records (picklable, cheap to keep in a DataLoader
worker), undoing the two surprises of ``squeeze_me``:

* a 1×1 struct array collapses to a single ``mat_struct`` (no ``len()``): :func:`struct_list`
  always returns a list;
* singleton dimensions of numeric fields vanish (a 3×1 ``parts`` becomes ``(3,)``, an ``H×1`` mask
  becomes ``(H,)``): the record builders reshape to the documented shapes.

It also re-implements the rotation-matrix -> quaternion conversion the official loaders use
(Gohlke's ``transformations.quaternion_from_matrix(M, isprecise=True)``), including its lack of sign
canonicalisation, and the layout-report helpers (:class:`LayoutRow`, :func:`missing_message`,
:func:`read_index_rows`) behind each dataset's ``check_layout`` (``bench data check``), and the reading
of label / list text files with one-line errors (:func:`read_text_lines`, :func:`read_id_table`).

Imports no torch.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from bench.errors import UserError

__all__ = [
    "LayoutRow", "load_mat", "struct_list", "field", "bbox_of", "parts_of", "mask_of",
    "read_annotations", "read_sfm", "quaternion_from_matrix", "sfm_to_pose", "missing_message",
    "read_index_rows", "read_text_lines", "read_id_table",
]


class LayoutRow(NamedTuple):
    """One expected file or folder of a dataset root, as reported by a dataset's ``check_layout``."""

    path: str       # the path checked (absolute; folders end with "/")
    present: bool   # exists
    detail: str     # what it is / why it is needed / what was found
    required: bool = True  # False: optional for the default configuration
    problem: str = ""      # why an existing file cannot be used (undecodable, malformed, unsafe); "" = fine


# ------------------------------------------------------------------------------------------------
# text and .mat reading


def read_text_lines(path: str | Path, what: str, expected: str = "") -> list[str]:
    """The lines of a UTF-8 text file (label / list files such as CUB's ``images.txt``).

    Raises:
        UserError: one line naming the file when it cannot be read, holds NUL bytes (binary data) or
            is not valid UTF-8 (with the offset of the first bad byte).
    """
    path = Path(path)
    tail = f"; expected {expected}" if expected else ""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {what} {path}: {exc.strerror or exc}{tail}") from None
    if b"\x00" in raw:
        raise UserError(f"{what} {path} is not a text file (binary data: NUL byte at offset {raw.index(0)}); "
                        f"replace it with the original file{tail}")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError(f"{what} {path} is not a text file (byte 0x{raw[exc.start]:02x} at offset {exc.start} "
                        f"is not UTF-8); replace it with the original file{tail}") from None
    return text.splitlines()


def read_id_table(path: str | Path, what: str) -> dict[str, str]:
    """``"<id> <value>"`` lines -> {id: value} (blank lines skipped).

    Raises:
        UserError: unreadable / undecodable file (:func:`read_text_lines`), a malformed line, a
            repeated id, or no entry at all.
    """
    expected = "lines '<image_id> <value>'"
    out: dict[str, str] = {}
    for n, line in enumerate(read_text_lines(path, what, expected), 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2:
            shown = line if len(line) <= 60 else line[:57] + "..."
            raise UserError(f"{what} {path}:{n}: expected '<image_id> <value>', got {shown!r}")
        if parts[0] in out:
            raise UserError(f"{what} {path}:{n}: image id {parts[0]} appears twice")
        out[parts[0]] = parts[1].strip()
    if not out:
        raise UserError(f"{what} {path} has no entries; {expected}")
    return out


def load_mat(path: str | Path, variable: str) -> Any:
    """``loadmat(path, struct_as_record=False, squeeze_me=True)[variable]``.

    Raises:
        UserError: file unreadable (corrupt, MATLAB v7.3/HDF5) or the variable is missing.
    """
    import scipy.io

    path = Path(path)
    try:
        data = scipy.io.loadmat(str(path), struct_as_record=False, squeeze_me=True)
    except NotImplementedError as exc:  # v7.3 files
        raise UserError(f"cannot read {path}: {exc} (save it as a MATLAB v7 or older .mat)") from None
    except Exception as exc:  # noqa: BLE001 - any parse failure is the user's file
        first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")[:200]
        raise UserError(f"cannot read {path}: {type(exc).__name__}: {first} (expected a MATLAB .mat file "
                        f"as CMR's preprocessing writes it)") from None
    if variable not in data:
        found = ", ".join(k for k in data if not k.startswith("__")) or "none"
        raise UserError(f"{path} has no variable {variable!r} (found: {found})")
    return data[variable]


def struct_list(value) -> list:
    """A loaded struct array as a Python list of structs, whatever ``squeeze_me`` did to it.

    ``()``/empty arrays give ``[]``; a lone ``mat_struct`` (1-element array squeezed) gives ``[value]``.
    """
    if isinstance(value, np.ndarray):
        return list(value.ravel())
    return [value]


def field(struct, name: str, default=None):
    """Field ``name`` of a ``mat_struct`` (or a dict / numpy void), ``default`` if it is absent."""
    if isinstance(struct, dict):
        return struct.get(name, default)
    if isinstance(struct, np.void) and struct.dtype.names:
        return struct[name] if name in struct.dtype.names else default
    return getattr(struct, name, default)


def _scalar(value) -> float:
    arr = np.asarray(value, dtype=np.float64).ravel()
    if arr.size != 1:
        raise ValueError(f"expected a scalar, got shape {np.shape(value)}")
    return float(arr[0])


def bbox_of(struct) -> np.ndarray:
    """``bbox`` struct {x1, y1, x2, y2} -> (4,) float64, as stored (1-based, inclusive)."""
    box = field(struct, "bbox")
    if box is None:
        raise ValueError("annotation has no 'bbox' field")
    if isinstance(box, np.ndarray) and box.dtype == object and box.size == 1:
        box = box.ravel()[0]
    return np.array([_scalar(field(box, k)) for k in ("x1", "y1", "x2", "y2")], dtype=np.float64)


def parts_of(struct, num_kp: int | None = None) -> np.ndarray:
    """``parts`` -> (3, K) float64 (rows x, y 1-based and visibility). Empty parts give (3, 0)."""
    parts = field(struct, "parts")
    if parts is None:
        return np.zeros((3, num_kp or 0), dtype=np.float64)
    arr = np.asarray(parts, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((3, num_kp or 0), dtype=np.float64)
    return arr.reshape(3, -1)  # a 3×1 array was squeezed to (3,)


def mask_of(struct) -> np.ndarray | None:
    """``mask`` -> (H, W) uint8 (or ``None`` if absent), H×W restored from ``height``/``width``."""
    mask = field(struct, "mask")
    if mask is None:
        return None
    arr = np.asarray(mask)
    if arr.ndim != 2:
        h, w = field(struct, "height"), field(struct, "width")
        if h is not None and w is not None and arr.size == int(_scalar(h)) * int(_scalar(w)):
            arr = arr.reshape(int(_scalar(h)), int(_scalar(w)))
        else:
            arr = np.atleast_2d(arr)
    return arr.astype(np.uint8) if arr.dtype == bool else arr


def read_annotations(path: str | Path, *, keep_mask: bool, num_kp: int | None = None) -> list[dict]:
    """Read the ``images`` struct array of a CMR ``.mat`` file into plain records.

    Each record: ``rel_path`` (str, backslashes turned into ``/``), ``bbox`` (4,) float64 1-based,
    ``parts`` (3,K) float64 1-based, ``mask`` (H,W) uint8 or ``None`` (only if ``keep_mask``), and
    ``extra`` (dict of the scalar/string fields ``id, width, height, class_id, voc_image_id, ...``).

    Raises:
        UserError: unreadable file, missing variable, an entry without rel_path/bbox.
    """
    entries = struct_list(load_mat(path, "images"))
    out = []
    for i, entry in enumerate(entries):
        rel = field(entry, "rel_path")
        if rel is None:
            raise UserError(f"{path}: entry {i} has no 'rel_path' field")
        try:
            bbox = bbox_of(entry)
            parts = parts_of(entry, num_kp)
        except (ValueError, TypeError, AttributeError) as exc:
            raise UserError(f"{path}: entry {i}: {exc}") from None
        extra = {}
        for name in getattr(entry, "_fieldnames", []) or []:
            if name in ("rel_path", "bbox", "parts", "mask"):
                continue
            value = getattr(entry, name)
            if isinstance(value, str):
                extra[name] = value
            elif np.ndim(value) == 0 and np.asarray(value).dtype.kind in "biuf":
                extra[name] = np.asarray(value).item()
        out.append({
            "rel_path": str(rel).replace("\\", "/"),
            "bbox": bbox,
            "parts": parts,
            "mask": mask_of(entry) if keep_mask else None,
            "extra": extra,
        })
    return out


def read_sfm(path: str | Path) -> list[dict]:
    """Read the ``sfm_anno`` struct array into records ``rot`` (3,3), ``scale`` float, ``trans`` (2,).

    All float64, in original-image pixels (``trans`` is **not** shifted to 0-based).

    Raises:
        UserError: unreadable file, missing variable or fields, wrong shapes.
    """
    entries = struct_list(load_mat(path, "sfm_anno"))
    out = []
    for i, entry in enumerate(entries):
        try:
            rot = np.asarray(field(entry, "rot"), dtype=np.float64).reshape(3, 3)
            scale = _scalar(field(entry, "scale"))
            trans = np.asarray(field(entry, "trans"), dtype=np.float64).reshape(2)
        except (ValueError, TypeError) as exc:
            raise UserError(f"{path}: sfm_anno entry {i} is malformed ({exc}); "
                            "expected rot 3x3, scale scalar, trans 2x1") from None
        out.append({"rot": rot, "scale": scale, "trans": trans})
    return out


# ------------------------------------------------------------------------------------------------
# rotations


def quaternion_from_matrix(matrix) -> np.ndarray:
    """Quaternion (w, x, y, z) of a rotation matrix, as Gohlke's
    ``transformations.quaternion_from_matrix(M, isprecise=True)`` computes it.

    Args:
        matrix: (3,3) rotation or (4,4) homogeneous matrix (only ``M[:4,:4]`` with ``M[3,3]`` is used;
            a 3×3 input is padded with ``M[3,3] = 1`` like the official loaders do).

    Returns:
        (4,) float64. The sign is **not** canonicalised: when the trace branch is taken ``w > 0``;
        otherwise the largest diagonal element's component is positive and ``w`` may be negative.
    """
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape == (3, 3):
        m4 = np.zeros((4, 4))
        m4[:3, :3] = m
        m4[3, 3] = 1.0
        m = m4
    m = m[:4, :4]
    q = np.empty(4, dtype=np.float64)
    trace = m[0, 0] + m[1, 1] + m[2, 2] + m[3, 3]
    if trace > m[3, 3]:
        t = trace
        q[0] = t
        q[1] = m[2, 1] - m[1, 2]
        q[2] = m[0, 2] - m[2, 0]
        q[3] = m[1, 0] - m[0, 1]
    else:
        # largest diagonal element picks the axis (x: i=0, y: i=1, z: i=2); (i, j, k) cyclic
        i, j, k = 0, 1, 2
        if m[1, 1] > m[0, 0]:
            i, j, k = 1, 2, 0
        if m[2, 2] > m[i, i]:
            i, j, k = 2, 0, 1
        t = m[i, i] - (m[j, j] + m[k, k]) + m[3, 3]
        xyz = np.empty(3)
        xyz[i] = t
        xyz[j] = m[i, j] + m[j, i]
        xyz[k] = m[k, i] + m[i, k]
        q[0] = m[k, j] - m[j, k]
        q[1:] = xyz
    q *= 0.5 / math.sqrt(t * m[3, 3])
    return q


def sfm_to_pose(sfm: dict) -> tuple[float, np.ndarray, np.ndarray]:
    """SfM record -> (scale, trans (2,), quaternion (4,) wxyz), float64, original-image pixels."""
    return float(sfm["scale"]), np.array(sfm["trans"], dtype=np.float64), quaternion_from_matrix(sfm["rot"])


# ------------------------------------------------------------------------------------------------
# layout checking


def missing_message(what: str, root: Path, rows: list[LayoutRow], layout: str, hint: str = "") -> str:
    """One-line error naming the missing required entries of ``rows`` and the expected layout."""
    missing = [r.path for r in rows if r.required and not r.present]
    rel = []
    for m in missing:
        try:
            rel.append(str(Path(m).relative_to(root)) + ("/" if m.endswith("/") else ""))
        except ValueError:
            rel.append(m)
    return (f"{what} {root} is incomplete: missing {', '.join(rel)} (expected layout: {layout})"
            + (f"; {hint}" if hint else ""))


def read_index_rows(rows: dict, readers: dict) -> tuple[list, int | None]:
    """For `bench data check`: read every present index file with the reader a run uses, note its
    entry count (or, in ``problem``, the one-line reason it cannot be used) in its :class:`LayoutRow`,
    in place. Returns the ``"anno"`` records and their count."""
    records, count = [], None
    for key, read in readers.items():
        r = rows[key]
        if not r.present:
            continue
        try:
            items = read()
        except UserError as err:
            rows[key] = r._replace(detail=f"{r.detail}: unreadable", problem=str(err))
            continue
        rows[key] = r._replace(detail=f"{r.detail}: {len(items)} entries")
        if key == "anno":
            records, count = items, len(items)
    return records, count
