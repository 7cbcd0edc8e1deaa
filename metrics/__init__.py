"""Metrics: per-instance (IoU, latency) computed by the runner; corpus-level (FID, KID, 3D) by `bench eval`."""
