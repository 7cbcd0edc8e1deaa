"""Chunked Chamfer primitives for the MeshInversion losses (spec §d).

Two distances are provided, each as a memory-frugal *chunked* version and a dense reference:

* plain squared Euclidean Chamfer (the official ``distChamfer``):
  ``D[a, b] = ‖x_a − y_b‖²``;
* the "gated" Chamfer of the texture losses:
  ``D[a, b] = xy_term(D_xy[a, b]) · (D_c[a, b] + rgb_eps)`` with
  ``D_xy = ‖p_a − q_b‖²`` (positions), ``D_c = ‖c_a − d_b‖²`` (colours or features),
  ``eps = 1 − (2·k·τ)²`` and
  ``xy_term = (1 + k·D_xy)^α`` if ``eps == 1`` else ``ReLU((eps + k·D_xy)^α − 1) + 1``.

Batches and padding
-------------------
Every function takes a *padded batch*: ``x`` (B, N, D) and ``y`` (B, M, D) hold B independent
instances; ``len_x`` (B,) / ``len_y`` (B,) give the number of valid points of each instance (the
rows past it are padding and are ignored; ``None`` = all rows valid). 2-D inputs (N, D) are
accepted too and give outputs without the batch dimension. Per-point results for padding rows
are 0 and receive no gradient; :func:`masked_mean` averages over the valid points. If an
instance's other set is empty its per-point minima are NaN (the official code would fail or give
NaN too). Instances never interact: a batch gives exactly the per-instance results.

How the chunked form works
--------------------------
The nearest neighbours are searched without autograd, ``chunk_size`` rows at a time (one pass
per direction; the reverse direction is a second pass with the roles swapped), so at most one
(B, chunk_size, M) block of the N×M matrix (two for the gated distance: D_xy and D_c) is alive;
it is a buffer reused across blocks. ``chunk_size=None`` picks the rows per block from the sizes
(:func:`auto_chunk_size`). The distance at the chosen pair is then recomputed with autograd from the (B, N, D)
gathered points. The min of a set of values has the gradient of the selected element (this is
also what ``torch.min``'s backward does), so values and gradients equal the dense form, while
memory is O(B·chunk_size·M) instead of O(B·N·M) and the backward pass is O(B·(N+M)·D).
Ties are broken towards the smallest index, as ``torch.min`` does on CPU.

The block uses the expansion ``‖x‖² + ‖y‖² − 2⟨x, y⟩`` (like ``distChamfer``), computed as one
batched matmul of augmented vectors; the returned values use the direct form ``Σ (x − y)²``.
Both agree to rounding (about 1e-16 relative in float64). Compute in float64 to match the
official code (the losses cast before calling).
"""
from __future__ import annotations

import math

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "GateParams",
    "auto_chunk_size",
    "chamfer_sq",
    "chamfer_sq_dense",
    "gated_chamfer",
    "gated_chamfer_dense",
    "gated_distance_matrix_dense",
    "masked_mean",
    "nearest_sq",
    "nearest_gated",
]

#: ``chunk_size=None`` (the default) picks the rows per block so that a (B, rows, M) block holds
#: about this many elements. CPU, one intra-op thread: 2**19 (4 MiB in float64, cache-friendly;
#: 64 rows for M = 8192, the fastest setting measured). CPU, several threads: 2**21 per thread
#: (fewer, larger parallel regions: on a busy machine every OpenMP barrier can cost a scheduler
#: time slice, which made 64-row blocks ~20x slower with 2 threads than with 1). CUDA: 2**24
#: (few kernel launches). The block buffers are the only O(rows·M) allocations.
CPU_BLOCK_ELEMENTS = 2**19
CPU_BLOCK_ELEMENTS_PER_THREAD = 2**21
CUDA_BLOCK_ELEMENTS = 2**24
DEFAULT_CHUNK_SIZE = None


def auto_chunk_size(batch: int, m: int, device: torch.device | str = "cpu") -> int:
    """Rows per block used when ``chunk_size`` is None (see :data:`CPU_BLOCK_ELEMENTS`)."""
    if torch.device(device).type == "cpu":
        threads = torch.get_num_threads()
        budget = CPU_BLOCK_ELEMENTS if threads <= 1 else CPU_BLOCK_ELEMENTS_PER_THREAD * threads
    else:
        budget = CUDA_BLOCK_ELEMENTS
    return int(max(8, budget // max(1, batch * m)))


DEFAULT_XY_THRESHOLD = 0.16  # the released code's xy_threshold τ


def eps_from_threshold(xy_threshold: float, xy_k: float = 1.0) -> float:
    """The gate's ε = 1 − (2·k·τ)² (``mi:lib/mesh_inversion.py``), which the supplement calls ε_s."""
    return 1.0 - (2.0 * xy_k * xy_threshold) ** 2


def threshold_from_eps(eps_s: float, xy_k: float = 1.0) -> float:
    """The xy threshold τ = √(1 − ε_s) / (2·k) of a given ε_s (ε_s ≤ 1, k > 0): the inverse of
    :func:`eps_from_threshold` for τ ≥ 0."""
    return math.sqrt(1.0 - eps_s) / (2.0 * xy_k)


@dataclass(frozen=True)
class GateParams:
    """Parameters of the texture-loss gate (official argument names in brackets).

    xy_k (``xy_k``): k, scale of the squared xy distance.
    xy_alpha (``xy_alpha``): α, exponent.
    xy_threshold (``xy_threshold``): τ; no penalty within xy distance 2τ (when α = k = 1).
    rgb_eps (``rgb_eps``): ε added to the colour/feature distance.
    """

    xy_k: float = 1.0
    xy_alpha: float = 1.0
    xy_threshold: float = DEFAULT_XY_THRESHOLD
    rgb_eps: float = 1.0

    @property
    def eps(self) -> float:
        """``1 − (2·k·τ)²`` (0.8976 with the defaults), the supplement's ε_s."""
        return eps_from_threshold(self.xy_threshold, self.xy_k)


# --------------------------------------------------------------------------------------------
# helpers


def _as_batch(*xs: Tensor | None) -> tuple[bool, list[Tensor | None]]:
    """Promote 2-D (N, D) inputs to (1, N, D); return whether the inputs were batched."""
    dims = {x.dim() for x in xs if x is not None}
    if len(dims) != 1 or dims.pop() not in (2, 3):
        raise ValueError(f"expected all point sets as (N, D) or (B, N, D), got shapes "
                         f"{[tuple(x.shape) for x in xs if x is not None]}")
    batched = xs[0].dim() == 3
    return batched, [x if x is None or batched else x.unsqueeze(0) for x in xs]


def _lengths(lengths: Tensor | None, batch: int, n: int, device) -> Tensor | None:
    """Validate ``lengths`` (B,); return None when every row is valid (no padding)."""
    if lengths is None:
        return None
    lengths = torch.as_tensor(lengths, device=device, dtype=torch.long).reshape(-1)
    if lengths.numel() != batch:
        raise ValueError(f"lengths has {lengths.numel()} entries for a batch of {batch}")
    if bool((lengths > n).any()) or bool((lengths < 0).any()):
        raise ValueError(f"lengths {lengths.tolist()} out of range for {n} padded points")
    if bool((lengths == n).all()):
        return None
    return lengths


def _valid(lengths: Tensor | None, batch: int, n: int, device) -> Tensor | None:
    """(B, n) bool mask of valid rows, or None when all are valid."""
    if lengths is None:
        return None
    return torch.arange(n, device=device).unsqueeze(0) < lengths.unsqueeze(1)


def _augment(x: Tensor, y: Tensor, scale: float, offset: float) -> tuple[Tensor, Tensor]:
    """Augmented vectors such that ``xa @ yaᵀ = scale·(‖x‖² + ‖y‖² − 2⟨x, y⟩) + offset``.

    x (B, N, D), y (B, M, D) -> xa (B, N, D+2), ya (B, M, D+2).
    """
    xx = x.square().sum(-1, keepdim=True)
    yy = y.square().sum(-1, keepdim=True)
    one_x = torch.ones_like(xx)
    one_y = torch.ones_like(yy)
    xa = torch.cat([x * (-2.0 * scale), xx * scale + offset, one_x], dim=-1)
    ya = torch.cat([y, one_y, yy * scale], dim=-1)
    return xa, ya


def _search(block, n: int, m: int, batch: int, device, valid_y: Tensor | None,
            chunk_size: int | None) -> Tensor:
    """Argmin over the columns of an N×M distance matrix, ``chunk_size`` rows at a time.

    ``block(s, e)`` returns the fresh (B, e−s, M) distance block of rows s:e (it may be
    modified in place); valid_y (B, M) masks padding columns. Returns idx (B, N).
    Only the row direction is searched (a column-direction min over a block is several times
    slower on CPU than a second, transposed pass); ties go to the smallest index.
    """
    chunk_size = _rows(chunk_size, batch, m, device)
    idx = torch.zeros((batch, n), dtype=torch.long, device=device)
    if m == 0:
        return idx
    for start in range(0, n, chunk_size):
        end = min(start + chunk_size, n)
        d = block(start, end)
        if valid_y is not None:
            d.masked_fill_(~valid_y[:, None, :], float("inf"))
        idx[:, start:end] = d.min(dim=2).indices
        del d
    return idx


def _rows(chunk_size: int | None, batch: int, m: int, device) -> int:
    if chunk_size is None:
        return auto_chunk_size(batch, m, device)
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be >= 1 or None, got {chunk_size}")
    return int(chunk_size)


def _workspace(p: Tensor, q: Tensor, chunk_size: int | None):
    """A reusable flat buffer for (B, rows, M) blocks (avoids allocator churn and page faults)."""
    bsz, n, m = p.shape[0], p.shape[1], q.shape[1]
    rows = max(1, min(_rows(chunk_size, bsz, m, p.device), n))
    buf = torch.empty(bsz * rows * m, dtype=p.dtype, device=p.device)

    def view(s: int, e: int) -> Tensor:
        return buf[: bsz * (e - s) * m].view(bsz, e - s, m)

    return view


def _gather(y: Tensor, idx: Tensor) -> Tensor:
    """y (B, M, D), idx (B, N) -> y[b, idx[b, n]] (B, N, D)."""
    return torch.gather(y, 1, idx.unsqueeze(-1).expand(-1, -1, y.shape[-1]))


def _finish(d: Tensor, valid: Tensor | None, len_other: Tensor | None) -> Tensor:
    """Zero the padding rows of per-point minima d (B, N); NaN where the other set is empty."""
    if valid is not None:
        d = torch.where(valid, d, torch.zeros_like(d))
    if len_other is not None and bool((len_other == 0).any()):
        empty = (len_other == 0).unsqueeze(1)
        if valid is not None:
            empty = empty & valid
        d = torch.where(empty, torch.full_like(d, float("nan")), d)
    return d


def _empty_result(x: Tensor, y: Tensor, both: bool, batched: bool):
    """Result when one of the padded sets has no rows at all: minima over nothing are NaN."""
    bsz, n, m = x.shape[0], x.shape[1], y.shape[1]
    d_xy = x.new_full((bsz, n), float("nan"))
    d_yx = y.new_full((bsz, m), float("nan")) if both else None
    i_xy = torch.zeros((bsz, n), dtype=torch.long, device=x.device)
    i_yx = torch.zeros((bsz, m), dtype=torch.long, device=x.device) if both else None
    out = (d_xy, d_yx, i_xy, i_yx)
    return out if batched else tuple(t if t is None else t[0] for t in out)


def _gate(d_xy: Tensor, d_c: Tensor, p: GateParams) -> Tensor:
    """Elementwise gated distance from squared xy and colour distances (any shape)."""
    eps = p.eps
    if eps == 1:
        xy_term = (1.0 + p.xy_k * d_xy) ** p.xy_alpha
    else:
        xy_term = torch.relu((eps + p.xy_k * d_xy) ** p.xy_alpha - 1.0) + 1.0
    return xy_term * (d_c + p.rgb_eps)


def masked_mean(d: Tensor, lengths: Tensor | None = None) -> Tensor:
    """Mean over the valid points of each instance.

    d (B, N) per-point values (padding entries 0), lengths (B,) or None -> (B,).
    An instance with no valid point gives NaN (as the official mean of an empty set).
    """
    if lengths is None:
        return d.mean(dim=1)
    lengths = torch.as_tensor(lengths, device=d.device)
    return d.sum(dim=1) / lengths.to(d.dtype)


# --------------------------------------------------------------------------------------------
# plain squared-distance Chamfer


@torch.no_grad()
def nearest_sq(x: Tensor, y: Tensor, *, len_x: Tensor | None = None, len_y: Tensor | None = None,
               both: bool = True, chunk_size: int | None = DEFAULT_CHUNK_SIZE) -> tuple[Tensor, Tensor | None]:
    """Nearest neighbours under squared Euclidean distance, chunked, no autograd.

    x (B, N, D), y (B, M, D) -> idx_xy (B, N) index into y of each x's nearest point,
    idx_yx (B, M) index into x of each y's nearest point (None if ``both`` is False).
    Entries for padding rows are arbitrary (0).
    """
    batched, (x, y) = _as_batch(x, y)
    bsz, n, m = x.shape[0], x.shape[1], y.shape[1]
    len_x = _lengths(len_x, bsz, n, x.device)
    len_y = _lengths(len_y, bsz, m, y.device)
    x, y = x.detach(), y.detach()

    def one_way(p: Tensor, q: Tensor, len_q: Tensor | None) -> Tensor:
        pa, qa = _augment(p, q, 1.0, 0.0)
        qat = qa.transpose(1, 2)
        ws = _workspace(p, q, chunk_size)
        return _search(lambda s, e: torch.bmm(pa[:, s:e], qat, out=ws(s, e)), p.shape[1], q.shape[1], bsz,
                       p.device, _valid(len_q, bsz, q.shape[1], q.device), chunk_size)

    idx_xy = one_way(x, y, len_y)
    idx_yx = one_way(y, x, len_x) if both else None
    if not batched:
        idx_xy = idx_xy[0]
        idx_yx = None if idx_yx is None else idx_yx[0]
    return idx_xy, idx_yx


def chamfer_sq(x: Tensor, y: Tensor, *, len_x: Tensor | None = None, len_y: Tensor | None = None,
               both: bool = True, chunk_size: int | None = DEFAULT_CHUNK_SIZE
               ) -> tuple[Tensor, Tensor | None, Tensor, Tensor | None]:
    """Chunked squared-distance Chamfer (``distChamfer``), differentiable in x and y.

    x (B, N, D), y (B, M, D); len_x, len_y (B,) valid counts or None.
    Returns ``(d_xy, d_yx, idx_xy, idx_yx)``: d_xy (B, N) = min_b ‖x_a − y_b‖²,
    d_yx (B, M) = min_a ‖x_a − y_b‖² (None unless ``both``), and the argmin indices.
    Padding entries of d are 0. Works in the input dtype (the official code uses float64).
    """
    batched, (x, y) = _as_batch(x, y)
    bsz, n, m = x.shape[0], x.shape[1], y.shape[1]
    len_x = _lengths(len_x, bsz, n, x.device)
    len_y = _lengths(len_y, bsz, m, y.device)
    if n == 0 or m == 0:
        return _empty_result(x, y, both, batched)
    idx_xy, idx_yx = nearest_sq(x, y, len_x=len_x, len_y=len_y, both=both, chunk_size=chunk_size)
    d_xy = _finish((x - _gather(y, idx_xy)).square().sum(-1), _valid(len_x, bsz, n, x.device), len_y)
    d_yx = None
    if both:
        d_yx = _finish((y - _gather(x, idx_yx)).square().sum(-1), _valid(len_y, bsz, m, y.device),
                       len_x)
    if not batched:
        d_xy, idx_xy = d_xy[0], idx_xy[0]
        if both:
            d_yx, idx_yx = d_yx[0], idx_yx[0]
    return d_xy, d_yx, idx_xy, idx_yx


def chamfer_sq_dense(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Dense reference (full N×M matrix, autograd through ``torch.min``), as ``distChamfer``.

    x (B, N, D), y (B, M, D), no padding -> (d_xy (B, N), d_yx (B, M), idx_xy, idx_yx).
    """
    batched, (x, y) = _as_batch(x, y)
    xx = x.square().sum(-1)
    yy = y.square().sum(-1)
    p = xx.unsqueeze(2) + yy.unsqueeze(1) - 2.0 * torch.bmm(x, y.transpose(1, 2))
    d_xy, idx_xy = p.min(dim=2)
    d_yx, idx_yx = p.min(dim=1)
    out = (d_xy, d_yx, idx_xy, idx_yx)
    return out if batched else tuple(t[0] for t in out)


# --------------------------------------------------------------------------------------------
# gated Chamfer of the texture losses


@torch.no_grad()
def nearest_gated(xy_x: Tensor, c_x: Tensor, xy_y: Tensor, c_y: Tensor, params: GateParams = GateParams(),
                  *, len_x: Tensor | None = None, len_y: Tensor | None = None, both: bool = False,
                  chunk_size: int | None = DEFAULT_CHUNK_SIZE) -> tuple[Tensor, Tensor | None]:
    """Nearest neighbours under the gated distance, chunked, no autograd.

    xy_x (B, N, P), c_x (B, N, C), xy_y (B, M, P), c_y (B, M, C) ->
    idx_xy (B, N), idx_yx (B, M) or None (see :func:`nearest_sq`).
    """
    batched, (xy_x, c_x, xy_y, c_y) = _as_batch(xy_x, c_x, xy_y, c_y)
    bsz, n, m = xy_x.shape[0], xy_x.shape[1], xy_y.shape[1]
    len_x = _lengths(len_x, bsz, n, xy_x.device)
    len_y = _lengths(len_y, bsz, m, xy_y.device)
    eps, k, alpha = params.eps, params.xy_k, params.xy_alpha
    xy_x, c_x, xy_y, c_y = xy_x.detach(), c_x.detach(), xy_y.detach(), c_y.detach()

    def one_way(p: Tensor, c: Tensor, q: Tensor, d: Tensor, len_q: Tensor | None) -> Tensor:
        # D_xy block: k·‖p − q‖² + eps (+ 1 when eps == 1); D_c block: ‖c − d‖² + rgb_eps.
        pa, qa = _augment(p, q, k, 1.0 if eps == 1 else eps)
        ca, da = _augment(c, d, 1.0, params.rgb_eps)
        qat, dat = qa.transpose(1, 2), da.transpose(1, 2)
        ws_xy, ws_c = _workspace(p, q, chunk_size), _workspace(p, q, chunk_size)

        def block(s: int, e: int) -> Tensor:
            g = torch.bmm(pa[:, s:e], qat, out=ws_xy(s, e))
            if alpha != 1:
                g.pow_(alpha)
            if eps != 1:
                # ReLU(t − 1) + 1 == max(t, 1) exactly in floating point for finite t.
                g.clamp_min_(1.0)
            return g.mul_(torch.bmm(ca[:, s:e], dat, out=ws_c(s, e)))

        return _search(block, p.shape[1], q.shape[1], bsz, p.device,
                       _valid(len_q, bsz, q.shape[1], q.device), chunk_size)

    idx_xy = one_way(xy_x, c_x, xy_y, c_y, len_y)
    idx_yx = one_way(xy_y, c_y, xy_x, c_x, len_x) if both else None
    if not batched:
        idx_xy = idx_xy[0]
        idx_yx = None if idx_yx is None else idx_yx[0]
    return idx_xy, idx_yx


def gated_chamfer(xy_x: Tensor, c_x: Tensor, xy_y: Tensor, c_y: Tensor, params: GateParams = GateParams(),
                  *, len_x: Tensor | None = None, len_y: Tensor | None = None, both: bool = False,
                  chunk_size: int | None = DEFAULT_CHUNK_SIZE
                  ) -> tuple[Tensor, Tensor | None, Tensor, Tensor | None]:
    """Chunked gated Chamfer, differentiable in all four inputs.

    xy_x (B, N, P) positions and c_x (B, N, C) colours/features of the first set (prediction),
    xy_y (B, M, P), c_y (B, M, C) of the second (target); len_x, len_y (B,) or None.
    Returns ``(d_xy, d_yx, idx_xy, idx_yx)`` with d_xy (B, N) = min_b D[a, b] and, if ``both``,
    d_yx (B, M) = min_a D[a, b]; padding entries are 0.
    Pixel loss: ``masked_mean(d_xy)``; feature loss: ``(masked_mean(d_xy) + masked_mean(d_yx))/2``.
    """
    batched, (xy_x, c_x, xy_y, c_y) = _as_batch(xy_x, c_x, xy_y, c_y)
    bsz, n, m = xy_x.shape[0], xy_x.shape[1], xy_y.shape[1]
    len_x = _lengths(len_x, bsz, n, xy_x.device)
    len_y = _lengths(len_y, bsz, m, xy_y.device)
    if n == 0 or m == 0:
        return _empty_result(xy_x, xy_y, both, batched)
    idx_xy, idx_yx = nearest_gated(xy_x, c_x, xy_y, c_y, params, len_x=len_x, len_y=len_y,
                                   both=both, chunk_size=chunk_size)

    def values(p: Tensor, c: Tensor, q: Tensor, d: Tensor, idx: Tensor) -> Tensor:
        d_xy = (p - _gather(q, idx)).square().sum(-1)
        d_c = (c - _gather(d, idx)).square().sum(-1)
        return _gate(d_xy, d_c, params)

    d_xy = _finish(values(xy_x, c_x, xy_y, c_y, idx_xy), _valid(len_x, bsz, n, xy_x.device), len_y)
    d_yx = None
    if both:
        d_yx = _finish(values(xy_y, c_y, xy_x, c_x, idx_yx), _valid(len_y, bsz, m, xy_y.device), len_x)
    if not batched:
        d_xy, idx_xy = d_xy[0], idx_xy[0]
        if both:
            d_yx, idx_yx = d_yx[0], idx_yx[0]
    return d_xy, d_yx, idx_xy, idx_yx


def gated_distance_matrix_dense(xy_x: Tensor, c_x: Tensor, xy_y: Tensor, c_y: Tensor,
                                params: GateParams = GateParams()) -> Tensor:
    """Dense gated matrix D (B, N, M), written as the official code does (expansion form)."""
    _, (xy_x, c_x, xy_y, c_y) = _as_batch(xy_x, c_x, xy_y, c_y)

    def sq(a: Tensor, b: Tensor) -> Tensor:
        return (a.square().sum(-1).unsqueeze(2) + b.square().sum(-1).unsqueeze(1)
                - 2.0 * torch.bmm(a, b.transpose(1, 2)))

    return _gate(sq(xy_x, xy_y), sq(c_x, c_y), params)


def gated_chamfer_dense(xy_x: Tensor, c_x: Tensor, xy_y: Tensor, c_y: Tensor,
                        params: GateParams = GateParams()) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Dense reference of :func:`gated_chamfer` (no padding; both directions).

    Returns (d_xy (B, N), d_yx (B, M), idx_xy, idx_yx); 2-D inputs give unbatched outputs.
    """
    batched = xy_x.dim() == 3
    dmat = gated_distance_matrix_dense(xy_x, c_x, xy_y, c_y, params)
    d_xy, idx_xy = dmat.min(dim=2)
    d_yx, idx_yx = dmat.min(dim=1)
    out = (d_xy, d_yx, idx_xy, idx_yx)
    return out if batched else tuple(t[0] for t in out)
