"""Progress reporting without printing: the core calls a callback, the CLI renders it.

Events are small dataclasses so that a renderer can match on type; a callback
that ignores everything (``NullProgress``) is the default for library use."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class TaskStarted:
    key: str  # "round", "client", "epoch", "sample"...
    description: str
    total: int | None


@dataclass(frozen=True)
class TaskAdvanced:
    key: str
    advance: int = 1
    info: dict = field(default_factory=dict)


@dataclass(frozen=True)
class TaskFinished:
    key: str


@dataclass(frozen=True)
class Message:
    text: str
    level: str = "info"  # "info" | "warning"


Event = TaskStarted | TaskAdvanced | TaskFinished | Message


class Progress(Protocol):
    def __call__(self, event: Event) -> None: ...


def null_progress(event: Event) -> None:
    """Ignore every event (library default)."""


class RecordingProgress:
    """Keeps every event (tests, and a run log)."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def messages(self) -> list[str]:
        return [e.text for e in self.events if isinstance(e, Message)]
