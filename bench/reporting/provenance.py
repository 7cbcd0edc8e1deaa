"""Where timings come from: the hardware of each run (manifest ``environment.hardware``) and the load of
the machine when each instance started (record ``runtime.load_at_start`` / ``runtime.cores``).

Latencies are warned about when they were measured on a loaded machine (load average above its core
count: threads then wait for cores, times grow by integer factors) or on different hardware.
"""
from __future__ import annotations

from bench.reporting.runs import ReportRun


def hardware_line(run: ReportRun) -> str:
    """``cpu (cores), gpu (driver), torch, CUDA`` of a run, or that it was not recorded."""
    env = run.manifest.get("environment") or {}
    hw = env.get("hardware")
    if not hw:
        return f"device={env.get('device')}, hardware not recorded (run made before meshbench recorded it)"
    gpu = f", gpu={hw.get('gpu')} (driver {hw.get('gpu_driver')})" if hw.get("gpu") else ""
    return (f"device={env.get('device')}, cpu={hw.get('cpu')} ({hw.get('usable_cores')} of {hw.get('cores')} cores)"
            f"{gpu}, torch={hw.get('torch')}, cuda={hw.get('cuda')}")


def _hardware_key(run: ReportRun) -> tuple:
    env = run.manifest.get("environment") or {}
    hw = env.get("hardware") or {}
    return (env.get("device"), hw.get("cpu"), hw.get("usable_cores"), hw.get("gpu"))


def timing_warnings(runs: list[ReportRun], frame) -> list[str]:
    """Warnings about the latencies of a report: loaded machines and mixed hardware."""
    lines = []
    if "time.total" not in frame or frame["time.total"].notna().sum() == 0:
        return lines
    timed = frame[frame["time.total"].notna()]
    if {"load_at_start", "cores"} <= set(timed.columns):
        known = timed[timed["load_at_start"].notna() & timed["cores"].notna()]
        for (run, method), grp in known.groupby(["run", "method"], sort=False):
            loaded = grp[grp["load_at_start"] > grp["cores"]]
            if len(loaded):
                lines.append(f"WARNING: latencies of {run}/{method}: {len(loaded)} of {len(grp)} instances started on "
                             f"a loaded machine (load average up to {loaded['load_at_start'].max():.1f} on "
                             f"{int(loaded['cores'].max())} cores); they are not the figures of an idle machine")
    timed_runs = [r for r in runs if r.key in set(timed["run_key"])]
    keys = {_hardware_key(r) for r in timed_runs}
    if len(keys) > 1:
        lines.append("WARNING: latencies come from different hardware: "
                     + "; ".join(f"{r.label}: {hardware_line(r)}" for r in timed_runs))
    return lines
