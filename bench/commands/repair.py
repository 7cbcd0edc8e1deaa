"""``bench repair RUN``: make a damaged run directory usable again, keeping everything that is sound.

What it does (each step printed as one line):

* damaged records (truncated, empty, not a record) are moved to ``records/<method>/.damaged/``;
* a record whose artifact is missing or damaged is moved there too, so `bench run` redoes the instance;
* temp files left by killed writers are removed (only when no `bench run` holds the run);
* a damaged or missing ``manifest.json`` is restored from its copy ``logs/manifest.json``; without a
  sound copy it says so (the protocol cannot be rebuilt from records) and what to do;
* damaged metric files are moved to ``metrics/.damaged/`` (recompute with `bench eval --metrics NAME`).

Exit 0 when the run directory is sound afterwards, 1 when something could not be rebuilt.
"""
from __future__ import annotations

import sys
from pathlib import Path

import click


def repair_run(root: Path, say=click.echo) -> bool:
    """Repair the run directory at ``root``; returns whether it is sound afterwards."""
    from bench.errors import UserError
    from bench.locks import RunLock
    from bench.store import ArtifactError, RunDir, manifest_problem, metrics_problem, move_aside, read_checked

    if not root.is_dir():
        raise UserError(f"{root} is not a folder; pass a run directory written by `bench run`")
    if not (root / "manifest.json").exists() and not (root / "records").is_dir() \
            and not (root / "logs" / "manifest.json").is_file():
        raise UserError(f"{root} is not a run directory (no manifest.json, records/ or logs/manifest.json)")
    sound = True
    with RunLock(root):  # refuses while a bench run writes here
        run = RunDir(root, warn=lambda message: say(f"moved aside: {message}"))
        # the manifest
        manifest, problem = read_checked(run.manifest_path, manifest_problem)
        if problem:
            backup, backup_problem = read_checked(run.manifest_backup_path, manifest_problem)
            if run.manifest_path.exists():
                dest = move_aside(run.manifest_path, root / "logs" / "damaged")
                say(f"manifest.json was damaged ({problem}); moved to {dest}")
            if backup_problem is None:
                run.write_manifest(backup)
                say(f"manifest.json restored from {run.manifest_backup_path}")
            else:
                sound = False
                say(f"manifest.json cannot be rebuilt: its copy {run.manifest_backup_path} is missing or damaged "
                    f"({backup_problem}) and records do not hold the protocol; rerun the original `bench run` "
                    f"command with --out {root} (records made under another protocol are refused)")
        # records, and the artifacts they point at
        for method in run.methods():
            for rec in run.records(method):
                if rec["status"] != "ok":
                    continue
                try:
                    run.load_artifact(method, rec["instance"])
                except ArtifactError as err:
                    run.quarantine_record(run.record_path(method, rec["instance"]), method, str(err))
        # temp files of killed writers
        removed = 0
        for tmp in root.rglob(".*.tmp"):
            tmp.unlink(missing_ok=True)
            removed += 1
        if removed:
            say(f"removed {removed} temp file(s) left by killed writers")
        # corpus metric files
        for path in sorted((root / "metrics").glob("*.json")):
            _, problem = read_checked(path, metrics_problem)
            if problem:
                dest = move_aside(path, root / "metrics" / ".damaged")
                say(f"{path} was damaged ({problem}); moved to {dest}; `bench eval {root} --metrics {path.stem}` "
                    "computes it again")
    return sound


@click.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
def repair(run_dir):
    """Move damaged records and metric files aside, restore the manifest from its copy; rerun
    `bench run` afterwards to redo the instances moved aside."""
    sound = repair_run(run_dir)
    click.echo(f"{run_dir}: " + ("sound; rerun `bench run` with the same command to redo what was moved aside"
                                 if sound else "not fully repaired (see above)"))
    sys.exit(0 if sound else 1)
