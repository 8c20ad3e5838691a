"""Renders the core's progress events with rich (the core itself never prints)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from synthfed.progress import Event, Message, TaskAdvanced, TaskFinished, TaskStarted


class RichProgress:
    """A context manager and a progress callback: one bar per task key."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.bars = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self.tasks: dict[str, int] = {}
        self.started = False

    # The bars start with the first task, not on entry: a command that fails
    # before any work would otherwise leave an empty line above its error.
    def __enter__(self) -> "RichProgress":
        return self

    def __exit__(self, *exc) -> None:
        if self.started:
            self.bars.__exit__(*exc)

    def __call__(self, event: Event) -> None:
        if isinstance(event, TaskStarted) and not self.started:
            self.bars.__enter__()
            self.started = True
        if isinstance(event, TaskStarted):
            if event.key in self.tasks:
                self.bars.reset(self.tasks[event.key], total=event.total, description=event.description, info="")
            else:
                self.tasks[event.key] = self.bars.add_task(event.description, total=event.total, info="")
        elif isinstance(event, TaskAdvanced) and event.key in self.tasks:
            info = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in event.info.items())
            self.bars.update(self.tasks[event.key], advance=event.advance, info=info)
        elif isinstance(event, TaskFinished) and event.key in self.tasks:
            if event.key != "round":
                self.bars.remove_task(self.tasks.pop(event.key))
        elif isinstance(event, Message):
            style = "yellow" if event.level == "warning" else "cyan"
            self.console.print(f"[{style}]{event.text}[/{style}]")
