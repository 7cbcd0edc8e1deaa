"""The runs of one report: each keyed by its position, named by a unique label, identified by its run id.

Two run directories are never merged, even when their folders share a name or one is a copy of the
other (same run id): each is its own row, labelled ``--label PATH=NAME`` or, by default, by its
folder name made unique with its parent folders (``a/run``, ``b/run``) and, for exact duplicates, a
``#k`` suffix.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bench.errors import UserError
from bench.manifest import run_id_of
from bench.store import RunDir


@dataclass
class ReportRun:
    """One run directory of a report.

    Attributes:
        key: position in the report's argument list (0-based): what rows are keyed by.
        label: unique short name shown in tables, plots and file names.
        run_id: the manifest's run id (copies of one run share it).
        run: the run directory.
        manifest: its manifest.
        metrics: its metric files ``{name: document}`` (``RunDir.read_metrics``, read once).
    """

    key: int
    label: str
    run_id: str
    run: RunDir
    manifest: dict = field(repr=False)
    metrics: dict = field(repr=False, default_factory=dict)

    @property
    def root(self) -> Path:
        return self.run.root

    def describe(self) -> dict:
        """``{"label", "run_id", "path", "dataset"}`` for JSON outputs."""
        return {"label": self.label, "run_id": self.run_id, "path": str(self.root), "dataset": self.dataset}

    @property
    def dataset(self) -> str:
        return str((self.manifest.get("dataset") or {}).get("dataset"))

    def protocol(self) -> dict:
        """The fields that decide whether two runs' numbers are comparable."""
        ds = self.manifest.get("dataset") or {}
        return {"dataset": ds.get("dataset"), "split": ds.get("split"), "mask": ds.get("mask"),
                "camera": ds.get("camera"), "image_size": ds.get("image_size"), "profile": self.manifest.get("profile"),
                "seed": self.manifest.get("seed")}


def parse_labels(items: tuple[str, ...] | list[str]) -> dict[str, str]:
    """``--label PATH=NAME`` options as ``{PATH: NAME}`` (one-line error for a bad item)."""
    out = {}
    for item in items:
        path, sep, name = item.partition("=")
        if not sep or not path or not name.strip():
            raise UserError(f"--label {item!r}: use --label RUN=NAME (RUN as given on the command line)")
        out[path] = name.strip()
    return out


def _given_label(path: Path, labels: dict[str, str]) -> str | None:
    for key, name in labels.items():
        if Path(key) == path or Path(key).resolve() == path.resolve():
            return name
    return None


def unique_labels(paths: list[Path], given: dict[str, str] | None = None) -> list[str]:
    """One label per run: the ``--label`` given, else the folder name, lengthened by parent folders
    until unique, and ``#k`` for paths that are the same folder."""
    given = given or {}
    resolved = [p.resolve() for p in paths]
    chosen: list[str | None] = [_given_label(p, given) for p in paths]
    depth = {i: 1 for i in range(len(paths)) if chosen[i] is None}

    def name(i: int) -> str:
        parts = resolved[i].parts
        return "/".join(parts[-depth[i]:]) if depth[i] < len(parts) else str(resolved[i])

    while True:
        names = {i: name(i) for i in depth}
        taken = [c for c in chosen if c is not None]
        clash = {i for i in depth if names[i] in taken
                 or any(names[j] == names[i] and resolved[j] != resolved[i] for j in depth)}
        growable = {i for i in clash if depth[i] < len(resolved[i].parts)}
        if not growable:
            break
        for i in growable:
            depth[i] += 1
    labels = [chosen[i] if chosen[i] is not None else names[i] for i in range(len(paths))]
    counts = {lab: labels.count(lab) for lab in labels}
    seen: dict[str, int] = {}
    out = []
    for lab in labels:
        seen[lab] = seen.get(lab, 0) + 1
        out.append(f"{lab}#{seen[lab]}" if counts[lab] > 1 else lab)
    return out


def load_runs(paths: list[Path], labels: dict[str, str] | None = None) -> list[ReportRun]:
    """The report's runs, manifests and metric files read (a one-line error for a path that is not a run
    directory or a damaged file, before anything is written)."""
    unknown = [k for k in (labels or {}) if not any(Path(k) == p or Path(k).resolve() == Path(p).resolve()
                                                    for p in paths)]
    if unknown:
        raise UserError(f"--label {unknown[0]}=…: {unknown[0]} is not one of the runs of this report")
    names = unique_labels([Path(p) for p in paths], labels)
    runs = []
    for key, (path, label) in enumerate(zip(paths, names)):
        run = RunDir(Path(path).resolve())
        manifest = run.read_manifest()
        runs.append(ReportRun(key, label, run_id_of(manifest), run, manifest, run.read_metrics()))
    return runs


def copy_warnings(runs: list[ReportRun]) -> list[str]:
    """A line for runs that are copies of one run (same id): shown as separate rows, but not independent."""
    by_id: dict[str, list[str]] = {}
    for r in runs:
        by_id.setdefault(r.run_id, []).append(r.label)
    return [f"NOTE: {', '.join(labels)} are copies of one run (id {rid}); their rows are not independent results"
            for rid, labels in by_id.items() if len(labels) > 1]


def protocol_warnings(runs: list[ReportRun]) -> list[str]:
    """One warning when the runs differ in protocol (numbers then are not comparable), naming the fields."""
    protos = [r.protocol() for r in runs]
    if len(protos) < 2 or all(p == protos[0] for p in protos[1:]):
        return []
    keys = sorted({k for p in protos for k in p if any(q.get(k) != protos[0].get(k) for q in protos)})
    return [f"WARNING: runs differ in protocol ({', '.join(keys)}): numbers are not comparable"]
