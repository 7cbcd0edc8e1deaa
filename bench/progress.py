"""Rich progress bars with instances/s and ETA, shared by every long step."""
from __future__ import annotations

import contextlib


class _NullProgress:
    def add_task(self, *a, **k):
        return 0

    def advance(self, *a, **k):
        pass

    def update(self, *a, **k):
        pass


@contextlib.contextmanager
def progress_bar(enabled: bool = True, unit: str = "inst"):
    """A `rich.progress.Progress` (on stderr) with description, bar, done/total, rate and ETA."""
    if not enabled:
        yield _NullProgress()
        return
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task):
            speed = task.finished_speed or task.speed
            if not speed and task.completed and task.elapsed:
                speed = task.completed / task.elapsed
            return Text(f"{speed:.2f} {unit}/s" if speed else f"-.-- {unit}/s", style="progress.data.speed")

    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(),
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
    with Progress(*columns, console=Console(stderr=True)) as bar:
        yield bar
