"""Reconstruction methods behind the common :class:`bench.methods.base.Method` interface."""
