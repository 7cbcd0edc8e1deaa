"""Mask IoU exactly as the official evaluation computes it (``run_evaluation.py --eval_option IoU``)."""
from __future__ import annotations

import torch


def mask_iou(target: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """IoU = Σ(M_t·M_p) / Σ(M_t + M_p − M_t·M_p) per instance, masks NOT thresholded.

    The project's one IoU: methods (candidate scores, fit IoU), the runner's records and the metrics
    all call this. An empty union (both masks empty) gives 0, not NaN.

    Args:
        target: (B,1,H,W), (B,H,W) or (H,W) target mask in {0,1} (the sample's mask: predicted or GT).
        pred: same shape, rendered mask (hard masks hold 0 or ~1 ± 1 ulp; used as they are).
    Returns:
        (B,) float tensor, or a scalar for (H,W) inputs.
    """
    if target.dim() == 4:
        target, pred = target[:, 0], pred[:, 0]
    t = target.float()
    p = pred.float()
    dims = (-2, -1)
    inter = (t * p).sum(dims)
    union = (t + p - t * p).sum(dims)
    return inter / union.clamp_min(1e-12)


class IoUMetric:
    """Per-instance IoU of the input-view render mask against the sample's mask."""

    needs_artifacts = False  # its corpus summary reads the records only

    #: recorded in the run manifest (``metrics.iou``)
    protocol = {"formula": "sum(Mt*Mp)/sum(Mt+Mp-Mt*Mp), masks not thresholded",
                "against": "the sample's mask (each record's mask_source)"}

    def instance(self, sample, recon) -> dict[str, float]:
        """``iou`` of the input-view render mask, and ``iou_init`` when the method reports the IoU at its
        initial camera (``recon.info["iou_init"]``)."""
        if recon.mask is None:
            return {}
        out = {"iou": float(mask_iou(sample.mask.to(recon.mask.device), recon.mask))}
        if isinstance(recon.info.get("iou_init"), (int, float)):
            out["iou_init"] = float(recon.info["iou_init"])
        return out

    def corpus(self, ctx) -> dict:
        """Mean IoU per method over every ok record of the run (official: arithmetic mean, 3 decimals)."""
        import statistics

        methods = {}
        for method in ctx.methods:
            recs = ctx.ok_records(method)
            vals = [float(r["metrics"]["iou"]) for r in recs if (r.get("metrics") or {}).get("iou") is not None]
            methods[method] = {
                "iou": statistics.fmean(vals) if vals else None,
                "iou_median": statistics.median(vals) if vals else None,
                "iou_std": statistics.pstdev(vals) if vals else None,
                "n_instances": len(vals),
                "n_failed": len(ctx.failed_records(method)),
                "mask_sources": sorted({str(r.get("mask_source")) for r in recs}),
            }
        return {"protocol": {"formula": "sum(Mt*Mp) / sum(Mt + Mp - Mt*Mp), render mask not thresholded",
                             "target": "the sample's mask (see mask_sources)", "aggregate": "mean over instances"},
                "methods": methods}
