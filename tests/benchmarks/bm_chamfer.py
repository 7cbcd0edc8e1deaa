"""Chunked vs dense Chamfer, 8192 × 8192 points, float64, forward + backward (CPU).

Run: ``pytest tests/benchmarks/bm_chamfer.py --benchmark-enable -s``.

Time: pytest-benchmark (wall clock). Peak memory: the growth of the process's peak resident set
size during one call, measured by resetting the kernel's high-water mark (``echo 5 >
/proc/self/clear_refs``) and reading ``VmHWM`` afterwards, minus the resident size before the call.
This counts every byte the call really touches (torch's CPU allocations are invisible to
tracemalloc); large torch blocks are mmap-ed and returned on free, so the baseline is stable. Where
/proc is unavailable (non-Linux) memory is not measured. The theoretical largest live tensors are
recorded next to it: dense = several N×M float64 matrices (512 MiB each); chunked = the
(rows × M) block buffers.
"""
from __future__ import annotations

import gc
import statistics
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_chamfer import make_points  # noqa: E402  (reuse the test factory)

from bench.methods.meshinversion.chamfer import (  # noqa: E402
    auto_chunk_size,
    chamfer_sq,
    chamfer_sq_dense,
    gated_chamfer,
    gated_chamfer_dense,
)

N = 8192


def _status(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def peak_memory(fn) -> int | None:
    """Peak resident-set growth (bytes) during fn(), or None if it cannot be measured here."""
    gc.collect()
    base = _status("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS (Linux >= 4.0)
    except OSError:
        return None
    fn()
    peak = _status("VmHWM")
    return None if base is None or peak is None else peak - base


def make_fn(kind: str, impl: str):
    """A closure running forward + backward of one Chamfer variant on N × N points."""
    x, cx = make_points(N, [2, 3], batch=1, seed=0)
    y, cy = make_points(N, [2, 3], batch=1, seed=1)
    if kind == "plain":  # the mask loss: both directions
        op = chamfer_sq_dense if impl == "dense" else chamfer_sq

        def fn():
            d1, d2, _, _ = op(x, y)
            (d1.mean() + d2.mean()).backward()
    else:  # the pixel texture loss: one direction
        def fn():
            if impl == "dense":
                d1 = gated_chamfer_dense(x, cx, y, cy)[0]
            else:
                d1 = gated_chamfer(x, cx, y, cy)[0]
            d1.mean().backward()
    return fn


def theoretical_block_bytes(kind: str, impl: str) -> int:
    matrices = 2 if kind == "gated" else 1
    rows = N if impl == "dense" else min(N, auto_chunk_size(1, N, "cpu"))
    return matrices * rows * N * 8


@pytest.mark.parametrize("impl", ["dense", "chunked"])
@pytest.mark.parametrize("kind", ["plain", "gated"])
def test_chamfer_8192(benchmark, kind, impl):
    fn = make_fn(kind, impl)
    fn()  # warm-up
    peak = peak_memory(fn)
    benchmark.extra_info.update(peak_rss_mib=None if peak is None else peak / 2**20,
                                block_mib=theoretical_block_bytes(kind, impl) / 2**20,
                                threads=torch.get_num_threads())
    benchmark.pedantic(fn, rounds=3, iterations=1, warmup_rounds=0)


@pytest.fixture(params=["default", "1"], ids=lambda p: f"threads-{p}")
def threads(request):
    """Run with torch's default intra-op threads, and with one thread."""
    before = torch.get_num_threads()
    if request.param != "default":
        torch.set_num_threads(int(request.param))
    yield torch.get_num_threads()
    torch.set_num_threads(before)


def measure(fn, repeats: int) -> tuple[float, int | None]:
    """(median wall time, max peak RSS growth) over ``repeats`` calls."""
    times, peaks = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        peaks.append(peak_memory(fn))
        times.append(time.perf_counter() - t0)
    return statistics.median(times), (None if None in peaks else max(peaks))


@pytest.mark.parametrize("kind", ["plain", "gated"])
def test_chunked_vs_dense_ratios(kind, threads):
    """Goal: chunked >= 2x faster and >= 8x less peak memory than dense."""
    dense = measure(make_fn(kind, "dense"), 2)
    chunked_fn = make_fn(kind, "chunked")
    chunked_fn()  # warm-up
    chunked = measure(chunked_fn, 3)
    speed = dense[0] / chunked[0]
    line = f"{kind}, {threads} thread(s): dense {dense[0]:.3f}s chunked {chunked[0]:.3f}s -> {speed:.1f}x faster"
    if dense[1] is not None:
        mem = dense[1] / max(chunked[1], 1)
        line += (f"; peak RSS growth dense {dense[1] / 2**20:.0f} MiB chunked {chunked[1] / 2**20:.1f} MiB "
                 f"(block buffers {theoretical_block_bytes(kind, 'chunked') / 2**20:.0f} MiB) -> {mem:.0f}x less")
    print(f"\n[bm_chamfer] {line}")
    assert speed >= 2, line
    if dense[1] is not None:
        assert mem >= 8, line
