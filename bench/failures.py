"""Per-instance failure handling, written once: isolate a failing instance from its batch, describe
an exception in one line, and find non-finite values.

``isolate_failures`` is how the runner and every method turn "one bad instance" into one failed
record while the rest of the batch still succeeds: try the batch, and when it raises, run each
instance alone; an instance that raises alone becomes ``on_failure(item, message)``.
A :class:`bench.errors.UserError` (bad configuration, missing file) is never isolated: it concerns
the whole run and propagates.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Callable, Mapping, Sequence, TypeVar

from bench.errors import InstanceError, UserError

log = logging.getLogger("bench.failures")

T = TypeVar("T")
R = TypeVar("R")


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA/CPU allocator failures (``torch.OutOfMemoryError`` or its RuntimeError text)."""
    try:
        import torch

        if isinstance(exc, getattr(torch, "OutOfMemoryError", ())):
            return True
    except ImportError:  # pragma: no cover
        pass
    text = str(exc).lower()
    return isinstance(exc, (RuntimeError, MemoryError)) and ("out of memory" in text or "not enough memory" in text
                                                              or isinstance(exc, MemoryError))


def describe_exception(exc: BaseException) -> str:
    """One line: ``"out of memory: …"``, ``"<ExceptionType>: <message>"``, or for the project's own
    :class:`bench.errors.InstanceError` its message as written."""
    if isinstance(exc, InstanceError):
        return str(exc)
    kind = "out of memory" if is_out_of_memory(exc) else type(exc).__name__
    return f"{kind}: {exc}"


def release_cached_memory() -> None:
    """Return cached CUDA blocks to the driver (after a failed batch; no-op without CUDA)."""
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass


def isolate_failures(run_batch: Callable[[Sequence[T]], list[R]], items: Sequence[T],
                     on_failure: Callable[[T, str], R]) -> list[R]:
    """``run_batch(items)``; if it raises, every item alone; an item failing alone -> ``on_failure``.

    Args:
        run_batch: maps a list of items to one result per item, same order.
        items: the batch.
        on_failure: builds the failed result of one item from the one-line error message.
    Returns:
        one result per item, in order.
    Raises:
        UserError: from ``run_batch`` (a problem of the whole run, not of one instance).
    """
    try:
        return list(run_batch(items))
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - an instance's failure is data, not a crash
        release_cached_memory()
        if len(items) == 1:
            log.debug("instance failed", exc_info=True)
            return [on_failure(items[0], describe_exception(exc))]
        return [result for item in items for result in isolate_failures(run_batch, [item], on_failure)]


def reconstruct_in_groups(samples: Sequence[T], prepare: Callable[[T], tuple[Any, Any]],
                          run_batch: Callable[[list], list[R]], on_failure: Callable[[T, str], R]) -> list[R]:
    """A method's ``reconstruct``: prepare each sample, run the items of one group together (failures
    isolated by :func:`isolate_failures`), return one result per sample in order.

    Args:
        prepare: ``sample -> (group key, item)``, e.g. keyed by image size; raising fails that sample
            alone (raise :class:`bench.errors.InstanceError` with a message for the user).
        run_batch: items of one group -> one result each, same order.
        on_failure: ``(sample, message) -> failed result``.
    """
    results: list = [None] * len(samples)
    groups: dict[Any, list[tuple[int, T, Any]]] = {}
    for index, sample in enumerate(samples):
        try:
            key, item = prepare(sample)
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - a bad sample fails alone
            results[index] = on_failure(sample, describe_exception(exc))
            continue
        groups.setdefault(key, []).append((index, sample, item))
    for members in groups.values():
        outs = isolate_failures(lambda batch: run_batch([item for _, _, item in batch]), members,
                                lambda member, message: on_failure(member[1], message))
        for (index, _, _), out in zip(members, outs):
            results[index] = out
    return results


def find_non_finite(values: Mapping[str, Any]) -> str | None:
    """Name of the first entry holding NaN/inf (tensors, floats or lists of floats), else None.

    >>> find_non_finite({"loss": [1.0, float("nan")]})
    'loss'
    """
    for name, value in values.items():
        if value is None:
            continue
        if hasattr(value, "isfinite"):
            import torch

            if value.numel() and not bool(torch.isfinite(value.detach()).all()):
                return name
        elif isinstance(value, (int, float)):
            if not math.isfinite(float(value)):
                return name
        elif any(not math.isfinite(float(v)) for v in value):
            return name
    return None
